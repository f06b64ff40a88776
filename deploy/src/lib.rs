//! Helpers for the deployment checks in `tests/`: the real tools run, nothing is mocked.
//!
//! Layout:
//! - [`root`] and [`read`]: files of the repository;
//! - [`render`]: `scripts/kustomize-build.sh DIR` (kustomize, else `kubectl kustomize`), and
//!   [`yaml_docs`] / [`hcl_json`]: YAML and HCL turned into JSON by the venv's PyYAML and
//!   python-hcl2 (`make setup` installs both);
//! - [`venv_tool`]: a tool of `.venv/bin` (kubernetes-validate, shellcheck, python);
//! - [`Flags`]: a binary's flags, environment variables and defaults, read from its `--help`,
//!   so the manifests are checked against what the binaries really do;
//! - [`makefile_var`]: a `NAME := value` of the Makefile (the pinned Kubernetes version).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The repository's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("deploy/ sits in the repository root")
        .to_path_buf()
}

/// A repository file's text, by its path from the root.
pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs `cmd`, feeding `stdin`; panics with the command's stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command, stdin: &str) -> String {
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `cmd` with `stdin`, capturing stdout and stderr whatever the exit status.
pub fn run(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(stdin.as_bytes())
        .unwrap_or_else(|e| panic!("writing to {cmd:?}: {e}"));
    drop(pipe);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {cmd:?}: {e}"))
}

/// `.venv/bin/NAME`, which `make setup` installs from scripts/requirements-test.txt.
pub fn venv_tool(name: &str) -> PathBuf {
    let path = root().join(".venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} not found: these checks need the test tools of scripts/requirements-test.txt; \
         run `make setup` (scripts/setup.sh creates .venv/)",
        path.display()
    );
    path
}

/// The rendered manifests of a Kustomize directory (e.g. `k8s/overlays/dev`), as YAML.
pub fn render(dir: &str) -> String {
    run_ok(
        Command::new(root().join("scripts/kustomize-build.sh"))
            .arg(dir)
            .current_dir(root()),
        "",
    )
}

/// Every document of a YAML stream, as JSON values (PyYAML's safe loader).
pub fn yaml_docs(yaml: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]\n\
                  json.dump(docs, sys.stdout)";
    let json = run_ok(Command::new(venv_tool("python")).args(["-c", script]), yaml);
    match serde_json::from_str(&json).expect("the converter prints JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// A Terraform file parsed by python-hcl2, as JSON.
pub fn hcl_json(path: &Path) -> Value {
    let script = "import json, sys, hcl2\n\
                  with open(sys.argv[1]) as f:\n    json.dump(hcl2.load(f), sys.stdout)";
    let json = run_ok(
        Command::new(venv_tool("python"))
            .args(["-c", script])
            .arg(path),
        "",
    );
    serde_json::from_str(&json).expect("the parser prints JSON")
}

/// `NAME := value` (or `NAME ?= value`, `NAME = value`) of the Makefile.
pub fn makefile_var(name: &str) -> String {
    read("Makefile")
        .lines()
        .find_map(|line| {
            let (lhs, rhs) = line.split_once('=')?;
            let lhs = lhs.trim_end_matches([':', '?', ' ']);
            (lhs == name).then(|| rhs.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("the Makefile sets no {name}"))
}

/// A binary's flags as its `--help` lists them: each environment variable with its default.
#[derive(Debug)]
pub struct Flags {
    pub binary: String,
    /// Environment variable -> the flag's default (`None` when it has none).
    pub env: BTreeMap<String, Option<String>>,
}

impl Flags {
    /// Runs `target/<profile>/NAME --help` (built by `cargo build --workspace --bins`).
    pub fn of(binary: &str) -> Flags {
        let help = run_ok(Command::new(testkit::bin(binary)).arg("--help"), "");
        let mut env = BTreeMap::new();
        for (at, _) in help.match_indices("[env: ") {
            let rest = &help[at + "[env: ".len()..];
            let name = rest.split('=').next().expect("split yields one item");
            let after = &rest[rest.find(']').expect("[env: ...] closes") + 1..];
            let default = after
                .strip_prefix(" [default: ")
                .map(|d| d[..d.find(']').expect("[default: ...] closes")].to_owned());
            env.insert(name.to_owned(), default);
        }
        assert!(
            !env.is_empty(),
            "{binary} --help names no environment variable:\n{help}"
        );
        Flags {
            binary: binary.to_owned(),
            env,
        }
    }

    /// The default of the flag read from `var`; panics when the binary has no such flag or
    /// the flag has no default.
    pub fn default_of(&self, var: &str) -> &str {
        match self.env.get(var) {
            Some(Some(d)) => d,
            Some(None) => panic!("{}'s flag for {var} has no default", self.binary),
            None => panic!(
                "{} reads no {var}; it reads {:?}",
                self.binary,
                self.env.keys()
            ),
        }
    }

    /// The port of an address-valued default, e.g. 15006 of `0.0.0.0:15006`.
    pub fn default_port(&self, var: &str) -> u16 {
        let addr = self.default_of(var);
        let port = addr.rsplit(':').next().expect("rsplit yields one item");
        port.parse().unwrap_or_else(|_| {
            panic!(
                "{}'s default for {var} is {addr:?}, not host:port",
                self.binary
            )
        })
    }
}
