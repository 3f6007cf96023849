//! What the ranks of a data-parallel run exchange at every step, and how:
//! one buffer, allocated once for the model, summed in place by one
//! collective.
//!
//! The buffer holds a header, then every parameter's gradient at a fixed
//! place:
//!
//! | position      | each rank writes                          | the sum is         |
//! |---------------|-------------------------------------------|--------------------|
//! | 0             | 1 once its step is written, else 0        | the ranks that succeeded |
//! | 1             | its loss (mean over its micro-batches)    | `world` x the mean loss |
//! | 2             | its images                                | the step's images  |
//! | 3 ..          | 1 per parameter that has a gradient       | the ranks that have one |
//! | after         | each gradient divided by `world`          | the mean gradient  |
//!
//! Why one fixed buffer:
//! - A rank that fails (a damaged image in its shard, out of memory in its
//!   backward or while writing the buffer) still makes the same collective,
//!   of the same size, as the others: its success flag is simply 0. With a
//!   buffer built per step, a rank failing before it was built skipped the
//!   collective the others entered, which NCCL leaves undefined (a hang).
//! - The success flags travel with the gradients: no separate collective,
//!   and no separate wait for the GPU, per step.
//! - No memory per step: the gradients are copied into the buffer, summed in
//!   place, and handed back as views into it. Concatenating, summing into a
//!   new buffer and dividing made three copies of every gradient.
//!
//! The header is cleared as soon as it is read, so a rank that fails before
//! writing its next step sends 0, not the flag of the step before.

use candle_core::{DType, Device, Shape, Tensor};

use crate::distributed::GradientSync;
use crate::error::{Error, Result};

const OK: usize = 0;
const LOSS: usize = 1;
const IMAGES: usize = 2;
/// The header's fixed part; one presence count per parameter follows.
const FIXED: usize = 3;
/// 4-bit digits of a size [`GradientExchange::check_same_size`] sends: up
/// to 2^48.
const DIGITS: usize = 12;

/// One step of one rank (what it brings), or of all ranks (what each takes
/// away).
#[derive(Debug)]
pub struct StepShare {
    /// One gradient per parameter, `None` where no gradient reached it.
    pub grads: Vec<Option<Tensor>>,
    /// The loss: the mean over a rank's micro-batches, then over the ranks
    /// (exchanged in F32, the precision it is computed in).
    pub loss: f64,
    /// The images: a rank's, then all ranks'.
    pub images: usize,
}

struct Slot {
    name: String,
    shape: Shape,
    dtype: DType,
    offset: usize,
}

/// A data-parallel rank's buffer for the steps of one model.
pub struct GradientExchange {
    buffer: Tensor,
    /// Zeros the length of the header, to clear it.
    blank: Tensor,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for GradientExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GradientExchange({} parameters, {} values)",
            self.slots.len(),
            self.buffer.elem_count()
        )
    }
}

impl GradientExchange {
    /// The buffer for `params` (name and tensor, in the order gradients
    /// will be passed), on `device`.
    pub fn new<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
        device: &Device,
    ) -> Result<Self> {
        let params: Vec<_> = params.into_iter().collect();
        let header = FIXED + params.len();
        let mut offset = header;
        let slots = params
            .into_iter()
            .map(|(name, tensor)| {
                let slot = Slot {
                    name: name.to_string(),
                    shape: tensor.shape().clone(),
                    dtype: tensor.dtype(),
                    offset,
                };
                offset += tensor.elem_count();
                slot
            })
            .collect();
        Ok(Self {
            buffer: Tensor::zeros(offset, DType::F32, device)?,
            blank: Tensor::zeros(header, DType::F32, device)?,
            slots,
        })
    }

    fn header_len(&self) -> usize {
        FIXED + self.slots.len()
    }

    /// Checks with the other ranks that each has a buffer of this length for
    /// as many parameters: NCCL sums buffers of different lengths without
    /// a word (its behaviour is undefined). A collective, made by every
    /// rank at the same point; the outcome is the same on every rank.
    ///
    /// Each size is sent as 4-bit digits and their squares: `n` ranks'
    /// digits are all equal exactly when `n·Σd² = (Σd)²`, and the sums stay
    /// exact in F32 up to 65,536 ranks.
    pub fn check_same_size(&self, sync: &dyn GradientSync) -> Result<()> {
        let sizes = [self.buffer.elem_count(), self.slots.len()];
        let mut digits = Vec::with_capacity(2 * 2 * DIGITS);
        for size in sizes {
            for k in 0..DIGITS {
                let d = ((size as u64 >> (4 * k)) & 15) as f32;
                digits.extend([d, d * d]);
            }
        }
        let n = digits.len();
        let sums = Tensor::from_vec(digits, n, self.buffer.device())?;
        sync.all_reduce_sum(&sums)?;
        let sums = sums.to_vec1::<f32>()?;
        let world = sync.world_size() as u64;
        let same = sums
            .chunks(2)
            .all(|pair| world * pair[1] as u64 == (pair[0] as u64).pow(2));
        if !same {
            return Err(Error::config(
                "data parallel",
                format!(
                    "rank {}: the ranks' models differ in size (this rank's has {} parameters \
                     in {} values): are they running the same model?",
                    sync.rank(),
                    self.slots.len(),
                    self.buffer.elem_count() - self.header_len()
                ),
            ));
        }
        Ok(())
    }

    /// Every rank's step, averaged: the mean gradients (views into this
    /// buffer, valid until the next exchange), the mean loss and all images.
    ///
    /// Every rank calls this once per step, with `Err` when its own step
    /// failed: it still takes part, so the others learn of the failure
    /// here. Every rank then gets an error (the failed rank its own, the
    /// others one saying a rank failed) or every rank the same values.
    /// Once the collective is made, the outcome is the same on every rank,
    /// except for a failure of this rank reading its own buffer back.
    pub fn exchange(&self, sync: &dyn GradientSync, mine: Result<StepShare>) -> Result<StepShare> {
        let world = sync.world_size();
        // A group of one logs its own loss, not its F32 rounding (a mean
        // over micro-batches is an f64), as the plain run does.
        let own_loss = mine.as_ref().map_or(f64::NAN, |mine| mine.loss);
        let written = mine.and_then(|mine| self.write(mine, world));
        // Whatever happened above: every rank makes the collective.
        let header = sync
            .all_reduce_sum(&self.buffer)
            .and_then(|()| self.take_header());
        written?;
        let header = header?;
        if header[OK] != world as f32 {
            return Err(Error::config(
                "data parallel",
                format!(
                    "rank {}: another rank failed to compute (its error is in its output); this \
                     rank stopped with it",
                    sync.rank()
                ),
            ));
        }
        let mut grads = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let count = header[FIXED + i];
            grads.push(if count == 0.0 {
                None
            } else if count == world as f32 {
                Some(
                    self.buffer
                        .narrow(0, slot.offset, slot.shape.elem_count())?
                        .reshape(&slot.shape)?
                        .to_dtype(slot.dtype)?,
                )
            } else {
                return Err(Error::config(
                    "data parallel",
                    format!(
                        "the ranks disagree on whether {} has a gradient ({count} of {world} \
                         have one): are they running the same model?",
                        slot.name
                    ),
                ));
            });
        }
        Ok(StepShare {
            grads,
            loss: if world == 1 {
                own_loss
            } else {
                f64::from(header[LOSS]) / world as f64
            },
            images: header[IMAGES].round() as usize,
        })
    }

    /// Writes this rank's step: the gradients first, the header (with its
    /// success flag) last, so a failure part way leaves the flag at 0.
    fn write(&self, mine: StepShare, world: usize) -> Result<()> {
        if mine.grads.len() != self.slots.len() {
            return Err(Error::config(
                "data parallel",
                format!(
                    "{} gradients for the {} parameters of the exchange",
                    mine.grads.len(),
                    self.slots.len()
                ),
            ));
        }
        let mut header = vec![0f32; self.header_len()];
        header[OK] = 1.0;
        header[LOSS] = mine.loss as f32;
        header[IMAGES] = mine.images as f32;
        let mut parts = Vec::with_capacity(self.slots.len());
        for (i, (slot, grad)) in self.slots.iter().zip(&mine.grads).enumerate() {
            let Some(grad) = grad else { continue };
            if grad.shape() != &slot.shape {
                return Err(Error::config(
                    "data parallel",
                    format!(
                        "the gradient of {} has shape {:?}, the parameter {:?}",
                        slot.name,
                        grad.shape(),
                        slot.shape
                    ),
                ));
            }
            parts.push((grad, slot.offset));
            header[FIXED + i] = 1.0;
        }
        // Divided before the sum, so the sum is the mean: nothing to divide
        // (no copy) afterwards. For a world of a power of two the division
        // is exact (subnormal values aside). One launch for all gradients
        // with fused-ops' CUDA kernels on; otherwise a scale and a copy per
        // gradient (a copy alone in a group of one).
        fused_ops::copy_scaled_into(&self.buffer, &parts, 1.0 / world as f64)?;
        let header = Tensor::from_vec(header, self.header_len(), self.buffer.device())?;
        self.buffer.slice_set(&header, 0, 0)?;
        Ok(())
    }

    /// The summed header, cleared in the buffer once read. One small read:
    /// the header is copied out on the device first, as reading a view
    /// would copy the whole buffer to the host.
    fn take_header(&self) -> Result<Vec<f32>> {
        let header = self
            .buffer
            .narrow(0, 0, self.header_len())?
            .force_contiguous()?
            .to_vec1::<f32>()?;
        self.buffer.slice_set(&self.blank, 0, 0)?;
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::testing::on_ranks;
    use crate::distributed::InProcessGroup;

    /// A [2, 2] matrix, a vector of 3 and a scalar.
    fn params() -> Vec<(&'static str, Tensor)> {
        let cpu = &Device::Cpu;
        vec![
            ("a", Tensor::zeros((2, 2), DType::F32, cpu).unwrap()),
            ("b", Tensor::zeros(3, DType::F32, cpu).unwrap()),
            ("c", Tensor::zeros((), DType::F32, cpu).unwrap()),
        ]
    }

    /// The exchange of [`params`].
    fn exchange() -> GradientExchange {
        let params = params();
        GradientExchange::new(params.iter().map(|(n, t)| (*n, t)), &Device::Cpu).unwrap()
    }

    /// Rank `r`'s step `s`: `a` = [r+s, 2r, 3, 4r], no gradient for `b`,
    /// `c` = 2r, loss r + 1, 8 images.
    fn step_of(rank: usize, s: usize) -> StepShare {
        let (r, s) = (rank as f32, s as f32);
        let cpu = &Device::Cpu;
        StepShare {
            grads: vec![
                Some(Tensor::new(&[[r + s, 2.0 * r], [3.0, 4.0 * r]], cpu).unwrap()),
                None,
                Some(Tensor::new(2.0 * r, cpu).unwrap()),
            ],
            loss: rank as f64 + 1.0,
            images: 8,
        }
    }

    /// `(a, b present, c, loss, images)` of an exchanged step.
    type Seen = (Vec<Vec<f32>>, bool, f32, f64, usize);

    fn seen(share: StepShare) -> Seen {
        let a = share.grads[0].as_ref().unwrap().to_vec2::<f32>().unwrap();
        let c = share.grads[2].as_ref().unwrap().to_scalar::<f32>().unwrap();
        (a, share.grads[1].is_some(), c, share.loss, share.images)
    }

    /// Two ranks: every rank takes the mean gradients, in their shapes, the
    /// mean loss and all images; a parameter no rank has a gradient for
    /// stays without one. Hand-derived: a = ([0,0,3,0] + [1,2,3,4]) / 2.
    #[test]
    fn ranks_take_the_mean_step() {
        let results = on_ranks(2, |rank| {
            let exchange = exchange();
            seen(
                exchange
                    .exchange(rank, Ok(step_of(rank.rank(), 0)))
                    .unwrap(),
            )
        });
        for result in results {
            assert_eq!(
                result,
                (vec![vec![0.5, 1.0], vec![3.0, 2.0]], false, 1.0, 1.5, 16)
            );
        }
    }

    /// A group of one hands the gradients back unchanged.
    #[test]
    fn a_rank_alone_takes_its_own_step() {
        let results = on_ranks(1, |rank| {
            let exchange = exchange();
            let mine = step_of(3, 1);
            let expected = (
                mine.grads[0].as_ref().unwrap().to_vec2::<f32>().unwrap(),
                false,
                6.0,
                4.0,
                8,
            );
            (seen(exchange.exchange(rank, Ok(mine)).unwrap()), expected)
        });
        assert_eq!(results[0].0, results[0].1);
    }

    /// Rank 1 fails its second step: it gets its own error, rank 0 one
    /// saying a rank failed, and the third step (both ranks) is exchanged
    /// as if nothing had happened: nobody was left waiting, and no flag of
    /// an earlier step was counted.
    #[test]
    fn a_failed_step_is_seen_by_every_rank_and_the_group_goes_on() {
        let results = on_ranks(2, |rank| {
            let exchange = exchange();
            let r = rank.rank();
            let first = seen(exchange.exchange(rank, Ok(step_of(r, 0))).unwrap());
            let mine = if r == 1 {
                Err(Error::config("image", "a damaged image in rank 1's shard"))
            } else {
                Ok(step_of(r, 1))
            };
            let second = exchange.exchange(rank, mine).map_err(|e| e.to_string());
            let third = seen(exchange.exchange(rank, Ok(step_of(r, 2))).unwrap());
            (first, second, third)
        });
        for (r, (first, second, third)) in results.into_iter().enumerate() {
            assert_eq!(first.0, vec![vec![0.5, 1.0], vec![3.0, 2.0]]);
            let err = second.expect_err("a failed step was taken");
            let expected = ["another rank failed to compute", "damaged image"][r];
            assert!(err.contains(expected), "rank {r}: {err}");
            // a = ([2,0,3,0] + [3,2,3,4]) / 2
            assert_eq!(
                third,
                (vec![vec![2.5, 1.0], vec![3.0, 2.0]], false, 1.0, 1.5, 16)
            );
        }
    }

    /// A gradient that cannot be written (a shape that is not its
    /// parameter's) fails that rank after it took part in the collective:
    /// the other rank learns of it instead of waiting.
    #[test]
    fn a_rank_that_cannot_write_its_step_still_takes_part() {
        let results = on_ranks(2, |rank| {
            let exchange = exchange();
            let mut mine = step_of(rank.rank(), 0);
            if rank.rank() == 0 {
                mine.grads[2] = Some(Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
            }
            exchange
                .exchange(rank, Ok(mine))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let own = results[0]
            .as_ref()
            .expect_err("a misshapen gradient was summed");
        assert!(own.contains("gradient of c has shape"), "{own}");
        let other = results[1].as_ref().expect_err("rank 1 stepped alone");
        assert!(other.contains("another rank failed to compute"), "{other}");
    }

    /// Ranks that disagree on which parameters have a gradient (different
    /// models) all fail, naming the parameter.
    #[test]
    fn ranks_disagreeing_on_a_gradient_all_fail() {
        let results = on_ranks(2, |rank| {
            let exchange = exchange();
            let mut mine = step_of(rank.rank(), 0);
            if rank.rank() == 1 {
                mine.grads[1] = Some(Tensor::ones(3, DType::F32, &Device::Cpu).unwrap());
            }
            exchange
                .exchange(rank, Ok(mine))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        for result in results {
            let err = result.expect_err("a disagreement went unseen");
            assert!(
                err.contains("disagree on whether b has a gradient"),
                "{err}"
            );
        }
    }

    /// Ranks whose models differ in size all learn it before a step (NCCL
    /// would sum the buffers regardless); equal ones pass.
    #[test]
    fn ranks_of_models_of_different_sizes_all_fail_the_size_check() {
        let results = on_ranks(3, |rank| {
            let mut params = params();
            if rank.rank() == 2 {
                params.pop();
            }
            let exchange =
                GradientExchange::new(params.iter().map(|(n, t)| (*n, t)), &Device::Cpu).unwrap();
            exchange.check_same_size(rank).map_err(|e| e.to_string())
        });
        for result in results {
            let err = result.expect_err("a size difference went unseen");
            assert!(err.contains("differ in size"), "{err}");
        }
        let same = on_ranks(3, |rank| exchange().check_same_size(rank).is_ok());
        assert_eq!(same, [true; 3]);
    }

    /// Three ranks: the mean is the sum of each gradient times f32(1/3),
    /// checked against that arithmetic done here in f32.
    #[test]
    fn three_ranks_sum_thirds() {
        let results = on_ranks(3, |rank: &InProcessGroup| {
            let exchange = exchange();
            seen(
                exchange
                    .exchange(rank, Ok(step_of(rank.rank(), 1)))
                    .unwrap(),
            )
        });
        let third = 1.0f32 / 3.0;
        let mean = |values: [f32; 3]| values.iter().fold(0f32, |sum, v| sum + v * third);
        let a = vec![
            vec![mean([1.0, 2.0, 3.0]), mean([0.0, 2.0, 4.0])],
            vec![mean([3.0; 3]), mean([0.0, 4.0, 8.0])],
        ];
        for result in results {
            assert_eq!(result, (a.clone(), false, mean([0.0, 2.0, 4.0]), 2.0, 24));
        }
    }
}
