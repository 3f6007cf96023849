//! Training checkpoints under damage (seeded ChaCha8 streams): random bytes,
//! flipped bytes, cut files and garbage headers are refused with an error
//! naming the file, never a panic, and never accepted as a checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use uniattack::checkpoint::{
    read_checkpoint, read_model_checkpoint, verify_checkpoint, write_checkpoint, CLASS_EMBEDDINGS,
};
use uniattack::tensor_data::TensorData;
use uniattack::Trainer;

/// Trains the tiny test model for one epoch under `dir`; its run directory.
fn one_epoch_run(dir: &Path) -> anyhow::Result<PathBuf> {
    let (cfg, out) = common::one_epoch(dir);
    Trainer::new(cfg, common::options(&out, false))?.train()?;
    Ok(out)
}

#[test]
fn damaged_checkpoints_are_refused_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = one_epoch_run(dir.path())?;
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
        for read in [read_checkpoint, read_model_checkpoint] {
            let err = match read(&path) {
                Ok(_) => panic!("round {round}: a damaged checkpoint was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("damaged.safetensors"), "round {round}: {err}");
        }
        let err = match verify_checkpoint(&path) {
            Ok(_) => panic!("round {round}: a damaged checkpoint was verified"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("damaged.safetensors"), "round {round}: {err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    Ok(())
}

/// The scoring reader keeps a training checkpoint's parameters and prompt
/// embeddings, not its optimizer moments, and still checks the moments'
/// bytes.
#[test]
fn the_model_reader_drops_the_moments_but_checks_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = one_epoch_run(dir.path())?;
    let training = std::fs::read_dir(out.join("checkpoints"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .expect("a training checkpoint");
    let full = read_checkpoint(&training)?;
    let model = read_model_checkpoint(&training)?;
    let mut kept: Vec<&String> = model.tensors.keys().collect();
    kept.sort();
    let mut expected: Vec<&String> = full
        .meta
        .parameters
        .iter()
        .chain(
            full.tensors
                .keys()
                .filter(|n| n.as_str() == CLASS_EMBEDDINGS),
        )
        .collect();
    expected.sort();
    assert_eq!(kept, expected);
    let moments: Vec<&String> = full
        .tensors
        .keys()
        .filter(|n| !model.tensors.contains_key(*n))
        .collect();
    assert!(!moments.is_empty(), "a training checkpoint holds moments");
    for (name, tensor) in &model.tensors {
        let same = full.tensors[name]
            .flatten_all()?
            .eq(&tensor.flatten_all()?)?
            .to_dtype(candle_core::DType::F32)?
            .min(0)?
            .to_scalar::<f32>()?;
        assert_eq!(same, 1.0, "{name}");
    }

    // One flipped bit inside a moment tensor's bytes is still refused.
    let mut bytes = std::fs::read(&training)?;
    let (header_len, layout) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let info = layout
        .info(moments[0])
        .expect("the moment is in the header");
    bytes[8 + header_len + info.data_offsets.0] ^= 0x10;
    let damaged = dir.path().join("moment-flipped.safetensors");
    std::fs::write(&damaged, &bytes)?;
    let err = read_model_checkpoint(&damaged)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    Ok(())
}

/// A well-formed file whose header lists a parameter it does not hold is
/// refused by every reader, the verifier (which keeps no tensor) included.
#[test]
fn a_listed_parameter_missing_from_the_file_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = one_epoch_run(dir.path())?;
    let good = read_checkpoint(&out.join("checkpoints/best.safetensors"))?;
    let dropped = good.meta.parameters[0].clone();
    let tensors = good
        .tensors
        .iter()
        .filter(|(name, _)| **name != dropped)
        .map(|(name, t)| (name.clone(), TensorData::Tensor(t.clone())))
        .collect();
    let path = dir.path().join("short.safetensors");
    write_checkpoint(&path, good.meta.clone(), tensors)?;
    let expected = format!("parameter {dropped} is missing");
    let errors = [
        read_checkpoint(&path).err().map(|e| e.to_string()),
        read_model_checkpoint(&path).err().map(|e| e.to_string()),
        verify_checkpoint(&path).err().map(|e| e.to_string()),
    ];
    for err in errors {
        let err = err.expect("refused");
        assert!(
            err.contains(&expected) && err.contains("short.safetensors"),
            "{err}"
        );
    }
    Ok(())
}
