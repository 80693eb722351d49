//! Splitting tables into units of work: pure functions of catalog facts.
//!
//! For the copy, each table becomes consecutive `ctid` block ranges of about
//! `partition_size` bytes; the last range of a table is open-ended, so no
//! row is left out whatever the table's size when it is read. Works for any
//! table, with or without a primary key (PostgreSQL 14+ scans TID ranges
//! directly).
//!
//! For verification, physical positions differ between source and target,
//! so tables are cut by their leading primary-key column instead: ranges
//! that mean the same rows on both sides, whatever their layout.

use godwit_common::pg::catalog::KeyDomain;
use godwit_common::state::{BlockRange, KeyRange};

/// PostgreSQL's default block size; the planner only needs it to turn a byte
/// budget into a block count.
pub const BLOCK_SIZE: u64 = 8192;

/// Block ranges covering a table of `blocks` blocks in partitions of about
/// `partition_bytes` each. Always at least one range.
pub fn split_table(blocks: u32, partition_bytes: u64) -> Vec<BlockRange> {
    let per_partition = u32::try_from((partition_bytes / BLOCK_SIZE).max(1)).unwrap_or(u32::MAX);
    let mut ranges = Vec::new();
    let mut start = 0u32;
    while blocks.saturating_sub(start) > per_partition {
        let end = start + per_partition;
        ranges.push(BlockRange {
            start,
            end: Some(end),
        });
        start = end;
    }
    ranges.push(BlockRange { start, end: None });
    ranges
}

/// Values cutting `domain` into about `pieces` ranges, strictly increasing.
/// Fewer when the domain has fewer distinct values; none for one piece.
pub fn key_cuts(domain: &KeyDomain, pieces: usize) -> Vec<String> {
    if pieces <= 1 {
        return Vec::new();
    }
    match domain {
        KeyDomain::Integer { min, max } => {
            let span = i128::from(*max) - i128::from(*min);
            let mut cuts: Vec<i128> = (1..pieces as i128)
                .map(|i| i128::from(*min) + span * i / pieces as i128)
                .filter(|cut| *cut > i128::from(*min))
                .collect();
            cuts.dedup();
            cuts.iter().map(ToString::to_string).collect()
        }
        KeyDomain::Histogram(bounds) if bounds.len() > 2 => {
            // Between consecutive bounds lie equally many rows. The outer
            // bounds are the least and greatest sampled values: cutting
            // there would only make a sliver.
            let last = bounds.len() - 1;
            let mut cuts: Vec<String> = (1..pieces)
                .map(|i| i * last / pieces)
                .filter(|at| *at > 0 && *at < last)
                .map(|at| bounds[at].clone())
                .collect();
            cuts.dedup();
            cuts
        }
        KeyDomain::Histogram(_) | KeyDomain::Unknown => Vec::new(),
    }
}

/// The ranges between consecutive cuts, open at both ends of the column.
pub fn key_ranges(column: &str, type_name: &str, cuts: &[String]) -> Vec<KeyRange> {
    let mut lower = None;
    let mut ranges = Vec::with_capacity(cuts.len() + 1);
    for cut in cuts.iter().map(Some).chain(std::iter::once(None)) {
        ranges.push(KeyRange {
            column: column.to_owned(),
            type_name: type_name.to_owned(),
            lower: lower.clone(),
            upper: cut.cloned(),
        });
        lower = cut.cloned();
    }
    ranges
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn small_and_empty_tables_are_one_open_partition() {
        assert_eq!(
            split_table(0, 1 << 20),
            vec![BlockRange {
                start: 0,
                end: None
            }]
        );
        assert_eq!(
            split_table(100, 1 << 30),
            vec![BlockRange {
                start: 0,
                end: None
            }]
        );
    }

    #[test]
    fn large_table_is_split_evenly() {
        let ranges = split_table(1000, 300 * BLOCK_SIZE);
        assert_eq!(
            ranges,
            vec![
                BlockRange {
                    start: 0,
                    end: Some(300)
                },
                BlockRange {
                    start: 300,
                    end: Some(600)
                },
                BlockRange {
                    start: 600,
                    end: Some(900)
                },
                BlockRange {
                    start: 900,
                    end: None
                },
            ]
        );
    }

    #[test]
    fn integer_keys_are_cut_evenly() {
        let cuts = key_cuts(&KeyDomain::Integer { min: 1, max: 100 }, 4);
        assert_eq!(cuts, ["25", "50", "75"]);
        let ranges = key_ranges("id", "bigint", &cuts);
        assert_eq!(ranges.len(), 4);
        assert_eq!(
            godwit_common::pg::ranges::key_predicate(&ranges[0], "t"),
            "t.id < '25'::bigint"
        );
        assert_eq!(
            godwit_common::pg::ranges::key_predicate(&ranges[1], "t"),
            "t.id >= '25'::bigint AND t.id < '50'::bigint"
        );
        assert_eq!(
            godwit_common::pg::ranges::key_predicate(&ranges[3], "t"),
            "t.id >= '75'::bigint"
        );
        assert!(key_cuts(&KeyDomain::Integer { min: 7, max: 7 }, 8).is_empty());
        assert!(key_cuts(&KeyDomain::Unknown, 8).is_empty());
    }

    #[test]
    fn histogram_keys_are_cut_at_inner_bounds() {
        let bounds: Vec<String> = ["a", "c", "e", "g", "i", "k"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(key_cuts(&KeyDomain::Histogram(bounds.clone()), 2), ["e"]);
        assert_eq!(
            key_cuts(&KeyDomain::Histogram(bounds.clone()), 5),
            ["c", "e", "g", "i"]
        );
        // More pieces than bounds: every inner bound once.
        assert_eq!(
            key_cuts(&KeyDomain::Histogram(bounds.clone()), 50),
            ["c", "e", "g", "i"]
        );
        assert_eq!(
            key_cuts(&KeyDomain::Histogram(bounds), 1),
            Vec::<String>::new()
        );
    }

    proptest! {
        #[test]
        fn ranges_cover_every_block_once(blocks in 0u32..200_000, partition_bytes in 1u64..(1 << 32)) {
            let ranges = split_table(blocks, partition_bytes);
            prop_assert_eq!(ranges[0].start, 0);
            prop_assert_eq!(ranges.last().map(|r| r.end), Some(None));
            for pair in ranges.windows(2) {
                prop_assert_eq!(pair[0].end, Some(pair[1].start));
                prop_assert!(pair[0].start < pair[1].start);
            }
            let per = (partition_bytes / BLOCK_SIZE).max(1);
            for range in &ranges[..ranges.len() - 1] {
                prop_assert_eq!(u64::from(range.end.unwrap_or(0) - range.start), per);
            }
            // The open last range holds at most one partition's worth of the planned blocks.
            let last_start = u64::from(ranges.last().map(|r| r.start).unwrap_or(0));
            prop_assert!(u64::from(blocks).saturating_sub(last_start) <= per);
        }

        #[test]
        fn integer_cuts_increase_inside_the_domain(
            min in -1_000_000i64..1_000_000,
            width in 0i64..10_000_000,
            pieces in 0usize..64,
        ) {
            let max = min + width;
            let cuts: Vec<i64> = key_cuts(&KeyDomain::Integer { min, max }, pieces)
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect();
            prop_assert!(cuts.len() < pieces.max(1));
            prop_assert!(cuts.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(cuts.iter().all(|c| *c > min && *c <= max));
        }

        #[test]
        fn key_ranges_chain_without_gaps(cuts in proptest::collection::btree_set(0u32..1000, 0..20)) {
            let cuts: Vec<String> = cuts.iter().map(|c| format!("{c:04}")).collect();
            let ranges = key_ranges("k", "text", &cuts);
            prop_assert_eq!(ranges.len(), cuts.len() + 1);
            prop_assert_eq!(&ranges[0].lower, &None);
            prop_assert_eq!(&ranges[ranges.len() - 1].upper, &None);
            for pair in ranges.windows(2) {
                prop_assert!(pair[0].upper.is_some());
                prop_assert_eq!(&pair[0].upper, &pair[1].lower);
            }
        }
    }
}
