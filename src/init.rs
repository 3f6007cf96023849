//! Seeded parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded (`Device::set_seed` fails
//! on the CPU), so a model built from a plain `VarMap` starts from different
//! random weights in every run, and a run is not reproducible from its seed.
//! [`SeededVarMap`] is a `VarBuilder` backend that creates every missing
//! variable from its own ChaCha8 stream keyed by (seed, variable name): the
//! same seed gives the same weights, whatever order the layers are built in,
//! on every device. Distributions follow `candle_nn::Init`'s definitions.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A `VarMap` whose new variables are drawn from seeded streams.
#[derive(Clone)]
pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// An empty map drawing from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            seed,
        }
    }

    /// The variables created so far.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// A builder over this map (`dtype` as for `VarBuilder::from_varmap`).
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

/// FNV-1a of the name: a stable stream id per variable.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Standard normal draws by Box-Muller (two per pair of uniforms).
fn normals(rng: &mut ChaCha8Rng, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // (0, 1]: ln never sees zero.
        let u1 = 1.0 - rng.random::<f64>();
        let u2 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push(r * theta.cos());
        out.push(r * theta.sin());
    }
    out.truncate(n);
    out
}

/// The values `init` prescribes for `shape`, drawn from `rng`.
pub(crate) fn draw(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f64> {
        (0..n)
            .map(|_| lo + (up - lo) * rng.random::<f64>())
            .collect()
    };
    match init {
        Init::Const(value) => vec![value; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => normals(rng, n)
            .into_iter()
            .map(|z| mean + stdev * z)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound)
                }
                NormalOrUniform::Normal => normals(rng, n).into_iter().map(|z| std * z).collect(),
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {name} requested with shape {shape:?}, exists with {:?}",
                    var.shape()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(name_stream(name));
        let values = draw(init, &shape, &mut rng);
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)?;
        let var = Var::from_tensor(&tensor)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        let vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        vars.get(name)
            .map(|var| var.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .is_ok_and(|vars| vars.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(map: &SeededVarMap, name: &str) -> Vec<f32> {
        map.varmap().data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn same_seed_same_weights_in_any_order() {
        let dev = Device::Cpu;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let a = SeededVarMap::new(7);
        let vb = a.var_builder(DType::F32, &dev);
        vb.get_with_hints((8, 4), "x.weight", init).unwrap();
        vb.get_with_hints(5, "y.bias", Init::Const(0.5)).unwrap();
        let b = SeededVarMap::new(7);
        let vb = b.var_builder(DType::F32, &dev);
        vb.get_with_hints(5, "y.bias", Init::Const(0.5)).unwrap();
        vb.get_with_hints((8, 4), "x.weight", init).unwrap();
        assert_eq!(values(&a, "x.weight"), values(&b, "x.weight"));
        assert_eq!(values(&a, "y.bias"), vec![0.5; 5]);
        let c = SeededVarMap::new(8);
        c.var_builder(DType::F32, &dev)
            .get_with_hints((8, 4), "x.weight", init)
            .unwrap();
        assert_ne!(values(&a, "x.weight"), values(&c, "x.weight"));
    }

    /// Moments of the drawn distributions match their definitions (10^5
    /// draws: standard errors about 0.3 % of the spread).
    #[test]
    fn distributions_have_the_requested_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let shape = Shape::from((100, 1000));
        let moments = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
            (mean, var.sqrt())
        };
        let (mean, std) = moments(&draw(
            Init::Randn {
                mean: 1.0,
                stdev: 2.0,
            },
            &shape,
            &mut rng,
        ));
        assert!((mean - 1.0).abs() < 0.02 && (std - 2.0).abs() < 0.02);
        let (mean, std) = moments(&draw(Init::Uniform { lo: -1.0, up: 3.0 }, &shape, &mut rng));
        // Uniform(-1, 3): mean 1, std 4 / sqrt(12).
        assert!((mean - 1.0).abs() < 0.02 && (std - 4.0 / 12f64.sqrt()).abs() < 0.02);
        // Kaiming normal, fan in 1000, ReLU gain sqrt(2): std sqrt(2/1000).
        let (mean, std) = moments(&draw(
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
            &shape,
            &mut rng,
        ));
        assert!(mean.abs() < 1e-3 && (std - (2.0f64 / 1000.0).sqrt()).abs() < 1e-3);
    }
}
