//! The engine over the in-process store: publish, find, claim, finish and
//! await without a database.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::ids::JobId;
use crate::keyspace::Keyspace;
use crate::lease::{LeaseStore, LeaseTiming, MemoryStore};
use crate::spec::TableName;
use crate::state::BlockRange;

fn partition(n: u32) -> PartitionRecord {
    PartitionRecord::pending(
        JobId::parse("job-1").expect("id"),
        n,
        TableName::parse("public.orders").expect("name"),
        BlockRange {
            start: n * 10,
            end: Some(n * 10 + 10),
        },
    )
}

fn setup() -> (Arc<dyn LeaseStore>, Keyspace, JobId) {
    (
        Arc::new(MemoryStore::new()),
        Keyspace::new("/t"),
        JobId::parse("job-1").expect("id"),
    )
}

const TIMING: LeaseTiming = LeaseTiming {
    ttl: Duration::from_secs(10),
};

#[tokio::test]
async fn claimed_work_is_not_pending_and_a_second_claim_fails() {
    let (store, keyspace, job) = setup();
    publish(
        store.as_ref(),
        &keyspace,
        &job,
        &[partition(0), partition(1)],
    )
    .await
    .expect("publish");
    let open: Vec<PartitionRecord> = pending(store.as_ref(), &keyspace, &job)
        .await
        .expect("pending");
    assert_eq!(open.len(), 2);
    let claimed = claim(
        store.clone(),
        &keyspace,
        &job,
        open[0].clone(),
        "w1",
        TIMING,
    )
    .await
    .expect("claim")
    .expect("free");
    assert!(
        claim(
            store.clone(),
            &keyspace,
            &job,
            open[0].clone(),
            "w2",
            TIMING
        )
        .await
        .expect("claim")
        .is_none()
    );
    let still: Vec<PartitionRecord> = pending(store.as_ref(), &keyspace, &job)
        .await
        .expect("pending");
    assert_eq!(
        still.iter().map(|p| p.partition).collect::<Vec<_>>(),
        vec![1]
    );
    claimed.release().await;
    assert_eq!(
        pending::<PartitionRecord>(store.as_ref(), &keyspace, &job)
            .await
            .expect("pending")
            .len(),
        2
    );
}

#[tokio::test]
async fn a_retryable_failure_backs_off_and_a_fatal_one_fails_the_await() {
    let (store, keyspace, job) = setup();
    publish(
        store.as_ref(),
        &keyspace,
        &job,
        &[partition(0), partition(1)],
    )
    .await
    .expect("publish");
    let retry = RetryPolicy {
        base: Duration::from_secs(60),
        cap: Duration::from_secs(60),
        max_attempts: 3,
    };
    let mut first = claim(store.clone(), &keyspace, &job, partition(0), "w1", TIMING)
        .await
        .expect("claim")
        .expect("free");
    let settled = first.settle(&Err(crate::Error::Unreachable("reset".into())), &retry);
    // A jitter of zero would leave nothing to wait out; any other draw does.
    assert_eq!(settled, super::queue::Settled::Retrying);
    first.finish().await.expect("finish");
    let stored: Vec<PartitionRecord> = list(store.as_ref(), &keyspace, &job).await.expect("list");
    assert_eq!(stored[0].attempts.attempts, 1);
    assert_eq!(stored[0].state, WorkState::Pending);
    let open: Vec<PartitionRecord> = pending(store.as_ref(), &keyspace, &job)
        .await
        .expect("pending");
    if stored[0]
        .attempts
        .retry_after_unix_ms
        .is_some_and(|at| at > crate::state::now_unix_ms())
    {
        assert_eq!(
            open.iter().map(|p| p.partition).collect::<Vec<_>>(),
            vec![1]
        );
    }

    let waiter = {
        let (store, keyspace, job) = (store.clone(), keyspace.clone(), job.clone());
        tokio::spawn(async move {
            await_done::<PartitionRecord, _, _>(store, &keyspace, &job, 2, || async { Ok(false) })
                .await
        })
    };
    let mut second = claim(store.clone(), &keyspace, &job, partition(1), "w1", TIMING)
        .await
        .expect("claim")
        .expect("free");
    second.settle(&Err(crate::Error::Spec("bad".into())), &retry);
    second.finish().await.expect("finish");
    let stopped = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the change")
        .expect("join");
    match stopped {
        Err(Stopped::Failed(e)) => assert_eq!(
            e.to_string(),
            "table public.orders partition 1 failed after 1 attempt(s): invalid job spec: bad"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn await_returns_when_all_are_done_and_stops_on_cancel() {
    let (store, keyspace, job) = setup();
    publish(store.as_ref(), &keyspace, &job, &[partition(0)])
        .await
        .expect("publish");
    let waiter = {
        let (store, keyspace, job) = (store.clone(), keyspace.clone(), job.clone());
        tokio::spawn(async move {
            await_done::<PartitionRecord, _, _>(store, &keyspace, &job, 1, || async { Ok(false) })
                .await
        })
    };
    let mut claimed = claim(store.clone(), &keyspace, &job, partition(0), "w1", TIMING)
        .await
        .expect("claim")
        .expect("free");
    claimed.item.rows = 42;
    assert_eq!(
        claimed.settle(&Ok(()), &RetryPolicy::DEFAULT),
        super::queue::Settled::Done
    );
    claimed.finish().await.expect("finish");
    let done = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken")
        .expect("join")
        .expect("done");
    assert_eq!(done[0].rows, 42);
    // Done work is never claimed again.
    assert!(
        claim(store.clone(), &keyspace, &job, partition(0), "w2", TIMING)
            .await
            .expect("claim")
            .is_none()
    );
    let cancelled =
        await_done::<PartitionRecord, _, _>(store, &keyspace, &job, 2, || async { Ok(true) }).await;
    assert!(matches!(cancelled, Err(Stopped::Cancelled)));
}

#[test]
fn older_records_read_as_the_engine_s_states() {
    for (old, state) in [
        ("copied", WorkState::Done),
        ("compared", WorkState::Done),
        ("pending", WorkState::Pending),
    ] {
        let parsed: WorkState = serde_json::from_str(&format!("\"{old}\"")).expect("state");
        assert_eq!(parsed, state);
    }
}

#[tokio::test]
async fn a_later_wave_opens_once_every_item_of_the_earlier_ones_is_done() {
    let (store, keyspace, job) = setup();
    publish(
        store.as_ref(),
        &keyspace,
        &job,
        &[partition(0), partition(1), partition(2).with_wave(1)],
    )
    .await
    .expect("publish");
    let open = |store: Arc<dyn LeaseStore>, keyspace: Keyspace, job: JobId| async move {
        pending::<PartitionRecord>(store.as_ref(), &keyspace, &job)
            .await
            .expect("pending")
            .iter()
            .map(|p| p.partition)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        open(store.clone(), keyspace.clone(), job.clone()).await,
        vec![0, 1]
    );
    let retry = RetryPolicy::DEFAULT;
    for (n, still_open) in [(0, vec![1]), (1, vec![])] {
        let mut claimed = claim(store.clone(), &keyspace, &job, partition(n), "w1", TIMING)
            .await
            .expect("claim")
            .expect("free");
        // Claimed and running: the next wave still waits for it.
        assert_eq!(
            open(store.clone(), keyspace.clone(), job.clone()).await,
            still_open
        );
        assert_eq!(claimed.settle(&Ok(()), &retry), super::queue::Settled::Done);
        claimed.finish().await.expect("finish");
    }
    assert_eq!(
        open(store.clone(), keyspace.clone(), job.clone()).await,
        vec![2]
    );
}
