//! The mapping: how a customer's tables land in the platform's schema
//! (`mapping:` in a job spec). Owns the mapping's form as written, the
//! checks that need no database, its canonical version, and (in
//! [`resolve`]) its resolution against both catalogs. Never touches rows:
//! what a rule does to a value belongs to the paths that carry values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::spec::TableName;

pub mod carry;
pub mod create;
pub mod evidence;
pub mod fallback;
pub mod forecast;
pub mod mask;
mod new_ids;
pub mod on_target;
pub mod refusals;
pub mod remap;
pub mod resolve;
pub mod shared;

/// `mapping:` of a job spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Job-level values, used as `${name}` in `add:`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, String>,
    /// Source tables copied before the others, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<String>,
    /// Per source table, exact names before patterns; a table no entry
    /// matches lands under its own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableMapping>,
}

/// Where one source table (or every table a pattern matches) lands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// `schema.table`, or a pattern with `*` in either part (`public.*`).
    pub from: String,
    /// `schema.table`, or `schema.*` to keep each table's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The target column that tells this job's rows from other tenants'
    /// (fed by `add:`): what a shared table is sliced by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Target columns the source does not have, with their value: a
    /// constant or `${value}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Rules per source column; a column without one lands as it is,
    /// under its own name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, ColumnRule>,
}

/// What happens to one source column.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// The target column's name, when not the source column's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Not carried at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop: bool,
    /// The target type (`varchar(50)`, `bigint`): values are converted
    /// strictly; one that does not convert is an error unless `on_error`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub convert_to: Option<String>,
    /// What a value that does not convert becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<OnError>,
    /// Every value + N, and every column of the job's tables referencing
    /// this one by a foreign key with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// New ids, kept in a mapping table in the target's `godwit` schema;
    /// referencing columns are rewritten through it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remap: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Mask>,
    /// With `mask: redact`, the constant put in place of each value
    /// (default NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact_with: Option<String>,
    /// Where the mask applies: `always` (default) or only in a `review`
    /// copy (`godwit replay --masked`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_for: Option<MaskScope>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// The job fails naming the table, the key and the column (default).
    Fail,
    Null,
    /// The target column's default.
    Default,
    /// The row is left out, counted and listed in the report.
    SkipRow,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mask {
    Keep,
    Redact,
    /// HMAC-SHA-256 under the customer's key: equal values, equal tokens.
    Tokenise,
    /// A token for the part before `@`; the domain is kept.
    TokeniseEmail,
    /// A token of the same digits' count; the last four are kept.
    TokenisePhone,
    /// A token of the same digits' count; the last four are kept.
    TokeniseCard,
    /// A deterministic, type-correct stand-in.
    Fake,
    /// SHA-256 of the value, unkeyed.
    Hash,
}

impl Mask {
    /// The rule as a mapping writes it (`tokenise-email`).
    pub fn spec_name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MaskScope {
    Always,
    Review,
}

/// A `from:` pattern: `*` stands for any run of characters within a part.
fn matches(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &value[first.len()..];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// `schema.table` or `table` (in `public`), with `*` allowed in either part.
fn split_name(raw: &str) -> Option<(String, String)> {
    let (schema, name) = match raw.split_once('.') {
        Some((schema, name)) => (schema, name),
        None => ("public", raw),
    };
    (!schema.is_empty() && !name.is_empty() && !name.contains('.'))
        .then(|| (schema.to_owned(), name.to_owned()))
}

impl TableMapping {
    /// Whether this entry's `from` names the table exactly (no pattern).
    pub fn is_exact(&self) -> bool {
        !self.from.contains('*')
    }

    pub fn matches(&self, table: &TableName) -> bool {
        split_name(&self.from).is_some_and(|(schema, name)| {
            matches(&schema, &table.schema) && matches(&name, &table.name)
        })
    }

    /// Whether the entry only masks columns of a table that keeps its name
    /// (created by the job from the source's definition, as any table).
    pub fn masks_only(&self) -> bool {
        self.add.is_empty()
            && self.tenant.is_none()
            && !self.columns.is_empty()
            && self.columns.values().all(|rule| {
                rule.mask.is_some()
                    && rule.to.is_none()
                    && !rule.drop
                    && rule.convert_to.is_none()
                    && rule.on_error.is_none()
                    && rule.offset.is_none()
                    && !rule.remap
            })
    }

    /// Where `table` lands under this entry.
    pub fn landing(&self, table: &TableName) -> TableName {
        let Some((schema, name)) = self.to.as_deref().and_then(split_name) else {
            return table.clone();
        };
        TableName {
            schema,
            name: if name == "*" {
                table.name.clone()
            } else {
                name
            },
        }
    }
}

impl MappingSpec {
    /// The entry mapping `table`: the exact one, else the first pattern.
    pub fn entry_for(&self, table: &TableName) -> Option<(usize, &TableMapping)> {
        let mut entries = self.tables.iter().enumerate();
        entries
            .clone()
            .find(|(_, t)| t.is_exact() && t.matches(table))
            .or_else(|| entries.find(|(_, t)| !t.is_exact() && t.matches(table)))
    }

    /// `${name}` replaced by the job's value; None names an unknown one.
    pub fn value_of(&self, raw: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = raw;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("{raw:?} opens `${{` without closing it"));
            };
            let name = &after[..end];
            match self.values.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    return Err(format!(
                        "{raw:?} uses ${{{name}}}, which `mapping.values` does not define"
                    ));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Problems a mapping has whatever the databases hold; each names
    /// where it is and what to write instead.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for entry in &self.order {
            if entry.contains('*') || split_name(entry).is_none() {
                problems.push(format!(
                    "`mapping.order` entry {entry:?} is not a table name: write \"schema.table\""
                ));
            }
        }
        for (i, table) in self.tables.iter().enumerate() {
            let at = format!("`mapping.tables[{i}]` (from {:?})", table.from);
            if split_name(&table.from).is_none() {
                problems.push(format!(
                    "{at}: `from` is not a table name or pattern: write \"schema.table\" or \"schema.*\""
                ));
            }
            if let Some(to) = &table.to {
                match split_name(to) {
                    None => problems.push(format!(
                        "{at}: `to` {to:?} is not a table name: write \"schema.table\" or \"schema.*\""
                    )),
                    Some((schema, name)) if schema.contains('*') || (name.contains('*') && name != "*") => {
                        problems.push(format!(
                            "{at}: `to` {to:?} may only use `*` as the whole table name (\"schema.*\": each \
                             table keeps its name)"
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let Some(tenant) = &table.tenant
                && !table.add.contains_key(tenant)
            {
                problems.push(format!(
                    "{at}: `tenant: {tenant}` has no value: add `{tenant}: ${{customer_id}}` (or a constant) \
                     under `add:`"
                ));
            }
            for (column, value) in &table.add {
                if let Err(e) = self.value_of(value) {
                    problems.push(format!("{at}: `add.{column}`: {e}"));
                }
            }
            for (column, rule) in &table.columns {
                let at = format!("{at}: column {column:?}");
                if let Some(problem) = rule.problem() {
                    problems.push(format!("{at}: {problem}"));
                }
            }
        }
        problems
    }

    /// The canonical form: JSON with fields in a fixed order and defaults
    /// left out.
    pub fn canonical(&self) -> String {
        serde_json::to_value(self)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    /// What changed from the mapping whose canonical form is `recorded` to
    /// `current` (None: no mapping), one line per path.
    pub fn differences(recorded: Option<&str>, current: Option<&Self>) -> Vec<String> {
        let parse = |text: Option<&str>| {
            text.and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        let old = parse(recorded);
        let new = current
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or(serde_json::Value::Null);
        let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
        flatten("mapping", &old, &mut before);
        flatten("mapping", &new, &mut after);
        let paths: std::collections::BTreeSet<&String> =
            before.keys().chain(after.keys()).collect();
        paths
            .into_iter()
            .filter_map(|path| match (before.get(path), after.get(path)) {
                (Some(a), Some(b)) if a == b => None,
                (Some(a), Some(b)) => Some(format!("{path}: {a} → {b}")),
                (Some(a), None) => Some(format!("{path}: {a} → (absent)")),
                (None, Some(b)) => Some(format!("{path}: (absent) → {b}")),
                (None, None) => None,
            })
            .collect()
    }

    /// The mapping's version: a hash of its canonical form (fields in a
    /// fixed order, defaults left out), so the same mapping written
    /// differently has the same version and any change gives another.
    pub fn version(&self) -> String {
        let canonical =
            serde_json::to_vec(&serde_json::to_value(self).unwrap_or_default()).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Leaf values of `value` by their path (`mapping.tables[0].to`).
fn flatten(path: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields {
                flatten(&format!("{path}.{key}"), field, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{path}[{i}]"), item, out);
            }
        }
        serde_json::Value::Null => {}
        leaf => {
            out.insert(path.to_owned(), leaf.to_string());
        }
    }
}

impl ColumnRule {
    fn problem(&self) -> Option<String> {
        let changes = self.to.is_some()
            || self.convert_to.is_some()
            || self.offset.is_some()
            || self.remap
            || self.mask.is_some();
        if self.drop && changes {
            return Some(
                "`drop: true` leaves nothing for its other rules: keep one or the other".into(),
            );
        }
        if self.on_error.is_some() && self.convert_to.is_none() {
            return Some(
                "`on_error` applies to a conversion: add `type:` (the target type)".into(),
            );
        }
        if self.offset.is_some() && self.remap {
            return Some("`offset` and `remap` both give new ids: keep one".into());
        }
        if (self.offset.is_some() || self.remap) && self.mask.is_some_and(|m| m != Mask::Keep) {
            return Some("a key column gets new ids or a mask, not both".into());
        }
        if self.offset == Some(0) {
            return Some("`offset: 0` changes nothing: leave it out".into());
        }
        if self.redact_with.is_some() && self.mask != Some(Mask::Redact) {
            return Some("`redact_with` goes with `mask: redact`".into());
        }
        if self.masked_for.is_some() && self.mask.is_none() {
            return Some("`masked_for` goes with a `mask`".into());
        }
        if let Some(to) = &self.to
            && (to.is_empty() || to.contains('.'))
        {
            return Some(format!("`to: {to:?}` is not a column name"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> MappingSpec {
        serde_norway::from_str(yaml).expect("mapping")
    }

    fn name(raw: &str) -> TableName {
        TableName::parse(raw).expect("name")
    }

    #[test]
    fn exact_entries_win_over_patterns_and_patterns_keep_names() {
        let mapping = parse(
            "tables:\n\
             - from: public.*\n  to: tenant_acme.*\n\
             - from: public.orders\n  to: platform.orders\n",
        );
        let (_, orders) = mapping.entry_for(&name("public.orders")).expect("orders");
        assert_eq!(
            orders.landing(&name("public.orders")),
            name("platform.orders")
        );
        let (_, other) = mapping.entry_for(&name("public.users")).expect("users");
        assert_eq!(
            other.landing(&name("public.users")),
            name("tenant_acme.users")
        );
        assert!(mapping.entry_for(&name("billing.users")).is_none());
        assert!(matches("inv*_20*", "invoices_2026"));
        assert!(!matches("inv*_20*", "orders_2026"));
    }

    #[test]
    fn values_are_substituted_and_unknown_ones_named() {
        let mapping = parse("values:\n  customer_uuid: 6f1c\n");
        assert_eq!(
            mapping.value_of("t-${customer_uuid}").as_deref(),
            Ok("t-6f1c")
        );
        let unknown = mapping.value_of("${tenant}").expect_err("unknown");
        assert!(unknown.contains("${tenant}"), "{unknown}");
    }

    #[test]
    fn contradictory_rules_are_named() {
        let mapping = parse(
            "tables:\n\
             - from: public.orders\n  tenant: tenant_id\n  columns:\n    \
               note: {drop: true, to: memo}\n    \
               total: {on_error: 'null'}\n    \
               id: {offset: 10, remap: true}\n",
        );
        let problems = mapping.problems().join("\n");
        for expected in [
            "`tenant: tenant_id` has no value",
            "column \"note\": `drop: true`",
            "column \"total\": `on_error` applies to a conversion",
            "column \"id\": `offset` and `remap`",
        ] {
            assert!(
                problems.contains(expected),
                "{expected} missing from:\n{problems}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let refused = serde_norway::from_str::<MappingSpec>(
            "tables:\n- from: public.orders\n  columns:\n    id: {ofset: 10}\n",
        )
        .expect_err("typo");
        assert!(refused.to_string().contains("ofset"), "{refused}");
    }

    #[test]
    fn a_changed_mapping_is_told_path_by_path() {
        let old = parse("tables:\n- from: public.t\n  to: p.t\n  columns:\n    id: {offset: 10}\n");
        let new = parse("tables:\n- from: public.t\n  to: p.u\n  columns:\n    id: {offset: 20}\n");
        assert_eq!(
            MappingSpec::differences(Some(&old.canonical()), Some(&new)),
            vec![
                "mapping.tables[0].columns.id.offset: 10 → 20".to_owned(),
                "mapping.tables[0].to: \"p.t\" → \"p.u\"".to_owned(),
            ]
        );
        assert!(MappingSpec::differences(Some(&old.canonical()), Some(&old)).is_empty());
        assert_eq!(
            MappingSpec::differences(None, Some(&new)).len(),
            3,
            "from, to and the offset are new"
        );
    }

    #[test]
    fn the_version_follows_the_meaning_not_the_writing() {
        let a = parse("values: {a: '1', b: '2'}\ntables:\n- from: public.t\n  to: p.t\n");
        let b = parse("tables:\n- to: p.t\n  from: public.t\nvalues: {b: '2', a: '1'}\n");
        let c = parse("values: {a: '1', b: '3'}\ntables:\n- from: public.t\n  to: p.t\n");
        assert_eq!(a.version(), b.version());
        assert_ne!(a.version(), c.version());
    }
}
