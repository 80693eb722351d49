//! How a mapped job's key columns get new values: an offset added to a
//! key and the job's columns following it by foreign keys, or new ids the
//! target numbers (`remap`), placed where each key lands. Source names;
//! reads nothing.

use std::collections::BTreeMap;

use super::MappingSpec;
use super::resolve::{Column, Landing, TableShape};
use crate::spec::TableName;

/// Key columns given an offset and the columns following them by
/// foreign keys within the job: (table, column) → (offset, followed key).
pub(super) type Offsets = BTreeMap<(TableName, String), (i64, Option<String>)>;

/// Remapped key columns and the job's columns following them by foreign
/// keys: (table, column) → the key (table, column) whose new ids it takes.
pub(super) type Remaps = BTreeMap<(TableName, String), (TableName, String)>;

/// How the job's key columns get new values (source names).
pub(super) struct KeyRules {
    pub(super) offsets: Offsets,
    pub(super) remaps: Remaps,
}

pub(super) fn remapped_keys(
    mapping: &MappingSpec,
    tables: &[TableName],
    shapes: &BTreeMap<TableName, TableShape>,
    problems: &mut Vec<String>,
) -> Remaps {
    let mut remaps = Remaps::new();
    for table in tables {
        let (Some((_, entry)), Some(shape)) = (mapping.entry_for(table), shapes.get(table)) else {
            continue;
        };
        for (column, _) in entry.columns.iter().filter(|(_, rule)| rule.remap) {
            if shape.primary_key != [column.clone()] {
                problems.push(format!(
                    "{table}: `remap` of {column:?}: new ids are given to a primary key of one column, and \
                     {table}'s primary key is ({}): remap its key, or use `offset`",
                    shape.primary_key.join(", ")
                ));
                continue;
            }
            remaps.insert(
                (table.clone(), column.clone()),
                (table.clone(), column.clone()),
            );
        }
    }
    for (table, shape) in shapes {
        for (columns, referenced, referenced_columns) in &shape.references {
            for (column, key) in columns.iter().zip(referenced_columns) {
                if let Some(root) = remaps.get(&(referenced.clone(), key.clone())).cloned() {
                    remaps
                        .entry((table.clone(), column.clone()))
                        .or_insert(root);
                }
            }
        }
    }
    remaps
}

/// Gives each remapped column the key whose new ids it lands with: where
/// that key lands, in which slice, and how its target column numbers
/// rows.
pub(super) fn place_remaps(
    landings: &mut [Landing],
    remaps: &Remaps,
    target_shapes: &BTreeMap<TableName, TableShape>,
    problems: &mut Vec<String>,
) {
    let mut placed = Vec::new();
    for (i, landing) in landings.iter().enumerate() {
        for (j, column) in landing.columns.iter().enumerate() {
            let Some((key_table, key_column)) =
                remaps.get(&(landing.source.clone(), column.source.clone()))
            else {
                continue;
            };
            let Some(key_landing) = landings.iter().find(|l| &l.source == key_table) else {
                continue;
            };
            let Some(key_target) = key_landing
                .columns
                .iter()
                .find(|c| &c.source == key_column)
                .map(|c| c.target.clone())
            else {
                continue;
            };
            let numbered = target_shapes
                .get(&key_landing.target)
                .and_then(|shape| shape.column(&key_target))
                .and_then(Column::new_ids);
            let Some(new_id) = numbered else {
                if &landing.source == key_table {
                    problems.push(format!(
                        "{} → {}: `remap` of {:?} takes new ids from the target column {key_target:?}, \
                         which has no identity or default that numbers rows: give it one (an identity, or \
                         a sequence's nextval), or use `offset`",
                        landing.source, landing.target, column.source
                    ));
                }
                continue;
            };
            placed.push((
                i,
                j,
                super::remap::RemapKey {
                    table: key_landing.target.to_string(),
                    column: key_target,
                    tenant: key_landing
                        .tenant
                        .as_ref()
                        .map(|(_, value)| value.clone())
                        .unwrap_or_default(),
                    new_id,
                },
            ));
        }
    }
    for (i, j, key) in placed {
        landings[i].columns[j].remap_key = Some(key);
    }
}

pub(super) fn key_offsets(
    mapping: &MappingSpec,
    tables: &[TableName],
    shapes: &BTreeMap<TableName, TableShape>,
) -> Offsets {
    let mut offsets = Offsets::new();
    for table in tables {
        let Some((_, entry)) = mapping.entry_for(table) else {
            continue;
        };
        for (column, rule) in &entry.columns {
            if let Some(offset) = rule.offset {
                offsets.insert((table.clone(), column.clone()), (offset, None));
            }
        }
    }
    for (table, shape) in shapes {
        for (columns, referenced, referenced_columns) in &shape.references {
            for (column, key) in columns.iter().zip(referenced_columns) {
                if let Some(offset) = offsets
                    .get(&(referenced.clone(), key.clone()))
                    .map(|(o, _)| *o)
                {
                    offsets
                        .entry((table.clone(), column.clone()))
                        .or_insert((offset, Some(format!("{referenced}.{key}"))));
                }
            }
        }
    }
    offsets
}
