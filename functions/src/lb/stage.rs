//! The load balancer's eBPF stage as the seam sees it: which programs, which maps and how big,
//! and how a new instance is filled.
//!
//! Backends are numbered across the function (service 0's first, then service 1's…;
//! [`numbered`]), and the numbering is named by a hash of the list ([`LbConf::numbering`]): the
//! stage renumbers a flow tracked under another one by its backend's identity, through the
//! numbers the reverse map holds. Each service owns two halves of the table map. A new instance
//! gets Maglev tables built over the live instance's ones (read from its pins), so a settings
//! change moves only the flows it must even for flows the connection table no longer holds, and
//! backends keep the health state the live instance has for them. The connection table, the
//! statistics and the table of fragmented datagrams in flight carry over; the backends' way
//! back ([`super::reverse`]) is built anew, keeping what left.

use std::collections::HashMap as Map;
use std::net::IpAddr;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData};
use netfn_common::lb::{
    BACKEND_DOWN, Backend, BackendCounters, BackendKey, FAMILY_V4, FAMILY_V6,
    LB_BACKEND_COUNTERS_MAP, LB_BACKENDS_MAP, LB_CONF_MAP, LB_FLOWS_MAP, LB_FRAGS_MAP,
    LB_REVERSE_MAP, LB_SERVICES_MAP, LB_STATS_MAP, LB_TABLE_MAP, LB_TC_PROGRAM, LB_XDP_PROGRAM,
    LbConf, LbFlowSet, LbFrag, LbStats, NO_BACKEND, Reverse, Service, ServiceKey, VipPort,
    flow_sets,
};
use netfn_core::function::{
    FunctionContext, Stage, StageContent, StageError, StageMaps, StagePrograms,
};

use super::config::{BackendConf, LbSettings, ServiceConf};
use super::kind::LbConfig;
use super::maglev::{self, Entry, Previous};
use super::{carry, counters, reverse};
use crate::maps::{MappedU32, fill_array, map_err};

const SECOND: u64 = 1_000_000_000;

impl Stage for LbConfig {
    fn programs(&self) -> StagePrograms {
        StagePrograms {
            tc: LB_TC_PROGRAM,
            xdp: LB_XDP_PROGRAM,
        }
    }

    fn kept_maps(&self) -> &'static [&'static str] {
        &[LB_FLOWS_MAP, LB_STATS_MAP, LB_FRAGS_MAP]
    }

    /// Pinned so that readers (metrics, the health checks, the next instance) find the live
    /// instance's tables and counters, and its timeouts (which flows of removed backends the
    /// next instance must still answer: [`super::carry`]).
    fn instance_maps(&self) -> &'static [&'static str] {
        &[
            LB_CONF_MAP,
            LB_SERVICES_MAP,
            LB_TABLE_MAP,
            LB_BACKENDS_MAP,
            LB_BACKEND_COUNTERS_MAP,
            LB_REVERSE_MAP,
        ]
    }

    fn prepare(&self, ctx: &FunctionContext) -> Result<Box<dyn StageContent + '_>, StageError> {
        Ok(Box::new(Content {
            settings: &self.settings,
            previous: ctx.previous.as_ref().and_then(|p| p.parse().ok()),
        }))
    }
}

struct Content<'a> {
    settings: &'a LbSettings,
    /// The settings of the instance this one replaces (a change in place), whose counters it
    /// carries over ([`counters`]).
    previous: Option<LbSettings>,
}

/// The CPU slices [`LB_BACKEND_COUNTERS_MAP`] has: one per possible CPU id (the highest in
/// /sys/devices/system/cpu/possible, plus one: a sparse mask leaves slices unused, never a CPU
/// without one).
pub fn counter_cpus() -> Result<u32, String> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(POSSIBLE).map_err(|e| format!("read {POSSIBLE}: {e}"))?;
    highest_cpu(&text)
        .map(|id| id.saturating_add(1))
        .ok_or_else(|| format!("{POSSIBLE}: cannot parse the CPU list {:?}", text.trim()))
}

/// The highest CPU id of a kernel CPU list ("0-3", "0,2-5").
fn highest_cpu(list: &str) -> Option<u32> {
    let mut highest = None;
    for range in list.trim().split(',') {
        let last = range.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        highest = highest.max(Some(last));
    }
    highest
}

/// Map keys and values of a service and a backend, as the stage reads them.
pub fn service_key(s: &ServiceConf) -> ServiceKey {
    let (vip, family) = address(s.vip);
    ServiceKey {
        vip,
        port: s.port.to_be(),
        proto: s.proto.number(),
        family,
        _pad: 0,
    }
}

/// `vip:port` of a service, as a backend's answer must show it (the reverse map's services).
pub fn vip_port(s: &ServiceConf) -> VipPort {
    VipPort {
        vip: address(s.vip).0,
        port: s.port.to_be(),
        _pad: 0,
    }
}

/// The identity of backend `b` of service `s`, as its answers show it (the reverse map's key).
pub fn backend_key(s: &ServiceConf, b: &BackendConf) -> BackendKey {
    let (addr, family) = address(b.address);
    BackendKey {
        addr,
        port: b.port.to_be(),
        proto: s.proto.number(),
        family,
    }
}

/// Every backend of every service with its backend number: its place in the function's list,
/// service 0's backends first.
pub fn numbered(s: &LbSettings) -> impl Iterator<Item = (u32, &ServiceConf, &BackendConf)> {
    s.services
        .iter()
        .flat_map(|service| service.backends.iter().map(move |b| (service, b)))
        .zip(0u32..)
        .map(|((service, b), number)| (number, service, b))
}

/// The name of the numbering of `s` ([`LbConf::numbering`]): a hash of which backend of which
/// service each number is, never 0 (the numbering of flows tracked by a stage that kept none).
/// Settings that number alike (a weight or a health check changed) name it alike, so their
/// flows keep their numbers without a look-up.
pub fn numbering(s: &LbSettings) -> u32 {
    use blake2::{Blake2s256, Digest};
    let mut hash = Blake2s256::new().chain_update(b"netfn lb numbering\0");
    for (number, service, b) in numbered(s) {
        hash.update(format!("{number} {} {}\n", service.label(), b.id()));
    }
    let digest = hash.finalize();
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]).max(1)
}

/// The idle timeouts of tracked flows in `s`, as the stage's settings hold them (the rest
/// zero; [`LbFlow::ended`](netfn_common::lb::LbFlow::ended) reads these).
pub fn timeouts(s: &LbSettings) -> LbConf {
    LbConf {
        tcp_ns: u64::from(s.conntrack.tcp) * SECOND,
        tcp_half_closed_ns: u64::from(s.conntrack.tcp_half_closed) * SECOND,
        tcp_closing_ns: u64::from(s.conntrack.tcp_closing) * SECOND,
        udp_ns: u64::from(s.conntrack.udp) * SECOND,
        tcp_syn_s: s.conntrack.tcp_syn,
        ..LbConf::default()
    }
}

/// An address as the maps hold it (packet byte order, IPv4 in word 0), and its family.
pub fn address(a: IpAddr) -> ([u32; 4], u8) {
    match a {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

/// `addr:port` of a backend map value (the identity the Maglev tables use).
pub fn backend_id(b: &Backend) -> String {
    let o = b.addr[0].to_ne_bytes();
    format!(
        "{}.{}.{}.{}:{}",
        o[0],
        o[1],
        o[2],
        o[3],
        u16::from_be(b.port)
    )
}

/// What the live instance holds: per service key, its live table (size and backend numbers),
/// the identity of every backend number, and the backends it has down.
#[derive(Default)]
pub(super) struct Live {
    pub(super) tables: Map<ServiceKey, (u32, Vec<u32>)>,
    pub(super) ids: Vec<String>,
    pub(super) down: Vec<String>,
}

impl Live {
    /// The live table of service `key`, as [`build_table`] takes it.
    fn previous(&self, key: &ServiceKey) -> Option<(u32, &[u32], &[String])> {
        let (size, table) = self.tables.get(key)?;
        Some((*size, table.as_slice(), self.ids.as_slice()))
    }
}

impl Live {
    /// Reads the live instance's pins under `dir` (nothing, for a new function).
    pub(super) fn read(dir: &Path) -> Live {
        let open = |name: &str| {
            MapData::from_pin(dir.join(name))
                .ok()
                .and_then(|d| aya::maps::Map::from_map_data(d).ok())
        };
        let (Some(services), Some(table), Some(backends)) = (
            open(LB_SERVICES_MAP),
            open(LB_TABLE_MAP),
            open(LB_BACKENDS_MAP),
        ) else {
            return Live::default();
        };
        let aya::maps::Map::Array(table) = table else {
            return Live::default();
        };
        let (Ok(services), Ok(table), Ok(backends)) = (
            HashMap::<_, ServiceKey, Service>::try_from(services),
            MappedU32::new(&table, false),
            Array::<_, Backend>::try_from(backends),
        ) else {
            return Live::default();
        };
        let backends: Vec<Backend> = (0..backends.len())
            .filter_map(|i| backends.get(&i, 0).ok())
            .collect();
        let mut live = Live {
            down: backends
                .iter()
                .filter(|b| b.flags & BACKEND_DOWN != 0)
                .map(backend_id)
                .collect(),
            ids: backends.iter().map(backend_id).collect(),
            ..Live::default()
        };
        for (key, service) in services.iter().filter_map(Result::ok) {
            let base = service.table[(service.active & 1) as usize] as usize;
            if let Some(half) = table.read(base, service.size as usize) {
                live.tables.insert(key, (service.size, half));
            }
        }
        live
    }
}

/// Each map the stage makes for `s`, with `cpus` CPU slices of the per-CPU ones: its name, its
/// entries (not capped: validation bounds them through [`map_bytes`]) and the bytes of each
/// (key and value; the kernel's own overhead aside).
fn maps(s: &LbSettings, cpus: u32) -> [(&'static str, u64, u64); 9] {
    let size = |bytes: usize| bytes as u64;
    let services = s.services.len() as u64;
    let backends: usize = s.services.iter().map(|s| s.backends.len()).sum();
    let counters = counters::Layout::new(backends, cpus).len(s.services.len());
    let cpus = u64::from(cpus);
    [
        (
            LB_SERVICES_MAP,
            services,
            size(size_of::<ServiceKey>() + size_of::<Service>()),
        ),
        (
            LB_TABLE_MAP,
            services * 2 * u64::from(s.table_size),
            size(size_of::<u32>()),
        ),
        (LB_BACKENDS_MAP, backends as u64, size(size_of::<Backend>())),
        (
            LB_BACKEND_COUNTERS_MAP,
            counters,
            size(size_of::<BackendCounters>()),
        ),
        (LB_CONF_MAP, 1, size(size_of::<LbConf>())),
        // One slot per flow, in sets (answers find it through the reverse map).
        (
            LB_FLOWS_MAP,
            u64::from(flow_sets(s.conntrack.size)),
            size(size_of::<LbFlowSet>()),
        ),
        (LB_STATS_MAP, 1, size(size_of::<LbStats>()) * cpus),
        (
            LB_REVERSE_MAP,
            u64::from(reverse_capacity(s)),
            size(size_of::<BackendKey>() + size_of::<Reverse>()),
        ),
        (
            LB_FRAGS_MAP,
            u64::from(netfn_common::FRAGS_SIZE),
            size(size_of::<netfn_common::FragKey>() + size_of::<LbFrag>()),
        ),
    ]
}

/// The bytes of each map the stage would make for `s` on a host with `cpus` possible CPUs
/// ([`counter_cpus`]).
pub fn map_bytes(s: &LbSettings, cpus: u32) -> Vec<(&'static str, u64)> {
    maps(s, cpus)
        .into_iter()
        .map(|(name, entries, each)| (name, entries.saturating_mul(each)))
        .collect()
}

/// Where service `i`'s two table halves of `size` entries start in [`LB_TABLE_MAP`]; `None`
/// past u32 (validation refuses such settings: see `MAX_MAP_BYTES`).
fn halves(i: u32, size: u32) -> Option<[u32; 2]> {
    let base = i.checked_mul(2)?.checked_mul(size)?;
    Some([base, base.checked_add(size)?])
}

impl Content<'_> {
    /// Writes what the replaced instance (its maps still pinned under `maps.dir`) counted for
    /// the backends and services that persist into this one's carried entries.
    fn carry_counters(&self, maps: &mut StageMaps<'_>) -> Result<(), String> {
        let Some(old) = self.previous.as_ref().filter(|_| !maps.fresh) else {
            return Ok(());
        };
        let before = counters::read(&maps.dir)?;
        let new = self.settings;
        let layout = counters::Layout::new(numbered(new).count(), counter_cpus()?);
        let Some(entries) = counters::carry(old, &before, new, layout) else {
            return Err("the live instance's counters do not match its settings".into());
        };
        let map = maps
            .map_mut(LB_BACKEND_COUNTERS_MAP)
            .map_err(|e| e.to_string())?;
        let mut array: Array<&mut MapData, BackendCounters> =
            Array::try_from(map).map_err(|e| format!("{LB_BACKEND_COUNTERS_MAP}: {e}"))?;
        for (index, value) in entries {
            let index = u32::try_from(index).map_err(|e| e.to_string())?;
            array
                .set(index, value, 0)
                .map_err(|e| format!("{LB_BACKEND_COUNTERS_MAP}: {e}"))?;
        }
        Ok(())
    }
}

impl StageContent for Content<'_> {
    fn map_sizes(&self) -> Vec<(&'static str, u32)> {
        // `fill` fails if the CPUs cannot be counted.
        maps(self.settings, counter_cpus().unwrap_or(1))
            .into_iter()
            .map(|(name, entries, _)| (name, u32::try_from(entries).unwrap_or(u32::MAX).max(1)))
            .collect()
    }

    fn fill(&self, maps: &mut StageMaps<'_>) -> Result<(), StageError> {
        let s = self.settings;
        let (live, live_reverse) = if maps.fresh {
            (Live::default(), Vec::new())
        } else {
            (Live::read(&maps.dir), read_reverse(&maps.dir))
        };
        let mut numbered: Vec<Backend> = Vec::new();
        let mut tables: Vec<(ServiceKey, Vec<u32>)> = Vec::new();
        for service in &s.services {
            let first = numbered.len() as u32;
            let ids: Vec<String> = service.backends.iter().map(|b| b.id()).collect();
            for b in &service.backends {
                let (addr, family) = address(b.address);
                let down = live.down.contains(&b.id());
                numbered.push(Backend {
                    addr,
                    port: b.port.to_be(),
                    family,
                    _pad: 0,
                    flags: if down { BACKEND_DOWN } else { 0 },
                });
            }
            let down: Vec<bool> = ids.iter().map(|id| live.down.contains(id)).collect();
            let key = service_key(service);
            let table = build_table(service, &ids, &down, s.table_size, live.previous(&key));
            let global = table
                .into_iter()
                .map(|i| {
                    if i == maglev::NONE {
                        NO_BACKEND
                    } else {
                        first + i
                    }
                })
                .collect();
            tables.push((key, global));
        }
        fill_array(maps, LB_BACKENDS_MAP, &numbered)?;
        {
            let capacity = reverse_capacity(s) as usize;
            // Ways back that left at an earlier change go with their last flow.
            let carried = carry::carried(&live_reverse);
            let started = std::time::Instant::now();
            let still_needed = carry::still_needed(&maps.dir, &carried, &timeouts(s));
            if !carried.is_empty() {
                tracing::debug!(
                    "load balancer: {} of {} carried ways back still have a flow ({} checked \
                     in {:.2?})",
                    still_needed.as_ref().map_or(carried.len(), |n| n.len()),
                    carried.len(),
                    LB_FLOWS_MAP,
                    started.elapsed()
                );
            }
            let map = maps.map_mut(LB_REVERSE_MAP)?;
            let mut way_back: HashMap<&mut MapData, BackendKey, Reverse> =
                HashMap::try_from(map).map_err(map_err(LB_REVERSE_MAP))?;
            let ways = reverse::entries(s, &live_reverse, still_needed.as_ref(), capacity);
            if ways.left_out > 0 {
                tracing::warn!(
                    "load balancer: {} backend(s) that left the settings find no room for their \
                     way back (room for {} backends that left): answers of their \
                     flows still running will pass with the backend's address (clients reset \
                     them; no drop is counted)",
                    ways.left_out,
                    reverse::carry_room()
                );
            }
            for (key, value) in ways.entries {
                way_back
                    .insert(key, value, 0)
                    .map_err(map_err(LB_REVERSE_MAP))?;
            }
        }
        let conf = LbConf {
            flow_sets: flow_sets(s.conntrack.size),
            backends: u32::try_from(numbered.len()).unwrap_or(u32::MAX),
            numbering: numbering(s),
            ..timeouts(s)
        };
        counter_cpus().map_err(StageError::Other)?;
        fill_array(maps, LB_CONF_MAP, &[conf])?;
        let size = s.table_size;
        let placed: Vec<[u32; 2]> = (0u32..)
            .zip(&tables)
            .map(|(i, _)| halves(i, size))
            .collect::<Option<_>>()
            .ok_or_else(|| {
                StageError::Other(format!(
                    "{} services with two tables of {size} entries pass the table map's u32 \
                     index",
                    tables.len()
                ))
            })?;
        {
            let aya::maps::Map::Array(data) = maps.map_mut(LB_TABLE_MAP)? else {
                return Err(StageError::Other(format!("{LB_TABLE_MAP} is not an array")));
            };
            let mut mapped = MappedU32::new(data, true).map_err(StageError::Other)?;
            for ((_, table), [base, _]) in tables.iter().zip(&placed) {
                mapped
                    .write(*base as usize, table)
                    .map_err(StageError::Other)?;
            }
        }
        let map = maps.map_mut(LB_SERVICES_MAP)?;
        let mut services: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(map).map_err(map_err(LB_SERVICES_MAP))?;
        for ((key, _), table) in tables.iter().zip(placed) {
            let service = Service {
                table,
                active: 0,
                size,
            };
            services
                .insert(key, service, 0)
                .map_err(map_err(LB_SERVICES_MAP))?;
        }
        Ok(())
    }

    /// The per-backend and per-service counters carry over; failing that (a warning), the
    /// change stands and they start again from zero, as before.
    fn live(&self, maps: &mut StageMaps<'_>) -> Result<(), StageError> {
        if let Err(e) = self.carry_counters(maps) {
            tracing::warn!(
                "load balancer: the per-backend and per-service counters start again from zero: {e}"
            );
        }
        Ok(())
    }
}

/// Entries of the reverse map: the configured backends and room for ones that left.
fn reverse_capacity(s: &LbSettings) -> u32 {
    u32::try_from(reverse::configured(s))
        .unwrap_or(u32::MAX)
        .saturating_add(reverse::carry_room())
}

/// The live instance's reverse map under `dir` (nothing if it has none).
fn read_reverse(dir: &Path) -> Vec<(BackendKey, Reverse)> {
    MapData::from_pin(dir.join(LB_REVERSE_MAP))
        .ok()
        .and_then(|d| aya::maps::Map::from_map_data(d).ok())
        .and_then(|m| HashMap::<_, BackendKey, Reverse>::try_from(m).ok())
        .map(|m| m.iter().filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// The Maglev table of `service` (indexes into its backends), built over the live one when the
/// live one has the same size. Backends that are `down` get no entries.
pub fn build_table(
    service: &ServiceConf,
    ids: &[String],
    down: &[bool],
    size: u32,
    live: Option<(u32, &[u32], &[String])>,
) -> Vec<u32> {
    let entries: Vec<Entry<'_>> = service
        .backends
        .iter()
        .zip(ids)
        .zip(down)
        .map(|((b, id), &down)| Entry {
            id,
            weight: if down { 0 } else { b.weight },
        })
        .collect();
    // The live table (backend numbers) and the identity of each number.
    let names: Vec<&str> = live.map_or(Vec::new(), |(_, _, ids)| {
        ids.iter().map(String::as_str).collect()
    });
    let previous = live
        .filter(|(s, _, _)| *s == size)
        .map(|(_, table, _)| Previous { table, ids: &names });
    maglev::build(&entries, size, previous)
}

/// Health: marks the backends of `s` that `down` names (by identity) down in the live
/// instance pinned under `dir`, and switches every service to a table built without them over
/// its live one (each switch one update of the service's entry, as at a settings change).
pub fn apply_health(dir: &Path, s: &LbSettings, down: &[String]) -> Result<(), String> {
    let err = |what: &'static str| move |e: aya::maps::MapError| format!("{what}: {e}");
    let open = |name: &str| -> Result<aya::maps::Map, String> {
        let data = MapData::from_pin(dir.join(name))
            .map_err(|e| format!("open {}: {e}", dir.join(name).display()))?;
        aya::maps::Map::from_map_data(data).map_err(|e| format!("{name}: {e}"))
    };
    let live = Live::read(dir);
    let mut backends: Array<_, Backend> =
        Array::try_from(open(LB_BACKENDS_MAP)?).map_err(err(LB_BACKENDS_MAP))?;
    let mut number = 0u32;
    for service in &s.services {
        for b in &service.backends {
            if let Ok(mut value) = backends.get(&number, 0) {
                let is_down = down.contains(&b.id());
                let flags = if is_down {
                    value.flags | BACKEND_DOWN
                } else {
                    value.flags & !BACKEND_DOWN
                };
                if flags != value.flags {
                    value.flags = flags;
                    backends
                        .set(number, value, 0)
                        .map_err(err(LB_BACKENDS_MAP))?;
                }
            }
            number += 1;
        }
    }
    let aya::maps::Map::Array(table_data) = open(LB_TABLE_MAP)? else {
        return Err(format!("{LB_TABLE_MAP} is not an array"));
    };
    let mut table = MappedU32::new(&table_data, true)?;
    let mut services: HashMap<_, ServiceKey, Service> =
        HashMap::try_from(open(LB_SERVICES_MAP)?).map_err(err(LB_SERVICES_MAP))?;
    let mut first = 0u32;
    for service in &s.services {
        let key = service_key(service);
        let ids: Vec<String> = service.backends.iter().map(|b| b.id()).collect();
        let is_down: Vec<bool> = ids.iter().map(|id| down.contains(id)).collect();
        let Ok(mut live_service) = services.get(&key, 0) else {
            first += ids.len() as u32;
            continue;
        };
        let new = build_table(
            service,
            &ids,
            &is_down,
            live_service.size,
            live.previous(&key),
        );
        let idle = (live_service.active & 1) ^ 1;
        let global: Vec<u32> = new
            .iter()
            .map(|&n| {
                if n == maglev::NONE {
                    NO_BACKEND
                } else {
                    first + n
                }
            })
            .collect();
        table.write(live_service.table[idle as usize] as usize, &global)?;
        live_service.active = idle;
        services
            .insert(key, live_service, 0)
            .map_err(err(LB_SERVICES_MAP))?;
        first += ids.len() as u32;
    }
    Ok(())
}

/// The backends the live instance under `dir` has marked down, by identity.
pub fn down_backends(dir: &Path) -> Vec<String> {
    Live::read(dir).down
}

#[cfg(test)]
mod tests {
    use super::{LB_FLOWS_MAP, LB_TABLE_MAP, halves, highest_cpu, map_bytes, numbering};
    use crate::lb::config::{BackendConf, L4, LbConntrack, LbSettings, ServiceConf};
    use crate::lb::reverse::tests::{service, settings};

    #[test]
    fn table_halves_are_placed_within_u32_or_not_at_all() {
        assert_eq!(halves(0, 65_537), Some([0, 65_537]));
        assert_eq!(halves(3, 7), Some([42, 49]));
        // 130 services of the largest table_size: 128 × 2 × size still fits, its second half
        // does not (`i * 2 * size` wrapped around here).
        assert_eq!(
            halves(127, 16_777_213),
            Some([4_261_412_102, 4_278_189_315])
        );
        assert_eq!(halves(128, 16_777_213), None);
        assert_eq!(halves(129, 16_777_213), None);
    }

    #[test]
    fn map_bytes_count_tables_and_flows_without_wrapping() {
        let service = |port| ServiceConf {
            vip: "192.0.2.10".parse().unwrap(),
            proto: L4::Tcp,
            port,
            backends: vec![BackendConf {
                address: "10.2.0.10".parse().unwrap(),
                port,
                weight: 1,
            }],
            health: None,
        };
        let settings = LbSettings {
            services: (1..=130).map(service).collect(),
            table_size: 16_777_213,
            conntrack: LbConntrack {
                size: 16 << 20,
                ..LbConntrack::default()
            },
            spans: Vec::new(),
        };
        let bytes = map_bytes(&settings, 2);
        let of = |map| bytes.iter().find(|(name, _)| *name == map).unwrap().1;
        assert_eq!(of(LB_TABLE_MAP), 130 * 2 * 16_777_213 * 4);
        assert_eq!(of(LB_FLOWS_MAP), (16 << 20) / 4 * 320);
        let total: u64 = bytes.iter().map(|(_, b)| b).sum();
        assert!(total > 17_000_000_000, "{total}");
    }

    #[test]
    fn a_numbering_changes_with_the_backends_places_and_only_with_them() {
        let (a, b, c) = ([10, 2, 0, 10], [10, 2, 0, 11], [10, 2, 0, 12]);
        let web = |backends: &[([u8; 4], u16)]| service([192, 0, 2, 10], 80, L4::Tcp, backends);
        let three = settings(vec![web(&[(a, 80), (b, 80), (c, 80)])]);
        let n = numbering(&three);
        assert_ne!(
            n, 0,
            "0 is the numbering of flows a stage tracked without one"
        );
        // Weights and health checks number alike.
        let mut reweighted = three.clone();
        reweighted.services[0].backends[1].weight = 5;
        assert_eq!(numbering(&reweighted), n);
        // A backend removed, two swapped, another port, another service: other numbers.
        let others = [
            settings(vec![web(&[(b, 80), (c, 80)])]),
            settings(vec![web(&[(b, 80), (a, 80), (c, 80)])]),
            settings(vec![web(&[(a, 80), (b, 81), (c, 80)])]),
            settings(vec![service(
                [192, 0, 2, 10],
                81,
                L4::Tcp,
                &[(a, 80), (b, 80), (c, 80)],
            )]),
        ];
        for other in &others {
            assert_ne!(numbering(other), n, "{:?}", other.services);
        }
    }

    #[test]
    fn the_highest_possible_cpu_of_a_kernel_cpu_list() {
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        assert_eq!(highest_cpu("0"), Some(0));
        assert_eq!(highest_cpu("0,2-5,7"), Some(7));
        assert_eq!(highest_cpu("0-3,8-11"), Some(11));
        assert_eq!(highest_cpu(""), None);
        assert_eq!(highest_cpu("0-x"), None);
    }
}
