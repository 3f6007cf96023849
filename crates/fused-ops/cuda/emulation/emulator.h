// The CUDA built-ins that cuda/fused_ops.cu uses, for compiling its kernels
// as C++ and running them on the CPU (fused-ops' `cuda-emulation` feature,
// for tests on machines without a GPU). Force-included before the kernels;
// emulator.cpp holds the scheduler.
//
// A launch runs the grid's blocks one after another. The threads of a block
// are fibers on the launching OS thread, switched at __syncthreads() and at
// warp shuffles, so a thread reaching a barrier waits for the others exactly
// as on a GPU; between barriers, even blocks run their threads in ascending
// order and odd blocks in descending order, so a missing barrier shows up
// as a wrong result in one of them. What this does not model: timing, the
// memory model beyond barriers, and hardware limits (registers, shared
// memory size); the GPU parity test still has to run on a GPU.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_bf16.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// One copy in the process, shared by the fibers (threads) of the block that
// runs: launches take turns (emulator.cpp), so no two blocks run at once.
#define __shared__ static

struct uint3 {
    unsigned int x, y, z;
};
using dim3 = uint3;

extern thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

enum class Shuffle { Xor, Down, Up, Index };

void syncthreads();
uint64_t shuffle(unsigned mask, uint64_t bits, int arg, int width, Shuffle kind);

template <typename T>
T shuffle_value(unsigned mask, T v, int arg, int width, Shuffle kind) {
    static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                  "shuffles move values of at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    bits = shuffle(mask, bits, arg, width, kind);
    T out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

// A kernel as the launcher calls it: with the addresses of its arguments,
// as cuLaunchKernel takes them.
using Invoker = void (*)(void** params);

struct Registration {
    Registration(const char* name, Invoker invoker, std::string signature);
};

// One character per parameter type, so a launch can be checked against
// the kernel's parameter list (a GPU reads an i32 passed for an int64_t,
// or a bf16 buffer passed for a float*, as garbage; the emulator's 8-byte
// argument slots would not): F float*, B bfloat16*, i int, l int64_t, f
// float, L int64_t* (a table of counts or addresses), ? anything else.
template <typename T>
struct ParamCode {
    static constexpr char value = '?';
};
template <>
struct ParamCode<int> {
    static constexpr char value = 'i';
};
template <>
struct ParamCode<long> {
    static constexpr char value = sizeof(long) == 8 ? 'l' : '?';
};
template <>
struct ParamCode<long long> {
    static constexpr char value = 'l';
};
template <>
struct ParamCode<float> {
    static constexpr char value = 'f';
};
// Buffers, read-only or not, by element type.
template <typename T>
struct ParamCode<T*> {
    using E = std::remove_const_t<T>;
    static constexpr char value =
        std::is_same_v<E, float>           ? 'F'
        : std::is_same_v<E, __nv_bfloat16> ? 'B'
        : std::is_same_v<E, long long> || (std::is_same_v<E, long> && sizeof(long) == 8) ? 'L'
                                                                                        : '?';
};

template <typename... A>
std::string signature_of(void (*)(A...)) {
    return std::string{ParamCode<std::remove_cv_t<A>>::value...};
}

template <typename... A, std::size_t... I>
void invoke_with(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(params[I])...);
}

template <typename... A>
void invoke(void (*kernel)(A...), void** params) {
    invoke_with(kernel, params, std::index_sequence_for<A...>{});
}

}  // namespace emu

// fused_ops.cu defines every kernel through KERNEL; here each one is also
// registered under its name for the launcher.
#define KERNEL(NAME, PARAMS, CALL)                                                \
    extern "C" void NAME PARAMS { CALL; }                                         \
    static const ::emu::Registration NAME##_registration(                         \
        #NAME, [](void** p) { ::emu::invoke(NAME, p); }, ::emu::signature_of(NAME));

inline void __syncthreads() { emu::syncthreads(); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return emu::shuffle_value(mask, v, lane_mask, width, emu::Shuffle::Xor);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::shuffle_value(mask, v, static_cast<int>(delta), width, emu::Shuffle::Down);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return emu::shuffle_value(mask, v, static_cast<int>(delta), width, emu::Shuffle::Up);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int lane, int width = 32) {
    return emu::shuffle_value(mask, v, lane, width, emu::Shuffle::Index);
}

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// The correctly rounded intrinsics, which nvcc never contracts into fused
// multiply-adds: single operations on floats round the same way in C++
// (build.rs turns contraction off), and fmaf is fused in both.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int64_t min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int64_t b) { return a > b ? a : b; }
