//! The debrief as one self-contained HTML document: no script, no remote
//! asset, charts drawn as inline SVG. Every text is escaped.

use super::model::Document;
use super::{Block, Cell, Chart};
use godwit_common::debrief::Debrief;

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

fn table(head: &[String], rows: &[Vec<Cell>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in head {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            match cell {
                Cell::Text(text) => out.push_str(&format!("<td>{}</td>", escape(text))),
                Cell::Verdict(matched) => out.push_str(&format!("<td>{}</td>", verdict(*matched))),
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A line chart in SVG: time along, the value up, both axes labelled with
/// their ranges.
fn chart(chart: &Chart) -> String {
    const W: f64 = 560.0;
    const H: f64 = 180.0;
    const PAD: f64 = 40.0;
    let (max_x, max_y) = super::pdf::extent(&chart.points);
    let at = |(x, y): (f64, f64)| {
        (
            PAD + x / max_x * (W - 2.0 * PAD),
            H - PAD - y / max_y * (H - 2.0 * PAD),
        )
    };
    let line: Vec<String> = chart
        .points
        .iter()
        .map(|p| {
            let (x, y) = at(*p);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<figure><figcaption>{title}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" \
         height=\"{H}\" role=\"img\" aria-label=\"{title}\">\
         <line x1=\"{PAD}\" y1=\"{base}\" x2=\"{right}\" y2=\"{base}\" stroke=\"#555\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{base}\" stroke=\"#555\"/>\
         <polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"2\" points=\"{points}\"/>\
         <text x=\"{PAD}\" y=\"{below}\" font-size=\"11\">0 s</text>\
         <text x=\"{right}\" y=\"{below}\" font-size=\"11\" text-anchor=\"end\">{span}</text>\
         <text x=\"2\" y=\"{top}\" font-size=\"11\">{max_y:.2} {unit}</text></svg></figure>",
        title = escape(&chart.title),
        base = H - PAD,
        right = W - PAD,
        below = H - PAD + 15.0,
        top = PAD - 8.0,
        points = line.join(" "),
        span = super::pdf::seconds(max_x),
        unit = escape(&chart.unit),
    )
}

pub fn html(debrief: &Debrief) -> String {
    let mut body = String::new();
    for block in Document(debrief).blocks() {
        match block {
            Block::Title(text) => body.push_str(&format!("<h1>{}</h1>", escape(&text))),
            Block::Heading(text) => body.push_str(&format!("<h2>{}</h2>", escape(&text))),
            Block::Subheading(text) => body.push_str(&format!("<h3>{}</h3>", escape(&text))),
            Block::Paragraph(text) => body.push_str(&format!("<p>{}</p>", escape(&text))),
            Block::Result(text, matched) => {
                body.push_str(&format!("<p>{} {}</p>", escape(&text), verdict(matched)))
            }
            Block::Table { head, rows } => body.push_str(&table(&head, &rows)),
            Block::Chart(c) => body.push_str(&chart(&c)),
        }
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Migration of job {}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}\
         td,th{{border:1px solid #999;padding:.3em .6em;text-align:left}}.ok{{color:#060}}.bad{{color:#a00}}\
         figure{{margin:1em 0}}</style></head><body>{body}</body></html>\n",
        escape(&debrief.report.job)
    )
}
