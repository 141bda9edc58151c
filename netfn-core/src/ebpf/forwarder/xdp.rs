//! The XDP forwarder (`nf_fwd_xdp`) and the pass program (`nf_xdp_pass`): on one thread per
//! namespace, fills that namespace's devmap entries (a devmap resolves ifindexes in the namespace
//! of the thread that updates it), turns tx checksum offload off, attaches `nf_fwd_xdp` to every
//! function interface and `nf_xdp_pass` to every endpoint interface (a veth that receives XDP
//! redirects needs an XDP program, or frames vanish), and pins each XDP link under the chain
//! directory (`xdp_link_<ifindex>`): a pinned link keeps the program attached after the process
//! exits; removing the pin (or the interface) detaches it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aya::maps::{DevMap, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::XdpLink;
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya_obj::programs::XdpAttachType;
use netfn_common::{FWD_XDP_PROGRAM, XDP_PASS_PROGRAM};

use super::table::{map_error, pinned_map};
use super::{FWD_DEVMAP_PIN, XDP_LINK_PIN_PREFIX, link_pin};
use crate::ebpf::{AttachedInterface, EbpfError, workers};
use crate::kernel::ethtool;
use crate::plan::names;
use crate::plan::{self, ChainPlan};

/// One namespace's XDP work.
struct XdpTarget {
    netns: PathBuf,
    /// (ifname, ifindex, forwarder?): function interfaces get the forwarder and a devmap entry,
    /// endpoint interfaces the pass program.
    interfaces: Vec<(String, u32, bool)>,
}

/// The XDP work in every namespace with an interface that `only` selects (by ifindex).
fn targets(plan: &ChainPlan, only: &dyn Fn(u32) -> bool) -> Vec<XdpTarget> {
    let n = plan.function_count();
    plan.hops
        .iter()
        .enumerate()
        .map(|(h, hop)| XdpTarget {
            netns: names::netns_path(&hop.netns.name),
            interfaces: plan
                .interfaces_of(h)
                .filter(|i| only(i.ifindex))
                .map(|i| (i.ifname.clone(), i.ifindex, (1..=n).contains(&h)))
                .collect(),
        })
        .filter(|t| !t.interfaces.is_empty())
        .collect()
}

/// Attaches the pinned forwarder to every function interface of `plan` that `only` selects, and
/// the pinned pass program to every such endpoint interface; see the module docs.
pub(super) fn attach(
    plan: &ChainPlan,
    bpf_dir: &Path,
    only: &dyn Fn(u32) -> bool,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    let open = |name: &'static str| {
        let path = bpf_dir.join(name);
        Xdp::from_pin(&path, XdpAttachType::Interface).map_err(|source| EbpfError::Pinned {
            path,
            source: Box::new(source),
        })
    };
    // The workers share the two programs; only the attach syscall itself holds the lock.
    let (mut fwd, mut pass) = (open(FWD_XDP_PROGRAM)?, open(XDP_PASS_PROGRAM)?);
    let programs = Mutex::new((&mut fwd, &mut pass));

    let targets = targets(plan, only);
    let devmap_pin = bpf_dir.join(FWD_DEVMAP_PIN);
    let threads = workers::NETNS_THREADS.min(targets.len()).max(1);
    let mut devmaps = Vec::with_capacity(threads);
    for _ in 0..threads {
        devmaps.push(open_devmap(&devmap_pin)?);
    }
    let paths: Vec<&Path> = targets.iter().map(|t| t.netns.as_path()).collect();
    let per_netns = workers::in_namespaces(&paths, devmaps, |devmap, index| {
        let target = &targets[index];
        // Checksums and devmap entries first (resolved in this namespace), then the programs.
        let mut results = Vec::with_capacity(target.interfaces.len());
        for (ifname, ifindex, forwarder) in &target.interfaces {
            if let Err(source) = disable_tx_checksum(ifname) {
                results.push(Err(EbpfError::Interface {
                    netns: target.netns.clone(),
                    interface: ifname.clone(),
                    source,
                }));
                continue;
            }
            if *forwarder && let Err(e) = set_devmap(devmap, *ifindex) {
                results.push(Err(EbpfError::DevMap {
                    netns: target.netns.clone(),
                    interface: ifname.clone(),
                    source: Box::new(e),
                }));
                continue;
            }
            results.push(Ok(()));
        }
        target
            .interfaces
            .iter()
            .zip(results)
            .map(|((ifname, ifindex, forwarder), devmap_result)| {
                devmap_result?;
                let name = if *forwarder {
                    FWD_XDP_PROGRAM
                } else {
                    XDP_PASS_PROGRAM
                };
                attach_xdp_here(&programs, *forwarder, bpf_dir, ifname, *ifindex)
                    .map(|replaced| (*ifindex, replaced))
                    .map_err(|source| EbpfError::AttachXdp {
                        program: name,
                        netns: target.netns.clone(),
                        interface: ifname.clone(),
                        source: Box::new(source),
                    })
            })
            .collect::<Vec<_>>()
    })?;

    let names: Vec<(PathBuf, Vec<String>)> = targets
        .iter()
        .map(|t| {
            let ifnames = t
                .interfaces
                .iter()
                .map(|(name, _, _)| name.clone())
                .collect();
            (t.netns.clone(), ifnames)
        })
        .collect();
    crate::ebpf::collect_attached(&names, per_netns)
}

/// Turns transmit checksum offload off on `ifname` (in the calling thread's namespace), as
/// `ethtool -K IF tx off` does.
///
/// Needed in XDP mode: a veth hands locally generated UDP and TCP packets over with
/// `CHECKSUM_PARTIAL` (the L4 checksum left to "hardware"); an XDP redirect turns the skb into a
/// bare frame and that promise is lost, so the receiver would see a wrong checksum and drop the
/// packet. With offload off, the sending stack computes every checksum in full. (TC mode keeps
/// the skb, and needs none of this.)
fn disable_tx_checksum(ifname: &str) -> io::Result<()> {
    ethtool::set_tx_checksum(ifname, false)
}

fn open_devmap(path: &Path) -> Result<DevMap<MapData>, EbpfError> {
    DevMap::try_from(pinned_map(path)?).map_err(map_error(path))
}

/// Sets the devmap entry of interface `ifindex` (resolved in the calling thread's namespace).
fn set_devmap(
    devmap: &mut DevMap<MapData>,
    ifindex: u32,
) -> Result<(), aya::maps::xdp::XdpMapError> {
    let index = plan::interface_slot(ifindex).unwrap_or(u32::MAX);
    devmap.set(index, ifindex, None, 0)
}

/// Attaches the forwarder (or the pass program) to `ifindex` in the calling thread's namespace
/// and pins the link; if a link is pinned already, swaps its program in place. Returns whether
/// it replaced.
fn attach_xdp_here(
    programs: &Mutex<(&mut Xdp, &mut Xdp)>,
    forwarder: bool,
    bpf_dir: &Path,
    ifname: &str,
    ifindex: u32,
) -> Result<bool, XdpAttachError> {
    let pin = link_pin(bpf_dir, XDP_LINK_PIN_PREFIX, ifindex);
    let mut guard = programs.lock().map_err(|_| XdpAttachError::Poisoned)?;
    let (fwd, pass) = &mut *guard;
    let program: &mut Xdp = if forwarder { fwd } else { pass };

    let existing = if pin.exists() {
        match PinnedLink::from_pin(&pin) {
            Ok(pinned) => {
                let fd_link: FdLink = pinned.into();
                XdpLink::try_from(fd_link).ok()
            }
            Err(e) => {
                tracing::warn!("{}: {e}; attaching afresh", pin.display());
                None
            }
        }
    } else {
        None
    };
    let replaced = existing.is_some();
    let link_id = match existing {
        Some(link) => program.attach_to_link(link)?,
        None => {
            let _ = std::fs::remove_file(&pin);
            program.attach_to_if_index(ifindex, XdpMode::Default)?
        }
    };
    let link = program.take_link(link_id)?;
    drop(guard);
    match FdLink::try_from(link) {
        Ok(fd_link) if replaced => drop(fd_link), // still pinned: the pin holds the link
        Ok(fd_link) => {
            fd_link.pin(&pin).map_err(|source| XdpAttachError::Pin {
                path: pin.clone(),
                source,
            })?;
        }
        // The kernel had no XDP links and aya fell back to netlink: that attachment is not owned
        // by any fd and stays until detached or the interface goes.
        Err(_) => {}
    }
    tracing::debug!("XDP program attached to {ifname} (ifindex {ifindex})");
    Ok(replaced)
}

/// Why one XDP attach failed.
#[derive(Debug, thiserror::Error)]
pub enum XdpAttachError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("cannot pin the XDP link at {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("another namespace worker panicked while attaching")]
    Poisoned,
}
