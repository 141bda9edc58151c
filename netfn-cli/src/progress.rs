//! The live progress line of the long verbs (`up`, `down`, `apply`): chains and functions done
//! of the total, namespaces made or removed, elapsed time, redrawn in place on stderr a few
//! times a second. It is drawn only when stderr is a terminal and `--quiet` was not given;
//! otherwise nothing of it is written, and scripts and logs see the result lines alone.
//! Lines printed while it is drawn go through [`Live::println`] / [`Live::eprintln`], which
//! clear it first so it never runs into them.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(100);

/// Erase the current terminal line: carriage return, then "erase in line".
const CLEAR: &str = "\r\x1b[K";

/// One verb's progress: what it works on and how far it is.
pub struct Live {
    verb: &'static str,
    chains: usize,
    functions: usize,
    chains_done: AtomicUsize,
    functions_done: AtomicUsize,
    namespaces: AtomicUsize,
    /// What the verb is doing besides the counts ("kernel freed 120/1,200 namespaces").
    extra: Mutex<String>,
    started: Instant,
    drawn: bool,
    /// Taken for every write, so a redraw and a printed line never interleave.
    out: Mutex<()>,
    stop: (Mutex<bool>, Condvar),
    visible: AtomicBool,
}

/// Whether a live line is drawn: on a terminal, unless `--quiet`.
pub fn wanted(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

impl Live {
    /// A line for `verb` over `chains` chains of `functions` functions in all.
    pub fn new(verb: &'static str, chains: usize, functions: usize, quiet: bool) -> Live {
        Live {
            verb,
            chains,
            functions,
            chains_done: AtomicUsize::new(0),
            functions_done: AtomicUsize::new(0),
            namespaces: AtomicUsize::new(0),
            extra: Mutex::new(String::new()),
            started: Instant::now(),
            drawn: wanted(quiet),
            out: Mutex::new(()),
            stop: (Mutex::new(false), Condvar::new()),
            visible: AtomicBool::new(false),
        }
    }

    /// Runs `work` with the line redrawn beside it (when drawn at all); clears it at the end.
    pub fn run<T>(&self, work: impl FnOnce() -> T) -> T {
        if !self.drawn {
            return work();
        }
        std::thread::scope(|s| {
            s.spawn(|| self.ticker());
            let result = work();
            if let Ok(mut stop) = self.stop.0.lock() {
                *stop = true;
            }
            self.stop.1.notify_all();
            result
        })
    }

    fn ticker(&self) {
        let Ok(mut stop) = self.stop.0.lock() else {
            return;
        };
        while !*stop {
            self.draw();
            match self.stop.1.wait_timeout(stop, TICK) {
                Ok((s, _)) => stop = s,
                Err(_) => return,
            }
        }
        drop(stop);
        self.clear();
    }

    /// The line as it stands now (also what tests of the format look at).
    pub fn line(&self) -> String {
        let mut line = format!(
            "netfn {}: {}/{} chain(s), {}/{} function(s)",
            self.verb,
            self.chains_done.load(Relaxed),
            self.chains,
            self.functions_done.load(Relaxed),
            self.functions
        );
        let ns = self.namespaces.load(Relaxed);
        if ns > 0 {
            line.push_str(&format!(", {ns} namespace(s) {}", self.namespace_verb()));
        }
        if let Ok(extra) = self.extra.lock()
            && !extra.is_empty()
        {
            line.push_str(", ");
            line.push_str(&extra);
        }
        line.push_str(&format!(", {:.1} s", self.started.elapsed().as_secs_f64()));
        line
    }

    fn namespace_verb(&self) -> &'static str {
        if self.verb == "down" {
            "removed"
        } else {
            "made"
        }
    }

    fn draw(&self) {
        let _out = self.out.lock();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{CLEAR}{}", self.line());
        let _ = err.flush();
        self.visible.store(true, Relaxed);
    }

    fn clear(&self) {
        let _out = self.out.lock();
        self.clear_locked();
    }

    fn clear_locked(&self) {
        if self.visible.swap(false, Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{CLEAR}");
            let _ = err.flush();
        }
    }

    /// A chain of `functions` functions is done (up, down or applied, or failed).
    pub fn chain_done(&self, functions: usize) {
        self.chains_done.fetch_add(1, Relaxed);
        self.functions_done.fetch_add(functions, Relaxed);
    }

    /// `n` more namespaces made (up) or removed (down).
    pub fn namespaces(&self, n: usize) {
        self.namespaces.fetch_add(n, Relaxed);
    }

    /// Says what the verb does now besides the counts.
    pub fn set_extra(&self, text: String) {
        if let Ok(mut extra) = self.extra.lock() {
            *extra = text;
        }
    }

    /// Prints a result line on stdout, below the live line. A stdout that is gone (`netfn up
    /// FILE | head -1` after head ended) loses the line but never stops the verb half-way: a
    /// chain half up, half changed, half down is worse than a report unread.
    pub fn println(&self, line: &str) {
        let _out = self.out.lock();
        self.clear_locked();
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }

    /// Prints a message on stderr, below the live line (as [`Self::println`], a stderr that is
    /// gone loses it).
    pub fn eprintln(&self, line: &str) {
        let _out = self.out.lock();
        self.clear_locked();
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

impl netfn_core::chain::lifecycle::Progress for Live {
    fn note(&self, line: &str) {
        self.eprintln(&format!("netfn: {line}"));
    }

    fn namespace_made(&self) {
        self.namespaces(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_counts_chains_functions_and_namespaces() {
        let live = Live::new("up", 3, 30, true);
        assert!(!live.drawn, "--quiet draws nothing");
        live.chain_done(10);
        live.namespaces(14);
        let line = live.line();
        assert!(
            line.starts_with("netfn up: 1/3 chain(s), 10/30 function(s), 14 namespace(s) made, "),
            "{line}"
        );
        assert!(line.ends_with(" s"), "{line}");
        let down = Live::new("down", 1, 5, true);
        down.namespaces(7);
        down.set_extra("kernel freed about 3/7 namespace(s)".into());
        assert!(
            down.line()
                .contains("7 namespace(s) removed, kernel freed about 3/7 namespace(s), "),
            "{}",
            down.line()
        );
    }
}
