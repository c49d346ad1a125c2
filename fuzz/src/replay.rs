//! Replays a fuzz target's saved inputs through its check, as an ordinary
//! test: every file of `fuzz/corpus/<target>/` (the minimised corpus) and
//! of `fuzz/regressions/<target>/` (inputs that once crashed it). Compiled
//! into each crate's `tests/fuzz_corpus.rs` with `#[path]`.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The fuzz directory, from a crate of the workspace.
pub fn fuzz_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("..").join("fuzz")
}

/// The files of `dir`, sorted (none if it does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// Runs `check` on every file of `fuzz/<kind>/<target>/` and fails, naming
/// every input that panicked, if any did. Returns how many files ran.
pub fn replay(manifest_dir: &str, kind: &str, target: &str, check: fn(&[u8])) -> usize {
    let dir = fuzz_dir(manifest_dir).join(kind).join(target);
    let files = files(&dir);
    let mut failed = Vec::new();
    for path in &files {
        let data =
            std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs in {} panicked (messages above); reproduce one with \
         `cargo fuzz run {target} <file>` in fuzz/:\n  {}",
        failed.len(),
        files.len(),
        dir.display(),
        failed.join("\n  ")
    );
    files.len()
}

/// Replays the corpus of `target`, which must not be empty.
pub fn corpus(manifest_dir: &str, target: &str, check: fn(&[u8])) {
    let n = replay(manifest_dir, "corpus", target, check);
    assert!(n > 0, "fuzz/corpus/{target}/ is empty or missing");
}

/// Replays the regression inputs of `target` (there may be none).
pub fn regressions(manifest_dir: &str, target: &str, check: fn(&[u8])) {
    replay(manifest_dir, "regressions", target, check);
}
