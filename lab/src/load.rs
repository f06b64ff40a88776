//! Open-loop load: requests are due by the clock (`n / rps` seconds after the start), not by
//! responses, so a slow mesh gets the same offered load as a fast one and its slowness shows
//! in the latencies instead of silently lowering the rate.
//!
//! The loop sleeps until the next request is due, then sends every request due by now. After a
//! stall (the timer fired late) the missed requests are sent in a burst, like tokio's
//! `MissedTickBehavior::Burst`. A due request that finds `--concurrency` requests in flight is
//! not sent and counts as failed with reason `overload-local`: the load generator, not the
//! mesh, was the limit.
//!
//! Requests go to `http://<entry>/` through the client sidecar's outbound listener used as an
//! HTTP proxy (absolute-form request line, as the apps' own downstream calls do).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::headers::X_MESH_ERROR;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::stats::{live_line, Outcome, Recorder, Tally, OVERLOAD_LOCAL, UNFINISHED};

/// How long in-flight requests may finish after the last one was due, by default.
pub const DRAIN: Duration = Duration::from_secs(5);

/// When each request is due.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    rps: u64,
    /// Requests in the whole run (`None`: until stopped).
    total: Option<u64>,
}

const NANOS: u128 = 1_000_000_000;

impl Pacer {
    /// `rps` requests per second for `duration` (or forever).
    pub fn new(rps: u32, duration: Option<Duration>) -> Pacer {
        let rps = u64::from(rps.max(1));
        // Requests due strictly before the end: n / rps < duration.
        let total = duration.map(|d| {
            let n = d.as_nanos() * u128::from(rps);
            u64::try_from(n.div_ceil(NANOS)).unwrap_or(u64::MAX)
        });
        Pacer { rps, total }
    }

    /// How many requests the whole run has, if it has an end.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// When request `n` (0-based) is due, from the start; rounded up, so that at that instant
    /// [`Pacer::due`] counts it.
    pub fn send_time(&self, n: u64) -> Duration {
        let nanos = (u128::from(n) * NANOS).div_ceil(u128::from(self.rps));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many requests are due `elapsed` after the start (the first one is due at 0).
    pub fn due(&self, elapsed: Duration) -> u64 {
        let n = elapsed.as_nanos() * u128::from(self.rps) / NANOS + 1;
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.total.map_or(n, |t| n.min(t))
    }
}

/// What the load run needs.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The client sidecar's outbound listener.
    pub proxy: SocketAddr,
    /// The entry service: requests are `GET http://<entry>/`.
    pub entry: String,
    pub rps: u32,
    pub concurrency: u32,
    pub duration: Option<Duration>,
    pub request_timeout: Duration,
    /// How long requests in flight may finish once the load stops ([`DRAIN`]).
    pub drain: Duration,
    /// Print a live line to stderr every second.
    pub live: bool,
}

/// How the load run ended.
pub struct LoadResult {
    pub total: Tally,
    /// How long requests were being sent.
    pub elapsed: Duration,
    pub interrupted: bool,
}

/// Sends load until `duration` passes or `stop` resolves, waits up to `drain` for requests in
/// flight (counting those still unanswered as [`UNFINISHED`]), and returns the tally.
pub async fn run(cfg: &LoadConfig, stop: impl Future<Output = ()>) -> LoadResult {
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(format!("http://{}", cfg.proxy))
                .expect("a socket address is a valid proxy URL"),
        )
        .timeout(cfg.request_timeout)
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(cfg.concurrency as usize)
        .build()
        .expect("a plain HTTP client builds");
    let url = format!("http://{}/", cfg.entry);
    let recorder = Arc::new(Recorder::default());
    let slots = Arc::new(Semaphore::new(cfg.concurrency as usize));
    let (abort_tx, abort_rx) = watch::channel(false);
    let pacer = Pacer::new(cfg.rps, cfg.duration);

    let start = Instant::now();
    let reporter = cfg
        .live
        .then(|| tokio::spawn(report_every_second(recorder.clone(), start)));

    tokio::pin!(stop);
    let mut issued = 0u64;
    let mut interrupted = false;
    loop {
        let due = pacer.due(start.elapsed());
        while issued < due {
            issued += 1;
            match slots.clone().try_acquire_owned() {
                Err(_) => recorder.record(Outcome::failed(OVERLOAD_LOCAL, None)),
                Ok(permit) => {
                    let (client, url, recorder) = (client.clone(), url.clone(), recorder.clone());
                    let mut abort = abort_rx.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let t0 = Instant::now();
                        let outcome = tokio::select! {
                            r = send(&client, &url) => classify(r, t0.elapsed()),
                            _ = abort.wait_for(|a| *a) => Outcome::failed(UNFINISHED, None),
                        };
                        recorder.record(outcome);
                    });
                }
            }
        }
        if pacer.total() == Some(issued) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(start + pacer.send_time(issued)) => {}
            _ = &mut stop => {
                interrupted = true;
                break;
            }
        }
    }
    let elapsed = match (interrupted, cfg.duration) {
        (false, Some(d)) => d,
        _ => start.elapsed(),
    };

    // Drain: let requests in flight finish, then give up on the rest.
    let all = cfg.concurrency;
    if tokio::time::timeout(cfg.drain, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            "{} request(s) still in flight {:?} after the load stopped: counted as {UNFINISHED}",
            all as usize - slots.available_permits(),
            cfg.drain
        );
        let _ = abort_tx.send(true);
        let _ = slots.acquire_many(all).await;
    }
    if let Some(r) = reporter {
        r.abort();
    }
    LoadResult {
        total: recorder.total(),
        elapsed,
        interrupted,
    }
}

/// The status, the `x-mesh-error` header if the sidecar made the response, after reading the
/// whole body.
async fn send(
    client: &reqwest::Client,
    url: &str,
) -> Result<(reqwest::StatusCode, Option<String>), reqwest::Error> {
    let resp = client.get(url).send().await?;
    let status = resp.status();
    let mesh_error = resp
        .headers()
        .get(X_MESH_ERROR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    resp.bytes().await?;
    Ok((status, mesh_error))
}

fn classify(
    r: Result<(reqwest::StatusCode, Option<String>), reqwest::Error>,
    latency: Duration,
) -> Outcome {
    match r {
        Ok((s, _)) if s.is_success() => Outcome::Ok { latency },
        Ok((s, None)) => Outcome::failed(s.as_u16().to_string(), Some(latency)),
        Ok((s, Some(why))) => Outcome::failed(format!("{} {why}", s.as_u16()), Some(latency)),
        Err(e) if e.is_timeout() => Outcome::failed("timeout", Some(latency)),
        Err(e) if e.is_connect() => Outcome::failed("connect-error", Some(latency)),
        Err(e) => {
            tracing::debug!("load request failed: {}", crate::mesh::error_chain(&e));
            Outcome::failed("transport-error", Some(latency))
        }
    }
}

async fn report_every_second(recorder: Arc<Recorder>, start: Instant) {
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = start;
    loop {
        let now = tick.tick().await;
        let window = recorder.take_window();
        eprintln!("{}", live_line(now - start, &window, now - last));
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_run_sends_rps_times_duration() {
        let p = Pacer::new(100, Some(Duration::from_secs(5)));
        assert_eq!(p.total(), Some(500), "100 rps for 5 s");
        assert_eq!(
            p.due(Duration::from_secs(60)),
            500,
            "never more than the total, however late"
        );
        let p = Pacer::new(3, Some(Duration::from_millis(1_500)));
        assert_eq!(
            p.total(),
            Some(5),
            "due at 0, 1/3, 2/3, 1, 4/3 s: before 1.5 s"
        );
        assert_eq!(Pacer::new(7, None).total(), None, "no duration, no end");
    }

    #[test]
    fn requests_are_due_on_the_clock() {
        let p = Pacer::new(200, None);
        assert_eq!(p.due(Duration::ZERO), 1, "the first request is due at once");
        assert_eq!(
            p.due(Duration::from_micros(4_999)),
            1,
            "the second not before 5 ms"
        );
        assert_eq!(p.due(Duration::from_millis(5)), 2, "the second at 5 ms");
        assert_eq!(
            p.due(Duration::from_secs(1)),
            201,
            "200 per second after the first"
        );
        assert_eq!(
            p.send_time(200),
            Duration::from_secs(1),
            "request 200 at 1 s"
        );
    }

    #[test]
    fn each_request_is_due_at_its_send_time_for_awkward_rates() {
        // send_time rounds up: waking at send_time(n) must make request n due, or the loop
        // would spin until the next nanosecond.
        for rps in [1, 3, 7, 200, 333, 999, 12_345, 100_000] {
            let p = Pacer::new(rps, None);
            for n in [0, 1, 2, 10, 99, 1_000, 123_457] {
                let t = p.send_time(n);
                assert!(
                    p.due(t) > n,
                    "rps {rps}: request {n} due at its send time {t:?}"
                );
                if n > 0 {
                    let before = t - Duration::from_nanos(1);
                    assert!(
                        p.due(before) <= n,
                        "rps {rps}: request {n} not due 1 ns before {t:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn statuses_and_sidecar_errors_are_classified() {
        let l = Duration::from_millis(1);
        assert_eq!(
            classify(Ok((reqwest::StatusCode::OK, None)), l),
            Outcome::Ok { latency: l },
            "200 is ok"
        );
        assert_eq!(
            classify(Ok((reqwest::StatusCode::SERVICE_UNAVAILABLE, None)), l),
            Outcome::failed("503", Some(l)),
            "an app's 503"
        );
        assert_eq!(
            classify(
                Ok((
                    reqwest::StatusCode::SERVICE_UNAVAILABLE,
                    Some("no-healthy-endpoint".into())
                )),
                l
            ),
            Outcome::failed("503 no-healthy-endpoint", Some(l)),
            "a sidecar's 503 names its reason"
        );
    }

    #[tokio::test]
    async fn overload_is_counted_when_nothing_answers() {
        // A listener that accepts but never answers: every request stays in flight, so with
        // concurrency 2 the rest are overload-local, and the in-flight ones are unfinished
        // once the (short) drain gives up.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let proxy = listener.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let cfg = LoadConfig {
            proxy,
            entry: "a".into(),
            rps: 100,
            concurrency: 2,
            duration: Some(Duration::from_millis(100)),
            request_timeout: Duration::from_secs(30),
            drain: Duration::from_millis(200),
            live: false,
        };
        let r = run(&cfg, std::future::pending()).await;
        hold.abort();
        assert_eq!(
            r.total.requests(),
            10,
            "100 rps for 100 ms: {:?}",
            r.total.errors
        );
        assert_eq!(r.total.ok, 0, "nothing answered");
        assert_eq!(
            r.total.errors.get(OVERLOAD_LOCAL),
            Some(&8),
            "8 found both slots taken: {:?}",
            r.total.errors
        );
        assert_eq!(
            r.total.errors.get(UNFINISHED),
            Some(&2),
            "2 were in flight at the end: {:?}",
            r.total.errors
        );
        assert!(!r.interrupted, "the run ended by its duration");
    }

    #[tokio::test]
    async fn a_stop_signal_ends_an_endless_run() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cfg = LoadConfig {
            proxy: listener.local_addr().expect("addr"),
            entry: "a".into(),
            rps: 50,
            concurrency: 1,
            duration: None,
            request_timeout: Duration::from_millis(200),
            drain: Duration::from_secs(2),
            live: false,
        };
        drop(listener); // connections are refused: quick failures
        let r = run(&cfg, tokio::time::sleep(Duration::from_millis(300))).await;
        assert!(r.interrupted, "the stop future ended the run");
        assert!(
            r.total.requests() >= 5,
            "about 15 requests were due in 300 ms: {}",
            r.total.requests()
        );
        assert_eq!(r.total.ok, 0, "nothing listens");
    }
}
