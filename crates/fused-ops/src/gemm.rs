//! CPU matrix products on strided operands, with a work split that suits the
//! small-batch shapes of a transformer layer.
//!
//! candle runs a batched matmul as a loop over the batch and hands each
//! product to `gemm`'s own thread split, which at a layer's small-batch
//! shapes spends much of its time packing and synchronising. Single-threaded
//! `gemm` calls on column blocks of the output do better: each packs only its
//! own block of the weight (docs/benchmarks.md has the measurements). Here
//! every product is cut into
//! (batch entry, column block) tasks that rayon runs on single-threaded
//! `gemm` calls. Operands are read through their strides, so transposed views
//! cost no copy.

use candle_core::{DType, Layout, Result, WithDType};
use rayon::prelude::*;

/// A batch of matrices inside a slice: element `(b, i, j)` is at
/// `offset + b * batch_stride + i * row_stride + j * col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a, T> {
    /// The storage the matrices live in.
    pub data: &'a [T],
    /// Index of element `(0, 0, 0)`.
    pub offset: usize,
    /// Distance between consecutive matrices; 0 repeats one matrix.
    pub batch_stride: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a, T> Strided<'a, T> {
    /// A contiguous row-major `(rows, cols)` matrix, or a batch of them.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            offset: 0,
            batch_stride: rows * cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A rank-2 or rank-3 candle layout over `data`. Rank 2 repeats the one
    /// matrix for every batch entry (batch stride 0).
    pub fn from_layout(data: &'a [T], layout: &Layout) -> Result<Self> {
        let (batch_stride, row_stride, col_stride) = match *layout.stride() {
            [r, c] => (0, r, c),
            [b, r, c] => (b, r, c),
            _ => candle_core::bail!(
                "fused gemm: expected a rank-2 or rank-3 operand, got {:?}",
                layout.shape()
            ),
        };
        Ok(Self {
            data,
            offset: layout.start_offset(),
            batch_stride,
            row_stride,
            col_stride,
        })
    }

    /// The same matrices transposed: rows and columns swap strides.
    pub fn t(self) -> Self {
        Self {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Checks that a `(batch, rows, cols)` read stays inside `data`.
    fn check(&self, (batch, rows, cols): (usize, usize, usize), what: &str) -> Result<()> {
        if batch == 0 || rows == 0 || cols == 0 {
            return Ok(());
        }
        let last = self.offset
            + (batch - 1) * self.batch_stride
            + (rows - 1) * self.row_stride
            + (cols - 1) * self.col_stride;
        if last >= self.data.len() {
            candle_core::bail!(
                "fused gemm: {what} of {batch}x{rows}x{cols} reaches element {last} of {}",
                self.data.len()
            )
        }
        Ok(())
    }
}

/// `gemm` dispatches on the element type at run time; only F32 and F64 are
/// compiled in here.
fn check_dtype<T: WithDType>() -> Result<()> {
    match T::DTYPE {
        DType::F32 | DType::F64 => Ok(()),
        other => candle_core::bail!("fused gemm: {other:?} is not supported (F32 or F64)"),
    }
}

/// A raw destination pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct DstPtr<T>(*mut T);
// SAFETY: the pointer is only dereferenced by `gemm` inside `batched_matmul`,
// where each task writes its own (batch entry, column block) of the buffer.
unsafe impl<T> Send for DstPtr<T> {}
unsafe impl<T> Sync for DstPtr<T> {}

impl<T> DstPtr<T> {
    /// Through a method, so closures capture the `Send` wrapper, not the
    /// raw pointer field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// `beta · lhs_b · rhs_b` for every batch entry `b`, as a new contiguous
/// `(batch, m, n)` buffer. `lhs` holds `(m, k)` matrices, `rhs` `(k, n)`.
pub fn batched_matmul<T: WithDType>(
    batch: usize,
    dims: (usize, usize, usize),
    lhs: Strided<'_, T>,
    rhs: Strided<'_, T>,
    beta: T,
) -> Result<Vec<T>> {
    product(batch, dims, lhs, rhs, beta, None)
}

/// `lhs_b · rhs_b + bias_b` (the bias row added to every row) for every
/// batch entry `b`; `bias` is `(batch, n)`, contiguous. The bias is written
/// into each output block just before `gemm` accumulates onto it, so the
/// output is touched once rather than zeroed, written and re-read.
pub fn batched_linear<T: WithDType>(
    batch: usize,
    dims: (usize, usize, usize),
    lhs: Strided<'_, T>,
    rhs: Strided<'_, T>,
    bias: &[T],
) -> Result<Vec<T>> {
    if bias.len() != batch * dims.1 {
        candle_core::bail!(
            "fused gemm: bias of {} elements for {batch} matrices of {} columns",
            bias.len(),
            dims.1
        )
    }
    product(batch, dims, lhs, rhs, T::one(), Some(bias))
}

fn product<T: WithDType>(
    batch: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Strided<'_, T>,
    rhs: Strided<'_, T>,
    beta: T,
    bias: Option<&[T]>,
) -> Result<Vec<T>> {
    check_dtype::<T>()?;
    lhs.check((batch, m, k), "lhs")?;
    rhs.check((batch, k, n), "rhs")?;
    let len = batch * m * n;
    if len == 0 || k == 0 {
        // An empty sum: zeros, or the bias rows.
        let mut dst = vec![T::zero(); len];
        if let Some(bias) = bias.filter(|_| n > 0) {
            for (row, out) in dst.chunks_exact_mut(n).enumerate() {
                let b = row / m;
                out.copy_from_slice(&bias[b * n..(b + 1) * n]);
            }
        }
        return Ok(dst);
    }
    let dims = (m, n, k);
    if m <= FEW_ROWS && rhs.row_stride == 1 {
        let order = DstOrder::ColumnMajor;
        let transposed = column_block_products(batch, dims, lhs, rhs, beta, bias, order);
        return Ok(transpose_matrices(&transposed, (batch, n, m)));
    }
    let order = DstOrder::RowMajor;
    Ok(column_block_products(
        batch, dims, lhs, rhs, beta, bias, order,
    ))
}

/// Enough column blocks that every thread has work even for one matrix;
/// blocks are a multiple of 16 columns (one AVX-512 register of f32).
/// Returns the block width and the number of blocks per matrix.
fn column_blocks(batch: usize, n: usize) -> (usize, usize) {
    let threads = rayon::current_num_threads().max(1);
    let blocks_per_matrix = threads.div_ceil(batch).max(1);
    let block = n.div_ceil(blocks_per_matrix).next_multiple_of(16).min(n);
    (block, n.div_ceil(block))
}

/// Rows per matrix up to which a product with a transposed weight
/// (`rhs` read down its rows, `x Wᵀ`) is computed as `(x Wᵀ)ᵀ = W xᵀ`.
///
/// Written `x Wᵀ` with a row-major result, `gemm` repacks the whole weight
/// for every call, which at a few dozen rows costs about as much as the
/// product: Soft MoE experts at batch 1 or 2 get 49 or 98 rows each. Written
/// transposed, `gemm` packs the small `x` instead and streams the weight rows
/// as they lie, which is faster at expert shapes even with the transposition
/// back (docs/benchmarks.md, "few-row products"). From about 200 rows on the
/// row-major form is as fast or faster.
const FEW_ROWS: usize = 128;

/// How each `(m, n)` result matrix lies in the output buffer.
#[derive(Debug, Clone, Copy)]
enum DstOrder {
    /// Element `(i, j)` at `i·n + j`.
    RowMajor,
    /// Element `(i, j)` at `j·m + i`: the transposed result, row-major.
    ColumnMajor,
}

/// The products of [`product`], written in `order`: every product is cut
/// into (batch entry, column block) tasks of single-threaded `gemm` calls.
/// Operands are checked by the caller; `m`, `n` and `k` are non-zero.
fn column_block_products<T: WithDType>(
    batch: usize,
    (m, n, k): (usize, usize, usize),
    lhs: Strided<'_, T>,
    rhs: Strided<'_, T>,
    beta: T,
    bias: Option<&[T]>,
    order: DstOrder,
) -> Vec<T> {
    let len = batch * m * n;
    let (block, blocks) = column_blocks(batch, n);
    // Distances between result rows and between result columns.
    let (row_stride, col_stride) = match order {
        DstOrder::RowMajor => (n, 1),
        DstOrder::ColumnMajor => (1, m),
    };
    let mut dst: Vec<T> = Vec::with_capacity(len);
    let dst_ptr = DstPtr(dst.as_mut_ptr());
    (0..batch * blocks).into_par_iter().for_each(|task| {
        let (b, j0) = (task / blocks, (task % blocks) * block);
        let cols = block.min(n - j0);
        // SAFETY: the caller's `check`s bound every lhs/rhs element read.
        // The block (b, 0..m, j0..j0+cols) lies inside the `len`-element
        // allocation and no other task touches it: row-major, it is columns
        // j0..j0+cols of every row of matrix b; column-major, the `cols * m`
        // contiguous elements from `j0 * m`. With a bias, every element of
        // the block is written before gemm reads it (`read_dst`); without
        // one, gemm writes every element and reads none.
        unsafe {
            let block_ptr = dst_ptr.get().add(b * m * n + j0 * col_stride);
            if let Some(bias) = bias {
                let bias = &bias[b * n + j0..b * n + j0 + cols];
                match order {
                    DstOrder::RowMajor => {
                        for i in 0..m {
                            std::ptr::copy_nonoverlapping(
                                bias.as_ptr(),
                                block_ptr.add(i * n),
                                cols,
                            );
                        }
                    }
                    DstOrder::ColumnMajor => {
                        for (j, &value) in bias.iter().enumerate() {
                            std::slice::from_raw_parts_mut(block_ptr.add(j * m), m).fill(value);
                        }
                    }
                }
            }
            gemm::gemm(
                m,
                cols,
                k,
                block_ptr,
                col_stride as isize,
                row_stride as isize,
                bias.is_some(),
                lhs.data.as_ptr().add(lhs.offset + b * lhs.batch_stride),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data
                    .as_ptr()
                    .add(rhs.offset + b * rhs.batch_stride + j0 * rhs.col_stride),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                T::one(),
                beta,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    });
    // SAFETY: the tasks above partition the `len` elements into blocks and
    // each task initialised its whole block (see above).
    unsafe { dst.set_len(len) };
    dst
}

/// Transposes each `(rows, cols)` matrix of a contiguous batch: the result
/// is `(batch, cols, rows)`. Tiled so that reads and writes both stay within
/// a few cache lines per tile; output rows run in parallel.
pub(crate) fn transpose_matrices<T: WithDType>(
    src: &[T],
    (batch, rows, cols): (usize, usize, usize),
) -> Vec<T> {
    const TILE: usize = 32;
    assert_eq!(src.len(), batch * rows * cols, "transpose_matrices: length");
    let mut dst: Vec<T> = Vec::with_capacity(src.len());
    if rows > 0 && cols > 0 {
        // Output row r of matrix b is column r of input matrix b.
        let out = &mut dst.spare_capacity_mut()[..src.len()];
        out.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = chunk * TILE;
                for i0 in (0..rows).step_by(TILE) {
                    let i1 = (i0 + TILE).min(rows);
                    for (r, out_row) in out.chunks_exact_mut(rows).enumerate() {
                        let (b, c) = ((first + r) / cols, (first + r) % cols);
                        let matrix = &src[b * rows * cols..(b + 1) * rows * cols];
                        for (i, o) in (i0..i1).zip(&mut out_row[i0..i1]) {
                            o.write(matrix[i * cols + c]);
                        }
                    }
                }
            });
    }
    // SAFETY: the chunks cover all `src.len()` elements, and every element
    // of every output row was written above (or there are none).
    unsafe { dst.set_len(src.len()) };
    dst
}

/// `beta · lhs · rhs` for one `(m, k) x (k, n)` product on the calling
/// thread, written into `dst` with row stride `dst_row_stride` (columns
/// contiguous). For callers that parallelise over many small products
/// themselves, such as attention heads.
pub fn matmul_into<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_row_stride: usize,
    lhs: Strided<'_, T>,
    rhs: Strided<'_, T>,
    beta: T,
) -> Result<()> {
    check_dtype::<T>()?;
    lhs.check((1, m, k), "lhs")?;
    rhs.check((1, k, n), "rhs")?;
    if m > 0 && n > 0 && (m - 1) * dst_row_stride + n > dst.len() {
        candle_core::bail!(
            "fused gemm: a {m}x{n} result with row stride {dst_row_stride} does not fit {} elements",
            dst.len()
        )
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    // SAFETY: the checks above bound every element read and written; `dst`
    // is borrowed mutably.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            false,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            T::zero(),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive triple loop over the same strided views.
    fn naive(
        batch: usize,
        (m, n, k): (usize, usize, usize),
        lhs: Strided<'_, f64>,
        rhs: Strided<'_, f64>,
    ) -> Vec<f64> {
        let at = |s: &Strided<'_, f64>, b: usize, i: usize, j: usize| {
            s.data[s.offset + b * s.batch_stride + i * s.row_stride + j * s.col_stride]
        };
        let mut out = vec![0.0; batch * m * n];
        for b in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    out[(b * m + i) * n + j] =
                        (0..k).map(|p| at(&lhs, b, i, p) * at(&rhs, b, p, j)).sum();
                }
            }
        }
        out
    }

    fn values(len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0)
            .collect()
    }

    #[test]
    fn batched_matmul_matches_naive_loops_on_strided_views() -> Result<()> {
        // Odd sizes, wider than one column block, a transposed rhs and a
        // broadcast (batch stride 0) operand.
        let (batch, m, n, k) = (3, 5, 37, 4);
        let a = values(1 + batch * m * k);
        let w = values(n * k);
        let lhs = Strided {
            data: &a,
            offset: 1,
            batch_stride: m * k,
            row_stride: k,
            col_stride: 1,
        };
        let rhs = Strided {
            batch_stride: 0,
            ..Strided::row_major(&w, n, k).t()
        };
        let got = batched_matmul(batch, (m, n, k), lhs, rhs, 0.5)?;
        let want = naive(batch, (m, n, k), lhs, rhs);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 0.5 * w).abs() < 1e-12, "{g} vs {}", 0.5 * w);
        }
        Ok(())
    }

    #[test]
    fn batched_linear_adds_each_batch_entrys_bias() -> Result<()> {
        let (batch, m, n, k) = (2, 3, 40, 5);
        let a = values(batch * m * k);
        let w = values(batch * k * n);
        let bias: Vec<f64> = (0..batch * n).map(|i| i as f64 * 0.5 - 3.0).collect();
        let (lhs, rhs) = (Strided::row_major(&a, m, k), Strided::row_major(&w, k, n));
        let got = batched_linear(batch, (m, n, k), lhs, rhs, &bias)?;
        let want = naive(batch, (m, n, k), lhs, rhs);
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            let (b, j) = (idx / (m * n), idx % n);
            assert!((g - (w + bias[b * n + j])).abs() < 1e-12, "element {idx}");
        }
        // k = 0: only the bias.
        let got = batched_linear(batch, (m, n, 0), lhs, rhs, &bias)?;
        assert_eq!(&got[..n], &bias[..n]);
        assert_eq!(&got[(2 * m - 1) * n..], &bias[n..]);
        let err = batched_linear(batch, (m, n, k), lhs, rhs, &bias[1..]).unwrap_err();
        assert!(err.to_string().contains("bias of 79 elements"), "{err}");
        Ok(())
    }

    #[test]
    fn both_product_forms_match_naive_loops_around_the_row_threshold() -> Result<()> {
        // A transposed weight (rhs read down its rows) takes the transposed
        // form up to FEW_ROWS rows and the row-major form above; both with
        // and without a bias, on a strided lhs and a shared (rank-2) weight.
        let (batch, n, k) = (2, 70, 19);
        let w = values(n * k);
        let rhs = Strided {
            batch_stride: 0,
            ..Strided::row_major(&w, n, k).t()
        };
        let bias: Vec<f64> = (0..batch * n).map(|i| i as f64 * 0.25 - 7.0).collect();
        for m in [1, 3, FEW_ROWS, FEW_ROWS + 1, 200] {
            let a = values(batch * m * (k + 2));
            // Rows of k + 2 elements, of which the first k are read.
            let lhs = Strided {
                data: &a,
                offset: 0,
                batch_stride: m * (k + 2),
                row_stride: k + 2,
                col_stride: 1,
            };
            let want = naive(batch, (m, n, k), lhs, rhs);
            let got = batched_matmul(batch, (m, n, k), lhs, rhs, 0.5)?;
            for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - 0.5 * w).abs() < 1e-12,
                    "m {m}, element {idx}: {g} vs {w}"
                );
            }
            let got = batched_linear(batch, (m, n, k), lhs, rhs, &bias)?;
            for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                let (b, j) = (idx / (m * n), idx % n);
                let want = w + bias[b * n + j];
                assert!(
                    (g - want).abs() < 1e-12,
                    "m {m}, element {idx}: {g} vs {want}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn transpose_matrices_swaps_rows_and_columns_of_each_matrix() {
        // Sizes that are not multiples of the 32-element tile.
        let (batch, rows, cols) = (3, 33, 70);
        let src = values(batch * rows * cols);
        let got = transpose_matrices(&src, (batch, rows, cols));
        for b in 0..batch {
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        got[(b * cols + j) * rows + i],
                        src[(b * rows + i) * cols + j],
                        "matrix {b}, element ({i}, {j})"
                    );
                }
            }
        }
        assert!(transpose_matrices::<f64>(&[], (0, 4, 5)).is_empty());
    }

    #[test]
    fn matmul_into_writes_a_strided_block() -> Result<()> {
        let (m, n, k) = (4, 3, 6);
        let a = values(m * k);
        let b = values(k * n);
        let mut dst = vec![-1.0; m * 5];
        let (lhs, rhs) = (Strided::row_major(&a, m, k), Strided::row_major(&b, k, n));
        matmul_into((m, n, k), &mut dst, 5, lhs, rhs, 1.0)?;
        let want = naive(1, (m, n, k), lhs, rhs);
        for i in 0..m {
            for j in 0..5 {
                let got = dst[i * 5 + j];
                if j < n {
                    assert!((got - want[i * n + j]).abs() < 1e-12);
                } else {
                    assert_eq!(got, -1.0, "column {j} outside the block was written");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn out_of_bounds_operands_are_an_error() {
        let a = values(10);
        let lhs = Strided::row_major(&a, 3, 4); // needs 12 elements
        let err = batched_matmul(1, (3, 2, 4), lhs, Strided::row_major(&a, 4, 2), 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("lhs of 1x3x4"), "{err}");
        let mut dst = vec![0.0; 4];
        let err = matmul_into(
            (3, 2, 1),
            &mut dst,
            2,
            Strided::row_major(&a, 3, 1),
            Strided::row_major(&a, 1, 2),
            1.0,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
