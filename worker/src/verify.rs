//! Comparing one leased key range of a verification run: both databases
//! checksum the range, and a difference is narrowed to primary keys. The
//! finding of a range that differs names keys, so it is sealed into the
//! job's staging area; the lease store only learns counts and whether the
//! range matched.

use godwit_common::Result;
use godwit_common::keyring::CustomerKeys;
use godwit_common::mapping::mask::Masker;
use godwit_common::pg::{self, Side, ranges};
use godwit_common::state::VerifyRun;
use godwit_common::verify::{self, Options, RangeFinding};
use godwit_common::work::VerifyRange;

use crate::keys::KeyCache;

pub async fn compare(
    run: &VerifyRun,
    range: &VerifyRange,
    keys: &KeyCache,
    session: pg::SessionSlot,
) -> Result<RangeFinding> {
    let spec = &run.spec;
    let (source, target) = tokio::try_join!(
        pg::connect_source(&spec.source, session),
        pg::connect(&spec.target, Side::Target)
    )?;
    if let Some(snapshots) = &run.snapshots {
        pg::join_snapshot(&source, &snapshots.source).await?;
        pg::join_snapshot(&target, &snapshots.target).await?;
    }
    // The coordinator chose the ranges; a range is compared whole.
    let options = Options {
        compare_rows_below: run.compare_rows_below,
        sample: None,
    };
    let finding = match &range.mapped {
        Some(mapped) => {
            let views = (&mapped.views.0, &mapped.views.1);
            let mut finding = verify::compare_views(
                (&source, &target),
                views,
                (range.keys.as_ref(), mapped.target_keys.as_ref()),
                options,
            )
            .await?;
            if !mapped.masked.is_empty() {
                let scope = |k: Option<&godwit_common::state::KeyRange>| {
                    k.map_or_else(|| "true".to_owned(), |k| ranges::key_predicate(k, "t"))
                };
                let scopes = (
                    scope(range.keys.as_ref()),
                    scope(mapped.target_keys.as_ref()),
                );
                // The key is derived here from the customer's key file, as
                // for the copy, and goes nowhere else.
                let key = CustomerKeys::for_spec(spec)?.token_key();
                let masker = Masker {
                    key: &key,
                    customer: spec.customer.as_str(),
                };
                verify::compare_masked(
                    (&source, &target),
                    views,
                    (&scopes.0, &scopes.1),
                    &mapped.masked,
                    &masker,
                    &mut finding.content,
                )
                .await?;
            }
            finding
        }
        None => {
            verify::compare_range(&source, &target, &range.table, range.keys.as_ref(), options)
                .await?
        }
    };
    if !finding.content.matched {
        let sealed = keys.sealed(spec).await?;
        verify::store_finding(sealed.staging(), sealed.key(), run, range.range, &finding).await?;
    }
    Ok(finding)
}
