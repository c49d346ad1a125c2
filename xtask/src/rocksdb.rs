//! RocksDB's C++ library, compiled once per machine.
//!
//! `librocksdb-sys` compiles RocksDB's C++ in its build script, once per
//! cargo profile and whenever its inputs change: on 2 cores that is 12 to 20
//! minutes for the release build, again for the dev build, and again when a
//! lock-file change reaches its build dependencies. The build script also
//! accepts a prebuilt static library (`ROCKSDB_LIB_DIR` with
//! `ROCKSDB_STATIC`), and then only generates the Rust bindings.
//!
//! So xtask builds the library once, optimised, into a per-machine cache
//! (`$XDG_CACHE_HOME/raft-kv/` or `~/.cache/raft-kv/`, one directory per
//! `librocksdb-sys` version from Cargo.lock), and passes those two variables
//! to every cargo command it runs. Plain `cargo` commands work without
//! them and compile the C++ themselves; `cargo xtask env` prints the two
//! variables for a shell that wants to share the cached library.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The cached library's directory, once [`ensure`] found or built it.
static LIBRARY_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The environment that points librocksdb-sys at the cached library, once
/// [`ensure`] has run (none before: such a cargo command needs no RocksDB).
pub(crate) fn env() -> Vec<(&'static str, PathBuf)> {
    match LIBRARY_DIR.get() {
        Some(dir) => vec![
            ("ROCKSDB_LIB_DIR", dir.clone()),
            ("ROCKSDB_STATIC", PathBuf::from("1")),
        ],
        None => Vec::new(),
    }
}

/// Finds the cached library for the locked librocksdb-sys version, building
/// it first if this machine has none.
pub(crate) fn ensure() -> Result<PathBuf> {
    if let Some(dir) = LIBRARY_DIR.get() {
        return Ok(dir.clone());
    }
    let version = locked_version(&crate::workspace_root().join("Cargo.lock"))?;
    let dir = cache_root()?.join(format!("rocksdb-{version}"));
    if !dir.join("librocksdb.a").is_file() {
        build(&dir)?;
    }
    Ok(LIBRARY_DIR.get_or_init(|| dir).clone())
}

fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("raft-kv"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).context(
        "neither XDG_CACHE_HOME nor HOME is set: set one so RocksDB's C++ library can be cached",
    )?;
    Ok(PathBuf::from(home).join(".cache/raft-kv"))
}

/// The librocksdb-sys version pinned in the lock file.
fn locked_version(lock: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(lock).with_context(|| format!("cannot read {}", lock.display()))?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"librocksdb-sys\"" {
            if let Some(version) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
            {
                return Ok(version.to_string());
            }
        }
    }
    bail!(
        "{} names no librocksdb-sys version; run `cargo generate-lockfile`",
        lock.display()
    )
}

/// Compiles librocksdb-sys in release mode, in a target directory of its
/// own, and keeps only the static library it produced.
fn build(dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("the cache directory has a parent");
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    // Private to this process, so two xtask runs never share a half-built
    // library: the last rename wins, and both renamed complete libraries.
    let work = parent.join(format!(".build-{}", std::process::id()));
    eprintln!(
        "xtask: compiling RocksDB's C++ library once for this machine into {} \
         (about 15 minutes on 2 cores; later builds in any profile or checkout reuse it)",
        dir.display()
    );
    let started = Instant::now();
    let mut cmd = crate::cargo();
    cmd.args(["build", "--release", "-p", "librocksdb-sys"])
        .arg("--target-dir")
        .arg(&work)
        // No debug info in the C++ objects: smaller and quicker to build.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env_remove("ROCKSDB_LIB_DIR")
        .env_remove("ROCKSDB_STATIC");
    let built = crate::step("RocksDB's C++ library", cmd).and_then(|()| {
        let library = find_library(&work.join("release/build"))?;
        let staged = work.join("lib");
        std::fs::create_dir_all(&staged)?;
        std::fs::copy(&library, staged.join("librocksdb.a"))
            .with_context(|| format!("cannot copy {}", library.display()))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::rename(&staged, dir)
            .with_context(|| format!("cannot move the library into {}", dir.display()))
    });
    let _ = std::fs::remove_dir_all(&work);
    built?;
    eprintln!(
        "xtask: RocksDB's C++ library is built ({:.0} s) and cached in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

/// `release/build/librocksdb-sys-*/out/librocksdb.a` under a target dir.
fn find_library(build_dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(build_dir)
        .with_context(|| format!("cannot read {}", build_dir.display()))?;
    for entry in entries {
        let path = entry?.path().join("out/librocksdb.a");
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "the librocksdb-sys build left no librocksdb.a under {}",
        build_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_locked_version() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("Cargo.lock");
        std::fs::write(
            &lock,
            "[[package]]\nname = \"libc\"\nversion = \"0.2.1\"\n\n\
             [[package]]\nname = \"librocksdb-sys\"\nversion = \"0.19.0+11.8.1\"\nsource = \"x\"\n",
        )
        .unwrap();
        assert_eq!(locked_version(&lock).unwrap(), "0.19.0+11.8.1");
        std::fs::write(&lock, "[[package]]\nname = \"libc\"\n").unwrap();
        assert!(locked_version(&lock).is_err());
    }
}
