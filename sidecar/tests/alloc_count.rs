//! The `alloc-count` feature end to end: a sidecar built with it serves its allocator's counters
//! on the admin port, `GET /debug/allocations`, and they move as it works; a sidecar built
//! without it has no such endpoint. `make test` checks the latter; the former runs with
//! `cargo test -p sidecar --features alloc-count --test alloc_count`.

use std::path::PathBuf;
use std::time::Duration;

use testkit::{get, sidecar_cmd, start_ready_sidecar, Proc};

fn sidecar() -> Proc {
    let dir = std::env::temp_dir().join(format!("meshlab-alloc-count-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let table: PathBuf = dir.join("table.toml");
    std::fs::write(
        &table,
        "version = 1\n[services.b]\nendpoints = [\"127.0.0.1:9\"]\n",
    )
    .unwrap();
    let mut cmd = sidecar_cmd("a", "127.0.0.1:9".parse().unwrap());
    cmd.args(["--table", table.to_str().unwrap()]);
    start_ready_sidecar(&mut cmd, "sidecar", Duration::from_secs(30))
}

fn counts(sc: &Proc) -> serde_json::Value {
    let r = get(sc.addr("admin"), "/debug/allocations").expect("the admin port answers");
    assert_eq!(
        r.status, 200,
        "/debug/allocations with the feature: {}",
        r.body
    );
    r.json()
}

#[test]
fn the_admin_port_serves_allocation_counts_only_with_the_feature() {
    let sc = sidecar();
    if !cfg!(feature = "alloc-count") {
        let r = get(sc.addr("admin"), "/debug/allocations").expect("the admin port answers");
        assert_eq!(
            r.status, 404,
            "without alloc-count there is no /debug/allocations"
        );
        return;
    }
    let before = counts(&sc);
    assert_eq!(
        before["counter"], "rust-global-allocator",
        "the counts say where they come from: {before}"
    );
    assert_eq!(
        before["allocator"], "std::alloc::System",
        "and which allocator is underneath: {before}"
    );
    for _ in 0..20 {
        get(sc.addr("admin"), "/config").expect("/config answers");
    }
    let after = counts(&sc);
    for key in ["allocs", "alloc_bytes", "deallocs"] {
        let (b, a) = (before[key].as_u64(), after[key].as_u64());
        assert!(
            b.is_some() && a > b,
            "20 /config answers move {key}: {b:?} then {a:?}"
        );
    }
}
