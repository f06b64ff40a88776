//! Retry policy: whether a failed attempt is tried again, and when.
//!
//! Everything here is pure policy, in the manner of linkerd2-proxy: no I/O, no sockets, no HTTP
//! types, no clock and no random source of its own. A response (or the lack of one) is classified
//! once into an [`Outcome`]; [`decide`] turns that outcome, the facts about the request and the
//! service's [`RetryBudget`] into "retry" or one [`Refusal`] (a metrics label); [`backoff`] and
//! [`parse_retry_after`] / [`retry_delay`] say how long to wait before the next attempt. Every
//! time-dependent method takes `now`, and jitter is passed in as a number in `[0, 1)`, so tests
//! drive time by hand and are deterministic. The sidecar's Pingora phases are the wiring: they
//! classify, call [`decide`], sleep, and pick another endpoint.
//!
//! Hot-path functions ([`decide`], [`backoff`], [`RetryBudget::on_request`],
//! [`RetryBudget::try_withdraw`]) neither allocate nor log.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use mesh_table::{Retries, RetryOn};
use serde::Serialize;

// ---------------------------------------------------------------------------------------------
// Backoff

/// The un-jittered wait before retry number `retry_number` (1 for the first retry):
/// `min(cap, base * 2^(retry_number - 1))`.
///
/// Overflow-safe: any retry number large enough to overflow gives `cap`. A `retry_number` of 0 is
/// treated as 1.
pub fn backoff_ceiling(retry_number: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = retry_number.saturating_sub(1);
    let grown = 1u32
        .checked_shl(doublings)
        .and_then(|factor| base.checked_mul(factor))
        .unwrap_or(cap);
    grown.min(cap)
}

/// The wait before retry number `retry_number` (1 for the first retry): exponential backoff with
/// full jitter (the AWS "Exponential Backoff And Jitter" scheme),
/// `backoff_ceiling(retry_number, base, cap) * jitter`.
///
/// `jitter` is a uniform random number in `[0, 1)` drawn by the caller (e.g. `rng.random()`).
/// Values outside `[0, 1]` are clamped and NaN counts as 0. A jitter of 0 gives a wait of zero
/// (that is what makes tests deterministic); a jitter of 1 gives the ceiling.
pub fn backoff(retry_number: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    // The ceiling is finite and the factor in [0, 1], so `mul_f64` cannot overflow or panic.
    backoff_ceiling(retry_number, base, cap).mul_f64(jitter)
}

// ---------------------------------------------------------------------------------------------
// Retry-After

/// Parses a `Retry-After` field value (RFC 9110 §10.2.3) into how long the server asked us to wait.
///
/// The value is either delay-seconds (`120`) or an HTTP-date (IMF-fixdate,
/// `Sun, 06 Nov 1994 08:49:37 GMT`; the two obsolete formats RFC 9110 §5.6.7 tells recipients to
/// accept are accepted too). A date is turned into a delay against `now`; a date in the past gives
/// `Some(Duration::ZERO)`. Surrounding whitespace is ignored. Anything else (empty, negative,
/// fractional, garbage, not UTF-8) gives `None`: the header is then ignored. A delay too large for a
/// `u64` saturates.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = value.trim_ascii();
    if value.is_empty() {
        return None;
    }
    if value.iter().all(u8::is_ascii_digit) {
        let secs = value.iter().fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        });
        return Some(Duration::from_secs(secs));
    }
    let text = std::str::from_utf8(value).ok()?;
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// How long to wait before the next attempt, or `None`: do not retry.
///
/// `backoff` is our own wait (from [`backoff`]); `retry_after` what the server asked for (from
/// [`parse_retry_after`]); `cap` the longest the caller is willing to wait (the backoff cap, or what
/// is left of the request's deadline).
///
/// - No `Retry-After`: wait `backoff` (at most `cap`).
/// - `Retry-After` up to `cap`: honour it as a minimum, i.e. wait `max(retry_after, backoff)`, so a
///   server answering `Retry-After: 0` cannot switch our backoff off.
/// - `Retry-After` beyond `cap`: `None`. The server told us not to come back that soon and we will
///   not wait that long, so retrying early would only add load; the caller answers with the
///   response it has.
pub fn retry_delay(
    retry_after: Option<Duration>,
    backoff: Duration,
    cap: Duration,
) -> Option<Duration> {
    match retry_after {
        Some(asked) if asked > cap => None,
        Some(asked) => Some(asked.max(backoff).min(cap)),
        None => Some(backoff.min(cap)),
    }
}

// ---------------------------------------------------------------------------------------------
// Retry budget

/// How many buckets a budget's window is cut into.
const BUCKETS: usize = 10;
/// The ring holds one bucket more than the window; see [`RetryBudget`].
const RING: usize = BUCKETS + 1;

/// A parameter of [`RetryBudget::try_new`] that makes no sense.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidBudget {
    #[error("retry budget ratio must be a finite number >= 0, got {0}")]
    Ratio(f64),
    #[error("retry budget window must be at least {min:?}, got {got:?}")]
    Window { min: Duration, got: Duration },
}

/// A retry budget in the style of Linkerd's ServiceProfile `retryBudget`: retries may add at most
/// `ratio` × the requests of the last `window`, plus a floor of `min_per_s` retries a second that
/// is always allowed (so a service with little traffic can still retry).
///
/// One budget is shared by every request to one service, across threads: every method takes
/// `&self`.
///
/// **How it counts.** Time is cut into buckets of `window / 10`; each bucket counts the requests
/// deposited ([`on_request`](Self::on_request)) and the retries granted
/// ([`try_withdraw`](Self::try_withdraw)) in it. The window is the current bucket and the nine
/// before it; buckets are rotated lazily by the `now` each call passes, so a budget nobody uses
/// costs nothing. A retry is granted while `retries < floor(ratio × requests + min_per_s × window)`
/// over the window, *and* the same holds over the window plus the one bucket before it. The second
/// check closes the gap a bucketed window leaves: without it, the floor spent at the end of one
/// bucket would be spendable again as soon as that bucket leaves the window, less than a window
/// later, doubling `min_per_s` over some window-long interval. With it, for any interval
/// `[a, a + window)` and whatever the traffic:
/// `retries ≤ floor(ratio × requests in (a − window, a + window)) + min_per_s × window`.
///
/// The first `now` a budget sees is the origin of its buckets.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    /// `min_per_s × window`, in retries.
    reserve: f64,
    bucket_nanos: u128,
    // A `Mutex` and not atomics: rotating the ring must clear buckets and move the head as one
    // step, which lock-free code could only do with a CAS loop over several words. The lock is
    // held for a few adds over eleven buckets (tens of nanoseconds, no allocation, no syscall, no
    // `.await`), so even with every worker thread retrying at once the wait is negligible; an
    // uncontended `std` mutex is a single atomic swap.
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    /// The instant bucket 0 starts at; set by the first call.
    origin: Option<Instant>,
    /// The absolute number (since `origin`) of the current bucket.
    head: u64,
    /// Bucket `n` lives at `n % RING`.
    buckets: [Bucket; RING],
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    requests: u64,
    retries: u64,
}

/// What a [`RetryBudget`] counts over its window at one instant, for the admin port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetSnapshot {
    /// Requests deposited in the window.
    pub requests: u64,
    /// Retries granted in the window.
    pub retries: u64,
    /// Retries the window allows in all: `floor(ratio × requests + min_per_s × window)`.
    pub allowed: u64,
}

impl Default for RetryBudget {
    /// The table's default budget (Linkerd's): 20% extra load, at least 10 retries a second, over
    /// 10 s.
    fn default() -> Self {
        RetryBudget::from(&mesh_table::Budget::default())
    }
}

impl From<&mesh_table::Budget> for RetryBudget {
    /// The budget a service's table entry asks for. A compiled table has checked the values
    /// (ratio 0..=10, window of at least 1 s), so this cannot panic.
    fn from(b: &mesh_table::Budget) -> Self {
        RetryBudget::new(b.ratio, b.min_per_s, Duration::from_millis(b.window_ms))
    }
}

impl RetryBudget {
    /// The shortest window: ten buckets of one microsecond.
    pub const MIN_WINDOW: Duration = Duration::from_micros(BUCKETS as u64);

    /// A budget allowing retries of `ratio` × the requests of the last `window`, plus `min_per_s`
    /// retries a second.
    ///
    /// # Panics
    /// If `ratio` is negative, NaN or infinite, or `window` is shorter than
    /// [`MIN_WINDOW`](Self::MIN_WINDOW). Use [`try_new`](Self::try_new) for values from config.
    pub fn new(ratio: f64, min_per_s: u32, window: Duration) -> Self {
        match Self::try_new(ratio, min_per_s, window) {
            Ok(budget) => budget,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`new`](Self::new), returning what is wrong instead of panicking.
    pub fn try_new(ratio: f64, min_per_s: u32, window: Duration) -> Result<Self, InvalidBudget> {
        if !ratio.is_finite() || ratio < 0.0 {
            return Err(InvalidBudget::Ratio(ratio));
        }
        if window < Self::MIN_WINDOW {
            return Err(InvalidBudget::Window {
                min: Self::MIN_WINDOW,
                got: window,
            });
        }
        Ok(RetryBudget {
            ratio,
            reserve: f64::from(min_per_s) * window.as_secs_f64(),
            bucket_nanos: window.as_nanos() / BUCKETS as u128,
            ring: Mutex::new(Ring::default()),
        })
    }

    /// Counts one request (an original request, not a retry): it earns `ratio` retries for the
    /// next window.
    pub fn on_request(&self, now: Instant) {
        let mut ring = self.lock_at(now);
        let head = ring.head;
        ring.bucket_mut(head).requests += 1;
    }

    /// Asks for one retry. Granted (and counted) when the budget allows it, else refused and not
    /// counted.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut ring = self.lock_at(now);
        let (window, longer) = ring.sums();
        let granted = window.retries < self.allowed(window.requests)
            && longer.retries < self.allowed(longer.requests);
        if granted {
            let head = ring.head;
            ring.bucket_mut(head).retries += 1;
        }
        granted
    }

    /// What the budget counts over its window at `now`.
    pub fn snapshot(&self, now: Instant) -> BudgetSnapshot {
        let ring = self.lock_at(now);
        let (window, _) = ring.sums();
        BudgetSnapshot {
            requests: window.requests,
            retries: window.retries,
            allowed: self.allowed(window.requests),
        }
    }

    /// Retries allowed over an interval holding `requests` requests.
    fn allowed(&self, requests: u64) -> u64 {
        // f64 is exact for counts below 2^53; the float-to-int cast saturates.
        (self.ratio * requests as f64 + self.reserve).floor() as u64
    }

    /// Locks the ring and rotates it to `now`.
    fn lock_at(&self, now: Instant) -> std::sync::MutexGuard<'_, Ring> {
        // Nothing panics while the lock is held, and counts are valid whatever happened: a
        // poisoned lock is used as is.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let origin = *ring.origin.get_or_insert(now);
        let bucket = now.saturating_duration_since(origin).as_nanos() / self.bucket_nanos;
        ring.rotate_to(u64::try_from(bucket).unwrap_or(u64::MAX));
        ring
    }
}

impl Ring {
    fn bucket_mut(&mut self, n: u64) -> &mut Bucket {
        &mut self.buckets[(n % RING as u64) as usize]
    }

    /// Makes bucket `n` the current one, emptying the buckets it skips over. An `n` older than the
    /// current bucket (another thread read the clock later but locked first) counts in the current
    /// bucket.
    fn rotate_to(&mut self, n: u64) {
        if n <= self.head {
            return;
        }
        let skipped = (n - self.head).min(RING as u64);
        for k in 1..=skipped {
            let stale = self.head + k;
            *self.bucket_mut(stale) = Bucket::default();
        }
        self.head = n;
    }

    /// Sums over the window (the current bucket and the `BUCKETS - 1` before it) and over the
    /// window plus the bucket before it.
    fn sums(&self) -> (Bucket, Bucket) {
        let mut window = Bucket::default();
        for back in 0..BUCKETS as u64 {
            // Buckets before the origin were never written and are zero.
            let Some(n) = self.head.checked_sub(back) else {
                break;
            };
            let b = self.buckets[(n % RING as u64) as usize];
            window.requests += b.requests;
            window.retries += b.retries;
        }
        let mut longer = window;
        if let Some(n) = self.head.checked_sub(BUCKETS as u64) {
            let b = self.buckets[(n % RING as u64) as usize];
            longer.requests += b.requests;
            longer.retries += b.retries;
        }
        (window, longer)
    }
}

// ---------------------------------------------------------------------------------------------
// Classification and decision

/// Why a failed attempt is not retried; [`as_str`](Self::as_str) is its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The service's retry budget is spent.
    Budget,
    /// The attempts the policy allows are used up.
    Attempts,
    /// The request body was not kept whole (too large to buffer), so it cannot be sent again.
    BodyTooLarge,
    /// The request reached the app and its method is not idempotent.
    NotIdempotent,
    /// No time is left before the request's deadline.
    Deadline,
    /// The policy does not retry this outcome (or it was a success).
    NotRetriable,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Budget,
        Refusal::Attempts,
        Refusal::BodyTooLarge,
        Refusal::NotIdempotent,
        Refusal::Deadline,
        Refusal::NotRetriable,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Budget => "budget",
            Refusal::Attempts => "attempts",
            Refusal::BodyTooLarge => "body-too-large",
            Refusal::NotIdempotent => "not-idempotent",
            Refusal::Deadline => "deadline",
            Refusal::NotRetriable => "not-retriable",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one attempt ended: the one classification that retries, the breaker and metrics consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is a success (1xx to 3xx).
    Success,
    /// A response that is not a success (4xx, 5xx), with its status.
    Status(u16),
    /// No connection could be made: nothing reached the endpoint.
    ConnectFailure,
    /// The connection broke before the response (headers) arrived.
    Reset,
    /// The endpoint did not answer within the per-try timeout.
    Timeout,
}

impl Outcome {
    /// Classifies a response by its status: below 400 is a success, anything else a `Status`.
    pub fn of_status(status: u16) -> Outcome {
        if status < 400 {
            Outcome::Success
        } else {
            Outcome::Status(status)
        }
    }

    /// Whether this outcome counts as a failure of the endpoint for the circuit breaker: 5xx
    /// statuses, connect failures, resets and timeouts do; 4xx (the client's fault) and successes
    /// do not.
    pub fn is_failure_for_breaker(self) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Status(s) => (500..=599).contains(&s),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => true,
        }
    }

    /// Whether the policy lists this outcome as retriable (attempts, budget etc. apart).
    ///
    /// A `Timeout` is retriable when `on` has `5xx` or `gateway-error`: a per-try timeout is what
    /// a gateway answers with 504, so it is retried like one (as Envoy does). A specific status in
    /// `on` (e.g. `504`) matches only real responses.
    pub fn is_retriable(self, policy: &Retries) -> bool {
        match self {
            Outcome::Success => false,
            Outcome::Status(s) => policy.retries_status(s),
            Outcome::ConnectFailure => policy.retries_on(RetryOn::ConnectFailure),
            Outcome::Reset => policy.retries_on(RetryOn::Reset),
            Outcome::Timeout => {
                policy.retries_on(RetryOn::ServerError) || policy.retries_on(RetryOn::GatewayError)
            }
        }
    }
}

/// The facts [`decide`] needs about an attempt that just ended.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// Attempts made so far, the one that just ended included (1 after the first try).
    pub attempts_made: u32,
    /// Total attempts allowed, the first included (normally `retries.attempts`).
    pub max_attempts: u32,
    /// How the attempt ended.
    pub outcome: Outcome,
    /// Whether the request's method is idempotent ([`is_idempotent`]).
    pub idempotent: bool,
    /// Whether any of the request may have reached the app: false only for `ConnectFailure`.
    pub request_reached_app: bool,
    /// Whether the request body is still whole in the retry buffer (or there is none).
    pub body_replayable: bool,
    /// Time left before the request's deadline.
    pub time_left: Duration,
    /// The service's retry policy from the table: which outcomes are retried.
    pub retries: &'a Retries,
}

/// Whether to retry the attempt that just ended: `Ok(())` to retry (a retry has then been
/// withdrawn from `budget`), or the first reason not to, checked in this order:
///
/// 1. [`Refusal::NotRetriable`]: the outcome is not in the policy's `on` (see
///    [`Outcome::is_retriable`]; a success never is);
/// 2. [`Refusal::Attempts`]: `attempts_made >= max_attempts`;
/// 3. [`Refusal::NotIdempotent`]: the request reached the app and is not idempotent;
/// 4. [`Refusal::BodyTooLarge`]: the body cannot be sent again;
/// 5. [`Refusal::Deadline`]: no time is left;
/// 6. [`Refusal::Budget`]: the budget refuses. Asked last, so a retry refused for another reason
///    never spends budget.
pub fn decide(a: &Attempt<'_>, budget: &RetryBudget, now: Instant) -> Result<(), Refusal> {
    if !a.outcome.is_retriable(a.retries) {
        return Err(Refusal::NotRetriable);
    }
    if a.attempts_made >= a.max_attempts {
        return Err(Refusal::Attempts);
    }
    if a.request_reached_app && !a.idempotent {
        return Err(Refusal::NotIdempotent);
    }
    if !a.body_replayable {
        return Err(Refusal::BodyTooLarge);
    }
    if a.time_left.is_zero() {
        return Err(Refusal::Deadline);
    }
    if !budget.try_withdraw(now) {
        return Err(Refusal::Budget);
    }
    Ok(())
}

/// Whether an HTTP method is idempotent (RFC 9110 §9.2.2): `GET`, `HEAD`, `OPTIONS`, `TRACE`,
/// `PUT`, `DELETE`. Methods are case-sensitive, so `get` is not `GET`.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests;
