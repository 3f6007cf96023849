//! Training checkpoints under damage (seeded ChaCha8 streams): random bytes,
//! flipped bytes, cut files and garbage headers are refused with an error
//! naming the file, never a panic, and never accepted as a checkpoint.

mod common;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uniattack::checkpoint::read_checkpoint;
use uniattack::Trainer;

#[test]
fn damaged_checkpoints_are_refused_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = common::dataset(&dir.path().join("data"));
    let mut cfg = common::experiment(&data);
    cfg.training.epochs = 1;
    let out = dir.path().join("run");
    Trainer::new(cfg, common::options(&out, false))?.train()?;
    let good = std::fs::read(out.join("checkpoints/best.safetensors"))?;
    let path = dir.path().join("damaged.safetensors");
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for round in 0..120 {
        let damaged: Vec<u8> = match round % 4 {
            0 => (0..rng.random_range(0..4_000))
                .map(|_| rng.random())
                .collect(),
            1 => good[..rng.random_range(0..good.len())].to_vec(),
            2 => {
                // One flipped bit in the data or the header.
                let mut bytes = good.clone();
                let at = rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << rng.random_range(0..8);
                bytes
            }
            _ => {
                let mut bytes = good.clone();
                let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into()?) as usize;
                let at = rng.random_range(8..header_end);
                bytes[at] = rng.random();
                bytes
            }
        };
        if damaged == good {
            continue;
        }
        std::fs::write(&path, &damaged)?;
        let start = Instant::now();
        let err = match read_checkpoint(&path) {
            Ok(_) => panic!("round {round}: a damaged checkpoint was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("damaged.safetensors"), "round {round}: {err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    Ok(())
}
