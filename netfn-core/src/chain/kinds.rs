//! What the function kinds add to a running chain, through the seam: in tc/xdp chains each
//! function's per-packet stage ([`crate::ebpf::load_stage`]), in kernel mode its kernel form (an
//! nftables ruleset loaded in its namespace). Called by `up` for every function and by `apply`
//! for the functions it adds or changes; core learns nothing about the kinds here but what the
//! seam answers.

use crate::ebpf;
use crate::function::{FunctionConfig, KernelContext};
use crate::kernel::nft;
use crate::kernel::objects::ObjectError;
use crate::plan::{ChainPlan, names};
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
        start_one(plan, &f.name, f.config.as_ref(), fresh)?;
    }
    Ok(())
}

/// Starts (or, with `fresh` false, changes in place) what the kind of function `name` adds.
pub(crate) fn start_one(
    plan: &ChainPlan,
    name: &str,
    config: &dyn FunctionConfig,
    fresh: bool,
) -> Result<(), ObjectError> {
    let Some((h, hop)) = plan.hop(name) else {
        return Ok(());
    };
    if plan.fastpath == FastPath::Kernel {
        let Some(ctx) = kernel_context(plan, h) else {
            return Ok(());
        };
        if let Some(ruleset) = config.kernel_form(&ctx) {
            nft::load(&hop.netns.name, &ruleset).map_err(|source| ObjectError::KernelForm {
                function: name.to_string(),
                source,
            })?;
        }
        return Ok(());
    }
    if let (Some(stage), Some(slot)) = (config.stage(), plan.function_slot(h)) {
        let bpf_dir = names::chain_bpf_dir(&plan.chain);
        let load = ebpf::load_stage(plan, &bpf_dir, name, slot, stage, fresh)?;
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

/// The kernel form's view of the function at hop `h`.
fn kernel_context(plan: &ChainPlan, h: usize) -> Option<KernelContext<'_>> {
    let before = plan.links.get(h.checked_sub(1)?)?;
    let after = plan.links.get(h)?;
    let (ingress_subnet, egress_subnet) = plan.endpoint_subnets();
    Some(KernelContext {
        chain: &plan.chain,
        function: &plan.hops.get(h)?.name,
        ingress_if: &before.inn.ifname,
        egress_if: &after.out.ifname,
        ingress_subnet,
        egress_subnet,
    })
}
