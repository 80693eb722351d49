//! How a mapped table's rows are carried and compared: the expressions the
//! source computes for each target column (renamed, converted strictly,
//! offset, added constants), the target columns they fill, and the two
//! views verification compares (the source as mapped; the target's slice
//! holding this job's rows). The copy and the check use the same rules,
//! each computed by its own database. SQL text only; runs nothing.

use serde::{Deserialize, Serialize};

use super::evidence::failing_value;
use super::mask::ColumnMask;
use super::remap::{RemappedColumn, old_value_column};
use super::resolve::{ColumnLanding, Conversion, Landing};
use super::{Mask, OnError};
use crate::spec::{TableName, quote_ident, quote_literal};
use crate::verify::{MaskedColumn, Value, View};

/// A mapped table, ready to copy and to compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    pub source: TableName,
    pub target: TableName,
    /// Quoted target columns, in the order `select` produces them.
    pub copy_columns: Vec<String>,
    /// Each target column's type, unbounded (`unbounded_type`): what the
    /// stream casts `select`'s text to, leaving the column's own length or
    /// scale to be enforced on assignment (an error, as for COPY).
    pub copy_types: Vec<String>,
    /// Target columns (quoted) the platform numbers `GENERATED ALWAYS`:
    /// a streamed insert overrides them, an update cannot change them.
    pub always_identity: Vec<String>,
    /// Expressions over `t` (the source table), one per target column,
    /// whose text COPY writes.
    pub select: Vec<String>,
    /// The source as mapped, and the target's slice.
    pub views: (View, View),
    /// Where the key ranges cut on the source land on the target.
    pub key_map: Option<KeyMap>,
    /// Source column → target column and the rule between them.
    pub lineage: Vec<Lineage>,
    /// Columns masked on their way to the target (by position in
    /// `copy_columns`); they are not compared.
    pub masks: Vec<ColumnMask>,
    /// The rows copied (over `t`), when `on_error: skip-row` leaves some
    /// behind; the check compares only these, and counts the others.
    pub keep: Option<String>,
    /// The source's primary key, quoted (how skipped rows are listed).
    pub source_key: Vec<String>,
    /// The masked columns as the check compares them (masked in the
    /// checking process, against the target's values).
    pub masked: Vec<MaskedColumn>,
    /// Columns masked only in review copies, by position in
    /// `copy_columns`: carried as they are, masked when replayed with
    /// `--masked`.
    pub review_masks: Vec<ColumnMask>,
    /// Each carried source column and the target column it lands in.
    pub column_targets: Vec<(String, String)>,
    /// The source's primary-key columns and where they land: how keys the
    /// change stream names on the source are found on the target.
    pub keys: Vec<KeyColumn>,
    /// The foreign keys the source table holds (source names): the check
    /// looks for rows of the slice whose reference finds nothing as landed.
    pub references: Vec<(Vec<String>, TableName, Vec<String>)>,
    /// Columns landing with new ids (`remap: true`, and the columns
    /// referencing a remapped key), by position in `copy_columns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remaps: Vec<RemappedColumn>,
    /// How the job creates the target table, when the target has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<super::create::Creation>,
    /// Masked columns converted on their way (see [`MaskedConversion`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_conversions: Vec<MaskedConversion>,
    /// The job's other source tables landing in the same target table
    /// (their rows share the slice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares_target_with: Vec<TableName>,
}

impl Carried {
    /// The job creates the target table: it keeps its name (only masks
    /// apply) and is created as a table copied as it is, or it lands under
    /// another name the target does not have.
    pub fn created_by_job(&self) -> bool {
        self.keeps_source_definition() || self.creates.is_some()
    }

    /// The table keeps its name and the source's definition (only masks
    /// apply): created, replayed and compared as a table copied as it is.
    pub fn keeps_source_definition(&self) -> bool {
        self.source == self.target
    }

    /// How a change finds its row in the target table itself (aliased
    /// `t`): the target's key columns, and the source's key (over a
    /// derived `t` of the source's columns) as landed: offset, or through
    /// the key map for new ids.
    pub fn row_key(&self) -> (Vec<String>, Vec<String>) {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| match &k.remap {
                Some(key) => (
                    format!("t.{}", quote_ident(&k.target)),
                    key.new_of(&format!("t.{}", quote_ident(&k.source)), &k.target_type),
                ),
                None => (self.views.1.key[i].clone(), self.views.0.key[i].clone()),
            })
            .unzip()
    }

    /// The target column `source_column` lands in, if it is carried.
    pub fn target_of(&self, source_column: &str) -> Option<&str> {
        self.column_targets
            .iter()
            .find(|(source, _)| source == source_column)
            .map(|(_, target)| target.as_str())
    }
}

/// A masked column's conversion into `varchar(n)`, applied by the worker
/// to a streamed value before it masks it, as the source applies it
/// before the mask in a copy (a streamed change arrives as the source's
/// value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedConversion {
    /// The source column.
    pub column: String,
    pub max_chars: usize,
    /// The source type is `character(n)`, whose text the source pads and
    /// the conversion does not.
    pub trims_padding: bool,
    pub on_error: OnError,
    /// With `on_error: default`: the value taken, as SQL (`'n/a'`, `NULL`).
    pub fallback: Option<String>,
    pub target_type: String,
    pub table: String,
}

impl MaskedConversion {
    /// The converted value; Err names the column when it does not convert
    /// and the mapping says fail (never the value or its key).
    pub fn apply(&self, value: Option<&str>) -> Result<Option<String>, String> {
        let Some(value) = value else {
            return Ok(None);
        };
        let value = if self.trims_padding {
            value.trim_end_matches(' ')
        } else {
            value
        };
        if value.chars().count() <= self.max_chars {
            return Ok(Some(value.to_owned()));
        }
        match self.on_error {
            OnError::Null => Ok(None),
            OnError::Default => Ok(self.fallback.as_deref().and_then(sql_literal)),
            OnError::Fail | OnError::SkipRow => Err(format!(
                "a value of {} of {} does not convert to {} (the row's key is kept out of messages): say \
                 what it becomes (`on_error: null` or `default`) or fix it on the source",
                label(&self.column),
                self.table,
                self.target_type
            )),
        }
    }
}

/// The text of a SQL string literal (`'n/a'`); None for NULL.
fn sql_literal(sql: &str) -> Option<String> {
    sql.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .map(|s| s.replace("''", "'"))
}

/// One line of the report's lineage table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// `schema.table.column`; empty for a column the mapping adds.
    pub source: String,
    /// `schema.table.column`; empty for a column dropped.
    pub target: String,
    pub rule: String,
}

/// The rule a column landed by, in words.
/// `keyed`: the table has a primary key (masked values are compared row
/// by row against it; without one they cannot be, and the lineage says so).
fn rule_of(column: &ColumnLanding, keyed: bool) -> String {
    let mut rules = Vec::new();
    if column.source != column.target {
        rules.push("renamed".to_owned());
    }
    match column.conversion {
        Conversion::None => {}
        Conversion::Widening => rules.push(format!("converted to {}", column.target_type)),
        Conversion::CanFail => rules.push(format!(
            "converted to {} strictly (on_error: {})",
            column.target_type,
            match (column.on_error, &column.fallback) {
                (OnError::Fail, _) => "fail".to_owned(),
                (OnError::Null, _) => "null".to_owned(),
                (OnError::Default, Some(fallback)) => format!("default, {fallback}"),
                (OnError::Default, None) => "default".to_owned(),
                (OnError::SkipRow, _) => "skip-row".to_owned(),
            }
        )),
    }
    if column.remap_key.is_some() {
        rules.push(match &column.follows {
            Some(key) => format!("new ids of {key} (godwit.key_map)"),
            None => "new ids from the target (godwit.key_map)".to_owned(),
        });
    }
    if let Some(offset) = column.offset {
        rules.push(match &column.follows {
            Some(key) => format!("offset {offset:+} (follows {key})"),
            None => format!("offset {offset:+}"),
        });
    }
    if let Some(mask) = column.copy_mask() {
        rules.push(if keyed {
            format!("masked ({}); compared as masked", mask.spec_name())
        } else {
            format!(
                "masked ({}); not compared: the table has no primary key to pair masked values by",
                mask.spec_name()
            )
        });
    }
    if let Some(mask) = column.review_mask() {
        rules.push(format!("masked ({}) in review copies", mask.spec_name()));
    }
    if rules.is_empty() {
        "kept".to_owned()
    } else {
        rules.join("; ")
    }
}

impl Carried {
    /// The target columns the copy fills, unquoted.
    pub fn target_columns(&self) -> Vec<String> {
        self.copy_columns
            .iter()
            .map(|c| crate::spec::unquote_ident(c))
            .collect()
    }
}

/// One primary-key column of a mapped table, on both sides (unquoted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyColumn {
    pub source: String,
    pub source_type: String,
    pub target: String,
    pub target_type: String,
    /// Added to the source's value on the target.
    pub offset: i64,
    /// The key lands with new ids through the map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remap: Option<super::remap::RemapKey>,
}

/// The source's leading key column and the target column it lands in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMap {
    /// Quoted.
    pub source_column: String,
    /// Quoted.
    pub target_column: String,
    pub target_type: String,
    pub offset: i64,
}

/// A column as reports name it: quoted only where SQL needs it, as
/// PostgreSQL's `quote_ident` does for a table compared as it is.
fn label(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
    }
}

/// A type without its modifiers (`numeric(12,2)` → `numeric`), as the row
/// hash names types.
fn base_type(data_type: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in data_type.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A type whose cast keeps every value of `data_type` whole, leaving the
/// column's own length, precision or scale to be applied on assignment
/// (an error where a value does not fit, as COPY gives): `character(n)`
/// and `bit(n)` without their length would mean a length of one.
fn unbounded_type(data_type: &str) -> String {
    match base_type(data_type).as_str() {
        "character" => "text".to_owned(),
        "bit" => "bit varying".to_owned(),
        other => other.to_owned(),
    }
}

/// The value before conversion: the source column, offset if asked.
fn moved(column: &ColumnLanding) -> String {
    let c = format!("t.{}", quote_ident(&column.source));
    match column.offset {
        Some(offset) => format!("({c}::numeric + {offset})"),
        None => c,
    }
}

/// The target's rows as the check reads them (aliased `t`): the table
/// itself, or, with remapped columns, the table with each one's old id
/// read back through `godwit.key_map`.
fn target_from(landing: &Landing) -> String {
    // Not `ONLY`: a shared table may be partitioned (by tenant), its rows
    // all in its partitions.
    let remapped: Vec<String> = landing
        .columns
        .iter()
        .filter_map(|c| {
            let key = c.remap_key.as_ref()?;
            Some(format!(
                "{} AS {}",
                key.old_of(&format!("x.{}", quote_ident(&c.target)), &c.source_type),
                old_value_column(&c.target)
            ))
        })
        .collect();
    if remapped.is_empty() {
        return format!("{} AS t", landing.target.quoted());
    }
    format!(
        "(SELECT x.*, {} FROM {} AS x) AS t",
        remapped.join(", "),
        landing.target.quoted()
    )
}

/// What `landing` becomes. Err names why it cannot be carried.
pub fn carry(landing: &Landing) -> Result<Carried, String> {
    let key = &landing.source_key;
    let at = format!("{} → {}", landing.source, landing.target);
    let mut copy_columns = Vec::new();
    let mut copy_types = Vec::new();
    let mut select = Vec::new();
    let mut source_values = Vec::new();
    let mut masks = Vec::new();
    let mut masked = Vec::new();
    let mut review_masks = Vec::new();
    let mut keep: Vec<String> = Vec::new();
    let mut target_values = Vec::new();
    let mut remaps = Vec::new();
    let mut masked_conversions = Vec::new();
    // Depends on the row even without a key: a constant message would be
    // folded, and its failing cast raised, before any row is read.
    let source_key_row = if key.is_empty() {
        "t.ctid::text".to_owned()
    } else {
        let quoted: Vec<String> = key
            .iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect();
        format!("ROW({})::text", quoted.join(", "))
    };
    for column in &landing.columns {
        let value = moved(column);
        let guard = (column.conversion == Conversion::CanFail)
            .then(|| failing_value(column))
            .flatten();
        if column.conversion == Conversion::CanFail && guard.is_none() {
            return Err(format!(
                "{at}: {} {} → {} has no strict check here: choose a target type the source's values \
                 are checked against (varchar(n), an integer or numeric(p,s))",
                column.source, column.source_type, column.target_type
            ));
        }
        // Once a value passed its guard, the source converts it (an integral
        // 12.00 becomes 12), and what is compared is what the copy wrote:
        // its text read as the target's type.
        let converted = format!("(({value})::{})::text", column.target_type);
        let (copied, compared) = match (&guard, column.on_error) {
            (None, _) => (value.clone(), format!("({value})::text")),
            (Some(fails), OnError::Fail) => {
                // A value that does not convert stops the copy with an error
                // naming the table, the key and the column: the cast of this
                // message to an integer is what fails.
                let message = format!(
                    "'godwit: {} of {} at key ' || {source_key_row} || ' does not convert to {}'",
                    label(&column.source).replace('\'', "''"),
                    landing.source.to_string().replace('\'', "''"),
                    column.target_type.replace('\'', "''")
                );
                // Compared, a value that would not convert is NULL: unlike
                // any value the copy could have written for it.
                (
                    format!(
                        "CASE WHEN {fails} THEN (({message})::integer)::text ELSE {converted} END"
                    ),
                    format!("CASE WHEN {fails} THEN NULL ELSE {converted} END"),
                )
            }
            (Some(fails), OnError::Null) => {
                let nulled = format!("CASE WHEN {fails} THEN NULL ELSE {converted} END");
                (nulled.clone(), nulled)
            }
            (Some(fails), OnError::SkipRow) => {
                keep.push(format!("NOT coalesce(({fails}), false)"));
                (converted.clone(), converted.clone())
            }
            (Some(fails), OnError::Default) => {
                // Resolved against the target's column (`fallback`); a
                // landing without one had its problem listed.
                let Some(fallback) = &column.fallback else {
                    return Err(format!(
                        "{at}: `on_error: default` for {}: the target column {} has no default to take",
                        column.source, column.target
                    ));
                };
                let defaulted = format!("CASE WHEN {fails} THEN {fallback} ELSE {converted} END");
                (defaulted.clone(), defaulted)
            }
        };
        let review_mask = column.review_mask();
        if (column.copy_mask().is_some() || review_mask.is_some())
            && !matches!(
                base_type(&column.target_type).as_str(),
                "text" | "character varying"
            )
        {
            return Err(format!(
                "{at}: {} is masked into {} {}: a mask writes text, so it lands only in a text or \
                 varchar column",
                column.source, column.target, column.target_type
            ));
        }
        if let (Some(_), Conversion::CanFail) = (column.copy_mask(), column.conversion) {
            let max_chars = column
                .target_type
                .strip_prefix("character varying(")
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(max_chars) = max_chars {
                masked_conversions.push(MaskedConversion {
                    column: column.source.clone(),
                    max_chars,
                    trims_padding: base_type(&column.source_type) == "character",
                    on_error: column.on_error,
                    fallback: column.fallback.clone(),
                    target_type: column.target_type.clone(),
                    table: landing.source.to_string(),
                });
            }
        }
        if let Some(mask) = column.copy_mask() {
            // The source cannot compute what the mask makes of a value
            // without the key, which never reaches a database: the column
            // is carried masked and compared apart (`verify::masked`).
            masks.push(ColumnMask {
                index: copy_columns.len(),
                column: column.source.clone(),
                mask,
                redact_with: column.redact_with.clone(),
            });
            masked.push(MaskedColumn {
                name: label(&column.target),
                source_expr: compared.clone(),
                target_expr: format!("t.{}", quote_ident(&column.target)),
                mask,
                redact_with: column.redact_with.clone(),
            });
            copy_columns.push(quote_ident(&column.target));
            copy_types.push(unbounded_type(&column.target_type));
            // The text the check masks too (`compared`), not COPY's own form.
            select.push(format!("({compared})::text"));
            continue;
        }
        if let Some(key) = &column.remap_key {
            // Carried as the source has it; the load puts the new id in its
            // place, and the check reads the old one back.
            if column.mask.is_some_and(|m| m != Mask::Keep) {
                return Err(format!(
                    "{at}: {} holds remapped ids and is masked: keep its values, or drop it",
                    column.source
                ));
            }
            remaps.push(RemappedColumn {
                index: copy_columns.len(),
                column: column.source.clone(),
                key: key.clone(),
            });
            copy_columns.push(quote_ident(&column.target));
            copy_types.push(unbounded_type(&column.target_type));
            select.push(value.clone());
            source_values.push(Value {
                name: label(&column.target),
                expr: value.clone(),
                type_name: base_type(&column.source_type),
            });
            target_values.push(Value {
                name: label(&column.target),
                expr: format!("t.{}", old_value_column(&column.target)),
                type_name: base_type(&column.source_type),
            });
            continue;
        }
        if let Some(mask) = review_mask {
            review_masks.push(ColumnMask {
                index: copy_columns.len(),
                column: column.source.clone(),
                mask,
                redact_with: column.redact_with.clone(),
            });
        }
        copy_columns.push(quote_ident(&column.target));
        copy_types.push(unbounded_type(&column.target_type));
        select.push(copied);
        source_values.push(Value {
            name: label(&column.target),
            expr: format!("({compared})::{}", column.target_type),
            type_name: base_type(&column.target_type),
        });
        target_values.push(Value {
            name: label(&column.target),
            expr: format!("t.{}", quote_ident(&column.target)),
            type_name: base_type(&column.target_type),
        });
    }
    for (column, value) in &landing.added {
        let target_type = landing
            .added_types
            .get(column)
            .cloned()
            .unwrap_or_else(|| "text".to_owned());
        copy_columns.push(quote_ident(column));
        copy_types.push(unbounded_type(&target_type));
        select.push(quote_literal(value));
        source_values.push(Value {
            name: label(column),
            expr: format!("{}::{target_type}", quote_literal(value)),
            type_name: base_type(&target_type),
        });
        target_values.push(Value {
            name: label(column),
            expr: format!("t.{}", quote_ident(column)),
            type_name: base_type(&target_type),
        });
    }
    let key_columns: Vec<&ColumnLanding> = key
        .iter()
        .filter_map(|k| landing.columns.iter().find(|c| &c.source == k))
        .collect();
    if key_columns.len() != key.len() {
        return Err(format!(
            "{at}: a primary-key column of {} is dropped",
            landing.source
        ));
    }
    if let Some(masked) = key_columns
        .iter()
        .find(|c| c.mask.is_some_and(|m| m != Mask::Keep))
    {
        return Err(format!(
            "{at}: the key column {} is masked: rows could no longer be told apart or compared; mask \
             other columns",
            masked.source
        ));
    }
    if let Some(converted) = key_columns
        .iter()
        .find(|c| c.conversion == Conversion::CanFail)
    {
        return Err(format!(
            "{at}: the key column {} is converted to {}, which may not hold every key: keep its type \
             (or widen it)",
            converted.source, converted.target_type
        ));
    }
    let slice = match &landing.tenant {
        Some((column, value)) => {
            let target_type = landing
                .added_types
                .get(column)
                .cloned()
                .unwrap_or_else(|| "text".to_owned());
            format!(
                "t.{} = {}::{target_type}",
                quote_ident(column),
                quote_literal(value)
            )
        }
        None => "true".to_owned(),
    };
    let keep = (!keep.is_empty()).then(|| keep.join(" AND "));
    let source_view = View {
        table: landing.target.clone(),
        from: format!("{} AS t", landing.source.only()),
        slice: keep.clone().unwrap_or_else(|| "true".into()),
        key: key_columns
            .iter()
            .map(|c| match c.remap_key {
                Some(_) => format!("({})::{}", moved(c), c.source_type),
                None => format!("({})::{}", moved(c), c.target_type),
            })
            .collect(),
        values: source_values,
    };
    // Where the target's own column stands in for the source's, or, for a
    // remapped one, the old id read back through the map.
    let landed_as = |c: &ColumnLanding| match c.remap_key {
        Some(_) => (old_value_column(&c.target), c.source_type.clone()),
        None => (quote_ident(&c.target), c.target_type.clone()),
    };
    let target_view = View {
        table: landing.target.clone(),
        from: target_from(landing),
        slice,
        key: key_columns
            .iter()
            .map(|c| format!("t.{}", landed_as(c).0))
            .collect(),
        values: target_values,
    };
    let key_map = key_columns.first().map(|c| KeyMap {
        source_column: quote_ident(&c.source),
        target_column: landed_as(c).0,
        target_type: landed_as(c).1,
        offset: c.offset.unwrap_or(0),
    });
    let at_source = |c: &str| format!("{}.{c}", landing.source);
    let at_target = |c: &str| format!("{}.{c}", landing.target);
    let mut lineage: Vec<Lineage> = landing
        .columns
        .iter()
        .map(|c| Lineage {
            source: at_source(&c.source),
            target: at_target(&c.target),
            rule: rule_of(c, !key.is_empty()),
        })
        .collect();
    lineage.extend(landing.dropped.iter().map(|c| Lineage {
        source: at_source(c),
        target: String::new(),
        rule: "dropped".into(),
    }));
    lineage.extend(landing.added.iter().map(|(c, value)| Lineage {
        source: String::new(),
        target: at_target(c),
        rule: format!("added: {value}"),
    }));
    Ok(Carried {
        lineage,
        masks,
        keep,
        source_key: key.iter().map(|k| quote_ident(k)).collect(),
        masked,
        review_masks,
        column_targets: landing
            .columns
            .iter()
            .map(|c| (c.source.clone(), c.target.clone()))
            .collect(),
        references: landing.references.clone(),
        remaps,
        creates: landing.creates.clone(),
        masked_conversions,
        shares_target_with: Vec::new(),
        keys: key_columns
            .iter()
            .map(|c| KeyColumn {
                source: c.source.clone(),
                source_type: c.source_type.clone(),
                target: c.target.clone(),
                target_type: c.target_type.clone(),
                offset: c.offset.unwrap_or(0),
                remap: c.remap_key.clone(),
            })
            .collect(),
        source: landing.source.clone(),
        target: landing.target.clone(),
        always_identity: landing
            .columns
            .iter()
            .filter(|c| c.target_always_identity)
            .map(|c| quote_ident(&c.target))
            .collect(),
        copy_columns,
        copy_types,
        select,
        views: (source_view, target_view),
        key_map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_value_is_converted_as_the_source_converts_it() {
        let conversion = |on_error, fallback: Option<&str>, trims_padding| MaskedConversion {
            column: "code".into(),
            max_chars: 4,
            trims_padding,
            on_error,
            fallback: fallback.map(str::to_owned),
            target_type: "character varying(4)".into(),
            table: "crm.accounts".into(),
        };
        let fail = conversion(OnError::Fail, None, false);
        assert_eq!(fail.apply(Some("L12")), Ok(Some("L12".into())));
        assert_eq!(fail.apply(None), Ok(None));
        let refused = fail.apply(Some("LEGACY-7")).expect_err("too long");
        assert!(
            refused.contains("code of crm.accounts does not convert to character varying(4)")
                && !refused.contains("LEGACY"),
            "{refused}"
        );
        assert_eq!(
            conversion(OnError::Null, None, false).apply(Some("LEGACY-7")),
            Ok(None)
        );
        assert_eq!(
            conversion(OnError::Default, Some("'n/a'"), false).apply(Some("LEGACY-7")),
            Ok(Some("n/a".into()))
        );
        assert_eq!(
            conversion(OnError::Default, Some("NULL"), false).apply(Some("LEGACY-7")),
            Ok(None)
        );
        // character(6) pads; its text, converted, does not.
        assert_eq!(
            conversion(OnError::Fail, None, true).apply(Some("AB    ")),
            Ok(Some("AB".into()))
        );
    }

    #[test]
    fn streamed_values_are_cast_without_losing_length() {
        assert_eq!(unbounded_type("character(2)"), "text");
        assert_eq!(unbounded_type("bit(8)"), "bit varying");
        assert_eq!(unbounded_type("character varying(20)"), "character varying");
        assert_eq!(unbounded_type("numeric(12,2)"), "numeric");
    }

    #[test]
    fn types_lose_their_modifiers_for_hashing() {
        assert_eq!(base_type("character varying(20)"), "character varying");
        assert_eq!(base_type("numeric(12,2)"), "numeric");
        assert_eq!(
            base_type("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(base_type("bigint"), "bigint");
    }
}
