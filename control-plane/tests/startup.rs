//! Start-up: a control plane with a bad tables directory refuses to start and says why.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{table, TablesDir};
use testkit::Proc;

/// Runs the binary on `dir`; it must exit on its own. Returns (success, stderr).
fn run_to_exit(dir: &TablesDir) -> (bool, String) {
    let mut p = Proc::spawn(
        Command::new(testkit::bin("control-plane")).args([
            "--tables",
            dir.arg(),
            "--listen",
            "127.0.0.1:0",
        ]),
        "control-plane",
    );
    let status = p
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("control-plane should exit at once\nstderr:\n{}", p.stderr()));
    (status.success(), p.stderr())
}

#[test]
fn an_invalid_table_stops_the_start_with_file_and_field_path() {
    let dir = TablesDir::new("bad-start");
    dir.write("dev/table.toml", &table(1, 0));
    dir.write("prod.toml", &table(1, 2));
    let (ok, stderr) = run_to_exit(&dir);
    assert!(!ok, "an invalid table is a failed start\nstderr:\n{stderr}");
    let want = format!(
        "{}/dev/table.toml: services.b.retries.attempts: must be 1..=10, got 0",
        dir.arg()
    );
    assert!(stderr.contains(&want), "stderr has {want:?}:\n{stderr}");
}

#[test]
fn every_bad_file_is_reported_at_once() {
    let dir = TablesDir::new("bad-many");
    dir.write("dev.toml", &table(1, 0));
    dir.write("prod.toml", &table(1, 11));
    let (ok, stderr) = run_to_exit(&dir);
    assert!(!ok, "invalid tables are a failed start");
    assert!(
        stderr.contains("dev.toml: services.b.retries.attempts: must be 1..=10, got 0")
            && stderr.contains("prod.toml: services.b.retries.attempts: must be 1..=10, got 11"),
        "both files' errors are listed:\n{stderr}"
    );
}

#[test]
fn a_directory_without_tables_names_the_layouts() {
    let dir = TablesDir::new("empty");
    dir.write("README.md", "no tables here");
    let (ok, stderr) = run_to_exit(&dir);
    assert!(!ok, "no environment is a failed start");
    assert!(
        stderr.contains(&format!("no environment found in {}", dir.arg()))
            && stderr.contains("<env>.toml")
            && stderr.contains("<env>/table.toml"),
        "stderr names the dir and the two layouts:\n{stderr}"
    );
}

#[test]
fn an_env_in_both_layouts_stops_the_start() {
    let dir = TablesDir::new("dup");
    dir.write("dev.toml", &table(1, 2));
    dir.write("dev/table.toml", &table(1, 2));
    let (ok, stderr) = run_to_exit(&dir);
    assert!(!ok, "a duplicate environment is a failed start");
    assert!(
        stderr.contains("\"dev\" is defined twice"),
        "stderr names the duplicate:\n{stderr}"
    );
}
