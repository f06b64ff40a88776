//! k8s/terraform/ without a Terraform binary: every `.tf` file parses (python-hcl2), every
//! `var.X`, `local.X`, `data.T.N` and resource reference is declared, the variables and
//! outputs the README promises exist, and the cloud-init template gets exactly the values it
//! interpolates. (shellcheck of cloud-init.sh runs with every script's, in tests/scripts.rs.)

use std::collections::BTreeSet;

use deploy::{hcl_json, read, root};
use serde_json::Value;

const DIR: &str = "k8s/terraform";

/// Every parsed `.tf` file of the module.
fn module() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(DIR))
        .expect("k8s/terraform exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "variables, main and outputs at least: {files:?}"
    );
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                hcl_json(&p),
            )
        })
        .collect()
}

fn unquote(s: &str) -> String {
    s.trim_matches('"').to_owned()
}

/// Names declared by the blocks of `kind` (`variable "x" {}` -> x); for `resource` and `data`,
/// `type.name`.
fn declared(module: &[(String, Value)], kind: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, file) in module {
        for block in file[kind].as_array().into_iter().flatten() {
            for (first, inner) in block.as_object().expect("a block is an object") {
                if first.starts_with("__") {
                    continue;
                }
                match (kind, inner.as_object()) {
                    ("resource" | "data", Some(names)) => {
                        for second in names.keys().filter(|k| !k.starts_with("__")) {
                            out.insert(format!("{}.{}", unquote(first), unquote(second)));
                        }
                    }
                    _ => {
                        out.insert(unquote(first));
                    }
                }
            }
        }
    }
    out
}

/// Every string in the parsed module (comments left out).
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !k.starts_with("__"))
            .for_each(|(_, v)| strings(v, out)),
        _ => {}
    }
}

/// Identifier paths after `prefix` in `text`, each `segments` long: `var.region` -> `region`.
fn refs(text: &str, prefix: &str, segments: usize) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = Vec::new();
    for (at, _) in text.match_indices(prefix) {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| ident(c) || c == '.') {
            continue;
        }
        let parts: Vec<&str> = text[at + prefix.len()..]
            .splitn(segments + 1, '.')
            .collect();
        let path: Vec<String> = parts
            .iter()
            .take(segments)
            .map(|p| p.chars().take_while(|&c| ident(c)).collect())
            .collect();
        if path.len() == segments && path.iter().all(|p| !p.is_empty()) {
            out.push(path.join("."));
        }
    }
    out
}

#[test]
fn every_reference_is_declared() {
    let m = module();
    let mut all = Vec::new();
    for (_, file) in &m {
        strings(file, &mut all);
    }
    let text = all.join("\n");
    let checks = [
        ("var.", 1, declared(&m, "variable")),
        ("local.", 1, declared(&m, "locals")),
        ("data.", 2, declared(&m, "data")),
        ("aws_", 2, declared(&m, "resource")),
    ];
    for (prefix, segments, known) in checks {
        let used: BTreeSet<String> = refs(&text, prefix, segments)
            .into_iter()
            .map(|r| {
                if prefix == "aws_" {
                    format!("aws_{r}")
                } else {
                    r
                }
            })
            .collect();
        assert!(!used.is_empty(), "the module uses some {prefix} reference");
        let undeclared: Vec<_> = used.difference(&known).collect();
        assert!(
            undeclared.is_empty(),
            "{prefix}: used but not declared: {undeclared:?} (declared: {known:?})"
        );
    }
    let vars = declared(&m, "variable");
    let unused: Vec<_> = vars
        .iter()
        .filter(|v| !text.contains(&format!("var.{v}")))
        .collect();
    assert!(unused.is_empty(), "declared but never used: {unused:?}");
}

#[test]
fn the_module_has_the_promised_variables_and_outputs() {
    let m = module();
    let vars = declared(&m, "variable");
    for v in [
        "region",
        "instance_type",
        "ssh_key_name",
        "ssh_public_key_path",
    ] {
        assert!(vars.contains(v), "variable {v} is declared: {vars:?}");
    }
    let outputs = declared(&m, "output");
    for o in ["public_ip", "public_dns", "ssh_command"] {
        assert!(outputs.contains(o), "output {o} is declared: {outputs:?}");
    }
    let resources = declared(&m, "resource");
    assert!(
        resources.contains("aws_instance.meshlab"),
        "one EC2 instance: {resources:?}"
    );
    assert_eq!(
        resources
            .iter()
            .filter(|r| r.starts_with("aws_instance."))
            .count(),
        1,
        "one VM"
    );
}

#[test]
fn the_cloud_init_template_gets_exactly_what_it_interpolates() {
    let m = module();
    let mut all = Vec::new();
    for (_, file) in &m {
        strings(file, &mut all);
    }
    let call = all
        .iter()
        .find_map(|s| s.find("templatefile(").map(|at| &s[at..]))
        .expect("main.tf renders the user data with templatefile");
    assert!(
        call.contains("/cloud-init.sh\""),
        "the template is cloud-init.sh: {call}"
    );
    let args = &call[call.find('{').expect("a map of values")..];
    let given: BTreeSet<String> = args
        .split([',', '{'])
        .filter_map(|part| part.split_once(" = ").map(|(k, _)| k.trim().to_owned()))
        .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    let template = read(&format!("{DIR}/cloud-init.sh"));
    let mut used = BTreeSet::new();
    let mut rest = template.as_str();
    while let Some(at) = rest.find("${") {
        let end = rest[at..].find('}').expect("${...} closes");
        used.insert(rest[at + 2..at + end].to_owned());
        rest = &rest[at + end..];
    }
    assert_eq!(
        used, given,
        "cloud-init.sh interpolates exactly the values templatefile passes"
    );
    assert!(
        !template.contains("%{"),
        "no template directives in the script"
    );
    for step in ["get.k3s.io", "k3s kubectl apply -f"] {
        assert!(
            template.contains(step),
            "cloud-init installs K3s and applies the overlay: {step}"
        );
    }
}
