//! Loading netfn's eBPF programs, attaching them, pinning what must outlive the process, and
//! reading their maps.
//!
//! Lifetimes, because they are what bites:
//!
//! - The counter program (`nf_count`, kernel-mode chains) is attached with **netlink** (a
//!   `clsact` qdisc plus a `cls_bpf` filter in direct-action mode): a netlink filter holds its own
//!   reference to the program and stays until it is deleted or its interface goes away, so it
//!   keeps counting with no netfn process. aya's link objects *detach* when dropped, so every
//!   netlink link is taken out of aya (`take_link`) and forgotten; dropping [`CounterAttach`] or
//!   the whole `aya::Ebpf` never detaches anything. The forwarder (`forwarder`) attaches with
//!   TCX where the kernel has it (6.6+) and pins each TCX or XDP link, since those links live only
//!   as long as a file descriptor or a pin holds them; elsewhere it uses netlink like the counter.
//! - The counter map and the programs are pinned under the chain's bpffs directory
//!   (`/sys/fs/bpf/netfn/<chain>/`), so another process (the host agent, the next `up`) can read
//!   the counters, attach to more interfaces, or read the logs. [`remove_pins`] removes the
//!   directory; the kernel frees program and map when the last filter using them goes too
//!   (deleting the chain's namespaces and veths does that).
//! - Attaching again to an interface that already carries the counter filter replaces its
//!   program in place (same priority and handle): repeating `up` is safe and never stacks
//!   filters or loses packets.
//! - Interface names are resolved in the namespace of the thread that attaches, so each
//!   namespace's work runs on a dedicated thread that `setns()`es into it (see `workers`).

mod build_id;
mod forwarder;
mod layout;
mod loader;
mod logs;
mod object;
mod stages;
mod workers;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::Ebpf;
use aya::maps::{Map, MapData, MapError, PerCpuHashMap};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{Program, ProgramError, SchedClassifier, TcAttachType};
use nix::mount::{MsFlags, mount};

pub use forwarder::table::{FwdTable, fwd_entry};
pub use forwarder::xdp::XdpAttachError;
pub use forwarder::{
    EbpfLogLevel, FN_COUNTERS_PIN, FWD_DEVMAP_PIN, FWD_SOURCES_PIN, FWD_TABLE_PIN, FWD_TC_HANDLE,
    FWD_TC_PRIORITY, FWD_UNKNOWN_PIN, FastpathAttach, FastpathCounters, FastpathOptions,
    FunctionCounters, Prune, TCX_LINK_PIN_PREFIX, TcAttach, XDP_LINK_PIN_PREFIX, attach_fastpath,
    attach_fastpath_with, check_chain_pins, extend_fastpath, fastpath_logs, forget_interfaces,
    read_function_counters, reload_fastpath, switch_fastpath, sync_sources,
};
pub use layout::{Declared, Layout};
use loader::LoadSettings;
pub use loader::ReuseLoaders;
pub use logs::EbpfLogs;
pub use netfn_common::IfCounters;
pub use netfn_common::{DROP_REASON_NAMES, FnCounters};
pub use object::{OBJECT_ENV, ObjectSource, object_build, object_source};
pub use stages::{StageLoad, forget_stage, load_stage, stage_dir};
pub use workers::{NETNS_THREADS, enter_netns};

/// Where bpffs is mounted; netfn pins under `<BPFFS>/netfn/<chain>/`.
pub const BPFFS: &str = "/sys/fs/bpf";

/// File name of the pinned per-interface counter map inside a chain's bpffs directory.
pub const IF_COUNTERS_PIN: &str = "if_counters";

/// File name of the pinned counter program inside a chain's bpffs directory.
pub const COUNTER_PROGRAM_PIN: &str = netfn_common::COUNT_PROGRAM;

/// TC priority of the counter filter on ingress. Lower runs first: the counter must see every
/// packet, so later programs (the forwarder) take larger numbers. The counter returns
/// `TC_ACT_UNSPEC`, which lets the kernel go on to the next filter.
pub const COUNTER_TC_PRIORITY: u16 = 1;

/// TC handle (minor) of the counter filter; with [`COUNTER_TC_PRIORITY`] it identifies the filter,
/// so attaching again replaces it instead of adding a second one.
pub const COUNTER_TC_HANDLE: u16 = 1;

/// Errors of eBPF loading, attaching, pinning and map reading.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "eBPF object not built: run `cargo xtask build-ebpf`, then rebuild netfn (or set \
         {OBJECT_ENV} to the object's path)"
    )]
    ObjectNotBuilt,
    #[error("cannot read the eBPF object {} (from {OBJECT_ENV}): {source}", path.display())]
    ReadObject { path: PathBuf, source: io::Error },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("cannot read the maps the eBPF object declares: {0}")]
    ParseObject(String),
    #[error(
        "{}: the map `{name}` pinned there has {pinned}, and this netfn's programs need \
         {declared}: it was made by another netfn build, and what it holds cannot carry over to \
         these programs. Take the chain down and up again (its state starts afresh), or keep \
         managing it with the netfn that brought it up",
        path.display()
    )]
    Layout {
        path: PathBuf,
        name: &'static str,
        pinned: layout::Layout,
        declared: layout::Layout,
    },
    #[error(
        "{}: the map `{name}` pinned there has {pinned} entries, and this netfn sizes it {planned} \
         for the chain: it was made by another netfn build, and the programs that share it \
         cannot be replaced one by one. Take the chain down and up again (its state starts \
         afresh), or keep managing it with the netfn that brought it up",
        path.display()
    )]
    PinnedSize {
        path: PathBuf,
        name: &'static str,
        pinned: u32,
        planned: u32,
    },
    #[error(
        "{}: the map `{name}` pinned there has {pinned} entries, and this netfn's programs look \
         its entries up by index among {wanted}: it was made by another netfn build, and what \
         it holds would be looked for in other places. Take the chain down and up again (its \
         state starts afresh), or keep managing it with the netfn that brought it up",
        path.display()
    )]
    KeptSize {
        path: PathBuf,
        name: &'static str,
        pinned: u32,
        wanted: u32,
    },
    #[error("the eBPF object has no {kind} `{name}`: rebuild it with `cargo xtask build-ebpf`")]
    MissingInObject {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot pin {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("pinned program {}: {source}", path.display())]
    Pinned {
        path: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("nothing pinned at {} (counters not attached, or already removed)", path.display())]
    NotPinned { path: PathBuf },
    #[error("pinned map {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error("eBPF logs of {}: {source}", path.display())]
    Logs {
        path: PathBuf,
        #[source]
        source: aya_log::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot mount bpffs at {path}: {source}")]
    MountBpffs {
        path: &'static str,
        source: nix::Error,
    },
    #[error("{path} is a {fstype} mount, not bpffs: unmount it or mount bpffs there")]
    NotBpffs { path: &'static str, fstype: String },
    #[error("cannot enter network namespace {}: {source}", path.display())]
    EnterNetns { path: PathBuf, source: io::Error },
    #[error("interface `{interface}` in {}: {source}", netns.display())]
    Interface {
        netns: PathBuf,
        interface: String,
        source: io::Error,
    },
    #[error(
        "cannot attach `{program}` to TC ingress of `{interface}` in {}: {source}",
        netns.display()
    )]
    Attach {
        program: &'static str,
        netns: PathBuf,
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("{}", partial_message(*.attached, .failures))]
    Partial {
        /// Interfaces that did get the program (it stays attached there).
        attached: usize,
        /// Every failure, one per interface or namespace.
        failures: Vec<EbpfError>,
    },
    #[error(
        "cannot attach `{program}` (XDP) to `{interface}` in {}: {source}",
        netns.display()
    )]
    AttachXdp {
        program: &'static str,
        netns: PathBuf,
        interface: String,
        #[source]
        source: Box<XdpAttachError>,
    },
    #[error("XDP devmap entry for `{interface}` in {}: {source}", netns.display())]
    DevMap {
        netns: PathBuf,
        interface: String,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    #[error("chain `{chain}` has fastpath = \"kernel\": there is no eBPF fast path to attach")]
    NoFastPath { chain: String },
    #[error(
        "fastpath = \"{mode}\" cannot work on this kernel: {reason}; use fastpath = \"kernel\""
    )]
    Unsupported { mode: String, reason: String },
    #[error("function `{function}`: its stage: {source}")]
    Stage {
        function: String,
        #[source]
        source: crate::function::StageError,
    },
    /// The one failure of [`load_stage`] after its instance went live (renaming a staged pin,
    /// which only something else changing the directory meanwhile makes fail).
    #[error(
        "function `{function}`: its new stage instance is live, but readers (status, metrics, \
         the next apply) still find the replaced instance's maps at:\n  {}\ncheck what else \
         writes under /sys/fs/bpf/netfn, then apply again", .failed.join("\n  ")
    )]
    Repin {
        function: String,
        failed: Vec<String>,
    },
    #[error("cannot start a namespace worker thread: {0}")]
    SpawnWorker(#[source] io::Error),
    #[error("a namespace worker thread panicked")]
    WorkerPanicked,
}

fn partial_message(attached: usize, failures: &[EbpfError]) -> String {
    let mut message = format!(
        "attaching failed for {} target(s) ({attached} interface(s) attached):",
        failures.len()
    );
    for failure in failures.iter().take(5) {
        message.push_str("\n  ");
        message.push_str(&failure.to_string());
    }
    if failures.len() > 5 {
        message.push_str(&format!("\n  … and {} more", failures.len() - 5));
    }
    message
}

/// One interface that carries the counter program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedInterface {
    pub netns: PathBuf,
    pub name: String,
    /// The key of this interface in [`read_counters`].
    pub ifindex: u32,
    /// True if a counter filter was already there and its program was replaced in place.
    pub replaced: bool,
}

/// The result of [`attach_counters`]. Dropping it detaches nothing: the filters and pins stay.
///
/// It keeps the loaded `aya::Ebpf` so that the caller can take its logs
/// ([`CounterAttach::take_logs`]) or look at its maps while it lives.
#[derive(Debug)]
pub struct CounterAttach {
    ebpf: Ebpf,
    /// Every attached interface, in the order of the targets.
    pub interfaces: Vec<AttachedInterface>,
    /// Loading the object and the program into the kernel, and pinning.
    pub load_time: Duration,
    /// Attaching to every interface (all namespaces).
    pub attach_time: Duration,
}

impl CounterAttach {
    /// The loaded object (maps, programs).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Takes the programs' log ring buffer, to forward its records into `tracing`
    /// (`tokio::spawn(logs.forward())`). `None`, with a warning, if the object has no log map.
    pub fn take_logs(&mut self) -> Option<EbpfLogs> {
        EbpfLogs::from_ebpf(&mut self.ebpf)
    }
}

/// Creates a chain's bpffs directory `bpf_dir` (mounting bpffs first if the directory is under
/// [`BPFFS`] and it is not mounted).
pub(crate) fn ensure_chain_dir(bpf_dir: &Path) -> Result<(), EbpfError> {
    if bpf_dir.starts_with(BPFFS) {
        ensure_bpffs()?;
    }
    std::fs::create_dir_all(bpf_dir).map_err(|source| EbpfError::Io {
        what: "cannot create",
        path: bpf_dir.to_path_buf(),
        source,
    })
}

/// Mounts bpffs at /sys/fs/bpf if needed.
pub fn ensure_bpffs() -> Result<(), EbpfError> {
    match mounted_fstype(BPFFS)? {
        Some(fstype) if fstype == "bpf" => return Ok(()),
        Some(fstype) => {
            return Err(EbpfError::NotBpffs {
                path: BPFFS,
                fstype,
            });
        }
        None => {}
    }
    std::fs::create_dir_all(BPFFS).map_err(|source| EbpfError::Io {
        what: "cannot create",
        path: PathBuf::from(BPFFS),
        source,
    })?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount(Some("bpf"), BPFFS, Some("bpf"), flags, Some("mode=0700")) {
        Ok(()) => {
            tracing::info!("mounted bpffs at {BPFFS}");
            Ok(())
        }
        // Someone else mounted it meanwhile.
        Err(source) => match mounted_fstype(BPFFS)? {
            Some(fstype) if fstype == "bpf" => Ok(()),
            _ => Err(EbpfError::MountBpffs {
                path: BPFFS,
                source,
            }),
        },
    }
}

/// The filesystem type of the topmost mount at `mountpoint` in this mount namespace, if any.
fn mounted_fstype(mountpoint: &str) -> Result<Option<String>, EbpfError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|source| EbpfError::Io {
        what: "cannot read",
        path: PathBuf::from("/proc/self/mounts"),
        source,
    })?;
    Ok(fstype_in_mounts(&mounts, mountpoint))
}

fn fstype_in_mounts(mounts: &str, mountpoint: &str) -> Option<String> {
    mounts.lines().rev().find_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let target = fields.next()?;
        let fstype = fields.next()?;
        (target == mountpoint).then(|| fstype.to_string())
    })
}

/// Loads the counter program once, pins its map at `<bpf_dir>/if_counters` (and the program at
/// `<bpf_dir>/nf_count`), creating `bpf_dir` (e.g. `/sys/fs/bpf/netfn/<chain>`), and attaches it
/// on TC ingress of every (netns path, interface name) target. `targets` groups interface names
/// by network namespace path (e.g. `/run/netns/nf-edge-fw1`).
///
/// The attachment outlives the process (netlink `clsact` + `cls_bpf` direct-action filters; see
/// the module docs). If the map is already pinned (an earlier attach for this chain), it is
/// reused, so counters survive a repeated `up`; filters already there are replaced in place.
/// Namespaces are handled in parallel by [`NETNS_THREADS`] threads. Every failing target is
/// reported ([`EbpfError::Partial`]); the interfaces that succeeded stay attached.
pub fn attach_counters(
    bpf_dir: &Path,
    targets: &[(PathBuf, Vec<String>)],
) -> Result<CounterAttach, EbpfError> {
    let started = Instant::now();
    ensure_chain_dir(bpf_dir)?;

    let mut settings = LoadSettings::default();
    settings.pin(netfn_common::IF_COUNTERS_MAP, bpf_dir.join(IF_COUNTERS_PIN));
    let mut ebpf = loader::load(&settings)?;

    // Pin the program: workers open their own handle on it, and later processes can attach it
    // to new interfaces or read its logs. A pin left by an earlier attach is replaced.
    let name = netfn_common::COUNT_PROGRAM;
    let program_pin = load_and_pin(&mut ebpf, name, bpf_dir, |p| {
        <&mut SchedClassifier>::try_from(p)?.load()
    })?;
    let load_time = started.elapsed();

    let attach_started = Instant::now();
    let interfaces = attach_pinned(&program_pin, name, targets, COUNTER_TC_SLOT)?;
    let attach_time = attach_started.elapsed();
    tracing::info!(
        "attached {name} to {} interface(s) in {} namespace(s) in {attach_time:.2?} (load {load_time:.2?})",
        interfaces.len(),
        targets.len(),
    );
    Ok(CounterAttach {
        ebpf,
        interfaces,
        load_time,
        attach_time,
    })
}

/// Where a netlink `cls_bpf` filter sits on TC ingress: its priority (lower runs first) and its
/// handle. The pair identifies the filter, so attaching again at the same slot replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcSlot {
    pub priority: u16,
    pub handle: u16,
}

/// The counter's slot: first on ingress.
const COUNTER_TC_SLOT: TcSlot = TcSlot {
    priority: COUNTER_TC_PRIORITY,
    handle: COUNTER_TC_HANDLE,
};

/// Attaches the pinned program `program_pin` (named `name`) on TC ingress of every target, at
/// `slot`.
pub(crate) fn attach_pinned(
    program_pin: &Path,
    name: &'static str,
    targets: &[(PathBuf, Vec<String>)],
    slot: TcSlot,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    for_each_tc_target(program_pin, targets, |program, netns, interface| {
        attach_ingress(program, name, interface, slot)
            .map_err(|e| e.context(name, netns, interface))
    })
}

/// Runs `attach(program, netns, interface)` for every interface of `targets`, on namespace worker
/// threads that each hold their own handle on the pinned TC program `program_pin`, and joins the
/// results ([`collect_attached`]).
pub(crate) fn for_each_tc_target(
    program_pin: &Path,
    targets: &[(PathBuf, Vec<String>)],
    attach: impl Fn(&mut SchedClassifier, &Path, &str) -> AttachResult + Sync,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let threads = NETNS_THREADS.min(targets.len()).max(1);
    let mut programs = Vec::with_capacity(threads);
    for _ in 0..threads {
        programs.push(SchedClassifier::from_pin(program_pin).map_err(|source| {
            EbpfError::Pinned {
                path: program_pin.to_path_buf(),
                source: Box::new(source),
            }
        })?);
    }
    let netns: Vec<&Path> = targets.iter().map(|(path, _)| path.as_path()).collect();
    let per_netns = workers::in_namespaces(&netns, programs, |program, index| {
        let (netns, interfaces) = &targets[index];
        interfaces
            .iter()
            .map(|interface| attach(program, netns, interface))
            .collect::<Vec<_>>()
    })?;
    collect_attached(targets, per_netns)
}

/// One interface's attach result: its ifindex and whether a program was replaced in place.
pub(crate) type AttachResult = Result<(u32, bool), EbpfError>;

/// Joins per-namespace, per-interface attach results with their targets: every attached
/// interface, or [`EbpfError::Partial`] listing every failure (what succeeded stays attached).
pub(crate) fn collect_attached(
    targets: &[(PathBuf, Vec<String>)],
    per_netns: Vec<Result<Vec<AttachResult>, EbpfError>>,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    let mut attached = Vec::new();
    let mut failures = Vec::new();
    for ((netns, interfaces), result) in targets.iter().zip(per_netns) {
        match result {
            Ok(results) => {
                for (interface, result) in interfaces.iter().zip(results) {
                    match result {
                        Ok((ifindex, replaced)) => attached.push(AttachedInterface {
                            netns: netns.clone(),
                            name: interface.clone(),
                            ifindex,
                            replaced,
                        }),
                        Err(e) => failures.push(e),
                    }
                }
            }
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(attached)
    } else {
        Err(EbpfError::Partial {
            attached: attached.len(),
            failures,
        })
    }
}

/// Why attaching to one interface failed, before the namespace and name are added.
enum AttachStepError {
    Interface(io::Error),
    Tc(ProgramError),
}

impl AttachStepError {
    fn context(self, program: &'static str, netns: &Path, interface: &str) -> EbpfError {
        match self {
            Self::Interface(source) => EbpfError::Interface {
                netns: netns.to_path_buf(),
                interface: interface.to_string(),
                source,
            },
            Self::Tc(source) => EbpfError::Attach {
                program,
                netns: netns.to_path_buf(),
                interface: interface.to_string(),
                source: Box::new(source),
            },
        }
    }
}

/// Attaches `program` on TC ingress of `interface` in the calling thread's namespace, at the fixed
/// priority and handle of `slot`; replaces the program if that filter exists already.
/// Returns the ifindex and whether a filter was replaced. The link is handed over to the kernel:
/// nothing in this process will detach it.
fn attach_ingress(
    program: &mut SchedClassifier,
    name: &str,
    interface: &str,
    slot: TcSlot,
) -> Result<(u32, bool), AttachStepError> {
    let ifindex = nix::net::if_::if_nametoindex(interface)
        .map_err(|errno| AttachStepError::Interface(errno.into()))?;

    match tc::qdisc_add_clsact(interface) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(AttachStepError::Tc(e.into())),
    }

    let handle = TcHandle::new(0, slot.handle);
    let options = NlOptions {
        priority: slot.priority,
        handle,
        classid: None,
    };
    let (link_id, replaced) = match program.attach_with_options(
        interface,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(options),
    ) {
        Ok(link_id) => (link_id, false),
        Err(e) if is_eexist(&e) => {
            // Our filter is there already (an earlier attach): swap its program in place.
            let existing = SchedClassifierLink::attached(
                interface,
                TcAttachType::Ingress,
                slot.priority,
                handle,
                None,
            )
            .map_err(AttachStepError::Interface)?;
            let link_id = program
                .attach_to_link(existing)
                .map_err(AttachStepError::Tc)?;
            (link_id, true)
        }
        Err(e) => return Err(AttachStepError::Tc(e)),
    };
    // aya detaches a netlink filter when its link object drops (also when the program object
    // drops while it still owns the link). Take the link out and forget it: the filter belongs
    // to the kernel from now on. An `NlLink` holds no fd, so nothing leaks but a few bytes.
    let link = program.take_link(link_id).map_err(AttachStepError::Tc)?;
    std::mem::forget(link);
    tracing::debug!("{name} attached to {interface} (ifindex {ifindex})");
    Ok((ifindex, replaced))
}

fn is_eexist(e: &ProgramError) -> bool {
    matches!(e, ProgramError::TcError(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST))
}

/// Loads program `name` of `ebpf` (`load` converts it to its type and loads it) and pins it at
/// `<bpf_dir>/<name>`, replacing an older pin. Returns the pin's path.
pub(crate) fn load_and_pin(
    ebpf: &mut Ebpf,
    name: &'static str,
    bpf_dir: &Path,
    load: impl FnOnce(&mut Program) -> Result<(), ProgramError>,
) -> Result<PathBuf, EbpfError> {
    let program = ebpf.program_mut(name).ok_or(EbpfError::MissingInObject {
        kind: "program",
        name,
    })?;
    load(program).map_err(|e| program_error(name, e))?;
    let pin = bpf_dir.join(name);
    remove_file_if_present(&pin)?;
    program.pin(&pin).map_err(|source| EbpfError::Pin {
        path: pin.clone(),
        source,
    })?;
    Ok(pin)
}

fn program_error(name: &'static str, source: ProgramError) -> EbpfError {
    EbpfError::Program {
        name,
        source: Box::new(source),
    }
}

fn remove_file_if_present(path: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Io {
            what: "cannot remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the pinned counters (summing per-CPU values) keyed by ifindex.
pub fn read_counters(bpf_dir: &Path) -> Result<BTreeMap<u32, IfCounters>, EbpfError> {
    let path = bpf_dir.join(IF_COUNTERS_PIN);
    let map_error = |source| EbpfError::Map {
        path: path.clone(),
        source,
    };
    let data = match MapData::from_pin(&path) {
        Ok(data) => data,
        Err(MapError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            return Err(EbpfError::NotPinned { path });
        }
        Err(e) => return Err(map_error(e)),
    };
    let map = Map::from_map_data(data).map_err(map_error)?;
    let map: PerCpuHashMap<MapData, u32, IfCounters> = map.try_into().map_err(map_error)?;
    let mut counters = BTreeMap::new();
    for entry in map.iter() {
        let (ifindex, per_cpu) = entry.map_err(map_error)?;
        let mut total = IfCounters::default();
        for cpu in per_cpu.iter() {
            total.accumulate(cpu);
        }
        counters.insert(ifindex, total);
    }
    Ok(counters)
}

/// Removes the chain's pinned objects (the directory); Ok if already absent.
///
/// This does not detach the filters: program and map live on while a filter uses them, and go
/// with the interfaces (deleting the chain's namespaces deletes its veths).
pub fn remove_pins(bpf_dir: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_dir_all(bpf_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Io {
            what: "cannot remove",
            path: bpf_dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstype_of_topmost_mount() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      none /sys/fs/bpf tmpfs rw 0 0\n\
                      bpf /sys/fs/bpf bpf rw,mode=700 0 0\n";
        assert_eq!(
            fstype_in_mounts(mounts, "/sys/fs/bpf").as_deref(),
            Some("bpf")
        );
        assert_eq!(fstype_in_mounts(mounts, "/sys/fs/bpf/x"), None);
        assert_eq!(fstype_in_mounts("", "/sys/fs/bpf"), None);
    }

    #[test]
    fn missing_pins_are_reported() {
        let dir = Path::new("/nonexistent/netfn-test-pins");
        assert!(matches!(
            read_counters(dir),
            Err(EbpfError::NotPinned { .. }) | Err(EbpfError::Map { .. })
        ));
        assert!(remove_pins(dir).is_ok());
    }

    #[test]
    fn partial_message_lists_failures() {
        let failures = vec![EbpfError::WorkerPanicked, EbpfError::ObjectNotBuilt];
        let text = EbpfError::Partial {
            attached: 3,
            failures,
        }
        .to_string();
        assert!(text.contains("2 target(s)"), "{text}");
        assert!(text.contains("3 interface(s) attached"), "{text}");
        assert!(text.contains("cargo xtask build-ebpf"), "{text}");
    }
}
