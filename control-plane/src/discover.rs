//! Finding the environments of a tables directory.
//!
//! Two layouts are accepted, so that `--tables k8s/overlays` works on the repository as it is:
//! - `DIR/<env>.toml`;
//! - `DIR/<env>/table.toml` (a Kustomize overlay; other files in it are ignored).
//!
//! Entries whose name starts with `.` are skipped (editors' temporary files, and the `..data`
//! links of a mounted ConfigMap); so are other files and directories without a `table.toml`.
//! An environment name must be a DNS label, and an environment present in both layouts is a
//! problem: neither file is picked silently.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The file name of a table in the directory layout.
pub const TABLE_FILE: &str = "table.toml";

/// One environment's table file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub env: String,
    pub path: PathBuf,
}

/// Something wrong with the directory's layout, with the environment it concerns if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub env: Option<String>,
    pub message: String,
}

/// What a scan of the directory found, sorted by environment name.
#[derive(Debug, Default)]
pub struct Discovery {
    pub found: Vec<Found>,
    pub problems: Vec<Problem>,
}

/// The sentence naming the layouts, for messages.
pub fn layouts(dir: &Path) -> String {
    let d = dir.display();
    format!("{d}/<env>.toml or {d}/<env>/{TABLE_FILE}")
}

/// Scans `dir` for environments. Fails only when the directory itself cannot be read.
pub fn discover(dir: &Path) -> io::Result<Discovery> {
    let mut by_env: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; a dangling one is not a table.
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        let (env, source) = if meta.is_file() {
            match name.strip_suffix(".toml") {
                Some(stem) => (stem, path),
                None => continue,
            }
        } else if meta.is_dir() {
            let table = path.join(TABLE_FILE);
            if !table.is_file() {
                continue;
            }
            (name, table)
        } else {
            continue;
        };
        if !is_dns_label(env) {
            problems.push(Problem {
                env: None,
                message: format!(
                    "{}: environment name {env:?} must be a DNS label (1-63 of a-z, 0-9 and '-', \
                     not starting or ending with '-'); rename it",
                    source.display()
                ),
            });
            continue;
        }
        by_env.entry(env.to_owned()).or_default().push(source);
    }
    let mut found = Vec::new();
    for (env, mut paths) in by_env {
        if paths.len() == 1 {
            let path = paths.pop().expect("one path");
            found.push(Found { env, path });
        } else {
            paths.sort();
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            problems.push(Problem {
                message: format!(
                    "environment {env:?} is defined twice: {}; keep one of the two layouts",
                    list.join(" and ")
                ),
                env: Some(env),
            });
        }
    }
    problems.sort_by(|a, b| a.message.cmp(&b.message));
    Ok(Discovery { found, problems })
}

/// Environment names become namespaces, URL path segments and metric labels.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn envs(d: &Discovery) -> Vec<(&str, PathBuf)> {
        d.found
            .iter()
            .map(|f| (f.env.as_str(), f.path.clone()))
            .collect()
    }

    #[test]
    fn both_layouts_are_found_and_sorted() {
        let dir = TempDir::new("discover-both");
        dir.write("prod.toml", "x");
        dir.write("dev/table.toml", "x");
        dir.write("dev/kustomization.yaml", "x");
        let d = discover(dir.path()).expect("readable dir");
        assert_eq!(
            envs(&d),
            vec![
                ("dev", dir.path().join("dev/table.toml")),
                ("prod", dir.path().join("prod.toml"))
            ],
            "one env per layout, sorted by name"
        );
        assert!(d.problems.is_empty(), "no problems: {:?}", d.problems);
    }

    #[test]
    fn unrelated_and_hidden_entries_are_skipped() {
        let dir = TempDir::new("discover-skip");
        dir.write("README.md", "x");
        dir.write(".dev.toml.swp", "x");
        dir.write("..data/table.toml", "x");
        dir.write("base/deployment.yaml", "x");
        dir.write("staging.toml", "x");
        let d = discover(dir.path()).expect("readable dir");
        assert_eq!(
            envs(&d),
            vec![("staging", dir.path().join("staging.toml"))],
            "only the table is an environment"
        );
        assert!(d.problems.is_empty(), "no problems: {:?}", d.problems);
    }

    #[test]
    fn an_env_in_both_layouts_is_a_problem_naming_both_files() {
        let dir = TempDir::new("discover-dup");
        dir.write("dev.toml", "x");
        dir.write("dev/table.toml", "x");
        let d = discover(dir.path()).expect("readable dir");
        assert!(d.found.is_empty(), "neither file is picked: {:?}", d.found);
        assert_eq!(d.problems.len(), 1, "one problem: {:?}", d.problems);
        let p = &d.problems[0];
        assert_eq!(p.env.as_deref(), Some("dev"), "the problem names the env");
        assert!(
            p.message.contains("dev.toml") && p.message.contains("dev/table.toml"),
            "the message names both files: {}",
            p.message
        );
    }

    #[test]
    fn env_names_must_be_dns_labels() {
        let dir = TempDir::new("discover-names");
        dir.write("My_Env.toml", "x");
        let d = discover(dir.path()).expect("readable dir");
        assert!(d.found.is_empty(), "a bad name is not served");
        assert!(
            d.problems[0].message.contains("My_Env") && d.problems[0].message.contains("DNS label"),
            "the problem explains the rule: {:?}",
            d.problems
        );
        for ok in ["dev", "a", "prod-eu-1", "0"] {
            assert!(is_dns_label(ok), "{ok:?} is a DNS label");
        }
        for bad in ["", "-dev", "dev-", "Dev", "dev.eu", "d_e", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?} is not a DNS label");
        }
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = TempDir::new("discover-missing");
        assert!(
            discover(&dir.path().join("nope")).is_err(),
            "reading a missing directory fails"
        );
    }
}
