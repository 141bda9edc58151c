//! The chain manager: adopts every chain recorded as up, runs its runtime tasks under
//! supervision, and lets go of chains that went down or changed.
//!
//! Adoption only reads: the chain record and the pinned maps. The agent never creates, repairs
//! or removes a kernel object, so a restarted agent takes over running chains without touching
//! their traffic. The state directory is read every `rescan` interval and whenever the control
//! socket asks (`netfn up`/`down` can say so right away).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::TaskError;
use super::board::Board;
use super::control::RescanRequest;
use super::prober::{self, ProbeConfig, ProbeTarget};
use super::supervisor::{Backoff, Supervised, supervise};
use crate::chain::state::{ChainState, Phase};
use crate::ebpf::{self, EbpfError, EbpfLogs};
use crate::function::{Registry, TaskContext};
use crate::metrics::{AgentMetrics, Records};
use crate::plan::HopRole;
use crate::spec::FastPath;

/// Task names (the `task` label of `netfn_task_restarts_total`).
pub const TASK_PROBER: &str = "prober";
pub const TASK_EBPF_LOGS: &str = "ebpf-logs";
pub const TASK_FASTPATH_LOGS: &str = "fastpath-logs";

/// What the manager works with.
pub struct ManagerContext {
    pub records: Arc<Records>,
    pub board: Arc<Board>,
    pub metrics: AgentMetrics,
    pub probe: Option<ProbeConfig>,
    pub ebpf_logs: bool,
    pub bpf_root: PathBuf,
    pub rescan_interval: Duration,
    pub backoff: Backoff,
    /// The function kinds, for the control tasks they run per function.
    pub kinds: Arc<Registry>,
}

/// One adopted chain and its running tasks, by (function, task); the chain's own tasks have
/// function "" (dropping it stops them).
struct Adopted {
    record: Arc<ChainState>,
    tasks: Vec<((String, String), Supervised)>,
}

/// Runs until the task is dropped.
pub async fn manage(ctx: ManagerContext, mut requests: mpsc::Receiver<RescanRequest>) {
    let mut adopted = BTreeMap::new();
    let mut broken = BTreeSet::new();
    rescan(&ctx, &mut adopted, &mut broken).await;
    loop {
        tokio::select! {
            () = tokio::time::sleep(ctx.rescan_interval) => {
                rescan(&ctx, &mut adopted, &mut broken).await;
            }
            request = requests.recv() => {
                let Some(reply) = request else { return };
                rescan(&ctx, &mut adopted, &mut broken).await;
                let _ = reply.send(adopted.len());
            }
        }
    }
}

async fn rescan(
    ctx: &ManagerContext,
    adopted: &mut BTreeMap<String, Adopted>,
    broken: &mut BTreeSet<String>,
) {
    let records = Arc::clone(&ctx.records);
    let loaded = match tokio::task::spawn_blocking(move || records.load()).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::warn!("cannot read the chain records: {e}; keeping the chains adopted");
            return;
        }
        Err(e) => {
            tracing::warn!("reading the chain records failed: {e}");
            return;
        }
    };
    let now_broken: BTreeSet<String> = loaded.errors.iter().map(|(c, _)| c.clone()).collect();
    for (chain, e) in &loaded.errors {
        if !broken.contains(chain) {
            tracing::warn!(chain = %chain, "cannot read the chain's record: {e}");
        }
    }
    *broken = now_broken;

    let desired: BTreeMap<&str, &Arc<ChainState>> = loaded
        .records
        .iter()
        .filter(|r| r.phase == Phase::Up)
        .map(|r| (r.chain(), r))
        .collect();
    adopted.retain(|chain, a| {
        let keep = match desired.get(chain.as_str()) {
            // Another plan, or the same plan on new programs (an apply after an upgrade: the
            // log tasks read the replaced programs' buffers, which nothing writes to now).
            Some(r) => r.plan == a.record.plan && r.programs == a.record.programs,
            None => {
                // A chain whose record is unreadable right now stays adopted.
                broken.contains(chain)
            }
        };
        if !keep {
            let why = if desired.contains_key(chain.as_str()) {
                "its record changed; adopting it again"
            } else {
                "it is no longer up"
            };
            tracing::info!(chain = %chain, "letting go of the chain: {why}");
            let tasks: Vec<(&str, &str)> = a
                .tasks
                .iter()
                .map(|((f, t), _)| (f.as_str(), t.as_str()))
                .collect();
            ctx.metrics.forget_chain(chain, &tasks);
            ctx.board.forget(chain);
        }
        keep
    });
    for (chain, record) in desired {
        if !adopted.contains_key(chain) {
            let a = adopt(ctx, Arc::clone(record));
            adopted.insert(chain.to_string(), a);
        }
    }
}

fn adopt(ctx: &ManagerContext, record: Arc<ChainState>) -> Adopted {
    let plan = &record.plan;
    let chain = plan.chain.as_str();
    tracing::info!(
        chain,
        functions = plan.function_count(),
        fastpath = %plan.fastpath,
        "adopting the chain (it runs in the kernel; nothing is created)"
    );
    ctx.board
        .adopt(chain, record.phase, &plan.fastpath.to_string());
    let mut tasks = Vec::new();
    if let Some(config) = ctx.probe {
        match ProbeTarget::of(plan) {
            Some(target) => {
                let (board, metrics) = (Arc::clone(&ctx.board), ctx.metrics.clone());
                let restarts =
                    ctx.metrics
                        .task_restarts
                        .with_label_values(&[chain, "", TASK_PROBER]);
                let task = supervise(
                    chain,
                    TASK_PROBER,
                    restarts,
                    Arc::clone(&ctx.board),
                    ctx.backoff,
                    move || {
                        prober::run(target.clone(), config, Arc::clone(&board), metrics.clone())
                    },
                );
                tasks.push(((String::new(), TASK_PROBER.to_string()), task));
            }
            None => tracing::warn!(chain, "the chain has no links; not probing it"),
        }
    }
    let bpf_dir = ctx.bpf_root.join(chain);
    let mut log_task = |task: &'static str, open: fn(&Path) -> Result<EbpfLogs, EbpfError>| {
        let restarts = ctx
            .metrics
            .task_restarts
            .with_label_values(&[chain, "", task]);
        let dir = bpf_dir.clone();
        let handle = supervise(
            chain,
            task,
            restarts,
            Arc::clone(&ctx.board),
            ctx.backoff,
            move || forward_logs(open, dir.clone()),
        );
        tasks.push(((String::new(), task.to_string()), handle));
    };
    if ctx.ebpf_logs && record.interface_counters {
        log_task(TASK_EBPF_LOGS, EbpfLogs::from_pinned);
    }
    // The forwarder's programs come from their own object load, with their own log buffer.
    if ctx.ebpf_logs
        && plan.fastpath != FastPath::Kernel
        && bpf_dir.join(ebpf::FWD_TABLE_PIN).exists()
    {
        log_task(TASK_FASTPATH_LOGS, ebpf::fastpath_logs);
    }
    tasks.extend(kind_tasks(ctx, &record, &bpf_dir));
    Adopted { record, tasks }
}

/// The control tasks the kinds of the chain's functions ask for, started under supervision.
fn kind_tasks(
    ctx: &ManagerContext,
    record: &ChainState,
    bpf_dir: &Path,
) -> Vec<((String, String), Supervised)> {
    let plan = &record.plan;
    let mut out = Vec::new();
    for (h, hop) in plan.hops.iter().enumerate() {
        let HopRole::Function { kind, settings } = &hop.role else {
            continue;
        };
        let Some(k) = ctx.kinds.get(kind) else {
            tracing::warn!(chain = %plan.chain, function = %hop.name, "this netfn has no kind `{kind}`; its tasks do not run");
            continue;
        };
        let task_ctx = TaskContext {
            chain: plan.chain.clone(),
            function: hop.name.clone(),
            netns: hop.netns.name.clone(),
            fastpath: plan.fastpath,
            stage_dir: (plan.fastpath != FastPath::Kernel)
                .then(|| plan.function_slot(h))
                .flatten()
                .map(|slot| ebpf::stage_dir(bpf_dir, slot)),
            settings: settings.clone(),
        };
        for task in k.tasks(&task_ctx) {
            let restarts = ctx.metrics.task_restarts.with_label_values(&[
                plan.chain.as_str(),
                hop.name.as_str(),
                task.name.as_str(),
            ]);
            let label = format!("{}/{}", hop.name, task.name);
            let start = task.start.clone();
            let handle = supervise(
                &plan.chain,
                &label,
                restarts,
                Arc::clone(&ctx.board),
                ctx.backoff,
                move || {
                    let run = start();
                    async move { run.await.map_err(TaskError::Kind) }
                },
            );
            out.push(((hop.name.clone(), task.name), handle));
        }
    }
    out
}

/// Forwards the aya-log records of the programs pinned under `bpf_dir` into the agent's log
/// (inside the task's span, so every line carries the chain).
async fn forward_logs(
    open: fn(&Path) -> Result<EbpfLogs, EbpfError>,
    bpf_dir: PathBuf,
) -> Result<(), TaskError> {
    let logs = open(&bpf_dir).map_err(|e| TaskError::Ebpf(Box::new(e)))?;
    logs.forward().await.map_err(|source| TaskError::Io {
        what: "read the eBPF log buffer".into(),
        source,
    })
}
