//! Integration tests against the real `mesh-service` binary.

mod common;

use std::time::Duration;

use common::{client, closed_port, header_value, FakeSidecar, Service};
use serde_json::{json, Value};

async fn get_json(url: &str) -> (u16, Value) {
    let response = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"));
    (status, body)
}

async fn put_behaviour(service: &Service, body: &str) -> (u16, Value) {
    let url = service.url("/behaviour");
    let response = client()
        .put(&url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("PUT {url}: answer is not JSON: {e}"));
    (status, body)
}

#[tokio::test]
async fn get_answers_json_naming_itself() {
    let service = Service::start(&[
        "--name",
        "b",
        "--instance",
        "b-test",
        "--sidecar",
        &closed_port().to_string(),
    ])
    .await;

    let (status, body) = get_json(&service.url("/hello/world?x=1")).await;
    assert_eq!(status, 200, "GET on an ordinary path answers 200: {body}");
    assert_eq!(
        body,
        json!({"service":"b","instance":"b-test","method":"GET","path":"/hello/world","calls":[]}),
        "the answer names the service, instance, method and path"
    );

    let response = client()
        .post(service.url("/orders"))
        .body("12345")
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status().as_u16(), 200, "POST answers 200");
    let body: Value = response.json().await.expect("POST answer is JSON");
    assert_eq!(body["method"], "POST", "method echoed: {body}");
    assert_eq!(body["body_bytes"], 5, "POST body counted: {body}");

    let (status, behaviour) = get_json(&service.url("/behaviour")).await;
    assert_eq!(status, 200, "GET /behaviour answers 200");
    assert_eq!(
        behaviour,
        json!({"latency_ms":0,"jitter_ms":0,"error_rate":0.0,"error_status":503,"calls":[]}),
        "default behaviour"
    );
}

#[tokio::test]
async fn put_behaviour_injects_errors_and_rejects_bad_input() {
    let service = Service::start(&["--name", "b", "--error-status", "429", "--seed", "1"]).await;

    let (status, body) = put_behaviour(&service, r#"{"error_rate":1.0}"#).await;
    assert_eq!(status, 200, "a valid PUT answers 200: {body}");
    assert_eq!(
        body["error_rate"], 1.0,
        "PUT returns the new behaviour: {body}"
    );
    assert_eq!(
        body["error_status"], 429,
        "fields not in the PUT are kept: {body}"
    );

    let (status, body) = get_json(&service.url("/x")).await;
    assert_eq!(
        status, 429,
        "error_rate 1 fails every request with --error-status: {body}"
    );
    assert_eq!(
        body,
        json!({"service":"b","instance":body["instance"],"error":"injected error"}),
        "injected error body"
    );

    for (input, field) in [
        (r#"{"error_rate":1.5}"#, "error_rate"),
        (r#"{"error_status":200}"#, "error_status"),
        (r#"{"latency_ms":"slow"}"#, "latency_ms"),
        (r#"{"calls":["c d"]}"#, "calls"),
        (r#"{"bogus":1}"#, "bogus"),
    ] {
        let (status, body) = put_behaviour(&service, input).await;
        assert_eq!(status, 400, "PUT {input} must be rejected: {body}");
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("PUT {input}: error is a string: {body}"));
        assert_eq!(
            body["field"], field,
            "PUT {input}: the error body names the field: {body}"
        );
        assert!(
            error.contains(field),
            "PUT {input}: the error {error:?} should name {field}"
        );
    }
    let response = client()
        .put(service.url("/behaviour"))
        .body("not json")
        .send()
        .await
        .expect("PUT garbage");
    assert_eq!(response.status().as_u16(), 400, "non-JSON PUT is a 400");

    let (_, behaviour) = get_json(&service.url("/behaviour")).await;
    assert_eq!(
        behaviour,
        json!({"latency_ms":0,"jitter_ms":0,"error_rate":1.0,"error_status":429,"calls":[]}),
        "rejected PUTs change nothing"
    );

    let metrics = client()
        .get(service.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for want in [
        "mesh_service_injected_errors_total 1",
        r#"mesh_service_requests_total{status_class="4xx"} 1"#,
        "mesh_service_request_duration_seconds_count 1",
    ] {
        assert!(
            metrics.contains(want),
            "/metrics lacks {want:?}:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn downstream_calls_go_through_the_sidecar_as_proxy() {
    let mut sidecar = FakeSidecar::start().await;
    let service = Service::start(&[
        "--name",
        "b",
        "--sidecar",
        &sidecar.addr.to_string(),
        "--calls",
        "c",
    ])
    .await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .get(service.url("/x"))
        .header("traceparent", traceparent)
        .header("x-request-id", "req-1")
        .header("authorization", "not forwarded")
        .send()
        .await
        .expect("GET /x");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("answer is JSON");
    assert_eq!(status, 200, "a 200 from downstream gives 200: {body}");
    assert_eq!(
        body["calls"][0]["service"], "c",
        "the call is listed: {body}"
    );
    assert_eq!(
        body["calls"][0]["status"], 200,
        "the call's status is listed: {body}"
    );
    assert!(
        body["calls"][0]["ms"].is_number(),
        "the call's duration is listed: {body}"
    );

    let head = sidecar.next_head().await;
    let request_line = head.lines().next().unwrap_or_default();
    assert_eq!(
        request_line, "GET http://c/x HTTP/1.1",
        "absolute-form request line; head:\n{head}"
    );
    assert_eq!(
        header_value(&head, "traceparent"),
        Some(traceparent),
        "traceparent forwarded; head:\n{head}"
    );
    assert_eq!(
        header_value(&head, "x-request-id"),
        Some("req-1"),
        "x-request-id forwarded; head:\n{head}"
    );
    assert_eq!(
        header_value(&head, "authorization"),
        None,
        "other headers are not forwarded; head:\n{head}"
    );

    let (status, body) = put_behaviour(&service, r#"{"calls":["c","bad"]}"#).await;
    assert_eq!(status, 200, "PUT calls: {body}");
    let (status, body) = get_json(&service.url("/y?q=1")).await;
    assert_eq!(status, 502, "a 503 from downstream gives 502: {body}");
    assert_eq!(
        body["error"], "downstream bad answered 503",
        "the failure is named: {body}"
    );
    assert_eq!(
        body["calls"][0]["status"], 200,
        "c still answered 200: {body}"
    );
    assert_eq!(body["calls"][1]["status"], 503, "bad answered 503: {body}");
    let mut targets = vec![sidecar.next_head().await, sidecar.next_head().await]
        .into_iter()
        .map(|h| h.lines().next().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    targets.sort();
    assert_eq!(
        targets,
        [
            "GET http://bad/y?q=1 HTTP/1.1",
            "GET http://c/y?q=1 HTTP/1.1"
        ],
        "both services called with the path and query"
    );
}

#[tokio::test]
async fn unreachable_sidecar_gives_502_naming_the_failure() {
    let service = Service::start(&[
        "--name",
        "b",
        "--sidecar",
        &closed_port().to_string(),
        "--calls",
        "c",
    ])
    .await;
    let (status, body) = get_json(&service.url("/x")).await;
    assert_eq!(status, 502, "a connect failure gives 502: {body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("downstream c failed: "),
        "the failure is named: {body}"
    );
    assert!(
        body["calls"][0]["status"].is_null(),
        "no status for a failed call: {body}"
    );
}

#[tokio::test]
async fn sigterm_exits_zero_quickly() {
    let mut service = Service::start(&["--name", "b"]).await;
    service.terminate();
    let status = service.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "SIGTERM should exit 0, got {status}; stderr:\n{}",
        service.stderr()
    );
    let lines = service.stdout_lines();
    assert_eq!(
        lines.len(),
        1,
        "stdout carries exactly the LISTENING line: {lines:?}"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut sidecar = FakeSidecar::held().await;
    let mut service = Service::start(&[
        "--name",
        "b",
        "--sidecar",
        &sidecar.addr.to_string(),
        "--calls",
        "c",
    ])
    .await;

    let url = service.url("/slow");
    let in_flight = tokio::spawn(async move { client().get(url).send().await });
    let head = sidecar.next_head().await; // the request is now in flight, held by the sidecar
    assert!(
        head.starts_with("GET http://c/slow "),
        "downstream call made: {head}"
    );

    service.terminate();
    // Once the signal is handled the listener is closed; wait for that, then check the process
    // is still there, waiting for the held request.
    let deadline = std::time::Instant::now() + common::WAIT;
    while tokio::net::TcpStream::connect(service.addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the service kept accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        service.running(),
        "the service must not exit while a request is in flight; stderr:\n{}",
        service.stderr()
    );

    sidecar.release();
    let response = in_flight
        .await
        .expect("request task")
        .expect("the in-flight request gets an answer");
    assert_eq!(
        response.status().as_u16(),
        200,
        "the in-flight request completes normally"
    );
    let status = service.wait_exit(Duration::from_secs(5)).await;
    assert!(
        status.success(),
        "exit 0 after draining, got {status}; stderr:\n{}",
        service.stderr()
    );
}

#[test]
fn bad_flags_exit_nonzero_naming_the_flag() {
    for (args, want) in [
        (
            &["--name", "b", "--error-rate", "1.5"][..],
            "--error-rate must be between 0 and 1, got 1.5",
        ),
        (
            &["--name", "b", "--error-status", "200"][..],
            "--error-status must be between 400 and 599, got 200",
        ),
        (&["--name", "b", "--calls", "c,,d"][..], "--calls"),
        (&["--name", "b", "--listen", "nowhere"][..], "--listen"),
        (&[][..], "--name"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-service"))
            .args(args)
            .env_remove("MESH_NAME")
            .output()
            .expect("running mesh-service");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} must fail, got {}",
            output.status
        );
        assert!(
            stderr.contains(want),
            "{args:?}: stderr should mention {want:?}:\n{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?}: no LISTENING line on failure"
        );
    }
}
