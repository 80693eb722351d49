//! The debrief as a PDF, written by `pdf-writer` (no browser): A4 pages,
//! the standard Helvetica fonts (nothing embedded), tables laid out in
//! columns, charts drawn as lines. Text outside Latin-1 is shown as `?`.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};

use super::model::Document;
use super::{Block, Cell, Chart};
use godwit_common::debrief::Debrief;

const PAGE: (f32, f32) = (595.0, 842.0);
const MARGIN: f32 = 50.0;
const REGULAR: Name<'static> = Name(b"F1");
const BOLD: Name<'static> = Name(b"F2");
/// Helvetica's average glyph width, as a share of its size: what lines
/// are wrapped and cells cut by.
const GLYPH: f32 = 0.52;

/// The largest time and value of a series, never zero (a flat or empty
/// series still gets axes).
pub(super) fn extent(points: &[(f64, f64)]) -> (f64, f64) {
    let max_x = points.iter().map(|p| p.0).fold(0.0, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(0.0, f64::max);
    (
        if max_x > 0.0 { max_x } else { 1.0 },
        if max_y > 0.0 { max_y } else { 1.0 },
    )
}

/// A time along a chart's axis, precise enough for short runs.
pub(super) fn seconds(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2} s")
    } else {
        format!("{value:.0} s")
    }
}

/// Latin-1 bytes of `text` (WinAnsi agrees on the printable ones); the
/// arrows and dashes the reports use are spelled out.
fn latin1(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '→' => out.extend_from_slice(b"->"),
            '…' => out.extend_from_slice(b"..."),
            '—' | '–' => out.push(b'-'),
            _ => out.push(match u32::from(c) {
                0x20..=0x7e | 0xa0..=0xff => c as u8,
                _ => b'?',
            }),
        }
    }
    out
}

/// `text` cut to what fits in `width` points at `size`.
fn fit(text: &str, size: f32, width: f32) -> String {
    let room = ((width / (size * GLYPH)) as usize).max(4);
    if text.chars().count() <= room {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(room - 3).collect();
        format!("{cut}...")
    }
}

/// Words of `text` in lines that fit `width` at `size`.
fn wrap(text: &str, size: f32, width: f32) -> Vec<String> {
    let room = ((width / (size * GLYPH)) as usize).max(8);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > room {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Pages being filled, top to bottom.
struct Pages {
    done: Vec<Content>,
    page: Content,
    y: f32,
}

impl Pages {
    fn new() -> Self {
        Self {
            done: Vec::new(),
            page: Content::new(),
            y: PAGE.1 - MARGIN,
        }
    }

    /// Room for `height` more points, on a new page if need be.
    fn room(&mut self, height: f32) {
        if self.y - height < MARGIN {
            self.done
                .push(std::mem::replace(&mut self.page, Content::new()));
            self.y = PAGE.1 - MARGIN;
        }
    }

    fn text_at(&mut self, x: f32, y: f32, font: Name<'_>, size: f32, text: &str) {
        self.page.begin_text();
        self.page.set_font(font, size);
        self.page.next_line(x, y);
        self.page.show(Str(&latin1(text)));
        self.page.end_text();
    }

    fn line(&mut self, font: Name<'_>, size: f32, text: &str, gap: f32) {
        for part in wrap(text, size, PAGE.0 - 2.0 * MARGIN) {
            self.room(size + gap);
            self.y -= size + gap;
            self.text_at(MARGIN, self.y, font, size, &part);
        }
    }

    fn verdict(&mut self, x: f32, y: f32, size: f32, matched: bool) {
        let (r, g, b, word) = if matched {
            (0.0, 0.4, 0.0, "match")
        } else {
            (0.65, 0.0, 0.0, "difference")
        };
        self.page.set_fill_rgb(r, g, b);
        self.text_at(x, y, BOLD, size, word);
        self.page.set_fill_rgb(0.0, 0.0, 0.0);
    }

    fn table(&mut self, head: &[String], rows: &[Vec<Cell>]) {
        const SIZE: f32 = 8.0;
        let width = PAGE.0 - 2.0 * MARGIN;
        // Columns share the width by their longest text, within bounds.
        let longest: Vec<f32> = (0..head.len())
            .map(|i| {
                let cells = rows.iter().filter_map(|r| r.get(i)).map(|c| match c {
                    Cell::Text(t) => t.chars().count(),
                    Cell::Verdict(_) => 10,
                });
                cells.chain([head[i].chars().count()]).max().unwrap_or(4) as f32
            })
            .map(|n| n.clamp(6.0, 48.0))
            .collect();
        let total: f32 = longest.iter().sum();
        let widths: Vec<f32> = longest.iter().map(|n| n / total * width).collect();
        let draw = |pages: &mut Self, cells: &[Cell], font: Name<'_>| {
            pages.room(SIZE + 5.0);
            pages.y -= SIZE + 5.0;
            let mut x = MARGIN;
            for (cell, w) in cells.iter().zip(&widths) {
                match cell {
                    Cell::Text(text) => {
                        let shown = fit(text, SIZE, w - 4.0);
                        pages.text_at(x, pages.y, font, SIZE, &shown);
                    }
                    Cell::Verdict(matched) => pages.verdict(x, pages.y, SIZE, *matched),
                }
                x += w;
            }
        };
        let head: Vec<Cell> = head.iter().map(|h| Cell::Text(h.clone())).collect();
        draw(self, &head, BOLD);
        for row in rows {
            draw(self, row, REGULAR);
        }
        self.y -= 6.0;
    }

    fn chart(&mut self, chart: &Chart) {
        const HEIGHT: f32 = 130.0;
        self.line(BOLD, 9.0, &chart.title, 8.0);
        self.room(HEIGHT + 20.0);
        let (left, right) = (MARGIN + 30.0, PAGE.0 - MARGIN);
        let (top, base) = (self.y - 12.0, self.y - HEIGHT);
        let (max_x, max_y) = extent(&chart.points);
        self.page.set_line_width(0.5);
        self.page.move_to(left, top);
        self.page.line_to(left, base);
        self.page.line_to(right, base);
        self.page.stroke();
        let at = |(x, y): (f64, f64)| {
            (
                left + (x / max_x) as f32 * (right - left),
                base + (y / max_y) as f32 * (top - base),
            )
        };
        if let Some(first) = chart.points.first() {
            self.page.set_line_width(1.5);
            self.page.set_stroke_rgb(0.08, 0.4, 0.75);
            let (x, y) = at(*first);
            self.page.move_to(x, y);
            for point in &chart.points[1..] {
                let (x, y) = at(*point);
                self.page.line_to(x, y);
            }
            self.page.stroke();
            self.page.set_stroke_rgb(0.0, 0.0, 0.0);
        }
        self.text_at(
            MARGIN,
            top,
            REGULAR,
            7.0,
            &format!("{max_y:.2} {}", chart.unit),
        );
        self.text_at(left, base - 10.0, REGULAR, 7.0, "0 s");
        self.text_at(right - 30.0, base - 10.0, REGULAR, 7.0, &seconds(max_x));
        self.y = base - 22.0;
    }
}

/// The debrief as PDF bytes.
pub fn pdf(debrief: &Debrief) -> Vec<u8> {
    let mut pages = Pages::new();
    for block in Document(debrief).blocks() {
        match block {
            Block::Title(text) => pages.line(BOLD, 18.0, &text, 8.0),
            Block::Heading(text) => pages.line(BOLD, 13.0, &text, 14.0),
            Block::Subheading(text) => pages.line(BOLD, 10.0, &text, 10.0),
            Block::Paragraph(text) => pages.line(REGULAR, 9.0, &text, 5.0),
            Block::Result(text, matched) => {
                pages.line(REGULAR, 9.0, &text, 5.0);
                pages.room(12.0);
                pages.y -= 12.0;
                pages.verdict(MARGIN, pages.y, 9.0, matched);
            }
            Block::Table { head, rows } => pages.table(&head, &rows),
            Block::Chart(chart) => pages.chart(&chart),
        }
    }
    pages.done.push(pages.page);

    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first_page = 6;
    let page_ids: Vec<Ref> = (0..pages.done.len())
        .map(|i| Ref::new(first_page + 2 * i as i32))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(page_ids.len() as i32);
    pdf.document_info(info)
        .title(TextStr(&format!("Migration of job {}", debrief.report.job)))
        .creator(TextStr("godwit"));
    for (font, base) in [(regular, "Helvetica"), (bold, "Helvetica-Bold")] {
        pdf.type1_font(font)
            .base_font(Name(base.as_bytes()))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }
    for (content, id) in pages.done.into_iter().zip(&page_ids) {
        let content_id = Ref::new(id.get() + 1);
        let mut page = pdf.page(*id);
        page.media_box(Rect::new(0.0, 0.0, PAGE.0, PAGE.1));
        page.parent(tree);
        page.contents(content_id);
        page.resources()
            .fonts()
            .pair(REGULAR, regular)
            .pair(BOLD, bold);
        page.finish();
        pdf.stream(content_id, &content.finish());
    }
    pdf.finish()
}
