//! Traces across hops: real sidecars and `mesh-service`s on loopback export OTLP/HTTP to a real
//! receiver inside the test (`mesh_trace::collector`, decoding `ExportTraceServiceRequest`
//! protobuf), and each story checks the spans that arrive and the `traceparent` each hop sends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use mesh_trace::collector::{Collector, RecordedSpan};
use testkit::{
    bin, free_port, get, http, sidecar_cmd, start_ready_sidecar, wait_http_ok, wait_until, Proc,
};

const READY: Duration = Duration::from_secs(30);

/// The receiver, served on its own thread and runtime for the whole test.
fn collector() -> (Collector, SocketAddr) {
    let c = Collector::new();
    let served = c.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(l.local_addr().expect("addr")).expect("test waits");
            served
                .serve(l, std::future::pending())
                .await
                .expect("serve");
        });
    });
    let addr = rx.recv_timeout(READY).expect("the collector listens");
    (c, addr)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlab-traces-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write_table(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write table");
    std::fs::rename(&tmp, path).expect("rename table");
}

/// The OTEL variables pointing at the collector, `OTEL_SERVICE_NAME` = `name`.
fn otel(cmd: &mut Command, collector: Option<SocketAddr>, name: &str, extra: &[(&str, &str)]) {
    for k in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
    ] {
        cmd.env_remove(k);
    }
    if let Some(c) = collector {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{c}"));
    }
    cmd.env("OTEL_SERVICE_NAME", name);
    for (k, v) in extra {
        cmd.env(k, v);
    }
}

fn sidecar(
    service: &str,
    table: &Path,
    app: SocketAddr,
    collector: Option<SocketAddr>,
    extra_env: &[(&str, &str)],
    extra_args: &[&str],
) -> Proc {
    let mut cmd = sidecar_cmd(service, app);
    cmd.args(["--table", table.to_str().expect("utf-8")]);
    cmd.args(["--poll-interval", "100ms"]);
    cmd.args(extra_args);
    otel(
        &mut cmd,
        collector,
        &format!("{service}-sidecar"),
        extra_env,
    );
    start_ready_sidecar(&mut cmd, &format!("sidecar {service}"), READY)
}

fn app(
    name: &str,
    instance: &str,
    listen: SocketAddr,
    sidecar: SocketAddr,
    collector: SocketAddr,
    extra: &[&str],
) -> Proc {
    let mut cmd = Command::new(bin("mesh-service"));
    cmd.args([
        "--name",
        name,
        "--instance",
        instance,
        "--listen",
        &listen.to_string(),
        "--sidecar",
        &sidecar.to_string(),
        "--seed",
        "7",
    ]);
    cmd.args(extra);
    otel(
        &mut cmd,
        Some(collector),
        name,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            &format!("service.instance.id={instance}"),
        )],
    );
    let p = Proc::start_with(&mut cmd, &format!("mesh-service {instance}"));
    wait_http_ok(p.addr("app"), "/healthz", READY);
    p
}

fn table(version: u64, services: &[(&str, &[SocketAddr])]) -> String {
    let mut t = format!("version = {version}\n");
    for (name, eps) in services {
        let list: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
        t.push_str(&format!(
            "[services.{name}]\nendpoints = [{}]\nlb = \"round-robin\"\n\
             timeouts = {{ connect_ms = 500, request_ms = 5000 }}\n\
             retries = {{ attempts = 2, on = [\"5xx\"], backoff_ms = [1, 5], \
             budget = {{ ratio = 1.0, min_per_s = 100 }} }}\n\
             breaker = {{ consecutive_failures = 1000 }}\n",
            list.join(", ")
        ));
    }
    t
}

fn wait_version(sc: &Proc, version: u64) {
    wait_until(
        &format!("{} to run table version {version}", sc.name),
        Duration::from_secs(10),
        || {
            get(sc.addr("admin"), "/config")
                .map(|r| r.json()["version"] == version)
                .unwrap_or(false)
        },
    );
}

fn find<'a>(
    spans: &'a [RecordedSpan],
    what: &str,
    f: impl Fn(&RecordedSpan) -> bool,
) -> &'a RecordedSpan {
    let found: Vec<&RecordedSpan> = spans.iter().filter(|s| f(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one span is {what}; spans:\n{spans:#?}"
    );
    found[0]
}

fn parent_of<'a>(spans: &'a [RecordedSpan], s: &RecordedSpan) -> &'a RecordedSpan {
    spans
        .iter()
        .find(|p| p.span_id == s.parent_span_id)
        .unwrap_or_else(|| panic!("the parent of {} ({}) is in the trace", s.name, s.service))
}

fn hop(s: &RecordedSpan) -> &str {
    s.attr("mesh.direction").unwrap_or("")
}

#[test]
fn one_request_through_a_b_and_c_is_one_trace_with_every_hop_and_the_retry() {
    let (col, col_addr) = collector();
    let dir = temp_dir("abc");
    let tpath = dir.join("table.toml");
    let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
    write_table(
        &tpath,
        &table(1, &[("b", &[placeholder]), ("c", &[placeholder])]),
    );

    // Each app listens on a port its sidecar is told first; each app calls through its own
    // sidecar's outbound listener.
    let ports: Vec<SocketAddr> = (0..4).map(|_| free_port()).collect();
    let sc_a = sidecar("a", &tpath, ports[0], Some(col_addr), &[], &[]);
    let sc_b0 = sidecar("b", &tpath, ports[1], Some(col_addr), &[], &[]);
    let sc_b1 = sidecar("b", &tpath, ports[2], Some(col_addr), &[], &[]);
    let sc_c = sidecar("c", &tpath, ports[3], Some(col_addr), &[], &[]);
    let _a = app(
        "a",
        "a-0",
        ports[0],
        sc_a.addr("outbound"),
        col_addr,
        &["--calls", "b"],
    );
    // b-0 always fails with 503: a's sidecar retries on b-1.
    let _b0 = app(
        "b",
        "b-0",
        ports[1],
        sc_b0.addr("outbound"),
        col_addr,
        &["--error-rate", "1", "--error-status", "503"],
    );
    let _b1 = app(
        "b",
        "b-1",
        ports[2],
        sc_b1.addr("outbound"),
        col_addr,
        &["--calls", "c"],
    );
    let _c = app("c", "c-0", ports[3], sc_c.addr("outbound"), col_addr, &[]);
    let b_eps = [sc_b0.addr("inbound"), sc_b1.addr("inbound")];
    write_table(
        &tpath,
        &table(2, &[("b", &b_eps), ("c", &[sc_c.addr("inbound")])]),
    );
    for sc in [&sc_a, &sc_b0, &sc_b1, &sc_c] {
        wait_version(sc, 2);
    }

    // Round-robin over two endpoints: of two requests, one starts on b-0 and is retried.
    for i in 0..2 {
        let r = http(
            sc_a.addr("inbound"),
            "GET",
            &format!("/order/{i}"),
            &[("Host", "a")],
            b"",
        )
        .expect("a's inbound answers");
        assert_eq!(r.status, 200, "the retry on b-1 saves the request: {r:?}");
    }

    // Wait (polling) until one trace holds the retried request's 15 spans.
    let retried = |c: &Collector| {
        c.traces().into_values().find(|spans| {
            spans.iter().any(|s| s.attr("mesh.attempt") == Some("2")) && spans.len() >= 15
        })
    };
    wait_until(
        "the retried request's 15 spans at the collector",
        Duration::from_secs(15),
        || retried(&col).is_some(),
    );
    let spans = retried(&col).expect("found above");
    assert_eq!(
        spans.len(),
        15,
        "15 spans in the retried trace:\n{spans:#?}"
    );
    let trace_id = &spans[0].trace_id;
    assert!(
        spans.iter().all(|s| &s.trace_id == trace_id),
        "one trace id"
    );

    // A tree: one root, every other span's parent in the trace.
    let roots: Vec<&RecordedSpan> = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    let root = roots[0];
    assert_eq!(
        (root.service.as_str(), hop(root), root.kind),
        ("a-sidecar", "inbound", "server"),
        "the root is the entry: a's inbound sidecar"
    );
    for s in &spans {
        if !s.parent_span_id.is_empty() {
            parent_of(&spans, s);
        }
    }

    // Every hop, parented as the request flowed.
    let a_app = find(&spans, "a's server span", |s| {
        s.service == "a" && s.kind == "server"
    });
    assert_eq!(
        parent_of(&spans, a_app).span_id,
        root.span_id,
        "app a under a's inbound"
    );
    let a_call = find(&spans, "a's call to b", |s| {
        s.service == "a" && s.kind == "client"
    });
    assert_eq!(
        parent_of(&spans, a_call).span_id,
        a_app.span_id,
        "a's call under a's server span"
    );
    let a_out = find(&spans, "a's outbound span", |s| {
        s.service == "a-sidecar" && hop(s) == "outbound"
    });
    assert_eq!(
        parent_of(&spans, a_out).span_id,
        a_call.span_id,
        "a's outbound under a's call"
    );
    assert_eq!(
        a_out.attr("mesh.upstream"),
        Some("b"),
        "a's outbound names b"
    );
    assert_eq!(a_out.attr("mesh.attempts"), Some("2"), "two attempts");
    assert_eq!(
        a_out.attr("http.response.status_code"),
        Some("200"),
        "a's outbound got 200"
    );

    let attempt = |n: &str| {
        find(&spans, &format!("attempt {n} of a's outbound"), |s| {
            s.service == "a-sidecar" && s.attr("mesh.attempt") == Some(n)
        })
    };
    let (first, second) = (attempt("1"), attempt("2"));
    for at in [first, second] {
        assert_eq!(
            parent_of(&spans, at).span_id,
            a_out.span_id,
            "attempts under a's outbound"
        );
        assert_eq!(
            at.attr("mesh.breaker_state"),
            Some("closed"),
            "breaker state recorded"
        );
    }
    assert_eq!(
        first.attr("mesh.endpoint"),
        Some(b_eps[0].to_string().as_str()),
        "first on b-0"
    );
    assert_eq!(
        first.attr("http.response.status_code"),
        Some("503"),
        "b-0 answered 503"
    );
    assert_eq!(
        first.attr("mesh.reason"),
        Some("status-503"),
        "the failure reason"
    );
    assert!(first.error, "the failed attempt has an error status");
    assert_eq!(
        second.attr("mesh.endpoint"),
        Some(b_eps[1].to_string().as_str()),
        "retry on b-1"
    );
    assert_eq!(
        second.attr("http.request.resend_count"),
        Some("1"),
        "semconv resend count"
    );
    assert_eq!(
        second.attr("http.response.status_code"),
        Some("200"),
        "b-1 answered 200"
    );

    let inbound = |service: &str, parent: &RecordedSpan| {
        let s = find(
            &spans,
            &format!("{service}'s inbound under {}", parent.span_id),
            |s| {
                s.service == format!("{service}-sidecar")
                    && hop(s) == "inbound"
                    && s.parent_span_id == parent.span_id
            },
        );
        assert_eq!(s.kind, "server", "inbound spans are server spans");
        s
    };
    let b0_in = inbound("b", first);
    assert_eq!(
        b0_in.attr("http.response.status_code"),
        Some("503"),
        "b-0's inbound saw the 503"
    );
    let b1_in = inbound("b", second);
    let b1_app = find(&spans, "b-1's server span", |s| {
        s.service == "b" && s.kind == "server" && s.parent_span_id == b1_in.span_id
    });
    let b1_call = find(&spans, "b-1's call to c", |s| {
        s.service == "b" && s.kind == "client"
    });
    assert_eq!(
        parent_of(&spans, b1_call).span_id,
        b1_app.span_id,
        "b's call under b's server span"
    );
    let b_out = find(&spans, "b's outbound span", |s| {
        s.service == "b-sidecar" && hop(s) == "outbound"
    });
    assert_eq!(
        parent_of(&spans, b_out).span_id,
        b1_call.span_id,
        "b's outbound under b's call"
    );
    assert_eq!(
        b_out.attr("mesh.upstream"),
        Some("c"),
        "b's outbound names c"
    );
    let b_attempt = find(&spans, "b's attempt", |s| {
        s.service == "b-sidecar" && s.attr("mesh.attempt").is_some()
    });
    assert_eq!(
        parent_of(&spans, b_attempt).span_id,
        b_out.span_id,
        "b's attempt under b's outbound"
    );
    let c_in = inbound("c", b_attempt);
    find(&spans, "c's server span", |s| {
        s.service == "c" && s.parent_span_id == c_in.span_id
    });

    // Children start within their parents (one clock: all on this machine).
    for s in &spans {
        if let Some(p) = spans.iter().find(|p| p.span_id == s.parent_span_id) {
            assert!(
                s.start_unix_nano >= p.start_unix_nano,
                "{} ({}) starts after its parent {} ({})",
                s.name,
                s.service,
                p.name,
                p.service
            );
        }
    }
    let dropped = get(sc_a.addr("admin"), "/metrics").expect("/metrics").body;
    assert!(
        dropped.contains("meshlab_trace_spans_dropped_total 0"),
        "no span dropped:\n{dropped}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upstream that answers 200 to every request and hands each request head to the test.
fn recording_upstream() -> (SocketAddr, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = c.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let _ = tx.send(head);
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            });
        }
    });
    (addr, rx)
}

fn traceparent_of(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("traceparent: ")
                .or_else(|| l.strip_prefix("Traceparent: "))
        })
        .map(str::to_owned)
}

/// Sends one request through `sc`'s outbound to service `up`, returns the head upstream saw.
fn through(sc: &Proc, rx: &mpsc::Receiver<String>, traceparent: Option<&str>) -> String {
    let mut h = vec![("Host", "up")];
    if let Some(tp) = traceparent {
        h.push(("traceparent", tp));
    }
    let r = http(sc.addr("outbound"), "GET", "/x", &h, b"").expect("outbound answers");
    assert_eq!(r.status, 200, "the upstream answers: {r:?}");
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the upstream saw the request")
}

const SAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

#[test]
fn with_tracing_off_the_sidecar_forwards_the_callers_traceparent_and_invents_none() {
    let (upstream, rx) = recording_upstream();
    let dir = temp_dir("off");
    let tpath = dir.join("table.toml");
    write_table(&tpath, &table(1, &[("up", &[upstream])]));
    let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let sc = sidecar(
        "a",
        &tpath,
        placeholder,
        None,
        &[],
        &["--access-log", "--log-format", "json"],
    );

    let head = through(&sc, &rx, Some(SAMPLED));
    assert_eq!(
        traceparent_of(&head).as_deref(),
        Some(SAMPLED),
        "forwarded untouched:\n{head}"
    );
    let head = through(&sc, &rx, None);
    assert_eq!(
        traceparent_of(&head),
        None,
        "no traceparent invented:\n{head}"
    );
    let metrics = get(sc.addr("admin"), "/metrics").expect("/metrics").body;
    assert!(
        metrics.contains("meshlab_trace_spans_exported_total 0"),
        "nothing exported:\n{metrics}"
    );
    wait_until(
        "the access-log line of the traced request",
        Duration::from_secs(5),
        || {
            sc.stderr()
                .contains("\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\"")
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unsampled_requests_propagate_a_decision_and_sampled_ones_are_flushed_on_sigterm() {
    let (col, col_addr) = collector();
    let (upstream, rx) = recording_upstream();
    let dir = temp_dir("sampling");
    let tpath = dir.join("table.toml");
    write_table(&tpath, &table(1, &[("up", &[upstream])]));
    let placeholder: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // Roots are never sampled (ratio 0); a caller's decision is kept. No grace after SIGTERM:
    // only the flush at exit can get the last spans out before the batch delay.
    let mut sc = sidecar(
        "a",
        &tpath,
        placeholder,
        Some(col_addr),
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
        ],
        &[
            "--shutdown-grace-s",
            "0",
            "--access-log",
            "--log-format",
            "json",
        ],
    );

    // A root: not sampled, but the next hop is told so, in a new trace.
    let head = through(&sc, &rx, None);
    let tp = traceparent_of(&head).unwrap_or_else(|| panic!("a root gets a traceparent:\n{head}"));
    let parsed = mesh_trace::TraceParent::parse(tp.as_bytes()).expect("a valid traceparent");
    assert!(!parsed.sampled, "flags 00 for an unsampled root: {tp}");
    let root_trace =
        String::from_utf8(mesh_trace::context::trace_id_hex(&parsed.trace_id).to_vec()).unwrap();
    wait_until(
        "the access log names the trace the sidecar started",
        Duration::from_secs(5),
        || {
            sc.stderr()
                .contains(&format!("\"trace_id\":\"{root_trace}\""))
        },
    );
    // An unsampled caller: forwarded untouched.
    let head = through(&sc, &rx, Some(UNSAMPLED));
    assert_eq!(
        traceparent_of(&head).as_deref(),
        Some(UNSAMPLED),
        "untouched:\n{head}"
    );
    // A sampled caller: same trace, the attempt's span as parent, sampled.
    let head = through(&sc, &rx, Some(SAMPLED));
    let tp = traceparent_of(&head).expect("a traceparent");
    let sent = mesh_trace::TraceParent::parse(tp.as_bytes()).expect("valid");
    let caller = mesh_trace::TraceParent::parse(SAMPLED.as_bytes()).unwrap();
    assert_eq!(sent.trace_id, caller.trace_id, "the caller's trace: {tp}");
    assert_ne!(
        sent.span_id, caller.span_id,
        "a new parent: the attempt's span: {tp}"
    );
    assert!(sent.sampled, "still sampled: {tp}");

    sc.signal(libc::SIGTERM);
    let status = sc
        .wait_timeout(Duration::from_secs(10))
        .expect("the sidecar exits on SIGTERM");
    assert!(status.success(), "exit 0: {status:?}");
    wait_until(
        "the sampled request's spans at the collector",
        Duration::from_secs(5),
        || col.span_count() >= 2,
    );
    let spans = col.spans();
    assert_eq!(
        spans.len(),
        2,
        "only the sampled request's client and attempt spans:\n{spans:#?}"
    );
    let client = find(&spans, "the outbound span", |s| {
        s.attr("mesh.attempt").is_none()
    });
    let attempt = find(&spans, "the attempt", |s| {
        s.attr("mesh.attempt") == Some("1")
    });
    assert_eq!(
        client.parent_span_id, "b7ad6b7169203331",
        "the caller's span is the parent"
    );
    assert_eq!(
        attempt.parent_span_id, client.span_id,
        "the attempt under the request span"
    );
    let sent_span = String::from_utf8(
        sent.span_id
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect(),
    )
    .unwrap();
    assert_eq!(
        attempt.span_id, sent_span,
        "the upstream's parent is the attempt span"
    );
    assert_eq!(
        attempt.attr("mesh.endpoint"),
        Some(upstream.to_string().as_str())
    );
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_eq!(client.attr("url.path"), Some("/x"));
    assert_eq!(
        client.service, "a-sidecar",
        "OTEL_SERVICE_NAME names the process"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
