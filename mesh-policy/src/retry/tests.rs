use super::*;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// --- backoff ---------------------------------------------------------------------------

#[test]
fn backoff_ceiling_doubles_from_base_until_the_cap() {
    let (base, cap) = (ms(25), ms(250));
    let got: Vec<Duration> = (1..=6).map(|n| backoff_ceiling(n, base, cap)).collect();
    assert_eq!(
        got,
        [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250)],
        "25 ms doubling per retry, held at the 250 ms cap"
    );
}

#[test]
fn backoff_ceiling_treats_retry_zero_as_the_first_retry() {
    assert_eq!(
        backoff_ceiling(0, ms(25), ms(250)),
        ms(25),
        "retry 0 waits like retry 1 instead of underflowing"
    );
}

#[test]
fn backoff_ceiling_never_overflows_for_huge_retry_numbers() {
    for n in [31, 32, 33, 64, 1_000, u32::MAX] {
        assert_eq!(
            backoff_ceiling(n, ms(25), ms(250)),
            ms(250),
            "retry {n} must give the cap, not overflow"
        );
    }
    assert_eq!(
        backoff_ceiling(2, Duration::MAX, Duration::MAX),
        Duration::MAX,
        "doubling Duration::MAX saturates at the cap"
    );
}

#[test]
fn backoff_ceiling_is_the_cap_when_the_cap_is_below_the_base() {
    assert_eq!(
        backoff_ceiling(1, ms(500), ms(100)),
        ms(100),
        "the cap wins even over the first wait"
    );
}

#[test]
fn backoff_with_zero_jitter_is_zero_and_full_jitter_is_the_ceiling() {
    for n in 1..=8 {
        assert_eq!(
            backoff(n, ms(25), ms(250), 0.0),
            Duration::ZERO,
            "full jitter: a jitter of 0 waits nothing (retry {n})"
        );
        assert_eq!(
            backoff(n, ms(25), ms(250), 1.0),
            backoff_ceiling(n, ms(25), ms(250)),
            "a jitter of 1 waits the whole ceiling (retry {n})"
        );
    }
    assert_eq!(
        backoff(3, ms(25), ms(250), 0.5),
        ms(50),
        "half of the 100 ms ceiling of retry 3"
    );
}

#[test]
fn backoff_clamps_jitter_outside_zero_to_one() {
    assert_eq!(
        backoff(1, ms(100), ms(100), f64::NAN),
        Duration::ZERO,
        "NaN jitter counts as 0"
    );
    assert_eq!(
        backoff(1, ms(100), ms(100), -3.0),
        Duration::ZERO,
        "negative jitter counts as 0"
    );
    assert_eq!(
        backoff(1, ms(100), ms(100), 7.0),
        ms(100),
        "jitter above 1 counts as 1"
    );
}

// --- Retry-After ------------------------------------------------------------------------

/// `Sun, 06 Nov 1994 08:49:37 GMT`, the example date of RFC 9110.
fn rfc_date() -> SystemTime {
    UNIX_EPOCH + secs(784_111_777)
}

#[test]
fn retry_after_delay_seconds() {
    let now = rfc_date();
    assert_eq!(
        parse_retry_after(b"120", now),
        Some(secs(120)),
        "delay-seconds"
    );
    assert_eq!(
        parse_retry_after(b"0", now),
        Some(Duration::ZERO),
        "zero seconds"
    );
    assert_eq!(
        parse_retry_after(b" \t3 ", now),
        Some(secs(3)),
        "surrounding whitespace is ignored"
    );
    assert_eq!(
        parse_retry_after(b"99999999999999999999999", now),
        Some(secs(u64::MAX)),
        "a delay too large for u64 saturates rather than being ignored"
    );
}

#[test]
fn retry_after_http_date_in_the_future_is_the_time_until_it() {
    let now = rfc_date() - secs(90);
    assert_eq!(
        parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(secs(90)),
        "IMF-fixdate 90 s after now"
    );
    assert_eq!(
        parse_retry_after(b"Sunday, 06-Nov-94 08:49:37 GMT", now),
        Some(secs(90)),
        "obsolete RFC 850 date, which recipients must accept"
    );
    assert_eq!(
        parse_retry_after(b"Sun Nov  6 08:49:37 1994", now),
        Some(secs(90)),
        "obsolete asctime date, which recipients must accept"
    );
}

#[test]
fn retry_after_http_date_in_the_past_means_now() {
    let now = rfc_date() + secs(3_600);
    assert_eq!(
        parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(Duration::ZERO),
        "a date an hour ago gives a zero delay"
    );
    assert_eq!(
        parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", rfc_date()),
        Some(Duration::ZERO),
        "a date equal to now gives a zero delay"
    );
}

#[test]
fn retry_after_garbage_is_ignored() {
    let now = rfc_date();
    for bad in [
        &b""[..],
        b"   ",
        b"-1",
        b"+5",
        b"1.5",
        b"12abc",
        b"soon",
        b"Sun, 06 Nov 1994 08:49:37",
        b"Sun, 32 Nov 1994 08:49:37 GMT",
        b"\xff\xfe",
    ] {
        assert_eq!(
            parse_retry_after(bad, now),
            None,
            "{:?} is not a Retry-After value",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn retry_delay_without_retry_after_is_the_backoff() {
    assert_eq!(
        retry_delay(None, ms(40), ms(250)),
        Some(ms(40)),
        "our backoff alone"
    );
    assert_eq!(
        retry_delay(None, ms(400), ms(250)),
        Some(ms(250)),
        "our backoff, held at the cap"
    );
}

#[test]
fn retry_delay_honours_retry_after_up_to_the_cap() {
    assert_eq!(
        retry_delay(Some(ms(200)), ms(40), ms(250)),
        Some(ms(200)),
        "the server's longer wait wins over our backoff"
    );
    assert_eq!(
        retry_delay(Some(Duration::ZERO), ms(40), ms(250)),
        Some(ms(40)),
        "Retry-After: 0 does not switch our backoff off"
    );
    assert_eq!(
        retry_delay(Some(ms(250)), ms(40), ms(250)),
        Some(ms(250)),
        "a Retry-After equal to the cap is still honoured"
    );
}

#[test]
fn retry_delay_refuses_when_retry_after_is_beyond_the_cap() {
    assert_eq!(
        retry_delay(Some(secs(120)), ms(40), ms(250)),
        None,
        "the server wants two minutes and we will not wait that long: do not retry"
    );
}

// --- budget -----------------------------------------------------------------------------

/// Withdraws until refused (at most `limit` times) and returns how many were granted.
fn withdraw_all(budget: &RetryBudget, now: Instant, limit: u32) -> u32 {
    let mut granted = 0;
    while granted < limit && budget.try_withdraw(now) {
        granted += 1;
    }
    granted
}

#[test]
fn budget_floor_alone_allows_min_per_s_retries_with_no_traffic() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.2, 2, secs(10));
    assert_eq!(
        withdraw_all(&budget, t0, 1_000),
        20,
        "2 retries/s over a 10 s window with no requests at all"
    );
    assert!(
        !budget.try_withdraw(t0 + secs(5)),
        "spent until those retries leave the window"
    );
    assert_eq!(
        budget.snapshot(t0 + secs(5)),
        BudgetSnapshot {
            requests: 0,
            retries: 20,
            allowed: 20
        },
        "the admin view of a budget spent on its floor"
    );
    assert_eq!(
        withdraw_all(&budget, t0 + secs(11), 1_000),
        20,
        "a window (plus one bucket) later the floor is whole again"
    );
}

#[test]
fn budget_ratio_allows_a_share_of_the_requests() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.2, 0, secs(10));
    assert!(
        !budget.try_withdraw(t0),
        "no floor and no requests: no retry"
    );
    for i in 0..100 {
        budget.on_request(t0 + ms(10 * i));
    }
    assert_eq!(
        withdraw_all(&budget, t0 + secs(1), 1_000),
        20,
        "20% of 100 requests"
    );
    budget.on_request(t0 + secs(2));
    budget.on_request(t0 + secs(2));
    budget.on_request(t0 + secs(2));
    budget.on_request(t0 + secs(2));
    assert!(
        !budget.try_withdraw(t0 + secs(2)),
        "104 requests earn only 20.8 retries"
    );
    budget.on_request(t0 + secs(2));
    assert!(
        budget.try_withdraw(t0 + secs(2)),
        "the 105th request earns the 21st retry"
    );
    assert_eq!(
        budget.snapshot(t0 + secs(2)),
        BudgetSnapshot {
            requests: 105,
            retries: 21,
            allowed: 21
        },
        "the admin view"
    );
}

#[test]
fn budget_forgets_requests_from_long_ago() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.5, 1, secs(10));
    for _ in 0..1_000 {
        budget.on_request(t0);
    }
    assert_eq!(
        budget.snapshot(t0 + secs(9)).allowed,
        510,
        "nine seconds later the burst still counts: 500 earned + 10 floor"
    );
    let later = t0 + secs(10);
    assert_eq!(
        budget.snapshot(later),
        BudgetSnapshot {
            requests: 0,
            retries: 0,
            allowed: 10
        },
        "a window later the burst no longer counts"
    );
    assert_eq!(
        withdraw_all(&budget, later, 1_000),
        10,
        "only the floor is left to spend"
    );
    assert_eq!(
        budget.snapshot(t0 + secs(3_600)).allowed,
        10,
        "an hour of silence (many windows skipped at once) leaves the floor"
    );
}

#[test]
fn budget_floor_spent_at_a_bucket_edge_is_not_spent_twice_within_one_window() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.0, 1, secs(10));
    budget.snapshot(t0); // t0 is the origin: buckets are [t0 + k s, t0 + (k+1) s).
    assert_eq!(
        withdraw_all(&budget, t0 + ms(990), 100),
        10,
        "the floor spent at the end of bucket 0"
    );
    assert!(
        !budget.try_withdraw(t0 + secs(10)),
        "bucket 0 left the window at 10 s, but 10.0 - 0.99 < 10 s: still refused"
    );
    assert_eq!(
        budget.snapshot(t0 + secs(10)).retries,
        0,
        "the window itself no longer shows them"
    );
    assert_eq!(
        withdraw_all(&budget, t0 + secs(11), 100),
        10,
        "at 11 s, more than a window after the first spend, the floor is back"
    );
}

#[test]
fn budget_window_need_not_be_whole_seconds() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.0, 10, ms(500));
    assert_eq!(withdraw_all(&budget, t0, 100), 5, "10/s over 0.5 s");
    assert_eq!(
        withdraw_all(&budget, t0 + ms(549), 100),
        0,
        "still within the window plus a bucket"
    );
    assert_eq!(
        withdraw_all(&budget, t0 + ms(550), 100),
        5,
        "whole again after 0.55 s"
    );
}

#[test]
fn budget_tolerates_instants_out_of_order() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(1.0, 0, secs(10));
    budget.on_request(t0 + secs(5));
    budget.on_request(t0 + secs(1)); // another thread read the clock earlier but locked later
    assert_eq!(
        budget.snapshot(t0 + secs(5)).requests,
        2,
        "a late caller's earlier instant counts in the current bucket"
    );
    let early = Instant::now();
    let budget = RetryBudget::new(1.0, 0, secs(10));
    budget.on_request(early + secs(1));
    assert!(
        budget.try_withdraw(early),
        "an instant before the origin counts at the origin"
    );
}

#[test]
fn budget_shared_across_threads_never_grants_more_than_allowed() {
    let t0 = Instant::now();
    let budget = Arc::new(RetryBudget::new(0.25, 3, secs(10)));
    for _ in 0..400 {
        budget.on_request(t0);
    }
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || withdraw_all(&budget, t0 + secs(1), 1_000))
        })
        .collect();
    let granted: u32 = threads
        .into_iter()
        .map(|t| t.join().expect("no panic"))
        .sum();
    assert_eq!(
        granted, 130,
        "8 threads racing share 0.25 × 400 + 3 × 10 retries exactly"
    );
}

#[test]
fn budget_snapshot_serializes_for_the_admin_port() {
    let t0 = Instant::now();
    let budget = RetryBudget::default();
    budget.on_request(t0);
    assert!(budget.try_withdraw(t0), "the default floor allows a retry");
    let json = serde_json::to_value(budget.snapshot(t0)).expect("a snapshot serializes");
    assert_eq!(
        json,
        serde_json::json!({ "requests": 1, "retries": 1, "allowed": 100 }),
        "default budget: 0.2 × 1 + 10/s × 10 s = 100.2, floored"
    );
}

#[test]
fn budget_try_new_rejects_nonsense() {
    assert_eq!(
        RetryBudget::try_new(-0.1, 1, secs(10)).err(),
        Some(InvalidBudget::Ratio(-0.1)),
        "a negative ratio"
    );
    assert!(
        matches!(
            RetryBudget::try_new(f64::NAN, 1, secs(10)),
            Err(InvalidBudget::Ratio(_))
        ),
        "a NaN ratio"
    );
    assert!(
        matches!(
            RetryBudget::try_new(f64::INFINITY, 1, secs(10)),
            Err(InvalidBudget::Ratio(_))
        ),
        "an infinite ratio"
    );
    assert!(
        matches!(
            RetryBudget::try_new(0.2, 1, Duration::ZERO),
            Err(InvalidBudget::Window { .. })
        ),
        "a zero window"
    );
    assert!(
        RetryBudget::try_new(0.0, 0, RetryBudget::MIN_WINDOW).is_ok(),
        "the smallest budget"
    );
}

// --- budget invariant under a retry storm -----------------------------------------------

/// A retry storm: every 100 ms, `traffic(tick)` requests arrive; every one fails, and so does
/// every retry; the caller retries each one whenever the budget allows, up to `max_attempts`
/// tries. Returns (requests, retries granted) per tick.
fn storm(
    budget: &RetryBudget,
    t0: Instant,
    ticks: u64,
    max_attempts: u32,
    mut traffic: impl FnMut(u64) -> u64,
) -> Vec<(u64, u64)> {
    (0..ticks)
        .map(|tick| {
            let now = t0 + ms(100 * tick);
            let requests = traffic(tick);
            let mut retries = 0;
            for _ in 0..requests {
                budget.on_request(now);
                for _ in 1..max_attempts {
                    if !budget.try_withdraw(now) {
                        break;
                    }
                    retries += 1;
                }
            }
            (requests, retries)
        })
        .collect()
}

/// Checks every interval of at most one window (100 ticks) in the log: retries stay within
/// the bound that holds whatever the traffic (`ratio` × the requests since one window before
/// the interval, + the floor), and, when `tight`, within `ratio` × the requests of the
/// interval itself + the floor + 1 for rounding.
fn check_every_window(name: &str, log: &[(u64, u64)], ratio: f64, reserve: f64, tight: bool) {
    const WINDOW: usize = 100;
    // prefix[i] = (requests, retries) of ticks [0, i).
    let mut prefix = vec![(0u64, 0u64)];
    for &(q, r) in log {
        let (pq, pr) = *prefix.last().expect("never empty");
        prefix.push((pq + q, pr + r));
    }
    for a in 0..log.len() {
        for end in a + 1..=(a + WINDOW).min(log.len()) {
            let requests = prefix[end].0 - prefix[a].0;
            let retries = prefix[end].1 - prefix[a].1;
            let wide_requests = prefix[end].0 - prefix[a.saturating_sub(WINDOW - 1)].0;
            let proven = (ratio * wide_requests as f64 + reserve + 1e-9).floor();
            assert!(
                retries as f64 <= proven,
                "{name}: ticks {a}..{end} had {retries} retries, more than \
                 {ratio} × {wide_requests} requests since a window before + {reserve}"
            );
            if tight {
                let bound = ratio * requests as f64 + reserve + 1.0;
                assert!(
                    retries as f64 <= bound,
                    "{name}: ticks {a}..{end} had {retries} retries for {requests} requests, \
                     more than {ratio} × requests + {reserve} + 1"
                );
            }
        }
    }
}

/// A small deterministic pseudo-random sequence (an LCG), so the test needs no RNG crate.
fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    }
}

#[test]
fn budget_in_a_retry_storm_bounds_retries_in_every_window() {
    type Traffic = fn(u64) -> u64;
    let shapes: [(&str, Traffic); 5] = [
        ("steady", |_| 10),
        ("bursts every 3.7 s", |t| if t % 37 == 0 { 500 } else { 0 }),
        ("quiet then storm", |t| if t < 150 { 0 } else { 100 }),
        ("on/off", |t| if (t / 37) % 2 == 0 { 100 } else { 0 }),
        ("ramp down", |t| 300u64.saturating_sub(t)),
    ];
    for (shape, traffic) in shapes {
        for (ratio, min_per_s, max_attempts) in
            [(0.2, 10, 3), (0.2, 1, 2), (0.5, 0, 5), (0.1, 5, 10)]
        {
            let t0 = Instant::now();
            let budget = RetryBudget::new(ratio, min_per_s, secs(10));
            let log = storm(&budget, t0, 600, max_attempts, traffic);
            let name = format!("{shape}, ratio {ratio}, {min_per_s}/s, {max_attempts} attempts");
            let retries: u64 = log.iter().map(|&(_, r)| r).sum();
            assert!(
                retries > 0,
                "{name}: the storm must retry at all to test anything"
            );
            check_every_window(&name, &log, ratio, f64::from(min_per_s) * 10.0, true);
        }
    }
}

#[test]
fn budget_under_random_traffic_keeps_the_proven_bound() {
    for seed in 1..=20 {
        let mut next = lcg(seed);
        let ratio = [0.1, 0.2, 0.25, 0.5, 1.0][(next() % 5) as usize];
        let min_per_s = [0, 1, 10][(next() % 3) as usize];
        let max_attempts = 2 + (next() % 3) as u32;
        let t0 = Instant::now();
        let budget = RetryBudget::new(ratio, min_per_s, secs(10));
        let log = storm(&budget, t0, 400, max_attempts, |_| {
            [0, 0, 0, 1, 2, 5, 50, 300][(next() % 8) as usize]
        });
        let name = format!("seed {seed}, ratio {ratio}, {min_per_s}/s, {max_attempts} attempts");
        check_every_window(&name, &log, ratio, f64::from(min_per_s) * 10.0, false);
    }
}

// --- classification and decision -------------------------------------------------------

#[test]
fn refusal_labels_are_the_documented_metric_labels() {
    let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "budget",
            "attempts",
            "body-too-large",
            "not-idempotent",
            "deadline",
            "not-retriable"
        ],
        "metrics labels are part of the contract"
    );
    assert_eq!(
        Refusal::Deadline.to_string(),
        "deadline",
        "Display is the label"
    );
}

#[test]
fn breaker_counts_server_and_transport_failures_but_not_client_errors() {
    for (outcome, failure) in [
        (Outcome::Success, false),
        (Outcome::Status(404), false),
        (Outcome::Status(429), false),
        (Outcome::Status(499), false),
        (Outcome::Status(500), true),
        (Outcome::Status(503), true),
        (Outcome::Status(599), true),
        (Outcome::ConnectFailure, true),
        (Outcome::Reset, true),
        (Outcome::Timeout, true),
    ] {
        assert_eq!(
            outcome.is_failure_for_breaker(),
            failure,
            "{outcome:?} for the breaker"
        );
    }
}

#[test]
fn statuses_below_400_are_successes() {
    assert_eq!(Outcome::of_status(200), Outcome::Success, "200");
    assert_eq!(
        Outcome::of_status(304),
        Outcome::Success,
        "a redirect or not-modified"
    );
    assert_eq!(
        Outcome::of_status(404),
        Outcome::Status(404),
        "a client error is kept"
    );
    assert_eq!(
        Outcome::of_status(503),
        Outcome::Status(503),
        "a server error is kept"
    );
}

#[test]
fn idempotent_methods() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(m), "{m} is idempotent");
    }
    for m in ["POST", "PATCH", "CONNECT", "get", ""] {
        assert!(!is_idempotent(m), "{m:?} is not idempotent");
    }
}

fn policy(on: &[RetryOn]) -> Retries {
    Retries {
        attempts: 3,
        on: on.to_vec(),
        ..Retries::default()
    }
}

/// A GET that failed on its first try, with time left and its body buffered.
fn failed_get(outcome: Outcome, retries: &Retries) -> Attempt<'_> {
    Attempt {
        attempts_made: 1,
        max_attempts: retries.attempts,
        outcome,
        idempotent: true,
        request_reached_app: outcome != Outcome::ConnectFailure,
        body_replayable: true,
        time_left: secs(1),
        retries,
    }
}

fn roomy_budget() -> RetryBudget {
    RetryBudget::new(0.2, 100, secs(10))
}

#[test]
fn decide_retries_what_the_policy_lists() {
    let t0 = Instant::now();
    let budget = roomy_budget();
    let all = policy(&[
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]);
    for outcome in [
        Outcome::ConnectFailure,
        Outcome::Reset,
        Outcome::Status(502),
        Outcome::Status(503),
        Outcome::Status(504),
        Outcome::Timeout,
    ] {
        assert_eq!(
            decide(&failed_get(outcome, &all), &budget, t0),
            Ok(()),
            "{outcome:?} is retried"
        );
    }
    assert_eq!(
        budget.snapshot(t0).retries,
        6,
        "each granted retry was counted"
    );
}

#[test]
fn decide_never_retries_what_the_policy_does_not_list() {
    let t0 = Instant::now();
    let budget = roomy_budget();
    let connect_only = policy(&[RetryOn::ConnectFailure]);
    for outcome in [
        Outcome::Success,
        Outcome::Reset,
        Outcome::Status(503),
        Outcome::Timeout,
    ] {
        assert_eq!(
            decide(&failed_get(outcome, &connect_only), &budget, t0),
            Err(Refusal::NotRetriable),
            "{outcome:?} is not in [connect-failure]"
        );
    }
    let gateway = policy(&[RetryOn::GatewayError]);
    for outcome in [Outcome::Status(500), Outcome::Status(404), Outcome::Success] {
        assert_eq!(
            decide(&failed_get(outcome, &gateway), &budget, t0),
            Err(Refusal::NotRetriable),
            "{outcome:?} is not a gateway error"
        );
    }
    assert_eq!(budget.snapshot(t0).retries, 0, "refusals spent no budget");
}

#[test]
fn decide_treats_a_per_try_timeout_as_a_gateway_timeout() {
    let t0 = Instant::now();
    let budget = roomy_budget();
    for on in [RetryOn::ServerError, RetryOn::GatewayError] {
        let p = policy(&[on]);
        assert_eq!(
            decide(&failed_get(Outcome::Timeout, &p), &budget, t0),
            Ok(()),
            "a timeout is retried under {on}"
        );
    }
    let only_504 = policy(&[RetryOn::Status(504)]);
    assert_eq!(
        decide(&failed_get(Outcome::Timeout, &only_504), &budget, t0),
        Err(Refusal::NotRetriable),
        "a specific 504 matches real 504 responses only"
    );
    assert_eq!(
        decide(&failed_get(Outcome::Status(504), &only_504), &budget, t0),
        Ok(()),
        "a real 504 under [504]"
    );
    let client = policy(&[RetryOn::Status(429)]);
    assert_eq!(
        decide(&failed_get(Outcome::Status(429), &client), &budget, t0),
        Ok(()),
        "a listed 4xx is retried too"
    );
}

#[test]
fn decide_stops_when_attempts_are_used_up() {
    let t0 = Instant::now();
    let budget = roomy_budget();
    let p = policy(&[RetryOn::Reset]);
    let mut a = failed_get(Outcome::Reset, &p);
    a.attempts_made = 2;
    assert_eq!(
        decide(&a, &budget, t0),
        Ok(()),
        "2 of 3 attempts made: one more"
    );
    a.attempts_made = 3;
    assert_eq!(
        decide(&a, &budget, t0),
        Err(Refusal::Attempts),
        "3 of 3 made"
    );
}

#[test]
fn decide_retries_a_post_only_when_it_never_reached_the_app() {
    let t0 = Instant::now();
    let budget = roomy_budget();
    let p = policy(&[
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]);
    let mut post = failed_get(Outcome::ConnectFailure, &p);
    post.idempotent = is_idempotent("POST");
    assert_eq!(
        decide(&post, &budget, t0),
        Ok(()),
        "nothing was sent: any method may be retried"
    );
    for outcome in [Outcome::Reset, Outcome::Status(503), Outcome::Timeout] {
        post.outcome = outcome;
        post.request_reached_app = true;
        assert_eq!(
            decide(&post, &budget, t0),
            Err(Refusal::NotIdempotent),
            "a POST that may have run is not sent twice ({outcome:?})"
        );
    }
}

#[test]
fn decide_needs_the_body_and_time_left() {
    let t0 = Instant::now();
    let budget = roomy_budget();
    let p = policy(&[RetryOn::Reset]);
    let mut a = failed_get(Outcome::Reset, &p);
    a.body_replayable = false;
    assert_eq!(
        decide(&a, &budget, t0),
        Err(Refusal::BodyTooLarge),
        "the body is gone"
    );
    a.body_replayable = true;
    a.time_left = Duration::ZERO;
    assert_eq!(
        decide(&a, &budget, t0),
        Err(Refusal::Deadline),
        "the deadline has passed"
    );
    a.time_left = Duration::from_nanos(1);
    assert_eq!(
        decide(&a, &budget, t0),
        Ok(()),
        "any time left is enough to try"
    );
}

#[test]
fn decide_asks_the_budget_last_so_other_refusals_spend_nothing() {
    let t0 = Instant::now();
    let budget = RetryBudget::new(0.0, 1, secs(1)); // exactly one retry
    let p = policy(&[RetryOn::Reset]);
    let good = failed_get(Outcome::Reset, &p);
    let refusals = [
        Attempt {
            outcome: Outcome::Success,
            ..good
        },
        Attempt {
            attempts_made: 3,
            ..good
        },
        Attempt {
            idempotent: false,
            ..good
        },
        Attempt {
            body_replayable: false,
            ..good
        },
        Attempt {
            time_left: Duration::ZERO,
            ..good
        },
    ];
    for a in &refusals {
        assert_ne!(decide(a, &budget, t0), Ok(()), "{a:?} is refused");
    }
    assert_eq!(
        decide(&good, &budget, t0),
        Ok(()),
        "the one retry of the budget is still there"
    );
    assert_eq!(
        decide(&good, &budget, t0),
        Err(Refusal::Budget),
        "and now it is spent"
    );
}

#[test]
fn decide_reports_the_first_reason_in_order() {
    let t0 = Instant::now();
    let spent = RetryBudget::new(0.0, 0, secs(1));
    let p = policy(&[RetryOn::Reset]);
    let everything_wrong = Attempt {
        attempts_made: 3,
        max_attempts: 3,
        outcome: Outcome::Status(503),
        idempotent: false,
        request_reached_app: true,
        body_replayable: false,
        time_left: Duration::ZERO,
        retries: &p,
    };
    // Fix one fault at a time: each fix reveals the next reason.
    let mut a = everything_wrong;
    assert_eq!(
        decide(&a, &spent, t0),
        Err(Refusal::NotRetriable),
        "a 503 under [reset]"
    );
    a.outcome = Outcome::Reset;
    assert_eq!(
        decide(&a, &spent, t0),
        Err(Refusal::Attempts),
        "3 of 3 attempts made"
    );
    a.attempts_made = 1;
    assert_eq!(
        decide(&a, &spent, t0),
        Err(Refusal::NotIdempotent),
        "a POST that reached the app"
    );
    a.idempotent = true;
    assert_eq!(
        decide(&a, &spent, t0),
        Err(Refusal::BodyTooLarge),
        "the body is gone"
    );
    a.body_replayable = true;
    assert_eq!(
        decide(&a, &spent, t0),
        Err(Refusal::Deadline),
        "no time left"
    );
    a.time_left = secs(1);
    assert_eq!(
        decide(&a, &spent, t0),
        Err(Refusal::Budget),
        "only the budget is left"
    );
}
