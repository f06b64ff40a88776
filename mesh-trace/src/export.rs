//! The export path: a bounded queue between the spans' ends and one exporting thread.
//!
//! [`QueueProcessor`] is the `SpanProcessor` the tracer provider calls when a sampled span
//! ends. It only `try_send`s the span into a bounded channel: when the queue is full the span is
//! dropped and counted (`meshlab_trace_spans_dropped_total`), so a slow or absent collector
//! never blocks or slows a request. One thread of its own, with a small current-thread tokio
//! runtime, takes spans off the queue, batches them (up to [`MAX_BATCH`] spans, or whatever
//! arrived within [`BATCH_DELAY`]) and sends each batch with the OTLP/HTTP exporter.
//! `force_flush` and `shutdown` send a marker through the same queue and wait for it, so every
//! span queued before them is exported first.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tokio::runtime::Runtime;

/// Spans held at most while waiting for export.
pub const QUEUE: usize = 4096;
/// Spans per OTLP request at most.
pub const MAX_BATCH: usize = 512;
/// How long a span waits for companions before its batch goes.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);

enum Msg {
    Span(Box<SpanData>),
    Resource(Resource),
    /// Export everything before this marker, then answer.
    Flush(mpsc::Sender<()>),
    /// Flush, then stop the thread.
    Shutdown(mpsc::Sender<()>),
}

/// Counters of the export path, registered in the process's Prometheus registry.
#[derive(Clone, Debug)]
pub struct ExportMetrics {
    pub dropped: IntCounter,
    pub exported: IntCounter,
    pub failed: IntCounter,
}

impl ExportMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<ExportMetrics> {
        let c = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(ExportMetrics {
            dropped: c(
                "meshlab_trace_spans_dropped_total",
                "Sampled spans dropped because the export queue was full.",
            )?,
            exported: c(
                "meshlab_trace_spans_exported_total",
                "Spans the OTLP collector accepted.",
            )?,
            failed: c(
                "meshlab_trace_spans_failed_total",
                "Spans lost because their OTLP export failed (collector down or refusing).",
            )?,
        })
    }
}

/// The span processor: a bounded queue in front of one exporting thread.
#[derive(Debug)]
pub struct QueueProcessor {
    tx: SyncSender<Msg>,
    metrics: ExportMetrics,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl QueueProcessor {
    /// Starts the exporting thread, which owns `exporter`.
    pub fn start<E>(metrics: ExportMetrics, exporter: E) -> std::io::Result<QueueProcessor>
    where
        E: SpanExporter + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                run(rx, exporter, m, rt);
            })?;
        Ok(QueueProcessor { tx, metrics })
    }

    fn control(
        &self,
        make: impl FnOnce(mpsc::Sender<()>) -> Msg,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (done_tx, done_rx) = mpsc::channel();
        // Off the data path: waiting for room in the queue is fine here.
        self.tx
            .send(make(done_tx))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        done_rx
            .recv_timeout(timeout)
            .map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped.inc()
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Msg::Flush, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.control(Msg::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // The provider calls this once, before any span: the queue is empty.
        let _ = self.tx.try_send(Msg::Resource(resource.clone()));
    }
}

async fn export<E: SpanExporter>(exporter: &E, batch: &mut Vec<SpanData>, m: &ExportMetrics) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    match exporter.export(std::mem::take(batch)).await {
        Ok(()) => m.exported.inc_by(n),
        Err(e) => {
            m.failed.inc_by(n);
            tracing::warn!(spans = n, error = %e, "OTLP export failed; spans lost");
        }
    }
}

/// The exporting loop, on the thread of its own: gathers a batch until it is full or
/// [`BATCH_DELAY`] after its first span, and runs each export on the thread's runtime.
fn run<E: SpanExporter>(rx: Receiver<Msg>, mut exporter: E, m: ExportMetrics, rt: Runtime) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut first: Option<Instant> = None;
    let flush = |exporter: &E, batch: &mut Vec<SpanData>| rt.block_on(export(exporter, batch, &m));
    loop {
        let wait = first.map_or(Duration::from_secs(3600), |t| {
            BATCH_DELAY.saturating_sub(t.elapsed())
        });
        let msg = match rx.recv_timeout(wait) {
            Ok(msg) => msg,
            Err(RecvTimeoutError::Timeout) => {
                flush(&exporter, &mut batch);
                first = None;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush(&exporter, &mut batch);
                return;
            }
        };
        match msg {
            Msg::Span(s) => {
                batch.push(*s);
                first.get_or_insert_with(Instant::now);
                if batch.len() >= MAX_BATCH {
                    flush(&exporter, &mut batch);
                    first = None;
                }
            }
            Msg::Resource(r) => exporter.set_resource(&r),
            Msg::Flush(done) => {
                flush(&exporter, &mut batch);
                first = None;
                let _ = done.send(());
            }
            Msg::Shutdown(done) => {
                flush(&exporter, &mut batch);
                let _ = exporter.shutdown();
                let _ = done.send(());
                return;
            }
        }
    }
}
