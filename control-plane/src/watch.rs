//! The reload loop: a poll every `--watch-interval`, and a full re-read when asked (SIGHUP).
//!
//! One task runs every reload in turn, on a blocking thread (reloads read files), so two
//! reloads never overlap. A burst of SIGHUPs during a reload collapses into one more reload.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use crate::tables::{Tables, Trigger};

/// Polls `tables` every `every`, and re-reads every file each time `reread` is notified.
/// Runs until the task is dropped.
pub async fn watch(tables: Arc<Tables>, every: Duration, reread: Arc<Notify>) {
    let mut tick = interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = tick.tick() => Trigger::Poll,
            () = reread.notified() => Trigger::Signal,
        };
        if trigger == Trigger::Signal {
            tracing::info!("re-reading every table");
        }
        let t = tables.clone();
        match tokio::task::spawn_blocking(move || t.reload(trigger)).await {
            Ok(out) => tracing::debug!(?trigger, ?out, "reload done"),
            Err(e) => tracing::error!(error = %e, "the reload task failed"),
        }
    }
}
