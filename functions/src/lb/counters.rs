//! The per-backend and per-service counters ([`LB_BACKEND_COUNTERS_MAP`]): the map's layout,
//! how a reader sums it, and how a settings change carries it over.
//!
//! Layout, for `backends` backend numbers cut in slices of [`counter_stride`]: one slice per
//! possible CPU (the stage counts backend `n` on CPU `c` at `c * stride + n`), then one slice
//! the stage never writes, what the backends counted under earlier instances, then one entry
//! per service: what its backends that left counted (so that a service's sum never goes back).
//! A backend's count is the sum of its CPU slices and its carried entry; a service's, the sum
//! of its backends' and its own entry.
//!
//! A change in place ([`carry`]) fills the carried entries of the new instance once it is live
//! and before readers find it (`StageContent::live`), from what the replaced one holds then (its
//! counters stand still): a backend (by address, port and protocol, within its service: VIP,
//! port and protocol) and a service that persist keep counting from where they were, as
//! Prometheus counters should across a reload. A backend new to a service starts from zero. A
//! packet the replaced instance was still counting on another CPU at the switch may be counted
//! after that read: it is lost (at most one per CPU), never counted twice.

use std::collections::HashMap;
use std::path::Path;

use aya::maps::{Array, MapData};
use netfn_common::lb::{
    BackendCounters, BackendKey, LB_BACKEND_COUNTERS_MAP, LB_CONF_MAP, LbConf, ServiceKey, VipPort,
    counter_stride,
};

use super::config::LbSettings;
use super::stage::{backend_key, counter_cpus, numbered, service_key, vip_port};
use crate::maps::{map, read_mapped, read_per_cpu};

/// Where each part of the counter map lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    backends: usize,
    stride: usize,
    cpus: usize,
}

impl Layout {
    /// The layout of an instance of `backends` backend numbers on `cpus` CPU slices.
    pub fn new(backends: usize, cpus: u32) -> Self {
        Layout {
            backends,
            stride: counter_stride(u32::try_from(backends).unwrap_or(u32::MAX).max(1)) as usize,
            cpus: cpus as usize,
        }
    }

    /// Entries of the map for `services` services.
    pub fn len(&self, services: usize) -> u64 {
        (self.stride as u64)
            .saturating_mul(self.cpus as u64 + 1)
            .saturating_add(services as u64)
    }

    /// Index of the carried entry of backend `number`.
    fn carried(&self, number: usize) -> usize {
        self.cpus * self.stride + number
    }

    /// Index of service `i`'s own entry.
    fn service(&self, i: usize) -> usize {
        (self.cpus + 1) * self.stride + i
    }
}

/// What an instance counted: per backend number, per service (its own entry only).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub backends: Vec<BackendCounters>,
    pub services: Vec<BackendCounters>,
}

/// Sums `all` (the whole map) laid out as `layout`. A map without the carried part (loaded by
/// an earlier netfn: CPU slices only) has no carried entries and no service entries.
pub fn sum(all: &[BackendCounters], layout: Layout) -> Totals {
    let stride = layout.stride.max(1);
    let mut backends = vec![BackendCounters::default(); layout.backends.min(stride)];
    let counted = all.len().min((layout.cpus + 1) * stride);
    for slice in all[..counted].chunks_exact(stride) {
        for (total, v) in backends.iter_mut().zip(slice) {
            add(total, v);
        }
    }
    Totals {
        backends,
        services: all.get(layout.service(0)..).unwrap_or_default().to_vec(),
    }
}

/// Reads the counters pinned under `dir` (a stage an older netfn loaded keeps them in a
/// per-CPU array: read as such).
pub fn read(dir: &Path) -> Result<Totals, String> {
    let path = dir.join(LB_BACKEND_COUNTERS_MAP);
    let data = MapData::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let per_cpu = data
        .info()
        .and_then(|i| i.map_type())
        .is_ok_and(|t| t == aya::maps::MapType::PerCpuArray);
    if per_cpu {
        return Ok(Totals {
            backends: read_per_cpu::<BackendCounters>(&path, add).map_err(|e| e.to_string())?,
            services: Vec::new(),
        });
    }
    let all: Vec<BackendCounters> = read_mapped(&data)?;
    let conf: Array<MapData, LbConf> =
        Array::try_from(map(&dir.join(LB_CONF_MAP)).map_err(|e| format!("{LB_CONF_MAP}: {e}"))?)
            .map_err(|e| format!("{LB_CONF_MAP}: {e}"))?;
    let backends = conf
        .get(&0, 0)
        .map_err(|e| format!("{LB_CONF_MAP}: {e}"))?
        .backends;
    Ok(sum(&all, Layout::new(backends as usize, counter_cpus()?)))
}

pub fn add(total: &mut BackendCounters, v: &BackendCounters) {
    total.packets += v.packets;
    total.bytes += v.bytes;
    total.new_flows += v.new_flows;
}

fn minus(total: &mut BackendCounters, v: &BackendCounters) {
    total.packets = total.packets.saturating_sub(v.packets);
    total.bytes = total.bytes.saturating_sub(v.bytes);
    total.new_flows = total.new_flows.saturating_sub(v.new_flows);
}

/// The carried entries of an instance for `new` (index, value; zeros left out), from what the
/// one it replaces, for `old`, counted (`before`): each backend of each service that persists
/// keeps its count, each service its count less its persisting backends'. `None` when `before`
/// does not hold `old`'s backend numbers (then nothing is carried).
pub fn carry(
    old: &LbSettings,
    before: &Totals,
    new: &LbSettings,
    layout: Layout,
) -> Option<Vec<(usize, BackendCounters)>> {
    if numbered(old).count() != before.backends.len() {
        return None;
    }
    // By identity: each backend within its service, each service.
    let mut backends: HashMap<(BackendKey, VipPort), BackendCounters> = HashMap::new();
    let mut services: HashMap<ServiceKey, BackendCounters> = HashMap::new();
    let mut old_numbers = before.backends.iter();
    for (i, s) in old.services.iter().enumerate() {
        let mut total = before.services.get(i).copied().unwrap_or_default();
        for (b, c) in s.backends.iter().zip(old_numbers.by_ref()) {
            add(&mut total, c);
            backends.insert((backend_key(s, b), vip_port(s)), *c);
        }
        services.insert(service_key(s), total);
    }
    let mut out = Vec::new();
    let mut number = 0usize;
    for (i, s) in new.services.iter().enumerate() {
        let mut own = services.get(&service_key(s)).copied().unwrap_or_default();
        for b in &s.backends {
            if let Some(c) = backends.get(&(backend_key(s, b), vip_port(s))) {
                minus(&mut own, c);
                out.push((layout.carried(number), *c));
            }
            number += 1;
        }
        out.push((layout.service(i), own));
    }
    out.retain(|(_, c)| *c != BackendCounters::default());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::config::L4;
    use crate::lb::reverse::tests::{service, settings};

    fn c(n: u64) -> BackendCounters {
        BackendCounters {
            packets: n,
            bytes: n * 100,
            new_flows: n / 10,
        }
    }

    #[test]
    fn sums_cpu_slices_the_carried_slice_and_service_entries() {
        // 3 backends (stride 8), 2 CPUs, 2 services.
        let layout = Layout::new(3, 2);
        assert_eq!(layout.len(2), 8 * 3 + 2);
        let mut all = vec![BackendCounters::default(); 26];
        all[1] = c(10); // CPU 0, backend 1
        all[8 + 1] = c(20); // CPU 1, backend 1
        all[16 + 1] = c(5); // carried, backend 1
        all[16 + 2] = c(7); // carried, backend 2
        all[25] = c(3); // service 1
        let t = sum(&all, layout);
        assert_eq!(t.backends, vec![c(0), c(35), c(7)]);
        assert_eq!(t.services, vec![c(0), c(3)]);
        // A map of CPU slices only (an earlier netfn's): no carried part.
        let t = sum(&all[..16], layout);
        assert_eq!(t.backends, vec![c(0), c(30), c(0)]);
        assert!(t.services.is_empty());
    }

    #[test]
    fn backends_and_services_that_persist_keep_their_counts_by_identity() {
        let (a, b, d) = ([10, 2, 0, 1], [10, 2, 0, 2], [10, 2, 0, 4]);
        let web = |backends: &[([u8; 4], u16)]| service([192, 0, 2, 10], 80, L4::Tcp, backends);
        let old = settings(vec![web(&[(a, 80), (b, 80)])]);
        // Backend b leaves web; a service comes first (web's backends move up one number); a
        // new backend d joins web.
        let new = settings(vec![
            service([192, 0, 2, 10], 53, L4::Udp, &[(a, 80)]),
            web(&[(d, 80), (a, 80)]),
        ]);
        let before = Totals {
            backends: vec![c(10), c(20)],
            services: vec![c(4)],
        };
        let layout = Layout::new(3, 2);
        let entries = carry(&old, &before, &new, layout).expect("matches");
        // a of web (now number 2) keeps its 10; a of dns is another backend (zero); d is new;
        // web (service 1) keeps b's 20 and its own 4.
        assert_eq!(
            entries,
            vec![(layout.carried(2), c(10)), (layout.service(1), c(24))]
        );
        // Counters that do not match the old numbering are not carried.
        let short = Totals {
            backends: vec![c(10)],
            services: Vec::new(),
        };
        assert_eq!(carry(&old, &short, &new, layout), None);
    }
}
