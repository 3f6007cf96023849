// cuda/fused_ops.cu compiled as C++ for the CPU emulator (emulator.h),
// with this folder first on the include path for <cuda_bf16.h>.
#include "emulator.h"

#include "../fused_ops.cu"
