use super::*;
use mesh_table::Table;
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

/// The faults of service `c` in a table whose `[[services.c.faults]]` entries are `faults`.
fn faults(faults: &str, side: Side, installed: Instant) -> Faults {
    let toml = format!("version = 1\n[services.c]\nendpoints = [\"127.0.0.1:9\"]\n{faults}");
    let t = Table::from_toml_str(&toml).expect("a valid table");
    Faults::new(&t.services["c"].faults, side, installed)
}

fn no_fields(_: &str) -> Option<&'static [u8]> {
    None
}

fn get(path: &'static str) -> Request<'static> {
    Request {
        method: "GET",
        path: path.as_bytes(),
        field: &no_fields,
    }
}

#[test]
fn a_percentage_picks_about_that_share_and_the_same_for_a_seed() {
    let now = Instant::now();
    let f = faults(
        "[[services.c.faults]]\nname = \"half\"\npercent = 30\nabort = { status = 503 }\n",
        Side::Outbound,
        now,
    );
    let run = || {
        let mut r = rng();
        (0..10_000)
            .filter(|_| f.decide(&get("/"), 0, now, &mut r).is_some())
            .count()
    };
    let hits = run();
    assert!((2_800..3_200).contains(&hits), "30% of 10,000: {hits}");
    assert_eq!(run(), hits, "a seed gives the same run");
    let hit = f.decide(&get("/"), 0, now, &mut SmallRng::seed_from_u64(1));
    if let Some(i) = hit {
        assert_eq!(i.name, "half");
        assert_eq!(i.abort.map(|a| a.status), Some(503));
        assert_eq!(i.delay, None);
    }
}

#[test]
fn every_nth_and_first_tries_are_exact() {
    let now = Instant::now();
    let f = faults(
        "[[services.c.faults]]\nname = \"third\"\nevery = 3\nabort = { status = 500 }\n",
        Side::Outbound,
        now,
    );
    let picked: Vec<bool> = (0..9)
        .map(|_| f.decide(&get("/"), 0, now, &mut rng()).is_some())
        .collect();
    assert_eq!(
        picked,
        [false, false, true, false, false, true, false, false, true],
        "every 3rd request"
    );
    let f = faults(
        "[[services.c.faults]]\nname = \"two\"\nfirst_tries = 2\nabort = { status = 503 }\n",
        Side::Outbound,
        now,
    );
    let tries: Vec<bool> = (0..4)
        .map(|n| f.decide(&get("/"), n, now, &mut rng()).is_some())
        .collect();
    assert_eq!(
        tries,
        [true, true, false, false],
        "the first two tries of a request"
    );
}

#[test]
fn a_window_opens_after_its_start_and_closes_after_its_length() {
    let t0 = Instant::now();
    let f = faults(
        "[[services.c.faults]]\nname = \"burst\"\nafter_ms = 1000\nfor_ms = 5000\nabort = { status = 503 }\n",
        Side::Outbound,
        t0,
    );
    let at = |ms: u64| {
        f.decide(&get("/"), 0, t0 + Duration::from_millis(ms), &mut rng())
            .is_some()
    };
    assert!(!at(0) && !at(999), "not before it starts");
    assert!(at(1000) && at(5999), "for 5 s");
    assert!(!at(6000) && !at(60_000), "then recovered");
}

fn user(name: &str) -> Option<&'static [u8]> {
    (name == "x-user").then_some(b"test".as_slice())
}

fn other(name: &str) -> Option<&'static [u8]> {
    (name == "x-user").then_some(b"prod".as_slice())
}

type Fields = dyn Fn(&str) -> Option<&'static [u8]>;

fn req(method: &'static str, path: &'static str, field: &'static Fields) -> Request<'static> {
    Request {
        method,
        path: path.as_bytes(),
        field,
    }
}

#[test]
fn a_fault_applies_only_where_its_match_holds_and_only_on_its_side() {
    let now = Instant::now();
    let table = "[[services.c.faults]]\nname = \"test-users\"\n\
                 delay = { fixed_ms = 200 }\n\
                 match = { path_prefix = \"/api\", method = \"POST\", headers = { \"X-User\" = \"test\" } }\n";
    let f = faults(table, Side::Outbound, now);
    let hit = f.decide(&req("POST", "/api/orders", &user), 0, now, &mut rng());
    assert_eq!(
        hit,
        Some(Injected {
            name: "test-users",
            delay: Some(Duration::from_millis(200)),
            abort: None
        })
    );
    for (m, p, fld) in [
        (
            "GET",
            "/api/orders",
            &user as &dyn Fn(&str) -> Option<&'static [u8]>,
        ),
        ("POST", "/static/x", &user),
        ("POST", "/api/orders", &other),
        ("POST", "/api/orders", &no_fields),
    ] {
        assert_eq!(
            f.decide(&req(m, p, fld), 0, now, &mut rng()),
            None,
            "{m} {p}"
        );
    }
    assert!(
        faults(table, Side::Inbound, now).is_empty(),
        "an outbound fault is not the inbound side's"
    );
}

#[test]
fn the_first_fault_that_applies_wins() {
    let now = Instant::now();
    let f = faults(
        "[[services.c.faults]]\nname = \"api\"\nabort = { status = 500 }\nmatch = { path_prefix = \"/api\" }\n\
         [[services.c.faults]]\nname = \"rest\"\nabort = { status = 503 }\n",
        Side::Outbound,
        now,
    );
    let name = |p| f.decide(&get(p), 0, now, &mut rng()).map(|i| i.name);
    assert_eq!(name("/api/x"), Some("api"));
    assert_eq!(name("/other"), Some("rest"));
}

#[test]
fn delays_follow_their_distribution() {
    let mut r = rng();
    let ms = |d: Delay, r: &mut SmallRng| delay(d, r).as_secs_f64() * 1000.0;
    let n = 20_000;
    let mean = |d: Delay, r: &mut SmallRng| (0..n).map(|_| ms(d, r)).sum::<f64>() / n as f64;
    assert_eq!(
        delay(Delay::Fixed { ms: 250 }, &mut r),
        Duration::from_millis(250)
    );
    let u = Delay::Uniform {
        min_ms: 100,
        max_ms: 300,
    };
    assert!((0..1000).all(|_| (100.0..=300.0).contains(&ms(u, &mut r))));
    let m = mean(u, &mut r);
    assert!((195.0..205.0).contains(&m), "uniform mean {m}");
    let normal = Delay::Normal {
        mean_ms: 200,
        stddev_ms: 20,
    };
    let m = mean(normal, &mut r);
    assert!((199.0..201.0).contains(&m), "normal mean {m}");
    let sd = ((0..n)
        .map(|_| (ms(normal, &mut r) - 200.0).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    assert!((19.0..21.0).contains(&sd), "normal stddev {sd}");
    // Pareto with shape 3: mean = scale * shape / (shape - 1) = 15 ms; never below the scale,
    // never above the cap.
    let p = Delay::Pareto {
        scale_ms: 10,
        shape: 3.0,
        max_ms: 1000,
    };
    let samples: Vec<f64> = (0..n).map(|_| ms(p, &mut r)).collect();
    assert!(samples.iter().all(|&s| (10.0..=1000.0).contains(&s)));
    let m = samples.iter().sum::<f64>() / n as f64;
    assert!((14.0..16.0).contains(&m), "Pareto mean {m}");
    let capped = Delay::Pareto {
        scale_ms: 10,
        shape: 0.5,
        max_ms: 50,
    };
    assert!(
        (0..1000).any(|_| ms(capped, &mut r) == 50.0),
        "a heavy tail meets its cap"
    );
}
