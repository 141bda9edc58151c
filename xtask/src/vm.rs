//! `cargo xtask vm-test`: the integration suite inside QEMU on other kernels.
//!
//! For each kernel: fetch the Debian package (cached under target/vm/kernels/), build an
//! initramfs with busybox, the needed modules, the test executables and `netfn`, boot it, and
//! read the verdict from the serial console. See docs/vm-tests.md.

mod artifacts;
mod cpio;
mod initramfs;
mod kernel;
mod qemu;
mod shards;
mod tools;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util;
use kernel::{Kernel, ModulePlan};
use qemu::{Accel, AccelChoice, Outcome};

/// The kernel series booted when no --kernel is given.
const DEFAULT_KERNEL: &str = "6.1";

/// Modules loaded in the guest (with their dependencies from modules.dep), when the kernel has
/// them as modules. TC hooks (clsact lives in sch_ingress), BPF classifier and action, the
/// link kinds chains use, and WireGuard.
const MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "tun",
    "dummy",
    "bridge",
    "vxlan",
    "wireguard",
    // The firewall's kernel-mode form (nftables with conntrack, reject and limit); the guest
    // has no modprobe for the kernel to load them on demand. crc32c_generic first: libcrc32c
    // needs a crc32c implementation (a soft dependency, which modules.dep does not list).
    "crc32c_generic",
    "nf_tables",
    "nft_ct",
    "nft_counter",
    "nft_limit",
    "nft_reject",
    "nft_reject_inet",
    // The load balancer's kernel-mode form: DNAT by a hash into a map.
    "nf_nat",
    "nft_chain_nat",
    "nft_nat",
    "nft_hash",
    // The WireGuard kind counts handshakes with named nftables counters (`counter name …`).
    "nft_objref",
];

/// Host programs shipped when the host has them (busybox provides the rest): iproute2's `ip`
/// knows `ip netns`, busybox's does not. `promtool` and `prometheus` (about 50 MB each, Debian's
/// prometheus package) let the agent tests check /metrics and scrape it with a real server in
/// the guest too.
const HOST_TOOLS: &[&str] = &[
    "ip",
    "tc",
    "ping",
    "iperf3",
    "wg",
    "wireguard-go",
    "bpftool",
    "nft",
    "promtool",
    "prometheus",
    // util-linux: `script` gives the progress-line test its terminal. `unshare` and `setpriv`
    // (the confined-agent test) lose to busybox's applets in the guest, which lack the options
    // it needs: that test skips there, saying so, and runs on the host.
    "script",
    "unshare",
    "setpriv",
];

#[derive(Args)]
pub struct VmTestArgs {
    /// Kernel versions to boot (Debian packages), selected by prefix: 6.1, 6.12, 6.1.0-57.
    /// Repeat the flag or separate with commas. Default: 6.1.
    #[arg(long = "kernel", value_name = "VERSION", num_args = 1.., value_delimiter = ',')]
    pub kernels: Vec<String>,

    /// Add a test binary that always fails, to prove that a failure turns the run red.
    #[arg(long)]
    pub inject_failure: bool,

    /// QEMU accelerator: auto tries KVM with a short probe boot and falls back to TCG.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,

    /// Seconds one kernel's boot and suite may take before the VM is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 2400)]
    pub timeout: u64,

    /// The package whose test executables run in the VM.
    #[arg(long, default_value = "netfn-tests")]
    pub package: String,

    /// Load this kernel module too (repeatable).
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,

    /// Keep debug info in the binaries copied into the VM (a larger, slower initramfs).
    #[arg(long)]
    pub no_strip: bool,

    /// Print the whole serial console (kernel and tests) while it runs.
    #[arg(long, short)]
    pub verbose: bool,

    /// Let apt remove packages when installing a missing tool needs it (e.g. a backports
    /// qemu-utils that conflicts with bookworm's qemu-system-x86). Off by default.
    #[arg(long)]
    pub apt_allow_removals: bool,

    /// List the kernels apt offers and those cached, and exit.
    #[arg(long)]
    pub list_kernels: bool,

    /// Tests of one binary the guest runs at once (libtest's --test-threads). 1 by default:
    /// with 2, agent, firewall and live_apply failed under TCG on a busy host (the guest's
    /// CPUs are slow enough that a sibling test starves timing-sensitive ones).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub test_threads: usize,

    /// CPUs of each VM. Default: 2 with KVM, 1 under TCG. A TCG guest with 2 CPUs runs two
    /// vCPU threads that compete for the host's cores with the other VMs' (and a guest spins on a
    /// lock whose holder's thread is not running): the whole suite in two VMs took 468 s with 1
    /// CPU each and 650-800 s with 2 on this 2-core machine (2026-12-03). The host suite covers
    /// SMP (2 CPUs, the host kernel).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: Option<u32>,

    /// One more argument of the guest kernel's command line (repeatable), e.g.
    /// `--kernel-arg mitigations=auto`.
    #[arg(long = "kernel-arg", value_name = "ARG")]
    pub kernel_args: Vec<String>,

    /// VMs per kernel, run side by side, each running its share of the suite (the guest's
    /// `netfn.shard=K/N`), spread so that each takes about as long by the recorded times of
    /// the tests (xtask/src/vm/test-seconds.txt): under TCG a guest waits on its slow CPUs more
    /// than it keeps the host busy, so 2 on a 2-core host finish the suite sooner than 1.
    /// Logs: `target/vm/<release>-shard<K>of<N>.log`.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub shards: u64,

    /// Arguments for every test binary (a name filter, for instance), after `--`.
    #[arg(last = true, value_name = "TEST_ARGS")]
    pub test_args: Vec<String>,
}

/// The verdict for one kernel (one shard of its suite).
struct KernelRun {
    kernel: Kernel,
    /// "K/N" of a sharded run, else empty.
    shard: String,
    accel: Accel,
    outcome: Outcome,
    log: PathBuf,
    initramfs_bytes: u64,
    tests: usize,
}

impl KernelRun {
    fn passed(&self) -> bool {
        self.outcome.result.as_deref() == Some("PASS")
    }

    /// " (shard K/N)" of a sharded run, else empty.
    fn shard_label(&self) -> String {
        if self.shard.is_empty() {
            String::new()
        } else {
            format!(" (shard {})", self.shard)
        }
    }

    fn verdict(&self) -> String {
        let o = &self.outcome;
        match (&o.result, &o.qemu_error) {
            (Some(result), _) => result.clone(),
            (None, Some(err)) => format!("FAIL (qemu: {err})"),
            (None, None) if o.timed_out => "FAIL (timed out)".to_string(),
            (None, None) => "FAIL (no result line: kernel panic or init died?)".to_string(),
        }
    }
}

pub fn run(args: VmTestArgs) -> Result<()> {
    let root = util::workspace_root();
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let vm_dir = target.join("vm");
    let kernels_dir = vm_dir.join("kernels");
    std::fs::create_dir_all(&kernels_dir)
        .with_context(|| format!("cannot create {}", kernels_dir.display()))?;

    if args.list_kernels {
        return kernel::list(&kernels_dir);
    }
    tools::ensure(args.apt_allow_removals)?;
    let specs = if args.kernels.is_empty() {
        vec![DEFAULT_KERNEL.to_string()]
    } else {
        args.kernels.clone()
    };
    // Resolve every kernel first, so that a typo fails before the long build.
    let kernels = specs
        .iter()
        .map(|spec| kernel::ensure(spec, &kernels_dir))
        .collect::<Result<Vec<_>>>()?;

    let built = artifacts::build(&root, &args.package)?;
    if built.tests.is_empty() {
        println!(
            "vm-test: WARNING: package {} has no test executables; the VM boots and runs nothing{}",
            args.package,
            if args.inject_failure {
                " but the injected failure"
            } else {
                ""
            }
        );
    }
    // Stripped copies of this run's binaries; older ones (other hashes) are dropped.
    let stage = vm_dir.join("stage");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("cannot remove {}", stage.display()))?;
    }
    let strip = |path: &Path| -> Result<PathBuf> {
        if args.no_strip {
            Ok(path.to_path_buf())
        } else {
            artifacts::strip_debug(path, &stage)
        }
    };
    let netfn = strip(&built.netfn)?;
    let tests = built
        .tests
        .iter()
        .map(|t| {
            Ok(artifacts::TestExe {
                name: t.name.clone(),
                path: strip(&t.path)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let host_tools: Vec<PathBuf> = HOST_TOOLS
        .iter()
        .filter_map(|t| tools::which(t).ok())
        .collect();
    let mut trees: Vec<PathBuf> = built.package_dir.iter().cloned().collect();
    if root.join("examples").is_dir() {
        trees.push(root.join("examples"));
    }
    let busybox = tools::which("busybox")?;
    let mut wanted: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    wanted.extend(args.modules.iter().cloned());

    // The accelerator is chosen once, with a tiny initramfs and the first kernel.
    let probe = vm_dir.join("probe.cpio");
    initramfs::build(
        &probe,
        &initramfs::Payload {
            busybox: busybox.clone(),
            ..Default::default()
        },
    )?;
    let (accel, why) = qemu::choose(
        args.accel,
        &kernels[0].vmlinuz(),
        &probe,
        vm_dir.join("kvm-probe.log"),
    )?;
    let cpus = args.cpus.unwrap_or(match accel {
        Accel::Kvm => 2,
        Accel::Tcg => 1,
    });
    println!(
        "vm-test: accelerator: {} ({why}); {cpus} CPU{} per VM",
        accel.name(),
        if cpus == 1 { "" } else { "s" }
    );

    let mut test_args = args.test_args.clone();
    if !test_args.iter().any(|a| a.starts_with("--test-threads")) {
        test_args.insert(0, format!("--test-threads={}", args.test_threads.max(1)));
    }
    let shard_files = spread_tests(&built.tests, &test_args, args.shards)?;
    let mut runs = Vec::new();
    for kernel in kernels {
        let plan = kernel::plan_modules(&kernel, &wanted)?;
        report_modules(&kernel, &plan);
        let initrd = vm_dir.join(format!("initramfs-{}.cpio", kernel.release));
        let payload = initramfs::Payload {
            busybox: busybox.clone(),
            netfn: Some(netfn.clone()),
            tests: &tests,
            inject_failure: args.inject_failure,
            test_args: &test_args,
            workdir: built.package_dir.clone(),
            trees: trees.clone(),
            host_tools: host_tools.clone(),
            modules: Some((&kernel, &plan)),
            shards: &shard_files,
        };
        let started = Instant::now();
        let initramfs_bytes = initramfs::build(&initrd, &payload)?;
        println!(
            "vm-test: initramfs {} ({:.1} MiB, {} test binaries{}; host tools: {}) in {:.1} s",
            initrd.display(),
            initramfs_bytes as f64 / (1024.0 * 1024.0),
            tests.len() + usize::from(args.inject_failure),
            if args.inject_failure {
                ", one injected to fail"
            } else {
                ""
            },
            names(&host_tools),
            started.elapsed().as_secs_f64()
        );
        let booted = boot_shards(&kernel, &initrd, (accel, cpus), &args, &vm_dir);
        let measured: Vec<(shards::TestId, f64)> = booted
            .iter()
            .flat_map(|(_, _, outcome)| outcome.as_ref().map_or(&[][..], |(_, m)| m))
            .cloned()
            .collect();
        if !measured.is_empty() {
            let path = vm_dir.join(format!("test-seconds-{}.txt", kernel.release));
            std::fs::write(&path, shards::record(&measured))
                .with_context(|| format!("cannot write {}", path.display()))?;
            // Only a run of the whole suite measured every test the checked-in record needs.
            let advice = if args.test_args.is_empty() {
                "the whole suite: copy it over xtask/src/vm/test-seconds.txt to spread the shards \
                 by them"
            } else {
                "the tests the arguments after `--` chose: keep xtask/src/vm/test-seconds.txt \
                 (refresh it from a run of the whole suite)"
            };
            println!(
                "vm-test: the times of {} tests: {} ({advice})",
                measured.len(),
                path.display()
            );
        }
        for (shard, log, outcome) in booted {
            let outcome = outcome.map(|(outcome, _)| outcome);
            let run = KernelRun {
                kernel: kernel.clone(),
                shard,
                accel,
                outcome: outcome?,
                log,
                initramfs_bytes,
                tests: tests.len() + usize::from(args.inject_failure),
            };
            if !run.passed() {
                print_failure(&run);
            }
            runs.push(run);
        }
    }

    print_summary(&runs);
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}{}", r.kernel.release, r.shard_label()))
        .collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}

/// With `shards` > 1, each VM's list of tests (`/etc/netfn/shard-K`), spread by their recorded
/// times; none for one VM, which runs them all. The host's own test executables list their
/// tests (after the filters in `test_args`).
fn spread_tests(
    built: &[artifacts::TestExe],
    test_args: &[String],
    shards: u64,
) -> Result<Vec<String>> {
    let n = usize::try_from(shards).unwrap_or(1);
    if n <= 1 {
        return Ok(Vec::new());
    }
    let mut tests = Vec::new();
    for exe in built {
        tests.extend(shards::list(&exe.name, &exe.path, test_args)?);
    }
    let spread = shards::spread(&tests, &shards::Seconds::recorded()?, n);
    for (k, shard) in spread.iter().enumerate() {
        println!(
            "vm-test: shard {}/{n}: {} tests, {:.0} s by the recorded times",
            k + 1,
            shard.tests.len(),
            shard.seconds
        );
    }
    Ok(spread.iter().map(shards::Shard::file).collect())
}

/// Boots `--shards` VMs of `kernel` side by side (one without `netfn.shard` if 1) and waits for
/// them all: each shard's name ("K/N", or empty), console log, and outcome with the times of the
/// tests it ran.
fn boot_shards(
    kernel: &Kernel,
    initrd: &Path,
    (accel, cpus): (Accel, u32),
    args: &VmTestArgs,
    vm_dir: &Path,
) -> Vec<(String, PathBuf, Result<Booted>)> {
    let shards = usize::try_from(args.shards).unwrap_or(1);
    // Each VM's shard name and console log.
    let vms: Vec<(String, PathBuf)> = (1..=shards)
        .map(|k| {
            if shards == 1 {
                (
                    String::new(),
                    vm_dir.join(format!("{}.log", kernel.release)),
                )
            } else {
                let log = format!("{}-shard{k}of{shards}.log", kernel.release);
                (format!("{k}/{shards}"), vm_dir.join(log))
            }
        })
        .collect();
    let logs: Vec<PathBuf> = vms.iter().map(|(_, log)| log.clone()).collect();
    println!(
        "vm-test: booting {} with {}{} (timeout {} s, console log{} {})",
        kernel.release,
        accel.name(),
        if shards == 1 {
            String::new()
        } else {
            format!(", {shards} VMs side by side, each its share of the suite")
        },
        args.timeout,
        if shards == 1 { "" } else { "s" },
        names(&logs),
    );
    let vmlinuz = kernel.vmlinuz();
    let outcomes: Vec<Result<Booted>> = thread::scope(|scope| {
        let handles: Vec<_> = vms
            .iter()
            .map(|(shard, log)| {
                let (vmlinuz, initrd, verbose) = (&vmlinuz, &initrd, args.verbose);
                let timeout = Duration::from_secs(args.timeout);
                scope.spawn(move || {
                    let mut cmdline = args.kernel_args.join(" ");
                    if !shard.is_empty() {
                        cmdline.push_str(&format!(" netfn.shard={shard}"));
                    }
                    let cmdline = cmdline.trim().to_string();
                    let mut progress = Progress::new(verbose, shard);
                    let outcome = qemu::boot(
                        &qemu::Boot {
                            vmlinuz,
                            initrd,
                            accel,
                            timeout,
                            log,
                            quiet: false,
                            cmdline: &cmdline,
                            cpus,
                        },
                        &mut |line| progress.line(line),
                    )?;
                    Ok((outcome, progress.clock.measured))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the thread of a VM panicked")))
            })
            .collect()
    });
    vms.into_iter()
        .zip(outcomes)
        .map(|((shard, log), outcome)| (shard, log, outcome))
        .collect()
}

fn names(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(" ")
    }
}

fn report_modules(kernel: &Kernel, plan: &ModulePlan) {
    let load: Vec<&str> = plan.load.iter().map(|m| m.name.as_str()).collect();
    println!(
        "vm-test: {} modules to load: {}",
        kernel.release,
        load.join(" ")
    );
    if !plan.builtin.is_empty() {
        println!(
            "vm-test: built into {}: {}",
            kernel.release,
            plan.builtin.join(" ")
        );
    }
    if !plan.missing.is_empty() {
        println!(
            "vm-test: NOTE: {} has no module {}",
            kernel.release,
            plan.missing.join(" ")
        );
    }
}

/// A VM's outcome and the seconds each of its tests took.
type Booted = (Outcome, Vec<(shards::TestId, f64)>);

/// Prints the console while the VM runs: everything with --verbose, else the guest's own
/// progress lines and one line per test binary. Times the tests.
struct Progress {
    verbose: bool,
    /// "[K/N] " before each line of a sharded run's VM, else empty.
    tag: String,
    test_started: Option<Instant>,
    clock: shards::Clock,
}

impl Progress {
    fn new(verbose: bool, shard: &str) -> Self {
        Progress {
            verbose,
            tag: if shard.is_empty() {
                String::new()
            } else {
                format!("[{shard}] ")
            },
            test_started: None,
            clock: shards::Clock::default(),
        }
    }

    fn line(&mut self, line: &str) {
        self.clock.line(line, Instant::now());
        let tag = &self.tag;
        if self.verbose {
            println!("  {tag}| {line}");
        }
        if line.starts_with(TEST_BEGIN) {
            self.test_started = Some(Instant::now());
        } else if let Some(rest) = line.strip_prefix(TEST_END) {
            if !self.verbose {
                let secs = self
                    .test_started
                    .take()
                    .map_or(0.0, |t| t.elapsed().as_secs_f64());
                let (name, rc) = rest.rsplit_once(" rc=").unwrap_or((rest, "?"));
                let verdict = if rc == "0" { "ok  " } else { "FAIL" };
                println!("  {tag}{verdict} {name} ({secs:.1} s, exit {rc})");
            }
        } else if !self.verbose && line.starts_with("NETFN-VM") {
            println!("  {tag}guest: {line}");
        }
    }
}

const TEST_BEGIN: &str = "NETFN-VM-TEST-BEGIN: ";
const TEST_END: &str = "NETFN-VM-TEST-END: ";

/// The console lines of one test binary, between its BEGIN and END markers (to the end of the
/// log if it never ended).
fn section<'a>(lines: &'a [String], name: &str) -> &'a [String] {
    let begin = format!("{TEST_BEGIN}{name}");
    let end = format!("{TEST_END}{name} ");
    let Some(start) = lines.iter().position(|l| *l == begin) else {
        return &[];
    };
    let stop = lines[start..]
        .iter()
        .position(|l| l.starts_with(&end))
        .map_or(lines.len(), |i| start + i + 1);
    &lines[start..stop]
}

fn print_failure(run: &KernelRun) {
    let lines = &run.outcome.lines;
    println!(
        "\n==== {}{} FAILED: {} ====",
        run.kernel.release,
        run.shard_label(),
        run.verdict()
    );
    match run
        .outcome
        .result
        .as_deref()
        .and_then(|r| r.strip_prefix("FAIL"))
    {
        Some(names) => {
            for name in names.split_whitespace() {
                println!("---- output of {name} ----");
                for line in section(lines, name) {
                    println!("{line}");
                }
            }
        }
        None => {
            // No verdict: say which test was running, and show the end of the console.
            let running = lines
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix(TEST_BEGIN))
                .filter(|name| {
                    !lines
                        .iter()
                        .any(|l| l.starts_with(&format!("{TEST_END}{name} ")))
                });
            if let Some(name) = running {
                println!("---- {name} was running; last lines of the console ----");
            } else {
                println!("---- last lines of the console ----");
            }
            for line in &lines[lines.len().saturating_sub(80)..] {
                println!("{line}");
            }
        }
    }
    println!("---- full console log: {} ----\n", run.log.display());
}

fn print_summary(runs: &[KernelRun]) {
    println!("\nvm-test summary:");
    println!(
        "  {:<24} {:<5} {:>7} {:>8} {:>8} {:>9}  result",
        "kernel", "accel", "tests", "boot", "total", "initramfs"
    );
    for run in runs {
        let o = &run.outcome;
        println!(
            "  {:<24} {:<5} {:>7} {:>8} {:>8} {:>8.0}M  {}",
            format!("{} {}", run.kernel.release, run.shard).trim_end(),
            run.accel.name(),
            run.tests,
            o.boot_time
                .map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64())),
            format!("{:.1}s", o.total_time.as_secs_f64()),
            run.initramfs_bytes as f64 / (1024.0 * 1024.0),
            run.verdict()
        );
    }
    for run in runs {
        println!(
            "  log {}{}: {}",
            run.kernel.release,
            run.shard_label(),
            run.log.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_cut_at_the_markers() {
        let lines: Vec<String> = [
            "boot",
            "NETFN-VM-TEST-BEGIN: a",
            "a out",
            "NETFN-VM-TEST-END: a rc=0",
            "NETFN-VM-TEST-BEGIN: ab",
            "ab out",
            "NETFN-VM-TEST-END: ab rc=1",
            "NETFN-VM-TEST-BEGIN: c",
            "c hangs",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(section(&lines, "a"), &lines[1..4]);
        assert_eq!(section(&lines, "ab"), &lines[4..7]);
        assert_eq!(section(&lines, "c"), &lines[7..]);
        assert!(section(&lines, "d").is_empty());
    }
}
