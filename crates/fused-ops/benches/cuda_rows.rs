//! Per-op GPU timings at the shapes of the ViT-B/16 + La-SoftMoE training
//! step at batch 32 (`--features cuda`, GPU 0): each row op as candle's
//! composite and as this crate's CUDA kernel, forward and forward +
//! backward, the device synchronised inside the timed region. With the
//! step's own time (`scripts/device/gpu_checks.sh`) this says where the
//! step's time goes and what the kernels take off it.
//!
//! * attention softmax: `(32 x 12 x 197, 197)` per block;
//! * LayerNorm: `(32 x 197, 768)`, three per block;
//! * combine softmax over slots: `(32 x 197, 196)` per MoE branch;
//! * dispatch softmax over tokens: `(32, 197, 196)` along axis 1, per MoE
//!   branch;
//! * La-SoftMoE's combine: elu + 1 and the instance norm per token,
//!   `(32 x 197, 196)` per MoE branch, and the instance norm per slot,
//!   `(32, 197, 196)` along axis 1;
//! * the router's L2 normalisation of the tokens, `(32 x 197, 768)`;
//! * attention, 12 heads of 64 over `(32, 197, 768)`: candle's matmuls
//!   around the softmax kernel against the memory-efficient kernel;
//! * the block MLP's first linear, `(32 x 197, 768) -> 3072` with quick
//!   GELU: the bias + activation after cuBLAS's product (the experts' take
//!   the same kernel).
//!
//! Without `--features cuda` the bench has nothing to time and says so.

#[cfg(feature = "cuda")]
fn main() {
    use candle_core::{DType, Device, Result, Tensor, Var};
    use criterion::Criterion;

    fn step(
        gpu: &Device,
        x: &Var,
        params: &[Var],
        probe: &Tensor,
        backward: bool,
        f: &dyn Fn(&Tensor, &[Var]) -> Result<Tensor>,
    ) -> Result<()> {
        let y = f(x.as_tensor(), params)?;
        if backward {
            (y * probe)?.sum_all()?.backward()?;
        }
        gpu.synchronize()
    }

    let gpu = Device::new_cuda(0).expect("GPU 0");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        // 9 ops x 2 dtypes x 4 variants: about 1.5 s each keeps the whole
        // bench near 2 minutes of one device call.
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1));
    type Op = Box<dyn Fn(&Tensor, &[Var]) -> Result<Tensor>>;
    // Name, input shape, output width, parameter shapes, the op.
    type Case = (&'static str, (usize, usize), usize, Vec<Vec<usize>>, Op);
    let cases: Vec<Case> = vec![
        (
            "attention_softmax",
            (32 * 12 * 197, 197),
            197,
            vec![],
            Box::new(|x, _| fused_ops::softmax(x, 1)),
        ),
        (
            "layer_norm",
            (32 * 197, 768),
            768,
            vec![vec![768], vec![768]],
            Box::new(|x, p| fused_ops::layer_norm(x, p[0].as_tensor(), p[1].as_tensor(), 1e-5)),
        ),
        (
            "combine_softmax",
            (32 * 197, 196),
            196,
            vec![],
            Box::new(|x, _| fused_ops::softmax(x, 1)),
        ),
        // Soft MoE's dispatch: softmax over the 197 tokens of each of the
        // 196 slots, `(32, 197, 196)` along axis 1.
        (
            "dispatch_softmax",
            (32 * 197, 196),
            196,
            vec![],
            Box::new(|x, _| {
                let dims = x.dims().to_vec();
                fused_ops::softmax(&x.reshape((32, 197, 196))?, 1)?.reshape(dims)
            }),
        ),
        // La-SoftMoE's combine: the elu + 1 feature map and the instance
        // norm per token, both on `(32 x 197, 196)` per MoE branch.
        (
            "combine_elu_plus_one",
            (32 * 197, 196),
            196,
            vec![],
            Box::new(|x, _| fused_ops::elu_plus_one(x)),
        ),
        (
            "combine_instance_norm",
            (32 * 197, 196),
            196,
            vec![],
            Box::new(|x, _| fused_ops::standardize(x, 1, 1e-5)),
        ),
        // The instance norm per slot (`norm_axis: per_slot`): over the 197
        // tokens, `(32, 197, 196)` along axis 1.
        (
            "combine_instance_norm_per_slot",
            (32 * 197, 196),
            196,
            vec![],
            Box::new(|x, _| {
                let dims = x.dims().to_vec();
                fused_ops::standardize(&x.reshape((32, 197, 196))?, 1, 1e-5)?.reshape(dims)
            }),
        ),
        // The router's L2 normalisation of the tokens, per MoE branch.
        (
            "router_l2_normalize",
            (32 * 197, 768),
            768,
            vec![],
            Box::new(|x, _| fused_ops::l2_normalize(x, 1e-6)),
        ),
        // Attention of a ViT-B/16 block: 12 heads of 64 over 197 tokens,
        // the input as q, the two parameters as k and v.
        (
            "attention",
            (32 * 197, 768),
            768,
            vec![vec![32 * 197, 768], vec![32 * 197, 768]],
            Box::new(|x, p| {
                let split = |t: &Tensor| t.reshape((32, 197, 768));
                let (q, k, v) = (
                    split(x)?,
                    split(p[0].as_tensor())?,
                    split(p[1].as_tensor())?,
                );
                fused_ops::attention(&q, &k, &v, 12, 0.125, false)?.reshape((32 * 197, 768))
            }),
        ),
        // The block MLP's first linear with CLIP's quick GELU: the matmul is
        // cuBLAS either way, the bias + activation the kernel or composite.
        (
            "mlp_fc1_quick_gelu",
            (32 * 197, 768),
            3072,
            vec![vec![3072, 768], vec![3072]],
            Box::new(|x, p| {
                let act = Some(fused_ops::Activation::QuickGelu);
                fused_ops::linear(x, p[0].as_tensor(), p[1].as_tensor(), act)
            }),
        ),
    ];
    for dtype in [DType::F32, DType::BF16] {
        let mut group = c.benchmark_group(format!("cuda_rows_{dtype:?}").to_lowercase());
        for (name, shape, out_cols, param_shapes, f) in &cases {
            let random = |shape: &[usize], scale: f64| {
                (Tensor::randn(0f32, 1.0, shape, &gpu).unwrap() * scale)
                    .and_then(|t| t.to_dtype(dtype))
                    .unwrap()
            };
            let x = Var::from_tensor(&random(&[shape.0, shape.1], 1.0)).unwrap();
            let params: Vec<Var> = param_shapes
                .iter()
                .map(|s| Var::from_tensor(&random(s, 0.03)).unwrap())
                .collect();
            let probe = random(&[shape.0, *out_cols], 1.0);
            for kernels in [false, true] {
                fused_ops::set_fused_cuda_kernels(kernels);
                let path = if kernels { "kernel" } else { "composite" };
                for backward in [false, true] {
                    let pass = if backward { "fwd_bwd" } else { "fwd" };
                    group.bench_function(format!("{name}_{pass}_{path}"), |b| {
                        b.iter(|| step(&gpu, &x, &params, &probe, backward, f.as_ref()).unwrap())
                    });
                }
            }
        }
        group.finish();
    }
    fused_ops::set_fused_cuda_kernels(false);
    c.final_summary();
}

#[cfg(not(feature = "cuda"))]
fn main() {
    println!("cuda_rows times CUDA kernels: build it with --features cuda");
}
