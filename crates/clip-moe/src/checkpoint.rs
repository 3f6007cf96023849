//! Loading pretrained weights into a `VarMap`, saving and reloading
//! fine-tuned ones.
//!
//! `VarMap::load` errors when any variable is missing from the file, so a
//! published CLIP checkpoint cannot fill a model with new MoE parameters that
//! way. Here the model is built first (every parameter a fresh `Var`), then
//! each variable the safetensors file holds is set by name after its shape is
//! checked; the [`LoadReport`] lists what was loaded, kept fresh, missing or
//! unexpected. PyTorch `pytorch_model.bin` state dicts (zip + pickle) load
//! the same way through candle's pickle reader. Saving writes safetensors atomically (a temporary file, then a
//! rename), either every variable or only the trainable delta.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::config::ClipConfig;
use crate::error::{Error, Result};
use crate::files::write_atomically;
use crate::model::ClipModel;

pub use crate::files::{CONFIG_FILE, DELTA_FILE, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE};

/// What a load did, by tensor name (each list sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model parameters set from the file.
    pub loaded: Vec<String>,
    /// MoE parameters (`*.moe.*`) absent from the file: kept as initialised.
    /// Expected when a pretrained CLIP is patched with MoE.
    pub fresh: Vec<String>,
    /// Other model parameters absent from the file, kept as initialised.
    pub missing: Vec<String>,
    /// File tensors the model has no parameter for.
    pub unexpected: Vec<String>,
    /// File tensors that are buffers, not parameters (`*.position_ids`, saved
    /// by older transformers versions), skipped.
    pub ignored: Vec<String>,
}

impl LoadReport {
    /// Whether every model parameter came from the file and every file tensor
    /// was used (buffers aside).
    pub fn is_exact(&self) -> bool {
        self.fresh.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

/// Whether `name` is a parameter of a MoE branch.
pub fn is_moe_parameter(name: &str) -> bool {
    name.contains(".moe.")
}

fn is_buffer(name: &str) -> bool {
    name.ends_with(".position_ids")
}

/// A checkpoint file opened for reading by tensor name.
enum WeightsFile {
    Safetensors(MmapedSafetensors),
    Pickle(candle_core::pickle::PthTensors),
}

impl WeightsFile {
    /// Safetensors, or a PyTorch pickle for `.bin`, `.pt` and `.pth` files.
    fn open(path: &Path) -> Result<Self> {
        let pickle = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("bin" | "pt" | "pth")
        );
        let context = |e: candle_core::Error| Error::Checkpoint {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if pickle {
            // candle's reader copies memo entries where Python shares them:
            // a small hostile file would exhaust memory (an abort, not an
            // error) before it returned.
            crate::pickle_guard::check_expansion(path)?;
            // candle's pickle reader indexes into what the file declares
            // and can panic on a malformed one: an error here, not an abort.
            let opened =
                std::panic::catch_unwind(|| candle_core::pickle::PthTensors::new(path, None))
                    .map_err(|_| Error::Checkpoint {
                        path: path.to_path_buf(),
                        message:
                            "malformed PyTorch pickle (its reader failed on the file's structure)"
                                .into(),
                    })?;
            Ok(Self::Pickle(opened.map_err(context)?))
        } else {
            // SAFETY: the file is memory-mapped read-only; it must not be
            // modified while it is read, as for every memory-mapped checkpoint.
            Ok(Self::Safetensors(
                unsafe { MmapedSafetensors::new(path) }.map_err(context)?,
            ))
        }
    }

    /// Every tensor's name and shape.
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        match self {
            Self::Safetensors(file) => file
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect(),
            Self::Pickle(file) => file
                .tensor_infos()
                .iter()
                .map(|(name, info)| (name.clone(), info.layout.shape().dims().to_vec()))
                .collect(),
        }
    }

    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::Safetensors(file) => file.load(name, device),
            Self::Pickle(file) => {
                let found =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| file.get(name)))
                        .map_err(|_| {
                            candle_core::Error::Msg(format!(
                                "malformed PyTorch pickle at tensor {name}"
                            ))
                        })??;
                found
                    .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?
                    .to_device(device)
            }
        }
    }
}

/// The shapes `cfg` gives the tensors that fix a model's size: the
/// embeddings, the first and last encoder layer's MLP, the projections.
fn expected_shapes(cfg: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let v = &cfg.vision_config;
    let t = &cfg.text_config;
    let mut shapes = vec![
        (
            "vision_model.embeddings.patch_embedding.weight".to_string(),
            vec![v.hidden_size, v.num_channels, v.patch_size, v.patch_size],
        ),
        (
            "vision_model.embeddings.position_embedding.weight".to_string(),
            vec![v.num_positions(), v.hidden_size],
        ),
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![t.vocab_size, t.hidden_size],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            vec![t.max_position_embeddings, t.hidden_size],
        ),
        (
            "visual_projection.weight".to_string(),
            vec![cfg.projection_dim, v.hidden_size],
        ),
        (
            "text_projection.weight".to_string(),
            vec![cfg.projection_dim, t.hidden_size],
        ),
    ];
    for (tower, layers, hidden, inter) in [
        (
            "vision_model",
            v.num_hidden_layers,
            v.hidden_size,
            v.intermediate_size,
        ),
        (
            "text_model",
            t.num_hidden_layers,
            t.hidden_size,
            t.intermediate_size,
        ),
    ] {
        for layer in [0, layers.saturating_sub(1)] {
            shapes.push((
                format!("{tower}.encoder.layers.{layer}.mlp.fc1.weight"),
                vec![inter, hidden],
            ));
        }
    }
    shapes
}

/// Compares `cfg` with the tensor shapes in `path`'s header, before any
/// model is built: a config that does not describe the checkpoint (an
/// absurd size, another model) is refused naming the first tensor that
/// disagrees, and a file with more encoder layers than the config names the
/// first extra one. Tensors the file lacks are left to [`load_weights`]'s
/// report. Reading a header costs no tensor data.
pub fn check_config_against_file(cfg: &ClipConfig, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let shapes = WeightsFile::open(path)?.shapes();
    for (name, expected) in expected_shapes(cfg) {
        if let Some(found) = shapes.get(&name) {
            if *found != expected {
                return Err(Error::ShapeMismatch {
                    path: path.to_path_buf(),
                    name,
                    expected,
                    found: found.clone(),
                });
            }
        }
    }
    for (tower, layers) in [
        ("vision_model", cfg.vision_config.num_hidden_layers),
        ("text_model", cfg.text_config.num_hidden_layers),
    ] {
        let extra = format!("{tower}.encoder.layers.{layers}.mlp.fc1.weight");
        if shapes.contains_key(&extra) {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "holds {extra}, but the config gives the {tower} tower {layers} layers"
                ),
            });
        }
    }
    Ok(())
}

/// Sets every variable of `varmap` that `path` holds: safetensors, or a
/// PyTorch pickle (`pytorch_model.bin`, `.pt`, `.pth`).
///
/// A tensor whose shape differs from the variable's, one stored as an
/// integer or 8-bit float type (quantised weights, which need their scales),
/// a non-finite value and an out-of-range `logit_scale` are errors naming
/// the tensor, and every tensor is checked before any variable is set, so
/// nothing is modified then. MoE parameters absent from a file that holds
/// none are `fresh` (a pretrained CLIP patched with MoE); absent from one
/// that holds some, they are `missing` (a checkpoint of another placement).
/// With `strict`, any missing (MoE included) or unexpected tensor is an
/// error too: use it for exact checkpoints. Tensors are converted to each
/// variable's float dtype.
pub fn load_weights(varmap: &VarMap, path: impl AsRef<Path>, strict: bool) -> Result<LoadReport> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(Error::Io {
            action: "reading",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let file = WeightsFile::open(path)?;
    let in_file = file.shapes();
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Candle(candle_core::Error::Msg("VarMap lock poisoned".into())))?;
    let mut report = LoadReport::default();
    let file_has_moe = in_file.keys().any(|name| is_moe_parameter(name));
    for (name, var) in sorted(&vars) {
        match in_file.get(name) {
            Some(found) if found.as_slice() != var.dims() => {
                return Err(Error::ShapeMismatch {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: found.clone(),
                })
            }
            Some(_) => report.loaded.push(name.clone()),
            None if is_moe_parameter(name) && !file_has_moe => report.fresh.push(name.clone()),
            None => report.missing.push(name.clone()),
        }
    }
    for name in in_file.keys().filter(|name| !vars.contains_key(*name)) {
        if is_buffer(name) {
            report.ignored.push(name.clone());
        } else {
            report.unexpected.push(name.clone());
        }
    }
    if strict && !report.is_exact() {
        let mut missing = report.missing.clone();
        missing.extend(report.fresh.iter().cloned());
        missing.sort();
        return Err(Error::StrictLoad {
            path: path.to_path_buf(),
            missing,
            unexpected: report.unexpected,
        });
    }
    // Every tensor is read and checked before any variable is set; then read
    // again and set (twice the reading, not twice the memory; the checks
    // run once).
    for name in &report.loaded {
        check_values(&stored_tensor(&file, path, name, &vars[name])?, path, name)?;
    }
    for name in &report.loaded {
        let var = &vars[name];
        var.set(&stored_tensor(&file, path, name, var)?)?;
    }
    Ok(report)
}

/// Tensor `name` of `file` in `var`'s dtype; an error unless stored as a
/// float type.
fn stored_tensor(file: &WeightsFile, path: &Path, name: &str, var: &Var) -> Result<Tensor> {
    let stored = file
        .load(name, var.device())
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("tensor {name}: {e}"),
        })?;
    use candle_core::DType::{BF16, F16, F32, F64};
    if !matches!(stored.dtype(), F16 | BF16 | F32 | F64) {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "tensor {name} is stored as {:?}, not as a float type: quantised or packed \
                     weights are not read (they need their scales); export the model in F32, \
                     F16 or BF16",
                stored.dtype()
            ),
        });
    }
    stored.to_dtype(var.dtype()).map_err(|e| Error::Checkpoint {
        path: path.to_path_buf(),
        message: format!("tensor {name}: {e}"),
    })
}

/// The checks of [`load_weights`] on a tensor's values: finite, and a
/// `logit_scale` in range.
fn check_values(tensor: &Tensor, path: &Path, name: &str) -> Result<()> {
    if name == "logit_scale" {
        let value = tensor
            .to_dtype(candle_core::DType::F64)?
            .to_vec0::<f64>()
            .unwrap_or(0.0);
        if value.abs() > crate::limits::MAX_LOG_TEMPERATURE {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "logit_scale is {value}: a log temperature beyond +-{} makes every \
                         logit overflow (trained CLIP models stay below ln 100 = 4.6)",
                    crate::limits::MAX_LOG_TEMPERATURE
                ),
            });
        }
    }
    if let Some(bad) = first_non_finite(tensor)? {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "tensor {name} holds a non-finite value ({bad}): the weights are damaged"
            ),
        });
    }
    Ok(())
}

/// The first NaN or infinity in a float tensor, if any.
fn first_non_finite(tensor: &Tensor) -> Result<Option<f64>> {
    if !tensor.dtype().is_float() {
        return Ok(None);
    }
    let values = tensor
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_device(&Device::Cpu)?
        .to_vec1::<f64>()?;
    Ok(values.into_iter().find(|v| !v.is_finite()))
}

/// A model built from a configuration and filled from a checkpoint.
pub struct LoadedModel {
    /// The model.
    pub model: ClipModel,
    /// Its parameters, every one a trainable `Var`.
    pub varmap: VarMap,
    /// What the load did.
    pub report: LoadReport,
}

/// Builds `cfg`'s model in a fresh F32 `VarMap` on `device` and loads
/// `weights` into it ([`load_weights`]): pretrained CLIP tensors are set by
/// name, MoE parameters the file lacks stay freshly initialised.
pub fn load_model(
    cfg: &ClipConfig,
    weights: impl AsRef<Path>,
    device: &Device,
    strict: bool,
) -> Result<LoadedModel> {
    cfg.validate()?;
    check_config_against_file(cfg, weights.as_ref())?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, device);
    let model = ClipModel::new(cfg, vb)?;
    let report = load_weights(&varmap, weights, strict)?;
    Ok(LoadedModel {
        model,
        varmap,
        report,
    })
}

/// Which variables to save, or to hand to an optimiser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSelection {
    /// Every variable.
    All,
    /// The MoE parameters plus every variable whose name starts with one of
    /// `extra_prefixes` (e.g. `"vision_model.post_layernorm."`,
    /// `"logit_scale"`): the part of a fine-tuned model that differs from the
    /// pretrained checkpoint when the rest is frozen.
    Delta {
        /// Further trainable name prefixes.
        extra_prefixes: Vec<String>,
    },
}

impl WeightSelection {
    /// Whether the variable `name` is selected.
    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightSelection::All => true,
            WeightSelection::Delta { extra_prefixes } => {
                is_moe_parameter(name) || extra_prefixes.iter().any(|p| name.starts_with(p))
            }
        }
    }
}

/// The selected variables, sorted by name (e.g. for an optimiser).
pub fn select_vars(varmap: &VarMap, selection: &WeightSelection) -> Vec<(String, Var)> {
    let vars = match varmap.data().lock() {
        Ok(vars) => vars,
        Err(poisoned) => poisoned.into_inner(),
    };
    sorted(&vars)
        .filter(|(name, _)| selection.contains(name))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect()
}

/// Writes the selected variables to `path` as safetensors, atomically.
pub fn save_weights(
    varmap: &VarMap,
    path: impl AsRef<Path>,
    selection: &WeightSelection,
) -> Result<()> {
    let tensors: HashMap<String, Tensor> = select_vars(varmap, selection)
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().clone()))
        .collect();
    write_atomically(path.as_ref(), |tmp| {
        Ok(candle_core::safetensors::save(&tensors, tmp)?)
    })
}

/// Saves a model directory: `config.json` (with the MoE placement) and
/// `model.safetensors` ([`WeightSelection::All`]) or `delta.safetensors`
/// ([`WeightSelection::Delta`]; reload it over the pretrained checkpoint with
/// [`load_weights`]). Returns the weights file written.
///
/// Reload with [`ClipConfig::from_file`] and [`load_model`]. The tokenizer
/// is not the model's to save: copy the base model's `tokenizer.json`
/// beside these files to make a directory that [`crate::hub::resolve`]
/// accepts. Each file is written atomically, the config first; a crash
/// between the two, over an earlier save of another MoE shape or placement,
/// leaves a pair that [`load_model`] refuses (shapes) or reports (missing
/// and unexpected MoE parameters; an error when `strict`).
pub fn save_checkpoint(
    varmap: &VarMap,
    cfg: &ClipConfig,
    dir: impl AsRef<Path>,
    selection: &WeightSelection,
) -> Result<PathBuf> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    cfg.save(dir.join(CONFIG_FILE))?;
    let weights = dir.join(match selection {
        WeightSelection::All => WEIGHTS_FILE,
        WeightSelection::Delta { .. } => DELTA_FILE,
    });
    save_weights(varmap, &weights, selection)?;
    Ok(weights)
}

fn sorted(vars: &HashMap<String, Var>) -> impl Iterator<Item = (&String, &Var)> {
    let mut entries: Vec<_> = vars.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.into_iter()
}
