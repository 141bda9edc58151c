//! A fast-path kind's stage maps from userspace: filling a new instance's, and reading the
//! pinned ones of the live instance (metrics, status, the instance that takes over). Shared by
//! the fast-path kinds.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use netfn_core::function::{FunctionMetricsContext, KindMetricsError, StageError, StageMaps};
use netfn_core::spec::FastPath;

/// The function's stage directory, for fast-path chains.
pub fn stage_dir(ctx: &FunctionMetricsContext<'_>) -> Option<PathBuf> {
    (ctx.fastpath != FastPath::Kernel)
        .then_some(ctx.slot)
        .flatten()
        .map(|slot| netfn_core::ebpf::stage_dir(ctx.bpf_dir, slot))
}

/// Now on the stages' clock (`bpf_ktime_get_ns` is CLOCK_MONOTONIC), in ns: what a reader of a
/// connection table compares its entries' last-seen times with.
pub fn monotonic_ns() -> Result<u64, KindMetricsError> {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return Err(format!(
            "read the monotonic clock: {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    let ns = std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32).as_nanos();
    Ok(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// The map pinned at `path`.
pub fn map(path: &Path) -> Result<Map, KindMetricsError> {
    Ok(Map::from_map_data(MapData::from_pin(path)?)?)
}

/// Sums a pinned per-CPU array's elements over the CPUs.
pub fn read_per_cpu<T: aya::Pod + Default>(
    path: &Path,
    sum: impl Fn(&mut T, &T),
) -> Result<Vec<T>, KindMetricsError> {
    let array: PerCpuArray<MapData, T> = PerCpuArray::try_from(map(path)?)?;
    let mut out = Vec::new();
    for i in 0..array.len() {
        let mut total = T::default();
        for v in array.get(&i, 0)?.iter() {
            sum(&mut total, v);
        }
        out.push(total);
    }
    Ok(out)
}

/// The error of an operation on the stage map `name`.
pub fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> StageError {
    move |source| StageError::Map { name, source }
}

/// Writes `values` at indexes 0.. of the new instance's array map `name`.
pub fn fill_array<V: aya::Pod>(
    maps: &mut StageMaps<'_>,
    name: &'static str,
    values: &[V],
) -> Result<(), StageError> {
    let map = maps.map_mut(name)?;
    let mut array: Array<&mut MapData, V> = Array::try_from(map).map_err(map_err(name))?;
    for (i, v) in (0u32..).zip(values) {
        array.set(i, v, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// `BPF_F_MMAPABLE`: an array map whose values userspace can map into memory.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// An array map created with [`BPF_F_MMAPABLE`], mapped into memory: its elements are read or
/// written in microseconds instead of one syscall each. The kernel lays them out
/// `round_up(value_size, 8)` bytes apart.
struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    entries: usize,
    stride: usize,
    bytes: usize,
    writable: bool,
}

impl Mapping {
    /// Maps `data`, which must be a memory-mappable array of `value_size`-byte values, for
    /// writing too when `writable`.
    fn new(data: &MapData, value_size: usize, writable: bool) -> Result<Self, String> {
        use std::os::fd::{AsFd, AsRawFd};
        let info = data.info().map_err(|e| format!("map info: {e}"))?;
        if info.map_flags() & BPF_F_MMAPABLE == 0 || info.value_size() as usize != value_size {
            return Err(format!(
                "the map is not a memory-mappable array of {value_size}-byte values (rebuild netfn)"
            ));
        }
        let entries = info.max_entries() as usize;
        let stride = value_size.next_multiple_of(8);
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (entries * stride).div_ceil(page).max(1) * page;
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: a shared mapping of the map's fd, of the length the kernel gives an mmapable
        // array of this size; unmapped on drop, and only reached through the methods below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "map the array into memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Mapping {
            ptr,
            entries,
            stride,
            bytes,
            writable,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
        }
    }
}

/// Every element of the memory-mappable array `data` (values of type `T`), copied out of one
/// mapping: what a scrape reads of counters the program keeps writing (each element as it is
/// at that moment, as a syscall per element would see it).
pub fn read_mapped<T: aya::Pod>(data: &MapData) -> Result<Vec<T>, String> {
    let m = Mapping::new(data, std::mem::size_of::<T>(), false)?;
    Ok((0..m.entries)
        .map(|i| {
            // SAFETY: element `i` lies inside the mapping (`entries * stride <= bytes`), `T` is
            // plain old data, and the read is volatile because the program writes the element
            // concurrently.
            unsafe { std::ptr::read_volatile(m.ptr.as_ptr().add(i * m.stride).cast::<T>()) }
        })
        .collect())
}

/// An array map of `u32` created with [`BPF_F_MMAPABLE`], mapped into memory: a table of 65,537
/// entries is read or written without a syscall per entry. The program keeps reading the map
/// as usual while userspace writes entries it does not read (a table's idle half). Each `u32`
/// is in the low half of its 8-byte element (little-endian, as on every machine netfn runs on).
pub struct MappedU32(Mapping);

impl MappedU32 {
    /// Maps `data` (an array of `u32`, `BPF_F_MMAPABLE`), for writing too when `writable`.
    pub fn new(data: &MapData, writable: bool) -> Result<Self, String> {
        Mapping::new(data, 4, writable).map(MappedU32)
    }

    fn elements(&self) -> &[u64] {
        // SAFETY: the mapping holds `entries` 8-byte elements, page-aligned, for as long as
        // `self` lives.
        unsafe { std::slice::from_raw_parts(self.0.ptr.as_ptr().cast::<u64>(), self.0.entries) }
    }

    /// The values at `start..start + len`, if the map has them.
    pub fn read(&self, start: usize, len: usize) -> Option<Vec<u32>> {
        let values = self.elements().get(start..start.checked_add(len)?)?;
        Some(values.iter().map(|&e| e as u32).collect())
    }

    /// Writes `values` from `start` on; an error if the map is read-only or too small.
    pub fn write(&mut self, start: usize, values: &[u32]) -> Result<(), String> {
        if !self.0.writable {
            return Err("the table is mapped read-only".into());
        }
        // SAFETY: as in `elements`; the mapping is writable and `&mut self` is unique here.
        let all = unsafe {
            std::slice::from_raw_parts_mut(self.0.ptr.as_ptr().cast::<u64>(), self.0.entries)
        };
        let slots = start
            .checked_add(values.len())
            .and_then(|end| all.get_mut(start..end))
            .ok_or("the table map is smaller than its services")?;
        for (slot, &v) in slots.iter_mut().zip(values) {
            *slot = u64::from(v);
        }
        Ok(())
    }
}
