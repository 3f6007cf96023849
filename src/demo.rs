//! The offline demo (`train_uniattack --demo`): the synthetic
//! unified-attack dataset (`fas_data::synth`) written once into a cache
//! directory, a tiny CLIP with seeded random weights and the bundled tiny
//! tokenizer, trained on the CPU in minutes.
//!
//! Its numbers show that the pipeline learns; they say nothing about
//! accuracy on real data.

use std::path::{Path, PathBuf};

use clip_moe::{ClipConfig, ClipTokenizer, MoeConfig, MoeKind};
use fas_data::protocol::uniattack::{Modality, Protocol};
use fas_data::synth::{write_dataset, SynthConfig};
use fas_data::AugmentConfig;

use crate::adam::AdamConfig;
use crate::error::{Error, Result};
use crate::experiment::{
    DataConfig, Dataset, EvalConfig, ExperimentConfig, LoaderSettings, ModelConfig, ModelSource,
    Precision, PromptConfig, TrainingConfig,
};
use crate::schedule::{Decay, ScheduleConfig};

/// The tiny CLIP tokenizer (601 byte-level BPE tokens, the one the
/// workspace's tiny test model uses), bundled so the demo needs no download.
const TINY_TOKENIZER: &[u8] =
    include_bytes!("../crates/clip-moe/tests/fixtures/tiny_clip/tokenizer.json");

/// Bumped whenever the demo data's generator settings change, so an old
/// cache is not reused.
const DATA_VERSION: u32 = 1;

/// The demo's synthetic data: 400 subjects at 64 px (160 train, 80 dev,
/// 160 test subjects; 10 images each), digital attacks at strength 5.
///
/// At the generator's default strength the digital attacks are beyond a
/// model trained from scratch in minutes: the demo model and a small
/// PyTorch CNN both score them like live faces (`docs/synthetic-data.md`),
/// so the demo would only learn the physical ones.
pub fn synth_config() -> SynthConfig {
    SynthConfig {
        seed: 0,
        subjects: 400,
        image_size: 64,
        live_frames: 2,
        jpeg_quality: 92,
        digital_strength: 5.0,
    }
}

/// The demo model: `ClipConfig::tiny()`'s towers (width 32, 2 layers, 4
/// heads) on 64 px images of 8 px patches (64 patches + the class token),
/// with `moe` in every vision block.
pub fn clip_config(moe: MoeConfig) -> ClipConfig {
    let mut cfg = ClipConfig::tiny().with_moe(moe);
    cfg.vision_config.image_size = 64;
    cfg
}

/// La-SoftMoE sized for the demo model: 4 experts x 16 slots (64 slots for
/// 65 tokens, the paper's ratio of slots to patches).
pub fn moe_config(kind: MoeKind) -> MoeConfig {
    let mut moe = MoeConfig::la_soft_moe();
    if let Some(options) = moe.layer.as_mut() {
        options.slots_per_expert = 16;
    }
    moe.with_kind(kind)
}

/// The directory the demo caches its data in:
/// `$UNIATTACK_CACHE`, else `$XDG_CACHE_HOME/uniattack`, else
/// `~/.cache/uniattack`, else the system temporary directory.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("UNIATTACK_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("uniattack");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("uniattack");
    }
    std::env::temp_dir().join("uniattack-cache")
}

/// The bundled tiny tokenizer, padded to `clip`'s context length.
pub fn tokenizer(clip: &ClipConfig) -> Result<ClipTokenizer> {
    Ok(ClipTokenizer::from_bytes(
        TINY_TOKENIZER,
        "<bundled tiny tokenizer.json>",
        clip.text_config.max_position_embeddings,
    )?)
}

/// The synthetic dataset for `config` under `cache` (see [`cache_dir`]),
/// generated on first use.
/// Generation goes to a temporary directory renamed into place when
/// complete, so an interrupted generation is never mistaken for data.
pub fn ensure_dataset(cache: &Path, config: &SynthConfig) -> Result<PathBuf> {
    let name = format!(
        "synth-v{DATA_VERSION}-seed{}-{}subjects-{}px-{}frames-q{}-digital{}",
        config.seed,
        config.subjects,
        config.image_size,
        config.live_frames,
        config.jpeg_quality,
        config.digital_strength
    );
    let root = cache.join(&name);
    if root.join(COMPLETE).is_file() {
        return Ok(root);
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io("creating", cache, e))?;
    remove_abandoned_generations(cache);
    // One directory per call: two threads generating the same dataset
    // (tests, a library's callers) each write their own, and so do two
    // machines whose processes share a PID in a shared cache. It goes when
    // the call ends, whether the generation failed or was renamed.
    static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache.join(format!(
        ".{name}.tmp-{}-{call}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _scratch = Scratch(tmp.clone());
    write_dataset(&tmp, config)?;
    std::fs::write(tmp.join(COMPLETE), b"")
        .map_err(|e| Error::io("writing", tmp.join(COMPLETE), e))?;
    match std::fs::rename(&tmp, &root) {
        Ok(()) => Ok(root),
        // Another process finished first (or a stale incomplete copy is in
        // the way): use a complete one, else replace the stale one.
        Err(_) if root.join(COMPLETE).is_file() => Ok(root),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::rename(&tmp, &root).map_err(|e| Error::io("renaming into", &root, e))?;
            Ok(root)
        }
    }
}

/// A generation's temporary directory, removed when dropped (after a
/// failure, or once renamed into place, when nothing is left there).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: a directory that cannot be removed costs disk.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the temporary directories of generations whose process is gone
/// (a demo killed while writing its data), which nothing else would ever
/// remove. Only where the process table can be read (`/proc`, Linux), and
/// only directories untouched for an hour (a generation takes about a
/// minute): a cache shared between machines holds other machines'
/// generations, whose processes no local table lists. A live process's
/// generation, or one of unknown state, is left alone.
fn remove_abandoned_generations(cache: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|name| name.starts_with(".synth-v"))
            .and_then(|name| name.rsplit_once(".tmp-"))
            // `{pid}-{call}-{random}`, or `{pid}` alone as earlier versions
            // named it.
            .and_then(|(_, tail)| tail.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        let idle = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|idle| idle > ABANDONED_AFTER);
        if idle && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: a directory that cannot be removed costs disk,
            // not the demo.
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How long a generation's directory must have been untouched to be taken
/// for abandoned.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Marker of a complete generated dataset.
const COMPLETE: &str = ".complete";

/// The demo experiment on data under `root`: P1 of the synthetic data, the
/// demo model with La-SoftMoE, prompt T-8, the CLIP loss, all parameters
/// training; Adam at 2e-3 (random weights need a far larger step than the
/// paper's fine-tuning 1e-6) with warmup and cosine decay, 40 epochs,
/// horizontal flips as the only augmentation.
pub fn experiment(root: &Path) -> ExperimentConfig {
    ExperimentConfig {
        seed: 0,
        model: ModelConfig {
            source: ModelSource::DemoTiny,
            moe: moe_config(MoeKind::LaSoftMoe),
            frozen: Vec::new(),
            precision: Precision::F32,
            tf32: true,
        },
        prompts: PromptConfig::default(),
        data: DataConfig {
            root: root.to_path_buf(),
            dataset: Dataset::UniAttack {
                protocol: Protocol::P1,
                modality: Modality::Image,
            },
            allow_outside_root: false,
        },
        loader: LoaderSettings {
            batch_size: 32,
            eval_batch_size: 64,
            // Flips only: resized crops and colour jitter resample and
            // re-tone the image, which blurs the digital attacks' traces.
            augment: Some(AugmentConfig {
                crop: None,
                hflip_probability: 0.5,
                color_jitter: None,
            }),
            ..LoaderSettings::default()
        },
        optim: AdamConfig {
            lr: 2e-3,
            ..AdamConfig::default()
        },
        schedule: ScheduleConfig {
            warmup_steps: 20,
            decay: Decay::Cosine,
            min_lr_ratio: 0.05,
        },
        training: TrainingConfig {
            epochs: 40,
            log_every: 10,
            ..TrainingConfig::default()
        },
        // Test is scored once, at the end: selection is on dev anyway.
        eval: EvalConfig {
            test_during_training: false,
            ..EvalConfig::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed generation's directory is removed (named as this version
    /// names them, and as earlier ones did); a live process's (PID 1's
    /// here), this process's own and anything else are left.
    #[cfg(target_os = "linux")]
    #[test]
    fn only_abandoned_generations_are_removed() {
        let cache = tempfile::tempdir().unwrap();
        // Above any PID Linux hands out (pid_max is at most 2^22).
        let dead = cache
            .path()
            .join(".synth-v1-seed0.tmp-4000000000-3-0badf00d");
        let dead_earlier = cache.path().join(".synth-v1-seed2.tmp-4000000000");
        let live = cache.path().join(".synth-v1-seed0.tmp-1-0-12345678");
        let own = cache.path().join(format!(
            ".synth-v1-seed0.tmp-{}-7-00000000",
            std::process::id()
        ));
        let other = cache.path().join(".notes.tmp-4000000000");
        // Another machine's, writing now into a shared cache.
        let recent = cache
            .path()
            .join(".synth-v1-seed1.tmp-4000000001-0-ffffffff");
        for dir in [&dead, &dead_earlier, &live, &own, &other, &recent] {
            std::fs::create_dir_all(dir.join("UniAttackData")).unwrap();
        }
        let two_hours_ago = std::time::SystemTime::now() - 2 * ABANDONED_AFTER;
        for dir in [&dead, &dead_earlier, &live, &own, &other] {
            std::fs::File::open(dir)
                .unwrap()
                .set_modified(two_hours_ago)
                .unwrap();
        }
        remove_abandoned_generations(cache.path());
        assert!(!dead.exists() && !dead_earlier.exists());
        assert!(live.exists() && own.exists() && other.exists() && recent.exists());
    }

    /// Two threads of one process generating the same dataset into an
    /// empty cache at once both get it, complete: each writes its own
    /// temporary directory (they once shared one per process, and the
    /// second removed the first's files or refused its leftovers).
    #[test]
    fn concurrent_generations_in_one_process_both_succeed() {
        let cache = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            subjects: 5,
            image_size: 32,
            ..synth_config()
        };
        let roots: Vec<PathBuf> = std::thread::scope(|scope| {
            let runs: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| ensure_dataset(cache.path(), &config)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().unwrap().unwrap())
                .collect()
        });
        assert_eq!(roots[0], roots[1]);
        assert!(roots[0].join(COMPLETE).is_file());
        let left: Vec<_> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "temporary directories left: {left:?}");
    }
}
