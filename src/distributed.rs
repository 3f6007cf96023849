//! Data parallelism: one trainer per device, each on its shard of every
//! global batch, with the gradients averaged across them before every
//! optimizer step, so every rank takes the same step.
//!
//! The averaging sits behind [`GradientSync`]. [`InProcessGroup`] runs the
//! ranks as threads of one process (the CPU test of the data-parallel
//! logic, and a way to split a batch across cores' worth of loaders); an
//! NCCL implementation over candle's `nccl` feature would implement the
//! same trait (not written yet: no GPU to test it on).

use std::sync::{Arc, Barrier, Mutex};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Averages gradients across the ranks of a data-parallel run.
pub trait GradientSync: Send + Sync {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces every gradient by its mean over the ranks, computed in F32.
    /// Every rank passes the same parameters in the same order; `None` (no
    /// gradient reached the parameter) must be `None` on every rank.
    fn all_reduce_mean(&self, grads: &mut [Option<Tensor>]) -> Result<()>;
}

/// What a rank deposits: each gradient's F32 values, or nothing.
type Contribution = Vec<Option<Vec<f32>>>;

struct Shared {
    world: usize,
    deposits: Mutex<Vec<Option<Contribution>>>,
    mean: Mutex<Option<Arc<Contribution>>>,
    barrier: Barrier,
}

/// One rank of a group of threads in this process. The mean is summed in
/// rank order and divided by the world size, the same arithmetic on every
/// rank, so every rank ends with bit-identical parameters.
#[derive(Clone)]
pub struct InProcessGroup {
    shared: Arc<Shared>,
    rank: usize,
}

impl std::fmt::Debug for InProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InProcessGroup(rank {} of {})",
            self.rank, self.shared.world
        )
    }
}

impl InProcessGroup {
    /// The `world` ranks of a new group, rank `i` at index `i`.
    pub fn new(world: usize) -> Vec<Self> {
        let shared = Arc::new(Shared {
            world,
            deposits: Mutex::new(vec![None; world]),
            mean: Mutex::new(None),
            barrier: Barrier::new(world.max(1)),
        });
        (0..world)
            .map(|rank| Self {
                shared: Arc::clone(&shared),
                rank,
            })
            .collect()
    }
}

fn poisoned() -> Error {
    Error::config("data parallel", "a rank panicked while averaging gradients")
}

impl GradientSync for InProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_mean(&self, grads: &mut [Option<Tensor>]) -> Result<()> {
        let shared = &self.shared;
        let contribution: Contribution = grads
            .iter()
            .map(|g| {
                g.as_ref()
                    .map(|g| g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
                    .transpose()
            })
            .collect::<candle_core::Result<_>>()?;
        shared.deposits.lock().map_err(|_| poisoned())?[self.rank] = Some(contribution);
        shared.barrier.wait();
        if self.rank == 0 {
            let mut deposits = shared.deposits.lock().map_err(|_| poisoned())?;
            let all: Vec<Contribution> = deposits
                .iter_mut()
                .map(|d| d.take().unwrap_or_default())
                .collect();
            let count = all[0].len();
            if all.iter().any(|c| c.len() != count) {
                return Err(Error::config(
                    "data parallel",
                    "ranks passed different numbers of gradients",
                ));
            }
            let inv = shared.world as f32;
            let mean: Contribution = (0..count)
                .map(|i| {
                    let first = all[0][i].as_ref()?;
                    let mut sum = first.clone();
                    for rank in &all[1..] {
                        let values = rank[i].as_ref()?;
                        sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
                    }
                    Some(sum.into_iter().map(|s| s / inv).collect())
                })
                .collect();
            *shared.mean.lock().map_err(|_| poisoned())? = Some(Arc::new(mean));
        }
        shared.barrier.wait();
        let mean = shared
            .mean
            .lock()
            .map_err(|_| poisoned())?
            .clone()
            .ok_or_else(poisoned)?;
        for (grad, values) in grads.iter_mut().zip(mean.iter()) {
            if let (Some(g), Some(values)) = (grad.as_ref(), values) {
                let averaged =
                    Tensor::from_slice(values, g.shape(), g.device())?.to_dtype(g.dtype())?;
                *grad = Some(averaged);
            }
        }
        // Nobody may start the next round before everyone has read this one.
        shared.barrier.wait();
        Ok(())
    }
}

/// A handle to a rank's synchronisation, for [`crate::TrainOptions`].
#[derive(Clone)]
pub struct SyncHandle(pub Arc<dyn GradientSync>);

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.0.rank(), self.0.world_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three ranks: each gets the mean, computed the same way on all.
    #[test]
    fn ranks_receive_the_mean() {
        let ranks = InProcessGroup::new(3);
        let results: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|rank| {
                    scope.spawn(move || {
                        let r = rank.rank() as f32;
                        let mut grads = vec![
                            Some(Tensor::new(&[r, 2.0 * r, 1.0], &Device::Cpu).unwrap()),
                            None,
                        ];
                        rank.all_reduce_mean(&mut grads).unwrap();
                        assert!(grads[1].is_none());
                        grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for result in &results {
            assert_eq!(result, &vec![1.0, 2.0, 1.0]);
        }
    }
}
