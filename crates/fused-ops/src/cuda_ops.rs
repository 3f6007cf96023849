//! CUDA kernels of this crate (`cuda/fused_ops.cu`): softmax and
//! La-SoftMoE's instance norm (standardisation) along any axis, LayerNorm
//! and vmoe's L2 normalisation over the last axis, La-SoftMoE's elu + 1 feature
//! map, a linear layer's bias + activation, and memory-efficient attention
//! over all heads, each a candle custom op whose backward is one more kernel
//! (plus two for the parameter gradients' deterministic reduction, three
//! for attention), in F32 and BF16 with F32 statistics.
//!
//! The composites they replace launch one kernel per primitive op forward
//! (max, subtract, exp, sum, divide; mean, subtract, square, mean, root,
//! divide, scale, shift; add, then the activation's ops), and backward every
//! node allocates, zeroes and adds into a gradient buffer. Off unless
//! [`crate::set_fused_cuda_kernels`] or `FUSED_OPS_CUDA=1` turns them on:
//! they have not yet run on a GPU (`tests/cuda_parity.rs` compares them
//! with the composites there; `tests/cuda_emulation.rs` does the same on
//! the CPU emulator).
//!
//! The host code of each op is written once over [`KernelDevice`]:
//! `cuda_fwd` runs it on the CUDA device, `cpu_fwd` on the emulator
//! (`--features cuda-emulation`; without it a CPU tensor is refused).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};

use crate::activation::Activation;
use crate::cuda_emulation::Emulator;
use crate::kernel_launch::{
    chunked_launch, elementwise_launch, kernel_name, row_launch, rows_per_chunk, start, Arg, Grid,
    KernelDevice,
};

/// Softmax along `axis` of a non-empty tensor in F32 or BF16: one thread
/// block per row for the last axis, one thread per column for any other
/// (Soft MoE's dispatch over tokens).
pub(crate) fn softmax(x: &Tensor, axis: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary::Softmax { axis })
}

/// LayerNorm over the last axis of a non-empty tensor; `weight` and `bias`
/// in `x`'s dtype.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps },
    )
}

/// `(x - mean) / sqrt(var + eps)` along `axis` of a non-empty tensor: one
/// thread block per row for the last axis (La-SoftMoE's instance norm per
/// token), one thread per column for another (per slot).
pub(crate) fn standardize(x: &Tensor, axis: usize, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary::Standardize { axis, eps })
}

/// `x / sqrt(Σ x² + eps)` over the last axis of a non-empty tensor.
pub(crate) fn l2_normalize(x: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary::L2Normalize { eps })
}

/// `elu(x) + 1` of a non-empty tensor.
pub(crate) fn elu_plus_one(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Unary::EluPlusOne)
}

/// The head widths the attention kernels are compiled for.
const ATTENTION_HEAD_DIMS: [usize; 5] = [8, 16, 32, 64, 128];

/// Whether [`attention`] takes these operands: `(batch, tokens, heads x
/// head_dim)` each, one shape and dtype, a compiled head width, and a grid
/// inside CUDA's limits; others take the composite.
pub(crate) fn attention_fits(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> bool {
    let Ok((b, n, d)) = q.dims3() else {
        return false;
    };
    heads > 0
        && d % heads == 0
        && ATTENTION_HEAD_DIMS.contains(&(d / heads))
        && k.shape() == q.shape()
        && v.shape() == q.shape()
        && k.dtype() == q.dtype()
        && v.dtype() == q.dtype()
        && (1..=65_535).contains(&b)
        && heads <= 65_535
        && n <= i32::MAX as usize
}

/// Multi-head attention on `(batch, tokens, heads x head_dim)` projections
/// as [`attention_fits`] accepts them, the context in the same layout.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f32,
    causal: bool,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        Attention {
            heads,
            scale,
            causal,
        },
    )
}

/// Whether [`bias_act`] takes `bias` for `pre`: `bias (cols)` for `pre (...,
/// cols)`, or `bias (groups, cols)` for `pre (groups, rows, cols)` with at
/// most 65535 groups (the grid's z); other shapes take the composite.
pub(crate) fn bias_act_fits(pre: &Tensor, bias: &Tensor) -> bool {
    let cols = pre.dims().last().copied();
    match (bias.dims(), pre.dims()) {
        ([c], _) => Some(*c) == cols && *c > 0,
        ([g, c], [pg, _, pc]) => g == pg && c == pc && (1..=65_535).contains(g) && *c > 0,
        _ => false,
    }
}

/// `act(pre + bias)` for `pre (groups, rows, cols)` (or `(..., cols)` with
/// one group) and `bias (groups, cols)` (or `(cols)`), in one dtype; the
/// shapes as [`bias_act_fits`] accepts them.
pub(crate) fn bias_act(pre: &Tensor, bias: &Tensor, act: Option<Activation>) -> Result<Tensor> {
    if !bias_act_fits(pre, bias) {
        candle_core::bail!(
            "fused bias + activation: bias {:?} does not fit {:?}",
            bias.shape(),
            pre.shape()
        )
    }
    let cols = pre.dims().last().copied().unwrap_or(1);
    let groups = bias.elem_count() / cols;
    let act = match act {
        None => 0,
        Some(Activation::Gelu) => 1,
        Some(Activation::QuickGelu) => 2,
    };
    pre.contiguous()?
        .apply_op2(&bias.contiguous()?, BiasAct { act, groups })
}

/// `(outer, len, inner)` of a softmax along `axis` of `l`: the line length
/// and its stride, checked to fit the kernels' 32-bit lengths.
fn axis_split(l: &Layout, axis: usize, op: &str) -> Result<(usize, usize, usize)> {
    let dims = l.dims();
    if axis >= dims.len() {
        candle_core::bail!("{op}: axis {axis} of a {dims:?} tensor")
    }
    let (outer, len, inner) = (
        dims[..axis].iter().product::<usize>(),
        dims[axis],
        dims[axis + 1..].iter().product::<usize>(),
    );
    if len > i32::MAX as usize || inner > i32::MAX as usize {
        candle_core::bail!("{op}: a {dims:?} tensor is too long along axis {axis} or after it")
    }
    Ok((outer, len, inner))
}

/// Rows and row length of a contiguous layout.
fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / cols, cols)
}

/// An op's host code on CPU storage: the CPU emulator's run of its kernels
/// (`--features cuda-emulation`), an error without that feature.
fn on_cpu(
    run: impl FnOnce(&Emulator) -> Result<CpuStorage>,
    shape: Shape,
) -> Result<(CpuStorage, Shape)> {
    let out = run(&Emulator)?;
    Ok((Emulator::finish(out, &shape)?, shape))
}

/// `cpu_fwd` and `cuda_fwd` of a custom op whose host code `run` is
/// written once over [`KernelDevice`]: on CPU storage it runs on the
/// emulator ([`on_cpu`]), on CUDA storage on that storage's device. The
/// storages and layouts are named in the op's operand order, then the
/// output's shape; `$this` is the method's `self`.
macro_rules! on_devices {
    ($this:ident, ($s0:ident, $l0:ident) $(, ($s:ident, $l:ident))* => $shape:expr, $run:expr) => {
        fn cpu_fwd(
            &$this,
            $s0: &CpuStorage,
            $l0: &Layout,
            $($s: &CpuStorage, $l: &Layout),*
        ) -> Result<(CpuStorage, Shape)> {
            on_cpu($run, $shape)
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$this,
            $s0: &candle_core::CudaStorage,
            $l0: &Layout,
            $($s: &candle_core::CudaStorage, $l: &Layout),*
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            let out = ($run)(&$s0.device)?;
            Ok((out, $shape))
        }
    };
}

/// The gradients a backward op packed into one flat tensor, one per shape,
/// in order.
fn unpack(packed: &Tensor, shapes: &[&Shape]) -> Result<Vec<Tensor>> {
    let mut start = 0;
    shapes
        .iter()
        .map(|&shape| {
            let n = shape.elem_count();
            let piece = packed.narrow(0, start, n)?.reshape(shape)?;
            start += n;
            Ok(piece)
        })
        .collect()
}

/// Sums `groups x chunks` partial column sums (`partial[(g * chunks + k) *
/// cols + c]`) over the chunks, in order, into `out[g * cols + c]` from
/// element `at`: the deterministic second half of every parameter-gradient
/// reduction.
#[allow(clippy::too_many_arguments)]
fn sum_chunks<D: KernelDevice>(
    dev: &D,
    dtype: DType,
    op: &str,
    partial: &D::Storage,
    out: &mut D::Storage,
    at: usize,
    (groups, chunks, cols): (usize, usize, usize),
) -> Result<()> {
    dev.launch(
        &kernel_name("sum_chunks", dtype, op)?,
        elementwise_launch(groups * cols),
        &mut [
            Arg::In(partial, 0),
            Arg::Out(out, at),
            Arg::I32(groups as i32),
            Arg::I32(chunks as i32),
            Arg::I32(cols as i32),
        ],
    )
}

/// One-input ops whose backward takes one saved tensor and the incoming
/// gradient: the softmax and the standardisation along any axis (one block
/// per row for the last, one thread per column for another), the L2
/// normalisation over the last axis (one block per row) and elu + 1 (one
/// thread per element).
#[derive(Debug, Clone, Copy)]
enum Unary {
    Softmax { axis: usize },
    Standardize { axis: usize, eps: f32 },
    L2Normalize { eps: f32 },
    EluPlusOne,
}

impl Unary {
    /// The kernels' name stem (`{stem}_fwd`, `{stem}_bwd`).
    fn stem(self) -> &'static str {
        match self {
            Self::Softmax { .. } => "softmax",
            Self::Standardize { .. } => "standardize",
            Self::L2Normalize { .. } => "l2_normalize",
            Self::EluPlusOne => "elu_plus_one",
        }
    }
}

impl CustomOp1 for Unary {
    fn name(&self) -> &'static str {
        "fused-unary-cuda"
    }

    on_devices!(self, (s, l) => l.shape().clone(), |dev| {
        unary_run(dev, *self, "fwd", &[(s, l)])
    });

    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The softmax's and elu + 1's derivatives read the output; the
        // norms recompute their statistics from the input.
        let saved = match self {
            Self::Softmax { .. } | Self::EluPlusOne => y,
            Self::Standardize { .. } | Self::L2Normalize { .. } => x,
        };
        let grad = grad.contiguous()?;
        Ok(Some(saved.apply_op2_no_bwd(&grad, &UnaryBackward(*self))?))
    }
}

/// `(saved, dy) -> dx` of [`Unary`].
struct UnaryBackward(Unary);

impl CustomOp2 for UnaryBackward {
    fn name(&self) -> &'static str {
        "fused-unary-cuda-backward"
    }

    on_devices!(self, (s, l), (dy, ldy) => l.shape().clone(), |dev| {
        unary_run(dev, self.0, "bwd", &[(s, l), (dy, ldy)])
    });
}

/// Kernel `{stem}_{pass}` of `op` on `inputs` (the input forward; the
/// saved tensor and the gradient backward), all of one shape, into a new
/// buffer; a softmax or standardisation along another axis than the last
/// takes the `{stem}_cols_{pass}` kernel.
fn unary_run<D: KernelDevice>(
    dev: &D,
    op: Unary,
    pass: &str,
    inputs: &[(&D::Storage, &Layout)],
) -> Result<D::Storage> {
    let name = "fused-unary-cuda";
    let (first, l) = inputs[0];
    if inputs.iter().any(|(_, other)| other.shape() != l.shape()) {
        candle_core::bail!("{name}: {} operands of different shapes", op.stem())
    }
    let (rows, cols) = rows_cols(l);
    let n = rows * cols;
    // Kernel stem, launch and the arguments after the buffers.
    let (stem, grid, tail) = match op {
        Unary::Softmax { axis } => along_axis(op.stem(), l, axis, None)?,
        Unary::Standardize { axis, eps } => along_axis(op.stem(), l, axis, Some(eps))?,
        Unary::L2Normalize { eps } => (
            op.stem().to_string(),
            row_launch(rows, cols),
            vec![Arg::I32(cols as i32), Arg::F32(eps)],
        ),
        Unary::EluPlusOne => (
            op.stem().to_string(),
            elementwise_launch(n),
            vec![Arg::I64(n as i64)],
        ),
    };
    let dtype = first.dtype();
    let mut out = dev.alloc(dtype, n)?;
    let mut args = Vec::with_capacity(inputs.len() + 1 + tail.len());
    for (s, l) in inputs {
        args.push(Arg::In(*s, start(l, name, "an operand")?));
    }
    args.push(Arg::Out(&mut out, 0));
    args.extend(tail);
    dev.launch(
        &kernel_name(&format!("{stem}_{pass}"), dtype, name)?,
        grid,
        &mut args,
    )?;
    Ok(out)
}

/// Kernel stem, launch and trailing arguments of `stem` along `axis`: the
/// row kernel (one block per row) for the last axis, `{stem}_cols` (one
/// thread per column of `len` elements `inner` apart) for another; `eps`
/// last where the kernel takes one.
fn along_axis<'a, S>(
    stem: &str,
    l: &Layout,
    axis: usize,
    eps: Option<f32>,
) -> Result<(String, Grid, Vec<Arg<'a, S>>)> {
    let (outer, len, inner) = axis_split(l, axis, "fused-unary-cuda")?;
    let (stem, grid, mut tail) = if inner == 1 {
        (
            stem.to_string(),
            row_launch(outer, len),
            vec![Arg::I32(len as i32)],
        )
    } else {
        (
            format!("{stem}_cols"),
            elementwise_launch(outer * inner),
            vec![
                Arg::I64((outer * inner) as i64),
                Arg::I32(len as i32),
                Arg::I32(inner as i32),
            ],
        )
    };
    tail.extend(eps.map(Arg::F32));
    Ok((stem, grid, tail))
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm-cuda"
    }

    on_devices!(self, (x, lx), (w, lw), (b, lb) => lx.shape().clone(), |dev| {
        layer_norm_fwd(dev, (x, lx), (w, lw), (b, lb), self.eps)
    });

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op gives all three gradients, packed: dx, then the weight's,
        // then the bias's.
        let packed = x.apply_op3_no_bwd(
            weight,
            &grad.contiguous()?,
            &LayerNormBackward { eps: self.eps },
        )?;
        let mut grads = unpack(&packed, &[x.shape(), weight.shape(), bias.shape()])?;
        let db = grads.pop();
        let dw = grads.pop();
        Ok((grads.pop(), dw, db))
    }
}

fn layer_norm_fwd<D: KernelDevice>(
    dev: &D,
    (x, lx): (&D::Storage, &Layout),
    (w, lw): (&D::Storage, &Layout),
    (b, lb): (&D::Storage, &Layout),
    eps: f32,
) -> Result<D::Storage> {
    let op = "fused-layer-norm-cuda";
    let (rows, cols) = rows_cols(lx);
    if lw.shape().elem_count() != cols || lb.shape().elem_count() != cols {
        candle_core::bail!(
            "{op}: weight {:?} and bias {:?} must hold the {cols} features of the input",
            lw.shape(),
            lb.shape()
        )
    }
    let x_at = start(lx, op, "the input")?;
    let w_at = start(lw, op, "the weight")?;
    let b_at = start(lb, op, "the bias")?;
    let dtype = x.dtype();
    let mut y = dev.alloc(dtype, rows * cols)?;
    dev.launch(
        &kernel_name("layer_norm_fwd", dtype, op)?,
        row_launch(rows, cols),
        &mut [
            Arg::In(x, x_at),
            Arg::In(w, w_at),
            Arg::In(b, b_at),
            Arg::Out(&mut y, 0),
            Arg::I32(cols as i32),
            Arg::F32(eps),
        ],
    )?;
    Ok(y)
}

/// `(x, weight, dy) -> [dx, d weight, d bias]` (flat) of [`LayerNorm`].
struct LayerNormBackward {
    eps: f32,
}

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "fused-layer-norm-cuda-backward"
    }

    on_devices!(
        self,
        (x, lx), (w, lw), (dy, ldy)
            => Shape::from(lx.shape().elem_count() + 2 * lw.shape().elem_count()),
        |dev| layer_norm_bwd(dev, (x, lx), (w, lw), (dy, ldy), self.eps)
    );
}

fn layer_norm_bwd<D: KernelDevice>(
    dev: &D,
    (x, lx): (&D::Storage, &Layout),
    (w, lw): (&D::Storage, &Layout),
    (dy, ldy): (&D::Storage, &Layout),
    eps: f32,
) -> Result<D::Storage> {
    let op = "fused-layer-norm-cuda-backward";
    let (rows, cols) = rows_cols(lx);
    let x_at = start(lx, op, "the input")?;
    let w_at = start(lw, op, "the weight")?;
    let dy_at = start(ldy, op, "the gradient")?;
    let dtype = x.dtype();
    // dx, then the weight's and the bias's gradients.
    let mut out = dev.alloc(dtype, rows * cols + 2 * cols)?;
    let mut stats = dev.alloc(DType::F32, 2 * rows)?;
    dev.launch(
        &kernel_name("layer_norm_bwd_input", dtype, op)?,
        row_launch(rows, cols),
        &mut [
            Arg::In(x, x_at),
            Arg::In(w, w_at),
            Arg::In(dy, dy_at),
            Arg::Out(&mut out, 0),
            Arg::Out(&mut stats, 0),
            Arg::I32(cols as i32),
            Arg::F32(eps),
        ],
    )?;
    let per_chunk = rows_per_chunk(rows);
    let chunks = rows.div_ceil(per_chunk).max(1);
    let mut partial = dev.alloc(DType::F32, 2 * chunks * cols)?;
    dev.launch(
        &kernel_name("layer_norm_bwd_params", dtype, op)?,
        chunked_launch(cols, chunks, 1),
        &mut [
            Arg::In(x, x_at),
            Arg::In(dy, dy_at),
            Arg::In(&stats, 0),
            Arg::Out(&mut partial, 0),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(per_chunk as i32),
        ],
    )?;
    // The weight's gradients, then the bias's: two groups of columns.
    let at = rows * cols;
    sum_chunks(dev, dtype, op, &partial, &mut out, at, (2, chunks, cols))?;
    Ok(out)
}

/// `act(pre + bias)`; `act` 0 none, 1 GELU, 2 quick GELU (the kernels'
/// numbering); `groups` bias rows.
struct BiasAct {
    act: i32,
    groups: usize,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "fused-bias-act-cuda"
    }

    on_devices!(self, (pre, lp), (bias, lb) => lp.shape().clone(), |dev| {
        bias_act_fwd(dev, self, (pre, lp), (bias, lb))
    });

    fn bwd(
        &self,
        pre: &Tensor,
        bias: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed = pre.apply_op3_no_bwd(
            bias,
            &grad.contiguous()?,
            &BiasActBackward {
                act: self.act,
                groups: self.groups,
            },
        )?;
        let mut grads = unpack(&packed, &[pre.shape(), bias.shape()])?;
        let dbias = grads.pop();
        Ok((grads.pop(), dbias))
    }
}

/// `(n, rows per group, cols)` of `pre` for `groups` groups, as the
/// kernels take them.
fn group_dims(l: &Layout, groups: usize) -> (usize, usize, usize) {
    let (rows, cols) = rows_cols(l);
    (rows * cols, rows / groups.max(1), cols)
}

fn bias_act_fwd<D: KernelDevice>(
    dev: &D,
    op: &BiasAct,
    (pre, lp): (&D::Storage, &Layout),
    (bias, lb): (&D::Storage, &Layout),
) -> Result<D::Storage> {
    let name = "fused-bias-act-cuda";
    let (n, rows, cols) = group_dims(lp, op.groups);
    let pre_at = start(lp, name, "the pre-activation")?;
    let bias_at = start(lb, name, "the bias")?;
    let dtype = pre.dtype();
    let mut y = dev.alloc(dtype, n)?;
    dev.launch(
        &kernel_name("bias_act_fwd", dtype, name)?,
        elementwise_launch(n),
        &mut [
            Arg::In(pre, pre_at),
            Arg::In(bias, bias_at),
            Arg::Out(&mut y, 0),
            Arg::I64(n as i64),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(op.act),
        ],
    )?;
    Ok(y)
}

/// `(pre, bias, dy) -> [d pre, d bias]` (flat) of [`BiasAct`].
struct BiasActBackward {
    act: i32,
    groups: usize,
}

impl BiasActBackward {
    fn len(&self, lp: &Layout) -> usize {
        let (n, _, cols) = group_dims(lp, self.groups);
        n + self.groups.max(1) * cols
    }
}

impl CustomOp3 for BiasActBackward {
    fn name(&self) -> &'static str {
        "fused-bias-act-cuda-backward"
    }

    on_devices!(self, (pre, lp), (bias, lb), (dy, ldy) => Shape::from(self.len(lp)), |dev| {
        bias_act_bwd(dev, self, (pre, lp), (bias, lb), (dy, ldy))
    });
}

fn bias_act_bwd<D: KernelDevice>(
    dev: &D,
    op: &BiasActBackward,
    (pre, lp): (&D::Storage, &Layout),
    (bias, lb): (&D::Storage, &Layout),
    (dy, ldy): (&D::Storage, &Layout),
) -> Result<D::Storage> {
    let name = "fused-bias-act-cuda-backward";
    let (n, rows, cols) = group_dims(lp, op.groups);
    let pre_at = start(lp, name, "the pre-activation")?;
    let bias_at = start(lb, name, "the bias")?;
    let dy_at = start(ldy, name, "the gradient")?;
    let dtype = pre.dtype();
    let groups = op.groups.max(1);
    // d pre, then the bias's gradient.
    let mut out = dev.alloc(dtype, n + groups * cols)?;
    dev.launch(
        &kernel_name("bias_act_bwd_input", dtype, name)?,
        elementwise_launch(n),
        &mut [
            Arg::In(pre, pre_at),
            Arg::In(bias, bias_at),
            Arg::In(dy, dy_at),
            Arg::Out(&mut out, 0),
            Arg::I64(n as i64),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(op.act),
        ],
    )?;
    let per_chunk = rows_per_chunk(rows);
    let chunks = rows.div_ceil(per_chunk).max(1);
    let mut partial = dev.alloc(DType::F32, groups * chunks * cols)?;
    dev.launch(
        &kernel_name("bias_grad_partial", dtype, name)?,
        chunked_launch(cols, chunks, groups),
        &mut [
            Arg::In(&out, 0),
            Arg::Out(&mut partial, 0),
            Arg::I32(rows as i32),
            Arg::I32(cols as i32),
            Arg::I32(per_chunk as i32),
        ],
    )?;
    sum_chunks(
        dev,
        dtype,
        name,
        &partial,
        &mut out,
        n,
        (groups, chunks, cols),
    )?;
    Ok(out)
}

/// Queries (or keys) per block of the attention kernels.
const ATTENTION_BLOCK: u32 = 64;

/// `softmax(scale q kᵀ [+ causal mask]) v` over all heads, the context in
/// the projections' layout.
#[derive(Debug, Clone, Copy)]
struct Attention {
    heads: usize,
    scale: f32,
    causal: bool,
}

impl Attention {
    /// `(batch, tokens, head_dim)` of operands shaped as `l`.
    fn dims(&self, l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
        let (b, n, d) = l.shape().dims3()?;
        if self.heads == 0 || d % self.heads != 0 {
            candle_core::bail!("{op}: {d} features do not split into {} heads", self.heads)
        }
        Ok((b, n, d / self.heads))
    }

    /// One block per 64 queries (or keys) of every head of every batch
    /// entry, `per_row` threads for each (2 for dq, dk and dv).
    fn grid(&self, b: usize, n: usize, per_row: u32) -> Grid {
        Grid {
            grid: (
                n.div_ceil(ATTENTION_BLOCK as usize) as u32,
                self.heads as u32,
                b as u32,
            ),
            block: (ATTENTION_BLOCK * per_row, 1, 1),
        }
    }

    /// The scalar arguments every attention kernel ends with.
    fn tail<'a, S>(&self, n: usize) -> [Arg<'a, S>; 4] {
        [
            Arg::I32(n as i32),
            Arg::I32(self.heads as i32),
            Arg::F32(self.scale),
            Arg::I32(self.causal as i32),
        ]
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention-cuda"
    }

    on_devices!(self, (q, lq), (k, lk), (v, lv) => lq.shape().clone(), |dev| {
        attention_fwd(dev, self, [(q, lq), (k, lk), (v, lv)])
    });

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op gives all three gradients, packed: dq, dk, dv.
        let backward = AttentionBackward {
            op: *self,
            saved: [q.clone(), k.clone(), v.clone(), out.clone()],
        };
        let packed = grad.contiguous()?.apply_op1_no_bwd(&backward)?;
        let mut grads = unpack(&packed, &[q.shape(), k.shape(), v.shape()])?;
        let dv = grads.pop();
        let dk = grads.pop();
        Ok((grads.pop(), dk, dv))
    }
}

fn attention_fwd<D: KernelDevice>(
    dev: &D,
    op: &Attention,
    operands: [(&D::Storage, &Layout); 3],
) -> Result<D::Storage> {
    let name = "fused-attention-cuda";
    let [(q, lq), (k, lk), (v, lv)] = operands;
    let (b, n, hd) = op.dims(lq, name)?;
    if lk.shape() != lq.shape() || lv.shape() != lq.shape() {
        candle_core::bail!("{name}: q, k and v must have one shape")
    }
    let dtype = q.dtype();
    let mut out = dev.alloc(dtype, lq.shape().elem_count())?;
    let mut args = vec![
        Arg::In(q, start(lq, name, "q")?),
        Arg::In(k, start(lk, name, "k")?),
        Arg::In(v, start(lv, name, "v")?),
        Arg::Out(&mut out, 0),
    ];
    args.extend(op.tail(n));
    let kernel = format!("{}_{hd}", kernel_name("attention_fwd", dtype, name)?);
    dev.launch(&kernel, op.grid(b, n, 1), &mut args)?;
    Ok(out)
}

/// `dout -> [dq, dk, dv]` (flat) of [`Attention`], with the forward's
/// operands and output.
struct AttentionBackward {
    op: Attention,
    /// q, k, v and the forward's output.
    saved: [Tensor; 4],
}

impl CustomOp1 for AttentionBackward {
    fn name(&self) -> &'static str {
        "fused-attention-cuda-backward"
    }

    fn cpu_fwd(&self, dout: &CpuStorage, ldout: &Layout) -> Result<(CpuStorage, Shape)> {
        let saved: Vec<_> = self.saved.iter().map(|t| t.storage_and_layout()).collect();
        let mut operands = Vec::with_capacity(4);
        for (storage, layout) in &saved {
            match &**storage {
                Storage::Cpu(s) => operands.push((s, *layout)),
                _ => candle_core::bail!("{}: operands on different devices", self.name()),
            }
        }
        let len = 3 * ldout.shape().elem_count();
        on_cpu(
            |dev| attention_bwd(dev, &self.op, &operands, (dout, ldout)),
            Shape::from(len),
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dout: &candle_core::CudaStorage,
        ldout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let saved: Vec<_> = self.saved.iter().map(|t| t.storage_and_layout()).collect();
        let mut operands = Vec::with_capacity(4);
        for (storage, layout) in &saved {
            match &**storage {
                Storage::Cuda(s) => operands.push((s, *layout)),
                _ => candle_core::bail!("{}: operands on different devices", self.name()),
            }
        }
        let grads = attention_bwd(&dout.device, &self.op, &operands, (dout, ldout))?;
        Ok((grads, Shape::from(3 * ldout.shape().elem_count())))
    }
}

fn attention_bwd<D: KernelDevice>(
    dev: &D,
    op: &Attention,
    saved: &[(&D::Storage, &Layout)],
    (dout, ldout): (&D::Storage, &Layout),
) -> Result<D::Storage> {
    let name = "fused-attention-cuda-backward";
    let [(q, lq), (k, lk), (v, lv), (out, lo)] = saved else {
        candle_core::bail!("{name}: needs q, k, v and the output")
    };
    let (b, n, hd) = op.dims(lq, name)?;
    if [lk, lv, lo, &ldout].iter().any(|l| l.shape() != lq.shape()) {
        candle_core::bail!("{name}: q, k, v, the output and its gradient must have one shape")
    }
    let dtype = q.dtype();
    let len = lq.shape().elem_count();
    let (q_at, k_at, v_at) = (
        start(lq, name, "q")?,
        start(lk, name, "k")?,
        start(lv, name, "v")?,
    );
    let (out_at, dout_at) = (start(lo, name, "the output")?, start(ldout, name, "dout")?);
    let kernel =
        |stem: &str| -> Result<String> { Ok(format!("{}_{hd}", kernel_name(stem, dtype, name)?)) };
    // Per query: the log-sum-exp of its scores and sum(dout * out).
    let mut stats = dev.alloc(DType::F32, 2 * b * op.heads * n)?;
    let mut args = vec![
        Arg::In(*q, q_at),
        Arg::In(*k, k_at),
        Arg::In(*out, out_at),
        Arg::In(dout, dout_at),
        Arg::Out(&mut stats, 0),
    ];
    args.extend(op.tail(n));
    dev.launch(&kernel("attention_stats")?, op.grid(b, n, 1), &mut args)?;
    // dq, then dk and dv.
    let mut grads = dev.alloc(dtype, 3 * len)?;
    let mut args = vec![
        Arg::In(*q, q_at),
        Arg::In(*k, k_at),
        Arg::In(*v, v_at),
        Arg::In(dout, dout_at),
        Arg::In(&stats, 0),
        Arg::Out(&mut grads, 0),
    ];
    args.extend(op.tail(n));
    dev.launch(&kernel("attention_bwd_dq")?, op.grid(b, n, 2), &mut args)?;
    let mut args = vec![
        Arg::In(*q, q_at),
        Arg::In(*k, k_at),
        Arg::In(*v, v_at),
        Arg::In(dout, dout_at),
        Arg::In(&stats, 0),
        Arg::Out(&mut grads, len),
    ];
    args.extend(op.tail(n));
    dev.launch(&kernel("attention_bwd_dkv")?, op.grid(b, n, 2), &mut args)?;
    Ok(grads)
}
