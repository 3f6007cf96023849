//! Images/s of the CLIP ViT-B/16 vision tower (random weights, 224 px, batch
//! 2), forward and forward + backward, without MoE and with a Soft MoE or
//! La-SoftMoE branch (4 experts x 49 slots, expert width 3072) in all 12
//! blocks.
//!
//! `cargo bench -p clip-moe` runs on the CPU; with `--features cuda` the same
//! group runs on GPU 0 too, synchronising the device inside the timed region.
//! `scripts/clip_moe/bench_transformers.py` times transformers'
//! `CLIPVisionModel` on the same shapes; figures are in docs/benchmarks.md.
//!
//! Allocator: candle allocates a fresh buffer per op and per gradient; glibc
//! serves large ones with `mmap` and unmaps them on free, so every buffer is
//! page-faulted in again. The bench raises glibc's mmap and trim thresholds
//! first, as `softmoe`'s bench does and a training binary should;
//! `CLIP_MOE_BENCH_SYSTEM_MALLOC=1` keeps the defaults.

use std::time::Duration;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clip_moe::{ClipConfig, MoeConfig, VisionTransformer};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

#[path = "../../softmoe/benches/support/mod.rs"]
mod support;
use support::{devices, timed, tune_allocator};

const BATCH: usize = 2;

fn build(moe: &MoeConfig, device: &Device) -> Result<(VarMap, VisionTransformer)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let cfg = ClipConfig::vit_base_patch16().vision_config;
    let tower = VisionTransformer::new(&cfg, moe, vb).map_err(candle_core::Error::from)?;
    Ok((varmap, tower))
}

fn cases() -> Vec<(&'static str, MoeConfig)> {
    vec![
        ("none", MoeConfig::none()),
        ("soft_moe_4x49", MoeConfig::soft_moe()),
        ("la_soft_moe_4x49", MoeConfig::la_soft_moe()),
    ]
}

fn vit_b16(c: &mut Criterion) {
    for (prefix, device) in devices() {
        let mut group = c.benchmark_group(format!("{prefix}_vit_b16_batch{BATCH}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(3))
            .measurement_time(Duration::from_secs(15));
        group.throughput(Throughput::Elements(BATCH as u64));
        let pixels = Tensor::randn(0f32, 1.0, (BATCH, 3, 224, 224), &device).expect("pixels");
        let loss_weight = Tensor::randn(0f32, 1.0, (BATCH, 768), &device).expect("loss weight");
        for (name, moe) in cases() {
            let (_varmap, tower) = build(&moe, &device).expect("vision tower");
            let forward = || tower.forward(&pixels).map_err(candle_core::Error::from);
            group.bench_function(BenchmarkId::new("forward", name), |b| {
                b.iter_custom(|iters| timed(&device, iters, || forward().map(|_| ())))
            });
            group.bench_function(BenchmarkId::new("forward_backward", name), |b| {
                b.iter_custom(|iters| {
                    timed(&device, iters, || {
                        let loss = (forward()? * &loss_weight)?.sum_all()?;
                        loss.backward().map(|_| ())
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, vit_b16);

fn main() {
    tune_allocator("CLIP_MOE_BENCH_SYSTEM_MALLOC");
    benches();
    Criterion::default().configure_from_args().final_summary();
}
