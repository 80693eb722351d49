//! What the customer's debrief draws of a job's run: when each phase ran,
//! how the copy and the change stream progressed over time, and each
//! cutover. Kept in the job's record (a new leader carries it on) and
//! staged, sealed, beside the manifest, so that a report reads it after
//! the coordinator is gone. Bounded whatever the job's length: samples are
//! thinned, never appended without end. Holds times, counts and sizes
//! only, never a value of the customer's rows.

use serde::{Deserialize, Serialize};

use crate::job::CutoverRecord;

/// Samples kept per series; past it, every other one is dropped.
const MAX_SAMPLES: usize = 240;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobHistory {
    #[serde(default)]
    pub phases: Vec<PhaseRun>,
    /// Bytes and rows the copy had read, over time (cumulative).
    #[serde(default)]
    pub copied: Vec<CopySample>,
    /// The change stream's lag over time.
    #[serde(default)]
    pub lag: Vec<LagSample>,
    #[serde(default)]
    pub cutovers: Vec<CutoverRecord>,
    /// What the copy moved, table by table.
    #[serde(default)]
    pub moved: Vec<TableMoved>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableMoved {
    pub table: String,
    pub partitions: u64,
    pub rows: u64,
    /// Read from the source (COPY's binary form).
    pub bytes_read: u64,
    /// Staged: compressed and encrypted.
    pub bytes_staged: u64,
}

/// One run of a phase (`planning`, `copying`, …) or of a step within one
/// (`snapshot`, `indexes`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRun {
    pub name: String,
    /// The phase a step ran within; `None` for a phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    pub started_unix_ms: u64,
    /// 0 while it runs, or when the coordinator running it stopped.
    pub ended_unix_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopySample {
    pub at_unix_ms: u64,
    pub bytes: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagSample {
    pub at_unix_ms: u64,
    pub lag_bytes: u64,
    pub lag_ms: u64,
    /// Rows the stream had applied by then.
    pub rows: u64,
}

/// A partition's copy as the history sees it: when it ran and what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRun {
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub bytes: u64,
    pub rows: u64,
}

fn thin<T>(samples: &mut Vec<T>) {
    if samples.len() > MAX_SAMPLES {
        let mut index = 0;
        samples.retain(|_| {
            index += 1;
            index % 2 == 1
        });
    }
}

impl JobHistory {
    /// Starts a run of `phase`, unless one is open already (a job taken
    /// over while it streamed streams on in the same run).
    pub fn open(&mut self, phase: &str, now_unix_ms: u64) {
        if self.running(phase).is_none() {
            self.phases.push(PhaseRun {
                name: phase.to_owned(),
                within: None,
                started_unix_ms: now_unix_ms,
                ended_unix_ms: 0,
            });
        }
    }

    /// Ends the open run of `phase`; what it was.
    pub fn close(&mut self, phase: &str, now_unix_ms: u64) -> Option<PhaseRun> {
        let run = self
            .phases
            .iter_mut()
            .rev()
            .find(|p| p.within.is_none() && p.name == phase)
            .filter(|p| p.ended_unix_ms == 0)?;
        run.ended_unix_ms = now_unix_ms.max(run.started_unix_ms);
        Some(run.clone())
    }

    /// The open run of `phase`, if it is running.
    pub fn running(&self, phase: &str) -> Option<&PhaseRun> {
        self.phases
            .iter()
            .rev()
            .find(|p| p.within.is_none() && p.name == phase)
            .filter(|p| p.ended_unix_ms == 0)
    }

    /// A step that ran within `phase`.
    pub fn step(&mut self, phase: &str, step: &str, started_unix_ms: u64, ended_unix_ms: u64) {
        self.phases.push(PhaseRun {
            name: step.to_owned(),
            within: Some(phase.to_owned()),
            started_unix_ms,
            ended_unix_ms: ended_unix_ms.max(started_unix_ms),
        });
    }

    /// The copy's progress over time from its partitions' runs, each
    /// partition's bytes and rows spread evenly over its own run: up to
    /// `points` samples from the first start to the last end.
    pub fn copy_progress(&mut self, partitions: &[PartitionRun], points: usize) {
        let timed: Vec<&PartitionRun> = partitions
            .iter()
            .filter(|p| p.started_unix_ms > 0 && p.finished_unix_ms >= p.started_unix_ms)
            .collect();
        let (Some(first), Some(last)) = (
            timed.iter().map(|p| p.started_unix_ms).min(),
            timed.iter().map(|p| p.finished_unix_ms).max(),
        ) else {
            return;
        };
        // At least a second between samples: over shorter intervals the
        // rate measures partitions starting and ending more than the copy.
        let points = points
            .min(((last - first) / 1_000 + 1) as usize)
            .clamp(2, MAX_SAMPLES) as u64;
        self.copied = (0..points)
            .map(|i| {
                let at = first + (last - first) * i / (points - 1);
                let (mut bytes, mut rows) = (0u64, 0u64);
                for p in &timed {
                    let span = p.finished_unix_ms - p.started_unix_ms;
                    let done = if at >= p.finished_unix_ms {
                        1.0
                    } else if at <= p.started_unix_ms || span == 0 {
                        0.0
                    } else {
                        (at - p.started_unix_ms) as f64 / span as f64
                    };
                    bytes += (p.bytes as f64 * done) as u64;
                    rows += (p.rows as f64 * done) as u64;
                }
                CopySample {
                    at_unix_ms: at,
                    bytes,
                    rows,
                }
            })
            .collect();
    }

    /// Records the stream's lag, one sample per second of the clock (the
    /// latest of that second); a sample older than the last is dropped.
    pub fn lag(&mut self, sample: LagSample) {
        if let Some(last) = self.lag.last_mut() {
            if sample.at_unix_ms < last.at_unix_ms {
                return;
            }
            if sample.at_unix_ms / 1_000 == last.at_unix_ms / 1_000 {
                *last = sample;
                return;
            }
        }
        self.lag.push(sample);
        thin(&mut self.lag);
    }

    pub fn cutover(&mut self, record: CutoverRecord) {
        self.cutovers.push(record);
    }
}

/// Seals the job's history into its staging area, beside its reports.
pub async fn store(
    sealed: &crate::sealed::SealedStaging,
    history: &JobHistory,
) -> crate::Result<()> {
    let job = sealed.job();
    crate::verify::store::put_sealed(
        sealed.staging(),
        sealed.key(),
        &sealed.staging().history_path(job),
        &crate::chunk::ChunkId::history(job.as_str()),
        history,
    )
    .await
}

/// The job's staged history; `None` if none was staged (a job that never
/// finished its copy, or staged by an older version).
pub async fn load(sealed: &crate::sealed::SealedStaging) -> crate::Result<Option<JobHistory>> {
    let job = sealed.job();
    let path = sealed.staging().history_path(job);
    let loaded = crate::verify::store::get_sealed(
        sealed.staging(),
        sealed.key(),
        &path,
        &crate::chunk::ChunkId::history(job.as_str()),
    )
    .await;
    match loaded {
        Ok(history) => Ok(Some(history)),
        Err(crate::Error::Staging {
            source: object_store::Error::NotFound { .. },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_progress_spreads_each_partition_over_its_run() {
        let mut history = JobHistory::default();
        let runs = [
            PartitionRun {
                started_unix_ms: 10_000,
                finished_unix_ms: 30_000,
                bytes: 200,
                rows: 20,
            },
            PartitionRun {
                started_unix_ms: 20_000,
                finished_unix_ms: 30_000,
                bytes: 100,
                rows: 10,
            },
        ];
        history.copy_progress(&runs, 3);
        let points: Vec<(u64, u64, u64)> = history
            .copied
            .iter()
            .map(|s| (s.at_unix_ms, s.bytes, s.rows))
            .collect();
        assert_eq!(
            points,
            vec![(10_000, 0, 0), (20_000, 100, 10), (30_000, 300, 30)]
        );
    }

    #[test]
    fn a_phase_opens_once_and_closes_once() {
        let mut history = JobHistory::default();
        history.open("streaming", 10);
        history.open("streaming", 20);
        assert_eq!(
            history.running("streaming").map(|p| p.started_unix_ms),
            Some(10)
        );
        history.step("streaming", "cutover", 30, 40);
        let closed = history.close("streaming", 50).expect("open");
        assert_eq!((closed.started_unix_ms, closed.ended_unix_ms), (10, 50));
        assert!(history.close("streaming", 60).is_none());
        assert!(history.running("streaming").is_none());
    }

    #[test]
    fn lag_samples_stay_bounded() {
        let mut history = JobHistory::default();
        for i in 0..2_000u64 {
            history.lag(LagSample {
                at_unix_ms: i * 1_000,
                lag_bytes: i,
                lag_ms: i,
                rows: i,
            });
        }
        assert!(history.lag.len() <= MAX_SAMPLES, "{}", history.lag.len());
        assert_eq!(history.lag.first().map(|s| s.at_unix_ms), Some(0));
        // Close samples replace each other rather than pile up.
        let mut close = JobHistory::default();
        for i in 0..10 {
            close.lag(LagSample {
                at_unix_ms: 5_000 + i * 10,
                lag_bytes: i,
                lag_ms: 0,
                rows: 0,
            });
        }
        assert_eq!(close.lag.len(), 1);
        assert_eq!(close.lag[0].lag_bytes, 9);
        // A stream reporting every 500 ms keeps one sample a second.
        let mut steady = JobHistory::default();
        for i in 0..20 {
            steady.lag(LagSample {
                at_unix_ms: 10_250 + i * 500,
                lag_bytes: i,
                lag_ms: 0,
                rows: 0,
            });
        }
        assert_eq!(steady.lag.len(), 10, "{:?}", steady.lag);
        // Another clock behind the last sample does not move it back.
        steady.lag(LagSample {
            at_unix_ms: 1_000,
            lag_bytes: 99,
            lag_ms: 0,
            rows: 0,
        });
        assert_eq!(steady.lag.len(), 10);
        assert_ne!(steady.lag.last().map(|s| s.lag_bytes), Some(99));
    }
}
