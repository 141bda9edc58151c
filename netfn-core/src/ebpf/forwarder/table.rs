//! The forwarder's pinned maps as userspace changes them: the forwarding table, whose rows hold
//! two versions of an entry so that changing a running chain is atomic for every packet (see
//! [`FwdRow`]), and the per-function counters.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError, MapInfo, PerCpuArray, PerCpuValues};
use netfn_common::{FWD_STACK, FWD_STAGE, FWD_VALID, FnCounters, FwdEntry, FwdRow, mac_words};

use crate::ebpf::{EbpfError, remove_file_if_present};
use crate::plan::{self, ForwarderEntry};

/// The map entry of one forwarder table row. Addresses are stored as their bytes in packet
/// order, so the program compares them with what it reads from the packet without swapping.
pub fn fwd_entry(e: &ForwarderEntry) -> FwdEntry {
    let net = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let (next, out) = (mac_words(e.next_mac), mac_words(e.out_mac));
    let eth_rewrite = [next[0], next[1], next[2], out[0], out[1], out[2]];
    FwdEntry {
        flags: FWD_VALID
            | if e.stage { FWD_STAGE } else { 0 }
            | if e.to_stack { FWD_STACK } else { 0 },
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

/// Opens the map pinned at `path`.
pub(crate) fn pinned_map(path: &Path) -> Result<Map, EbpfError> {
    let data = match MapData::from_pin(path) {
        Ok(data) => data,
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            return Err(EbpfError::NotPinned {
                path: path.to_path_buf(),
            });
        }
        Err(source) => return Err(map_error(path)(source)),
    };
    Map::from_map_data(data).map_err(map_error(path))
}

pub(crate) fn map_error(path: &Path) -> impl Fn(MapError) -> EbpfError + '_ {
    move |source| EbpfError::Map {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes the pinned map at `path` if its size does not match `max_entries`.
pub(crate) fn drop_unfit_pin(path: &Path, max_entries: u32) -> Result<(), EbpfError> {
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

/// A chain's pinned forwarding table.
pub struct FwdTable {
    path: PathBuf,
    map: Array<MapData, FwdRow>,
}

impl FwdTable {
    pub fn open(path: &Path) -> Result<Self, EbpfError> {
        let map = Array::try_from(pinned_map(path)?).map_err(map_error(path))?;
        Ok(FwdTable {
            path: path.to_path_buf(),
            map,
        })
    }

    /// Makes `e` the live entry of its interface. Returns false if it already was.
    pub fn set(&mut self, e: &ForwarderEntry) -> Result<bool, EbpfError> {
        self.put(e.ifindex, fwd_entry(e))
    }

    /// Invalidates the row of `ifindex` (an interface that is gone): packets on a later
    /// interface with that index are dropped as unknown until it gets its own entry.
    pub fn clear(&mut self, ifindex: u32) -> Result<bool, EbpfError> {
        self.put(ifindex, FwdEntry::default())
    }

    /// Stage, then flip (see [`FwdRow`]): the first update changes only the idle version, the
    /// second only `active`, so a packet reads the old entry or the new one, never a mix.
    fn put(&mut self, ifindex: u32, entry: FwdEntry) -> Result<bool, EbpfError> {
        let map_error = map_error(&self.path);
        let index = plan::interface_slot(ifindex)
            .filter(|i| *i < self.map.len())
            .ok_or_else(|| {
                map_error(MapError::OutOfBounds {
                    index: ifindex,
                    max_entries: self.map.len(),
                })
            })?;
        let mut row = self.map.get(&index, 0).map_err(&map_error)?;
        if *row.live() == entry {
            return Ok(false);
        }
        let idle = (row.active & 1) ^ 1;
        row.versions[idle as usize] = entry;
        self.map.set(index, row, 0).map_err(&map_error)?;
        row.active = idle;
        self.map.set(index, row, 0).map_err(&map_error)?;
        Ok(true)
    }
}

/// Zeroes the counters of the function slots `slots` (both directions), in the per-function
/// counter map pinned at `path`: a new function may take the slot of one a live apply removed.
pub fn zero_function_counters(path: &Path, slots: &[u32]) -> Result<(), EbpfError> {
    if slots.is_empty() {
        return Ok(());
    }
    let mut array: PerCpuArray<MapData, FnCounters> =
        PerCpuArray::try_from(pinned_map(path)?).map_err(map_error(path))?;
    let cpus = aya::util::nr_cpus().map_err(|(what, source)| EbpfError::Io {
        what: "cannot count the CPUs for",
        path: PathBuf::from(what),
        source,
    })?;
    for &slot in slots {
        for direction in [plan::Direction::Forward, plan::Direction::Reverse] {
            let zeros =
                PerCpuValues::try_from(vec![FnCounters::default(); cpus]).map_err(|source| {
                    EbpfError::Io {
                        what: "cannot build per-CPU values for",
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
            array
                .set(plan::counter_slot(slot, direction), zeros, 0)
                .map_err(map_error(path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Direction;
    use crate::plan::names;

    #[test]
    fn entries_hold_addresses_in_packet_byte_order() {
        let e = ForwarderEntry {
            ifindex: names::IFINDEX_BASE + 1,
            ifname: "nf-in".into(),
            hop: 1,
            stage: false,
            slot: 0,
            direction: Direction::Reverse,
            out_ifindex: names::IFINDEX_BASE + 2,
            own_mac: [2, 0, 0, 0, 0, 1],
            peer_mac: [2, 0, 0, 0, 0, 2],
            peer_addr: "10.1.0.2".parse().unwrap(),
            allowed_sources: "10.1.0.0/24".parse().unwrap(),
            extra_sources: Vec::new(),
            to_stack: false,
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
}
