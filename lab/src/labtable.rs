//! The environment's routing table, as the lab reads it and as it rewrites it for its own
//! control plane.
//!
//! The lab serves the operator's table with one change: each service's `endpoints` become the
//! loopback inbound addresses of that service's sidecars. Everything else (timeouts, retries,
//! breaker, lb, the `[lab]` section) is copied as written, so a lab run exercises the same
//! policy a cluster would. The rewrite works on the file parsed as a plain `toml::Table` rather
//! than on `mesh_table::Table`, so fields the operator left out stay out (defaults are applied
//! by the sidecar, exactly as for the original file); the result is then validated with
//! `mesh_table` like any other table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_table::{Lab, Table, TableError};

/// Endpoints of a service that no lab replica backs, and of every service in the provisional
/// table served before the sidecars exist: the discard port on loopback, which refuses
/// connections at once. It validates as an address, so the table is servable.
pub const PLACEHOLDER_ENDPOINT: &str = "127.0.0.1:9";

/// Why the environment's table could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("env {env:?} is not a valid environment name: use a-z, 0-9, '-' and '_'")]
    BadEnv { env: String },
    #[error("no table for env {env:?}: tried {}", list_paths(.tried))]
    NotFound { env: String, tried: Vec<PathBuf> },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} does not validate: {source}", path.display())]
    Invalid { path: PathBuf, source: TableError },
    #[error(
        "{} has no [lab] section: meshlab needs `[lab] entry = \"<service>\"` and \
         `[lab.services.<name>]` for every service it should run",
        path.display()
    )]
    NoLab { path: PathBuf },
}

fn list_paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Why a rewritten table could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("the table is not TOML: {0}")]
    Parse(String),
    #[error("the table has no [services] table")]
    NoServices,
    #[error("could not write the table as TOML: {0}")]
    Serialize(String),
    #[error("the rewritten table does not validate: {0}")]
    Invalid(#[from] TableError),
}

/// An environment's table: where it was found, its text, and its validated form.
#[derive(Debug, Clone)]
pub struct EnvTable {
    pub path: PathBuf,
    pub text: String,
    pub table: Table,
}

impl EnvTable {
    /// The `[lab]` section (present: [`load`] checks it).
    pub fn lab(&self) -> &Lab {
        self.table.lab.as_ref().expect("load() requires [lab]")
    }
}

/// The two places a table may be, in the order they are tried (the control plane's `--tables`
/// accepts both layouts).
pub fn candidates(tables: &Path, env: &str) -> [PathBuf; 2] {
    [
        tables.join(env).join("table.toml"),
        tables.join(format!("{env}.toml")),
    ]
}

/// Finds, reads and validates `env`'s table; it must have a `[lab]` section.
pub fn load(tables: &Path, env: &str) -> Result<EnvTable, LoadError> {
    let env_ok = !env.is_empty()
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !env_ok {
        return Err(LoadError::BadEnv { env: env.into() });
    }
    let tried = candidates(tables, env);
    let path = tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LoadError::NotFound {
            env: env.into(),
            tried: tried.to_vec(),
        })?;
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Read {
        path: path.clone(),
        source,
    })?;
    let table = Table::from_toml_str(&text).map_err(|source| LoadError::Invalid {
        path: path.clone(),
        source,
    })?;
    if table.lab.is_none() {
        return Err(LoadError::NoLab { path });
    }
    Ok(EnvTable { path, text, table })
}

/// Rewrites a table's text: `version` set to `version`, each service's `endpoints` set to its
/// list in `endpoints` (services absent from it get [`PLACEHOLDER_ENDPOINT`]), everything else
/// kept. The result is validated before it is returned.
pub fn rewrite(
    text: &str,
    version: u64,
    endpoints: &BTreeMap<String, Vec<String>>,
) -> Result<String, RewriteError> {
    let mut doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| RewriteError::Parse(e.to_string()))?;
    let version = i64::try_from(version)
        .map_err(|_| RewriteError::Serialize(format!("version {version} exceeds TOML integers")))?;
    doc.insert("version".into(), toml::Value::Integer(version));
    let services = doc
        .get_mut("services")
        .and_then(toml::Value::as_table_mut)
        .ok_or(RewriteError::NoServices)?;
    for (name, svc) in services.iter_mut() {
        let Some(svc) = svc.as_table_mut() else {
            continue; // not a table: validation below names it
        };
        let list = endpoints
            .get(name)
            .filter(|l| !l.is_empty())
            .cloned()
            .unwrap_or_else(|| vec![PLACEHOLDER_ENDPOINT.to_owned()]);
        svc.insert(
            "endpoints".into(),
            toml::Value::Array(list.into_iter().map(toml::Value::String).collect()),
        );
    }
    let body = toml::to_string(&doc).map_err(|e| RewriteError::Serialize(e.to_string()))?;
    let out = format!(
        "# Generated by meshlab for its loopback lab: endpoints are the sidecars' inbound\n\
         # listeners; every other field is copied from the environment's table.\n{body}"
    );
    Table::from_toml_str(&out)?;
    Ok(out)
}

/// The table served while the sidecars start: the original version, every endpoint a
/// placeholder.
pub fn provisional(text: &str, version: u64) -> Result<String, RewriteError> {
    rewrite(text, version, &BTreeMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_table::Endpoints;

    const TABLE: &str = r#"
version = 7

[services.a]
endpoints = "dns:a.mesh-dev.svc.cluster.local:15006"
lb = "random"
timeouts = { connect_ms = 100, per_try_ms = 300, request_ms = 900 }

[services.b]
endpoints = ["10.0.0.1:15006"]
retries = { attempts = 3, on = ["5xx"], backoff_ms = [5, 50] }

[services.unused]
endpoints = "dns:unused:15006"

[lab]
entry = "a"
[lab.services.a]
calls = ["b"]
[lab.services.b]
replicas = 2
error_rate = 0.1
"#;

    fn statics(t: &Table, s: &str) -> Vec<String> {
        match &t.services[s].endpoints {
            Endpoints::Static(l) => l.clone(),
            other => panic!("services.{s}.endpoints should be a static list, got {other:?}"),
        }
    }

    #[test]
    fn rewrite_replaces_endpoints_and_version_and_keeps_policy() {
        let eps = BTreeMap::from([
            ("a".to_owned(), vec!["127.0.0.1:4001".to_owned()]),
            (
                "b".to_owned(),
                vec!["127.0.0.1:4002".to_owned(), "127.0.0.1:4003".to_owned()],
            ),
        ]);
        let text = rewrite(TABLE, 8, &eps).expect("rewrite succeeds");
        let orig = Table::from_toml_str(TABLE).expect("the fixture validates");
        let new = Table::from_toml_str(&text).expect("the rewrite validates");
        assert_eq!(new.version, 8, "version is the one asked for");
        assert_eq!(
            statics(&new, "a"),
            eps["a"],
            "a's endpoints are its sidecars"
        );
        assert_eq!(
            statics(&new, "b"),
            eps["b"],
            "b's endpoints are its sidecars"
        );
        assert_eq!(
            statics(&new, "unused"),
            vec![PLACEHOLDER_ENDPOINT],
            "a service without replicas gets the placeholder"
        );
        for s in ["a", "b", "unused"] {
            let (o, n) = (&orig.services[s], &new.services[s]);
            assert_eq!(o.lb, n.lb, "services.{s}.lb is kept");
            assert_eq!(o.timeouts, n.timeouts, "services.{s}.timeouts are kept");
            assert_eq!(o.retries, n.retries, "services.{s}.retries are kept");
            assert_eq!(o.breaker, n.breaker, "services.{s}.breaker is kept");
        }
        assert_eq!(orig.lab, new.lab, "the [lab] section is kept");
    }

    #[test]
    fn rewrite_keeps_omitted_fields_omitted() {
        let text = rewrite(TABLE, 7, &BTreeMap::new()).expect("rewrite succeeds");
        let doc: toml::Table = text.parse().expect("TOML");
        let b = doc["services"]["b"]
            .as_table()
            .expect("services.b is a table");
        assert!(
            !b.contains_key("timeouts") && !b.contains_key("breaker"),
            "fields left to defaults stay absent, so the sidecar applies its defaults: {b:?}"
        );
    }

    #[test]
    fn provisional_table_validates_with_placeholders_everywhere() {
        let text = provisional(TABLE, 7).expect("provisional table");
        let t = Table::from_toml_str(&text).expect("validates");
        assert_eq!(
            t.version, 7,
            "the provisional table keeps the original version"
        );
        for s in t.services.keys() {
            assert_eq!(
                statics(&t, s),
                vec![PLACEHOLDER_ENDPOINT],
                "services.{s} points at the placeholder"
            );
        }
    }

    #[test]
    fn rewrite_refuses_bad_input() {
        assert!(
            matches!(
                rewrite("version = ", 1, &BTreeMap::new()),
                Err(RewriteError::Parse(_))
            ),
            "broken TOML is a parse error"
        );
        assert!(
            matches!(
                rewrite("version = 1", 1, &BTreeMap::new()),
                Err(RewriteError::NoServices)
            ),
            "a table without services is refused"
        );
    }

    #[test]
    fn load_finds_both_layouts_and_requires_lab() {
        let dir = std::env::temp_dir().join(format!("meshlab-labtable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dev")).expect("mkdir");
        std::fs::write(dir.join("dev/table.toml"), TABLE).expect("write dev");
        std::fs::write(dir.join("flat.toml"), TABLE).expect("write flat");
        let nolab = TABLE.split("[lab]").next().expect("prefix");
        std::fs::write(dir.join("nolab.toml"), nolab).expect("write nolab");
        std::fs::write(
            dir.join("bad.toml"),
            TABLE.replace("\"random\"", "\"fastest\""),
        )
        .expect("write bad");

        let dev = load(&dir, "dev").expect("dev/table.toml loads");
        assert_eq!(dev.lab().entry, "a", "entry service");
        assert!(load(&dir, "flat").is_ok(), "<env>.toml is accepted as well");
        let e = load(&dir, "nolab").expect_err("no [lab]").to_string();
        assert!(
            e.contains("[lab]"),
            "the error names the missing section: {e}"
        );
        let e = load(&dir, "bad").expect_err("bad lb").to_string();
        assert!(
            e.contains("services.a.lb"),
            "the error names the bad field: {e}"
        );
        let e = load(&dir, "missing").expect_err("absent").to_string();
        assert!(
            e.contains("missing/table.toml") && e.contains("missing.toml"),
            "the error lists where it looked: {e}"
        );
        let e = load(&dir, "../etc").expect_err("path in env").to_string();
        assert!(
            e.contains("not a valid environment"),
            "env names are checked: {e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
