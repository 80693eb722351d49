//! A job's trace over OTLP: one trace per job, its ids kept in the job's
//! record so that every process working for the job (the CLI that
//! submitted it, whichever coordinator leads it, every worker) adds its
//! spans to the same tree, and a new leader carries on where the last one
//! stopped.
//!
//! Spans are emitted once their start and end are known, with the times
//! measured where the work ran. A span other processes hang children on
//! (the job, a phase, a table) has an id derived from the job's span and
//! its path, so a worker names its parent without asking anyone and a
//! span emitted by a later leader keeps the id the workers used.
//!
//! This module never decides what is traced; it never carries a value of
//! the customer's rows, only names, counts and times.

use std::cell::Cell;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithTonicConfig;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, SdkTracerProvider,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a span sits: its trace and its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanRef {
    pub trace: TraceId,
    pub span: SpanId,
}

impl SpanRef {
    /// A span starting a new trace.
    pub fn root() -> Self {
        let ids = RandomIdGenerator::default();
        Self {
            trace: ids.new_trace_id(),
            span: ids.new_span_id(),
        }
    }

    /// A child with an id of its own, in the same trace.
    pub fn new_child(&self) -> Self {
        Self {
            trace: self.trace,
            span: RandomIdGenerator::default().new_span_id(),
        }
    }

    /// The child named by `path`: the same id wherever and whenever it is
    /// asked for.
    pub fn child(&self, path: &[&str]) -> Self {
        let mut digest = Sha256::new();
        digest.update(self.span.to_bytes());
        for part in path {
            digest.update([0u8]);
            digest.update(part.as_bytes());
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.finalize()[..8]);
        // The all-zero id means "no span".
        if id == [0u8; 8] {
            id[7] = 1;
        }
        Self {
            trace: self.trace,
            span: SpanId::from_bytes(id),
        }
    }

    /// The W3C `traceparent` header naming this span as a parent.
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace, self.span)
    }

    /// Reads a W3C `traceparent` header (version 00); `None` for anything
    /// else, so a malformed header starts a trace of its own.
    pub fn from_traceparent(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let trace = TraceId::from_hex(trace).ok()?;
        let span = SpanId::from_hex(span).ok()?;
        (trace != TraceId::INVALID && span != SpanId::INVALID).then_some(Self { trace, span })
    }
}

/// The ids of a job's trace, kept in its record: the trace, the job's own
/// span, and the caller's span it hangs under (the CLI that submitted it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTrace {
    /// `traceparent` of the job's span.
    pub job: String,
    /// `traceparent` of the span that submitted the job, when the caller
    /// sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl JobTrace {
    /// A job's trace, under the caller's span when there is one.
    pub fn start(caller: Option<SpanRef>) -> Self {
        let job = match caller {
            Some(caller) => caller.new_child(),
            None => SpanRef::root(),
        };
        Self {
            job: job.traceparent(),
            caller: caller.map(|c| c.traceparent()),
        }
    }

    /// The job's span.
    pub fn span(&self) -> Option<SpanRef> {
        SpanRef::from_traceparent(&self.job)
    }

    pub fn caller(&self) -> Option<SpanRef> {
        self.caller.as_deref().and_then(SpanRef::from_traceparent)
    }

    /// The span of a phase's run (`planning`, `copying`, …) that started
    /// at `started_unix_ms`: a phase runs again after a takeover.
    pub fn phase(&self, phase: &str, started_unix_ms: u64) -> Option<SpanRef> {
        self.span()
            .map(|job| job.child(&["phase", phase, &started_unix_ms.to_string()]))
    }
}

/// A planned table's span within the copy's, parent of its partitions':
/// named by the table and its first partition, since several source
/// tables may land in one table.
pub fn table(copying: SpanRef, table: &str, first_partition: u32) -> SpanRef {
    copying.child(&["table", table, &first_partition.to_string()])
}

thread_local! {
    /// The ids the next span built on this thread takes (see [`Ids`]).
    static NEXT_IDS: Cell<Option<SpanRef>> = const { Cell::new(None) };
}

/// Hands the SDK the ids [`emit`] chose; random ids otherwise. The SDK
/// asks for them while it builds a span, on the calling thread.
#[derive(Debug, Default)]
struct Ids(RandomIdGenerator);

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS
            .with(|next| next.get())
            .map_or_else(|| self.0.new_trace_id(), |ids| ids.trace)
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS
            .with(|next| next.get())
            .map_or_else(|| self.0.new_span_id(), |ids| ids.span)
    }
}

/// One finished piece of work, as a span.
pub struct Done<'a> {
    pub name: &'a str,
    pub span: SpanRef,
    /// `None` for the root of the trace.
    pub parent: Option<SpanRef>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// What went wrong, for a span that ended in an error.
    pub error: Option<String>,
}

/// The process's tracer, once it exports spans: without it, [`emit`]
/// returns at once (it runs once per chunk stage).
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::SdkTracer> =
    std::sync::OnceLock::new();

/// Whether this process exports spans: callers skip building what they
/// would send when it does not.
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// Sends `done` to the process's trace pipeline; nothing when there is
/// none.
pub fn emit(done: Done<'_>) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    let parent = match done.parent {
        Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
            parent.trace,
            parent.span,
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let builder = tracer
        .span_builder(done.name.to_owned())
        .with_kind(SpanKind::Internal)
        .with_start_time(done.start)
        .with_attributes(done.attributes);
    NEXT_IDS.with(|next| next.set(Some(done.span)));
    let mut span = tracer.build_with_context(builder, &parent);
    NEXT_IDS.with(|next| next.set(None));
    if let Some(error) = done.error {
        span.set_status(Status::error(error));
    }
    span.end_with_timestamp(done.end.max(done.start));
}

/// The time `unix_ms` milliseconds after the Unix epoch.
pub fn at_unix_ms(unix_ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms)
}

/// The process's trace pipeline; dropping it sends what is pending.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Exports spans over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (batched, `OTEL_BSP_*`
/// honoured; TLS as `otlp_tls` reads it); `None` otherwise, and spans cost
/// nothing. TLS material that does not load is an error: spans asked for
/// over TLS are never sent in the clear. Call from inside the tokio
/// runtime: the exporter's channel lives on it.
pub fn init_traces(service: &'static str) -> crate::Result<Option<Traces>> {
    let wanted = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if !wanted {
        return Ok(None);
    }
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(tls) = super::otlp_tls::config("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")? {
        builder = builder.with_tls_config(tls);
    }
    let exporter = match builder.build() {
        Ok(exporter) => exporter,
        Err(e) => {
            tracing::warn!(error = %e, "traces not exported: cannot build the OTLP exporter");
            return Ok(None);
        }
    };
    // A copy sends five spans a chunk: room for bursts beyond the
    // standard 2,048 before spans are dropped, unless the operator says.
    let mut batching = BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        batching = batching.with_max_queue_size(32_768);
    }
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batching.build())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .with_id_generator(Ids::default())
        .with_span_processor(processor)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = TRACER.set(provider.tracer("godwit"));
    tracing::info!("exporting traces over OTLP");
    Ok(Some(Traces { provider }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_and_junk_does_not() {
        let span = SpanRef::root();
        assert_eq!(SpanRef::from_traceparent(&span.traceparent()), Some(span));
        for junk in [
            "",
            "00-abc-def-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert_eq!(SpanRef::from_traceparent(junk), None, "{junk}");
        }
    }

    #[test]
    fn named_children_are_stable_and_distinct() {
        let trace = JobTrace::start(Some(SpanRef::root()));
        let job = trace.span().expect("the job's span");
        assert_eq!(job.trace, trace.caller().expect("caller").trace);
        let copying = trace.phase("copying", 7).expect("a phase");
        assert_eq!(trace.phase("copying", 7), Some(copying));
        assert_ne!(trace.phase("copying", 8), Some(copying), "a later run");
        assert_ne!(trace.phase("planning", 7), Some(copying));
        assert_eq!(table(copying, "public.a", 1), table(copying, "public.a", 1));
        assert_ne!(table(copying, "public.a", 1), table(copying, "public.b", 1));
        assert_ne!(
            table(copying, "public.a", 1),
            table(copying, "public.a", 4),
            "two sources landing in one table"
        );
        assert_eq!(table(copying, "public.a", 1).trace, job.trace, "one trace");
    }
}
