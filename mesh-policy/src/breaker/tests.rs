use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(300),
        max_ejected_percent: 50,
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 8080))
}

fn set_of(n: u8, config: BreakerConfig) -> (Breakers, Vec<SocketAddr>) {
    let addrs: Vec<_> = (1..=n).map(addr).collect();
    let b = Breakers::new(config);
    b.sync_endpoints(&addrs);
    (b, addrs)
}

/// Fails `n` ordinary requests on `a`, returning the last transition.
fn fail(b: &Breakers, a: SocketAddr, now: Instant, n: u32) -> Option<Transition> {
    let mut last = None;
    for _ in 0..n {
        assert_eq!(
            b.admit(a, now),
            Admission::Yes,
            "{a} should take traffic while closed"
        );
        last = b.on_result(a, now, true, false);
    }
    last
}

#[test]
fn consecutive_failures_eject_an_endpoint() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    let a = addrs[0];

    assert_eq!(fail(&b, a, t0, 2), None, "2 failures of 3 are not enough");
    assert!(!b.is_ejected(a, t0), "still closed after 2 failures");

    let t = fail(&b, a, t0 + SECOND, 1);
    assert_eq!(
        t,
        Some(Transition::Ejected {
            ejection: Duration::from_secs(30),
            times_ejected: 1
        }),
        "the third failure in a row ejects for the base ejection"
    );
    assert!(b.is_ejected(a, t0 + SECOND), "ejected right after");
    assert_eq!(
        b.admit(a, t0 + 30 * SECOND),
        Admission::No,
        "no traffic during the ejection"
    );
    assert!(
        !b.is_ejected(addrs[1], t0 + SECOND),
        "the other endpoints are untouched"
    );

    let snap = &b.snapshot(t0 + 11 * SECOND)[0];
    assert_eq!(snap.state, "open", "snapshot shows it open");
    assert_eq!(snap.ejected_until_ms, 20_000, "20 s of 30 s left");
    assert_eq!(snap.why, Some("consecutive failures"), "and why");
    assert_eq!(snap.last_transition_ms_ago, Some(10_000), "and since when");
    assert_eq!(b.out(), 1, "one endpoint out");
}

#[test]
fn a_success_resets_the_count() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    let a = addrs[0];

    fail(&b, a, t0, 2);
    b.admit(a, t0);
    b.on_result(a, t0, false, false);
    assert_eq!(
        b.snapshot(t0)[0].consecutive_failures,
        0,
        "a success resets the count"
    );
    assert_eq!(fail(&b, a, t0, 2), None, "two more failures do not eject");
    assert!(
        !b.is_ejected(a, t0),
        "the count started again after the success"
    );
    assert!(fail(&b, a, t0, 1).is_some(), "the third in a row does");
}

#[test]
fn ejections_grow_with_each_ejection_then_cap() {
    let t0 = Instant::now();
    let mut e = EndpointBreaker::new(config());
    let mut now = t0;
    let mut lengths = Vec::new();
    for _ in 0..12 {
        // Three failures in a row, then wait out the ejection and pass the probe.
        for _ in 0..3 {
            assert_eq!(e.admit(now), Admission::Yes, "closed before each round");
            e.on_failure(now, true);
        }
        let State::Open { until } = e.state() else {
            panic!("3 failures should open the breaker, got {:?}", e.state());
        };
        lengths.push((until - now).as_secs());
        now = until;
        assert_eq!(e.admit(now), Admission::Probe, "due: one probe");
        e.on_probe_success(now);
    }
    assert_eq!(lengths[0], 30, "first ejection is the base");
    assert_eq!(lengths[1], 60, "second doubles");
    assert_eq!(lengths[2], 90, "third is three times the base");
    assert_eq!(lengths[9], 300, "tenth reaches the cap");
    assert_eq!(lengths[11], 300, "and later ones stay at the cap");
}

#[test]
fn a_long_healthy_spell_forgives_past_ejections() {
    let t0 = Instant::now();
    let mut e = EndpointBreaker::new(config());
    for _ in 0..3 {
        e.on_failure(t0, true);
    }
    let t1 = t0 + 30 * SECOND;
    assert_eq!(e.admit(t1), Admission::Probe, "due");
    e.on_probe_success(t1);
    assert_eq!(e.times_ejected(t1), 1, "remembered right after recovery");
    let t2 = t1 + 30 * SECOND;
    assert_eq!(e.times_ejected(t2), 0, "forgiven after one base of health");
    for _ in 0..3 {
        e.on_failure(t2, true);
    }
    assert_eq!(
        e.state(),
        State::Open {
            until: t2 + 30 * SECOND
        },
        "ejected for the base again, not twice it"
    );
}

#[test]
fn half_open_admits_exactly_one_probe() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    let a = addrs[0];
    fail(&b, a, t0, 3);

    let due = t0 + 30 * SECOND;
    assert!(!b.is_ejected(a, due), "not ejected once due");
    assert_eq!(b.snapshot(due)[0].state, "half-open", "snapshot shows due");
    assert_eq!(b.admit(a, due), Admission::Probe, "first request probes");
    assert_eq!(b.admit(a, due), Admission::No, "a second one is refused");
    assert_eq!(
        b.admit(a, due + SECOND),
        Admission::No,
        "still refused while the probe is out"
    );
    assert!(
        b.snapshot(due)[0].probe_in_flight,
        "snapshot shows the probe"
    );

    // A late result from a request admitted before the ejection is no probe.
    assert_eq!(
        b.on_result(a, due, false, false),
        None,
        "a stale success does not close"
    );
    assert_eq!(b.admit(a, due), Admission::No, "the probe is still out");
}

#[test]
fn probe_success_closes() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    let a = addrs[0];
    fail(&b, a, t0, 3);

    let due = t0 + 30 * SECOND;
    assert_eq!(b.admit(a, due), Admission::Probe, "probe");
    assert_eq!(
        b.on_result(a, due + SECOND, false, true),
        Some(Transition::Closed),
        "the probe's success closes"
    );
    assert_eq!(b.admit(a, due + SECOND), Admission::Yes, "traffic flows");
    assert_eq!(b.admit(a, due + SECOND), Admission::Yes, "all of it");
    assert_eq!(b.out(), 0, "nobody out");
    let snap = &b.snapshot(due + SECOND)[0];
    assert_eq!(
        (snap.state, snap.times_ejected, snap.why),
        ("closed", 1, Some("probe succeeded")),
        "closed, remembering one ejection"
    );
}

#[test]
fn probe_failure_reopens_for_longer() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    let a = addrs[0];
    fail(&b, a, t0, 3);

    let due = t0 + 30 * SECOND;
    assert_eq!(b.admit(a, due), Admission::Probe, "probe");
    assert_eq!(
        b.on_result(a, due, true, true),
        Some(Transition::Reopened {
            ejection: Duration::from_secs(60),
            times_ejected: 2
        }),
        "the probe's failure reopens for twice the base"
    );
    assert!(b.is_ejected(a, due + 59 * SECOND), "ejected for 60 s");
    assert_eq!(
        b.admit(a, due + 60 * SECOND),
        Admission::Probe,
        "then probed again"
    );
    assert_eq!(b.out(), 1, "still one out throughout");
}

#[test]
fn a_cancelled_probe_does_not_wedge_the_breaker() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    let a = addrs[0];
    fail(&b, a, t0, 3);

    let due = t0 + 30 * SECOND;
    assert_eq!(b.admit(a, due), Admission::Probe, "probe");
    b.on_probe_cancelled(a, due + SECOND);
    assert_eq!(
        b.admit(a, due + SECOND),
        Admission::Probe,
        "after cancellation the next request probes"
    );
    assert_eq!(b.admit(a, due + SECOND), Admission::No, "only one, again");
    assert_eq!(
        b.on_result(a, due + 2 * SECOND, false, true),
        Some(Transition::Closed),
        "and its success closes"
    );
}

#[test]
fn max_ejected_percent_50_of_3_ejects_at_most_one() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(3, config());

    assert!(
        fail(&b, addrs[0], t0, 3).is_some(),
        "the first one goes out"
    );
    assert_eq!(fail(&b, addrs[1], t0, 3), None, "the second may not");
    assert!(!b.is_ejected(addrs[1], t0), "so it keeps serving");
    assert_eq!(
        fail(&b, addrs[1], t0, 5),
        None,
        "however many more failures"
    );
    assert_eq!(b.out(), 1, "one out of three");

    // Once the first is back, the second may go.
    let due = t0 + 30 * SECOND;
    assert_eq!(b.admit(addrs[0], due), Admission::Probe, "probe the first");
    b.on_result(addrs[0], due, false, true);
    assert_eq!(b.out(), 0, "the first is back");
    assert!(
        fail(&b, addrs[1], due, 1).is_some(),
        "the second's next failure ejects it: its count stayed at the threshold"
    );
}

#[test]
fn max_ejected_percent_10_of_3_ejects_none() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(
        3,
        BreakerConfig {
            max_ejected_percent: 10,
            ..config()
        },
    );
    for a in &addrs {
        assert_eq!(fail(&b, *a, t0, 10), None, "{a} may not be ejected");
    }
    assert_eq!(b.out(), 0, "floor(3 × 10 / 100) = 0");
}

#[test]
fn a_lone_endpoint_is_never_ejected_at_50_percent() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(1, config());
    assert_eq!(fail(&b, addrs[0], t0, 10), None, "floor(1 × 50 / 100) = 0");
}

#[test]
fn sync_keeps_the_state_of_endpoints_that_stay() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(4, config());
    fail(&b, addrs[0], t0, 3);
    fail(&b, addrs[1], t0, 2);
    fail(&b, addrs[3], t0, 3);
    assert_eq!(b.out(), 2, "two out before the update");

    // addrs[3] leaves, addrs[4..] arrive.
    let next = [addrs[0], addrs[1], addrs[2], addr(5), addr(6)];
    b.sync_endpoints(&next);

    let snap = b.snapshot(t0);
    let by = |a: SocketAddr| snap.iter().find(|s| s.addr == a);
    assert_eq!(snap.len(), 5, "exactly the new set");
    assert!(by(addrs[3]).is_none(), "the removed endpoint is forgotten");
    assert!(
        b.is_ejected(addrs[0], t0),
        "a staying ejected endpoint stays out"
    );
    assert_eq!(
        by(addrs[1]).map(|s| s.consecutive_failures),
        Some(2),
        "a staying endpoint keeps its count"
    );
    assert_eq!(
        by(addr(5)).map(|s| s.state),
        Some("closed"),
        "a new endpoint starts closed"
    );
    assert_eq!(b.out(), 1, "the count of those out follows the set");

    b.sync_endpoints(&[addrs[3]]);
    assert_eq!(
        b.snapshot(t0)[0].times_ejected,
        0,
        "a returning endpoint starts afresh"
    );
}

#[test]
fn unknown_endpoints_are_admitted_and_ignored() {
    let t0 = Instant::now();
    let (b, _) = set_of(2, config());
    let stranger = addr(99);
    assert_eq!(b.admit(stranger, t0), Admission::Yes, "not ours to refuse");
    assert_eq!(
        b.on_result(stranger, t0, true, false),
        None,
        "its outcome is ignored"
    );
    assert!(!b.is_ejected(stranger, t0), "never ejected");
}

#[test]
fn snapshot_serializes_for_the_admin_port() {
    let t0 = Instant::now();
    let (b, addrs) = set_of(2, config());
    fail(&b, addrs[0], t0, 3);
    let json = serde_json::to_value(b.snapshot(t0 + SECOND)).expect("serializes");
    assert_eq!(
        json[0],
        serde_json::json!({
            "addr": "10.0.0.1:8080",
            "state": "open",
            "consecutive_failures": 0,
            "times_ejected": 1,
            "ejected_until_ms": 29_000,
            "probe_in_flight": false,
            "last_transition_ms_ago": 1_000,
            "why": "consecutive failures",
        }),
        "one object per endpoint"
    );
    assert_eq!(json[1]["why"], serde_json::Value::Null, "no transition yet");
}

#[test]
fn config_from_the_table_uses_the_default_cap() {
    let c = BreakerConfig::default();
    assert_eq!(c.consecutive_failures, 5, "table default");
    assert_eq!(c.base_ejection, Duration::from_secs(30), "table default");
    assert_eq!(c.max_ejection, Duration::from_secs(300), "Envoy's cap");
    assert_eq!(c.max_ejected(3), 1, "50 % of 3");
}
