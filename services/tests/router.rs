//! In-process tests of the library's router and serve loop (`services::app` / `services::run`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{client, closed_port, FakeSidecar, WAIT};
use prometheus::Registry;
use serde_json::Value;
use services::behaviour::Behaviour;
use services::{AppState, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn serve(behaviour: Behaviour, sidecar: SocketAddr, seed: u64) -> Running {
    let config = Config {
        service: "b".into(),
        instance: "b-0".into(),
        sidecar: sidecar.to_string(),
        behaviour,
        seed,
    };
    let state = AppState::new(config, Registry::new()).expect("valid config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let addr = listener.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(services::run(listener, state, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn statuses(running: &Running, n: usize) -> Vec<u16> {
    let client = client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let response = client
            .get(running.url(&format!("/r{i}")))
            .send()
            .await
            .expect("request");
        out.push(response.status().as_u16());
    }
    out
}

#[tokio::test]
async fn same_seed_gives_same_error_sequence() {
    let behaviour = Behaviour {
        error_rate: 0.5,
        ..Behaviour::default()
    };
    let a = serve(behaviour.clone(), closed_port(), 42).await;
    let b = serve(behaviour.clone(), closed_port(), 42).await;
    let c = serve(behaviour, closed_port(), 43).await;
    let (sa, sb, sc) = (
        statuses(&a, 40).await,
        statuses(&b, 40).await,
        statuses(&c, 40).await,
    );
    assert_eq!(sa, sb, "the same seed must give the same statuses");
    assert_ne!(sa, sc, "another seed should give other statuses");
    assert!(
        sa.contains(&200) && sa.contains(&503),
        "rate 0.5 should give both outcomes: {sa:?}"
    );
}

#[tokio::test]
async fn run_returns_when_shutdown_completes() {
    let mut running = serve(Behaviour::default(), closed_port(), 1).await;
    let response = client()
        .get(running.url("/healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(response.status().as_u16(), 200, "healthz answers 200");
    running
        .stop
        .take()
        .expect("not stopped yet")
        .send(())
        .expect("run is listening for shutdown");
    let result = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("run must return after shutdown")
        .expect("run task did not panic");
    assert!(result.is_ok(), "run returns Ok: {result:?}");
}

#[tokio::test]
async fn calls_are_concurrent_and_counted() {
    let mut sidecar = FakeSidecar::held().await;
    let behaviour = Behaviour {
        calls: vec!["c".into(), "d".into()],
        ..Behaviour::default()
    };
    let running = serve(behaviour, sidecar.addr, 1).await;
    let url = running.url("/x");
    let request = tokio::spawn(async move { client().get(url).send().await });
    // Both calls reach the sidecar while it holds every answer: they run concurrently.
    let mut targets = vec![sidecar.next_head().await, sidecar.next_head().await]
        .into_iter()
        .map(|h| h.lines().next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    targets.sort();
    assert_eq!(
        targets,
        ["GET http://c/x HTTP/1.1", "GET http://d/x HTTP/1.1"],
        "both calls in flight at once"
    );
    sidecar.release();
    let response = request
        .await
        .expect("request task")
        .expect("the request is answered");
    assert_eq!(response.status().as_u16(), 200, "both calls answered 200");
    let body: Value = response.json().await.expect("JSON answer");
    assert_eq!(
        body["calls"][0]["service"], "c",
        "calls keep their order: {body}"
    );
    assert_eq!(
        body["calls"][1]["service"], "d",
        "calls keep their order: {body}"
    );

    let metrics = client()
        .get(running.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    let content_type = metrics.headers()["content-type"]
        .to_str()
        .expect("ascii content type")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text format, got {content_type}"
    );
    let text = metrics.text().await.expect("metrics text");
    for want in [
        r#"mesh_service_downstream_calls_total{result="ok",service="c"} 1"#,
        r#"mesh_service_downstream_calls_total{result="ok",service="d"} 1"#,
        r#"mesh_service_requests_total{status_class="2xx"} 1"#,
    ] {
        assert!(text.contains(want), "/metrics lacks {want:?}:\n{text}");
    }
}

#[tokio::test]
async fn reserved_paths_are_not_application_requests() {
    let running = serve(Behaviour::default(), closed_port(), 1).await;
    let client = client();
    let response = client
        .post(running.url("/healthz"))
        .send()
        .await
        .expect("POST /healthz");
    assert_eq!(
        response.status().as_u16(),
        405,
        "/healthz is reserved: other methods are refused"
    );
    let response = client
        .delete(running.url("/behaviour"))
        .send()
        .await
        .expect("DELETE /behaviour");
    assert_eq!(
        response.status().as_u16(),
        405,
        "/behaviour takes GET and PUT only"
    );
    let text = client
        .get(running.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let counted: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("mesh_service_requests_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(
        counted.is_empty(),
        "reserved paths are not counted as requests: {counted:?}"
    );
    assert!(
        text.contains("mesh_service_request_duration_seconds_count 0"),
        "reserved paths are not timed:\n{text}"
    );
}

#[tokio::test]
async fn latency_is_applied() {
    let behaviour = Behaviour {
        latency_ms: 150,
        ..Behaviour::default()
    };
    let running = serve(behaviour, closed_port(), 1).await;
    let started = std::time::Instant::now();
    let response = client()
        .get(running.url("/x"))
        .send()
        .await
        .expect("GET /x");
    assert_eq!(response.status().as_u16(), 200, "delayed request succeeds");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the answer took {:?}, less than latency_ms=150",
        started.elapsed()
    );
}
