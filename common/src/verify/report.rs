//! The verification report: its layers, stable JSON field names and the
//! readable summary.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub job: String,
    /// When the comparison ended, milliseconds since the Unix epoch.
    pub verified_at_unix_ms: u64,
    pub matched: bool,
    pub schema: SchemaLayer,
    pub tables: Vec<TableReport>,
    pub foreign_keys: Vec<ForeignKeyReport>,
    /// Large objects, when either side has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_objects: Option<LargeObjectsReport>,
    /// Set for a spot check: only these key ranges were compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<super::SampleReport>,
    /// Set when tables landed through a mapping: its version and where
    /// each column came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<MappingLineage>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingLineage {
    pub version: String,
    pub lineage: Vec<crate::mapping::carry::Lineage>,
    /// Source rows left behind by `on_error: skip-row`, per table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedRows>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRows {
    pub table: String,
    pub rows: u64,
    /// Their keys on the source, the first 1,000.
    pub keys: Vec<String>,
}

/// Every large object's OID and content digest, summed by each database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeObjectsReport {
    pub source: u64,
    pub target: u64,
    pub matched: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SchemaLayer {
    pub matched: bool,
    /// `kind name`, present on the source only.
    pub missing_on_target: Vec<String>,
    /// `kind name`, present on the target only.
    pub extra_on_target: Vec<String>,
    /// `kind name`, defined differently on the two sides.
    pub different: Vec<String>,
    pub sequences_behind: Vec<SequenceBehind>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SequenceBehind {
    pub sequence: String,
    pub source: Option<i64>,
    pub target: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableReport {
    pub table: String,
    pub source_rows: u64,
    pub target_rows: Option<u64>,
    pub counts_match: bool,
    /// Key ranges the content was compared in, each leased to a worker
    /// (1 for a table without primary key; 0 when not compared).
    #[serde(default)]
    pub ranges: usize,
    pub content: ContentLayer,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContentLayer {
    pub matched: bool,
    /// `primary_key_buckets` or `whole_table`.
    pub method: String,
    /// Why rows cannot be named, when they cannot.
    pub localisation: Option<String>,
    /// Primary keys (as row literals) of rows missing from the target.
    pub missing: Vec<String>,
    /// Primary keys of rows only the target has.
    pub extra: Vec<String>,
    /// Rows present on both sides whose columns differ: names, never values.
    pub different: Vec<RowDifference>,
    /// Differences found beyond those listed.
    pub unlisted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowDifference {
    pub key: String,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForeignKeyReport {
    pub constraint: String,
    pub table: String,
    pub orphans: u64,
}

impl Report {
    /// The report without any key of the customer's rows, for documents
    /// that leave the operators: listed rows become counts (`unlisted`),
    /// skipped rows keep their number only.
    pub fn without_keys(mut self) -> Self {
        for table in &mut self.tables {
            let content = &mut table.content;
            content.unlisted +=
                (content.missing.len() + content.extra.len() + content.different.len()) as u64;
            content.missing.clear();
            content.extra.clear();
            content.different.clear();
        }
        if let Some(mapping) = &mut self.mapping {
            for skipped in &mut mapping.skipped {
                skipped.keys.clear();
            }
        }
        self
    }

    /// A readable summary, one line per finding.
    pub fn summary(&self) -> String {
        let mut out = Vec::new();
        let verdict = if self.matched { "MATCH" } else { "DIFFERENT" };
        out.push(format!("verification of job {}: {verdict}", self.job));
        if let Some(s) = &self.sample {
            out.push(format!(
                "spot check: {} of {} key ranges ({}%, seed {}); rows outside them were not compared",
                s.ranges_compared, s.ranges_total, s.percent, s.seed
            ));
        }
        let s = &self.schema;
        if s.matched {
            out.push("schema: identical".into());
        } else {
            for o in &s.missing_on_target {
                out.push(format!("schema: {o} missing on the target"));
            }
            for o in &s.extra_on_target {
                out.push(format!("schema: {o} only on the target"));
            }
            for o in &s.different {
                out.push(format!("schema: {o} defined differently"));
            }
            for b in &s.sequences_behind {
                let value = |v: Option<i64>| v.map_or("unset".to_owned(), |v| v.to_string());
                out.push(format!(
                    "schema: sequence {} behind the source (source {}, target {})",
                    b.sequence,
                    value(b.source),
                    value(b.target)
                ));
            }
        }
        for t in &self.tables {
            out.push(t.summary_line());
        }
        if let Some(objects) = &self.large_objects {
            out.push(format!(
                "large objects: {} at the source, {} at the target; content {}",
                objects.source,
                objects.target,
                if objects.matched {
                    "identical"
                } else {
                    "DIFFERENT"
                }
            ));
        }
        for fk in &self.foreign_keys {
            if fk.orphans > 0 {
                out.push(format!(
                    "foreign key {} on {}: {} orphan rows on the target",
                    fk.constraint, fk.table, fk.orphans
                ));
            }
        }
        if self.foreign_keys.iter().all(|fk| fk.orphans == 0) {
            out.push(format!(
                "referential integrity: {} foreign keys hold on the target",
                self.foreign_keys.len()
            ));
        }
        if let Some(mapping) = &self.mapping {
            out.push(format!(
                "mapping version {}: source column → target column, rule",
                mapping.version
            ));
            for skipped in &mapping.skipped {
                let shown: Vec<&str> = skipped.keys.iter().take(20).map(String::as_str).collect();
                out.push(format!(
                    "  {}: {} rows skipped (on_error: skip-row), keys {}{}",
                    skipped.table,
                    skipped.rows,
                    shown.join(", "),
                    if skipped.rows as usize > shown.len() {
                        " …"
                    } else {
                        ""
                    }
                ));
            }
            for line in &mapping.lineage {
                let side = |s: &str| {
                    if s.is_empty() {
                        "—".to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                out.push(format!(
                    "  {} → {}: {}",
                    side(&line.source),
                    side(&line.target),
                    line.rule
                ));
            }
        }
        out.join("\n")
    }
}

impl TableReport {
    /// One line: counts on both sides and how the content compared.
    pub fn summary_line(&self) -> String {
        let t = self;
        let counts = match t.target_rows {
            Some(n) => format!("{} rows at the source, {n} at the target", t.source_rows),
            None => format!(
                "{} rows at the source, table missing at the target",
                t.source_rows
            ),
        };
        let content = if t.content.matched && t.content.method == "whole_table" {
            "content identical (compared as a whole table)".to_owned()
        } else if t.content.matched {
            let plural = if t.ranges == 1 { "" } else { "s" };
            format!("content identical ({} key range{plural})", t.ranges)
        } else {
            let c = &t.content;
            let mut parts = Vec::new();
            if !c.missing.is_empty() {
                parts.push(format!("missing keys {}", c.missing.join(" ")));
            }
            if !c.extra.is_empty() {
                parts.push(format!("extra keys {}", c.extra.join(" ")));
            }
            for d in &c.different {
                parts.push(format!("key {} differs in {}", d.key, d.columns.join(", ")));
            }
            if c.unlisted > 0 {
                parts.push(format!("{} more differences not listed", c.unlisted));
            }
            if let Some(why) = &c.localisation {
                parts.push(why.clone());
            }
            format!("content DIFFERENT: {}", parts.join("; "))
        };
        format!("{}: {counts}; {content}", t.table)
    }
}

/// Whether everything matched: schema, counts, content and foreign keys.
pub fn all_matched(
    schema: &SchemaLayer,
    tables: &[TableReport],
    foreign_keys: &[ForeignKeyReport],
) -> bool {
    schema.matched
        && tables.iter().all(|t| t.counts_match && t.content.matched)
        && foreign_keys.iter().all(|fk| fk.orphans == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_without_keys_keeps_its_counts_and_names_no_row() {
        let report = Report {
            job: "j".into(),
            verified_at_unix_ms: 1,
            matched: false,
            schema: SchemaLayer::default(),
            tables: vec![TableReport {
                table: "public.t".into(),
                source_rows: 10,
                target_rows: Some(9),
                counts_match: false,
                ranges: 1,
                content: ContentLayer {
                    matched: false,
                    method: "primary_key_buckets".into(),
                    localisation: None,
                    missing: vec!["(7)".into()],
                    extra: vec!["(8)".into()],
                    different: vec![RowDifference {
                        key: "(9)".into(),
                        columns: vec!["email".into()],
                    }],
                    unlisted: 2,
                },
            }],
            foreign_keys: Vec::new(),
            large_objects: None,
            sample: None,
            mapping: Some(MappingLineage {
                skipped: vec![SkippedRows {
                    table: "public.t".into(),
                    rows: 1,
                    keys: vec!["(11)".into()],
                }],
                ..MappingLineage::default()
            }),
        };
        let redacted = report.without_keys();
        let json = serde_json::to_string(&redacted).expect("json");
        for key in ["(7)", "(8)", "(9)", "(11)"] {
            assert!(!json.contains(key), "{key} in {json}");
        }
        assert_eq!(redacted.tables[0].content.unlisted, 5);
        assert_eq!(redacted.mapping.map(|m| m.skipped[0].rows), Some(1));
    }
}
