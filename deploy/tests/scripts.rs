//! The shell scripts: shellcheck-clean, `--help` answers, and a missing prerequisite is named
//! with a non-zero exit (run with a PATH that has the basic tools and none of the missing
//! ones). The Makefile's Kubernetes targets are checked with `make -n`, which prints recipes
//! without running them.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use deploy::{read, root, run, run_ok, venv_tool};

/// Every shell script of the project, by path from the root.
fn shell_scripts() -> Vec<String> {
    let mut out = vec![".ci/run".to_owned(), "bench/run.sh".to_owned()];
    for dir in ["scripts", "k8s/terraform"] {
        let mut found: Vec<_> = std::fs::read_dir(root().join(dir))
            .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8 name")
            })
            .filter(|n| n.ends_with(".sh"))
            .map(|n| format!("{dir}/{n}"))
            .collect();
        found.sort();
        assert!(!found.is_empty(), "{dir} has shell scripts");
        out.extend(found);
    }
    out
}

/// A temporary directory holding links to the given tools only: a PATH without the rest.
struct BarePath(PathBuf);

impl BarePath {
    fn with(tag: &str, tools: &[&str]) -> BarePath {
        let dir =
            std::env::temp_dir().join(format!("meshlab-bare-path-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        for tool in tools {
            let real = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} is not in /usr/bin or /bin"));
            symlink(real, dir.join(tool)).expect("symlink");
        }
        BarePath(dir)
    }
}

impl Drop for BarePath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BASICS: &[&str] = &[
    "bash", "dirname", "sed", "head", "tr", "grep", "cat", "sort", "id", "uname",
];

/// Runs `bash SCRIPT ARGS` with PATH set to `path` only; returns (exit code, stderr).
fn run_with_path(script: &Path, args: &[&str], path: &Path) -> (i32, String) {
    let out = run(
        Command::new("/bin/bash")
            .arg(script)
            .args(args)
            .env("PATH", path)
            .current_dir(root()),
        "",
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shellcheck_is_clean_on_every_script() {
    let scripts = shell_scripts();
    let out = run(
        Command::new(venv_tool("shellcheck"))
            .args(&scripts)
            .current_dir(root()),
        "",
    );
    assert!(
        out.status.success(),
        "shellcheck {scripts:?}:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_script_is_strict_and_answers_help() {
    for script in shell_scripts().iter().filter(|s| s.starts_with("scripts/")) {
        let text = read(script);
        assert!(
            text.contains("\nset -euo pipefail\n"),
            "{script} runs with set -euo pipefail"
        );
        let out = run_ok(
            Command::new(root().join(script))
                .arg("--help")
                .current_dir(root()),
            "",
        );
        assert!(
            out.contains("Usage") || out.contains("runs it"),
            "{script} --help says how to use it:\n{out}"
        );
        assert!(
            !out.contains("set -euo"),
            "{script} --help prints its comment only:\n{out}"
        );
    }
}

#[test]
fn start_minikube_names_every_missing_prerequisite_and_fails() {
    let bare = BarePath::with("start", BASICS);
    let script = root().join("scripts/start-minikube.sh");
    let (code, err) = run_with_path(&script, &["--profile", "t", "--env", "dev"], &bare.0);
    assert_eq!(code, 1, "exit 1 without the tools; stderr:\n{err}");
    for tool in ["minikube", "docker", "kubectl"] {
        assert!(
            err.contains(&format!("missing prerequisite: {tool} not found on PATH")),
            "names {tool}:\n{err}"
        );
    }
    assert!(
        !err.contains("command not found"),
        "fails on its own check, not in a command:\n{err}"
    );

    let (code, err) = run_with_path(&script, &["--env", "qa"], &bare.0);
    assert_eq!(code, 1, "an unknown env fails: {err}");
    assert!(
        err.contains("no overlay for --env qa: expected one of dev prod staging"),
        "{err}"
    );
    let (code, err) = run_with_path(&script, &["--bogus"], &bare.0);
    assert_ne!(code, 0, "an unknown argument fails");
    assert!(err.contains("unknown argument: --bogus"), "{err}");
}

#[test]
fn start_minikube_uses_the_validated_kubernetes_version_and_the_documented_flags() {
    let text = read("scripts/start-minikube.sh");
    assert!(
        text.contains("K8S_VERSION"),
        "the cluster version comes from the Makefile's K8S_VERSION"
    );
    for step in [
        "minikube start --profile \"$profile\" --driver docker",
        "for addon in ingress metrics-server dashboard",
        "minikube image build --profile \"$profile\" --tag \"$image\"",
        "kubectl --context \"$profile\" apply -f -",
        "rollout status",
        "port-forward deploy/a 15000:15000",
    ] {
        assert!(text.contains(step), "start-minikube.sh does: {step}");
    }
}

#[test]
fn stop_minikube_needs_minikube_and_says_so() {
    let bare = BarePath::with("stop", BASICS);
    let script = root().join("scripts/stop-minikube.sh");
    for args in [&["--profile", "t"][..], &["--delete"][..]] {
        let (code, err) = run_with_path(&script, args, &bare.0);
        assert_eq!(code, 1, "{args:?}: exit 1 without minikube; stderr:\n{err}");
        assert!(
            err.contains("missing prerequisite: minikube not found on PATH"),
            "{err}"
        );
    }
}

#[test]
fn kustomize_build_says_when_there_is_no_renderer() {
    // A copy of the script in a tree with no .tools/ and a PATH with neither kustomize nor kubectl.
    let bare = BarePath::with("render", BASICS);
    let tree = bare.0.join("tree");
    std::fs::create_dir_all(tree.join("scripts")).unwrap();
    std::fs::copy(
        root().join("scripts/kustomize-build.sh"),
        tree.join("scripts/kustomize-build.sh"),
    )
    .unwrap();
    let script = tree.join("scripts/kustomize-build.sh");
    let overlay = root().join("k8s/overlays/dev");
    let (code, err) = run_with_path(&script, &[overlay.to_str().unwrap()], &bare.0);
    assert_eq!(code, 1, "exit 1 without a renderer; stderr:\n{err}");
    assert!(
        err.contains("no Kustomize renderer: install kustomize (v5) or kubectl"),
        "{err}"
    );
}

#[test]
fn apt_install_says_when_there_is_no_apt_get() {
    let bare = BarePath::with("apt", BASICS);
    let (code, err) = run_with_path(&root().join("scripts/apt-install.sh"), &["cmake"], &bare.0);
    assert_eq!(code, 1, "exit 1 without apt-get; stderr:\n{err}");
    assert!(err.contains("missing cmake and no apt-get here"), "{err}");
}

fn make_n(args: &[&str]) -> String {
    run_ok(
        Command::new("make")
            .arg("-n")
            .arg("--no-print-directory")
            .args(args)
            .current_dir(root()),
        "",
    )
}

#[test]
fn make_lists_and_wires_the_kubernetes_targets() {
    let help = run_ok(
        Command::new("make")
            .args(["--no-print-directory", "help"])
            .current_dir(root()),
        "",
    );
    for target in [
        "build",
        "release",
        "diff",
        "apply",
        "delete",
        "validate",
        "image",
        "minikube-up",
        "minikube-down",
        "run",
        "test",
        "bench",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{target} "))),
            "make help lists {target}:\n{help}"
        );
    }
    // ENV comes from .env (dev) and is overridable.
    assert!(make_n(&["apply"])
        .contains("scripts/kustomize-build.sh k8s/overlays/dev | kubectl apply -f -"));
    assert!(make_n(&["apply", "ENV=prod"]).contains("k8s/overlays/prod | kubectl apply -f -"));
    assert!(make_n(&["delete", "ENV=staging"]).contains("k8s/overlays/staging | kubectl delete"));
    assert!(make_n(&["diff"]).contains("kubectl diff -f -"));
    assert!(make_n(&["build", "ENV=prod"]).contains("scripts/kustomize-build.sh k8s/overlays/prod"));
    assert!(make_n(&["minikube-up", "ENV=staging"])
        .contains("scripts/start-minikube.sh --profile meshlab --env staging"));
    assert!(make_n(&["minikube-down"]).contains("scripts/stop-minikube.sh --profile meshlab"));
    let test = make_n(&["test"]);
    assert!(
        test.contains("validate") && test.contains("shellcheck"),
        "make test validates and shellchecks:\n{test}"
    );
}
