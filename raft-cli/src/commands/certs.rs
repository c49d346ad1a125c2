//! `certs`: a cluster CA, node and client certificates, as PEM files in one
//! directory (`ca.pem`/`ca.key`, `node-N.pem`/`node-N.key`,
//! `NAME.pem`/`NAME.key`). Needs no running cluster.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use raft_transport_quic::{CertificateAuthority, Role};
use serde_json::json;

use super::{Context, Outcome};
use crate::args::CertsCommand;

/// The CA certificate's file name in the directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in the directory.
pub const CA_KEY: &str = "ca.key";

/// Runs a `certs` subcommand.
pub fn run(context: &Context, command: CertsCommand) -> anyhow::Result<Outcome> {
    let (cert, key, created) = match command {
        CertsCommand::Ca {
            dir,
            cluster,
            force,
        } => create_ca(&dir, &cluster, force)?,
        CertsCommand::Node {
            dir,
            id,
            addresses,
            cluster,
        } => with_created(issue_node(&dir, id, &addresses, &cluster)?),
        CertsCommand::Client {
            dir,
            name,
            role,
            cluster,
        } => with_created(issue_client(&dir, &name, role, &cluster)?),
    };
    context.print(
        || {
            if created {
                format!("wrote {} and {}\n", cert.display(), key.display())
            } else {
                format!(
                    "kept the existing CA {} and {} (--force replaces it)\n",
                    cert.display(),
                    key.display()
                )
            }
        },
        || json!({"cert": cert, "key": key, "created": created}),
    )?;
    Ok(Outcome::Success)
}

fn with_created((cert, key): (PathBuf, PathBuf)) -> (PathBuf, PathBuf, bool) {
    (cert, key, true)
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create the directory {}; check the path and its permissions",
            dir.display()
        )
    })
}

/// Writes `dir/ca.pem` and `dir/ca.key`. An existing CA is kept (so that
/// scripts may run this every time) unless `force`; the flag says whether a
/// new one was written.
pub fn create_ca(
    dir: &Path,
    cluster: &str,
    force: bool,
) -> anyhow::Result<(PathBuf, PathBuf, bool)> {
    create_dir(dir)?;
    let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !force && cert.exists() && key.exists() {
        load_ca(dir)?;
        return Ok((cert, key, false));
    }
    if !force && (cert.exists() || key.exists()) {
        bail!(
            "{} holds only half a CA (one of {CA_CERT}/{CA_KEY}); remove it or pass --force to \
             replace it (certificates it issued then stop working)",
            dir.display()
        );
    }
    let ca = CertificateAuthority::generate(&format!("raft cluster {cluster} CA"))
        .context("cannot generate the CA")?;
    ca.save(&cert, &key)
        .context("cannot write the CA files; check the directory's permissions")?;
    Ok((cert, key, true))
}

fn load_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    CertificateAuthority::load(&dir.join(CA_CERT), &dir.join(CA_KEY)).with_context(|| {
        format!(
            "cannot load the CA from {} ({CA_CERT} and {CA_KEY}); create one first with \
             `raft-cli certs ca --dir {}`",
            dir.display(),
            dir.display()
        )
    })
}

/// Writes `dir/node-ID.pem` and `dir/node-ID.key`, signed by the CA in `dir`.
pub fn issue_node(
    dir: &Path,
    id: u64,
    addresses: &[String],
    cluster: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca = load_ca(dir)?;
    let issued = ca
        .issue_node(cluster, id, addresses)
        .with_context(|| format!("cannot issue the certificate of node {id}"))?;
    let (cert, key) = (
        dir.join(format!("node-{id}.pem")),
        dir.join(format!("node-{id}.key")),
    );
    issued
        .save(&cert, &key)
        .context("cannot write the node's files; check the directory's permissions")?;
    Ok((cert, key))
}

/// Writes `dir/NAME.pem` and `dir/NAME.key` for a client with `role`,
/// signed by the CA in `dir`.
pub fn issue_client(
    dir: &Path,
    name: &str,
    role: Role,
    cluster: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if name == "ca" || name.starts_with("node-") {
        bail!(
            "the client name {name:?} would overwrite the CA's or a node's files; choose another \
             name (e.g. admin)"
        );
    }
    let ca = load_ca(dir)?;
    let issued = ca
        .issue_client(cluster, name, role)
        .with_context(|| format!("cannot issue the client certificate {name:?}"))?;
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    issued
        .save(&cert, &key)
        .context("cannot write the client's files; check the directory's permissions")?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_transport_quic::TlsIdentity;

    #[test]
    fn a_ca_issues_node_and_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path().join("certs");
        assert!(create_ca(&dir, "local", false).unwrap().2, "created");
        let first = std::fs::read_to_string(dir.join(CA_CERT)).unwrap();
        assert!(!create_ca(&dir, "local", false).unwrap().2, "kept");
        assert_eq!(std::fs::read_to_string(dir.join(CA_CERT)).unwrap(), first);
        assert!(create_ca(&dir, "local", true).unwrap().2, "replaced");
        assert_ne!(std::fs::read_to_string(dir.join(CA_CERT)).unwrap(), first);
        let (cert, key) = issue_node(&dir, 2, &["127.0.0.1".into()], "local").unwrap();
        assert_eq!(cert, dir.join("node-2.pem"));
        TlsIdentity::from_pem_files(&dir.join(CA_CERT), &cert, &key).unwrap();
        let (cert, key) = issue_client(&dir, "admin", Role::Admin, "local").unwrap();
        assert_eq!(key, dir.join("admin.key"));
        TlsIdentity::from_pem_files(&dir.join(CA_CERT), &cert, &key).unwrap();
        assert!(issue_client(&dir, "ca", Role::Admin, "local").is_err());
        assert!(issue_client(&dir, "Bad Name", Role::Admin, "local").is_err());
        assert!(issue_node(&dir, 0, &["127.0.0.1".into()], "local").is_err());
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            issue_client(dir.path(), "admin", Role::Admin, "local").unwrap_err()
        );
        assert!(e.contains("raft-cli certs ca --dir"), "{e}");
    }
}
