//! One function per verb. Core does the work; this layer adds context and prints.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use netfn_core::chain::apply::ApplyOutcome;
use netfn_core::chain::lifecycle::{self, DownOutcome, UpOptions, UpOutcome};
use netfn_core::chain::processes::Restart;
use netfn_core::chain::{graph, state, status};
use netfn_core::function::HostNames;
use netfn_core::kernel::{freed, netns};
use netfn_core::plan::{self, names};
use netfn_core::spec::diag::Diagnostics;
use netfn_core::spec::{self, ChainFile, ChainSpec, LoadError};
use netfn_core::{agent, ebpf, privilege};

use crate::output;
use crate::progress::Live;

/// Loads a chain file. Its diagnostics go to stderr as they are (`FILE:LINE:COL: …`, the
/// form editors and grep read), and the error is one summary line.
fn load(file: &Path) -> Result<ChainFile> {
    load_with(file, &HostNames::system_patient())
}

/// [`load`], with host names looked up by `names`.
fn load_with(file: &Path, names: &HostNames) -> Result<ChainFile> {
    let registry = netfn_functions::registry();
    let loaded = spec::load_with(file, &registry, names);
    if let Ok(f) = &loaded
        && !f.warnings.is_empty()
    {
        output::to_stderr(&f.warnings);
    }
    loaded.map_err(|e| match e {
        LoadError::Invalid(d) => {
            output::to_stderr(&d);
            anyhow::anyhow!(
                "{}; fix them and run `netfn validate {}`",
                problems(file, &d),
                file.display()
            )
        }
        other => anyhow::Error::new(other),
    })
}

/// `FILE: N error(s)` and, if there are any, `, M warning(s)`.
fn problems(file: &Path, d: &Diagnostics) -> String {
    let errors = d.errors();
    let warnings = d.len() - errors;
    let mut line = format!("{}: {errors} error(s)", file.display());
    if warnings > 0 {
        line.push_str(&format!(", {warnings} warning(s)"));
    }
    line
}

/// The chains of `spec` (from `file`) that `--chain only` names: all of them without it.
fn selected<'a>(
    spec: &'a ChainFile,
    file: &Path,
    only: Option<&str>,
) -> Result<Vec<&'a ChainSpec>> {
    let chains: Vec<_> = spec
        .chains
        .iter()
        .filter(|c| only.is_none_or(|o| o == c.name))
        .collect();
    if chains.is_empty() {
        bail!(
            "{} has no chain named `{}`; it has: {}",
            file.display(),
            only.unwrap_or_default(),
            spec.chains
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(chains)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Refuses to go on without root: `netfn {verb}` `why` (what it does that needs root).
fn require_root(verb: &str, why: &str) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("`netfn {verb}` {why}, and needs root; run it with sudo");
    }
    Ok(())
}

/// [`require_root`], and the capabilities that entering namespaces, netlink and eBPF objects take
/// ([`privilege::ADMIN_CAPABILITIES`]): root without them would fail deep inside (or, reading,
/// see every namespace as missing).
fn require_admin(verb: &str, why: &str) -> Result<()> {
    require_root(verb, why)?;
    crate::require_capabilities(&format!("netfn {verb}"), why, privilege::ADMIN_CAPABILITIES)
}

pub fn validate(file: &Path, no_lookup: bool) -> Result<ExitCode> {
    let registry = netfn_functions::registry();
    let host_names = if no_lookup {
        HostNames::form_only()
    } else {
        HostNames::system_patient()
    };
    match spec::load_with(file, &registry, &host_names) {
        Ok(f) => {
            if !f.warnings.is_empty() {
                output::to_stderr(&f.warnings);
            }
            let chains: Vec<String> = f
                .chains
                .iter()
                .map(|c| {
                    format!(
                        "{} ({} function(s), {})",
                        c.name,
                        c.functions.len(),
                        c.fastpath
                    )
                })
                .collect();
            println!(
                "{}: ok, {} chain(s): {}",
                file.display(),
                f.chains.len(),
                chains.join(", ")
            );
            if host_names.skipped() > 0 {
                println!(
                    "{} endpoint name(s) checked for their form only (--no-lookup): `netfn up` \
                     and `apply` look them up",
                    host_names.skipped()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(d)) => {
            output::to_stderr(format_args!("{d}\n{}", problems(file, &d)));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn up(file: &Path, only: Option<&str>, quiet: bool) -> Result<ExitCode> {
    let spec = load(file)?;
    let chains = selected(&spec, file, only)?;
    require_admin("up", "creates namespaces, veths and eBPF programs")?;
    let rt = runtime()?;
    // Every chain loads the eBPF object: reuse aya's loaders (and their parse of the kernel's
    // BTF) across them.
    let _reuse = netfn_core::ebpf::ReuseLoaders::begin();
    let source = as_named(file);
    let options = UpOptions {
        tc_interfaces: lifecycle::tc_interfaces(chains.iter().copied()),
        ..UpOptions::default()
    };
    let live = Live::new(
        "up",
        chains.len(),
        chains.iter().map(|c| c.functions.len()).sum(),
        quiet,
    );
    // Chains are independent: several come up at once (each still all or nothing), and a
    // failed one does not stop the others.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    live.run(|| {
        std::thread::scope(|s| {
            for _ in 0..UP_CONCURRENCY.min(chains.len()) {
                s.spawn(|| {
                    while let Some(chain) =
                        chains.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        match lifecycle::up(&source, chain, &rt, &options, &live) {
                            Ok(UpOutcome::Created { functions, elapsed }) => {
                                live.println(&format!(
                                    "chain {}: up, {functions} function(s), {} mode, in {} ms",
                                    chain.name,
                                    chain.fastpath,
                                    elapsed.as_millis()
                                ))
                            }
                            Ok(UpOutcome::Unchanged {
                                started,
                                other_build,
                                other_binary,
                            }) => {
                                live.println(&format!(
                                    "chain {}: already up and unchanged; {}",
                                    chain.name,
                                    if started.is_empty() {
                                        "nothing to do".to_string()
                                    } else {
                                        format!(
                                            "started the process(es) of {}, which did not run",
                                            started.join(", ")
                                        )
                                    }
                                ));
                                if other_build {
                                    live.eprintln(&format!(
                                        "netfn: note: chain {} runs another netfn build's eBPF \
                                         programs; `netfn apply {}` loads this one's in their \
                                         place, keeping the chain's state",
                                        chain.name,
                                        source.display()
                                    ));
                                }
                                if other_binary {
                                    live.eprintln(&format!(
                                        "netfn: note: a function's process in chain {} runs \
                                         another netfn binary; `netfn apply {}` starts it again \
                                         on this one",
                                        chain.name,
                                        source.display()
                                    ));
                                }
                            }
                            Err(e) => {
                                live.eprintln(&format!("netfn: chain {}: {e:#}", chain.name));
                                if let Ok(mut f) = failed.lock() {
                                    f.push(chain.name.clone());
                                }
                            }
                        }
                        live.chain_done(chain.functions.len());
                    }
                });
            }
        })
    });
    let failed = failed.into_inner().unwrap_or_default();
    if chains.len() > failed.len() {
        start_or_notify_agent();
    }
    if !failed.is_empty() {
        bail!(
            "netfn up {}: {} of {} chain(s) failed ({}; each says why above); the others are up",
            file.display(),
            failed.len(),
            chains.len(),
            failed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Chains one `netfn up` brings up at once: most of a chain's time is kernel work on one core
/// (namespaces, links, program attaches), so a few overlap well even on two cores.
const UP_CONCURRENCY: usize = 4;

/// Every chain has runtime tasks (at least its prober): make sure the host agent runs, on this
/// netfn binary (one that runs another, which an upgrade replaced, is started again on this one,
/// unless systemd runs it), and tell a running one to pick up the change now. Problems are
/// warnings: the chain itself is up.
fn start_or_notify_agent() {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("netfn: warning: cannot find the netfn binary to start the agent: {e}");
            return;
        }
    };
    match agent::ensure_agent_running(&agent::AutostartOptions::new(exe)) {
        Ok(agent::AgentStart::Started { pid, log }) => {
            // The chains are up: a stdout that is gone must not turn that into a failure.
            let _ = writeln!(
                std::io::stdout(),
                "started the netfn agent (pid {pid}, log {})",
                log.display()
            );
        }
        Ok(agent::AgentStart::Replaced {
            old_pid,
            old_binary,
            pid,
            log,
        }) => {
            let _ = writeln!(
                std::io::stdout(),
                "restarted the netfn agent on this netfn binary: pid {old_pid} ran {old_binary}; \
                 now pid {pid}, log {}",
                log.display()
            );
        }
        Ok(agent::AgentStart::OtherBinary {
            pid,
            binary,
            systemd,
            unit,
        }) => {
            let how = if systemd {
                format!(
                    "systemd runs it: restart its unit (systemctl restart {}) so that it runs \
                     this one",
                    unit.as_deref().unwrap_or("netfn-agent")
                )
            } else {
                format!(
                    "its arguments cannot be read, so it was left running: stop it (kill {pid}) \
                     and run this command again to start one on this netfn"
                )
            };
            eprintln!(
                "netfn: warning: the netfn agent (pid {pid}) runs {binary}, not this netfn; {how}"
            );
            notify_agent();
        }
        // NETFN_AGENT_AUTOSTART=0 starts none, but one that runs may pick up the change now.
        Ok(agent::AgentStart::Running { .. } | agent::AgentStart::Disabled) => notify_agent(),
        Err(e) => eprintln!("netfn: warning: the chain is up, but the agent did not start: {e}"),
    }
}

/// Asks a running agent to rescan the chains now (it would within a few seconds anyway).
fn notify_agent() {
    if let Err(e) = agent::notify_rescan(&agent::default_socket()) {
        eprintln!("netfn: warning: cannot reach the netfn agent: {e}");
    }
}

/// The chain file's path as the operator named it, made absolute as `pwd -L` would: a relative
/// path under a symlinked directory keeps the symlink (`cd /srv/app/current && netfn apply
/// chain.toml` is /srv/app/current/chain.toml, whichever release `current` points at), so that
/// the chain's record names the same file at the next deploy.
fn as_named(file: &Path) -> PathBuf {
    if file.is_absolute() {
        return file.to_path_buf();
    }
    let same_dir = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    };
    match std::env::var_os("PWD").map(PathBuf::from) {
        Some(pwd) if pwd.is_absolute() && same_dir(&pwd, Path::new(".")) => pwd.join(file),
        _ => std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
    }
}

/// What `apply` says when a chain was up from another file: most often an edited copy of it,
/// but it may be another file's chain that has the same name, which the apply has just changed.
fn moved_note(chain: &str, running: &Path, this: &Path, dry_run: bool) -> String {
    let (running, this) = (running.display(), this.display());
    if dry_run {
        format!(
            "netfn: note: chain {chain} is up from {running}; applying {this} makes it the \
             chain's file (if {this} means another chain, rename that one)"
        )
    } else {
        format!(
            "netfn: note: chain {chain} was up from {running}; {this} is its file now (if {this} \
             meant another chain, rename that one there, and `netfn apply {running}` restores \
             this one)"
        )
    }
}

pub fn apply(file: &Path, only: Option<&str>, dry_run: bool, quiet: bool) -> Result<ExitCode> {
    let spec = load(file)?;
    let chains = selected(&spec, file, only)?;
    if dry_run {
        require_root(
            "apply --dry-run",
            "reads each chain's record under its lock in /run/netfn/chains",
        )?;
    } else {
        require_admin(
            "apply",
            "changes the namespaces, veths and eBPF programs of running chains",
        )?;
    }
    let rt = runtime()?;
    let _reuse = netfn_core::ebpf::ReuseLoaders::begin();
    let registry = netfn_functions::registry();
    let source = as_named(file);
    let live = Live::new(
        "apply",
        chains.len(),
        chains.iter().map(|c| c.functions.len()).sum(),
        quiet || dry_run,
    );
    // Chains are applied one after another; the first that fails ends the run (a running
    // chain's change went wrong: look before changing more), and the summary says which were
    // done and which were not attempted.
    let mut done = Vec::new();
    let mut failed = None;
    live.run(|| {
        for chain in &chains {
            let outcome = match netfn_core::chain::apply::apply(
                &source,
                chain,
                &registry,
                &rt,
                &UpOptions::default(),
                dry_run,
                &live,
            ) {
                Ok(outcome) => outcome,
                Err(e) => {
                    live.eprintln(&format!("netfn: chain {}: {e:#}", chain.name));
                    failed = Some(chain.name.as_str());
                    break;
                }
            };
            done.push(chain.name.as_str());
            live.chain_done(chain.functions.len());
            let (head, changes, reload, restarts, moved) = match outcome {
                ApplyOutcome::Unchanged => {
                    live.println(&format!("chain {}: unchanged; nothing to do", chain.name));
                    continue;
                }
                ApplyOutcome::Planned {
                    changes,
                    moved,
                    reload,
                    restarts,
                } => (
                    format!(
                        "chain {}: would {}:",
                        chain.name,
                        what_apply_does(changes.len(), reload.is_some(), &restarts, false)
                    ),
                    changes,
                    reload,
                    restarts,
                    moved,
                ),
                ApplyOutcome::Applied {
                    changes,
                    reloaded,
                    restarted,
                    elapsed,
                    moved,
                } => (
                    format!(
                        "chain {}: {} in {} ms:",
                        chain.name,
                        what_apply_does(changes.len(), reloaded.is_some(), &restarted, true),
                        elapsed.as_millis()
                    ),
                    changes,
                    reloaded,
                    restarted,
                    moved,
                ),
            };
            let mut text = head;
            if let Some(r) = reload {
                text.push_str(&format!("\n  {r}"));
            }
            for r in restarts {
                text.push_str(&format!("\n  {r}"));
            }
            for c in changes {
                text.push_str(&format!("\n  {c}"));
            }
            live.println(&text);
            if let Some(running) = moved {
                live.eprintln(&moved_note(&chain.name, &running, &source, dry_run));
            }
        }
    });
    // The chains' runtime tasks are the agent's: one must run, on this netfn binary (an apply
    // after an upgrade moves it on), and learn the change now.
    if !dry_run && !done.is_empty() {
        start_or_notify_agent();
    }
    let Some(failed) = failed else {
        return Ok(ExitCode::SUCCESS);
    };
    let list = |names: &[&str]| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let not_attempted: Vec<&str> = chains[done.len() + 1..]
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    bail!(
        "netfn apply {file}: chain {failed} failed (why is above); {} before it: {}; not \
         attempted: {}; fix the cause and run `netfn apply {file}` again (the chains done are \
         then unchanged)",
        if dry_run { "checked" } else { "applied" },
        list(&done),
        list(&not_attempted),
        file = file.display(),
    )
}

/// What an apply does (`done`) or would do to a chain: `changes` changes, whether it loads
/// this netfn's programs in place of another build's, and the functions' processes it starts
/// (again) on this netfn binary.
fn what_apply_does(changes: usize, reload: bool, processes: &[Restart], done: bool) -> String {
    let (apply, load, restart, start) = if done {
        ("applied", "loaded", "restarted", "started")
    } else {
        ("apply", "load", "restart", "start")
    };
    let restarts = processes.iter().filter(|r| r.running.is_some()).count();
    let starts = processes.len() - restarts;
    // Only the upgrade's part (or processes that did not run): the file changed nothing.
    let upgrade_only = changes == 0 && (reload || !processes.is_empty());
    let mut parts = Vec::new();
    if !upgrade_only {
        parts.push(format!("{apply} {changes} change(s)"));
    }
    if reload {
        parts.push(format!("{load} this netfn's programs"));
    }
    if restarts > 0 {
        parts.push(format!(
            "{restart} {restarts} function process(es) on this netfn binary"
        ));
    }
    if starts > 0 {
        parts.push(format!(
            "{start} {starts} function process(es) that did not run"
        ));
    }
    let text = parts.join(" and ");
    if upgrade_only {
        format!("{text} (no change to apply)")
    } else {
        text
    }
}

/// From this many removed namespaces on, `down` says that the kernel frees them in the
/// background (measured on a 2-core VM: 1,002 namespaces with clsact filters were freed about
/// 1 s after `down`; with TCX links each attached interface adds 14-50 ms of cleanup under rtnl,
/// and `ip netns add` waited 8 s behind 2,000 of them).
const FREE_NOTE_FROM: usize = 100;

/// `force`: without the record (see `lifecycle::force_down`). `wait`: how long to wait for the
/// kernel to free the namespaces (`--wait`), at most.
pub fn down(
    target: Option<&str>,
    all: bool,
    force: bool,
    wait: Option<std::time::Duration>,
    quiet: bool,
) -> Result<ExitCode> {
    require_admin("down", "removes namespaces, veths and pinned eBPF objects")?;
    let chains: Vec<String> = match target {
        _ if all => state::list()?,
        Some(t) if Path::new(t).is_file() => chains_of_file(Path::new(t))?,
        Some(t) => {
            state::check_chain_name(t)
                .map_err(|e| anyhow::anyhow!("there is no chain file `{t}`, and {e}"))?;
            vec![t.to_string()]
        }
        None => bail!(
            "say which chain to take down: `netfn down CHAIN`, `netfn down FILE` or `netfn down --all`"
        ),
    };
    let rt = runtime()?;
    let namespaces: Vec<Vec<String>> = chains.iter().map(|c| lifecycle::namespaces_of(c)).collect();
    // Tag the namespaces before any goes: what --wait watches.
    let mut watch = if wait.is_some() {
        let all: Vec<String> = namespaces.iter().flatten().cloned().collect();
        Some(freed::FreeWatch::start(&all, rt.handle()).context(
            "netfn down --wait (nothing was taken down; `netfn down` without --wait does not watch)",
        )?)
    } else {
        None
    };
    let functions = chains
        .iter()
        .map(|c| {
            state::load(c)
                .ok()
                .flatten()
                .map_or(0, |r| r.plan.function_count())
        })
        .sum();
    let live = Live::new("down", chains.len(), functions, quiet);
    let mut failed = 0;
    let mut removed = 0;
    live.run(|| {
        for (chain, names) in chains.iter().zip(&namespaces) {
            if force {
                match lifecycle::force_down(chain, &live) {
                    Ok(done) if done.removed.is_empty() => live.println(&format!(
                        "chain {chain}: nothing named for it; nothing to do"
                    )),
                    Ok(done) => live.println(&format!(
                        "chain {chain}: forced down, removed without its record:\n  {}",
                        done.removed.join("\n  ")
                    )),
                    Err(e) => {
                        failed += 1;
                        live.eprintln(&format!("netfn: error: {e}"));
                        if let Some(w) = &mut watch {
                            w.forget(names);
                        }
                    }
                }
                continue;
            }
            let functions = state::load(chain)
                .ok()
                .flatten()
                .map_or(0, |r| r.plan.function_count());
            match lifecycle::down(chain, &rt, &live) {
                Ok(DownOutcome::Removed {
                    namespaces,
                    elapsed,
                }) => {
                    removed += namespaces;
                    live.namespaces(namespaces);
                    live.println(&format!(
                        "chain {chain}: down, {namespaces} namespace(s) removed in {} ms",
                        elapsed.as_millis()
                    ))
                }
                Ok(DownOutcome::NotUp) => {
                    live.println(&format!("chain {chain}: not up; nothing to do"))
                }
                Err(e) => {
                    failed += 1;
                    live.eprintln(&format!("netfn: error: {e}"));
                    if let Some(w) = &mut watch {
                        w.forget(names);
                    }
                }
            }
            live.chain_done(functions);
        }
        match watch {
            Some(watch) if watch.total() > 0 => {
                if let Err(e) = wait_freed(watch, wait.unwrap_or_default(), &live) {
                    failed += 1;
                    live.eprintln(&format!("netfn: error: {e}"));
                }
            }
            None if removed >= FREE_NOTE_FROM => live.println(&format!(
                "kernel: frees the {removed} namespace(s) in the background (a second or more for \
                 hundreds; much longer for interfaces with TCX links); an `up` or `ip netns add` \
                 started meanwhile waits behind it (`netfn down --wait` waits for it here)"
            )),
            _ => {}
        }
    });
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The chains `netfn down FILE` takes down: the ones the file names, read as plain TOML with no
/// kind checks (a file half edited, or whose key or rules files are gone, still says which
/// chains it holds; `down` works from the records), and the ones recorded as up from this file
/// that it no longer names.
fn chains_of_file(file: &Path) -> Result<Vec<String>> {
    let text = spec::read_text(file).with_context(|| format!("read {}", file.display()))?;
    let mut chains: Vec<String> = match text.parse::<toml::Table>() {
        Ok(table) => table
            .get("chain")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name")?.as_str())
            .filter(|name| state::check_chain_name(name).is_ok())
            .map(str::to_string)
            .collect(),
        Err(e) => {
            eprintln!(
                "netfn: warning: {} is not TOML ({}); taking down the chains recorded as up from \
                 it",
                file.display(),
                e.message()
            );
            Vec::new()
        }
    };
    let this = file.canonicalize().ok();
    for name in state::list()? {
        let from_here = state::load(&name)
            .ok()
            .flatten()
            .is_some_and(|r| r.source.canonicalize().ok() == this);
        if from_here && !chains.contains(&name) {
            eprintln!(
                "netfn: chain `{name}` is up from {} but the file no longer names it: taking it \
                 down too",
                file.display()
            );
            chains.push(name);
        }
    }
    Ok(chains)
}

/// Waits for the kernel to free what `watch` tagged, counting on the live line.
fn wait_freed(
    watch: freed::FreeWatch,
    limit: std::time::Duration,
    live: &Live,
) -> Result<(), freed::FreedError> {
    let line = |p: &freed::FreeProgress| {
        live.set_extra(format!(
            "kernel cleanup begun for {}/{} namespace(s)",
            p.started, p.total
        ))
    };
    let done = watch.wait(limit, &line)?;
    live.println(&format!(
        "kernel: freed {} namespace(s) in {} ms after down",
        done.total,
        done.elapsed.as_millis()
    ));
    Ok(())
}

pub fn status(chain: Option<&str>, json: bool) -> Result<ExitCode> {
    // Without root, the namespaces cannot be entered nor the pinned maps opened (nor the
    // agent's socket reached): every chain would look broken, healthy or not.
    require_admin(
        "status",
        "enters the chains' namespaces and reads their pinned eBPF maps to tell whether they \
         are healthy",
    )?;
    let (records, damaged) = status::records(chain)?;
    for e in &damaged {
        eprintln!("netfn: error: {e}");
    }
    if let Some(c) = chain
        && records.is_empty()
    {
        bail!(
            "chain `{c}` is not up (no record under /run/netfn); `netfn status` lists the chains that are"
        );
    }
    let rt = runtime()?;
    let kinds = netfn_functions::registry();
    let mut all = Vec::new();
    for r in &records {
        let counters = status::counters(r).unwrap_or_else(|e| {
            eprintln!(
                "netfn: warning: chain `{}`: cannot read counters: {e}",
                r.chain()
            );
            status::Counters::default()
        });
        all.push(status::chain_status(r, rt.handle(), &counters, &kinds));
    }
    match agent::chain_reports(&agent::default_socket()) {
        Ok(Some(reports)) => {
            for s in &mut all {
                s.attach_agent_report(reports.iter().find(|r| r.chain == s.chain).cloned());
            }
        }
        Ok(None) => {}
        Err(e) => eprintln!("netfn: warning: cannot ask the netfn agent for probe results: {e}"),
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("no chains are up");
    } else {
        for s in &all {
            println!("{}", output::chain_table(s));
        }
    }
    Ok(if damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn exec(chain: &str, function: &str, command: &[String]) -> Result<ExitCode> {
    // Without root the record cannot be read, without CAP_SYS_ADMIN setns fails with a bare
    // EPERM. CAP_NET_ADMIN is the command's business (`ping` or `ss` need none).
    let why = "enters the function's network namespace (setns) to run the command there";
    require_root("exec", why)?;
    crate::require_capabilities("netfn exec", why, &[privilege::CAP_SYS_ADMIN])?;
    let record = state::load(chain)?.with_context(|| {
        format!("chain `{chain}` is not up; `netfn status` lists the chains that are")
    })?;
    let Some((_, hop)) = record.plan.hop(function) else {
        let names: Vec<&str> = record.plan.hops.iter().map(|h| h.name.as_str()).collect();
        bail!(
            "chain `{chain}` has no function `{function}`; it has: {}",
            names.join(", ")
        );
    };
    netns::enter(&hop.netns.name)?;
    let (prog, args) = command.split_first().context("no command given after --")?;
    let err = std::process::Command::new(prog).args(args).exec();
    bail!("cannot run {prog} in namespace {}: {err}", hop.netns.name)
}

pub fn logs(chain: &str, follow: bool) -> Result<ExitCode> {
    require_admin(
        "logs",
        "reads the chain's pinned eBPF log buffer under /sys/fs/bpf",
    )?;
    let Some(record) = state::load(chain)? else {
        bail!("chain `{chain}` is not up; `netfn status` lists the chains that are");
    };
    let dir = names::chain_bpf_dir(chain);
    // Kernel-mode chains log through the counter program, tc/xdp chains through the forwarder.
    let logs = if record.interface_counters {
        ebpf::EbpfLogs::from_pinned(&dir)
    } else {
        ebpf::fastpath_logs(&dir)
    };
    let mut logs =
        logs.with_context(|| format!("cannot open the eBPF log buffer of chain `{chain}`"))?;
    logs.flush();
    if let Ok(Some(_)) = agent::chain_reports(&agent::default_socket()) {
        eprintln!(
            "netfn: note: the netfn agent is running and forwards these records to its own log \
             (each record is read once): see {}",
            agent::AutostartOptions::new("netfn").log.display()
        );
    }
    if follow {
        runtime()?
            .block_on(logs.forward())
            .context("reading eBPF logs")?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn graph(file: &Path, format: graph::Format) -> Result<ExitCode> {
    // The drawing has no endpoint addresses: names are checked for their form only.
    let spec = load_with(file, &HostNames::form_only())?;
    let plans: Vec<_> = spec.chains.iter().map(plan::plan_chain).collect();
    print!("{}", graph::render(&plans, format));
    Ok(ExitCode::SUCCESS)
}

pub fn kinds() -> Result<ExitCode> {
    let registry = netfn_functions::registry();
    let width = registry.names().map(str::len).max().unwrap_or(0);
    for name in registry.names() {
        let summary = registry.get(name).map(|k| k.summary()).unwrap_or_default();
        println!("{name:<width$}  {summary}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn features(json: bool) -> Result<ExitCode> {
    let all = netfn_core::kernel::features::detect();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("kernel {}", netfn_core::kernel::features::kernel_release());
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|f| {
            vec![
                f.name.to_string(),
                if f.available { "yes" } else { "no" }.to_string(),
                f.detail.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["FEATURE", "AVAILABLE", "DETAIL"], &rows)
    );
    Ok(ExitCode::SUCCESS)
}

/// `netfn wg genkey` (a new private key) and `netfn wg pubkey` (the public key of the private
/// key on stdin), printed as `wg` prints them.
pub fn wg(genkey: bool) -> Result<ExitCode> {
    use netfn_functions::wireguard::keys;
    let line = if genkey {
        keys::generate().map_err(|e| anyhow::anyhow!(e))?
    } else {
        let mut private = String::new();
        std::io::stdin()
            .read_line(&mut private)
            .context("read the private key from stdin")?;
        keys::public_of(&private).map_err(|why| {
            anyhow::anyhow!("the key on stdin {why}: give a key `netfn wg genkey` made")
        })?
    };
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

/// `netfn failpoints` (hidden): one line per failpoint, `NAME<TAB>what has happened when it
/// fires`; says so on stderr when this build ignores NETFN_FAILPOINT (a release build).
pub fn failpoints() -> Result<ExitCode> {
    use netfn_core::failpoint;
    if !failpoint::ENABLED {
        eprintln!(
            "netfn: this build ignores {}: build it in debug or with --features failpoints",
            failpoint::ENV
        );
    }
    for p in failpoint::POINTS {
        println!("{}\t{}", p.name, p.after);
    }
    Ok(ExitCode::SUCCESS)
}
