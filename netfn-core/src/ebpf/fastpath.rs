//! The fast path: the forwarder programs that move packets from function to function without the
//! IP stacks of the function namespaces (`fastpath = "tc"` and `fastpath = "xdp"`).
//!
//! [`attach_fastpath`] does everything for one chain, after its namespaces, veths, addresses and
//! routes exist:
//!
//! 1. loads the object once, with the chain's maps pinned under its bpffs directory (reused if
//!    already pinned, so counters survive a repeated attach): the forwarding table
//!    (`fwd_table`), the per-function counters (`fn_counters`), the counters of packets without a
//!    table entry (`fwd_unknown`) and, in XDP mode, the devmap (`fwd_devmap`);
//! 2. fills the forwarding table from the plan ([`crate::plan::forwarder_entries`]);
//! 3. TC: pins `nf_fwd_tc` and attaches it on TC ingress of every function interface with netlink
//!    (`clsact` + `cls_bpf` direct action) at priority [`FWD_TC_PRIORITY`], after the counter
//!    (priority 1), which returns `TC_ACT_UNSPEC` so the forwarder still runs. Netlink filters
//!    hold their program: they outlive the process, and go when their interface goes.
//!    XDP: on one thread per namespace, fills that namespace's devmap entries (a devmap resolves
//!    ifindexes in the namespace of the thread that updates it), attaches `nf_fwd_xdp` to every
//!    function interface and `nf_xdp_pass` to every endpoint interface (a veth that receives XDP
//!    redirects needs an XDP program, or frames vanish), and pins each XDP link under the chain
//!    directory (`xdp_link_<ifindex>`): a pinned link keeps the program attached after the
//!    process exits; removing the pin (or the interface) detaches it.
//!
//! Teardown needs nothing special: deleting the chain's namespaces removes interfaces, filters
//! and XDP attachments, and [`super::remove_pins`] removes maps, programs and link pins.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aya::maps::{Array, DevMap, Map, MapData, MapError, MapInfo, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::xdp::XdpLink;
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use netfn_common::{
    FN_COUNTERS_MAP, FWD_DEVMAP, FWD_TABLE_MAP, FWD_TC_PROGRAM, FWD_UNKNOWN_MAP, FWD_VALID,
    FWD_XDP_PROGRAM, FnCounters, FwdEntry, XDP_PASS_PROGRAM, mac_words,
};

use super::{
    AttachedInterface, BPFFS, EbpfError, EbpfLogs, TcSlot, attach_pinned, ensure_bpffs, netns,
    program_error, remove_file_if_present,
};
use crate::names;
use crate::plan::{self, ChainPlan, ForwarderEntry};
use crate::spec::FastPath;

/// TC priority of the forwarder filter on ingress: after the counter (priority 1).
pub const FWD_TC_PRIORITY: u16 = 2;
/// TC handle of the forwarder filter.
pub const FWD_TC_HANDLE: u16 = 1;

/// Pins inside a chain's bpffs directory.
pub const FWD_TABLE_PIN: &str = "fwd_table";
pub const FN_COUNTERS_PIN: &str = "fn_counters";
pub const FWD_UNKNOWN_PIN: &str = "fwd_unknown";
pub const FWD_DEVMAP_PIN: &str = "fwd_devmap";
/// Pinned XDP links are `xdp_link_<ifindex>`.
pub const XDP_LINK_PIN_PREFIX: &str = "xdp_link_";

/// The forwarder's TC slot.
const FWD_TC_SLOT: TcSlot = TcSlot {
    priority: FWD_TC_PRIORITY,
    handle: FWD_TC_HANDLE,
};

/// The most verbose level of the programs' aya-log statements that run. The hot path logs at
/// debug (drops) and trace (every packet) only, so the default costs nothing: the level is a
/// read-only global fixed at load time, and the verifier removes disabled statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum EbpfLogLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl EbpfLogLevel {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL` global (aya_log_common::Level; 0 = off).
    fn aya_value(self) -> u8 {
        match self {
            EbpfLogLevel::Off => 0,
            EbpfLogLevel::Error => 1,
            EbpfLogLevel::Warn => 2,
            EbpfLogLevel::Info => 3,
            EbpfLogLevel::Debug => 4,
            EbpfLogLevel::Trace => 5,
        }
    }
}

impl FromStr for EbpfLogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(EbpfLogLevel::Off),
            "error" => Ok(EbpfLogLevel::Error),
            "warn" => Ok(EbpfLogLevel::Warn),
            "info" => Ok(EbpfLogLevel::Info),
            "debug" => Ok(EbpfLogLevel::Debug),
            "trace" => Ok(EbpfLogLevel::Trace),
            other => Err(format!(
                "unknown eBPF log level `{other}`; use off, error, warn, info, debug or trace"
            )),
        }
    }
}

impl fmt::Display for EbpfLogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EbpfLogLevel::Off => "off",
            EbpfLogLevel::Error => "error",
            EbpfLogLevel::Warn => "warn",
            EbpfLogLevel::Info => "info",
            EbpfLogLevel::Debug => "debug",
            EbpfLogLevel::Trace => "trace",
        })
    }
}

/// Tunables of [`attach_fastpath_with`].
#[derive(Debug, Clone, Default)]
pub struct FastpathOptions {
    pub log_level: EbpfLogLevel,
    /// How the TC forwarder is attached.
    pub tc_attach: TcAttach,
}

impl FastpathOptions {
    /// Options from the environment, for benchmarks and debugging: `NETFN_EBPF_LOG`
    /// (off|error|warn|info|debug|trace) and `NETFN_TC_ATTACH` (netlink|tcx). Unset means the
    /// default.
    pub fn from_env() -> Result<Self, String> {
        let mut options = FastpathOptions::default();
        if let Some(level) = std::env::var_os("NETFN_EBPF_LOG") {
            options.log_level = level.to_string_lossy().parse()?;
        }
        if let Some(mode) = std::env::var_os("NETFN_TC_ATTACH") {
            options.tc_attach = match mode.to_string_lossy().as_ref() {
                "netlink" => TcAttach::Netlink,
                "tcx" => TcAttach::Tcx,
                other => {
                    return Err(format!(
                        "NETFN_TC_ATTACH={other}: use `netlink` (default) or `tcx`"
                    ));
                }
            };
        }
        Ok(options)
    }
}

/// How the TC forwarder is attached to TC ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcAttach {
    /// clsact + cls_bpf filter (direct action) at [`FWD_TC_PRIORITY`], after the counter. The
    /// filter holds the program: it outlives the process with nothing pinned.
    #[default]
    Netlink,
    /// TCX (Linux 6.6+): a bpf_link, pinned as `tcx_link_<ifindex>` so it outlives the process.
    /// TCX programs run before clsact filters: a packet the forwarder redirects is not seen by
    /// the netlink counter (`nf_count`) any more.
    Tcx,
}

/// Pinned TCX links are `tcx_link_<ifindex>`.
pub const TCX_LINK_PIN_PREFIX: &str = "tcx_link_";

/// The result of [`attach_fastpath`]. Dropping it detaches nothing: filters, XDP links (pinned)
/// and maps (pinned) stay.
#[derive(Debug)]
pub struct FastpathAttach {
    ebpf: Ebpf,
    pub mode: FastPath,
    /// Every interface that got a program: the function interfaces (forwarder) and, in XDP mode,
    /// the endpoint interfaces (`nf_xdp_pass`).
    pub interfaces: Vec<AttachedInterface>,
    /// Forwarding table entries written.
    pub entries: usize,
    /// Loading object and programs, pinning, filling the table.
    pub load_time: Duration,
    /// Attaching in every namespace.
    pub attach_time: Duration,
}

impl FastpathAttach {
    /// Takes the programs' log ring buffer to forward its records into `tracing`
    /// (`tokio::spawn(logs.forward())`). `None`, with a warning, if the object has no log map.
    pub fn take_logs(&mut self) -> Option<EbpfLogs> {
        EbpfLogs::from_ebpf(&mut self.ebpf)
    }

    /// The loaded object (maps, programs).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// One function's forwarder counters, both directions (CPUs summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FunctionCounters {
    /// Packets that arrived on `nf-in` (toward egress).
    pub forward: FnCounters,
    /// Packets that arrived on `nf-out` (toward ingress).
    pub reverse: FnCounters,
}

/// Everything [`read_function_counters`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FastpathCounters {
    /// By function index: `functions[i]` is hop `i + 1` of the plan (`plan.hops[i + 1]`).
    pub functions: Vec<FunctionCounters>,
    /// Packets that arrived on an interface with no valid table entry (dropped; counted under
    /// `drops[DROP_NO_ROUTE]`).
    pub unattributed: FnCounters,
}

/// Brings the fast path of `plan` up: see the module docs. Call it after the chain's addresses
/// and routes are configured, for `plan.fastpath` TC or XDP; `bpf_dir` is the chain's bpffs
/// directory (`names::chain_bpf_dir(chain)`). Safe to repeat: pinned maps are reused (counters
/// kept), the table is rewritten, filters and XDP links get the new program in place.
pub fn attach_fastpath(plan: &ChainPlan, bpf_dir: &Path) -> Result<FastpathAttach, EbpfError> {
    attach_fastpath_with(plan, bpf_dir, &FastpathOptions::default())
}

/// [`attach_fastpath`] with options (the programs' log level).
pub fn attach_fastpath_with(
    plan: &ChainPlan,
    bpf_dir: &Path,
    options: &FastpathOptions,
) -> Result<FastpathAttach, EbpfError> {
    let started = Instant::now();
    let mode = plan.fastpath;
    check_kernel(mode)?;
    if bpf_dir.starts_with(BPFFS) {
        ensure_bpffs()?;
    }
    std::fs::create_dir_all(bpf_dir).map_err(|source| EbpfError::Io {
        what: "cannot create",
        path: bpf_dir.to_path_buf(),
        source,
    })?;

    let entries = plan::forwarder_entries(plan);
    let table_len = plan::forwarder_table_len(plan);
    let counter_len = plan::forwarder_counter_len(plan);
    let xdp = mode == FastPath::Xdp;

    // Pins from an earlier attach are reused; ones that do not fit this plan (a stale directory)
    // are replaced.
    let mut pins: Vec<(&'static str, PathBuf, u32)> = vec![
        (FWD_TABLE_MAP, bpf_dir.join(FWD_TABLE_PIN), table_len),
        (FN_COUNTERS_MAP, bpf_dir.join(FN_COUNTERS_PIN), counter_len),
        (FWD_UNKNOWN_MAP, bpf_dir.join(FWD_UNKNOWN_PIN), 1),
    ];
    if xdp {
        pins.push((FWD_DEVMAP, bpf_dir.join(FWD_DEVMAP_PIN), table_len));
    }
    for (_, path, len) in &pins {
        drop_unfit_pin(path, *len)?;
    }

    let bytes = super::object::object_bytes()?;
    let level = options.log_level.aya_value();
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, &level, false);
    for (name, path, len) in &pins {
        loader.map_pin_path(name, path.as_path());
        loader.map_max_entries(name, *len);
    }
    let mut ebpf = loader
        .load(&bytes)
        .map_err(|e| EbpfError::Load(Box::new(e)))?;
    drop(bytes);

    fill_table(&mut ebpf, &bpf_dir.join(FWD_TABLE_PIN), &entries)?;

    let (interfaces, load_time, attach_time) = match mode {
        FastPath::Kernel => {
            return Err(EbpfError::NoFastPath {
                chain: plan.chain.clone(),
            });
        }
        FastPath::Tc => {
            let name = FWD_TC_PROGRAM;
            let program_pin = load_and_pin_tc(&mut ebpf, bpf_dir)?;
            let load_time = started.elapsed();
            let attach_started = Instant::now();
            let targets = tc_targets(plan);
            let interfaces = match options.tc_attach {
                TcAttach::Netlink => attach_pinned(&program_pin, name, &targets, FWD_TC_SLOT)?,
                TcAttach::Tcx => attach_tcx(&program_pin, &targets, bpf_dir)?,
            };
            (interfaces, load_time, attach_started.elapsed())
        }
        FastPath::Xdp => {
            let load_time = started.elapsed();
            let attach_started = Instant::now();
            let interfaces = attach_xdp(&mut ebpf, plan, bpf_dir)?;
            (interfaces, load_time, attach_started.elapsed())
        }
    };
    tracing::info!(
        "chain {}: {mode} fast path on {} interface(s), {} table entries, in {:.2?} (load {load_time:.2?}, attach {attach_time:.2?})",
        plan.chain,
        interfaces.len(),
        entries.len(),
        started.elapsed(),
    );
    Ok(FastpathAttach {
        ebpf,
        mode,
        interfaces,
        entries: entries.len(),
        load_time,
        attach_time,
    })
}

/// Says plainly when this kernel cannot run `mode` (see [`crate::features`]).
fn check_kernel(mode: FastPath) -> Result<(), EbpfError> {
    let feature = match mode {
        FastPath::Kernel => return Ok(()),
        FastPath::Tc => "tc-redirect-peer",
        FastPath::Xdp => "xdp-veth",
    };
    match crate::features::get(feature) {
        Some(f) if !f.available => Err(EbpfError::Unsupported {
            mode: mode.to_string(),
            reason: f.detail,
        }),
        _ => Ok(()),
    }
}

/// Removes the pinned map at `path` if its size does not match `max_entries`.
fn drop_unfit_pin(path: &Path, max_entries: u32) -> Result<(), EbpfError> {
    match MapInfo::from_pin(path) {
        Ok(info) if info.max_entries() == max_entries => Ok(()),
        Ok(info) => {
            tracing::warn!(
                "{}: pinned with {} entries, the chain needs {max_entries}: replacing it",
                path.display(),
                info.max_entries()
            );
            remove_file_if_present(path)
        }
        Err(_) => Ok(()),
    }
}

/// The map entry of one forwarder table row. Addresses are stored as their bytes in packet
/// order, so the program compares them with what it reads from the packet without swapping.
pub fn fwd_entry(e: &ForwarderEntry) -> FwdEntry {
    let net = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let (next, out) = (mac_words(e.next_mac), mac_words(e.out_mac));
    let eth_rewrite = [next[0], next[1], next[2], out[0], out[1], out[2]];
    FwdEntry {
        flags: FWD_VALID,
        redirect_ifindex: e.out_ifindex,
        counter_slot: e.counter_slot(),
        peer_addr: net(e.peer_addr),
        allowed_net: net(e.allowed_sources.network()),
        allowed_mask: net(e.allowed_sources.netmask()),
        local_addrs: [net(e.local_addrs[0]), net(e.local_addrs[1])],
        own_mac: mac_words(e.own_mac),
        peer_mac: mac_words(e.peer_mac),
        eth_rewrite,
    }
}

fn fill_table(ebpf: &mut Ebpf, path: &Path, entries: &[ForwarderEntry]) -> Result<(), EbpfError> {
    let map_error = |source| EbpfError::Map {
        path: path.to_path_buf(),
        source,
    };
    let map = ebpf
        .map_mut(FWD_TABLE_MAP)
        .ok_or(EbpfError::MissingInObject {
            kind: "map",
            name: FWD_TABLE_MAP,
        })?;
    let mut table: Array<&mut MapData, FwdEntry> = Array::try_from(map).map_err(map_error)?;
    for e in entries {
        let index = plan::interface_slot(e.ifindex).ok_or_else(|| {
            map_error(MapError::OutOfBounds {
                index: e.ifindex,
                max_entries: table.len(),
            })
        })?;
        table.set(index, fwd_entry(e), 0).map_err(map_error)?;
    }
    Ok(())
}

fn load_and_pin_tc(ebpf: &mut Ebpf, bpf_dir: &Path) -> Result<PathBuf, EbpfError> {
    let name = FWD_TC_PROGRAM;
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingInObject {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| program_error(name, e))?;
    program.load().map_err(|e| program_error(name, e))?;
    let pin = bpf_dir.join(name);
    remove_file_if_present(&pin)?;
    program.pin(&pin).map_err(|source| EbpfError::Pin {
        path: pin.clone(),
        source,
    })?;
    Ok(pin)
}

/// (namespace path, [nf-in, nf-out]) of every function.
fn tc_targets(plan: &ChainPlan) -> Vec<(PathBuf, Vec<String>)> {
    let n = plan.function_count();
    (1..=n)
        .filter_map(|h| {
            let hop = plan.hops.get(h)?;
            let ifs = plan.interfaces_of(h).map(|i| i.ifname.clone()).collect();
            Some((names::netns_path(&hop.netns.name), ifs))
        })
        .collect()
}

/// Attaches the pinned TC program with TCX on ingress of every target and pins each link (see
/// [`TcAttach::Tcx`]); a link pinned already gets the program swapped in place.
fn attach_tcx(
    program_pin: &Path,
    targets: &[(PathBuf, Vec<String>)],
    bpf_dir: &Path,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    let name = FWD_TC_PROGRAM;
    let threads = super::NETNS_THREADS.min(targets.len()).max(1);
    let mut programs = Vec::with_capacity(threads);
    for _ in 0..threads {
        programs.push(SchedClassifier::from_pin(program_pin).map_err(|source| {
            EbpfError::Pinned {
                path: program_pin.to_path_buf(),
                source: Box::new(source),
            }
        })?);
    }
    let paths: Vec<&Path> = targets.iter().map(|(p, _)| p.as_path()).collect();
    let per_netns = netns::in_namespaces(&paths, programs, |program, index| {
        let (netns, interfaces) = &targets[index];
        interfaces
            .iter()
            .map(|interface| {
                attach_tcx_here(program, bpf_dir, interface).map_err(|source| EbpfError::Attach {
                    program: name,
                    netns: netns.clone(),
                    interface: interface.clone(),
                    source: Box::new(source),
                })
            })
            .collect::<Vec<_>>()
    })?;
    super::collect_attached(targets, per_netns)
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
    let pin = bpf_dir.join(format!("{TCX_LINK_PIN_PREFIX}{ifindex}"));
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

/// One namespace's XDP work.
struct XdpTarget {
    netns: PathBuf,
    /// (ifname, ifindex, forwarder?): function interfaces get the forwarder and a devmap entry,
    /// endpoint interfaces the pass program.
    interfaces: Vec<(String, u32, bool)>,
}

fn xdp_targets(plan: &ChainPlan) -> Vec<XdpTarget> {
    let n = plan.function_count();
    plan.hops
        .iter()
        .enumerate()
        .map(|(h, hop)| XdpTarget {
            netns: names::netns_path(&hop.netns.name),
            interfaces: plan
                .interfaces_of(h)
                .map(|i| (i.ifname.clone(), i.ifindex, (1..=n).contains(&h)))
                .collect(),
        })
        .collect()
}

fn load_and_pin_xdp(
    ebpf: &mut Ebpf,
    name: &'static str,
    bpf_dir: &Path,
) -> Result<PathBuf, EbpfError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(EbpfError::MissingInObject {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| program_error(name, e))?;
    program.load().map_err(|e| program_error(name, e))?;
    let pin = bpf_dir.join(name);
    remove_file_if_present(&pin)?;
    program.pin(&pin).map_err(|source| EbpfError::Pin {
        path: pin.clone(),
        source,
    })?;
    Ok(pin)
}

fn attach_xdp(
    ebpf: &mut Ebpf,
    plan: &ChainPlan,
    bpf_dir: &Path,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    load_and_pin_xdp(ebpf, FWD_XDP_PROGRAM, bpf_dir)?;
    load_and_pin_xdp(ebpf, XDP_PASS_PROGRAM, bpf_dir)?;

    // aya cannot open a pinned XDP program for attaching without aya-obj's attach type, so the
    // workers share the loaded programs; only the attach syscall itself holds the lock.
    let mut fwd = None;
    let mut pass = None;
    for (name, program) in ebpf.programs_mut() {
        if name == FWD_XDP_PROGRAM {
            fwd = Some(program);
        } else if name == XDP_PASS_PROGRAM {
            pass = Some(program);
        }
    }
    let (Some(fwd), Some(pass)) = (fwd, pass) else {
        return Err(EbpfError::MissingInObject {
            kind: "program",
            name: FWD_XDP_PROGRAM,
        });
    };
    let fwd: &mut Xdp = fwd
        .try_into()
        .map_err(|e| program_error(FWD_XDP_PROGRAM, e))?;
    let pass: &mut Xdp = pass
        .try_into()
        .map_err(|e| program_error(XDP_PASS_PROGRAM, e))?;
    let programs = Mutex::new((fwd, pass));

    let targets = xdp_targets(plan);
    let devmap_pin = bpf_dir.join(FWD_DEVMAP_PIN);
    let threads = super::NETNS_THREADS.min(targets.len()).max(1);
    let mut devmaps = Vec::with_capacity(threads);
    for _ in 0..threads {
        devmaps.push(open_devmap(&devmap_pin)?);
    }
    let paths: Vec<&Path> = targets.iter().map(|t| t.netns.as_path()).collect();
    let per_netns = netns::in_namespaces(&paths, devmaps, |devmap, index| {
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
    super::collect_attached(&names, per_netns)
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
    /// `struct ethtool_value`.
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `struct ifreq` with the `ifr_data` member (40 bytes on 64-bit Linux).
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }
    const ETHTOOL_STXCSUM: u32 = 0x17;

    let bytes = ifname.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a valid interface name",
        ));
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer to `value`, both alive
    // for the call) and reads/writes `value`.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCETHTOOL,
            &mut req as *mut IfReq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_devmap(path: &Path) -> Result<DevMap<MapData>, EbpfError> {
    let map_error = |source| EbpfError::Map {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(map_error)?;
    let map = Map::from_map_data(data).map_err(map_error)?;
    DevMap::try_from(map).map_err(map_error)
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
    let pin = bpf_dir.join(format!("{XDP_LINK_PIN_PREFIX}{ifindex}"));
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

/// Reads the forwarder's per-function counters (CPUs summed) pinned under `bpf_dir`.
///
/// `functions[i]` is function `i` (hop `i + 1` of the plan), in both directions. For `netfn
/// status` and the metrics endpoint; works from any process, with no netfn process running.
pub fn read_function_counters(bpf_dir: &Path) -> Result<FastpathCounters, EbpfError> {
    let per_slot = read_counter_array(&bpf_dir.join(FN_COUNTERS_PIN))?;
    let unattributed = read_counter_array(&bpf_dir.join(FWD_UNKNOWN_PIN))?
        .into_iter()
        .next()
        .unwrap_or_default();
    let functions = per_slot
        .chunks(2)
        .map(|pair| FunctionCounters {
            forward: pair.first().copied().unwrap_or_default(),
            reverse: pair.get(1).copied().unwrap_or_default(),
        })
        .collect();
    Ok(FastpathCounters {
        functions,
        unattributed,
    })
}

fn read_counter_array(path: &Path) -> Result<Vec<FnCounters>, EbpfError> {
    let map_error = |source| EbpfError::Map {
        path: path.to_path_buf(),
        source,
    };
    let data = match MapData::from_pin(path) {
        Ok(data) => data,
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Err(EbpfError::NotPinned {
                path: path.to_path_buf(),
            });
        }
        Err(e) => return Err(map_error(e)),
    };
    let map = Map::from_map_data(data).map_err(map_error)?;
    let array: PerCpuArray<MapData, FnCounters> = map.try_into().map_err(map_error)?;
    let mut out = Vec::with_capacity(array.len() as usize);
    for per_cpu in array.iter() {
        let per_cpu = per_cpu.map_err(map_error)?;
        let mut total = FnCounters::default();
        for cpu in per_cpu.iter() {
            total.accumulate(cpu);
        }
        out.push(total);
    }
    Ok(out)
}

/// The forwarder's log records, read through its pinned program (TC or XDP) by any process.
pub fn fastpath_logs(bpf_dir: &Path) -> Result<EbpfLogs, EbpfError> {
    let tc = bpf_dir.join(FWD_TC_PROGRAM);
    if tc.exists() {
        return EbpfLogs::from_pinned_program(&tc);
    }
    EbpfLogs::from_pinned_program(&bpf_dir.join(FWD_XDP_PROGRAM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Direction;

    #[test]
    fn entries_hold_addresses_in_packet_byte_order() {
        let e = ForwarderEntry {
            ifindex: names::IFINDEX_BASE + 1,
            ifname: "nf-in".into(),
            hop: 1,
            function: 0,
            direction: Direction::Reverse,
            out_ifindex: names::IFINDEX_BASE + 2,
            own_mac: [2, 0, 0, 0, 0, 1],
            peer_mac: [2, 0, 0, 0, 0, 2],
            peer_addr: "10.1.0.2".parse().unwrap(),
            allowed_sources: "10.1.0.0/24".parse().unwrap(),
            local_addrs: ["10.1.0.1".parse().unwrap(), "100.64.0.0".parse().unwrap()],
            next_mac: [2, 0, 0, 0, 0, 3],
            out_mac: [2, 0, 0, 0, 0, 4],
        };
        let f = fwd_entry(&e);
        assert_eq!(f.flags, FWD_VALID);
        assert_eq!(f.redirect_ifindex, names::IFINDEX_BASE + 2);
        assert_eq!(f.counter_slot, 1);
        assert_eq!(f.peer_addr.to_ne_bytes(), [10, 1, 0, 2]);
        assert_eq!(f.allowed_net.to_ne_bytes(), [10, 1, 0, 0]);
        assert_eq!(f.allowed_mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(f.local_addrs[1].to_ne_bytes(), [100, 64, 0, 0]);
        let rewrite: Vec<u8> = f.eth_rewrite.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(rewrite, [2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 4]);
        assert_eq!(f.peer_mac, mac_words([2, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn the_ifindex_base_is_the_plans() {
        assert_eq!(netfn_common::FWD_IFINDEX_BASE, names::IFINDEX_BASE);
    }

    #[test]
    fn log_levels_parse_and_map_to_aya_values() {
        assert_eq!("DEBUG".parse::<EbpfLogLevel>(), Ok(EbpfLogLevel::Debug));
        assert!("loud".parse::<EbpfLogLevel>().is_err());
        assert_eq!(EbpfLogLevel::default().aya_value(), 3);
        assert_eq!(EbpfLogLevel::Off.aya_value(), 0);
        assert_eq!(EbpfLogLevel::Trace.to_string(), "trace");
    }

    #[test]
    fn missing_counter_pins_are_reported() {
        let dir = Path::new("/nonexistent/netfn-test-fastpath");
        assert!(matches!(
            read_function_counters(dir),
            Err(EbpfError::NotPinned { .. }) | Err(EbpfError::Map { .. })
        ));
    }
}
