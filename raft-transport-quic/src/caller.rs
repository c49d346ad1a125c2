//! Who is on the other end of a client connection, from the certificate it
//! presented: a node of the cluster, or a named client with a [`Role`].
//!
//! Mutual TLS already proved that the certificate chains to the cluster CA;
//! this reads what it says. A client certificate carries two DNS names as
//! subject alternative names: [`client_server_name`]`(cluster, name)` and
//! [`role_name`]`(cluster, role)`; a node certificate carries
//! [`node_server_name`]`(cluster, id)`. Names of another cluster are
//! ignored. A client certificate without a role name (issued before roles
//! existed) gets [`Role::ReadOnly`]: reissue it with a role to write.
//!
//! [`client_server_name`]: crate::certs::client_server_name
//! [`node_server_name`]: crate::certs::node_server_name

use std::fmt;
use std::str::FromStr;

use raft_core::NodeId;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a client certificate allows, each role including the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads, scans, watches and status.
    ReadOnly,
    /// Also writes.
    ReadWrite,
    /// Also membership changes, leader transfer and fault injection.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::ReadOnly, Role::ReadWrite, Role::Admin];

    /// The role's name in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "readonly",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of `admin`, `readwrite`, `readonly`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use admin, readwrite or readonly")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// The DNS name a client certificate of `cluster_id` carries for `role`.
pub fn role_name(cluster_id: &str, role: Role) -> String {
    format!("role-{role}.{cluster_id}.raft.invalid")
}

/// The other end of a client connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Caller {
    /// A node of the cluster (a follower forwarding a request, or a node's
    /// own tooling), by the id its certificate names.
    Node(NodeId),
    /// A client, by the name and role its certificate carries.
    Client {
        /// The name it was issued for (`raft-cli certs client --name`).
        name: String,
        /// What it may do.
        role: Role,
    },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Node(id) => write!(f, "node {id}"),
            Caller::Client { name, role } => write!(f, "client {name} ({role})"),
        }
    }
}

impl Caller {
    /// Reads the caller from the end-entity certificate `der` (already
    /// verified against the CA) for cluster `cluster_id`.
    pub fn from_certificate(der: &CertificateDer<'_>, cluster_id: &str) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("its certificate could not be parsed: {e}"))?;
        let suffix = format!(".{cluster_id}.raft.invalid");
        let mut node = None;
        let mut name = None;
        let mut role: Option<Role> = None;
        let names = cert
            .subject_alternative_name()
            .map_err(|e| format!("its subject alternative names could not be parsed: {e}"))?;
        for general in names.iter().flat_map(|san| san.value.general_names.iter()) {
            let GeneralName::DNSName(dns) = general else {
                continue;
            };
            let Some(label) = dns.strip_suffix(&suffix) else {
                continue;
            };
            if let Some(id) = label.strip_prefix("node-") {
                node = id.parse::<NodeId>().ok().filter(|id| *id > 0).or(node);
            } else if let Some(client) = label.strip_prefix("client-") {
                name = Some(client.to_owned());
            } else if let Some(r) = label.strip_prefix("role-") {
                // The highest role named wins (one is issued per certificate).
                if let Ok(r) = r.parse::<Role>() {
                    role = role.max(Some(r));
                }
            }
        }
        match (node, name) {
            (Some(id), None) => Ok(Caller::Node(id)),
            (None, Some(name)) => Ok(Caller::Client {
                name,
                role: role.unwrap_or(Role::ReadOnly),
            }),
            (Some(_), Some(_)) => Err(format!(
                "its certificate names both a node and a client of cluster {cluster_id}; \
                 issue separate certificates with raft-cli certs"
            )),
            (None, None) => Err(format!(
                "its certificate names neither a node nor a client of cluster {cluster_id}; \
                 issue one with `raft-cli certs client --name NAME --role ROLE`"
            )),
        }
    }

    /// The role this caller acts with on its own behalf (a node forwarding
    /// a request acts for the client it names instead).
    pub fn role(&self) -> Option<Role> {
        match self {
            Caller::Node(_) => None,
            Caller::Client { role, .. } => Some(*role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    fn end_entity(identity: &crate::TlsIdentity) -> CertificateDer<'static> {
        identity.chain()[0].clone()
    }

    #[test]
    fn certificates_say_who_holds_them() {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        for role in Role::ALL {
            let client = ca.client_identity("main", "alice", role).unwrap();
            assert_eq!(
                Caller::from_certificate(&end_entity(&client), "main").unwrap(),
                Caller::Client {
                    name: "alice".into(),
                    role
                }
            );
        }
        let node = ca.node_identity("main", 3, ["127.0.0.1"]).unwrap();
        assert_eq!(
            Caller::from_certificate(&end_entity(&node), "main").unwrap(),
            Caller::Node(3)
        );
        // Names of another cluster do not count.
        let other = ca.client_identity("other", "bob", Role::Admin).unwrap();
        assert!(Caller::from_certificate(&end_entity(&other), "main").is_err());
    }

    #[test]
    fn roles_parse_and_order() {
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("root".parse::<Role>().is_err());
        assert!(Role::ReadOnly < Role::ReadWrite && Role::ReadWrite < Role::Admin);
    }
}
