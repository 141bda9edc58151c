//! A kind's per-packet stage in tc/xdp chains: which programs of netfn's eBPF object run at the
//! function's hop, which maps they use and how big, and how a new instance's maps are filled.
//!
//! Core loads one instance of the stage per function (`crate::ebpf::stages`): the program with
//! the chain's forwarder maps shared by pin, the kind's maps sized for this function, the kept
//! maps pinned per function. The kind fills the rest through [`StageMaps`]; core then puts the
//! program into the chain's stage array at the function's slot, which switches every packet to
//! it at once. A settings change loads a new instance the same way (the kept maps, and so the
//! function's state, carry over) and switches again.

use aya::Ebpf;
use aya::maps::{Map, MapError};

/// The programs of a stage in netfn's eBPF object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePrograms {
    /// A TC classifier, for `fastpath = "tc"`.
    pub tc: &'static str,
    /// An XDP program, for `fastpath = "xdp"`.
    pub xdp: &'static str,
}

/// A kind's per-packet work at its function's hop.
pub trait Stage: Send + Sync {
    fn programs(&self) -> StagePrograms;
    /// What a new instance for the function in `ctx` holds (computed once per instance).
    fn prepare(
        &self,
        ctx: &super::FunctionContext,
    ) -> Result<Box<dyn StageContent + '_>, StageError>;
    /// Maps that live as long as the function: pinned per function and shared by every instance,
    /// so a settings change keeps them (the connection table). Reusing the function's slot for
    /// another function removes them.
    fn kept_maps(&self) -> &'static [&'static str];
    /// Maps of the live instance that readers need (per-rule counters for metrics): pinned per
    /// function and replaced by each new instance when it goes live.
    fn instance_maps(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The content of one stage instance: its maps' sizes and values.
pub trait StageContent {
    /// `max_entries` of the stage's own maps for this function (maps not named keep the size
    /// the object gives them).
    fn map_sizes(&self) -> Vec<(&'static str, u32)>;
    /// Fills a new instance's maps before it goes live.
    fn fill(&self, maps: &mut StageMaps<'_>) -> Result<(), StageError>;
    /// Right after the instance went live, before readers find its [`Stage::instance_maps`]
    /// (their pins still name the instance it replaced, which counts no more packets): the
    /// moment to carry over what that one counted, so that a reader never sees a counter go
    /// back. Nothing by default. An error is a warning: the instance stays live, its counters
    /// start from zero.
    fn live(&self, maps: &mut StageMaps<'_>) -> Result<(), StageError> {
        let _ = maps;
        Ok(())
    }
}

/// The maps of one stage instance being prepared.
pub struct StageMaps<'a> {
    ebpf: &'a mut Ebpf,
    /// The function's slot in the chain (its index in the stage array and counter maps).
    pub slot: u32,
    /// True when the kept maps were just created (the function is new, not changed).
    pub fresh: bool,
    /// Where the function's maps are pinned (the live instance's [`Stage::instance_maps`] too,
    /// so a new instance can read what the one it replaces counted).
    pub dir: std::path::PathBuf,
}

impl<'a> StageMaps<'a> {
    pub fn new(ebpf: &'a mut Ebpf, slot: u32, fresh: bool, dir: std::path::PathBuf) -> Self {
        StageMaps {
            ebpf,
            slot,
            fresh,
            dir,
        }
    }

    /// The map `name` of the instance, to open as a typed aya map.
    pub fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, StageError> {
        self.ebpf.map_mut(name).ok_or(StageError::MissingMap(name))
    }
}

/// Why a stage instance could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the eBPF object has no map {0}; rebuild netfn (cargo xtask build-ebpf)")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{0}")]
    Other(String),
}
