//! What a debrief says, as blocks.

use std::time::{Duration, SystemTime};

use godwit_common::debrief::{AuditHead, Debrief};

use super::{Block, Cell, Chart};

/// A time as RFC 3339, to the second, in UTC.
pub(super) fn when(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1_000.0)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The debrief being laid out.
pub(super) struct Document<'a>(pub &'a Debrief);

impl std::ops::Deref for Document<'_> {
    type Target = Debrief;

    fn deref(&self) -> &Debrief {
        self.0
    }
}

impl Document<'_> {
    /// The document, in reading order.
    pub fn blocks(&self) -> Vec<Block> {
        let report = &self.report;
        let mut blocks = vec![
            Block::Title(format!("Migration of job {}", report.job)),
            Block::Result(
                format!("Verified at {}:", when(report.verified_at_unix_ms)),
                report.matched,
            ),
        ];
        self.moved(&mut blocks);
        self.timeline(&mut blocks);
        self.cutovers(&mut blocks);
        self.verification(&mut blocks);
        self.lineage(&mut blocks);
        self.audit(&mut blocks);
        blocks
    }

    fn moved(&self, blocks: &mut Vec<Block>) {
        blocks.push(Block::Heading("What moved".into()));
        let moved = self
            .history
            .as_ref()
            .map(|h| h.moved.as_slice())
            .unwrap_or_default();
        let Some(manifest) = &self.manifest else {
            blocks.push(Block::Paragraph(
                "The staged copy's manifest is not at hand: the tables below are those the \
                 verification compared."
                    .into(),
            ));
            return;
        };
        let mut totals = (0u64, 0u64, 0u64);
        // Several source tables may land in one table: the copy's figures
        // follow the plan's order, table by table.
        let rows: Vec<Vec<Cell>> = manifest
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let staged = manifest
                    .partitions
                    .iter()
                    .filter(|p| p.table == t.name && t.partitions.contains(&p.partition));
                let (rows, chunks) =
                    staged.fold((0u64, 0u64), |(r, c), p| (r + p.rows, c + p.chunks));
                let name = t.name.to_string();
                let bytes = moved
                    .get(i)
                    .filter(|m| m.table == name)
                    .map(|m| m.bytes_read);
                totals = (
                    totals.0 + rows,
                    totals.1 + chunks,
                    totals.2 + bytes.unwrap_or(0),
                );
                vec![
                    name.into(),
                    t.partitions.len().to_string().into(),
                    chunks.to_string().into(),
                    rows.to_string().into(),
                    bytes.map_or_else(|| "-".to_owned(), mib).into(),
                ]
            })
            .collect();
        blocks.push(Block::Paragraph(format!(
            "{} table(s), {} rows in {} chunk(s), {} read from the source.",
            manifest.tables.len(),
            totals.0,
            totals.1,
            mib(totals.2)
        )));
        blocks.push(Block::table(
            &["table", "partitions", "chunks", "rows copied", "read"],
            rows,
        ));
    }

    fn timeline(&self, blocks: &mut Vec<Block>) {
        blocks.push(Block::Heading("When".into()));
        let Some(history) = &self.history else {
            blocks.push(Block::Paragraph(
                "The job's history was not staged (the job has not finished its copy), so \
                 there is no timeline."
                    .into(),
            ));
            return;
        };
        let rows: Vec<Vec<Cell>> = history
            .phases
            .iter()
            .map(|p| {
                let name = match &p.within {
                    Some(phase) => format!("{phase}: {}", p.name),
                    None => p.name.clone(),
                };
                let (ended, took) = if p.ended_unix_ms == 0 {
                    ("not ended".to_owned(), String::new())
                } else {
                    (
                        when(p.ended_unix_ms),
                        duration(p.ended_unix_ms - p.started_unix_ms),
                    )
                };
                vec![
                    name.into(),
                    when(p.started_unix_ms).into(),
                    ended.into(),
                    took.into(),
                ]
            })
            .collect();
        blocks.push(Block::table(
            &["phase", "started (UTC)", "ended (UTC)", "took"],
            rows,
        ));
        if let Some(first) = history.copied.first() {
            // The rate between consecutive samples of what had been read,
            // as steps: level over each interval.
            let since = |at: u64| (at - first.at_unix_ms) as f64 / 1_000.0;
            let points = history
                .copied
                .windows(2)
                .flat_map(|pair| {
                    let seconds = (pair[1].at_unix_ms - pair[0].at_unix_ms).max(1) as f64 / 1_000.0;
                    let mib =
                        pair[1].bytes.saturating_sub(pair[0].bytes) as f64 / (1u64 << 20) as f64;
                    let rate = mib / seconds;
                    [
                        (since(pair[0].at_unix_ms), rate),
                        (since(pair[1].at_unix_ms), rate),
                    ]
                })
                .collect();
            blocks.push(Block::Chart(Chart {
                title: format!("Copy throughput over time, from {}", when(first.at_unix_ms)),
                unit: "MiB/s read".into(),
                points,
            }));
        }
        if let Some(first) = history.lag.first() {
            let points = history
                .lag
                .iter()
                .map(|s| {
                    (
                        s.at_unix_ms.saturating_sub(first.at_unix_ms) as f64 / 1_000.0,
                        s.lag_bytes as f64 / (1u64 << 20) as f64,
                    )
                })
                .collect();
            blocks.push(Block::Chart(Chart {
                title: format!(
                    "Change stream: lag over time, from {}",
                    when(first.at_unix_ms)
                ),
                unit: "lag, MiB".into(),
                points,
            }));
        }
    }

    fn cutovers(&self, blocks: &mut Vec<Block>) {
        let Some(history) = self.history.as_ref().filter(|h| !h.cutovers.is_empty()) else {
            return;
        };
        blocks.push(Block::Heading("Cutover".into()));
        for cut in &history.cutovers {
            let outcome = match (&cut.error, cut.succeeded) {
                (_, true) => "succeeded".to_owned(),
                (Some(error), false) => format!("rolled back: {error}"),
                (None, false) => "rolled back".to_owned(),
            };
            blocks.push(Block::Paragraph(format!(
                "Started {}: the source's tables refused writes for {} ({} draining the last \
                 changes, {} checking the {} row(s) changed since the last verification); {outcome}.",
                when(cut.started_at_unix_ms),
                duration(cut.frozen_ms),
                duration(cut.drain_ms),
                duration(cut.verify_ms),
                cut.checked_keys
            )));
            let rows = cut
                .steps
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone().into(),
                        when(s.started_unix_ms).into(),
                        duration(s.ended_unix_ms - s.started_unix_ms).into(),
                    ]
                })
                .collect();
            blocks.push(Block::table(&["step", "started (UTC)", "took"], rows));
        }
    }

    fn verification(&self, blocks: &mut Vec<Block>) {
        let report = &self.report;
        blocks.push(Block::Heading("Verification".into()));
        let schema = &report.schema;
        blocks.push(Block::Result(
            format!(
                "Schema: {} missing on the target, {} extra, {} defined differently, {} sequences \
                 behind:",
                schema.missing_on_target.len(),
                schema.extra_on_target.len(),
                schema.different.len(),
                schema.sequences_behind.len()
            ),
            schema.matched,
        ));
        let rows = report
            .tables
            .iter()
            .map(|t| {
                vec![
                    t.table.clone().into(),
                    t.source_rows.to_string().into(),
                    t.target_rows
                        .map_or_else(|| "absent".to_owned(), |n| n.to_string())
                        .into(),
                    Cell::Verdict(t.counts_match),
                    Cell::Verdict(t.content.matched),
                    t.content.method.clone().into(),
                    ((t.content.missing.len() + t.content.extra.len() + t.content.different.len())
                        as u64
                        + t.content.unlisted)
                        .to_string()
                        .into(),
                ]
            })
            .collect();
        blocks.push(Block::table(
            &[
                "table",
                "source rows",
                "target rows",
                "counts",
                "content",
                "compared by",
                "rows differing",
            ],
            rows,
        ));
        blocks.push(Block::Subheading("Foreign keys".into()));
        let keys = report
            .foreign_keys
            .iter()
            .map(|k| {
                vec![
                    k.constraint.clone().into(),
                    k.orphans.to_string().into(),
                    Cell::Verdict(k.orphans == 0),
                ]
            })
            .collect();
        blocks.push(Block::table(&["foreign key", "orphans", "result"], keys));
    }

    fn lineage(&self, blocks: &mut Vec<Block>) {
        let Some(mapping) = &self.report.mapping else {
            return;
        };
        blocks.push(Block::Heading("Mapping lineage".into()));
        blocks.push(Block::Paragraph(format!(
            "Mapping version {}",
            mapping.version
        )));
        let lineage = mapping
            .lineage
            .iter()
            .map(|l| {
                vec![
                    l.source.clone().into(),
                    l.target.clone().into(),
                    l.rule.clone().into(),
                ]
            })
            .collect();
        blocks.push(Block::table(
            &["source column", "target column", "rule"],
            lineage,
        ));
        if !mapping.skipped.is_empty() {
            blocks.push(Block::Subheading(
                "Rows left on the source (on_error: skip-row)".into(),
            ));
            let skipped = mapping
                .skipped
                .iter()
                .map(|s| vec![s.table.clone().into(), s.rows.to_string().into()])
                .collect();
            blocks.push(Block::table(&["table", "rows skipped"], skipped));
        }
    }

    fn audit(&self, blocks: &mut Vec<Block>) {
        let Some(audit) = &self.audit else {
            return;
        };
        blocks.push(Block::Heading("Audit trail".into()));
        blocks.push(match audit {
            AuditHead::Intact { records, head } => Block::Result(
                format!("{records} record(s), chained and authenticated; head SHA-256 {head}:"),
                true,
            ),
            AuditHead::Broken(at) => Block::Result(format!("Broken at {at}:"), false),
            AuditHead::Unread(why) => Block::Paragraph(format!("Not read: {why}")),
        });
    }
}
