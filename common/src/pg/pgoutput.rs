//! The wire format of PostgreSQL's `pgoutput` logical decoding plugin,
//! protocol version 1 (PostgreSQL 15): one message per row of
//! `pg_logical_slot_peek_binary_changes`, decoded into transaction bounds,
//! relation descriptions and row changes, plus textual LSNs. Applying the
//! changes belongs to the caller.

use std::fmt::Display;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time_us: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time_us: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    /// `old` is the old key ('K') or the whole old row ('O') when sent.
    Update {
        relation: u32,
        old: Option<OldRow>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: OldRow,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// Messages a change applier has no use for (Type 'Y', Origin 'O', logical decoding message 'M'), by tag.
    Other(u8),
}

/// Which old values the server sent depends on the table's replica identity:
/// the key columns only, or every column (`REPLICA IDENTITY FULL`).
#[derive(Debug, Clone, PartialEq)]
pub enum OldRow {
    Key(Vec<Value>),
    Full(Vec<Value>),
}

/// Sent before the first change to a table in a session, and again after its
/// definition changes; later changes name the table only by `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    /// As sent: `""` stands for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    /// `d`efault, `n`othing, `f`ull or `i`ndex, as in `pg_class.relreplident`.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Part of the replica identity: what identifies the row in old keys.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A TOASTed value the change left alone; the server does not resend it.
    Unchanged,
    Text(String),
    Binary(Vec<u8>),
}

/// Decodes one message; anything malformed is an error naming the message,
/// the field and the byte offset, since a misread change would corrupt the target.
pub fn decode(message: &[u8]) -> Result<Message> {
    let Some(&tag) = message.first() else {
        return Err(Error::Corrupt {
            what: "pgoutput message".into(),
            reason: "empty, no tag at offset 0".into(),
        });
    };
    let mut r = Reader {
        buf: message,
        pos: 1,
        kind: kind_name(tag),
    };
    let decoded = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64(&"final LSN")?,
            commit_time_us: r.i64(&"commit timestamp")?,
            xid: r.u32(&"xid")?,
        },
        b'C' => {
            r.u8(&"flags")?;
            Message::Commit {
                commit_lsn: r.u64(&"commit LSN")?,
                end_lsn: r.u64(&"end LSN")?,
                commit_time_us: r.i64(&"commit timestamp")?,
            }
        }
        b'R' => Message::Relation(r.relation()?),
        b'I' => {
            let relation = r.u32(&"relation id")?;
            r.marker(b"N", &"new tuple marker")?;
            Message::Insert {
                relation,
                new: r.tuple("new tuple")?,
            }
        }
        b'U' => {
            let relation = r.u32(&"relation id")?;
            let old = match r.marker(b"KON", &"tuple marker")? {
                b'K' => Some(OldRow::Key(r.tuple("old key")?)),
                b'O' => Some(OldRow::Full(r.tuple("old row")?)),
                _ => None,
            };
            if old.is_some() {
                r.marker(b"N", &"new tuple marker")?;
            }
            Message::Update {
                relation,
                old,
                new: r.tuple("new tuple")?,
            }
        }
        b'D' => {
            let relation = r.u32(&"relation id")?;
            let old = match r.marker(b"KO", &"old tuple marker")? {
                b'K' => OldRow::Key(r.tuple("old key")?),
                _ => OldRow::Full(r.tuple("old row")?),
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let count = r.u32(&"relation count")?;
            let options = r.u8(&"options")?;
            let mut relations = Vec::with_capacity(r.capacity(count, 4));
            for i in 0..count {
                relations.push(r.u32(&format_args!("relation id {i}"))?);
            }
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        b'Y' => {
            r.u32(&"type oid")?;
            r.cstr(&"namespace")?;
            r.cstr(&"type name")?;
            Message::Other(tag)
        }
        b'O' => {
            r.u64(&"origin LSN")?;
            r.cstr(&"origin name")?;
            Message::Other(tag)
        }
        b'M' => {
            r.u8(&"flags")?;
            r.u64(&"LSN")?;
            r.cstr(&"prefix")?;
            let len = r.u32(&"content length")?;
            r.take(usize::try_from(len).unwrap_or(usize::MAX), &"content")?;
            Message::Other(tag)
        }
        _ => {
            return Err(r.fail(
                0,
                format_args!("unknown tag {} (not in protocol version 1)", show(tag)),
            ));
        }
    };
    if r.pos < message.len() {
        return Err(r.fail(
            r.pos,
            format_args!("{} unexpected trailing bytes", message.len() - r.pos),
        ));
    }
    Ok(decoded)
}

/// Parses PostgreSQL's textual LSN "16/B374D848" into a u64, and formats one back.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let half = |s: &str| {
        let valid = (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then(|| u32::from_str_radix(s, 16).ok()).flatten()
    };
    let (high, low) = text.split_once('/')?;
    Some(u64::from(half(high)?) << 32 | u64::from(half(low)?))
}

/// The form PostgreSQL prints and accepts back, e.g. as a `pg_lsn` argument.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// What each tag is called in errors.
fn kind_name(tag: u8) -> &'static str {
    match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'R' => "Relation",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'Y' => "Type",
        b'O' => "Origin",
        b'M' => "logical decoding",
        _ => "unknown",
    }
}

fn show(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", char::from(byte))
    } else {
        format!("0x{byte:02x}")
    }
}

/// Big-endian integer readers, one per type, named after it.
macro_rules! int_readers {
    ($($ty:ident),*) => {$(
        fn $ty(&mut self, field: &dyn Display) -> Result<$ty> {
            self.array(field).map($ty::from_be_bytes)
        }
    )*};
}

/// A cursor over one message; every read checks its bounds so that no input,
/// however malformed, can make decoding panic.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn fail(&self, at: usize, reason: impl Display) -> Error {
        Error::Corrupt {
            what: format!("pgoutput {} message", self.kind),
            reason: format!("{reason} at offset {at}"),
        }
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// A preallocation no larger than what the remaining bytes can hold, so a
    /// forged count cannot reserve gigabytes.
    fn capacity(&self, count: impl Into<u64>, min_item_len: usize) -> usize {
        let fits = self.rest().len() / min_item_len;
        usize::try_from(count.into()).map_or(fits, |count| count.min(fits))
    }

    fn truncated(&self, needed: usize, field: &dyn Display) -> Error {
        let left = self.rest().len();
        self.fail(
            self.pos,
            format_args!("truncated {field}: needs {needed} bytes, {left} left"),
        )
    }

    fn take(&mut self, n: usize, field: &dyn Display) -> Result<&'a [u8]> {
        let Some(bytes) = self.rest().get(..n) else {
            return Err(self.truncated(n, field));
        };
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &dyn Display) -> Result<[u8; N]> {
        let Some(bytes) = self.rest().first_chunk::<N>() else {
            return Err(self.truncated(N, field));
        };
        self.pos += N;
        Ok(*bytes)
    }

    int_readers!(u8, u16, u32, i32, u64, i64);

    /// Reads one byte that must be one of `allowed`.
    fn marker(&mut self, allowed: &[u8], field: &dyn Display) -> Result<u8> {
        let at = self.pos;
        let byte = self.u8(field)?;
        if allowed.contains(&byte) {
            return Ok(byte);
        }
        let expected = String::from_utf8_lossy(allowed);
        Err(self.fail(
            at,
            format_args!("{field} is {}, expected one of {expected:?}", show(byte)),
        ))
    }

    fn utf8(&self, at: usize, bytes: &[u8], field: &dyn Display) -> Result<String> {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.fail(at, format_args!("{field} is not valid UTF-8 ({e})")))
    }

    fn cstr(&mut self, field: &dyn Display) -> Result<String> {
        let at = self.pos;
        let rest = self.rest();
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(self.fail(at, format_args!("unterminated {field}: no NUL")));
        };
        let text = self.utf8(at, rest.get(..end).unwrap_or_default(), field)?;
        self.pos += end + 1;
        Ok(text)
    }

    fn relation(&mut self) -> Result<Relation> {
        let id = self.u32(&"relation id")?;
        let namespace = self.cstr(&"namespace")?;
        let name = self.cstr(&"relation name")?;
        let replica_identity = self.u8(&"replica identity")?;
        let count = self.u16(&"column count")?;
        // Flags, NUL, type oid and modifier: at least 10 bytes a column.
        let mut columns = Vec::with_capacity(self.capacity(count, 10));
        for i in 0..count {
            columns.push(Column {
                key: self.u8(&format_args!("column {i} flags"))? & 1 != 0,
                name: self.cstr(&format_args!("column {i} name"))?,
                type_oid: self.u32(&format_args!("column {i} type oid"))?,
                type_modifier: self.i32(&format_args!("column {i} type modifier"))?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    /// Reads TupleData: a column count, then exactly that many values.
    fn tuple(&mut self, which: &str) -> Result<Vec<Value>> {
        let count = self.u16(&format_args!("{which} column count"))?;
        let mut values = Vec::with_capacity(self.capacity(count, 1));
        for i in 0..count {
            let kind_at = self.pos;
            let value = match self.u8(&format_args!("{which} column {i} kind"))? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                kind @ (b't' | b'b') => {
                    let len_at = self.pos;
                    let len = self.i32(&format_args!("{which} column {i} length"))?;
                    let Ok(len) = usize::try_from(len) else {
                        return Err(self.fail(
                            len_at,
                            format_args!("{which} column {i} has negative length {len}"),
                        ));
                    };
                    let at = self.pos;
                    let bytes = self.take(len, &format_args!("{which} column {i} value"))?;
                    if kind == b'b' {
                        Value::Binary(bytes.to_vec())
                    } else {
                        Value::Text(self.utf8(at, bytes, &format_args!("{which} column {i}"))?)
                    }
                }
                other => {
                    return Err(self.fail(
                        kind_at,
                        format_args!("{which} column {i} has unknown kind {}", show(other)),
                    ));
                }
            };
            values.push(value);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A message as the server frames it: the tag, then the fields in order.
    fn msg(tag: u8, fields: &[&[u8]]) -> Vec<u8> {
        [&[tag][..], &fields.concat()].concat()
    }

    fn n4(v: u32) -> [u8; 4] {
        v.to_be_bytes()
    }

    fn n8(v: u64) -> [u8; 8] {
        v.to_be_bytes()
    }

    fn cstr(s: &str) -> Vec<u8> {
        [s.as_bytes(), b"\0"].concat()
    }

    fn tuple(values: &[Value]) -> Vec<u8> {
        let mut out = (values.len() as u16).to_be_bytes().to_vec();
        for value in values {
            let (kind, bytes) = match value {
                Value::Null => (b'n', None),
                Value::Unchanged => (b'u', None),
                Value::Text(s) => (b't', Some(s.as_bytes())),
                Value::Binary(b) => (b'b', Some(b.as_slice())),
            };
            out.push(kind);
            if let Some(bytes) = bytes {
                out.extend_from_slice(&n4(bytes.len() as u32));
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn row() -> Vec<Value> {
        vec![text("42"), Value::Null, text("héllo")]
    }

    fn insert() -> Vec<u8> {
        msg(b'I', &[&n4(16384), b"N", &tuple(&row())])
    }

    fn error(message: &[u8]) -> String {
        decode(message).expect_err("malformed").to_string()
    }

    #[test]
    fn decodes_transaction_bounds() {
        let begin = msg(b'B', &[&n8(0x16_B374_D848), &n8(-5i64 as u64), &n4(731)]);
        let expected = Message::Begin {
            final_lsn: 0x16_B374_D848,
            commit_time_us: -5,
            xid: 731,
        };
        assert_eq!(decode(&begin).unwrap(), expected);
        let commit = msg(b'C', &[&[0], &n8(10), &n8(20), &n8(774_000_000)]);
        let expected = Message::Commit {
            commit_lsn: 10,
            end_lsn: 20,
            commit_time_us: 774_000_000,
        };
        assert_eq!(decode(&commit).unwrap(), expected);
    }

    #[test]
    fn decodes_relation() {
        let id = [&[1][..], &cstr("id"), &n4(20), &n4(u32::MAX)].concat();
        let note = [&[0][..], &cstr("note"), &n4(1043), &n4(68)].concat();
        let head = [&n4(16384)[..], b"\0", &cstr("orders"), b"d", &[0, 2]].concat();
        let column = |key, name: &str, type_oid, type_modifier| Column {
            key,
            name: name.into(),
            type_oid,
            type_modifier,
        };
        let expected = Relation {
            id: 16384,
            namespace: String::new(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: vec![column(true, "id", 20, -1), column(false, "note", 1043, 68)],
        };
        let decoded = decode(&msg(b'R', &[&head, &id, &note])).unwrap();
        assert_eq!(decoded, Message::Relation(expected));
    }

    #[test]
    fn decodes_row_changes() {
        let (new, key) = (row(), vec![text("41")]);
        let expected = Message::Insert {
            relation: 16384,
            new: new.clone(),
        };
        assert_eq!(decode(&insert()).unwrap(), expected);

        let update = |old| Message::Update {
            relation: 7,
            old,
            new: new.clone(),
        };
        let message = msg(b'U', &[&n4(7), b"K", &tuple(&key), b"N", &tuple(&new)]);
        assert_eq!(
            decode(&message).unwrap(),
            update(Some(OldRow::Key(key.clone())))
        );
        let old = vec![text("42"), Value::Binary(vec![0, 255]), Value::Unchanged];
        let message = msg(b'U', &[&n4(7), b"O", &tuple(&old), b"N", &tuple(&new)]);
        assert_eq!(decode(&message).unwrap(), update(Some(OldRow::Full(old))));
        let message = msg(b'U', &[&n4(7), b"N", &tuple(&new)]);
        assert_eq!(decode(&message).unwrap(), update(None));

        let message = msg(b'D', &[&n4(7), b"K", &tuple(&key)]);
        let old = OldRow::Key(key);
        assert_eq!(
            decode(&message).unwrap(),
            Message::Delete { relation: 7, old }
        );
    }

    #[test]
    fn decodes_truncate_and_skips_others() {
        for (options, cascade, restart_identity) in [(3, true, true), (2, false, true)] {
            let message = msg(b'T', &[&n4(2), &[options], &n4(16384), &n4(16390)]);
            let expected = Message::Truncate {
                relations: vec![16384, 16390],
                cascade,
                restart_identity,
            };
            assert_eq!(decode(&message).unwrap(), expected);
        }
        let type_message = msg(b'Y', &[&n4(16400), &cstr("public"), &cstr("mood")]);
        assert_eq!(decode(&type_message).unwrap(), Message::Other(b'Y'));
        let origin = msg(b'O', &[&n8(99), &cstr("upstream")]);
        assert_eq!(decode(&origin).unwrap(), Message::Other(b'O'));
    }

    #[test]
    fn malformed_messages_are_described() {
        assert!(error(&[]).contains("empty"));
        assert!(error(b"S").contains("unknown tag 'S'"));
        let truncated = error(&[b'I', 0]);
        assert!(truncated.contains("Insert") && truncated.contains("relation id"));
        assert!(
            truncated.contains("needs 4 bytes, 1 left at offset 1"),
            "{truncated}"
        );
        let trailing = [insert(), vec![0]].concat();
        assert!(error(&trailing).contains("1 unexpected trailing bytes"));
        let value = |v: &[u8]| msg(b'I', &[&n4(1), b"N", &[0, 1], v]);
        let bad_utf8 = error(&value(&[b't', 0, 0, 0, 1, 0xff]));
        assert!(bad_utf8.contains("new tuple column 0 is not valid UTF-8"));
        let negative = error(&value(&[b't', 0xff, 0xff, 0xff, 0xff]));
        assert!(negative.contains("negative length -1 at offset 9"));
        assert!(error(&value(b"x")).contains("unknown kind 'x' at offset 8"));
        let marker = error(&msg(b'D', &[&n4(1), b"N", &tuple(&[])]));
        assert!(marker.contains("is 'N', expected one of \"KO\" at offset 5"));
        let unterminated = error(&msg(b'Y', &[&n4(1), b"public"]));
        assert!(unterminated.contains("unterminated namespace"));
    }

    #[test]
    fn every_truncation_of_an_insert_is_an_error() {
        let message = insert();
        for len in 0..message.len() {
            assert!(decode(&message[..len]).is_err(), "length {len}");
        }
    }

    #[test]
    fn lsn_round_trips() {
        for (text, lsn) in [
            ("0/0", 0),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            assert_eq!(parse_lsn(text), Some(lsn));
            assert_eq!(format_lsn(lsn), text);
        }
        assert_eq!(parse_lsn("16/b374d848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("00000001/0000000A"), Some(0x1_0000_000A));
        let bad = [
            "", "/", "0/", "/0", "0", "1/2/3", "+1/0", "0/-1", " 0/0", "0/0 ", "G/0",
        ];
        for bad in bad.into_iter().chain(["100000000/0", "0/100000000"]) {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_past_a_known_tag(
            tag in proptest::sample::select(b"BCRIUDTYOM".to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = decode(&msg(tag, &[&rest]));
        }
    }
}
