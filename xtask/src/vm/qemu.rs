//! Booting a kernel and initramfs in QEMU, reading the serial console with a timeout, and
//! choosing between KVM and TCG.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// What the init script prints last; the rest of the line is `PASS` or `FAIL <names>`.
pub const RESULT: &str = "NETFN-VM-RESULT: ";
/// What the init script prints first: the boot is over.
const INIT_STARTED: &str = "NETFN-VM: init started";
/// How long QEMU may take to exit after the result line (poweroff -f is immediate).
const EXIT_GRACE: Duration = Duration::from_secs(20);
/// Guest memory.
const MEMORY_MB: &str = "1024";
/// ttyS0 is the console; panic=-1 with -no-reboot turns a panic into a QEMU exit;
/// random.trust_cpu seeds the RNG from RDRAND (emulated by `-cpu max`), so getrandom() does
/// not wait for entropy.
const CMDLINE: &str = "console=ttyS0 panic=-1 random.trust_cpu=on";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when a short probe boot works, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One boot.
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub timeout: Duration,
    /// The whole console (and QEMU's stderr, prefixed `[qemu]`) is written here as it comes.
    pub log: &'a Path,
    /// Do not echo QEMU's stderr (it is in the log either way).
    pub quiet: bool,
    /// Appended to the kernel command line (`--kernel-arg`s, `netfn.shard=K/N`), if not empty.
    pub cmdline: &'a str,
    /// The guest's CPUs.
    pub cpus: u32,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Outcome {
    /// The console, line by line (without `\r`).
    pub lines: Vec<String>,
    /// The text after `NETFN-VM-RESULT: `, if the guest got that far.
    pub result: Option<String>,
    /// A fatal error QEMU printed (e.g. `KVM internal error`), after which the VM was killed.
    pub qemu_error: Option<String>,
    /// What QEMU printed on stderr.
    pub qemu_stderr: Vec<String>,
    pub timed_out: bool,
    pub exit: Option<ExitStatus>,
    /// From QEMU's start to the first line of /init.
    pub boot_time: Option<Duration>,
    pub total_time: Duration,
}

enum Event {
    Console(String),
    Qemu(String),
}

/// Spawns a thread that sends each line of `pipe` (lossy UTF-8, no `\r\n`).
fn pump(pipe: impl Read + Send + 'static, tx: Sender<Event>, wrap: fn(String) -> Event) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(wrap(line)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Boots, calls `on_line` for every console line, and returns when QEMU exits, the timeout
/// passes, or QEMU reports a fatal error (the VM is then killed).
pub fn boot(b: &Boot<'_>, on_line: &mut dyn FnMut(&str)) -> Result<Outcome> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-reboot", "-display", "none"])
        .args(["-serial", "stdio", "-m", MEMORY_MB])
        .args(["-smp", &b.cpus.to_string()])
        .args(b.accel.args())
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .arg("-append")
        .arg(format!("{CMDLINE} {}", b.cmdline).trim_end())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let log_file =
        File::create(b.log).with_context(|| format!("cannot create {}", b.log.display()))?;
    let mut log = BufWriter::new(log_file);
    writeln!(log, "# {cmd:?}").context("cannot write the log")?;

    let start = Instant::now();
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone(), Event::Console);
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx.clone(), Event::Qemu);
    }
    drop(tx);

    let mut out = Outcome {
        lines: Vec::new(),
        result: None,
        qemu_error: None,
        qemu_stderr: Vec::new(),
        timed_out: false,
        exit: None,
        boot_time: None,
        total_time: Duration::ZERO,
    };
    let mut deadline = start + b.timeout;
    let mut killed = false;
    loop {
        let now = Instant::now();
        if now >= deadline && !killed {
            out.timed_out = out.result.is_none();
            kill(&mut child);
            killed = true;
        }
        // After a kill the pipes close soon; keep draining what is left.
        let wait = if killed {
            Duration::from_secs(5)
        } else {
            deadline - now
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Console(line)) => {
                // Seconds since QEMU started: how long each test took, read from the log.
                let at = start.elapsed();
                writeln!(log, "[{:7.1}] {line}", at.as_secs_f64())
                    .context("cannot write the log")?;
                if out.boot_time.is_none() && line.contains(INIT_STARTED) {
                    out.boot_time = Some(at);
                }
                if let Some(result) = line.trim_start().strip_prefix(RESULT) {
                    out.result = Some(result.trim().to_string());
                    deadline = deadline.min(Instant::now() + EXIT_GRACE);
                }
                on_line(&line);
                out.lines.push(line);
            }
            Ok(Event::Qemu(line)) => {
                writeln!(log, "[qemu] {line}").context("cannot write the log")?;
                if !b.quiet {
                    eprintln!("[qemu] {line}");
                }
                if line.contains("KVM internal error") && out.qemu_error.is_none() {
                    out.qemu_error = Some(line.clone());
                    deadline = Instant::now();
                }
                out.qemu_stderr.push(line);
            }
            Err(RecvTimeoutError::Timeout) if killed => break,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if !killed && child.try_wait().ok().flatten().is_none() {
        // Both pipes closed, yet QEMU runs: give it a moment, then make sure.
        thread::sleep(Duration::from_millis(500));
        if child.try_wait().ok().flatten().is_none() {
            kill(&mut child);
        }
    }
    out.exit = child.wait().ok();
    out.total_time = start.elapsed();
    writeln!(
        log,
        "# qemu ended after {:.1} s: {}",
        out.total_time.as_secs_f64(),
        match (&out.exit, out.timed_out) {
            (_, true) => "timed out, killed".to_string(),
            (Some(status), false) => status.to_string(),
            (None, false) => "unknown status".to_string(),
        }
    )
    .and_then(|()| log.flush())
    .context("cannot write the log")?;
    Ok(out)
}

fn kill(child: &mut Child) {
    // The process may have exited already: nothing else to do then.
    let _ = child.kill();
}

/// Picks the accelerator. `Auto` tries a short KVM boot of `probe_initrd` (busybox and init,
/// no tests) when /dev/kvm can be opened, and falls back to TCG. Returns the choice and why.
pub fn choose(
    choice: AccelChoice,
    vmlinuz: &Path,
    probe_initrd: &Path,
    log: PathBuf,
) -> Result<(Accel, String)> {
    match choice {
        AccelChoice::Kvm => return Ok((Accel::Kvm, "asked for with --accel kvm".into())),
        AccelChoice::Tcg => return Ok((Accel::Tcg, "asked for with --accel tcg".into())),
        AccelChoice::Auto => {}
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return Ok((Accel::Tcg, format!("cannot open /dev/kvm: {e}")));
    }
    let out = boot(
        &Boot {
            vmlinuz,
            initrd: probe_initrd,
            accel: Accel::Kvm,
            // A working KVM boots busybox in a second or two; where /dev/kvm opens but KVM
            // does not run guests (nested PVM here), the probe prints nothing and waits out
            // the timeout, on every run.
            timeout: Duration::from_secs(12),
            log: &log,
            quiet: true,
            cmdline: "",
            cpus: 1,
        },
        &mut |_| {},
    )?;
    if out.result.as_deref() == Some("PASS") {
        return Ok((
            Accel::Kvm,
            format!(
                "a KVM probe boot took {:.1} s",
                out.total_time.as_secs_f64()
            ),
        ));
    }
    let said = out
        .qemu_stderr
        .iter()
        .find(|l| l.contains("error"))
        .or(out.qemu_stderr.last());
    let why = if let Some(err) = out.qemu_error.as_ref().or(said) {
        err.trim_start_matches("qemu-system-x86_64: ").to_string()
    } else if out.timed_out {
        "the probe boot timed out".to_string()
    } else {
        match out.exit {
            Some(status) => format!("qemu exited with {status} and no result"),
            None => "the probe boot gave no result".to_string(),
        }
    };
    Ok((
        Accel::Tcg,
        format!("KVM probe failed: {why} (log: {})", log.display()),
    ))
}
