//! The sidecar in a real mesh: control plane, demo services and sidecars as separate processes
//! on loopback, each on a port the kernel picked.
//!
//! Each test reads like a story: what runs, what happens to it, what a client sees.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::{get, http, sidecar_cmd, start_ready_sidecar, wait_http_ok, wait_until, Proc};

const READY: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlab-sidecar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A table with one entry per service, each listing its endpoints.
fn table(version: u64, services: &[(&str, Vec<SocketAddr>)]) -> String {
    let mut t = format!("version = {version}\n");
    for (name, eps) in services {
        let list: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
        t.push_str(&format!(
            "[services.{name}]\nendpoints = [{}]\ntimeouts = {{ connect_ms = 200, request_ms = 5000 }}\nretries = {{ attempts = 2, on = [\"connect-failure\"] }}\n",
            list.join(", ")
        ));
    }
    t
}

fn write_table(dir: &Path, text: &str) {
    // Write then rename, so the control plane never reads half a file.
    let tmp = dir.join(".dev.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("dev.toml")).unwrap();
}

fn control_plane(dir: &Path) -> Proc {
    let p = Proc::start(
        "control-plane",
        &[
            "--tables",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--watch-interval",
            "100ms",
        ],
    );
    wait_http_ok(p.addr("control_plane"), "/healthz", READY);
    p
}

fn app(name: &str, instance: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--name",
        name,
        "--instance",
        instance,
        "--listen",
        "127.0.0.1:0",
        "--seed",
        "1",
    ];
    args.extend_from_slice(extra);
    let p = Proc::start("mesh-service", &args);
    wait_http_ok(p.addr("app"), "/healthz", READY);
    p
}

fn sidecar(service: &str, cp: SocketAddr, app: SocketAddr, poll: &str) -> Proc {
    let mut cmd = sidecar_cmd(service, app);
    cmd.args(["--control-plane", &format!("http://{cp}"), "--env", "dev"]);
    cmd.args(["--poll-interval", poll]);
    start_ready_sidecar(&mut cmd, "sidecar", READY)
}

fn config(sc: &Proc) -> serde_json::Value {
    get(sc.addr("admin"), "/config")
        .expect("admin /config answers")
        .json()
}

fn wait_version(sc: &Proc, version: u64, within: Duration) {
    wait_until(
        &format!("{} to run table version {version}", sc.name),
        within,
        || config(sc)["version"] == version,
    );
}

/// A request through a sidecar's outbound listener to `service`.
fn call(sc: &Proc, service: &str, path: &str) -> testkit::Response {
    http(sc.addr("outbound"), "GET", path, &[("Host", service)], b"").expect("outbound answers")
}

/// The usual mesh: a control plane, one replica per named service (app + sidecar), and a client
/// sidecar `a` whose outbound the test calls. The table starts with placeholder endpoints and is
/// then rewritten with the replicas' inbound addresses (version 2).
struct Mesh {
    dir: PathBuf,
    cp: Proc,
    client: Proc,
    replicas: Vec<(Proc, Proc)>,
}

impl Mesh {
    fn start(name: &str, replicas: usize, app_args: &[&str]) -> Mesh {
        let dir = temp_dir(name);
        let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
        write_table(
            &dir,
            &table(1, &[("a", vec![placeholder]), ("b", vec![placeholder])]),
        );
        let cp = control_plane(&dir);
        let cp_addr = cp.addr("control_plane");
        let mut reps = Vec::new();
        for i in 0..replicas {
            let app = app("b", &format!("b-{i}"), app_args);
            let sc = sidecar("b", cp_addr, app.addr("app"), "200ms");
            reps.push((app, sc));
        }
        let client = sidecar("a", cp_addr, placeholder, "200ms");
        let inbound: Vec<SocketAddr> = reps.iter().map(|(_, sc)| sc.addr("inbound")).collect();
        write_table(&dir, &table(2, &[("a", vec![placeholder]), ("b", inbound)]));
        wait_version(&client, 2, Duration::from_secs(10));
        Mesh {
            dir,
            cp,
            client,
            replicas: reps,
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_request_goes_outbound_sidecar_to_inbound_sidecar_to_the_service() {
    let mesh = Mesh::start("chain", 1, &[]);
    let r = call(&mesh.client, "b", "/hello?x=1");
    assert_eq!(
        r.status, 200,
        "the call through both sidecars succeeds: {r:?}"
    );
    let body = r.json();
    assert_eq!(body["service"], "b", "service b answered: {body}");
    assert_eq!(body["path"], "/hello", "the path reached the app: {body}");
    let inbound_b = mesh.replicas[0].1.addr("inbound").to_string();
    assert_eq!(
        r.header("x-mesh-upstream"),
        Some(inbound_b.as_str()),
        "the endpoint that answered: {r:?}"
    );
    assert_eq!(r.header("x-mesh-attempts"), Some("1"), "one try: {r:?}");

    // An HTTP-proxy client (absolute-form target) is routed the same way.
    let r = http(
        mesh.client.addr("outbound"),
        "GET",
        "http://b/proxy-style",
        &[("Host", "b")],
        b"",
    )
    .expect("outbound answers");
    assert_eq!(r.status, 200, "absolute-form request routed to b: {r:?}");
    assert_eq!(r.json()["path"], "/proxy-style", "the app sees origin-form");

    // The admin port shows the endpoints the table gave b.
    let eps = get(mesh.client.addr("admin"), "/endpoints").unwrap().json();
    let want = mesh.replicas[0].1.addr("inbound").to_string();
    assert_eq!(
        eps["services"]["b"]["endpoints"][0],
        want.as_str(),
        "/endpoints lists b's inbound: {eps}"
    );
}

#[test]
fn an_unknown_service_gets_a_clear_404() {
    let mesh = Mesh::start("unknown", 1, &[]);
    let r = call(&mesh.client, "nope", "/");
    assert_eq!(r.status, 404, "unknown service is a 404: {r:?}");
    assert_eq!(
        r.header("x-mesh-error"),
        Some("unknown-service"),
        "reason header: {r:?}"
    );
    assert!(
        r.body.contains("\"nope\"") && r.body.contains("known: a, b"),
        "the body names the service and the known ones: {}",
        r.body
    );
    assert!(
        r.header("proxy-status")
            .is_some_and(|v| v.contains("destination_not_found")),
        "RFC 9209 Proxy-Status: {r:?}"
    );

    let r = http(
        mesh.client.addr("outbound"),
        "GET",
        "/",
        &[("Host", "")],
        b"",
    )
    .unwrap();
    assert!(
        r.status == 400 || r.status == 404,
        "an empty Host is refused: {r:?}"
    );
}

#[test]
fn killing_one_replica_moves_traffic_to_the_others() {
    let mut mesh = Mesh::start("failover", 2, &[]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = call(&mesh.client, "b", "/");
        assert_eq!(r.status, 200, "both replicas healthy: {r:?}");
        seen.insert(r.json()["instance"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        seen.len(),
        2,
        "round-robin spreads over both replicas: {seen:?}"
    );

    // Replica b-1 crashes: its sidecar and app are gone, its port refuses connections.
    let (mut app1, mut sc1) = mesh.replicas.pop().unwrap();
    sc1.kill();
    app1.kill();
    for i in 0..20 {
        let r = call(&mesh.client, "b", "/");
        assert_eq!(
            r.status, 200,
            "request {i} after the crash still succeeds (connect failure retried): {r:?}"
        );
        assert_eq!(
            r.json()["instance"],
            "b-0",
            "only the surviving replica answers"
        );
    }
}

#[test]
fn every_endpoint_down_gives_a_502_naming_the_cause() {
    let mut mesh = Mesh::start("alldown", 1, &[]);
    let (mut app0, mut sc0) = mesh.replicas.pop().unwrap();
    sc0.kill();
    app0.kill();
    let r = call(&mesh.client, "b", "/");
    assert_eq!(r.status, 502, "no endpoint accepts: {r:?}");
    assert_eq!(
        r.header("x-mesh-error"),
        Some("connect-failure"),
        "reason: {r:?}"
    );
    assert_eq!(
        r.header("x-mesh-attempts"),
        Some("2"),
        "both attempts were made: {r:?}"
    );
    assert!(
        r.body.contains("service b"),
        "body names the service: {}",
        r.body
    );
}

#[test]
fn the_control_plane_going_down_changes_nothing_for_traffic() {
    let mut mesh = Mesh::start("cpdown", 1, &[]);
    mesh.cp.kill();
    wait_until(
        "the sidecar to notice the control plane is gone",
        Duration::from_secs(5),
        || {
            config(&mesh.client)["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("unreachable"))
        },
    );
    for _ in 0..10 {
        let r = call(&mesh.client, "b", "/");
        assert_eq!(r.status, 200, "traffic flows on the last good table: {r:?}");
    }
    assert_eq!(config(&mesh.client)["version"], 2, "still on version 2");
    let ready = get(mesh.client.addr("admin"), "/ready").unwrap();
    assert_eq!(
        ready.status, 200,
        "still ready without a control plane: {ready:?}"
    );
    assert_eq!(
        ready.json()["ready"],
        true,
        "/ready answers JSON: {ready:?}"
    );
    let live = get(mesh.client.addr("admin"), "/live").unwrap();
    assert_eq!(live.status, 200, "/live: {live:?}");
    assert_eq!(live.json()["live"], true, "/live answers JSON: {live:?}");
}

/// A stand-in control plane that serves whatever body the test sets, valid or not, with an
/// ETag per body. The real control plane refuses to serve an invalid table, so this is how a
/// sidecar meets one (a newer schema, a corrupted store, a bug).
struct FakeControlPlane {
    addr: SocketAddr,
    body: Arc<Mutex<(String, String)>>,
}

impl FakeControlPlane {
    fn start(body: &str) -> FakeControlPlane {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new((body.to_owned(), "\"e1\"".to_owned())));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_lowercase();
                let (body, etag) = st.lock().unwrap().clone();
                let resp = if req.contains(&format!("if-none-match: {etag}")) {
                    format!(
                        "HTTP/1.1 304 Not Modified\r\netag: {etag}\r\nconnection: close\r\n\r\n"
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: {etag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = c.write_all(resp.as_bytes());
            }
        });
        FakeControlPlane { addr, body: state }
    }

    fn serve(&self, body: &str, etag: &str) {
        *self.body.lock().unwrap() = (body.to_owned(), format!("\"{etag}\""));
    }
}

fn json_table(version: u64, attempts: u32, b: SocketAddr) -> String {
    format!(
        r#"{{"version":{version},"services":{{"b":{{"endpoints":["{b}"],"retries":{{"attempts":{attempts}}}}}}}}}"#
    )
}

#[test]
fn an_invalid_table_is_rejected_and_the_last_good_one_keeps_serving() {
    let b = app("b", "b-0", &[]);
    let fake = FakeControlPlane::start(&json_table(1, 2, b.addr("app")));
    let sc = sidecar("a", fake.addr, "127.0.0.1:9".parse().unwrap(), "100ms");
    assert_eq!(call(&sc, "b", "/").status, 200, "version 1 routes to b");

    fake.serve(&json_table(2, 0, b.addr("app")), "e2");
    wait_until(
        "the sidecar to reject version 2",
        Duration::from_secs(5),
        || config(&sc)["status"]["tables_rejected"].as_u64() >= Some(1),
    );
    let cfg = config(&sc);
    assert_eq!(
        cfg["version"], 1,
        "the active table is still version 1: {cfg}"
    );
    let err = cfg["status"]["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("services.b.retries.attempts: must be 1..=10, got 0"),
        "/config names the bad field: {cfg}"
    );
    assert_eq!(
        call(&sc, "b", "/").status,
        200,
        "traffic still flows on version 1"
    );

    // Not-a-table at all is rejected the same way.
    fake.serve("<html>oops</html>", "e3");
    wait_until(
        "the sidecar to reject the HTML page",
        Duration::from_secs(5),
        || {
            config(&sc)["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid JSON"))
        },
    );
    assert_eq!(config(&sc)["version"], 1, "still version 1");

    // A valid table later is taken, and the error clears.
    fake.serve(&json_table(3, 2, b.addr("app")), "e4");
    wait_version(&sc, 3, Duration::from_secs(5));
    assert!(
        config(&sc)["status"]["last_error"].is_null(),
        "the error clears once a good table arrives"
    );
}

#[test]
fn a_table_change_reaches_a_running_sidecar_within_two_poll_intervals() {
    let b = app("b", "b-0", &[]);
    let fake = FakeControlPlane::start(&json_table(1, 2, b.addr("app")));
    let poll = Duration::from_millis(300);
    let sc = sidecar("a", fake.addr, "127.0.0.1:9".parse().unwrap(), "300ms");
    wait_version(&sc, 1, Duration::from_secs(5));
    let t0 = Instant::now();
    fake.serve(&json_table(2, 3, b.addr("app")), "e2");
    wait_version(&sc, 2, Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        took <= 2 * poll,
        "version 2 arrived after {took:?}, more than two poll intervals ({:?})",
        2 * poll
    );
    assert_eq!(
        config(&sc)["table"]["services"]["b"]["retries"]["attempts"],
        3,
        "the new policy is active"
    );
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_promptly() {
    let mut mesh = Mesh::start("sigterm", 1, &["--latency-ms", "1000"]);
    let out = mesh.client.addr("outbound");
    let inflight = std::thread::spawn(move || http(out, "GET", "/slow", &[("Host", "b")], b""));
    // Let the request reach the app (it sleeps 1 s there) before the signal.
    std::thread::sleep(Duration::from_millis(300));
    let client = &mut mesh.client;
    let t0 = Instant::now();
    client.signal(libc::SIGTERM);
    let r = inflight
        .join()
        .unwrap()
        .expect("the in-flight request gets a response");
    assert_eq!(
        r.status, 200,
        "the in-flight request finished normally: {r:?}"
    );
    let status = client
        .wait_timeout(Duration::from_secs(6))
        .expect("the sidecar exits within 6 s of SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "exit took {:?}",
        t0.elapsed()
    );
}
