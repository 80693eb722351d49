//! PostgreSQL `COPY … (FORMAT binary)` framing: cuts the source stream at
//! tuple boundaries into chunks of whole rows, and re-frames chunks for
//! `COPY … FROM STDIN (FORMAT binary)`. Never interprets field values, so
//! every type round-trips byte for byte.

use crate::{Error, Result};

pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const HEADER_FIXED_LEN: usize = SIGNATURE.len() + 4 + 4;
const TRAILER: [u8; 2] = [0xff, 0xff];

/// Whole tuples, ready to be sealed or loaded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TupleBatch {
    pub bytes: Vec<u8>,
    pub rows: u64,
}

/// Incremental parser over a COPY binary stream that yields batches of whole
/// tuples of about `target_bytes` each.
pub struct TupleCutter {
    target_bytes: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` that are complete tuples.
    complete: usize,
    rows: u64,
    header_seen: bool,
    trailer_seen: bool,
}

impl TupleCutter {
    pub fn new(target_bytes: usize) -> Self {
        Self {
            target_bytes,
            buf: Vec::with_capacity(batch_capacity(target_bytes)),
            complete: 0,
            rows: 0,
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
        self.buf.extend_from_slice(data);
        if !self.header_seen && !self.consume_header()? {
            return Ok(Vec::new());
        }
        let mut ready = Vec::new();
        while let Some(tuple_len) = self.next_tuple_len()? {
            if tuple_len == 0 {
                self.trailer_seen = true;
                self.buf.truncate(self.complete);
                break;
            }
            self.complete += tuple_len;
            self.rows += 1;
            if self.complete >= self.target_bytes {
                ready.push(self.take_complete());
            }
        }
        Ok(ready)
    }

    /// Ends the stream; returns the last, possibly short, batch.
    pub fn finish(mut self) -> Result<Option<TupleBatch>> {
        if !self.trailer_seen {
            return Err(corrupt("stream ended without the COPY trailer"));
        }
        Ok((self.rows > 0).then(|| self.take_complete()))
    }

    fn take_complete(&mut self) -> TupleBatch {
        let rest = self.buf.split_off(self.complete);
        let bytes = std::mem::replace(&mut self.buf, rest);
        self.buf.reserve(batch_capacity(self.target_bytes));
        let rows = std::mem::take(&mut self.rows);
        self.complete = 0;
        TupleBatch { bytes, rows }
    }

    fn consume_header(&mut self) -> Result<bool> {
        if self.buf.len() < HEADER_FIXED_LEN {
            return Ok(false);
        }
        if &self.buf[..SIGNATURE.len()] != SIGNATURE {
            return Err(corrupt("missing COPY binary signature"));
        }
        let ext_len = read_i32(&self.buf, SIGNATURE.len() + 4);
        let ext_len =
            usize::try_from(ext_len).map_err(|_| corrupt("negative header extension length"))?;
        let total = HEADER_FIXED_LEN + ext_len;
        if self.buf.len() < total {
            return Ok(false);
        }
        self.buf.drain(..total);
        self.header_seen = true;
        Ok(true)
    }

    /// Length of the complete tuple at `complete`, `Some(0)` for the trailer,
    /// `None` if more bytes are needed.
    fn next_tuple_len(&self) -> Result<Option<usize>> {
        let data = &self.buf[self.complete..];
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

/// Counts the tuples in a batch, checking that it holds whole tuples only.
pub fn count_tuples(bytes: &[u8]) -> Result<u64> {
    let mut cutter = TupleCutter::new(usize::MAX);
    cutter.header_seen = true;
    let mut framed = bytes.to_vec();
    framed.extend_from_slice(&TRAILER);
    cutter.feed(&framed)?;
    if !cutter.trailer_seen || cutter.complete != bytes.len() {
        return Err(corrupt("batch does not hold whole tuples"));
    }
    Ok(cutter.rows)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode(rows: &[Vec<Option<Vec<u8>>>]) -> (Vec<u8>, Vec<u8>) {
        let mut tuples = Vec::new();
        for row in rows {
            tuples.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => tuples.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(v) => {
                        tuples.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        tuples.extend_from_slice(v);
                    }
                }
            }
        }
        let mut stream = stream_header();
        stream.extend_from_slice(&tuples);
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
            for batch in &batches {
                prop_assert!(batch.rows > 0);
                prop_assert_eq!(count_tuples(&batch.bytes).expect("whole tuples"), batch.rows);
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

/// Cuts COPY text output at row boundaries. A raw newline always ends a row:
/// newlines inside values are escaped as `\n`.
pub struct LineCutter {
    target_bytes: usize,
    buf: Vec<u8>,
}

impl LineCutter {
    pub fn new(target_bytes: usize) -> Self {
        Self {
            target_bytes,
            buf: Vec::with_capacity(batch_capacity(target_bytes)),
        }
    }

    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<TupleBatch>> {
        self.buf.extend_from_slice(data);
        if self.buf.len() < self.target_bytes {
            return Ok(Vec::new());
        }
        let Some(last_newline) = self.buf.iter().rposition(|b| *b == b'\n') else {
            return Ok(Vec::new());
        };
        let rest = self.buf.split_off(last_newline + 1);
        let bytes = std::mem::replace(&mut self.buf, rest);
        self.buf.reserve(batch_capacity(self.target_bytes));
        let rows = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(vec![TupleBatch { bytes, rows }])
    }

    pub fn finish(self) -> Result<Option<TupleBatch>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf.last() != Some(&b'\n') {
            return Err(corrupt("text COPY stream ended inside a row"));
        }
        let rows = self.buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(Some(TupleBatch {
            bytes: self.buf,
            rows,
        }))
    }
}

/// A cutter for either format.
pub enum RowCutter {
    Binary(TupleCutter),
    Text(LineCutter),
}

impl RowCutter {
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
            let stream: Vec<u8> = rows.iter().flat_map(|r| format!("{r}\n").into_bytes()).collect();
            let mut cutter = LineCutter::new(target);
            let mut batches = Vec::new();
            for piece in stream.chunks(feed) {
                batches.extend(cutter.feed(piece).expect("valid stream"));
            }
            batches.extend(cutter.finish().expect("complete stream"));
            let joined: Vec<u8> = batches.iter().flat_map(|b| b.bytes.clone()).collect();
            prop_assert_eq!(joined, stream);
            prop_assert_eq!(batches.iter().map(|b| b.rows).sum::<u64>(), rows.len() as u64);
        }
    }

    #[test]
    fn text_stream_cut_inside_a_row_is_an_error() {
        let mut cutter = LineCutter::new(1024);
        cutter.feed(b"1\tabc\n2\tde").expect("prefix");
        assert!(cutter.finish().is_err());
    }
}
