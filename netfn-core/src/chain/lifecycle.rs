//! `up` and `down` of one chain: lock, record, apply, and roll back or finish from the record.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::chain::state::{self, ChainLock, ChainState, Phase, StateError};
use crate::kernel::netlink::Netlink;
use crate::kernel::netns::{self, NetnsError};
use crate::kernel::objects::{self, ObjectError};
use crate::plan::{self, ChainPlan, HopPlan, HopRole, names};
use crate::spec::{ChainSpec, FastPath};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "chain `{chain}` is up with a different definition; change it in place with `netfn apply FILE`, or take it down first (netfn down {chain})"
    )]
    Changed { chain: String },
    /// The chain is up from another file: most likely another chain that has the same name.
    #[error(
        "chain `{chain}` is up from {}; this is {}: rename the chain in {}, or, if this file is to replace that one, take the running chain down first (netfn down {chain})",
        .running.display(), .this.display(), .this.display()
    )]
    UpFromElsewhere {
        chain: String,
        running: PathBuf,
        this: PathBuf,
    },
    /// A namespace the chain needs is another recorded chain's.
    #[error("{0}")]
    NamespaceOfChain(Box<TakenNamespace>),
    #[error(
        "chain `{chain}` is recorded as up but namespace {netns} is gone; run `netfn down {chain}` and `netfn up` again"
    )]
    Drift { chain: String, netns: String },
    #[error(
        "chain `{chain}` asks for fastpath = \"{fastpath}\", which this kernel cannot run: {why}; use fastpath = \"kernel\" here (see `netfn features`)"
    )]
    Unsupported {
        chain: String,
        fastpath: FastPath,
        why: String,
    },
    #[error("bringing up chain `{chain}` failed: {cause}{}", rollback_note(.rollback))]
    Up {
        chain: String,
        cause: Box<ObjectError>,
        rollback: Vec<String>,
    },
    #[error(
        "chain `{chain}` is up, but a function's process that was not running could not be \
         started: {cause}\nfix the cause and run `netfn up` (or `netfn apply`) with the chain's \
         file again"
    )]
    Process {
        chain: String,
        cause: Box<ObjectError>,
    },
    #[error("taking down chain `{chain}` left {} problem(s):\n  {}\nthe record is kept: fix the cause and run `netfn down {chain}` again", .errors.len(), .errors.join("\n  "))]
    Down { chain: String, errors: Vec<String> },
}

/// A namespace that a chain needs and another recorded chain has: `nf-a-b-c` is chain `a`'s
/// function `b-c` and chain `a-b`'s function `c`.
#[derive(Debug)]
pub struct TakenNamespace {
    pub chain: String,
    pub name: String,
    /// The hop of `chain` that needs it ("function `c`").
    pub hop: String,
    /// The chain's file.
    pub file: PathBuf,
    pub owner: String,
    pub owner_hop: String,
    pub owner_source: PathBuf,
}

impl std::fmt::Display for TakenNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TakenNamespace {
            chain,
            name,
            hop,
            file,
            owner,
            owner_hop,
            owner_source,
        } = self;
        write!(
            f,
            "chain `{chain}`: namespace {name}, which its {hop} needs, is chain `{owner}`'s \
             ({owner_hop}, up from {}): netfn names namespaces nf-<chain>-<function>, and `-` \
             may be part of both names; rename chain `{chain}` or its {hop} in {}, and leave \
             chain `{owner}` as it is",
            owner_source.display(),
            file.display()
        )
    }
}

fn rollback_note(errors: &[String]) -> String {
    if errors.is_empty() {
        "; everything it created was removed".to_string()
    } else {
        format!(
            "; rolling back also failed:\n  {}\nrun `netfn down` for the chain to finish",
            errors.join("\n  ")
        )
    }
}

/// Tunables of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Threads that create namespaces.
    pub workers: usize,
    /// TC interfaces the whole operation attaches (every chain of one `netfn up`), for the
    /// attach policy of [`fastpath_options_for`]; 0: only this chain's.
    pub tc_interfaces: usize,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            workers: 4,
            tc_interfaces: 0,
        }
    }
}

/// The TC interfaces one `up` may attach with TCX. Each TCX attach waits for an RCU grace
/// period under the kernel's rtnl lock (13.6 ms each on the 2-core test VMs: 1,000 functions
/// took 27 s), so they cannot overlap; clsact filters attach in well under a millisecond. Up to
/// this many (about 3.5 s of grace periods), TCX's faster per-packet path is worth the wait.
pub const TCX_ATTACH_BUDGET: usize = 256;

/// The TC interfaces the tc-mode chains of `chains` attach the forwarder to (two per function).
pub fn tc_interfaces<'a>(chains: impl IntoIterator<Item = &'a ChainSpec>) -> usize {
    chains
        .into_iter()
        .filter(|c| c.fastpath == FastPath::Tc)
        .map(|c| 2 * c.functions.len())
        .sum()
}

/// What `up` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpOutcome {
    Created {
        functions: usize,
        elapsed: Duration,
    },
    /// Up already, from the same file. `other_build`: its eBPF programs are not this netfn's
    /// (`apply` loads them, see [`crate::chain::apply::Reload`]).
    Unchanged {
        /// The functions whose processes did not run, started now.
        started: Vec<String>,
        other_build: bool,
        /// A function's process runs another netfn binary (`apply` starts it again on this
        /// one, see [`crate::chain::processes::Restart`]).
        other_binary: bool,
    },
}

/// What `down` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownOutcome {
    Removed {
        namespaces: usize,
        elapsed: Duration,
    },
    NotUp,
}

/// The namespaces netfn made for `chain` (from its record; none when it is not up): what a
/// `down` of it removes, for [`crate::kernel::freed::FreeWatch`].
pub fn namespaces_of(chain: &str) -> Vec<String> {
    let Ok(Some(record)) = state::load(chain) else {
        return Vec::new();
    };
    let mut names: Vec<String> = record
        .plan
        .created_namespaces()
        .map(str::to_string)
        .collect();
    if let Some(previous) = &record.previous {
        names.extend(previous.created_namespaces().map(str::to_string));
        names.sort();
        names.dedup();
    }
    names
}

/// Progress for people: lines ("waiting for the lock", "finishing an interrupted up") and
/// counts a live progress line can show.
pub trait Progress {
    fn note(&self, line: &str);
    /// One namespace was made (`up`, `apply`); called from the namespace worker threads.
    fn namespace_made(&self) {}
}

impl<F: Fn(&str)> Progress for F {
    fn note(&self, line: &str) {
        self(line)
    }
}

fn lock(chain: &str, progress: &dyn Progress) -> Result<ChainLock, StateError> {
    ChainLock::acquire(chain, || {
        progress.note(&format!(
            "another netfn command is working on chain `{chain}`; waiting for it to finish"
        ))
    })
}

/// Brings one chain up.
pub fn up(
    source: &Path,
    spec: &ChainSpec,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    progress: &(dyn Progress + Sync),
) -> Result<UpOutcome, LifecycleError> {
    let started = Instant::now();
    let plan = plan::plan_chain(spec);
    let chain = plan.chain.clone();
    let lock = lock(&chain, progress)?;
    let result = up_locked(source, spec, plan, rt, options, progress, started);
    // A failed up that left no record leaves no lock file either.
    if result.is_err() && matches!(state::load(&chain), Ok(None)) {
        lock.remove_file();
    }
    result
}

/// Whether `plan` (of `spec`) is the chain `old` runs, as its file writes it: no change but
/// functions' settings that their kinds call the same as recorded
/// ([`FunctionConfig::same_as_recorded`](crate::function::FunctionConfig::same_as_recorded)).
fn same_definition(old: &ChainPlan, plan: &ChainPlan, spec: &ChainSpec) -> bool {
    crate::plan::diff::diff(old, plan).iter().all(|change| {
        let crate::plan::diff::Change::Settings { name, .. } = change else {
            return false;
        };
        let recorded = old.hop(name).and_then(|(_, hop)| match &hop.role {
            HopRole::Function { settings, .. } => Some(settings),
            _ => None,
        });
        let config = spec.functions.iter().find(|f| &f.name == name);
        recorded
            .zip(config)
            .is_some_and(|(recorded, f)| f.config.same_as_recorded(recorded))
    })
}

fn up_locked(
    source: &Path,
    spec: &ChainSpec,
    plan: ChainPlan,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    progress: &(dyn Progress + Sync),
    started: Instant,
) -> Result<UpOutcome, LifecycleError> {
    let chain = plan.chain.clone();
    if let Some(old) = state::load(&chain)? {
        match old.phase {
            Phase::Up if same_definition(&old.plan, &plan, spec) => {
                if let Some(missing) = plan.created_namespaces().find(|n| !netns::exists(n)) {
                    return Err(LifecycleError::Drift {
                        chain,
                        netns: missing.to_string(),
                    });
                }
                // A function's process that died (and an agent did not start again, or none
                // runs) starts here; one on another netfn binary is `apply`'s to restart.
                let missing: Vec<_> = super::kinds::processes_to_start(&old.plan, spec, &|_| true)
                    .into_iter()
                    .filter(|r| r.running.is_none())
                    .collect();
                super::kinds::restart(&old.plan, &missing).map_err(|cause| {
                    LifecycleError::Process {
                        chain: chain.clone(),
                        cause: Box::new(cause),
                    }
                })?;
                return Ok(UpOutcome::Unchanged {
                    started: missing.into_iter().map(|r| r.function).collect(),
                    other_build: old.programs != crate::ebpf::object_build().ok(),
                    other_binary: old
                        .plan
                        .hops
                        .iter()
                        .any(|h| super::processes::other_binary(&chain, &h.name).is_some()),
                });
            }
            Phase::Up if !state::same_source(&old.source, source) => {
                return Err(LifecycleError::UpFromElsewhere {
                    chain,
                    running: old.source,
                    this: source.to_path_buf(),
                });
            }
            Phase::Up => return Err(LifecycleError::Changed { chain }),
            Phase::Applying | Phase::TearingDown => {
                progress.note(&format!(
                    "chain `{chain}`: an earlier up or down was interrupted; removing what it left first"
                ));
                teardown(old, rt)?;
            }
        }
    }

    preflight(source, &plan)?;
    check_kernel(&plan)?;
    netns::ensure_run_dir()?;
    let mut record = ChainState::new(source, plan);
    state::save_at(&mut record, "up-record")?;

    let built = build(&record.plan, spec, rt, options, &|| {
        progress.namespace_made()
    })
    .and_then(|()| {
        record.phase = Phase::Up;
        record.interface_counters = record.plan.fastpath == FastPath::Kernel;
        // The build whose programs were loaded (the load would have failed without one).
        record.programs = crate::ebpf::object_build().ok();
        state::save_at(&mut record, "up-record-up")
            .map_err(|e| (ObjectError::Record(Box::new(e)), Vec::new()))
    });
    match built {
        Ok(()) => Ok(UpOutcome::Created {
            functions: record.plan.function_count(),
            elapsed: started.elapsed(),
        }),
        Err((cause, foreign)) => {
            record.phase = Phase::Applying;
            record.foreign = foreign;
            let rollback = roll_back(&record, rt);
            if rollback.is_empty() {
                state::remove(&chain)?;
            } else {
                record.phase = Phase::TearingDown;
                state::save(&mut record)?;
            }
            // Another chain's `up` that needs the same namespace (`a` with function `b-c`, `a-b`
            // with `c`) and ran at the same time passed the preflight too and made it first:
            // say whose it is, as the preflight would have, never "remove it".
            if let (true, ObjectError::Netns(NetnsError::Exists { name })) =
                (rollback.is_empty(), &cause)
                && let Some(hop) = record.plan.hops.iter().find(|h| &h.netns.name == name)
                && let taken @ LifecycleError::NamespaceOfChain(_) =
                    namespace_taken(source, &record.plan, hop)
            {
                return Err(taken);
            }
            Err(LifecycleError::Up {
                chain,
                cause: Box::new(cause),
                rollback,
            })
        }
    }
}

/// Removes what a failed `up` made: the kinds' processes (they hold devices in the namespaces),
/// then the objects. Returns what could not be removed.
fn roll_back(record: &ChainState, rt: &tokio::runtime::Runtime) -> Vec<String> {
    for hop in record.plan.hops.iter().skip(1) {
        super::processes::stop(&record.plan.chain, &hop.name);
    }
    objects::remove(&record.plan, rt.handle(), &record.foreign)
}

/// The fast path's options for a small `up`: see [`fastpath_options_for`].
pub fn fastpath_options() -> crate::ebpf::FastpathOptions {
    fastpath_options_for(0)
}

/// The fast path's options, as an `up` that attaches `tc_interfaces` TC interfaces in all uses
/// them: the TC forwarder attaches with TCX where the kernel has it (Linux 6.6+: a pinned
/// bpf_link that runs before any clsact filter; measured 0.93x of a bare veth pair for 3
/// functions against 0.81x with netlink clsact) unless that is more than
/// [`TCX_ATTACH_BUDGET`] interfaces, and with netlink clsact otherwise. NETFN_TC_ATTACH
/// (netlink|tcx) and NETFN_EBPF_LOG override, for benchmarks and debugging; a bad value is
/// reported and ignored.
pub fn fastpath_options_for(tc_interfaces: usize) -> crate::ebpf::FastpathOptions {
    let tcx_kernel = crate::kernel::features::get("tcx").is_some_and(|f| f.available);
    let tcx = tcx_kernel && tc_interfaces <= TCX_ATTACH_BUDGET;
    let mut options = crate::ebpf::FastpathOptions {
        tc_attach: if tcx {
            crate::ebpf::TcAttach::Tcx
        } else {
            crate::ebpf::TcAttach::Netlink
        },
        ..Default::default()
    };
    match crate::ebpf::FastpathOptions::from_env() {
        Ok(env) => {
            if std::env::var_os("NETFN_TC_ATTACH").is_some() {
                options.tc_attach = env.tc_attach;
            } else if tcx_kernel && !tcx {
                tracing::info!(
                    "attaching the TC forwarder with clsact, not TCX: this up attaches \
                     {tc_interfaces} TC interfaces, and TCX waits for a kernel RCU grace period \
                     on each (over {TCX_ATTACH_BUDGET}, seconds add up); NETFN_TC_ATTACH=tcx \
                     forces TCX"
                );
            }
            options.log_level = env.log_level;
        }
        Err(why) => tracing::warn!("ignoring the fast-path environment settings: {why}"),
    }
    options
}

/// Refuses a fast path the running kernel cannot do, before anything is created.
fn check_kernel(plan: &ChainPlan) -> Result<(), LifecycleError> {
    let needs = match plan.fastpath {
        FastPath::Kernel => return Ok(()),
        FastPath::Tc => "tc-redirect-peer",
        FastPath::Xdp => "xdp-veth",
    };
    match crate::kernel::features::get(needs) {
        Some(f) if f.available => Ok(()),
        other => Err(LifecycleError::Unsupported {
            chain: plan.chain.clone(),
            fastpath: plan.fastpath,
            why: other.map_or_else(|| format!("{needs} is unknown"), |f| f.detail),
        }),
    }
}

/// Refuses to start if a namespace netfn would create already exists (another chain's, or not
/// netfn's at all), or an existing endpoint namespace is missing. `source`: the chain's file.
fn preflight(source: &Path, plan: &ChainPlan) -> Result<(), LifecycleError> {
    for hop in &plan.hops {
        let name = hop.netns.name.clone();
        match (hop.netns.created, netns::exists(&name)) {
            (true, true) => return Err(namespace_taken(source, plan, hop)),
            (false, false) => return Err(NetnsError::Missing { name }.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Why namespace `hop.netns.name`, which `hop` of `plan` (from file `source`) would create,
/// cannot be: it is another recorded chain's (said with that chain, its hop and its file), or
/// netfn did not create it.
pub(crate) fn namespace_taken(source: &Path, plan: &ChainPlan, hop: &HopPlan) -> LifecycleError {
    let name = &hop.netns.name;
    match owner_of(name, &plan.chain) {
        Some((owner, owner_hop)) => LifecycleError::NamespaceOfChain(Box::new(TakenNamespace {
            chain: plan.chain.clone(),
            name: name.clone(),
            hop: hop_words(hop),
            file: source.to_path_buf(),
            owner: owner.chain().to_string(),
            owner_hop,
            owner_source: owner.source,
        })),
        None => NetnsError::Exists { name: name.clone() }.into(),
    }
}

/// The recorded chain other than `chain` that created namespace `name` (by its plan, or the
/// plan an interrupted apply left as `previous`), and which of its hops it is for.
fn owner_of(name: &str, chain: &str) -> Option<(ChainState, String)> {
    state::list()
        .ok()?
        .into_iter()
        // Only a chain whose namespaces start `nf-<it>-` can have made it.
        .filter(|c| c != chain && name.starts_with(&names::netns_name(c, "")))
        .find_map(|c| {
            let record = state::load(&c).ok()??;
            let hop = std::iter::once(&record.plan)
                .chain(record.previous.as_ref())
                .flat_map(|p| &p.hops)
                .find(|h| h.netns.created && h.netns.name == name)
                .filter(|h| !record.foreign.contains(&h.netns.name))
                .map(hop_words)?;
            Some((record, hop))
        })
}

/// A hop as messages name it: "function `fw1`", "ingress endpoint".
fn hop_words(hop: &HopPlan) -> String {
    match hop.role {
        HopRole::Function { .. } => format!("function `{}`", hop.name),
        HopRole::Ingress => "ingress endpoint".to_string(),
        HopRole::Egress => "egress endpoint".to_string(),
    }
}

fn build(
    plan: &ChainPlan,
    spec: &ChainSpec,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    made: &(dyn Fn() + Sync),
) -> Result<(), (ObjectError, Vec<String>)> {
    let (opened, created) = objects::create_namespaces(plan, rt.handle(), options.workers, made);
    let foreign = opened.foreign.clone();
    let with_foreign = |e| (e, foreign.clone());
    created.map_err(with_foreign)?;
    let hit = |point| crate::failpoint::hit(point).map_err(|e| with_foreign(e.into()));
    hit("up-namespaces")?;
    let root = Netlink::here(rt.handle()).map_err(|source| {
        with_foreign(ObjectError::Netlink {
            hop: "netfn's own namespace".into(),
            source,
        })
    })?;
    rt.block_on(async {
        objects::create_links(plan, &opened, &root).await?;
        crate::failpoint::hit("up-links")?;
        objects::configure_hops(plan, &opened).await
    })
    .map_err(with_foreign)?;
    hit("up-addresses")?;
    // Kernel mode: a counter on every interface. In tc/xdp mode the forwarder itself counts what
    // each function receives (forwarded, to its stack, dropped): a second program per hop, or
    // one at the sink, would cost the fast path a tenth of its packet rate.
    let fast = plan.fastpath != FastPath::Kernel;
    if !fast {
        objects::attach_counters(plan, &|_| true).map_err(with_foreign)?;
    }
    if fast {
        // Only a TC chain's attach depends on how many TC interfaces the whole up attaches.
        let interfaces = if plan.fastpath == FastPath::Tc {
            options.tc_interfaces.max(tc_interfaces([spec]))
        } else {
            0
        };
        let fast_options = fastpath_options_for(interfaces);
        crate::ebpf::attach_fastpath_with(
            plan,
            &crate::plan::names::chain_bpf_dir(&plan.chain),
            &fast_options,
        )
        .map_err(|e| with_foreign(e.into()))?;
    }
    hit("up-ebpf")?;
    // What the kinds add: stages (tc/xdp) or kernel forms (kernel mode).
    super::kinds::start(plan, spec, &|_| true, true).map_err(with_foreign)?;
    hit("up-kinds")?;
    Ok(())
}

/// Takes one chain down, from its record.
pub fn down(
    chain: &str,
    rt: &tokio::runtime::Runtime,
    progress: &dyn Progress,
) -> Result<DownOutcome, LifecycleError> {
    let started = Instant::now();
    let lock = lock(chain, progress)?;
    let Some(record) = state::load(chain)? else {
        lock.remove_file();
        return Ok(DownOutcome::NotUp);
    };
    let namespaces = record.plan.created_namespaces().count();
    teardown(record, rt)?;
    lock.remove_file();
    Ok(DownOutcome::Removed {
        namespaces,
        elapsed: started.elapsed(),
    })
}

/// What `down --force` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForcedDown {
    /// Every object and file removed, for people.
    pub removed: Vec<String>,
}

/// Takes one chain down without its record (for a record that is damaged or lost): removes what
/// netfn names after the chain, namespaces `nf-CHAIN-*` (not those of another known chain whose
/// name extends this one, `nf-CHAIN-x-*`, nor those another chain's record lists: chain `a`'s
/// function `b-c` has `nf-a-b-c`, which `down --force a-b` would take otherwise), the pins under `/sys/fs/bpf/netfn/CHAIN`, the
/// processes and files `CHAIN.*` under `/run/netfn/chains`. The interface netfn added to an
/// operator's endpoint namespace goes with its veth peer, in a function's namespace.
pub fn force_down(chain: &str, progress: &dyn Progress) -> Result<ForcedDown, LifecycleError> {
    let lock = lock(chain, progress)?;
    let mut done = ForcedDown::default();
    let mut errors = Vec::new();
    let dir = names::chain_state_dir();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    // The kinds' processes first (they hold devices in the namespaces): `CHAIN.FUNCTION.pid`.
    for function in files
        .iter()
        .filter_map(|f| f.strip_prefix(&format!("{chain}."))?.strip_suffix(".pid"))
    {
        super::processes::stop(chain, function);
        done.removed.push(format!("process of function {function}"));
    }
    let recorded: Vec<String> = state::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o != chain)
        .collect();
    // By name (also when their records cannot be read), and by what their records list.
    let others: Vec<String> = recorded
        .iter()
        .filter(|o| o.starts_with(&format!("{chain}-")))
        .map(|o| names::netns_name(o, ""))
        .collect();
    let theirs: BTreeSet<String> = recorded
        .iter()
        .filter_map(|o| state::load(o).ok().flatten())
        .flat_map(|r| {
            let plans = std::iter::once(r.plan).chain(r.previous);
            plans
                .flat_map(|p| {
                    p.created_namespaces()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let ours = names::netns_name(chain, "");
    let mut namespaces: Vec<String> = std::fs::read_dir(names::NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| {
            n.starts_with(&ours) && !others.iter().any(|o| n.starts_with(o)) && !theirs.contains(n)
        })
        .collect();
    namespaces.sort();
    for name in namespaces {
        match netns::delete(&name) {
            Ok(_) => done.removed.push(format!("namespace {name}")),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let pins = names::chain_bpf_dir(chain);
    if pins.exists() {
        match crate::ebpf::remove_pins(&pins) {
            Ok(()) => done.removed.push(format!("pins {}", pins.display())),
            Err(e) => errors.push(e.to_string()),
        }
    }
    // The record (damaged or not), its temporary file, the processes' files; the lock last.
    let lock_file = format!("{chain}.lock");
    for f in files
        .iter()
        .filter(|f| f.starts_with(&format!("{chain}.")) && **f != lock_file)
    {
        let path = dir.join(f);
        match std::fs::remove_file(&path) {
            Ok(()) => done.removed.push(format!("file {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("cannot remove {}: {e}", path.display())),
        }
    }
    if !errors.is_empty() {
        return Err(LifecycleError::Down {
            chain: chain.to_string(),
            errors,
        });
    }
    lock.remove_file();
    Ok(done)
}

fn teardown(mut record: ChainState, rt: &tokio::runtime::Runtime) -> Result<(), LifecycleError> {
    record.phase = Phase::TearingDown;
    state::save_at(&mut record, "down-record")?;
    let chain = record.chain().to_string();
    let failed = |e: crate::failpoint::Injected| LifecycleError::Down {
        chain: chain.clone(),
        errors: vec![e.to_string()],
    };
    // The kinds' own processes go first: they hold devices in the namespaces about to go.
    for plan in std::iter::once(&record.plan).chain(record.previous.as_ref()) {
        for hop in plan.hops.iter().skip(1) {
            super::processes::stop(&plan.chain, &hop.name);
        }
    }
    crate::failpoint::hit("down-processes").map_err(failed)?;
    crate::failpoint::hit("down-objects").map_err(failed)?;
    let mut errors = objects::remove(&record.plan, rt.handle(), &record.foreign);
    if let Some(previous) = &record.previous {
        // An apply was interrupted: what only the old plan had must go too.
        errors.extend(objects::remove(previous, rt.handle(), &record.foreign));
    }
    if errors.is_empty() {
        crate::failpoint::hit("down-forget").map_err(StateError::from)?;
        state::remove(record.chain())?;
        Ok(())
    } else {
        Err(LifecycleError::Down { chain, errors })
    }
}
