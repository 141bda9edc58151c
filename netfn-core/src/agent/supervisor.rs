//! Supervised runtime tasks: a task that fails or panics is started again after an exponential
//! backoff, and every restart is counted (`netfn_task_restarts_total{chain,task}`) and logged.
//!
//! A task that returns `Ok(())` has finished on purpose and is not restarted. Dropping (or
//! aborting) the supervisor's handle stops the task too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tracing::Instrument;

use super::TaskError;
use super::board::Board;

/// Backoff between restarts: doubles from `initial` up to `max`; back to `initial` after a run
/// that lasted at least `stable`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
            stable: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay after a run of `ran` that followed a delay of `previous` (`None` for the first
    /// failure).
    pub fn next(&self, previous: Option<Duration>, ran: Duration) -> Duration {
        match previous {
            Some(p) if ran < self.stable => p.saturating_mul(2).min(self.max),
            _ => self.initial,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A handle on a supervised task; dropping it stops the task.
#[derive(Debug)]
pub struct Supervised {
    handle: JoinHandle<()>,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl Supervised {
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// Runs `make()` as task `task` of `chain`, restarting it with `backoff` when it fails or panics.
pub fn supervise<F, Fut>(
    chain: &str,
    task: &str,
    restarts: IntCounter,
    board: Arc<Board>,
    backoff: Backoff,
    make: F,
) -> Supervised
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
{
    let chain = chain.to_string();
    let task = task.to_string();
    board.task_started(&chain, &task);
    let span = tracing::info_span!("task", chain = %chain, task = %task);
    let handle = tokio::spawn(
        async move {
            let mut delay = None;
            loop {
                let started = Instant::now();
                let run = tokio::spawn(make().in_current_span());
                let _abort = AbortOnDrop(run.abort_handle());
                let why = match run.await {
                    Ok(Ok(())) => {
                        tracing::info!("task finished");
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e)),
                    Err(_) => return, // cancelled: the chain went away
                };
                let next = backoff.next(delay, started.elapsed());
                delay = Some(next);
                restarts.inc();
                board.task_restarted(&chain, &task, &why);
                tracing::warn!(
                    error = %why,
                    "task failed; restarting in {} ms",
                    next.as_millis()
                );
                tokio::time::sleep(next).await;
            }
        }
        .instrument(span),
    );
    Supervised { handle }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string()),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::chain::state::Phase;

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_stable_run() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            stable: Duration::from_secs(10),
        };
        let short = Duration::from_millis(1);
        let d1 = b.next(None, short);
        let d2 = b.next(Some(d1), short);
        let d3 = b.next(Some(d2), short);
        let d4 = b.next(Some(d3), short);
        assert_eq!(
            [d1, d2, d3, d4].map(|d| d.as_millis()),
            [100, 200, 350, 350]
        );
        assert_eq!(b.next(Some(d4), Duration::from_secs(11)), b.initial);
    }

    /// A backoff of milliseconds: the tests run in real time (tokio's paused clock needs its
    /// `test-util` feature, and that in the tests only would build tokio and everything on it
    /// twice).
    const QUICK: Backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
        stable: Duration::from_secs(60),
    };

    #[tokio::test(flavor = "current_thread")]
    async fn failing_and_panicking_tasks_are_restarted_and_counted() {
        let board = Arc::new(Board::default());
        board.adopt("c", Phase::Up, "kernel");
        let restarts = IntCounter::new("t_restarts_total", "t").unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let sup = supervise(
            "c",
            "flaky",
            restarts.clone(),
            Arc::clone(&board),
            QUICK,
            move || {
                let r = Arc::clone(&r);
                async move {
                    match r.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(TaskError::Other("first run fails".into())),
                        1 => panic!("second run panics"),
                        _ => Ok(()),
                    }
                }
            },
        );
        for _ in 0..500 {
            if sup.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sup.is_finished());
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(restarts.get(), 2);
        let tasks = &board.reports()[0].tasks;
        assert_eq!(tasks[0].restarts, 2);
        assert!(
            tasks[0]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("second run panics")),
            "{tasks:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_handle_stops_the_task() {
        let board = Arc::new(Board::default());
        let restarts = IntCounter::new("t2_restarts_total", "t").unwrap();
        let alive = Arc::new(AtomicU32::new(0));
        let a = Arc::clone(&alive);
        let sup = supervise("c", "forever", restarts, board, QUICK, move || {
            let a = Arc::clone(&a);
            async move {
                loop {
                    a.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(sup);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = alive.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(alive.load(Ordering::SeqCst), n, "the task kept running");
    }
}
