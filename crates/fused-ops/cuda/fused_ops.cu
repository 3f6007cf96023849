// Kernels of fused-ops for CUDA, forward and backward: softmax over the
// last axis and LayerNorm over the last axis (one thread block per row),
// softmax over another axis (one thread per column),
// and a linear layer's bias + activation (one thread per element).
// Statistics and accumulation in F32 for F32 and BF16 storage. Compiled to
// PTX by build.rs (`--features cuda`), loaded by src/cuda_ops.rs.

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

// y = (x - mean) * rstd * gamma + beta per row.
template <typename T>
__device__ void layer_norm_fwd(const T* x, const T* gamma, const T* beta, T* y, int cols,
                               float eps) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float mean, rstd;
    row_stats(x, base, cols, eps, shared, &mean, &rstd);
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        store(y, base + c,
              (load(x, base + c) - mean) * rstd * load(gamma, c) + load(beta, c));
}

// Input gradient of one row, and the row's mean and rstd into `stats`
// (2 floats per row) for the parameter gradients:
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma.
template <typename T>
__device__ void layer_norm_bwd_input(const T* x, const T* gamma, const T* dy, T* dx,
                                     float* stats, int cols, float eps) {
    __shared__ float shared[32];
    const int64_t base = (int64_t)blockIdx.x * cols;
    float mean, rstd;
    row_stats(x, base, cols, eps, shared, &mean, &rstd);
    float sg = 0.0f, sgx = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float g = load(dy, base + c) * load(gamma, c);
        sg += g;
        sgx += g * (load(x, base + c) - mean) * rstd;
    }
    const float mg = block_reduce<false>(sg, shared) / cols;
    const float mgx = block_reduce<false>(sgx, shared) / cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        const float xhat = (load(x, base + c) - mean) * rstd;
        const float g = load(dy, base + c) * load(gamma, c);
        store(dx, base + c, rstd * (g - mg - xhat * mgx));
    }
    if (threadIdx.x == 0) {
        stats[2 * blockIdx.x] = mean;
        stats[2 * blockIdx.x + 1] = rstd;
    }
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
        dg += d * (load(x, i) - stats[2 * r]) * stats[2 * r + 1];
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

#define ROW_KERNELS(T, SUFFIX)                                                                  \
    extern "C" __global__ void softmax_fwd_##SUFFIX(const T* x, T* y, int cols) {              \
        softmax_fwd(x, y, cols);                                                                \
    }                                                                                           \
    extern "C" __global__ void softmax_bwd_##SUFFIX(const T* y, const T* dy, T* dx, int cols) { \
        softmax_bwd(y, dy, dx, cols);                                                           \
    }                                                                                           \
    extern "C" __global__ void softmax_cols_fwd_##SUFFIX(const T* x, T* y, int64_t lines,      \
                                                         int len, int inner) {                  \
        softmax_cols_fwd(x, y, lines, len, inner);                                              \
    }                                                                                           \
    extern "C" __global__ void softmax_cols_bwd_##SUFFIX(const T* y, const T* dy, T* dx,        \
                                                         int64_t lines, int len, int inner) {   \
        softmax_cols_bwd(y, dy, dx, lines, len, inner);                                         \
    }                                                                                           \
    extern "C" __global__ void layer_norm_fwd_##SUFFIX(const T* x, const T* gamma,              \
                                                       const T* beta, T* y, int cols,           \
                                                       float eps) {                             \
        layer_norm_fwd(x, gamma, beta, y, cols, eps);                                           \
    }                                                                                           \
    extern "C" __global__ void layer_norm_bwd_input_##SUFFIX(                                   \
        const T* x, const T* gamma, const T* dy, T* dx, float* stats, int cols, float eps) {    \
        layer_norm_bwd_input(x, gamma, dy, dx, stats, cols, eps);                               \
    }                                                                                           \
    extern "C" __global__ void layer_norm_bwd_params_##SUFFIX(                                  \
        const T* x, const T* dy, const float* stats, float* partial, int rows, int cols,        \
        int rows_per_chunk) {                                                                   \
        layer_norm_bwd_params(x, dy, stats, partial, rows, cols, rows_per_chunk);               \
    }                                                                                           \
    extern "C" __global__ void bias_act_fwd_##SUFFIX(const T* pre, const T* bias, T* y,         \
                                                     int64_t n, int rows, int cols, int act) {  \
        bias_act_fwd(pre, bias, y, n, rows, cols, act);                                         \
    }                                                                                           \
    extern "C" __global__ void bias_act_bwd_input_##SUFFIX(const T* pre, const T* bias,         \
                                                           const T* dy, T* dpre, int64_t n,     \
                                                           int rows, int cols, int act) {       \
        bias_act_bwd_input(pre, bias, dy, dpre, n, rows, cols, act);                            \
    }                                                                                           \
    extern "C" __global__ void bias_grad_partial_##SUFFIX(const T* dpre, float* partial,        \
                                                          int rows, int cols,                   \
                                                          int rows_per_chunk) {                 \
        bias_grad_partial(dpre, partial, rows, cols, rows_per_chunk);                           \
    }                                                                                           \
    extern "C" __global__ void sum_chunks_##SUFFIX(const float* partial, T* out, int groups,    \
                                                   int chunks, int cols) {                      \
        sum_chunks(partial, out, groups, chunks, cols);                                         \
    }

ROW_KERNELS(float, f32)
ROW_KERNELS(__nv_bfloat16, bf16)
