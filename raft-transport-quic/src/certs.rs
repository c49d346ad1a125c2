//! Certificates: a cluster CA, node and client certificates (rcgen), PEM
//! files, and the in-memory [`TlsIdentity`] an endpoint presents.
//!
//! Every node and every client presents a certificate chained to the
//! cluster CA; there is no other way in. A node certificate names the node:
//! it carries the DNS name [`node_server_name`]`(cluster, id)` as a subject
//! alternative name (SAN), next to the node's addresses (IPs and host names,
//! for clients that connect by address). The peer handshake checks that a
//! node's certificate carries the name of the node it claims to be, so a
//! client certificate, or node 2's, cannot speak for node 1.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use raft_core::NodeId;

use crate::caller::{Role, role_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a generated CA certificate is valid: ten years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long generated node and client certificates are valid: two years.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Certificates start being valid this long before they are made, so that
/// clocks a little behind still accept them.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Why a certificate could not be generated, read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to generate or sign.
    #[error("could not generate the {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A PEM input held no certificate or no private key, or could not be parsed.
    #[error(
        "could not read {what} from PEM: {reason}; expected a PEM file as written by `raft-cli certs`"
    )]
    Pem {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("could not {action} {path}: {source}")]
    File {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A cluster id or client name is not usable inside a DNS name.
    #[error(
        "invalid {what} {value:?}: use 1 to 63 characters of a-z, 0-9 and '-', not starting \
         or ending with '-'"
    )]
    InvalidName {
        /// "cluster id" or "client name".
        what: &'static str,
        /// The refused value.
        value: String,
    },
    /// Node id 0 is reserved.
    #[error("node id 0 is not a valid node id; use 1 or more")]
    InvalidNodeId,
    /// rustls refused the certificate or key when building a TLS config.
    #[error(
        "TLS configuration refused: {0}; check that the certificate and key belong together and chain to the CA"
    )]
    Tls(#[from] rustls::Error),
}

/// The DNS name a node's certificate carries to prove it is node `node_id`
/// of cluster `cluster_id`: `node-<id>.<cluster>.raft.invalid` (the
/// `.invalid` top-level domain can never collide with a real host name).
pub fn node_server_name(cluster_id: &str, node_id: NodeId) -> String {
    format!("node-{node_id}.{cluster_id}.raft.invalid")
}

/// The DNS name a client certificate carries: `client-<name>.<cluster>.raft.invalid`.
pub fn client_server_name(cluster_id: &str, client_name: &str) -> String {
    format!("client-{client_name}.{cluster_id}.raft.invalid")
}

/// Checks that `value` can be one DNS label (cluster ids and client names
/// are embedded in certificate names).
pub(crate) fn validate_label(what: &'static str, value: &str) -> Result<(), CertError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && !value.starts_with('-')
        && !value.ends_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidName {
            what,
            value: value.to_owned(),
        })
    }
}

/// A cluster certificate authority: signs node and client certificates.
///
/// Keep its key file private: whoever holds it can mint node certificates.
#[derive(Clone)]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    leaf_validity: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new CA (ECDSA P-256, valid for [`DEFAULT_CA_VALIDITY`])
    /// whose subject is `common_name`, e.g. `"raft cluster prod CA"`.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(|source| CertError::Generate {
            what: "CA key",
            source,
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, DEFAULT_CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                what: "CA certificate",
                source,
            })?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            leaf_validity: DEFAULT_LEAF_VALIDITY,
        })
    }

    /// A CA from its certificate and private key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let ca = Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            leaf_validity: DEFAULT_LEAF_VALIDITY,
        };
        ca.issuer()?; // validate both now rather than at first use
        Ok(ca)
    }

    /// Reads a CA from a certificate file and a key file (PEM).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        Self::from_pem(&read_file(cert_path)?, &read_file(key_path)?)
    }

    /// Writes the CA certificate and key as PEM files; the key file is
    /// readable by its owner only (on Unix).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_file(cert_path, &self.cert_pem, false)?;
        write_file(key_path, &self.key_pem, true)
    }

    /// Sets how long certificates issued from now on are valid (default
    /// [`DEFAULT_LEAF_VALIDITY`]).
    pub fn with_leaf_validity(mut self, validity: Duration) -> Self {
        self.leaf_validity = validity;
        self
    }

    /// The CA certificate in PEM: every node and client trusts it.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues the certificate of node `node_id` in cluster `cluster_id`. It
    /// carries [`node_server_name`] and each of `addresses` (`"10.0.0.1"`,
    /// `"10.0.0.1:7000"`, `"[::1]:7000"`, `"db1.example.com:7000"`; ports
    /// are dropped) as subject alternative names, and may be used both as a
    /// server and as a client certificate.
    pub fn issue_node<A: AsRef<str>>(
        &self,
        cluster_id: &str,
        node_id: NodeId,
        addresses: impl IntoIterator<Item = A>,
    ) -> Result<IssuedCert, CertError> {
        validate_label("cluster id", cluster_id)?;
        if node_id == 0 {
            return Err(CertError::InvalidNodeId);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("raft node {node_id} of {cluster_id}"),
        );
        params
            .subject_alt_names
            .push(dns_san(&node_server_name(cluster_id, node_id))?);
        for address in addresses {
            params
                .subject_alt_names
                .push(address_san(address.as_ref())?);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, "node certificate")
    }

    /// Issues a client certificate named `client_name` with `role` for
    /// cluster `cluster_id` (nodes read both from it: see
    /// [`Caller`](crate::Caller)). It can only authenticate a client, never
    /// a server or a peer node.
    pub fn issue_client(
        &self,
        cluster_id: &str,
        client_name: &str,
        role: Role,
    ) -> Result<IssuedCert, CertError> {
        validate_label("cluster id", cluster_id)?;
        validate_label("client name", client_name)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("raft client {client_name} of {cluster_id}"),
        );
        params
            .subject_alt_names
            .push(dns_san(&client_server_name(cluster_id, client_name))?);
        params
            .subject_alt_names
            .push(dns_san(&role_name(cluster_id, role))?);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, "client certificate")
    }

    /// Issues a node certificate and returns it as a ready-to-use identity.
    pub fn node_identity<A: AsRef<str>>(
        &self,
        cluster_id: &str,
        node_id: NodeId,
        addresses: impl IntoIterator<Item = A>,
    ) -> Result<TlsIdentity, CertError> {
        self.issue_node(cluster_id, node_id, addresses)?
            .identity(&self.cert_pem)
    }

    /// Issues a client certificate and returns it as a ready-to-use identity.
    pub fn client_identity(
        &self,
        cluster_id: &str,
        client_name: &str,
        role: Role,
    ) -> Result<TlsIdentity, CertError> {
        self.issue_client(cluster_id, client_name, role)?
            .identity(&self.cert_pem)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, CertError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| CertError::Pem {
            what: "the CA private key",
            reason: e.to_string(),
        })?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(|e| CertError::Pem {
            what: "the CA certificate",
            reason: e.to_string(),
        })
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        what: &'static str,
    ) -> Result<IssuedCert, CertError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, self.leaf_validity);
        let key = KeyPair::generate().map_err(|source| CertError::Generate { what, source })?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|source| CertError::Generate { what, source })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A certificate issued by a [`CertificateAuthority`], with its private key.
#[derive(Clone)]
pub struct IssuedCert {
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes the certificate and key as PEM files; the key file is readable
    /// by its owner only (on Unix).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), CertError> {
        write_file(cert_path, &self.cert_pem, false)?;
        write_file(key_path, &self.key_pem, true)
    }

    /// This certificate as an identity trusting the CA(s) in `ca_pem`.
    pub fn identity(&self, ca_pem: &str) -> Result<TlsIdentity, CertError> {
        TlsIdentity::from_pem(ca_pem, &self.cert_pem, &self.key_pem)
    }
}

/// What an endpoint needs for mutual TLS: the CA certificate(s) it trusts,
/// its own certificate chain and its private key.
pub struct TlsIdentity {
    pub(crate) roots: Vec<CertificateDer<'static>>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("roots", &self.roots.len())
            .field("chain", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl TlsIdentity {
    /// An identity from PEM text: `ca_pem` holds one or more trusted CA
    /// certificates (several during a CA rotation), `cert_pem` this
    /// endpoint's certificate (optionally followed by intermediates), and
    /// `key_pem` its private key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let roots = parse_certs("the CA certificate", ca_pem)?;
        let chain = parse_certs("the certificate", cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| CertError::Pem {
                what: "the private key",
                reason: e.to_string(),
            })?;
        Ok(Self { roots, chain, key })
    }

    /// Reads an identity from three PEM files (as written by `raft-cli certs`).
    pub fn from_pem_files(
        ca_path: &Path,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, CertError> {
        Self::from_pem(
            &read_file(ca_path)?,
            &read_file(cert_path)?,
            &read_file(key_path)?,
        )
    }

    /// The trusted CA certificates (DER).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// This endpoint's certificate chain (DER), end entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When this endpoint's certificate stops being valid (its "not
    /// after"), as seconds since the Unix epoch. Nodes refuse to start with
    /// an expired certificate and report the date in their status.
    pub fn expires(&self) -> Result<i64, CertError> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let end_entity = self.chain.first().ok_or_else(|| CertError::Pem {
            what: "the certificate",
            reason: "the chain is empty".into(),
        })?;
        let (_, cert) =
            X509Certificate::from_der(end_entity.as_ref()).map_err(|e| CertError::Pem {
                what: "the certificate",
                reason: e.to_string(),
            })?;
        Ok(cert.validity().not_after.timestamp())
    }

    /// This endpoint's private key (DER).
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

fn parse_certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            what,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now).into();
    params.not_after = now.checked_add(validity).unwrap_or(now).into();
}

fn dns_san(name: &str) -> Result<SanType, CertError> {
    let ia5 = name
        .to_owned()
        .try_into()
        .map_err(|source| CertError::Generate {
            what: "subject alternative name",
            source,
        })?;
    Ok(SanType::DnsName(ia5))
}

/// A SAN for an address: an IP, a host name, either with an optional port.
fn address_san(address: &str) -> Result<SanType, CertError> {
    if let Ok(socket) = address.parse::<SocketAddr>() {
        return Ok(SanType::IpAddress(socket.ip()));
    }
    let trimmed = address.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => address,
    };
    dns_san(host)
}

fn read_file(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::File {
        action: "read",
        path: path.display().to_string(),
        source,
    })
}

/// Writes `contents` to `path` atomically: a new file beside it (mode 0600
/// when `private`, on Unix, whatever the umask), fsynced, then renamed over
/// `path`, and the directory fsynced. A crash leaves the old file or the
/// new one, never half of one; an existing file's mode is not kept (a
/// key is 0600 even if an older one was readable by others); a symbolic
/// link at `path` is refused rather than followed.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    let error = |source| CertError::File {
        action: "write",
        path: path.display().to_string(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(error(std::io::Error::other(
            "it is a symbolic link; write the file elsewhere, or remove the link first",
        )));
    }
    let name = path
        .file_name()
        .ok_or_else(|| error(std::io::Error::other("the path names no file")))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        if private {
            // The umask may have taken bits away, never added them; set
            // the mode exactly anyway.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_says_when_it_expires() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let two_years = DEFAULT_LEAF_VALIDITY.as_secs() as i64;
        let node = ca.node_identity("main", 1, ["127.0.0.1"]).unwrap();
        assert!((node.expires().unwrap() - (now + two_years)).abs() < 60);
        let short = ca
            .with_leaf_validity(Duration::from_secs(3 * 86_400))
            .client_identity("main", "alice", Role::ReadOnly)
            .unwrap();
        assert!((short.expires().unwrap() - (now + 3 * 86_400)).abs() < 60);
    }

    /// Review finding: a key was 0600 only when created (an overwrite kept
    /// the old mode), symbolic links were followed, and writes were not
    /// atomic.
    #[cfg(unix)]
    #[test]
    fn keys_are_written_atomically_private_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("node-1.key");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // An older key left readable by everyone is replaced by a 0600 one.
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_file(&key, "new", true).unwrap();
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "new");
        assert_eq!(mode(&key), 0o600);
        // Certificates are public.
        let cert = dir.path().join("node-1.pem");
        write_file(&cert, "cert", false).unwrap();
        assert_eq!(mode(&cert), 0o644);
        // A link planted where a key goes is refused, its target untouched.
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "theirs").unwrap();
        let link = dir.path().join("ca.key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_file(&link, "secret", true).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs");
        // Nothing but the files themselves is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn labels_are_validated() {
        assert!(validate_label("cluster id", "prod-1").is_ok());
        for bad in ["", "-a", "a-", "Prod", "a.b", "a b", &"x".repeat(64)] {
            assert!(validate_label("cluster id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pem_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA").unwrap();
        ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
            .unwrap();
        let loaded =
            CertificateAuthority::load(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
                .unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());

        let node = loaded
            .issue_node(
                "main",
                3,
                ["127.0.0.1:7000", "[::1]:7000", "db1.example.com:7000"],
            )
            .unwrap();
        node.save(&dir.path().join("n3.pem"), &dir.path().join("n3.key"))
            .unwrap();
        let identity = TlsIdentity::from_pem_files(
            &dir.path().join("ca.pem"),
            &dir.path().join("n3.pem"),
            &dir.path().join("n3.key"),
        )
        .unwrap();
        assert_eq!(identity.chain().len(), 1);
        assert_eq!(identity.roots().len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("n3.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key files are private");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        assert!(matches!(
            ca.issue_node("main", 0, ["127.0.0.1"]),
            Err(CertError::InvalidNodeId)
        ));
        assert!(matches!(
            ca.issue_node("Main", 1, ["127.0.0.1"]),
            Err(CertError::InvalidName { .. })
        ));
        assert!(CertificateAuthority::from_pem("not pem", ca.key_pem()).is_err());
        assert!(TlsIdentity::from_pem(ca.cert_pem(), "", "").is_err());
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            CertificateAuthority::load(missing, missing),
            Err(CertError::File { .. })
        ));
    }
}
