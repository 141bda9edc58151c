//! Named network namespaces, made the way iproute2 makes them (a bind mount of the namespace file
//! under /run/netns), so `ip netns list` and `ip netns exec` see them.
//!
//! `setns` and `unshare` act on the calling thread only: everything that enters a namespace runs
//! on a dedicated std thread, never on a tokio worker.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use crate::plan::names;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "namespace {name} already exists and netfn did not create it; remove it (ip netns del {name}) or rename the chain"
    )]
    Exists { name: String },
    #[error(
        "namespace {name} does not exist; create it first (ip netns add {name}) or drop `namespace` from the endpoint"
    )]
    Missing { name: String },
    #[error("cannot {what} namespace {name}: {source}; netfn needs root (CAP_SYS_ADMIN)")]
    Sys {
        what: &'static str,
        name: String,
        source: io::Error,
    },
    #[error(
        "cannot create namespace {name}: the host's limit of network namespaces is reached (sysctl user.max_net_namespaces = {limit}); take chains down (netfn down CHAIN) or raise the limit (sysctl -w user.max_net_namespaces=N)"
    )]
    Limit { name: String, limit: String },
    #[error(
        "{} is no network namespace: the bind mount that held namespace {name} is gone \
         (unmounted), and the namespace with its interfaces unless something else holds it; it \
         must be made again",
        path.display()
    )]
    NotANamespace { name: String, path: PathBuf },
    #[error("cannot prepare {dir}: {source}")]
    RunDir { dir: PathBuf, source: io::Error },
    #[error("a thread working in namespace {0} panicked")]
    Panicked(String),
}

/// Why `setns` into the namespace named `name` failed: EINVAL, the file there is no namespace.
fn enter_error(name: &str, e: Errno) -> NetnsError {
    match e {
        Errno::EINVAL => NetnsError::NotANamespace {
            name: name.to_string(),
            path: names::netns_path(name),
        },
        e => sys("enter", name, e),
    }
}

fn sys(what: &'static str, name: &str, source: impl Into<io::Error>) -> NetnsError {
    NetnsError::Sys {
        what,
        name: name.to_string(),
        source: source.into(),
    }
}

/// Makes /run/netns a shared mount point, as iproute2 does, so namespace bind mounts propagate.
pub fn ensure_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(names::NETNS_RUN_DIR);
    let err = |source: io::Error| NetnsError::RunDir {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            // Not a mount point yet: bind it onto itself, then share it.
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err(e.into()))?;
            shared().map_err(|e| err(e.into()))
        }
        Err(e) => Err(err(e.into())),
    }
}

pub fn exists(name: &str) -> bool {
    names::netns_path(name).exists()
}

/// Opens a named namespace (for setns or for moving links into it).
pub fn open(name: &str) -> Result<OwnedFd, NetnsError> {
    File::open(names::netns_path(name))
        .map(OwnedFd::from)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => NetnsError::Missing {
                name: name.to_string(),
            },
            _ => sys("open", name, e),
        })
}

/// The limit of network namespaces per user (namespace); `unshare` fails with ENOSPC there.
const MAX_NET_NAMESPACES: &str = "/proc/sys/user/max_net_namespaces";

/// Moves the CALLING THREAD into a new network namespace and publishes it as /run/netns/NAME.
/// Returns a handle on the namespace. The thread stays in the new namespace: call this only
/// from a thread that netfn owns for namespace work.
pub fn create_here(name: &str, sysctls: &[(&str, &str)]) -> Result<OwnedFd, NetnsError> {
    let path = names::netns_path(name);
    // O_EXCL: never adopt a namespace that someone else made under the same name.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => NetnsError::Exists {
                name: name.to_string(),
            },
            _ => sys("create", name, e),
        })?;
    let publish = || -> Result<OwnedFd, NetnsError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| match e {
            // The user namespace's ucount of network namespaces is at its limit.
            nix::errno::Errno::ENOSPC => NetnsError::Limit {
                name: name.to_string(),
                limit: fs::read_to_string(MAX_NET_NAMESPACES)
                    .map_or_else(|_| "?".to_string(), |l| l.trim().to_string()),
            },
            e => sys("unshare", name, e),
        })?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| sys("bind-mount", name, e))?;
        for (key, value) in sysctls {
            write_sysctl(key, value).map_err(|e| sys("set sysctl in", name, e))?;
        }
        File::open(&path)
            .map(OwnedFd::from)
            .map_err(|e| sys("open", name, e))
    };
    publish().inspect_err(|_| {
        let _ = umount2(&path, MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&path);
    })
}

/// Writes a sysctl of the calling thread's network namespace (e.g. `net/ipv4/ip_forward`).
pub fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(Path::new("/proc/sys").join(key))?;
    f.write_all(value.as_bytes())
}

/// Removes a named namespace. Returns false if it was already gone. The kernel frees the
/// namespace (and the interfaces inside it) once its last user is gone.
pub fn delete(name: &str) -> Result<bool, NetnsError> {
    let path = names::netns_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(sys("unmount", name, e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(sys("remove", name, e)),
    }
}

/// Runs `f` on a fresh thread that has entered namespace `ns`.
pub fn run_in<T, F>(ns: &OwnedFd, label: &str, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| enter_error(label, e))?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Panicked(label.to_string()))?
    })
}

/// Enters namespace `name` on the calling thread (for `netfn exec`, right before exec).
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let fd = open(name)?;
    setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|e| enter_error(name, e))
}

/// The names in /run/netns that start with `prefix` (for leak checks and `status`).
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = fs::read_dir(names::NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}
