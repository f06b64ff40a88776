//! Per-service concurrency limit: how many requests may be in flight to a service, and how many
//! may wait for a slot (Envoy's `max_requests` / `max_pending_requests`).
//!
//! This is not the breaker (see `breaker`): the breaker ejects single endpoints that fail, the
//! limit protects the whole service from more work than it was sized for. A request takes a
//! [`Permit`] before it is sent and gives it back by dropping it. When all `max_concurrent`
//! permits are out, up to `max_pending` requests wait (first come, first served) for one, each
//! for at most its own `wait_up_to`; anyone beyond that is refused at once. A refusal is an
//! [`Overflow`] whose text names the limit that was hit, so an operator knows what to raise.
//!
//! No sockets, no HTTP: the caller maps an `Overflow` to its 503. It stays in the sidecar rather
//! than in `mesh_policy` because it waits: the slots are a fair tokio semaphore and the wait a
//! tokio timeout, and the decision (free slot, place in line, or refusal) is made by them. What
//! is left without tokio, the [`Overflow`] refusal and the [`LimitSnapshot`] counters, is data
//! rather than a policy.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The concurrency limit of one service, shared by every request to it.
///
/// No lock: the permits are a fair (FIFO) `tokio` semaphore, so a newcomer cannot take a permit
/// ahead of a request already waiting, and the counters are atomics. Taking a free permit is one
/// atomic compare-and-swap plus an `Arc` clone; nothing allocates until a request has to wait.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    service: Arc<str>,
    max_concurrent: u32,
    max_pending: u32,
    permits: Arc<Semaphore>,
    pending: AtomicU32,
    overflows: AtomicU64,
}

/// The right to have one request in flight; released when dropped.
#[derive(Debug)]
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overflow {
    /// Every slot was taken and the waiting line was full (or `max_pending` is 0): refused at
    /// once.
    Pending {
        service: Arc<str>,
        in_flight: u32,
        max_concurrent: u32,
        waiting: u32,
        max_pending: u32,
    },
    /// Waited `waited` in line and no slot came free.
    PendingTimeout {
        service: Arc<str>,
        in_flight: u32,
        max_concurrent: u32,
        max_pending: u32,
        waited: Duration,
    },
}

/// The limit as the admin port shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitSnapshot {
    pub in_use: u32,
    pub max_concurrent: u32,
    pub pending: u32,
    pub max_pending: u32,
    pub overflows_total: u64,
}

impl ConcurrencyLimit {
    /// At most `max_concurrent` requests in flight to `service` and `max_pending` waiting for a
    /// slot (0: never wait). A `max_concurrent` of 0 refuses everything.
    pub fn new(service: impl Into<Arc<str>>, max_concurrent: u32, max_pending: u32) -> Self {
        ConcurrencyLimit {
            service: service.into(),
            max_concurrent,
            max_pending,
            permits: Arc::new(Semaphore::new(max_concurrent as usize)),
            pending: AtomicU32::new(0),
            overflows: AtomicU64::new(0),
        }
    }

    /// The limit a routing table sets for `service` (`breaker.max_concurrent`, `max_pending`).
    pub fn from_table(service: impl Into<Arc<str>>, breaker: &mesh_table::Breaker) -> Self {
        ConcurrencyLimit::new(service, breaker.max_concurrent, breaker.max_pending)
    }

    /// Takes a permit at once if one is free. Otherwise, if fewer than `max_pending` requests
    /// are waiting, waits in line up to `wait_up_to` for one ([`Overflow::PendingTimeout`] if
    /// none came); else refuses at once ([`Overflow::Pending`]). Dropping the future leaves the
    /// line cleanly.
    pub async fn acquire(&self, wait_up_to: Duration) -> Result<Permit, Overflow> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(Permit { _permit: permit });
        }
        let Some(_in_line) = self.enter_line() else {
            self.overflows.fetch_add(1, Ordering::Relaxed);
            return Err(Overflow::Pending {
                service: self.service.clone(),
                in_flight: self.in_use(),
                max_concurrent: self.max_concurrent,
                waiting: self.pending(),
                max_pending: self.max_pending,
            });
        };
        match tokio::time::timeout(wait_up_to, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Permit { _permit: permit }),
            // `Err(_)` from `acquire_owned` means the semaphore was closed, which this type never
            // does; treat it like the wait running out rather than panicking on the request path.
            Ok(Err(_)) | Err(_) => {
                self.overflows.fetch_add(1, Ordering::Relaxed);
                Err(Overflow::PendingTimeout {
                    service: self.service.clone(),
                    in_flight: self.in_use(),
                    max_concurrent: self.max_concurrent,
                    max_pending: self.max_pending,
                    waited: wait_up_to,
                })
            }
        }
    }

    /// Requests holding a permit now.
    pub fn in_use(&self) -> u32 {
        let free = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        self.max_concurrent.saturating_sub(free)
    }

    /// Requests waiting for a permit now.
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Requests refused since start, for either reason.
    pub fn overflows_total(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// The counters and limits, for the admin port.
    pub fn snapshot(&self) -> LimitSnapshot {
        LimitSnapshot {
            in_use: self.in_use(),
            max_concurrent: self.max_concurrent,
            pending: self.pending(),
            max_pending: self.max_pending,
            overflows_total: self.overflows_total(),
        }
    }

    /// Takes a place in the waiting line if fewer than `max_pending` are in it.
    fn enter_line(&self) -> Option<InLine<'_>> {
        self.pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_pending).then_some(n + 1)
            })
            .ok()
            .map(|_| InLine(&self.pending))
    }
}

/// A place in the waiting line, given up on drop: on a permit, on timeout, or when the waiting
/// request is cancelled.
struct InLine<'a>(&'a AtomicU32);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Overflow {
    /// The `x-mesh-error` style token.
    pub fn as_str(&self) -> &'static str {
        match self {
            Overflow::Pending { .. } => "overflow-concurrent",
            Overflow::PendingTimeout { .. } => "overflow-pending-timeout",
        }
    }

    /// The service whose limit was hit.
    pub fn service(&self) -> &str {
        match self {
            Overflow::Pending { service, .. } | Overflow::PendingTimeout { service, .. } => service,
        }
    }
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overflow::Pending {
                service,
                in_flight,
                max_concurrent,
                waiting,
                max_pending,
            } => {
                write!(
                    f,
                    "service {service}: {in_flight} requests in flight, limit max_concurrent = \
                     {max_concurrent}; "
                )?;
                if *max_pending == 0 {
                    write!(f, "0 may wait (max_pending)")
                } else {
                    write!(
                        f,
                        "{waiting} already waiting, limit max_pending = {max_pending}"
                    )
                }
            }
            Overflow::PendingTimeout {
                service,
                in_flight,
                max_concurrent,
                max_pending,
                waited,
            } => write!(
                f,
                "service {service}: {in_flight} requests in flight, limit max_concurrent = \
                 {max_concurrent}; waited {} for a slot as one of max_pending = {max_pending}",
                humantime::format_duration(*waited)
            ),
        }
    }
}

impl std::error::Error for Overflow {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_millis(500);

    /// Takes `n` permits that are free right now.
    async fn take(limit: &ConcurrencyLimit, n: u32) -> Vec<Permit> {
        let mut held = Vec::new();
        for i in 0..n {
            let p = limit.acquire(Duration::ZERO).await;
            held.push(p.unwrap_or_else(|e| panic!("permit {i} of {n} should be free: {e}")));
        }
        held
    }

    /// Lets spawned tasks run until `pending()` reaches `n`.
    async fn until_pending(limit: &ConcurrencyLimit, n: u32) {
        for _ in 0..100 {
            if limit.pending() == n {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("expected {n} waiting, have {}", limit.pending());
    }

    #[tokio::test(start_paused = true)]
    async fn the_eleventh_request_overflows_at_once_without_a_waiting_line() {
        let limit = ConcurrencyLimit::new("b", 10, 0);
        let held = take(&limit, 10).await;
        assert_eq!(limit.in_use(), 10, "all ten slots taken");

        let start = Instant::now();
        let err = limit
            .acquire(WAIT)
            .await
            .expect_err("the 11th has no slot and may not wait");
        assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
        assert_eq!(err.as_str(), "overflow-concurrent", "token");
        assert_eq!(
            err.to_string(),
            "service b: 10 requests in flight, limit max_concurrent = 10; 0 may wait (max_pending)",
            "the message names the limit"
        );
        assert_eq!(limit.overflows_total(), 1, "counted");

        drop(held);
        assert_eq!(
            limit.in_use(),
            0,
            "dropping permits frees the slots at once"
        );
        let _p = limit
            .acquire(Duration::ZERO)
            .await
            .expect("a slot is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn two_wait_for_slots_and_a_third_is_refused() {
        let limit = Arc::new(ConcurrencyLimit::new("b", 10, 2));
        let mut held = take(&limit, 10).await;

        let waiter = |limit: Arc<ConcurrencyLimit>| {
            tokio::spawn(async move { limit.acquire(Duration::from_secs(5)).await })
        };
        let first = waiter(limit.clone());
        until_pending(&limit, 1).await;
        let second = waiter(limit.clone());
        until_pending(&limit, 2).await;

        let err = limit
            .acquire(WAIT)
            .await
            .expect_err("the line is full: refused at once");
        assert_eq!(err.as_str(), "overflow-concurrent", "token");
        assert_eq!(
            err.to_string(),
            "service b: 10 requests in flight, limit max_concurrent = 10; 2 already waiting, \
             limit max_pending = 2",
            "the message names the waiting limit"
        );

        drop(held.pop());
        let first = first
            .await
            .expect("task")
            .expect("the first waiter gets the freed slot");
        assert_eq!(limit.in_use(), 10, "the slot passed straight to the waiter");
        assert_eq!(limit.pending(), 1, "one still waiting");

        drop(held.pop());
        let second = second
            .await
            .expect("task")
            .expect("the second waiter gets the next one");
        assert_eq!(limit.pending(), 0, "nobody waiting");
        assert_eq!(limit.in_use(), 10, "still full");
        assert_eq!(limit.overflows_total(), 1, "only the third was refused");

        drop((first, second, held));
        assert_eq!(limit.in_use(), 0, "everything released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_past_its_wait_overflows() {
        let limit = ConcurrencyLimit::new("b", 1, 2);
        let _held = take(&limit, 1).await;

        let start = Instant::now();
        let err = limit
            .acquire(Duration::from_millis(250))
            .await
            .expect_err("no slot frees up");
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(250),
            "it waited exactly its wait"
        );
        assert_eq!(err.as_str(), "overflow-pending-timeout", "token");
        assert_eq!(
            err.to_string(),
            "service b: 1 requests in flight, limit max_concurrent = 1; waited 250ms for a slot \
             as one of max_pending = 2",
            "the message names the limits and the wait"
        );
        assert_eq!(limit.pending(), 0, "it left the line");
        assert_eq!(limit.overflows_total(), 1, "counted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_the_line() {
        let limit = Arc::new(ConcurrencyLimit::new("b", 1, 1));
        let held = take(&limit, 1).await;

        let l = limit.clone();
        let waiter = tokio::spawn(async move { l.acquire(Duration::from_secs(5)).await });
        until_pending(&limit, 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(limit.pending(), 0, "the cancelled waiter gave up its place");

        drop(held);
        assert_eq!(limit.in_use(), 0, "the freed slot went to nobody");
        assert_eq!(limit.overflows_total(), 0, "a cancellation is no overflow");
    }

    #[test]
    fn the_table_sets_both_limits() {
        let table = mesh_table::Breaker {
            max_concurrent: 7,
            max_pending: 3,
            ..Default::default()
        };
        let snap = ConcurrencyLimit::from_table("b", &table).snapshot();
        assert_eq!(
            (snap.max_concurrent, snap.max_pending),
            (7, 3),
            "both limits come from the table"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_counts_right_after_drops() {
        let limit = ConcurrencyLimit::new("b", 3, 1);
        let mut held = take(&limit, 3).await;
        let _ = limit.acquire(Duration::from_millis(10)).await;
        drop(held.pop());

        let snap = limit.snapshot();
        assert_eq!(
            snap,
            LimitSnapshot {
                in_use: 2,
                max_concurrent: 3,
                pending: 0,
                max_pending: 1,
                overflows_total: 1,
            },
            "two held, one dropped, one timed out"
        );
        assert_eq!(
            serde_json::to_value(snap).expect("serializes"),
            serde_json::json!({
                "in_use": 2, "max_concurrent": 3, "pending": 0, "max_pending": 1,
                "overflows_total": 1,
            }),
            "the admin port's shape"
        );
    }
}
