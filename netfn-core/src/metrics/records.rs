//! The chain records of a state directory, read for every scrape and every rescan of the agent,
//! parsed again only when a record file changed (records are replaced by rename, so a new inode,
//! size or mtime means a new record).
//!
//! This reads the same files as [`crate::chain::state`], from any directory (tests and the agent's
//! `--state-dir` use others), and never writes or locks them: the agent only observes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::chain::state::{ChainState, STATE_VERSION, StateError};

/// Identity of one version of a record file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// What one read of the directory found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Readable records, sorted by chain name.
    pub records: Vec<Arc<ChainState>>,
    /// Records that exist but cannot be read, by chain name.
    pub errors: Vec<(String, StateError)>,
}

/// The records of one state directory, optionally only some chains.
#[derive(Debug)]
pub struct Records {
    dir: PathBuf,
    only: Option<BTreeSet<String>>,
    cache: Mutex<BTreeMap<String, (Stamp, Arc<ChainState>)>>,
}

impl Records {
    /// Records under `dir` (normally [`crate::plan::names::chain_state_dir`]); with `only`, just those
    /// chains.
    pub fn new(dir: impl Into<PathBuf>, only: Option<BTreeSet<String>>) -> Self {
        Records {
            dir: dir.into(),
            only: only.filter(|o| !o.is_empty()),
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads every record (from the cache when its file did not change). A missing directory
    /// means no chains.
    pub fn load(&self) -> Result<Loaded, StateError> {
        let names = self.chain_names()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|name, _| names.contains(name));
        let mut loaded = Loaded::default();
        for name in names {
            let path = self.dir.join(format!("{name}.json"));
            match read_cached(&path, cache.get(&name)) {
                Ok(Some((stamp, record))) => {
                    cache.insert(name, (stamp, Arc::clone(&record)));
                    loaded.records.push(record);
                }
                // Removed between the listing and the read: the chain just went down.
                Ok(None) => {
                    cache.remove(&name);
                }
                Err(e) => {
                    cache.remove(&name);
                    loaded.errors.push((name, e));
                }
            }
        }
        Ok(loaded)
    }

    fn chain_names(&self) -> Result<BTreeSet<String>, StateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
            Err(source) => {
                return Err(StateError::Io {
                    what: "list",
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_string)
            })
            .filter(|name| self.only.as_ref().is_none_or(|o| o.contains(name)))
            .collect())
    }
}

/// Reads one record unless `cached` is still current; `None` if the file is gone.
fn read_cached(
    path: &Path,
    cached: Option<&(Stamp, Arc<ChainState>)>,
) -> Result<Option<(Stamp, Arc<ChainState>)>, StateError> {
    let io_err = |what, source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("stat", e)),
    };
    let stamp = Stamp::of(&meta);
    if let Some((s, record)) = cached
        && *s == stamp
    {
        return Ok(Some((stamp, Arc::clone(record))));
    }
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", e)),
    };
    let record: ChainState =
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    if record.version > STATE_VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: record.version,
        });
    }
    Ok(Some((stamp, Arc::new(record))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "netfn-records-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_dir_is_no_chains_and_bad_records_are_reported_per_chain() {
        let records = Records::new("/nonexistent/netfn-records", None);
        let loaded = records.load().unwrap();
        assert!(loaded.records.is_empty() && loaded.errors.is_empty());

        let dir = scratch("bad");
        fs::write(dir.join("broken.json"), "{ not json").unwrap();
        fs::write(dir.join("other.lock"), "").unwrap();
        let loaded = Records::new(&dir, None).load().unwrap();
        assert!(loaded.records.is_empty());
        assert_eq!(loaded.errors.len(), 1);
        assert_eq!(loaded.errors[0].0, "broken");
        let only = Records::new(&dir, Some(BTreeSet::from(["x".to_string()])));
        assert!(only.load().unwrap().errors.is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}
