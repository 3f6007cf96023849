//! CUDA kernels of this crate (`cuda/fused_ops.cu`, compiled to PTX by
//! `build.rs` under `--features cuda`): softmax along any axis,
//! LayerNorm over the last axis, and a linear layer's bias + activation,
//! each a candle custom op whose backward is one more kernel (plus two for
//! the parameter gradients' deterministic reduction), in F32 and BF16 with
//! F32 statistics.
//!
//! The composites they replace launch one kernel per primitive op forward
//! (max, subtract, exp, sum, divide; mean, subtract, square, mean, root,
//! divide, scale, shift; add, then the activation's ops), and backward every
//! node allocates, zeroes and adds into a gradient buffer. Off unless [`crate::set_fused_cuda_kernels`] or
//! `FUSED_OPS_CUDA=1` turns them on: they have been compiled, not yet run
//! on a GPU (`tests/cuda_parity.rs` compares them with the composites).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor,
};
use half::bf16;

use crate::activation::Activation;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused_ops.ptx"));
const MODULE: &str = "fused_ops_rows";

/// Softmax along `axis` of a non-empty CUDA tensor in F32 or BF16: one
/// thread block per row for the last axis, one thread per column for any
/// other (Soft MoE's dispatch over tokens).
pub(crate) fn softmax(x: &Tensor, axis: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { axis })
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

/// LayerNorm over the last axis of a non-empty tensor; `weight` and `bias`
/// in `x`'s dtype.
pub(crate) fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps },
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

/// Threads per row: a multiple of 32 covering the row, at most 512.
fn block_for(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 512) as u32
}

fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => candle_core::bail!("{op}: CUDA kernels run in F32 and BF16, not {other:?}"),
    }
}

/// The contiguous elements of operand `what` of `op`.
fn view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// Rows and row length of a contiguous layout.
fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = l.dims().last().copied().unwrap_or(1).max(1);
    (l.shape().elem_count() / cols, cols)
}

fn row_launch(rows: usize, cols: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (block_for(cols), 1, 1),
        shared_mem_bytes: 0,
    }
}

fn cpu_refused(op: &str) -> Result<(CpuStorage, Shape)> {
    candle_core::bail!("{op} runs on CUDA only")
}

/// Runs `$f::<T>` for the storage's dtype.
macro_rules! by_dtype {
    ($s:expr, $op:expr, $f:ident ( $($arg:expr),* )) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            other => candle_core::bail!("{}: CUDA kernels run in F32 and BF16, not {other:?}", $op),
        }
    };
}

/// Launches kernel `$kernel` of [`MODULE`] for `$dtype` with `$cfg` and the
/// arguments in order. Every argument is a reference to a local that lives
/// until the launch (a temporary would dangle).
macro_rules! launch {
    ($dev:expr, $kernel:expr, $dtype:expr, $op:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let func = $dev.get_or_load_custom_func(
            &format!("{}_{}", $kernel, suffix($dtype, $op)?),
            MODULE,
            PTX,
        )?;
        let mut builder = func.builder();
        $(builder.arg($arg);)*
        // SAFETY: each call site passes its kernel's arguments in the order
        // and types of its signature in `cuda/fused_ops.cu`.
        unsafe { builder.launch($cfg) }.w()?;
    }};
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
/// cols + c]`) over the chunks, in order, into `out[g * cols + c]`: the
/// deterministic second half of every parameter-gradient reduction.
#[allow(clippy::too_many_arguments)]
fn sum_chunks<T: DeviceRepr>(
    dev: &CudaDevice,
    dtype: DType,
    op: &str,
    partial: &CudaSlice<f32>,
    out: &mut CudaViewMut<'_, T>,
    groups: usize,
    chunks: usize,
    cols: usize,
) -> Result<()> {
    let (groups_i, chunks_i, cols_i) = (groups as i32, chunks as i32, cols as i32);
    launch!(
        dev,
        "sum_chunks",
        dtype,
        op,
        elementwise_launch(groups * cols),
        [partial, out, &groups_i, &chunks_i, &cols_i]
    );
    Ok(())
}

struct Softmax {
    axis: usize,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s, self.name(), softmax_fwd(s, l, self.axis))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let backward = SoftmaxBackward { axis: self.axis };
        Ok(Some(y.apply_op2_no_bwd(&grad.contiguous()?, &backward)?))
    }
}

fn softmax_fwd<T: CudaDType + DeviceRepr>(
    s: &CudaStorage,
    l: &Layout,
    axis: usize,
) -> Result<(CudaStorage, Shape)> {
    let op = "fused-softmax-cuda";
    let x = view::<T>(s, l, op, "the input")?;
    let (outer, len, inner) = axis_split(l, axis, op)?;
    let dev = &s.device;
    // SAFETY: every element is written by the kernel below.
    let y = unsafe { dev.alloc::<T>(outer * len * inner)? };
    let (len_i, inner_i, lines) = (len as i32, inner as i32, (outer * inner) as i64);
    if inner == 1 {
        let cfg = row_launch(outer, len);
        launch!(dev, "softmax_fwd", s.dtype(), op, cfg, [&x, &y, &len_i]);
    } else {
        let cfg = elementwise_launch(outer * inner);
        let kernel = "softmax_cols_fwd";
        launch!(
            dev,
            kernel,
            s.dtype(),
            op,
            cfg,
            [&x, &y, &lines, &len_i, &inner_i]
        );
    }
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        l.shape().clone(),
    ))
}

/// `(y, dy) -> dx` of [`Softmax`].
struct SoftmaxBackward {
    axis: usize,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-softmax-cuda-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        ly: &Layout,
        dy: &CudaStorage,
        ldy: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(y, self.name(), softmax_bwd(y, ly, dy, ldy, self.axis))
    }
}

fn softmax_bwd<T: CudaDType + DeviceRepr>(
    ys: &CudaStorage,
    ly: &Layout,
    dys: &CudaStorage,
    ldy: &Layout,
    axis: usize,
) -> Result<(CudaStorage, Shape)> {
    let op = "fused-softmax-cuda-backward";
    let y = view::<T>(ys, ly, op, "the output")?;
    let dy = view::<T>(dys, ldy, op, "the gradient")?;
    let (outer, len, inner) = axis_split(ly, axis, op)?;
    let dev = &ys.device;
    // SAFETY: every element is written by the kernel below.
    let dx = unsafe { dev.alloc::<T>(outer * len * inner)? };
    let (len_i, inner_i, lines) = (len as i32, inner as i32, (outer * inner) as i64);
    if inner == 1 {
        let cfg = row_launch(outer, len);
        launch!(
            dev,
            "softmax_bwd",
            ys.dtype(),
            op,
            cfg,
            [&y, &dy, &dx, &len_i]
        );
    } else {
        let cfg = elementwise_launch(outer * inner);
        let kernel = "softmax_cols_bwd";
        launch!(
            dev,
            kernel,
            ys.dtype(),
            op,
            cfg,
            [&y, &dy, &dx, &lines, &len_i, &inner_i]
        );
    }
    Ok((
        CudaStorage::wrap_cuda_slice(dx, dev.clone()),
        ly.shape().clone(),
    ))
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm-cuda"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(
            x,
            self.name(),
            layer_norm_fwd(x, lx, w, lw, b, lb, self.eps)
        )
    }

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

fn layer_norm_fwd<T: CudaDType + DeviceRepr>(
    xs: &CudaStorage,
    lx: &Layout,
    ws: &CudaStorage,
    lw: &Layout,
    bs: &CudaStorage,
    lb: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let op = "fused-layer-norm-cuda";
    let (rows, cols) = rows_cols(lx);
    if lw.shape().elem_count() != cols || lb.shape().elem_count() != cols {
        candle_core::bail!(
            "{op}: weight {:?} and bias {:?} must hold the {cols} features of the input",
            lw.shape(),
            lb.shape()
        )
    }
    let x = view::<T>(xs, lx, op, "the input")?;
    let w = view::<T>(ws, lw, op, "the weight")?;
    let b = view::<T>(bs, lb, op, "the bias")?;
    let dev = &xs.device;
    // SAFETY: every element is written by the kernel below.
    let y = unsafe { dev.alloc::<T>(rows * cols)? };
    let n = cols as i32;
    let cfg = row_launch(rows, cols);
    launch!(
        dev,
        "layer_norm_fwd",
        xs.dtype(),
        op,
        cfg,
        [&x, &w, &b, &y, &n, &eps]
    );
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        lx.shape().clone(),
    ))
}

/// `(x, weight, dy) -> [dx, d weight, d bias]` (flat) of [`LayerNorm`].
struct LayerNormBackward {
    eps: f32,
}

/// Rows per block of the parameter-gradient reduction.
const ROWS_PER_CHUNK: usize = 64;

impl CustomOp3 for LayerNormBackward {
    fn name(&self) -> &'static str {
        "fused-layer-norm-cuda-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        dy: &CudaStorage,
        ldy: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(
            x,
            self.name(),
            layer_norm_bwd(x, lx, w, lw, dy, ldy, self.eps)
        )
    }
}

fn layer_norm_bwd<T: CudaDType + DeviceRepr>(
    xs: &CudaStorage,
    lx: &Layout,
    ws: &CudaStorage,
    lw: &Layout,
    dys: &CudaStorage,
    ldy: &Layout,
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let op = "fused-layer-norm-cuda-backward";
    let (rows, cols) = rows_cols(lx);
    let x = view::<T>(xs, lx, op, "the input")?;
    let w = view::<T>(ws, lw, op, "the weight")?;
    let dy = view::<T>(dys, ldy, op, "the gradient")?;
    let dev: &CudaDevice = &xs.device;
    let dtype = xs.dtype();
    let (cols_i, rows_i) = (cols as i32, rows as i32);

    // SAFETY: the kernels below write every element of both buffers.
    let mut out = unsafe { dev.alloc::<T>(rows * cols + 2 * cols)? };
    let stats = unsafe { dev.alloc::<f32>(2 * rows)? };
    let mut dx = out.slice_mut(0..rows * cols);
    let cfg = row_launch(rows, cols);
    launch!(
        dev,
        "layer_norm_bwd_input",
        dtype,
        op,
        cfg,
        [&x, &w, &dy, &mut dx, &stats, &cols_i, &eps]
    );
    let per_chunk = rows_per_chunk(rows);
    let chunks = rows.div_ceil(per_chunk).max(1);
    // SAFETY: the partial kernel writes every element.
    let partial = unsafe { dev.alloc::<f32>(2 * chunks * cols)? };
    let per_chunk_i = per_chunk as i32;
    let cfg = chunked_launch(cols, chunks, 1);
    launch!(
        dev,
        "layer_norm_bwd_params",
        dtype,
        op,
        cfg,
        [&x, &dy, &stats, &partial, &rows_i, &cols_i, &per_chunk_i]
    );
    // The weight's gradients, then the bias's: two groups of columns.
    let mut grads = out.slice_mut(rows * cols..);
    sum_chunks(dev, dtype, op, &partial, &mut grads, 2, chunks, cols)?;
    let len = rows * cols + 2 * cols;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(len),
    ))
}

/// Rows per block of a column reduction over `rows`: at least
/// [`ROWS_PER_CHUNK`], more when the chunks would exceed the grid's 65535
/// in y.
fn rows_per_chunk(rows: usize) -> usize {
    ROWS_PER_CHUNK.max(rows.div_ceil(65_535))
}

/// Column tiles of 256 threads (x) over `chunks` row chunks (y) of
/// `groups` groups (z): the first half of a parameter-gradient reduction.
fn chunked_launch(cols: usize, chunks: usize, groups: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(256) as u32, chunks as u32, groups as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elementwise_launch(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
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

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        pre: &CudaStorage,
        lp: &Layout,
        bias: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(pre, self.name(), bias_act_fwd(self, pre, lp, bias, lb))
    }

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

fn bias_act_fwd<T: CudaDType + DeviceRepr>(
    op: &BiasAct,
    ps: &CudaStorage,
    lp: &Layout,
    bs: &CudaStorage,
    lb: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let name = "fused-bias-act-cuda";
    let (n, rows, cols) = group_dims(lp, op.groups);
    let pre = view::<T>(ps, lp, name, "the pre-activation")?;
    let bias = view::<T>(bs, lb, name, "the bias")?;
    let dev = &ps.device;
    // SAFETY: every element is written by the kernel below.
    let y = unsafe { dev.alloc::<T>(n)? };
    let (n_i, rows_i, cols_i) = (n as i64, rows as i32, cols as i32);
    launch!(
        dev,
        "bias_act_fwd",
        ps.dtype(),
        name,
        elementwise_launch(n),
        [&pre, &bias, &y, &n_i, &rows_i, &cols_i, &op.act]
    );
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev.clone()),
        lp.shape().clone(),
    ))
}

/// `(pre, bias, dy) -> [d pre, d bias]` (flat) of [`BiasAct`].
struct BiasActBackward {
    act: i32,
    groups: usize,
}

impl CustomOp3 for BiasActBackward {
    fn name(&self) -> &'static str {
        "fused-bias-act-cuda-backward"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu_refused(self.name())
    }

    fn cuda_fwd(
        &self,
        pre: &CudaStorage,
        lp: &Layout,
        bias: &CudaStorage,
        lb: &Layout,
        dy: &CudaStorage,
        ldy: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(
            pre,
            self.name(),
            bias_act_bwd(self, pre, lp, bias, lb, dy, ldy)
        )
    }
}

fn bias_act_bwd<T: CudaDType + DeviceRepr>(
    op: &BiasActBackward,
    ps: &CudaStorage,
    lp: &Layout,
    bs: &CudaStorage,
    lb: &Layout,
    dys: &CudaStorage,
    ldy: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let name = "fused-bias-act-cuda-backward";
    let (n, rows, cols) = group_dims(lp, op.groups);
    let pre = view::<T>(ps, lp, name, "the pre-activation")?;
    let bias = view::<T>(bs, lb, name, "the bias")?;
    let dy = view::<T>(dys, ldy, name, "the gradient")?;
    let dev: &CudaDevice = &ps.device;
    let dtype = ps.dtype();
    let (n_i, rows_i, cols_i) = (n as i64, rows as i32, cols as i32);
    let groups = op.groups.max(1);

    // SAFETY: the kernels below write every element.
    let mut out = unsafe { dev.alloc::<T>(n + groups * cols)? };
    let mut dpre = out.slice_mut(0..n);
    launch!(
        dev,
        "bias_act_bwd_input",
        dtype,
        name,
        elementwise_launch(n),
        [&pre, &bias, &dy, &mut dpre, &n_i, &rows_i, &cols_i, &op.act]
    );
    let per_chunk = rows_per_chunk(rows);
    let chunks = rows.div_ceil(per_chunk).max(1);
    // SAFETY: the partial kernel writes every element.
    let partial = unsafe { dev.alloc::<f32>(groups * chunks * cols)? };
    let dpre = out.slice(0..n);
    let per_chunk_i = per_chunk as i32;
    let cfg = chunked_launch(cols, chunks, groups);
    launch!(
        dev,
        "bias_grad_partial",
        dtype,
        name,
        cfg,
        [&dpre, &partial, &rows_i, &cols_i, &per_chunk_i]
    );
    let mut dbias = out.slice_mut(n..);
    sum_chunks(dev, dtype, name, &partial, &mut dbias, groups, chunks, cols)?;
    let len = n + groups * cols;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev.clone()),
        Shape::from(len),
    ))
}
