//! Throughput (tokens/s) of Soft MoE, La-SoftMoE and a dense MLP of the same
//! hidden width, forward and forward + backward.
//!
//! * `paper_shape`: the paper's layer in CLIP ViT-B/16: batch 8, 197 tokens,
//!   dim 768, 4 experts x 49 slots, expert hidden 3072.
//! * `experts_sweep`: the same token budget split over 1 to 16 experts.
//! * `small_batch`: the paper's layer at batch 1 and 2 (inference and the
//!   CLIP tower bench's batch), where each expert gets 49 or 98 slots.
//!
//! `cargo bench -p softmoe` runs on the CPU; with `--features cuda` the same
//! groups run on GPU 0 too, synchronising the device inside the timed region.
//! `scripts/softmoe/bench_torch.py` times PyTorch on the same shapes; figures
//! are in docs/benchmarks.md.
//!
//! Allocator: candle allocates a fresh buffer for every op and, in backward,
//! for every gradient. glibc serves buffers above its mmap threshold (at most
//! 32 MiB, adaptive) with a fresh `mmap`, so each one is page-faulted in and
//! unmapped again; at this shape that doubles the forward + backward time. The
//! bench therefore raises glibc's mmap and trim thresholds first (as a
//! training binary should); `SOFTMOE_BENCH_SYSTEM_MALLOC=1` keeps the defaults.

use std::time::Duration;

use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use softmoe::{Experts, SoftMoe, SoftMoeConfig};

mod support;
use support::{devices, timed, tune_allocator};

/// The paper's training batch.
const BATCH: usize = 8;
const TOKENS: usize = 197;
const DIM: usize = 768;

/// A layer under test: its forward on `(batch, tokens, dim)` tokens.
enum Layer {
    Moe(SoftMoe),
    /// One "expert" over all tokens: a dense MLP with the MoE's kernels.
    Dense(Experts),
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Moe(moe) => moe.forward(x),
            Layer::Dense(mlp) => {
                let (b, n, d) = x.dims3()?;
                mlp.forward(&x.reshape((1, b * n, d))?)?.reshape((b, n, d))
            }
        }
    }
}

fn build(cfg: &SoftMoeConfig, dense: bool, device: &Device) -> Result<(VarMap, Layer)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let layer = if dense {
        let mut cfg = cfg.clone();
        cfg.options.num_experts = 1;
        Layer::Dense(Experts::new(&cfg, vb)?)
    } else {
        Layer::Moe(SoftMoe::new(cfg, vb)?)
    };
    Ok((varmap, layer))
}

fn bench_layer(
    c: &mut Criterion,
    group_name: &str,
    device: &Device,
    batch: usize,
    cases: &[(String, SoftMoeConfig, bool)],
) {
    let mut group = c.benchmark_group(group_name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements((batch * TOKENS) as u64));
    let x = Tensor::randn(0f32, 1.0, (batch, TOKENS, DIM), device).expect("input");
    let loss_weight = Tensor::randn(0f32, 1.0, (batch, TOKENS, DIM), device).expect("loss weight");
    for (name, cfg, dense) in cases {
        let (_varmap, layer) = build(cfg, *dense, device).expect("layer");
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter_custom(|iters| timed(device, iters, || layer.forward(&x).map(|_| ())))
        });
        let x_var = Var::from_tensor(&x).expect("input var");
        group.bench_function(BenchmarkId::new("forward_backward", name), |b| {
            b.iter_custom(|iters| {
                timed(device, iters, || {
                    let out = layer.forward(x_var.as_tensor())?;
                    (out * &loss_weight)?.sum_all()?.backward().map(|_| ())
                })
            })
        });
    }
    group.finish();
}

fn paper_cases() -> Vec<(String, SoftMoeConfig, bool)> {
    vec![
        (
            "soft_moe_4x49".into(),
            SoftMoeConfig::soft_moe(DIM, 4, 49),
            false,
        ),
        (
            "la_soft_moe_4x49".into(),
            SoftMoeConfig::la_soft_moe(DIM, 4, 49),
            false,
        ),
        (
            "dense_mlp_3072".into(),
            SoftMoeConfig::soft_moe(DIM, 1, 1),
            true,
        ),
    ]
}

fn sweep_cases() -> Vec<(String, SoftMoeConfig, bool)> {
    [(1, 196), (2, 98), (8, 25), (16, 12)]
        .into_iter()
        .flat_map(|(e, s)| {
            [
                (
                    format!("soft_moe_{e}x{s}"),
                    SoftMoeConfig::soft_moe(DIM, e, s),
                    false,
                ),
                (
                    format!("la_soft_moe_{e}x{s}"),
                    SoftMoeConfig::la_soft_moe(DIM, e, s),
                    false,
                ),
            ]
        })
        .collect()
}

fn paper_shape(c: &mut Criterion) {
    for (prefix, device) in devices() {
        bench_layer(
            c,
            &format!("{prefix}_paper_shape"),
            &device,
            BATCH,
            &paper_cases(),
        );
    }
}

fn experts_sweep(c: &mut Criterion) {
    for (prefix, device) in devices() {
        bench_layer(
            c,
            &format!("{prefix}_experts_sweep"),
            &device,
            BATCH,
            &sweep_cases(),
        );
    }
}

fn small_batch(c: &mut Criterion) {
    for (prefix, device) in devices() {
        for batch in [1, 2] {
            bench_layer(
                c,
                &format!("{prefix}_batch{batch}"),
                &device,
                batch,
                &paper_cases(),
            );
        }
    }
}

criterion_group!(benches, paper_shape, experts_sweep, small_batch);

fn main() {
    tune_allocator("SOFTMOE_BENCH_SYSTEM_MALLOC");
    benches();
    Criterion::default().configure_from_args().final_summary();
}
