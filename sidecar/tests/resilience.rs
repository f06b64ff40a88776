//! Resilience in a real mesh: retries, retry budgets, breakers, concurrency limits, deadlines and
//! the balancers, each seen from a client calling through its sidecar.
//!
//! Every scenario runs real processes on loopback, each on a port the kernel picked:
//! `mesh-service` replicas of a service `b`, each behind its own sidecar, and a client sidecar
//! whose outbound listener the test calls (`client sidecar outbound -> replica sidecar inbound ->
//! app`). The client sidecar reads its routing table from a file (`--table`, reread when it
//! changes); the test writes that file with the replicas' inbound addresses and the policy under
//! test, and rewrites it (new version) to change the policy.
//!
//! The ground truth for "how many attempts reached the service" is each app's own
//! `mesh_service_requests_total` (summed over status classes), never the sidecar's word.
//!
//! Each test reads like a story: what runs, what goes wrong, what the client sees.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{
    free_port, get, http, sidecar_cmd, start_ready_sidecar, wait_http_ok, wait_until, Proc,
    Response,
};

const READY: Duration = Duration::from_secs(30);
/// Where a table points before the real addresses are known (the discard port: refuses).
const PLACEHOLDER: &str = "127.0.0.1:9";

// ---------------------------------------------------------------------------------------------
// Helpers: processes, tables, metrics

/// A scratch directory for table files, removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d =
            std::env::temp_dir().join(format!("meshlab-resilience-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create the test's temp dir");
        TempDir(d)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes then renames, so a sidecar never reads half a table.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write the table");
    std::fs::rename(&tmp, path).expect("rename the table into place");
}

/// `["127.0.0.1:1", "127.0.0.1:2"]` as TOML.
fn toml_list(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// One `[services.NAME]` section: its endpoints, then `policy` (TOML lines of that section).
fn service_section(name: &str, endpoints: &[SocketAddr], policy: &str) -> String {
    format!(
        "[services.{name}]\nendpoints = {}\n{}\n",
        toml_list(endpoints),
        policy.trim()
    )
}

/// A `mesh-service` listening on `listen` (port 0 unless the test reserved one).
fn app_at(name: &str, instance: &str, listen: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--name", name, "--instance", instance, "--listen", listen];
    args.extend_from_slice(extra);
    let p = Proc::start("mesh-service", &args);
    wait_http_ok(p.addr("app"), "/healthz", READY);
    p
}

fn app(name: &str, instance: &str, extra: &[&str]) -> Proc {
    app_at(name, instance, "127.0.0.1:0", extra)
}

/// A sidecar for `service` reading `table` (rechecked every 200 ms), fronting `app`.
fn sidecar(service: &str, table: &Path, app: SocketAddr) -> Proc {
    let mut cmd = sidecar_cmd(service, app);
    cmd.args(["--table", table.to_str().expect("utf-8 temp path")]);
    cmd.args(["--poll-interval", "200ms"]);
    start_ready_sidecar(&mut cmd, "sidecar", READY)
}

fn admin_json(sc: &Proc, path: &str) -> Value {
    get(sc.addr("admin"), path)
        .unwrap_or_else(|e| panic!("{}: admin {path} answers: {e}", sc.name))
        .json()
}

fn wait_version(sc: &Proc, version: u64) {
    wait_until(
        &format!("{} to run table version {version}", sc.name),
        Duration::from_secs(10),
        || admin_json(sc, "/config")["version"] == version,
    );
}

/// The sum of every sample of a metric family (all label sets) in an app's `/metrics`.
fn metric_sum(app: &Proc, family: &str) -> f64 {
    let text = get(app.addr("app"), "/metrics")
        .unwrap_or_else(|e| panic!("{}: /metrics answers: {e}", app.name))
        .body;
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests the app answered, whatever their status: the attempts that reached it.
fn served(app: &Proc) -> u64 {
    metric_sum(app, "mesh_service_requests_total") as u64
}

/// `PUT /behaviour` on an app, directly (not through the mesh).
fn put_behaviour(app: &Proc, json: &str) {
    let r = http(
        app.addr("app"),
        "PUT",
        "/behaviour",
        &[("Content-Type", "application/json")],
        json.as_bytes(),
    )
    .expect("PUT /behaviour answers");
    assert_eq!(
        r.status, 200,
        "{}: PUT /behaviour {json} accepted: {r:?}",
        app.name
    );
}

/// How many attempts the client sidecar says it made (`x-mesh-attempts`, absent means one).
fn attempts_of(r: &Response) -> u64 {
    r.header("x-mesh-attempts")
        .map(|v| v.parse().expect("x-mesh-attempts is a number"))
        .unwrap_or(1)
}

fn instance_of(r: &Response) -> String {
    r.json()["instance"]
        .as_str()
        .unwrap_or_else(|| panic!("the answer names its instance: {}", r.body))
        .to_owned()
}

/// One replica of service `b`: its app and the sidecar in front of it.
struct Replica {
    app: Proc,
    sidecar: Proc,
    instance: String,
}

impl Replica {
    fn inbound(&self) -> SocketAddr {
        self.sidecar.addr("inbound")
    }
    fn served(&self) -> u64 {
        served(&self.app)
    }
}

/// Replicas of `b` behind their sidecars, and a client sidecar (service `a`) whose table file
/// lists the replicas' inbound listeners under the policy being tested.
struct Mesh {
    _dir: TempDir,
    client_table: PathBuf,
    client: Proc,
    replicas: Vec<Replica>,
}

impl Mesh {
    /// Replica `i` runs `mesh-service --instance b-i --seed 1000+i` plus `replica_args[i]` and
    /// is the `i`-th endpoint in address order. The replicas' sidecars read a table of their own
    /// whose only use is the inbound app timeout (30 s, out of the way). The client's table is
    /// version 1: `b` = every replica, with `policy`.
    fn start(name: &str, replica_args: &[&[&str]], policy: &str) -> Mesh {
        let dir = TempDir::new(name);
        let replica_table = dir.file("replica.toml");
        write_atomic(
            &replica_table,
            &format!(
                "version = 1\n{}",
                service_section(
                    "b",
                    &[PLACEHOLDER.parse().unwrap()],
                    "timeouts = { request_ms = 30000 }"
                )
            ),
        );
        // Sidecars first, each told the port its app will listen on (see `free_port`), then
        // sorted by inbound address: the sidecar keeps a service's endpoints in address order,
        // so b-0 is the first endpoint round-robin visits, b-1 the second, and so on. With the
        // fixed seeds that makes every round-robin run the same, whatever ports the kernel gave.
        let mut sidecars: Vec<(SocketAddr, Proc)> = replica_args
            .iter()
            .map(|_| {
                let listen = free_port();
                (listen, sidecar("b", &replica_table, listen))
            })
            .collect();
        sidecars.sort_by_key(|(_, sc)| sc.addr("inbound"));
        let replicas: Vec<Replica> = sidecars
            .into_iter()
            .zip(replica_args)
            .enumerate()
            .map(|(i, ((listen, sidecar), extra))| {
                let instance = format!("b-{i}");
                let seed = (1000 + i).to_string();
                let mut args = vec!["--seed", seed.as_str()];
                args.extend_from_slice(extra);
                let app = app_at("b", &instance, &listen.to_string(), &args);
                Replica {
                    app,
                    sidecar,
                    instance,
                }
            })
            .collect();
        let client_table = dir.file("client.toml");
        let inbound: Vec<SocketAddr> = replicas.iter().map(Replica::inbound).collect();
        write_atomic(
            &client_table,
            &format!("version = 1\n{}", service_section("b", &inbound, policy)),
        );
        let client = sidecar("a", &client_table, PLACEHOLDER.parse().unwrap());
        wait_version(&client, 1);
        Mesh {
            _dir: dir,
            client_table,
            client,
            replicas,
        }
    }

    fn inbound(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(Replica::inbound).collect()
    }

    /// Rewrites the client's table (version `version`: `b` = `endpoints` with `policy`) and
    /// waits until the client sidecar runs it.
    fn set_table(&self, version: u64, endpoints: &[SocketAddr], policy: &str) {
        write_atomic(
            &self.client_table,
            &format!(
                "version = {version}\n{}",
                service_section("b", endpoints, policy)
            ),
        );
        wait_version(&self.client, version);
    }

    /// A request to `b` through the client sidecar's outbound listener.
    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut h = vec![("Host", "b")];
        h.extend_from_slice(headers);
        http(self.client.addr("outbound"), method, path, &h, body)
            .unwrap_or_else(|e| panic!("the client sidecar answers {method} {path}: {e}"))
    }

    fn get(&self, path: &str) -> Response {
        self.call("GET", path, &[], b"")
    }

    /// `/breakers` of the client sidecar, service `b`.
    fn breakers(&self) -> Value {
        let all = admin_json(&self.client, "/breakers");
        let b = all["services"]["b"].clone();
        assert!(b.is_object(), "/breakers has service b: {all}");
        b
    }

    /// The breaker entry of one endpoint in `/breakers`.
    fn breaker_of(&self, addr: SocketAddr) -> Value {
        let b = self.breakers();
        b["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("/breakers lists b's endpoints: {b}"))
            .iter()
            .find(|e| e["addr"] == addr.to_string().as_str())
            .unwrap_or_else(|| panic!("/breakers lists endpoint {addr}: {b}"))
            .clone()
    }

    /// Attempts that reached any replica so far.
    fn served(&self) -> u64 {
        self.replicas.iter().map(Replica::served).sum()
    }
}

/// What a 504 that is not the client sidecar's own `request-timeout` most likely means.
const INBOUND_FIRST: &str =
    "a `meshlab-<service>-inbound` Proxy-Status means the replica's inbound \
    sidecar, timing its app out on the x-mesh-deadline-ms it was sent, answered before the client \
    sidecar's own timer fired";

/// The retry policy of most scenarios: quick backoff so hundreds of requests stay fast.
const FAST_BACKOFF: &str = "backoff_ms = [1, 5]";

// ---------------------------------------------------------------------------------------------
// 1. Retries turn a flaky service into a reliable one

#[test]
fn retries_turn_a_service_failing_30_percent_into_99_percent_success() {
    // Three replicas, each failing 30% of its requests with 503. The breaker is kept out of the
    // way (scenario 2 is about it): this is about retries alone.
    let flaky: &[&str] = &["--error-rate", "0.3"];
    let policy = |attempts: u32| {
        format!(
            "lb = \"round-robin\"\n\
             timeouts = {{ connect_ms = 200, request_ms = 5000 }}\n\
             retries = {{ attempts = {attempts}, on = [\"5xx\"], {FAST_BACKOFF}, \
             budget = {{ ratio = 1.0, min_per_s = 100 }} }}\n\
             breaker = {{ consecutive_failures = 1000 }}"
        )
    };
    let mesh = Mesh::start("flaky", &[flaky, flaky, flaky], &policy(4));

    // Failures are independent per attempt, so a request fails only if every attempt does:
    // - attempts = 4: 0.3^4 = 0.81% fail, ~99.2% succeed: about 4 failures in 500 (sd ~2);
    // - attempts = 3: 0.3^3 = 2.7% fail, ~97.3% succeed: about 13.5 failures in 500 (sd ~3.6),
    //   hence the looser 96% bound for that run.
    // Both bounds are within two standard deviations of the expectation, so a random run would
    // fail now and then. This one is not random: each replica's errors come from its fixed
    // seed, the requests are sequential and round-robin visits the replicas in address order,
    // which `Mesh::start` makes b-0, b-1, b-2. The same 1000 requests happen every run (today:
    // 498/500 and 482/500).
    for (version, attempts, min_ok) in [(1u64, 4u64, 495usize), (2, 3, 480)] {
        if version > 1 {
            mesh.set_table(version, &mesh.inbound(), &policy(attempts as u32));
        }
        let before = mesh.served();
        let (mut ok, mut claimed, mut retried_ok) = (0usize, 0u64, 0usize);
        for i in 0..500 {
            let r = mesh.get(&format!("/flaky/{i}"));
            let n = attempts_of(&r);
            claimed += n;
            match r.status {
                200 => {
                    ok += 1;
                    if n > 1 {
                        retried_ok += 1;
                    }
                }
                503 => assert_eq!(
                    n, attempts,
                    "attempts={attempts}: a request the client sees fail used every attempt \
                     (not refused by the generous budget): {r:?}"
                ),
                _ => panic!("attempts={attempts}: only 200 or the app's 503 are expected: {r:?}"),
            }
        }
        let reached = mesh.served() - before;
        assert!(
            ok >= min_ok,
            "attempts={attempts}: {ok}/500 succeeded, expected at least {min_ok}"
        );
        assert!(
            retried_ok > 50,
            "attempts={attempts}: many successes needed a retry ({retried_ok}); 30% of first \
             attempts fail"
        );
        assert_eq!(
            reached, claimed,
            "attempts={attempts}: the apps served exactly the attempts the sidecar reported \
             in x-mesh-attempts"
        );
        assert!(
            reached > 600 && reached < 800,
            "attempts={attempts}: ~1.42 attempts per request expected (1 + .3 + .09 + ...), \
             the apps served {reached} for 500 requests"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The breaker ejects a replica that fails every request, and lets it back once it recovers

#[test]
fn a_replica_failing_every_request_is_ejected_and_readmitted_after_it_recovers() {
    let policy = format!(
        "lb = \"round-robin\"\n\
         timeouts = {{ connect_ms = 200, request_ms = 5000 }}\n\
         retries = {{ attempts = 2, on = [\"5xx\"], {FAST_BACKOFF} }}\n\
         breaker = {{ consecutive_failures = 3, base_ejection_ms = 1000, \
         max_ejected_percent = 50 }}"
    );
    let mesh = Mesh::start("eject", &[&[], &[], &[]], &policy);
    let bad = &mesh.replicas[2];
    let bad_addr = bad.inbound();

    // b-2 starts failing every request.
    put_behaviour(&bad.app, r#"{"error_rate":1.0}"#);
    let mut sent = 0;
    wait_until(
        "the client sidecar to eject b-2 after 3 failures in a row",
        Duration::from_secs(10),
        || {
            let r = mesh.get("/eject");
            sent += 1;
            assert_eq!(
                r.status, 200,
                "request {sent}: b-2's 503 is retried on a healthy replica: {r:?}"
            );
            mesh.breaker_of(bad_addr)["state"] == "open"
        },
    );
    let opened = Instant::now();
    let b = mesh.breakers();
    assert_eq!(b["ejected"], 1, "one endpoint is ejected: {b}");
    let e = mesh.breaker_of(bad_addr);
    assert_eq!(e["times_ejected"], 1, "b-2 was ejected once: {e}");
    for other in &mesh.replicas[..2] {
        assert_eq!(
            mesh.breaker_of(other.inbound())["state"],
            "closed",
            "{} stays closed",
            other.instance
        );
    }

    // While ejected (1 s), nothing reaches b-2 and every client request succeeds at once.
    let bad_before = bad.served();
    let mut during = 0;
    while opened.elapsed() < Duration::from_millis(600) {
        let r = mesh.get("/while-ejected");
        assert_eq!(r.status, 200, "requests succeed while b-2 is out: {r:?}");
        assert_eq!(
            attempts_of(&r),
            1,
            "no retry needed: the ejected replica is not tried: {r:?}"
        );
        assert_ne!(instance_of(&r), "b-2", "b-2 answers nothing while ejected");
        during += 1;
    }
    assert!(
        during >= 10,
        "enough requests ran inside the ejection window to mean something: {during}"
    );
    assert_eq!(
        bad.served(),
        bad_before,
        "b-2's request count did not grow while it was ejected ({during} requests sent)"
    );
    let e = mesh.breaker_of(bad_addr);
    assert_eq!(
        e["state"], "open",
        "the window checked above was inside the ejection: {e}"
    );

    // b-2 recovers. Once its ejection (1 s) is over, a request probes it and closes the breaker.
    put_behaviour(&bad.app, r#"{"error_rate":0.0}"#);
    wait_until(
        "a probe to close b-2's breaker once its 1 s ejection is over",
        Duration::from_secs(10),
        || {
            let r = mesh.get("/recovering");
            assert_eq!(r.status, 200, "requests keep succeeding: {r:?}");
            mesh.breaker_of(bad_addr)["state"] == "closed"
        },
    );
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "b-2 came back only after its ejection: {:?} after it was seen open",
        opened.elapsed()
    );
    let e = mesh.breaker_of(bad_addr);
    assert_eq!(e["why"], "probe succeeded", "closed by a good probe: {e}");
    assert_eq!(mesh.breakers()["ejected"], 0, "nothing is ejected any more");
    let back = bad.served();
    for _ in 0..9 {
        let r = mesh.get("/recovered");
        assert_eq!(r.status, 200, "all replicas serve again: {r:?}");
    }
    assert!(
        bad.served() > back,
        "b-2 takes its share of traffic again (served {} -> {})",
        back,
        bad.served()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. A slow replica: p2c-ewma avoids it; per-try timeouts retry around it

#[test]
fn a_slow_replica_is_avoided_by_p2c_ewma_and_retried_around_by_per_try_timeouts() {
    let mesh = Mesh::start(
        "slow",
        &[
            &["--latency-ms", "500"],
            &["--latency-ms", "0"],
            &["--latency-ms", "0"],
        ],
        "lb = \"p2c-ewma\"\ntimeouts = { connect_ms = 200, request_ms = 5000 }",
    );
    let slow = &mesh.replicas[0];

    // p2c-ewma: after its first slow answer the 500 ms replica loses every comparison.
    let before = slow.served();
    for i in 0..100 {
        let r = mesh.get(&format!("/ewma/{i}"));
        assert_eq!(r.status, 200, "request {i} succeeds: {r:?}");
    }
    let to_slow = slow.served() - before;
    assert!(
        to_slow < 10,
        "p2c-ewma sent {to_slow} of 100 requests to the 500 ms replica, expected under 10"
    );

    // Round-robin with a 100 ms per-try timeout, retrying gateway errors (a per-try timeout is
    // one): every third request goes to the slow replica first, times out after 100 ms and is
    // retried on a fast one. The breaker is kept out of the way so the slow replica stays in the
    // rotation (otherwise its timeouts would soon eject it).
    mesh.set_table(
        2,
        &mesh.inbound(),
        &format!(
            "lb = \"round-robin\"\n\
             timeouts = {{ connect_ms = 200, per_try_ms = 100, request_ms = 5000 }}\n\
             retries = {{ attempts = 2, on = [\"gateway-error\"], {FAST_BACKOFF} }}\n\
             breaker = {{ consecutive_failures = 1000 }}"
        ),
    );
    let mut retried = 0;
    for i in 0..30 {
        let t0 = Instant::now();
        let r = mesh.get(&format!("/per-try/{i}"));
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "request {i} succeeds: {r:?}");
        assert_ne!(
            instance_of(&r),
            slow.instance,
            "request {i}: the slow replica never answers in time"
        );
        assert!(
            took < Duration::from_millis(400),
            "request {i} took {took:?}: a retry after a 100 ms per-try timeout is well under \
             the slow replica's 500 ms"
        );
        if attempts_of(&r) == 2 {
            retried += 1;
            assert!(
                took >= Duration::from_millis(100),
                "request {i} was retried only after the 100 ms per-try timeout: {took:?}"
            );
        } else {
            assert_eq!(attempts_of(&r), 1, "at most 2 attempts: {r:?}");
        }
    }
    assert!(
        (5..=15).contains(&retried),
        "about a third of 30 round-robin requests hit the slow replica first and were retried \
         elsewhere (x-mesh-attempts: 2): {retried}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. The retry budget caps the extra load when everything fails

#[test]
fn the_retry_budget_caps_retries_when_every_replica_fails() {
    let down: &[&str] = &["--error-rate", "1.0"];
    let mesh = Mesh::start(
        "budget",
        &[down, down, down],
        &format!(
            "lb = \"round-robin\"\n\
             timeouts = {{ connect_ms = 200, request_ms = 5000 }}\n\
             retries = {{ attempts = 3, on = [\"5xx\"], {FAST_BACKOFF}, \
             budget = {{ ratio = 0.2, min_per_s = 1, window_ms = 10000 }} }}\n\
             breaker = {{ consecutive_failures = 1000 }}"
        ),
    );
    const N: u64 = 200;
    let before = mesh.served();
    let mut retried = 0;
    for i in 0..N {
        let r = mesh.get(&format!("/budget/{i}"));
        assert_eq!(r.status, 503, "request {i}: every replica fails: {r:?}");
        if attempts_of(&r) > 1 {
            retried += 1;
        }
    }
    let reached = mesh.served() - before;
    // Without a budget: 3 attempts each, 600. The budget allows 20% of the requests in its
    // window (the whole run fits in 10 s) plus 1 retry/s over the 10 s window: 0.2*N + 10.
    let bound = N + N / 5 + 10 + 2;
    assert!(
        reached <= bound,
        "the replicas served {reached} attempts for {N} requests; the budget allows at most \
         {bound} (N + 0.2*N + 1/s * 10 s, +2 slack)"
    );
    assert!(
        reached > N,
        "some retries were made within the budget: {reached} attempts for {N} requests"
    );
    assert!(retried > 0, "some responses say they were retried");
    let budget = &mesh.breakers()["retry_budget"];
    assert!(
        budget["retries"].as_u64() <= budget["allowed"].as_u64(),
        "/breakers shows the budget spent, not overdrawn: {budget}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Only what is safe to repeat is repeated

#[test]
fn a_post_that_reached_the_app_is_never_retried_but_a_refused_connection_is() {
    let down: &[&str] = &["--error-rate", "1.0"];
    let policy = format!(
        "lb = \"round-robin\"\n\
         timeouts = {{ connect_ms = 200, request_ms = 5000 }}\n\
         retries = {{ attempts = 3, on = [\"5xx\", \"connect-failure\"], {FAST_BACKOFF}, \
         budget = {{ ratio = 1.0, min_per_s = 100 }} }}\n\
         breaker = {{ consecutive_failures = 1000 }}"
    );
    let mesh = Mesh::start("idempotent", &[down, down], &policy);

    // A POST reaches a failing app once: it may have had effects, so it is not repeated.
    let before = mesh.served();
    let r = mesh.call("POST", "/orders", &[], b"{\"n\":1}");
    assert_eq!(r.status, 503, "the app's 503 comes back as it is: {r:?}");
    assert_eq!(attempts_of(&r), 1, "the POST was not retried: {r:?}");
    assert_eq!(
        mesh.served() - before,
        1,
        "the failing POST reached the apps exactly once"
    );

    // A GET is retried up to the 3 attempts.
    let before = mesh.served();
    let r = mesh.get("/orders");
    assert_eq!(r.status, 503, "every attempt fails: {r:?}");
    assert_eq!(attempts_of(&r), 3, "the GET used its 3 attempts: {r:?}");
    assert_eq!(
        mesh.served() - before,
        3,
        "the failing GET reached the apps 3 times"
    );

    // Now b-0 is healthy and the table also lists a dead endpoint (a closed port). A refused
    // connection sent nothing, so even a POST is retried, on the live endpoint.
    put_behaviour(&mesh.replicas[0].app, r#"{"error_rate":0.0}"#);
    let dead = free_port();
    let live = &mesh.replicas[0];
    mesh.set_table(2, &[dead, live.inbound()], &policy);
    let before = live.served();
    let mut retried = 0;
    for i in 0..20 {
        let r = mesh.call("POST", &format!("/orders/{i}"), &[], b"{\"n\":2}");
        assert_eq!(
            r.status, 200,
            "POST {i} succeeds despite the dead endpoint: {r:?}"
        );
        if attempts_of(&r) > 1 {
            retried += 1;
        }
    }
    assert!(
        retried > 0,
        "round-robin sent some POSTs to the dead endpoint first; they were retried"
    );
    assert_eq!(
        live.served() - before,
        20,
        "each POST reached the live app exactly once"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Timeouts, and deadlines that travel down a chain of calls

#[test]
fn a_slow_service_times_out_at_request_ms() {
    let mesh = Mesh::start(
        "timeout",
        &[&["--latency-ms", "5000"]],
        "timeouts = { connect_ms = 200, request_ms = 1000 }",
    );
    let t0 = Instant::now();
    let r = mesh.get("/slow");
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "the 5 s service times out: {r:?}");
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_millis(2000),
        "the 504 came after about request_ms (1 s): {took:?}"
    );
    assert_eq!(
        r.header("x-mesh-error"),
        Some("request-timeout"),
        "the client sidecar says why ({INBOUND_FIRST}): {r:?}"
    );
}

#[test]
fn a_deadline_shrinks_down_the_chain_and_the_last_hop_does_no_work() {
    // client sidecar -> b (400 ms, then calls c through its own sidecar) -> c.
    let dir = TempDir::new("deadline");
    let placeholder: SocketAddr = PLACEHOLDER.parse().unwrap();
    let generous = "timeouts = { connect_ms = 200, request_ms = 30000 }";

    let c_table = dir.file("c.toml");
    write_atomic(
        &c_table,
        &format!(
            "version = 1\n{}",
            service_section("c", &[placeholder], generous)
        ),
    );
    let c_app = app("c", "c-0", &[]);
    let c_sc = sidecar("c", &c_table, c_app.addr("app"));

    // b's app must know its sidecar's outbound address and the sidecar its app's address:
    // reserve a port for the app (see `free_port` for the small race), start the sidecar
    // pointing at it, then the app on it with the sidecar's outbound as its proxy.
    let b_table = dir.file("b.toml");
    write_atomic(
        &b_table,
        &format!(
            "version = 1\n{}{}",
            service_section("b", &[placeholder], generous),
            service_section("c", &[c_sc.addr("inbound")], generous)
        ),
    );
    let b_listen = free_port();
    let b_sc = sidecar("b", &b_table, b_listen);
    let b_proxy = b_sc.addr("outbound").to_string();
    let b_app = app_at(
        "b",
        "b-0",
        &b_listen.to_string(),
        &["--sidecar", &b_proxy, "--calls", "c", "--latency-ms", "400"],
    );

    // Without a deadline the chain works: b answers after 400 ms with c's answer.
    let client_table = dir.file("client.toml");
    write_atomic(
        &client_table,
        &format!(
            "version = 1\n{}{}",
            service_section("b", &[b_sc.addr("inbound")], generous),
            service_section("c", &[c_sc.addr("inbound")], generous)
        ),
    );
    let client = sidecar("a", &client_table, placeholder);
    let call_b = || {
        http(
            client.addr("outbound"),
            "GET",
            "/chain",
            &[("Host", "b")],
            b"",
        )
        .expect("the client sidecar answers")
    };
    let r = call_b();
    assert_eq!(r.status, 200, "the chain works with time to spare: {r:?}");
    assert_eq!(
        r.json()["calls"][0]["status"],
        200,
        "b called c: {}",
        r.body
    );
    let c_before = served(&c_app);
    assert_eq!(c_before, 1, "c served that one call");

    // b's route gets request_ms = 300, less than b's own 400 ms.
    write_atomic(
        &client_table,
        &format!(
            "version = 2\n{}{}",
            service_section(
                "b",
                &[b_sc.addr("inbound")],
                "timeouts = { connect_ms = 200, request_ms = 300 }\nretries = { attempts = 1 }"
            ),
            service_section("c", &[c_sc.addr("inbound")], generous)
        ),
    );
    wait_version(&client, 2);
    let t0 = Instant::now();
    let r = call_b();
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "b cannot answer within 300 ms: {r:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(800),
        "the 504 came after about 300 ms: {took:?}"
    );
    assert_eq!(
        r.header("x-mesh-error"),
        Some("request-timeout"),
        "the client sidecar timed the request out ({INBOUND_FIRST}): {r:?}"
    );
    // b finishes its 400 ms and would call c with what is left of the deadline: nothing. Give it
    // the time it would take (the window is the point here).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        served(&c_app),
        c_before,
        "c did no work for a caller that had given up (b's downstream calls: {})",
        metric_sum(&b_app, "mesh_service_downstream_calls_total")
    );

    // Step by step. b's sidecar refuses a call whose deadline has passed, without calling c:
    let r = http(
        b_sc.addr("outbound"),
        "GET",
        "/late",
        &[("Host", "c"), ("x-mesh-deadline-ms", "0")],
        b"",
    )
    .expect("b's sidecar answers");
    assert_eq!(r.status, 504, "a spent deadline is refused: {r:?}");
    assert_eq!(
        r.header("x-mesh-error"),
        Some("deadline-exceeded"),
        "b's sidecar names the reason: {r:?}"
    );
    // and b, given 300 ms but taking 400 ms, forwards the deadline shrunk to 0:
    let r = http(
        b_app.addr("app"),
        "GET",
        "/direct",
        &[("x-mesh-deadline-ms", "300")],
        b"",
    )
    .expect("b answers");
    assert_eq!(r.status, 502, "b's call to c failed: {r:?}");
    assert_eq!(
        r.json()["calls"][0]["status"],
        504,
        "b's sidecar answered b's call to c with 504 (deadline exceeded): {}",
        r.body
    );
    assert_eq!(
        served(&c_app),
        c_before,
        "c never saw a request whose deadline had passed"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The concurrency limit sheds load at once instead of queueing it

#[test]
fn past_max_concurrent_requests_overflow_at_once() {
    let mesh = Mesh::start(
        "overflow",
        &[&["--latency-ms", "300"]],
        "timeouts = { connect_ms = 200, request_ms = 5000 }\n\
         breaker = { max_concurrent = 10, max_pending = 0 }",
    );
    let before = mesh.served();
    const CLIENTS: usize = 50;
    let start = Arc::new(Barrier::new(CLIENTS + 1));
    let out = mesh.client.addr("outbound");
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let t0 = Instant::now();
                let r = http(out, "GET", &format!("/c/{i}"), &[("Host", "b")], b"")
                    .expect("the client sidecar answers");
                (r, t0.elapsed())
            })
        })
        .collect();
    start.wait();
    wait_until(
        "/breakers to show 10 requests in flight",
        Duration::from_secs(2),
        || mesh.breakers()["concurrency"]["in_use"] == 10,
    );
    let c = mesh.breakers()["concurrency"].clone();
    assert_eq!(c["max_concurrent"], 10, "the limit is shown: {c}");
    assert_eq!(c["max_pending"], 0, "no waiting line: {c}");

    let results: Vec<(Response, Duration)> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let mut ok = 0;
    let mut overflow = 0;
    for (r, took) in &results {
        match r.status {
            200 => {
                ok += 1;
                assert!(
                    *took >= Duration::from_millis(300),
                    "an admitted request took the service's 300 ms: {took:?}"
                );
            }
            503 => {
                overflow += 1;
                assert_eq!(
                    r.header("x-mesh-error"),
                    Some("overflow"),
                    "a refused request says overflow: {r:?}"
                );
                assert!(
                    *took < Duration::from_millis(150),
                    "overflow is answered at once, not after waiting: {took:?}"
                );
            }
            _ => panic!("only 200 or 503 overflow are expected: {r:?}"),
        }
    }
    assert!(
        (10..=15).contains(&ok),
        "about max_concurrent (10) of {CLIENTS} simultaneous requests are served: {ok}"
    );
    assert_eq!(ok + overflow, CLIENTS, "every request is accounted for");
    assert_eq!(
        mesh.served() - before,
        ok as u64,
        "only the admitted requests reached the app"
    );
    let c = mesh.breakers()["concurrency"].clone();
    assert_eq!(
        c["overflows_total"], overflow as u64,
        "/breakers counts the overflows: {c}"
    );
    wait_until("the slots to be free again", Duration::from_secs(2), || {
        mesh.breakers()["concurrency"]["in_use"] == 0
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Consistent hashing keeps users on their replica, and moves few when one goes

#[test]
fn ring_hash_keeps_each_user_on_one_replica_and_moves_only_the_removed_ones_users() {
    let policy = "lb = \"ring-hash\"\nhash_header = \"x-user\"\n\
                  timeouts = { connect_ms = 200, request_ms = 5000 }";
    let mesh = Mesh::start("ring", &[&[], &[], &[], &[]], policy);
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();
    let placement = |rounds: usize| -> BTreeMap<String, String> {
        users
            .iter()
            .map(|u| {
                let seen: HashSet<String> = (0..rounds)
                    .map(|_| {
                        let r = mesh.call("GET", "/profile", &[("x-user", u)], b"");
                        assert_eq!(r.status, 200, "{u}: {r:?}");
                        instance_of(&r)
                    })
                    .collect();
                assert_eq!(
                    seen.len(),
                    1,
                    "{u} always reaches the same instance over {rounds} requests: {seen:?}"
                );
                (u.clone(), seen.into_iter().next().unwrap())
            })
            .collect()
    };
    let before = placement(3);
    let used: HashSet<&String> = before.values().collect();
    assert!(
        used.len() >= 3,
        "50 users spread over the 4 replicas: {used:?}"
    );

    // b-1 leaves the table.
    let removed = &mesh.replicas[1];
    let rest: Vec<SocketAddr> = mesh
        .replicas
        .iter()
        .filter(|r| r.instance != removed.instance)
        .map(Replica::inbound)
        .collect();
    mesh.set_table(2, &rest, policy);
    let after = placement(2);

    let moved: Vec<&String> = users.iter().filter(|u| before[*u] != after[*u]).collect();
    let on_removed: Vec<&String> = users
        .iter()
        .filter(|u| before[*u] == removed.instance)
        .collect();
    assert_eq!(
        moved, on_removed,
        "only the users that were on {} moved",
        removed.instance
    );
    let share = moved.len() as f64 / users.len() as f64;
    assert!(
        (0.10..=0.45).contains(&share),
        "about a quarter of the users moved: {} of {} ({:.0}%)",
        moved.len(),
        users.len(),
        share * 100.0
    );
}

#[test]
fn a_hedge_to_another_replica_answers_for_a_slow_one_within_the_budget() {
    // Two replicas, one 500 ms slow; hedge after 50 ms, round-robin so half the requests go to
    // the slow one first. The breaker stays out of the way so the slow one stays in rotation.
    let mesh = Mesh::start(
        "hedge",
        &[&["--latency-ms", "500"], &["--latency-ms", "0"]],
        "lb = \"round-robin\"\n\
         timeouts = { connect_ms = 200, request_ms = 5000 }\n\
         retries = { hedge_after_ms = 50, budget = { ratio = 1.0, min_per_s = 100 } }\n\
         breaker = { consecutive_failures = 1000 }",
    );
    let slow = &mesh.replicas[0];
    let mut hedged = 0;
    for i in 0..20 {
        let t0 = Instant::now();
        let r = mesh.get(&format!("/hedge/{i}"));
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "request {i} succeeds: {r:?}");
        assert_ne!(
            instance_of(&r),
            slow.instance,
            "request {i}: the fast replica always answers first"
        );
        assert!(
            took < Duration::from_millis(400),
            "request {i} took {took:?}: the hedge answered, not the slow try"
        );
        if r.header("x-mesh-hedged") == Some("1") {
            hedged += 1;
            assert_eq!(attempts_of(&r), 2, "a hedged request made two tries");
            assert!(
                took >= Duration::from_millis(50),
                "the hedge went out only after 50 ms: {took:?}"
            );
        }
    }
    // Round-robin hands the hedge the next slot, so the next request starts on the slow
    // replica again: at least the half that round-robin alone sends there are hedged.
    assert!(
        hedged >= 10,
        "at least half the requests were hedged, got {hedged} of 20"
    );
    let body = mesh.call("POST", "/not-hedged", &[], b"x");
    assert_eq!(
        body.status, 200,
        "a POST is served on the normal path: {body:?}"
    );
    assert!(
        body.header("x-mesh-hedged").is_none(),
        "a request with a body is never hedged"
    );

    // With no budget left for hedges, requests that went to the slow replica wait for it.
    mesh.set_table(
        2,
        &mesh.inbound(),
        "lb = \"round-robin\"\n\
         timeouts = { connect_ms = 200, request_ms = 5000 }\n\
         retries = { hedge_after_ms = 50, budget = { ratio = 0.0, min_per_s = 0 } }\n\
         breaker = { consecutive_failures = 1000 }",
    );
    let mut slow_answers = 0;
    for i in 0..4 {
        let r = mesh.get(&format!("/no-budget/{i}"));
        assert_eq!(r.status, 200, "request {i} succeeds: {r:?}");
        assert!(
            r.header("x-mesh-hedged").is_none(),
            "no hedge without budget: {r:?}"
        );
        if instance_of(&r) == slow.instance {
            slow_answers += 1;
        }
    }
    assert!(
        slow_answers >= 1,
        "without budget the slow replica answers its share itself"
    );
}

fn healthy_of(mesh: &Mesh, addr: SocketAddr) -> bool {
    let eps = admin_json(&mesh.client, "/endpoints");
    eps["services"]["b"]["load"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["addr"] == addr.to_string().as_str()))
        .and_then(|e| e["healthy"].as_bool())
        .unwrap_or_else(|| panic!("{addr} in /endpoints: {eps}"))
}

#[test]
fn active_health_checks_take_a_hung_replica_out_and_bring_it_back() {
    // Three replicas checked every 100 ms (GET /healthz through each replica's sidecar,
    // 150 ms timeout); two failures in a row make an endpoint unhealthy, one pass brings it back.
    // The breaker and retries are off, so only health checks can keep traffic away.
    let mesh = Mesh::start(
        "health",
        &[&[], &[], &[]],
        "lb = \"round-robin\"\n\
         timeouts = { connect_ms = 200, request_ms = 3000 }\n\
         retries = { attempts = 1 }\n\
         breaker = { consecutive_failures = 1000 }\n\
         health_check = { path = \"/healthz\", interval_ms = 100, timeout_ms = 150, healthy = 1, unhealthy = 2 }",
    );
    let hung = &mesh.replicas[1];
    assert!(
        healthy_of(&mesh, hung.inbound()),
        "every replica starts healthy"
    );

    // The app hangs (SIGSTOP): its sidecar still accepts connections, but /healthz never answers.
    hung.app.signal(libc::SIGSTOP);
    wait_until(
        "the hung replica to be marked unhealthy",
        Duration::from_secs(5),
        || !healthy_of(&mesh, hung.inbound()),
    );
    for i in 0..12 {
        let r = mesh.get(&format!("/while-hung/{i}"));
        assert_eq!(
            r.status, 200,
            "request {i} avoids the unhealthy replica: {r:?}"
        );
        assert_ne!(
            instance_of(&r),
            hung.instance,
            "request {i} never reaches the hung replica"
        );
    }

    // It recovers: the next passing check puts it back in rotation.
    hung.app.signal(libc::SIGCONT);
    wait_until(
        "the replica to be healthy again",
        Duration::from_secs(5),
        || healthy_of(&mesh, hung.inbound()),
    );
    let back = (0..12)
        .map(|i| mesh.get(&format!("/after/{i}")))
        .filter(|r| instance_of(r) == hung.instance)
        .count();
    assert!(
        back >= 2,
        "the recovered replica takes its share again, got {back} of 12"
    );
}
