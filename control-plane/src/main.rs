//! `control-plane`: loads the routing tables, then serves them until SIGTERM or SIGINT.
//!
//! Exit codes: 0 after a graceful shutdown, 1 when the tables do not load or the address cannot
//! be bound (every problem on stderr), 2 for bad flags.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use control_plane::cli::Cli;
use control_plane::watch::watch;
use control_plane::{run, AppState, Metrics, Tables};
use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, Notify};
use tracing_subscriber::EnvFilter;

/// How long in-flight requests get to finish after SIGTERM before the process exits anyway.
const GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match serve(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).context("registering metrics")?;
    let tables = Arc::new(Tables::load(&cli.tables, metrics).context("not starting")?);

    // Handlers are installed before LISTENING: a SIGHUP sent right after it must not kill us.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    mesh_proto::listening::announce([("control_plane", addr)])
        .context("writing the LISTENING line")?;
    tracing::info!(%addr, tables = %cli.tables.display(), watch_interval = ?cli.watch_interval,
                   "control plane listening");

    let reread = Arc::new(Notify::new());
    let notify = reread.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP");
            notify.notify_one();
        }
    });
    tokio::spawn(watch(tables.clone(), cli.watch_interval, reread));

    let (stopping_tx, stopping_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{which}: shutting down once in-flight requests finish");
        let _ = stopping_tx.send(());
    };
    let server = tokio::spawn(run(listener, AppState::new(tables, registry), shutdown));
    let deadline = async {
        if stopping_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(GRACE).await;
    };
    tokio::select! {
        res = server => res.context("the server task failed")?.context("serving")?,
        () = deadline => tracing::warn!("requests still in flight after {GRACE:?}; exiting anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}
