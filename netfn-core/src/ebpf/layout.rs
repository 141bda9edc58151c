//! Whether a pinned map can serve this netfn's programs.
//!
//! A map that outlives its programs (a stage's kept tables, a chain's forwarder maps) was made by
//! the netfn that brought the chain up, and an upgrade may have changed its layout: a connection
//! entry that grew, a key with a new field. aya opens a pin without comparing it with the object,
//! so a program built for another layout would be refused by the verifier (a bigger value than
//! the map has) or, worse, would read the entries wrong (a smaller one). [`Declared::check`]
//! compares before anything loads.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use aya::maps::MapInfo;

use super::EbpfError;
use super::object::object_bytes;

/// What a map looks like to a program: its type and its key and value sizes. (The number of
/// entries is not part of it: the chain's plan sizes its maps, and a change of size is handled
/// where the size is chosen.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The kernel's `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values",
            self.map_type, self.key_size, self.value_size
        )
    }
}

/// The maps this netfn's eBPF object declares, by name.
pub struct Declared(HashMap<String, Layout>);

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
                    };
                    (name.clone(), layout)
                })
                .collect(),
        ))
    }

    /// Checks that the map pinned at `pin`, if any, has the layout the object declares for
    /// `name`: nothing pinned is fine (the load makes it).
    pub fn check(&self, name: &'static str, pin: &Path) -> Result<(), EbpfError> {
        let declared = *self
            .0
            .get(name)
            .ok_or(EbpfError::MissingInObject { kind: "map", name })?;
        let info = match MapInfo::from_pin(pin) {
            Ok(info) => info,
            Err(_) if !pin.exists() => return Ok(()),
            Err(source) => {
                return Err(EbpfError::Map {
                    path: pin.to_path_buf(),
                    source,
                });
            }
        };
        let pinned = Layout {
            // A type aya does not know is certainly not the declared one.
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
        };
        if pinned == declared {
            Ok(())
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
