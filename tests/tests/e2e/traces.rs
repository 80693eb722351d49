//! What a job's trace must look like, as the suite's OTLP receiver got it
//! from the CLI, the coordinator and the workers: one trace, the command
//! that submitted the job at its root, then the job, its phases and their
//! steps, each table of the copy with its partitions, each partition's
//! chunks, each chunk's read, seal, stage and load; for a stream, its
//! change batches and each cutover with its steps.

use std::collections::HashMap;
use std::time::Duration;

use godwit_tests::otlp::{OtlpReceiver, SpanSeen};
use godwit_tests::wait_until;

/// The spans of one trace, by id.
pub(crate) struct Tree {
    pub spans: Vec<SpanSeen>,
}

impl Tree {
    /// Waits until the receiver has the job's span (sent once the job has
    /// ended), then takes its whole trace.
    pub(crate) async fn of_job(collector: &OtlpReceiver, job: &str) -> anyhow::Result<Self> {
        let job_span = wait_until("the job's span", Duration::from_secs(30), || async {
            Ok(collector
                .spans()
                .into_iter()
                .find(|s| s.name == "job" && s.attribute("godwit.job") == Some(job)))
        })
        .await?;
        // The workers' and the CLI's last batches may come a moment later.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let spans = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace == job_span.trace)
            .collect();
        Ok(Self { spans })
    }

    pub(crate) fn named(&self, name: &str) -> Vec<&SpanSeen> {
        self.spans.iter().filter(|s| s.name == name).collect()
    }

    pub(crate) fn one(&self, name: &str) -> anyhow::Result<&SpanSeen> {
        let found = self.named(name);
        anyhow::ensure!(
            found.len() == 1,
            "{} span(s) named {name:?} in the trace: {}",
            found.len(),
            self.outline()
        );
        Ok(found[0])
    }

    pub(crate) fn children<'a>(&'a self, parent: &SpanSeen) -> Vec<&'a SpanSeen> {
        self.spans
            .iter()
            .filter(|s| s.parent == parent.span)
            .collect()
    }

    pub(crate) fn child_names(&self, parent: &SpanSeen) -> Vec<String> {
        let mut names: Vec<String> = self
            .children(parent)
            .iter()
            .map(|s| s.name.clone())
            .collect();
        names.sort();
        names
    }

    /// Every span but the root has its parent in the trace, and starts no
    /// earlier than it ends.
    pub(crate) fn assert_connected(&self) -> anyhow::Result<()> {
        let ids: HashMap<&str, &SpanSeen> =
            self.spans.iter().map(|s| (s.span.as_str(), s)).collect();
        let roots: Vec<&SpanSeen> = self.spans.iter().filter(|s| s.parent.is_empty()).collect();
        anyhow::ensure!(roots.len() == 1, "roots: {roots:?}");
        for span in &self.spans {
            anyhow::ensure!(
                span.parent.is_empty() || ids.contains_key(span.parent.as_str()),
                "span {} ({}) hangs under a span not in the trace:\n{}",
                span.name,
                span.service,
                self.outline()
            );
            anyhow::ensure!(span.start_unix_nano <= span.end_unix_nano, "{span:?}");
        }
        Ok(())
    }

    /// Names and services, for a failure's message.
    pub(crate) fn outline(&self) -> String {
        let mut names: HashMap<(String, String), usize> = HashMap::new();
        for span in &self.spans {
            *names
                .entry((span.service.clone(), span.name.clone()))
                .or_default() += 1;
        }
        format!("{names:?}")
    }
}

/// A copied job's trace: `godwit submit` → job → planning (snapshot,
/// schema), copying (a span per table, its partitions from the workers,
/// their chunks and each chunk's stages), finalizing (indexes, sequences,
/// check). `tables` maps each table to the rows the source counts.
pub(crate) fn assert_copy_tree(
    tree: &Tree,
    command: &str,
    tables: &HashMap<String, i64>,
) -> anyhow::Result<()> {
    tree.assert_connected()?;
    let root = tree.one(command)?;
    anyhow::ensure!(root.service == "godwit" && root.parent.is_empty());
    let job = tree.one("job")?;
    anyhow::ensure!(job.parent == root.span, "the job hangs under the command");
    anyhow::ensure!(job.service == "godwit-coordinator" || command == "godwit run");
    anyhow::ensure!(!job.failed && job.attribute("godwit.outcome") == Some("Done"));
    for phase in ["planning", "copying", "finalizing"] {
        anyhow::ensure!(
            tree.one(phase)?.parent == job.span,
            "{phase} is not the job's"
        );
    }
    anyhow::ensure!(
        tree.child_names(tree.one("planning")?) == ["schema", "snapshot"],
        "planning's steps: {:?}",
        tree.child_names(tree.one("planning")?)
    );
    anyhow::ensure!(
        tree.child_names(tree.one("finalizing")?) == ["check", "indexes", "sequences"],
        "finalizing's steps: {:?}",
        tree.child_names(tree.one("finalizing")?)
    );
    let copying = tree.one("copying")?;
    let table_spans = tree.children(copying);
    let mut seen = HashMap::new();
    for table in &table_spans {
        anyhow::ensure!(table.name == "table", "{table:?}");
        let name = table.attribute("godwit.table").unwrap_or_default();
        let rows: i64 = table.attribute("godwit.rows").unwrap_or_default().parse()?;
        seen.insert(name.to_owned(), rows);
        let partitions = tree.children(table);
        anyhow::ensure!(!partitions.is_empty(), "{name} has no partition span");
        let mut partition_rows = 0;
        for partition in partitions {
            anyhow::ensure!(
                partition.name == "partition"
                    && partition.service.starts_with("godwit")
                    && partition.attribute("godwit.outcome") == Some("copied")
                    && !partition.failed,
                "{partition:?}"
            );
            partition_rows += partition
                .attribute("godwit.rows")
                .unwrap_or_default()
                .parse::<i64>()?;
            let chunks = tree.children(partition);
            anyhow::ensure!(
                partition.attribute("godwit.chunks") == Some(&chunks.len().to_string()),
                "{name}: {} chunk span(s) for {partition:?}",
                chunks.len()
            );
            for chunk in chunks {
                anyhow::ensure!(
                    tree.child_names(chunk) == ["load", "read", "seal", "stage"],
                    "{name}'s chunk stages: {:?}",
                    tree.child_names(chunk)
                );
            }
        }
        anyhow::ensure!(partition_rows == rows, "{name}: partitions' rows");
    }
    anyhow::ensure!(
        &seen == tables,
        "tables and rows in the trace {seen:?}, on the source {tables:?}"
    );
    Ok(())
}
