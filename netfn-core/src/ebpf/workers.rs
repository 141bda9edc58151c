//! Running work inside network namespaces, on dedicated threads.
//!
//! `setns(2)` changes the namespace of the calling *thread* only, and aya resolves interface
//! names and ifindexes in the calling thread's namespace. So per-namespace work runs on a small
//! pool of `std::thread`s (never a tokio worker): each thread takes the next namespace from a
//! shared queue, enters it, does the work, and exits when the queue is empty, taking its
//! namespace membership with it. The calling thread never changes namespace.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use nix::sched::{CloneFlags, setns};

use super::EbpfError;

/// Threads used for per-namespace work: namespaces are independent, and most of the time goes
/// to syscalls and netlink round trips, so a few threads help even on two cores.
pub const NETNS_THREADS: usize = 4;

/// Enters the network namespace at `path` (e.g. `/run/netns/NAME`) on the calling thread.
///
/// Only call this on a thread that exits afterwards, or that will only ever do namespaced work.
pub fn enter_netns(path: &Path) -> Result<(), EbpfError> {
    let file = File::open(path).map_err(|source| EbpfError::EnterNetns {
        path: path.to_path_buf(),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| EbpfError::EnterNetns {
        path: path.to_path_buf(),
        source: errno.into(),
    })
}

/// Runs `work(state, index)` for every `index` of `netns`, on one thread per element of
/// `states`, each thread entering `netns[index]` first. Returns one result per namespace, in
/// order; a namespace that could not be entered gets the error and no call of `work`.
pub(crate) fn in_namespaces<S, R, F>(
    netns: &[&Path],
    states: Vec<S>,
    work: F,
) -> Result<Vec<Result<R, EbpfError>>, EbpfError>
where
    S: Send,
    R: Send,
    F: Fn(&mut S, usize) -> R + Sync,
{
    let next = AtomicUsize::new(0);
    let work = &work;
    let next = &next;

    let per_thread: Vec<Vec<(usize, Result<R, EbpfError>)>> = thread::scope(|scope| {
        let mut handles = Vec::with_capacity(states.len());
        for (i, mut state) in states.into_iter().enumerate() {
            let handle = thread::Builder::new()
                .name(format!("netfn-netns-{i}"))
                .spawn_scoped(scope, move || {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = netns.get(index) else { break };
                        let result = enter_netns(path).map(|()| work(&mut state, index));
                        done.push((index, result));
                    }
                    done
                })
                .map_err(EbpfError::SpawnWorker);
            match handle {
                Ok(handle) => handles.push(handle),
                // Threads already started drain the queue; with none started, nothing ran.
                Err(e) if handles.is_empty() => return Err(e),
                Err(e) => tracing::warn!("{e}; going on with {} threads", handles.len()),
            }
        }
        let mut joined = Vec::with_capacity(handles.len());
        for handle in handles {
            // A panicking worker loses its namespaces' results; they are reported below.
            if let Ok(done) = handle.join() {
                joined.push(done);
            }
        }
        Ok(joined)
    })?;

    let mut results: Vec<Option<Result<R, EbpfError>>> = netns.iter().map(|_| None).collect();
    for (index, result) in per_thread.into_iter().flatten() {
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(result);
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Err(EbpfError::WorkerPanicked)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_reported_per_entry_and_work_is_not_run() {
        let paths = [
            Path::new("/nonexistent/netns/a"),
            Path::new("/nonexistent/netns/b"),
        ];
        let results = in_namespaces(&paths, vec![(), ()], |_: &mut (), i| i).unwrap();
        assert_eq!(results.len(), 2);
        for r in results {
            assert!(matches!(r, Err(EbpfError::EnterNetns { .. })), "{r:?}");
        }
    }

    #[test]
    fn no_namespaces_no_work() {
        let results = in_namespaces(&[], vec![()], |_: &mut (), i| i).unwrap();
        assert!(results.is_empty());
    }
}
