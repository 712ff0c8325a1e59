//! Who may hold a connection to this node, and which peer addresses it will dial.
//!
//! Three defences, each against something a peer on loopback did to a node:
//!
//! - [`IpLimits`], a behaviour: at most `max_connections_per_ip` inbound connections,
//!   opening or open, from one IPv4 address or one IPv6 /64. Fresh peer ids cost
//!   nothing, addresses do: 256 connections from one address in 4 s took every slot.
//! - [`SlotBook`]: the last `reserved_connections` of `max_connections` are for known
//!   peers (bootstrap peers, peers this node was told to dial, peers the policy
//!   admitted). When established connections go beyond `max_connections −
//!   reserved_connections`, the connection of an unknown peer that has been idle the
//!   longest is closed. A connection held open by an idle stream is not "in use": only
//!   transfers ([`SlotBook::touch`]) are.
//! - [`identify_addresses`]: what a peer says it listens on is taken only after it is
//!   checked (transport, address range, its own peer id) and capped at
//!   [`MAX_IDENTIFY_ADDRESSES`]; 150 advertised addresses made the node dial 150
//!   sockets the attacker chose.
//!
//! How the caps fit together: `connection_limits` keeps the hard cap
//! (`with_max_established(max_connections)`), refusing what would go beyond it. The
//! [`SlotBook`] keeps unknown peers below the soft cap `max_connections −
//! reserved_connections`, so the room between the two caps is free whenever a known
//! peer arrives. Known peers may use that room up to the hard cap; unknown ones are
//! shed instead. `IpLimits` stops one address from filling even the soft cap.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::{ConnectionEstablished, ListenFailure};
use libp2p::swarm::{
    dummy, ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{kad, Multiaddr, PeerId};

// ---------------------------------------------------------------------------------
// Connections per IP address
// ---------------------------------------------------------------------------------

/// The part of an address one party is taken to control: an IPv4 address, or the /64
/// prefix of an IPv6 one (a host is given a whole /64, so counting single IPv6
/// addresses would let it open 2^64 connections). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Net(u64),
}

impl IpKey {
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => IpKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

impl fmt::Display for IpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpKey::V4(v4) => write!(f, "{v4}"),
            IpKey::V6Net(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

/// Why an inbound connection was refused: its address has its share already.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many connections from {ip}: {open} open or opening, at most {limit} from one \
     address (max_connections_per_ip)"
)]
pub(crate) struct TooManyFromIp {
    /// The address (or IPv6 /64).
    pub(crate) ip: IpKey,
    /// Inbound connections it has, opening or open.
    pub(crate) open: usize,
    /// The limit.
    pub(crate) limit: usize,
}

/// The counting behind [`IpLimits`], apart from libp2p so it can be tested alone.
///
/// A connection is counted from the moment it is offered (pending) until it fails or
/// closes. Every connection that ever entered is keyed by its `ConnectionId`, so an
/// event for one that never entered (another behaviour refused it first) changes
/// nothing, and one that leaves twice is subtracted once.
#[derive(Debug, Default)]
pub(crate) struct IpCounter {
    limit: usize,
    exempt_loopback: bool,
    pending: HashMap<ConnectionId, IpKey>,
    established: HashMap<ConnectionId, IpKey>,
    per_ip: HashMap<IpKey, usize>,
}

impl IpCounter {
    pub(crate) fn new(limit: usize, exempt_loopback: bool) -> Self {
        Self {
            limit,
            exempt_loopback,
            ..Self::default()
        }
    }

    /// Connections from `ip` (its key) now, opening or open.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&IpKey::of(ip)).copied().unwrap_or(0)
    }

    /// A connection from `ip` is offered: counted, or refused if its address has
    /// `limit` already.
    pub(crate) fn offer(&mut self, id: ConnectionId, ip: IpAddr) -> Result<(), TooManyFromIp> {
        if self.pending.contains_key(&id) || self.established.contains_key(&id) {
            return Ok(());
        }
        if self.exempt_loopback && ip.to_canonical().is_loopback() {
            return Ok(());
        }
        let key = IpKey::of(ip);
        let open = self.per_ip.get(&key).copied().unwrap_or(0);
        if open >= self.limit {
            return Err(TooManyFromIp {
                ip: key,
                open,
                limit: self.limit,
            });
        }
        self.per_ip.insert(key, open + 1);
        self.pending.insert(id, key);
        Ok(())
    }

    /// The connection finished its handshake and the swarm keeps it.
    pub(crate) fn established(&mut self, id: ConnectionId, ip: Option<IpAddr>) {
        if let Some(key) = self.pending.remove(&id) {
            self.established.insert(id, key);
        } else if let Some(ip) = ip {
            // Never offered (cannot happen with the swarm as it is); counted so that
            // its closing balances.
            if self.offer(id, ip).is_ok() {
                if let Some(key) = self.pending.remove(&id) {
                    self.established.insert(id, key);
                }
            }
        }
    }

    /// The connection is gone: failed during its handshake, refused, or closed.
    pub(crate) fn gone(&mut self, id: ConnectionId) {
        let key = self
            .pending
            .remove(&id)
            .or_else(|| self.established.remove(&id));
        if let Some(key) = key {
            if let Some(n) = self.per_ip.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_ip.remove(&key);
                }
            }
        }
    }

    /// Connections counted (opening, open).
    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (self.pending.len(), self.established.len())
    }
}

/// Refuses inbound connections beyond `max_connections_per_ip` from one address
/// (opening and open together). Outbound connections are not counted: this node
/// chose to dial them.
///
/// Place it first in the `Behaviour` struct: the derive asks behaviours in field
/// order and stops at the first refusal, so a flood is turned away before other
/// behaviours spend anything on it. Whatever it does not see (a connection another
/// behaviour refused first) it does not count.
pub(crate) struct IpLimits {
    counter: IpCounter,
}

impl IpLimits {
    /// At most `max_per_ip` inbound connections from one address; `exempt_loopback`
    /// lets local peers in unlimited (off in medmesh: tests run attackers on loopback).
    pub(crate) fn new(max_per_ip: usize, exempt_loopback: bool) -> Self {
        Self {
            counter: IpCounter::new(max_per_ip, exempt_loopback),
        }
    }
}

impl NetworkBehaviour for IpLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        match remote_addr.ip_addr() {
            Some(ip) => self
                .counter
                .offer(connection_id, ip)
                .map_err(ConnectionDenied::new),
            // Not an IP transport (memory, in tests): nothing to count by.
            None => Ok(()),
        }
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Counted when offered; `offer` is a no-op for a connection it knows.
        if let Some(ip) = remote_addr.ip_addr() {
            self.counter
                .offer(connection_id, ip)
                .map_err(ConnectionDenied::new)?;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                connection_id,
                endpoint: ConnectedPoint::Listener { send_back_addr, .. },
                ..
            }) => self
                .counter
                .established(connection_id, send_back_addr.ip_addr()),
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.counter.gone(connection_id)
            }
            // The handshake failed, timed out, or a behaviour refused the connection
            // (this one included: then it was never counted).
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.counter.gone(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------
// Reserved slots and eviction
// ---------------------------------------------------------------------------------

/// Peers admitted by the policy that are remembered as known; past it the one
/// admitted longest ago is forgotten (pinned peers are never forgotten).
pub(crate) const MAX_ADMITTED_PEERS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Named by the operator: a bootstrap peer, a peer this node was told to dial.
    Pinned,
    /// Admitted by the policy (a registered institution's node), at that time.
    Admitted(Instant),
}

#[derive(Debug)]
struct Slot {
    peer: PeerId,
    remote: Multiaddr,
    dialled: bool,
    since: Instant,
}

#[derive(Debug)]
struct Activity {
    last_active: Instant,
    connections: usize,
}

/// Established connections, who holds them, and which to close when unknown peers
/// would take the reserved ones. Pure bookkeeping: the driver feeds it swarm events
/// and closes what it names; transfers [`touch`](SlotBook::touch) their peer.
///
/// Eviction order: connections of known peers are never chosen; among the others,
/// the one whose peer was active longest ago (a transfer, or else the connection
/// opening), then the oldest connection. A newcomer is the freshest, so it is closed
/// only when no other connection can be, that is when known peers fill the soft cap.
#[derive(Debug)]
pub(crate) struct SlotBook {
    soft_cap: usize,
    connections: HashMap<ConnectionId, Slot>,
    peers: HashMap<PeerId, Activity>,
    closing: HashSet<ConnectionId>,
    known: HashMap<PeerId, Known>,
}

impl SlotBook {
    /// `max_connections` in all, the last `reserved` of them kept for known peers.
    pub(crate) fn new(max_connections: usize, reserved: usize) -> Self {
        Self {
            soft_cap: max_connections.saturating_sub(reserved),
            connections: HashMap::new(),
            peers: HashMap::new(),
            closing: HashSet::new(),
            known: HashMap::new(),
        }
    }

    /// Makes `peer` known for good (bootstrap peers, peers dialled on request).
    pub(crate) fn pin(&mut self, peer: PeerId) {
        self.known.insert(peer, Known::Pinned);
    }

    /// Makes `peer` known because the policy admitted it; the table is bounded by
    /// [`MAX_ADMITTED_PEERS`], forgetting the longest-admitted first.
    pub(crate) fn admit(&mut self, peer: PeerId, now: Instant) {
        match self.known.get(&peer).copied() {
            Some(Known::Pinned) => return,
            Some(Known::Admitted(_)) => {}
            None => {
                let admitted = self
                    .known
                    .values()
                    .filter(|k| matches!(k, Known::Admitted(_)))
                    .count();
                if admitted >= MAX_ADMITTED_PEERS {
                    let oldest = self
                        .known
                        .iter()
                        .filter_map(|(p, k)| match k {
                            Known::Admitted(at) => Some((*at, *p)),
                            Known::Pinned => None,
                        })
                        .min();
                    if let Some((_, oldest)) = oldest {
                        self.known.remove(&oldest);
                    }
                }
            }
        }
        self.known.insert(peer, Known::Admitted(now));
    }

    /// Whether `peer` has a reserved slot.
    pub(crate) fn is_known(&self, peer: &PeerId) -> bool {
        self.known.contains_key(peer)
    }

    /// Records a new connection; returns the connections to close (usually none, at
    /// most one per connection recorded) so that the reserved slots stay free.
    pub(crate) fn established(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        remote: Multiaddr,
        dialled: bool,
        now: Instant,
    ) -> Vec<ConnectionId> {
        if self.connections.contains_key(&id) {
            self.closed(id);
        }
        self.connections.insert(
            id,
            Slot {
                peer,
                remote,
                dialled,
                since: now,
            },
        );
        let activity = self.peers.entry(peer).or_insert(Activity {
            last_active: now,
            connections: 0,
        });
        activity.connections += 1;
        activity.last_active = activity.last_active.max(now);
        self.shed()
    }

    /// Forgets a connection (closed, or already gone when asked to close it).
    pub(crate) fn closed(&mut self, id: ConnectionId) {
        self.closing.remove(&id);
        let Some(slot) = self.connections.remove(&id) else {
            return;
        };
        if let Some(activity) = self.peers.get_mut(&slot.peer) {
            activity.connections = activity.connections.saturating_sub(1);
            if activity.connections == 0 {
                self.peers.remove(&slot.peer);
            }
        }
    }

    /// `peer` did something useful (a block served or fetched, a replica asked for):
    /// its connections go to the back of the eviction order. Peers without a
    /// connection are not recorded, so the table stays bounded.
    pub(crate) fn touch(&mut self, peer: &PeerId, now: Instant) {
        if let Some(activity) = self.peers.get_mut(peer) {
            activity.last_active = activity.last_active.max(now);
        }
    }

    /// The address at the other end of connection `id`.
    pub(crate) fn remote(&self, id: ConnectionId) -> Option<&Multiaddr> {
        self.connections.get(&id).map(|slot| &slot.remote)
    }

    /// The address `peer` is connected from (one of its connections'), for shares per
    /// address; `None` when it has no open connection with an IP address.
    pub(crate) fn address_of(&self, peer: &PeerId) -> Option<IpKey> {
        self.connections
            .values()
            .filter(|slot| slot.peer == *peer)
            .find_map(|slot| {
                slot.remote.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(ip) => Some(IpKey::of(ip.into())),
                    libp2p::multiaddr::Protocol::Ip6(ip) => Some(IpKey::of(ip.into())),
                    _ => None,
                })
            })
    }

    /// The addresses this node dialled `peer` at, on its open connections.
    pub(crate) fn dialled_addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.connections
            .values()
            .filter(|slot| slot.dialled && slot.peer == *peer)
            .map(|slot| slot.remote.clone())
            .collect()
    }

    /// Established connections not being closed.
    pub(crate) fn open(&self) -> usize {
        self.connections.len() - self.closing.len()
    }

    /// The connection to close next, if any may be.
    fn victim(&self) -> Option<ConnectionId> {
        self.connections
            .iter()
            .filter(|(id, slot)| !self.closing.contains(*id) && !self.is_known(&slot.peer))
            .min_by_key(|(id, slot)| {
                let last_active = self
                    .peers
                    .get(&slot.peer)
                    .map_or(slot.since, |a| a.last_active);
                (last_active, slot.since, **id)
            })
            .map(|(id, _)| *id)
    }

    /// Closes (marks) connections of unknown peers until the soft cap holds again or
    /// only known peers' connections are left.
    fn shed(&mut self) -> Vec<ConnectionId> {
        let mut victims = Vec::new();
        while self.open() > self.soft_cap {
            match self.victim() {
                Some(victim) => {
                    self.closing.insert(victim);
                    victims.push(victim);
                }
                None => break,
            }
        }
        victims
    }
}

/// A [`SlotBook`] shared by the swarm task (connections) and the transfer tasks
/// ([`touch`](SharedSlotBook::touch)); the lock is held for a map lookup.
#[derive(Debug)]
pub(crate) struct SharedSlotBook(Mutex<SlotBook>);

impl SharedSlotBook {
    pub(crate) fn new(book: SlotBook) -> Arc<Self> {
        Arc::new(Self(Mutex::new(book)))
    }

    /// Runs `f` on the book.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut SlotBook) -> R) -> R {
        f(&mut crate::lock(&self.0))
    }

    /// [`SlotBook::touch`] now.
    pub(crate) fn touch(&self, peer: &PeerId) {
        self.with(|book| book.touch(peer, Instant::now()));
    }
}

// ---------------------------------------------------------------------------------
// Addresses from identify
// ---------------------------------------------------------------------------------

/// Most listen addresses taken from one identify message.
pub(crate) const MAX_IDENTIFY_ADDRESSES: usize = 8;

/// Most addresses kept in the routing table for one peer: what it advertises now, the
/// addresses we reached it at, and a few older ones.
pub(crate) const MAX_KAD_ADDRESSES: usize = MAX_IDENTIFY_ADDRESSES + 4;

/// Where an IP address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// Nowhere one should dial: unspecified, multicast, broadcast, link-local,
    /// documentation, reserved.
    Unroutable,
    /// This host.
    Loopback,
    /// A private network: RFC 1918, shared address space (CGNAT), IPv6 ULA.
    Private,
    /// The internet.
    Public,
}

fn range_v4(ip: Ipv4Addr) -> Range {
    let [a, b, c, _] = ip.octets();
    // Besides the std predicates: "this network" 0.0.0.0/8, reserved 240.0.0.0/4,
    // IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15.
    let special =
        a == 0 || a >= 240 || (a == 192 && b == 0 && c == 0) || (a == 198 && (b & 0xfe) == 18);
    if special
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_link_local()
        || ip.is_documentation()
    {
        Range::Unroutable
    } else if ip.is_loopback() {
        Range::Loopback
    } else if ip.is_private() || (a == 100 && (b & 0xc0) == 64) {
        // RFC 1918, and shared address space 100.64.0.0/10
        Range::Private
    } else {
        Range::Public
    }
}

fn range_v6(ip: Ipv6Addr) -> Range {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return range_v4(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 (64:ff9b::/96) leads where the embedded IPv4 address does.
        let [_, _, _, _, _, _, hi, lo] = s;
        return range_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    // Besides the std predicates: deprecated site-local fec0::/10, documentation
    // 2001:db8::/32, discard-only 100::/64.
    let special = (s[0] & 0xffc0) == 0xfec0
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || s[..4] == [0x0100, 0, 0, 0];
    if special || ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local() {
        Range::Unroutable
    } else if ip.is_loopback() {
        Range::Loopback
    } else if ip.is_unique_local() {
        Range::Private
    } else {
        Range::Public
    }
}

fn range(ip: IpAddr) -> Range {
    match ip {
        IpAddr::V4(v4) => range_v4(v4),
        IpAddr::V6(v6) => range_v6(v6),
    }
}

/// What a peer connected from may point us at: a peer on this host may name this
/// host and private networks, one on a private network that network, any other only
/// public addresses (a peer that is not on a network cannot make us dial into it).
fn allowed(target: Range, remote: Range) -> bool {
    match target {
        Range::Unroutable => false,
        Range::Public => true,
        Range::Private => matches!(remote, Range::Private | Range::Loopback),
        Range::Loopback => remote == Range::Loopback,
    }
}

/// A name a public node may advertise: a fully qualified DNS name, not an address in
/// disguise, not a local-only zone. (Names are not resolved here, so which address
/// they lead to is not known; they are taken only from peers reached over the
/// internet. This node has no DNS transport and does not dial them; kad passes them
/// on to peers that might.)
fn plausible_public_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    const LOCAL_ZONES: [&str; 8] = [
        "localhost",
        "local",
        "localdomain",
        "internal",
        "lan",
        "arpa",
        "invalid",
        "test",
    ];
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name.parse::<IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !LOCAL_ZONES
            .iter()
            .any(|zone| name == *zone || name.ends_with(&format!(".{zone}")))
}

enum Host {
    Ip(IpAddr),
    Name,
}

/// `addr` as something this node may dial, without `/p2p`: `/ip4|ip6|dns|dns4|dns6`
/// then `/tcp/<port>` or `/udp/<port>/quic-v1`, optionally `/p2p/<peer>` (which must
/// be `peer`), nothing else. Port 0 is no port.
fn dialable(addr: &Multiaddr, peer: &PeerId) -> Option<(Multiaddr, Host)> {
    let mut parts = addr.iter();
    let first = parts.next()?;
    let host = match &first {
        Protocol::Ip4(ip) => Host::Ip(IpAddr::V4(*ip)),
        Protocol::Ip6(ip) => Host::Ip(IpAddr::V6(*ip)),
        Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => {
            if !plausible_public_name(name) {
                return None;
            }
            Host::Name
        }
        _ => return None,
    };
    let mut out = Multiaddr::empty();
    out.push(first);
    match parts.next()? {
        Protocol::Tcp(port) if port != 0 => out.push(Protocol::Tcp(port)),
        Protocol::Udp(port) if port != 0 => {
            if !matches!(parts.next()?, Protocol::QuicV1) {
                return None;
            }
            out.push(Protocol::Udp(port));
            out.push(Protocol::QuicV1);
        }
        _ => return None,
    }
    match parts.next() {
        None => {}
        Some(Protocol::P2p(named)) if named == *peer => {}
        Some(_) => return None,
    }
    if parts.next().is_some() {
        return None;
    }
    Some((out, host))
}

/// The listen addresses `peer` sent by identify that this node may dial and pass on to
/// the DHT, `remote` being the address its connection came from: each one checked by
/// [`dialable`] and [`allowed`], without its `/p2p` suffix, each once, those on the
/// connection's own IP first, at most [`MAX_IDENTIFY_ADDRESSES`].
pub(crate) fn identify_addresses(
    peer: &PeerId,
    listen_addrs: &[Multiaddr],
    remote: &Multiaddr,
) -> Vec<Multiaddr> {
    let remote_ip = remote.ip_addr().map(|ip| ip.to_canonical());
    // A connection without an IP (or from a nonsense one) gets the strictest rule.
    let remote_range = match remote_ip.map(range) {
        Some(r @ (Range::Loopback | Range::Private)) => r,
        _ => Range::Public,
    };
    let mut seen = HashSet::new();
    let mut kept: Vec<(bool, Multiaddr)> = Vec::new();
    for addr in listen_addrs {
        let Some((addr, host)) = dialable(addr, peer) else {
            continue;
        };
        let same_host = match host {
            Host::Ip(ip) => {
                let ip = ip.to_canonical();
                if !allowed(range(ip), remote_range) {
                    continue;
                }
                Some(ip) == remote_ip
            }
            Host::Name => {
                if remote_range != Range::Public {
                    continue;
                }
                false
            }
        };
        if seen.insert(addr.clone()) {
            kept.push((same_host, addr));
        }
    }
    // Stable: in the peer's order within each group.
    kept.sort_by_key(|(same_host, _)| !same_host);
    kept.into_iter()
        .take(MAX_IDENTIFY_ADDRESSES)
        .map(|(_, addr)| addr)
        .collect()
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

/// Which of the routing table's addresses of a peer (`current`, oldest first, as kad
/// keeps them) to remove once they exceed `cap`: the oldest that the peer no longer
/// advertises (`advertised`) and that are not addresses we reached it at (`keep`).
/// Without this, a peer pushing new identify messages would grow its entry without
/// bound, and every dial of it would try them all.
pub(crate) fn stale_addresses(
    current: &[Multiaddr],
    advertised: &[Multiaddr],
    keep: &[Multiaddr],
    cap: usize,
) -> Vec<Multiaddr> {
    let wanted: HashSet<Multiaddr> = advertised.iter().chain(keep).map(without_p2p).collect();
    current
        .iter()
        .filter(|addr| !wanted.contains(&without_p2p(addr)))
        .take(current.len().saturating_sub(cap))
        .cloned()
        .collect()
}

/// The addresses kad's routing table holds for `peer` (oldest first), if it is there.
pub(crate) fn kad_addresses<S>(kad: &mut kad::Behaviour<S>, peer: PeerId) -> Vec<Multiaddr>
where
    S: kad::store::RecordStore + Send + 'static,
{
    let Some(bucket) = kad.kbucket(peer) else {
        return Vec::new();
    };
    let addresses: Vec<Multiaddr> = bucket
        .iter()
        .find(|entry| *entry.node.key.preimage() == peer)
        .map(|entry| entry.node.value.iter().cloned().collect())
        .unwrap_or_default();
    addresses
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::swarm::ListenError;

    use super::*;

    fn peer(n: u8) -> PeerId {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32])
            .expect("a 32-byte seed")
            .public()
            .to_peer_id()
    }

    fn id(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an IP address")
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("a multiaddr")
    }

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|s| addr(s)).collect()
    }

    // --- IP counting ---

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let mut counter = IpCounter::new(3, false);
        for n in 0..3 {
            counter
                .offer(id(n), ip("203.0.113.7"))
                .expect("within the limit");
        }
        let refused = counter.offer(id(3), ip("203.0.113.7")).unwrap_err();
        assert_eq!(
            refused,
            TooManyFromIp {
                ip: IpKey::V4("203.0.113.7".parse().unwrap()),
                open: 3,
                limit: 3
            }
        );
        assert!(refused.to_string().contains("max_connections_per_ip"));
        // Another address is not affected.
        counter
            .offer(id(4), ip("203.0.113.8"))
            .expect("another address");
        // Established connections count as well; offering one twice counts it once.
        counter.established(id(0), None);
        counter
            .offer(id(0), ip("203.0.113.7"))
            .expect("known connection");
        assert_eq!(counter.count(ip("203.0.113.7")), 3);
    }

    #[test]
    fn failures_and_closes_give_the_place_back_once() {
        let mut counter = IpCounter::new(2, false);
        let a = ip("198.51.100.1");
        counter.offer(id(1), a).unwrap();
        counter.offer(id(2), a).unwrap();
        counter.established(id(1), Some(a));
        assert!(counter.offer(id(3), a).is_err());
        counter.gone(id(2)); // handshake failed
        counter.gone(id(2)); // reported twice: subtracted once
        assert_eq!(counter.count(a), 1);
        counter.offer(id(3), a).expect("a place was freed");
        counter.gone(id(1)); // closed
        counter.gone(id(3));
        assert_eq!(counter.count(a), 0);
        assert_eq!(counter.tracked(), (0, 0));
        assert!(counter.per_ip.is_empty(), "no entry left behind");
        // A connection this counter never saw (refused by another behaviour first).
        counter.gone(id(99));
        assert_eq!(counter.tracked(), (0, 0));
    }

    #[test]
    fn loopback_is_counted_unless_exempt() {
        let mut strict = IpCounter::new(1, false);
        strict.offer(id(1), ip("127.0.0.1")).unwrap();
        assert!(strict.offer(id(2), ip("127.0.0.1")).is_err());
        assert!(
            strict.offer(id(3), ip("::ffff:127.0.0.1")).is_err(),
            "mapped"
        );

        let mut lenient = IpCounter::new(1, true);
        for n in 0..10 {
            lenient.offer(id(n), ip("127.0.0.1")).unwrap();
            lenient.offer(id(100 + n), ip("::1")).unwrap();
        }
        assert_eq!(lenient.tracked(), (0, 0));
        lenient.offer(id(50), ip("192.0.2.1")).unwrap();
        assert!(lenient.offer(id(51), ip("192.0.2.1")).is_err());
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let mut counter = IpCounter::new(2, false);
        counter.offer(id(1), ip("2001:db8:1:2::1")).unwrap();
        counter.offer(id(2), ip("2001:db8:1:2:ffff::9")).unwrap();
        let refused = counter.offer(id(3), ip("2001:db8:1:2::abcd")).unwrap_err();
        assert_eq!(refused.ip.to_string(), "2001:db8:1:2::/64");
        counter
            .offer(id(4), ip("2001:db8:1:3::1"))
            .expect("another /64");
        assert_eq!(IpKey::of(ip("::ffff:10.0.0.1")), IpKey::of(ip("10.0.0.1")));
    }

    #[test]
    fn the_behaviour_counts_inbound_connections_from_offer_to_close() {
        let mut limits = IpLimits::new(2, false);
        let local = addr("/ip4/127.0.0.1/tcp/4001");
        let remote = addr("/ip4/127.0.0.1/tcp/50000");
        let listener = ConnectedPoint::Listener {
            local_addr: local.clone(),
            send_back_addr: remote.clone(),
        };
        let p = peer(1);
        for n in 1..=2 {
            limits
                .handle_pending_inbound_connection(id(n), &local, &remote)
                .expect("within the limit");
        }
        let denied = limits
            .handle_pending_inbound_connection(id(3), &local, &remote)
            .expect_err("third from one address");
        let cause = denied.downcast::<TooManyFromIp>().expect("our error");
        assert_eq!(cause.limit, 2);

        assert!(limits
            .handle_established_inbound_connection(id(1), p, &local, &remote)
            .is_ok());
        limits.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: p,
            connection_id: id(1),
            endpoint: &listener,
            failed_addresses: &[],
            other_established: 0,
        }));
        // The second one fails its handshake; the refused third is reported too.
        for n in [2, 3] {
            limits.on_swarm_event(FromSwarm::ListenFailure(ListenFailure {
                local_addr: &local,
                send_back_addr: &remote,
                error: &ListenError::Aborted,
                connection_id: id(n),
                peer_id: None,
            }));
        }
        assert_eq!(limits.counter.count(ip("127.0.0.1")), 1);
        limits
            .handle_pending_inbound_connection(id(4), &local, &remote)
            .expect("a place is free again");
        limits.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id: p,
            connection_id: id(1),
            endpoint: &listener,
            cause: None,
            remaining_established: 0,
        }));
        assert_eq!(limits.counter.count(ip("127.0.0.1")), 1, "only id 4 left");

        // Outbound connections are not counted.
        let dialer = ConnectedPoint::Dialer {
            address: addr("/ip4/127.0.0.1/tcp/4002"),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        assert!(limits
            .handle_established_outbound_connection(
                id(5),
                p,
                &addr("/ip4/127.0.0.1/tcp/4002"),
                Endpoint::Dialer,
                PortUse::Reuse,
            )
            .is_ok());
        limits.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: p,
            connection_id: id(5),
            endpoint: &dialer,
            failed_addresses: &[],
            other_established: 0,
        }));
        assert_eq!(limits.counter.count(ip("127.0.0.1")), 1);
    }

    // --- Eviction ---

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    fn inbound() -> Multiaddr {
        addr("/ip4/127.0.0.1/tcp/50000")
    }

    #[test]
    fn below_the_soft_cap_nobody_is_closed() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(4, 2);
        assert!(book
            .established(id(1), peer(1), inbound(), false, t0)
            .is_empty());
        assert!(book
            .established(id(2), peer(2), inbound(), false, at(t0, 1))
            .is_empty());
        assert_eq!(book.open(), 2);
    }

    #[test]
    fn the_unknown_peer_idle_longest_is_closed_first() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(5, 2); // soft cap 3
        book.established(id(1), peer(1), inbound(), false, t0);
        book.established(id(2), peer(2), inbound(), false, at(t0, 1));
        book.established(id(3), peer(3), inbound(), false, at(t0, 2));
        // Peer 1 transfers: now peer 2 is the one idle longest.
        book.touch(&peer(1), at(t0, 3));
        let closed = book.established(id(4), peer(4), inbound(), false, at(t0, 4));
        assert_eq!(closed, vec![id(2)]);
        assert_eq!(book.open(), 3);
        // Closing is not double-counted, and a closing connection is not chosen again.
        let closed = book.established(id(5), peer(5), inbound(), false, at(t0, 5));
        assert_eq!(closed, vec![id(3)]);
        book.closed(id(2));
        book.closed(id(3));
        assert_eq!(book.open(), 3);
        assert!(book.remote(id(2)).is_none());
    }

    #[test]
    fn an_idle_stream_does_not_keep_a_slot_but_a_transfer_does() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(3, 1); // soft cap 2
        book.established(id(1), peer(1), inbound(), false, t0); // holds an idle stream
        book.established(id(2), peer(2), inbound(), false, at(t0, 1));
        book.touch(&peer(2), at(t0, 100));
        book.touch(&peer(9), at(t0, 100)); // not connected: not recorded
        assert!(!book.peers.contains_key(&peer(9)));
        let closed = book.established(id(3), peer(3), inbound(), false, at(t0, 101));
        assert_eq!(closed, vec![id(1)]);
    }

    #[test]
    fn known_peers_keep_their_slots_and_the_reserve_is_restored() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(4, 2); // soft cap 2
        book.pin(peer(1)); // a bootstrap peer
        book.established(id(1), peer(1), inbound(), true, t0);
        book.established(id(2), peer(2), inbound(), false, at(t0, 1));
        // A registered node arrives: it takes a reserved slot, and the unknown peer
        // goes so that the reserve is free again.
        book.admit(peer(3), at(t0, 2));
        let closed = book.established(id(3), peer(3), inbound(), false, at(t0, 2));
        assert_eq!(closed, vec![id(2)]);
        book.closed(id(2));
        // Known peers alone beyond the soft cap: a newcomer nobody knows is the one to
        // go, never a known peer.
        let closed = book.established(id(4), peer(4), inbound(), false, at(t0, 3));
        assert_eq!(closed, vec![id(4)]);
        book.closed(id(4));
        book.admit(peer(5), at(t0, 4));
        assert!(book
            .established(id(5), peer(5), inbound(), false, at(t0, 4))
            .is_empty());
        assert_eq!(book.open(), 3);
    }

    #[test]
    fn a_flood_of_fresh_peers_cannot_push_out_an_active_peer() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(10, 2); // soft cap 8
        book.established(id(0), peer(0), inbound(), false, t0); // honest, fetching
        let mut closed = Vec::new();
        for n in 1..50u8 {
            let now = t0 + Duration::from_millis(100 * u64::from(n));
            book.touch(&peer(0), now);
            let victims = book.established(id(n.into()), peer(n), inbound(), false, now);
            for v in &victims {
                book.closed(*v);
            }
            closed.extend(victims);
        }
        assert!(!closed.contains(&id(0)), "the active peer was evicted");
        assert_eq!(book.open(), 8);
    }

    #[test]
    fn admitted_peers_are_bounded_and_pinned_ones_stay() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(4, 1);
        book.pin(peer(0));
        book.admit(peer(0), t0); // stays pinned
        for n in 0..MAX_ADMITTED_PEERS as u64 {
            let mut bytes = [7u8; 32];
            bytes[..8].copy_from_slice(&n.to_le_bytes());
            let p = libp2p::identity::Keypair::ed25519_from_bytes(bytes)
                .unwrap()
                .public()
                .to_peer_id();
            book.admit(p, t0 + Duration::from_millis(n + 1));
        }
        book.admit(peer(1), at(t0, 3600));
        assert!(book.is_known(&peer(0)));
        assert!(book.is_known(&peer(1)));
        assert_eq!(book.known.len(), MAX_ADMITTED_PEERS + 1);
    }

    #[test]
    fn dialled_addresses_are_those_of_outbound_connections() {
        let t0 = Instant::now();
        let mut book = SlotBook::new(8, 2);
        let out = addr("/ip4/192.0.2.10/tcp/4001");
        book.established(id(1), peer(1), out.clone(), true, t0);
        book.established(id(2), peer(1), inbound(), false, t0);
        assert_eq!(book.dialled_addresses(&peer(1)), vec![out]);
        assert_eq!(book.remote(id(2)), Some(&inbound()));
        book.closed(id(1));
        book.closed(id(2));
        assert!(book.peers.is_empty() && book.connections.is_empty());
    }

    // --- Identify addresses ---

    #[test]
    fn a_hundred_and_fifty_addresses_become_eight() {
        let p = peer(1);
        let advertised: Vec<Multiaddr> = (0..150)
            .map(|n| addr(&format!("/ip4/127.0.0.1/tcp/{}", 20_000 + n)))
            .collect();
        let kept = identify_addresses(&p, &advertised, &addr("/ip4/127.0.0.1/tcp/55555"));
        assert_eq!(kept.len(), MAX_IDENTIFY_ADDRESSES);
        assert_eq!(kept[0], addr("/ip4/127.0.0.1/tcp/20000"));
    }

    #[test]
    fn a_public_peer_cannot_point_us_at_private_or_local_addresses() {
        let p = peer(1);
        let advertised = addrs(&[
            "/ip4/127.0.0.1/tcp/22",
            "/ip4/10.0.0.5/tcp/4001",
            "/ip4/192.168.1.1/tcp/80",
            "/ip4/172.20.0.1/tcp/4001",
            "/ip4/100.64.0.1/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/ip6/fd00::1/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip6/::/tcp/4001",
            "/ip4/224.0.0.1/udp/4001/quic-v1",
            "/ip4/255.255.255.255/tcp/4001",
            "/ip4/169.254.1.1/tcp/4001",
            "/ip6/fe80::1/tcp/4001",
            "/ip6/::ffff:10.0.0.1/tcp/4001",
            "/ip6/64:ff9b::a00:1/tcp/4001",
            "/ip4/8.8.8.8/tcp/4001",
            "/ip6/2606:4700::1/udp/4001/quic-v1",
        ]);
        let kept = identify_addresses(&p, &advertised, &addr("/ip4/1.1.1.1/tcp/40000"));
        assert_eq!(
            kept,
            addrs(&[
                "/ip4/8.8.8.8/tcp/4001",
                "/ip6/2606:4700::1/udp/4001/quic-v1"
            ])
        );
    }

    #[test]
    fn local_peers_may_name_local_networks() {
        let p = peer(1);
        let advertised = addrs(&[
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/10.0.0.5/tcp/4001",
            "/ip4/8.8.8.8/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
        ]);
        let from_lan = identify_addresses(&p, &advertised, &addr("/ip4/10.0.0.5/tcp/50000"));
        assert_eq!(
            from_lan,
            addrs(&["/ip4/10.0.0.5/tcp/4001", "/ip4/8.8.8.8/tcp/4001"]),
            "loopback only from loopback; the connection's own IP first"
        );
        let from_host = identify_addresses(&p, &advertised, &addr("/ip4/127.0.0.1/tcp/50000"));
        assert_eq!(
            from_host,
            addrs(&[
                "/ip4/127.0.0.1/tcp/4001",
                "/ip4/10.0.0.5/tcp/4001",
                "/ip4/8.8.8.8/tcp/4001"
            ])
        );
    }

    #[test]
    fn only_tcp_and_quic_v1_with_the_peers_own_id() {
        let p = peer(1);
        let other = peer(2);
        let advertised = vec![
            addr("/ip4/8.8.8.8/tcp/1"),
            addr("/ip4/8.8.8.8/udp/2/quic-v1"),
            addr("/ip4/8.8.8.8/udp/3"),
            addr("/ip4/8.8.8.8/udp/4/quic"),
            addr("/ip4/8.8.8.8/tcp/5/ws"),
            addr("/ip4/8.8.8.8/tcp/0"),
            addr("/memory/7"),
            addr("/ip4/8.8.8.8/tcp/1").with_p2p(p).unwrap(), // the same one again
            addr("/ip4/8.8.8.8/tcp/6").with_p2p(p).unwrap(),
            addr("/ip4/8.8.8.8/tcp/7").with_p2p(other).unwrap(),
            addr("/ip4/8.8.8.8/tcp/8")
                .with_p2p(other)
                .unwrap()
                .with(Protocol::P2pCircuit)
                .with_p2p(p)
                .unwrap(),
        ];
        let kept = identify_addresses(&p, &advertised, &addr("/ip4/9.9.9.9/tcp/1"));
        assert_eq!(
            kept,
            addrs(&[
                "/ip4/8.8.8.8/tcp/1",
                "/ip4/8.8.8.8/udp/2/quic-v1",
                "/ip4/8.8.8.8/tcp/6"
            ])
        );
    }

    #[test]
    fn names_only_from_public_peers_and_never_local_ones() {
        let p = peer(1);
        let advertised = addrs(&[
            "/dns4/node.hospital.example.org/tcp/4001",
            "/dns/localhost/tcp/4001",
            "/dns4/printer.local/tcp/4001",
            "/dns6/127.0.0.1/tcp/4001",
            "/dnsaddr/bootstrap.example.org",
            "/dns/nodot/tcp/4001",
        ]);
        let public = identify_addresses(&p, &advertised, &addr("/ip4/8.8.8.8/tcp/1"));
        assert_eq!(public, addrs(&["/dns4/node.hospital.example.org/tcp/4001"]));
        let local = identify_addresses(&p, &advertised, &addr("/ip4/127.0.0.1/tcp/1"));
        assert!(local.is_empty(), "{local:?}");
    }

    #[test]
    fn a_connection_without_an_ip_gets_the_strictest_rule() {
        let p = peer(1);
        let advertised = addrs(&["/ip4/127.0.0.1/tcp/1", "/ip4/8.8.8.8/tcp/1"]);
        let kept = identify_addresses(&p, &advertised, &Multiaddr::empty());
        assert_eq!(kept, addrs(&["/ip4/8.8.8.8/tcp/1"]));
    }

    #[test]
    fn stale_routing_addresses_go_oldest_first_beyond_the_cap() {
        let p = peer(1);
        let with_p2p = |s: &str| addr(s).with_p2p(p).unwrap();
        let current: Vec<Multiaddr> = (1..=6)
            .map(|n| with_p2p(&format!("/ip4/8.8.8.{n}/tcp/1")))
            .collect();
        let advertised = addrs(&["/ip4/8.8.8.5/tcp/1", "/ip4/8.8.8.6/tcp/1"]);
        let keep = addrs(&["/ip4/8.8.8.1/tcp/1"]); // we dialled it there
        assert!(stale_addresses(&current, &advertised, &keep, 6).is_empty());
        assert_eq!(
            stale_addresses(&current, &advertised, &keep, 4),
            vec![
                with_p2p("/ip4/8.8.8.2/tcp/1"),
                with_p2p("/ip4/8.8.8.3/tcp/1")
            ]
        );
        assert_eq!(stale_addresses(&current, &advertised, &keep, 0).len(), 3);
    }
}
