//! Splitting tables into partitions: a pure function of catalog sizes. Each
//! table becomes consecutive `ctid` block ranges of about `partition_size`
//! bytes; the last range of a table is open-ended, so no row is left out
//! whatever the table's size when it is read. Works for any table, with or
//! without a primary key (PostgreSQL 14+ scans TID ranges directly).

use godwit_common::state::BlockRange;

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
    }
}
