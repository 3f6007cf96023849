//! The buffers of many tensors held for a launch that reaches them through
//! a table of addresses: read locks on the buffers a kernel reads, and
//! write locks, each from an in-place op nested in the previous one's, on
//! the buffers it writes.

use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Result, Tensor};

use crate::kernel_launch::start;

/// Read locks on the buffers of many tensors, held while kernels read them
/// through a table, with each tensor's first element.
///
/// One lock per distinct buffer, taken in the order of their addresses (as
/// candle orders the locks of an in-place op): candle's read lock is not
/// re-entrant, and a second read of one buffer from one thread waits
/// behind any writer waiting on another thread. Tensors that view one
/// buffer (a data-parallel exchange's gradients) take its lock once.
pub(crate) struct HeldBuffers<'a> {
    guards: Vec<candle_core::StorageRef<'a>>,
    /// For each tensor, the index of its buffer's guard.
    which: Vec<usize>,
    /// For each tensor, its first element in its buffer.
    starts: Vec<usize>,
}

impl<'a> HeldBuffers<'a> {
    /// The locks on `tensors`' buffers; an error naming `op` if one of them
    /// is not contiguous.
    pub(crate) fn new(tensors: &[&'a Tensor], op: &str) -> Result<Self> {
        let starts = tensors
            .iter()
            .map(|t| start(t.layout(), op, "an operand"))
            .collect::<Result<Vec<_>>>()?;
        let addresses: Vec<usize> = tensors
            .iter()
            .map(|t| crate::dispatch::buffer_address(t))
            .collect();
        let mut distinct: Vec<(usize, usize)> = addresses.iter().copied().zip(0..).collect();
        distinct.sort_unstable();
        distinct.dedup_by_key(|(address, _)| *address);
        let guards = distinct
            .iter()
            .map(|&(_, i)| tensors[i].storage_and_layout().0)
            .collect();
        let which = addresses
            .iter()
            .map(|a| {
                // Every address is in the list: the search cannot miss.
                distinct
                    .binary_search_by_key(a, |&(address, _)| address)
                    .unwrap_or_else(|at| at)
            })
            .collect();
        Ok(Self {
            guards,
            which,
            starts,
        })
    }

    /// The first tensor's buffer; `None` for no tensors.
    pub(crate) fn first(&self) -> Option<&candle_core::Storage> {
        self.which.first().map(|&i| &*self.guards[i])
    }

    /// Each tensor's buffer as `pick` takes it (candle's storage of one
    /// device), with its first element; an error naming `op` for a buffer
    /// `pick` refuses (a tensor on another device).
    pub(crate) fn buffers<S>(
        &self,
        pick: impl Fn(&candle_core::Storage) -> Option<&S>,
        op: &str,
    ) -> Result<Vec<(&S, usize)>> {
        self.which
            .iter()
            .zip(&self.starts)
            .map(|(&i, &start)| match pick(&self.guards[i]) {
                Some(s) => Ok((s, start)),
                None => candle_core::bail!("{op}: operands on two devices"),
            })
            .collect()
    }
}

/// The CPU storage of a buffer, for [`HeldBuffers::buffers`].
pub(crate) fn cpu_storage(s: &candle_core::Storage) -> Option<&candle_core::CpuStorage> {
    match s {
        candle_core::Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

/// The CUDA storage of a buffer, for [`HeldBuffers::buffers`].
#[cfg(feature = "cuda")]
pub(crate) fn cuda_storage(s: &candle_core::Storage) -> Option<&candle_core::CudaStorage> {
    match s {
        candle_core::Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

/// A buffer held for writing by an enclosing in-place op, with its
/// tensor's first element.
pub(crate) enum HeldMut<'a> {
    Cpu(&'a mut CpuStorage, usize),
    #[cfg(feature = "cuda")]
    Cuda(&'a mut candle_core::CudaStorage, usize),
}

impl HeldMut<'_> {
    /// The CPU storage held, with its first element, for [`buffers_mut`].
    pub(crate) fn cpu(&mut self) -> Option<(&mut CpuStorage, usize)> {
        #[allow(unreachable_patterns)] // without the `cuda` feature
        match self {
            HeldMut::Cpu(s, at) => Some((&mut **s, *at)),
            _ => None,
        }
    }

    /// The CUDA storage held, with its first element, for [`buffers_mut`].
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&mut self) -> Option<(&mut candle_core::CudaStorage, usize)> {
        match self {
            HeldMut::Cuda(s, at) => Some((&mut **s, *at)),
            HeldMut::Cpu(..) => None,
        }
    }
}

/// Each held buffer as `pick` takes it (the storage of one device), with
/// its first element; an error naming `op` for a buffer `pick` refuses (a
/// tensor on another device). The writing twin of [`HeldBuffers::buffers`].
pub(crate) fn buffers_mut<'h, 's, S>(
    held: &'h mut [HeldMut<'s>],
    pick: fn(&'h mut HeldMut<'s>) -> Option<(&'h mut S, usize)>,
    op: &str,
) -> Result<Vec<(&'h mut S, usize)>> {
    held.iter_mut()
        .map(|h| match pick(h) {
            Some(buffer) => Ok(buffer),
            None => candle_core::bail!("{op}: operands on two devices"),
        })
        .collect()
}

/// Runs `f` with the buffers of `tensors` held for writing, in the order
/// of `tensors`; errors name `op`.
///
/// candle hands an in-place op one writable buffer, so each buffer is
/// taken by an in-place op that runs inside the previous one's: the
/// nesting is as deep as `tensors` is long (callers hold a few hundred at
/// most). The buffers are taken in the order of their addresses, as
/// candle orders an in-place op's locks. The tensors must be contiguous
/// and view distinct buffers: a second write lock on one buffer would wait
/// for ever.
///
/// A caller that also reads buffers ([`HeldBuffers`] inside `f`) takes
/// those locks after all of these, where candle's in-place ops take
/// writes and reads in one address order. The two orders can only meet
/// if another thread writes one of the read buffers while this one reads
/// them, which callers must not do in any case (fused Adam reads the
/// gradients the step has finished computing).
pub(crate) fn with_held_mut(
    tensors: &[&Tensor],
    op: &'static str,
    f: &mut dyn FnMut(&mut [HeldMut<'_>]) -> Result<()>,
) -> Result<()> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| crate::dispatch::buffer_address(tensors[i]));
    let sorted: Vec<&Tensor> = order.iter().map(|&i| tensors[i]).collect();
    nest(
        &sorted,
        Vec::with_capacity(tensors.len()),
        op,
        &mut |held: Vec<HeldMut<'_>>| {
            // Back to the tensors' order.
            let mut slots: Vec<Option<HeldMut<'_>>> = (0..order.len()).map(|_| None).collect();
            for (h, &i) in held.into_iter().zip(&order) {
                slots[i] = Some(h);
            }
            let mut held = slots
                .into_iter()
                .map(|h| {
                    h.ok_or_else(|| candle_core::Error::Msg(format!("{op}: a buffer not held")))
                })
                .collect::<Result<Vec<_>>>()?;
            f(&mut held)
        },
    )
}

/// Takes the first of `rest` for writing, and the others inside it, then
/// runs `f` on what all of them and `held` hold.
fn nest<'a>(
    rest: &[&Tensor],
    held: Vec<HeldMut<'a>>,
    op: &'static str,
    f: &mut dyn FnMut(Vec<HeldMut<'_>>) -> Result<()>,
) -> Result<()> {
    let Some((next, rest)) = rest.split_first() else {
        return f(held);
    };
    let held = RefCell::new(Some(held));
    let f = RefCell::new(f);
    next.inplace_op1(&Holding {
        op,
        then: |h: HeldMut<'_>| {
            let Some(earlier) = held.borrow_mut().take() else {
                candle_core::bail!("{op}: an in-place op ran twice")
            };
            let mut all: Vec<HeldMut<'_>> = Vec::with_capacity(earlier.len() + 1);
            all.extend(earlier);
            all.push(h);
            nest(rest, all, op, &mut **f.borrow_mut())
        },
    })
}

/// An in-place op that holds its tensor's buffer while `then` runs.
struct Holding<F> {
    op: &'static str,
    then: F,
}

impl<F: Fn(HeldMut<'_>) -> Result<()>> InplaceOp1 for Holding<F> {
    fn name(&self) -> &'static str {
        self.op
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let at = start(layout, self.op, "a written operand")?;
        (self.then)(HeldMut::Cpu(storage, at))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        let at = start(layout, self.op, "a written operand")?;
        (self.then)(HeldMut::Cuda(storage, at))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// An Adam launch's 3 x 64 buffers held at once on a thread with a
    /// 512 KiB stack (a quarter of a test thread's): each written through
    /// its holder, in the tensors' order whatever their addresses' order.
    #[test]
    fn holds_an_adam_groups_buffers_in_the_tensors_order() {
        let run = || -> Result<()> {
            let tensors: Vec<Tensor> = (0..192)
                .map(|i| Tensor::zeros(1 + i % 5, candle_core::DType::F32, &Device::Cpu))
                .collect::<Result<_>>()?;
            // Out of allocation order, and one tensor a view at an offset.
            let mut refs: Vec<&Tensor> = tensors.iter().rev().collect();
            let view = Tensor::zeros(9, candle_core::DType::F32, &Device::Cpu)?.narrow(0, 4, 3)?;
            refs.push(&view);
            with_held_mut(&refs, "test", &mut |held| {
                assert_eq!(held.len(), refs.len());
                for (k, h) in held.iter_mut().enumerate() {
                    #[allow(irrefutable_let_patterns)]
                    let HeldMut::Cpu(CpuStorage::F32(values), at) = h
                    else {
                        panic!("not an F32 CPU buffer")
                    };
                    values[*at] = k as f32;
                }
                Ok(())
            })?;
            for (k, t) in refs.iter().enumerate() {
                let values = t.to_vec1::<f32>()?;
                assert_eq!(values[0], k as f32, "tensor {k}");
                assert!(
                    values[1..].iter().all(|&x| x == 0.0),
                    "tensor {k}: {values:?}"
                );
            }
            Ok(())
        };
        std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(run)
            .expect("a thread")
            .join()
            .expect("no overflow")
            .expect("held and written");
    }
}
