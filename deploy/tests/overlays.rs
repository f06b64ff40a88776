//! The real overlays, rendered by `scripts/kustomize-build.sh` (kustomize or `kubectl kustomize`)
//! and checked object by object: schemas of the pinned Kubernetes version, namespaces, the
//! environment's replicas, limits and image tag, the injected sidecar, ports and flags against
//! the binaries' own `--help`, and the routing table against the file the local lab reads.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::OnceLock;

use deploy::{read, render, root, run, venv_tool, yaml_docs, Flags};
use mesh_table::{Endpoints, Table};
use serde_json::Value;

const ENVS: [&str; 3] = ["dev", "staging", "prod"];
const SERVICES: [&str; 3] = ["a", "b", "c"];
/// The label that makes the sidecar component inject the sidecar.
const MESH_LABEL: &str = "mesh.meshlab.io/inject";

/// One rendered overlay.
struct Overlay {
    env: &'static str,
    yaml: String,
    objects: Vec<Value>,
    /// k8s/overlays/ENV/table.toml as the lab reads it.
    table_file: String,
    table: Table,
}

fn overlay(env: &'static str) -> &'static Overlay {
    static CACHE: OnceLock<BTreeMap<&'static str, Overlay>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        ENVS.iter()
            .map(|&env| {
                let yaml = render(&format!("k8s/overlays/{env}"));
                let objects = yaml_docs(&yaml);
                let table_file = read(&format!("k8s/overlays/{env}/table.toml"));
                let table = Table::from_toml_str(&table_file)
                    .unwrap_or_else(|e| panic!("k8s/overlays/{env}/table.toml: {e}"));
                (
                    env,
                    Overlay {
                        env,
                        yaml,
                        objects,
                        table_file,
                        table,
                    },
                )
            })
            .collect()
    });
    &all[env]
}

impl Overlay {
    fn namespace(&self) -> String {
        format!("mesh-{}", self.env)
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{}: no {kind} {name}", self.env))
    }

    fn meshed_deployments(&self) -> Vec<&Value> {
        self.of_kind("Deployment")
            .into_iter()
            .filter(|d| d["metadata"]["labels"][MESH_LABEL] == "true")
            .collect()
    }

    /// The generated ConfigMap whose name starts with `prefix-` (the rest is Kustomize's hash).
    fn generated(&self, prefix: &str) -> &Value {
        let found: Vec<_> = self
            .of_kind("ConfigMap")
            .into_iter()
            .filter(|c| {
                let name = c["metadata"]["name"].as_str().unwrap_or("");
                name.strip_prefix(prefix)
                    .is_some_and(|h| h.starts_with('-'))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: one ConfigMap {prefix}-<hash>",
            self.env
        );
        found[0]
    }
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"]
        .as_str()
        .expect("every object has a name")
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn pod_spec(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]
}

fn container<'a>(d: &'a Value, field: &str, name: &str) -> &'a Value {
    list(&pod_spec(d)[field])
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("Deployment {}: no {field} entry {name}", self::name(d)))
}

/// Every container of a pod, init containers included.
fn all_containers(d: &Value) -> impl Iterator<Item = &Value> {
    list(&pod_spec(d)["initContainers"])
        .iter()
        .chain(list(&pod_spec(d)["containers"]))
}

/// A container's plain `env` values (not `valueFrom`), by name.
fn env_values(c: &Value) -> BTreeMap<&str, Option<&str>> {
    list(&c["env"])
        .iter()
        .map(|e| (e["name"].as_str().expect("env name"), e["value"].as_str()))
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

fn flags() -> &'static BTreeMap<&'static str, Flags> {
    static FLAGS: OnceLock<BTreeMap<&'static str, Flags>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        ["sidecar", "mesh-service", "control-plane"]
            .into_iter()
            .map(|b| (b, Flags::of(b)))
            .collect()
    })
}

#[test]
fn every_overlay_validates_against_the_pinned_kubernetes_schemas() {
    let version = deploy::makefile_var("K8S_VERSION");
    for env in ENVS {
        let o = overlay(env);
        let out = run(
            Command::new(venv_tool("kubernetes-validate")).args([
                "--kubernetes-version",
                &version,
                "--strict",
                "--quiet",
                "-",
            ]),
            &o.yaml,
        );
        assert!(
            out.status.success(),
            "k8s/overlays/{env} does not validate against Kubernetes {version}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_object_is_in_the_environments_namespace() {
    for env in ENVS {
        let o = overlay(env);
        let ns = o.namespace();
        let namespaces: Vec<_> = o.of_kind("Namespace").into_iter().map(name).collect();
        assert_eq!(
            namespaces,
            [ns.as_str()],
            "{env}: the overlay creates its namespace only"
        );
        for obj in o.objects.iter().filter(|x| x["kind"] != "Namespace") {
            assert_eq!(
                obj["metadata"]["namespace"],
                ns.as_str(),
                "{env}: {} {} is outside {ns}",
                obj["kind"],
                name(obj)
            );
        }
        let kinds: BTreeSet<_> = o
            .objects
            .iter()
            .map(|x| x["kind"].as_str().unwrap())
            .collect();
        for kind in ["ConfigMap", "Deployment", "Service", "Ingress"] {
            assert!(kinds.contains(kind), "{env}: renders no {kind}");
        }
    }
}

#[test]
fn replicas_are_the_environments() {
    // The services run as many replicas as the lab runs from the same table; the control
    // plane runs two in prod only.
    let control_plane = [("dev", 1), ("staging", 1), ("prod", 2)];
    for (env, cp) in control_plane {
        let o = overlay(env);
        let lab = o
            .table
            .lab
            .as_ref()
            .expect("every table has a [lab] section");
        for svc in SERVICES {
            let want = lab.services[svc].replicas;
            assert_eq!(
                o.named("Deployment", svc)["spec"]["replicas"],
                want,
                "{env}: Deployment {svc} replicas = [lab.services.{svc}].replicas"
            );
        }
        assert_eq!(
            o.named("Deployment", "control-plane")["spec"]["replicas"],
            cp,
            "{env}: control-plane replicas"
        );
    }
}

#[test]
fn limits_are_the_environments() {
    // (env, app and sidecar limits, control-plane limits) as cpu, memory.
    let want = [
        ("dev", ("250m", "64Mi"), ("250m", "64Mi")),
        ("staging", ("500m", "128Mi"), ("250m", "64Mi")),
        ("prod", ("1", "256Mi"), ("500m", "128Mi")),
    ];
    for (env, svc_limits, cp_limits) in want {
        let o = overlay(env);
        let limits = |c: &Value| {
            let l = &c["resources"]["limits"];
            (
                l["cpu"].as_str().unwrap_or("").to_owned(),
                l["memory"].as_str().unwrap_or("").to_owned(),
            )
        };
        let owned = |(c, m): (&str, &str)| (c.to_owned(), m.to_owned());
        for d in o.meshed_deployments() {
            for c in all_containers(d) {
                assert_eq!(
                    limits(c),
                    owned(svc_limits),
                    "{env}: {}/{} limits",
                    name(d),
                    c["name"]
                );
            }
        }
        let cp = container(
            o.named("Deployment", "control-plane"),
            "containers",
            "control-plane",
        );
        assert_eq!(limits(cp), owned(cp_limits), "{env}: control-plane limits");
        for d in o.of_kind("Deployment") {
            for c in all_containers(d) {
                let r = &c["resources"]["requests"];
                assert!(
                    r["cpu"].is_string() && r["memory"].is_string(),
                    "{env}: {}/{} requests cpu and memory",
                    name(d),
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn image_tags_are_the_environments() {
    // dev runs the tag `make image` builds (.env's IMAGE); prod the workspace's version.
    let dotenv = read(".env");
    let image = dotenv
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE="))
        .expect(".env sets IMAGE");
    let want = [
        ("dev", image.to_owned()),
        ("staging", "meshlab:staging".to_owned()),
        ("prod", format!("meshlab:{}", env!("CARGO_PKG_VERSION"))),
    ];
    for (env, want) in want {
        let o = overlay(env);
        let mut seen = 0;
        for d in o.of_kind("Deployment") {
            for c in all_containers(d) {
                assert_eq!(
                    c["image"],
                    want.as_str(),
                    "{env}: {}/{} image",
                    name(d),
                    c["name"]
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 7, "{env}: 3 apps, 3 sidecars and the control plane");
    }
}

#[test]
fn every_meshed_deployment_carries_the_sidecar_once_as_a_native_sidecar() {
    for env in ENVS {
        let o = overlay(env);
        let meshed = o.meshed_deployments();
        let names: BTreeSet<_> = meshed.iter().map(|d| name(d)).collect();
        assert_eq!(
            names,
            SERVICES.into_iter().collect(),
            "{env}: a, b and c are meshed"
        );
        for d in o.of_kind("Deployment") {
            let sidecars: Vec<_> = all_containers(d)
                .filter(|c| c["command"][0] == "sidecar")
                .collect();
            if d["metadata"]["labels"][MESH_LABEL] != "true" {
                assert!(
                    sidecars.is_empty(),
                    "{env}: unlabelled {} has no sidecar",
                    name(d)
                );
                continue;
            }
            assert_eq!(
                sidecars.len(),
                1,
                "{env}: {} has exactly one sidecar",
                name(d)
            );
            let init = container(d, "initContainers", "sidecar");
            assert_eq!(
                init["restartPolicy"],
                "Always",
                "{env}: {}'s sidecar is a native sidecar",
                name(d)
            );
            assert_eq!(
                list(&pod_spec(d)["containers"]).len(),
                1,
                "{env}: {} runs one app",
                name(d)
            );
        }
    }
}

#[test]
fn sidecar_ports_and_flags_match_the_sidecar_binary() {
    let sidecar = &flags()["sidecar"];
    let cp = &flags()["control-plane"];
    for env in ENVS {
        let o = overlay(env);
        for d in o.meshed_deployments() {
            let what = format!("{env}: {}'s sidecar", name(d));
            let c = container(d, "initContainers", "sidecar");
            let env_vars = env_values(c);
            for var in env_vars.keys() {
                assert!(
                    sidecar.env.contains_key(*var),
                    "{what} sets {var}, which the sidecar does not read"
                );
            }
            // Listeners the app and the other sidecars rely on stay at the binary's defaults;
            // the admin port leaves loopback (probes, Prometheus, port-forward) on its port.
            for var in ["MESH_OUTBOUND", "MESH_INBOUND", "MESH_APP"] {
                assert_eq!(
                    env_vars[var],
                    Some(sidecar.default_of(var)),
                    "{what}: {var}"
                );
            }
            let admin = sidecar.default_port("MESH_ADMIN");
            let inbound = sidecar.default_port("MESH_INBOUND");
            assert_eq!(
                env_vars["MESH_ADMIN"],
                Some(format!("0.0.0.0:{admin}").as_str()),
                "{what}: MESH_ADMIN"
            );
            let ports: BTreeSet<_> = list(&c["ports"])
                .iter()
                .map(|p| p["containerPort"].as_u64().unwrap())
                .collect();
            assert_eq!(
                ports,
                [u64::from(admin), u64::from(inbound)].into(),
                "{what}: container ports"
            );
            for (probe, path) in [
                ("startupProbe", "/ready"),
                ("readinessProbe", "/ready"),
                ("livenessProbe", "/live"),
            ] {
                assert_eq!(c[probe]["httpGet"]["path"], path, "{what}: {probe} path");
                assert_eq!(
                    c[probe]["httpGet"]["port"], admin,
                    "{what}: {probe} on the admin port"
                );
            }
            let url = env_vars["MESH_CONTROL_PLANE"].expect("MESH_CONTROL_PLANE is set");
            assert_eq!(
                url,
                format!("http://control-plane:{}", cp.default_port("MESH_CP_LISTEN")),
                "{what}: the control plane's Service and port"
            );
            assert_eq!(
                pod_spec(d)["containers"][0]["readinessProbe"]["httpGet"]["port"],
                inbound,
                "{what}: the app is probed through the inbound listener"
            );
            assert!(
                pod_spec(d)["terminationGracePeriodSeconds"]
                    .as_u64()
                    .unwrap()
                    > sidecar
                        .default_of("MESH_SHUTDOWN_GRACE")
                        .parse::<u64>()
                        .unwrap(),
                "{what}: the pod's grace period covers the sidecar's"
            );
            // MESH_ENV, MESH_POLL_INTERVAL and RUST_LOG come from the settings ConfigMap.
            let settings = o.generated("mesh-settings");
            let from = &c["envFrom"][0]["configMapRef"]["name"];
            assert_eq!(
                from, &settings["metadata"]["name"],
                "{what}: env from the settings"
            );
            for key in settings["data"].as_object().unwrap().keys() {
                assert!(
                    key == "RUST_LOG" || sidecar.env.contains_key(key),
                    "{env}: setting {key} is no sidecar flag"
                );
            }
            assert_eq!(
                settings["data"]["MESH_ENV"], env,
                "{env}: the sidecars poll their env's table"
            );
        }
        let svc_port = |s: &str| o.named("Service", s)["spec"]["ports"][0]["targetPort"].clone();
        for s in SERVICES {
            assert_eq!(
                svc_port(s),
                sidecar.default_port("MESH_INBOUND"),
                "{env}: Service {s} targets the inbound port"
            );
            assert_eq!(
                o.named("Service", s)["spec"]["clusterIP"],
                "None",
                "{env}: Service {s} is headless"
            );
        }
    }
}

#[test]
fn app_and_control_plane_ports_and_flags_match_their_binaries() {
    let service = &flags()["mesh-service"];
    let cp = &flags()["control-plane"];
    let sidecar = &flags()["sidecar"];
    // The sidecar's idea of the app and mesh-service's of the sidecar agree with each other.
    assert_eq!(
        port_of(sidecar.default_of("MESH_APP")),
        service.default_port("MESH_LISTEN"),
        "app port"
    );
    assert_eq!(
        service.default_of("MESH_SIDECAR"),
        sidecar.default_of("MESH_OUTBOUND"),
        "outbound"
    );
    for env in ENVS {
        let o = overlay(env);
        let lab = o.table.lab.as_ref().unwrap();
        for d in o.meshed_deployments() {
            let app = container(d, "containers", "app");
            assert_eq!(
                app["command"][0],
                "mesh-service",
                "{env}: {}'s app",
                name(d)
            );
            let vars = env_values(app);
            for var in vars.keys() {
                assert!(
                    *var == "RUST_LOG" || service.env.contains_key(*var),
                    "{env}: {} sets {var}, unknown to mesh-service",
                    name(d)
                );
            }
            assert!(
                !vars.contains_key("MESH_LISTEN"),
                "{env}: the app keeps its loopback default"
            );
            let calls = lab.services[name(d)].calls.join(",");
            assert_eq!(
                vars["MESH_CALLS"],
                Some(calls.as_str()),
                "{env}: {} calls as in [lab]",
                name(d)
            );
        }
        let d = o.named("Deployment", "control-plane");
        let c = container(d, "containers", "control-plane");
        let vars = env_values(c);
        for var in vars.keys() {
            assert!(
                *var == "RUST_LOG" || cp.env.contains_key(*var),
                "{env}: control plane sets {var}"
            );
        }
        let port = cp.default_port("MESH_CP_LISTEN");
        assert_eq!(
            vars["MESH_CP_LISTEN"],
            Some(format!("0.0.0.0:{port}").as_str()),
            "{env}: listen"
        );
        assert_eq!(
            c["ports"][0]["containerPort"], port,
            "{env}: control-plane containerPort"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["port"], port,
            "{env}: control-plane probe port"
        );
        assert_eq!(
            o.named("Service", "control-plane")["spec"]["ports"][0]["targetPort"],
            port,
            "{env}: Service"
        );
        let ingress = o.named("Ingress", "mesh");
        let rule = &ingress["spec"]["rules"][0];
        assert_eq!(rule["host"], "mesh.local", "{env}: ingress host");
        let backend = &rule["http"]["paths"][0]["backend"]["service"];
        assert_eq!(
            (backend["name"].as_str(), backend["port"]["number"].as_u64()),
            (
                Some(lab.entry.as_str()),
                Some(u64::from(sidecar.default_port("MESH_INBOUND")))
            ),
            "{env}: mesh.local goes to the entry service's inbound listener"
        );
    }
}

#[test]
fn the_routing_table_configmap_is_the_labs_file_byte_for_byte_and_validates() {
    for env in ENVS {
        let o = overlay(env);
        let cm = o.generated("routing-table");
        let key = format!("{env}.toml");
        let data = cm["data"][&key]
            .as_str()
            .unwrap_or_else(|| panic!("{env}: no key {key}"));
        assert!(
            data.as_bytes() == o.table_file.as_bytes(),
            "{env}: the ConfigMap differs from k8s/overlays/{env}/table.toml"
        );
        let table = Table::from_toml_str(data)
            .unwrap_or_else(|e| panic!("{env}: the ConfigMap's table: {e}"));
        for (svc, s) in &table.services {
            match &s.endpoints {
                Endpoints::Dns { host, port } => {
                    assert_eq!(
                        host,
                        &format!("{svc}.mesh-{env}.svc.cluster.local"),
                        "{env}: {svc}'s headless Service"
                    );
                    assert_eq!(
                        *port,
                        flags()["sidecar"].default_port("MESH_INBOUND"),
                        "{env}: {svc} reached on the inbound port"
                    );
                }
                other => panic!("{env}: {svc} endpoints should be dns:, got {other:?}"),
            }
        }
        // The control plane reads it as DIR/<env>.toml from the mounted ConfigMap.
        let d = o.named("Deployment", "control-plane");
        let c = container(d, "containers", "control-plane");
        let args: Vec<_> = list(&c["args"]).iter().filter_map(Value::as_str).collect();
        let mount = &c["volumeMounts"][0];
        assert_eq!(
            args,
            ["--tables", mount["mountPath"].as_str().unwrap()],
            "{env}: --tables is the mount"
        );
        let volume = list(&pod_spec(d)["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("mounted volume");
        assert_eq!(
            volume["configMap"]["name"], cm["metadata"]["name"],
            "{env}: the volume is the table"
        );
    }
}

#[test]
fn every_container_is_locked_down_and_probed() {
    for env in ENVS {
        let o = overlay(env);
        for d in o.of_kind("Deployment") {
            let pod = pod_spec(d);
            assert_eq!(
                pod["securityContext"]["runAsNonRoot"],
                true,
                "{env}: {} runs as non-root",
                name(d)
            );
            for c in all_containers(d) {
                let what = format!("{env}: {}/{}", name(d), c["name"]);
                let sc = &c["securityContext"];
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}: read-only root");
                assert_eq!(
                    sc["allowPrivilegeEscalation"], false,
                    "{what}: no privilege escalation"
                );
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{what}: capabilities"
                );
                assert!(
                    c["readinessProbe"].is_object() && c["livenessProbe"].is_object(),
                    "{what}: probes"
                );
            }
            let annotations = &d["spec"]["template"]["metadata"]["annotations"];
            assert_eq!(
                annotations["prometheus.io/scrape"],
                "true",
                "{env}: {} is scraped",
                name(d)
            );
        }
    }
}

#[test]
fn prod_adds_a_disruption_budget_and_an_autoscaler_per_service() {
    for env in ENVS {
        let o = overlay(env);
        let pdbs: BTreeSet<_> = o
            .of_kind("PodDisruptionBudget")
            .into_iter()
            .map(name)
            .collect();
        let hpas: BTreeSet<_> = o
            .of_kind("HorizontalPodAutoscaler")
            .into_iter()
            .map(name)
            .collect();
        if env != "prod" {
            assert!(
                pdbs.is_empty() && hpas.is_empty(),
                "{env}: PDBs and HPAs are prod's"
            );
            continue;
        }
        for svc in SERVICES {
            assert!(pdbs.contains(svc), "prod: PodDisruptionBudget {svc}");
            let hpa = o.named("HorizontalPodAutoscaler", svc);
            assert_eq!(
                hpa["spec"]["scaleTargetRef"]["name"], svc,
                "prod: HPA {svc} scales {svc}"
            );
            assert_eq!(
                hpa["spec"]["minReplicas"],
                o.named("Deployment", svc)["spec"]["replicas"],
                "prod: HPA {svc} starts from the overlay's replicas"
            );
        }
    }
}

#[test]
fn the_renderer_is_kustomize_v5() {
    // The Makefile, the minikube script and these tests render through one script.
    let which = deploy::run_ok(
        Command::new(root().join("scripts/kustomize-build.sh")).arg("--which"),
        "",
    );
    let tool = which.split_whitespace().next().expect("a renderer");
    let is_kubectl = tool.ends_with("kubectl");
    let out = deploy::run_ok(
        Command::new(tool).args(if is_kubectl {
            &["version", "--client"][..]
        } else {
            &["version"][..]
        }),
        "",
    );
    assert!(
        out.contains("v5."),
        "{which}: Kustomize v5 wanted, got {out}"
    );
}
