//! What a review copy does to the staged rows on their way into its
//! target: masks the columns the mapping masks only for review copies
//! (`masked_for: review`), and keeps a seeded sample of the rows of the
//! tables no foreign key references (a referenced table is carried whole,
//! so every reference still finds its row). Rows only: never reads the
//! source, never writes, never logs a value.

use godwit_common::Result;
use godwit_common::job::PlannedTable;
use godwit_common::mapping::mask::{RowMasker, TokenKey};
use godwit_common::pgcopy::{self, CopyFormat};
use godwit_common::spec::TableName;
use godwit_common::verify::Sample;

/// How a replay's copy differs from the platform's.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReviewOptions {
    /// Mask the columns the mapping masks for review copies.
    pub masked: bool,
    /// Keep this share of the rows of unreferenced tables.
    pub sample: Option<Sample>,
}

/// Whether a sample thins `table`: not when a foreign key references it,
/// nor the large objects (columns refer to them by OID, unchecked).
pub(crate) fn thinned(table: &PlannedTable) -> bool {
    !table.referenced && !godwit_common::pg::large_objects::is_load_table(&table.name)
}

/// One table's share of a review copy.
pub(crate) struct TableReview {
    table: TableName,
    format: CopyFormat,
    masker: Option<RowMasker>,
    sample: Option<Sample>,
}

impl TableReview {
    /// `key` is the customer's token key, needed only when `table` has
    /// review masks and the copy is masked.
    pub(crate) fn new(
        options: ReviewOptions,
        table: &PlannedTable,
        key: Option<&TokenKey>,
        customer: &str,
    ) -> Self {
        let masker =
            match key {
                Some(key) if options.masked && !table.review_masks.is_empty() => Some(
                    RowMasker::new(key.clone(), customer, table.review_masks.clone()),
                ),
                _ => None,
            };
        Self {
            table: table.name.clone(),
            format: table.format,
            masker,
            sample: options.sample.filter(|_| thinned(table)),
        }
    }

    /// Whether rows pass unchanged and all of them.
    pub(crate) fn keeps_everything(&self) -> bool {
        self.masker.is_none() && self.sample.is_none()
    }

    /// The rows of chunk `seq` of `partition` that land, as they land, and
    /// how many they are.
    pub(crate) fn apply(&self, partition: u32, seq: u64, plain: &[u8]) -> Result<(Vec<u8>, u64)> {
        let mut out = Vec::with_capacity(plain.len());
        let mut rows = 0u64;
        for (i, row) in pgcopy::staged_rows(self.format, plain)?
            .into_iter()
            .enumerate()
        {
            if let Some(sample) = &self.sample
                && !sample.draws_row(&self.table, (partition, seq, i as u64))
            {
                continue;
            }
            match &self.masker {
                Some(masker) => masker.rewrite(row, &mut out)?,
                None => out.extend_from_slice(row),
            }
            rows += 1;
        }
        Ok((out, rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use godwit_common::mapping::Mask;
    use godwit_common::mapping::mask::ColumnMask;

    fn table(referenced: bool, review_masks: Vec<ColumnMask>) -> PlannedTable {
        PlannedTable {
            name: TableName::parse("tenant_acme.contacts").expect("name"),
            copy_columns: vec!["id".into(), "phone".into()],
            format: CopyFormat::Text,
            estimated_bytes: 0,
            partitions: vec![0],
            source_rows: None,
            checked: true,
            source_relation: None,
            masks: Vec::new(),
            review_masks,
            slice: Some("true".into()),
            referenced,
            remaps: Vec::new(),
            creates: None,
        }
    }

    fn key() -> TokenKey {
        godwit_common::keys::Kek::from_bytes(&[0x11; 32])
            .expect("kek")
            .token_key()
    }

    const ROWS: &[u8] = b"1\t+15550000001\n2\t\\N\n3\t+15550000003\n";

    #[test]
    fn review_masks_apply_only_to_a_masked_copy() {
        let masks = vec![ColumnMask {
            index: 1,
            column: "phone".into(),
            mask: Mask::TokenisePhone,
            redact_with: None,
        }];
        let key = key();
        let plain = TableReview::new(
            ReviewOptions::default(),
            &table(false, masks.clone()),
            Some(&key),
            "acme",
        );
        assert!(plain.keeps_everything());
        let masked = TableReview::new(
            ReviewOptions {
                masked: true,
                sample: None,
            },
            &table(false, masks),
            Some(&key),
            "acme",
        );
        let (out, rows) = masked.apply(0, 0, ROWS).expect("masked");
        assert_eq!(rows, 3);
        let text = String::from_utf8(out).expect("text");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "2\t\\N", "NULL stays NULL");
        for (line, last_four) in [(lines[0], "0001"), (lines[2], "0003")] {
            let phone = line.split('\t').nth(1).expect("phone");
            assert_ne!(phone, "+15550000001");
            assert!(phone.ends_with(last_four), "{phone}");
        }
    }

    #[test]
    fn a_sample_thins_unreferenced_tables_only() {
        let options = ReviewOptions {
            masked: false,
            sample: Some(Sample {
                percent: 1.0,
                seed: 0,
            }),
        };
        let many: Vec<u8> = (0..1_000)
            .flat_map(|i| format!("{i}\t+1\n").into_bytes())
            .collect();
        let (_, kept) = TableReview::new(options, &table(false, Vec::new()), None, "acme")
            .apply(0, 0, &many)
            .expect("sampled");
        assert!(kept < 40, "{kept} of 1000 rows kept at 1%");
        let whole = TableReview::new(options, &table(true, Vec::new()), None, "acme");
        assert!(whole.keeps_everything());
    }
}
