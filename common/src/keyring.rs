//! A customer's key-encryption keys: the one key file a spec names, or the
//! customer's entry in a keyring file (customer → key files, the first one
//! current, older ones kept until every data key is re-wrapped). Data keys
//! are wrapped by the current key and unwrapped by whichever of the
//! customer's keys wrapped them; another customer's keys are never tried.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use godwit_proto::v1::WrappedKey;

use crate::ids::{CustomerId, JobId};
use crate::keys::{DataKey, Kek};
use crate::spec::{JobSpec, KeySource};
use crate::{Error, Result};

/// The keys a job may use: its customer's, current first.
#[derive(Debug)]
pub struct CustomerKeys {
    customer: CustomerId,
    keys: Vec<Kek>,
}

impl CustomerKeys {
    pub fn for_spec(spec: &JobSpec) -> Result<Self> {
        let files = match spec.encryption.source() {
            KeySource::File(path) => vec![path.to_owned()],
            KeySource::Keyring(path) => keyring_entry(path, &spec.customer)?,
        };
        let keys = files
            .iter()
            .map(|file| Kek::from_file(file))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            customer: spec.customer.clone(),
            keys,
        })
    }

    /// The key the customer's tokens are made with: derived from the
    /// customer's oldest key in the keyring, so a rotation (a new current
    /// key) leaves every token as it was and joins across jobs still hold.
    /// Retiring that oldest key changes the tokens of later jobs.
    pub fn token_key(&self) -> crate::mapping::mask::TokenKey {
        let oldest = self.keys.last().unwrap_or_else(|| self.current());
        oldest.token_key()
    }

    /// The key new data keys are wrapped by.
    pub fn current(&self) -> &Kek {
        &self.keys[0]
    }

    pub fn wrap(&self, job: &JobId, key: &DataKey) -> Result<WrappedKey> {
        self.current().wrap(job, key)
    }

    /// Unwraps with the customer's key that wrapped `wrapped`.
    pub fn unwrap(&self, job: &JobId, wrapped: &WrappedKey) -> Result<DataKey> {
        let Some(kek) = self.keys.iter().find(|k| k.id() == wrapped.kek_id) else {
            let held: Vec<&str> = self.keys.iter().map(Kek::id).collect();
            return Err(Error::Key(format!(
                "job {job}'s data key was wrapped by key-encryption key {}, which is not one of customer {}'s \
                 keys ({}): point `encryption.key_file` (or the customer's keyring entry) at the key the job was \
                 started with or rotated to",
                wrapped.kek_id,
                self.customer,
                held.join(", ")
            )));
        };
        kek.unwrap(job, wrapped)
    }
}

/// The customer's current key-encryption key file: the spec's key file, or
/// the first of the customer's keyring entry.
pub fn current_key_file(spec: &JobSpec) -> Result<PathBuf> {
    Ok(match spec.encryption.source() {
        KeySource::Keyring(path) => keyring_entry(path, &spec.customer)?.remove(0),
        KeySource::File(path) => path.to_owned(),
    })
}

/// The key files a keyring lists for `customer`.
fn keyring_entry(path: &Path, customer: &CustomerId) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "cannot read the keyring",
        path: path.to_owned(),
        source,
    })?;
    let keyring: BTreeMap<String, Vec<PathBuf>> = crate::spec::from_yaml(&text).map_err(|e| {
        Error::Spec(format!(
            "keyring {}: {e}; write one line per customer: `acme: [/keys/acme-current.kek, /keys/acme-old.kek]`",
            path.display()
        ))
    })?;
    match keyring.get(customer.as_str()) {
        Some(files) if !files.is_empty() => Ok(files.clone()),
        _ => Err(Error::Key(format!(
            "keyring {} has no key for customer {customer}: add `{customer}: [/path/to/key]` (godwit keys \
             generate --out PATH makes one)",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(customer: &str, keyring: &Path) -> JobSpec {
        JobSpec::from_yaml(
            &format!(
                "job: j-{customer}\ncustomer: {customer}\nsource: postgres://s/db\ntarget: postgres://t/db\n\
                 staging: file:///tmp/s\nencryption: {{ keyring: {} }}\n",
                keyring.display()
            ),
            "job.yaml",
        )
        .expect("valid spec")
    }

    #[test]
    fn each_customer_unwraps_only_what_its_own_keys_wrapped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |name: &str| {
            let path = dir.path().join(name);
            Kek::generate_file(&path).expect("key");
            path
        };
        let (acme_new, acme_old, globex) = (key("acme-2"), key("acme-1"), key("globex"));
        let keyring = dir.path().join("keyring.yaml");
        std::fs::write(
            &keyring,
            format!(
                "acme: [{}, {}]\nglobex: [{}]\n",
                acme_new.display(),
                acme_old.display(),
                globex.display()
            ),
        )
        .expect("keyring");
        let acme = CustomerKeys::for_spec(&spec("acme", &keyring)).expect("acme keys");
        let globex_keys = CustomerKeys::for_spec(&spec("globex", &keyring)).expect("globex keys");
        let job = JobId::parse("j-1").expect("id");
        let data_key = DataKey::generate().expect("dek");

        let wrapped = acme.wrap(&job, &data_key).expect("wrap");
        assert_eq!(wrapped.kek_id, acme.current().id());
        assert_eq!(
            acme.unwrap(&job, &wrapped).expect("unwrap").id(),
            data_key.id()
        );
        let refused = globex_keys
            .unwrap(&job, &wrapped)
            .expect_err("globex unwrapped acme's key");
        assert!(
            refused
                .to_string()
                .contains("not one of customer globex's keys"),
            "{refused}"
        );

        // A key wrapped by acme's older key still opens while it is listed.
        let old = Kek::from_file(&acme_old).expect("old key");
        let wrapped_old = old.wrap(&job, &data_key).expect("wrap");
        assert!(acme.unwrap(&job, &wrapped_old).is_ok());

        let unknown = spec("initech", &keyring);
        let err = CustomerKeys::for_spec(&unknown).expect_err("no entry");
        assert!(
            err.to_string().contains("no key for customer initech"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;
    use crate::mapping::Mask;
    use crate::mapping::mask::Masker;

    #[test]
    fn a_rotation_leaves_the_customers_tokens_as_they_were() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = |name: &str| {
            let path = dir.path().join(name);
            Kek::generate_file(&path).expect("key");
            path
        };
        let (first, second) = (key("acme-1"), key("acme-2"));
        let keys_of = |files: &[&Path]| {
            let keyring = dir.path().join("keyring.yaml");
            let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            std::fs::write(&keyring, format!("acme: [{}]\n", list.join(", "))).expect("keyring");
            let spec = JobSpec::from_yaml(
                &format!(
                    "job: j\ncustomer: acme\nsource: postgres://s/db\ntarget: postgres://t/db\n\
                     staging: file:///tmp/s\nencryption: {{ keyring: {} }}\n",
                    keyring.display()
                ),
                "job.yaml",
            )
            .expect("spec");
            CustomerKeys::for_spec(&spec).expect("keys")
        };
        let token = |keys: &CustomerKeys| {
            let key = keys.token_key();
            Masker {
                key: &key,
                customer: "acme",
            }
            .apply(Mask::Tokenise, None, Some("alice@example.com"))
        };
        let before = keys_of(&[&first]);
        let rotated = keys_of(&[&second, &first]);
        assert_eq!(token(&before), token(&rotated));
        let retired = keys_of(&[&second]);
        assert_ne!(token(&before), token(&retired));
    }
}
