//! `netfn apply`: change a running chain in place. New namespaces and links are made first (in
//! tc/xdp chains with their forwarder rows and programs in place), then the path is switched: in
//! kernel mode routes (route replace), in tc/xdp mode the forwarder's entries (each atomic for
//! every packet, see [`crate::ebpf::switch_fastpath`]), in an order that never loops a packet.
//! Only then are the old links and the namespaces of removed functions deleted, so the flows
//! through the rest of the chain never stop.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chain::kinds;
use crate::chain::lifecycle::{self, LifecycleError, Progress, UpOptions};
use crate::chain::processes::Restart;
use crate::chain::state::{self, ChainLock, Phase};
use crate::ebpf;
use crate::failpoint;
use crate::function::{FunctionConfig, Registry};
use crate::kernel::netlink::Netlink;
use crate::kernel::netns;
use crate::kernel::objects::{self, ObjectError, Opened};
use crate::plan::diff::Change;
use crate::plan::names;
use crate::plan::replan::{self, ReplanError};
use crate::plan::{ChainPlan, Direction, HopPlan, LinkEnd, LinkPlan};
use crate::spec::{ChainSpec, FastPath};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Replan(#[from] ReplanError),
    #[error("chain `{0}` is not up; bring it up with `netfn up`")]
    NotUp(String),
    #[error(
        "chain `{chain}` was left half {} by a netfn command that did not finish (killed, or its machine stopped); run `netfn up` with the chain's file to finish bringing it up, then apply again, or `netfn down {chain}` to remove it", if *.tearing_down { "taken down" } else { "changed" }
    )]
    Interrupted { chain: String, tearing_down: bool },
    #[error(
        "chain `{chain}`: an earlier apply left old links or namespaces it could not remove, and they still cannot be:\n  {}\nfix the cause and run `netfn apply` again; `netfn down {chain}` removes them with the chain", .errors.join("\n  ")
    )]
    Leftovers { chain: String, errors: Vec<String> },
    #[error("applying to chain `{chain}` failed: {cause}; the old chain was restored{}", if .rollback.is_empty() { String::new() } else { format!(" except:\n  {}", .rollback.join("\n  ")) })]
    Failed {
        chain: String,
        cause: Box<ObjectError>,
        rollback: Vec<String>,
    },
    #[error(
        "chain `{chain}`: this netfn's eBPF programs cannot take the place of the running ones \
         (another netfn build's): {cause}\nnothing of the chain file was applied, and the chain \
         runs on. Programs replaced before a failure, if any, run this netfn's build and the \
         rest the old one's, on the same maps; the record still names the old build"
    )]
    Reload {
        chain: String,
        cause: Box<ObjectError>,
    },
    #[error("cannot tell which build of the eBPF programs this netfn has: {0}")]
    Build(#[source] ebpf::EbpfError),
    #[error(
        "chain `{chain}`: a function's process that ran another netfn binary, or did not run, \
         could not be started on this one: {cause}\nnothing of the chain file was applied, and \
         that process may not run now; fix the cause and run `netfn apply` again, which starts \
         it (a running agent tries too, on the agent's netfn binary)"
    )]
    Restart {
        chain: String,
        cause: Box<ObjectError>,
    },
}

/// This netfn's eBPF programs (see [`ebpf::object_build`]) in place of a running chain's, which
/// another build loaded: an upgraded netfn's fixes reach running chains at their next `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The running programs' build; None when the netfn that loaded them did not record it.
    pub from: Option<String>,
    pub to: String,
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "⟳ load this netfn's eBPF programs (build {}) in place of the running ones (",
            self.to
        )?;
        match &self.from {
            Some(from) => write!(f, "build {from}")?,
            None => write!(f, "loaded by a netfn that did not record its build")?,
        }
        write!(f, "), keeping their state")
    }
}

impl From<state::StateError> for ApplyError {
    fn from(e: state::StateError) -> Self {
        ApplyError::Lifecycle(e.into())
    }
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub enum ApplyOutcome {
    Unchanged,
    /// `--dry-run`: what would change.
    Planned {
        changes: Vec<Change>,
        moved: Option<PathBuf>,
        reload: Option<Reload>,
        restarts: Vec<Restart>,
    },
    Applied {
        changes: Vec<Change>,
        /// Made before the changes.
        reloaded: Option<Reload>,
        /// The functions' processes that ran another netfn binary or did not run, started on
        /// this one (after the reload, before the changes).
        restarted: Vec<Restart>,
        elapsed: Duration,
        /// The file the chain was up from, when it was another: this one is its source now
        /// (a chain of another file that has the same name would be changed this way too, so
        /// the operator is told).
        moved: Option<PathBuf>,
    },
}

/// Applies the chain file's version of one running chain (`source`: the file, recorded as the
/// chain's source once applied).
pub fn apply(
    source: &std::path::Path,
    spec: &ChainSpec,
    kinds: &Registry,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<ApplyOutcome, ApplyError> {
    let started = Instant::now();
    let chain = spec.name.clone();
    let lock = ChainLock::acquire(&chain, || {
        progress.note(&format!(
            "another netfn command is working on chain `{chain}`; waiting for it to finish"
        ))
    })?;
    let mut record = match state::load(&chain)? {
        Some(r) if r.phase == Phase::Up => r,
        Some(r) => {
            return Err(ApplyError::Interrupted {
                chain,
                tearing_down: r.phase == Phase::TearingDown,
            });
        }
        None => {
            // No chain: no lock file left behind either.
            lock.remove_file();
            return Err(ApplyError::NotUp(chain));
        }
    };
    tracing::debug!(chain = %chain, "apply: record read in {:.1?}", started.elapsed());
    if !dry_run {
        finish_removal(&mut record, rt, options)?;
    }
    let next = replan::replan(&record.plan, spec)?;
    let build = ebpf::object_build().map_err(ApplyError::Build)?;
    let reload = (record.programs.as_deref() != Some(build.as_str())).then(|| Reload {
        from: record.programs.clone(),
        to: build,
    });
    // Processes of functions the change keeps and leaves as they are, that run another netfn
    // binary or do not run (a restart failed): started on this one. The change stops the
    // functions it removes, and starts those whose settings it changes again (with the new
    // settings, on this binary: see kinds::start_one).
    let kept = names_of(&next.plan);
    let changed: BTreeSet<&str> = next
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Settings { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let restarts = kinds::processes_to_start(&record.plan, spec, &|n| {
        kept.contains(n) && !changed.contains(n)
    });
    if next.changes.is_empty() && reload.is_none() && restarts.is_empty() {
        return Ok(ApplyOutcome::Unchanged);
    }
    tracing::debug!(chain = %chain, "apply: replanned by {:.1?}", started.elapsed());
    let moved = (!state::same_source(&record.source, source)).then(|| record.source.clone());
    let settings = settings_changes(&record.plan, spec, &next.changes, kinds)?;
    tracing::debug!(chain = %chain, "apply: planned by {:.1?}", started.elapsed());
    if dry_run {
        // What the reload would refuse, the dry run refuses too (it only reads).
        if reload.is_some() {
            kinds::check_reload(&record.plan, kinds).map_err(|cause| ApplyError::Reload {
                chain: chain.clone(),
                cause: Box::new(cause),
            })?;
        }
        return Ok(ApplyOutcome::Planned {
            changes: next.changes,
            moved,
            reload,
            restarts,
        });
    }
    let old = record.plan.clone();
    let delta = Delta::between(&old, &next.plan);
    // A namespace the change would create must not exist: refuse before touching anything.
    if let Some(hop) = delta
        .new_namespaces(&next.plan)
        .find(|h| netns::exists(&h.netns.name))
    {
        return Err(lifecycle::namespace_taken(source, &next.plan, hop).into());
    }
    // The running chain gets this netfn's programs first, so that what the changes add (links,
    // stages) never mixes with another build's.
    if let Some(r) = &reload {
        kinds::reload(&record.plan, kinds).map_err(|cause| ApplyError::Reload {
            chain: chain.clone(),
            cause: Box::new(cause),
        })?;
        record.programs = Some(r.to.clone());
        state::save(&mut record)?;
    }
    // The processes too, so that the upgrade reaches the whole chain. The chain's lock, held,
    // keeps the agent from starting the old binary's while one is down.
    kinds::restart(&record.plan, &restarts).map_err(|cause| ApplyError::Restart {
        chain: chain.clone(),
        cause: Box::new(cause),
    })?;
    if next.changes.is_empty() {
        return Ok(ApplyOutcome::Applied {
            changes: next.changes,
            reloaded: reload,
            restarted: restarts,
            elapsed: started.elapsed(),
            moved: None,
        });
    }
    // What `down` needs of the old plan is its objects, not the functions' settings (which can
    // be large: a firewall's rules): the record keeps it without them.
    record.previous = Some(old.without_settings());
    record.plan = next.plan.clone();
    record.phase = Phase::Applying;
    state::save_at(&mut record, "apply-record")?;

    let mut foreign = Vec::new();
    let mut changed = Vec::new();
    let change = Transition {
        old: &old,
        new: &next.plan,
        delta: &delta,
        spec,
        settings: &settings,
    };
    // The record turns `up` with the new plan once the path is switched (the commit point: a
    // failure before it, also to write it, restores the old chain); it keeps the old plan until
    // the old path is removed, so that `down` always covers both.
    let switched = switch(&change, rt, options, &mut foreign, &mut changed).and_then(|opened| {
        record.phase = Phase::Up;
        record.source = source.to_path_buf();
        state::save_at(&mut record, "apply-record-up")
            .map(|()| opened)
            .map_err(|e| ObjectError::Record(Box::new(e)))
    });
    match switched {
        Ok(opened) => {
            // What could not be removed stays covered by the old plan in the record, for the
            // next apply or `down` to remove.
            if remove_old_path(&change, &opened, rt).is_empty() {
                record.previous = None;
                if let Err(e) = state::save(&mut record) {
                    tracing::warn!(
                        chain = %chain,
                        "apply: the change is made, but its record still lists the old plan \
                         ({e}); the next `netfn apply` or `netfn down` clears it"
                    );
                }
            }
            Ok(ApplyOutcome::Applied {
                changes: next.changes,
                reloaded: reload,
                restarted: restarts,
                elapsed: started.elapsed(),
                moved,
            })
        }
        Err(cause) => {
            // A namespace that appeared since the check above is someone else's: never removed.
            let rollback = undo(&change, rt, options, &foreign, &changed);
            record.foreign.extend(foreign);
            if rollback.is_empty() {
                record.plan = old;
                record.previous = None;
                record.phase = Phase::Up;
            } else {
                record.phase = Phase::TearingDown;
            }
            state::save(&mut record)?;
            Err(ApplyError::Failed {
                chain,
                cause: Box::new(cause),
                rollback,
            })
        }
    }
}

/// Removes what an earlier apply switched away from but could not remove (the record kept its
/// old plan as `previous`), before anything else changes.
fn finish_removal(
    record: &mut state::ChainState,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
) -> Result<(), ApplyError> {
    let Some(old) = record.previous.clone() else {
        return Ok(());
    };
    let new = &record.plan;
    let delta = Delta::between(&old, new);
    let (opened, result) = open(new, &delta.touched, false, rt, options);
    let mut errors: Vec<String> = result.err().map(|e| e.to_string()).into_iter().collect();
    errors.extend(remove_old(&old, new, &delta, &opened, rt));
    let kept = names_of(new);
    for hop in old.hops.iter().filter(|h| !kept.contains(h.name.as_str())) {
        if let Err(e) = kinds::stop(&old, &hop.name) {
            errors.push(e.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(ApplyError::Leftovers {
            chain: old.chain,
            errors,
        });
    }
    record.previous = None;
    state::save(record)?;
    Ok(())
}

fn names_of(plan: &ChainPlan) -> BTreeSet<&str> {
    plan.hops.iter().map(|h| h.name.as_str()).collect()
}

/// Hops of `new` that are new, and hops of `new` (that `old` has too) which a change touches.
fn hops_to_open(
    old: &ChainPlan,
    new: &ChainPlan,
    added: &[&LinkPlan],
    gone: &[&LinkPlan],
) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let old_names = names_of(old);
    let fresh: BTreeSet<usize> = new
        .hops
        .iter()
        .enumerate()
        .filter(|(_, h)| !old_names.contains(h.name.as_str()))
        .map(|(i, _)| i)
        .collect();
    let mut touched: BTreeSet<usize> = added.iter().flat_map(|l| [l.out.hop, l.inn.hop]).collect();
    for l in gone {
        for old_hop in [l.out.hop, l.inn.hop] {
            if let Some((i, _)) = new.hop(&old.hops[old_hop].name) {
                touched.insert(i);
            }
        }
    }
    for (i, hop) in new.hops.iter().enumerate() {
        if let Some((_, before)) = old.hop(&hop.name)
            && before.routes != hop.routes
        {
            touched.insert(i);
        }
    }
    let touched = touched.difference(&fresh).copied().collect();
    (fresh, touched)
}

fn open(
    plan: &ChainPlan,
    hops: &BTreeSet<usize>,
    create: bool,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
) -> (Opened, Result<(), ObjectError>) {
    objects::open_hops(
        plan,
        rt.handle(),
        options.workers,
        create,
        &|h, _| hops.contains(&h),
        &|| {},
    )
}

/// What an apply changes in terms of links and hops.
struct Delta<'a> {
    /// Links of the new plan that the old one lacks, and links of the old plan that go.
    added: Vec<&'a LinkPlan>,
    gone: Vec<&'a LinkPlan>,
    /// Hops (of the new plan) that are new, and kept hops a change touches.
    fresh: BTreeSet<usize>,
    touched: BTreeSet<usize>,
}

impl<'a> Delta<'a> {
    fn between(old: &'a ChainPlan, new: &'a ChainPlan) -> Self {
        let added: Vec<&LinkPlan> = replan::gone_links(new, old).collect();
        let gone: Vec<&LinkPlan> = replan::gone_links(old, new).collect();
        let (fresh, touched) = hops_to_open(old, new, &added, &gone);
        Delta {
            added,
            gone,
            fresh,
            touched,
        }
    }

    /// The hops of `new` (the plan this delta leads to) whose namespaces the change creates.
    fn new_namespaces<'p>(&self, new: &'p ChainPlan) -> impl Iterator<Item = &'p HopPlan> {
        self.fresh
            .iter()
            .filter_map(|&h| new.hops.get(h))
            .filter(|h| h.netns.created)
    }
}

/// A function whose settings an apply changes in place, with its settings before.
struct SettingsChange {
    name: String,
    old: Arc<dyn FunctionConfig>,
}

/// Everything one apply changes.
struct Transition<'a> {
    old: &'a ChainPlan,
    new: &'a ChainPlan,
    delta: &'a Delta<'a>,
    spec: &'a ChainSpec,
    settings: &'a [SettingsChange],
}

/// The settings changes of `changes`, each confirmed by its kind as possible in place (or the
/// kind's reason why not, before anything changes).
fn settings_changes(
    old: &ChainPlan,
    spec: &ChainSpec,
    changes: &[Change],
    kinds: &Registry,
) -> Result<Vec<SettingsChange>, ApplyError> {
    let refuse = |name: &str, why: String| {
        ApplyError::Replan(ReplanError::NeedsRebuild {
            chain: spec.name.clone(),
            what: format!("function {name}: {why}"),
        })
    };
    let mut out = Vec::new();
    for c in changes {
        let Change::Settings { name, kind } = c else {
            continue;
        };
        let (_, recorded) = kinds::recorded(old, name)
            .ok_or_else(|| refuse(name, "it is not in the chain's record".into()))?;
        let before = kinds.load(kind, recorded).map_err(|why| {
            refuse(
                name,
                format!("its recorded settings cannot be read ({why})"),
            )
        })?;
        let after = spec
            .functions
            .iter()
            .find(|f| &f.name == name)
            .ok_or_else(|| refuse(name, "it is not in the file".into()))?;
        after
            .config
            .change_in_place(before.as_ref())
            .map_err(|why| refuse(name, why))?;
        out.push(SettingsChange {
            name: name.clone(),
            old: before,
        });
    }
    Ok(out)
}

/// old → new: make what is new and switch the path onto it. Returns the hops it opened. The
/// functions whose new settings it made live go to `changed`.
fn switch(
    change: &Transition,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    foreign: &mut Vec<String>,
    changed: &mut Vec<String>,
) -> Result<Opened, ObjectError> {
    let (old, new, delta) = (change.old, change.new, change.delta);
    let mut steps = Steps::new(&new.chain);
    let opened = create_new(new, delta, rt, options, foreign)?;
    failpoint::hit("apply-create")?;
    steps.done("new namespaces and links");
    let bpf_dir = names::chain_bpf_dir(&new.chain);
    let added = ifindexes(&delta.added);
    if new.fastpath == FastPath::Kernel {
        // Count on the new interfaces before any traffic is switched onto them, and pin the old
        // path: kept functions route what arrives on their old interfaces by the old routes,
        // whatever the switch does meanwhile (see `plan::steering_routes`).
        objects::attach_counters(new, &|end| added.contains(&end.ifindex))?;
        rt.block_on(pin_old_paths(old, new, delta, &opened))?;
    } else {
        // Forward on them: rows and programs first, nothing steered there yet.
        let new_slots: Vec<u32> = delta
            .fresh
            .iter()
            .filter_map(|&h| new.function_slot(h))
            .collect();
        ebpf::extend_fastpath(new, &bpf_dir, &added, &new_slots)?;
    }
    failpoint::hit("apply-prepare")?;
    steps.done("the new path prepared");
    start_kinds(change, changed)?;
    failpoint::hit("apply-kinds")?;
    steps.done("functions' stages and rules");
    switch_routes(new, delta, &opened, rt)?;
    failpoint::hit("apply-routes")?;
    if new.fastpath != FastPath::Kernel {
        let changed = ebpf::switch_fastpath(new, &bpf_dir)?;
        tracing::debug!(chain = %new.chain, "apply: {changed} forwarder entries switched");
    }
    failpoint::hit("apply-switch")?;
    steps.done("switch");
    Ok(opened)
}

/// After the switch: the old path drains, then its links, the namespaces of removed functions
/// and what the kinds kept for them go. Returns what could not be removed.
fn remove_old_path(
    change: &Transition,
    opened: &Opened,
    rt: &tokio::runtime::Runtime,
) -> Vec<String> {
    let (old, new, delta) = (change.old, change.new, change.delta);
    let mut steps = Steps::new(&new.chain);

    // Now nothing is steered onto the old links or the removed functions. Packets already on
    // their way there (in a veth's queue) get a moment to leave; then the old links go.
    std::thread::sleep(DRAIN);
    let mut errors = match failpoint::hit("apply-remove") {
        Ok(()) => remove_old(old, new, delta, opened, rt),
        Err(injected) => vec![injected.to_string()],
    };
    if new.fastpath == FastPath::Kernel {
        // Nothing is on the old path any more: the main table, switched too, routes as the
        // per-interface tables do. Back to the steady state, which costs nothing per packet.
        let hops: Vec<usize> = delta.fresh.union(&delta.touched).copied().collect();
        errors.extend(rt.block_on(objects::unsteer(new, &ends_of(new, &hops), opened)));
    }
    errors.extend(settle_kinds(change));
    steps.done("drain and removal of the old links");
    if let Some(first) = errors.first() {
        tracing::warn!(
            chain = %new.chain,
            "apply: the change is made, but removing the old links left {} problem(s), first: \
             {first}; the next `netfn apply` or `netfn down` removes what is left",
            errors.len()
        );
    }
    errors
}

/// What the kinds add, before the switch: new functions start (their stages in place before the
/// forwarder hands them a packet), functions whose settings change get the new ones (one switch
/// of their stage, or one nftables transaction; each that did goes to `changed`), and in kernel
/// mode the rules of the kept functions the change touches match their old and new interfaces
/// alike.
fn start_kinds(change: &Transition, changed: &mut Vec<String>) -> Result<(), ObjectError> {
    let (old, new, delta) = (change.old, change.new, change.delta);
    let fresh: BTreeSet<&str> = delta
        .fresh
        .iter()
        .filter_map(|&h| new.hops.get(h))
        .map(|h| h.name.as_str())
        .collect();
    kinds::start(new, change.spec, &|n| fresh.contains(n), true)?;
    for f in &change.spec.functions {
        let settings = change.settings.iter().any(|s| s.name == f.name);
        let touched = new
            .hop(&f.name)
            .is_some_and(|(h, _)| delta.touched.contains(&h));
        let rules_name_interfaces = new.fastpath == FastPath::Kernel && touched;
        if settings || rules_name_interfaces {
            kinds::start_one(new, &[old], &f.name, f.config.as_ref(), false, Some(old))?;
            if settings {
                changed.push(f.name.clone());
            }
        }
    }
    Ok(())
}

/// After the old links are gone: kernel-mode rules forget the old interfaces; the stages of
/// removed functions go. Returns what could not be done.
fn settle_kinds(change: &Transition) -> Vec<String> {
    let (old, new, delta) = (change.old, change.new, change.delta);
    let mut errors = Vec::new();
    if new.fastpath == FastPath::Kernel {
        for f in &change.spec.functions {
            let touched = new
                .hop(&f.name)
                .is_some_and(|(h, _)| delta.touched.contains(&h));
            if touched
                && let Err(e) =
                    kinds::start_one(new, &[], &f.name, f.config.as_ref(), false, Some(new))
            {
                errors.push(e.to_string());
            }
        }
    }
    let kept = names_of(new);
    for hop in old.hops.iter().filter(|h| !kept.contains(h.name.as_str())) {
        if let Err(e) = kinds::stop(old, &hop.name) {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Creates the new namespaces and links (up, addressed); returns every hop it opened. Names of
/// namespaces that turned out to be someone else's go to `foreign`.
fn create_new(
    new: &ChainPlan,
    delta: &Delta,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    foreign: &mut Vec<String>,
) -> Result<Opened, ObjectError> {
    let (mut opened, created) = open(new, &delta.fresh, true, rt, options);
    foreign.append(&mut opened.foreign);
    created?;
    let (existing, result) = open(new, &delta.touched, false, rt, options);
    result?;
    opened.hops.extend(existing.hops);

    let root = Netlink::here(rt.handle()).map_err(|source| ObjectError::Netlink {
        hop: "netfn's own namespace".into(),
        source,
    })?;
    rt.block_on(async {
        let sub = ChainPlan {
            links: delta.added.iter().map(|l| (*l).clone()).collect(),
            ..new.clone()
        };
        objects::create_links(&sub, &opened, &root).await?;
        objects::configure_link_ends(new, &delta.added, &opened).await?;
        for &h in &delta.fresh {
            if let Some(ns) = opened.hops.get(&h) {
                ns.netlink
                    .set_up(1)
                    .await
                    .map_err(|source| ObjectError::Netlink {
                        hop: new.hops[h].name.clone(),
                        source,
                    })?;
            }
        }
        Ok::<(), ObjectError>(())
    })?;
    Ok(opened)
}

/// Kernel mode: steers the kept functions a change touches by their old routes, per arriving
/// interface, before anything switches.
async fn pin_old_paths(
    old: &ChainPlan,
    new: &ChainPlan,
    delta: &Delta<'_>,
    opened: &Opened,
) -> Result<(), ObjectError> {
    for &h in &delta.touched {
        let (Some((oh, _)), Some(ns)) = (old.hop(&new.hops[h].name), opened.hops.get(&h)) else {
            continue;
        };
        objects::steer(old, oh, &ns.netlink, None)
            .await
            .map_err(|source| ObjectError::Netlink {
                hop: new.hops[h].name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// Loop-free route switch: routes toward egress are switched from the egress end backwards,
/// routes toward ingress from the ingress end forwards, so a switched hop always hands packets to
/// a hop that is switched already (old links still exist meanwhile). In tc/xdp mode the routes
/// serve the functions' own traffic only; the forwarder's entries switch separately.
fn switch_routes(
    new: &ChainPlan,
    delta: &Delta,
    opened: &Opened,
    rt: &tokio::runtime::Runtime,
) -> Result<(), ObjectError> {
    let order: Vec<usize> = delta.fresh.union(&delta.touched).copied().collect();
    let backwards: Vec<usize> = order.iter().rev().copied().collect();
    // Every route of a hop goes one way: toward egress (the egress subnet, and extra
    // destinations such as a load balancer's VIP beyond it) or toward ingress.
    rt.block_on(async {
        objects::replace_routes(new, &backwards, opened, Some(Direction::Forward)).await?;
        objects::replace_routes(new, &order, opened, Some(Direction::Reverse)).await
    })
}

/// Deletes the old links, the routes only the old plan had, and the namespaces of removed
/// functions, and (tc/xdp) forgets their forwarder rows and link pins. Returns what could not
/// be removed.
fn remove_old(
    old: &ChainPlan,
    new: &ChainPlan,
    delta: &Delta,
    opened: &Opened,
    rt: &tokio::runtime::Runtime,
) -> Vec<String> {
    let mut errors = delete_links(&delta.gone, old, new, opened, rt);
    // Routes only the old plan had (a removed VIP's, a removed routed backend's).
    let touched: Vec<usize> = delta.touched.iter().copied().collect();
    errors.extend(rt.block_on(objects::delete_stale_routes(old, new, &touched, opened)));
    let new_names = names_of(new);
    for hop in old
        .hops
        .iter()
        .filter(|h| h.netns.created && !new_names.contains(h.name.as_str()))
    {
        if let Err(e) = netns::delete(&hop.netns.name) {
            errors.push(e.to_string());
        }
    }
    if new.fastpath != FastPath::Kernel {
        let bpf_dir = names::chain_bpf_dir(&new.chain);
        if let Err(e) = ebpf::forget_interfaces(&bpf_dir, &ifindexes(&delta.gone)) {
            errors.push(e.to_string());
        }
        // The old path has drained: sources only it accepted go.
        if let Err(e) = ebpf::sync_sources(new, &bpf_dir, ebpf::Prune::Yes) {
            errors.push(e.to_string());
        }
    }
    errors
}

/// The ends of `links` (of plan `of`) that live in a hop `keep` also has, with that hop's index
/// in `keep`.
fn ends_in<'a>(
    links: &[&'a LinkPlan],
    of: &ChainPlan,
    keep: &ChainPlan,
) -> Vec<(usize, &'a LinkEnd)> {
    links
        .iter()
        .flat_map(|l| [&l.out, &l.inn])
        .filter_map(|e| keep.hop(&of.hops[e.hop].name).map(|(i, _)| (i, e)))
        .collect()
}

/// Every interface of `hops` in `plan`, with its hop.
fn ends_of<'a>(plan: &'a ChainPlan, hops: &[usize]) -> Vec<(usize, &'a LinkEnd)> {
    hops.iter()
        .flat_map(|&h| plan.interfaces_of(h).map(move |e| (h, e)))
        .collect()
}

/// Deletes `links` (of plan `of`) from the hops of `keep`, and in kernel mode the steering of
/// their ends there. Deleting one end of a veth pair deletes both at once; a link with neither
/// end in `keep` goes with its namespaces (which the kernel cleans up in the background).
fn delete_links(
    links: &[&LinkPlan],
    of: &ChainPlan,
    keep: &ChainPlan,
    opened: &Opened,
    rt: &tokio::runtime::Runtime,
) -> Vec<String> {
    let in_keep = |e: &LinkEnd| keep.hop(&of.hops[e.hop].name).map(|(i, _)| i);
    let names: Vec<(usize, String)> = links
        .iter()
        .filter_map(|l| {
            [&l.out, &l.inn]
                .into_iter()
                .find_map(|e| Some((in_keep(e)?, e.ifname.clone())))
        })
        .collect();
    let ends = ends_in(links, of, keep);
    rt.block_on(async {
        let mut errors = objects::delete_interfaces(keep, &names, opened).await;
        if keep.fastpath == FastPath::Kernel {
            errors.extend(objects::unsteer(of, &ends, opened).await);
        }
        errors
    })
}

/// Times the steps of an apply, for the debug log.
struct Steps<'a> {
    chain: &'a str,
    last: Instant,
}

impl<'a> Steps<'a> {
    fn new(chain: &'a str) -> Self {
        Steps {
            chain,
            last: Instant::now(),
        }
    }

    fn done(&mut self, step: &str) {
        let now = Instant::now();
        tracing::debug!(chain = %self.chain, "apply: {step} in {:.1?}", now - self.last);
        self.last = now;
    }
}

/// How long the old path stays after the switch, for packets already on it.
const DRAIN: Duration = Duration::from_millis(20);

/// The interface indexes of both ends of `links`.
fn ifindexes(links: &[&LinkPlan]) -> BTreeSet<u32> {
    links
        .iter()
        .flat_map(|l| [l.out.ifindex, l.inn.ifindex])
        .collect()
}

/// Best-effort return from a half-applied `new` to `old`: old routes back, new links and new
/// namespaces removed. `changed`: the functions whose new settings went live. Returns what could
/// not be undone.
fn undo(
    change: &Transition,
    rt: &tokio::runtime::Runtime,
    options: &UpOptions,
    foreign: &[String],
    changed: &[String],
) -> Vec<String> {
    let (old, new, delta) = (change.old, change.new, change.delta);
    let mut errors = Vec::new();
    // Settings back first (in kernel mode with the old interfaces only, as before). The restored
    // stage instance carries over the counters of the instance readers find: the failed
    // change's where it went live (it counted on from the old totals it carried: the old
    // instance's totals would miss what it counted since, and its maps are gone), else the old
    // one's, still live.
    for s in change.settings {
        let live = if changed.contains(&s.name) { new } else { old };
        if let Err(e) = kinds::start_one(old, &[], &s.name, s.old.as_ref(), false, Some(live)) {
            errors.push(e.to_string());
        }
    }
    for &h in &delta.fresh {
        if let Some(hop) = new.hops.get(h)
            && let Err(e) = kinds::stop(new, &hop.name)
        {
            errors.push(e.to_string());
        }
    }
    let all: BTreeSet<usize> = old
        .hops
        .iter()
        .enumerate()
        .filter(|(_, h)| netns::exists(&h.netns.name))
        .map(|(i, _)| i)
        .collect();
    let (opened, result) = open(old, &all, false, rt, options);
    if let Err(e) = result {
        errors.push(e.to_string());
    }
    let hops: Vec<usize> = all.iter().copied().collect();
    if let Err(e) = rt.block_on(objects::replace_routes(old, &hops, &opened, None)) {
        errors.push(e.to_string());
    }
    let bpf_dir = names::chain_bpf_dir(&old.chain);
    let fast = old.fastpath != FastPath::Kernel;
    if fast && let Err(e) = ebpf::switch_fastpath(old, &bpf_dir) {
        errors.push(e.to_string());
    }
    errors.extend(delete_links(&delta.added, new, old, &opened, rt));
    for hop in delta
        .new_namespaces(new)
        .filter(|h| !foreign.contains(&h.netns.name))
    {
        if let Err(e) = netns::delete(&hop.netns.name) {
            errors.push(e.to_string());
        }
    }
    if fast && let Err(e) = ebpf::forget_interfaces(&bpf_dir, &ifindexes(&delta.added)) {
        errors.push(e.to_string());
    }
    if fast && let Err(e) = ebpf::sync_sources(old, &bpf_dir, ebpf::Prune::Yes) {
        errors.push(e.to_string());
    }
    if !fast {
        errors.extend(rt.block_on(objects::unsteer(old, &ends_of(old, &hops), &opened)));
    }
    errors
}
