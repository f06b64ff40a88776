use super::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::HashMap;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// `127.0.0.1:1` .. `127.0.0.1:n`.
fn local(n: u16) -> Vec<SocketAddr> {
    (1..=n)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect()
}

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

fn all(_: &Endpoint) -> bool {
    true
}

/// Picks `n` times without a key and counts the picks per address.
fn spread(
    set: &EndpointSet,
    n: usize,
    usable: impl Fn(&Endpoint) -> bool,
    threshold: u32,
) -> HashMap<SocketAddr, usize> {
    let now = Instant::now();
    let mut rng = rng();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let e = set
            .pick(None, now, &mut rng, &usable, threshold)
            .expect("an endpoint");
        *counts.entry(e.addr).or_insert(0) += 1;
    }
    counts
}

const ALL_ALGORITHMS: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::Random,
    Algorithm::P2cLeastRequest,
    Algorithm::P2cEwma,
    Algorithm::RingHash,
];

// ----- the endpoint: in flight and peak EWMA -----

#[test]
fn a_guard_counts_a_request_in_flight_until_dropped() {
    let e = Arc::new(Endpoint::new(addr("127.0.0.1:1")));
    let a = e.start();
    let b = e.start();
    assert_eq!(e.in_flight(), 2, "two started requests are in flight");
    drop(a);
    assert_eq!(e.in_flight(), 1, "dropping a guard ends one request");
    assert!(
        Arc::ptr_eq(b.endpoint(), &e),
        "the guard names its endpoint"
    );
    drop(b);
    assert_eq!(
        e.in_flight(),
        0,
        "nothing in flight once both guards are gone"
    );
}

#[test]
fn before_any_sample_the_estimate_is_the_configured_initial_value() {
    let t0 = Instant::now();
    let default = Endpoint::new(addr("127.0.0.1:1"));
    assert_eq!(
        default.ewma(t0),
        Duration::from_millis(30),
        "Linkerd's default of 30 ms"
    );
    let config = EwmaConfig {
        initial: Duration::from_millis(100),
        decay: Duration::from_secs(10),
    };
    let custom = Endpoint::with_ewma_config(addr("127.0.0.1:2"), &config);
    assert_eq!(
        custom.ewma(t0),
        Duration::from_millis(100),
        "the initial estimate is configurable"
    );
}

#[test]
fn peak_ewma_jumps_up_at_once_and_decays_with_time() {
    let t0 = Instant::now();
    let e = Endpoint::new(addr("127.0.0.1:1"));
    e.observe_latency(Duration::from_millis(500), t0);
    assert_eq!(
        e.ewma(t0),
        Duration::from_millis(500),
        "a sample above the estimate replaces it at once"
    );

    e.observe_latency(Duration::from_millis(1), t0 + Duration::from_millis(1));
    let after_fast = e.ewma(t0 + Duration::from_millis(1)).as_secs_f64() * 1e3;
    assert!(
        after_fast > 499.0,
        "a fast sample 1 ms after a peak barely moves it: {after_fast} ms"
    );

    let later = |secs: u64| e.ewma(t0 + Duration::from_secs(secs)).as_secs_f64() * 1e3;
    let ten = later(10);
    let expected = 500.0 * (-1.0f64).exp();
    assert!(
        (ten - expected).abs() < 2.0,
        "one decay period (10 s) later the estimate is ~1/e of the peak: {ten} ms, expected {expected:.1} ms"
    );
    let sixty = later(60);
    assert!(
        sixty < 2.0,
        "a minute without samples decays the peak to almost nothing: {sixty} ms"
    );
    assert!(
        later(20) < ten && later(30) < later(20),
        "the estimate keeps falling with time"
    );
}

#[test]
fn lower_samples_pull_the_estimate_down_to_them() {
    let t0 = Instant::now();
    let e = Endpoint::new(addr("127.0.0.1:1"));
    e.observe_latency(Duration::from_millis(500), t0);
    for s in 1..=60 {
        e.observe_latency(Duration::from_millis(10), t0 + Duration::from_secs(s));
    }
    let end = e.ewma(t0 + Duration::from_secs(60)).as_secs_f64() * 1e3;
    assert!(
        (10.0..13.0).contains(&end),
        "a minute of 10 ms samples (one a second) brings a 500 ms peak down to ~10 ms: {end} ms"
    );
    e.observe_latency(Duration::from_millis(200), t0 + Duration::from_secs(61));
    assert_eq!(
        e.ewma(t0 + Duration::from_secs(61)),
        Duration::from_millis(200),
        "and a new peak is taken at once again"
    );
}

#[test]
fn load_is_the_estimate_times_in_flight_plus_one() {
    let t0 = Instant::now();
    let e = Arc::new(Endpoint::new(addr("127.0.0.1:1")));
    e.observe_latency(Duration::from_millis(10), t0);
    assert_eq!(e.load(t0), 30e6, "idle: the 30 ms prior, not yet decayed");
    e.observe_latency(Duration::from_millis(40), t0);
    let _a = e.start();
    let _b = e.start();
    assert_eq!(e.load(t0), 40e6 * 3.0, "40 ms × (2 in flight + 1)");
}

#[test]
fn the_snapshot_serializes_address_in_flight_and_ewma() {
    let t0 = Instant::now();
    let set = EndpointSet::new(local(2), Algorithm::P2cEwma, None);
    let _g = set.endpoints()[0].start();
    set.endpoints()[1].observe_latency(Duration::from_millis(12), t0);
    let json = serde_json::to_value(set.snapshot(t0)).expect("the snapshot serializes");
    assert_eq!(
        json,
        serde_json::json!([
            {"addr": "127.0.0.1:1", "in_flight": 1, "ewma_ms": 30.0, "healthy": true},
            {"addr": "127.0.0.1:2", "in_flight": 0, "ewma_ms": 30.0, "healthy": true},
        ]),
        "one entry per endpoint, in address order (12 ms is below the 30 ms prior at elapsed 0)"
    );
}

#[test]
fn algorithms_have_snake_case_names() {
    let names: Vec<String> = ALL_ALGORITHMS
        .iter()
        .map(|a| serde_json::to_string(a).expect("serializes"))
        .collect();
    assert_eq!(
        names,
        [
            "\"round_robin\"",
            "\"random\"",
            "\"p2c_least_request\"",
            "\"p2c_ewma\"",
            "\"ring_hash\""
        ],
        "the names config and admin use"
    );
    let back: Algorithm = serde_json::from_str("\"p2c_ewma\"").expect("parses");
    assert_eq!(back, Algorithm::P2cEwma, "names parse back");
}

// ----- round robin and random -----

#[test]
fn round_robin_spreads_evenly() {
    let set = EndpointSet::new(local(4), Algorithm::RoundRobin, None);
    let counts = spread(&set, 400, all, 0);
    for a in local(4) {
        assert_eq!(
            counts.get(&a),
            Some(&100),
            "each of 4 gets 100 of 400: {counts:?}"
        );
    }
}

#[test]
fn round_robin_skips_unusable_endpoints_without_doubling_the_next_one() {
    let set = EndpointSet::new(local(4), Algorithm::RoundRobin, None);
    let down = addr("127.0.0.1:2");
    let counts = spread(&set, 300, |e| e.addr != down, 0);
    assert_eq!(
        counts.get(&down),
        None,
        "the unusable endpoint gets nothing"
    );
    for a in local(4).into_iter().filter(|a| *a != down) {
        assert_eq!(
            counts.get(&a),
            Some(&100),
            "each of the 3 usable endpoints gets a third: {counts:?}"
        );
    }
}

#[test]
fn round_robin_continues_across_a_rebuild() {
    let first = EndpointSet::new(local(3), Algorithm::RoundRobin, None);
    let mut rng = rng();
    let now = Instant::now();
    let picked = first
        .pick(None, now, &mut rng, all, 0)
        .expect("an endpoint");
    assert_eq!(
        picked.addr,
        addr("127.0.0.1:1"),
        "the first pick is the first endpoint"
    );
    let second = EndpointSet::new(local(3), Algorithm::RoundRobin, Some(&first));
    let next = second
        .pick(None, now, &mut rng, all, 0)
        .expect("an endpoint");
    assert_eq!(
        next.addr,
        addr("127.0.0.1:2"),
        "a rebuild (every DNS refresh) does not send the next request to the first endpoint again"
    );
}

#[test]
fn random_is_uniform_among_usable_endpoints() {
    let set = EndpointSet::new(local(4), Algorithm::Random, None);
    let down = addr("127.0.0.1:3");
    let counts = spread(&set, 6000, |e| e.addr != down, 0);
    assert_eq!(
        counts.get(&down),
        None,
        "the unusable endpoint gets nothing"
    );
    for a in local(4).into_iter().filter(|a| *a != down) {
        let n = counts.get(&a).copied().unwrap_or(0);
        assert!(
            (1800..2200).contains(&n),
            "each usable endpoint gets ~1/3 of 6000: {a} got {n}"
        );
    }
}

#[test]
fn random_finds_the_one_usable_endpoint_among_many() {
    let set = EndpointSet::new(local(100), Algorithm::Random, None);
    let only = addr("127.0.0.1:77");
    let counts = spread(&set, 200, |e| e.addr == only, 0);
    assert_eq!(
        counts.get(&only),
        Some(&200),
        "when random draws miss, counting the candidates still finds it: {counts:?}"
    );
}

// ----- power of two choices -----

#[test]
fn p2c_least_request_prefers_idle_endpoints() {
    let set = EndpointSet::new(local(4), Algorithm::P2cLeastRequest, None);
    let busy = Arc::clone(set.get(&addr("127.0.0.1:1")).expect("in the set"));
    let guards: Vec<InFlightGuard> = (0..5).map(|_| busy.start()).collect();
    let counts = spread(&set, 1000, all, 0);
    assert_eq!(
        counts.get(&busy.addr),
        None,
        "an endpoint with 5 in flight loses every duel against an idle one: {counts:?}"
    );
    for a in local(4).into_iter().skip(1) {
        let n = counts.get(&a).copied().unwrap_or(0);
        assert!(
            (250..420).contains(&n),
            "the idle endpoints share the traffic: {a} got {n}"
        );
    }
    drop(guards);
    let counts = spread(&set, 1000, all, 0);
    assert!(
        counts.get(&busy.addr).copied().unwrap_or(0) > 150,
        "once its requests finish it is picked again: {counts:?}"
    );
}

#[test]
fn p2c_with_one_usable_endpoint_picks_it() {
    for algorithm in [Algorithm::P2cLeastRequest, Algorithm::P2cEwma] {
        let set = EndpointSet::new(local(5), algorithm, None);
        let only = addr("127.0.0.1:4");
        let counts = spread(&set, 50, |e| e.addr == only, 0);
        assert_eq!(
            counts.get(&only),
            Some(&50),
            "{algorithm:?}: no second candidate, so the first one wins"
        );
    }
}

/// Sends one request per millisecond for a second; `slow` answers in 500 ms, the others in
/// 1 ms. Each completion feeds its latency back and releases its guard. Returns the picks
/// per address.
fn simulate(algorithm: Algorithm, slow: SocketAddr) -> HashMap<SocketAddr, usize> {
    let set = EndpointSet::new(local(4), algorithm, None);
    let mut rng = rng();
    let t0 = Instant::now();
    let mut pending: Vec<(Instant, Duration, InFlightGuard)> = Vec::new();
    let mut counts = HashMap::new();
    for i in 0..1000 {
        let now = t0 + Duration::from_millis(i);
        pending.sort_by_key(|(done, _, _)| std::cmp::Reverse(*done));
        while pending.last().is_some_and(|(done, _, _)| *done <= now) {
            let (done, rtt, guard) = pending.pop().expect("checked");
            guard.endpoint().observe_latency(rtt, done);
        }
        let e = set.pick(None, now, &mut rng, all, 0).expect("an endpoint");
        *counts.entry(e.addr).or_insert(0) += 1;
        let rtt = if e.addr == slow {
            Duration::from_millis(500)
        } else {
            Duration::from_millis(1)
        };
        pending.push((now + rtt, rtt, e.start()));
    }
    counts
}

#[test]
fn p2c_ewma_starves_a_slow_endpoint() {
    let slow = addr("127.0.0.1:4");
    let baseline = simulate(Algorithm::RoundRobin, slow);
    assert_eq!(
        baseline.get(&slow),
        Some(&250),
        "round robin, blind to latency, sends the slow endpoint its quarter"
    );
    let counts = simulate(Algorithm::P2cEwma, slow);
    let to_slow = counts.get(&slow).copied().unwrap_or(0);
    assert!(
        to_slow < 100,
        "P2C-EWMA sends under 10% of 1000 requests to the endpoint answering in 500 ms: {to_slow} ({counts:?})"
    );
    // With requests done before the next pick, no fast endpoint has any in flight, so the
    // one whose estimate is lowest wins every duel it is in: the split is uneven, but none
    // of them is starved.
    for a in local(3) {
        assert!(
            counts.get(&a).copied().unwrap_or(0) >= 100,
            "every fast endpoint takes a share of the rest: {counts:?}"
        );
    }
}

#[test]
fn p2c_ewma_tries_a_slow_endpoint_again_once_its_peak_has_decayed() {
    let t0 = Instant::now();
    let set = EndpointSet::new(local(2), Algorithm::P2cEwma, None);
    let [fast, slow] = [&set.endpoints()[0], &set.endpoints()[1]];
    fast.observe_latency(Duration::from_millis(5), t0);
    slow.observe_latency(Duration::from_millis(500), t0);
    let mut rng = rng();
    let pick = |now: Instant, rng: &mut SmallRng| {
        set.pick(None, now, rng, all, 0).expect("an endpoint").addr
    };
    assert_eq!(
        pick(t0, &mut rng),
        fast.addr,
        "right after the peak: the fast one"
    );
    // The fast endpoint keeps answering in 5 ms; the slow one gets no traffic and no samples.
    for s in 1..=60 {
        fast.observe_latency(Duration::from_millis(5), t0 + Duration::from_secs(s));
    }
    assert_eq!(
        pick(t0 + Duration::from_secs(60), &mut rng),
        slow.addr,
        "a minute later the slow endpoint's peak has decayed and it is probed again"
    );
}

// ----- ring hash -----

fn ten() -> Vec<SocketAddr> {
    (1..=10)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
        .collect()
}

fn owner(set: &EndpointSet, key: &str, usable: impl Fn(&Endpoint) -> bool) -> SocketAddr {
    set.pick(Some(key.as_bytes()), Instant::now(), &mut rng(), usable, 0)
        .expect("an endpoint")
        .addr
}

#[test]
fn ring_hash_sends_a_key_to_the_same_endpoint_while_the_set_is_unchanged() {
    let set = EndpointSet::new(ten(), Algorithm::RingHash, None);
    let rebuilt = EndpointSet::new(ten(), Algorithm::RingHash, Some(&set));
    let mut used = std::collections::HashSet::new();
    for i in 0..1000 {
        let key = format!("user-{i}");
        let first = owner(&set, &key, all);
        assert_eq!(
            owner(&set, &key, all),
            first,
            "{key}: same key, same endpoint"
        );
        assert_eq!(
            owner(&rebuilt, &key, all),
            first,
            "{key}: a rebuild over the same addresses changes nothing"
        );
        used.insert(first);
    }
    assert_eq!(used.len(), 10, "1000 keys land on all 10 endpoints");
}

#[test]
fn ring_hash_removing_one_of_ten_endpoints_moves_only_its_keys() {
    let before = EndpointSet::new(ten(), Algorithm::RingHash, None);
    let gone = addr("10.0.0.5:8080");
    let after = EndpointSet::new(
        ten().into_iter().filter(|a| *a != gone),
        Algorithm::RingHash,
        Some(&before),
    );
    let (mut moved, mut moved_from_others) = (0, 0);
    for i in 0..10_000 {
        let key = format!("session-{i}");
        let (was, is) = (owner(&before, &key, all), owner(&after, &key, all));
        if was != is {
            moved += 1;
            if was != gone {
                moved_from_others += 1;
            }
        }
    }
    assert!(
        (500..2000).contains(&moved),
        "removing 1 of 10 endpoints moves ~1/10 of 10 000 keys: {moved}"
    );
    assert_eq!(
        moved_from_others, 0,
        "only the keys of the removed endpoint move"
    );
}

#[test]
fn ring_hash_passes_an_unusable_endpoint_over_to_where_its_removal_would_send_the_key() {
    let full = EndpointSet::new(ten(), Algorithm::RingHash, None);
    let down = addr("10.0.0.3:8080");
    let without = EndpointSet::new(
        ten().into_iter().filter(|a| *a != down),
        Algorithm::RingHash,
        None,
    );
    let mut rerouted = 0;
    for i in 0..2000 {
        let key = format!("k{i}");
        let walked = owner(&full, &key, |e| e.addr != down);
        assert_ne!(walked, down, "{key}: never the unusable endpoint");
        assert_eq!(
            walked,
            owner(&without, &key, all),
            "{key}: walking past it is the same as removing it"
        );
        if owner(&full, &key, all) == down {
            rerouted += 1;
        }
    }
    assert!(
        rerouted > 0,
        "some keys were homed on the unusable endpoint"
    );
}

#[test]
fn ring_hash_without_a_key_spreads_at_random() {
    let set = EndpointSet::new(ten(), Algorithm::RingHash, None);
    let counts = spread(&set, 5000, all, 0);
    for a in ten() {
        let n = counts.get(&a).copied().unwrap_or(0);
        assert!(
            (250..800).contains(&n),
            "no key: a random point, so each of 10 gets roughly a tenth: {a} got {n}"
        );
    }
}

// ----- for every algorithm -----

#[test]
fn an_empty_set_or_no_usable_endpoint_without_panic_gives_none() {
    let mut rng = rng();
    let now = Instant::now();
    for algorithm in ALL_ALGORITHMS {
        let empty = EndpointSet::new([], algorithm, None);
        assert!(
            empty.pick(Some(b"k"), now, &mut rng, all, 50).is_none(),
            "{algorithm:?}: nothing to pick from an empty set"
        );
        let set = EndpointSet::new(local(4), algorithm, None);
        assert!(
            set.pick(Some(b"k"), now, &mut rng, |_| false, 0).is_none(),
            "{algorithm:?}: no usable endpoint and panic disabled: none"
        );
        assert!(
            set.pick(Some(b"k"), now, &mut rng, |_| false, 1).is_some(),
            "{algorithm:?}: no usable endpoint with any panic threshold: all are candidates"
        );
    }
}

#[test]
fn below_the_panic_threshold_every_endpoint_is_a_candidate() {
    let only = addr("127.0.0.1:1");
    let usable = |e: &Endpoint| e.addr == only;
    for algorithm in ALL_ALGORITHMS {
        let set = EndpointSet::new(local(4), algorithm, None);
        let counts = spread(&set, 400, usable, 50);
        for a in local(4) {
            let n = counts.get(&a).copied().unwrap_or(0);
            assert!(
                n >= 50,
                "{algorithm:?}: 1 of 4 usable (25%) is below 50%, so the filter is ignored and {a} gets its share: {counts:?}"
            );
        }
        let counts = spread(&set, 100, usable, 25);
        assert_eq!(
            counts.get(&only),
            Some(&100),
            "{algorithm:?}: 25% usable is not below a 25% threshold: the filter holds"
        );
        let counts = spread(&set, 100, usable, 0);
        assert_eq!(
            counts.get(&only),
            Some(&100),
            "{algorithm:?}: threshold 0 disables panic mode"
        );
    }
}

#[test]
fn a_rebuild_keeps_the_state_of_endpoints_that_stay() {
    let t0 = Instant::now();
    let old = EndpointSet::new(local(3), Algorithm::P2cEwma, None);
    let staying = Arc::clone(&old.endpoints()[1]);
    let leaving = Arc::clone(&old.endpoints()[2]);
    let g1 = staying.start();
    let _g2 = staying.start();
    let _g3 = leaving.start();
    staying.observe_latency(Duration::from_millis(250), t0);

    let new = EndpointSet::new(
        [
            addr("127.0.0.1:2"),
            addr("127.0.0.1:9"),
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
        ],
        Algorithm::P2cEwma,
        Some(&old),
    );
    let addrs: Vec<SocketAddr> = new.endpoints().iter().map(|e| e.addr).collect();
    assert_eq!(
        addrs,
        [
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
            addr("127.0.0.1:9")
        ],
        "the new set is the new addresses, sorted, duplicates collapsed"
    );
    let kept = new
        .get(&staying.addr)
        .expect("the staying endpoint is in the new set");
    assert!(
        Arc::ptr_eq(kept, &staying),
        "a staying endpoint keeps its Arc"
    );
    assert_eq!(kept.in_flight(), 2, "its requests in flight still count");
    assert_eq!(
        kept.ewma(t0),
        Duration::from_millis(250),
        "its latency estimate survives"
    );
    drop(g1);
    assert_eq!(
        kept.in_flight(),
        1,
        "a request started before the rebuild ends on the same counter"
    );
    let added = new.get(&addr("127.0.0.1:9")).expect("the new endpoint");
    assert_eq!(added.in_flight(), 0, "a new endpoint starts idle");
    assert_eq!(
        added.ewma(t0),
        Duration::from_millis(30),
        "with the initial estimate"
    );
    assert!(
        new.get(&leaving.addr).is_none(),
        "a removed endpoint is gone"
    );
}

#[test]
fn a_rebuild_with_new_ewma_parameters_applies_them_to_staying_endpoints() {
    let t0 = Instant::now();
    let old = EndpointSet::new(local(2), Algorithm::P2cEwma, None);
    old.endpoints()[0].observe_latency(Duration::from_millis(100), t0);
    let config = EwmaConfig {
        initial: Duration::from_millis(50),
        decay: Duration::from_secs(1),
    };
    let new = EndpointSet::with_ewma_config(local(2), Algorithm::P2cEwma, config, Some(&old));
    let [sampled, fresh] = [&new.endpoints()[0], &new.endpoints()[1]];
    assert_eq!(
        fresh.ewma(t0),
        Duration::from_millis(50),
        "an endpoint without samples takes the new initial estimate"
    );
    let one_second = sampled.ewma(t0 + Duration::from_secs(1)).as_secs_f64() * 1e3;
    assert!(
        (one_second - 100.0 * (-1.0f64).exp()).abs() < 1.0,
        "a sampled one keeps its estimate and decays with the new 1 s period: {one_second} ms"
    );
}

// ----- the hot path does not allocate -----

/// Counts this thread's allocations, so tests running in parallel do not disturb the count.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: forwards to the system allocator; counting touches a const-initialised
    // thread-local `Cell` without destructor, which never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: the caller's contract is passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub fn allocations() -> u64 {
        ALLOCATIONS.with(|c| c.get())
    }
}

#[test]
fn picking_and_tracking_a_request_allocate_nothing() {
    let t0 = Instant::now();
    let down = addr("127.0.0.1:5");
    for algorithm in ALL_ALGORITHMS {
        let set = EndpointSet::new(local(16), algorithm, None);
        let mut rng = rng();
        let keys: [&[u8]; 2] = [b"user-42", b"user-43"];
        let before = counting::allocations();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i);
            let key = (i % 3 != 0).then(|| keys[(i % 2) as usize]);
            let usable = |e: &Endpoint| e.addr != down;
            let e = set
                .pick(key, now, &mut rng, usable, 50)
                .expect("an endpoint");
            let guard = e.start();
            e.observe_latency(Duration::from_micros(900 + i % 200), now);
            drop(guard);
        }
        let allocated = counting::allocations() - before;
        assert_eq!(
            allocated, 0,
            "{algorithm:?}: 1000 picks with start, observe and drop allocate nothing"
        );
    }
}

#[test]
fn health_checks_flip_an_endpoint_after_the_thresholds() {
    let e = Endpoint::new("127.0.0.1:1".parse().unwrap());
    assert!(e.is_healthy(), "endpoints start healthy");
    assert_eq!(
        e.record_health_check(false, 2, 3),
        None,
        "one failure is not enough"
    );
    assert_eq!(
        e.record_health_check(false, 2, 3),
        None,
        "two failures are not enough"
    );
    assert_eq!(
        e.record_health_check(true, 2, 3),
        None,
        "a pass resets the failure streak"
    );
    for _ in 0..2 {
        assert_eq!(
            e.record_health_check(false, 2, 3),
            None,
            "streak restarts from zero"
        );
    }
    assert_eq!(
        e.record_health_check(false, 2, 3),
        Some(false),
        "the third failure in a row marks it unhealthy"
    );
    assert!(!e.is_healthy());
    assert_eq!(
        e.record_health_check(true, 2, 3),
        None,
        "one pass is not enough to come back"
    );
    assert_eq!(
        e.record_health_check(true, 2, 3),
        Some(true),
        "two passes in a row bring it back"
    );
    assert!(e.is_healthy());
}
