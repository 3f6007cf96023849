//! Data parallelism: one trainer per device, each on its shard of every
//! global batch, with the gradients averaged across them before every
//! optimizer step, so every rank takes the same step.
//!
//! The ranks meet through [`GradientSync`], whose one collective is an
//! in-place sum of an F32 buffer. [`InProcessGroup`] runs the ranks as
//! threads of one process (the CPU test of the data-parallel logic);
//! `crate::nccl` sums over NCCL, one process per GPU (`--features nccl`).
//! What travels in the buffer (the gradients, each rank's success, loss and
//! images) is [`crate::gradient_exchange`]'s, the same code over both.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The collective of a data-parallel run: every rank calls the same methods
/// in the same order, with buffers of the same length.
pub trait GradientSync: Send + Sync {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Replaces `buffer`, a contiguous one-dimensional F32 tensor of the
    /// same length on every rank, by its sum over the ranks, in place: the
    /// same values on every rank. In place, because the buffer of a step
    /// holds every gradient of the model: a second one would cost as much
    /// memory again.
    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<()>;

    /// Whether every rank passed `ok`. Every rank calls it at the same
    /// points, a rank that failed included, so the others learn of the
    /// failure there instead of waiting for that rank in the next
    /// collective. The flags are summed: a count of ranks, exact in F32.
    fn all_ok(&self, ok: bool, device: &Device) -> Result<bool> {
        let flag = Tensor::new(&[if ok { 1f32 } else { 0f32 }], device)?;
        self.all_reduce_sum(&flag)?;
        let count = flag.to_vec1::<f32>()?;
        Ok(count.len() == 1 && count[0] == self.world_size() as f32)
    }

    /// [`GradientSync::all_ok`] where the others may wait long for one
    /// rank (rank 0 evaluating, writing a checkpoint, repairing a resumed
    /// run): a group with a time limit on its waits lifts it here.
    fn all_ok_patiently(&self, ok: bool, device: &Device) -> Result<bool> {
        self.all_ok(ok, device)
    }
}

/// A rank's buffer of a round, or why it could not be read.
type Deposit = std::result::Result<Vec<f32>, String>;

struct Shared {
    world: usize,
    deposits: Mutex<Vec<Option<Deposit>>>,
    sum: Mutex<Option<std::result::Result<Arc<Vec<f32>>, String>>>,
    barrier: Barrier,
}

/// One rank of a group of threads in this process. The buffers are summed
/// in rank order, the same arithmetic for every rank, so every rank ends
/// with bit-identical parameters.
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
            sum: Mutex::new(None),
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
    Error::config("data parallel", "a rank panicked while summing")
}

/// Why `buffer` is not what [`GradientSync::all_reduce_sum`] takes, if it
/// is not: every implementation's check.
pub(crate) fn unsummable(buffer: &Tensor) -> Option<String> {
    (buffer.dtype() != DType::F32 || buffer.rank() != 1 || !buffer.is_contiguous()).then(|| {
        format!(
            "the buffer to sum must be a contiguous F32 vector, got {:?} {:?}",
            buffer.dtype(),
            buffer.shape()
        )
    })
}

/// `buffer`'s values, if it is what [`GradientSync::all_reduce_sum`] takes.
fn values_of(buffer: &Tensor) -> Deposit {
    if let Some(reason) = unsummable(buffer) {
        return Err(reason);
    }
    buffer.to_vec1::<f32>().map_err(|e| e.to_string())
}

impl GradientSync for InProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<()> {
        let shared = &self.shared;
        // Deposited even when unreadable: every rank reaches every barrier,
        // also when the round fails, or the others would wait forever.
        shared.deposits.lock().map_err(|_| poisoned())?[self.rank] = Some(values_of(buffer));
        shared.barrier.wait();
        if self.rank == 0 {
            let mut deposits = shared.deposits.lock().map_err(|_| poisoned())?;
            let all: Vec<_> = deposits.iter_mut().map(Option::take).collect();
            *shared.sum.lock().map_err(|_| poisoned())? = Some(sum_of(all));
        }
        shared.barrier.wait();
        let sum = shared
            .sum
            .lock()
            .map_err(|_| poisoned())?
            .clone()
            .ok_or_else(poisoned);
        // Nobody may start the next round before everyone has read this one.
        shared.barrier.wait();
        let sum = sum?.map_err(|reason| Error::config("data parallel", reason))?;
        let summed = Tensor::from_slice(&sum, sum.len(), buffer.device())?;
        buffer.slice_set(&summed, 0, 0)?;
        Ok(())
    }
}

/// The ranks' buffers summed in rank order, or why there is no sum.
fn sum_of(all: Vec<Option<Deposit>>) -> std::result::Result<Arc<Vec<f32>>, String> {
    let mut buffers = Vec::with_capacity(all.len());
    for (rank, deposit) in all.into_iter().enumerate() {
        match deposit {
            Some(Ok(values)) => buffers.push(values),
            Some(Err(reason)) => return Err(format!("rank {rank}: {reason}")),
            None => return Err(format!("rank {rank} deposited nothing")),
        }
    }
    let Some((first, rest)) = buffers.split_first_mut() else {
        return Err("a group of no ranks".into());
    };
    if rest.iter().any(|b| b.len() != first.len()) {
        let lengths: Vec<usize> = std::iter::once(&*first)
            .chain(rest.iter())
            .map(Vec::len)
            .collect();
        return Err(format!(
            "ranks passed buffers of different lengths {lengths:?}"
        ));
    }
    for buffer in rest.iter() {
        first.iter_mut().zip(buffer).for_each(|(s, v)| *s += v);
    }
    Ok(Arc::new(std::mem::take(first)))
}

/// A handle to a rank's synchronisation, for [`crate::TrainOptions`].
#[derive(Clone)]
pub struct SyncHandle(pub Arc<dyn GradientSync>);

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} of {}", self.0.rank(), self.0.world_size())
    }
}

/// Test support: ranks of an [`InProcessGroup`] on threads.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Runs `f` on every rank of a new group of `world`, each on a thread of
    /// its own, and returns the results in rank order; fails if a rank takes
    /// more than 30 s (one left waiting at a barrier never returns).
    pub(crate) fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(&InProcessGroup) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let (send, receive) = std::sync::mpsc::channel();
        for rank in InProcessGroup::new(world) {
            let (f, send) = (Arc::clone(&f), send.clone());
            std::thread::spawn(move || {
                let _ = send.send((rank.rank(), f(&rank)));
            });
        }
        let mut results: Vec<Option<T>> = (0..world).map(|_| None).collect();
        for _ in 0..world {
            let (rank, result) = receive
                .recv_timeout(std::time::Duration::from_secs(30))
                .expect("a rank hung");
            results[rank] = Some(result);
        }
        results.into_iter().map(Option::unwrap).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::on_ranks;
    use super::*;

    /// Three ranks: each buffer becomes the sum, the same on all.
    #[test]
    fn ranks_receive_the_sum_in_place() {
        let results = on_ranks(3, |rank| {
            let r = rank.rank() as f32;
            let buffer = Tensor::new(&[r, 2.0 * r, 1.0], &Device::Cpu).unwrap();
            rank.all_reduce_sum(&buffer).unwrap();
            buffer.to_vec1::<f32>().unwrap()
        });
        for result in &results {
            assert_eq!(result, &vec![3.0, 6.0, 3.0]);
        }
    }

    /// Every rank ok is seen as such; one rank not ok is seen by all.
    #[test]
    fn all_ok_is_true_only_when_every_rank_is_ok() {
        for world in [1, 2, 3] {
            let all = on_ranks(world, |rank| rank.all_ok(true, &Device::Cpu).unwrap());
            assert!(all.iter().all(|&ok| ok), "{world}: {all:?}");
            let last_fails = on_ranks(world, move |rank| {
                rank.all_ok(rank.rank() + 1 != world, &Device::Cpu).unwrap()
            });
            assert!(last_fails.iter().all(|&ok| !ok), "{world}: {last_fails:?}");
        }
    }

    /// Buffers of different lengths, or one that is not an F32 vector,
    /// give every rank an error; none is left waiting at a barrier, and the
    /// group still agrees afterwards.
    #[test]
    fn a_bad_round_fails_every_rank_and_the_group_goes_on() {
        type Case = (&'static str, fn(usize) -> Tensor);
        let cases: [Case; 2] = [
            ("different lengths", |rank| {
                Tensor::zeros(2 + rank, DType::F32, &Device::Cpu).unwrap()
            }),
            ("contiguous F32 vector", |rank| {
                let dtype = if rank == 1 { DType::BF16 } else { DType::F32 };
                Tensor::zeros(2, dtype, &Device::Cpu).unwrap()
            }),
        ];
        for (expected, buffer) in cases {
            let results = on_ranks(2, move |rank| {
                let failed = rank
                    .all_reduce_sum(&buffer(rank.rank()))
                    .map_err(|e| e.to_string());
                let agreed = rank.all_ok(rank.rank() == 0, &Device::Cpu).unwrap();
                let both = rank.all_ok(true, &Device::Cpu).unwrap();
                (failed, agreed, both)
            });
            for (failed, agreed, both) in results {
                let err = failed.expect_err("a bad round succeeded");
                assert!(err.contains(expected), "{err}");
                assert!(!agreed && both);
            }
        }
    }
}
