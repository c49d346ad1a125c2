//! `certs`: a cluster CA, node and client certificates, as PEM files
//! (`ca.pem`/`ca.key`, `node-N.pem`/`node-N.key`, `NAME.pem`/`NAME.key`).
//! Needs no running cluster.
//!
//! The CA's key is best kept in a directory of its own (`--ca-dir`), apart
//! from the files a node or client is given: whoever reads it can issue
//! certificates of any role. Issuing into the CA's own directory works, with
//! a warning.

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
            ca_dir,
            id,
            addresses,
            cluster,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| dir.clone());
            warn_if_ca_key_beside(&ca_dir, &dir);
            with_created(issue_node(&ca_dir, &dir, id, &addresses, &cluster)?)
        }
        CertsCommand::Client {
            dir,
            ca_dir,
            name,
            role,
            cluster,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| dir.clone());
            warn_if_ca_key_beside(&ca_dir, &dir);
            with_created(issue_client(&ca_dir, &dir, &name, role, &cluster)?)
        }
        CertsCommand::Fingerprint { cert } => {
            let fingerprint = fingerprint(&cert)?;
            context.print(
                || format!("{fingerprint}  # {}\n", cert.display()),
                || json!({"cert": cert, "fingerprint": fingerprint}),
            )?;
            return Ok(Outcome::Success);
        }
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

/// The deny-list line of the certificate in `path`.
pub fn fingerprint(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the certificate {}", path.display()))?;
    raft_transport_quic::certificate_fingerprint(&bytes).with_context(|| {
        format!(
            "{} is not a certificate (PEM or DER); give the .pem file `raft-cli certs` wrote",
            path.display()
        )
    })
}

/// Why issuing into `dir` from the CA in `ca_dir` leaves the CA's key
/// beside the issued key, if it does.
pub fn ca_key_beside(ca_dir: &Path, dir: &Path) -> Option<String> {
    let key = dir.join(CA_KEY);
    let same = match (ca_dir.canonicalize(), dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => ca_dir == dir,
    };
    (same || key.exists()).then(|| {
        format!(
            "the CA key {} sits beside the keys issued into {}: whoever can read that directory \
             (a node's operator, a backup) can issue certificates of any role. Keep the CA in a \
             directory of its own (`raft-cli certs ca --dir ca`) and issue with `--ca-dir ca \
             --dir {}`",
            key.display(),
            dir.display(),
            dir.display()
        )
    })
}

fn warn_if_ca_key_beside(ca_dir: &Path, dir: &Path) {
    if let Some(warning) = ca_key_beside(ca_dir, dir) {
        eprintln!("warning: {warning}");
    }
}

/// Puts the CA certificate (not its key) in `dir` beside the issued files,
/// where a node's or client's configuration expects it.
fn copy_ca_cert(ca_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    let (from, to) = (ca_dir.join(CA_CERT), dir.join(CA_CERT));
    let pem = std::fs::read(&from)
        .with_context(|| format!("cannot read the CA certificate {}", from.display()))?;
    if std::fs::read(&to).ok().as_deref() == Some(pem.as_slice()) {
        return Ok(());
    }
    // A new file renamed over the old one: never written through a link,
    // never seen half-written.
    let temporary = dir.join(format!(".{CA_CERT}.new"));
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        std::io::Write::write_all(&mut file, &pem)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &to)
    };
    write().with_context(|| {
        format!(
            "cannot write {}; check the directory's permissions",
            to.display()
        )
    })
}

/// Writes `dir/node-ID.pem` and `dir/node-ID.key` (and `dir/ca.pem`),
/// signed by the CA in `ca_dir`.
pub fn issue_node(
    ca_dir: &Path,
    dir: &Path,
    id: u64,
    addresses: &[String],
    cluster: &str,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca = load_ca(ca_dir)?;
    create_dir(dir)?;
    copy_ca_cert(ca_dir, dir)?;
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

/// Writes `dir/NAME.pem` and `dir/NAME.key` (and `dir/ca.pem`) for a
/// client with `role`, signed by the CA in `ca_dir`.
pub fn issue_client(
    ca_dir: &Path,
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
    let ca = load_ca(ca_dir)?;
    create_dir(dir)?;
    copy_ca_cert(ca_dir, dir)?;
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
        let (cert, key) = issue_node(&dir, &dir, 2, &["127.0.0.1".into()], "local").unwrap();
        assert_eq!(cert, dir.join("node-2.pem"));
        TlsIdentity::from_pem_files(&dir.join(CA_CERT), &cert, &key).unwrap();
        let (cert, key) = issue_client(&dir, &dir, "admin", Role::Admin, "local").unwrap();
        assert_eq!(key, dir.join("admin.key"));
        TlsIdentity::from_pem_files(&dir.join(CA_CERT), &cert, &key).unwrap();
        assert!(issue_client(&dir, &dir, "ca", Role::Admin, "local").is_err());
        assert!(issue_client(&dir, &dir, "Bad Name", Role::Admin, "local").is_err());
        assert!(issue_node(&dir, &dir, 0, &["127.0.0.1".into()], "local").is_err());
    }

    #[test]
    fn issuing_without_a_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            issue_client(dir.path(), dir.path(), "admin", Role::Admin, "local").unwrap_err()
        );
        assert!(e.contains("raft-cli certs ca --dir"), "{e}");
    }

    /// Review finding: the CA key was written beside the node keys, so
    /// whoever could read a node's files could issue an admin certificate.
    /// Issued from a CA directory of its own, a directory gets the CA
    /// certificate but never its key; issuing beside the key warns.
    #[test]
    fn the_ca_key_stays_in_its_own_directory() {
        let root = tempfile::tempdir().unwrap();
        let (ca_dir, dir) = (root.path().join("ca"), root.path().join("node-1"));
        create_ca(&ca_dir, "local", false).unwrap();
        let (cert, key) = issue_node(&ca_dir, &dir, 1, &["127.0.0.1".into()], "local").unwrap();
        issue_client(&ca_dir, &dir, "admin", Role::Admin, "local").unwrap();
        assert!(!dir.join(CA_KEY).exists(), "the CA key was copied");
        TlsIdentity::from_pem_files(&dir.join(CA_CERT), &cert, &key).unwrap();
        assert_eq!(ca_key_beside(&ca_dir, &dir), None);
        let warning = ca_key_beside(&ca_dir, &ca_dir).expect("a warning");
        assert!(warning.contains("--ca-dir"), "{warning}");
        // A CA key copied in by hand is found too.
        std::fs::copy(ca_dir.join(CA_KEY), dir.join(CA_KEY)).unwrap();
        assert!(ca_key_beside(&ca_dir, &dir).is_some());
    }

    /// A certificate's deny-list line is the fingerprint the nodes compare
    /// (and a deny list made of it parses).
    #[test]
    fn a_fingerprint_is_a_deny_list_line() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        create_ca(dir, "local", false).unwrap();
        let (cert, _) = issue_client(dir, dir, "alice", Role::ReadOnly, "local").unwrap();
        let line = fingerprint(&cert).unwrap();
        let list = raft_transport_quic::DenyList::parse(&format!("# alice\n{line}\n")).unwrap();
        assert_eq!(list.len(), 1);
        let e = format!("{:#}", fingerprint(&dir.join(CA_KEY)).unwrap_err());
        assert!(e.contains("not a certificate"), "{e}");
    }
}
