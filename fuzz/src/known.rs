//! Findings the fuzzers made that are not fixed yet, so that a long run can
//! go on looking for new ones instead of stopping at the same crash.
//!
//! Only the fuzz targets use this list; the replay tests
//! (`tests/fuzz_corpus.rs` in each crate) run the checks strictly, so the
//! saved inputs in `regressions/<target>/` fail there until the bug is
//! fixed. Once it is, delete its line here: a panic at the old place would
//! otherwise still be ignored.
//!
//! A panic is ignored when it happens in a listed source file and its
//! message contains the listed text; every other panic aborts, and
//! libFuzzer saves the input. A finding that hangs instead of panicking
//! cannot be caught that way: [`skip`] keeps its inputs away from the
//! check.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// One unfixed finding.
pub struct Known {
    /// The finding's name in fuzz/README.md.
    pub finding: &'static str,
    /// Where it panics (a suffix of the file's path).
    pub file: &'static str,
    /// Part of its panic message.
    pub message: &'static str,
}

/// The unfixed findings.
pub const KNOWN: &[Known] = &[];

/// Whether `data` meets the precondition of an unfixed finding that hangs
/// (none at present; F2 did, see fuzz/README.md).
pub fn skip(target: &str, data: &[u8]) -> bool {
    let _ = (target, data);
    false
}

fn is_known(file: &str, message: &str) -> bool {
    KNOWN
        .iter()
        .any(|k| file.ends_with(k.file) && message.contains(k.message))
}

/// Runs `check` on `data` the way a fuzz target does: a known finding's
/// panic is swallowed; any other panic aborts the process after printing
/// the usual message (which is how libFuzzer notices it).
pub fn run(target: &str, data: &[u8], check: fn(&[u8])) {
    if skip(target, data) {
        return;
    }
    if KNOWN.is_empty() {
        check(data);
        return;
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let file = info.location().map_or("", |l| l.file());
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if is_known(file, &message) {
                return;
            }
            default(info);
            std::process::abort();
        }));
    });
    let _ = panic::catch_unwind(AssertUnwindSafe(|| check(data)));
}
