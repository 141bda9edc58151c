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
//! 3. TC: pins `nf_fwd_tc` and attaches it on TC ingress of every function interface, with TCX
//!    where the kernel has it ([`TcAttach`]) or with netlink (`clsact` + `cls_bpf` direct action)
//!    at priority [`FWD_TC_PRIORITY`]; XDP: see [`xdp`].
//!
//! A live apply ([`crate::chain::apply`]) changes a running chain in three steps that never stop the
//! flows through the rest of the chain: [`extend_fastpath`] (the new interfaces get their table
//! rows and programs while nothing is steered onto them), [`switch_fastpath`] (the entries of the
//! kept interfaces change, each atomically for every packet, in an order that never loops), and
//! once the old links are deleted, [`forget_interfaces`].
//!
//! Teardown needs nothing special: deleting the chain's namespaces removes interfaces, filters
//! and XDP attachments, and [`super::remove_pins`] removes maps, programs and link pins.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::ebpf::loader::{self, LoadSettings};
use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{SchedClassifier, Xdp};
use netfn_common::{
    FN_COUNTERS_MAP, FWD_DEVMAP, FWD_SOURCES_MAP, FWD_SOURCES_MAX, FWD_TABLE_MAP, FWD_TC_PROGRAM,
    FWD_UNKNOWN_MAP, FWD_XDP_PROGRAM, FnCounters, STAGES_MAP, XDP_PASS_PROGRAM,
};

pub(super) mod sources;
pub(super) mod table;
pub(super) mod tc;
pub(super) mod xdp;

use super::layout::Declared;
use super::{
    AttachedInterface, EbpfError, EbpfLogs, TcSlot, attach_pinned, ensure_chain_dir, load_and_pin,
    remove_file_if_present,
};
use crate::plan::{self, ChainPlan, Direction, ForwarderEntry};
use crate::spec::FastPath;
pub use sources::{Prune, sync_sources};
use table::{FwdTable, drop_unfit_pin, map_error, pinned_map, zero_function_counters};

/// TC priority of the forwarder filter on ingress: after the counter (priority 1).
pub const FWD_TC_PRIORITY: u16 = 2;
/// TC handle of the forwarder filter.
pub const FWD_TC_HANDLE: u16 = 1;

/// Pins inside a chain's bpffs directory.
pub const FWD_TABLE_PIN: &str = "fwd_table";
pub const FN_COUNTERS_PIN: &str = "fn_counters";
pub const FWD_UNKNOWN_PIN: &str = "fwd_unknown";
pub const FWD_DEVMAP_PIN: &str = "fwd_devmap";
pub const FWD_SOURCES_PIN: &str = "fwd_sources";
/// The stage programs of the chain's functions, by slot.
pub const STAGES_PIN: &str = "stages";
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
    fn aya_value(self) -> &'static u8 {
        match self {
            EbpfLogLevel::Off => &0,
            EbpfLogLevel::Error => &1,
            EbpfLogLevel::Warn => &2,
            EbpfLogLevel::Info => &3,
            EbpfLogLevel::Debug => &4,
            EbpfLogLevel::Trace => &5,
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
    /// By function slot ([`ChainPlan::function_slot`]; at `up`, slot `i` is function `i`). Use
    /// [`FastpathCounters::function`] to find a function's.
    pub functions: Vec<FunctionCounters>,
    /// Packets that arrived on an interface with no valid table entry (dropped; counted under
    /// `drops[DROP_NO_ROUTE]`).
    pub unattributed: FnCounters,
}

impl FastpathCounters {
    /// The counters of the function at hop `hop` of `plan`.
    pub fn function(&self, plan: &ChainPlan, hop: usize) -> Option<&FunctionCounters> {
        let slot = usize::try_from(plan.function_slot(hop)?).ok()?;
        self.functions.get(slot)
    }
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
    if mode == FastPath::Kernel {
        return Err(EbpfError::NoFastPath {
            chain: plan.chain.clone(),
        });
    }
    check_kernel(mode)?;
    ensure_chain_dir(bpf_dir)?;

    let entries = plan::forwarder_entries(plan);

    // Pins from an earlier attach are reused; ones that do not fit this plan (a stale directory)
    // are replaced.
    let pins = chain_pins(plan, bpf_dir);
    for (_, path, len) in &pins {
        drop_unfit_pin(path, *len)?;
    }

    let mut settings = LoadSettings::default();
    settings.global(aya_log::LEVEL, options.log_level.aya_value());
    for (name, path, len) in &pins {
        settings.pin(name, path.clone()).max_entries(name, *len);
    }
    let mut ebpf = loader::load(&settings)?;

    let mut table = FwdTable::open(&bpf_dir.join(FWD_TABLE_PIN))?;
    for e in &entries {
        table.set(e)?;
    }
    sync_sources(plan, bpf_dir, Prune::Yes)?;
    if mode == FastPath::Tc {
        load_and_pin(&mut ebpf, FWD_TC_PROGRAM, bpf_dir, |p| {
            <&mut SchedClassifier>::try_from(p)?.load()
        })?;
    } else {
        for name in [FWD_XDP_PROGRAM, XDP_PASS_PROGRAM] {
            load_and_pin(&mut ebpf, name, bpf_dir, |p| {
                <&mut Xdp>::try_from(p)?.load()
            })?;
        }
    }
    let load_time = started.elapsed();
    let attach_started = Instant::now();
    let interfaces = attach_programs(plan, bpf_dir, options.tc_attach, &|_| true)?;
    let attach_time = attach_started.elapsed();
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

/// The forwarder's maps of a chain, as pinned under `bpf_dir`: (name in the object, pin, size).
/// The stages of the chain's functions share them by these pins.
pub(crate) fn chain_pins(plan: &ChainPlan, bpf_dir: &Path) -> Vec<(&'static str, PathBuf, u32)> {
    let table_len = plan::forwarder_table_len(plan);
    let mut pins = vec![
        (FWD_TABLE_MAP, bpf_dir.join(FWD_TABLE_PIN), table_len),
        (
            FN_COUNTERS_MAP,
            bpf_dir.join(FN_COUNTERS_PIN),
            plan::forwarder_counter_len(plan),
        ),
        (FWD_UNKNOWN_MAP, bpf_dir.join(FWD_UNKNOWN_PIN), 1),
        (
            FWD_SOURCES_MAP,
            bpf_dir.join(FWD_SOURCES_PIN),
            FWD_SOURCES_MAX,
        ),
        (
            STAGES_MAP,
            bpf_dir.join(STAGES_PIN),
            plan.capacity().functions.max(1),
        ),
    ];
    if plan.fastpath == FastPath::Xdp {
        pins.push((FWD_DEVMAP, bpf_dir.join(FWD_DEVMAP_PIN), table_len));
    }
    pins
}

/// Attaches the pinned forwarder programs to the interfaces of `plan` that `only` selects (by
/// ifindex): TC on function interfaces; XDP on function interfaces, and the pass program on
/// endpoint interfaces.
fn attach_programs(
    plan: &ChainPlan,
    bpf_dir: &Path,
    tc_attach: TcAttach,
    only: &dyn Fn(u32) -> bool,
) -> Result<Vec<AttachedInterface>, EbpfError> {
    match plan.fastpath {
        FastPath::Kernel => Err(EbpfError::NoFastPath {
            chain: plan.chain.clone(),
        }),
        FastPath::Tc => {
            let program_pin = bpf_dir.join(FWD_TC_PROGRAM);
            let targets = tc::targets(plan, only);
            match tc_attach {
                TcAttach::Netlink => {
                    attach_pinned(&program_pin, FWD_TC_PROGRAM, &targets, FWD_TC_SLOT)
                }
                TcAttach::Tcx => tc::attach_tcx(&program_pin, &targets, bpf_dir),
            }
        }
        FastPath::Xdp => xdp::attach(plan, bpf_dir, only),
    }
}

/// A live apply, step 1 (the new plan's namespaces and links exist, nothing is steered onto
/// them yet): zeroes the counters of the functions' new slots, writes the table rows of the new
/// interfaces `added`, and attaches the forwarder to them the way the running chain has it (TCX or
/// netlink). Packets still take the old path.
pub fn extend_fastpath(
    plan: &ChainPlan,
    bpf_dir: &Path,
    added: &BTreeSet<u32>,
    new_slots: &[u32],
) -> Result<Vec<AttachedInterface>, EbpfError> {
    zero_function_counters(&bpf_dir.join(FN_COUNTERS_PIN), new_slots)?;
    let entries = plan::forwarder_entries(plan);
    let (new, kept): (Vec<&ForwarderEntry>, Vec<&ForwarderEntry>) =
        entries.iter().partition(|e| added.contains(&e.ifindex));
    let mut table = FwdTable::open(&bpf_dir.join(FWD_TABLE_PIN))?;
    for e in new {
        table.set(e)?;
    }
    // What the new plan accepts, before anything switches to it (pruned after the switch).
    sync_sources(plan, bpf_dir, Prune::No)?;
    // An index a removed link had: its link pins (if a cleanup missed them) are stale.
    for &ifindex in added {
        remove_link_pins(bpf_dir, ifindex)?;
    }
    let tc_attach = running_tc_attach(bpf_dir, kept.iter().map(|e| e.ifindex));
    attach_programs(plan, bpf_dir, tc_attach, &|i| added.contains(&i))
}

/// How the running chain's TC forwarder is attached: TCX if one of the interfaces `ifindexes`
/// has a pinned TCX link, netlink otherwise.
fn running_tc_attach(bpf_dir: &Path, mut ifindexes: impl Iterator<Item = u32>) -> TcAttach {
    if ifindexes.any(|i| link_pin(bpf_dir, TCX_LINK_PIN_PREFIX, i).exists()) {
        TcAttach::Tcx
    } else {
        TcAttach::Netlink
    }
}

/// Checks that the forwarder maps pinned for the running chain `plan` (which its stages share)
/// have the layouts this netfn's programs declare (see [`Declared`]).
pub fn check_chain_pins(
    plan: &ChainPlan,
    bpf_dir: &Path,
    declared: &Declared,
) -> Result<(), EbpfError> {
    for (name, path, len) in chain_pins(plan, bpf_dir) {
        declared.check(name, &path)?;
        // The chain's plan sizes these maps; one of another size would be replaced by the
        // attach (`drop_unfit_pin`), and the running stages would lose the map they share (an
        // empty stage array: every packet a no-stage drop until each stage is loaded again).
        if let Ok(info) = aya::maps::MapInfo::from_pin(&path)
            && info.max_entries() != len
        {
            return Err(EbpfError::PinnedSize {
                path,
                name,
                pinned: info.max_entries(),
                planned: len,
            });
        }
    }
    Ok(())
}

/// Loads this netfn's forwarder in place of the running chain's (another build's), attached the
/// way the running one is (TCX or netlink) at the same places: each interface gets the new
/// program in one replace, and the pinned maps (table, counters, stages) carry over. Check them
/// first ([`check_chain_pins`]).
pub fn reload_fastpath(
    plan: &ChainPlan,
    bpf_dir: &Path,
    log_level: EbpfLogLevel,
) -> Result<FastpathAttach, EbpfError> {
    let entries = plan::forwarder_entries(plan);
    let options = FastpathOptions {
        log_level,
        tc_attach: running_tc_attach(bpf_dir, entries.iter().map(|e| e.ifindex)),
    };
    attach_fastpath_with(plan, bpf_dir, &options)
}

/// A live apply, step 2: makes every entry of `plan` live, in an order that never loops a packet
/// back: entries toward egress from the egress end backwards, entries toward ingress from the
/// ingress end forwards. So a switched entry always hands its packets to a hop whose entries are
/// switched already (or new), and the old interfaces keep their old entries until they go.
/// Returns how many entries changed. Also the way back when an apply fails (with the old plan).
pub fn switch_fastpath(plan: &ChainPlan, bpf_dir: &Path) -> Result<usize, EbpfError> {
    let entries = plan::forwarder_entries(plan);
    let mut table = FwdTable::open(&bpf_dir.join(FWD_TABLE_PIN))?;
    let toward = |d| entries.iter().filter(move |e| e.direction == d);
    let mut changed = 0;
    for e in toward(Direction::Forward)
        .rev()
        .chain(toward(Direction::Reverse))
    {
        changed += usize::from(table.set(e)?);
    }
    Ok(changed)
}

/// A live apply, step 3 (the interfaces `gone` no longer exist): invalidates their table rows and
/// removes their link pins, so a later link can take their indexes.
pub fn forget_interfaces(bpf_dir: &Path, gone: &BTreeSet<u32>) -> Result<(), EbpfError> {
    let mut table = FwdTable::open(&bpf_dir.join(FWD_TABLE_PIN))?;
    for &ifindex in gone {
        table.clear(ifindex)?;
        remove_link_pins(bpf_dir, ifindex)?;
    }
    Ok(())
}

fn remove_link_pins(bpf_dir: &Path, ifindex: u32) -> Result<(), EbpfError> {
    for prefix in [TCX_LINK_PIN_PREFIX, XDP_LINK_PIN_PREFIX] {
        remove_file_if_present(&link_pin(bpf_dir, prefix, ifindex))?;
    }
    Ok(())
}

/// Where the TCX or XDP link (`prefix`) of interface `ifindex` is pinned.
pub(crate) fn link_pin(bpf_dir: &Path, prefix: &str, ifindex: u32) -> PathBuf {
    bpf_dir.join(format!("{prefix}{ifindex}"))
}

/// Says plainly when this kernel cannot run `mode` (see [`crate::kernel::features`]).
fn check_kernel(mode: FastPath) -> Result<(), EbpfError> {
    let feature = match mode {
        FastPath::Kernel => return Ok(()),
        FastPath::Tc => "tc-redirect-peer",
        FastPath::Xdp => "xdp-veth",
    };
    match crate::kernel::features::get(feature) {
        Some(f) if !f.available => Err(EbpfError::Unsupported {
            mode: mode.to_string(),
            reason: f.detail,
        }),
        _ => Ok(()),
    }
}

/// Reads the forwarder's per-function counters (CPUs summed) pinned under `bpf_dir`.
///
/// One element per function slot, both directions ([`FastpathCounters::function`] finds a
/// function's). For `netfn status` and the metrics endpoint; works from any process, with no
/// netfn process running.
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
    let array: PerCpuArray<MapData, FnCounters> =
        pinned_map(path)?.try_into().map_err(map_error(path))?;
    let mut out = Vec::with_capacity(array.len() as usize);
    for per_cpu in array.iter() {
        let per_cpu = per_cpu.map_err(map_error(path))?;
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

    #[test]
    fn log_levels_parse_and_map_to_aya_values() {
        assert_eq!("DEBUG".parse::<EbpfLogLevel>(), Ok(EbpfLogLevel::Debug));
        assert!("loud".parse::<EbpfLogLevel>().is_err());
        assert_eq!(EbpfLogLevel::default().aya_value(), &3);
        assert_eq!(EbpfLogLevel::Off.aya_value(), &0);
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
