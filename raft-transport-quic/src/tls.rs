//! rustls and quinn configurations for mutual TLS, and the check that a
//! peer's certificate names the node it claims to be.
//!
//! Every configuration here verifies the other side against the cluster CA:
//! servers require a client certificate, clients verify the server's. There
//! is deliberately no way to build one that skips or weakens verification.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use raft_core::NodeId;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

use crate::caller::Caller;
use crate::certs::{CertError, TlsIdentity, node_server_name};
use crate::wire::{CLIENT_ALPN, PEER_ALPN};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(identity: &TlsIdentity) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for ca in &identity.roots {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// The server side of a node's endpoint: TLS 1.3 only, a client certificate
/// chained to the CA required, both ALPNs offered.
pub(crate) fn server_crypto(identity: &TlsIdentity) -> Result<QuicServerConfig, CertError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(identity)?, provider.clone())
            .build()
            .map_err(|e| CertError::Tls(rustls::Error::General(format!("client verifier: {e}"))))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![PEER_ALPN.to_vec(), CLIENT_ALPN.to_vec()];
    QuicServerConfig::try_from(config)
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))
}

/// The client side: TLS 1.3 only, the server verified against the CA, our
/// certificate presented, `alpn` offered.
pub(crate) fn client_crypto(
    identity: &TlsIdentity,
    alpn: &[u8],
) -> Result<QuicClientConfig, CertError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(identity)?)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    QuicClientConfig::try_from(config)
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))
}

/// The ALPN protocol a connection negotiated, if any.
pub(crate) fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
}

/// Checks that our own certificate names node `node_id` of `cluster_id`,
/// so that a wrong certificate fails at start rather than at every peer.
pub(crate) fn check_own_certificate(
    identity: &TlsIdentity,
    cluster_id: &str,
    node_id: NodeId,
) -> Result<(), String> {
    let end_entity = identity
        .chain
        .first()
        .ok_or_else(|| "the certificate chain is empty".to_owned())?;
    let parsed = ParsedCertificate::try_from(end_entity)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let expected = node_server_name(cluster_id, node_id);
    let name = ServerName::try_from(expected.clone())
        .map_err(|e| format!("invalid name {expected}: {e}"))?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|_| {
        format!(
            "the certificate does not carry the name {expected}, so it is not the certificate of node {node_id} \
             of cluster {cluster_id}; issue one with CertificateAuthority::issue_node (raft-cli certs)"
        )
    })
}

/// The certificate the other side of `connection` presented (already
/// verified against the CA by the TLS handshake).
pub(crate) fn peer_end_entity(
    connection: &quinn::Connection,
) -> Result<CertificateDer<'static>, String> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "it presented no certificate".to_owned())?;
    chain
        .first()
        .cloned()
        .ok_or_else(|| "it presented an empty certificate chain".to_owned())
}

/// Checks that the certificate the other side of `connection` presented
/// names node `node_id` of `cluster_id`.
pub(crate) fn verify_node_certificate(
    connection: &quinn::Connection,
    cluster_id: &str,
    node_id: NodeId,
) -> Result<(), String> {
    let end_entity = peer_end_entity(connection)?;
    let parsed = ParsedCertificate::try_from(&end_entity)
        .map_err(|e| format!("its certificate could not be parsed: {e}"))?;
    let expected = node_server_name(cluster_id, node_id);
    let name = ServerName::try_from(expected.clone())
        .map_err(|e| format!("invalid name {expected}: {e}"))?;
    rustls::client::verify_server_name(&parsed, &name)
        .map_err(|_| format!("its certificate does not carry the name {expected}, so it is not node {node_id} of cluster {cluster_id}"))
}

/// Who the other side of a client connection is, from the certificate it
/// presented.
pub(crate) fn caller(connection: &quinn::Connection, cluster_id: &str) -> Result<Caller, String> {
    Caller::from_certificate(&peer_end_entity(connection)?, cluster_id)
}
