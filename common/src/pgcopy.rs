//! PostgreSQL `COPY … (FORMAT binary)` framing: cuts the source stream at
//! tuple boundaries into chunks of whole rows, and re-frames chunks for
//! `COPY … FROM STDIN (FORMAT binary)`. Never interprets field values, so
//! every type round-trips byte for byte.

use crate::{Error, Result};

pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_FIXED_LEN: usize = SIGNATURE.len() + 4 + 4;
const TRAILER: [u8; 2] = [0xff, 0xff];

/// A tuple's physical position: what a resumed partition continues after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ctid {
    pub block: u32,
    pub offset: u16,
}

impl std::fmt::Display for Ctid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({},{})", self.block, self.offset)
    }
}

impl Ctid {
    /// Parses PostgreSQL's text form `(block,offset)`.
    pub fn parse(text: &str) -> Option<Self> {
        let (block, offset) = text.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
        Some(Self {
            block: block.trim().parse().ok()?,
            offset: offset.trim().parse().ok()?,
        })
    }
}

/// Whole tuples, ready to be sealed or loaded, and where the last one sat.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TupleBatch {
    pub bytes: Vec<u8>,
    pub rows: u64,
    pub last_ctid: Option<Ctid>,
}

/// Rows cut so far, until they make a batch of about `target_bytes`.
struct BatchBuilder {
    target_bytes: usize,
    out: Vec<u8>,
    rows: u64,
    last_ctid: Option<Ctid>,
}

impl BatchBuilder {
    fn new(target_bytes: usize) -> Self {
        Self {
            target_bytes,
            out: Vec::with_capacity(batch_capacity(target_bytes)),
            rows: 0,
            last_ctid: None,
        }
    }

    /// Records a row just appended to `out`; returns a full batch.
    fn row_done(&mut self, ctid: Ctid) -> Option<TupleBatch> {
        self.last_ctid = Some(ctid);
        self.rows += 1;
        (self.out.len() >= self.target_bytes).then(|| self.take())
    }

    /// The rows gathered so far, if any.
    fn rest(mut self) -> Option<TupleBatch> {
        (self.rows > 0).then(|| self.take())
    }

    fn take(&mut self) -> TupleBatch {
        let capacity = batch_capacity(self.target_bytes);
        TupleBatch {
            bytes: std::mem::replace(&mut self.out, Vec::with_capacity(capacity)),
            rows: std::mem::take(&mut self.rows),
            last_ctid: self.last_ctid,
        }
    }
}

/// Incremental parser over a COPY binary stream whose first column is the
/// row's `ctid`. Yields batches of about `target_bytes` of whole tuples with
/// the `ctid` column removed (what the target loads), each with the `ctid`
/// of its last row (where a resumed partition continues).
pub struct TupleCutter {
    /// Input not yet parsed; starts at a tuple boundary once the header is gone.
    pending: Vec<u8>,
    batch: BatchBuilder,
    header_seen: bool,
    trailer_seen: bool,
}

impl TupleCutter {
    pub fn new(target_bytes: usize) -> Self {
        Self {
            pending: Vec::new(),
            batch: BatchBuilder::new(target_bytes),
            header_seen: false,
            trailer_seen: false,
        }
    }

    /// Feeds stream bytes; returns the batches that reached the target size.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TupleBatch>> {
        if self.trailer_seen {
            if data.is_empty() {
                return Ok(Vec::new());
            }
            return Err(corrupt("data after the COPY trailer"));
        }
        self.pending.extend_from_slice(data);
        if !self.header_seen && !self.consume_header()? {
            return Ok(Vec::new());
        }
        let mut ready = Vec::new();
        let mut at = 0;
        while let Some(tuple_len) = tuple_len(&self.pending[at..])? {
            if tuple_len == 0 {
                self.trailer_seen = true;
                at = self.pending.len();
                break;
            }
            let ctid = strip_ctid(&self.pending[at..at + tuple_len], &mut self.batch.out)?;
            at += tuple_len;
            ready.extend(self.batch.row_done(ctid));
        }
        self.pending.drain(..at);
        Ok(ready)
    }

    /// Ends the stream; returns the last, possibly short, batch.
    pub fn finish(self) -> Result<Option<TupleBatch>> {
        if !self.trailer_seen {
            return Err(corrupt("stream ended without the COPY trailer"));
        }
        Ok(self.batch.rest())
    }

    fn consume_header(&mut self) -> Result<bool> {
        if self.pending.len() < HEADER_FIXED_LEN {
            return Ok(false);
        }
        if &self.pending[..SIGNATURE.len()] != SIGNATURE {
            return Err(corrupt("missing COPY binary signature"));
        }
        let ext_len = read_i32(&self.pending, SIGNATURE.len() + 4);
        let ext_len =
            usize::try_from(ext_len).map_err(|_| corrupt("negative header extension length"))?;
        let total = HEADER_FIXED_LEN + ext_len;
        if self.pending.len() < total {
            return Ok(false);
        }
        self.pending.drain(..total);
        self.header_seen = true;
        Ok(true)
    }
}

/// Length of the complete tuple at the start of `data`, `Some(0)` for the
/// trailer, `None` if more bytes are needed.
fn tuple_len(data: &[u8]) -> Result<Option<usize>> {
    if data.len() < 2 {
        return Ok(None);
    }
    let fields = i16::from_be_bytes([data[0], data[1]]);
    if fields == -1 {
        return Ok(Some(0));
    }
    if fields < 0 {
        return Err(corrupt("negative field count"));
    }
    let mut at = 2usize;
    for _ in 0..fields {
        if data.len() < at + 4 {
            return Ok(None);
        }
        let len = read_i32(data, at);
        at += 4;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len).map_err(|_| corrupt("negative field length"))?;
        at += len;
        if data.len() < at {
            return Ok(None);
        }
    }
    Ok(Some(at))
}

/// Appends `tuple` without its leading `ctid` field to `out`; returns the ctid.
fn strip_ctid(tuple: &[u8], out: &mut Vec<u8>) -> Result<Ctid> {
    let fields = i16::from_be_bytes([tuple[0], tuple[1]]);
    if fields < 1 || tuple.len() < 2 + 4 + 6 || read_i32(tuple, 2) != 6 {
        return Err(corrupt("tuple does not start with a ctid"));
    }
    let ctid = Ctid {
        block: u32::from_be_bytes([tuple[6], tuple[7], tuple[8], tuple[9]]),
        offset: u16::from_be_bytes([tuple[10], tuple[11]]),
    };
    out.extend_from_slice(&(fields - 1).to_be_bytes());
    out.extend_from_slice(&tuple[12..]);
    Ok(ctid)
}

/// Room for a batch and the tuple that overflows it, capped for huge targets.
fn batch_capacity(target_bytes: usize) -> usize {
    target_bytes.saturating_add(target_bytes / 4).min(64 << 20)
}

fn read_i32(data: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

fn corrupt(reason: &str) -> Error {
    Error::Corrupt {
        what: "COPY binary stream".into(),
        reason: reason.to_owned(),
    }
}

/// The header that starts a `COPY … FROM STDIN (FORMAT binary)` stream.
pub fn stream_header() -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_FIXED_LEN);
    header.extend_from_slice(SIGNATURE);
    header.extend_from_slice(&0i32.to_be_bytes());
    header.extend_from_slice(&0i32.to_be_bytes());
    header
}

pub fn stream_trailer() -> &'static [u8] {
    &TRAILER
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Counts the tuples in a batch, checking that it holds whole tuples only.
    fn count_tuples(bytes: &[u8]) -> Result<u64> {
        Ok(staged_rows(CopyFormat::Binary, bytes)?.len() as u64)
    }

    /// The COPY stream (ctid first) and the tuples the target should get.
    fn encode(rows: &[Vec<Option<Vec<u8>>>]) -> (Vec<u8>, Vec<u8>) {
        let mut stream = stream_header();
        let mut tuples = Vec::new();
        for (n, row) in rows.iter().enumerate() {
            let mut tuple = Vec::new();
            tuple.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => tuple.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        tuple.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        tuple.extend_from_slice(v);
                    }
                }
            }
            stream.extend_from_slice(&(row.len() as i16 + 1).to_be_bytes());
            stream.extend_from_slice(&6i32.to_be_bytes());
            stream.extend_from_slice(&(n as u32 / 10).to_be_bytes());
            stream.extend_from_slice(&(n as u16 % 10 + 1).to_be_bytes());
            stream.extend_from_slice(&tuple[2..]);
            tuples.extend_from_slice(&tuple);
        }
        stream.extend_from_slice(stream_trailer());
        (stream, tuples)
    }

    fn rows_strategy() -> impl Strategy<Value = Vec<Vec<Option<Vec<u8>>>>> {
        let field = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40));
        proptest::collection::vec(proptest::collection::vec(field, 0..6), 0..60)
    }

    proptest! {
        #[test]
        fn cutting_preserves_every_tuple(rows in rows_strategy(), target in 1usize..300, feed in 1usize..97) {
            let (stream, tuples) = encode(&rows);
            let mut cutter = TupleCutter::new(target);
            let mut batches = Vec::new();
            for piece in stream.chunks(feed) {
                batches.extend(cutter.feed(piece).expect("valid stream"));
            }
            batches.extend(cutter.finish().expect("complete stream"));
            let joined: Vec<u8> = batches.iter().flat_map(|b| b.bytes.clone()).collect();
            prop_assert_eq!(joined, tuples);
            prop_assert_eq!(batches.iter().map(|b| b.rows).sum::<u64>(), rows.len() as u64);
            let mut seen = 0u64;
            for batch in &batches {
                prop_assert!(batch.rows > 0);
                prop_assert_eq!(count_tuples(&batch.bytes).expect("whole tuples"), batch.rows);
                seen += batch.rows;
                let last = (seen - 1) as u32;
                prop_assert_eq!(batch.last_ctid, Some(Ctid { block: last / 10, offset: (last % 10 + 1) as u16 }));
            }
        }
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let (stream, _) = encode(&[vec![Some(b"abc".to_vec())]]);
        let mut cutter = TupleCutter::new(1024);
        cutter
            .feed(&stream[..stream.len() - 3])
            .expect("prefix parses");
        assert!(cutter.finish().is_err());
    }

    #[test]
    fn bad_signature_is_an_error() {
        let mut cutter = TupleCutter::new(1024);
        assert!(
            cutter
                .feed(b"NOTPGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0")
                .is_err()
        );
    }
}

/// The COPY format a table moves in. Binary is exact and fast, but its
/// arrays and composites carry type OIDs, which differ between databases
/// for user-defined types; tables with such columns move as text, which is
/// also exact under the session settings every godwit connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyFormat {
    #[default]
    Binary,
    Text,
}

impl CopyFormat {
    /// The `COPY … (…)` option list.
    pub fn options(self) -> &'static str {
        match self {
            CopyFormat::Binary => "(FORMAT binary)",
            CopyFormat::Text => "(FORMAT text)",
        }
    }
}

/// Rewrites one text row (without its `ctid`, newline included) into the
/// batch: how masks reach the rows before they are staged.
pub type RowRewrite = Box<dyn FnMut(&[u8], &mut Vec<u8>) -> Result<()> + Send>;

/// Cuts COPY text output, whose first column is the row's `ctid`, at row
/// boundaries, removing that column. A raw newline always ends a row:
/// newlines inside values are escaped as `\n`.
pub struct LineCutter {
    pending: Vec<u8>,
    batch: BatchBuilder,
    rewrite: Option<RowRewrite>,
}

impl LineCutter {
    pub fn new(target_bytes: usize) -> Self {
        Self {
            pending: Vec::new(),
            batch: BatchBuilder::new(target_bytes),
            rewrite: None,
        }
    }

    /// Each row goes through `rewrite` on its way into a batch.
    pub fn rewriting(target_bytes: usize, rewrite: RowRewrite) -> Self {
        Self {
            rewrite: Some(rewrite),
            ..Self::new(target_bytes)
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TupleBatch>> {
        self.pending.extend_from_slice(data);
        let mut ready = Vec::new();
        let mut at = 0;
        while let Some(end) = self.pending[at..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[at..at + end + 1];
            let tab = line
                .iter()
                .position(|b| *b == b'\t')
                .ok_or_else(|| corrupt("text row does not start with a ctid column"))?;
            let ctid = std::str::from_utf8(&line[..tab])
                .ok()
                .and_then(Ctid::parse)
                .ok_or_else(|| corrupt("text row does not start with a ctid"))?;
            match &mut self.rewrite {
                Some(rewrite) => rewrite(&line[tab + 1..], &mut self.batch.out)?,
                None => self.batch.out.extend_from_slice(&line[tab + 1..]),
            }
            at += end + 1;
            ready.extend(self.batch.row_done(ctid));
        }
        self.pending.drain(..at);
        Ok(ready)
    }

    pub fn finish(self) -> Result<Option<TupleBatch>> {
        if !self.pending.is_empty() {
            return Err(corrupt("text COPY stream ended inside a row"));
        }
        Ok(self.batch.rest())
    }
}

/// The rows of a staged chunk (tuples as the target loads them: binary
/// tuples without a header, or text lines), each whole.
pub fn staged_rows(format: CopyFormat, chunk: &[u8]) -> Result<Vec<&[u8]>> {
    let mut rows = Vec::new();
    let mut at = 0;
    while at < chunk.len() {
        let len = match format {
            CopyFormat::Binary => match tuple_len(&chunk[at..])? {
                Some(0) => return Err(corrupt("a staged chunk holds a COPY trailer")),
                Some(len) => len,
                None => return Err(corrupt("a staged chunk ends inside a tuple")),
            },
            CopyFormat::Text => match chunk[at..].iter().position(|b| *b == b'\n') {
                Some(end) => end + 1,
                None => return Err(corrupt("a staged chunk ends inside a row")),
            },
        };
        rows.push(&chunk[at..at + len]);
        at += len;
    }
    Ok(rows)
}

/// One field of a COPY text row as its bytes; None is `\N` (NULL).
pub fn decode_text_field(field: &[u8]) -> Option<Vec<u8>> {
    if field == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match field.get(i).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    Some(out)
}

/// Appends one field in COPY text form (`\N` for None).
pub fn encode_text_field(value: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(value) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0b => out.extend_from_slice(b"\\v"),
            other => out.push(other),
        }
    }
}

/// A cutter for either format.
pub enum RowCutter {
    Binary(TupleCutter),
    Text(LineCutter),
}

impl RowCutter {
    /// A text cutter whose rows go through `rewrite`.
    pub fn rewriting(target_bytes: usize, rewrite: RowRewrite) -> Self {
        RowCutter::Text(LineCutter::rewriting(target_bytes, rewrite))
    }

    pub fn new(format: CopyFormat, target_bytes: usize) -> Self {
        match format {
            CopyFormat::Binary => RowCutter::Binary(TupleCutter::new(target_bytes)),
            CopyFormat::Text => RowCutter::Text(LineCutter::new(target_bytes)),
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TupleBatch>> {
        match self {
            RowCutter::Binary(cutter) => cutter.feed(data),
            RowCutter::Text(cutter) => cutter.feed(data),
        }
    }

    pub fn finish(self) -> Result<Option<TupleBatch>> {
        match self {
            RowCutter::Binary(cutter) => cutter.finish(),
            RowCutter::Text(cutter) => cutter.finish(),
        }
    }
}

#[cfg(test)]
mod text_tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn text_cutting_preserves_every_row(rows in proptest::collection::vec("[a-z\\\\t ]{0,30}", 0..80), target in 1usize..200, feed in 1usize..50) {
            let stream: Vec<u8> = rows.iter().enumerate().flat_map(|(n, r)| format!("({n},1)\t{r}\n").into_bytes()).collect();
            let expected: Vec<u8> = rows.iter().flat_map(|r| format!("{r}\n").into_bytes()).collect();
            let mut cutter = LineCutter::new(target);
            let mut batches = Vec::new();
            for piece in stream.chunks(feed) {
                batches.extend(cutter.feed(piece).expect("valid stream"));
            }
            batches.extend(cutter.finish().expect("complete stream"));
            let joined: Vec<u8> = batches.iter().flat_map(|b| b.bytes.clone()).collect();
            prop_assert_eq!(staged_rows(CopyFormat::Text, &joined).expect("whole rows").len(), rows.len());
            prop_assert_eq!(joined, expected);
            prop_assert_eq!(batches.iter().map(|b| b.rows).sum::<u64>(), rows.len() as u64);
            if let Some(last) = batches.last() {
                prop_assert_eq!(last.last_ctid, Some(Ctid { block: rows.len() as u32 - 1, offset: 1 }));
            }
        }
    }

    proptest! {
        #[test]
        fn a_text_field_decodes_to_what_was_encoded(value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60))) {
            let mut encoded = Vec::new();
            encode_text_field(value.as_deref(), &mut encoded);
            prop_assert!(!encoded.contains(&b'\t') && !encoded.contains(&b'\n'));
            prop_assert_eq!(decode_text_field(&encoded), value);
        }
    }

    #[test]
    fn text_fields_decode_every_escape_postgresql_writes() {
        assert_eq!(decode_text_field(b"\\N"), None);
        assert_eq!(
            decode_text_field(b"a\\tb\\\\c\\nd"),
            Some(b"a\tb\\c\nd".to_vec())
        );
        assert_eq!(
            decode_text_field(b"\\101\\x42\\7"),
            Some(b"AB\x07".to_vec())
        );
        assert_eq!(
            decode_text_field(b"\\b\\f\\v\\r\\q"),
            Some(b"\x08\x0c\x0b\rq".to_vec())
        );
    }

    #[test]
    fn a_rewriting_cutter_passes_each_row_through_its_rewrite() {
        let upper: RowRewrite = Box::new(|row, out| {
            out.extend(row.iter().map(u8::to_ascii_uppercase));
            Ok(())
        });
        let mut cutter = LineCutter::rewriting(1 << 20, upper);
        let mut batches = cutter.feed(b"(0,1)\tab\tc\n(0,2)\td\t\\N\n").expect("rows");
        batches.extend(cutter.finish().expect("end"));
        assert_eq!(batches[0].bytes, b"AB\tC\nD\t\\N\n");
    }

    #[test]
    fn text_stream_cut_inside_a_row_is_an_error() {
        let mut cutter = LineCutter::new(1024);
        cutter.feed(b"(0,1)\t1\tabc\n(0,2)\t2\tde").expect("prefix");
        assert!(cutter.finish().is_err());
    }
}
