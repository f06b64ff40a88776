//! Shared by the scenario files: a temporary tables directory, small tables, and a control plane
//! started as the real binary on port 0.
#![allow(dead_code)] // each scenario file uses its own subset

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use testkit::{Proc, Response};

/// The poll interval the reload scenarios run with.
pub const WATCH: Duration = Duration::from_millis(200);
/// Added to time limits for a busy test machine (process scheduling, parallel tests).
pub const SLACK: Duration = Duration::from_secs(1);

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A tables directory under `std::env::temp_dir()`, removed on drop.
pub struct TablesDir(PathBuf);

impl TablesDir {
    pub fn new(tag: &str) -> TablesDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "meshlab-cp-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create tables dir");
        TablesDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }

    /// Writes `rel` the way an operator's tooling should: to a hidden temporary file, then
    /// renamed into place, so the control plane never reads half a file.
    pub fn write(&self, rel: &str, text: &str) {
        let dest = self.0.join(rel);
        let parent = dest.parent().expect("a file has a parent");
        std::fs::create_dir_all(parent).expect("create parent dir");
        let tmp = parent.join(format!(".tmp-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, &dest).expect("rename into place");
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.0.join(rel)).expect("remove table file");
    }
}

impl Drop for TablesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A table with one service `b`; `attempts = 0` is invalid at `services.b.retries.attempts`.
pub fn table(version: u64, attempts: u32) -> String {
    format!(
        "version = {version}\n\n[services.b]\nendpoints = [\"127.0.0.1:8080\"]\n\
         [services.b.retries]\nattempts = {attempts}\n"
    )
}

/// Starts the real `control-plane` on port 0 with `extra` flags, and `--watch-interval 200ms`
/// unless `extra` sets another.
pub fn start(dir: &TablesDir, extra: &[&str]) -> Proc {
    let mut args = vec!["--tables", dir.arg(), "--listen", "127.0.0.1:0"];
    if !extra.contains(&"--watch-interval") {
        args.extend_from_slice(&["--watch-interval", "200ms"]);
    }
    args.extend_from_slice(extra);
    Proc::start("control-plane", &args)
}

pub fn get(cp: &Proc, path: &str) -> Response {
    testkit::get(cp.addr("control_plane"), path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}\nstderr:\n{}", cp.stderr()))
}

pub fn get_with(cp: &Proc, path: &str, headers: &[(&str, &str)]) -> Response {
    testkit::http(cp.addr("control_plane"), "GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}\nstderr:\n{}", cp.stderr()))
}

/// The version `GET /v1/envs/{env}/table` serves now.
pub fn served_version(cp: &Proc, env: &str) -> u64 {
    let r = get(cp, &format!("/v1/envs/{env}/table"));
    assert_eq!(r.status, 200, "{env} is served: {}", r.body);
    r.json()["version"].as_u64().expect("a version")
}

/// The `/v1/envs` entry of `env`.
pub fn env_entry(cp: &Proc, env: &str) -> serde_json::Value {
    let v = get(cp, "/v1/envs").json();
    v["envs"]
        .as_array()
        .expect("an envs array")
        .iter()
        .find(|e| e["name"] == env)
        .unwrap_or_else(|| panic!("{env} is listed in /v1/envs: {v}"))
        .clone()
}

pub fn metrics(cp: &Proc) -> String {
    let r = get(cp, "/metrics");
    assert_eq!(r.status, 200, "metrics are served");
    r.body
}
