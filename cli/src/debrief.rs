//! The customer's debrief as one self-contained HTML document (no script,
//! no remote asset): what moved (tables, rows, chunks, from the staged
//! copy's manifest when the staging is at hand), the verification layers
//! and their results, and the mapping's lineage and skipped rows. Renders
//! what it is given; reads nothing. Every text is escaped.

use godwit_common::state::Manifest;
use godwit_common::verify::Report;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn verdict(matched: bool) -> &'static str {
    if matched {
        "<span class=\"ok\">match</span>"
    } else {
        "<span class=\"bad\">difference</span>"
    }
}

/// A table of `rows`, under `head`; every cell escaped but verdicts.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in head {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{cell}</td>"));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

pub fn html(report: &Report, manifest: Option<&Manifest>) -> String {
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>Migration of job {}</h1><p>Verified at {} (ms since the Unix epoch): {}</p>",
        escape(&report.job),
        report.verified_at_unix_ms,
        verdict(report.matched)
    ));
    if let Some(manifest) = manifest {
        body.push_str("<h2>What moved</h2>");
        let rows: Vec<Vec<String>> = manifest
            .tables
            .iter()
            .map(|t| {
                let staged = manifest
                    .partitions
                    .iter()
                    .filter(|p| p.table == t.name && t.partitions.contains(&p.partition));
                let (rows, chunks) =
                    staged.fold((0u64, 0u64), |(r, c), p| (r + p.rows, c + p.chunks));
                vec![
                    escape(&t.name.to_string()),
                    t.partitions.len().to_string(),
                    chunks.to_string(),
                    rows.to_string(),
                ]
            })
            .collect();
        body.push_str(&table(
            &["table", "partitions", "chunks", "rows copied"],
            &rows,
        ));
    }
    body.push_str("<h2>Verification</h2>");
    let schema = &report.schema;
    body.push_str(&format!(
        "<p>Schema: {} ({} missing on the target, {} extra, {} defined differently, {} sequences behind)</p>",
        verdict(schema.matched),
        schema.missing_on_target.len(),
        schema.extra_on_target.len(),
        schema.different.len(),
        schema.sequences_behind.len()
    ));
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|t| {
            vec![
                escape(&t.table),
                t.source_rows.to_string(),
                t.target_rows
                    .map_or_else(|| "absent".to_owned(), |n| n.to_string()),
                verdict(t.counts_match).to_owned(),
                verdict(t.content.matched).to_owned(),
                escape(&t.content.method),
                (t.content.missing.len() + t.content.extra.len() + t.content.different.len())
                    .to_string(),
            ]
        })
        .collect();
    body.push_str(&table(
        &[
            "table",
            "source rows",
            "target rows",
            "counts",
            "content",
            "compared by",
            "rows named",
        ],
        &rows,
    ));
    let keys: Vec<Vec<String>> = report
        .foreign_keys
        .iter()
        .map(|k| {
            vec![
                escape(&k.constraint),
                k.orphans.to_string(),
                verdict(k.orphans == 0).to_owned(),
            ]
        })
        .collect();
    body.push_str("<h3>Foreign keys</h3>");
    body.push_str(&table(&["foreign key", "orphans", "result"], &keys));
    if let Some(mapping) = &report.mapping {
        body.push_str(&format!(
            "<h2>Mapping lineage</h2><p>Mapping version {}</p>",
            escape(&mapping.version)
        ));
        let lineage: Vec<Vec<String>> = mapping
            .lineage
            .iter()
            .map(|l| vec![escape(&l.source), escape(&l.target), escape(&l.rule)])
            .collect();
        body.push_str(&table(
            &["source column", "target column", "rule"],
            &lineage,
        ));
        if !mapping.skipped.is_empty() {
            body.push_str("<h3>Rows left on the source (on_error: skip-row)</h3>");
            let skipped: Vec<Vec<String>> = mapping
                .skipped
                .iter()
                .map(|s| vec![escape(&s.table), s.rows.to_string()])
                .collect();
            body.push_str(&table(&["table", "rows skipped"], &skipped));
        }
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Migration of job {}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #999;padding:.3em .6em;text-align:left}}.ok{{color:#060}}.bad{{color:#a00}}</style>\
         </head><body>{body}</body></html>\n",
        escape(&report.job)
    )
}
