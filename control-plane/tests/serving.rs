//! Serving tables: what a sidecar's poll sees from the real binary.

mod common;

use common::{get, get_with, start, table, TablesDir};

#[test]
fn a_sidecar_gets_the_table_then_304_while_it_is_unchanged() {
    let dir = TablesDir::new("serve");
    dir.write("dev/table.toml", &table(7, 2));
    let cp = start(&dir, &[]);

    // First poll: the whole table and its ETag.
    let first = get(&cp, "/v1/envs/dev/table");
    assert_eq!(first.status, 200, "dev is served: {}", first.body);
    assert_eq!(
        first.header("content-type"),
        Some("application/json"),
        "the table is JSON"
    );
    assert_eq!(
        first.header("cache-control"),
        Some("no-cache"),
        "caches must revalidate"
    );
    let etag = first.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.starts_with("\"7-") && etag.ends_with('"') && etag.len() == 2 + 2 + 16,
        "a strong ETag of version and 16 hex digits: {etag}"
    );
    let t = mesh_table_version(&first.body);
    assert_eq!(t, 7, "the body is dev's table");

    // Next polls carry the ETag and get 304 with no body.
    let again = get_with(&cp, "/v1/envs/dev/table", &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304, "unchanged table: 304");
    assert_eq!(again.body, "", "a 304 has no body");
    assert_eq!(
        again.header("etag"),
        Some(etag.as_str()),
        "a 304 repeats the ETag"
    );

    let weak = format!("W/{etag}");
    let r = get_with(&cp, "/v1/envs/dev/table", &[("If-None-Match", &weak)]);
    assert_eq!(r.status, 304, "If-None-Match uses the weak comparison");
    let r = get_with(
        &cp,
        "/v1/envs/dev/table",
        &[("If-None-Match", "\"1-0000000000000000\"")],
    );
    assert_eq!(r.status, 200, "a stale ETag gets the table again");

    // HEAD: the GET's headers, no body.
    let head = testkit::http(
        cp.addr("control_plane"),
        "HEAD",
        "/v1/envs/dev/table",
        &[],
        b"",
    )
    .expect("HEAD request");
    assert_eq!(head.status, 200, "HEAD works");
    assert_eq!(
        head.header("etag"),
        Some(etag.as_str()),
        "HEAD carries the ETag"
    );

    // The list shows what is served, and the counters saw every request.
    let envs = get(&cp, "/v1/envs").json();
    assert_eq!(envs["envs"][0]["name"], "dev", "dev is listed: {envs}");
    assert_eq!(
        envs["envs"][0]["etag"],
        etag.as_str(),
        "with the same ETag: {envs}"
    );
    assert!(
        envs["envs"][0]["last_error"].is_null(),
        "and no error: {envs}"
    );
    let m = common::metrics(&cp);
    assert!(
        m.contains("meshlab_cp_table_requests_total{env=\"dev\",result=\"304\"} 2"),
        "two 304s counted:\n{m}"
    );
}

#[test]
fn an_unknown_env_is_404_naming_the_known_ones() {
    let dir = TablesDir::new("unknown");
    dir.write("dev.toml", &table(1, 2));
    dir.write("prod/table.toml", &table(1, 2));
    let cp = start(&dir, &[]);
    let r = get(&cp, "/v1/envs/x/table");
    assert_eq!(r.status, 404, "x is not an environment");
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "unknown environment \"x\"; known: dev, prod"}),
        "the error names x and the known environments"
    );
    let m = common::metrics(&cp);
    assert!(
        m.contains("meshlab_cp_table_requests_total{env=\"_unknown\",result=\"404\"} 1"),
        "the 404 is counted under one label:\n{m}"
    );
}

#[test]
fn the_repository_overlays_are_served_from_env_vars() {
    let overlays = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/overlays");
    let mut cmd = std::process::Command::new(testkit::bin("control-plane"));
    cmd.env("MESH_TABLES", &overlays)
        .env("MESH_CP_LISTEN", "127.0.0.1:0");
    let cp = testkit::Proc::start_with(&mut cmd, "control-plane");
    let envs = get(&cp, "/v1/envs").json();
    let names: Vec<&str> = envs["envs"]
        .as_array()
        .expect("an envs array")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"dev"),
        "k8s/overlays/dev/table.toml is served as dev: {envs}"
    );
    let r = get(&cp, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "healthz answers");
}

fn mesh_table_version(body: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
    v["version"].as_u64().expect("a version field")
}
