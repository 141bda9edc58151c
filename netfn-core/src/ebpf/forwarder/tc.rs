//! The TC forwarder (`nf_fwd_tc`): loading, pinning and attaching it with TCX. (Netlink clsact
//! attaching is shared with the counter: [`crate::ebpf::attach_pinned`].)

use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use netfn_common::FWD_TC_PROGRAM;

use super::{TCX_LINK_PIN_PREFIX, link_pin};
use crate::ebpf::{AttachedInterface, EbpfError, for_each_tc_target};
use crate::plan::ChainPlan;
use crate::plan::names;

/// (namespace path, [interface]) of every function interface that `only` selects (by
/// ifindex): one target per interface, so that attaches in one namespace run in parallel too
/// (a TCX attach waits for an RCU grace period, which dominates an apply's attach time).
pub(super) fn targets(plan: &ChainPlan, only: &dyn Fn(u32) -> bool) -> Vec<(PathBuf, Vec<String>)> {
    (1..=plan.function_count())
        .filter_map(|h| Some((h, plan.hops.get(h)?)))
        .flat_map(|(h, hop)| {
            plan.interfaces_of(h)
                .filter(|i| only(i.ifindex))
                .map(|i| (names::netns_path(&hop.netns.name), vec![i.ifname.clone()]))
        })
        .collect()
}

/// Attaches the pinned TC program with TCX on ingress of every target and pins each link (see
/// [`TcAttach::Tcx`]); a link pinned already gets the program swapped in place.
pub(super) fn attach_tcx(
    program_pin: &Path,
    targets: &[(PathBuf, Vec<String>)],
    bpf_dir: &Path,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    for_each_tc_target(program_pin, targets, |program, netns, interface| {
        attach_tcx_here(program, bpf_dir, interface).map_err(|source| EbpfError::Attach {
            program: FWD_TC_PROGRAM,
            netns: netns.to_path_buf(),
            interface: interface.to_string(),
            source: Box::new(source),
        })
    })
}

fn attach_tcx_here(
    program: &mut SchedClassifier,
    bpf_dir: &Path,
    interface: &str,
) -> Result<(u32, bool), ProgramError> {
    let ifindex =
        nix::net::if_::if_nametoindex(interface).map_err(|e| ProgramError::UnknownInterface {
            name: format!("{interface} ({e})"),
        })?;
    let pin = link_pin(bpf_dir, TCX_LINK_PIN_PREFIX, ifindex);
    let existing = PinnedLink::from_pin(&pin)
        .ok()
        .and_then(|pinned| SchedClassifierLink::try_from(FdLink::from(pinned)).ok());
    let replaced = existing.is_some();
    let link_id = match existing {
        Some(link) => program.attach_to_link(link)?,
        None => {
            let _ = std::fs::remove_file(&pin);
            program.attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )?
        }
    };
    let link = program.take_link(link_id)?;
    match FdLink::try_from(link) {
        Ok(fd_link) if replaced => drop(fd_link),
        Ok(fd_link) => {
            fd_link
                .pin(&pin)
                .map_err(|e| ProgramError::IOError(io::Error::other(e.to_string())))?;
        }
        Err(_) => {}
    }
    Ok((ifindex, replaced))
}
