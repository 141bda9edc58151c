//! A plan's kernel objects besides eBPF: namespaces, veths, addresses, routes, sysctls and the
//! kernel-mode steering rules, created and removed as the plan says (never decided here).
//!
//! Work is batched: namespaces are made by a few worker threads (each `unshare`s once per
//! namespace and opens that namespace's netlink socket on the spot), veths are created from one
//! socket in netfn's own namespace with both ends placed directly into their namespaces, and
//! addresses and routes are sent to every namespace's socket concurrently.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt, stream};

use crate::ebpf::{self, EbpfError};
use crate::kernel::netlink::{Netlink, NetlinkError};
use crate::kernel::netns::{self, NetnsError};
use crate::plan::names;
use crate::plan::{ChainPlan, HopPlan};

/// How many netlink requests are in flight at once.
const IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("hop {hop}: {source}")]
    Netlink { hop: String, source: NetlinkError },
    #[error(transparent)]
    Ebpf(Box<EbpfError>),
    /// `out` and `inn` read "NAME (index N) in namespace NS".
    #[error(
        "cannot create the veth pair {out} / {inn}: an interface with one of these names or indexes exists already, and netfn did not make it; find it with `ip -n NAMESPACE -d link`, remove or renumber it, and run the command again"
    )]
    InterfaceTaken { out: String, inn: String },
    #[error("function {function}: its kernel-mode rules: {source}")]
    KernelForm {
        function: String,
        #[source]
        source: Box<super::nft::NftError>,
    },
    /// A kind's own kernel objects in its namespace (`FunctionConfig::configure`); `why` is the
    /// kind's message.
    #[error("function {function}: {why}")]
    Configure { function: String, why: String },
    /// A kind's own process (see `crate::chain::processes`).
    #[error(transparent)]
    Process(Box<crate::chain::processes::ProcessError>),
    /// Writing the chain's record failed once its objects were made.
    #[error(transparent)]
    Record(Box<crate::chain::state::StateError>),
    /// A test's failpoint ([`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl From<EbpfError> for ObjectError {
    fn from(e: EbpfError) -> Self {
        ObjectError::Ebpf(Box::new(e))
    }
}

/// An open namespace: a handle on it and a netlink socket inside it.
pub struct OpenNs {
    pub fd: OwnedFd,
    pub netlink: Netlink,
}

/// What `create_namespaces` made, by hop index, and which names turned out to be someone else's.
#[derive(Default)]
pub struct Opened {
    pub hops: BTreeMap<usize, OpenNs>,
    pub foreign: Vec<String>,
}

/// sysctls of every namespace netfn creates. Chains are IPv4 for now: IPv6 is off so that router
/// solicitations and DAD do not wander through the chain.
const BASE_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv6/conf/all/disable_ipv6", "1"),
    ("net/ipv6/conf/default/disable_ipv6", "1"),
];

fn sysctls_for(hop: &HopPlan) -> Vec<(&'static str, &'static str)> {
    let mut v = BASE_SYSCTLS.to_vec();
    if hop.forwarding {
        v.push(("net/ipv4/ip_forward", "1"));
    }
    v
}

/// Creates the namespaces netfn owns and opens the existing endpoint namespaces. On error, what
/// was created is still returned in `opened` so the caller can roll it back. `made` is called
/// (on a worker thread) as each one is ready, for a progress count.
pub fn create_namespaces(
    plan: &ChainPlan,
    rt: &tokio::runtime::Handle,
    workers: usize,
    made: &(dyn Fn() + Sync),
) -> (Opened, Result<(), ObjectError>) {
    open_hops(plan, rt, workers, true, &|_, _| true, made)
}

/// Like [`create_namespaces`], for the hops that `only(index, hop)` selects; with `create` false,
/// it opens namespaces that exist already instead of creating them.
pub fn open_hops(
    plan: &ChainPlan,
    rt: &tokio::runtime::Handle,
    workers: usize,
    create: bool,
    only: &(dyn Fn(usize, &HopPlan) -> bool + Sync),
    made: &(dyn Fn() + Sync),
) -> (Opened, Result<(), ObjectError>) {
    let opened = Mutex::new(Opened::default());
    let first_error: Mutex<Option<ObjectError>> = Mutex::new(None);
    let work: Vec<(usize, &HopPlan)> = plan
        .hops
        .iter()
        .enumerate()
        .filter(|(h, hop)| only(*h, hop))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let fail = |e: ObjectError| {
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, work.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(h, hop)) = work.get(i) else { break };
                    if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                        break;
                    }
                    match open_hop(hop, rt, create) {
                        Ok(ns) => {
                            if let Ok(mut o) = opened.lock() {
                                o.hops.insert(h, ns);
                            }
                            made();
                        }
                        Err(e) => {
                            if let ObjectError::Netns(NetnsError::Exists { name }) = &e
                                && let Ok(mut o) = opened.lock()
                            {
                                o.foreign.push(name.clone());
                            }
                            fail(e);
                        }
                    }
                }
            });
        }
    });
    let opened = opened.into_inner().unwrap_or_default();
    match first_error.into_inner().ok().flatten() {
        Some(e) => (opened, Err(e)),
        None => (opened, Ok(())),
    }
}

/// Runs on a namespace worker thread: creates the hop's namespace (or enters it, when it exists
/// already or is the operator's) and opens its netlink socket there.
fn open_hop(
    hop: &HopPlan,
    rt: &tokio::runtime::Handle,
    create: bool,
) -> Result<OpenNs, ObjectError> {
    let netlink_err = |source| ObjectError::Netlink {
        hop: hop.name.clone(),
        source,
    };
    if hop.netns.created && create {
        let fd = netns::create_here(&hop.netns.name, &sysctls_for(hop))?;
        let netlink = Netlink::here(rt).map_err(netlink_err)?;
        Ok(OpenNs { fd, netlink })
    } else {
        let fd = netns::open(&hop.netns.name)?;
        let netlink =
            netns::run_in(&fd, &hop.netns.name, || Netlink::here(rt))?.map_err(netlink_err)?;
        Ok(OpenNs { fd, netlink })
    }
}

/// Creates every veth pair of the plan, from a socket in netfn's own namespace.
pub async fn create_links(
    plan: &ChainPlan,
    opened: &Opened,
    root: &Netlink,
) -> Result<(), ObjectError> {
    stream::iter(plan.links.iter().map(Ok))
        .try_for_each_concurrent(IN_FLIGHT, |link| async move {
            let (Some(a), Some(b)) = (
                opened.hops.get(&link.out.hop),
                opened.hops.get(&link.inn.hop),
            ) else {
                return Ok(());
            };
            root.add_veth(&link.out, &a.fd, &link.inn, &b.fd)
                .await
                .map_err(|source| {
                    let (out_hop, in_hop) = (&plan.hops[link.out.hop], &plan.hops[link.inn.hop]);
                    let end = |e: &crate::plan::LinkEnd, hop: &HopPlan| {
                        format!(
                            "{} (index {}) in namespace {}",
                            e.ifname, e.ifindex, hop.netns.name
                        )
                    };
                    // A taken name is EEXIST; a taken index EEXIST on newer kernels, EBUSY on
                    // older ones (6.1).
                    if matches!(source.errno, Some(libc::EEXIST | libc::EBUSY)) {
                        ObjectError::InterfaceTaken {
                            out: end(&link.out, out_hop),
                            inn: end(&link.inn, in_hop),
                        }
                    } else {
                        ObjectError::Netlink {
                            hop: out_hop.name.clone(),
                            source,
                        }
                    }
                })
        })
        .await
}

/// Brings up the ends of `links` (addresses, the other end as a permanent neighbour, up) in
/// their hops.
pub async fn configure_link_ends(
    plan: &ChainPlan,
    links: &[&crate::plan::LinkPlan],
    opened: &Opened,
) -> Result<(), ObjectError> {
    // Each end with the other end of its veth, its neighbour.
    let ends: Vec<(&crate::plan::LinkEnd, &crate::plan::LinkEnd)> = links
        .iter()
        .flat_map(|l| [(&l.out, &l.inn), (&l.inn, &l.out)])
        .collect();
    stream::iter(ends.into_iter().map(Ok))
        .try_for_each_concurrent(IN_FLIGHT, |(end, peer)| async move {
            let hop = &plan.hops[end.hop];
            let Some(ns) = opened.hops.get(&end.hop) else {
                return Ok(());
            };
            let err = |source| ObjectError::Netlink {
                hop: hop.name.clone(),
                source,
            };
            ns.netlink
                .add_address(end.ifindex, end.address)
                .await
                .map_err(err)?;
            ns.netlink
                .add_neighbour(end.ifindex, peer.address.addr(), peer.mac)
                .await
                .map_err(err)?;
            ns.netlink.set_up(end.ifindex).await.map_err(err)
        })
        .await
}

/// Sets (replacing) the routes of the selected hops, in the order given; with `only`, just the
/// routes to that destination.
pub async fn replace_routes(
    plan: &ChainPlan,
    hops: &[usize],
    opened: &Opened,
    only: Option<crate::plan::Direction>,
) -> Result<(), ObjectError> {
    for &h in hops {
        let hop = &plan.hops[h];
        let Some(ns) = opened.hops.get(&h) else {
            continue;
        };
        let err = |source| ObjectError::Netlink {
            hop: hop.name.clone(),
            source,
        };
        for route in hop
            .routes
            .iter()
            .filter(|r| only.is_none_or(|d| plan.route_direction(h, r) == d))
        {
            ns.netlink
                .replace_route(route.destination, route.gateway, None)
                .await
                .map_err(err)?;
        }
        steer(plan, h, &ns.netlink, only).await.map_err(err)?;
    }
    Ok(())
}

/// Deletes from the main table the routes that `old` gave the hops `hops` (indices in `new`) and
/// `new` does not give them (a removed VIP's, a removed routed backend's): [`replace_routes`]
/// only adds and replaces. One already gone is fine. Keeps going, returns every error.
pub async fn delete_stale_routes(
    old: &ChainPlan,
    new: &ChainPlan,
    hops: &[usize],
    opened: &Opened,
) -> Vec<String> {
    let mut errors = Vec::new();
    for &h in hops {
        let hop = &new.hops[h];
        let (Some((_, before)), Some(ns)) = (old.hop(&hop.name), opened.hops.get(&h)) else {
            continue;
        };
        let stale = before
            .routes
            .iter()
            .filter(|r| !hop.routes.iter().any(|n| n.destination == r.destination));
        for route in stale {
            if let Err(e) = ns
                .netlink
                .delete_route_in(route, u32::from(libc::RT_TABLE_MAIN))
                .await
            {
                errors.push(format!("{}: {e}", hop.name));
            }
        }
    }
    errors
}

/// Deletes interfaces by name in opened hops; keeps going, returns every error.
pub async fn delete_interfaces(
    plan: &ChainPlan,
    ends: &[(usize, String)],
    opened: &Opened,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (h, ifname) in ends {
        if let Some(ns) = opened.hops.get(h)
            && let Err(e) = ns.netlink.delete_link(ifname).await
        {
            errors.push(format!("{}: {e}", plan.hops[*h].name));
        }
    }
    errors
}

/// Brings loopback up, and adds every address and route, in every hop.
pub async fn configure_hops(plan: &ChainPlan, opened: &Opened) -> Result<(), ObjectError> {
    stream::iter(plan.hops.iter().enumerate())
        .map(|(h, hop)| async move {
            let Some(ns) = opened.hops.get(&h) else {
                return Ok(());
            };
            configure_hop(plan, h, hop, &ns.netlink)
                .await
                .map_err(|source| ObjectError::Netlink {
                    hop: hop.name.clone(),
                    source,
                })
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

async fn configure_hop(
    plan: &ChainPlan,
    h: usize,
    hop: &HopPlan,
    nl: &Netlink,
) -> Result<(), NetlinkError> {
    if hop.netns.created {
        nl.set_up(1).await?; // loopback is always index 1 in a new namespace
    }
    for end in plan.interfaces_of(h) {
        nl.add_address(end.ifindex, end.address).await?;
        nl.set_up(end.ifindex).await?;
    }
    for route in &hop.routes {
        nl.add_route(route.destination, route.gateway).await?;
    }
    Ok(())
}

/// Kernel mode: the per-interface tables and rules of hop `h` ([`crate::plan::steering_routes`]),
/// those toward `only` if given. Routes are replaced (atomically), rules added if missing. Only a
/// live apply steers, and only while it switches (see [`crate::chain::apply`]): in steady state the main
/// table routes every packet, at no extra cost.
pub async fn steer(
    plan: &ChainPlan,
    h: usize,
    nl: &Netlink,
    only: Option<crate::plan::Direction>,
) -> Result<(), NetlinkError> {
    for (end, route) in crate::plan::steering_routes(plan, h)
        .into_iter()
        .filter(|(_, r)| only.is_none_or(|d| plan.route_direction(h, r) == d))
    {
        nl.replace_route(route.destination, route.gateway, Some(end.ifindex))
            .await?;
        nl.add_iif_rule(&end.ifname, end.ifindex).await?;
    }
    Ok(())
}

/// Removes the steering of interfaces: their rules and the routes in their tables (the routes
/// stay when the interface goes, since their next hop is on the function's other side). `ends`
/// are interfaces of `plan` (their `hop` indexes into it), each with the index of its hop in
/// `opened`; interfaces without steering are skipped. Keeps going, returns every error.
pub async fn unsteer(
    plan: &ChainPlan,
    ends: &[(usize, &crate::plan::LinkEnd)],
    opened: &Opened,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (h, end) in ends {
        let Some(ns) = opened.hops.get(h) else {
            continue;
        };
        let Some((_, route)) = crate::plan::steering_routes(plan, end.hop)
            .into_iter()
            .find(|(e, _)| e.ifindex == end.ifindex)
        else {
            continue;
        };
        let rule = ns.netlink.delete_iif_rule(&end.ifname, end.ifindex).await;
        let table = ns.netlink.delete_route_in(&route, end.ifindex).await;
        for e in [rule.err(), table.err()].into_iter().flatten() {
            errors.push(format!("{}: {e}", plan.hops[end.hop].name));
        }
    }
    errors
}

/// Attaches the per-interface counters to every interface of the chain that `only` selects; the
/// map is pinned under the chain's bpffs directory, and the filters outlive this process.
pub fn attach_counters(
    plan: &ChainPlan,
    only: &dyn Fn(&crate::plan::LinkEnd) -> bool,
) -> Result<(), ObjectError> {
    ebpf::ensure_bpffs()?;
    let targets: Vec<_> = plan
        .hops
        .iter()
        .enumerate()
        .map(|(h, hop)| {
            let ifnames = plan
                .interfaces_of(h)
                .filter(|e| only(e))
                .map(|e| e.ifname.clone())
                .collect();
            (names::netns_path(&hop.netns.name), ifnames)
        })
        .filter(|(_, ifnames): &(_, Vec<String>)| !ifnames.is_empty())
        .collect();
    ebpf::attach_counters(&names::chain_bpf_dir(&plan.chain), &targets)?;
    Ok(())
}

/// Removes what the plan says netfn created: its interfaces in existing namespaces, then its
/// namespaces (which takes their interfaces with them). Keeps going past failures and returns
/// every error. `skip` names namespaces that turned out not to be netfn's.
pub fn remove(plan: &ChainPlan, rt: &tokio::runtime::Handle, skip: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for (h, hop) in plan
        .hops
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.netns.created)
    {
        for end in plan.interfaces_of(h) {
            let result = netns::open(&hop.netns.name).and_then(|fd| {
                netns::run_in(&fd, &hop.netns.name, || {
                    Netlink::here(rt).map(|nl| rt.block_on(nl.delete_link(&end.ifname)))
                })
            });
            match result {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e)) | Err(e)) => {
                    errors.push(format!("{}: interface {}: {e}", hop.netns.name, end.ifname))
                }
                Err(NetnsError::Missing { .. }) => {}
                Err(e) => errors.push(format!("{}: interface {}: {e}", hop.netns.name, end.ifname)),
            }
        }
    }
    for name in plan.created_namespaces() {
        if skip.iter().any(|s| s == name) {
            continue;
        }
        if let Err(e) = netns::delete(name) {
            errors.push(e.to_string());
        }
    }
    // The programs and maps go with the last interface using them; the pins go here.
    if let Err(e) = ebpf::remove_pins(&names::chain_bpf_dir(&plan.chain)) {
        errors.push(e.to_string());
    }
    errors
}
