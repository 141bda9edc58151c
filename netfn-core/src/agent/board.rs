//! What the agent knows of its chains right now: adopted chains, the prober's last results and
//! the runtime tasks' restarts. Read by the control socket (`status`) and by the metrics
//! collector (`netfn_chain_up`); written by the chain manager, the prober and the supervisor.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::protocol::{ChainReport, ProbeReport, TaskReport};
use crate::chain::state::Phase;
use crate::metrics::ProbeView;

#[derive(Debug, Clone)]
struct Entry {
    phase: Phase,
    fastpath: String,
    probe: Option<ProbeReport>,
    tasks: BTreeMap<String, TaskReport>,
}

/// The shared board (one per agent).
#[derive(Debug, Default)]
pub struct Board {
    chains: Mutex<BTreeMap<String, Entry>>,
}

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub enum ProbeOutcome {
    Success(Duration),
    Failure(String),
}

impl Board {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding the lock leaves plain data; keep using it.
        self.chains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A chain was adopted (or re-adopted after its record changed).
    pub fn adopt(&self, chain: &str, phase: Phase, fastpath: &str) {
        let mut chains = self.lock();
        let entry = chains.entry(chain.to_string()).or_insert_with(|| Entry {
            phase,
            fastpath: fastpath.to_string(),
            probe: None,
            tasks: BTreeMap::new(),
        });
        entry.phase = phase;
        entry.fastpath = fastpath.to_string();
    }

    pub fn forget(&self, chain: &str) {
        self.lock().remove(chain);
    }

    /// Registers a task (0 restarts), so `status` lists it before it ever fails.
    pub fn task_started(&self, chain: &str, task: &str) {
        if let Some(e) = self.lock().get_mut(chain) {
            e.tasks
                .entry(task.to_string())
                .or_insert_with(|| TaskReport {
                    task: task.to_string(),
                    restarts: 0,
                    last_error: None,
                });
        }
    }

    pub fn task_restarted(&self, chain: &str, task: &str, error: &str) {
        if let Some(e) = self.lock().get_mut(chain) {
            let t = e
                .tasks
                .entry(task.to_string())
                .or_insert_with(|| TaskReport {
                    task: task.to_string(),
                    restarts: 0,
                    last_error: None,
                });
            t.restarts += 1;
            t.last_error = Some(error.to_string());
        }
    }

    pub fn probed(&self, chain: &str, outcome: &ProbeOutcome) {
        let mut chains = self.lock();
        let Some(e) = chains.get_mut(chain) else {
            return;
        };
        let p = e.probe.get_or_insert(ProbeReport {
            success: false,
            rtt_seconds: None,
            sent: 0,
            failed: 0,
            consecutive_failures: 0,
            last_probe_unix: 0,
            error: None,
        });
        p.sent += 1;
        p.last_probe_unix = crate::unix_time::now();
        match outcome {
            ProbeOutcome::Success(rtt) => {
                p.success = true;
                p.rtt_seconds = Some(rtt.as_secs_f64());
                p.consecutive_failures = 0;
                p.error = None;
            }
            ProbeOutcome::Failure(why) => {
                p.success = false;
                p.failed += 1;
                p.consecutive_failures += 1;
                p.error = Some(why.clone());
            }
        }
    }

    /// Every adopted chain.
    pub fn reports(&self) -> Vec<ChainReport> {
        self.lock()
            .iter()
            .map(|(chain, e)| ChainReport {
                chain: chain.clone(),
                phase: e.phase,
                fastpath: e.fastpath.clone(),
                up: e.phase == Phase::Up && e.probe.as_ref().is_none_or(|p| p.success),
                probe: e.probe.clone(),
                tasks: e.tasks.values().cloned().collect(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ProbeView for Board {
    fn probe_ok(&self, chain: &str) -> Option<bool> {
        self.lock()
            .get(chain)
            .and_then(|e| e.probe.as_ref())
            .map(|p| p.success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_results_and_restarts_show_in_reports() {
        let board = Board::default();
        board.adopt("c", Phase::Up, "kernel");
        assert_eq!(board.probe_ok("c"), None);
        assert!(board.reports()[0].up);
        board.task_started("c", "prober");
        board.probed("c", &ProbeOutcome::Failure("timeout".into()));
        assert_eq!(board.probe_ok("c"), Some(false));
        let r = &board.reports()[0];
        assert!(!r.up);
        assert_eq!(r.probe.as_ref().map(|p| p.consecutive_failures), Some(1));
        board.probed("c", &ProbeOutcome::Success(Duration::from_micros(300)));
        board.task_restarted("c", "prober", "boom");
        let r = &board.reports()[0];
        assert!(r.up);
        assert_eq!(r.tasks[0].restarts, 1);
        board.forget("c");
        assert!(board.is_empty());
        assert_eq!(board.probe_ok("c"), None);
    }
}
