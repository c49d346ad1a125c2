//! Loopback ports and the nodes' `/health` endpoint, with std only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result};

/// Ports for one node: QUIC (UDP) for peers and clients, HTTP (TCP) for
/// metrics and health.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ports {
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    /// etcd's v3 API (TCP).
    pub etcd: SocketAddr,
}

/// Picks ports for `count` nodes: distinct loopback ports below the kernel's
/// ephemeral range, free now for UDP and TCP. Ports from `127.0.0.1:0` would
/// come from the range every client endpoint and outgoing connection draws
/// from, and a node restarted later could find its port taken by a client
/// ("address in use").
pub(crate) fn free_ports(count: usize) -> Result<Vec<Ports>> {
    let mut picked = loopback_ports(3 * count)?.into_iter();
    let mut next = || SocketAddr::from(([127, 0, 0, 1], picked.next().unwrap_or_default()));
    Ok((0..count)
        .map(|_| Ports {
            listen: next(),
            metrics: next(),
            etcd: next(),
        })
        .collect())
}

/// `count` distinct free TCP ports on loopback (below the ephemeral range).
pub(crate) fn free_tcp_ports(count: usize) -> Result<Vec<u16>> {
    loopback_ports(count)
}

/// `count` distinct loopback ports, each free for UDP and TCP, from a random
/// start below the ephemeral range (or, with no room there, from the kernel).
fn loopback_ports(count: usize) -> Result<Vec<u16>> {
    const LOWEST: u32 = 10_000;
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let mut ports = Vec::with_capacity(count);
    if ephemeral_low > LOWEST + 1_000 {
        let span = ephemeral_low - LOWEST;
        // A start that differs between runs and processes.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            .wrapping_add(std::process::id().wrapping_mul(7_919))
            % span;
        for step in 0..span {
            if ports.len() == count {
                break;
            }
            let port = (LOWEST + (start + step) % span) as u16;
            let free = UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port)).is_ok();
            if free {
                ports.push(port);
            }
        }
    }
    // No room below the ephemeral range: the kernel's ports, held at once
    // so none repeats.
    let mut held = Vec::new();
    while ports.len() < count {
        let socket =
            TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP socket on 127.0.0.1")?;
        ports.push(socket.local_addr()?.port());
        held.push(socket);
    }
    Ok(ports)
}

/// What `GET /health` answered.
#[derive(Debug)]
pub(crate) struct Health {
    pub status: u16,
    pub body: String,
}

impl Health {
    /// 200: the node runs and knows a leader.
    pub fn knows_leader(&self) -> bool {
        self.status == 200
    }

    /// The leader named in a healthy body (`ok: node 1 term 2 leader 3 ...`).
    pub fn leader(&self) -> Option<u64> {
        word_after(&self.body, "leader")
    }

    pub fn term(&self) -> Option<u64> {
        word_after(&self.body, "term")
    }
}

fn word_after(text: &str, key: &str) -> Option<u64> {
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == key {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// `GET /health` over plain HTTP/1.0; `None` if nothing answers yet.
pub(crate) fn health(address: SocketAddr) -> Option<Health> {
    get(address, "/health", 64 * 1024)
}

/// The value of the unlabelled gauge or counter `name` on the node's
/// `/metrics` page; `None` if nothing answers or it is not there.
pub(crate) fn metric(address: SocketAddr, name: &str) -> Option<f64> {
    let page = get(address, "/metrics", 4 << 20)?;
    page.body.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// `GET path` over plain HTTP/1.0, reading at most `limit` bytes.
fn get(address: SocketAddr, path: &str, limit: u64) -> Option<Health> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .ok()?;
    let mut response = Vec::new();
    stream.take(limit).read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default();
    Some(Health { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct() {
        let ports = free_ports(5).unwrap();
        let mut all: Vec<u16> = ports
            .iter()
            .flat_map(|p| [p.listen.port(), p.metrics.port(), p.etcd.port()])
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 15, "{ports:?}");
        assert!(ports.iter().all(|p| p.listen.ip().is_loopback()));
        let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(32_768);
        if ephemeral_low > 11_000 {
            assert!(
                all.iter().all(|p| *p < ephemeral_low),
                "{all:?} reach into the ephemeral range"
            );
        }
    }

    #[test]
    fn reads_a_health_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).unwrap();
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nok: node 2 term 3 leader 1 commit 4 applied 4\n",
            )
            .unwrap();
        });
        let health = health(address).unwrap();
        server.join().unwrap();
        assert!(health.knows_leader());
        assert_eq!(health.leader(), Some(1));
        assert_eq!(health.term(), Some(3));
    }

    #[test]
    fn nothing_listening_is_none() {
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(health(address).is_none());
    }
}
