//! The job spec: what an operator submits. Parsed strictly (unknown fields are
//! errors) and validated once, so every later stage can trust it.

use std::fmt;

pub use crate::size::ByteSize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, JobId};
use crate::{Error, Result};

pub const DEFAULT_PARTITION_SIZE: u64 = 256 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub job: JobId,
    pub customer: CustomerId,
    /// libpq connection string or URL of the customer's database.
    pub source: String,
    /// libpq connection string or URL of the platform's database.
    pub target: String,
    /// `file:///dir` or `s3://bucket/prefix`.
    pub staging: String,
    #[serde(default = "all_tables")]
    pub tables: Vec<String>,
    pub encryption: EncryptionSpec,
    /// Target size of a partition (the unit of leasing and resuming).
    #[serde(default = "default_partition_size")]
    pub partition_size: ByteSize,
    /// Target size of a chunk (the unit of staging and of exactly-once loading).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: ByteSize,
    /// The customer's limits, in force from the job's start until an
    /// operator changes them (`godwit throttle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<crate::throttle::ThrottleSpec>,
    /// Present: after the copy the job streams the source's changes to the
    /// target until an operator cuts over (`godwit cutover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ChangeSpec>,
    /// How long staged data is kept after the job ends (`30d`); past it the
    /// coordinator deletes the job's staged objects and shreds its data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// How the source's tables land in the platform's schema (see
    /// `godwit plan`); absent, each table lands under its own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping: Option<crate::mapping::MappingSpec>,
}

impl JobSpec {
    /// [`Self::retention`] as a duration (validated when the spec was read).
    pub fn retention(&self) -> Option<std::time::Duration> {
        self.retention
            .as_deref()
            .and_then(|r| humantime::parse_duration(r).ok())
    }
}

pub const DEFAULT_FREEZE_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_MAX_FROZEN_MS: u64 = 30_000;
pub const DEFAULT_MAX_CUTOVER_LAG: u64 = 1 << 20;
pub const DEFAULT_MAX_FROZEN_KEYS: u64 = 2_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChangeSpec {
    /// How long a cutover waits to freeze the source's tables (for the
    /// application's open write transactions to end) before it gives up and
    /// leaves the source as it was.
    #[serde(default = "default_freeze_timeout_ms")]
    pub freeze_timeout_ms: u64,
    /// The longest the source may stay frozen: past it the cutover rolls
    /// back, whatever step is running, and the source takes writes again.
    #[serde(default = "default_max_frozen_ms")]
    pub max_frozen_ms: u64,
    /// The cutover freezes only once the stream is at most this far behind
    /// the source, so the frozen window holds only the last moments.
    #[serde(default = "default_max_cutover_lag")]
    pub max_cutover_lag: ByteSize,
    /// Before it freezes, the cutover compares the rows changed since its
    /// verification (while writes go on), round after round, until at most
    /// this many changed keys are left for the frozen check.
    #[serde(default = "default_max_frozen_keys")]
    pub max_frozen_keys: u64,
}

impl Default for ChangeSpec {
    fn default() -> Self {
        Self {
            freeze_timeout_ms: DEFAULT_FREEZE_TIMEOUT_MS,
            max_frozen_ms: DEFAULT_MAX_FROZEN_MS,
            max_cutover_lag: ByteSize(DEFAULT_MAX_CUTOVER_LAG),
            max_frozen_keys: DEFAULT_MAX_FROZEN_KEYS,
        }
    }
}

fn default_max_frozen_keys() -> u64 {
    DEFAULT_MAX_FROZEN_KEYS
}

fn default_max_frozen_ms() -> u64 {
    DEFAULT_MAX_FROZEN_MS
}

fn default_max_cutover_lag() -> ByteSize {
    ByteSize(DEFAULT_MAX_CUTOVER_LAG)
}

fn default_freeze_timeout_ms() -> u64 {
    DEFAULT_FREEZE_TIMEOUT_MS
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSpec {
    /// File holding the key-encryption key (`godwit keys generate --out PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A keyring (YAML: customer → key files, the first one current): the
    /// job's customer selects its own key-encryption keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<PathBuf>,
}

/// Where a job's key-encryption keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource<'a> {
    File(&'a Path),
    Keyring(&'a Path),
}

impl EncryptionSpec {
    pub fn source(&self) -> KeySource<'_> {
        match (&self.key_file, &self.keyring) {
            (_, Some(keyring)) => KeySource::Keyring(keyring),
            (Some(file), None) => KeySource::File(file),
            // Refused by validation: one of the two is always there.
            (None, None) => KeySource::File(Path::new("")),
        }
    }

    /// The file a caller named (key file or keyring), for allow-lists.
    pub fn named_file(&self) -> &Path {
        match self.source() {
            KeySource::File(path) | KeySource::Keyring(path) => path,
        }
    }
}

fn all_tables() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_partition_size() -> ByteSize {
    ByteSize(DEFAULT_PARTITION_SIZE)
}

fn default_chunk_size() -> ByteSize {
    ByteSize(DEFAULT_CHUNK_SIZE)
}

/// A YAML document as `T`; a key written twice (a column ruled twice, a
/// customer's keys listed twice) is refused with its line instead of the
/// last one winning silently.
pub fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    serde_norway::from_str::<serde_norway::Value>(text)
        .map_err(|e| format!("{e}: write each key once"))?;
    serde_norway::from_str(text).map_err(|e| e.to_string())
}

impl JobSpec {
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let spec: JobSpec = from_yaml(text).map_err(|e| Error::Spec(format!("{origin}: {e}")))?;
        spec.validate(origin)?;
        Ok(spec)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "cannot read job spec",
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let fail = |msg: String| Err(Error::Spec(format!("{origin}: {msg}")));
        if self.tables.is_empty() {
            return fail(
                "`tables` is empty: list tables as \"schema.table\" or use [\"*\"] for all".into(),
            );
        }
        for table in &self.tables {
            if table != "*" && TableName::parse(table).is_none() {
                return fail(format!(
                    "`tables` entry {table:?} is not a table name: write \"table\" or \"schema.table\""
                ));
            }
        }
        if !(self.staging.starts_with("file://") || self.staging.starts_with("s3://")) {
            return fail(format!(
                "`staging` {:?} is not supported: use file:///absolute/dir or s3://bucket/prefix",
                self.staging
            ));
        }
        if self.chunk_size.0 < 64 * 1024 {
            return fail(format!(
                "`chunk_size` {} is below the minimum of 64KiB",
                self.chunk_size
            ));
        }
        if self.partition_size.0 < 64 * 1024 {
            return fail(format!(
                "`partition_size` {} is below the minimum of 64KiB",
                self.partition_size
            ));
        }
        if let Some(problem) = self.throttle.as_ref().and_then(|t| t.problem()) {
            return fail(problem);
        }
        if let Some(changes) = &self.changes
            && !(100..=600_000).contains(&changes.freeze_timeout_ms)
        {
            return fail(format!(
                "`changes.freeze_timeout_ms` {} is outside 100..=600000: the cutover waits this long \
                 for the application's write transactions to end",
                changes.freeze_timeout_ms
            ));
        }
        if let Some(changes) = &self.changes
            && !(100..=3_600_000).contains(&changes.max_frozen_ms)
        {
            return fail(format!(
                "`changes.max_frozen_ms` {} is outside 100..=3600000: past it a cutover rolls back and \
                 the source takes writes again",
                changes.max_frozen_ms
            ));
        }
        for (field, value) in [("source", &self.source), ("target", &self.target)] {
            if value.trim().is_empty() {
                return fail(format!("`{field}` is empty: give a postgres:// URL"));
            }
        }
        if self.encryption.key_file.is_some() == self.encryption.keyring.is_some() {
            return fail(
                "`encryption` needs exactly one of `key_file` (one key-encryption key) and `keyring` \
                 (the customer's keys from a keyring file)"
                    .into(),
            );
        }
        if let Some(mapping) = &self.mapping {
            let problems = mapping.problems();
            if !problems.is_empty() {
                return fail(problems.join("\n"));
            }
        }
        if let Some(retention) = &self.retention
            && humantime::parse_duration(retention).is_err()
        {
            return fail(format!(
                "`retention` {retention:?} is not a duration: write e.g. 30d, 12h or 90m"
            ));
        }
        Ok(())
    }

    /// Whether the spec selects every table of the source.
    pub fn all_tables(&self) -> bool {
        self.tables.iter().any(|t| t == "*")
    }
}

/// A schema-qualified table name, unquoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `table` means `public.table`; quoting is not needed and not accepted.
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.split('.');
        let (schema, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, None) => ("public", name),
            (Some(schema), Some(name), None) => (schema, name),
            _ => return None,
        };
        if schema.is_empty() || name.is_empty() || raw.contains('"') {
            return None;
        }
        Some(Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The name quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The table's own rows, for a `FROM` clause: without `ONLY`, a parent
    /// of inheritance children would be read (and counted) with theirs.
    pub fn only(&self) -> String {
        format!("ONLY {}", self.quoted())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A name as `quote_ident` or `quote_ident()` in SQL wrote it, unquoted.
pub fn unquote_ident(quoted: &str) -> String {
    quoted
        .strip_prefix('"')
        .and_then(|c| c.strip_suffix('"'))
        .map_or_else(|| quoted.to_owned(), |c| c.replace("\"\"", "\""))
}

/// A SQL string literal, for the standard-conforming strings PostgreSQL has
/// on by default (a backslash is an ordinary character).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
job: acme-onboarding
customer: acme
source: postgres://u@localhost:5432/db
target: postgres://u@localhost:5433/db
staging: file:///tmp/staging
tables: ["*"]
encryption: { key_file: /tmp/kek }
"#;

    #[test]
    fn valid_spec_parses_with_defaults() {
        let spec = JobSpec::from_yaml(VALID, "job.yaml").expect("valid spec");
        assert_eq!(spec.job.as_str(), "acme-onboarding");
        assert_eq!(spec.chunk_size, ByteSize(DEFAULT_CHUNK_SIZE));
        assert!(spec.all_tables());
    }

    #[test]
    fn cutover_limits_default_and_are_checked() {
        let text = format!("{VALID}\nchanges: {{}}\n");
        let spec = JobSpec::from_yaml(&text, "job.yaml").expect("valid spec");
        let changes = spec.changes.expect("changes");
        assert_eq!(changes.max_frozen_ms, DEFAULT_MAX_FROZEN_MS);
        assert_eq!(changes.max_cutover_lag, ByteSize(DEFAULT_MAX_CUTOVER_LAG));
        let text = format!("{VALID}\nchanges: {{ max_cutover_lag: 4MiB, max_frozen_ms: 800 }}\n");
        let changes = JobSpec::from_yaml(&text, "job.yaml")
            .expect("valid spec")
            .changes
            .expect("changes");
        assert_eq!(
            (changes.max_cutover_lag, changes.max_frozen_ms),
            (ByteSize(4 << 20), 800)
        );
        let text = format!("{VALID}\nchanges: {{ max_frozen_ms: 5 }}\n");
        let err = JobSpec::from_yaml(&text, "job.yaml")
            .expect_err("5 ms accepted")
            .to_string();
        assert!(
            err.contains("changes.max_frozen_ms") && err.contains("100..=3600000"),
            "{err}"
        );
    }

    #[test]
    fn a_key_written_twice_is_refused_not_overwritten() {
        let text = format!(
            "{VALID}\nmapping:\n  tables:\n    - from: crm.accounts\n      columns:\n        \
             credit: {{ drop: true }}\n        credit: {{ to: c }}\n"
        );
        let err = JobSpec::from_yaml(&text, "job.yaml")
            .expect_err("the second rule won silently")
            .to_string();
        assert!(
            err.contains("job.yaml")
                && err.contains("credit")
                && err.contains("write each key once"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = format!("{VALID}\nworkerz: 3\n");
        let err = JobSpec::from_yaml(&text, "job.yaml")
            .expect_err("unknown field accepted")
            .to_string();
        assert!(err.contains("workerz"), "{err}");
        assert!(err.contains("job.yaml"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = VALID.replace("customer: acme\n", "");
        let err = JobSpec::from_yaml(&text, "job.yaml")
            .expect_err("missing field accepted")
            .to_string();
        assert!(err.contains("customer"), "{err}");
    }

    #[test]
    fn bad_staging_scheme_says_what_is_supported() {
        let text = VALID.replace("file:///tmp/staging", "ftp://host/x");
        let err = JobSpec::from_yaml(&text, "job.yaml")
            .expect_err("ftp accepted")
            .to_string();
        assert!(err.contains("staging") && err.contains("s3://"), "{err}");
    }

    #[test]
    fn byte_sizes_round_trip() {
        for (raw, bytes) in [
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("500MB", 500_000_000),
            ("123", 123),
        ] {
            let size = ByteSize::parse(raw).expect(raw);
            assert_eq!(size.0, bytes);
            assert_eq!(ByteSize::parse(&size.to_string()), Some(size));
        }
        assert_eq!(ByteSize::parse("12 parsecs"), None);
    }

    #[test]
    fn table_names() {
        assert_eq!(
            TableName::parse("orders").map(|t| t.to_string()),
            Some("public.orders".into())
        );
        assert_eq!(
            TableName::parse("sales.orders").map(|t| t.to_string()),
            Some("sales.orders".into())
        );
        assert!(TableName::parse("a.b.c").is_none());
        assert_eq!(TableName::parse("we\"ird").map(|t| t.quoted()), None);
    }
}
