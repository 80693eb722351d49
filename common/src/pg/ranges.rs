//! The SQL that selects the rows of a work item's range: the only place
//! the ranges the lease store carries (`state::BlockRange`,
//! `state::KeyRange`) become SQL.

use crate::state::{BlockRange, KeyRange};

/// `ctid >= (start,0) AND ctid < (end,0)`, open-ended without an end.
pub fn block_predicate(range: &BlockRange) -> String {
    match range.end {
        Some(end) => format!(
            "ctid >= '({},0)'::tid AND ctid < '({end},0)'::tid",
            range.start
        ),
        None => format!("ctid >= '({},0)'::tid", range.start),
    }
}

/// The condition selecting the range's rows of table alias `alias`.
pub fn key_predicate(range: &KeyRange, alias: &str) -> String {
    let literal = |v: &str| format!("'{}'::{}", v.replace('\'', "''"), range.type_name);
    let mut parts = Vec::new();
    if let Some(lower) = &range.lower {
        parts.push(format!("{alias}.{} >= {}", range.column, literal(lower)));
    }
    if let Some(upper) = &range.upper {
        parts.push(format!("{alias}.{} < {}", range.column, literal(upper)));
    }
    if parts.is_empty() {
        "true".to_owned()
    } else {
        parts.join(" AND ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_predicates_quote_their_bounds() {
        let range = |lower: Option<&str>, upper: Option<&str>| KeyRange {
            column: "\"Id\"".into(),
            type_name: "text".into(),
            lower: lower.map(str::to_owned),
            upper: upper.map(str::to_owned),
        };
        assert_eq!(key_predicate(&range(None, None), "t"), "true");
        assert_eq!(
            key_predicate(&range(Some("a'b"), None), "t"),
            "t.\"Id\" >= 'a''b'::text"
        );
        assert_eq!(
            key_predicate(&range(Some("a"), Some("m")), "s"),
            "s.\"Id\" >= 'a'::text AND s.\"Id\" < 'm'::text"
        );
    }

    #[test]
    fn block_range_predicates() {
        let bounded = BlockRange {
            start: 10,
            end: Some(20),
        };
        assert_eq!(
            block_predicate(&bounded),
            "ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid"
        );
        let open = BlockRange {
            start: 20,
            end: None,
        };
        assert_eq!(block_predicate(&open), "ctid >= '(20,0)'::tid");
    }
}
