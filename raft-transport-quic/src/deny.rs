//! Certificate revocation: a [`DenyList`] of SHA-256 certificate
//! fingerprints that the transport refuses, whatever CA signed them.
//!
//! Certificates are valid for two years and the cluster has no CRL or OCSP:
//! a stolen client key, a decommissioned node or a leaked certificate is
//! shut out by putting its certificate's [`Fingerprint`] on the deny list.
//! The transport checks every connection against it: incoming peer and
//! client connections right after the TLS handshake, and the certificate of
//! every peer it dials. Replacing the list ([`DenyList::replace`],
//! [`DenyList::reload_from`]) closes the open connections whose
//! certificate it now denies. Refused and closed connections get the close
//! code [`crate::wire::CLOSE_DENIED`].
//!
//! # File format
//!
//! One fingerprint per line: the SHA-256 of the certificate's DER encoding,
//! 64 hex digits, upper or lower case, either plain or in pairs separated by
//! `:` (as `openssl x509 -noout -fingerprint -sha256` prints it, after the
//! `=`). `#` starts a comment; blank lines are ignored.
//!
//! ```text
//! # alice's laptop, stolen 2026-11-02
//! 3F:1A:...:9C
//! # node 4, decommissioned
//! 5b0e...e1  # trailing comments are fine too
//! ```
//!
//! # Example
//!
//! ```
//! use raft_transport_quic::{
//!     CertificateAuthority, DenyList, Fingerprint, Role, TransportConfig, certificate_fingerprint,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = CertificateAuthority::generate("example CA")?;
//! let stolen = ca.issue_client("example", "alice", Role::ReadWrite)?;
//! // What `raft-cli` prints for a certificate file (PEM or DER).
//! let fingerprint = certificate_fingerprint(stolen.cert_pem().as_bytes())?;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("deny.txt");
//! std::fs::write(&path, format!("# alice's laptop was stolen\n{fingerprint}\n"))?;
//!
//! let deny_list = DenyList::load(&path)?;
//! assert!(deny_list.contains(&fingerprint.parse::<Fingerprint>()?));
//! let mut config = TransportConfig::new(1, "example", "127.0.0.1:0".parse()?);
//! // A clone shares the set: keep one to reload it while the node runs.
//! config.deny_list = Some(deny_list.clone());
//!
//! // Later, after editing the file (e.g. on SIGHUP): open connections of
//! // newly denied certificates are closed.
//! std::fs::write(&path, "")?;
//! assert_eq!(deny_list.reload_from(&path)?, 0);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::caller::Caller;
use crate::transport::{Counters, Inner};
use crate::wire::CLOSE_DENIED;

/// The SHA-256 of a certificate's DER encoding. Displayed as 32 upper-case
/// hex pairs separated by `:`; parsed from 64 hex digits with or without
/// those separators, in either case.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate in DER.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// The fingerprint of a certificate given as PEM (its first
    /// `CERTIFICATE` block) or as DER.
    pub fn of_certificate(pem_or_der: &[u8]) -> Result<Self, DenyListError> {
        if looks_like_pem(pem_or_der) {
            let der = CertificateDer::from_pem_slice(pem_or_der).map_err(|e| {
                DenyListError::Certificate(format!("no certificate could be read from PEM: {e}"))
            })?;
            return Ok(Self::of_der(der.as_ref()));
        }
        // A DER certificate is a SEQUENCE; anything else is neither.
        if pem_or_der.first() != Some(&0x30) {
            return Err(DenyListError::Certificate(
                "the input is neither PEM (-----BEGIN CERTIFICATE-----) nor DER".into(),
            ));
        }
        Ok(Self::of_der(pem_or_der))
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses every line of a deny-list file (see the module documentation
    /// for the format).
    pub fn parse_list(text: &str) -> Result<BTreeSet<Fingerprint>, DenyListError> {
        let mut set = BTreeSet::new();
        for (index, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let fingerprint =
                content
                    .parse::<Fingerprint>()
                    .map_err(|_| DenyListError::Malformed {
                        path: None,
                        line: index + 1,
                        text: content.chars().take(120).collect(),
                    })?;
            set.insert(fingerprint);
        }
        Ok(set)
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    text.contains("-----BEGIN")
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A string that is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 fingerprint: {EXPECTED}")]
pub struct BadFingerprint(pub String);

const EXPECTED: &str = "expected 64 hex digits (the SHA-256 of the certificate's DER), plain or \
                        in pairs separated by ':' (AB:CD:...), as `openssl x509 -noout -fingerprint \
                        -sha256` prints it";

impl FromStr for Fingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadFingerprint(s.to_owned());
        let s = s.trim();
        let hex: String = if s.contains(':') {
            // In pairs: every group exactly two digits.
            let groups: Vec<&str> = s.split(':').collect();
            if groups.len() != 32 || groups.iter().any(|g| g.len() != 2) {
                return Err(bad());
            }
            groups.concat()
        } else {
            s.to_owned()
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(bytes))
    }
}

/// The SHA-256 fingerprint of a certificate given as PEM (its first
/// `CERTIFICATE` block) or DER, formatted as a deny-list line
/// (`AB:CD:...`, 32 pairs).
pub fn certificate_fingerprint(pem_or_der: &[u8]) -> Result<String, DenyListError> {
    Fingerprint::of_certificate(pem_or_der).map(|f| f.to_string())
}

/// Why a deny list or a certificate could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DenyListError {
    /// A line is neither a fingerprint, a comment nor blank.
    #[error(
        "{}line {line}: {text:?} is not a certificate fingerprint; {EXPECTED}; \
         '#' starts a comment",
        path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default()
    )]
    Malformed {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// The line number, from 1.
        line: usize,
        /// The offending text (comment removed, at most 120 characters).
        text: String,
    },
    /// The file could not be read.
    #[error("could not read the deny list {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The input to fingerprint is not a certificate.
    #[error("cannot fingerprint the certificate: {0}")]
    Certificate(String),
}

struct Shared {
    set: RwLock<Arc<BTreeSet<Fingerprint>>>,
    /// Bumped on every replacement; the transport watches it to close the
    /// connections of newly denied certificates.
    version: watch::Sender<u64>,
}

/// The certificates a transport refuses: a set of [`Fingerprint`]s behind
/// a cheap, cloneable handle. Clones share the set, so the holder of one
/// can [`replace`](DenyList::replace) it while the transport runs; open
/// connections whose certificate the new set denies are closed promptly.
/// See the [module documentation](crate::deny) for the file format and an
/// example.
#[derive(Clone)]
pub struct DenyList {
    shared: Arc<Shared>,
}

impl Default for DenyList {
    fn default() -> Self {
        Self::new(BTreeSet::new())
    }
}

impl fmt::Debug for DenyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenyList")
            .field("fingerprints", &self.len())
            .finish()
    }
}

impl DenyList {
    /// A deny list holding `fingerprints`.
    pub fn new(fingerprints: impl IntoIterator<Item = Fingerprint>) -> Self {
        Self {
            shared: Arc::new(Shared {
                set: RwLock::new(Arc::new(fingerprints.into_iter().collect())),
                version: watch::channel(0).0,
            }),
        }
    }

    /// A deny list from the text of a deny-list file.
    pub fn parse(text: &str) -> Result<Self, DenyListError> {
        Ok(Self::new(Fingerprint::parse_list(text)?))
    }

    /// A deny list read from a file.
    pub fn load(path: &Path) -> Result<Self, DenyListError> {
        Ok(Self::new(read_list(path)?))
    }

    /// Replaces the set (for every clone of this handle). Open connections
    /// of certificates it denies are closed.
    pub fn replace(&self, fingerprints: impl IntoIterator<Item = Fingerprint>) {
        let set = Arc::new(fingerprints.into_iter().collect());
        *self
            .shared
            .set
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = set;
        self.shared.version.send_modify(|v| *v += 1);
    }

    /// Reads the file again and replaces the set with it; returns how many
    /// fingerprints it holds. On error the current set stays.
    pub fn reload_from(&self, path: &Path) -> Result<usize, DenyListError> {
        let set = read_list(path)?;
        let len = set.len();
        self.replace(set);
        Ok(len)
    }

    /// Whether `fingerprint` is denied.
    pub fn contains(&self, fingerprint: &Fingerprint) -> bool {
        self.current().contains(fingerprint)
    }

    /// How many fingerprints are denied.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// Whether nothing is denied.
    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// The denied fingerprints, in order.
    pub fn fingerprints(&self) -> Vec<Fingerprint> {
        self.current().iter().copied().collect()
    }

    fn current(&self) -> Arc<BTreeSet<Fingerprint>> {
        self.shared
            .set
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A receiver that sees every later replacement (its value counts
    /// them): whoever holds connections of its own (another front door of
    /// the node) waits on it to close those of newly denied certificates.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.version.subscribe()
    }
}

fn read_list(path: &Path) -> Result<BTreeSet<Fingerprint>, DenyListError> {
    let text = std::fs::read_to_string(path).map_err(|source| DenyListError::Io {
        path: path.to_owned(),
        source,
    })?;
    Fingerprint::parse_list(&text).map_err(|error| match error {
        DenyListError::Malformed { line, text, .. } => DenyListError::Malformed {
            path: Some(path.to_owned()),
            line,
            text,
        },
        other => other,
    })
}

/// Where a connection is checked against the deny list, for the log.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Check {
    /// An incoming connection, right after its TLS handshake.
    Incoming,
    /// A peer we dialed, right after the TLS handshake.
    Dialed,
    /// An open connection, after the list was replaced.
    Open,
}

/// The one deny-list check: if the certificate the other side of
/// `connection` presented is on the configured deny list, closes the
/// connection with [`CLOSE_DENIED`], counts and logs it (fingerprint and
/// identity), and returns true.
pub(crate) fn refuse_if_denied(
    inner: &Inner,
    connection: &quinn::Connection,
    check: Check,
) -> bool {
    let Some(deny_list) = &inner.config.deny_list else {
        return false;
    };
    let Some(der) = crate::tls::peer_end_entity(connection).ok() else {
        return false;
    };
    let fingerprint = Fingerprint::of_der(der.as_ref());
    if !deny_list.contains(&fingerprint) {
        return false;
    }
    Counters::add(&inner.counters.connections_denied, 1);
    let identity = Caller::from_certificate(&der, &inner.config.cluster_id)
        .map(|caller| caller.to_string())
        .unwrap_or_else(|_| "an unknown identity".to_owned());
    let remote = connection.remote_address();
    let (what, log) = match check {
        Check::Incoming => (
            "refused a connection",
            inner.should_log_refusal(remote, "denied"),
        ),
        Check::Dialed => (
            "refused to connect to a peer",
            inner.should_log_refusal(remote, "denied"),
        ),
        Check::Open => ("closed an open connection", true),
    };
    if log {
        warn!(node = inner.local(), %remote, %identity, %fingerprint, "{what}: its certificate is on the deny list");
    } else {
        debug!(node = inner.local(), %remote, %identity, %fingerprint, "{what}: its certificate is on the deny list");
    }
    let reason = format!(
        "the certificate of {identity} (SHA-256 {fingerprint}) is revoked: it is on the deny list \
         of node {}; ask the cluster operator for a new certificate",
        inner.local()
    );
    connection.close(CLOSE_DENIED.into(), reason.as_bytes());
    true
}

/// Resolves once `connection` has been closed because a replacement of the
/// deny list denies its certificate; never without a deny list.
pub(crate) async fn closed_when_denied(inner: &Inner, connection: &quinn::Connection) {
    let Some(deny_list) = &inner.config.deny_list else {
        return std::future::pending().await;
    };
    let mut changes = deny_list.subscribe();
    // Checked once after subscribing, so a replacement made since the
    // handshake's check is not missed.
    loop {
        if refuse_if_denied(inner, connection, Check::Open) {
            return;
        }
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, Role};

    const HEX: &str = "3f1a00ffe1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbcc";

    fn with_colons(hex: &str) -> String {
        hex.as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons_in_any_case() {
        let plain: Fingerprint = HEX.parse().unwrap();
        let upper: Fingerprint = HEX.to_uppercase().parse().unwrap();
        let colons: Fingerprint = with_colons(HEX).parse().unwrap();
        let upper_colons: Fingerprint = with_colons(&HEX.to_uppercase()).parse().unwrap();
        assert_eq!(plain, upper);
        assert_eq!(plain, colons);
        assert_eq!(plain, upper_colons);
        // Display is upper case with colons, and parses back.
        assert_eq!(plain.to_string(), with_colons(&HEX.to_uppercase()));
        assert_eq!(plain.to_string().parse::<Fingerprint>().unwrap(), plain);
        for bad in [
            "",
            &HEX[..62],
            &format!("{HEX}00"),
            &HEX.replace('a', "g"),
            // Colons in the wrong places.
            &format!("{}:{}", &HEX[..3], &HEX[3..]),
            &with_colons(HEX).replacen(':', "", 1),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_list_skips_comments_and_blank_lines() {
        let text = format!(
            "# revoked certificates\n\n  {HEX}  \n{}  # same one, other spelling\n\t\n# end\n",
            with_colons(&HEX.to_uppercase())
        );
        let set = Fingerprint::parse_list(&text).unwrap();
        assert_eq!(set.len(), 1);
        assert!(Fingerprint::parse_list("# nothing\n\n").unwrap().is_empty());
    }

    #[test]
    fn a_malformed_line_is_named_by_number_with_the_expected_format() {
        let text = format!("# ok\n{HEX}\n\nnot-a-fingerprint\n{HEX}\n");
        let error = Fingerprint::parse_list(&text).unwrap_err();
        assert!(
            matches!(&error, DenyListError::Malformed { line: 4, text, path: None } if text == "not-a-fingerprint"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.starts_with("line 4: "), "{message}");
        assert!(message.contains("64 hex digits"), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deny.txt");
        std::fs::write(&path, "\n\nABCD\n").unwrap();
        let error = DenyList::load(&path).unwrap_err();
        assert!(
            matches!(&error, DenyListError::Malformed { line: 3, path: Some(p), .. } if p == &path),
            "{error:?}"
        );
        assert!(error.to_string().contains("deny.txt: line 3"), "{error}");
        // A reload that fails keeps the current set.
        let list = DenyList::parse(HEX).unwrap();
        assert!(list.reload_from(&path).is_err());
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn a_certificate_has_one_fingerprint_from_pem_or_der() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let issued = ca.issue_client("main", "alice", Role::ReadOnly).unwrap();
        let identity = issued.identity(ca.cert_pem()).unwrap();
        let der = identity.chain()[0].as_ref();
        let from_pem = certificate_fingerprint(issued.cert_pem().as_bytes()).unwrap();
        let from_der = certificate_fingerprint(der).unwrap();
        assert_eq!(from_pem, from_der);
        assert_eq!(from_pem, Fingerprint::of_der(der).to_string());
        assert_eq!(from_pem.len(), 32 * 3 - 1);
        assert!(certificate_fingerprint(b"hello").is_err());
        assert!(certificate_fingerprint(b"-----BEGIN CERTIFICATE-----\nxx\n").is_err());
    }

    #[test]
    fn clones_share_the_set_and_replacements_are_announced() {
        let list = DenyList::default();
        let clone = list.clone();
        let changes = clone.subscribe();
        let fingerprint: Fingerprint = HEX.parse().unwrap();
        assert!(!clone.contains(&fingerprint));
        list.replace([fingerprint]);
        assert!(clone.contains(&fingerprint));
        assert!(changes.has_changed().unwrap());
        assert_eq!(clone.fingerprints(), vec![fingerprint]);
    }
}
