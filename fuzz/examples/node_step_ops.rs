//! Prints the configuration flags and operations a `node_step` input
//! decodes to, without running them:
//! `cargo run --example node_step_ops -- <file>` (in fuzz/). To watch the
//! node's state after each operation, run the target on the file with
//! `RAFT_FUZZ_TRACE=1` instead.

use raft_fuzz::checks::node_step::Op;

fn main() -> std::io::Result<()> {
    for path in std::env::args().skip(1) {
        let data = std::fs::read(&path)?;
        println!("{path}");
        let Some((flags, mut rest)) = data.split_first() else {
            continue;
        };
        println!("  flags {flags:#04x}");
        while let Ok((op, tail)) = postcard::take_from_bytes::<Op>(rest) {
            println!("  {op:?}");
            rest = tail;
        }
        if !rest.is_empty() {
            println!("  ({} undecodable bytes)", rest.len());
        }
    }
    Ok(())
}
