//! The per-packet stages of a chain's functions ([`crate::function::Stage`]): one instance per
//! function, loaded from netfn's eBPF object with the chain's forwarder maps shared by pin, the
//! kind's maps sized for the function, and its kept maps pinned under the function's own
//! directory (`<chain dir>/fn<slot>/`).
//!
//! [`load_stage`] makes an instance live by writing its program into the chain's stage array at
//! the function's slot: one map update, so every packet meets either the old instance or the new
//! one, never a mix. A settings change is another `load_stage` (kept maps carry over, and the
//! kind's `StageContent::live` carries its instance counters over before readers find the new
//! instance); removing a function is [`forget_stage`]. Nothing here decides which functions
//! have stages: the plan says.
//!
//! Readers find the live instance's maps by pin, and what can fail is done before the switch:
//! an error from [`load_stage`] means the instance it loaded did not go live (readers and
//! packets stay with the replaced one), except [`EbpfError::Repin`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::ebpf::loader::{self, LoadSettings};
use aya::maps::ProgramArray;
use aya::programs::{SchedClassifier, Xdp};

use super::forwarder::table::{map_error, pinned_map};
use super::forwarder::{STAGES_PIN, chain_pins};
use super::{EbpfError, remove_file_if_present};
use crate::function::{FunctionContext, Stage, StageMaps};
use crate::plan::ChainPlan;
use crate::spec::FastPath;

/// The directory of the maps pinned for the function at `slot` of the chain at `bpf_dir`.
pub fn stage_dir(bpf_dir: &Path, slot: u32) -> PathBuf {
    bpf_dir.join(format!("fn{slot}"))
}

/// What loading one stage instance did.
#[derive(Debug, Clone, Copy)]
pub struct StageLoad {
    /// The function had no kept maps yet (new), or it kept its state (a settings change).
    pub fresh: bool,
    pub elapsed: Duration,
}

/// Loads a new instance of `stage` for function `function` at `slot` of the chain `plan` (its
/// forwarder already pinned under `bpf_dir`) and makes it live. `fresh` removes whatever the
/// slot kept from a function before (a new function never inherits another's state).
pub fn load_stage(
    plan: &ChainPlan,
    bpf_dir: &Path,
    context: &FunctionContext,
    slot: u32,
    stage: &dyn Stage,
    fresh: bool,
) -> Result<StageLoad, EbpfError> {
    let function = context.function.as_str();
    let started = Instant::now();
    let dir = stage_dir(bpf_dir, slot);
    if fresh {
        remove_dir_if_present(&dir)?;
    }
    let fresh = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|source| EbpfError::Io {
        what: "create",
        path: dir.clone(),
        source,
    })?;
    let stage_err = |source| EbpfError::Stage {
        function: function.to_string(),
        source,
    };

    let mut settings = LoadSettings::default();
    settings.global(aya_log::LEVEL, &0);
    for (name, path, len) in chain_pins(plan, bpf_dir) {
        settings.pin(name, path).max_entries(name, len);
    }
    let content = stage.prepare(context).map_err(stage_err)?;
    for (name, len) in content.map_sizes() {
        settings.max_entries(name, len.max(1));
    }
    for name in stage.kept_maps() {
        settings.pin(name, dir.join(name));
    }
    let mut ebpf = loader::load(&settings)?;
    let loaded_object = started.elapsed();

    content
        .fill(&mut StageMaps::new(&mut ebpf, slot, fresh, dir.clone()))
        .map_err(stage_err)?;
    let filled = started.elapsed();

    let programs = stage.programs();
    let name = match plan.fastpath {
        FastPath::Xdp => programs.xdp,
        _ => programs.tc,
    };
    let program = ebpf.program_mut(name).ok_or(EbpfError::MissingInObject {
        kind: "program",
        name,
    })?;
    let loaded = match plan.fastpath {
        FastPath::Xdp => <&mut Xdp>::try_from(program).and_then(|p| p.load()),
        _ => <&mut SchedClassifier>::try_from(program).and_then(|p| p.load()),
    };
    loaded.map_err(|e| EbpfError::Program {
        name,
        source: Box::new(e),
    })?;
    tracing::debug!(
        "function {function}: object and maps {loaded_object:.2?}, filled by {filled:.2?}, program verified by {:.2?}",
        started.elapsed()
    );
    let fd = ebpf
        .program(name)
        .ok_or(EbpfError::MissingInObject {
            kind: "program",
            name,
        })?
        .fd()
        .map_err(|e| EbpfError::Program {
            name,
            source: Box::new(e),
        })?
        .try_clone()
        .map_err(|source| EbpfError::Io {
            what: "duplicate the program descriptor of",
            path: dir.clone(),
            source,
        })?;

    // Readers (status, metrics, the next instance) find the live instance's maps by pin. The new
    // instance's are pinned beside them first: a pin is a new file in bpffs, the one step here
    // that can fail for want of memory, and it fails before the switch (the replaced instance
    // then stays live and read, nothing changed).
    let staged = stage_pins(&ebpf, &dir, stage.instance_maps())?;
    let stages_pin = bpf_dir.join(STAGES_PIN);
    let switched = pinned_map(&stages_pin).and_then(|map| {
        let mut stages: ProgramArray<_> =
            ProgramArray::try_from(map).map_err(map_error(&stages_pin))?;
        stages.set(slot, &fd, 0).map_err(map_error(&stages_pin))
    });
    if let Err(e) = switched {
        unstage(&staged);
        return Err(e);
    }
    // Live. What the replaced instance counted carries over while readers still read it (its
    // counters stand still now); a carry that fails is the kind's loss of counts, not a reason
    // to undo the change (it stands, the counters start from zero).
    if let Err(e) = content.live(&mut StageMaps::new(&mut ebpf, slot, fresh, dir.clone())) {
        tracing::warn!(
            "function {function}: the replaced stage instance's counters did not carry over \
             ({e}); the new instance's start from zero"
        );
    }
    // Then readers find the new instance's maps: each staged pin renamed over the replaced
    // one's, which swaps the name in one step and allocates nothing.
    move_pins(function, &staged)?;
    Ok(StageLoad {
        fresh,
        elapsed: started.elapsed(),
    })
}

/// The new instance's pins beside the live one's (see [`STAGED`]): (staged, final) paths.
type Staged = Vec<(PathBuf, PathBuf)>;

/// What a staged pin's name adds to the name readers know (bpffs refuses dots in names).
const STAGED: &str = "-next";

/// Pins the instance maps `names` of `ebpf` under `dir` beside the live instance's, each as its
/// name with [`STAGED`] (what a load that never finished left there goes first). On failure
/// removes the ones it pinned.
fn stage_pins(ebpf: &aya::Ebpf, dir: &Path, names: &[&'static str]) -> Result<Staged, EbpfError> {
    let mut staged = Vec::new();
    for &name in names {
        let path = dir.join(name);
        let next = dir.join(format!("{name}{STAGED}"));
        let pinned = remove_file_if_present(&next).and_then(|()| {
            ebpf.map(name)
                .ok_or(EbpfError::MissingInObject { kind: "map", name })?
                .pin(&next)
                .map_err(|source| EbpfError::Pin {
                    path: next.clone(),
                    source,
                })
        });
        if let Err(e) = pinned {
            unstage(&staged);
            return Err(e);
        }
        staged.push((next, path));
    }
    Ok(staged)
}

/// Removes staged pins of an instance that did not go live.
fn unstage(staged: &Staged) {
    for (next, _) in staged {
        if let Err(e) = remove_file_if_present(next) {
            tracing::warn!("{e}");
        }
    }
}

/// Renames each staged pin over its final name. Tries every one: a failure (only something else
/// changing the directory meanwhile makes one) leaves readers on the replaced instance's map of
/// that name, which the error says.
fn move_pins(function: &str, staged: &Staged) -> Result<(), EbpfError> {
    let failed: Vec<String> = staged
        .iter()
        .filter_map(|(next, path)| {
            std::fs::rename(next, path)
                .err()
                .map(|e| format!("{}: {e}", path.display()))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(EbpfError::Repin {
            function: function.to_string(),
            failed,
        })
    }
}

/// Takes the stage of the function at `slot` out of the chain (its packets are dropped as
/// `no-stage` until the forwarder stops handing them over) and removes what it kept.
pub fn forget_stage(bpf_dir: &Path, slot: u32) -> Result<(), EbpfError> {
    let stages_pin = bpf_dir.join(STAGES_PIN);
    if stages_pin.exists() {
        let mut stages: ProgramArray<_> =
            ProgramArray::try_from(pinned_map(&stages_pin)?).map_err(map_error(&stages_pin))?;
        // An empty slot is fine.
        let _ = stages.clear_index(&slot);
    }
    remove_dir_if_present(&stage_dir(bpf_dir, slot))
}

fn remove_dir_if_present(dir: &Path) -> Result<(), EbpfError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Io {
            what: "remove",
            path: dir.to_path_buf(),
            source,
        }),
    }
}
