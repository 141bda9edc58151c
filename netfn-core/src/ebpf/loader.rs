//! Loading netfn's eBPF object with one load's settings (map pins, map sizes, globals),
//! reusing aya's loaders.
//!
//! `EbpfLoader::new` reads and parses the kernel's BTF (/sys/kernel/btf/vmlinux, megabytes)
//! every time it is called, and aya offers no loader without it. Every chain loads the object
//! at least once, so for a file of 100 chains that parse was about an eighth of `netfn up`'s
//! CPU time. So while a [`ReuseLoaders`] guard lives (a command that loads for many chains
//! holds one), a loader is kept after a load and reused, but only by a load that sets exactly
//! the same map names and globals (its key): each of those settings is overwritten, so nothing
//! of an earlier load can leak into a later one. When the last guard goes, so do the loaders
//! and their parsed BTF (tens of MB; a long-lived agent must not keep them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use aya::{Ebpf, EbpfLoader};

use super::EbpfError;
use super::object::object_bytes;

/// One load's settings.
#[derive(Debug, Default)]
pub(crate) struct LoadSettings {
    pins: Vec<(&'static str, PathBuf)>,
    max_entries: Vec<(&'static str, u32)>,
    globals: Vec<(&'static str, &'static u8)>,
}

impl LoadSettings {
    /// The map `name` lives pinned at `path` (created there if it is not).
    pub(crate) fn pin(&mut self, name: &'static str, path: PathBuf) -> &mut Self {
        self.pins.push((name, path));
        self
    }

    /// The map `name` is created with `len` entries.
    pub(crate) fn max_entries(&mut self, name: &'static str, len: u32) -> &mut Self {
        self.max_entries.push((name, len));
        self
    }

    /// The one-byte global `name` is `value`.
    pub(crate) fn global(&mut self, name: &'static str, value: &'static u8) -> &mut Self {
        self.globals.push((name, value));
        self
    }

    /// What a reused loader must have been configured with: every name these settings set.
    fn key(&self) -> String {
        let mut names: Vec<String> = self
            .pins
            .iter()
            .map(|(n, _)| format!("pin:{n}"))
            .chain(self.max_entries.iter().map(|(n, _)| format!("len:{n}")))
            .chain(self.globals.iter().map(|(n, _)| format!("global:{n}")))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.join(",")
    }

    fn apply(&self, loader: &mut EbpfLoader<'static>) {
        for (name, path) in &self.pins {
            loader.map_pin_path(name, path.clone());
        }
        for (name, len) in &self.max_entries {
            loader.map_max_entries(name, *len);
        }
        for (name, value) in &self.globals {
            loader.override_global(name, *value, false);
        }
    }
}

/// Idle loaders by key (a few per key at most: one per thread that loads at once), kept
/// while `guards` > 0.
struct Pool {
    guards: usize,
    idle: BTreeMap<String, Vec<EbpfLoader<'static>>>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    guards: 0,
    idle: BTreeMap::new(),
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// While one lives, loads reuse loaders (see the module's comment).
#[must_use = "loaders are reused only while the guard lives"]
pub struct ReuseLoaders(());

impl ReuseLoaders {
    pub fn begin() -> Self {
        pool().guards += 1;
        ReuseLoaders(())
    }
}

impl Drop for ReuseLoaders {
    fn drop(&mut self) {
        let mut pool = pool();
        pool.guards = pool.guards.saturating_sub(1);
        if pool.guards == 0 {
            pool.idle.clear();
        }
    }
}

/// Loads the object (see [`super::object::object_bytes`]) with `settings`: its maps are
/// created or opened from their pins; no program is loaded into the kernel yet.
pub(crate) fn load(settings: &LoadSettings) -> Result<Ebpf, EbpfError> {
    let bytes = object_bytes()?;
    let key = settings.key();
    let idle = pool().idle.get_mut(&key).and_then(Vec::pop);
    // A new loader parses the kernel's BTF: outside the lock, so threads do it in parallel.
    let mut loader = idle.unwrap_or_default();
    settings.apply(&mut loader);
    let loaded = loader.load(&bytes);
    let mut pool = pool();
    if pool.guards > 0 {
        pool.idle.entry(key).or_default().push(loader);
    }
    loaded.map_err(|e| EbpfError::Load(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_every_setting_and_ignore_values_and_order() {
        let mut a = LoadSettings::default();
        a.pin("A", "/x/a".into())
            .max_entries("A", 4)
            .global("LEVEL", &0);
        let mut b = LoadSettings::default();
        b.global("LEVEL", &3)
            .max_entries("A", 9)
            .pin("A", "/y/a".into());
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key(), "global:LEVEL,len:A,pin:A");

        let mut c = LoadSettings::default();
        c.pin("A", "/x/a".into()).max_entries("A", 4);
        assert_ne!(
            a.key(),
            c.key(),
            "a loader that set LEVEL must not serve one that does not"
        );
    }
}
