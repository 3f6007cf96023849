//! Data parallelism: one trainer per device, each on its shard of every
//! global batch, with the gradients averaged across them before every
//! optimizer step, so every rank takes the same step.
//!
//! The averaging sits behind [`GradientSync`]. [`InProcessGroup`] runs the
//! ranks as threads of one process (the CPU test of the data-parallel
//! logic, and a way to split a batch across cores' worth of loaders);
//! `crate::nccl` implements it over NCCL, one process per GPU
//! (`--features nccl`).

use std::sync::{Arc, Barrier, Mutex};

use candle_core::{DType, Device, Tensor};

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

    /// Whether every rank passed `ok`. Every rank calls it at the same
    /// points, a rank that failed included, so the others learn of the
    /// failure there instead of waiting for that rank in the next
    /// all-reduce. The mean is `k / n` for `k` ranks ok of `n`; it is
    /// compared with `1 - 1/(2n)`, not with 1: a mean computed as the sum
    /// times `f32(1/n)` (NCCL's path) is 0.99999994 for `n` = 41, 47, ...
    fn all_ok(&self, ok: bool, device: &Device) -> Result<bool> {
        let mut flag = [Some(Tensor::new(&[if ok { 1f32 } else { 0f32 }], device)?)];
        self.all_reduce_mean(&mut flag)?;
        let mean = match &flag[0] {
            Some(mean) => mean.to_vec1::<f32>()?,
            None => Vec::new(),
        };
        let all = 1.0 - 0.5 / self.world_size().max(1) as f32;
        Ok(mean.len() == 1 && mean[0] > all)
    }
}

/// What a rank deposits: each gradient's F32 values, or nothing.
type Contribution = Vec<Option<Vec<f32>>>;

struct Shared {
    world: usize,
    deposits: Mutex<Vec<Option<Contribution>>>,
    mean: Mutex<Option<std::result::Result<Arc<Contribution>, String>>>,
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
            // Every rank reaches every barrier, also when the round fails:
            // a rank returning early would leave the others waiting.
            *shared.mean.lock().map_err(|_| poisoned())? = Some(mean_of(&all, shared.world));
        }
        shared.barrier.wait();
        let mean = shared
            .mean
            .lock()
            .map_err(|_| poisoned())?
            .clone()
            .ok_or_else(poisoned)?;
        let mean = match mean {
            Ok(mean) => mean,
            Err(reason) => {
                shared.barrier.wait();
                return Err(Error::config("data parallel", reason));
            }
        };
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

/// The mean of the ranks' contributions, summed in rank order, or why
/// there is none.
fn mean_of(all: &[Contribution], world: usize) -> std::result::Result<Arc<Contribution>, String> {
    let count = all[0].len();
    let layout = |c: &Contribution| -> Vec<Option<usize>> {
        c.iter().map(|g| g.as_ref().map(Vec::len)).collect()
    };
    if all.iter().any(|c| layout(c) != layout(&all[0])) {
        return Err("ranks passed different gradients (number, presence or size)".into());
    }
    let inv = world as f32;
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
    Ok(Arc::new(mean))
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

    /// NCCL's mean: the sum times `f32(1/n)`, which is below 1 for a sum of
    /// `n` ones at some world sizes.
    struct ScaledMean(usize, f32);

    impl GradientSync for ScaledMean {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            self.0
        }
        fn all_reduce_mean(&self, grads: &mut [Option<Tensor>]) -> Result<()> {
            // This rank's flag stands for itself; the others sent `self.1`.
            for grad in grads.iter_mut().flatten() {
                let mine = grad.to_vec1::<f32>()?[0];
                let sum = mine + self.1 * (self.0 - 1) as f32;
                *grad = Tensor::new(&[sum * (1.0 / self.0 as f32)], grad.device())?;
            }
            Ok(())
        }
    }

    /// All ranks ok is recognised at every world size, although 41 ones
    /// times `f32(1/41)` is 0.99999994; one rank failing is seen at any.
    #[test]
    fn all_ok_survives_the_rounding_of_a_scaled_mean() {
        let device = Device::Cpu;
        assert_ne!(41.0f32 * (1.0 / 41.0f32), 1.0, "the case this guards");
        for world in [1, 2, 3, 8, 41, 47, 328, 1024] {
            assert!(
                ScaledMean(world, 1.0).all_ok(true, &device).unwrap(),
                "{world}"
            );
            if world > 1 {
                assert!(
                    !ScaledMean(world, 1.0).all_ok(false, &device).unwrap(),
                    "{world}"
                );
                assert!(
                    !ScaledMean(world, 0.0).all_ok(true, &device).unwrap(),
                    "{world}"
                );
            }
        }
    }

    /// Ranks passing gradients of different sizes all get an error; none
    /// is left waiting at a barrier. Then they agree that not all are ok.
    #[test]
    fn a_mismatched_round_fails_every_rank_and_all_ok_says_so() {
        let (send, receive) = std::sync::mpsc::channel();
        for rank in InProcessGroup::new(2) {
            let send = send.clone();
            std::thread::spawn(move || {
                let len = 2 + rank.rank();
                let mut grads = vec![Some(Tensor::zeros(len, DType::F32, &Device::Cpu).unwrap())];
                let mismatch = rank.all_reduce_mean(&mut grads).map_err(|e| e.to_string());
                let agreed = rank.all_ok(rank.rank() == 0, &Device::Cpu).unwrap();
                let both = rank.all_ok(true, &Device::Cpu).unwrap();
                let _ = send.send((mismatch, agreed, both));
            });
        }
        for _ in 0..2 {
            let (mismatch, agreed, both) = receive
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a rank hung");
            let err = mismatch.expect_err("a mismatched round succeeded");
            assert!(err.contains("different gradients"), "{err}");
            assert!(!agreed && both);
        }
    }
}
