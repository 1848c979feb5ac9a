//! The idle-run watchdog: ends runs that went quiet.
//!
//! A worker that dies without a terminal event would leave its run `running`
//! forever and its watchers with a spinner. The watchdog asks the log, a few
//! times per timeout, to end every run idle for longer than the timeout with
//! `agent_error {code:"timeout"}`; the log does the check and the append in one
//! atomic step, so a run that publishes at the last moment is not ended. The
//! same ticks answer input requests whose timeout passed (with their default),
//! so a lapse is at most one tick late.

use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::Log;

/// How often to look for idle runs, for a given timeout: a tenth of it, between 10 ms and 1 s.
pub fn check_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Runs until `shutdown` is cancelled.
pub async fn run(log: Arc<dyn Log>, idle_timeout: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(check_interval(idle_timeout));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once per outage (a full disk, an engine away), not on every tick.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        match log.expire_idle_runs(Timestamp::now()).await {
            Ok(expired) => {
                if failing {
                    tracing::info!("idle-run watchdog checks runs again");
                }
                failing = false;
                if !expired.is_empty() {
                    tracing::info!(count = expired.len(), "ended idle runs with agent_error timeout");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "idle-run watchdog cannot check runs until the log takes writes again");
            }
            Err(_) => {}
        }
    }
    tracing::debug!("idle-run watchdog stopped");
}
