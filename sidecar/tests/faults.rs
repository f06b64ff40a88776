//! The table's HTTP faults on real traffic: a demo service behind a real sidecar, requests from
//! a raw HTTP client, faults matched by path and header, aborts met by the retry policy, delays
//! timed, both sides, and the counts in `/metrics`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::{get, http, wait_http_ok, Proc, Response};

fn app() -> Proc {
    let args = [
        "--name",
        "b",
        "--instance",
        "b-1",
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "3",
    ];
    let p = Proc::start("mesh-service", &args);
    wait_http_ok(p.addr("app"), "/healthz", Duration::from_secs(30));
    p
}

/// A table whose service `b` (at `app`) retries 5xx once and carries `faults`.
fn table(name: &str, app: SocketAddr, faults: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshlab-faults-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = format!(
        "version = 1\n[services.b]\nendpoints = [\"{app}\"]\n\
         retries = {{ attempts = 2, on = [\"5xx\"], backoff_ms = [1, 5] }}\n{faults}"
    );
    let p = dir.join("table.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn sidecar(service: &str, app: SocketAddr, table: &Path) -> Proc {
    testkit::table_sidecar(service, app, table)
}

fn call(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Response {
    let mut headers = vec![("Host", "b")];
    headers.extend_from_slice(extra);
    http(addr, "GET", path, &headers, b"").expect("the sidecar answers")
}

/// The value of `meshlab_faults_injected_total` for this fault and kind (0 when absent).
fn injected(sc: &Proc, direction: &str, fault: &str, kind: &str) -> f64 {
    let body = get(sc.addr("admin"), "/metrics").expect("/metrics").body;
    let labels = format!("fault=\"{fault}\",kind=\"{kind}\"");
    body.lines()
        .filter(|l| l.starts_with("meshlab_faults_injected_total{"))
        .filter(|l| l.contains(&labels) && l.contains(&format!("direction=\"{direction}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn an_abort_answers_for_the_service_and_retries_meet_it_as_a_failure() {
    let b = app();
    let t = table(
        "abort",
        b.addr("app"),
        "[[services.b.faults]]\nname = \"down\"\nabort = { status = 503, body = \"nope\\n\", grpc_status = 14 }\n\
         match = { path_prefix = \"/abort\" }\n",
    );
    let a = sidecar("a", b.addr("app"), &t);
    let out = a.addr("outbound");
    let r = call(out, "/abort/x", &[]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, "nope\n");
    assert_eq!(r.header("x-mesh-error"), Some("injected-fault"));
    assert_eq!(r.header("x-mesh-fault"), Some("down"));
    assert_eq!(r.header("grpc-status"), Some("14"));
    assert_eq!(
        r.header("x-mesh-attempts"),
        Some("2"),
        "503 is retried under the policy, and the retry meets the fault again"
    );
    assert_eq!(injected(&a, "outbound", "down", "abort"), 2.0);
    let r = call(out, "/other", &[]);
    assert_eq!(r.status, 200, "a path the fault does not match: {r:?}");
    assert_eq!(r.header("x-mesh-error"), None);
}

#[test]
fn failing_the_first_try_of_every_request_is_healed_by_one_retry() {
    let b = app();
    let t = table(
        "first",
        b.addr("app"),
        "[[services.b.faults]]\nname = \"flaky\"\nfirst_tries = 1\nabort = { status = 503 }\n",
    );
    let a = sidecar("a", b.addr("app"), &t);
    for _ in 0..5 {
        let r = call(a.addr("outbound"), "/", &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-mesh-attempts"), Some("2"));
    }
    // A POST too: an aborted try never reached the app, so it is sent again, body and all.
    let r = http(
        a.addr("outbound"),
        "POST",
        "/",
        &[("Host", "b")],
        b"payload",
    )
    .expect("the sidecar answers");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-mesh-attempts"), Some("2"));
    assert_eq!(injected(&a, "outbound", "flaky", "abort"), 6.0);
}

#[test]
fn a_delay_on_every_second_request_holds_exactly_those() {
    let b = app();
    let t = table(
        "delay",
        b.addr("app"),
        "[[services.b.faults]]\nname = \"slow\"\nevery = 2\ndelay = { fixed_ms = 300 }\n",
    );
    let a = sidecar("a", b.addr("app"), &t);
    let took: Vec<Duration> = (0..10)
        .map(|_| {
            let t0 = Instant::now();
            assert_eq!(call(a.addr("outbound"), "/", &[]).status, 200);
            t0.elapsed()
        })
        .collect();
    let slow = took
        .iter()
        .filter(|d| **d >= Duration::from_millis(300))
        .count();
    let fast = took
        .iter()
        .filter(|d| **d < Duration::from_millis(250))
        .count();
    assert_eq!(
        (slow, fast),
        (5, 5),
        "every second request held 300 ms: {took:?}"
    );
    assert_eq!(injected(&a, "outbound", "slow", "delay"), 5.0);
}

#[test]
fn only_requests_that_match_a_header_are_faulted() {
    let b = app();
    let t = table(
        "header",
        b.addr("app"),
        "[[services.b.faults]]\nname = \"test-users\"\nabort = { status = 500 }\n\
         match = { headers = { \"x-user\" = \"test\" } }\n",
    );
    let a = sidecar("a", b.addr("app"), &t);
    let out = a.addr("outbound");
    assert_eq!(call(out, "/", &[("X-User", "test")]).status, 500);
    assert_eq!(call(out, "/", &[("X-User", "prod")]).status, 200);
    assert_eq!(call(out, "/", &[]).status, 200);
}

#[test]
fn an_inbound_fault_is_injected_by_the_services_own_sidecar() {
    let b = app();
    let t = table(
        "inbound",
        b.addr("app"),
        "[[services.b.faults]]\nname = \"own\"\nside = \"inbound\"\nabort = { status = 502 }\n",
    );
    // b's own sidecar, in front of b's app.
    let sb = sidecar("b", b.addr("app"), &t);
    let r = call(sb.addr("inbound"), "/", &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-mesh-error"), Some("injected-fault"));
    assert_eq!(injected(&sb, "inbound", "own", "abort"), 1.0);
    // An inbound fault is not the callers' to inject.
    let a = sidecar("a", b.addr("app"), &t);
    assert_eq!(call(a.addr("outbound"), "/", &[]).status, 200);
}
