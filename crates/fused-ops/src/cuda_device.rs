//! A CUDA device as a [`KernelDevice`]: buffers from candle's allocator,
//! kernels from `cuda/fused_ops.cu` compiled to PTX by `build.rs` for
//! `CUDA_COMPUTE_CAP`, launched on candle's stream.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{
    DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape};
use half::bf16;

use crate::kernel_launch::{Arg, Grid, KernelDevice};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_ops.ptx"));
const MODULE: &str = "fused_ops_rows";

static LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This crate's kernel launches on CUDA devices in this process (not
/// candle's own): how a test on a GPU sees that the kernels, not the
/// composites, computed a result.
pub fn cuda_kernel_launches() -> u64 {
    LAUNCHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// A launch argument's value: a device address or a scalar.
enum Value {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl KernelDevice for CudaDevice {
    type Storage = CudaStorage;

    fn alloc(&self, dtype: DType, n: usize) -> Result<CudaStorage> {
        // SAFETY: every op writes each element of its buffers before it is
        // read (the emulator, which fills them with NaN, checks that).
        unsafe { BackendDevice::alloc_uninit(self, &Shape::from(n), dtype) }
    }

    fn launch(&self, kernel: &str, grid: Grid, args: &mut [Arg<'_, CudaStorage>]) -> Result<()> {
        let func = self.get_or_load_custom_func(kernel, MODULE, PTX)?;
        let stream = self.cuda_stream();
        // The address of each buffer argument, with the guard that records
        // its use on candle's stream once the launch is queued.
        let mut guards = Vec::new();
        let mut values = Vec::with_capacity(args.len());
        for arg in args.iter_mut() {
            values.push(match arg {
                Arg::In(s, at) => {
                    let (ptr, guard) = match s.dtype() {
                        DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(&stream),
                        DType::BF16 => s.as_cuda_slice::<bf16>()?.device_ptr(&stream),
                        DType::I64 => s.as_cuda_slice::<i64>()?.device_ptr(&stream),
                        other => candle_core::bail!("{kernel}: a {other:?} operand"),
                    };
                    guards.push(guard);
                    Value::Ptr(ptr + (*at * s.dtype().size_in_bytes()) as u64)
                }
                Arg::Out(s, at) | Arg::InPlace(s, at) => {
                    let offset = (*at * s.dtype().size_in_bytes()) as u64;
                    let (ptr, guard) = match s.dtype() {
                        DType::F32 => s.as_cuda_slice_mut::<f32>()?.device_ptr_mut(&stream),
                        DType::BF16 => s.as_cuda_slice_mut::<bf16>()?.device_ptr_mut(&stream),
                        other => candle_core::bail!("{kernel}: a {other:?} output"),
                    };
                    guards.push(guard);
                    Value::Ptr(ptr + offset)
                }
                Arg::I32(v) => Value::I32(*v),
                Arg::I64(v) => Value::I64(*v),
                Arg::F32(v) => Value::F32(*v),
            });
        }
        let mut builder = func.builder();
        for value in &values {
            match value {
                Value::Ptr(v) => builder.arg(v),
                Value::I32(v) => builder.arg(v),
                Value::I64(v) => builder.arg(v),
                Value::F32(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid.grid,
            block_dim: grid.block,
            shared_mem_bytes: 0,
        };
        // SAFETY: each op passes its kernel's arguments in the order and
        // types of its signature in `cuda/fused_ops.cu`, buffers of the
        // kernel's element type with the elements it reads and writes.
        unsafe { builder.launch(cfg) }.w()?;
        LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(guards);
        Ok(())
    }

    fn upload_i64(&self, values: &[i64]) -> Result<CudaStorage> {
        BackendDevice::storage_from_slice(self, values)
    }

    fn with_addresses(
        &self,
        buffers: &[(&CudaStorage, usize)],
        f: &mut dyn FnMut(&[i64]) -> Result<()>,
    ) -> Result<()> {
        let stream = self.cuda_stream();
        let mut guards = Vec::with_capacity(buffers.len());
        let mut addresses = Vec::with_capacity(buffers.len());
        for (s, at) in buffers {
            let (ptr, guard) = match s.dtype() {
                DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(&stream),
                DType::BF16 => s.as_cuda_slice::<bf16>()?.device_ptr(&stream),
                other => candle_core::bail!("a table of buffers given a {other:?} buffer"),
            };
            guards.push(guard);
            addresses.push((ptr + (*at * s.dtype().size_in_bytes()) as u64) as i64);
        }
        let result = f(&addresses);
        // After the launches in `f`: each buffer's use recorded behind them.
        drop(guards);
        result
    }

    fn with_write_addresses(
        &self,
        buffers: &mut [(&mut CudaStorage, usize)],
        f: &mut dyn FnMut(&[i64]) -> Result<()>,
    ) -> Result<()> {
        let stream = self.cuda_stream();
        let mut guards = Vec::with_capacity(buffers.len());
        let mut addresses = Vec::with_capacity(buffers.len());
        for (s, at) in buffers.iter_mut() {
            let offset = (*at * s.dtype().size_in_bytes()) as u64;
            let (ptr, guard) = match s.dtype() {
                DType::F32 => s.as_cuda_slice_mut::<f32>()?.device_ptr_mut(&stream),
                other => candle_core::bail!("a table of written buffers given a {other:?} buffer"),
            };
            guards.push(guard);
            addresses.push((ptr + offset) as i64);
        }
        let result = f(&addresses);
        // After the launches in `f`: each buffer's write recorded behind them.
        drop(guards);
        result
    }
}
