// Kernels of fused-ops for CUDA, forward and backward: softmax, LayerNorm,
// La-SoftMoE's instance norm (LayerNorm without affine) and vmoe's L2
// normalisation over the last axis (one thread block per row), softmax and
// the instance norm over another axis (one thread per column), a linear
// layer's bias + activation and La-SoftMoE's elu + 1 feature map (one
// thread per element), and memory-efficient attention. For the end of a
// training step, three kernels that walk many buffers through a table of
// their addresses: Adam's update of many parameters, each buffer's sum of
// squares, and a scaled copy of many buffers into one.
// Statistics and accumulation in F32 for F32 and BF16 storage. Compiled to
// PTX by build.rs (`--features cuda`), loaded by src/cuda_ops.rs,
// src/adam.rs, src/sum_squares.rs and src/copy_scaled.rs.

#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) {
    p[i] = __float2bfloat16(v);
}

// Sum (or max) of one value per thread over the block. blockDim.x is a
// multiple of 32 and at most 1024; `shared` holds 32 floats. Every thread
// gets the result.
template <bool MAX>
__device__ float block_reduce(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float other = __shfl_xor_sync(0xffffffff, v, o);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // the previous reduction's readers are done
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    if (warp == 0) {
        v = lane < warps ? shared[lane] : (MAX ? -INFINITY : 0.0f);
        for (int o = 16; o > 0; o >>= 1) {
            float other = __shfl_xor_sync(0xffffffff, v, o);
            v = MAX ? fmaxf(v, other) : v + other;
        }
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    return shared[0];
}

// y = exp(x - max) / sum(exp(x - max)) per row of `cols`.
template <typename T>
__device__ void softmax_fwd(const T* x, T* y, int cols) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, load(x, base + c));
    m = block_reduce<true>(m, shared);
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += expf(load(x, base + c) - m);
    s = block_reduce<false>(s, shared);
    const float inv = 1.0f / s;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        store(y, base + c, expf(load(x, base + c) - m) * inv);
}

// dx = y * (dy - sum(dy * y)) per row.
template <typename T>
__device__ void softmax_bwd(const T* y, const T* dy, T* dx, int cols) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float dot = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        dot += load(y, base + c) * load(dy, base + c);
    dot = block_reduce<false>(dot, shared);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        store(dx, base + c, load(y, base + c) * (load(dy, base + c) - dot));
}

// Softmax along an axis that is not the last: `lines` = outer x inner
// columns of `len` elements each, `inner` apart (Soft MoE's dispatch over
// the tokens of a `(batch, tokens, slots)` tensor). One thread per column;
// neighbouring threads read neighbouring elements, so every pass is
// coalesced.
template <typename T>
__device__ void softmax_cols_fwd(const T* x, T* y, int64_t lines, int len, int inner) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= lines) return;
    const int64_t base = (i / inner) * len * inner + i % inner;
    float m = -INFINITY;
    for (int k = 0; k < len; ++k) m = fmaxf(m, load(x, base + (int64_t)k * inner));
    float s = 0.0f;
    for (int k = 0; k < len; ++k) s += expf(load(x, base + (int64_t)k * inner) - m);
    const float inv = 1.0f / s;
    for (int k = 0; k < len; ++k) {
        const int64_t j = base + (int64_t)k * inner;
        store(y, j, expf(load(x, j) - m) * inv);
    }
}

// dx = y * (dy - sum(dy * y)) per column of softmax_cols_fwd.
template <typename T>
__device__ void softmax_cols_bwd(const T* y, const T* dy, T* dx, int64_t lines, int len,
                                 int inner) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= lines) return;
    const int64_t base = (i / inner) * len * inner + i % inner;
    float dot = 0.0f;
    for (int k = 0; k < len; ++k) {
        const int64_t j = base + (int64_t)k * inner;
        dot += load(y, j) * load(dy, j);
    }
    for (int k = 0; k < len; ++k) {
        const int64_t j = base + (int64_t)k * inner;
        store(dx, j, load(y, j) * (load(dy, j) - dot));
    }
}

// Mean and 1/sqrt(var + eps) of one row (two passes, as the composite).
template <typename T>
__device__ void row_stats(const T* x, int64_t base, int cols, float eps, float* shared,
                          float* mean, float* rstd) {
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += load(x, base + c);
    const float mu = block_reduce<false>(s, shared) / cols;
    float v = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float d = load(x, base + c) - mu;
        v += d * d;
    }
    const float var = block_reduce<false>(v, shared) / cols;
    *mean = mu;
    *rstd = rsqrtf(var + eps);
}

// gamma[c], or 1 without an affine part (standardize).
template <typename T>
__device__ __forceinline__ float scale_at(const T* gamma, int c) {
    return gamma ? load(gamma, c) : 1.0f;
}

// y = (x - mean) * rstd * gamma + beta per row; gamma and beta null for
// La-SoftMoE's instance norm (no affine part).
template <typename T>
__device__ void layer_norm_fwd(const T* x, const T* gamma, const T* beta, T* y, int cols,
                               float eps) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float mean, rstd;
    row_stats(x, base, cols, eps, shared, &mean, &rstd);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        store(y, base + c,
              (load(x, base + c) - mean) * rstd * scale_at(gamma, c) +
                  (beta ? load(beta, c) : 0.0f));
}

// Input gradient of one row, and the row's mean and rstd into `stats`
// (2 floats per row; null when no parameter gradient follows) for the
// parameter gradients: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),
// g = dy * gamma (dy without an affine part).
template <typename T>
__device__ void layer_norm_bwd_input(const T* x, const T* gamma, const T* dy, T* dx,
                                     float* stats, int cols, float eps) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float mean, rstd;
    row_stats(x, base, cols, eps, shared, &mean, &rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = load(dy, base + c) * scale_at(gamma, c);
        sg += g;
        sgx += g * (load(x, base + c) - mean) * rstd;
    }
    const float mg = block_reduce<false>(sg, shared) / cols;
    const float mgx = block_reduce<false>(sgx, shared) / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float xhat = (load(x, base + c) - mean) * rstd;
        const float g = load(dy, base + c) * scale_at(gamma, c);
        store(dx, base + c, rstd * (g - mg - xhat * mgx));
    }
    if (stats && threadIdx.x == 0) {
        stats[2 * (int64_t)blockIdx.x] = mean;
        stats[2 * (int64_t)blockIdx.x + 1] = rstd;
    }
}

// Mean and 1/sqrt(var + eps) of the column starting at `base` (`len`
// elements `inner` apart), two passes as row_stats.
template <typename T>
__device__ void column_stats(const T* x, int64_t base, int len, int inner, float eps, float* mean,
                             float* rstd) {
    float s = 0.0f;
    for (int k = 0; k < len; ++k) s += load(x, base + (int64_t)k * inner);
    const float mu = s / len;
    float v = 0.0f;
    for (int k = 0; k < len; ++k) {
        const float d = load(x, base + (int64_t)k * inner) - mu;
        v += d * d;
    }
    *mean = mu;
    *rstd = rsqrtf(v / len + eps);
}

// Standardisation along an axis that is not the last (La-SoftMoE's
// instance norm per slot: over the tokens of a `(batch, tokens, slots)`
// tensor), one thread per column as softmax_cols_fwd.
template <typename T>
__device__ void standardize_cols_fwd(const T* x, T* y, int64_t lines, int len, int inner,
                                     float eps) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= lines) return;
    const int64_t base = (i / inner) * len * inner + i % inner;
    float mean, rstd;
    column_stats(x, base, len, inner, eps, &mean, &rstd);
    for (int k = 0; k < len; ++k) {
        const int64_t j = base + (int64_t)k * inner;
        store(y, j, (load(x, j) - mean) * rstd);
    }
}

// dx = rstd * (dy - mean(dy) - xhat * mean(dy * xhat)) per column.
template <typename T>
__device__ void standardize_cols_bwd(const T* x, const T* dy, T* dx, int64_t lines, int len,
                                     int inner, float eps) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= lines) return;
    const int64_t base = (i / inner) * len * inner + i % inner;
    float mean, rstd;
    column_stats(x, base, len, inner, eps, &mean, &rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int k = 0; k < len; ++k) {
        const int64_t j = base + (int64_t)k * inner;
        const float g = load(dy, j);
        sg += g;
        sgx += g * (load(x, j) - mean) * rstd;
    }
    const float mg = sg / len, mgx = sgx / len;
    for (int k = 0; k < len; ++k) {
        const int64_t j = base + (int64_t)k * inner;
        store(dx, j, rstd * (load(dy, j) - mg - (load(x, j) - mean) * rstd * mgx));
    }
}

// y = x / sqrt(sum(x^2) + eps) per row (vmoe's normalisation of the
// router's tokens and parameters, epsilon inside the root).
template <typename T>
__device__ void l2_normalize_fwd(const T* x, T* y, int cols, float eps) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = load(x, base + c);
        s += v * v;
    }
    const float r = rsqrtf(block_reduce<false>(s, shared) + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) store(y, base + c, load(x, base + c) * r);
}

// dx = r * (dy - y * sum(dy * y)), y = x * r, per row.
template <typename T>
__device__ void l2_normalize_bwd(const T* x, const T* dy, T* dx, int cols, float eps) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float s = 0.0f, d = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = load(x, base + c);
        s += v * v;
        d += v * load(dy, base + c);
    }
    const float r = rsqrtf(block_reduce<false>(s, shared) + eps);
    // sum(dy * y) = r * sum(dy * x)
    const float dot = r * block_reduce<false>(d, shared);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        store(dx, base + c, r * (load(dy, base + c) - load(x, base + c) * r * dot));
}

// y = elu(x) + 1: x + 1 for x > 0, e^x otherwise (La-SoftMoE's feature map).
template <typename T>
__device__ void elu_plus_one_fwd(const T* x, T* y, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = load(x, i);
    store(y, i, v > 0.0f ? v + 1.0f : expf(v));
}

// dx = dy where the output is above 1 (x > 0), dy * y elsewhere.
template <typename T>
__device__ void elu_plus_one_bwd(const T* y, const T* dy, T* dx, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float out = load(y, i), g = load(dy, i);
    store(dx, i, out > 1.0f ? g : g * out);
}

// Partial parameter gradients over the rows of chunk blockIdx.y, one
// column per thread, laid out for sum_chunks with two groups:
// partial[chunk][c] = sum dy * xhat (gamma), partial[chunks + chunk][c] =
// sum dy (beta). Fixed order: deterministic.
template <typename T>
__device__ void layer_norm_bwd_params(const T* x, const T* dy, const float* stats,
                                      float* partial, int rows, int cols, int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int start = blockIdx.y * rows_per_chunk;
    const int end = min(rows, start + rows_per_chunk);
    float dg = 0.0f, db = 0.0f;
    for (int r = start; r < end; ++r) {
        const int64_t i = (int64_t)r * cols + c;
        const float d = load(dy, i);
        dg += d * (load(x, i) - stats[2 * (int64_t)r]) * stats[2 * (int64_t)r + 1];
        db += d;
    }
    partial[(int64_t)blockIdx.y * cols + c] = dg;
    partial[((int64_t)gridDim.y + blockIdx.y) * cols + c] = db;
}

// Activations, by index: 0 none, 1 GELU (erf), 2 quick GELU x * sigmoid(1.702 x).
__device__ __forceinline__ float act_fwd(float x, int act) {
    if (act == 1) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    if (act == 2) return x / (1.0f + expf(-1.702f * x));
    return x;
}

__device__ __forceinline__ float act_grad(float x, int act) {
    if (act == 1) {
        const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
        return cdf + x * pdf;
    }
    if (act == 2) {
        const float s = 1.0f / (1.0f + expf(-1.702f * x));
        return s + 1.702f * x * s * (1.0f - s);
    }
    return 1.0f;
}

// Group and column of element i of (groups, rows, cols): 32-bit division
// when the tensor allows it (64-bit division is emulated, and slow).
__device__ __forceinline__ void group_col(int64_t i, int64_t n, int rows, int cols, int64_t* g,
                                          int* c) {
    if (n <= 0x7fffffff) {
        const unsigned u = (unsigned)i;
        *g = u / ((unsigned)rows * (unsigned)cols);
        *c = (int)(u % (unsigned)cols);
    } else {
        *g = i / ((int64_t)rows * cols);
        *c = (int)(i % cols);
    }
}

// y = act(pre + bias) for pre (groups, rows, cols), bias (groups, cols).
template <typename T>
__device__ void bias_act_fwd(const T* pre, const T* bias, T* y, int64_t n, int rows, int cols,
                             int act) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t g;
    int c;
    group_col(i, n, rows, cols, &g, &c);
    store(y, i, act_fwd(load(pre, i) + load(bias, g * cols + c), act));
}

// dpre = dy * act'(pre + bias).
template <typename T>
__device__ void bias_act_bwd_input(const T* pre, const T* bias, const T* dy, T* dpre, int64_t n,
                                   int rows, int cols, int act) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int64_t g;
    int c;
    group_col(i, n, rows, cols, &g, &c);
    store(dpre, i, load(dy, i) * act_grad(load(pre, i) + load(bias, g * cols + c), act));
}

// Partial bias gradients: partial[(g * chunks + chunk) * cols + c] = sum of
// dpre over the rows of chunk blockIdx.y of group blockIdx.z.
template <typename T>
__device__ void bias_grad_partial(const T* dpre, float* partial, int rows, int cols,
                                  int rows_per_chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    const int start = blockIdx.y * rows_per_chunk;
    const int end = min(rows, start + rows_per_chunk);
    const int64_t base = (int64_t)blockIdx.z * rows * cols;
    float s = 0.0f;
    for (int r = start; r < end; ++r) s += load(dpre, base + (int64_t)r * cols + c);
    partial[((int64_t)blockIdx.z * gridDim.y + blockIdx.y) * cols + c] = s;
}

// out[g][c] = sum over the chunks of group g of partial[(g * chunks + k) *
// cols + c], in order: the second half of every parameter-gradient
// reduction (LayerNorm's weight and bias as two groups, a bias per expert).
template <typename T>
__device__ void sum_chunks(const float* partial, T* out, int groups, int chunks, int cols) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)groups * cols) return;
    const int64_t g = i / cols;
    const int c = (int)(i % cols);
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[(g * chunks + k) * cols + c];
    store(out, i, s);
}

// Memory-efficient attention over all heads, for q, k, v and the output in
// `(batch, tokens, heads * HD)` rows (the projections' layout: no head
// split or merge copies): softmax(scale q k^T [+ causal mask]) v, one
// thread per query (two per query for dq, two per key for dk and dv), keys
// or queries streamed through shared memory in tiles, softmax statistics
// in F32 and online (nothing of size tokens x tokens is stored). Grid:
// (ceil(tokens / 64), heads, batch), 64 threads (128 for dq, dk and dv).
// The backward recomputes the probabilities from the statistics
// (log-sum-exp and sum(dout * out) per query, kernel attention_stats)
// instead of saving them.

// Keys (or queries) per shared-memory tile: two tiles of TILE x HD floats
// stay within 32 KiB.
template <int HD>
struct AttentionTile {
    static constexpr int SIZE = HD <= 64 ? 64 : 32;
};

// Where head `head` of token `t` starts in a (batch, tokens, heads * HD) tensor.
template <int HD>
__device__ __forceinline__ int64_t head_row(int b, int t, int head, int tokens, int heads) {
    return ((int64_t)b * tokens + t) * heads * HD + (int64_t)head * HD;
}

// Loads TILE rows of one head from `t0` into `tile` (rows past the end
// zeroed); every thread of the block takes part.
template <typename T, int HD, int TILE>
__device__ void load_tile(const T* src, float (*tile)[HD], int b, int t0, int head, int tokens,
                          int heads) {
    for (int e = threadIdx.x; e < TILE * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD;
        const int t = t0 + r;
        tile[r][c] = t < tokens ? load(src, head_row<HD>(b, t, head, tokens, heads) + c) : 0.0f;
    }
}

template <int HD>
__device__ __forceinline__ float dot(const float* a, const float* b) {
    float s = 0.0f;
#pragma unroll
    for (int d = 0; d < HD; ++d) s += a[d] * b[d];
    return s;
}

// Calls f(key row, value row) for every key the query `i` of this thread
// attends to (all, or up to itself when causal), in order, streaming one
// head's keys (and values, unless v is null) through shared memory in
// tiles. Every thread of the block takes part in the loads, whether its
// query exists (`active`) or not.
template <typename T, int HD, bool WITH_V, typename F>
__device__ __forceinline__ void for_each_key(const T* k, const T* v, int b, int head, int tokens,
                                             int heads, int i, bool active, int causal, F f) {
    constexpr int TILE = AttentionTile<HD>::SIZE;
    __shared__ float ks[TILE][HD];
    // The statistics pass reads no values: no tile for them (1 x 1 keeps
    // the declaration valid).
    __shared__ float vs[WITH_V ? TILE : 1][WITH_V ? HD : 1];
    // Causal: no key after the block's last query is needed.
    const int last = causal ? min(tokens, (int)((blockIdx.x + 1) * blockDim.x)) : tokens;
    for (int j0 = 0; j0 < last; j0 += TILE) {
        __syncthreads();  // the previous tile's readers are done
        load_tile<T, HD, TILE>(k, ks, b, j0, head, tokens, heads);
        if constexpr (WITH_V) load_tile<T, HD, TILE>(v, vs, b, j0, head, tokens, heads);
        __syncthreads();
        const int end = min(TILE, tokens - j0);
        for (int jj = 0; active && jj < end; ++jj) {
            if (causal && j0 + jj > i) break;
            f(ks[jj], WITH_V ? vs[jj] : nullptr);
        }
    }
}

// out = softmax(scale q k^T) v for the query of this thread.
template <typename T, int HD>
__device__ void attention_fwd(const T* q, const T* k, const T* v, T* out, int tokens, int heads,
                              float scale, int causal) {
    const int head = blockIdx.y, b = blockIdx.z;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = i < tokens;
    float qi[HD], acc[HD];
    const int64_t row = head_row<HD>(b, active ? i : 0, head, tokens, heads);
#pragma unroll
    for (int d = 0; d < HD; ++d) {
        qi[d] = active ? load(q, row + d) * scale : 0.0f;
        acc[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    auto step = [&](const float* kj, const float* vj) {
        const float s = dot<HD>(qi, kj);
        if (s > m) {
            const float correction = expf(m - s);
            l *= correction;
#pragma unroll
            for (int d = 0; d < HD; ++d) acc[d] *= correction;
            m = s;
        }
        const float p = expf(s - m);
        l += p;
#pragma unroll
        for (int d = 0; d < HD; ++d) acc[d] += p * vj[d];
    };
    for_each_key<T, HD, true>(k, v, b, head, tokens, heads, i, active, causal, step);
    if (!active) return;
    const float inv = 1.0f / l;
#pragma unroll
    for (int d = 0; d < HD; ++d) store(out, row + d, acc[d] * inv);
}

// Per query: stats[2 r] = log-sum-exp of its scaled scores, stats[2 r + 1]
// = sum(dout * out), r = (b * heads + head) * tokens + i.
template <typename T, int HD>
__device__ void attention_stats(const T* q, const T* k, const T* out, const T* dout, float* stats,
                                int tokens, int heads, float scale, int causal) {
    const int head = blockIdx.y, b = blockIdx.z;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = i < tokens;
    float qi[HD];
    const int64_t row = head_row<HD>(b, active ? i : 0, head, tokens, heads);
    float delta = 0.0f;
#pragma unroll
    for (int d = 0; d < HD; ++d) {
        qi[d] = active ? load(q, row + d) * scale : 0.0f;
        delta += active ? load(dout, row + d) * load(out, row + d) : 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    auto step = [&](const float* kj, const float*) {
        const float s = dot<HD>(qi, kj);
        if (s > m) {
            l *= expf(m - s);
            m = s;
        }
        l += expf(s - m);
    };
    for_each_key<T, HD, false>(k, (const T*)nullptr, b, head, tokens, heads, i, active, causal,
                               step);
    if (!active) return;
    const int64_t r = ((int64_t)b * heads + head) * tokens + i;
    stats[2 * r] = m + logf(l);
    stats[2 * r + 1] = delta;
}

// v + the value of the other thread of this pair (lanes 2t and 2t + 1).
// Every thread of the warp must call it together.
__device__ __forceinline__ float pair_sum(float v) {
    return v + __shfl_xor_sync(0xffffffff, v, 1);
}

// The whole dot products a . x and b . y for a pair of threads, each
// holding its half of x and y in registers (element d of its half is
// dimension 2 d + half) and pointing a and b at its first element of a
// shared row (stride 2). Every thread of the warp must call it together.
template <int H>
__device__ __forceinline__ void pair_dots(const float* a, const float* x, const float* b,
                                          const float* y, float* ax, float* by) {
    float s = 0.0f, t = 0.0f;
#pragma unroll
    for (int d = 0; d < H; ++d) {
        s += a[2 * d] * x[d];
        t += b[2 * d] * y[d];
    }
    *ax = pair_sum(s);
    *by = pair_sum(t);
}

// dq_i = scale * sum_j p_ij (dout_i . v_j - delta_i) k_j, two threads per
// query as attention_bwd_dkv (q_i, dout_i and the sum, three rows, spilled
// 56 bytes at width 64 with one thread per query). Block: 2 threads x 64
// queries.
template <typename T, int HD>
__device__ void attention_bwd_dq(const T* q, const T* k, const T* v, const T* dout,
                                 const float* stats, T* dq, int tokens, int heads, float scale,
                                 int causal) {
    constexpr int TILE = AttentionTile<HD>::SIZE;
    constexpr int H = HD / 2;
    __shared__ float ks[TILE][HD];
    __shared__ float vs[TILE][HD];
    const int head = blockIdx.y, b = blockIdx.z;
    const int queries = blockDim.x / 2;
    const int i = blockIdx.x * queries + threadIdx.x / 2;
    const int half = threadIdx.x & 1;
    const bool active = i < tokens;
    float qi[H], gi[H], acc[H];
    const int64_t row = head_row<HD>(b, active ? i : 0, head, tokens, heads) + half;
#pragma unroll
    for (int d = 0; d < H; ++d) {
        qi[d] = active ? load(q, row + 2 * d) * scale : 0.0f;
        gi[d] = active ? load(dout, row + 2 * d) : 0.0f;
        acc[d] = 0.0f;
    }
    const int64_t r = ((int64_t)b * heads + head) * tokens + (active ? i : 0);
    const float lse = stats[2 * r], delta = stats[2 * r + 1];
    // Causal: no key after the block's last query is needed.
    const int last = causal ? min(tokens, (int)((blockIdx.x + 1) * queries)) : tokens;
    for (int j0 = 0; j0 < last; j0 += TILE) {
        __syncthreads();  // the previous tile's readers are done
        load_tile<T, HD, TILE>(k, ks, b, j0, head, tokens, heads);
        load_tile<T, HD, TILE>(v, vs, b, j0, head, tokens, heads);
        __syncthreads();
        const int end = min(TILE, last - j0);
        for (int jj = 0; jj < end; ++jj) {
            const float* kj = ks[jj] + half;
            const float* vj = vs[jj] + half;
            float s, dp;
            pair_dots<H>(kj, qi, vj, gi, &s, &dp);
            const bool live = active && !(causal && j0 + jj > i);
            const float ds = live ? expf(s - lse) * (dp - delta) : 0.0f;
#pragma unroll
            for (int d = 0; d < H; ++d) acc[d] += ds * kj[2 * d];
        }
    }
    if (!active) return;
#pragma unroll
    for (int d = 0; d < H; ++d) store(dq, row + 2 * d, acc[d] * scale);
}

// dk and dv for key j: dv_j = sum_i p_ij dout_i,
// dk_j = scale * sum_i p_ij (dout_i . v_j - delta_i) q_i.
// Two threads per key, each holding the interleaved half of the head's
// dimensions (2 d + half) of k_j, v_j, dk_j and dv_j: four whole rows per
// thread spilled out of registers (456 bytes at width 64, ptxas sm_90),
// and interleaving keeps the pair's shared-memory reads in different
// banks. The halves' dot products meet through one shuffle, so every
// thread runs every query of the tile (masked ones with p = 0), keeping the
// warps converged. Block: 2 threads x 64 keys. dk fills the first (batch,
// tokens, heads * HD) elements of `dkv`, dv the next ones.
template <typename T, int HD>
__device__ void attention_bwd_dkv(const T* q, const T* k, const T* v, const T* dout,
                                  const float* stats, T* dkv, int tokens, int heads, float scale,
                                  int causal) {
    T* dk = dkv;
    T* dv = dkv + (int64_t)gridDim.z * tokens * heads * HD;
    constexpr int TILE = AttentionTile<HD>::SIZE;
    constexpr int H = HD / 2;
    __shared__ float qs[TILE][HD];
    __shared__ float gs[TILE][HD];
    __shared__ float lse[TILE], delta[TILE];
    const int head = blockIdx.y, b = blockIdx.z;
    const int keys = blockDim.x / 2;
    const int j = blockIdx.x * keys + threadIdx.x / 2;
    const int half = threadIdx.x & 1;
    const bool active = j < tokens;
    float kj[H], vj[H], dkj[H], dvj[H];
    const int64_t row = head_row<HD>(b, active ? j : 0, head, tokens, heads) + half;
#pragma unroll
    for (int d = 0; d < H; ++d) {
        kj[d] = active ? load(k, row + 2 * d) : 0.0f;
        vj[d] = active ? load(v, row + 2 * d) : 0.0f;
        dkj[d] = 0.0f;
        dvj[d] = 0.0f;
    }
    // Causal: no query before the block's first key sees it.
    const int first = causal ? (int)(blockIdx.x * keys) / TILE * TILE : 0;
    for (int i0 = first; i0 < tokens; i0 += TILE) {
        __syncthreads();
        load_tile<T, HD, TILE>(q, qs, b, i0, head, tokens, heads);
        load_tile<T, HD, TILE>(dout, gs, b, i0, head, tokens, heads);
        for (int r = threadIdx.x; r < TILE; r += blockDim.x) {
            const int64_t at = ((int64_t)b * heads + head) * tokens + min(i0 + r, tokens - 1);
            lse[r] = stats[2 * at];
            delta[r] = stats[2 * at + 1];
        }
        __syncthreads();
        const int end = min(TILE, tokens - i0);
        for (int ii = 0; ii < end; ++ii) {
            const float* qi = qs[ii] + half;
            const float* gi = gs[ii] + half;
            float s, dp;
            pair_dots<H>(qi, kj, gi, vj, &s, &dp);
            const bool live = active && !(causal && i0 + ii < j);
            const float p = live ? expf(scale * s - lse[ii]) : 0.0f;
            const float ds = p * (dp - delta[ii]);
#pragma unroll
            for (int d = 0; d < H; ++d) {
                dvj[d] += p * gi[2 * d];
                dkj[d] += ds * qi[2 * d];
            }
        }
    }
    if (!active) return;
#pragma unroll
    for (int d = 0; d < H; ++d) {
        store(dk, row + 2 * d, dkj[d] * scale);
        store(dv, row + 2 * d, dvj[d]);
    }
}

// Adam's step of one element `i` of one parameter, in place: the update of
// PyTorch's single-tensor implementation (torch.optim.Adam/AdamW with
// foreach=False, as uniattack's CPU path computes it), in its order and
// roundings. Every rounding is spelled out (`__f*_rn`, `fmaf` where PyTorch's
// CPU kernels fuse a multiply-add), so nvcc contracts nothing and the result
// is the CPU's to the bit.
__device__ __forceinline__ void adam_element(float* p, float* m, float* v, const float* g,
                                             int64_t i, float decay_factor, float coupled_decay,
                                             float lerp_weight, float beta2,
                                             float one_minus_beta2, float bias_correction2_sqrt,
                                             float eps, float neg_step_size, int decoupled,
                                             int coupled) {
    float pi = p[i];
    if (decoupled) pi = __fmul_rn(pi, decay_factor);
    float gi = g[i];
    if (coupled) gi = fmaf(pi, coupled_decay, gi);
    // PyTorch's lerp: from the start point for a weight below 0.5, from
    // the end point otherwise (beta1 <= 0.5).
    const float diff = __fsub_rn(gi, m[i]);
    const float mi = fabsf(lerp_weight) < 0.5f
                         ? fmaf(lerp_weight, diff, m[i])
                         : fmaf(__fsub_rn(lerp_weight, 1.0f), diff, gi);
    const float vi = fmaf(__fmul_rn(one_minus_beta2, gi), gi, __fmul_rn(v[i], beta2));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bias_correction2_sqrt), eps);
    p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step_size, mi), denom));
    m[i] = mi;
    v[i] = vi;
}

// The kernels below walk many buffers through a table of their addresses,
// one block per chunk of TABLE_CHUNK elements of one buffer. Each table
// ends with the buffers' element counts and the running count of their
// chunks (one entry more than buffers, the last the total).
#define TABLE_CHUNK 16384

// The buffer that chunk `chunk` belongs to: the last whose first chunk is
// at or before it (buffers with no chunks share their successor's first
// chunk and are passed over). `first` has `tensors` + 1 entries.
__device__ __forceinline__ int chunk_owner(const int64_t* first, int tensors, int64_t chunk) {
    int lo = 0, hi = tensors - 1;
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if (first[mid] <= chunk) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// This block's chunk: its buffer and the buffer's elements [start, end).
struct ChunkSpan {
    int owner;
    int64_t start, end;
};

__device__ __forceinline__ ChunkSpan block_chunk(const int64_t* first, const int64_t* lens,
                                                 int tensors) {
    const int64_t chunk = blockIdx.x;
    ChunkSpan span;
    span.owner = chunk_owner(first, tensors, chunk);
    span.start = (chunk - first[span.owner]) * TABLE_CHUNK;
    const int64_t len = lens[span.owner];
    span.end = span.start + TABLE_CHUNK < len ? span.start + TABLE_CHUNK : len;
    return span;
}

// Sums of squares of many F32 buffers at once (a global gradient norm's
// parts) in two launches, deterministically. `table` holds, for `tensors`
// buffers: their addresses, their element counts and their chunks' running
// count. The first launch has one block per chunk and writes each chunk's
// sum to `partial`; the second has one thread per buffer and adds its
// chunks' sums in order. Each thread's strided squares are fused
// multiply-adds, on a GPU and on the emulator alike.
__device__ void sum_squares_chunks(const int64_t* table, int tensors, float* partial) {
    __shared__ float shared[32];
    const ChunkSpan span = block_chunk(table + 2 * tensors, table + tensors, tensors);
    const float* x = (const float*)table[span.owner];
    float acc = 0.0f;
    for (int64_t i = span.start + threadIdx.x; i < span.end; i += blockDim.x) {
        const float v = x[i];
        acc = fmaf(v, v, acc);
    }
    acc = block_reduce<false>(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__device__ void sum_squares_finish(const int64_t* table, int tensors, const float* partial,
                                   float* out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tensors) return;
    const int64_t* first = table + 2 * tensors;
    float acc = 0.0f;
    for (int64_t c = first[t]; c < first[t + 1]; ++c) acc = __fadd_rn(acc, partial[c]);
    out[t] = acc;
}

// Many F32 buffers copied into one, each at its own offset and multiplied
// by `scale` (one rounding; a scale of 1 copies exactly, NaN payloads
// aside): a data-parallel rank's gradients into its exchange buffer,
// divided by the world size.
// `table` holds, for `parts` buffers: their addresses, their element
// counts, their offsets in `dst`, and their chunks' running count.
__device__ void copy_scaled(const int64_t* table, int parts, float* dst, float scale) {
    const ChunkSpan span = block_chunk(table + 3 * parts, table + parts, parts);
    const float* x = (const float*)table[span.owner];
    float* y = dst + table[2 * parts + span.owner];
    for (int64_t i = span.start + threadIdx.x; i < span.end; i += blockDim.x)
        y[i] = __fmul_rn(x[i], scale);
}

// Adam's step of many F32 parameters in one launch, in place, each element
// as adam_element computes it. `table` holds, for `tensors` parameters: the
// addresses of the parameters, of their first moments, of their second
// moments and of their gradients, the element counts, and their chunks'
// running count. No two of the written buffers overlap, and no gradient
// overlaps them (the host checks).
__device__ void adam_update_many(const int64_t* table, int tensors, float decay_factor,
                                 float coupled_decay, float lerp_weight, float beta2,
                                 float one_minus_beta2, float bias_correction2_sqrt, float eps,
                                 float neg_step_size, int decoupled, int coupled) {
    const ChunkSpan span = block_chunk(table + 5 * tensors, table + 4 * tensors, tensors);
    float* p = (float*)table[span.owner];
    float* m = (float*)table[tensors + span.owner];
    float* v = (float*)table[2 * tensors + span.owner];
    const float* g = (const float*)table[3 * tensors + span.owner];
    for (int64_t i = span.start + threadIdx.x; i < span.end; i += blockDim.x)
        adam_element(p, m, v, g, i, decay_factor, coupled_decay, lerp_weight, beta2,
                     one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size, decoupled,
                     coupled);
}

// Every entry point is defined through KERNEL(name, (parameters), call);
// the CPU emulator (emulation/emulator.h) defines it first to also register
// the kernel under its name.
#ifndef KERNEL
#define KERNEL(NAME, PARAMS, CALL) \
    extern "C" __global__ void NAME PARAMS { CALL; }
#endif

#define ROW_KERNELS(T, S)                                                                        \
    KERNEL(softmax_fwd_##S, (const T* x, T* y, int cols), softmax_fwd(x, y, cols))               \
    KERNEL(softmax_bwd_##S, (const T* y, const T* dy, T* dx, int cols),                          \
           softmax_bwd(y, dy, dx, cols))                                                         \
    KERNEL(softmax_cols_fwd_##S, (const T* x, T* y, int64_t lines, int len, int inner),          \
           softmax_cols_fwd(x, y, lines, len, inner))                                            \
    KERNEL(softmax_cols_bwd_##S,                                                                 \
           (const T* y, const T* dy, T* dx, int64_t lines, int len, int inner),                  \
           softmax_cols_bwd(y, dy, dx, lines, len, inner))                                       \
    KERNEL(layer_norm_fwd_##S,                                                                   \
           (const T* x, const T* gamma, const T* beta, T* y, int cols, float eps),               \
           layer_norm_fwd(x, gamma, beta, y, cols, eps))                                         \
    KERNEL(layer_norm_bwd_input_##S,                                                             \
           (const T* x, const T* gamma, const T* dy, T* dx, float* stats, int cols, float eps),  \
           layer_norm_bwd_input(x, gamma, dy, dx, stats, cols, eps))                             \
    KERNEL(standardize_fwd_##S, (const T* x, T* y, int cols, float eps),                       \
           layer_norm_fwd(x, (const T*)nullptr, (const T*)nullptr, y, cols, eps))                \
    KERNEL(standardize_bwd_##S, (const T* x, const T* dy, T* dx, int cols, float eps),          \
           layer_norm_bwd_input(x, (const T*)nullptr, dy, dx, (float*)nullptr, cols, eps))      \
    KERNEL(standardize_cols_fwd_##S,                                                             \
           (const T* x, T* y, int64_t lines, int len, int inner, float eps),                     \
           standardize_cols_fwd(x, y, lines, len, inner, eps))                                   \
    KERNEL(standardize_cols_bwd_##S,                                                             \
           (const T* x, const T* dy, T* dx, int64_t lines, int len, int inner, float eps),       \
           standardize_cols_bwd(x, dy, dx, lines, len, inner, eps))                              \
    KERNEL(l2_normalize_fwd_##S, (const T* x, T* y, int cols, float eps),                      \
           l2_normalize_fwd(x, y, cols, eps))                                                    \
    KERNEL(l2_normalize_bwd_##S, (const T* x, const T* dy, T* dx, int cols, float eps),         \
           l2_normalize_bwd(x, dy, dx, cols, eps))                                               \
    KERNEL(elu_plus_one_fwd_##S, (const T* x, T* y, int64_t n), elu_plus_one_fwd(x, y, n))      \
    KERNEL(elu_plus_one_bwd_##S, (const T* y, const T* dy, T* dx, int64_t n),                  \
           elu_plus_one_bwd(y, dy, dx, n))                                                       \
    KERNEL(layer_norm_bwd_params_##S,                                                            \
           (const T* x, const T* dy, const float* stats, float* partial, int rows, int cols,     \
            int rows_per_chunk),                                                                 \
           layer_norm_bwd_params(x, dy, stats, partial, rows, cols, rows_per_chunk))             \
    KERNEL(bias_act_fwd_##S,                                                                     \
           (const T* pre, const T* bias, T* y, int64_t n, int rows, int cols, int act),          \
           bias_act_fwd(pre, bias, y, n, rows, cols, act))                                       \
    KERNEL(bias_act_bwd_input_##S,                                                               \
           (const T* pre, const T* bias, const T* dy, T* dpre, int64_t n, int rows, int cols,    \
            int act),                                                                            \
           bias_act_bwd_input(pre, bias, dy, dpre, n, rows, cols, act))                          \
    KERNEL(bias_grad_partial_##S,                                                                \
           (const T* dpre, float* partial, int rows, int cols, int rows_per_chunk),              \
           bias_grad_partial(dpre, partial, rows, cols, rows_per_chunk))                         \
    KERNEL(sum_chunks_##S, (const float* partial, T* out, int groups, int chunks, int cols),     \
           sum_chunks(partial, out, groups, chunks, cols))

ROW_KERNELS(float, f32)
ROW_KERNELS(__nv_bfloat16, bf16)

#define ATTENTION_KERNELS(T, S, HD)                                                              \
    KERNEL(attention_fwd_##S##_##HD,                                                             \
           (const T* q, const T* k, const T* v, T* out, int tokens, int heads, float scale,      \
            int causal),                                                                         \
           (attention_fwd<T, HD>(q, k, v, out, tokens, heads, scale, causal)))                   \
    KERNEL(attention_stats_##S##_##HD,                                                           \
           (const T* q, const T* k, const T* out, const T* dout, float* stats, int tokens,       \
            int heads, float scale, int causal),                                                 \
           (attention_stats<T, HD>(q, k, out, dout, stats, tokens, heads, scale, causal)))       \
    KERNEL(attention_bwd_dq_##S##_##HD,                                                          \
           (const T* q, const T* k, const T* v, const T* dout, const float* stats, T* dq,        \
            int tokens, int heads, float scale, int causal),                                     \
           (attention_bwd_dq<T, HD>(q, k, v, dout, stats, dq, tokens, heads, scale, causal)))    \
    KERNEL(attention_bwd_dkv_##S##_##HD,                                                         \
           (const T* q, const T* k, const T* v, const T* dout, const float* stats, T* dkv,       \
            int tokens, int heads, float scale, int causal),                                     \
           (attention_bwd_dkv<T, HD>(q, k, v, dout, stats, dkv, tokens, heads, scale, causal)))

// The head widths the attention kernels are compiled for (ViT-B/16 and
// CLIP's text tower: 64; the test models': 8); others take the composite.
#define ATTENTION_WIDTHS(T, S)  \
    ATTENTION_KERNELS(T, S, 8)  \
    ATTENTION_KERNELS(T, S, 16) \
    ATTENTION_KERNELS(T, S, 32) \
    ATTENTION_KERNELS(T, S, 64) \
    ATTENTION_KERNELS(T, S, 128)

ATTENTION_WIDTHS(float, f32)
ATTENTION_WIDTHS(__nv_bfloat16, bf16)

KERNEL(adam_update_many_f32,
       (const int64_t* table, int tensors, float decay_factor, float coupled_decay,
        float lerp_weight, float beta2, float one_minus_beta2, float bias_correction2_sqrt,
        float eps, float neg_step_size, int decoupled, int coupled),
       adam_update_many(table, tensors, decay_factor, coupled_decay, lerp_weight, beta2,
                        one_minus_beta2, bias_correction2_sqrt, eps, neg_step_size, decoupled,
                        coupled))

KERNEL(sum_squares_chunks_f32, (const int64_t* table, int tensors, float* partial),
       sum_squares_chunks(table, tensors, partial))
KERNEL(sum_squares_finish_f32,
       (const int64_t* table, int tensors, const float* partial, float* out),
       sum_squares_finish(table, tensors, partial, out))
KERNEL(copy_scaled_f32, (const int64_t* table, int parts, float* dst, float scale),
       copy_scaled(table, parts, dst, scale))
