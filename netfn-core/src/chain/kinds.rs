//! What the function kinds add to a running chain, through the seam: kernel objects of their
//! own and processes in any mode, in tc/xdp chains each function's per-packet stage
//! ([`crate::ebpf::load_stage`]), in kernel mode its kernel form (an nftables ruleset loaded in
//! its namespace). Called by `up` for every function and by `apply`
//! for the functions it adds or changes; core learns nothing about the kinds here but what the
//! seam answers.

use super::processes::Restart;
use crate::ebpf;
use crate::function::{FunctionConfig, FunctionContext, ProbePath, RecordedSettings, Registry};
use crate::kernel::nft;
use crate::kernel::objects::ObjectError;
use crate::plan::names::{self, DEFAULT_PROBE_PORT};
use crate::plan::{ChainPlan, HopRole};
use crate::spec::{ChainSpec, FastPath};

/// Starts what the kinds of `spec`'s functions that `only` selects (by name) add to `plan`.
/// `fresh`: the functions are new (a stage starts with empty state, never a slot's old one).
pub(crate) fn start(
    plan: &ChainPlan,
    spec: &ChainSpec,
    only: &dyn Fn(&str) -> bool,
    fresh: bool,
) -> Result<(), ObjectError> {
    for f in spec.functions.iter().filter(|f| only(&f.name)) {
        start_one(plan, &[], &f.name, f.config.as_ref(), fresh, None)?;
    }
    Ok(())
}

/// Starts (or, with `fresh` false, changes in place) what the kind of function `name` adds.
/// A kernel form also matches the function's interfaces in the plans of `also` (an apply's old
/// plan, while packets still arrive on the old links). A change in place names the plan whose
/// settings the function's live stage instance runs by, `live` (the new instance carries its
/// counters over by them, [`FunctionContext::previous`]).
pub(crate) fn start_one(
    plan: &ChainPlan,
    also: &[&ChainPlan],
    name: &str,
    config: &dyn FunctionConfig,
    fresh: bool,
    live: Option<&ChainPlan>,
) -> Result<(), ObjectError> {
    let Some((h, hop)) = plan.hop(name) else {
        return Ok(());
    };
    let Some(mut ctx) = context(plan, h) else {
        return Ok(());
    };
    if !fresh {
        ctx.previous = live.and_then(|p| recorded(p, name)).map(|(_, s)| s.clone());
    }
    for other in also {
        if let Some(o) = other.hop(name).and_then(|(oh, _)| context(other, oh)) {
            for (mine, theirs) in [
                (&mut ctx.ingress_ifs, o.ingress_ifs),
                (&mut ctx.egress_ifs, o.egress_ifs),
            ] {
                for i in theirs {
                    if !mine.contains(&i) {
                        mine.push(i);
                    }
                }
            }
        }
    }
    config
        .configure(&ctx, fresh)
        .map_err(|why| ObjectError::Configure {
            function: name.to_string(),
            why,
        })?;
    if let Some(args) = config.process(&ctx) {
        let running = super::processes::running(&plan.chain, name).is_some();
        if !fresh && running && super::processes::other_binary(&plan.chain, name).is_some() {
            // It runs another netfn binary (after an upgrade): it starts again on this one with
            // the new settings, keeping what it keeps across restarts (taken in place, they
            // would leave it on the old binary).
            super::processes::restart(&plan.chain, name, &args)
                .map_err(|e| ObjectError::Process(Box::new(e)))?;
        } else {
            // A changed function's running process takes the new settings in place if its
            // kind can; else it starts again with them.
            let updated = !fresh
                && running
                && match config.update_process(&ctx) {
                    Some(Ok(())) => true,
                    Some(Err(why)) => {
                        tracing::warn!(
                            "function {name}: its process could not take the change in place ({why}); starting it again"
                        );
                        false
                    }
                    None => false,
                };
            if !updated {
                if !fresh {
                    super::processes::stop(&plan.chain, name);
                }
                super::processes::start(&plan.chain, name, &args)
                    .map_err(|e| ObjectError::Process(Box::new(e)))?;
            }
        }
    }
    if plan.fastpath == FastPath::Kernel {
        if let Some(form) = config.kernel_form(&ctx) {
            let failed = |source| ObjectError::KernelForm {
                function: name.to_string(),
                source: Box::new(source),
            };
            // The ruleset first: it loads what the sysctls belong to (nf_conntrack).
            nft::load(&hop.netns.name, &form.nftables).map_err(failed)?;
            nft::sysctls(&hop.netns.name, &form.sysctls).map_err(failed)?;
        }
        return Ok(());
    }
    if let (Some(stage), Some(slot)) = (config.stage(), plan.function_slot(h)) {
        let bpf_dir = names::chain_bpf_dir(&plan.chain);
        let load = ebpf::load_stage(plan, &bpf_dir, &ctx, slot, stage, fresh)?;
        tracing::debug!(
            "chain {}: function {name}: stage loaded in {:.2?} ({})",
            plan.chain,
            load.elapsed,
            if load.fresh {
                "new state"
            } else {
                "state kept"
            }
        );
    }
    Ok(())
}

/// Loads this netfn's eBPF programs in place of the ones running `plan` (brought up by another
/// netfn build, see [`crate::ebpf::object_build`]): in tc/xdp mode the forwarder and every
/// function's stage, in kernel mode the interface counter. Each keeps its maps, so connections,
/// flows and counters carry over, and each interface or stage slot switches in one step. The
/// functions' settings are the recorded ones. Every map that carries over is checked first: one
/// of another layout refuses the reload before anything changes.
pub(crate) fn reload(plan: &ChainPlan, kinds: &Registry) -> Result<(), ObjectError> {
    let stages = check_reload(plan, kinds)?;
    if plan.fastpath == FastPath::Kernel {
        return crate::kernel::objects::attach_counters(plan, &|_| true);
    }
    let bpf_dir = names::chain_bpf_dir(&plan.chain);
    let log_level = crate::ebpf::FastpathOptions::from_env()
        .map(|o| o.log_level)
        .unwrap_or_default();
    ebpf::reload_fastpath(plan, &bpf_dir, log_level)?;
    for (ctx, slot, config) in &stages {
        if let Some(stage) = config.stage() {
            ebpf::load_stage(plan, &bpf_dir, ctx, *slot, stage, false)?;
        }
    }
    Ok(())
}

/// A function's stage as a reload loads it again: its context, slot and config.
type Reloaded = (FunctionContext, u32, std::sync::Arc<dyn FunctionConfig>);

/// What [`reload`] checks before it loads anything (and `apply --dry-run` with it): the maps
/// that carry over have this netfn's layouts (flags too) and the plan's sizes, and a stage's kept
/// maps whose entries are found by index the number the new instance gives them. Returns the
/// stages to load.
pub(crate) fn check_reload(
    plan: &ChainPlan,
    kinds: &Registry,
) -> Result<Vec<Reloaded>, ObjectError> {
    let bpf_dir = names::chain_bpf_dir(&plan.chain);
    let declared = ebpf::Declared::of_object()?;
    if plan.fastpath == FastPath::Kernel {
        let pin = bpf_dir.join(ebpf::IF_COUNTERS_PIN);
        declared.check(netfn_common::IF_COUNTERS_MAP, &pin)?;
        return Ok(Vec::new());
    }
    let mut stages = Vec::new();
    for (h, hop) in plan.hops.iter().enumerate() {
        let HopRole::Function { kind, settings } = &hop.role else {
            continue;
        };
        let config = load(kinds, &hop.name, kind, settings)?;
        if let (Some(mut ctx), Some(slot)) = (context(plan, h), plan.function_slot(h)) {
            // The same settings: the new instance carries the live one's counters over.
            ctx.previous = Some(settings.clone());
            stages.push((ctx, slot, config));
        }
    }
    ebpf::check_chain_pins(plan, &bpf_dir, &declared)?;
    for (ctx, slot, config) in &stages {
        if let Some(stage) = config.stage() {
            let dir = ebpf::stage_dir(&bpf_dir, *slot);
            // The sizes the new instance gives its maps (load_stage's), the kept ones among them.
            let sizes = stage
                .prepare(ctx)
                .map_err(|source| ebpf::EbpfError::Stage {
                    function: ctx.function.clone(),
                    source,
                })?
                .map_sizes();
            for name in stage.kept_maps() {
                let entries = sizes.iter().find(|(n, _)| n == name).map(|(_, len)| *len);
                declared.check_kept(name, &dir.join(name), entries.map(|len| len.max(1)))?;
            }
        }
    }
    Ok(stages)
}

/// The config of function `name` (of kind `kind`) from its recorded settings.
fn load(
    kinds: &Registry,
    name: &str,
    kind: &str,
    settings: &RecordedSettings,
) -> Result<std::sync::Arc<dyn FunctionConfig>, ObjectError> {
    kinds
        .load(kind, settings)
        .map_err(|why| ObjectError::Configure {
            function: name.to_string(),
            why,
        })
}

/// The function at hop `h` as its kind's running parts see it.
fn context(plan: &ChainPlan, h: usize) -> Option<FunctionContext> {
    let before = plan.links.get(h.checked_sub(1)?)?;
    let after = plan.links.get(h)?;
    let first = plan.links.first()?;
    let last = plan.links.last()?;
    let (ingress_subnet, egress_subnet) = plan.endpoint_subnets();
    Some(FunctionContext {
        chain: plan.chain.clone(),
        function: plan.hops.get(h)?.name.clone(),
        ingress_ifs: vec![before.inn.ifname.clone()],
        egress_ifs: vec![after.out.ifname.clone()],
        ingress_subnet,
        egress_subnet,
        probe: ProbePath {
            src: first.out.address.addr(),
            dst: last.inn.address.addr(),
            port: DEFAULT_PROBE_PORT,
        },
        previous: None,
    })
}

/// The processes of `spec`'s functions that `only` selects (by name), as `plan` runs them, that
/// do not run or run another netfn binary than this one: what `apply` (for the functions it does
/// not change) and an unchanged `up` start on this one. The file's settings are the running
/// ones for such a function, so nothing is loaded from the record.
pub(crate) fn processes_to_start(
    plan: &ChainPlan,
    spec: &ChainSpec,
    only: &dyn Fn(&str) -> bool,
) -> Vec<Restart> {
    let mut out = Vec::new();
    for f in spec.functions.iter().filter(|f| only(&f.name)) {
        let Some(args) = plan
            .hop(&f.name)
            .and_then(|(h, _)| context(plan, h))
            .and_then(|ctx| f.config.process(&ctx))
        else {
            continue;
        };
        let running = match super::processes::running(&plan.chain, &f.name) {
            None => None,
            Some(_) => match super::processes::other_binary(&plan.chain, &f.name) {
                Some(other) => Some(other),
                None => continue,
            },
        };
        out.push(Restart {
            function: f.name.clone(),
            running,
            args,
        });
    }
    out
}

/// Starts the processes of `restarts` on this netfn binary (again, for one that runs another),
/// one after the other (each waits until the new one is ready). The caller holds the chain's
/// lock.
pub(crate) fn restart(plan: &ChainPlan, restarts: &[Restart]) -> Result<(), ObjectError> {
    for r in restarts {
        let started = match &r.running {
            Some(_) => super::processes::restart(&plan.chain, &r.function, &r.args),
            None => super::processes::start(&plan.chain, &r.function, &r.args),
        };
        let pid = started.map_err(|e| ObjectError::Process(Box::new(e)))?;
        tracing::debug!(
            "chain {}: function {}'s process started on this netfn binary: pid {pid} (was {})",
            plan.chain,
            r.function,
            r.running
                .as_ref()
                .map_or("not running".to_string(), |o| format!("pid {}", o.pid))
        );
    }
    Ok(())
}

/// Stops the stage of the function `name` of `plan` (tc/xdp) and removes what it kept; its
/// kernel form goes with its namespace.
pub(crate) fn stop(plan: &ChainPlan, name: &str) -> Result<(), ObjectError> {
    let Some((h, hop)) = plan.hop(name) else {
        return Ok(());
    };
    super::processes::stop(&plan.chain, name);
    if plan.fastpath == FastPath::Kernel || !hop.stage {
        return Ok(());
    }
    if let Some(slot) = plan.function_slot(h) {
        ebpf::forget_stage(&names::chain_bpf_dir(&plan.chain), slot)?;
    }
    Ok(())
}

/// The recorded settings of function `name` of `plan`, with its kind.
pub(crate) fn recorded<'p>(
    plan: &'p ChainPlan,
    name: &str,
) -> Option<(&'p str, &'p RecordedSettings)> {
    match &plan.hop(name)?.1.role {
        HopRole::Function { kind, settings } => Some((kind, settings)),
        _ => None,
    }
}
