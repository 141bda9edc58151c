//! Typed rtnetlink operations on one namespace's netlink socket.
//!
//! A netlink socket belongs to the namespace of the thread that opened it, so `Netlink::here` is
//! called on a thread that is already inside the namespace; the socket's connection task then
//! runs on the tokio runtime like any other.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use rtnetlink::packet_route::rule::RuleAction;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::plan::{LinkEnd, RoutePlan};

/// Priority of the rules that route a function's packets by the interface they arrived on
/// (before the main table's rule at 32766).
pub const IIF_RULE_PRIORITY: u32 = 1000;

#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct NetlinkError {
    pub what: String,
    pub message: String,
    /// The errno the kernel returned, if any.
    pub errno: Option<i32>,
}

impl NetlinkError {
    fn new(what: impl Into<String>, e: rtnetlink::Error) -> Self {
        let (message, errno) = match &e {
            rtnetlink::Error::NetlinkError(m) => {
                let io = m.to_io();
                (io.to_string(), io.raw_os_error())
            }
            other => (other.to_string(), None),
        };
        NetlinkError {
            what: what.into(),
            message,
            errno,
        }
    }

    /// `Ok(true)` if the request succeeded, `Ok(false)` if the kernel answered with one of
    /// `absent` (the object is not there: nothing to do), the error otherwise.
    fn unless(
        result: Result<(), rtnetlink::Error>,
        what: impl FnOnce() -> String,
        absent: &[i32],
    ) -> Result<bool, NetlinkError> {
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = NetlinkError::new(what(), e);
                match e.errno {
                    Some(errno) if absent.contains(&errno) => Ok(false),
                    _ => Err(e),
                }
            }
        }
    }

    fn io(what: impl Into<String>, e: std::io::Error) -> Self {
        NetlinkError {
            what: what.into(),
            message: e.to_string(),
            errno: e.raw_os_error(),
        }
    }
}

/// One interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub lower_up: bool,
    pub mac: Option<[u8; 6]>,
}

/// A netlink socket in one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Opens a socket in the CALLING THREAD's namespace; its task runs on `rt`.
    pub fn here(rt: &tokio::runtime::Handle) -> Result<Self, NetlinkError> {
        let _guard = rt.enter();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetlinkError::io("open netlink socket", e))?;
        rt.spawn(conn);
        Ok(Netlink { handle })
    }

    /// Creates a veth pair with both ends placed directly in their namespaces, with the planned
    /// names, interface indexes and MACs. Both ends start down: the kernel refuses to bring the
    /// peer up before the pair exists (ENOTCONN), so each namespace brings its own ends up.
    pub async fn add_veth(
        &self,
        out: &LinkEnd,
        out_ns: &OwnedFd,
        inn: &LinkEnd,
        in_ns: &OwnedFd,
    ) -> Result<(), NetlinkError> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(inn.ifname.clone())
            .index(inn.ifindex)
            .address(inn.mac.to_vec())
            .setns_by_fd(in_ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(out.ifname.clone())
            .index(out.ifindex)
            .address(out.mac.to_vec())
            .setns_by_fd(out_ns.as_raw_fd())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("create veth {}/{}", out.ifname, inn.ifname), e))
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("set interface {index} up"), e))
    }

    pub async fn add_address(&self, index: u32, net: Ipv4Net) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(net.addr()), net.prefix_len())
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("add address {net}"), e))
    }

    /// A permanent neighbour entry: `addr` is at `mac` behind interface `index`. Both ends of
    /// every veth are netfn's, so it knows each neighbour's MAC: no ARP, and so no first
    /// packets queued (and, past the queue, dropped) behind a resolution on a new link.
    pub async fn add_neighbour(
        &self,
        index: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(addr))
            .link_layer_address(&mac)
            .state(rtnetlink::packet_route::neighbour::NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| NetlinkError::new(format!("add neighbour {addr}"), e))
    }

    pub async fn add_route(
        &self,
        destination: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        self.route(destination, gateway, false, None).await
    }

    /// Adds a route or atomically replaces the one to the same destination (the switch of a
    /// live apply: packets take the old or the new next hop, never none), in the main table or
    /// in table `table`.
    pub async fn replace_route(
        &self,
        destination: Ipv4Net,
        gateway: Ipv4Addr,
        table: Option<u32>,
    ) -> Result<(), NetlinkError> {
        self.route(destination, gateway, true, table).await
    }

    /// Adds the rule "packets that arrive on `ifname` are routed by table `table`" (at
    /// [`IIF_RULE_PRIORITY`]); one that exists already is fine.
    pub async fn add_iif_rule(&self, ifname: &str, table: u32) -> Result<(), NetlinkError> {
        NetlinkError::unless(
            self.iif_rule(ifname, table).execute().await,
            || format!("add rule iif {ifname} lookup {table}"),
            &[libc::EEXIST],
        )
        .map(drop)
    }

    /// Deletes the rule [`Netlink::add_iif_rule`] added; false if there was none.
    pub async fn delete_iif_rule(&self, ifname: &str, table: u32) -> Result<bool, NetlinkError> {
        let mut add = self.iif_rule(ifname, table);
        let message = add.message_mut().clone();
        NetlinkError::unless(
            self.handle.rule().del(message).execute().await,
            || format!("delete rule iif {ifname} lookup {table}"),
            &[libc::ENOENT],
        )
    }

    /// Deletes the route `route` (its destination through its gateway) in table `table`; false
    /// if there was none. A route to the same destination through another gateway is not
    /// this one, and stays.
    pub async fn delete_route_in(
        &self,
        route: &RoutePlan,
        table: u32,
    ) -> Result<bool, NetlinkError> {
        let RoutePlan {
            destination,
            gateway,
        } = route;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .gateway(*gateway)
            .table_id(table)
            .build();
        NetlinkError::unless(
            self.handle.route().del(msg).execute().await,
            || format!("delete route {destination} via {gateway} table {table}"),
            &[libc::ESRCH, libc::ENOENT],
        )
    }

    fn iif_rule(&self, ifname: &str, table: u32) -> rtnetlink::RuleAddRequest<Ipv4Addr> {
        self.handle
            .rule()
            .add()
            .v4()
            .input_interface(ifname)
            .table_id(table)
            .priority(IIF_RULE_PRIORITY)
            .action(RuleAction::ToTable)
    }

    async fn route(
        &self,
        destination: Ipv4Net,
        gateway: Ipv4Addr,
        replace: bool,
        table: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .gateway(gateway);
        if let Some(table) = table {
            builder = builder.table_id(table);
        }
        let msg = builder.build();
        let request = self.handle.route().add(msg);
        let request = if replace { request.replace() } else { request };
        request.execute().await.map_err(|e| {
            let verb = if replace { "replace" } else { "add" };
            NetlinkError::new(format!("{verb} route {destination} via {gateway}"), e)
        })
    }

    /// Deletes an interface by name. Returns false if it did not exist.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        NetlinkError::unless(
            self.handle.link().del(link.index).execute().await,
            || format!("delete interface {name}"),
            &[libc::ENODEV],
        )
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_info(&msg))),
            Ok(None) => Ok(None),
            Err(e) => {
                let e = NetlinkError::new(format!("look up interface {name}"), e);
                if e.errno == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Every interface of the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("list interfaces", e))?;
        Ok(msgs.iter().map(link_info).collect())
    }

    /// The id this socket's namespace knows another namespace by (its "nsid"), given an open
    /// file of that namespace; one is assigned first when it has none. A namespace's id goes
    /// from the table when the kernel starts to free it (see [`Netlink::nsids`]).
    pub async fn nsid_of(&self, netns: &impl AsRawFd) -> Result<i32, NetlinkError> {
        use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
        use rtnetlink::packet_route::nsid::NsidAttribute;
        let fd = u32::try_from(netns.as_raw_fd()).unwrap_or_default();
        if let Some(id) = self.get_nsid(fd).await? {
            return Ok(id);
        }
        let mut msg = rtnetlink::packet_route::nsid::NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(fd), NsidAttribute::Id(-1)];
        self.nsid_request(
            rtnetlink::packet_route::RouteNetlinkMessage::NewNsId(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            "assign a namespace id",
        )
        .await?;
        self.get_nsid(fd).await?.ok_or_else(|| NetlinkError {
            what: "assign a namespace id".into(),
            message: "the kernel accepted it but reports none".into(),
            errno: None,
        })
    }

    async fn get_nsid(&self, fd: u32) -> Result<Option<i32>, NetlinkError> {
        use rtnetlink::packet_core::NLM_F_REQUEST;
        use rtnetlink::packet_route::nsid::NsidAttribute;
        let mut msg = rtnetlink::packet_route::nsid::NsidMessage::default();
        msg.attributes = vec![NsidAttribute::Fd(fd)];
        let ids = self
            .nsid_request(
                rtnetlink::packet_route::RouteNetlinkMessage::GetNsId(msg),
                NLM_F_REQUEST,
                "look up a namespace id",
            )
            .await?;
        // -1: none assigned.
        Ok(ids.into_iter().find(|&id| id >= 0))
    }

    /// The namespace ids this socket's namespace holds (`ip netns list-id`).
    pub async fn nsids(&self) -> Result<Vec<i32>, NetlinkError> {
        use rtnetlink::packet_core::{NLM_F_DUMP, NLM_F_REQUEST};
        self.nsid_request(
            rtnetlink::packet_route::RouteNetlinkMessage::GetNsId(Default::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list namespace ids",
        )
        .await
    }

    /// Sends one nsid request; returns the ids in the answers.
    async fn nsid_request(
        &self,
        msg: rtnetlink::packet_route::RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<i32>, NetlinkError> {
        use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_route::nsid::NsidAttribute;
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(req)
            .map_err(|e| NetlinkError::new(what, e))?;
        let mut ids = Vec::new();
        while let Some(answer) = futures::StreamExt::next(&mut answers).await {
            match answer.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(NetlinkError::new(what, rtnetlink::Error::NetlinkError(e)));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    ids.extend(m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) => Some(*id),
                        _ => None,
                    }))
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    /// Every IPv4 address of the namespace, by interface index.
    pub async fn addresses(&self) -> Result<Vec<(u32, Ipv4Net)>, NetlinkError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkError::new("list addresses", e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, m.header.prefix_len)
                            .ok()
                            .map(|n| (m.header.index, n))
                    }
                    _ => None,
                })
            })
            .collect())
    }
}

fn link_info(msg: &rtnetlink::packet_route::link::LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        mac: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(a) => info.mac = a.as_slice().try_into().ok(),
            _ => {}
        }
    }
    info
}

/// Formats a MAC address as `02:ab:…`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
