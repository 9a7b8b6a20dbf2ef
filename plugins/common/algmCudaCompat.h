/*
 * algm-export TensorRT plugins: a thin compatibility layer between CUDA and the host emulator.
 *
 * The kernels in plugins/algmClap and plugins/algmGbm are written against the macros below.
 * Compiled by nvcc they are ordinary CUDA kernels. Compiled by a host C++ compiler with
 * ALGM_EMULATE defined (plugins/common/emu), every CUDA thread becomes a cooperative fiber and
 * the same source runs on the CPU, so that the kernels' logic can be tested on machines with
 * no GPU. Kernels therefore follow a few rules:
 *   - shared memory is declared with ALGM_SHARED_ARRAY / ALGM_DYNAMIC_SHARED (never sizeof it),
 *   - block-wide barriers are ALGM_SYNC(), reached by every thread of the block,
 *   - no warp-synchronous code (no shuffles, no votes, no implicit warp lock-step),
 *   - launches go through ALGM_LAUNCH.
 */
#ifndef ALGM_CUDA_COMPAT_H
#define ALGM_CUDA_COMPAT_H

#include <cstddef>
#include <cstdint>

#if defined(ALGM_EMULATE)

#include "emu/algmEmu.h"
#include <math.h>

#define ALGM_KERNEL
#define ALGM_DEVICE inline
#define ALGM_UNROLL
#define ALGM_SHARED_ARRAY(T, name, count) T* name = ::algm_emu::sharedArray<T>(count)
#define ALGM_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::algm_emu::dynamicShared())
#define ALGM_SYNC() ::algm_emu::syncthreads()
#define ALGM_LAUNCH(kernel, grid, block, smem, stream, ...)                                                          \
    do                                                                                                               \
    {                                                                                                                \
        (void) (stream);                                                                                             \
        ::algm_emu::launch((grid), (block), (smem), [=]() { kernel(__VA_ARGS__); });                                 \
    } while (0)

#define threadIdx (::algm_emu::threadIdxRef())
#define blockIdx (::algm_emu::blockIdxRef())
#define blockDim (::algm_emu::blockDimRef())
#define gridDim (::algm_emu::gridDimRef())

using dim3 = ::algm_emu::Dim3;
typedef void* cudaStream_t;
typedef int cudaError_t;
static constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return ::algm_emu::lastError(); }
inline char const* cudaGetErrorString(cudaError_t e) { return e == 0 ? "no error" : "emulated launch error"; }

namespace algm
{
// fibers are cooperative: a plain read-modify-write is atomic
inline int atomicAddInt(int* p, int v)
{
    int const old = *p;
    *p = old + v;
    return old;
}
} // namespace algm

namespace algm
{
// float16 storage for the emulator: IEEE binary16 bits, converted in software (round to nearest even).
struct half_t
{
    uint16_t bits;
};
ALGM_DEVICE float toFloat(half_t h) { return ::algm_emu::halfBitsToFloat(h.bits); }
ALGM_DEVICE float toFloat(float v) { return v; }
template <typename T>
ALGM_DEVICE T fromFloat(float v);
template <>
inline half_t fromFloat<half_t>(float v)
{
    return half_t{::algm_emu::floatToHalfBits(v)};
}
template <>
inline float fromFloat<float>(float v)
{
    return v;
}
} // namespace algm

#else // CUDA

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define ALGM_KERNEL __global__
#define ALGM_UNROLL _Pragma("unroll")
#define ALGM_DEVICE __device__ __forceinline__
#define ALGM_SHARED_ARRAY(T, name, count) __shared__ T name[count]
#define ALGM_DYNAMIC_SHARED(T, name)                                                                                 \
    extern __shared__ __align__(16) unsigned char algmDynamicSmem_[];                                                \
    T* name = reinterpret_cast<T*>(algmDynamicSmem_)
#define ALGM_SYNC() __syncthreads()
#define ALGM_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)

namespace algm
{
ALGM_DEVICE int atomicAddInt(int* p, int v) { return atomicAdd(p, v); }

using half_t = __half;
ALGM_DEVICE float toFloat(half_t h) { return __half2float(h); }
ALGM_DEVICE float toFloat(float v) { return v; }
template <typename T>
ALGM_DEVICE T fromFloat(float v);
template <>
ALGM_DEVICE half_t fromFloat<half_t>(float v)
{
    return __float2half_rn(v);
}
template <>
ALGM_DEVICE float fromFloat<float>(float v)
{
    return v;
}
} // namespace algm

#endif

#endif // ALGM_CUDA_COMPAT_H
