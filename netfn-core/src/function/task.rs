//! A kind's control tasks: work the host agent runs for one function while its chain is up (a
//! load balancer's health checks), supervised like the agent's own tasks (restarted with
//! backoff when they fail, counted in `netfn_task_restarts_total{chain,function,task}`) and
//! stopped when the chain goes down or changes (the agent adopts the new record and asks
//! again). A dead agent runs no task: what the tasks last wrote (into the function's maps or
//! ruleset) stays in force, and the next agent resumes from it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use super::RecordedSettings;
use crate::spec::FastPath;

/// What a task knows of its function (owned: tasks outlive the call that made them).
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub chain: String,
    pub function: String,
    /// The function's namespace (a name under /run/netns): tasks that test a path run there.
    pub netns: String,
    pub fastpath: FastPath,
    /// tc/xdp: where the function's stage maps are pinned.
    pub stage_dir: Option<PathBuf>,
    pub settings: RecordedSettings,
}

/// One run of a task; `Err` (a reason) makes the agent start it again after a backoff.
pub type TaskRun = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A task a kind runs for one function.
#[derive(Clone)]
pub struct KindTask {
    /// Unique among the function's tasks (a load balancer's: `health`); the agent labels it
    /// with the chain and the function.
    pub name: String,
    /// Starts one run.
    pub start: Arc<dyn Fn() -> TaskRun + Send + Sync>,
}

impl std::fmt::Debug for KindTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindTask")
            .field("name", &self.name)
            .finish()
    }
}
