//! What a mask does to one value, in its text form: the same value and key
//! give the same result in every table, job, resume and replay (tokens are
//! HMAC-SHA-256 under a key derived from the customer's key-encryption
//! key, with the customer's id mixed in), so joins on masked columns still
//! work. Owns the rules only; never sees a database, never logs a value or
//! the key.

use std::fmt;

use aws_lc_rs::hmac;
use sha2::{Digest, Sha256};

use super::Mask;

/// The key tokens are made with; see [`crate::keys::Kek::token_key`].
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(…)")
    }
}

impl TokenKey {
    pub(crate) fn new(key: hmac::Key) -> Self {
        Self(key)
    }

    /// The tag of `value` for `customer`, domain-separated by `rule`.
    fn tag(&self, customer: &str, rule: &str, value: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.0);
        for part in [customer, rule, value] {
            // Length-prefixed, so no two splits of the same bytes collide.
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        let mut tag = [0u8; 32];
        tag.copy_from_slice(context.sign().as_ref());
        tag
    }
}

/// What one mask needs besides the value.
pub struct Masker<'a> {
    pub key: &'a TokenKey,
    pub customer: &'a str,
}

/// One masked column of a copied row: its position among the columns
/// copied, and its rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnMask {
    pub index: usize,
    pub column: String,
    pub mask: Mask,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact_with: Option<String>,
}

/// Masks the fields of COPY text rows (newline included) as they pass
/// from the source to the staging: the values the rules hide never reach
/// a chunk, staging or the target.
pub struct RowMasker {
    key: TokenKey,
    customer: String,
    masks: Vec<ColumnMask>,
}

impl RowMasker {
    pub fn new(key: TokenKey, customer: &str, masks: Vec<ColumnMask>) -> Self {
        Self {
            key,
            customer: customer.to_owned(),
            masks,
        }
    }

    pub fn rewrite(&self, row: &[u8], out: &mut Vec<u8>) -> crate::Result<()> {
        let body = row.strip_suffix(b"\n").unwrap_or(row);
        let masker = Masker {
            key: &self.key,
            customer: &self.customer,
        };
        for (i, field) in body.split(|b| *b == b'\t').enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let Some(rule) = self.masks.iter().find(|m| m.index == i) else {
                out.extend_from_slice(field);
                continue;
            };
            let value = crate::pgcopy::decode_text_field(field);
            let text = match &value {
                Some(bytes) => {
                    Some(
                        std::str::from_utf8(bytes).map_err(|_| crate::Error::Corrupt {
                            what: format!("the value of masked column {}", rule.column),
                            reason: "it is not UTF-8 text".into(),
                        })?,
                    )
                }
                None => None,
            };
            let masked = masker.apply(rule.mask, rule.redact_with.as_deref(), text);
            crate::pgcopy::encode_text_field(masked.as_deref().map(str::as_bytes), out);
        }
        out.push(b'\n');
        Ok(())
    }
}

/// Decimal digits drawn from `tag`, as many as asked (at most 64).
fn digits(tag: &[u8; 32], count: usize) -> Vec<u8> {
    tag.iter()
        .flat_map(|b| [b >> 4, b & 0x0f])
        .map(|nibble| nibble % 10)
        .take(count)
        .collect()
}

impl Masker<'_> {
    /// The masked text of `value` (None is SQL NULL, which every mask but
    /// `redact` with a constant keeps NULL).
    pub fn apply(
        &self,
        mask: Mask,
        redact_with: Option<&str>,
        value: Option<&str>,
    ) -> Option<String> {
        match mask {
            Mask::Redact => redact_with.map(str::to_owned),
            other => value.map(|value| self.masked(other, value)),
        }
    }

    fn masked(&self, mask: Mask, value: &str) -> String {
        match mask {
            Mask::Keep | Mask::Redact => value.to_owned(),
            Mask::Tokenise => self.token(value),
            Mask::TokeniseEmail => self.email(value),
            Mask::TokenisePhone => self.keep_last_four(value, "phone", false),
            Mask::TokeniseCard => self.keep_last_four(value, "card", true),
            Mask::Fake => self.fake(value),
            Mask::Hash => hex::encode(Sha256::digest(value.as_bytes())),
        }
    }

    fn token(&self, value: &str) -> String {
        let tag = self.key.tag(self.customer, "token", value);
        format!("tok_{}", hex::encode(&tag[..12]))
    }

    /// A token for the part before the last `@`; the domain kept as it is.
    fn email(&self, value: &str) -> String {
        match value.rsplit_once('@') {
            Some((local, domain)) => {
                let tag = self.key.tag(self.customer, "email", local);
                format!("u{}@{domain}", hex::encode(&tag[..6]))
            }
            None => self.token(value),
        }
    }

    /// Every digit but the last four replaced by digits drawn from the
    /// token of the whole value; everything that is not a digit stays in
    /// place. A card number is then made to pass the Luhn check again, by
    /// the digit just before the four kept.
    fn keep_last_four(&self, value: &str, rule: &str, luhn: bool) -> String {
        let count = value.chars().filter(char::is_ascii_digit).count();
        if count <= 4 {
            return value.to_owned();
        }
        let tag = self.key.tag(self.customer, rule, value);
        let mut drawn = digits(&tag, count - 4).into_iter();
        let mut out: Vec<char> = Vec::with_capacity(value.len());
        let mut seen = 0;
        for c in value.chars() {
            if c.is_ascii_digit() && seen < count - 4 {
                seen += 1;
                let d = drawn.next().unwrap_or(0);
                out.push(char::from(b'0' + d));
            } else {
                out.push(c);
            }
        }
        if luhn {
            fix_luhn(&mut out, count);
        }
        out.into_iter().collect()
    }

    /// A stand-in of the same shape: digits stay digits, letters stay
    /// letters of the same case, everything else stays; the same value
    /// always gets the same stand-in. Numbers, dates and times keep their
    /// form, so the target's type takes them (a date's parts may give an
    /// invalid date: use `tokenise` or `redact` for dates).
    fn fake(&self, value: &str) -> String {
        let tag = self.key.tag(self.customer, "fake", value);
        let mut stream = tag.iter().cycle().flat_map(|b| [b >> 4, b & 0x0f]);
        value
            .chars()
            .map(|c| {
                let n = stream.next().unwrap_or(0);
                if c.is_ascii_digit() {
                    char::from(b'0' + n % 10)
                } else if c.is_ascii_lowercase() {
                    char::from(b'a' + n % 26)
                } else if c.is_ascii_uppercase() {
                    char::from(b'A' + n % 26)
                } else {
                    c
                }
            })
            .collect()
    }
}

/// Sets the digit before the last four so the digits pass the Luhn check.
fn fix_luhn(out: &mut [char], count: usize) {
    let positions: Vec<usize> = out
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_ascii_digit())
        .map(|(i, _)| i)
        .collect();
    let Some(&adjust) = positions.get(count - 5) else {
        return;
    };
    for candidate in 0..10u8 {
        out[adjust] = char::from(b'0' + candidate);
        if luhn_valid(out) {
            return;
        }
    }
}

fn luhn_valid(chars: &[char]) -> bool {
    let digits: Vec<u32> = chars.iter().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Kek;

    fn key(byte: u8) -> TokenKey {
        Kek::from_bytes(&[byte; 32]).expect("key").token_key()
    }

    #[test]
    fn tokens_are_stable_keyed_and_per_customer() {
        let (a, b) = (key(1), key(2));
        let acme = Masker {
            key: &a,
            customer: "acme",
        };
        let again = Masker {
            key: &a,
            customer: "acme",
        };
        let beta = Masker {
            key: &a,
            customer: "beta",
        };
        let other_key = Masker {
            key: &b,
            customer: "acme",
        };
        let token = acme
            .apply(Mask::Tokenise, None, Some("alice"))
            .expect("token");
        assert_eq!(
            again.apply(Mask::Tokenise, None, Some("alice")).as_deref(),
            Some(token.as_str())
        );
        assert_ne!(
            beta.apply(Mask::Tokenise, None, Some("alice")).as_deref(),
            Some(token.as_str())
        );
        assert_ne!(
            other_key
                .apply(Mask::Tokenise, None, Some("alice"))
                .as_deref(),
            Some(token.as_str())
        );
        assert_ne!(
            acme.apply(Mask::Tokenise, None, Some("alicf")).as_deref(),
            Some(token.as_str())
        );
        assert!(token.starts_with("tok_") && token.len() == 28, "{token}");
        assert_eq!(acme.apply(Mask::Tokenise, None, None), None);
    }

    #[test]
    fn format_keeping_tokens_keep_what_they_promise() {
        let k = key(3);
        let m = Masker {
            key: &k,
            customer: "acme",
        };
        let email = m
            .apply(Mask::TokeniseEmail, None, Some("alice.smith@example.com"))
            .expect("email");
        assert!(
            email.ends_with("@example.com") && !email.contains("alice"),
            "{email}"
        );
        let phone = m
            .apply(Mask::TokenisePhone, None, Some("+1 (555) 010-4477"))
            .expect("phone");
        assert_eq!(phone.len(), "+1 (555) 010-4477".len());
        assert!(
            phone.starts_with('+')
                && phone.ends_with("4477")
                && phone.contains(" (")
                && phone.contains(") "),
            "{phone}"
        );
        assert_ne!(phone, "+1 (555) 010-4477");
        for card in [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
        ] {
            let token = m.apply(Mask::TokeniseCard, None, Some(card)).expect("card");
            assert_eq!(token.len(), card.len());
            assert_eq!(&token[token.len() - 4..], &card[card.len() - 4..]);
            assert_ne!(token, card);
            let chars: Vec<char> = token.chars().collect();
            assert!(luhn_valid(&chars), "{token} fails the Luhn check");
        }
        // Too short to hide anything but what is kept.
        assert_eq!(
            m.apply(Mask::TokenisePhone, None, Some("1234")).as_deref(),
            Some("1234")
        );
    }

    #[test]
    fn fake_hash_redact_and_keep() {
        let k = key(4);
        let m = Masker {
            key: &k,
            customer: "acme",
        };
        let fake = m
            .apply(Mask::Fake, None, Some("Bob Jones 42"))
            .expect("fake");
        assert_eq!(fake.len(), 12);
        assert_eq!(fake.as_bytes()[3], b' ');
        assert!(fake.as_bytes()[0].is_ascii_uppercase() && fake.as_bytes()[10].is_ascii_digit());
        assert_eq!(
            m.apply(Mask::Fake, None, Some("Bob Jones 42")).as_deref(),
            Some(fake.as_str())
        );
        assert_eq!(
            m.apply(Mask::Hash, None, Some("abc")).as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(m.apply(Mask::Redact, None, Some("secret")), None);
        assert_eq!(
            m.apply(Mask::Redact, Some("[redacted]"), Some("secret"))
                .as_deref(),
            Some("[redacted]")
        );
        assert_eq!(
            m.apply(Mask::Keep, None, Some("same")).as_deref(),
            Some("same")
        );
    }

    #[test]
    fn a_row_masker_masks_its_columns_and_keeps_the_others_byte_for_byte() {
        let masker = RowMasker::new(
            key(6),
            "acme",
            vec![
                ColumnMask {
                    index: 1,
                    column: "email".into(),
                    mask: Mask::TokeniseEmail,
                    redact_with: None,
                },
                ColumnMask {
                    index: 3,
                    column: "note".into(),
                    mask: Mask::Redact,
                    redact_with: Some("tab\there".into()),
                },
            ],
        );
        let mut out = Vec::new();
        masker
            .rewrite(b"7\tbob\\t@example.com\t\\N\tsecret\n", &mut out)
            .expect("row");
        let text = String::from_utf8(out).expect("utf-8");
        let fields: Vec<&str> = text.trim_end_matches('\n').split('\t').collect();
        assert_eq!(fields.len(), 4, "{text}");
        assert_eq!(fields[0], "7");
        assert!(
            fields[1].ends_with("@example.com") && !fields[1].contains("bob"),
            "{text}"
        );
        assert_eq!(fields[2], "\\N");
        assert_eq!(fields[3], "tab\\there");
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", key(5)), "TokenKey(…)");
    }
}
