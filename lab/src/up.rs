//! `meshlab up`: load the table, start the mesh, drive load, stop, summarise.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::children::Supervisor;
use crate::cli::UpArgs;
use crate::labtable::{self, LoadError};
use crate::load::{self, LoadConfig};
use crate::mesh::{self, Binaries, MeshConfig, RunDir, StartError};
use crate::plan::{self, CLIENT_APP, CLIENT_SERVICE};
use crate::prometheus::{self, PrometheusError};
use crate::stats::Summary;
use crate::traces::{Receiver, TraceReport};

/// Grace between SIGTERM and SIGKILL when stopping the children.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Why `meshlab up` failed (the run did not complete).
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Table(#[from] LoadError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
    #[error("cannot find meshlab's own folder for --bin-dir: {0}")]
    BinDir(std::io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("interrupted by {0} during start-up")]
    Interrupted(&'static str),
    #[error("cannot start the trace receiver on 127.0.0.1: {0}")]
    Traces(std::io::Error),
}

/// What `up` produced.
pub enum Report {
    /// `--dry-run`: the plan, as text.
    DryRun(String),
    /// A completed run.
    Done(Box<Summary>),
}

impl Report {
    /// Prints the report on stdout: the summary as text, or as one JSON line with `--json`.
    pub fn print(&self, json: bool) {
        let mut out = std::io::stdout().lock();
        let _ = match self {
            Report::DryRun(text) => write!(out, "{text}"),
            Report::Done(s) if json => writeln!(
                out,
                "{}",
                serde_json::to_string(s).expect("a summary serializes")
            ),
            Report::Done(s) => write!(out, "{}", s.text()),
        };
        let _ = out.flush();
    }
}

/// Runs one start-up step until it ends or a signal arrives; a failure or a signal first
/// stops every child started so far.
async fn step<T, E: Into<UpError>>(
    fut: impl std::future::Future<Output = Result<T, E>>,
    signals: &mut Signals,
    sup: &Supervisor,
) -> Result<T, UpError> {
    let r = tokio::select! {
        r = fut => r.map_err(Into::into),
        sig = signals.recv() => Err(UpError::Interrupted(sig)),
    };
    if r.is_err() {
        sup.stop(STOP_GRACE).await;
    }
    r
}

/// SIGTERM and SIGINT, registered once at the start so neither kills meshlab outright.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal received.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn default_bin_dir() -> Result<PathBuf, UpError> {
    let exe = std::env::current_exe().map_err(UpError::BinDir)?;
    exe.parent().map(PathBuf::from).ok_or_else(|| {
        UpError::BinDir(std::io::Error::other(format!(
            "{} has no parent folder",
            exe.display()
        )))
    })
}

/// Runs `meshlab up`. Human output (the start-up table, live lines) goes to stderr when
/// `--json` asks for machine output on stdout.
pub async fn run(args: UpArgs) -> Result<Report, UpError> {
    let table = labtable::load(&args.tables, &args.env)?;
    let lab = table.lab();
    let replicas = plan::replicas(lab, args.replicas, args.seed);
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => default_bin_dir()?,
    };
    if args.dry_run {
        return Ok(Report::DryRun(dry_run(&args, &table, &replicas, &bin_dir)?));
    }
    let bins = Binaries::locate(&bin_dir)?;
    // Before anything starts: a missing `prometheus` fails the run at once.
    let prometheus_bin = if args.prometheus {
        Some(prometheus::locate()?)
    } else {
        None
    };
    let mut signals = Signals::new().map_err(UpError::Signals)?;
    let run_dir = RunDir::create(&args.env)?;
    tracing::info!(
        env = %args.env,
        table = %table.path.display(),
        run_dir = %run_dir.root.display(),
        replicas = replicas.len(),
        "starting the mesh"
    );

    // The lab's own OTLP/HTTP receiver: every child exports its spans there.
    let receiver = Receiver::start().await.map_err(UpError::Traces)?;
    let otlp_endpoint = receiver.endpoint();
    let sup = Supervisor::new();
    let deadline = tokio::time::Instant::now() + args.startup_timeout;
    let cfg = MeshConfig {
        env: &args.env,
        table: &table,
        replicas: &replicas,
        bins: &bins,
        run_dir: &run_dir,
        poll_interval: args.poll_interval,
        timeout: args.startup_timeout,
        otlp_endpoint: &otlp_endpoint,
        trace_sample: args.trace_sample,
    };
    let mesh = step(mesh::start(&cfg, &sup), &mut signals, &sup).await?;
    // The scrape config, and with --prometheus the server on it, within the same deadline.
    let (scrape_config, prom) = step(
        observe(
            &mesh,
            &run_dir,
            prometheus_bin.as_deref(),
            &sup,
            deadline,
            args.startup_timeout,
        ),
        &mut signals,
        &sup,
    )
    .await?;

    sup.set_running();
    let mut info = mesh.describe(&run_dir);
    info.push_str(&format!(
        "prometheus config: {} (every process, scraped every {})\n",
        scrape_config.display(),
        prometheus::SCRAPE_INTERVAL
    ));
    if let Some(p) = &prom {
        info.push_str(&format!(
            "prometheus: {}/ (pid {}; data in {}, log in logs/)\n",
            p.url(),
            p.entry.pid,
            prometheus::data_path(&run_dir).display()
        ));
    }
    if args.json {
        eprint!("{info}");
    } else {
        print!("{info}");
    }
    // The CHILDREN line (see the crate doc): every child's pid, for tools and tests that must
    // check nothing outlives meshlab.
    let running = sup.running();
    let children: Vec<serde_json::Value> = running
        .iter()
        .map(|(name, pid)| serde_json::json!({ "name": name, "pid": pid }))
        .collect();
    let pids: Vec<u32> = running.iter().map(|(_, pid)| *pid).collect();
    let mut line = serde_json::json!({
        "pids": pids,
        "children": children,
        "run_dir": run_dir.root,
        "prometheus_config": scrape_config,
    });
    if let Some(p) = &prom {
        line["prometheus"] = p.url().into();
    }
    println!("CHILDREN {line}");
    let _ = std::io::stdout().flush();

    let load_cfg = LoadConfig {
        proxy: mesh.client.outbound,
        entry: lab.entry.clone(),
        rps: args.rps,
        concurrency: args.concurrency,
        duration: args.duration,
        request_timeout: args.request_timeout,
        drain: load::DRAIN,
        live: true,
    };
    tracing::info!(
        "load: GET http://{}/ through the {CLIENT_SERVICE} sidecar ({}) at {} rps, at most {} in \
         flight, {}",
        load_cfg.entry,
        load_cfg.proxy,
        load_cfg.rps,
        load_cfg.concurrency,
        args.duration
            .map_or("until Ctrl-C".into(), |d| format!("for {d:?}"))
    );
    let result = load::run(&load_cfg, async {
        let sig = signals.recv().await;
        tracing::info!("{sig}: stopping the load");
    })
    .await;

    let unclean = sup.stop(STOP_GRACE).await;
    let mut summary = Summary::new(&args.env, &result.total, result.elapsed, args.rps);
    summary.concurrency = args.concurrency;
    summary.interrupted = result.interrupted;
    summary.crashed = sup.crashed();
    summary.unclean_stop = unclean;
    summary.run_dir = run_dir.root.clone();
    // The children flushed their last spans when they were stopped (SIGTERM).
    summary.traces = Some(TraceReport::of(&receiver));
    Ok(Report::Done(Box::new(summary)))
}

/// Writes the scrape config of `mesh` and, given the `prometheus` program, starts the server.
async fn observe(
    mesh: &mesh::Mesh,
    run_dir: &RunDir,
    program: Option<&std::path::Path>,
    sup: &Supervisor,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<(PathBuf, Option<prometheus::Running>), PrometheusError> {
    let config = prometheus::write_config(run_dir, mesh)?;
    let targets = prometheus::targets(mesh).len();
    let running = match program {
        Some(p) => Some(prometheus::start(p, run_dir, sup, targets, deadline, timeout).await?),
        None => None,
    };
    Ok((config, running))
}

/// `--dry-run`: the commands the lab would run, after checking the table and its rewrite.
fn dry_run(
    args: &UpArgs,
    table: &labtable::EnvTable,
    replicas: &[plan::ReplicaPlan],
    bin_dir: &std::path::Path,
) -> Result<String, UpError> {
    let version = table.table.version;
    let bump = version.checked_add(1).ok_or(StartError::Version(version))?;
    // Exercise both rewrites with stand-in addresses: a table that cannot be rewritten fails
    // here rather than half-way through a start.
    labtable::provisional(&table.text, version).map_err(StartError::Table)?;
    let mut fake = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (i, r) in replicas.iter().enumerate() {
        fake.entry(r.service.clone())
            .or_default()
            .push(format!("127.0.0.1:{}", 20_000 + i));
    }
    labtable::rewrite(&table.text, bump, &fake).map_err(StartError::Table)?;

    let run_dir = std::env::temp_dir().join(format!("meshlab-{}-<pid>", args.env));
    let mut s = format!(
        "meshlab up --dry-run: env {} from {} (version {version}; the lab serves version {bump} \
         with loopback endpoints)\n",
        args.env,
        table.path.display()
    );
    match Binaries::locate(bin_dir) {
        Ok(_) => s.push_str(&format!("binaries: {}\n", bin_dir.display())),
        Err(e) => s.push_str(&format!("warning: {e}\n")),
    }
    s.push_str("would run, in this order:\n");
    let cmd = |bin: &str, args: Vec<String>| format!("  {bin} {}\n", args.join(" "));
    s.push_str(&cmd(
        "control-plane",
        plan::control_plane_args(&run_dir.join("tables")),
    ));
    for r in replicas {
        s.push_str(&cmd(
            "mesh-service",
            plan::service_args(r, &format!("<reserved port of sidecar {}>", r.instance)),
        ));
    }
    for r in replicas {
        s.push_str(&cmd(
            "sidecar",
            plan::sidecar_args(
                &r.service,
                "http://<control plane>",
                &args.env,
                &format!("<reserved port of sidecar {}>", r.instance),
                &format!("<app of {}>", r.instance),
                args.poll_interval,
            ),
        ));
    }
    s.push_str(&cmd(
        "sidecar",
        plan::sidecar_args(
            CLIENT_SERVICE,
            "http://<control plane>",
            &args.env,
            "127.0.0.1:0",
            CLIENT_APP,
            args.poll_interval,
        ),
    ));
    s.push_str(&format!(
        "then writes {} (scrape config of every process above)\n",
        run_dir.join("prometheus.yml").display()
    ));
    if args.prometheus {
        match prometheus::locate() {
            Ok(p) => s.push_str(&cmd(
                &p.display().to_string(),
                prometheus::args(
                    &run_dir.join("prometheus.yml"),
                    &run_dir.join("prometheus-data"),
                    "127.0.0.1:<free port>",
                ),
            )),
            Err(e) => s.push_str(&format!("warning: {e}\n")),
        }
    }
    s.push_str(&format!(
        "then: GET http://{}/ through the {CLIENT_SERVICE} sidecar at {} rps, at most {} in \
         flight, {}\n",
        table.lab().entry,
        args.rps,
        args.concurrency,
        args.duration
            .map_or("until Ctrl-C".into(), |d| format!("for {d:?}"))
    ));
    Ok(s)
}
