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
