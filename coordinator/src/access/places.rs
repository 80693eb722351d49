//! What a customer's job may name: key files, staging locations, source
//! and target databases, each from the customer's allow-list in the access
//! policy, and staging and target only in the customer's regions (data
//! residency). Pure: a spec and a policy in, a reason out.

use std::path::Component;

use godwit_common::pg;
use godwit_common::spec::JobSpec;

use super::policy::{CustomerRules, Place, Policy};

pub(super) fn admit(policy: &Policy, spec: &JobSpec) -> Result<(), String> {
    let customer = spec.customer.as_str();
    let Some(rules) = policy.customers.get(customer) else {
        return Err(format!(
            "customer {customer} has no entry under `customers` in the coordinator's access policy, so its \
             jobs may name no key file, staging location or database; ask an admin to add one"
        ));
    };
    let key_file = spec.encryption.named_file();
    if has_parent_step(key_file.to_string_lossy().as_ref())
        || !rules
            .key_files
            .iter()
            .any(|allowed| std::path::Path::new(allowed) == key_file)
    {
        return Err(format!(
            "key file {} is not one customer {customer} may use (allowed: {}); name one of those in \
             encryption.key_file (or encryption.keyring)",
            key_file.display(),
            listed(rules.key_files.iter().map(String::as_str))
        ));
    }
    let staging = spec.staging.trim_end_matches('/');
    let place = (!has_parent_step(staging))
        .then(|| rules.staging.iter().find(|p| under(staging, &p.at)))
        .flatten()
        .ok_or_else(|| {
            format!(
                "staging {staging} is not a location customer {customer} may use (allowed: {}); name one \
                 of those, or a path under one, in `staging`",
                listed(rules.staging.iter().map(|p| p.at.as_str()))
            )
        })?;
    in_region(rules, customer, place, &format!("staging {staging}"))?;
    database(
        rules,
        customer,
        "source",
        &spec.source,
        &rules.sources,
        false,
    )?;
    database(
        rules,
        customer,
        "target",
        &spec.target,
        &rules.targets,
        true,
    )?;
    Ok(())
}

fn database(
    rules: &CustomerRules,
    customer: &str,
    side: &str,
    conn: &str,
    allowed: &[Place],
    resident: bool,
) -> Result<(), String> {
    let endpoints = pg::endpoints(conn).map_err(|e| format!("`{side}`: {e}"))?;
    for endpoint in endpoints {
        let Some(place) = allowed.iter().find(|p| p.at == endpoint) else {
            return Err(format!(
                "{side} database {endpoint} is not one customer {customer} may use (allowed: {}); name one \
                 of those in `{side}`",
                listed(allowed.iter().map(|p| p.at.as_str()))
            ));
        };
        if resident {
            in_region(
                rules,
                customer,
                place,
                &format!("{side} database {endpoint}"),
            )?;
        }
    }
    Ok(())
}

fn in_region(
    rules: &CustomerRules,
    customer: &str,
    place: &Place,
    what: &str,
) -> Result<(), String> {
    if rules.regions.is_empty() {
        return Ok(());
    }
    match &place.region {
        Some(region) if rules.regions.contains(region) => Ok(()),
        Some(region) => Err(format!(
            "{what} lies in region {region}, outside customer {customer}'s regions ({}): choose a \
             location in one of them",
            listed(rules.regions.iter().map(String::as_str))
        )),
        None => Err(format!(
            "{what} has no region in the access policy, and customer {customer}'s data must stay in {}: \
             label it with `region`",
            listed(rules.regions.iter().map(String::as_str))
        )),
    }
}

/// `location` is `prefix` or lies beneath it (`s3://b/acme/x`, not `s3://b/acme2`).
fn under(location: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    location == prefix
        || location
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A `..` step could climb out of an allowed directory.
fn has_parent_step(location: &str) -> bool {
    let path = location
        .split_once("://")
        .map_or(location, |(_, rest)| rest);
    std::path::Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
}

fn listed<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = items.collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "customers:\n  acme:\n    regions: [eu]\n    key_files: [/keys/acme.kek]\n    \
        staging:\n      - { at: 's3://eu-bucket/acme', region: eu }\n      - { at: 's3://us-bucket/acme', region: us }\n    \
        sources: [{ at: 'db.acme.internal:5432/shop' }]\n    \
        targets:\n      - { at: 'pg-eu.platform:5432/acme', region: eu }\n      - { at: 'pg-us.platform:5432/acme', region: us }\n";

    fn spec(changes: &[(&str, &str)]) -> JobSpec {
        let mut fields = vec![
            ("job", "j1"),
            ("customer", "acme"),
            ("source", "postgres://m:secret@db.acme.internal:5432/shop"),
            ("target", "postgres://l@pg-eu.platform:5432/acme"),
            ("staging", "s3://eu-bucket/acme/onboarding"),
        ];
        for (key, value) in changes {
            fields.retain(|(k, _)| k != key);
            fields.push((key, value));
        }
        let mut yaml: String = fields
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\"\n"))
            .collect();
        let key = changes
            .iter()
            .find(|(k, _)| *k == "key_file")
            .map_or("/keys/acme.kek", |(_, v)| v);
        yaml.push_str(&format!("encryption: {{ key_file: \"{key}\" }}\n"));
        yaml = yaml.replace(&format!("key_file: \"{key}\"\n"), "");
        JobSpec::from_yaml(&yaml, "job.yaml").expect("valid spec")
    }

    fn policy() -> Policy {
        Policy::parse(POLICY, std::path::Path::new("policy.yaml")).expect("valid policy")
    }

    #[test]
    fn a_job_naming_only_allowed_places_in_its_regions_is_admitted() {
        admit(&policy(), &spec(&[])).expect("admitted");
    }

    #[test]
    fn each_place_outside_the_rules_is_refused_by_name() {
        for (change, named) in [
            (
                ("key_file", "/keys/platform.kek"),
                "key file /keys/platform.kek",
            ),
            (("key_file", "/keys/../keys/acme.kek"), "key file"),
            (
                ("staging", "file:///etc/godwit"),
                "staging file:///etc/godwit",
            ),
            (
                ("staging", "s3://eu-bucket/acme2"),
                "staging s3://eu-bucket/acme2",
            ),
            (("staging", "s3://eu-bucket/acme/../other"), "staging"),
            (
                ("staging", "s3://us-bucket/acme/x"),
                "region us, outside customer acme's regions (eu)",
            ),
            (
                ("source", "postgres://m@db.platform.internal:5432/shop"),
                "source database db.platform.internal:5432/shop",
            ),
            (
                (
                    "source",
                    "host=db.acme.internal,evil.example port=5432 dbname=shop",
                ),
                "evil.example",
            ),
            (
                ("target", "postgres://l@pg-us.platform:5432/acme"),
                "target database pg-us.platform:5432/acme lies in region us",
            ),
            (("customer", "globex"), "customer globex has no entry"),
        ] {
            let err = admit(&policy(), &spec(&[change])).expect_err(named);
            assert!(err.contains(named), "{change:?}: {err}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under("s3://b/acme", "s3://b/acme/"));
        assert!(under("s3://b/acme/x/y", "s3://b/acme"));
        assert!(!under("s3://b/acme2", "s3://b/acme"));
        assert!(has_parent_step("file:///a/../b"));
        assert!(!has_parent_step("file:///a/..b"));
    }
}
