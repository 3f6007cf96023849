// Kernels that break CUDA's rules on purpose, for the emulator's own tests
// (src/cuda_emulation.rs): each shows that the emulator reports, rather
// than hides, one kind of kernel bug. Compiled for the emulator only.

#include "emulator.h"

// Sums each block's values through shared memory; SYNCED false leaves out
// the barrier between the writes and thread 0's reads.
template <bool SYNCED>
__device__ void block_sum(const float* x, float* out) {
    __shared__ float values[1024];
    values[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
    if (SYNCED) __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (unsigned i = 0; i < blockDim.x; ++i) s += values[i];
        out[blockIdx.x] = s;
    }
}

// Writes y[0..=n]: one element past an n-element buffer.
__device__ void write_one_past(float* y, int n) {
    if (threadIdx.x == 0)
        for (int i = 0; i <= n; ++i) y[i] = 1.0f;
}

// write_one_past on the buffer whose address is the table's first entry,
// as the table kernels reach their buffers.
__device__ void table_write_one_past(const int64_t* table, int n) {
    write_one_past(reinterpret_cast<float*>(table[0]), n);
}

// A full-warp shuffle that only the first `lanes` threads reach.
__device__ void diverged_shuffle(float* y, int lanes) {
    float v = threadIdx.x;
    if ((int)threadIdx.x < lanes) v = __shfl_xor_sync(0xffffffff, v, 1);
    y[threadIdx.x] = v;
}

// Each thread takes its neighbour's value (lane ^ 1) in one shuffle.
__device__ void swap_pairs(float* y) {
    y[threadIdx.x] = __shfl_xor_sync(0xffffffff, (float)threadIdx.x, 1);
}

KERNEL(emulator_test_synced_sum, (const float* x, float* out), block_sum<true>(x, out))
KERNEL(emulator_test_unsynced_sum, (const float* x, float* out), block_sum<false>(x, out))
KERNEL(emulator_test_write_one_past, (float* y, int n), write_one_past(y, n))
KERNEL(emulator_test_table_write_one_past, (const int64_t* table, int n),
       table_write_one_past(table, n))
KERNEL(emulator_test_diverged_shuffle, (float* y, int lanes), diverged_shuffle(y, lanes))
KERNEL(emulator_test_swap_pairs, (float* y), swap_pairs(y))
