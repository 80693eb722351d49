//! The customer's debrief: what moved (tables, rows, bytes), when (the
//! phases' timeline), the copy's throughput and the stream's lag over
//! time, each cutover and its frozen time, the verification layers and
//! their results, the mapping's lineage, and the audit trail's head hash.
//! Gathered once from what the job staged (its report, manifest, history
//! and audit trail) into [`Block`]s that [`html`] and [`pdf`] render the
//! same way. Never a value of the customer's rows: names, counts, sizes,
//! times and hashes only.

mod html;
mod model;
mod pdf;

pub use html::html;
pub use pdf::pdf;

/// One cell of a table.
#[derive(Debug, Clone)]
pub enum Cell {
    Text(String),
    /// A result: match or difference.
    Verdict(bool),
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::Text(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::Text(text.to_owned())
    }
}

/// A series over time: (seconds since the start, value).
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    /// What the values measure (`MiB copied`, `lag, MiB`).
    pub unit: String,
    pub points: Vec<(f64, f64)>,
}

/// A piece of the document, in reading order.
#[derive(Debug, Clone)]
pub enum Block {
    Title(String),
    Heading(String),
    Subheading(String),
    Paragraph(String),
    /// A paragraph ending in a verdict.
    Result(String, bool),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<Cell>>,
    },
    Chart(Chart),
}

impl Block {
    pub fn table(head: &[&str], rows: Vec<Vec<Cell>>) -> Self {
        Block::Table {
            head: head.iter().map(|h| (*h).to_owned()).collect(),
            rows,
        }
    }
}

/// Writes `debrief` to stdout as `format` (HTML, PDF or JSON); its exit code. A
/// PDF is refused at a terminal, where it would print as noise.
pub fn write(debrief: &godwit_common::debrief::Debrief, format: crate::ReportFormat) -> i32 {
    use std::io::{IsTerminal, Write};
    let bytes = match format {
        crate::ReportFormat::Pdf => {
            if std::io::stdout().is_terminal() {
                eprintln!(
                    "error: a PDF is not for the terminal: redirect it, e.g. `godwit report … \
                     --format pdf > debrief.pdf`"
                );
                return 2;
            }
            pdf(debrief)
        }
        crate::ReportFormat::Json => match serde_json::to_vec_pretty(debrief) {
            Ok(mut json) => {
                json.push(b'\n');
                json
            }
            Err(e) => {
                eprintln!("error: cannot write the debrief: {e}");
                return 1;
            }
        },
        _ => html(debrief).into_bytes(),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: cannot write the debrief: {e}");
            1
        }
    }
}
