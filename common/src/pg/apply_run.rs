//! One read of a job's slot applied to the target in bounded memory: the
//! decoded messages arrive one at a time (from memory or from sealed
//! segments a large read spilled), the ones the target lacks are applied,
//! and target transactions commit only at source-transaction boundaries,
//! each together with the ledger's position, under the stream holder's
//! fencing token. A source transaction of any size is applied once or not
//! at all, and never held whole in memory.
//!
//! Owns the order of applying and committing; never reads the slot and
//! never moves it.

use std::future::Future;
use std::pin::Pin;

use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio_postgres::Client;

use super::apply::{Applier, Applying, Gathered, RowStatement, Run, lock_ledger, record_ledger};
use super::changed_keys;
use super::pgoutput::{Message, format_lsn};
use super::stream::SnapshotBounds;
use crate::{Error, Result};

/// Rows applied in one target transaction before it commits at the next
/// source-transaction boundary: small source transactions share commits,
/// large ones are never split.
const COMMIT_EVERY_ROWS: u64 = 10_000;
/// Row statements sent ahead of their answers (pipelined on the target
/// session): at most this many, holding at most this many bytes of values.
const MAX_IN_FLIGHT: usize = 512;
const MAX_IN_FLIGHT_BYTES: usize = 2 << 20;

type InFlight<'a> = FuturesOrdered<Pin<Box<dyn Future<Output = Result<u64>> + Send + 'a>>>;

/// What the sequencer decides for one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Apply this message (a change, or a relation a later change needs).
    Apply(Message),
    /// A source transaction applied to its end.
    Committed { end_lsn: u64, commit_time_us: i64 },
    /// A transaction the pinning snapshot does not see: stop here.
    Stop,
}

/// Decides, message by message, what the target lacks. Knows no SQL.
#[derive(Debug)]
pub struct Sequencer {
    /// End of the last source transaction the target has (or will have
    /// once the open target transaction commits).
    applied: u64,
    visible: Option<SnapshotBounds>,
    open: Option<u32>,
    skipping: bool,
    /// Relations described inside transactions the target already has:
    /// changes applied later may refer to them.
    held_relations: Vec<Message>,
    pub transactions: u64,
    pub rows: u64,
    pub last_commit_time_us: Option<i64>,
    /// The source transactions applied, newest last.
    pub xids: Vec<u32>,
}

impl Sequencer {
    pub fn new(applied: u64, visible: Option<SnapshotBounds>) -> Self {
        Self {
            applied,
            visible,
            open: None,
            skipping: false,
            held_relations: Vec::new(),
            transactions: 0,
            rows: 0,
            last_commit_time_us: None,
            xids: Vec::new(),
        }
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn next(&mut self, message: Message) -> Result<Vec<Step>> {
        match message {
            Message::Begin { final_lsn, xid, .. } => {
                if self.open.is_some() {
                    return Err(Error::Internal(format!(
                        "change stream: transaction {xid} began inside another"
                    )));
                }
                if let Some(bounds) = &self.visible
                    && !bounds.sees(xid)
                {
                    return Ok(vec![Step::Stop]);
                }
                // Commit records follow one another in the WAL: a
                // transaction whose commit lies before the end of the last
                // one applied was applied too.
                self.skipping = final_lsn < self.applied;
                self.open = Some(xid);
                Ok(Vec::new())
            }
            Message::Commit {
                end_lsn,
                commit_time_us,
                ..
            } => {
                let Some(xid) = self.open.take() else {
                    return Err(Error::Internal(
                        "change stream: commit without a transaction".into(),
                    ));
                };
                if self.skipping {
                    return Ok(Vec::new());
                }
                self.applied = end_lsn;
                self.transactions += 1;
                self.last_commit_time_us = Some(commit_time_us);
                self.xids.push(xid);
                Ok(vec![Step::Committed {
                    end_lsn,
                    commit_time_us,
                }])
            }
            Message::Other(_) => Ok(Vec::new()),
            message => {
                if self.open.is_none() {
                    return Err(Error::Internal(
                        "change stream: a change outside any transaction".into(),
                    ));
                }
                let relation = matches!(message, Message::Relation(_));
                if self.skipping {
                    if relation {
                        self.held_relations.push(message);
                    }
                    return Ok(Vec::new());
                }
                if !relation {
                    self.rows += 1;
                }
                let mut steps: Vec<Step> = self.held_relations.drain(..).map(Step::Apply).collect();
                steps.push(Step::Apply(message));
                Ok(steps)
            }
        }
    }
}

/// What applying one read did.
#[derive(Debug, Default)]
pub struct Applied {
    pub transactions: u64,
    pub rows: u64,
    /// End of the last source transaction now committed on the target.
    pub applied: u64,
    pub last_commit_time_us: Option<i64>,
    pub xids: Vec<u32>,
    /// Stopped at a transaction the pinning snapshot does not see.
    pub stopped: bool,
}

/// Applies one read: feed it messages in slot order, then `finish` (or
/// `abandon` after an error, which rolls back what is not committed).
pub struct ApplyRun<'a> {
    applier: &'a mut Applier,
    target: &'a Client,
    source: &'a Client,
    job: &'a str,
    token: i64,
    sequencer: Sequencer,
    open: bool,
    uncommitted_rows: u64,
    /// The last source transaction applied in the open target transaction.
    pending_end: Option<u64>,
    committed: u64,
    stopped: bool,
    current_xid: Option<u32>,
    in_flight: InFlight<'a>,
    in_flight_bytes: usize,
}

impl<'a> ApplyRun<'a> {
    pub fn new(
        applier: &'a mut Applier,
        (target, source): (&'a Client, &'a Client),
        (job, token): (&'a str, i64),
        applied: u64,
        visible: Option<SnapshotBounds>,
    ) -> Self {
        // Runs gathered by a read that never committed nor rolled back
        // (its future dropped) are not on the target: they are read again.
        drop(applier.take_runs());
        Self {
            applier,
            target,
            source,
            job,
            token,
            sequencer: Sequencer::new(applied, visible),
            open: false,
            uncommitted_rows: 0,
            pending_end: None,
            committed: applied,
            stopped: false,
            current_xid: None,
            in_flight: FuturesOrdered::new(),
            in_flight_bytes: 0,
        }
    }

    /// Applies what `message` calls for. False: stop feeding (a pinning
    /// snapshot does not see the transaction that begins here).
    pub async fn feed(&mut self, message: Message) -> Result<bool> {
        if let Message::Begin { xid, .. } = &message {
            self.current_xid = Some(*xid);
        }
        for step in self.sequencer.next(message)? {
            match step {
                Step::Apply(message) => {
                    self.begin().await?;
                    let xid = self.current_xid.unwrap_or_default();
                    let row_change = matches!(
                        message,
                        Message::Insert { .. } | Message::Update { .. } | Message::Delete { .. }
                    );
                    let gathered = self
                        .applier
                        .gather(message, xid)
                        .map_err(|e| self.in_transaction(e))?;
                    let (ready, alone) = match gathered {
                        Gathered::Held { ready } => (ready, None),
                        Gathered::Alone { ready, change } => (ready, Some(change)),
                    };
                    for run in ready {
                        self.send_run(run).await?;
                    }
                    if let Some(message) = alone {
                        self.apply_alone(message).await?;
                    }
                    if row_change {
                        self.uncommitted_rows += 1;
                    }
                }
                Step::Committed { end_lsn, .. } => {
                    self.pending_end = Some(end_lsn);
                    if self.uncommitted_rows >= COMMIT_EVERY_ROWS {
                        self.commit().await?;
                    }
                }
                Step::Stop => {
                    self.stopped = true;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Commits what is applied, and the ledger's new position.
    pub async fn finish(mut self) -> Result<Applied> {
        self.commit().await?;
        Ok(Applied {
            transactions: self.sequencer.transactions,
            rows: self.sequencer.rows,
            applied: self.committed,
            last_commit_time_us: self.sequencer.last_commit_time_us,
            xids: std::mem::take(&mut self.sequencer.xids),
            stopped: self.stopped,
        })
    }

    /// Rolls back what is not committed (after an error).
    pub async fn abandon(mut self) {
        // Statements still in flight fail in the aborted transaction.
        while self.in_flight.next().await.is_some() {}
        // What they touched is rolled back with them, and applied again
        // (and noted again) by the next read; so is any setting made.
        self.applier.take_touched();
        self.applier.forget_session_settings();
        if self.open {
            let _ = self.target.batch_execute("ROLLBACK").await;
        }
    }

    async fn begin(&mut self) -> Result<()> {
        if self.open {
            return Ok(());
        }
        self.target
            .batch_execute("BEGIN; SET CONSTRAINTS ALL DEFERRED")
            .await
            .map_err(|e| Error::postgres("cannot begin applying changes on the target", e))?;
        self.open = true;
        // The source checked its deferrable constraints once per statement
        // or transaction, not once per row as the target applies them.
        let recorded = lock_ledger(self.target, self.job, self.token).await?;
        if recorded > self.committed {
            return Err(Error::Conflict(format!(
                "the target ledger of job {} is at {}, ahead of this stream's {}: it re-reads it",
                self.job,
                format_lsn(recorded),
                format_lsn(self.committed)
            )));
        }
        Ok(())
    }

    /// Applies a message that is not gathered: a relation described, a
    /// truncate, or a row change run as a statement of its own.
    async fn apply_alone(&mut self, message: Message) -> Result<()> {
        // A relation described or a statement prepared is a round trip of
        // its own: the pipeline keeps draining meanwhile, so the session
        // never waits on itself.
        let (applying, refused) = alongside(
            self.applier
                .apply_change(self.target, self.source, &message),
            &mut self.in_flight,
        )
        .await;
        if let Some(refused) = refused {
            return Err(refused);
        }
        match applying.map_err(|e| self.in_transaction(e))? {
            Applying::Statement(statement) => {
                self.send(statement, self.current_xid.unwrap_or_default())
                    .await
            }
            Applying::Done => Ok(()),
        }
    }

    /// Sends a gathered run as one statement.
    async fn send_run(&mut self, run: Run) -> Result<()> {
        let xid = run.first_xid();
        let (statement, refused) = alongside(
            self.applier.run_statement(self.target, run),
            &mut self.in_flight,
        )
        .await;
        if let Some(refused) = refused {
            return Err(refused);
        }
        let statement = statement.map_err(|e| diverged(e, xid, self.committed))?;
        self.send(statement, xid).await
    }

    /// Puts a statement in the pipeline (its session setting ahead of it);
    /// waits for the answers when too much is in flight.
    async fn send(&mut self, mut statement: RowStatement, xid: u32) -> Result<()> {
        if let Some(setting) = statement.take_setting() {
            let target = self.target;
            // Its own request, sent ahead of the statement.
            self.in_flight.push_back(Box::pin(async move {
                target
                    .batch_execute(setting)
                    .await
                    .map(|()| 0)
                    .map_err(|e| Error::postgres(format!("cannot apply {setting}"), e))
            }));
            self.pump()?;
        }
        self.in_flight_bytes += statement.held_bytes();
        let (target, after) = (self.target, self.committed);
        self.in_flight.push_back(Box::pin(async move {
            statement
                .run(target)
                .await
                .map_err(|e| diverged(e, xid, after))
        }));
        self.pump()?;
        if self.in_flight.len() >= MAX_IN_FLIGHT || self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES {
            self.settle().await?;
        }
        Ok(())
    }

    /// Sends what was queued (one poll) and takes the answers already in.
    fn pump(&mut self) -> Result<()> {
        while let Some(Some(done)) = self.in_flight.next().now_or_never() {
            done?;
        }
        Ok(())
    }

    /// Waits for every statement in flight.
    async fn settle(&mut self) -> Result<()> {
        while let Some(done) = self.in_flight.next().await {
            done?;
        }
        self.in_flight_bytes = 0;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        for run in self.applier.take_runs() {
            self.send_run(run).await?;
        }
        self.settle().await?;
        let Some(end_lsn) = self.pending_end.take() else {
            return Ok(());
        };
        // A run of transactions without a published change still moves
        // the ledger, so the slot can move past them.
        self.begin().await?;
        record_ledger(self.target, self.job, end_lsn).await?;
        let touched = self.applier.take_touched();
        changed_keys::record(self.target, self.job, end_lsn, &touched).await?;
        self.target
            .batch_execute("COMMIT")
            .await
            .map_err(|e| Error::postgres("cannot commit applied changes on the target", e))?;
        self.open = false;
        self.uncommitted_rows = 0;
        self.committed = end_lsn;
        Ok(())
    }

    fn in_transaction(&self, e: Error) -> Error {
        diverged(e, self.current_xid.unwrap_or_default(), self.committed)
    }
}

/// Names the source transaction a change of which the target refused.
fn diverged(e: Error, xid: u32, after: u64) -> Error {
    // A connection lost mid-way can pass; keep it retryable.
    if e.is_retryable() {
        return e;
    }
    Error::Diverged(format!(
        "cannot apply source transaction {xid} (after {}) to the target: {e}",
        format_lsn(after)
    ))
}

/// Runs `work` while taking the answers of the statements in flight;
/// returns its result and the first refusal among those answers.
async fn alongside<T>(
    work: impl Future<Output = Result<T>>,
    in_flight: &mut InFlight<'_>,
) -> (Result<T>, Option<Error>) {
    tokio::pin!(work);
    let mut refused = None;
    let out = loop {
        tokio::select! {
            biased;
            out = &mut work => break out,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    refused.get_or_insert(e);
                }
            }
        }
    };
    (out, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::pgoutput::Value;

    fn begin(xid: u32, final_lsn: u64) -> Message {
        Message::Begin {
            final_lsn,
            commit_time_us: 5,
            xid,
        }
    }

    fn commit(end_lsn: u64) -> Message {
        Message::Commit {
            commit_lsn: end_lsn - 1,
            end_lsn,
            commit_time_us: 5,
        }
    }

    fn insert() -> Message {
        Message::Insert {
            relation: 1,
            new: vec![Value::Text("1".into())],
        }
    }

    fn relation() -> Message {
        Message::Relation(crate::pg::pgoutput::Relation {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: Vec::new(),
        })
    }

    fn feed(sequencer: &mut Sequencer, messages: Vec<Message>) -> Vec<Step> {
        messages
            .into_iter()
            .flat_map(|m| sequencer.next(m).expect("well formed"))
            .collect()
    }

    #[test]
    fn transactions_the_target_has_are_skipped_but_their_relations_kept() {
        let mut sequencer = Sequencer::new(200, None);
        let steps = feed(
            &mut sequencer,
            vec![
                begin(7, 150),
                relation(),
                insert(),
                commit(200),
                begin(8, 250),
                Message::Other(b'Y'),
                insert(),
                insert(),
                commit(300),
            ],
        );
        assert_eq!(
            steps,
            vec![
                Step::Apply(relation()),
                Step::Apply(insert()),
                Step::Apply(insert()),
                Step::Committed {
                    end_lsn: 300,
                    commit_time_us: 5
                },
            ]
        );
        assert_eq!((sequencer.transactions, sequencer.rows), (1, 2));
        assert_eq!(sequencer.xids, vec![8]);
        assert_eq!(sequencer.applied(), 300);
    }

    #[test]
    fn a_transaction_the_snapshot_does_not_see_stops_the_read() {
        let bounds = SnapshotBounds::parse("10:10:").expect("bounds");
        let mut sequencer = Sequencer::new(0, Some(bounds));
        let steps = feed(
            &mut sequencer,
            vec![begin(9, 10), insert(), commit(20), begin(10, 30)],
        );
        assert_eq!(steps.last(), Some(&Step::Stop));
        assert_eq!(sequencer.xids, vec![9]);
    }

    #[test]
    fn malformed_streams_are_errors() {
        assert!(Sequencer::new(0, None).next(insert()).is_err());
        assert!(Sequencer::new(0, None).next(commit(5)).is_err());
        let mut sequencer = Sequencer::new(0, None);
        sequencer.next(begin(1, 1)).expect("begin");
        assert!(sequencer.next(begin(2, 2)).is_err());
    }
}
