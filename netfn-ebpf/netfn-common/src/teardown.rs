//! TCP's handshake and teardown as a tracked connection follows them, shared by the firewall's
//! connection table and the load balancer's flows.
//!
//! A connection opened by a bare SYN is *new* until the answerer's SYN-ACK establishes it, with
//! a short timeout of its own (conntrack's SYN_SENT): a bare ACK (a challenge ACK), data or a
//! FIN establishes nothing (conntrack holds a FIN before the answer invalid); an RST closes it.
//! So a stray SYN, answered by nothing or by a challenge ACK, cannot keep an entry for the
//! established timeout.
//!
//! A FIN closes one direction only: the other side may go on sending for as long as it likes
//! (a client that sent its whole request and shut down its write side, waiting for a slow
//! answer). So one FIN makes a connection *half-closed*, with a timeout of its own (Linux
//! conntrack's FIN_WAIT and CLOSE_WAIT), and only a FIN from each side, or an RST from either,
//! makes it *closing*, with the short timeout after which its ports may open again.
//!
//! A bare SYN on a half-closed connection's ports (its client, whose side was done, connects
//! again from the same port while the other side never closed) starts it over: it is new
//! again, with its rule or backend kept, and the answer's SYN-ACK establishes it. Linux's
//! conntrack ignores such a SYN and resyncs the entry on the answer, which comes to the same.

/// TCP header flags the teardown reads.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether TCP `flags` open a connection: SYN alone (with FIN, RST or ACK it opens nothing;
/// Linux's conntrack holds SYN with FIN invalid).
#[inline(always)]
pub fn bare_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// The state values a kind gives the handshake's two states and the teardown's three (each
/// kind numbers its states itself; these must differ from each other).
#[derive(Clone, Copy, Debug)]
pub struct Teardown {
    /// Opened by a bare SYN, not answered yet by a SYN-ACK (also where a bare SYN from the
    /// opener takes a half-closed connection back to).
    pub new: u8,
    /// Established: where the answerer's SYN-ACK takes a new connection.
    pub established: u8,
    /// Both sides sent a FIN, or one an RST.
    pub closing: u8,
    /// Only the side that opened the connection sent a FIN.
    pub fin_by_opener: u8,
    /// Only the side that answered sent a FIN.
    pub fin_by_answerer: u8,
}

impl Teardown {
    /// The state after a segment with header flags `flags`, sent by the connection's opener or
    /// not, of a connection in `state` (new, established, or in teardown).
    #[inline(always)]
    pub fn after(&self, state: u8, flags: u8, from_opener: bool) -> u8 {
        let (own, other) = if from_opener {
            (self.fin_by_opener, self.fin_by_answerer)
        } else {
            (self.fin_by_answerer, self.fin_by_opener)
        };
        if state == self.closing || flags & TCP_RST != 0 {
            self.closing
        } else if state == self.new {
            if !from_opener && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                self.established
            } else {
                state
            }
        } else if from_opener && bare_syn(flags) && self.half_closed(state) {
            self.new
        } else if flags & TCP_FIN == 0 {
            state
        } else if state == other {
            self.closing
        } else {
            own
        }
    }

    /// One side sent a FIN and the other none yet.
    #[inline(always)]
    pub fn half_closed(&self, state: u8) -> bool {
        state == self.fin_by_opener || state == self.fin_by_answerer
    }
}

#[cfg(test)]
mod tests {
    use super::{TCP_FIN, TCP_RST, TCP_SYN, Teardown};

    const T: Teardown = Teardown {
        new: NEW,
        established: OPEN,
        closing: 2,
        fin_by_opener: 3,
        fin_by_answerer: 4,
    };
    const NEW: u8 = 0;
    const OPEN: u8 = 1;
    const ACK: u8 = 0x10;

    #[test]
    fn the_answers_syn_ack_establishes_a_new_connection_and_nothing_else_does() {
        assert_eq!(T.after(NEW, TCP_SYN | ACK, false), OPEN);
        // A challenge ACK, data, a FIN before the answer, the opener's SYN again or a SYN-ACK
        // from the opener: still new.
        for (flags, from_opener) in [
            (ACK, false),
            (TCP_FIN | ACK, false),
            (TCP_FIN, true),
            (TCP_SYN, true),
            (TCP_SYN | ACK, true),
        ] {
            assert_eq!(T.after(NEW, flags, from_opener), NEW, "{flags:#x}");
        }
        // Refused.
        assert_eq!(T.after(NEW, TCP_RST | ACK, false), T.closing);
    }

    #[test]
    fn a_fin_from_each_side_closes() {
        let s = T.after(OPEN, TCP_FIN | ACK, true);
        assert_eq!(s, T.fin_by_opener);
        assert!(T.half_closed(s));
        // The other side's ACK and data leave it half-closed; its own FIN again too.
        assert_eq!(T.after(s, ACK, false), s);
        assert_eq!(T.after(s, TCP_FIN | ACK, true), s);
        assert_eq!(T.after(s, TCP_FIN | ACK, false), T.closing);
        // From the answerer first, likewise.
        let s = T.after(OPEN, TCP_FIN, false);
        assert_eq!(s, T.fin_by_answerer);
        assert_eq!(T.after(s, TCP_FIN, true), T.closing);
    }

    #[test]
    fn an_rst_closes_at_once_and_closing_stays() {
        assert_eq!(T.after(OPEN, TCP_RST, false), T.closing);
        assert_eq!(T.after(T.fin_by_answerer, TCP_RST | ACK, true), T.closing);
        assert_eq!(T.after(T.closing, ACK, true), T.closing);
        assert!(!T.half_closed(T.closing));
        assert!(!T.half_closed(OPEN));
    }

    #[test]
    fn a_syn_from_the_opener_opens_a_half_closed_connection_again() {
        // New again: the answer's SYN-ACK establishes it.
        assert_eq!(T.after(T.fin_by_opener, TCP_SYN, true), NEW);
        assert_eq!(T.after(T.fin_by_answerer, TCP_SYN, true), NEW);
        // Not from the other side, not with other flags, not once closing.
        assert_eq!(T.after(T.fin_by_opener, TCP_SYN, false), T.fin_by_opener);
        assert_eq!(
            T.after(T.fin_by_opener, TCP_SYN | ACK, true),
            T.fin_by_opener
        );
        assert_eq!(T.after(T.closing, TCP_SYN, true), T.closing);
    }

    #[test]
    fn segments_without_fin_or_rst_change_nothing_once_established() {
        assert_eq!(T.after(OPEN, ACK, true), OPEN);
        assert_eq!(T.after(OPEN, TCP_SYN | ACK, false), OPEN);
        assert_eq!(T.after(OPEN, TCP_SYN, true), OPEN);
    }
}
