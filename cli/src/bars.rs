//! Progress bars for a person at a terminal: the whole job's bytes read
//! against the source's estimate, with throughput and ETA, and a bar of
//! partitions per table below it. Only when stderr is a terminal; the
//! plain progress lines otherwise (logs, pipes, CI). Draws what a status
//! says; never asks for one.

use std::collections::BTreeMap;

use godwit_proto::v1::JobStatus;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::render;

pub struct Bars {
    bars: MultiProgress,
    total: ProgressBar,
    tables: BTreeMap<String, ProgressBar>,
}

impl Bars {
    /// None when stderr is not a terminal.
    pub fn for_terminal() -> Option<Self> {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return None;
        }
        let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = bars.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} read, {bytes_per_sec}, eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(Self {
            bars,
            total,
            tables: BTreeMap::new(),
        })
    }

    pub fn update(&mut self, status: &JobStatus) {
        let total = status.total.unwrap_or_default();
        self.total.set_prefix(status.job_id.clone());
        self.total
            .set_length(total.bytes_estimated.max(total.bytes_read));
        self.total.set_position(total.bytes_read);
        self.total.set_message(format!(
            "{} ({}/{} partitions, {} rows)",
            render::state_name(status.state),
            total.partitions_done,
            total.partitions_total,
            total.rows
        ));
        for table in &status.tables {
            let progress = table.progress.unwrap_or_default();
            let bar = self.tables.entry(table.table.clone()).or_insert_with(|| {
                let bar = self.bars.add(ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {prefix:<40} [{bar:20}] {pos}/{len} partitions {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(table.table.clone());
                bar
            });
            bar.set_length(u64::from(progress.partitions_total));
            bar.set_position(u64::from(progress.partitions_done));
            bar.set_message(format!(
                "{} rows{}",
                progress.rows,
                if table.checked { ", checked" } else { "" }
            ));
        }
    }

    /// One bar counting `unit`s toward a total, for `verify` and `replay`;
    /// None when stderr is not a terminal.
    pub fn counting(label: &str, unit: &str) -> Option<ProgressBar> {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, eta {{eta}}"
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_owned());
        Some(bar)
    }

    /// Leaves the bars as they last stood.
    pub fn finish(self) {
        for bar in self.tables.values() {
            bar.abandon();
        }
        self.total.abandon();
    }
}
