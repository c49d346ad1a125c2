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

/// Picks `count` pairs of free loopback ports: binds them all to
/// 127.0.0.1:0 at once (so no two are the same), reads them, releases them.
pub(crate) fn free_ports(count: usize) -> Result<Vec<Ports>> {
    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    let tcp_socket =
        || TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP socket on 127.0.0.1");
    for _ in 0..count {
        udp.push(UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP socket on 127.0.0.1")?);
        tcp.push((tcp_socket()?, tcp_socket()?));
    }
    udp.iter()
        .zip(&tcp)
        .map(|(u, (t, e))| {
            Ok(Ports {
                listen: u.local_addr()?,
                metrics: t.local_addr()?,
                etcd: e.local_addr()?,
            })
        })
        .collect()
}

/// `count` distinct free TCP ports on loopback (bound at once, read,
/// released).
pub(crate) fn free_tcp_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP socket on 127.0.0.1"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
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
            .flat_map(|p| [p.listen.port(), p.metrics.port()])
            .collect();
        all.sort();
        all.dedup();
        // UDP and TCP ports live in different spaces, but five of each
        // must be distinct among themselves.
        assert!(all.len() >= 5, "{ports:?}");
        assert!(ports.iter().all(|p| p.listen.ip().is_loopback()));
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
