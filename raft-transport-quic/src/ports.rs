//! Picking a loopback port for a node that starts later.
//!
//! The usual trick, binding `127.0.0.1:0` and releasing the socket, hands out
//! a port from the kernel's ephemeral range: the range every outgoing
//! connection and every client endpoint bound to port 0 draws from. Between
//! the pick and the node's bind (or between a node's crash and its restart on
//! the same address) a client may be given that very port, and the node then
//! fails to start with "address in use". [`free_loopback_port`] picks below
//! the ephemeral range instead, where the kernel never hands ports out by
//! itself.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Lowest port picked (below it are well-known and commonly configured ports).
const LOWEST: u16 = 10_000;

/// Ports handed out by this process, never handed out twice.
static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A loopback port that is free now for both UDP and TCP and lies outside the
/// kernel's ephemeral port range, so no client endpoint or outgoing
/// connection is given it by the kernel later. Each call in a process returns
/// a different port. Meant for tests and local clusters that choose their
/// nodes' addresses before starting them.
///
/// Falls back to a port from the ephemeral range (bound to `127.0.0.1:0` and
/// released) when the range leaves no room below it.
///
/// ```
/// let port = raft_transport_quic::free_loopback_port()?;
/// let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
/// let socket = std::net::UdpSocket::bind(address)?;
/// # drop(socket);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn free_loopback_port() -> std::io::Result<u16> {
    let ephemeral_low = ephemeral_range_start();
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if ephemeral_low > LOWEST + 1_000 {
        let span = u32::from(ephemeral_low - LOWEST);
        let start = rand::random::<u32>() % span;
        for step in 0..span {
            let port = LOWEST + ((start + step) % span) as u16;
            if !given.contains(&port) && bindable(port) {
                given.insert(port);
                return Ok(port);
            }
        }
    }
    loop {
        let port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if given.insert(port) {
            return Ok(port);
        }
    }
}

/// Whether both a UDP and a TCP socket can be bound to the port on loopback.
fn bindable(port: u16) -> bool {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_range_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low = ephemeral_range_start();
        let ports: Vec<u16> = (0..50).map(|_| free_loopback_port().unwrap()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        for port in ports {
            if low > LOWEST + 1_000 {
                assert!(
                    (LOWEST..low).contains(&port),
                    "port {port} is inside the ephemeral range from {low}"
                );
            }
            assert!(bindable(port), "port {port} cannot be bound");
        }
    }
}
