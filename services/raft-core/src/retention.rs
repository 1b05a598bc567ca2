//! FlareDB's time-series retention (`ts_retention_secs`, `--ts-retention-secs`): points older
//! than the retention are dropped, on every replica exactly the same ones.
//!
//! **Why the leader proposes the trim.** Each replica trimming by its own clock at apply time
//! would drop different points on different nodes (clocks differ, and so does when an entry is
//! applied). So the node that leads reads its clock, computes `before = now − retention`, and
//! proposes [`Command::TsTrim`] through Raft; every replica applies the same entry and drops the
//! same points (see [`crate::state_machine`]). Trimming relative to the newest point in the
//! applied state would need no clock at all, but one point stamped far in the future (a client
//! with a wrong clock) would then wipe every series; the leader's clock is the one a cluster
//! already trusts for leases.
//!
//! The leader checks every [`CHECK_EVERY`] and proposes once `before` is a [`step`] (a hundredth
//! of the retention, 1 s to 1 h) past the horizon already applied, so a trim costs one small
//! log entry per step, and a new leader picks up where the old one stopped. A leader with a
//! different retention configured trims by its own; configure every node alike.
//!
//! **Queries** never return points older than the horizon, even before a trim ran: a node with
//! a retention answers `from = max(from, now − retention)` by its own clock (the one it answers
//! with; a linearizable read is answered by the leader's).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::ServerState;

use crate::node::NodeState;
use crate::types::Command;

/// How often the leader compares its clock with the applied horizon.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How far the horizon must be behind before the leader trims again: a hundredth of the
/// retention, at least a second and at most an hour.
pub fn step(retention: Duration) -> Duration {
    (retention / 100).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// This node's clock in unix ms (`None` if it reads before 1970).
pub fn now_ms() -> Option<i64> {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// The oldest `t` a query may answer with `retention`, by this node's clock.
pub fn query_horizon(retention: Duration) -> Option<i64> {
    Some(now_ms()?.saturating_sub(i64::try_from(retention.as_millis()).ok()?))
}

/// Runs forever: while this node leads, proposes a [`Command::TsTrim`] each [`step`].
pub async fn keep_trimming(st: Arc<NodeState>, retention: Duration) {
    let step_ms = i64::try_from(step(retention).as_millis()).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(
        retention_secs = retention.as_secs(),
        step_ms,
        "time-series retention: the leader trims older points"
    );
    loop {
        ticker.tick().await;
        let leads = {
            let m = st.raft.metrics().borrow().clone();
            m.state == ServerState::Leader && m.current_leader == Some(st.id)
        };
        if !leads {
            continue;
        }
        let Some(before) = query_horizon(retention) else {
            continue;
        };
        let reader = st.reader.clone();
        let horizon = match tokio::task::spawn_blocking(move || reader.ts_horizon()).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "time-series retention: cannot read the horizon");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "time-series retention: the horizon read failed");
                continue;
            }
        };
        if horizon.is_some_and(|h| before.saturating_sub(h) < step_ms) {
            continue;
        }
        match st.proposer.write(Command::TsTrim { before }).await {
            Ok(r) => tracing::debug!(before, series = r.count, "time series trimmed"),
            Err(e) => {
                tracing::warn!(before, error = ?e, "time-series retention: trim not applied; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_is_a_hundredth_within_a_second_and_an_hour() {
        assert_eq!(step(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(step(Duration::from_secs(3600)), Duration::from_secs(36));
        assert_eq!(
            step(Duration::from_secs(30 * 86400)),
            Duration::from_secs(3600)
        );
    }
}
