//! The kernel's WireGuard devices over generic netlink (the `wireguard` family that `wg` speaks):
//! one blocking socket, opened in the namespace of the calling thread, so the devices it sees
//! and sets are that namespace's. Requests and answers only; what to ask is [`super::kernel`]'s.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_wireguard::{WireguardAttribute, WireguardCmd, WireguardMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

/// A generic netlink socket with the `wireguard` family resolved.
pub struct Genl {
    socket: Socket,
    family: u16,
    seq: u32,
}

impl Genl {
    /// Opens the socket in the calling thread's namespace. `Err` says so when the kernel has no
    /// WireGuard (the family is unknown until the module is loaded).
    pub fn open() -> Result<Self, String> {
        let mut socket = Socket::new(NETLINK_GENERIC)
            .map_err(|e| format!("open a generic netlink socket: {e}"))?;
        socket
            .bind_auto()
            .map_err(|e| format!("bind a generic netlink socket: {e}"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| format!("connect a generic netlink socket: {e}"))?;
        let mut genl = Genl {
            socket,
            family: 0,
            seq: 0,
        };
        let ask = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".into())],
        };
        let answers = genl
            .exchange(GenlMessage::from_payload(ask), NLM_F_REQUEST | NLM_F_ACK)
            .map_err(|e| {
                format!("the kernel has no WireGuard (generic netlink family `wireguard`: {e})")
            })?;
        genl.family = answers
            .iter()
            .flat_map(|m: &GenlMessage<GenlCtrl>| &m.payload.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or("the kernel did not say the WireGuard family's id")?;
        Ok(genl)
    }

    /// `WG_CMD_SET_DEVICE` with `attributes` (the device's name among them).
    pub fn set(&mut self, attributes: Vec<WireguardAttribute>) -> Result<(), String> {
        let mut msg = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        });
        msg.set_resolved_family_id(self.family);
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK)
            .map(|_: Vec<GenlMessage<WireguardMessage>>| ())
    }

    /// `WG_CMD_GET_DEVICE` of the device `name`: its attributes, over as many messages as the
    /// kernel split them into (a peer's allowed IPs may continue in the next one).
    pub fn get(&mut self, name: &str) -> Result<Vec<Vec<WireguardAttribute>>, String> {
        let mut msg = GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(name.into())],
        });
        msg.set_resolved_family_id(self.family);
        let answers: Vec<GenlMessage<WireguardMessage>> =
            self.exchange(msg, NLM_F_REQUEST | NLM_F_DUMP)?;
        Ok(answers.into_iter().map(|m| m.payload.attributes).collect())
    }

    /// Sends one request and reads its answers until the kernel's ack, error or end of dump.
    fn exchange<F>(
        &mut self,
        payload: GenlMessage<F>,
        flags: u16,
    ) -> Result<Vec<GenlMessage<F>>, String>
    where
        F: netlink_packet_generic::GenlFamily
            + netlink_packet_core::Emitable
            + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
            + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|e| format!("send a netlink request: {e}"))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|e| format!("read the kernel's answer: {e}"))?;
            let mut at = 0;
            while at < data.len() {
                let len = NetlinkBuffer::new_checked(&data[at..])
                    .map_err(|e| format!("a malformed netlink answer: {e}"))?
                    .length() as usize;
                let part = data.get(at..at + len).ok_or("a truncated netlink answer")?;
                at += len.max(1).next_multiple_of(4);
                let answer = NetlinkMessage::<GenlMessage<F>>::deserialize(part)
                    .map_err(|e| format!("an answer netfn cannot read: {e}"))?;
                if answer.header.sequence_number != self.seq {
                    continue;
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(m) => {
                        out.push(m);
                        if answer.header.flags & netlink_packet_core::NLM_F_MULTIPART == 0
                            && flags & NLM_F_DUMP == 0
                            && flags & NLM_F_ACK == 0
                        {
                            return Ok(out);
                        }
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io().to_string()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
            }
        }
    }
}
