//! Helpers for the unit tests: a temporary tables directory and small tables.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A directory under `std::env::temp_dir()` with a unique name, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "meshlab-cp-unit-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `rel` (creating parent directories) atomically: a hidden temporary file renamed
    /// into place, so a poll never sees a half-written table.
    pub fn write(&self, rel: &str, text: &str) {
        let dest = self.0.join(rel);
        let parent = dest.parent().expect("a file has a parent");
        std::fs::create_dir_all(parent).expect("create parent dir");
        let tmp = parent.join(format!(".tmp-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&tmp, text).expect("write temp file");
        std::fs::rename(&tmp, &dest).expect("rename into place");
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.0.join(rel)).expect("remove file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A table with one service `b`; `attempts = 0` makes it invalid at
/// `services.b.retries.attempts`.
pub fn table(version: u64, attempts: u32) -> String {
    format!(
        "version = {version}\n\n[services.b]\nendpoints = [\"127.0.0.1:8080\"]\n\
         [services.b.retries]\nattempts = {attempts}\n"
    )
}
