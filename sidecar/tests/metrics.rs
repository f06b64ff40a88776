//! The sidecar's own answers and its metrics, under real traffic: every `x-mesh-error` reason
//! the policies produce, and the metric families that count them.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::{
    get, http, sidecar_cmd, start_ready_sidecar, wait_http_ok, wait_until, Proc, Response,
};

fn temp_table(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshlab-metrics-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("table.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn app(instance: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--name",
        "b",
        "--instance",
        instance,
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    let p = Proc::start("mesh-service", &args);
    wait_http_ok(p.addr("app"), "/healthz", Duration::from_secs(30));
    p
}

fn sidecar(table: &Path, extra: &[&str]) -> Proc {
    // The app address is never called: these tests use the outbound side.
    let mut cmd = sidecar_cmd("a", "127.0.0.1:9".parse().unwrap());
    cmd.args([
        "--table",
        table.to_str().unwrap(),
        "--poll-interval",
        "100ms",
    ]);
    cmd.args(extra);
    start_ready_sidecar(&mut cmd, "sidecar", Duration::from_secs(30))
}

fn call(sc: &Proc, service: &str, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![("Host", service)];
    headers.extend_from_slice(extra);
    http(sc.addr("outbound"), "GET", "/", &headers, b"").expect("the outbound listener answers")
}

fn metrics(sc: &Proc) -> String {
    get(sc.addr("admin"), "/metrics")
        .expect("/metrics answers")
        .body
}

/// The value of one sample, found by its metric name and every `label="value"` given.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

fn assert_reason(r: &Response, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{reason}: status: {r:?}");
    assert_eq!(
        r.header("x-mesh-error"),
        Some(reason),
        "x-mesh-error: {r:?}"
    );
    assert!(
        r.header("proxy-status").is_some_and(|v| v.contains(reason)),
        "Proxy-Status names the reason: {r:?}"
    );
    assert!(
        r.body.contains(reason),
        "the body says it in words: {}",
        r.body
    );
}

/// Accepts connections, reads the request and closes without answering.
fn resetting_endpoint() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf);
            drop(c);
        }
    });
    addr
}

#[test]
fn every_reason_the_sidecar_answers_with_is_named_and_counted() {
    let slow = app("slow", &["--latency-ms", "2000"]);
    let bad1 = app("bad-1", &["--error-rate", "1.0"]);
    let bad2 = app("bad-2", &["--error-rate", "1.0"]);
    let reset = resetting_endpoint();
    let slow_addr = slow.addr("app");
    let table = temp_table(
        "reasons",
        &format!(
            r#"version = 1
[services.dead]
endpoints = ["127.0.0.1:1"]
retries = {{ attempts = 2, on = ["connect-failure"] }}
[services.slow]
endpoints = ["{slow_addr}"]
timeouts = {{ request_ms = 300 }}
[services.pertry]
endpoints = ["{slow_addr}"]
timeouts = {{ per_try_ms = 100, request_ms = 1000 }}
retries = {{ attempts = 1 }}
[services.nohost]
endpoints = "dns:no-such-host.invalid:80"
[services.reset]
endpoints = ["{reset}"]
retries = {{ attempts = 1 }}
[services.limited]
endpoints = ["{slow_addr}"]
breaker = {{ max_concurrent = 1, max_pending = 0 }}
[services.ejecting]
endpoints = ["{}", "{}"]
retries = {{ attempts = 1 }}
breaker = {{ consecutive_failures = 1, max_ejected_percent = 100 }}
"#,
            bad1.addr("app"),
            bad2.addr("app")
        ),
    );
    let sc = sidecar(&table, &[]);

    assert_reason(&call(&sc, "nope", &[]), 404, "unknown-service");
    let r = call(&sc, "dead", &[]);
    assert_reason(&r, 502, "connect-failure");
    assert_eq!(
        r.header("x-mesh-attempts"),
        Some("2"),
        "the connect failure was retried once"
    );
    assert_reason(&call(&sc, "slow", &[]), 504, "request-timeout");
    assert_reason(&call(&sc, "pertry", &[]), 504, "per-try-timeout");
    assert_reason(&call(&sc, "nohost", &[]), 503, "no-healthy-endpoint");
    assert_reason(&call(&sc, "reset", &[]), 502, "upstream-reset");
    assert_reason(
        &call(&sc, "slow", &[("x-mesh-deadline-ms", "0")]),
        504,
        "deadline-exceeded",
    );

    // One request holds the only slot of `limited` (the app takes 2 s); the next overflows.
    let out = sc.addr("outbound");
    let holder = std::thread::spawn(move || http(out, "GET", "/", &[("Host", "limited")], b""));
    wait_until("the slot to be taken", Duration::from_secs(5), || {
        let b = get(sc.addr("admin"), "/breakers").unwrap().json();
        b["services"]["limited"]["concurrency"]["in_use"] == 1
    });
    assert_reason(&call(&sc, "limited", &[]), 503, "overflow");
    assert_eq!(
        holder.join().unwrap().unwrap().status,
        200,
        "the admitted request completes"
    );

    // Both endpoints of `ejecting` fail once each and are ejected: the third request finds none.
    for _ in 0..2 {
        assert_eq!(
            call(&sc, "ejecting", &[]).status,
            503,
            "the failing app's own 503 passes through"
        );
    }
    assert_reason(&call(&sc, "ejecting", &[]), 503, "breaker-open");

    let m = metrics(&sc);
    for reason in [
        "unknown-service",
        "connect-failure",
        "request-timeout",
        "per-try-timeout",
        "no-healthy-endpoint",
        "upstream-reset",
        "deadline-exceeded",
        "overflow",
        "breaker-open",
    ] {
        assert!(
            sample(&m, "meshlab_sidecar_errors_total", &[("reason", reason)]) >= 1.0,
            "meshlab_sidecar_errors_total counts {reason}:\n{m}"
        );
    }
    assert_eq!(
        sample(
            &m,
            "meshlab_breaker_ejections_total",
            &[("upstream", "ejecting")]
        ),
        2.0,
        "two ejections"
    );
    assert_eq!(
        sample(&m, "meshlab_breaker_state", &[("upstream", "ejecting")]),
        1.0,
        "an ejected endpoint reads 1 (open)"
    );
    assert_eq!(
        sample(
            &m,
            "meshlab_endpoints",
            &[("upstream", "ejecting"), ("state", "ejected")]
        ),
        2.0,
        "both ejected"
    );
    assert_eq!(
        sample(&m, "meshlab_overflow_total", &[("upstream", "limited")]),
        1.0,
        "one overflow"
    );
    assert_eq!(
        sample(
            &m,
            "meshlab_timeouts_total",
            &[("upstream", "slow"), ("kind", "request")]
        ),
        1.0,
        "one request timeout"
    );
    assert_eq!(
        sample(
            &m,
            "meshlab_timeouts_total",
            &[("upstream", "pertry"), ("kind", "per_try")]
        ),
        1.0,
        "one per-try timeout"
    );
    assert!(
        sample(
            &m,
            "meshlab_timeouts_total",
            &[("upstream", "slow"), ("kind", "deadline")]
        ) >= 1.0,
        "the passed deadline is counted"
    );
    assert_eq!(
        sample(
            &m,
            "meshlab_upstream_attempts_total",
            &[("upstream", "dead"), ("result", "connect_failure")]
        ),
        2.0,
        "two connect failures"
    );
    assert_eq!(
        sample(
            &m,
            "meshlab_retries_total",
            &[("upstream", "dead"), ("reason", "connect_failure")]
        ),
        1.0,
        "one retry after a connect failure"
    );
    assert_eq!(
        sample(
            &m,
            "meshlab_requests_total",
            &[("upstream", "_unknown"), ("class", "4xx")]
        ),
        1.0,
        "the unknown service's 404"
    );
    assert_eq!(
        sample(&m, "meshlab_table_version", &[]),
        0.0,
        "gauges without labels are read apart"
    );
    assert!(
        m.contains("meshlab_table_version 1"),
        "the active table version is exported:\n{m}"
    );
}

#[test]
fn retried_requests_move_the_retry_and_attempt_counters() {
    let bad = app("bad", &["--error-rate", "1.0"]);
    let good = app("good", &[]);
    let table = temp_table(
        "retries",
        &format!(
            r#"version = 1
[services.b]
endpoints = ["{}", "{}"]
retries = {{ attempts = 2, on = ["5xx"], budget = {{ ratio = 1.0 }} }}
breaker = {{ consecutive_failures = 1000 }}
"#,
            bad.addr("app"),
            good.addr("app")
        ),
    );
    let sc = sidecar(&table, &[]);
    for i in 0..10 {
        let r = call(&sc, "b", &[]);
        assert_eq!(
            r.status, 200,
            "request {i} succeeds after at most one retry: {r:?}"
        );
    }
    let m = metrics(&sc);
    let retries = sample(
        &m,
        "meshlab_retries_total",
        &[("upstream", "b"), ("reason", "status")],
    );
    let failed = sample(
        &m,
        "meshlab_upstream_attempts_total",
        &[("upstream", "b"), ("result", "failure_status")],
    );
    let ok = sample(
        &m,
        "meshlab_upstream_attempts_total",
        &[("upstream", "b"), ("result", "success")],
    );
    assert!(
        retries >= 4.0,
        "round-robin sends about half the first tries to the failing app: {retries} retries\n{m}"
    );
    assert_eq!(retries, failed, "every failed try was retried");
    assert_eq!(ok, 10.0, "ten successful tries");
    assert_eq!(
        sample(
            &m,
            "meshlab_requests_total",
            &[("upstream", "b"), ("class", "2xx")]
        ),
        10.0,
        "ten 2xx requests"
    );
    assert!(
        sample(
            &m,
            "meshlab_request_duration_seconds_count",
            &[("upstream", "b")]
        ) == 10.0,
        "the duration histogram saw every request"
    );
}

#[test]
fn the_access_log_has_one_json_line_per_request_with_its_outcome() {
    let b = app("b-0", &[]);
    let table = temp_table(
        "access",
        &format!(
            "version = 1\n[services.b]\nendpoints = [\"{}\"]\n",
            b.addr("app")
        ),
    );
    let sc = sidecar(&table, &["--access-log", "--log-format", "json"]);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let ok = call(
        &sc,
        "b",
        &[("traceparent", &format!("00-{trace}-b7ad6b7169203331-01"))],
    );
    assert_eq!(ok.status, 200, "routed: {ok:?}");
    assert_eq!(call(&sc, "nope", &[]).status, 404, "unknown service");
    let lines = || -> Vec<serde_json::Value> {
        sc.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .collect()
    };
    wait_until("two access-log lines", Duration::from_secs(5), || {
        lines().len() >= 2
    });
    let logged = lines();
    let first = &logged[0];
    assert_eq!(
        first["trace_id"], trace,
        "the trace id from traceparent: {first}"
    );
    assert_eq!(first["direction"], "outbound", "{first}");
    assert_eq!(first["upstream"], "b", "{first}");
    assert_eq!(
        first["endpoint"],
        b.addr("app").to_string().as_str(),
        "{first}"
    );
    assert_eq!(
        (first["status"].as_u64(), first["attempts"].as_u64()),
        (Some(200), Some(1)),
        "{first}"
    );
    assert!(
        first["duration_ms"].as_f64().is_some_and(|d| d > 0.0),
        "{first}"
    );
    let second = &logged[1];
    assert_eq!(
        (second["status"].as_u64(), second["reason"].as_str()),
        (Some(404), Some("unknown-service")),
        "{second}"
    );
}

#[test]
fn metrics_off_counts_nothing_and_says_so() {
    let up = app("up", &[]);
    let table = temp_table(
        "off",
        &format!(
            "version = 1\n[services.b]\nendpoints = [\"{}\"]\n",
            up.addr("app")
        ),
    );
    let on = sidecar(&table, &[]);
    let off = sidecar(&table, &["--metrics", "off"]);
    for sc in [&on, &off] {
        assert_eq!(call(sc, "b", &[]).status, 200);
    }
    let counted = |m: &str| {
        sample(
            m,
            "meshlab_requests_total",
            &[("upstream", "b"), ("class", "2xx")],
        )
    };
    assert_eq!(counted(&metrics(&on)), 1.0, "on: the request is counted");
    let r = get(off.addr("admin"), "/metrics").unwrap();
    assert_eq!(r.status, 404, "off: /metrics says so: {r:?}");
    assert!(r.body.contains("--metrics off"), "{}", r.body);
    let b = get(off.addr("admin"), "/breakers").unwrap();
    assert_eq!(b.status, 200, "the rest of the admin port works: {b:?}");
}

#[test]
fn drain_needs_the_admin_token_and_takes_ready_down() {
    let up = app("drain", &[]);
    let table = temp_table(
        "drain",
        &format!(
            "version = 1\n[services.b]\nendpoints = [\"{}\"]\n",
            up.addr("app")
        ),
    );
    let no_token = sidecar(&table, &[]);
    let r = http(no_token.addr("admin"), "POST", "/drain", &[], b"").unwrap();
    assert_eq!(r.status, 403, "disabled without a token: {r:?}");
    assert!(r.body.contains("--admin-token"), "{}", r.body);

    let sc = sidecar(&table, &["--admin-token", "s3cret"]);
    let admin = sc.addr("admin");
    let post = |path: &str, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        http(admin, "POST", path, &h, b"").unwrap()
    };
    let r = post("/drain", None);
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(post("/drain", Some("Bearer wrong")).status, 401);
    assert_eq!(
        get(admin, "/ready").unwrap().status,
        200,
        "refused: nothing changed"
    );

    let r = post("/drain", Some("Bearer s3cret"));
    assert_eq!(r.status, 200, "{r:?}");
    let ready = get(admin, "/ready").unwrap();
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("draining"), "{}", ready.body);
    assert_eq!(
        call(&sc, "b", &[]).status,
        200,
        "a draining sidecar still serves what arrives"
    );
    assert_eq!(
        post("/undrain", Some("bearer s3cret")).status,
        200,
        "the auth scheme in any case (RFC 9110 11.1)"
    );
    assert_eq!(get(admin, "/ready").unwrap().status, 200);
}
