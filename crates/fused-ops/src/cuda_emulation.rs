//! The CPU emulator as a [`KernelDevice`]: `cuda/fused_ops.cu` compiled as
//! C++ (`cuda/emulation/`, built by `build.rs` under `--features
//! cuda-emulation`) and run thread by thread, each block's threads as
//! fibers that switch at `__syncthreads()` and at warp shuffles, odd
//! blocks in reverse thread order (a missing barrier shows as a wrong
//! result).
//!
//! With the feature, the CUDA switch ([`crate::set_fused_cuda_kernels`])
//! sends F32 and BF16 CPU tensors through the CUDA ops, host code and
//! kernels alike, so `tests/cuda_emulation.rs` checks them against the
//! composites on a machine without a GPU. It is for tests: a kernel's
//! threads run one at a time. Without the feature, CPU storage reaching a
//! CUDA op is refused.
//!
//! Buffers are filled with NaN, so an element no kernel wrote shows up,
//! and end in guard elements that every launch checks, so a kernel writing
//! past its buffer is an error naming it rather than silent corruption.
//! A caller's buffer (an operand, a buffer updated in place, one reached
//! through a table of addresses) is handed to a kernel as a copy ahead of
//! guard elements, copied back where the kernel writes it: reading past
//! its end reads NaN, and writing past it is an error, not a write into
//! the heap.

#[cfg(feature = "cuda-emulation")]
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Result, Shape};
#[cfg(feature = "cuda-emulation")]
use half::bf16;

use crate::kernel_launch::{Arg, Grid, KernelDevice};

/// Runs this crate's CUDA kernels on the CPU (see the module docs).
pub(crate) struct Emulator;

#[cfg(feature = "cuda-emulation")]
static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Kernel launches the CPU emulator has run in this process: how a test
/// sees that the kernels, not the composites, computed a result.
#[cfg(feature = "cuda-emulation")]
pub fn cuda_emulation_launches() -> u64 {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Guard elements after the end of every buffer.
#[cfg(feature = "cuda-emulation")]
const GUARD: usize = 64;
/// The guard elements' bits: NaNs with a payload no arithmetic produces.
#[cfg(feature = "cuda-emulation")]
const GUARD_F32: u32 = 0x7fc0_dead;
#[cfg(feature = "cuda-emulation")]
const GUARD_BF16: u16 = 0x7fde;
/// The guard elements of a table of counts or addresses: no count and no
/// address a kernel could use.
#[cfg(feature = "cuda-emulation")]
const GUARD_I64: i64 = 0x7fc0_dead_7fc0_dead;

impl Emulator {
    /// `storage` without its guard elements, once they are checked: the
    /// op's output of `shape`.
    pub(crate) fn finish(storage: CpuStorage, shape: &Shape) -> Result<CpuStorage> {
        #[cfg(feature = "cuda-emulation")]
        {
            check_guard(&storage, "the op's output")?;
            let n = shape.elem_count();
            Ok(match storage {
                CpuStorage::F32(mut v) => {
                    v.truncate(n);
                    CpuStorage::F32(v)
                }
                CpuStorage::BF16(mut v) => {
                    v.truncate(n);
                    CpuStorage::BF16(v)
                }
                other => other,
            })
        }
        #[cfg(not(feature = "cuda-emulation"))]
        {
            let _ = (storage, shape);
            refused()
        }
    }
}

#[cfg(not(feature = "cuda-emulation"))]
fn refused<T>() -> Result<T> {
    candle_core::bail!(
        "this crate's CUDA kernels run on CUDA tensors (the CPU emulator needs the \
         fused-ops feature cuda-emulation)"
    )
}

#[cfg(feature = "cuda-emulation")]
fn check_guard(s: &CpuStorage, what: &str) -> Result<()> {
    let intact = match s {
        CpuStorage::F32(v) => v[v.len() - GUARD..]
            .iter()
            .all(|x| x.to_bits() == GUARD_F32),
        CpuStorage::BF16(v) => v[v.len() - GUARD..]
            .iter()
            .all(|x| x.to_bits() == GUARD_BF16),
        CpuStorage::I64(v) => v[v.len() - GUARD..].iter().all(|&x| x == GUARD_I64),
        other => candle_core::bail!("emulator: {what} is {:?}", other.dtype()),
    };
    if !intact {
        candle_core::bail!("emulator: a kernel wrote past the end of {what}")
    }
    Ok(())
}

/// What a kernel is handed for a caller's buffer `s` from element `at`:
/// a copy of `s[at..]` followed by guard elements, which the caller's
/// buffer lacks (see the module docs).
#[cfg(feature = "cuda-emulation")]
fn shadow(s: &CpuStorage, at: usize, what: &str) -> Result<CpuStorage> {
    fn guarded<T: Copy>(v: &[T], at: usize, guard: T, what: &str) -> Result<Vec<T>> {
        let Some(tail) = v.get(at..) else {
            candle_core::bail!(
                "emulator: {what} given element {at} of a {}-element buffer",
                v.len()
            )
        };
        let mut copy = Vec::with_capacity(tail.len() + GUARD);
        copy.extend_from_slice(tail);
        copy.resize(tail.len() + GUARD, guard);
        Ok(copy)
    }
    Ok(match s {
        CpuStorage::F32(v) => CpuStorage::F32(guarded(v, at, f32::from_bits(GUARD_F32), what)?),
        CpuStorage::BF16(v) => CpuStorage::BF16(guarded(v, at, bf16::from_bits(GUARD_BF16), what)?),
        CpuStorage::I64(v) => CpuStorage::I64(guarded(v, at, GUARD_I64, what)?),
        other => candle_core::bail!("emulator: {what} given a {:?} buffer", other.dtype()),
    })
}

/// Guarded copies ([`shadow`]) of a table's buffers, each of one of
/// `dtypes`, with the addresses at which a kernel finds them.
#[cfg(feature = "cuda-emulation")]
fn table_copies<'s>(
    buffers: impl Iterator<Item = (&'s CpuStorage, usize)>,
    dtypes: &[DType],
    what: &str,
) -> Result<(Vec<CpuStorage>, Vec<i64>)> {
    let copies = buffers
        .map(|(s, at)| {
            if !dtypes.contains(&s.dtype()) {
                candle_core::bail!("emulator: {what} given a {:?} buffer", s.dtype())
            }
            shadow(s, at, what)
        })
        .collect::<Result<Vec<_>>>()?;
    let addresses = copies
        .iter()
        .map(|c| Ok(element_address(c, 0, what)? as usize as i64))
        .collect::<Result<Vec<_>>>()?;
    Ok((copies, addresses))
}

/// Checks the guard elements of `copy`, made by [`shadow`] from `s` at
/// `at` and written by a kernel, then copies what the kernel wrote back
/// into `s`.
#[cfg(feature = "cuda-emulation")]
fn write_back(copy: &CpuStorage, s: &mut CpuStorage, at: usize, what: &str) -> Result<()> {
    check_guard(copy, what)?;
    match (copy, s) {
        (CpuStorage::F32(c), CpuStorage::F32(v)) => v[at..].copy_from_slice(&c[..c.len() - GUARD]),
        (CpuStorage::BF16(c), CpuStorage::BF16(v)) => {
            v[at..].copy_from_slice(&c[..c.len() - GUARD])
        }
        (CpuStorage::I64(c), CpuStorage::I64(v)) => v[at..].copy_from_slice(&c[..c.len() - GUARD]),
        _ => candle_core::bail!("emulator: {what} changed its type"),
    }
    Ok(())
}

#[cfg(feature = "cuda-emulation")]
mod ffi {
    use std::ffi::{c_char, c_int, c_uint, c_void};

    extern "C" {
        /// `cuda/emulation/emulator.cpp`: runs kernel `name` over `grid` x
        /// `block` with `params` (the addresses of its arguments in order)
        /// whose types `signature` spells (checked against the kernel's);
        /// 0 on success, else 1 with a message in `error`.
        pub(super) fn fused_ops_emulate_launch(
            name: *const c_char,
            grid: *const c_uint,
            block: *const c_uint,
            params: *mut *mut c_void,
            signature: *const c_char,
            error: *mut c_char,
            error_len: usize,
        ) -> c_int;
    }
}

/// The address of element `at` of `s`, checked to lie inside it.
#[cfg(feature = "cuda-emulation")]
fn element_address(s: &CpuStorage, at: usize, kernel: &str) -> Result<*const u8> {
    let (ptr, len, size) = match s {
        CpuStorage::F32(v) => (v.as_ptr() as *const u8, v.len(), 4),
        CpuStorage::BF16(v) => (v.as_ptr() as *const u8, v.len(), 2),
        CpuStorage::I64(v) => (v.as_ptr() as *const u8, v.len(), 8),
        other => candle_core::bail!("emulator: {kernel} given a {:?} buffer", other.dtype()),
    };
    if at > len {
        candle_core::bail!("emulator: {kernel} given element {at} of a {len}-element buffer")
    }
    // SAFETY: `at` is at most the length, so the address is in or one past
    // the buffer.
    Ok(unsafe { ptr.add(at * size) })
}

impl KernelDevice for Emulator {
    type Storage = CpuStorage;

    fn alloc(&self, dtype: DType, n: usize) -> Result<CpuStorage> {
        #[cfg(feature = "cuda-emulation")]
        {
            let mut storage = match dtype {
                DType::F32 => CpuStorage::F32(vec![f32::NAN; n + GUARD]),
                DType::BF16 => CpuStorage::BF16(vec![bf16::NAN; n + GUARD]),
                other => candle_core::bail!("emulator: no {other:?} buffers"),
            };
            match &mut storage {
                CpuStorage::F32(v) => v[n..].fill(f32::from_bits(GUARD_F32)),
                CpuStorage::BF16(v) => v[n..].fill(bf16::from_bits(GUARD_BF16)),
                _ => {}
            }
            Ok(storage)
        }
        #[cfg(not(feature = "cuda-emulation"))]
        {
            let _ = (dtype, n);
            refused()
        }
    }

    fn launch(&self, kernel: &str, grid: Grid, args: &mut [Arg<'_, CpuStorage>]) -> Result<()> {
        #[cfg(feature = "cuda-emulation")]
        {
            use std::ffi::{c_void, CString};
            // Each argument's value at the start of its own 8-byte aligned
            // slot, in native byte order (as the kernel reads it), the
            // slots' addresses as the parameter array.
            #[repr(align(8))]
            struct Slot([u8; 8]);
            fn slot(bytes: &[u8]) -> Slot {
                let mut s = [0u8; 8];
                s[..bytes.len()].copy_from_slice(bytes);
                Slot(s)
            }
            // The arguments' types, one character each, as the emulator
            // spells a kernel's parameters (emulator.h's ParamCode).
            let buffer = |s: &CpuStorage| match s.dtype() {
                DType::F32 => 'F',
                DType::BF16 => 'B',
                DType::I64 => 'L',
                _ => '?',
            };
            let signature: String = args
                .iter()
                .map(|arg| match arg {
                    Arg::In(s, _) => buffer(s),
                    Arg::Out(s, _) | Arg::InPlace(s, _) => buffer(s),
                    Arg::I32(_) => 'i',
                    Arg::I64(_) => 'l',
                    Arg::F32(_) => 'f',
                })
                .collect();
            let signature = CString::new(signature).map_err(candle_core::Error::wrap)?;
            // The caller's buffers as guarded copies; the op's own outputs
            // (`Out`, from `alloc`) have their guard elements already.
            let mut copies = Vec::with_capacity(args.len());
            for arg in args.iter() {
                copies.push(match arg {
                    Arg::In(s, at) => Some(shadow(s, *at, kernel)?),
                    Arg::InPlace(s, at) => Some(shadow(s, *at, kernel)?),
                    _ => None,
                });
            }
            let mut slots = Vec::with_capacity(args.len());
            for (arg, copy) in args.iter_mut().zip(&copies) {
                slots.push(match (arg, copy) {
                    (_, Some(copy)) => {
                        slot(&(element_address(copy, 0, kernel)? as usize).to_ne_bytes())
                    }
                    (Arg::Out(s, at), None) => {
                        slot(&(element_address(s, *at, kernel)? as usize).to_ne_bytes())
                    }
                    (Arg::In(..) | Arg::InPlace(..), None) => {
                        candle_core::bail!("emulator: {kernel} given a caller's buffer uncopied")
                    }
                    (Arg::I32(v), None) => slot(&v.to_ne_bytes()),
                    (Arg::I64(v), None) => slot(&v.to_ne_bytes()),
                    (Arg::F32(v), None) => slot(&v.to_ne_bytes()),
                });
            }
            let mut params: Vec<*mut c_void> = slots
                .iter_mut()
                .map(|slot| slot.0.as_mut_ptr() as *mut c_void)
                .collect();
            let name = CString::new(kernel).map_err(candle_core::Error::wrap)?;
            let g = [grid.grid.0, grid.grid.1, grid.grid.2];
            let b = [grid.block.0, grid.block.1, grid.block.2];
            let mut error = vec![0u8; 512];
            // SAFETY: every pointer argument addresses a live buffer of the
            // kernel's element type (element_address); outputs come from
            // `&mut` borrows held for the call; the launcher runs the
            // kernel to its end before returning.
            let failed = unsafe {
                ffi::fused_ops_emulate_launch(
                    name.as_ptr(),
                    g.as_ptr(),
                    b.as_ptr(),
                    params.as_mut_ptr(),
                    signature.as_ptr(),
                    error.as_mut_ptr() as *mut std::ffi::c_char,
                    error.len(),
                )
            };
            LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if failed != 0 {
                let end = error.iter().position(|&c| c == 0).unwrap_or(error.len());
                candle_core::bail!("emulator: {}", String::from_utf8_lossy(&error[..end]))
            }
            for (arg, copy) in args.iter_mut().zip(&copies) {
                match (arg, copy) {
                    (Arg::Out(s, _), _) => {
                        check_guard(s, &format!("an output buffer of {kernel}"))?
                    }
                    (Arg::In(..), Some(copy)) => {
                        check_guard(copy, &format!("an input buffer of {kernel}"))?
                    }
                    (Arg::InPlace(s, at), Some(copy)) => {
                        write_back(copy, s, *at, &format!("a buffer {kernel} updates in place"))?
                    }
                    _ => {}
                }
            }
            Ok(())
        }
        #[cfg(not(feature = "cuda-emulation"))]
        {
            let _ = (kernel, grid, args);
            refused()
        }
    }

    fn upload_i64(&self, values: &[i64]) -> Result<CpuStorage> {
        #[cfg(feature = "cuda-emulation")]
        {
            Ok(CpuStorage::I64(values.to_vec()))
        }
        #[cfg(not(feature = "cuda-emulation"))]
        {
            let _ = values;
            refused()
        }
    }

    fn with_addresses(
        &self,
        buffers: &[(&CpuStorage, usize)],
        f: &mut dyn FnMut(&[i64]) -> Result<()>,
    ) -> Result<()> {
        #[cfg(feature = "cuda-emulation")]
        {
            let (copies, addresses) = table_copies(
                buffers.iter().map(|(s, at)| (*s, *at)),
                &[DType::F32, DType::BF16],
                "a table of buffers",
            )?;
            // The kernels only read through these addresses, and `copies`
            // lives while they run (each launch runs to its end).
            f(&addresses)?;
            for copy in &copies {
                check_guard(copy, "a buffer read through a table")?;
            }
            Ok(())
        }
        #[cfg(not(feature = "cuda-emulation"))]
        {
            let _ = (buffers, f);
            refused()
        }
    }

    fn with_write_addresses(
        &self,
        buffers: &mut [(&mut CpuStorage, usize)],
        f: &mut dyn FnMut(&[i64]) -> Result<()>,
    ) -> Result<()> {
        #[cfg(feature = "cuda-emulation")]
        {
            let (copies, addresses) = table_copies(
                buffers.iter().map(|(s, at)| (&**s, *at)),
                &[DType::F32],
                "a table of written buffers",
            )?;
            // The kernels in `f` write the copies through these addresses
            // (each launch runs to its end); `buffers`, borrowed exclusively,
            // get what they wrote.
            f(&addresses)?;
            for ((s, at), copy) in buffers.iter_mut().zip(&copies) {
                write_back(copy, s, *at, "a buffer written through a table")?;
            }
            Ok(())
        }
        #[cfg(not(feature = "cuda-emulation"))]
        {
            let _ = (buffers, f);
            refused()
        }
    }
}

/// The emulator against kernels that break CUDA's rules on purpose
/// (`cuda/emulation/self_test_kernels.cpp`): each kind of bug is reported.
#[cfg(all(test, feature = "cuda-emulation"))]
mod tests {
    use super::*;

    fn grid(blocks: u32, threads: u32) -> Grid {
        Grid {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
        }
    }

    /// The error of a launch that must fail (a panic if it ran).
    fn failed_launch(kernel: &str, grid: Grid, args: &mut [Arg<'_, CpuStorage>]) -> String {
        match Emulator.launch(kernel, grid, args) {
            Ok(()) => panic!("{kernel} launched"),
            Err(e) => e.to_string(),
        }
    }

    fn values(s: &CpuStorage, n: usize) -> Vec<f32> {
        match s {
            CpuStorage::F32(v) => v[..n].to_vec(),
            _ => unreachable!("the tests use F32 buffers"),
        }
    }

    /// Two blocks of 64 values; `kernel` sums each block.
    fn block_sums(kernel: &str) -> Result<Vec<f32>> {
        let x = CpuStorage::F32((0..128).map(|i| i as f32).collect());
        let mut out = Emulator.alloc(DType::F32, 2)?;
        Emulator.launch(
            kernel,
            grid(2, 64),
            &mut [Arg::In(&x, 0), Arg::Out(&mut out, 0)],
        )?;
        Ok(values(&out, 2))
    }

    #[test]
    fn a_missing_barrier_gives_a_wrong_sum() -> Result<()> {
        let expected = [(0..64).sum::<i32>() as f32, (64..128).sum::<i32>() as f32];
        assert_eq!(block_sums("emulator_test_synced_sum")?, expected);
        // Block 0 runs thread 0 first, before the others have written.
        assert_ne!(block_sums("emulator_test_unsynced_sum")?, expected);
        Ok(())
    }

    #[test]
    fn a_write_past_the_end_is_reported() -> Result<()> {
        let mut y = Emulator.alloc(DType::F32, 10)?;
        let err = failed_launch(
            "emulator_test_write_one_past",
            grid(1, 32),
            &mut [Arg::Out(&mut y, 0), Arg::I32(10)],
        );
        assert!(err.contains("wrote past the end"), "{err}");
        Ok(())
    }

    /// A caller's buffer (not the emulator's own, so without guard
    /// elements of its own) updated in place, and one written through a
    /// table: a write one past the end is reported, a write to the end
    /// lands in the caller's buffer.
    #[test]
    fn a_write_past_the_end_of_a_callers_buffer_is_reported() -> Result<()> {
        let mut y = CpuStorage::F32(vec![0.0; 12]);
        let err = failed_launch(
            "emulator_test_write_one_past",
            grid(1, 32),
            &mut [Arg::InPlace(&mut y, 2), Arg::I32(10)],
        );
        assert!(err.contains("wrote past the end of a buffer"), "{err}");
        Emulator.launch(
            "emulator_test_write_one_past",
            grid(1, 32),
            &mut [Arg::InPlace(&mut y, 3), Arg::I32(8)],
        )?;
        let mut expected = [1.0; 12];
        expected[..3].fill(0.0);
        assert_eq!(values(&y, 12), expected);

        let table_launch = |y: &mut CpuStorage, at: usize, n: i32| {
            Emulator.with_write_addresses(&mut [(y, at)], &mut |addresses| {
                let table = Emulator.upload_i64(addresses)?;
                Emulator.launch(
                    "emulator_test_table_write_one_past",
                    grid(1, 32),
                    &mut [Arg::In(&table, 0), Arg::I32(n)],
                )
            })
        };
        let mut y = CpuStorage::F32(vec![0.0; 12]);
        let err = table_launch(&mut y, 2, 10).unwrap_err().to_string();
        assert!(
            err.contains("wrote past the end of a buffer written through a table"),
            "{err}"
        );
        table_launch(&mut y, 3, 8)?;
        assert_eq!(values(&y, 12), expected);
        Ok(())
    }

    #[test]
    fn shuffles_exchange_lanes_and_refuse_what_cuda_does_not_define() -> Result<()> {
        let mut y = Emulator.alloc(DType::F32, 64)?;
        Emulator.launch(
            "emulator_test_swap_pairs",
            grid(1, 64),
            &mut [Arg::Out(&mut y, 0)],
        )?;
        let expected: Vec<f32> = (0..64).map(|i| (i ^ 1) as f32).collect();
        assert_eq!(values(&y, 64), expected);
        // Half a warp at a full-warp shuffle, the other half gone on.
        let mut y = Emulator.alloc(DType::F32, 32)?;
        let err = failed_launch(
            "emulator_test_diverged_shuffle",
            grid(1, 32),
            &mut [Arg::Out(&mut y, 0), Arg::I32(16)],
        );
        assert!(err.contains("not every lane"), "{err}");
        // A block of 48 threads: the second warp is partial.
        let mut y = Emulator.alloc(DType::F32, 48)?;
        let err = failed_launch(
            "emulator_test_diverged_shuffle",
            grid(1, 48),
            &mut [Arg::Out(&mut y, 0), Arg::I32(48)],
        );
        assert!(err.contains("partial warp"), "{err}");
        Ok(())
    }

    /// A launch whose arguments do not match the kernel's parameters in
    /// type (an i64 for an int, a BF16 buffer for a float*) or number is
    /// an error, as it would read garbage on a GPU.
    #[test]
    fn arguments_of_the_wrong_type_or_number_are_errors() -> Result<()> {
        let mut y = Emulator.alloc(DType::F32, 10)?;
        let err = failed_launch(
            "emulator_test_write_one_past",
            grid(1, 32),
            &mut [Arg::Out(&mut y, 0), Arg::I64(9)],
        );
        assert!(err.contains("takes (Fi), launched with (Fl)"), "{err}");
        let mut half = Emulator.alloc(DType::BF16, 64)?;
        let err = failed_launch(
            "emulator_test_swap_pairs",
            grid(1, 64),
            &mut [Arg::Out(&mut half, 0)],
        );
        assert!(err.contains("takes (F), launched with (B)"), "{err}");
        let err = failed_launch(
            "emulator_test_swap_pairs",
            grid(1, 64),
            &mut [Arg::Out(&mut y, 0), Arg::I32(1)],
        );
        assert!(err.contains("launched with (Fi)"), "{err}");
        Ok(())
    }

    #[test]
    fn unknown_kernels_and_oversized_blocks_are_errors() -> Result<()> {
        let mut y = Emulator.alloc(DType::F32, 4)?;
        let err = failed_launch("no_such_kernel", grid(1, 32), &mut [Arg::Out(&mut y, 0)]);
        assert!(err.contains("no kernel named"), "{err}");
        let err = failed_launch(
            "emulator_test_swap_pairs",
            grid(1, 2048),
            &mut [Arg::Out(&mut y, 0)],
        );
        assert!(err.contains("2048 threads"), "{err}");
        Ok(())
    }
}
