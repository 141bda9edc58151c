//! Forwarding the eBPF programs' aya-log records into `tracing`.
//!
//! aya-log hands records to a `log::Log`. Rather than rely on a `log` → `tracing` bridge being
//! installed, [`EbpfLogs`] gives aya-log a small `log::Log` that emits `tracing` events directly
//! (target `netfn::ebpf`, with the eBPF module path in the `bpf_target` field), so the lines
//! show under any `tracing` subscriber.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use aya::Ebpf;
use aya::programs::ProgramInfo;
use aya_log::EbpfLogger;

use super::{COUNTER_PROGRAM_PIN, EbpfError};

/// Reads the log records of netfn's eBPF programs and emits them as `tracing` events.
///
/// Call [`EbpfLogs::flush`] when the fd is readable, or hand the whole thing to
/// [`EbpfLogs::forward`] on a tokio runtime.
pub struct EbpfLogs {
    logger: EbpfLogger<ToTracing>,
}

impl std::fmt::Debug for EbpfLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfLogs")
            .field("fd", &self.as_raw_fd())
            .finish()
    }
}

impl EbpfLogs {
    /// Takes the log ring buffer (`AYA_LOGS`) out of a loaded object. A missing log map (an
    /// object built without aya-log) is logged as a warning and gives `None`.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Option<Self> {
        match EbpfLogger::init_with_logger(ebpf, ToTracing) {
            Ok(logger) => Some(Self { logger }),
            Err(e) => {
                tracing::warn!("eBPF logs unavailable (the programs still run): {e}");
                None
            }
        }
    }

    /// Attaches to the logs of the counter program pinned under `bpf_dir` by an earlier
    /// [`super::attach_counters`], possibly by another process (the host agent does this).
    pub fn from_pinned(bpf_dir: &Path) -> Result<Self, EbpfError> {
        Self::from_pinned_program(&bpf_dir.join(COUNTER_PROGRAM_PIN))
    }

    /// Attaches to the logs of any of netfn's pinned programs (the ring buffer of the object load
    /// that program came from): e.g. `<bpf_dir>/nf_fwd_tc`.
    pub fn from_pinned_program(path: &Path) -> Result<Self, EbpfError> {
        let path = path.to_path_buf();
        let id = ProgramInfo::from_pin(&path)
            .map_err(|source| EbpfError::Pinned {
                path: path.clone(),
                source: Box::new(source),
            })?
            .id();
        let logger = EbpfLogger::init_from_id_with_logger(id, ToTracing)
            .map_err(|source| EbpfError::Logs { path, source })?;
        Ok(Self { logger })
    }

    /// Emits every record waiting in the ring buffer.
    pub fn flush(&mut self) {
        self.logger.flush();
    }

    /// Forwards records as they arrive, until the runtime stops or the fd fails. Spawn it:
    /// `tokio::spawn(logs.forward())`.
    pub async fn forward(self) -> io::Result<()> {
        // SAFETY: `EbpfLogs` owns the ring buffer's fd for its whole life and `as_raw_fd` always
        // returns that same fd; the `AsyncFd` owns the `EbpfLogs` until it is dropped.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE)
        }?;
        loop {
            let mut guard = fd.readable_mut().await?;
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

impl AsFd for EbpfLogs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

impl AsRawFd for EbpfLogs {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

/// A `log::Log` that turns each record into a `tracing` event.
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let bpf_target = record.target();
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "netfn::ebpf", bpf_target, "{message}"),
            log::Level::Warn => tracing::warn!(target: "netfn::ebpf", bpf_target, "{message}"),
            log::Level::Info => tracing::info!(target: "netfn::ebpf", bpf_target, "{message}"),
            log::Level::Debug => tracing::debug!(target: "netfn::ebpf", bpf_target, "{message}"),
            log::Level::Trace => tracing::trace!(target: "netfn::ebpf", bpf_target, "{message}"),
        }
    }

    fn flush(&self) {}
}
