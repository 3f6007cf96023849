//! How much of the vision tower's backward goes into candle's zero-and-add
//! gradient accumulation (ViT-B/16, 224 px, random weights, no MoE and
//! La-SoftMoE in all 12 blocks).
//!
//! candle's `Tensor::backward` gives every node of the graph its gradient
//! through `GradStore::or_insert`: a `zeros_like` of the node, then one `add`
//! per consumer. The zeros and the first add are avoidable work (the first
//! contribution could be moved in): one memset and one read-read-write pass
//! over every activation the graph holds, plus two launches per node on a
//! GPU. This bench replays exactly that part, with the same calls
//! (`Tensor::zeros` of each node's shape and dtype, then `add` of a
//! preallocated tensor of that shape), for every node of the real graph
//! (`Tensor::sorted_nodes`, the list `backward` walks; the root gets ones
//! instead and is left out), and reports it beside the timed backward of the
//! same graph. The extra adds of nodes with several consumers are real
//! accumulation and are not counted. Nor are the zeros and adds candle's
//! backward also spends on operands that track no gradient (the pixels,
//! constants, masks: it calls `or_insert` for every operand of an op), and
//! the replay adds contiguous tensors where a real gradient may be strided.
//! So the replay is a lower bound of the avoidable part, not of everything
//! the accumulation costs.
//!
//! It also times the step's gradient-norm phase on the same gradients:
//! the per-gradient sums of squares as candle's composite and as
//! fused-ops' own path (two kernel launches on a GPU, one pass on the CPU).
//!
//! `cargo bench -p clip-moe --bench grad_accumulation` runs on the CPU at
//! batch 2; with `--features cuda` also on GPU 0 at batch 32 (the training
//! step's batch) in F32 with TF32 matmuls and in BF16.
//! `GRAD_BENCH_BATCH` and `GRAD_BENCH_RUNS` (default 5, medians reported)
//! override. The allocator is tuned as in `vision_throughput`.

use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clip_moe::{ClipConfig, MoeConfig, VisionTransformer};

#[path = "../../softmoe/benches/support/mod.rs"]
#[allow(dead_code)] // `timed` serves the criterion benches
mod support;
use support::{devices, tune_allocator};

fn env_usize(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    match value.parse() {
        Ok(n) if n > 0 => Some(n),
        _ => panic!("{name}={value:?}: expected a positive integer"),
    }
}

/// Milliseconds of one call of `f`, the device synchronised around it.
fn time_ms(device: &Device, f: impl FnOnce() -> Result<()>) -> Result<f64> {
    device.synchronize()?;
    let start = Instant::now();
    f()?;
    device.synchronize()?;
    Ok(start.elapsed().as_secs_f64() * 1e3)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn measure(
    device: &Device,
    dtype: DType,
    (moe_name, moe): (&str, &MoeConfig),
    batch: usize,
    runs: usize,
) -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, device);
    let cfg = ClipConfig::vit_base_patch16().vision_config;
    let tower = VisionTransformer::new(&cfg, moe, vb).map_err(candle_core::Error::from)?;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), device)?.to_dtype(dtype)?;
    let weight = Tensor::randn(0f32, 1.0, (batch, 768), device)?.to_dtype(dtype)?;
    let out = tower.forward(&pixels).map_err(candle_core::Error::from)?;
    let loss = (out * &weight)?.sum_all()?;

    let graph: Vec<&Tensor> = loss
        .sorted_nodes()
        .into_iter()
        .filter(|node| node.id() != loss.id())
        .collect();
    let elements: usize = graph.iter().map(|n| n.elem_count()).sum();
    // Parameters' gradients go through the same zeros-and-add: no fusion of
    // activations' ops can take that part away.
    let in_parameters: usize = graph
        .iter()
        .filter(|n| n.is_variable())
        .map(|n| n.elem_count())
        .sum();
    let nodes: Vec<(Shape, DType)> = graph
        .iter()
        .map(|node| (node.shape().clone(), node.dtype()))
        .collect();
    drop(graph);
    // One preallocated addend per distinct shape: the replay allocates only
    // what the backward allocates (the zeros and the sum).
    let mut addends: Vec<((Shape, DType), Tensor)> = Vec::new();
    for (shape, dtype) in &nodes {
        if !addends.iter().any(|(k, _)| k.0 == *shape && k.1 == *dtype) {
            let t = Tensor::ones(shape.clone(), *dtype, device)?;
            addends.push(((shape.clone(), *dtype), t));
        }
    }
    let addend = |shape: &Shape, dtype: DType| {
        &addends
            .iter()
            .find(|(k, _)| k.0 == *shape && k.1 == dtype)
            .expect("every node's shape has an addend")
            .1
    };

    // Warm-up: one of each, so allocator pools and kernels are loaded.
    loss.backward()?;
    for (shape, dtype) in &nodes {
        Tensor::zeros(shape.clone(), *dtype, device)?.add(addend(shape, *dtype))?;
    }
    // Backward and replay alternate, so a shared machine's drift hits both;
    // the share is the median of the per-run ratios.
    let (mut backwards, mut replays, mut shares) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let backward = time_ms(device, || loss.backward().map(|_| ()))?;
        let replay = time_ms(device, || {
            for (shape, dtype) in &nodes {
                let zeros = Tensor::zeros(shape.clone(), *dtype, device)?;
                zeros.add(addend(shape, *dtype))?;
            }
            Ok(())
        })?;
        backwards.push(backward);
        replays.push(replay);
        shares.push(replay / backward);
    }
    let (backward, replay, share) = (median(backwards), median(replays), median(shares));
    // The host's work at the head of every backward, before its first
    // launch: a GPU whose forward is done idles through it when the loss
    // was read (a synchronisation) between the forward and the backward.
    let sorts: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(loss.sorted_nodes());
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let sort = median(sorts);
    let norm = gradient_norm(device, &varmap, &loss, runs)?;
    println!(
        "{:<4} {:<4} {:<11} batch {batch:>2}: {:>5} graph nodes, {:>7.1} M elements ({:>5.1} M in parameters); \
         backward median {backward:>9.1} ms; zero-and-add replay median {replay:>8.1} ms \
         (median share {:.1} % of the backward)",
        device_name(device),
        format!("{dtype:?}").to_lowercase(),
        moe_name,
        nodes.len(),
        elements as f64 / 1e6,
        in_parameters as f64 / 1e6,
        100.0 * share,
    );
    println!("     graph sort before the backward's first launch: median {sort:.2} ms (host)");
    println!("{norm}");
    // Where the elements are: the shapes holding the most, to aim fusion.
    let mut by_shape: Vec<(&Shape, usize, usize)> = Vec::new();
    for (shape, _) in &nodes {
        match by_shape.iter_mut().find(|(s, _, _)| *s == shape) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += shape.elem_count();
            }
            None => by_shape.push((shape, 1, shape.elem_count())),
        }
    }
    by_shape.sort_by_key(|entry| std::cmp::Reverse(entry.2));
    for (shape, count, total) in by_shape.iter().take(4) {
        println!(
            "     {count:>4} nodes of {:<22} {:>7.1} M elements",
            format!("{:?}", shape.dims()),
            *total as f64 / 1e6
        );
    }
    Ok(())
}

/// The gradient norm's parts as the trainer computes them each step: the
/// sums of squares of every parameter gradient (`fused_ops::sums_of_squares`)
/// read back to the host, as candle's composite (a square and a sum per
/// gradient, then a concatenation) and as fused-ops' own path (two kernels
/// on a GPU, one fused pass on the CPU); medians of alternating runs. The
/// switches are put back as found.
fn gradient_norm(device: &Device, varmap: &VarMap, loss: &Tensor, runs: usize) -> Result<String> {
    let grads = loss.backward()?;
    let vars = varmap.all_vars();
    let present: Vec<&Tensor> = vars.iter().filter_map(|v| grads.get(v)).collect();
    let elements: usize = present.iter().map(|g| g.elem_count()).sum();
    // fused-ops' path takes contiguous F32 gradients only: the BF16
    // tower's take the composite either way.
    let fusable = present
        .iter()
        .all(|g| g.dtype() == DType::F32 && g.is_contiguous());
    let paths: &[bool] = if fusable { &[false, true] } else { &[false] };
    let (cpu_was, cuda_was) = (
        fused_ops::fused_cpu_kernels(),
        fused_ops::fused_cuda_kernels(),
    );
    let mut times = [Vec::new(), Vec::new()];
    // One untimed run of each first: kernels loaded, pools warm.
    for round in 0..=runs {
        for (&fused, times) in paths.iter().zip(&mut times) {
            if device.is_cuda() {
                fused_ops::set_fused_cuda_kernels(fused);
            } else {
                fused_ops::set_fused_cpu_kernels(fused);
            }
            let ms = time_ms(device, || {
                fused_ops::sums_of_squares(&present)?
                    .to_vec1::<f32>()
                    .map(|_| ())
            });
            fused_ops::set_fused_cpu_kernels(cpu_was);
            fused_ops::set_fused_cuda_kernels(cuda_was);
            if round > 0 {
                times.push(ms?);
            }
        }
    }
    let [composite, fused] = times;
    let fused = if fusable {
        let path = if device.is_cuda() {
            "kernels"
        } else {
            "fused CPU pass"
        };
        format!("{path} median {:.2} ms", median(fused))
    } else {
        "no fused path for these gradients (not all F32)".to_string()
    };
    Ok(format!(
        "     gradient norm's sums of squares, {} gradients ({:.1} M elements), read to the host: \
         composite median {:.2} ms; {fused}",
        present.len(),
        elements as f64 / 1e6,
        median(composite),
    ))
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else {
        "cpu"
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    tune_allocator("CLIP_MOE_BENCH_SYSTEM_MALLOC");
    let runs = env_usize("GRAD_BENCH_RUNS").unwrap_or(5);
    for (_, device) in devices() {
        let batch = env_usize("GRAD_BENCH_BATCH").unwrap_or(if device.is_cuda() { 32 } else { 2 });
        #[cfg(feature = "cuda")]
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
        let dtypes: &[DType] = if device.is_cuda() {
            &[DType::F32, DType::BF16]
        } else {
            &[DType::F32]
        };
        for &dtype in dtypes {
            for (name, moe) in [
                ("plain", MoeConfig::none()),
                ("la_soft_moe", MoeConfig::la_soft_moe()),
            ] {
                measure(&device, dtype, (name, &moe), batch, runs)?;
            }
        }
    }
    Ok(())
}
