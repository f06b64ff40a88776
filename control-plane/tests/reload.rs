//! Reloading without a restart: an operator edits a table while sidecars keep polling.

mod common;

use std::time::{Duration, Instant};

use common::{env_entry, get, served_version, start, table, TablesDir, SLACK, WATCH};
use testkit::wait_until;

#[test]
fn a_valid_edit_is_served_within_two_watch_intervals() {
    let dir = TablesDir::new("edit");
    dir.write("dev/table.toml", &table(1, 2));
    let cp = start(&dir, &[]);
    let old_etag = get(&cp, "/v1/envs/dev/table")
        .header("etag")
        .map(str::to_owned);

    dir.write("dev/table.toml", &table(2, 3));
    let edited = Instant::now();
    wait_until(
        "the edited table (version 2) to be served",
        2 * WATCH + SLACK,
        || served_version(&cp, "dev") == 2,
    );
    let took = edited.elapsed();
    eprintln!("edit served after {took:?} (watch interval {WATCH:?})");

    let r = get(&cp, "/v1/envs/dev/table");
    assert_ne!(
        r.header("etag").map(str::to_owned),
        old_etag,
        "a new table has a new ETag"
    );
    assert!(
        env_entry(&cp, "dev")["last_error"].is_null(),
        "a valid edit leaves no error"
    );
    let m = common::metrics(&cp);
    assert!(
        m.contains("meshlab_cp_reloads_total{env=\"dev\"} 1")
            && m.contains("meshlab_cp_table_version{env=\"dev\"} 2"),
        "the reload is counted and the version shown:\n{m}"
    );
}

#[test]
fn an_invalid_edit_is_rejected_and_the_old_table_kept() {
    let dir = TablesDir::new("bad-edit");
    dir.write("dev.toml", &table(1, 2));
    let cp = start(&dir, &[]);
    let before = get(&cp, "/v1/envs/dev/table");

    dir.write("dev.toml", &table(2, 0));
    wait_until(
        "the rejected edit to show as last_error",
        2 * WATCH + SLACK,
        || !env_entry(&cp, "dev")["last_error"].is_null(),
    );
    let err = env_entry(&cp, "dev")["last_error"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        err.contains("dev.toml: services.b.retries.attempts: must be 1..=10, got 0"),
        "last_error names file and field: {err}"
    );
    let after = get(&cp, "/v1/envs/dev/table");
    assert_eq!(after.status, 200, "dev is still served");
    assert_eq!(after.body, before.body, "the old table is still served");
    assert_eq!(
        after.header("etag"),
        before.header("etag"),
        "with the old ETag"
    );
    assert!(
        cp.stderr()
            .contains("services.b.retries.attempts: must be 1..=10, got 0"),
        "the error is logged:\n{}",
        cp.stderr()
    );
    let m = common::metrics(&cp);
    assert!(
        m.contains("meshlab_cp_reload_errors_total{env=\"dev\"} 1")
            && m.contains("meshlab_cp_table_version{env=\"dev\"} 1"),
        "the rejection is counted and version 1 still shown:\n{m}"
    );

    // Fixing the file clears the error.
    dir.write("dev.toml", &table(3, 2));
    wait_until("the fixed table to be served", 2 * WATCH + SLACK, || {
        served_version(&cp, "dev") == 3
    });
    assert!(
        env_entry(&cp, "dev")["last_error"].is_null(),
        "a fixed file clears last_error"
    );
}

#[test]
fn sighup_rereads_the_tables() {
    let dir = TablesDir::new("sighup");
    dir.write("dev.toml", &table(1, 2));
    // Polling is effectively off: only the signal can bring the edit in.
    let cp = start(&dir, &["--watch-interval", "1h"]);
    dir.write("dev.toml", &table(2, 2));
    assert_eq!(served_version(&cp, "dev"), 1, "no poll has run yet");

    cp.signal(libc::SIGHUP);
    wait_until(
        "the table re-read on SIGHUP",
        Duration::from_secs(5),
        || served_version(&cp, "dev") == 2,
    );
    assert!(
        cp.stderr().contains("SIGHUP"),
        "the signal is logged:\n{}",
        cp.stderr()
    );
}

#[test]
fn a_new_env_file_is_picked_up() {
    let dir = TablesDir::new("new-env");
    dir.write("dev.toml", &table(1, 2));
    let cp = start(&dir, &[]);
    assert_eq!(
        get(&cp, "/v1/envs/staging/table").status,
        404,
        "no staging yet"
    );
    dir.write("staging/table.toml", &table(4, 2));
    wait_until("staging to be served", 2 * WATCH + SLACK, || {
        get(&cp, "/v1/envs/staging/table").status == 200
    });
    assert_eq!(served_version(&cp, "staging"), 4, "staging's table");
}

#[test]
fn a_deleted_file_keeps_its_table_served() {
    let dir = TablesDir::new("deleted");
    dir.write("dev.toml", &table(5, 2));
    let cp = start(&dir, &[]);
    dir.remove("dev.toml");
    wait_until("the deletion to be noticed", 2 * WATCH + SLACK, || {
        !env_entry(&cp, "dev")["last_error"].is_null()
    });
    assert_eq!(
        served_version(&cp, "dev"),
        5,
        "the last table is still served"
    );
    assert!(
        cp.stderr().contains("the file is gone"),
        "a warning is logged:\n{}",
        cp.stderr()
    );
}
