//! Whether a pinned map can serve this netfn's programs.
//!
//! A map that outlives its programs (a stage's kept tables, a chain's forwarder maps) was made by
//! the netfn that brought the chain up, and an upgrade may have changed its layout: a connection
//! entry that grew, a key with a new field, a flag. aya opens a pin without comparing it with the
//! object, so a program built for another layout would be refused by the verifier (a bigger
//! value than the map has) or, worse, would read the entries wrong (a smaller one), or meet a map
//! that behaves otherwise than it was built for (flags). [`Declared::check`] compares before
//! anything loads; [`Declared::check_kept`] also compares the number of entries of a map whose
//! entries are found by index.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use aya::maps::MapInfo;
use aya_obj::generated::{self as uapi, bpf_map_type as ty};

use super::EbpfError;
use super::object::object_bytes;

/// What a map looks like to a program: its type, its key and value sizes, and its flags. (The
/// number of entries is not part of it: the chain's plan and the functions' settings size the
/// maps, see [`Declared::check_kept`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The kernel's `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// The `BPF_F_*` map flags that change what the map does (see [`Layout::flags_of`]).
    pub flags: u32,
}

/// Map flags that are no part of a map's layout: `BPF_F_RDONLY` and `BPF_F_WRONLY` limit the
/// file descriptor that creates the map (the kernel does not keep them: a pin never shows them),
/// `BPF_F_NUMA_NODE` only says where its memory is. Every other flag changes what the map does
/// for programs or for netfn: `BPF_F_NO_PREALLOC` (whether an element deleted under a program
/// can be reused at once, whether an update can fail for memory), `BPF_F_NO_COMMON_LRU` (per-CPU
/// eviction: a table full much sooner), `BPF_F_MMAPABLE` (netfn maps it), the `_PROG` access
/// flags (what the verifier lets a program do), and any a later kernel adds.
const PLACEMENT_FLAGS: u32 = uapi::BPF_F_RDONLY | uapi::BPF_F_WRONLY | uapi::BPF_F_NUMA_NODE;

/// Names of the flags netfn's maps use or might, for messages.
const FLAG_NAMES: [(u32, &str); 6] = [
    (uapi::BPF_F_NO_PREALLOC, "BPF_F_NO_PREALLOC"),
    (uapi::BPF_F_NO_COMMON_LRU, "BPF_F_NO_COMMON_LRU"),
    (uapi::BPF_F_ZERO_SEED, "BPF_F_ZERO_SEED"),
    (uapi::BPF_F_RDONLY_PROG, "BPF_F_RDONLY_PROG"),
    (uapi::BPF_F_WRONLY_PROG, "BPF_F_WRONLY_PROG"),
    (uapi::BPF_F_MMAPABLE, "BPF_F_MMAPABLE"),
];

/// Map types whose maps the kernel makes `BPF_F_RDONLY_PROG` whatever the flags asked for (a
/// lookup returns a pointer into the kernel's own entry): a pin shows the flag, the object's
/// declaration does not.
const READ_ONLY_FOR_PROGRAMS: [ty; 3] = [
    ty::BPF_MAP_TYPE_DEVMAP,
    ty::BPF_MAP_TYPE_DEVMAP_HASH,
    ty::BPF_MAP_TYPE_CPUMAP,
];

impl Layout {
    /// The part of the flags `flags` of a map of type `map_type` that is part of its layout, as
    /// the kernel keeps them.
    pub fn flags_of(map_type: u32, flags: u32) -> u32 {
        let implied = if READ_ONLY_FOR_PROGRAMS.iter().any(|t| *t as u32 == map_type) {
            uapi::BPF_F_RDONLY_PROG
        } else {
            0
        };
        (flags | implied) & !PLACEMENT_FLAGS
    }

    /// Whether a key is an index below the number of entries (an array, a program or device
    /// array...): a program then computes where an entry is from that number, and a map of
    /// another number holds its entries elsewhere. In a hash map the number is only room.
    pub fn indexed(&self) -> bool {
        [
            ty::BPF_MAP_TYPE_ARRAY,
            ty::BPF_MAP_TYPE_PROG_ARRAY,
            ty::BPF_MAP_TYPE_PERF_EVENT_ARRAY,
            ty::BPF_MAP_TYPE_PERCPU_ARRAY,
            ty::BPF_MAP_TYPE_CGROUP_ARRAY,
            ty::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            ty::BPF_MAP_TYPE_DEVMAP,
            ty::BPF_MAP_TYPE_CPUMAP,
            ty::BPF_MAP_TYPE_XSKMAP,
        ]
        .iter()
        .any(|t| *t as u32 == self.map_type)
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values, ",
            self.map_type, self.key_size, self.value_size
        )?;
        if self.flags == 0 {
            return write!(f, "no flags");
        }
        let mut names: Vec<String> = FLAG_NAMES
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|(_, name)| name.to_string())
            .collect();
        let named = FLAG_NAMES.iter().fold(0, |all, (bit, _)| all | bit);
        if self.flags & !named != 0 {
            names.push(format!("{:#x}", self.flags & !named));
        }
        write!(f, "flags {}", names.join(" | "))
    }
}

/// The maps this netfn's eBPF object declares, by name: their layouts and numbers of entries.
pub struct Declared(HashMap<String, (Layout, u32)>);

impl Declared {
    /// Reads the declarations of the object netfn loads (see [`super::object_source`]).
    pub fn of_object() -> Result<Self, EbpfError> {
        let bytes = object_bytes()?;
        let object =
            aya_obj::Object::parse(&bytes).map_err(|e| EbpfError::ParseObject(e.to_string()))?;
        Ok(Declared(
            object
                .maps
                .iter()
                .map(|(name, map)| {
                    let layout = Layout {
                        map_type: map.map_type(),
                        key_size: map.key_size(),
                        value_size: map.value_size(),
                        flags: Layout::flags_of(map.map_type(), map.map_flags()),
                    };
                    (name.clone(), (layout, map.max_entries()))
                })
                .collect(),
        ))
    }

    /// Checks that the map pinned at `pin`, if any, has the layout the object declares for
    /// `name`: nothing pinned is fine (the load makes it).
    pub fn check(&self, name: &'static str, pin: &Path) -> Result<(), EbpfError> {
        self.pinned(name, pin).map(|_| ())
    }

    /// [`Self::check`] for a map a stage keeps across instances, whose new instance sizes it
    /// `entries` (`None`: the object's number): one of another number of entries is refused if
    /// its entries are found by index ([`Layout::indexed`]: the new programs and settings would
    /// look for them elsewhere). A hash map of another number is fine: that is its room, which
    /// only the function's settings change (and those only with down and up), so the new
    /// programs run on it as the old ones did.
    pub fn check_kept(
        &self,
        name: &'static str,
        pin: &Path,
        entries: Option<u32>,
    ) -> Result<(), EbpfError> {
        let Some((layout, pinned)) = self.pinned(name, pin)? else {
            return Ok(());
        };
        let wanted = entries.unwrap_or(self.declared(name)?.1);
        if layout.indexed() && pinned != wanted {
            return Err(EbpfError::KeptSize {
                path: pin.to_path_buf(),
                name,
                pinned,
                wanted,
            });
        }
        Ok(())
    }

    fn declared(&self, name: &'static str) -> Result<(Layout, u32), EbpfError> {
        self.0
            .get(name)
            .copied()
            .ok_or(EbpfError::MissingInObject { kind: "map", name })
    }

    /// The layout and number of entries of the map pinned at `pin` (None: nothing is), checked
    /// against the object's declaration of `name`.
    fn pinned(&self, name: &'static str, pin: &Path) -> Result<Option<(Layout, u32)>, EbpfError> {
        let (declared, _) = self.declared(name)?;
        let info = match MapInfo::from_pin(pin) {
            Ok(info) => info,
            Err(_) if !pin.exists() => return Ok(None),
            Err(source) => {
                return Err(EbpfError::Map {
                    path: pin.to_path_buf(),
                    source,
                });
            }
        };
        // A type aya does not know is certainly not the declared one.
        let map_type = info.map_type().map_or(u32::MAX, |t| t as u32);
        let pinned = Layout {
            map_type,
            key_size: info.key_size(),
            value_size: info.value_size(),
            flags: Layout::flags_of(map_type, info.map_flags()),
        };
        if pinned == declared {
            Ok(Some((pinned, info.max_entries())))
        } else {
            Err(EbpfError::Layout {
                path: pin.to_path_buf(),
                name,
                pinned,
                declared,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(map_type: ty, flags: u32) -> Layout {
        Layout {
            map_type: map_type as u32,
            key_size: 4,
            value_size: 8,
            flags: Layout::flags_of(map_type as u32, flags),
        }
    }

    #[test]
    fn flags_that_change_what_a_map_does_are_its_layout_and_placement_is_not() {
        let hash = ty::BPF_MAP_TYPE_HASH;
        assert_ne!(
            layout(hash, 0),
            layout(hash, uapi::BPF_F_NO_PREALLOC),
            "preallocated or not"
        );
        let lru = ty::BPF_MAP_TYPE_LRU_HASH;
        assert_ne!(layout(lru, 0), layout(lru, uapi::BPF_F_NO_COMMON_LRU));
        let array = ty::BPF_MAP_TYPE_ARRAY;
        assert_ne!(layout(array, 0), layout(array, uapi::BPF_F_MMAPABLE));
        assert_ne!(layout(array, 0), layout(array, uapi::BPF_F_RDONLY_PROG));
        assert_ne!(layout(array, 0), layout(array, 1 << 30), "an unknown flag");
        // The kernel keeps neither access flag of the creating descriptor; the node is placement.
        for placement in [
            uapi::BPF_F_RDONLY,
            uapi::BPF_F_WRONLY,
            uapi::BPF_F_NUMA_NODE,
        ] {
            assert_eq!(layout(hash, 0), layout(hash, placement), "{placement:#x}");
        }
        // The kernel makes a device map read-only for programs whatever the object declares.
        let devmap = ty::BPF_MAP_TYPE_DEVMAP;
        assert_eq!(
            layout(devmap, 0),
            layout(devmap, uapi::BPF_F_RDONLY_PROG),
            "as declared, as pinned"
        );
    }

    #[test]
    fn the_number_of_entries_matters_where_keys_are_indexes() {
        for t in [
            ty::BPF_MAP_TYPE_ARRAY,
            ty::BPF_MAP_TYPE_PERCPU_ARRAY,
            ty::BPF_MAP_TYPE_PROG_ARRAY,
            ty::BPF_MAP_TYPE_DEVMAP,
        ] {
            assert!(layout(t, 0).indexed(), "{t:?}");
        }
        for t in [
            ty::BPF_MAP_TYPE_HASH,
            ty::BPF_MAP_TYPE_LRU_HASH,
            ty::BPF_MAP_TYPE_PERCPU_HASH,
            ty::BPF_MAP_TYPE_LPM_TRIE,
        ] {
            assert!(!layout(t, 0).indexed(), "{t:?}");
        }
    }

    #[test]
    fn a_layout_names_its_flags() {
        let lru = ty::BPF_MAP_TYPE_LRU_HASH;
        assert_eq!(
            layout(lru, 0).to_string(),
            "type 9, 4-byte keys, 8-byte values, no flags"
        );
        assert_eq!(
            layout(lru, uapi::BPF_F_NO_COMMON_LRU | 1 << 30).to_string(),
            "type 9, 4-byte keys, 8-byte values, flags BPF_F_NO_COMMON_LRU | 0x40000000"
        );
    }
}
