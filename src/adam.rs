//! Adam (Kingma & Ba 2015) as `torch.optim.Adam` / `torch.optim.AdamW`
//! compute it, with its whole state exposed for checkpoints.
//!
//! candle-nn's `AdamW` keeps its moments private (a resumed run would start
//! them from zero) and defaults to weight decay 0.01; the paper trains with
//! plain Adam. Here:
//!
//! * [`WeightDecay::Coupled`] is `torch.optim.Adam(weight_decay=λ)`: λθ is
//!   added to the gradient before the moments (FLIP's `Adam(weight_decay=1e-6)`);
//!   [`WeightDecay::Decoupled`] is `torch.optim.AdamW`: θ ← θ(1 − ηλ) first.
//! * The update follows PyTorch's single-tensor implementation (the one it
//!   uses for CPU tensors) operation by operation, in F32 with the same
//!   scalar roundings: `m.lerp_(g, 1−β₁)`, `v.mul_(β₂).addcmul_(g, g, 1−β₂)`,
//!   `denom = sqrt(v)/sqrt(1−β₂ᵗ) + ε`, `θ.addcdiv_(m, denom, −η/(1−β₁ᵗ))`;
//!   `tests/adam_pytorch.rs` checks it against `torch.optim` on a fixture.
//! * On the CPU the step is one fused pass per parameter, in place (the
//!   moments are host vectors). On a GPU with fused-ops' CUDA kernels on
//!   (`FUSED_OPS_CUDA=1`) it is one kernel launch for every 64 parameters,
//!   in place, in the same order and roundings
//!   (`fused_ops::adam_update_many`, checked bit for bit against
//!   `torch.optim` on the emulator); otherwise it is composed of
//!   tensor operations, about a dozen kernels per parameter. Parameters stay
//!   F32 (master weights) whatever precision the forward pass runs in.

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, Layout, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How weight decay enters the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDecay {
    /// `torch.optim.Adam`: `g ← g + λθ` before the moments (L2 regularisation).
    #[default]
    Coupled,
    /// `torch.optim.AdamW`: `θ ← θ(1 − ηλ)` before the update.
    Decoupled,
}

/// Adam's hyper-parameters. The default is the paper's: lr 1e-6, betas
/// (0.9, 0.999), eps 1e-8, no weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    /// Peak learning rate (the schedule scales it per step).
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Weight decay λ (0 = none).
    pub weight_decay: f64,
    /// How weight decay is applied.
    pub decay: WeightDecay,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decay: WeightDecay::Coupled,
        }
    }
}

impl AdamConfig {
    /// Rejects values `torch.optim.Adam` rejects, and non-finite ones.
    pub fn validate(&self) -> Result<()> {
        let check = |field: &str, ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::config(format!("optim.{field}"), what.to_string()))
            }
        };
        check(
            "lr",
            self.lr.is_finite() && self.lr >= 0.0,
            "must be finite and >= 0",
        )?;
        check(
            "beta1",
            (0.0..1.0).contains(&self.beta1),
            "must be in [0, 1)",
        )?;
        check(
            "beta2",
            (0.0..1.0).contains(&self.beta2),
            "must be in [0, 1)",
        )?;
        // The update divides by sqrt(v) + eps, and v is 0 for a parameter
        // whose gradients have all been 0: an eps of 0 in F32 (1e-300 is)
        // makes that 0 / 0, NaN.
        check(
            "eps",
            self.eps.is_finite() && (self.eps as f32) > 0.0,
            "must be finite and above 0 in F32 (at least about 1.4e-45)",
        )?;
        check(
            "weight_decay",
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "must be finite and >= 0",
        )
    }
}

/// The two moments of one parameter.
enum Moments {
    /// CPU parameters: host vectors, updated in the fused pass.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Other devices (and F64 parameters): tensors beside the parameter.
    Tensors { m: Tensor, v: Tensor },
}

struct Slot {
    name: String,
    var: Var,
    moments: Moments,
}

/// Adam over named variables.
pub struct Adam {
    config: AdamConfig,
    slots: Vec<Slot>,
    step: u64,
}

/// Name of the saved first moment of parameter `name`.
pub fn exp_avg_name(name: &str) -> String {
    format!("optim.exp_avg.{name}")
}

/// Name of the saved second moment of parameter `name`.
pub fn exp_avg_sq_name(name: &str) -> String {
    format!("optim.exp_avg_sq.{name}")
}

impl Adam {
    /// An optimizer over `vars` (name, variable), moments zero, step 0.
    pub fn new(vars: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        config.validate()?;
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let moments = if uses_host_moments(&var) {
                    let n = var.elem_count();
                    Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }
                } else {
                    Moments::Tensors {
                        m: var.zeros_like()?.detach(),
                        v: var.zeros_like()?.detach(),
                    }
                };
                Ok(Slot { name, var, moments })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            slots,
            step: 0,
        })
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The optimised variables, in order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.slots.iter().map(|s| (s.name.as_str(), &s.var))
    }

    /// One update with learning rate `lr` (the schedule's value for this
    /// step). `grads[i]` is the gradient of the `i`-th variable (same shape);
    /// `None` (no gradient reached it) skips that variable, as PyTorch skips
    /// parameters whose `.grad` is `None`, but still counts the step. A
    /// step refused for its gradients' number or shapes changes nothing.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::config(
                "gradients",
                format!("{} given for {} parameters", grads.len(), self.slots.len()),
            ));
        }
        // Every gradient is checked before anything changes: a refused step
        // leaves the parameters, their moments and the step count as they
        // were, so a caller may correct it and step again.
        for (slot, grad) in self.slots.iter().zip(grads) {
            if let Some(grad) = grad.as_ref().filter(|g| g.dims() != slot.var.dims()) {
                return Err(Error::config(
                    "gradients",
                    format!(
                        "gradient of {} has shape {:?}, the parameter {:?}",
                        slot.name,
                        grad.dims(),
                        slot.var.dims()
                    ),
                ));
            }
        }
        self.step += 1;
        let coefficients = Coefficients::new(&self.config, lr, self.step);
        // The parameters whose moments are tensors, updated after the loop.
        let mut on_device = Vec::new();
        for (i, (slot, grad)) in self.slots.iter_mut().zip(grads).enumerate() {
            let Some(grad) = grad else { continue };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let grad = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    slot.var.inplace_op1(&FusedStep {
                        coefficients,
                        grad: &grad,
                        moments: std::sync::Mutex::new((m, v)),
                    })?;
                }
                Moments::Tensors { .. } => on_device.push(i),
            }
        }
        // With fused-ops' CUDA kernels on: one kernel launch for every 64
        // parameters, in place, bit-equal to the CPU path.
        let items: Vec<fused_ops::AdamTensors> = on_device
            .iter()
            .filter_map(|&i| match (&self.slots[i].moments, &grads[i]) {
                (Moments::Tensors { m, v }, Some(grad)) => Some(fused_ops::AdamTensors {
                    param: self.slots[i].var.as_tensor(),
                    grad,
                    m,
                    v,
                }),
                _ => None,
            })
            .collect();
        if items.len() == on_device.len() && fused_ops::adam_update_many_fits(&items) {
            fused_ops::adam_update_many(&items, &coefficients.scalars())?;
            return Ok(());
        }
        drop(items);
        for i in on_device {
            let (slot, Some(grad)) = (&mut self.slots[i], &grads[i]) else {
                continue;
            };
            let Moments::Tensors { m, v } = &mut slot.moments else {
                continue;
            };
            let param = slot.var.as_tensor();
            if fused_ops::adam_update_fits(param, grad, m, v) {
                // One kernel for this parameter.
                fused_ops::adam_update(param, grad, m, v, &coefficients.scalars())?;
            } else {
                let (new_param, new_m, new_v) = composite_step(&coefficients, param, grad, m, v)?;
                slot.var.set(&new_param)?;
                *m = new_m;
                *v = new_v;
            }
        }
        Ok(())
    }

    /// The moments as named tensors ([`exp_avg_name`], [`exp_avg_sq_name`]),
    /// on the CPU, for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            let shape = slot.var.shape().clone();
            let (m, v) = match &slot.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, shape.clone(), &Device::Cpu)?,
                    Tensor::from_slice(v, shape, &Device::Cpu)?,
                ),
                Moments::Tensors { m, v } => {
                    (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?)
                }
            };
            out.push((exp_avg_name(&slot.name), m));
            out.push((exp_avg_sq_name(&slot.name), v));
        }
        Ok(out)
    }

    /// The moments for a checkpoint, named as [`Adam::state_tensors`], CPU
    /// moments borrowed rather than copied.
    pub fn state_data(&self) -> Vec<(String, crate::tensor_data::TensorData<'_>)> {
        use crate::tensor_data::TensorData;
        let mut out = Vec::with_capacity(2 * self.slots.len());
        for slot in &self.slots {
            let (m, v) = match &slot.moments {
                Moments::Host { m, v } => {
                    let shape = slot.var.dims().to_vec();
                    (
                        TensorData::HostF32 {
                            values: m,
                            shape: shape.clone(),
                        },
                        TensorData::HostF32 { values: v, shape },
                    )
                }
                Moments::Tensors { m, v } => {
                    (TensorData::Tensor(m.clone()), TensorData::Tensor(v.clone()))
                }
            };
            out.push((exp_avg_name(&slot.name), m));
            out.push((exp_avg_sq_name(&slot.name), v));
        }
        out
    }

    /// Restores the moments (from [`Adam::state_tensors`]' names in
    /// `tensors`) and the step count. Every moment must be present with its
    /// parameter's shape; nothing changes otherwise.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        let mut loaded = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let get = |name: String| -> Result<Tensor> {
                let tensor = tensors.get(&name).ok_or_else(|| {
                    Error::config("optimizer state", format!("tensor {name} is missing"))
                })?;
                if tensor.dims() != slot.var.dims() {
                    return Err(Error::config(
                        "optimizer state",
                        format!(
                            "tensor {name} has shape {:?}, the parameter {:?}",
                            tensor.dims(),
                            slot.var.dims()
                        ),
                    ));
                }
                Ok(tensor.clone())
            };
            loaded.push((
                get(exp_avg_name(&slot.name))?,
                get(exp_avg_sq_name(&slot.name))?,
            ));
        }
        for (slot, (m, v)) in self.slots.iter_mut().zip(loaded) {
            slot.moments = match slot.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                    v: v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
                },
                Moments::Tensors { .. } => {
                    let (device, dtype) = (slot.var.device(), slot.var.dtype());
                    Moments::Tensors {
                        m: m.to_device(device)?.to_dtype(dtype)?,
                        v: v.to_device(device)?.to_dtype(dtype)?,
                    }
                }
            };
        }
        self.step = step;
        Ok(())
    }
}

/// CPU F32 parameters take the fused path.
fn uses_host_moments(var: &Var) -> bool {
    var.device().is_cpu() && var.dtype() == DType::F32 && var.is_contiguous()
}

/// The per-step scalars, computed in f64 as Python computes them, and their
/// f32 roundings as PyTorch's kernels receive them.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
    /// `1 - lr * wd` (decoupled decay), or 1.
    decay_factor: f64,
    /// `wd` for coupled decay, else 0.
    coupled_decay: f64,
    /// `1 - beta1`, the lerp weight.
    lerp_weight: f64,
    beta2: f64,
    one_minus_beta2: f64,
    /// `sqrt(1 - beta2^t)`.
    bias_correction2_sqrt: f64,
    eps: f64,
    /// `-lr / (1 - beta1^t)`.
    neg_step_size: f64,
}

impl Coefficients {
    fn new(config: &AdamConfig, lr: f64, step: u64) -> Self {
        let t = step as f64;
        let (decay_factor, coupled_decay) = match config.decay {
            _ if config.weight_decay == 0.0 => (1.0, 0.0),
            WeightDecay::Coupled => (1.0, config.weight_decay),
            WeightDecay::Decoupled => (1.0 - lr * config.weight_decay, 0.0),
        };
        let bias_correction1 = 1.0 - config.beta1.powf(t);
        let bias_correction2 = 1.0 - config.beta2.powf(t);
        Self {
            decay_factor,
            coupled_decay,
            lerp_weight: 1.0 - config.beta1,
            beta2: config.beta2,
            one_minus_beta2: 1.0 - config.beta2,
            bias_correction2_sqrt: bias_correction2.sqrt(),
            eps: config.eps,
            neg_step_size: -(lr / bias_correction1),
        }
    }
}

impl Coefficients {
    /// The scalars as F32, as PyTorch's kernels take them (and the fused
    /// CPU loop below rounds them).
    fn scalars(&self) -> fused_ops::AdamScalars {
        fused_ops::AdamScalars {
            decay_factor: self.decay_factor as f32,
            coupled_decay: self.coupled_decay as f32,
            lerp_weight: self.lerp_weight as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: self.one_minus_beta2 as f32,
            bias_correction2_sqrt: self.bias_correction2_sqrt as f32,
            eps: self.eps as f32,
            neg_step_size: self.neg_step_size as f32,
            decoupled: self.decay_factor != 1.0,
            coupled: self.coupled_decay != 0.0,
        }
    }
}

/// The in-place CPU update of one F32 parameter and its host moments.
struct FusedStep<'a> {
    coefficients: Coefficients,
    grad: &'a [f32],
    moments: std::sync::Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

impl candle_core::InplaceOp1 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "adam-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("adam-step: F32 parameters only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adam-step: the parameter is not contiguous")
        };
        let param = &mut data[start..end];
        let mut guard = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adam-step: moments lock poisoned".into()))?;
        let (m, v) = &mut *guard;
        if param.len() != self.grad.len() || m.len() != param.len() || v.len() != param.len() {
            candle_core::bail!("adam-step: parameter, gradient and moments differ in length")
        }
        fused_update(&self.coefficients, param, self.grad, m, v);
        Ok(())
    }
}

/// Dispatches to an FMA build of the loop when the CPU has FMA, as
/// PyTorch's vectorised kernels use fused multiply-adds for `add(alpha=)`
/// and `lerp`.
fn fused_update(c: &Coefficients, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports FMA, checked just above.
        unsafe { fused_update_fma(c, param, grad, m, v) };
        return;
    }
    fused_update_portable(c, param, grad, m, v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn fused_update_fma(
    c: &Coefficients,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    fused_update_portable(c, param, grad, m, v);
}

/// One parameter's update, element by element, in PyTorch's order and
/// roundings (see the module docs). `mul_add` stands where PyTorch's CPU
/// kernels fuse a multiply-add: `add(alpha=)` and `lerp` (`vec::fmadd`), and
/// `addcmul`, whose `v + (s·g)·g` its compiler contracts into one FMA;
/// `tests/adam_pytorch.rs` finds every value bit-equal that way (and the
/// unfused `addcmul` off by one ulp in about one value in ten).
#[inline(always)]
fn fused_update_portable(
    c: &Coefficients,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let decay_factor = c.decay_factor as f32;
    let coupled_decay = c.coupled_decay as f32;
    let lerp_weight = c.lerp_weight as f32;
    let beta2 = c.beta2 as f32;
    let one_minus_beta2 = c.one_minus_beta2 as f32;
    let bias_correction2_sqrt = c.bias_correction2_sqrt as f32;
    let eps = c.eps as f32;
    let neg_step_size = c.neg_step_size as f32;
    let small_weight = lerp_weight.abs() < 0.5;
    let decoupled = c.decay_factor != 1.0;
    let coupled = c.coupled_decay != 0.0;
    for (((p, &g), m), v) in param
        .iter_mut()
        .zip(grad)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        if decoupled {
            *p *= decay_factor;
        }
        let g = if coupled {
            p.mul_add(coupled_decay, g)
        } else {
            g
        };
        // PyTorch's lerp: from the start point for a weight below 0.5,
        // from the end point otherwise (beta1 <= 0.5).
        *m = if small_weight {
            lerp_weight.mul_add(g - *m, *m)
        } else {
            (lerp_weight - 1.0).mul_add(g - *m, g)
        };
        *v = (one_minus_beta2 * g).mul_add(g, *v * beta2);
        let denom = v.sqrt() / bias_correction2_sqrt + eps;
        *p += neg_step_size * *m / denom;
    }
}

/// The same update composed of tensor operations (GPU, F64).
fn composite_step(
    c: &Coefficients,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let param = param.detach();
    let grad = grad.to_dtype(param.dtype())?.detach();
    let param = if c.decay_factor != 1.0 {
        param.affine(c.decay_factor, 0.0)?
    } else {
        param
    };
    let grad = if c.coupled_decay != 0.0 {
        (grad + param.affine(c.coupled_decay, 0.0)?)?
    } else {
        grad
    };
    let m = (m + (&grad - m)?.affine(c.lerp_weight, 0.0)?)?;
    let v = (v.affine(c.beta2, 0.0)? + grad.sqr()?.affine(c.one_minus_beta2, 0.0)?)?;
    let denom = v.sqrt()?.affine(1.0 / c.bias_correction2_sqrt, c.eps)?;
    let param = (param + (m.affine(c.neg_step_size, 0.0)? / denom)?)?;
    Ok((param, m, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An eps that is 0 in F32 divides 0 by 0 for a parameter with no
    /// gradient yet: refused, as are non-finite values; PyTorch's 1e-8 and
    /// the smallest F32 value are taken.
    #[test]
    fn an_eps_of_zero_in_f32_is_refused() {
        let with = |eps: f64| AdamConfig {
            eps,
            ..AdamConfig::default()
        };
        for eps in [0.0, 1e-300, -1e-8, f64::NAN, f64::INFINITY] {
            let err = with(eps).validate().unwrap_err().to_string();
            assert!(err.contains("eps"), "{eps}: {err}");
        }
        for eps in [1e-8, 1e-45, 1.0] {
            with(eps).validate().unwrap();
        }
    }

    /// Hand-derived first step: m = 0.1 g, v = 0.001 g², bias-corrected
    /// m̂ = g, v̂ = g², so θ moves by -lr · g / (|g| + eps) ≈ -lr · sign(g).
    #[test]
    fn first_step_moves_by_lr_in_the_gradient_sign() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[0.5f32, -0.25, 2.0], &dev)?)?;
        let config = AdamConfig {
            lr: 0.01,
            ..AdamConfig::default()
        };
        let mut adam = Adam::new(vec![("w".into(), var.clone())], config)?;
        let grad = Tensor::new(&[0.3f32, -2.0, 1e-3], &dev)?;
        adam.step(&[Some(grad)], config.lr)?;
        let got = var.as_tensor().to_vec1::<f32>()?;
        let expected = [0.49, -0.24, 1.99];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 2e-5, "{got:?}");
        }
        Ok(())
    }

    /// The fused CPU pass and the tensor composite agree over several steps,
    /// with both kinds of weight decay.
    #[test]
    fn fused_and_composite_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        for decay in [WeightDecay::Coupled, WeightDecay::Decoupled] {
            let config = AdamConfig {
                lr: 1e-3,
                weight_decay: 0.1,
                decay,
                ..AdamConfig::default()
            };
            let init = Tensor::randn(0f32, 1.0, (7, 5), &dev)?;
            let fused_var = Var::from_tensor(&init)?;
            let mut fused = Adam::new(vec![("w".into(), fused_var.clone())], config)?;
            // An F64 variable takes the composite path.
            let composite_var = Var::from_tensor(&init.to_dtype(DType::F64)?)?;
            let mut composite = Adam::new(vec![("w".into(), composite_var.clone())], config)?;
            for _ in 0..5 {
                let grad = Tensor::randn(0f32, 1.0, (7, 5), &dev)?;
                fused.step(&[Some(grad.clone())], config.lr)?;
                composite.step(&[Some(grad.to_dtype(DType::F64)?)], config.lr)?;
            }
            let a = fused_var.flatten_all()?.to_vec1::<f32>()?;
            let b = composite_var.flatten_all()?.to_vec1::<f64>()?;
            for (x, y) in a.iter().zip(&b) {
                assert!((f64::from(*x) - y).abs() < 1e-6, "{decay:?}: {x} vs {y}");
            }
        }
        Ok(())
    }

    /// A step refused for a gradient of the wrong shape (the last
    /// parameter's) changes nothing: the optimizer that was refused and
    /// one that never saw the call end bit-equal after the same good steps.
    #[test]
    fn a_refused_step_changes_nothing() -> Result<()> {
        let dev = Device::Cpu;
        let optimizer = || -> Result<(Adam, Vec<Var>)> {
            let a = Var::from_tensor(&Tensor::new(&[0.5f32, -0.25, 2.0], &dev)?)?;
            let b = Var::from_tensor(&Tensor::new(&[1f32, -1.0], &dev)?)?;
            let adam = Adam::new(
                vec![("a".into(), a.clone()), ("b".into(), b.clone())],
                AdamConfig::default(),
            )?;
            Ok((adam, vec![a, b]))
        };
        let good = |k: f32| -> Result<Vec<Option<Tensor>>> {
            Ok(vec![
                Some(Tensor::new(&[0.3f32 * k, -2.0, 1e-3], &dev)?),
                Some(Tensor::new(&[k, 0.5], &dev)?),
            ])
        };
        let (mut refused, refused_vars) = optimizer()?;
        let (mut plain, plain_vars) = optimizer()?;
        refused.step(&good(1.0)?, 1e-3)?;
        plain.step(&good(1.0)?, 1e-3)?;
        let bad = vec![
            Some(Tensor::new(&[9f32, 9.0, 9.0], &dev)?),
            Some(Tensor::new(&[9f32, 9.0, 9.0], &dev)?),
        ];
        let err = refused.step(&bad, 1e-3).unwrap_err().to_string();
        assert!(err.contains("gradient of b"), "{err}");
        refused.step(&good(2.0)?, 1e-3)?;
        plain.step(&good(2.0)?, 1e-3)?;
        assert_eq!(refused.step_count(), plain.step_count());
        for (x, y) in refused_vars.iter().zip(&plain_vars) {
            assert_eq!(
                x.as_tensor().to_vec1::<f32>()?,
                y.as_tensor().to_vec1::<f32>()?
            );
        }
        let state: HashMap<String, Tensor> = refused.state_tensors()?.into_iter().collect();
        for (name, tensor) in plain.state_tensors()? {
            assert_eq!(
                tensor.to_vec1::<f32>()?,
                state[&name].to_vec1::<f32>()?,
                "{name}"
            );
        }
        Ok(())
    }

    #[test]
    fn state_round_trips_and_is_checked() -> Result<()> {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev)?)?;
        let mut adam = Adam::new(vec![("w".into(), var.clone())], AdamConfig::default())?;
        adam.step(&[Some(Tensor::new(&[0.5f32, -0.5], &dev)?)], 1e-3)?;
        let state: HashMap<String, Tensor> = adam.state_tensors()?.into_iter().collect();
        let mut other = Adam::new(vec![("w".into(), var.clone())], AdamConfig::default())?;
        other.load_state(&state, adam.step_count())?;
        assert_eq!(other.step_count(), 1);
        let back: HashMap<String, Tensor> = other.state_tensors()?.into_iter().collect();
        for (name, tensor) in &state {
            assert_eq!(tensor.to_vec1::<f32>()?, back[name].to_vec1::<f32>()?);
        }
        let mut wrong = state.clone();
        wrong.insert(exp_avg_name("w"), Tensor::zeros(3, DType::F32, &dev)?);
        let err = other.load_state(&wrong, 1).unwrap_err().to_string();
        assert!(
            err.contains("optim.exp_avg.w") && err.contains("[3]"),
            "{err}"
        );
        wrong.remove(&exp_avg_name("w"));
        assert!(other
            .load_state(&wrong, 1)
            .unwrap_err()
            .to_string()
            .contains("missing"));
        Ok(())
    }
}
