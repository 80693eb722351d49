//! What the target says about a mapped job, before anything is written:
//! the order its tables must load in (a foreign key of the platform's
//! between two tables the job lands rows in loads the referenced table
//! first), what it refuses (such a key on a table itself or in a cycle, a
//! key with an action while changes stream, carried columns of types the
//! target lacks when changes stream). Reads the target's catalog; never
//! writes.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::resolve::Landing;
use crate::spec::TableName;
use crate::{Error, Result};

/// What the target's catalog asks of a mapped job.
#[derive(Debug, Default)]
pub struct OnTarget {
    /// One line per problem, naming the table, column or key and the fix.
    pub problems: Vec<String>,
    /// The source tables whose rows wait for other tables' rows: their
    /// wave (1 loads once every table of wave 0 is loaded, and so on) and
    /// the platform's keys that make them wait.
    pub waits: BTreeMap<TableName, Wait>,
}

/// A table whose rows load after those of the tables it references.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Wait {
    pub wave: u32,
    /// `key on child references parent`, one per platform key.
    pub keys: Vec<String>,
}

impl OnTarget {
    /// The wave of a source table's rows (0: no wait).
    pub fn wave_of(&self, source: &TableName) -> u32 {
        self.waits.get(source).map_or(0, |w| w.wave)
    }
}

/// Reads the target's catalog for the mapped `landings`.
/// `streams`: the job streams changes after its copy.
pub async fn review(target: &Client, landings: &[&Landing], streams: bool) -> Result<OnTarget> {
    let keys = keys_between(target, landings).await?;
    let pairs: Vec<(&TableName, &TableName)> =
        landings.iter().map(|l| (&l.source, &l.target)).collect();
    let mut on_target = order(&pairs, &keys, streams);
    if streams {
        on_target
            .problems
            .extend(types_missing(target, landings).await?);
    }
    Ok(on_target)
}

/// Carried columns (masked ones are read as text) of a type the target
/// lacks.
async fn types_missing(target: &Client, landings: &[&Landing]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for landing in landings {
        let types: Vec<String> = landing
            .columns
            .iter()
            .filter(|c| c.copy_mask().is_none())
            .map(|c| c.source_type.clone())
            .collect();
        let missing: Vec<String> = target
            .query_one(
                "SELECT coalesce(array_agg(DISTINCT x), '{}') FROM unnest($1::text[]) AS x \
                 WHERE to_regtype(x) IS NULL",
                &[&types],
            )
            .await
            .map_err(|e| Error::postgres("cannot look up types on the target", e))?
            .get(0);
        for column in landing
            .columns
            .iter()
            .filter(|c| c.copy_mask().is_none() && missing.contains(&c.source_type))
        {
            problems.push(format!(
                "{} → {}: {} is of type {}, which the target does not have, and a streamed change is read \
                 there as the source's types: create the type on the target, or copy without `changes`",
                landing.source, landing.target, column.source, column.source_type
            ));
        }
    }
    Ok(problems)
}

/// A foreign key of the platform's between two tables a job lands rows in.
#[derive(Debug, Clone)]
struct PlatformKey {
    name: String,
    child: TableName,
    parent: TableName,
    /// `ON DELETE` or `ON UPDATE` does something besides refusing.
    acts: bool,
}

/// The platform's foreign keys between the platform tables the job lands
/// rows in (a table and itself included).
async fn keys_between(target: &Client, landings: &[&Landing]) -> Result<Vec<PlatformKey>> {
    let tables: Vec<String> = landings
        .iter()
        .filter(|l| l.source != l.target)
        .map(|l| l.target.quoted())
        .collect();
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let rows = target
        .query(
            "WITH job AS (SELECT to_regclass(x) AS oid FROM unnest($1::text[]) AS x) \
             SELECT quote_ident(con.conname), cn.nspname, c.relname, pn.nspname, p.relname, \
                    con.confdeltype <> 'a' OR con.confupdtype <> 'a' \
             FROM pg_constraint con \
             JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class p ON p.oid = con.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE con.contype = 'f' AND con.conparentid = 0 \
               AND con.conrelid IN (SELECT oid FROM job) AND con.confrelid IN (SELECT oid FROM job) \
             ORDER BY 2, 3, 1",
            &[&tables],
        )
        .await
        .map_err(|e| Error::postgres("cannot read the target's foreign keys", e))?;
    Ok(rows
        .iter()
        .map(|row| PlatformKey {
            name: row.get(0),
            child: TableName {
                schema: row.get(1),
                name: row.get(2),
            },
            parent: TableName {
                schema: row.get(3),
                name: row.get(4),
            },
            acts: row.get(5),
        })
        .collect())
}

/// The waves the keys put the job's tables in, and the keys no order
/// satisfies: a table referencing itself or a cycle (rows of one wave load
/// in parallel partitions), and, while changes stream, a key whose action
/// would run on the target before the source's own changes arrive.
/// `landings`: (source, target) of each table the job lands.
fn order(landings: &[(&TableName, &TableName)], keys: &[PlatformKey], streams: bool) -> OnTarget {
    let source_of = |target: &TableName| {
        landings
            .iter()
            .find(|(_, t)| *t == target)
            .map(|(s, _)| (*s).clone())
    };
    let mut on_target = OnTarget::default();
    let fix = "drop the key for the migration and add it back after (NOT VALID, then VALIDATE \
               CONSTRAINT), or land the referenced table in a job of its own first";
    for key in keys {
        let what = format!(
            "the platform's foreign key {} on {} references {}",
            key.name, key.child, key.parent
        );
        if key.child == key.parent {
            on_target.problems.push(format!(
                "{what}, its own table, and the job lands rows in it: its partitions load in parallel, \
                 so a row could arrive before the row it references; {fix}"
            ));
        } else if streams && key.acts {
            on_target.problems.push(format!(
                "{what} with an action (ON DELETE or ON UPDATE), and the job streams changes into both: \
                 the action would run on the target before the source's own changes to {} arrive; {fix}",
                key.child
            ));
        }
    }
    let between: Vec<&PlatformKey> = keys.iter().filter(|k| k.child != k.parent).collect();
    let mut waves: BTreeMap<TableName, u32> = BTreeMap::new();
    let mut placed: BTreeSet<TableName> = BTreeSet::new();
    let tables: BTreeSet<TableName> = between
        .iter()
        .flat_map(|k| [k.child.clone(), k.parent.clone()])
        .collect();
    // Kahn's layering: a table's wave is one past its deepest parent's.
    for wave in 0.. {
        let ready: Vec<TableName> = tables
            .iter()
            .filter(|t| !placed.contains(*t))
            .filter(|t| {
                between
                    .iter()
                    .filter(|k| &k.child == *t)
                    .all(|k| placed.contains(&k.parent))
            })
            .cloned()
            .collect();
        if ready.is_empty() {
            break;
        }
        for table in ready {
            waves.insert(table.clone(), wave);
            placed.insert(table);
        }
    }
    for table in tables.iter().filter(|t| !placed.contains(*t)) {
        let cycle: Vec<String> = between
            .iter()
            .filter(|k| &k.child == table && !placed.contains(&k.parent))
            .map(|k| format!("{} → {}", k.name, k.parent))
            .collect();
        on_target.problems.push(format!(
            "the platform's foreign keys put {table} in a cycle of tables the job lands rows in ({}): no \
             order loads every referenced row first; {fix}",
            cycle.join(", ")
        ));
    }
    for (table, wave) in waves.into_iter().filter(|(_, w)| *w > 0) {
        let Some(source) = source_of(&table) else {
            continue;
        };
        let keys = between
            .iter()
            .filter(|k| k.child == table)
            .map(|k| format!("{} references {}", k.name, k.parent))
            .collect();
        on_target.waits.insert(source, Wait { wave, keys });
    }
    on_target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str, child: &str, parent: &str, acts: bool) -> PlatformKey {
        PlatformKey {
            name: key.into(),
            child: name(child),
            parent: name(parent),
            acts,
        }
    }

    fn name(raw: &str) -> TableName {
        TableName::parse(raw).expect("name")
    }

    #[test]
    fn referenced_tables_load_first_and_cycles_are_refused() {
        let (a, c, n) = (
            name("crm.accounts"),
            name("crm.contacts"),
            name("crm.notes"),
        );
        let (pa, pc, pn) = (name("p.accounts"), name("p.contacts"), name("p.notes"));
        let landings = [(&a, &pa), (&c, &pc), (&n, &pn)];
        let keys = [
            key("c_a", "p.contacts", "p.accounts", false),
            key("n_c", "p.notes", "p.contacts", true),
            key("n_a", "p.notes", "p.accounts", false),
        ];
        let copied = order(&landings, &keys, false);
        assert!(copied.problems.is_empty(), "{:?}", copied.problems);
        assert_eq!(copied.wave_of(&a), 0);
        assert_eq!(copied.wave_of(&c), 1);
        assert_eq!(copied.wave_of(&n), 2);
        let streamed = order(&landings, &keys, true);
        assert_eq!(streamed.problems.len(), 1, "{:?}", streamed.problems);
        assert!(
            streamed.problems[0].contains("n_c on p.notes references p.contacts with an action")
        );

        let cyclic = [
            key("c_a", "p.contacts", "p.accounts", false),
            key("a_c", "p.accounts", "p.contacts", false),
            key("self", "p.notes", "p.notes", false),
        ];
        let refused = order(&landings, &cyclic, false);
        assert_eq!(refused.problems.len(), 3, "{:?}", refused.problems);
        assert!(
            refused
                .problems
                .iter()
                .any(|p| p.contains("self on p.notes references p.notes, its own table"))
        );
        assert!(
            refused
                .problems
                .iter()
                .any(|p| p.contains("put p.accounts in a cycle") && p.contains("a_c → p.contacts"))
        );
    }
}
