//! Spot checks: a random but reproducible subset of each table's key
//! ranges, chosen from a seed the report records, so a quick check can be
//! repeated exactly (`godwit verify --sample 5% --seed N`).

use serde::{Deserialize, Serialize};

use crate::spec::TableName;

/// Which share of the key ranges a spot check compares, and the seed that
/// picks them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub percent: f64,
    pub seed: u64,
}

/// What a spot check compared, in its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleReport {
    pub percent: f64,
    pub seed: u64,
    pub ranges_compared: u64,
    pub ranges_total: u64,
}

impl Sample {
    /// A share written `5%` or `5`, above 0 and at most 100.
    pub fn parse_percent(text: &str) -> Result<f64, String> {
        let number = text.trim().trim_end_matches('%').trim();
        match number.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
            _ => Err(format!(
                "--sample {text:?}: give the share to take, above 0% and at most 100% \
                 (for example --sample 5%)"
            )),
        }
    }

    /// Pieces to cut a table into so that the share means something even
    /// for a small table (1% of one range is all or nothing).
    pub fn pieces(&self, wanted: usize, most: usize) -> usize {
        let enough = (100.0 / self.percent).ceil() as usize;
        wanted.max(enough).min(most).max(1)
    }

    /// The indices (of `total` ranges of `table`) to compare: each range
    /// whose seeded draw falls under the share, and never none.
    pub fn picks(&self, table: &TableName, total: usize) -> Vec<usize> {
        let base = self.seed ^ fnv1a(table.to_string().as_bytes());
        let draws: Vec<u64> = (0..total as u64)
            .map(|i| splitmix64(base.wrapping_add(i)))
            .collect();
        let under = (self.percent / 100.0 * u64::MAX as f64) as u64;
        let mut picked: Vec<usize> = (0..total).filter(|&i| draws[i] <= under).collect();
        if picked.is_empty()
            && let Some(lowest) = (0..total).min_by_key(|&i| draws[i])
        {
            picked.push(lowest);
        }
        picked
    }
}

impl Sample {
    /// Whether the row at `position` (its partition, chunk and place in
    /// the chunk) of `table` is drawn: the same seed draws the same rows.
    pub fn draws_row(&self, table: &TableName, position: (u32, u64, u64)) -> bool {
        let (partition, chunk, row) = position;
        let base = self.seed ^ fnv1a(table.to_string().as_bytes());
        let draw = splitmix64(splitmix64(splitmix64(base ^ u64::from(partition)) ^ chunk) ^ row);
        draw <= (self.percent / 100.0 * u64::MAX as f64) as u64
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableName {
        TableName {
            schema: "public".into(),
            name: "orders".into(),
        }
    }

    #[test]
    fn rows_are_drawn_at_about_the_share_and_the_same_ones_again() {
        let sample = Sample {
            percent: 25.0,
            seed: 3,
        };
        let drawn = |sample: &Sample| -> Vec<u64> {
            (0..4_000)
                .filter(|&i| sample.draws_row(&table(), (i as u32 % 3, i / 700, i)))
                .collect()
        };
        let first = drawn(&sample);
        assert!((850..=1_150).contains(&first.len()), "{}", first.len());
        assert_eq!(first, drawn(&sample));
        assert_ne!(first, drawn(&Sample { seed: 4, ..sample }));
    }

    #[test]
    fn the_same_seed_picks_the_same_ranges_and_another_seed_others() {
        let sample = Sample {
            percent: 10.0,
            seed: 7,
        };
        let picked = sample.picks(&table(), 200);
        assert_eq!(picked, sample.picks(&table(), 200));
        assert!((5..=40).contains(&picked.len()), "{}", picked.len());
        let other = Sample { seed: 8, ..sample }.picks(&table(), 200);
        assert_ne!(picked, other);
    }

    #[test]
    fn a_share_picks_at_least_one_range_and_all_at_100_percent() {
        let tiny = Sample {
            percent: 0.01,
            seed: 1,
        };
        assert_eq!(tiny.picks(&table(), 3).len(), 1);
        let all = Sample {
            percent: 100.0,
            seed: 1,
        };
        assert_eq!(all.picks(&table(), 17).len(), 17);
    }

    #[test]
    fn shares_outside_0_to_100_are_refused() {
        assert_eq!(Sample::parse_percent("5%").unwrap(), 5.0);
        assert_eq!(Sample::parse_percent("0.5").unwrap(), 0.5);
        for bad in ["0%", "150%", "-1", "five"] {
            let e = Sample::parse_percent(bad).unwrap_err();
            assert!(e.contains("--sample"), "{e}");
        }
    }

    #[test]
    fn small_tables_are_cut_finer_for_a_small_share() {
        let sample = Sample {
            percent: 10.0,
            seed: 1,
        };
        assert_eq!(sample.pieces(1, 256), 10);
        assert_eq!(sample.pieces(40, 256), 40);
        let tiny = Sample {
            percent: 0.1,
            seed: 1,
        };
        assert_eq!(tiny.pieces(1, 256), 256);
    }
}
