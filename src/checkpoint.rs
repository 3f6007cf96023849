//! Training checkpoints: one safetensors file holding the model weights
//! (transformers' names, so `clip_moe::load_weights` reads it), the
//! optimizer moments, the prompt embeddings the detector scores with, and in
//! its header the run's state as JSON: step, loader position, experiment and
//! model configuration, calibrated threshold, best-so-far record, and a
//! checksum of every tensor byte.
//!
//! Written atomically (temporary file, fsync, rename, directory fsync): a
//! run killed at any moment leaves the previous checkpoint intact and never a
//! partial one under a checkpoint's name. Reading verifies the format, the
//! checksum and every tensor's presence before anything is used, and names
//! the file and what is wrong.
//!
//! The run's randomness needs no saved generator state: the loader derives
//! every order and augmentation from (seed, epoch, position), and nothing
//! else draws after initialisation; the position and seed are saved.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clip_moe::ClipConfig;
use fas_metrics::{ProtocolReport, ThresholdRule};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::experiment::{ExperimentConfig, Selection};
pub use crate::tensor_data::TensorData;

/// The `format` of checkpoints written by this version.
pub const FORMAT: &str = "uniattack-checkpoint/1";
/// The header metadata key holding [`CheckpointMeta`] as JSON.
pub const META_KEY: &str = "uniattack";
/// Tensor name of the `(2, projection_dim)` prompt embeddings.
pub const CLASS_EMBEDDINGS: &str = "uniattack.class_embeddings";

/// What a checkpoint holds besides the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// Weights, optimizer moments and run state: resumable.
    Training,
    /// Weights and state only (the best checkpoint): for evaluation and detection.
    Model,
}

/// Where the next batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoaderPosition {
    /// Epoch of the next batch (0-based).
    pub epoch: u64,
    /// Index of the next batch in that epoch.
    pub next_batch: usize,
}

/// A decision threshold and where it was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// `score >= threshold` decides attack.
    #[serde(with = "fas_metrics::serde_threshold")]
    pub threshold: f64,
    /// The rule that chose it.
    pub rule: ThresholdRule,
    /// The split it was chosen on (always dev for training runs).
    pub split: fas_data::protocol::uniattack::Split,
    /// The step whose weights scored that split. A step checkpoint written
    /// between evaluations carries the last evaluation's threshold, which
    /// belongs to other weights (absent before it existed: not checked).
    #[serde(default)]
    pub step: Option<u64>,
    /// Whether it was chosen on per-video mean scores (absent before it
    /// existed: not checked).
    #[serde(default)]
    pub video_level: Option<bool>,
}

impl CheckpointMeta {
    /// The stored threshold, when it was calibrated on this checkpoint's
    /// own weights; why not otherwise. `None`: none stored.
    pub fn own_threshold(&self) -> std::result::Result<Option<f64>, String> {
        match self.calibration {
            None => Ok(None),
            Some(Calibration {
                step: Some(step), ..
            }) if step != self.step => Err(format!(
                "its stored threshold was calibrated at step {step}, on other weights than this \
                 checkpoint's (step {}): it is a step checkpoint written between evaluations",
                self.step
            )),
            Some(calibration) => Ok(Some(calibration.threshold)),
        }
    }
}

/// The evaluation that made a checkpoint the best so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestRecord {
    /// Optimizer step of the best checkpoint.
    pub step: u64,
    /// Epochs completed at that step.
    pub epoch: u64,
    /// Which split chose it.
    pub selected_on: Selection,
    /// Dev metrics at dev's own threshold.
    pub dev: ProtocolReport,
    /// Test metrics at the dev threshold, if test was scored.
    pub test: Option<ProtocolReport>,
}

/// The checkpoint header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`FORMAT`].
    pub format: String,
    /// Resumable or weights only.
    pub kind: CheckpointKind,
    /// Optimizer steps taken.
    pub step: u64,
    /// Where training continues.
    pub position: LoaderPosition,
    /// The run's configuration.
    pub experiment: ExperimentConfig,
    /// The model's configuration (MoE placement included).
    pub clip: ClipConfig,
    /// The threshold calibrated at this checkpoint's last evaluation.
    pub calibration: Option<Calibration>,
    /// The best checkpoint so far, as of this one.
    pub best: Option<BestRecord>,
    /// The training steps taken since the last logged record, so a resumed
    /// run's next record averages the same steps as an uninterrupted run's
    /// (absent in checkpoints written before it existed: none).
    #[serde(default)]
    pub unlogged: UnloggedSteps,
    /// The ranks that trained it. Each rank takes a batch of the configured
    /// size, so the world size sets the global batch and each rank's shard:
    /// a resume at another size would train another run (absent in
    /// checkpoints written before it existed: not checked).
    #[serde(default)]
    pub world_size: Option<usize>,
    /// The run's length in optimizer steps as it was trained. A cosine's
    /// learning rate at a step depends on it; recording it catches a
    /// resume whose length changed through the training list or the world
    /// size, not only through `--epochs`/`--max-steps` (absent before it
    /// existed: recomputed from the configuration).
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// What the run's lists held when it was trained. A resume over lists
    /// that changed (images added, removed or relabelled under the same
    /// paths) would not continue the same data order, and would compare
    /// its evaluations with the best on other images (absent before it
    /// existed: not checked).
    #[serde(default)]
    pub lists: Option<RunLists>,
    /// Names of the model parameters in the file.
    pub parameters: Vec<String>,
    /// Checksum of every tensor (name, dtype, shape, bytes) and of this
    /// header (with this field empty), hex.
    pub checksum: String,
}

/// One split's list as a run read it: how many samples, and a checksum of
/// each one's entry and label in list order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListDigest {
    /// Samples listed.
    pub samples: usize,
    /// Checksum of the entries and labels, hex.
    pub checksum: String,
}

impl ListDigest {
    /// The digest of `samples` (entries as written, labels by name, so it
    /// does not move with the data root or the build).
    pub fn of(samples: &[fas_data::Sample]) -> Self {
        let mut sum = Checksum::new();
        for sample in samples {
            let label = match &sample.label {
                None => String::new(),
                Some(fas_data::Label::BonaFide) => "live".to_string(),
                Some(fas_data::Label::Attack(kind)) => kind.to_string(),
            };
            sum.add(&sample.entry, &label, &[], &[]);
        }
        Self {
            samples: samples.len(),
            checksum: sum.hex(),
        }
    }

    /// How this list differs from `then`, the one a run recorded (`None`:
    /// it does not), for messages.
    pub fn change_since(&self, then: &ListDigest) -> Option<String> {
        if self == then {
            None
        } else if self.samples == then.samples {
            Some(format!(
                "the same {} samples, other entries or labels",
                self.samples
            ))
        } else {
            Some(format!(
                "{} samples then, {} now",
                then.samples, self.samples
            ))
        }
    }
}

/// The digests of a run's three lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunLists {
    /// The training list.
    pub train: ListDigest,
    /// The development list (threshold and model selection).
    pub dev: ListDigest,
    /// The test list.
    pub test: ListDigest,
}

/// Sums over the steps since the last logged training record. The sums are
/// kept as the bits of their `f64`s: a decimal round trip through JSON may
/// move the last bit, and the resumed record must be the uninterrupted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UnloggedSteps {
    /// How many steps.
    pub steps: u64,
    /// `f64::to_bits` of the sum of their losses.
    pub loss_sum_bits: u64,
    /// `f64::to_bits` of the sum of their gradient norms.
    pub grad_norm_sum_bits: u64,
}

/// A checkpoint read back and verified.
pub struct LoadedCheckpoint {
    /// Its header.
    pub meta: CheckpointMeta,
    /// The tensors read, on the CPU: every one ([`read_checkpoint`]), or the
    /// parameters and prompt embeddings ([`read_model_checkpoint`]).
    pub tensors: HashMap<String, Tensor>,
    /// The file.
    pub path: PathBuf,
}

impl LoadedCheckpoint {
    /// [`CheckpointMeta::own_threshold`] as an error naming this file;
    /// `instead` says what to use (`use --threshold dev`).
    pub fn own_threshold(&self, instead: &str) -> Result<Option<f64>> {
        self.meta.own_threshold().map_err(|why| {
            Error::checkpoint(
                &self.path,
                format!("{why}; {instead}, or the run's best.safetensors"),
            )
        })
    }

    /// The model parameters only.
    pub fn weights(&self) -> Result<HashMap<String, Tensor>> {
        self.meta
            .parameters
            .iter()
            .map(|name| {
                let tensor = self.tensors.get(name).ok_or_else(|| {
                    Error::checkpoint(&self.path, format!("parameter {name} is missing"))
                })?;
                Ok((name.clone(), tensor.clone()))
            })
            .collect()
    }

    /// The prompt embeddings, on `device`.
    pub fn class_embeddings(&self, device: &Device) -> Result<Tensor> {
        let tensor = self.tensors.get(CLASS_EMBEDDINGS).ok_or_else(|| {
            Error::checkpoint(&self.path, format!("tensor {CLASS_EMBEDDINGS} is missing"))
        })?;
        Ok(tensor.to_device(device)?)
    }
}

/// 64-bit checksum of `bytes` (word-wise multiply-xorshift; fast enough to
/// run over a 2 GB checkpoint at every save and load, and sensitive to any
/// flipped bit and to reordering).
fn mix(mut state: u64, bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        state = (state ^ u64::from_le_bytes(word)).wrapping_mul(K);
        state ^= state >> 29;
    }
    for &b in chunks.remainder() {
        state = (state ^ u64::from(b)).wrapping_mul(K);
        state ^= state >> 29;
    }
    (state ^ bytes.len() as u64).wrapping_mul(K)
}

/// Running checksum over tensors fed in name order.
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0x243F_6A88_85A3_08D3)
    }

    fn add(&mut self, name: &str, dtype: &str, shape: &[usize], data: &[u8]) {
        self.0 = mix(self.0, name.as_bytes());
        self.0 = mix(self.0, dtype.as_bytes());
        for dim in shape {
            self.0 = mix(self.0, &(*dim as u64).to_le_bytes());
        }
        self.0 = mix(self.0, data);
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Writes `tensors` with `meta` (whose checksum is filled in here) to
/// `path`, atomically.
pub fn write_checkpoint(
    path: &Path,
    mut meta: CheckpointMeta,
    tensors: Vec<(String, TensorData<'_>)>,
) -> Result<()> {
    let mut tensors: Vec<(String, TensorData<'_>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            Ok((
                name,
                match t {
                    TensorData::Tensor(t) => {
                        TensorData::Tensor(t.to_device(&Device::Cpu)?.contiguous()?)
                    }
                    host => host,
                },
            ))
        })
        .collect::<Result<_>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sum = Checksum::new();
    for (name, tensor) in &tensors {
        use safetensors::View;
        let dtype = format!("{:?}", tensor.dtype());
        sum.add(name, &dtype, tensor.shape(), &tensor.data());
    }
    // The header is covered too (serialised with an empty checksum field).
    meta.checksum = String::new();
    sum.add(META_KEY, "json", &[], meta_json(&meta, path)?.as_bytes());
    meta.checksum = sum.hex();
    let header = serde_json::to_string(&meta).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let metadata = Some(HashMap::from([(META_KEY.to_string(), header)]));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    }
    clip_moe::files::write_atomically(path, |tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), metadata, tmp)
            .map_err(|e| clip_moe::Error::Checkpoint {
                path: tmp.to_path_buf(),
                message: e.to_string(),
            })
    })?;
    Ok(())
}

fn meta_json(meta: &CheckpointMeta, path: &Path) -> Result<String> {
    serde_json::to_string(meta).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The largest header `read_checkpoint` accepts (safetensors' own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads and verifies a checkpoint: its format, its checksum, and that every
/// parameter the header lists is present.
///
/// The file is read one tensor at a time, so the peak memory is the tensors
/// plus one tensor's bytes, not a copy of the whole file besides them (a
/// CLIP ViT-B/16 + La-SoftMoE training checkpoint with Adam's moments is
/// 4.5 GB). Every size is checked against the file's length before anything
/// is allocated.
pub fn read_checkpoint(path: &Path) -> Result<LoadedCheckpoint> {
    read_keeping(path, |_, _| true)
}

/// [`read_checkpoint`] for scoring: verifies the whole file the same way
/// but keeps only the model parameters and the prompt embeddings, not a
/// training checkpoint's optimizer moments (two thirds of its bytes).
pub fn read_model_checkpoint(path: &Path) -> Result<LoadedCheckpoint> {
    read_keeping(path, |name, meta| {
        name == CLASS_EMBEDDINGS || meta.parameters.iter().any(|p| p == name)
    })
}

/// Verifies a checkpoint as [`read_checkpoint`] does and returns its
/// header, keeping no tensor.
pub fn verify_checkpoint(path: &Path) -> Result<CheckpointMeta> {
    read_keeping(path, |_, _| false).map(|checkpoint| checkpoint.meta)
}

/// A checkpoint's opened file and what its header says, checked against
/// the file's length: the tensors' layout, the header's text (for the
/// checksum), the parsed header and where the tensor data starts.
struct OpenedCheckpoint {
    file: std::fs::File,
    layout: safetensors::tensor::Metadata,
    json: String,
    meta: CheckpointMeta,
    data_start: u64,
}

/// Opens `path` and reads its header (no tensor data, so no checksum yet).
fn open_checkpoint(path: &Path) -> Result<OpenedCheckpoint> {
    use std::io::Read;
    let fail = |reason: String| Error::checkpoint(path, reason);
    let mut file = std::fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("reading", path, e))?
        .len();
    let io = |e: std::io::Error| Error::io("reading", path, e);
    let mut n = [0u8; 8];
    if file_len < 8 {
        return Err(fail(format!(
            "not a safetensors file or cut short ({file_len} bytes)"
        )));
    }
    file.read_exact(&mut n).map_err(io)?;
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
        return Err(fail(format!(
            "not a safetensors file or cut short (header of {header_len} bytes in a file of \
             {file_len})"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header = std::str::from_utf8(&header)
        .map_err(|e| fail(format!("not a safetensors file (header: {e})")))?;
    // safetensors' own parse checks every tensor's offsets against its dtype
    // and shape, and that the data is one contiguous run.
    let layout: safetensors::tensor::Metadata = serde_json::from_str(header)
        .map_err(|e| fail(format!("not a safetensors file or corrupted header ({e})")))?;
    let data_start = 8 + header_len;
    if data_start.checked_add(layout.data_len() as u64) != Some(file_len) {
        return Err(fail(format!(
            "cut short or padded: the header lists {} bytes of tensors, the file holds {}",
            layout.data_len(),
            file_len - data_start
        )));
    }
    let json = layout
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .cloned()
        .ok_or_else(|| {
            fail(format!(
                "has no `{META_KEY}` header: not a uniattack checkpoint (plain weights load with \
                 clip_moe::load_weights)"
            ))
        })?;
    let meta: CheckpointMeta =
        serde_json::from_str(&json).map_err(|e| fail(format!("unreadable header: {e}")))?;
    if meta.format != FORMAT {
        return Err(fail(format!(
            "format {:?}, this version reads {FORMAT:?}",
            meta.format
        )));
    }
    Ok(OpenedCheckpoint {
        file,
        layout,
        json,
        meta,
        data_start,
    })
}

/// A checkpoint's header alone, read without its tensors: what it is (its
/// configuration, step, selection) before committing to reading it whole.
/// Its bytes are not verified here: [`read_checkpoint`] does that.
pub fn read_header(path: &Path) -> Result<CheckpointMeta> {
    open_checkpoint(path).map(|opened| opened.meta)
}

/// Reads and verifies `path`, keeping the tensors `keep` accepts (every
/// byte is checksummed either way).
fn read_keeping(
    path: &Path,
    keep: impl Fn(&str, &CheckpointMeta) -> bool,
) -> Result<LoadedCheckpoint> {
    use std::io::{Read, Seek, SeekFrom};
    let fail = |reason: String| Error::checkpoint(path, reason);
    let io = |e: std::io::Error| Error::io("reading", path, e);
    let OpenedCheckpoint {
        mut file,
        layout,
        json,
        meta,
        data_start,
    } = open_checkpoint(path)?;
    let mut names: Vec<(String, &safetensors::tensor::TensorInfo)> =
        layout.tensors().into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sum = Checksum::new();
    let mut tensors = HashMap::with_capacity(names.len());
    let mut bytes = Vec::new();
    for (name, info) in &names {
        let (begin, end) = info.data_offsets;
        bytes.resize(end - begin, 0);
        file.seek(SeekFrom::Start(data_start + begin as u64))
            .map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        sum.add(name, &format!("{:?}", info.dtype), &info.shape, &bytes);
        let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), &bytes)
            .map_err(|e| fail(format!("tensor {name}: {e}")))?;
        if keep(name, &meta) {
            let tensor = candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .map_err(|e| fail(format!("tensor {name}: {e}")))?;
            tensors.insert(name.clone(), tensor);
        }
    }
    // The header as written before its checksum was filled in: the stored
    // text with the checksum's value emptied (textually, so no float goes
    // through a parse and print that could change its last digit).
    let unsummed = json.replacen(
        &format!("\"checksum\":\"{}\"", meta.checksum),
        "\"checksum\":\"\"",
        1,
    );
    sum.add(META_KEY, "json", &[], unsummed.as_bytes());
    let found = sum.hex();
    if found != meta.checksum {
        return Err(fail(format!(
            "checksum mismatch (stored {}, computed {found}): the file is damaged; delete it \
             to resume from the previous checkpoint",
            meta.checksum
        )));
    }
    if let Some(missing) = meta
        .parameters
        .iter()
        .find(|n| !names.iter().any(|(name, _)| name == *n))
    {
        return Err(fail(format!("parameter {missing} is missing")));
    }
    Ok(LoadedCheckpoint {
        meta,
        tensors,
        path: path.to_path_buf(),
    })
}

/// The checkpoint a `CKPT` argument names: a file as is; a run directory's
/// best checkpoint (or, failing that, its latest).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let run = crate::run_dir::RunDir::new(path.to_path_buf());
        if run.best_checkpoint().is_file() {
            return Ok(run.best_checkpoint());
        }
        if let Some(latest) = run.latest_checkpoint()? {
            return Ok(latest);
        }
        return Err(Error::checkpoint(
            path,
            "is a directory without checkpoints (expected a run's output directory with \
             checkpoints/best.safetensors)",
        ));
    }
    if path.exists() {
        return Err(Error::checkpoint(
            path,
            "is not a regular file (a FIFO, a device or a socket); give a checkpoint file or a \
             run directory",
        ));
    }
    Err(Error::checkpoint(path, "no such file or directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `--checkpoint` that exists but is neither a file nor a directory
    /// says so, rather than "no such file".
    #[cfg(unix)]
    #[test]
    fn a_checkpoint_that_is_a_fifo_is_named_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("best.safetensors");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let err = resolve_checkpoint(&fifo).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = resolve_checkpoint(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn checksum_sees_any_change() {
        let data = vec![1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        let sum = |name: &str, dtype: &str, shape: &[usize], data: &[u8]| {
            let mut sum = Checksum::new();
            sum.add(name, dtype, shape, data);
            sum.hex()
        };
        let base = sum("a", "F32", &[9], &data);
        let mut flipped = data.clone();
        flipped[8] ^= 1;
        for other in [
            sum("a", "F32", &[9], &flipped),
            sum("b", "F32", &[9], &data),
            sum("a", "F32", &[3, 3], &data),
            sum("a", "U8", &[9], &data),
        ] {
            assert_ne!(base, other);
        }
    }
}
