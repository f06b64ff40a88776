//! The `mesh-service` binary: flags, logging, binding, the `LISTENING` line and signals. The
//! service itself lives in the `services` library.

use std::future::Future;
use std::io::IsTerminal;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use prometheus::Registry;
use services::cli::Args;
use services::{AppState, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listen = args.listen;
    let config = match args.into_config() {
        Ok(config) => config,
        // Same look and exit code (2) as clap's own flag errors.
        Err(e) => Args::command()
            .error(clap::error::ErrorKind::ValueValidation, e)
            .exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = serve(config, listen).await;
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    result
}

async fn serve(config: Config, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    tracing::info!(
        service = %config.service,
        instance = %config.instance,
        sidecar = %config.sidecar,
        seed = config.seed,
        behaviour = ?config.behaviour,
        "starting mesh-service"
    );
    let registry = Registry::new();
    // Off unless an OTEL_EXPORTER_OTLP_*ENDPOINT is set; a bad OTEL_* value stops the start.
    let tracing = mesh_trace::Tracing::from_env(&config.service, "mesh-service", &registry)
        .context("tracing (OTEL_* variables)")?
        .map(std::sync::Arc::new);
    let state = AppState::new_traced(config, registry, tracing.clone())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding --listen {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    mesh_proto::listening::announce([("app", addr)]).context("writing the LISTENING line")?;
    tracing::info!(%addr, "listening");
    services::run(listener, state, shutdown_signal()?)
        .await
        .context("serving")?;
    if let Some(t) = tracing {
        // The exporter's thread blocks on its own: flush from a blocking thread.
        tokio::task::spawn_blocking(move || t.shutdown(std::time::Duration::from_secs(3)))
            .await
            .context("flushing the last spans")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed before returning, so a
/// signal that arrives right after the LISTENING line is not lost.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
        })
    }
}
