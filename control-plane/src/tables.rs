//! The loaded environments: loading at start, serving snapshots, and reloading.
//!
//! Each [`Env`] is immutable and carries what a request needs, computed once at load: the JSON
//! body (`Bytes`, shared by every response) and the ETag. The set of environments sits behind an
//! [`ArcSwap`]: a request takes a snapshot without a lock, and a reload builds a new map and
//! swaps it in whole, so no request ever sees a half-updated table.
//!
//! Reloads are serialized by a mutex that also holds what the watcher remembers between polls:
//! each file's stamp (mtime and length), the environments whose file is gone, and the layout
//! problems already logged (so a poll every second does not repeat them).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::http::HeaderValue;
use mesh_table::Table;
use tracing::{error, info, warn};

use crate::discover::{discover, layouts, Found};
use crate::etag;
use crate::metrics::{EnvCounters, Metrics};

/// One environment's table as served.
#[derive(Debug, Clone)]
pub struct Env {
    pub name: String,
    /// The file it was loaded from.
    pub source: PathBuf,
    pub version: u64,
    /// The strong ETag, quotes included.
    pub etag: HeaderValue,
    /// `Table::to_json()`, serialized once.
    pub body: Bytes,
    pub loaded_at: SystemTime,
    /// Why the last reload of this environment failed; `None` when its file is served as is.
    pub last_error: Option<String>,
    pub(crate) counters: EnvCounters,
}

impl Env {
    fn new(name: &str, source: PathBuf, table: &Table, metrics: &Metrics) -> Env {
        let json = table.to_json();
        let tag = etag::etag(table.version, json.as_bytes());
        let loaded_at = SystemTime::now();
        metrics.loaded(name, table.version, loaded_at);
        Env {
            name: name.to_owned(),
            source,
            version: table.version,
            etag: HeaderValue::from_str(&tag).expect("an ETag is visible ASCII"),
            body: Bytes::from(json),
            loaded_at,
            last_error: None,
            counters: metrics.env_counters(name),
        }
    }

    /// The same table, with `last_error` set.
    fn with_error(&self, err: String) -> Env {
        Env {
            last_error: Some(err),
            ..self.clone()
        }
    }

    /// The ETag as text, quotes included.
    pub fn etag_str(&self) -> &str {
        self.etag.to_str().expect("an ETag is visible ASCII")
    }
}

/// Why the tables could not be loaded at start: every problem, one per line, each naming its
/// file (and, for a table that does not validate, the field path).
#[derive(Debug)]
pub struct LoadError {
    pub dir: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{n} problem{} with the tables in {}:",
            if n == 1 { "" } else { "s" },
            self.dir.display()
        )?;
        for p in &self.problems {
            write!(f, "\n{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The periodic poll: re-read only files whose stamp changed, and new files.
    Poll,
    /// SIGHUP: re-read every file.
    Signal,
}

/// What a reload did, by environment name (for logs and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Re-read, validated, now served.
    pub reloaded: Vec<String>,
    /// Re-read and rejected; the previous table (if any) is still served.
    pub rejected: Vec<String>,
    /// Whose file disappeared since the last reload; still served.
    pub missing: Vec<String>,
}

/// A file's modification time and length: a change of either means "read it again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
}

fn stat(path: &Path) -> std::io::Result<Stamp> {
    let m = fs::metadata(path)?;
    Ok(Stamp {
        mtime: m.modified().ok(),
        len: m.len(),
    })
}

/// What reloads remember between runs.
#[derive(Debug, Default)]
struct Watched {
    stamps: HashMap<PathBuf, Stamp>,
    /// Environments whose file is gone (warned about once).
    missing: BTreeSet<String>,
    /// Layout problems already logged.
    problems: Vec<String>,
    /// The directory read error already logged.
    dir_error: Option<String>,
}

/// Every environment being served, and how to reload them.
pub struct Tables {
    dir: PathBuf,
    envs: ArcSwap<BTreeMap<String, Arc<Env>>>,
    watched: Mutex<Watched>,
    metrics: Metrics,
}

impl Tables {
    /// Loads every environment of `dir`. Fails, listing every problem, if the directory cannot
    /// be read, holds no environment, has a layout problem, or any table does not validate.
    pub fn load(dir: impl Into<PathBuf>, metrics: Metrics) -> Result<Tables, LoadError> {
        let dir = dir.into();
        let fail = |problems| LoadError {
            dir: dir.clone(),
            problems,
        };
        let found = discover(&dir).map_err(|e| {
            fail(vec![format!(
                "cannot read the tables directory {}: {e}; pass one holding {}",
                dir.display(),
                layouts(&dir)
            )])
        })?;
        let mut problems: Vec<String> = found.problems.into_iter().map(|p| p.message).collect();
        let mut envs = BTreeMap::new();
        let mut watched = Watched::default();
        for Found { env, path } in found.found {
            // The stamp is taken before reading: a write racing with the read changes it again
            // and the next poll re-reads the file.
            let stamp = stat(&path);
            match read_table(&path) {
                Ok(table) => {
                    if let Ok(stamp) = stamp {
                        watched.stamps.insert(path.clone(), stamp);
                    }
                    let e = Env::new(&env, path, &table, &metrics);
                    info!(env = %e.name, version = e.version, etag = e.etag_str(),
                          source = %e.source.display(), "table loaded");
                    envs.insert(env, Arc::new(e));
                }
                Err(lines) => problems.extend(lines),
            }
        }
        if problems.is_empty() && envs.is_empty() {
            problems.push(format!(
                "no environment found in {}: expected {}",
                dir.display(),
                layouts(&dir)
            ));
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Tables {
            dir,
            envs: ArcSwap::from_pointee(envs),
            watched: Mutex::new(watched),
            metrics,
        })
    }

    /// The directory the tables come from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// One environment as served now (the request path: no lock, no copy of the table).
    pub fn get(&self, env: &str) -> Option<Arc<Env>> {
        self.envs.load().get(env).cloned()
    }

    /// Every environment as served now, by name.
    pub fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Env>>> {
        self.envs.load_full()
    }

    /// Looks for changed, new and removed table files and applies what it finds:
    /// - a changed or new file that validates replaces (or adds) its environment's table;
    /// - one that does not is logged with every error and counted, its environment keeps the
    ///   previous table and shows the error as `last_error`;
    /// - a removed file leaves its table served, with a warning and a `last_error`.
    ///
    /// Blocking (reads files); the watcher runs it on a blocking thread.
    pub fn reload(&self, trigger: Trigger) -> ReloadOutcome {
        let mut w = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = ReloadOutcome::default();
        let found = match discover(&self.dir) {
            Ok(d) => {
                if w.dir_error.take().is_some() {
                    info!(dir = %self.dir.display(), "the tables directory is readable again");
                }
                d
            }
            Err(e) => {
                let msg = format!(
                    "cannot read the tables directory {}: {e}; still serving the last tables",
                    self.dir.display()
                );
                if w.dir_error.as_deref() != Some(msg.as_str()) {
                    warn!("{msg}");
                    w.dir_error = Some(msg);
                }
                return out;
            }
        };
        let mut next: BTreeMap<String, Arc<Env>> = (*self.envs.load_full()).clone();
        let mut changed = false;

        // Layout problems are logged when they appear. An environment defined twice keeps the
        // table it has, with the problem as its last error.
        let messages: Vec<String> = found.problems.iter().map(|p| p.message.clone()).collect();
        for m in messages.iter().filter(|m| !w.problems.contains(m)) {
            error!("{m}");
        }
        w.problems = messages;
        let mut blocked = BTreeSet::new();
        for p in &found.problems {
            let Some(env) = &p.env else { continue };
            blocked.insert(env.clone());
            if let Some(e) = next.get(env).cloned() {
                if e.last_error.as_deref() != Some(p.message.as_str()) {
                    next.insert(env.clone(), Arc::new(e.with_error(p.message.clone())));
                    changed = true;
                }
            }
        }

        let mut seen = BTreeSet::new();
        let mut seen_paths = HashSet::new();
        for Found { env, path } in found.found {
            let Ok(stamp) = stat(&path) else {
                continue; // gone since the scan: handled as missing below
            };
            seen.insert(env.clone());
            seen_paths.insert(path.clone());
            if w.missing.remove(&env) {
                info!(env = %env, source = %path.display(), "the table file is back");
            }
            if trigger == Trigger::Poll && w.stamps.get(&path) == Some(&stamp) {
                continue;
            }
            w.stamps.insert(path.clone(), stamp);
            let prev = next.get(&env).cloned();
            match read_table(&path) {
                Ok(table) => {
                    let e = Env::new(&env, path, &table, &self.metrics);
                    self.metrics.reloaded(&env);
                    match &prev {
                        Some(p) => info!(env = %env, from = p.version, to = e.version,
                                         etag = e.etag_str(), source = %e.source.display(),
                                         "table reloaded"),
                        None => info!(env = %env, version = e.version, etag = e.etag_str(),
                                      source = %e.source.display(), "new environment loaded"),
                    }
                    next.insert(env.clone(), Arc::new(e));
                    changed = true;
                    out.reloaded.push(env);
                }
                Err(lines) => {
                    self.metrics.reload_failed(&env);
                    for l in &lines {
                        error!(env = %env, "{l}");
                    }
                    match prev {
                        Some(p) => {
                            warn!(env = %env, version = p.version,
                                  "table rejected; still serving version {}", p.version);
                            next.insert(env.clone(), Arc::new(p.with_error(lines.join("; "))));
                            changed = true;
                        }
                        None => warn!(env = %env, "new environment rejected; nothing to serve"),
                    }
                    out.rejected.push(env);
                }
            }
        }
        w.stamps.retain(|p, _| seen_paths.contains(p));

        for (name, e) in next.iter_mut() {
            if seen.contains(name) || blocked.contains(name) || !w.missing.insert(name.clone()) {
                continue;
            }
            let msg = format!(
                "{}: the file is gone; still serving version {}",
                e.source.display(),
                e.version
            );
            warn!(env = %name, "{msg}");
            *e = Arc::new(e.with_error(msg));
            changed = true;
            out.missing.push(name.clone());
        }

        if changed {
            self.envs.store(Arc::new(next));
        }
        out
    }
}

/// Reads and validates one table file; the errors are prefixed with its path.
fn read_table(path: &Path) -> Result<Table, Vec<String>> {
    let text = fs::read_to_string(path)
        .map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
    Table::from_toml_str(&text).map_err(|e| {
        e.lines()
            .into_iter()
            .map(|l| format!("{}: {l}", path.display()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{table, TempDir};
    use prometheus::Registry;

    fn load(dir: &TempDir) -> Result<(Tables, Registry), LoadError> {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).expect("register metrics");
        Tables::load(dir.path(), metrics).map(|t| (t, registry))
    }

    fn version(t: &Tables, env: &str) -> u64 {
        t.get(env)
            .unwrap_or_else(|| panic!("{env} is served"))
            .version
    }

    fn last_error(t: &Tables, env: &str) -> Option<String> {
        t.get(env)
            .unwrap_or_else(|| panic!("{env} is served"))
            .last_error
            .clone()
    }

    /// Sets the file's mtime into the past so a rewrite always changes the stamp, even on a
    /// filesystem with coarse timestamps.
    fn age(dir: &TempDir, rel: &str, secs: u64) {
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join(rel))
            .expect("open table");
        f.set_modified(SystemTime::now() - std::time::Duration::from_secs(secs))
            .expect("set mtime");
    }

    #[test]
    fn every_env_of_both_layouts_is_loaded_with_body_and_etag() {
        let dir = TempDir::new("load-both");
        dir.write("dev/table.toml", &table(3, 2));
        dir.write("prod.toml", &table(9, 3));
        let (t, _) = load(&dir).expect("valid tables load");
        let dev = t.get("dev").expect("dev is served");
        assert_eq!(dev.version, 3, "dev's version");
        assert_eq!(
            dev.source,
            dir.path().join("dev/table.toml"),
            "dev's source file"
        );
        let json = std::str::from_utf8(&dev.body).expect("utf-8 body");
        let back = Table::from_json_str(json).expect("the body reads back as a table");
        assert_eq!(back.version, 3, "the body is dev's table");
        assert_eq!(
            dev.etag_str(),
            etag::etag(3, &dev.body),
            "the ETag is computed from the body"
        );
        assert_eq!(version(&t, "prod"), 9, "prod's version");
        assert!(dev.last_error.is_none(), "no error after a clean load");
    }

    #[test]
    fn every_invalid_file_is_reported_with_its_path() {
        let dir = TempDir::new("load-bad");
        dir.write("dev/table.toml", &table(1, 0));
        dir.write("prod.toml", &table(1, 11));
        dir.write("ok.toml", &table(1, 2));
        let err = load(&dir).err().expect("invalid tables fail the load");
        let dev = dir.path().join("dev/table.toml");
        let prod = dir.path().join("prod.toml");
        assert_eq!(
            err.problems,
            vec![
                format!(
                    "{}: services.b.retries.attempts: must be 1..=10, got 0",
                    dev.display()
                ),
                format!(
                    "{}: services.b.retries.attempts: must be 1..=10, got 11",
                    prod.display()
                ),
            ],
            "one line per problem, each with file and field path"
        );
        assert!(
            err.to_string().starts_with("2 problems with the tables in"),
            "the message counts them: {err}"
        );
    }

    #[test]
    fn a_syntax_error_names_the_file() {
        let dir = TempDir::new("load-syntax");
        dir.write("dev.toml", "version = \n");
        let err = load(&dir).err().expect("bad TOML fails the load");
        assert!(
            err.problems[0].starts_with(&format!(
                "{}: invalid TOML",
                dir.path().join("dev.toml").display()
            )),
            "the problem names file and format: {:?}",
            err.problems
        );
    }

    #[test]
    fn an_empty_directory_names_the_layouts() {
        let dir = TempDir::new("load-empty");
        dir.write("README.md", "nothing here");
        let err = load(&dir).err().expect("no env fails the load");
        let msg = err.to_string();
        assert!(
            msg.contains("no environment found")
                && msg.contains(&dir.path().display().to_string())
                && msg.contains("<env>.toml")
                && msg.contains("<env>/table.toml"),
            "the message names the dir and both layouts: {msg}"
        );
    }

    #[test]
    fn a_missing_directory_is_a_load_error() {
        let dir = TempDir::new("load-nodir");
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).expect("register metrics");
        let err = Tables::load(dir.path().join("nope"), metrics)
            .err()
            .expect("a missing dir fails the load");
        assert!(
            err.to_string().contains("cannot read the tables directory"),
            "the message says what failed: {err}"
        );
    }

    #[test]
    fn an_env_in_both_layouts_fails_the_load() {
        let dir = TempDir::new("load-dup");
        dir.write("dev.toml", &table(1, 2));
        dir.write("dev/table.toml", &table(1, 2));
        let err = load(&dir).err().expect("a duplicate env fails the load");
        assert!(
            err.to_string().contains("defined twice"),
            "the message names the duplicate: {err}"
        );
    }

    #[test]
    fn a_poll_reloads_only_changed_files() {
        let dir = TempDir::new("reload-poll");
        dir.write("dev.toml", &table(1, 2));
        dir.write("prod.toml", &table(1, 2));
        age(&dir, "dev.toml", 60);
        let (t, registry) = load(&dir).expect("valid tables load");
        assert_eq!(
            t.reload(Trigger::Poll),
            ReloadOutcome::default(),
            "nothing changed, nothing re-read"
        );
        dir.write("dev.toml", &table(2, 2));
        let out = t.reload(Trigger::Poll);
        assert_eq!(out.reloaded, vec!["dev"], "only dev was re-read");
        assert_eq!(version(&t, "dev"), 2, "dev serves the new version");
        assert_eq!(version(&t, "prod"), 1, "prod is untouched");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode metrics");
        assert!(
            text.contains("meshlab_cp_reloads_total{env=\"dev\"} 1")
                && text.contains("meshlab_cp_reloads_total{env=\"prod\"} 0")
                && text.contains("meshlab_cp_table_version{env=\"dev\"} 2"),
            "metrics count the reload and show the version:\n{text}"
        );
    }

    #[test]
    fn an_invalid_edit_keeps_the_old_table_and_records_the_error() {
        let dir = TempDir::new("reload-bad");
        dir.write("dev.toml", &table(1, 2));
        age(&dir, "dev.toml", 120);
        let (t, _) = load(&dir).expect("valid tables load");
        let before = t.get("dev").expect("dev is served");
        dir.write("dev.toml", &table(2, 0));
        age(&dir, "dev.toml", 60);
        let out = t.reload(Trigger::Poll);
        assert_eq!(out.rejected, vec!["dev"], "the edit is rejected");
        let after = t.get("dev").expect("dev is still served");
        assert_eq!(after.version, 1, "the old version is served");
        assert_eq!(after.body, before.body, "the old body is served");
        assert_eq!(after.etag, before.etag, "the old ETag is served");
        let err = after.last_error.clone().expect("the error is recorded");
        assert!(
            err.contains("dev.toml: services.b.retries.attempts: must be 1..=10, got 0"),
            "last_error has file and field path: {err}"
        );
        assert_eq!(
            t.reload(Trigger::Poll),
            ReloadOutcome::default(),
            "an unchanged bad file is not re-read on every poll"
        );

        dir.write("dev.toml", &table(3, 2));
        t.reload(Trigger::Poll);
        assert_eq!(version(&t, "dev"), 3, "a fixed file is served");
        assert_eq!(last_error(&t, "dev"), None, "and the error is cleared");
    }

    #[test]
    fn a_signal_rereads_every_file() {
        let dir = TempDir::new("reload-signal");
        dir.write("dev.toml", &table(1, 2));
        dir.write("prod.toml", &table(1, 2));
        let (t, _) = load(&dir).expect("valid tables load");
        let out = t.reload(Trigger::Signal);
        assert_eq!(out.reloaded, vec!["dev", "prod"], "every file is re-read");
    }

    #[test]
    fn new_env_files_are_noticed() {
        let dir = TempDir::new("reload-new");
        dir.write("dev.toml", &table(1, 2));
        let (t, _) = load(&dir).expect("valid tables load");
        dir.write("staging/table.toml", &table(5, 2));
        dir.write("broken.toml", &table(1, 0));
        let out = t.reload(Trigger::Poll);
        assert_eq!(out.reloaded, vec!["staging"], "the new env is loaded");
        assert_eq!(out.rejected, vec!["broken"], "the new bad env is rejected");
        assert_eq!(version(&t, "staging"), 5, "staging is served");
        assert!(t.get("broken").is_none(), "a bad new env is not served");
    }

    #[test]
    fn a_deleted_file_keeps_its_table_served() {
        let dir = TempDir::new("reload-deleted");
        dir.write("dev.toml", &table(4, 2));
        dir.write("prod.toml", &table(1, 2));
        let (t, _) = load(&dir).expect("valid tables load");
        dir.remove("dev.toml");
        let out = t.reload(Trigger::Poll);
        assert_eq!(out.missing, vec!["dev"], "the missing file is noticed");
        assert_eq!(version(&t, "dev"), 4, "dev is still served");
        let err = last_error(&t, "dev").expect("the gone file is reported");
        assert!(
            err.contains("gone"),
            "last_error says the file is gone: {err}"
        );
        assert_eq!(
            t.reload(Trigger::Poll).missing,
            Vec::<String>::new(),
            "warned once"
        );
        dir.write("dev.toml", &table(4, 2));
        assert_eq!(
            t.reload(Trigger::Poll).reloaded,
            vec!["dev"],
            "a file that comes back is read again"
        );
        assert_eq!(last_error(&t, "dev"), None, "and the error is cleared");
    }

    #[test]
    fn a_duplicate_appearing_later_keeps_the_table() {
        let dir = TempDir::new("reload-dup");
        dir.write("dev.toml", &table(1, 2));
        let (t, _) = load(&dir).expect("valid tables load");
        dir.write("dev/table.toml", &table(2, 2));
        t.reload(Trigger::Poll);
        assert_eq!(version(&t, "dev"), 1, "neither file replaces the table");
        let err = last_error(&t, "dev").expect("the duplicate is reported");
        assert!(err.contains("defined twice"), "last_error names it: {err}");
        fs::remove_dir_all(dir.path().join("dev")).expect("remove the duplicate");
        t.reload(Trigger::Poll);
        assert_eq!(
            last_error(&t, "dev"),
            None,
            "resolving it re-reads the file"
        );
    }
}
