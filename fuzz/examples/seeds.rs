//! Writes the seed corpus: `cargo run --example seeds` (in fuzz/) puts one
//! file per seed into `corpus/<target>/`, next to whatever is there.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = raft_fuzz::seeds::all();
    for seed in &seeds {
        let dir = corpus.join(seed.target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{}", seed.name)), &seed.data)?;
    }
    println!("wrote {} seeds under {}", seeds.len(), corpus.display());
    Ok(())
}
