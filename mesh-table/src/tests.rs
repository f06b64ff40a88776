use super::*;

const GOOD: &str = r#"
version = 7
[services.b]
endpoints = "dns:b.mesh-dev.svc.cluster.local:15006"
lb = "random"
timeouts = { connect_ms = 250, per_try_ms = 500, request_ms = 2000 }
retries = { attempts = 3, on = ["5xx", "connect-failure", "reset", "429"], backoff_ms = [25, 250] }
breaker = { consecutive_failures = 5, base_ejection_ms = 30000, max_ejected_percent = 50, max_concurrent = 1024 }

[services.c]
endpoints = ["127.0.0.1:9001", "[::1]:9002"]

[lab]
entry = "b"
[lab.services.b]
replicas = 2
calls = ["c"]
latency_ms = 3
[lab.services.c]
"#;

fn invalid(toml: &str) -> Vec<String> {
    match Table::from_toml_str(toml) {
        Err(e) => e.lines(),
        Ok(t) => panic!("expected the table to be rejected, got {t:?}"),
    }
}

#[test]
fn a_full_table_parses_with_every_field() {
    let t = Table::from_toml_str(GOOD).expect("the example table is valid");
    assert_eq!(t.version, 7);
    let b = &t.services["b"];
    assert_eq!(
        b.endpoints,
        Endpoints::Dns {
            host: "b.mesh-dev.svc.cluster.local".into(),
            port: 15006
        },
        "dns endpoints split into host and port"
    );
    assert_eq!(b.lb, Lb::Random);
    assert_eq!(b.timeouts.per_try_ms, Some(500));
    assert_eq!(b.retries.attempts, 3);
    assert!(b.retries.retries_status(503), "5xx covers 503");
    assert!(
        b.retries.retries_status(429),
        "an explicit status is retriable"
    );
    assert!(!b.retries.retries_status(404), "404 is not listed");
    let c = &t.services["c"];
    assert_eq!(c.lb, Lb::RoundRobin, "round-robin is the default balancer");
    assert_eq!(
        c.timeouts,
        Timeouts::default(),
        "timeouts default when absent"
    );
    assert_eq!(c.retries, Retries::default(), "retries default when absent");
    let lab = t.lab.as_ref().expect("lab section kept");
    assert_eq!(lab.services["b"].replicas, 2);
    assert_eq!(lab.services["c"].replicas, 1, "one replica by default");
}

#[test]
fn json_round_trip_gives_the_same_table() {
    let t = Table::from_toml_str(GOOD).unwrap();
    let back = Table::from_json_str(&t.to_json()).expect("served JSON parses back");
    assert_eq!(t, back, "TOML -> JSON -> table is lossless");
}

#[test]
fn errors_name_the_field_and_the_reason() {
    let errs = invalid(
        r#"
version = 1
[services.b]
endpoints = "dns:b:15006"
retries = { attempts = 0 }
"#,
    );
    assert_eq!(
        errs,
        vec!["services.b.retries.attempts: must be 1..=10, got 0".to_string()],
        "the message has the path, the bound and the value"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let errs = invalid(
        r#"
version = 1
[services.b]
endpoints = ["127.0.0.1:0", "nohost"]
lb = "fastest"
timeouts = { connect_ms = 0, per_try_ms = 5000, request_ms = 1000 }
retries = { on = ["5xx", "sometimes"], backoff_ms = [300, 100] }
breaker = { max_ejected_percent = 150 }
[services.Bad_Name]
endpoints = "dns:x:1"
"#,
    );
    let joined = errs.join("\n");
    for want in [
        "services.b.endpoints[0]",
        "services.b.endpoints[1]",
        "services.b.lb: unknown balancer \"fastest\"",
        "services.b.timeouts.connect_ms: must be 1..=60000, got 0",
        "services.b.timeouts.per_try_ms",
        "services.b.retries.on[1]: unknown condition \"sometimes\"",
        "services.b.retries.backoff_ms",
        "services.b.breaker.max_ejected_percent: must be 0..=100, got 150",
        "services.Bad_Name: service name",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

#[test]
fn unknown_fields_are_errors() {
    let err = Table::from_toml_str(
        r#"
version = 1
[services.b]
endpoints = "dns:b:1"
retires = { attempts = 2 }
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `retires`"), "got: {err}");
    let err = Table::from_json_str(
        r#"{"version":1,"services":{"b":{"endpoints":"dns:b:1","color":"red"}}}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown field `color`"), "got: {err}");
}

#[test]
fn endpoints_must_be_dns_or_a_list() {
    let errs = invalid("version = 1\n[services.b]\nendpoints = \"b:80\"\n");
    assert!(errs[0].starts_with("services.b.endpoints:"), "got {errs:?}");
    let errs = invalid("version = 1\n[services.b]\nendpoints = []\n");
    assert_eq!(
        errs,
        vec!["services.b.endpoints: the list of endpoints is empty"]
    );
}

#[test]
fn lab_section_is_checked_against_the_services() {
    let errs = invalid(
        r#"
version = 1
[services.a]
endpoints = "dns:a:1"
[services.b]
endpoints = "dns:b:1"
[lab]
entry = "z"
[lab.services.a]
calls = ["b", "q"]
error_rate = 1.5
[lab.services.b]
calls = ["a"]
[lab.services.x]
"#,
    );
    let joined = errs.join("\n");
    for want in [
        "lab.entry: \"z\" is not a service",
        "lab.services.a.calls[1]: \"q\"",
        "lab.services.a.error_rate: must be between 0 and 1, got 1.5",
        "lab.services.x: \"x\" has no [services.x] routing entry",
        "lab.services: calls form a cycle: a -> b -> a",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

#[test]
fn empty_table_is_rejected() {
    assert_eq!(
        invalid("version = 3\n"),
        vec!["services: a table needs at least one service"]
    );
}

#[test]
fn syntax_errors_say_which_format() {
    let e = Table::from_toml_str("version = ").unwrap_err().to_string();
    assert!(e.starts_with("invalid TOML:"), "got {e}");
    let e = Table::from_json_str("{").unwrap_err().to_string();
    assert!(e.starts_with("invalid JSON:"), "got {e}");
}

#[test]
fn host_port_splitting() {
    assert_eq!(split_host_port("a:1"), Ok(("a", 1)));
    assert_eq!(split_host_port("[::1]:8080"), Ok(("::1", 8080)));
    assert!(split_host_port("a").is_err());
    assert!(split_host_port(":80").is_err());
    assert!(split_host_port("a:99999").is_err());
}

#[test]
fn a_bad_service_does_not_add_knock_on_lab_errors() {
    let errs = invalid(
        r#"
version = 1
[services.b]
endpoints = "dns:b:1"
retries = { attempts = 0 }
[lab]
entry = "b"
[lab.services.b]
"#,
    );
    assert_eq!(
        errs,
        vec!["services.b.retries.attempts: must be 1..=10, got 0"],
        "only the real error is reported"
    );
}

#[test]
fn resilience_fields_parse_and_default() {
    let t = Table::from_toml_str(
        r#"
version = 1
[services.b]
endpoints = "dns:b:1"
lb = "ring-hash"
hash_header = "X-User-Id"
panic_threshold_percent = 30
health_check = { kind = "http", path = "/ready", interval_ms = 200, healthy = 1, unhealthy = 2 }
retries = { attempts = 3, budget = { ratio = 0.1, min_per_s = 5 }, max_body_bytes = 1024, hedge_after_ms = 50 }
breaker = { max_pending = 0, max_ejection_ms = 60000 }
[services.c]
endpoints = "dns:c:1"
lb = "p2c-ewma"
health_check = { kind = "tcp" }
"#,
    )
    .expect("valid");
    let b = &t.services["b"];
    assert_eq!(b.lb, Lb::RingHash);
    assert_eq!(
        b.hash_header.as_deref(),
        Some("x-user-id"),
        "header names are lowercased"
    );
    assert_eq!(b.panic_threshold_percent, 30);
    assert_eq!(b.retries.budget.ratio, 0.1);
    assert_eq!(
        b.retries.budget.window_ms, 10_000,
        "window defaults to 10 s"
    );
    assert_eq!(b.retries.hedge_after_ms, Some(50));
    assert_eq!(b.breaker.max_pending, 0);
    assert_eq!(b.breaker.max_ejection_ms, 60_000);
    let hc = b.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.kind, hc.path.as_deref(), hc.interval_ms),
        (HealthCheckKind::Http, Some("/ready"), 200)
    );
    let c = &t.services["c"];
    assert_eq!(c.lb, Lb::P2cEwma);
    assert_eq!(
        c.panic_threshold_percent, 50,
        "Envoy's default panic threshold"
    );
    assert_eq!(
        c.retries.budget,
        Budget::default(),
        "the budget defaults to 20% + 10/s"
    );
    assert_eq!(
        c.breaker.max_ejection_ms, 300_000,
        "ejections cap at 300 s by default"
    );
    assert_eq!(
        c.health_check.as_ref().unwrap().path,
        None,
        "tcp checks have no path"
    );
    let back = Table::from_json_str(&t.to_json()).unwrap();
    assert_eq!(t, back, "round trip with every new field");
}

#[test]
fn resilience_fields_are_validated() {
    let errs = invalid(
        r#"
version = 1
[services.b]
endpoints = "dns:b:1"
lb = "ring-hash"
panic_threshold_percent = 101
timeouts = { request_ms = 100 }
retries = { budget = { ratio = -1.0, window_ms = 5 }, hedge_after_ms = 100 }
breaker = { base_ejection_ms = 1000, max_ejection_ms = 10 }
health_check = { kind = "udp", interval_ms = 0 }
[services.c]
endpoints = "dns:c:1"
hash_header = "x"
"#,
    );
    let joined = errs.join("\n");
    for want in [
        "services.b.hash_header: ring-hash needs",
        "services.b.panic_threshold_percent: must be 0..=100, got 101",
        "services.b.retries.budget.ratio: must be between 0 and 10, got -1",
        "services.b.retries.budget.window_ms: must be 1000..=600000, got 5",
        "services.b.retries.hedge_after_ms: (100) must be less than timeouts.request_ms (100)",
        "services.b.breaker.max_ejection_ms: (10) must be at least base_ejection_ms (1000)",
        "services.b.health_check.kind: unknown kind \"udp\"",
        "services.b.health_check.interval_ms: must be 10..=3600000, got 0",
        "services.c.hash_header: only used with lb = \"ring-hash\"",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

const FAULTS: &str = r#"
version = 1
[services.c]
endpoints = ["127.0.0.1:9001"]

[[services.c.faults]]
name = "slow-half"
percent = 50
delay = { fixed_ms = 200 }
match = { path_prefix = "/api", method = "GET", headers = { "X-User" = "test" } }

[[services.c.faults]]
name = "first-two-fail"
side = "inbound"
first_tries = 2
abort = { status = 503, body = "injected", grpc_status = 14 }

[[services.c.faults]]
name = "tail"
every = 3
after_ms = 1000
for_ms = 5000
delay = { scale_ms = 20, shape = 1.5 }
"#;

#[test]
fn faults_parse_with_their_selection_window_and_match() {
    use crate::faults::*;
    let t = Table::from_toml_str(FAULTS).expect("valid faults");
    let f = &t.services["c"].faults;
    assert_eq!(f.len(), 3, "in the order written");
    assert_eq!(f[0].name, "slow-half");
    assert_eq!(f[0].side, Side::Outbound, "the callers' side by default");
    assert_eq!(f[0].select, Select::Percent(50.0));
    assert_eq!(f[0].delay, Some(Delay::Fixed { ms: 200 }));
    assert_eq!(f[0].matches.method.as_deref(), Some("GET"));
    assert_eq!(
        f[0].matches.headers.get("x-user").map(String::as_str),
        Some("test"),
        "header names in lower case"
    );
    assert_eq!(f[1].side, Side::Inbound);
    assert_eq!(f[1].select, Select::FirstTries(2));
    assert_eq!(
        f[1].abort,
        Some(Abort {
            status: 503,
            body: Some("injected".into()),
            grpc_status: Some(14)
        })
    );
    assert_eq!(f[2].select, Select::Every(3));
    assert_eq!(
        f[2].window,
        Some(Window {
            after_ms: 1000,
            for_ms: Some(5000)
        })
    );
    assert_eq!(
        f[2].delay,
        Some(Delay::Pareto {
            scale_ms: 20,
            shape: 1.5,
            max_ms: DEFAULT_PARETO_MAX_MS
        })
    );
    let again = Table::from_json_str(&t.to_json()).expect("the JSON form reads back");
    assert_eq!(again, t);
}

#[test]
fn bad_faults_are_refused_each_naming_its_field() {
    let errs = invalid(
        r#"
version = 1
[services.c]
endpoints = ["127.0.0.1:9001"]
[[services.c.faults]]
name = "Bad Name"
percent = 150
delay = { fixed_ms = 700000 }
[[services.c.faults]]
name = "two"
every = 0
abort = { status = 99 }
[[services.c.faults]]
name = "two"
percent = 10
every = 2
delay = { min_ms = 300, max_ms = 100 }
[[services.c.faults]]
name = "nothing"
[[services.c.faults]]
name = "odd-delay"
delay = { fixed_ms = 1, mean_ms = 2 }
match = { path_prefix = "api", method = "get" }
[[services.c.faults]]
side = "sideways"
delay = { scale_ms = 10, shape = 0.0 }
"#,
    );
    let want = [
        "services.c.faults[0].name",
        "services.c.faults[0].percent",
        "services.c.faults[0].delay: 700000 ms",
        "services.c.faults[1].every",
        "services.c.faults[1].abort.status",
        "services.c.faults[2]: set one of percent, every and first_tries",
        "services.c.faults[2].delay: min_ms is above max_ms",
        "services.c.faults[3]: a fault needs a delay, an abort, or both",
        "services.c.faults[4].delay: one of",
        "services.c.faults[4].match.path_prefix",
        "services.c.faults[4].match.method",
        "services.c.faults[5].name: every fault needs a name",
        "services.c.faults[5].side",
        "services.c.faults[5].delay.shape",
    ];
    for w in want {
        assert!(
            errs.iter().any(|e| e.starts_with(w)),
            "no error starting {w:?} in {errs:#?}"
        );
    }
    let unknown = Table::from_toml_str(
        "version = 1\n[services.c]\nendpoints = [\"127.0.0.1:1\"]\n[[services.c.faults]]\nname = \"x\"\nlatency = 5\n",
    )
    .unwrap_err()
    .to_string();
    assert!(unknown.contains("latency"), "{unknown}");
}
