//! Bringing the mesh up on loopback, in an order that needs no fixed port:
//!
//! 1. write a **provisional table** (original version, every endpoint a placeholder) into the
//!    run dir and start the **control plane** on it: sidecars need its URL to start;
//! 2. for each replica, **reserve** a port for its sidecar's outbound listener and start the
//!    **app** (`mesh-service --listen 127.0.0.1:0 --sidecar 127.0.0.1:<reserved>`);
//! 3. start each replica's **sidecar** with `--outbound 127.0.0.1:<reserved>` and
//!    `--app <address from the app's LISTENING line>`, plus the **client sidecar** through
//!    which the load enters;
//! 4. write the **final table** (version + 1, each service's endpoints = its sidecars' inbound
//!    addresses) over the provisional one; the control plane picks it up by polling mtimes;
//! 5. wait until every sidecar's `/config` reports the final version (the table propagated),
//!    every sidecar's `/ready` and every app's `/healthz` answer 200.
//!
//! Every wait has one deadline for the whole start-up, and a child that exits meanwhile fails
//! the start at once, naming its log.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::children::{describe_status, ChildEntry, ChildError, Listening, Supervisor};
use crate::labtable::{self, EnvTable, RewriteError};
use crate::plan::{self, ReplicaPlan, CLIENT_APP, CLIENT_SERVICE};

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);

/// Times a replica is started again when its reserved port was taken (see [`reserve`]).
const ADDR_IN_USE_ATTEMPTS: u32 = 3;

/// Why the mesh did not come up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{name} not found in {}: build it (`cargo build --workspace --bins`) or pass --bin-dir",
        dir.display()
    )]
    MissingBinary { name: &'static str, dir: PathBuf },
    #[error("cannot prepare the run dir {}: {source}", path.display())]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the lab's table: {0}")]
    Table(#[from] RewriteError),
    #[error("the table's version {0} cannot be bumped")]
    Version(u64),
    #[error("cannot reserve a loopback port: {0}")]
    Reserve(std::io::Error),
    #[error(transparent)]
    Child(#[from] ChildError),
    #[error(
        "{name} listens for outbound traffic on {got}, not on the reserved {want} its app was \
         given; its log: {}", log.display()
    )]
    OutboundMoved {
        name: String,
        want: SocketAddr,
        got: SocketAddr,
        log: PathBuf,
    },
    #[error("{name} exited during start-up ({status}); its log {}:\n{tail}", log.display())]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the mesh was not ready within {timeout:?}:\n{}", .waiting.join("\n"))]
    NotReady {
        timeout: Duration,
        waiting: Vec<String>,
    },
}

/// The three binaries the lab runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub control_plane: PathBuf,
    pub sidecar: PathBuf,
    pub mesh_service: PathBuf,
}

impl Binaries {
    /// Finds them in `dir`.
    pub fn locate(dir: &Path) -> Result<Binaries, StartError> {
        let find = |name: &'static str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(StartError::MissingBinary {
                    name,
                    dir: dir.to_owned(),
                })
            }
        };
        Ok(Binaries {
            control_plane: find("control-plane")?,
            sidecar: find("sidecar")?,
            mesh_service: find("mesh-service")?,
        })
    }
}

/// The run's folder: `logs/` (one file per child) and `tables/` (what the control plane serves).
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// `<temp>/meshlab-<env>-<pid>`, created with its sub-folders.
    pub fn create(env: &str) -> Result<RunDir, StartError> {
        let root = std::env::temp_dir().join(format!("meshlab-{env}-{}", std::process::id()));
        let d = RunDir { root };
        for p in [d.logs(), d.tables()] {
            std::fs::create_dir_all(&p).map_err(|source| StartError::RunDir { path: p, source })?;
        }
        Ok(d)
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn tables(&self) -> PathBuf {
        self.root.join("tables")
    }
    /// The log file of child `name` (`sidecar b-1` -> `logs/sidecar-b-1.log`).
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{}.log", name.replace(' ', "-")))
    }
    pub fn table(&self, env: &str) -> PathBuf {
        self.tables().join(format!("{env}.toml"))
    }

    /// Replaces `env`'s table atomically (a reader never sees half a file).
    pub fn write_table(&self, env: &str, text: &str) -> Result<PathBuf, StartError> {
        let tmp = self.root.join(format!(".{env}.toml.tmp"));
        let dst = self.table(env);
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &dst))
            .map_err(|source| StartError::RunDir {
                path: dst.clone(),
                source,
            })?;
        Ok(dst)
    }
}

/// What start-up needs.
pub struct MeshConfig<'a> {
    pub env: &'a str,
    pub table: &'a EnvTable,
    pub replicas: &'a [ReplicaPlan],
    pub bins: &'a Binaries,
    pub run_dir: &'a RunDir,
    pub poll_interval: Duration,
    pub timeout: Duration,
    /// The lab's trace receiver (`OTEL_EXPORTER_OTLP_ENDPOINT`) and `--trace-sample`.
    pub otlp_endpoint: &'a str,
    pub trace_sample: f64,
}

impl MeshConfig<'_> {
    /// The `OTEL_*` variables of one child.
    fn otel(&self, service_name: &str, instance: &str) -> Vec<(String, String)> {
        crate::traces::child_env(
            self.otlp_endpoint,
            service_name,
            instance,
            self.trace_sample,
        )
    }
}

/// A sidecar's three listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SidecarAddrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl SidecarAddrs {
    fn from_listening(l: &Listening) -> Result<SidecarAddrs, ChildError> {
        Ok(SidecarAddrs {
            outbound: l.addr("outbound")?,
            inbound: l.addr("inbound")?,
            admin: l.addr("admin")?,
        })
    }
}

/// One replica, running: its app and its sidecar.
pub struct RunningReplica {
    pub plan: ReplicaPlan,
    pub app: SocketAddr,
    pub sidecar: SidecarAddrs,
    pub app_proc: Arc<ChildEntry>,
    pub sidecar_proc: Arc<ChildEntry>,
}

/// The mesh, up and ready.
pub struct Mesh {
    pub control_plane: SocketAddr,
    pub replicas: Vec<RunningReplica>,
    /// The client sidecar: the load goes to its outbound listener.
    pub client: SidecarAddrs,
    pub client_proc: Arc<ChildEntry>,
    pub control_plane_proc: Arc<ChildEntry>,
    pub table_path: PathBuf,
    /// The version of the table the control plane serves.
    pub version: u64,
}

impl Mesh {
    pub fn control_plane_url(&self) -> String {
        format!("http://{}", self.control_plane)
    }

    /// Each service's endpoints: the inbound listeners of its replicas' sidecars.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<String>> {
        endpoints_of(&self.replicas)
    }

    /// The human table of what runs where.
    pub fn describe(&self, run_dir: &RunDir) -> String {
        let mut rows = vec![[
            "service".to_owned(),
            "replica".into(),
            "app".into(),
            "outbound".into(),
            "inbound".into(),
            "admin".into(),
        ]];
        for r in &self.replicas {
            rows.push([
                r.plan.service.clone(),
                r.plan.instance.clone(),
                r.app.to_string(),
                r.sidecar.outbound.to_string(),
                r.sidecar.inbound.to_string(),
                format!("http://{}/", r.sidecar.admin),
            ]);
        }
        rows.push([
            CLIENT_SERVICE.into(),
            "-".into(),
            "-".into(),
            self.client.outbound.to_string(),
            self.client.inbound.to_string(),
            format!("http://{}/", self.client.admin),
        ]);
        let mut out = format_columns(&rows);
        out.push_str(&format!(
            "control plane: {} (table {}, version {})\nrun dir: {} (logs in logs/)\n",
            self.control_plane_url(),
            self.table_path.display(),
            self.version,
            run_dir.root.display()
        ));
        out
    }
}

fn endpoints_of(replicas: &[RunningReplica]) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in replicas {
        m.entry(r.plan.service.clone())
            .or_default()
            .push(r.sidecar.inbound.to_string());
    }
    m
}

/// Left-aligned columns, two spaces apart.
pub fn format_columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Reserves a loopback port for a sidecar's outbound listener.
///
/// The app must be told its sidecar's address (`--sidecar`) and the sidecar its app's address
/// (`--app`); one of the two has to be chosen before its owner binds it. We choose the
/// sidecar's outbound port: bind port 0 here, keep the listener while the app starts (nobody
/// else can take the port then, and the app does not connect before it gets a request), and
/// drop it just before spawning the sidecar, which binds it again (a listener that never
/// accepted a connection leaves no TIME_WAIT behind, so the port is free at once). The window in
/// which another process could take the port is the sidecar's exec and start-up (milliseconds),
/// and only a process binding port 0 or connecting out from exactly that ephemeral port in that
/// window can. If it does happen, the sidecar exits with "address in use" and the replica is
/// started again on a new port ([`ADDR_IN_USE_ATTEMPTS`]). Passing a bound socket to the child
/// (fd inheritance) would close the window entirely, but needs every binary to accept one.
pub fn reserve() -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(StartError::Reserve)?;
    let addr = l.local_addr().map_err(StartError::Reserve)?;
    Ok((l, addr))
}

/// Starts the whole mesh (see the module doc). Children belong to `sup`, which stops them.
pub async fn start(cfg: &MeshConfig<'_>, sup: &Supervisor) -> Result<Mesh, StartError> {
    let deadline = Instant::now() + cfg.timeout;
    let original = cfg.table.table.version;
    let version = original
        .checked_add(1)
        .ok_or(StartError::Version(original))?;

    // 1. Control plane on the provisional table.
    let table_path = cfg
        .run_dir
        .write_table(cfg.env, &labtable::provisional(&cfg.table.text, original)?)?;
    let cp = sup
        .spawn(
            "control-plane",
            &cfg.bins.control_plane,
            &plan::control_plane_args(&cfg.run_dir.tables()),
            &cfg.run_dir.log("control-plane"),
        )?
        .listening(deadline)
        .await?;
    let control_plane = cp.addr("control_plane")?;
    let cp_url = format!("http://{control_plane}");
    tracing::info!(%cp_url, "control plane up");

    // 2. Apps, each with a reserved port for its sidecar; all start in parallel.
    let mut apps = Vec::new();
    for r in cfg.replicas {
        let (reservation, outbound) = reserve()?;
        let pending = spawn_app(cfg, sup, r, outbound)?;
        apps.push((r, reservation, outbound, pending));
    }
    let mut started = Vec::new();
    for (r, reservation, outbound, pending) in apps {
        let app = pending.listening(deadline).await?;
        let addr = app.addr("app")?;
        started.push((r, reservation, outbound, app, addr));
    }

    // 3. Sidecars, each on its app's reserved port, and the client sidecar.
    let mut sidecars = Vec::new();
    for (r, reservation, outbound, app, addr) in started {
        drop(reservation);
        let pending = spawn_sidecar(cfg, sup, r, &cp_url, outbound, addr)?;
        sidecars.push((r, outbound, app, addr, pending));
    }
    let client = sup
        .spawn_with_env(
            &format!("sidecar {CLIENT_SERVICE}"),
            &cfg.bins.sidecar,
            &plan::sidecar_args(
                CLIENT_SERVICE,
                &cp_url,
                cfg.env,
                "127.0.0.1:0",
                CLIENT_APP,
                cfg.poll_interval,
            ),
            &cfg.otel(&format!("{CLIENT_SERVICE}-sidecar"), CLIENT_SERVICE),
            &cfg.run_dir.log(&format!("sidecar {CLIENT_SERVICE}")),
        )?
        .listening(deadline)
        .await?;
    let client_addrs = SidecarAddrs::from_listening(&client)?;

    let mut replicas = Vec::new();
    for (r, outbound, app, addr, pending) in sidecars {
        let sidecar_entry = pending.entry.clone();
        let running = match pending.listening(deadline).await {
            Ok(l) => finish_replica(r, outbound, app, addr, l)?,
            Err(e) if e.is_addr_in_use() => {
                tracing::warn!(
                    "sidecar {}: its reserved port {outbound} was taken; starting the replica again",
                    r.instance
                );
                sup.retire(&app.entry);
                sup.retire(&sidecar_entry);
                start_replica(cfg, sup, r, &cp_url, deadline).await?
            }
            Err(e) => return Err(e.into()),
        };
        replicas.push(running);
    }

    // 4. The final table: real endpoints, version + 1 (any higher version would do; the
    //    sidecars only need a version different from the provisional one to prove the swap).
    let final_text = labtable::rewrite(&cfg.table.text, version, &endpoints_of(&replicas))?;
    cfg.run_dir.write_table(cfg.env, &final_text)?;
    tracing::info!(version, "lab table written with the sidecars' endpoints");

    let mesh = Mesh {
        control_plane,
        replicas,
        client: client_addrs,
        client_proc: client.entry.clone(),
        control_plane_proc: cp.entry.clone(),
        table_path,
        version,
    };

    // 5. Readiness and propagation.
    wait_ready(&mesh, sup, deadline, cfg.timeout).await?;
    Ok(mesh)
}

fn spawn_app(
    cfg: &MeshConfig<'_>,
    sup: &Supervisor,
    r: &ReplicaPlan,
    outbound: SocketAddr,
) -> Result<crate::children::Pending, StartError> {
    let name = format!("mesh-service {}", r.instance);
    Ok(sup.spawn_with_env(
        &name,
        &cfg.bins.mesh_service,
        &plan::service_args(r, &outbound.to_string()),
        &cfg.otel(&r.service, &r.instance),
        &cfg.run_dir.log(&name),
    )?)
}

fn spawn_sidecar(
    cfg: &MeshConfig<'_>,
    sup: &Supervisor,
    r: &ReplicaPlan,
    cp_url: &str,
    outbound: SocketAddr,
    app: SocketAddr,
) -> Result<crate::children::Pending, StartError> {
    let name = format!("sidecar {}", r.instance);
    Ok(sup.spawn_with_env(
        &name,
        &cfg.bins.sidecar,
        &plan::sidecar_args(
            &r.service,
            cp_url,
            cfg.env,
            &outbound.to_string(),
            &app.to_string(),
            cfg.poll_interval,
        ),
        &cfg.otel(&format!("{}-sidecar", r.service), &r.instance),
        &cfg.run_dir.log(&name),
    )?)
}

fn finish_replica(
    r: &ReplicaPlan,
    want: SocketAddr,
    app: Listening,
    addr: SocketAddr,
    sidecar: Listening,
) -> Result<RunningReplica, StartError> {
    let addrs = SidecarAddrs::from_listening(&sidecar)?;
    if addrs.outbound != want {
        return Err(StartError::OutboundMoved {
            name: sidecar.entry.name.clone(),
            want,
            got: addrs.outbound,
            log: sidecar.entry.log.clone(),
        });
    }
    Ok(RunningReplica {
        plan: r.clone(),
        app: addr,
        sidecar: addrs,
        app_proc: app.entry,
        sidecar_proc: sidecar.entry,
    })
}

/// Starts one replica (app, then sidecar) on a fresh reserved port, again if that port is
/// taken before the sidecar binds it.
async fn start_replica(
    cfg: &MeshConfig<'_>,
    sup: &Supervisor,
    r: &ReplicaPlan,
    cp_url: &str,
    deadline: Instant,
) -> Result<RunningReplica, StartError> {
    let mut attempt = 1;
    loop {
        attempt += 1;
        let (reservation, outbound) = reserve()?;
        let app = spawn_app(cfg, sup, r, outbound)?
            .listening(deadline)
            .await?;
        let addr = app.addr("app")?;
        drop(reservation);
        let pending = spawn_sidecar(cfg, sup, r, cp_url, outbound, addr)?;
        let sidecar_entry = pending.entry.clone();
        match pending.listening(deadline).await {
            Ok(l) => return finish_replica(r, outbound, app, addr, l),
            Err(e) if e.is_addr_in_use() && attempt < ADDR_IN_USE_ATTEMPTS => {
                tracing::warn!(
                    "sidecar {}: port {outbound} taken again (attempt {attempt})",
                    r.instance
                );
                sup.retire(&app.entry);
                sup.retire(&sidecar_entry);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One readiness condition.
struct Probe {
    /// e.g. `sidecar b-1`.
    name: String,
    log: PathBuf,
    kind: ProbeKind,
}

enum ProbeKind {
    /// `GET url` answers 200.
    Ok200 { url: String },
    /// A sidecar: `/ready` answers 200 and `/config` reports table `version`.
    Sidecar { admin: SocketAddr, version: u64 },
}

/// The table version in a sidecar's `/config` answer: top-level `version`, or `table.version`.
pub fn config_version(v: &serde_json::Value) -> Option<u64> {
    v.get("version")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| {
            v.pointer("/table/version")
                .and_then(serde_json::Value::as_u64)
        })
}

/// A GET's status and body, errors naming the URL and the whole cause chain.
pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
    let status = resp.status().as_u16();
    let body = resp
        .text()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {}", error_chain(&e)))?;
    Ok((status, body))
}

/// An error with its sources (reqwest's own message is often just "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl Probe {
    /// `Ok` when ready, else what was seen.
    async fn check(&self, client: &reqwest::Client) -> Result<(), String> {
        match &self.kind {
            ProbeKind::Ok200 { url } => match get(client, url).await? {
                (200, _) => Ok(()),
                (s, _) => Err(format!("GET {url} answered {s}")),
            },
            ProbeKind::Sidecar { admin, version } => {
                let url = format!("http://{admin}/ready");
                match get(client, &url).await? {
                    (200, _) => {}
                    (s, body) => {
                        return Err(format!("GET {url} answered {s}: {}", body.trim()));
                    }
                }
                let url = format!("http://{admin}/config");
                let (status, body) = get(client, &url).await?;
                if status != 200 {
                    return Err(format!("GET {url} answered {status}"));
                }
                let json: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| format!("GET {url}: not JSON ({e})"))?;
                match config_version(&json) {
                    Some(v) if v == *version => Ok(()),
                    Some(v) => Err(format!(
                        "GET {url} reports table version {v}, waiting for {version}"
                    )),
                    None => Err(format!("GET {url} has no \"version\": {body}")),
                }
            }
        }
    }
}

async fn wait_ready(
    mesh: &Mesh,
    sup: &Supervisor,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), StartError> {
    let mut probes = vec![Probe {
        name: mesh.control_plane_proc.name.clone(),
        log: mesh.control_plane_proc.log.clone(),
        kind: ProbeKind::Ok200 {
            url: format!("{}/healthz", mesh.control_plane_url()),
        },
    }];
    for r in &mesh.replicas {
        probes.push(Probe {
            name: r.app_proc.name.clone(),
            log: r.app_proc.log.clone(),
            kind: ProbeKind::Ok200 {
                url: format!("http://{}/healthz", r.app),
            },
        });
        probes.push(Probe {
            name: r.sidecar_proc.name.clone(),
            log: r.sidecar_proc.log.clone(),
            kind: ProbeKind::Sidecar {
                admin: r.sidecar.admin,
                version: mesh.version,
            },
        });
    }
    probes.push(Probe {
        name: mesh.client_proc.name.clone(),
        log: mesh.client_proc.log.clone(),
        kind: ProbeKind::Sidecar {
            admin: mesh.client.admin,
            version: mesh.version,
        },
    });

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a plain HTTP client builds");
    let mut waiting: Vec<(Probe, String)> = probes
        .into_iter()
        .map(|p| (p, "not checked yet".to_owned()))
        .collect();
    loop {
        if let Some((e, status)) = sup.exited() {
            return Err(StartError::Exited {
                name: e.name.clone(),
                status: describe_status(status),
                log: e.log.clone(),
                tail: e.log_tail(20),
            });
        }
        let mut still = Vec::new();
        for (p, _) in waiting {
            match p.check(&client).await {
                Ok(()) => tracing::debug!(name = %p.name, "ready"),
                Err(seen) => still.push((p, seen)),
            }
        }
        waiting = still;
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StartError::NotReady {
                timeout,
                waiting: waiting
                    .iter()
                    .map(|(p, seen)| {
                        format!("  - {}: {seen}; its log: {}", p.name, p.log.display())
                    })
                    .collect(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_version_is_read_from_either_shape() {
        let top = serde_json::json!({"version": 3, "services": {}});
        let nested = serde_json::json!({"table": {"version": 4}, "source": "control-plane"});
        let none = serde_json::json!({"services": {}});
        assert_eq!(config_version(&top), Some(3), "top-level version");
        assert_eq!(config_version(&nested), Some(4), "table.version");
        assert_eq!(config_version(&none), None, "no version");
    }

    #[test]
    fn columns_are_aligned() {
        let rows = [
            ["service".to_owned(), "app".to_owned()],
            ["a".to_owned(), "127.0.0.1:1".to_owned()],
        ];
        assert_eq!(
            format_columns(&rows),
            "service  app\na        127.0.0.1:1\n",
            "each column as wide as its widest cell"
        );
    }

    #[test]
    fn reserved_ports_are_loopback_and_distinct_while_held() {
        let (l1, a1) = reserve().expect("reserve");
        let (l2, a2) = reserve().expect("reserve");
        assert!(a1.ip().is_loopback(), "loopback: {a1}");
        assert_ne!(a1.port(), a2.port(), "two held reservations differ");
        drop((l1, l2));
        let again = TcpListener::bind(a1);
        assert!(
            again.is_ok(),
            "a dropped reservation can be bound by its owner: {again:?}"
        );
    }

    #[test]
    fn run_dir_log_names() {
        let d = RunDir {
            root: PathBuf::from("/tmp/meshlab-dev-1"),
        };
        assert_eq!(
            d.log("sidecar b-1"),
            PathBuf::from("/tmp/meshlab-dev-1/logs/sidecar-b-1.log"),
            "spaces become dashes"
        );
        assert_eq!(
            d.table("dev"),
            PathBuf::from("/tmp/meshlab-dev-1/tables/dev.toml"),
            "the control plane reads <env>.toml"
        );
    }
}
