//! `sidecar`: parses flags, builds the shared state and the Pingora server, and runs it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use clap::Parser;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use pingora_proxy::http_proxy;

use sidecar::config::{Args, LogFormat, Switch};
use sidecar::conn::Listener;
use sidecar::control::admin::{AdminService, AdminState};
use sidecar::control::ports::{reserve, Announcer, Reserved};
use sidecar::control::source::{Origin, TableSource};
use sidecar::endpoints::health::HealthChecker;
use sidecar::inbound::Inbound;
use sidecar::outbound::Outbound;
use sidecar::state::Mesh;
use sidecar::telemetry::metrics::Metrics;
use sidecar::tunnel::{Side, Tunnel};
use sidecar::upstream::{PoolSweeper, Upstreams};

/// mimalloc: fewer instructions per allocation than glibc's malloc and no lock on the
/// per-thread fast path (measured in bench/: see the README's bench section). With the
/// `alloc-count` feature, `alloc_count` installs a counting wrapper around it instead.
#[cfg(not(any(feature = "alloc-count", feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("sidecar: {e}");
        std::process::exit(2);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match args.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    if let Err(e) = run(args) {
        eprintln!("sidecar: {e:#}");
        std::process::exit(1);
    }
}

/// A client listener: the reserved address, and no buffer of Pingora's in front of the socket
/// either way. The request loop (`h1::server`) reads into its own buffer, and puts a response
/// header and its first body bytes together before it writes them, so Pingora's buffers (64 KiB
/// to read and 1,460 bytes to write by default, per connection, held while it is idle) would
/// only be a copy.
fn listener_config(r: &Reserved) -> ListenerConfig {
    ListenerConfig::tcp(r.addr.to_string())
        .tcp_socket_options(r.options.clone().unwrap_or_default())
        .l4_buffer(L4BufferSettings::unbuffered())
}

fn run(args: Args) -> anyhow::Result<()> {
    use anyhow::Context;
    let origin = match (&args.control_plane, &args.table) {
        (Some(cp), _) => Origin::control_plane(cp, &args.env),
        (None, Some(path)) => Origin::File { path: path.clone() },
        (None, None) => unreachable!("Args::check requires a source"),
    };
    let metrics = Metrics::with_per_request(args.metrics == Switch::On);
    let metrics = Arc::new(metrics.context("registering metrics")?);
    // Off unless an OTEL_EXPORTER_OTLP_*ENDPOINT is set; a bad OTEL_* value stops the start.
    let tracing = mesh_trace::Tracing::from_env(
        &format!("{}-sidecar", args.service),
        "meshlab-sidecar",
        &metrics.registry,
    )
    .context("tracing (OTEL_* variables)")?
    .map(Arc::new);
    if let Some(t) = &tracing {
        tracing::info!(
            collector = %format!("{}={}", t.settings.endpoint.0, t.settings.endpoint.1),
            sampler = ?t.settings.sampler,
            "exporting traces"
        );
    }
    let mesh = Mesh::new(
        args.service.clone(),
        args.env.clone(),
        origin.describe(),
        metrics.clone(),
    );

    let outbound =
        reserve(args.outbound).with_context(|| format!("--outbound {}", args.outbound))?;
    let inbound = reserve(args.inbound).with_context(|| format!("--inbound {}", args.inbound))?;
    let admin_listener = std::net::TcpListener::bind(args.admin)
        .with_context(|| format!("--admin {}", args.admin))?;
    let admin_addr = admin_listener.local_addr()?;

    let conf = ServerConf {
        threads: args.threads,
        // Upgrade handshakes (pingora-proxy): one more endpoint after a connect failure.
        max_retries: 2,
        grace_period_seconds: Some(args.shutdown_grace_s),
        graceful_shutdown_timeout_seconds: Some(args.shutdown_grace_s),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    // Requests go through our own request loop (`conn`) on pingora-core; upgrades are handed
    // to pingora-proxy (`tunnel`). One upstream pool per listener.
    let tunnel = |side| {
        Arc::new(http_proxy(
            &server.configuration,
            Tunnel {
                mesh: mesh.clone(),
                side,
            },
        ))
    };
    let out_pool = Arc::new(Upstreams::new());
    let in_pool = Arc::new(Upstreams::new());
    let mut out_svc = Service::new(
        "outbound".to_string(),
        Listener::new(
            Outbound::new(
                mesh.clone(),
                out_pool.clone(),
                args.access_log,
                tracing.clone(),
            ),
            tunnel(Side::Outbound),
        ),
    );
    out_svc.add_listener(listener_config(&outbound));
    let mut in_svc = Service::new(
        "inbound".to_string(),
        Listener::new(
            Inbound {
                mesh: mesh.clone(),
                app: args.app,
                metrics: metrics.route("inbound", &args.service, &args.service),
                access_log: args.access_log,
                tracing: tracing.clone(),
                upstreams: in_pool.clone(),
            },
            tunnel(Side::Inbound { app: args.app }),
        ),
    );
    in_svc.add_listener(listener_config(&inbound));
    let sweeper = background_service(
        "upstream pools",
        PoolSweeper {
            pools: vec![out_pool, in_pool],
        },
    );

    let listeners_up = Arc::new(AtomicBool::new(false));
    let source = background_service(
        "table source",
        TableSource::new(mesh.clone(), origin, args.poll_interval, args.dns_refresh),
    );
    let health = background_service("health checks", HealthChecker::new(mesh.clone()));
    let admin = background_service(
        "admin",
        AdminService {
            state: AdminState {
                mesh: mesh.clone(),
                listeners_up: listeners_up.clone(),
                draining: Default::default(),
                token: args.admin_token.as_deref().map(Arc::from),
            },
            listener: Mutex::new(Some(admin_listener)),
        },
    );
    let announcer = background_service(
        "announcer",
        Announcer {
            listeners: vec![
                ("outbound", outbound.addr),
                ("inbound", inbound.addr),
                ("admin", admin_addr),
            ],
            up: listeners_up,
        },
    );
    server.add_service(out_svc);
    server.add_service(in_svc);
    server.add_service(source);
    server.add_service(health);
    server.add_service(admin);
    server.add_service(announcer);
    server.add_service(sweeper);
    tracing::info!(
        service = %args.service,
        outbound = %outbound.addr,
        inbound = %inbound.addr,
        admin = %admin_addr,
        app = %args.app,
        "sidecar starting"
    );
    // The reserving sockets must outlive the server: keep them on this stack frame.
    let _keep = (outbound, inbound);
    // Returns once the graceful shutdown has finished every request in flight.
    server.run(RunArgs::default());
    if let Some(t) = &tracing {
        // The last requests' spans are queued by now: export them before exiting.
        t.shutdown(std::time::Duration::from_secs(3));
    }
    std::process::exit(0)
}
