//! Human-readable job status and summaries.

use godwit_proto::v1::{JobState, JobStatus};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    if secs >= 3600 {
        format!("{}h{:02}m{:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// A short duration to the millisecond (a cutover's frozen time), longer
/// ones as [`duration_ms`].
pub fn short_duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        duration_ms(ms)
    }
}

/// A job's status as JSON: the API's message, its state by name.
pub fn status_json(status: &JobStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or(serde_json::Value::Null);
    if let Some(object) = value.as_object_mut() {
        object.insert("state".into(), state_name(status.state).into());
    }
    value
}

pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state).unwrap_or(JobState::Unspecified) {
        JobState::Unspecified => "unknown",
        JobState::Planning => "planning",
        JobState::Copying => "copying",
        JobState::Finalizing => "finalizing",
        JobState::Streaming => "streaming",
        JobState::CuttingOver => "cutting over",
        JobState::Done => "done",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

/// One line: state, partitions, rows, bytes, ETA.
pub fn progress_line(status: &JobStatus) -> String {
    let total = status.total.unwrap_or_default();
    let eta = status
        .eta_ms
        .map(|ms| format!(", eta {}", duration_ms(ms)))
        .unwrap_or_default();
    let paused = if status.paused { " (paused)" } else { "" };
    let throttle = status
        .throttle
        .as_ref()
        .map(|t| format!("\n  throttle {}", throttle_line(t)))
        .unwrap_or_default();
    let changes = status
        .changes
        .as_ref()
        .map(|c| format!("\n  changes {}", changes_line(c)))
        .unwrap_or_default();
    let approvals: String = status
        .awaiting_approval
        .iter()
        .map(|a| {
            format!("\n  awaiting approval: {a} (godwit approve JOB ACTION by another identity)")
        })
        .collect();
    let verifying = status
        .verifying_since_unix_ms
        .map(|since| {
            let running = status
                .started_at_unix_ms
                .saturating_add(status.elapsed_ms)
                .saturating_sub(since);
            format!(
                "\n  verification running for {} (a cutover waits for it)",
                duration_ms(running)
            )
        })
        .unwrap_or_default();
    format!(
        "{} {}{paused}: {}/{} partitions, {} rows, {} read, {} staged, {} elapsed{eta}{throttle}{changes}{approvals}{verifying}",
        status.job_id,
        state_name(status.state),
        total.partitions_done,
        total.partitions_total,
        total.rows,
        bytes(total.bytes_read),
        bytes(total.bytes_staged),
        duration_ms(status.elapsed_ms),
    )
}

/// Where a change stream stands and how its last cutover went.
pub fn changes_line(c: &godwit_proto::v1::Changes) -> String {
    let cutover = c
        .last_cutover
        .as_ref()
        .map(|cut| format!("; last cutover: {}", cutover_line(cut)))
        .unwrap_or_default();
    format!(
        "applied to {}: {} transactions, {} rows; lag {} / {}{}; slot retains {} of source WAL{cutover}",
        c.applied_lsn,
        c.transactions,
        c.rows,
        bytes(c.lag_bytes),
        duration_ms(c.lag_ms),
        catch_up_eta(c.lag_bytes, c.catch_up_bytes_per_s),
        bytes(c.retained_wal_bytes)
    )
}

/// When the stream will have caught up at its recent pace, if it is behind
/// by more than a moment's worth.
fn catch_up_eta(lag_bytes: u64, bytes_per_s: u64) -> String {
    const NOTICEABLE: u64 = 1 << 20;
    if lag_bytes < NOTICEABLE {
        return String::new();
    }
    if bytes_per_s == 0 {
        return ", not catching up".into();
    }
    format!(
        ", caught up in ~{}",
        duration_ms(lag_bytes.saturating_mul(1000) / bytes_per_s)
    )
}

pub fn cutover_line(cut: &godwit_proto::v1::Cutover) -> String {
    let timing = format!(
        "source frozen {} (drain {}, check of {} changed keys and {} whole tables {}), \
         after a full verification of {} while writes went on",
        short_duration_ms(cut.frozen_ms),
        short_duration_ms(cut.drain_ms),
        cut.checked_keys,
        cut.whole_tables,
        short_duration_ms(cut.verify_ms),
        duration_ms(cut.baseline_verify_ms)
    );
    if cut.succeeded {
        format!("done, {timing}")
    } else {
        format!("rolled back after {timing}: {}", cut.error)
    }
}

/// A customer's limits and the coordinator's latest decision on them.
pub fn throttle_line(t: &godwit_proto::v1::Throttle) -> String {
    let rate = t
        .bytes_per_sec
        .map_or_else(|| "unlimited".to_owned(), |r| format!("{}/s", bytes(r)));
    let sessions = t
        .max_connections
        .map_or_else(|| "uncapped".to_owned(), |c| c.to_string());
    format!(
        "customer {}: rate {rate}, source sessions {sessions}, shared by {} leases ({})",
        t.customer, t.leases, t.reason
    )
}

/// The overall line, then a line for each table whose progress changed
/// since `previous`: what `godwit watch` prints on every update.
pub fn progress_update(previous: Option<&JobStatus>, status: &JobStatus) -> String {
    let mut out = format!("{}\n", progress_line(status));
    for table in &status.tables {
        let before = previous.and_then(|p| p.tables.iter().find(|t| t.table == table.table));
        if before == Some(table) {
            continue;
        }
        out.push_str(&table_line(table));
    }
    out
}

fn table_line(table: &godwit_proto::v1::TableStatus) -> String {
    let progress = table.progress.unwrap_or_default();
    format!(
        "  {:<40} {:>3}/{:<3} partitions {:>12} rows {:>10} read {}\n",
        table.table,
        progress.partitions_done,
        progress.partitions_total,
        progress.rows,
        bytes(progress.bytes_read),
        if table.checked { "checked" } else { "" }
    )
}

/// The full table-by-table view.
pub fn table_report(status: &JobStatus) -> String {
    let mut out = format!("{}\n", progress_line(status));
    if !status.error.is_empty() {
        out.push_str(&format!("  error: {}\n", status.error));
    }
    for table in &status.tables {
        out.push_str(&table_line(table));
    }
    out
}

/// Prints a verification's summary and where its sealed report went,
/// writes the JSON report if asked; returns the exit code (0 match,
/// 1 different, 2 the report could not be written).
pub fn verification(
    summary: &str,
    stored_at: Result<String, String>,
    json: &str,
    report_path: Option<&std::path::Path>,
    matched: bool,
) -> i32 {
    println!("{summary}");
    match stored_at {
        Ok(location) => println!("report stored, sealed, at {location} (`godwit report` shows it)"),
        Err(e) => eprintln!("warning: the report was not stored in staging: {e}"),
    }
    if let Some(path) = report_path
        && let Err(e) = std::fs::write(path, json)
    {
        eprintln!("error: cannot write the report to {}: {e}", path.display());
        return 2;
    }
    if matched { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catch_up_eta_shows_only_when_the_stream_is_behind() {
        assert_eq!(catch_up_eta(4096, 0), "");
        assert_eq!(catch_up_eta(8 << 20, 0), ", not catching up");
        assert_eq!(catch_up_eta(8 << 20, 2 << 20), ", caught up in ~4.0s");
    }
}
