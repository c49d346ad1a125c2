//! System packages from Debian: clang and libclang-dev to build RocksDB's
//! bindings (every build), what the tests add (protoc for etcd-client), and
//! what `cargo xtask bench` adds (etcd, protoc, a font).

use std::process::Command;

use anyhow::{Result, bail};

/// Debian packages the build and the tests need.
pub(crate) const PACKAGES: &[&str] = &["clang", "libclang-dev"];

/// What the tests add: `protoc` and protobuf's well-known types, for the
/// etcd-client crate the test-only member `etcd-client-tests` builds; a
/// real etcd, which the differential and recipe tests compare raft-kv
/// with; Node.js and npm, which run etcd's client recipes with the etcd3
/// npm package (a node already on the PATH is used as it is).
pub(crate) const TEST_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    "libprotobuf-dev",
    "etcd-server",
    "nodejs",
    "npm",
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

/// Whether the program a package brings is on the PATH already (a Node.js
/// from another source than Debian's, say).
fn on_path(package: &str) -> bool {
    let program = match package {
        "nodejs" => "node",
        "npm" => "npm",
        _ => return false,
    };
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Everything a cargo build of the workspace needs from the machine: the
/// system packages, then RocksDB's C++ library (built once per machine).
pub(crate) fn ready_to_build() -> Result<()> {
    ensure(PACKAGES)?;
    crate::rocksdb::ensure().map(drop)
}

/// Installs missing packages when running as root on Debian; otherwise says
/// exactly what to run and fails.
pub(crate) fn ensure(packages: &[&str]) -> Result<()> {
    if !std::path::Path::new("/etc/debian_version").exists() {
        eprintln!(
            "xtask: not a Debian system; make sure these (Debian names) are installed: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !installed(p) && !on_path(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let command = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing system packages: {}. Install them with:\n    sudo sh -c '{command}'",
            missing.join(" ")
        );
    }
    eprintln!(
        "xtask: installing missing system packages: {}",
        missing.join(" ")
    );
    let update = Command::new("apt-get").arg("update").status()?;
    if !update.success() {
        bail!("`apt-get update` failed; check the network and run: {command}");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    if !status.success() {
        bail!("`apt-get install` failed; run it yourself: {command}");
    }
    Ok(())
}
