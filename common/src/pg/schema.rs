//! Schema copy with PostgreSQL's own tools: `pg_dump --schema-only` under the
//! job's snapshot, restored in two sections around the data: pre-data
//! (types, tables, sequences) before it, post-data (indexes, constraints,
//! foreign keys, triggers) after it, because loading into unindexed tables is
//! faster and constraints are checked once.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::spec::TableName;
use crate::{Error, Result};

/// TOC entry kinds that tables depend on but that `pg_dump -t` leaves out.
const SHARED_OBJECT_KINDS: &[&str] = &[
    "SCHEMA",
    "EXTENSION",
    "TYPE",
    "DOMAIN",
    "FUNCTION",
    "PROCEDURE",
    "AGGREGATE",
    "COLLATION",
    "CONVERSION",
    "OPERATOR",
    "SHELL TYPE",
    "TEXT SEARCH",
];

#[derive(Debug)]
pub struct SchemaDump {
    /// Schema of the selected tables.
    tables: PathBuf,
    /// With an explicit table list: the full schema and a TOC list that keeps
    /// only what the tables may depend on (types, functions, schemas).
    shared: Option<(PathBuf, PathBuf)>,
}

/// Runs a libpq tool. The password of a `--dbname=` argument goes to the
/// tool in `PGPASSWORD`, never on its command line.
async fn run(program: &str, args: &[String], what: &str) -> Result<String> {
    let mut command = Command::new(program);
    for arg in args {
        match arg.strip_prefix("--dbname=") {
            Some(conn) => {
                let (conn, password) = super::tls::split_password(conn);
                command.arg(format!("--dbname={conn}"));
                if let Some(password) = password {
                    command.env("PGPASSWORD", password);
                }
            }
            None => {
                command.arg(arg);
            }
        }
    }
    let output = command.stdin(Stdio::null()).output().await.map_err(|e| {
        Error::Schema(format!(
            "cannot run {program} (is the PostgreSQL client installed?): {e}"
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Schema(format!(
            "{what} failed: {}",
            tail.join(" | ")
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

const TABLES_FILE: &str = "tables.dump";
const FULL_FILE: &str = "full.dump";
const SHARED_LIST_FILE: &str = "shared.list";

impl SchemaDump {
    /// The dump's files by name, for staging them beside the job's chunks.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![(TABLES_FILE, self.tables.as_path())];
        if let Some((full, list)) = &self.shared {
            files.push((FULL_FILE, full.as_path()));
            files.push((SHARED_LIST_FILE, list.as_path()));
        }
        files
    }

    /// A dump whose files (as named by `files`) were restored into `dir`.
    pub fn from_dir(dir: &Path) -> Self {
        let full = dir.join(FULL_FILE);
        Self {
            tables: dir.join(TABLES_FILE),
            shared: full.exists().then(|| (full, dir.join(SHARED_LIST_FILE))),
        }
    }

    /// Dumps the source schema as seen by `snapshot` into `dir`.
    pub async fn create(
        source: &str,
        snapshot: &str,
        tables: Option<&[TableName]>,
        dir: &Path,
    ) -> Result<Self> {
        let base = |file: &Path| {
            vec![
                "--schema-only".to_owned(),
                "--format=custom".to_owned(),
                "--exclude-schema=godwit".to_owned(),
                // The source's replication setup (godwit's own publication
                // among it) describes the customer's servers, not its data.
                "--no-publications".to_owned(),
                "--no-subscriptions".to_owned(),
                format!("--snapshot={snapshot}"),
                format!("--file={}", file.display()),
                format!("--dbname={source}"),
            ]
        };
        let tables_file = dir.join(TABLES_FILE);
        let mut args = base(&tables_file);
        let Some(selected) = tables else {
            run("pg_dump", &args, "pg_dump of the source schema").await?;
            return Ok(Self {
                tables: tables_file,
                shared: None,
            });
        };
        for table in selected {
            args.push(format!("--table={}", table.quoted()));
        }
        run("pg_dump", &args, "pg_dump of the selected tables' schema").await?;

        let full_file = dir.join(FULL_FILE);
        run("pg_dump", &base(&full_file), "pg_dump of the source schema").await?;
        let toc = run(
            "pg_restore",
            &["--list".to_owned(), full_file.display().to_string()],
            "pg_restore --list",
        )
        .await?;
        let kept: Vec<&str> = toc
            .lines()
            .filter(|line| toc_entry_is_shared(line))
            .collect();
        let list_file = dir.join(SHARED_LIST_FILE);
        std::fs::write(&list_file, kept.join("\n")).map_err(|source| Error::Io {
            what: "cannot write schema list",
            path: list_file.clone(),
            source,
        })?;
        Ok(Self {
            tables: tables_file,
            shared: Some((full_file, list_file)),
        })
    }

    /// Types, tables and sequences, in one transaction: all or nothing.
    pub async fn restore_pre_data(&self, target: &str) -> Result<()> {
        if let Some((full, list)) = &self.shared {
            let mut args = restore_args(target, "pre-data", full);
            args.push(format!("--use-list={}", list.display()));
            run(
                "pg_restore",
                &args,
                "restoring types and functions into the target",
            )
            .await?;
        }
        let args = restore_args(target, "pre-data", &self.tables);
        run(
            "pg_restore",
            &args,
            "restoring the table definitions into the target",
        )
        .await?;
        Ok(())
    }

    /// Indexes, constraints, foreign keys and triggers, built after the data.
    pub async fn restore_post_data(&self, target: &str) -> Result<()> {
        let args = restore_args(target, "post-data", &self.tables);
        run(
            "pg_restore",
            &args,
            "building indexes and constraints on the target",
        )
        .await?;
        Ok(())
    }
}

/// The source's populated materialized views, for
/// [`refresh_materialized_views`], which fills them on the target: a
/// schema dump creates them empty (`WITH NO DATA`), and the first query of
/// one would fail with "has not been populated". A view built on another
/// view waits for it, so views are refreshed in rounds until none is left
/// or a round makes no progress (then the last error is returned).
pub async fn populated_views(source: &tokio_postgres::Client) -> Result<Vec<String>> {
    Ok(source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname <> 'godwit' ORDER BY c.oid",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("cannot list the source's materialized views", e))?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Refreshes those of `populated` (see [`populated_views`]) that the target
/// has, in rounds; returns how many.
pub async fn refresh_materialized_views(
    target: &tokio_postgres::Client,
    populated: &[String],
) -> Result<usize> {
    let present = super::catalog::existing_relations(target, populated).await?;
    let mut pending: Vec<String> = populated
        .iter()
        .filter(|v| present.contains(v))
        .cloned()
        .collect();
    let refreshed = pending.len();
    while !pending.is_empty() {
        let before = pending.len();
        let mut last_error = None;
        for view in std::mem::take(&mut pending) {
            if let Err(e) = target
                .batch_execute(&format!("REFRESH MATERIALIZED VIEW {view}"))
                .await
            {
                last_error = Some(Error::postgres(
                    format!("cannot refresh materialized view {view} on the target"),
                    e,
                ));
                pending.push(view);
            }
        }
        if pending.len() == before
            && let Some(error) = last_error
        {
            return Err(error);
        }
    }
    Ok(refreshed)
}

fn restore_args(target: &str, section: &str, file: &Path) -> Vec<String> {
    vec![
        format!("--section={section}"),
        "--no-owner".to_owned(),
        "--no-privileges".to_owned(),
        "--exit-on-error".to_owned(),
        "--single-transaction".to_owned(),
        format!("--dbname={target}"),
        file.display().to_string(),
    ]
}

/// `pg_restore --list` lines look like `215; 1259 16390 TABLE public foo owner`.
fn toc_entry_is_shared(line: &str) -> bool {
    if line.starts_with(';') {
        return false;
    }
    let mut words = line.split_whitespace().skip(3);
    let kind: Vec<&str> = words.by_ref().take(3).collect();
    let joined = kind.join(" ");
    SHARED_OBJECT_KINDS
        .iter()
        .any(|shared| joined == *shared || joined.starts_with(&format!("{shared} ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_filter_keeps_dependencies_only() {
        assert!(toc_entry_is_shared(
            "215; 1247 16386 TYPE public mood postgres"
        ));
        assert!(toc_entry_is_shared(
            "5; 2615 2200 SCHEMA - public pg_database_owner"
        ));
        assert!(toc_entry_is_shared(
            "216; 1255 16390 FUNCTION public f() postgres"
        ));
        assert!(!toc_entry_is_shared(
            "217; 1259 16400 TABLE public orders postgres"
        ));
        assert!(!toc_entry_is_shared(
            "218; 2606 16410 CONSTRAINT public orders orders_pkey postgres"
        ));
        assert!(!toc_entry_is_shared(
            "219; 1259 16420 INDEX public orders_idx postgres"
        ));
        assert!(!toc_entry_is_shared("; Archive created at 2026-11-25"));
    }
}
