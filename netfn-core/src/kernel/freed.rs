//! When the kernel has really freed the namespaces a `down` removed, namespace by namespace,
//! whatever other namespaces this host makes and frees meanwhile.
//!
//! A network namespace is freed by the kernel's `cleanup_net` work after its last reference
//! goes, in batches: each run of that work takes every namespace queued so far, first removes
//! their ids ("nsids") from every other namespace's table, then tears down their devices
//! (under rtnl: an `up` started meanwhile waits), and frees them at its very end. The work
//! runs on an ordered (single-threaded) workqueue, so runs never overlap.
//!
//! [`FreeWatch`] uses both facts. Before `down`, each namespace gets an id in netfn's own
//! namespace, and a "canary" namespace is made and given one too, held by a file only. Once
//! none of ours is left in the id table, every one of them is in a cleanup run that has
//! started; then the canary's file is closed, and the canary can only be taken by a later
//! run. When the canary's id goes, every run that held ours has finished: ours are freed.
//! A namespace whose id stays is not being freed at all: something still holds it (a process
//! inside, an open file of it, a socket).
//!
//! An id, once seen gone, counts as gone for good: the kernel may give the same number to
//! another namespace later (the lowest free one), and that must not look like ours coming
//! back. (Between two looks, 20 ms apart, it could still happen unseen; the kernel's
//! RTM_DELNSID notifications would close that gap.)

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::kernel::netlink::{Netlink, NetlinkError};
use crate::kernel::netns;

#[derive(Debug, thiserror::Error)]
pub enum FreedError {
    #[error("cannot watch the kernel free namespaces: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("cannot watch the kernel free namespaces: cannot make the canary namespace: {0}")]
    Canary(std::io::Error),
    #[error(
        "the kernel began to free {started} of {total} namespace(s) within {} s; the others are still held by something: {} (a process inside one: `ip netns pids NAME`; an open /proc/PID/ns/net or socket of it)",
        .waited.as_secs(), .held.join(", ")
    )]
    Held {
        started: usize,
        total: usize,
        held: Vec<String>,
        waited: Duration,
    },
    #[error(
        "the kernel was still freeing the {total} namespace(s) after {} s (all of them are in its cleanup work; it goes on in the background)",
        .waited.as_secs()
    )]
    Slow { total: usize, waited: Duration },
}

/// How far the kernel is with the namespaces being watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeProgress {
    /// Namespaces whose cleanup has begun (their id is gone).
    pub started: usize,
    pub total: usize,
    /// Every one of them freed.
    pub freed: bool,
    pub elapsed: Duration,
}

/// Namespaces tagged before `down` removes them, and the canary: see the module's opening.
pub struct FreeWatch {
    nl: Netlink,
    rt: tokio::runtime::Handle,
    /// Our namespaces by their id in netfn's namespace, while their id is in the table.
    ours: BTreeMap<i32, String>,
    /// How many were tagged (and not forgotten).
    total: usize,
    canary_id: i32,
    canary_gone: bool,
    /// The only reference to the canary until ours are all in cleanup.
    canary: Option<OwnedFd>,
}

impl FreeWatch {
    /// Tags the named namespaces (those that exist) and makes the canary. Call it before the
    /// namespaces are removed.
    pub fn start(names: &[String], rt: &tokio::runtime::Handle) -> Result<FreeWatch, FreedError> {
        let nl = Netlink::here(rt)?;
        let mut ours = BTreeMap::new();
        for name in names {
            // Gone already, or never made: nothing to wait for.
            let Ok(fd) = netns::open(name) else { continue };
            let id = rt.block_on(nl.nsid_of(&fd))?;
            ours.insert(id, name.clone());
        }
        let canary = make_canary()?;
        let canary_id = rt.block_on(nl.nsid_of(&canary))?;
        Ok(FreeWatch {
            nl,
            rt: rt.clone(),
            total: ours.len(),
            ours,
            canary_id,
            canary_gone: false,
            canary: Some(canary),
        })
    }

    /// Stops watching these (a `down` that failed kept them).
    pub fn forget(&mut self, names: &[String]) {
        let before = self.ours.len();
        self.ours.retain(|_, name| !names.contains(name));
        self.total -= before - self.ours.len();
    }

    /// How many namespaces are watched.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Looks at the kernel's id table once; lets the canary go once all ours are in cleanup.
    pub fn poll(&mut self, started: Instant) -> Result<FreeProgress, FreedError> {
        let ids = self.rt.block_on(self.nl.nsids())?;
        self.ours.retain(|id, _| ids.contains(id));
        if self.ours.is_empty() && self.canary.is_some() {
            // Closing the last reference queues the canary for the next cleanup run.
            self.canary = None;
        } else if self.canary.is_none() && !ids.contains(&self.canary_id) {
            self.canary_gone = true;
        }
        Ok(FreeProgress {
            started: self.total - self.ours.len(),
            total: self.total,
            freed: self.canary_gone,
            elapsed: started.elapsed(),
        })
    }

    /// Polls until ours are freed, at most `limit`; calls `progress` on every change.
    pub fn wait(
        mut self,
        limit: Duration,
        progress: &dyn Fn(&FreeProgress),
    ) -> Result<FreeProgress, FreedError> {
        const POLL: Duration = Duration::from_millis(20);
        let started = Instant::now();
        let mut last = None;
        loop {
            let p = self.poll(started)?;
            if last != Some((p.started, p.freed)) {
                progress(&p);
                last = Some((p.started, p.freed));
            }
            if p.freed {
                return Ok(p);
            }
            if p.elapsed >= limit {
                return Err(if p.started < p.total {
                    FreedError::Held {
                        started: p.started,
                        total: p.total,
                        held: self.held(),
                        waited: p.elapsed,
                    }
                } else {
                    FreedError::Slow {
                        total: p.total,
                        waited: p.elapsed,
                    }
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// The names of ours whose cleanup has not begun.
    fn held(&self) -> Vec<String> {
        self.ours.values().cloned().collect()
    }
}

/// A new, empty namespace held by nothing but the returned file: made on a thread of its own
/// (`unshare` moves the calling thread), which exits at once.
fn make_canary() -> Result<OwnedFd, FreedError> {
    std::thread::spawn(|| -> std::io::Result<OwnedFd> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
    })
    .join()
    .map_err(|_| FreedError::Canary(std::io::Error::other("its thread panicked")))?
    .map_err(FreedError::Canary)
}
