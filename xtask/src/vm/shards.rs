//! Spreading the suite over `--shards N` VMs by how long each test took under TCG, and
//! recording those times from the consoles of a run.
//!
//! Each VM gets about the same number of seconds (longest test first, each to the VM with the
//! least so far). Taking every N-th test instead left one VM about two minutes behind the other
//! in CI (753 s and 640 s on 2026-12-05): a few tests (twenty chains racing, the three live
//! applies under streams) take a minute each, most a few seconds.
//!
//! The times come from `test-seconds.txt` next to this file, measured under TCG with one CPU per
//! VM. Every run writes what it measured to `target/vm/test-seconds-<release>.txt` in the same
//! form; copying that over the checked-in file refreshes the spread. A test not in the file (a
//! new one) counts as the median of those that are.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Seconds per test, `binary::test seconds` per line, `#` comments.
const RECORDED: &str = include_str!("test-seconds.txt");

/// A test of the suite: its binary's name and the test's name within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TestId {
    pub binary: String,
    pub name: String,
}

impl TestId {
    fn key(&self) -> String {
        format!("{}::{}", self.binary, self.name)
    }
}

/// The recorded seconds of each test, by `binary::test`.
pub struct Seconds(HashMap<String, f64>);

impl Seconds {
    /// The checked-in record.
    pub fn recorded() -> Result<Self> {
        Self::parse(RECORDED).context("xtask/src/vm/test-seconds.txt")
    }

    fn parse(text: &str) -> Result<Self> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = line
                .rsplit_once(' ')
                .and_then(|(key, secs)| Some((key.trim(), secs.parse::<f64>().ok()?)))
                .filter(|(key, secs)| key.contains("::") && secs.is_finite() && *secs >= 0.0);
            let Some((key, secs)) = parsed else {
                bail!("line {}: {line:?} is not `binary::test seconds`", i + 1);
            };
            map.insert(key.to_string(), secs);
        }
        Ok(Seconds(map))
    }

    /// What `test` is expected to take: its record, else the median of the records (5 s if
    /// there are none).
    fn of(&self, test: &TestId) -> f64 {
        self.0
            .get(&test.key())
            .copied()
            .unwrap_or_else(|| self.median())
    }

    fn median(&self) -> f64 {
        let mut all: Vec<f64> = self.0.values().copied().collect();
        if all.is_empty() {
            return 5.0;
        }
        all.sort_by(f64::total_cmp);
        all[all.len() / 2]
    }
}

/// The tests of one VM.
#[derive(Debug, Default)]
pub struct Shard {
    pub tests: Vec<TestId>,
    /// What they are expected to take, by the record.
    pub seconds: f64,
}

impl Shard {
    /// The guest's list (`/etc/netfn/shard-K`): `binary test` per line, in the suite's order.
    pub fn file(&self) -> String {
        let mut out = String::new();
        for t in &self.tests {
            let _ = writeln!(out, "{} {}", t.binary, t.name);
        }
        out
    }
}

/// Spreads `tests` (in the suite's order) over `n` shards: longest first, each to the shard
/// expected to finish first (the lower-numbered on a tie). Each shard keeps the suite's order.
pub fn spread(tests: &[TestId], seconds: &Seconds, n: usize) -> Vec<Shard> {
    let mut shards: Vec<Shard> = (0..n.max(1)).map(|_| Shard::default()).collect();
    let mut by_length: Vec<(usize, f64)> = tests
        .iter()
        .enumerate()
        .map(|(i, t)| (i, seconds.of(t)))
        .collect();
    // Stable: equal times keep the suite's order, so the spread is deterministic.
    by_length.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); shards.len()];
    for (i, secs) in by_length {
        let (k, _) = shards
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.seconds.total_cmp(&b.1.seconds))
            .unwrap_or((0, &shards[0]));
        shards[k].seconds += secs;
        assigned[k].push(i);
    }
    for (shard, mut indices) in shards.iter_mut().zip(assigned) {
        indices.sort_unstable();
        shard.tests = indices.into_iter().map(|i| tests[i].clone()).collect();
    }
    shards
}

/// The tests `exe` runs with `args` (libtest's `--list`, after the filters in them), in its
/// order.
pub fn list(binary: &str, exe: &Path, args: &[String]) -> Result<Vec<TestId>> {
    let out = Command::new(exe)
        .args(args)
        .args(["--list", "--format", "terse"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} --list", exe.display()))?;
    if !out.status.success() {
        bail!("{} --list failed with {}", exe.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(|name| TestId {
            binary: binary.to_string(),
            name: name.to_string(),
        })
        .collect())
}

/// Times the tests of one VM from its console lines, as they arrive: a test's time runs from
/// the verdict before it (or its binary's start) to its own.
#[derive(Default)]
pub struct Clock {
    binary: Option<String>,
    /// The test whose verdict is awaited (its line was cut by the console's other output).
    running: Option<String>,
    since: Option<Instant>,
    pub measured: Vec<(TestId, f64)>,
}

impl Clock {
    pub fn line(&mut self, line: &str, now: Instant) {
        if let Some(binary) = line.strip_prefix(super::TEST_BEGIN) {
            self.binary = Some(binary.trim().to_string());
            self.running = None;
            self.since = Some(now);
            return;
        }
        if line.starts_with(super::TEST_END) {
            self.binary = None;
            return;
        }
        let verdict = if let Some(rest) = line.strip_prefix("test ") {
            let Some((name, after)) = rest.split_once(" ... ") else {
                return;
            };
            self.running = Some(name.to_string());
            after
        } else {
            line
        };
        if !(verdict.starts_with("ok") || verdict.starts_with("FAILED")) {
            return;
        }
        let (Some(binary), Some(name), Some(since)) =
            (&self.binary, self.running.take(), self.since)
        else {
            return;
        };
        self.measured.push((
            TestId {
                binary: binary.clone(),
                name,
            },
            now.duration_since(since).as_secs_f64(),
        ));
        self.since = Some(now);
    }
}

/// The record's text for `measured` (every VM's), sorted by test.
pub fn record(measured: &[(TestId, f64)]) -> String {
    let mut sorted: Vec<&(TestId, f64)> = measured.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::from(
        "# Seconds each test of the VM suite took under TCG, one CPU per VM (`cargo xtask vm-test\n\
         # --shards N` writes them to target/vm/test-seconds-<release>.txt). `binary::test seconds`.\n",
    );
    for (t, secs) in sorted {
        let _ = writeln!(out, "{} {secs:.1}", t.key());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(binary: &str, name: &str) -> TestId {
        TestId {
            binary: binary.into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_checked_in_record_parses_and_bad_lines_are_refused() {
        let recorded = Seconds::recorded().unwrap();
        assert!(
            recorded.0.len() > 100,
            "{} tests recorded",
            recorded.0.len()
        );
        let s = Seconds::parse("# c\n\na::x 1.5\nb::y 3\n").unwrap();
        assert_eq!(s.of(&id("a", "x")), 1.5);
        assert_eq!(s.of(&id("b", "z")), 3.0, "the median");
        for bad in ["a::x", "a::x -1", "ax 2", "a::x two"] {
            assert!(Seconds::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shards_get_about_the_same_seconds_in_the_suites_order() {
        let seconds = Seconds::parse("a::long 60\na::m1 20\nb::m2 20\nb::m3 20\n").unwrap();
        let tests = [
            id("a", "long"),
            id("a", "m1"),
            id("b", "m2"),
            id("b", "m3"),
            id("b", "new"),
        ];
        let shards = spread(&tests, &seconds, 2);
        // 60 | 20 + 20 + 20, then the new test (the median, 20) to the first of the two
        // shards with 60.
        assert_eq!(shards[0].tests, [id("a", "long"), id("b", "new")]);
        assert_eq!(
            shards[1].tests,
            [id("a", "m1"), id("b", "m2"), id("b", "m3")]
        );
        assert_eq!(shards[0].seconds, 80.0);
        let shards = spread(&tests, &seconds, 3);
        let total: usize = shards.iter().map(|s| s.tests.len()).sum();
        assert_eq!(total, tests.len(), "every test once");
        assert_eq!(shards[0].file(), "a long\n");
        // Every N-th (the old spread) would give one VM 60 + 20 + 20.
        let max = shards.iter().map(|s| s.seconds).fold(0.0, f64::max);
        assert_eq!(max, 60.0);
    }

    #[test]
    fn the_clock_times_each_verdict_from_the_one_before() {
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let mut c = Clock::default();
        c.line("NETFN-VM-TEST-BEGIN: lb", at(0));
        c.line("running 2 tests", at(100));
        c.line("test a ... ok", at(2_000));
        c.line(
            "test b ... [  319.48] IPv6: ADDRCONF(NETDEV_CHANGE): far0: link becomes ready",
            at(3_000),
        );
        c.line("ok", at(5_000));
        c.line("test result: ok. 2 passed", at(5_100));
        c.line("NETFN-VM-TEST-END: lb rc=0", at(5_200));
        c.line("NETFN-VM-TEST-BEGIN: fw", at(6_000));
        c.line("test c ... FAILED", at(7_000));
        c.line("ok", at(8_000));
        let got: Vec<(String, f64)> = c.measured.iter().map(|(t, s)| (t.key(), *s)).collect();
        assert_eq!(
            got,
            [
                ("lb::a".to_string(), 2.0),
                ("lb::b".to_string(), 3.0),
                ("fw::c".to_string(), 1.0)
            ]
        );
        let text = record(&c.measured);
        let parsed = Seconds::parse(&text).unwrap();
        assert_eq!(parsed.of(&id("lb", "b")), 3.0);
        assert!(text.lines().nth(2).unwrap().starts_with("fw::c "), "{text}");
    }
}
