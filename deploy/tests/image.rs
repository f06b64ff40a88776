//! The Dockerfile, checked offline (no Docker engine here): a multi-stage build of exactly the
//! workspace's binaries, a small runtime stage running as the non-root uid the manifests ask
//! for, and a build context that leaves build output and tools out.

use std::collections::BTreeSet;
use std::process::Command;

use deploy::{read, render, root, run_ok, yaml_docs};
use serde_json::Value;

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions() -> Vec<String> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                if !current.trim().is_empty() {
                    out.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
                }
                current.clear();
            }
        }
    }
    out
}

/// The `[[bin]]` targets of the workspace, from `cargo metadata`.
fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let json = run_ok(
        Command::new(cargo)
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(root()),
        "",
    );
    let meta: Value = serde_json::from_str(&json).expect("cargo metadata prints JSON");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").iter())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .map(|t| t["name"].as_str().expect("target name").to_owned())
        .collect()
}

/// The words of `text` that follow `prefix`, e.g. every `X` of `--bin X`.
fn words_after<'a>(text: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == prefix)
        .map(|w| w[1])
        .collect()
}

#[test]
fn the_build_stage_builds_every_workspace_binary_and_only_those() {
    let ins = instructions();
    let froms: Vec<_> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(
        froms[0].ends_with(" AS build"),
        "the first stage is `build`: {}",
        froms[0]
    );
    let build: Vec<_> = ins
        .iter()
        .skip_while(|i| !i.starts_with("FROM "))
        .skip(1)
        .take_while(|i| !i.starts_with("FROM "))
        .cloned()
        .collect();
    let build = build.join("\n");
    assert!(
        build.contains("cmake"),
        "Pingora's zlib-ng needs cmake in the build stage"
    );
    let cargo = build
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("the build stage runs cargo build");
    assert!(
        cargo.contains("--release") && cargo.contains("--locked"),
        "release build from Cargo.lock: {cargo}"
    );
    let bins: BTreeSet<String> = words_after(cargo, "--bin")
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        bins,
        workspace_binaries(),
        "cargo build --bin ... names the workspace's binaries"
    );
    let copied: BTreeSet<String> = cargo
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        copied,
        workspace_binaries(),
        "every binary is copied out of the build"
    );
}

#[test]
fn the_runtime_stage_is_small_and_runs_as_the_manifests_non_root_uid() {
    let ins = instructions();
    let runtime: Vec<_> = ins
        .iter()
        .rev()
        .take_while(|i| !i.starts_with("FROM "))
        .collect();
    let from = ins
        .iter()
        .rev()
        .find(|i| i.starts_with("FROM "))
        .expect("a FROM");
    assert!(
        from.contains("-slim") || from.contains("distroless"),
        "the runtime base is a slim or distroless image: {from}"
    );
    assert!(
        runtime.iter().any(|i| i.starts_with("COPY --from=build ")),
        "the runtime stage takes the binaries from the build stage"
    );
    assert!(
        !runtime.iter().any(|i| i.contains("cargo")),
        "no toolchain in the runtime stage"
    );
    let user = runtime
        .iter()
        .find_map(|i| i.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} should be numeric (runAsNonRoot checks it)"));
    assert_ne!(uid, 0, "USER is not root");
    // Every pod of every overlay runs as that uid.
    for env in ["dev", "staging", "prod"] {
        for d in yaml_docs(&render(&format!("k8s/overlays/{env}")))
            .iter()
            .filter(|o| o["kind"] == "Deployment")
        {
            assert_eq!(
                d["spec"]["template"]["spec"]["securityContext"]["runAsUser"], uid,
                "{env}: {} runs as the image's USER",
                d["metadata"]["name"]
            );
        }
    }
}

#[test]
fn the_build_context_leaves_out_build_output_and_tools() {
    let ignored: BTreeSet<_> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for path in ["target", ".venv", ".git", ".tools"] {
        assert!(ignored.contains(path), ".dockerignore leaves out {path}");
    }
}

#[test]
fn make_image_builds_the_dockerfile_with_the_tag_from_dotenv() {
    // `make -n` prints the recipe without running docker.
    let out = run_ok(
        Command::new("make")
            .args(["-n", "--no-print-directory", "image"])
            .current_dir(root()),
        "",
    );
    let image = read(".env")
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE=").map(str::to_owned))
        .expect(".env sets IMAGE");
    assert!(
        out.contains("docker build") && out.contains(&format!("-t {image} .")),
        "make image runs docker build -t {image}: {out}"
    );
    let out = run_ok(
        Command::new("make")
            .args(["-n", "--no-print-directory", "image", "IMAGE=meshlab:x"])
            .current_dir(root()),
        "",
    );
    assert!(
        out.contains("-t meshlab:x ."),
        "IMAGE can be overridden: {out}"
    );
}
