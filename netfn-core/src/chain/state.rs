//! What netfn created, under /run/netfn/chains/: one JSON record and one lock file per chain.
//!
//! The record is written BEFORE any kernel object is created (phase `applying`), so a crash at
//! any point leaves enough for `down` to finish the job. Teardown works from the record, never
//! from the (possibly edited) chain file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::plan::ChainPlan;
use crate::plan::names;

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}", damaged(.path, &.source.to_string()))]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A record that reads but cannot be this chain's (it names another chain).
    #[error("{}", damaged(.path, .why))]
    Inconsistent { path: PathBuf, why: String },
    /// A test's failpoint ([`crate::failpoint`]).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
    #[error(
        "state file {path} was written by a newer netfn (version {found}); use that version to manage this chain"
    )]
    Version { path: PathBuf, found: u32 },
    /// A chain name that is not one (it would be a path under /run/netfn: `../x`, `a/b`).
    #[error("`{name}` is not a chain name: it {why}")]
    BadName { name: String, why: names::NameError },
}

/// What, where, and what to do about a damaged record.
fn damaged(path: &Path, why: &str) -> String {
    let chain = path
        .file_stem()
        .map_or_else(|| "CHAIN".into(), |s| s.to_string_lossy());
    format!(
        "the record of chain `{chain}` ({path}) is damaged: {why}; netfn cannot tell from it what \
         the chain has. `netfn down --force {chain}` removes what netfn made for the chain by its \
         names (namespaces nf-{chain}-*, pins under {bpf}, the record); copy the record first to \
         keep it",
        path = path.display(),
        bpf = names::chain_bpf_dir(&chain).display(),
    )
}

/// Refuses a chain name that is not one before it becomes part of a path.
pub fn check_chain_name(chain: &str) -> Result<(), StateError> {
    names::check_name(chain, names::CHAIN_NAME_MAX).map_err(|why| StateError::BadName {
        name: chain.to_string(),
        why,
    })
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where an operation on the chain stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `up` or `apply` started and has not finished; objects of the plan (and, during an apply,
    /// of `previous`) may or may not exist. (Named for the kernel changes, not for the verb.)
    Applying,
    /// `up` or `apply` finished.
    Up,
    /// `down` started and has not finished.
    TearingDown,
}

/// The record of one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainState {
    pub version: u32,
    pub phase: Phase,
    /// The chain file it came from, as its command named it (absolute; for people and the
    /// checks of [`same_source`]; teardown never reads it).
    pub source: PathBuf,
    /// Unix time of the last change.
    pub updated_unix: u64,
    /// Namespace names of the plan that already existed and were NOT created by netfn.
    #[serde(default)]
    pub foreign: Vec<String>,
    /// True when kernel mode's per-interface counter program (`nf_count`) was attached, with its
    /// map pinned under `/sys/fs/bpf/netfn/<chain>`. Fast-path chains count in the forwarder
    /// instead and leave this false. (Kept as `counters` in the record file.)
    #[serde(default, rename = "counters")]
    pub interface_counters: bool,
    /// The build of the eBPF object whose programs run the chain (its forwarder and stages, or
    /// kernel mode's counter): [`crate::ebpf::object_build`] of the netfn that loaded them. None
    /// in a record from a netfn before it was kept: unknown, so taken for another build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programs: Option<String>,
    pub plan: ChainPlan,
    /// During `apply`: the plan that ran before (its objects; the functions' settings left
    /// out); `down` removes what either plan created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ChainPlan>,
}

impl ChainState {
    pub fn new(source: &Path, plan: ChainPlan) -> Self {
        ChainState {
            version: STATE_VERSION,
            phase: Phase::Applying,
            source: source.to_path_buf(),
            updated_unix: 0,
            foreign: Vec::new(),
            interface_counters: false,
            programs: None,
            plan,
            previous: None,
        }
    }

    pub fn chain(&self) -> &str {
        &self.plan.chain
    }
}

pub fn state_path(chain: &str) -> PathBuf {
    names::chain_state_dir().join(format!("{chain}.json"))
}

fn lock_path(chain: &str) -> PathBuf {
    names::chain_state_dir().join(format!("{chain}.lock"))
}

/// Reads a chain's record; `None` if the chain is not known.
pub fn load(chain: &str) -> Result<Option<ChainState>, StateError> {
    check_chain_name(chain)?;
    let path = state_path(chain);
    let text = match fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let state: ChainState =
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
    if state.version > STATE_VERSION {
        return Err(StateError::Version {
            path,
            found: state.version,
        });
    }
    if state.chain() != chain {
        return Err(StateError::Inconsistent {
            why: format!("it is the record of chain `{}`", state.chain()),
            path,
        });
    }
    Ok(Some(state))
}

/// Writes a chain's record atomically (temporary file + rename).
pub fn save(state: &mut ChainState) -> Result<(), StateError> {
    state.updated_unix = crate::unix_time::now();
    let dir = names::chain_state_dir();
    fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    let path = state_path(state.chain());
    let tmp = path.with_extension("json.tmp");
    // Compact: a record can carry large settings (a firewall's 100,000 rules); `jq .` shows it.
    let json = serde_json::to_vec(state).map_err(|source| StateError::Corrupt {
        path: path.clone(),
        source,
    })?;
    let mut f = File::create(&tmp).map_err(io_err("write", &tmp))?;
    f.write_all(&json).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))
}

/// Writes a chain's record like [`save`], unless a test armed failpoint `point` (then nothing is
/// written, as when the disk refuses).
pub fn save_at(state: &mut ChainState, point: &'static str) -> Result<(), StateError> {
    crate::failpoint::hit(point)?;
    save(state)
}

/// Removes a chain's record.
pub fn remove(chain: &str) -> Result<(), StateError> {
    check_chain_name(chain)?;
    let path = state_path(chain);
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &path)(e)),
    }
}

/// Every chain with a record, sorted.
pub fn list() -> Result<Vec<String>, StateError> {
    let dir = names::chain_state_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut chains: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".json").map(str::to_string)
        })
        .collect();
    chains.sort();
    Ok(chains)
}

/// An exclusive lock on one chain: `up`, `down` and (later) `apply` of a chain never interleave.
pub struct ChainLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl ChainLock {
    /// Takes the chain's lock, waiting for another netfn process if one holds it (`on_wait` is
    /// called once before waiting, so the caller can say so).
    pub fn acquire(chain: &str, on_wait: impl FnOnce()) -> Result<Self, StateError> {
        check_chain_name(chain)?;
        let dir = names::chain_state_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = lock_path(chain);
        let mut on_wait = Some(on_wait);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((file, Errno::EWOULDBLOCK)) => {
                    if let Some(f) = on_wait.take() {
                        f();
                    }
                    Flock::lock(file, FlockArg::LockExclusive)
                        .map_err(|(_, e)| io_err("lock", &path)(e.into()))?
                }
                Err((_, e)) => return Err(io_err("lock", &path)(e.into())),
            };
            // The previous holder may have removed the lock file (end of `down`): if the path no
            // longer names the file we locked, lock the new one.
            let ours = lock.metadata().map_err(io_err("stat", &path))?;
            match fs::metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    return Ok(ChainLock { path, _lock: lock });
                }
                _ => continue,
            }
        }
    }

    /// Takes the chain's lock without waiting and without creating its lock file: `None` when
    /// another process holds it (a CLI changing the chain) or the chain is gone (`down` removed
    /// the file; creating it again would leave it behind). For the agent, which must never act
    /// on a chain in the middle of a change.
    pub fn try_existing(chain: &str) -> Result<Option<Self>, StateError> {
        check_chain_name(chain)?;
        let path = lock_path(chain);
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(io_err("lock", &path)(e.into())),
        };
        // Removed (end of `down`) between our open and our lock: the chain is gone.
        let ours = lock.metadata().map_err(io_err("stat", &path))?;
        match fs::metadata(&path) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                Ok(Some(ChainLock { path, _lock: lock }))
            }
            _ => Ok(None),
        }
    }

    /// Removes the lock file while still holding the lock (the chain is gone).
    pub fn remove_file(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether chain files `a` and `b` are the same file: the same path (a symlink a deploy
/// points at each new version, say), or paths to one file.
pub fn same_source(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}
