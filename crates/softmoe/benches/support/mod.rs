//! Helpers shared by the workspace's throughput benches: this crate's
//! `moe_throughput` and, through `#[path]`, `clip-moe`'s `vision_throughput`.

use std::time::{Duration, Instant};

use candle_core::{Device, Result};

/// The devices a bench runs on: the CPU, and GPU 0 when the including crate
/// is built with its `cuda` feature. `BENCH_DEVICES` (`cpu`, `cuda` or
/// `cpu,cuda`) narrows that: on a lent GPU machine the CPU pass only spends
/// its time.
pub fn devices() -> Vec<(&'static str, Device)> {
    let wanted = std::env::var("BENCH_DEVICES").unwrap_or_else(|_| "cpu,cuda".into());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();
    if let Some(other) = wanted.iter().find(|d| !["cpu", "cuda"].contains(d)) {
        panic!("BENCH_DEVICES: unknown device {other:?} (cpu, cuda or cpu,cuda)");
    }
    let mut devices = Vec::new();
    if wanted.contains(&"cpu") {
        devices.push(("cpu", Device::Cpu));
    }
    if cfg!(feature = "cuda") && wanted.contains(&"cuda") {
        devices.push((
            "cuda",
            Device::new_cuda(0).expect("--features cuda needs GPU 0"),
        ));
    }
    devices
}

/// Times `iters` runs of `step`, synchronising the device so GPU work is
/// inside the measurement.
pub fn timed(device: &Device, iters: u64, mut step: impl FnMut() -> Result<()>) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        step().expect("benchmark step failed");
    }
    device.synchronize().expect("device synchronize failed");
    start.elapsed()
}

/// Keeps freed large buffers in the heap for reuse instead of unmapping them
/// (glibc only), unless the environment variable `opt_out` is set. candle
/// allocates a fresh buffer per op and per gradient; with glibc's adaptive
/// mmap threshold each large one is page-faulted in and unmapped again.
pub fn tune_allocator(opt_out: &str) {
    if std::env::var_os(opt_out).is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // benchmark thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
