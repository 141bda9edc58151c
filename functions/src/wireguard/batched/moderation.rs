//! Receive moderation for the batched device's incoming direction, as a NIC's interrupt
//! moderation or the kernel's NAPI does it: while datagrams arrive [`MIN_BATCH`] or more to a
//! tick (`receive_moderation_us`, 100 µs by default, 0 for none), the device is no longer woken
//! by each of them but takes what queued on its socket once a tick.
//!
//! Why: on a VM a wake-up costs more than a small packet's decryption. A profile of the endpoint
//! under wireguard-go's 60-byte datagrams (`perf record` during `cargo xtask bench vpn`, ~110 kpps)
//! put 23 % of its time in being switched back in from `epoll_wait`, and 14 % in waking the
//! receiver of the packets it decrypted (its TUN write carries them through the namespace to
//! the receiver's socket), at one or two datagrams a wake-up. Taken a tick at a time, they are
//! decrypted together, coalesced on the TUN into one packet per flow and handed on at once.
//! Measured on a 2-CPU VM (`bench vpn`, wireguard-go to netfn, 60-byte UDP): 2.8-2.9 µs of the
//! endpoint's CPU a datagram instead of 3.4, 12.8-13.6 µs of the whole machine's instead of
//! 15.6 (wireguard-go and the receiver are woken less too), 143-149 kpps instead of 124.
//!
//! Why 100 µs: that was with a 40 µs tick. A sender on a busy machine pauses whenever it is off
//! its CPU, and a 40 µs tick often found the socket empty then and went back to a wake-up per
//! datagram. Alternated `bench vpn --tests udp,tcp1 --receive-moderation-us` runs on one 2-CPU
//! VM (2026-12-05, three repetitions each): 60-byte UDP from wireguard-go 140-157 kpps at 40 µs,
//! 177-192 kpps at 100 (1.58x and 1.58x the wireguard-go pair, against 2.03x and 1.99x); the
//! endpoint's CPU per datagram 2.7-2.9 µs against 1.9, the whole machine's 9.2-10.4 against
//! 7.4-8.0. TCP 1 stream did not change (2.02-2.03x at 40 µs, 1.99-2.21x at 100; while netfn
//! sends the acknowledgements no tick waits). Whole runs at 100 µs and 200 µs met the same
//! goals but -R, which no tick touches (1.516x and 1.497x); 200 gained no more (UDP 2.09x
//! against 2.12x) and doubles the wait.
//!
//! How: the wait for the next tick holds the runtime's worker (the endpoint runs one) in a
//! `ppoll` of the TUN device alone, so that the socket does not wake it: a datagram that
//! arrives then only queues. A packet to send (the TUN readable) ends the wait at once, and the
//! device yields after every round, so the other direction is not held up; the timers wait a
//! tick at most. While the other direction sends, no tick waits: what arrives then is mostly
//! the acknowledgements of what it sends ([`Moderation::wait_due`]). The cost is latency: while
//! the device ticks, a datagram waits for the next tick, a tick at most (100 µs by default;
//! `receive_moderation_us = 0` for none, changed in place by `netfn apply`). So the device
//! ticks only while a tick gathers a batch ([`MIN_BATCH`], 4 datagrams): it starts when they
//! come closer than a quarter tick (or that many queued while it was being woken), and a tick
//! that gathers fewer ends it, as does a look that finds the socket empty. Slower traffic, and a
//! datagram after a pause, is taken at once.
//!
//! Why a batch: ticking whenever datagrams came closer than a tick cost latency where it gained
//! little. `bench vpn`'s round trips beside 20,000 datagrams a second (two to a tick; 2026-12-05,
//! one 2-CPU VM, p50 of three repetitions): wireguard-go to netfn 381 and 386 µs at a 100 µs
//! tick, 317 at 40, 292 and 302 without moderation, the wireguard-go pair 324-343; with the
//! batch rule 309 µs, while 60-byte UDP from wireguard-go stayed at 182 kpps (1.90x the pair)
//! and the endpoint at 1.92 µs a datagram.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The fewest datagrams a tick must gather to be worth its wait: the device ticks while the
/// datagrams come at least this many to a tick (40,000 a second at the default tick). Fewer,
/// and the wait is latency for little: at 20,000 a second, two to a 100 µs tick, ticking cost a
/// round trip through the tunnel about 85 µs (p50, `bench vpn`'s loaded round trips, 2026-12-05:
/// 381-386 µs against 292-302 without moderation).
pub const MIN_BATCH: usize = 4;

/// How much a sleep may overrun (the thread's timer slack; the kernel's default, 50 µs, is half
/// the default tick).
const SLACK_NS: libc::c_ulong = 2_000;

/// The tick, which `netfn apply` changes while the device runs (the device's control socket
/// takes `receive_moderation_us=`: [`super::requests`]); the incoming direction reads it every
/// round. Zero: never ticks.
pub struct Tick(AtomicU32);

impl Tick {
    pub fn new(tick: Duration) -> Tick {
        Tick(AtomicU32::new(micros(tick)))
    }

    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed).into())
    }

    pub fn set(&self, tick: Duration) {
        self.0.store(micros(tick), Ordering::Relaxed);
    }
}

fn micros(tick: Duration) -> u32 {
    u32::try_from(tick.as_micros()).unwrap_or(u32::MAX)
}

/// Whether the device is being woken by its socket or looks at it once a tick.
pub struct Moderation {
    ticking: bool,
    /// The other direction's count of sent batches at the last tick.
    other_sent: u64,
}

impl Moderation {
    /// Starts woken by the socket, and sets the calling thread's timer slack (call it on the
    /// thread that will sleep: the runtime's worker). Set whatever the tick is now: it may
    /// change while the device runs.
    pub fn for_this_thread() -> Moderation {
        // SAFETY: prctl(2) with integer arguments; PR_SET_TIMERSLACK acts on the calling thread.
        if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, SLACK_NS, 0, 0, 0) } != 0 {
            tracing::debug!(
                "timer slack left as it was ({}): a tick may last up to 50 µs more",
                std::io::Error::last_os_error()
            );
        }
        Moderation {
            ticking: false,
            other_sent: 0,
        }
    }

    pub fn ticking(&self) -> bool {
        self.ticking
    }

    /// The socket woke the device `waited` after it began to wait (at the end of the last
    /// round), and it took `taken` datagrams: tick from now on if a tick would gather
    /// [`MIN_BATCH`]: the datagram came within a quarter tick, or that many queued while the
    /// device was being woken. A device that keeps up is woken for each datagram, so the wait
    /// for one is what tells the rate; one that arrived while the last round was busy (no wait)
    /// may start a tick at a lower rate, which that tick then ends.
    pub fn woken(&mut self, waited: Duration, taken: usize, tick: Duration) {
        let batch_gap = tick / MIN_BATCH as u32;
        self.ticking = !tick.is_zero() && (taken >= MIN_BATCH || waited < batch_gap);
    }

    /// A whole tick's wait gathered `gathered` datagrams: fewer than [`MIN_BATCH`], and the wait
    /// cost them latency for little; be woken by the socket again (also once the tick was
    /// turned off in place).
    pub fn ticked(&mut self, gathered: usize, tick: Duration) {
        if gathered < MIN_BATCH || tick.is_zero() {
            self.ticking = false;
        }
    }

    /// A look found nothing: be woken by the socket again.
    pub fn found_nothing(&mut self) {
        self.ticking = false;
    }

    /// Whether a tick's wait is due: not while the other direction sends (its count of sent
    /// batches, `other_sent`, moved since the last tick). What this direction receives then is
    /// mostly the acknowledgements of what that one sends, and holding them back for a tick
    /// delays the senders they clock. `bench vpn`'s TCP from netfn's endpoint to wireguard-go
    /// (`-R`), eight runs alternated on one VM (2026-12-05): 1.24x and 1.25x the wireguard-go
    /// pair with a wait at every tick, 1.26-1.39x (four runs) without moderation, 1.33x and 1.36x
    /// with this rule; its 60-byte UDP to netfn 1.35-1.47x, 1.34-1.51x and 1.43-1.47x.
    pub fn wait_due(&mut self, other_sent: u64) -> bool {
        let quiet = other_sent == self.other_sent;
        self.other_sent = other_sent;
        quiet
    }

    /// Waits for a `tick`, holding the thread, or less if `other_work` (the TUN device, whose
    /// packets the other direction sends) gets readable meanwhile: that direction is not held
    /// up for a tick. Datagrams arriving on the socket do not end the wait. A zero tick (just
    /// turned off) does not wait. Whether the whole tick passed (a shorter wait says nothing of
    /// how many datagrams a tick gathers).
    pub fn wait_tick(&self, other_work: BorrowedFd<'_>, tick: Duration) -> bool {
        let mut fds = [libc::pollfd {
            fd: other_work.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let tick = libc::timespec {
            tv_sec: tick.as_secs() as libc::time_t,
            tv_nsec: tick.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one pollfd, a timespec and no signal mask, all alive for the call. Readable,
        // timed out or interrupted, the tick is over; only a time-out (0) was a whole one.
        unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &tick, std::ptr::null()) == 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_datagrams_start_the_ticking_and_an_empty_tick_ends_it() {
        let tick = Duration::from_micros(100);
        let mut m = Moderation::for_this_thread();
        assert!(!m.ticking(), "woken by the socket at first");
        m.woken(Duration::from_millis(3), 1, tick);
        assert!(!m.ticking(), "a pause longer than a tick: still woken");
        m.woken(Duration::from_micros(5), 1, tick);
        assert!(m.ticking(), "within a quarter tick: ticking");
        m.found_nothing();
        assert!(!m.ticking(), "an empty look ends it");
    }

    #[test]
    fn a_tick_must_gather_a_batch() {
        let tick = Duration::from_micros(100);
        let mut m = Moderation::for_this_thread();
        m.woken(Duration::from_micros(50), 2, tick);
        assert!(!m.ticking(), "two to a tick: not worth a wait");
        m.woken(Duration::from_micros(50), MIN_BATCH, tick);
        assert!(m.ticking(), "a batch queued while the device was woken");
        m.ticked(MIN_BATCH, tick);
        assert!(m.ticking(), "a tick that gathered a batch: ticking on");
        m.ticked(MIN_BATCH - 1, tick);
        assert!(!m.ticking(), "a tick that gathered less ends it");
        m.woken(Duration::ZERO, MIN_BATCH, tick);
        m.ticked(MIN_BATCH, Duration::ZERO);
        assert!(!m.ticking(), "the tick turned off in place ends it");
    }

    #[test]
    fn no_wait_while_the_other_direction_sends() {
        let mut m = Moderation::for_this_thread();
        assert!(m.wait_due(0), "nothing sent: wait");
        assert!(!m.wait_due(3), "the other direction sent since: no wait");
        assert!(!m.wait_due(4), "and again");
        assert!(m.wait_due(4), "quiet since the last tick: wait");
    }

    #[test]
    fn a_zero_tick_never_ticks() {
        let mut m = Moderation::for_this_thread();
        m.woken(Duration::ZERO, MIN_BATCH, Duration::ZERO);
        assert!(
            !m.ticking(),
            "receive_moderation_us = 0: woken for every datagram"
        );
    }

    #[test]
    fn the_tick_changes_in_place() {
        let tick = Tick::new(Duration::from_micros(40));
        assert_eq!(tick.get(), Duration::from_micros(40));
        tick.set(Duration::from_micros(250));
        assert_eq!(tick.get(), Duration::from_micros(250));
        tick.set(Duration::ZERO);
        assert!(tick.get().is_zero());
    }
}
