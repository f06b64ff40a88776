//! The README walks a user from `minikube start` to a breaker on the sidecar's admin port, and
//! documents every Kubernetes target of the Makefile.

use deploy::read;

#[test]
fn the_readme_has_a_kubernetes_section_from_minikube_start_to_a_breaker() {
    let readme = read("README.md");
    let start = readme
        .find("\n## Kubernetes\n")
        .expect("README has a ## Kubernetes section");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let steps = [
        "scripts/start-minikube.sh",
        "minikube start",
        "mesh.local",
        "minikube dashboard",
        "port-forward deploy/a 15000:15000",
        "/breakers",
        "terraform apply",
    ];
    let mut at = 0;
    for step in steps {
        let found = section[at..].find(step).unwrap_or_else(|| {
            panic!("the Kubernetes section mentions {step:?} after the previous steps")
        });
        at += found;
    }
    for target in [
        "make build",
        "make validate",
        "make diff",
        "make apply",
        "make delete",
        "make image",
        "make minikube-up",
        "make minikube-down",
    ] {
        assert!(
            section.contains(target),
            "the Kubernetes section documents {target}"
        );
    }
}
