/*
 * C API of the algm CUDA kernels (libalgm_kernels.so), used by the TensorRT plugins and, through
 * ctypes, by tests and benchmarks. All pointers are device pointers (host pointers in the
 * emulator build). Nothing is allocated: scratch memory comes from the caller's workspace,
 * sized by the ...WorkspaceSize functions for the largest batch that will be run.
 *
 * Semantics: docs/static-ops.md (AlgmClap, AlgmGbm), reference algm_export/merging/static.py.
 * Tensors are dense, row-major:
 *   AlgmClap: x [B, P+N, D] -> y [B, P+C1, D], size [B, P+C1] f32, assign [B, N] i32, stats [B, 2] i32
 *   AlgmGbm:  x [B, T, D], size [B, T] f32, assign [B, N] i32 (T = P + C1)
 *             -> y [B, P+C2, D], size [B, P+C2] f32, assign [B, N] i32, stats [B, 2] i32
 * x and y share the dtype (float32 or float16); all arithmetic is float32.
 * P (numPrefix) is any number of prefix tokens from 0 to algmMaxPrefix() (class, distillation,
 * register tokens): they never merge and never receive a merge (API version 3; before, P <= 2).
 *
 * Dynamic token mode (algmClapDynamicForward, algmGbmDynamicForward; docs/static-ops.md): the
 * same ops with every slot as capacity (C1 = N, C2 = T - P: never a forced merge) and the token
 * axis cut to the slots the batch needs: P + K, K = max over the batch of the real patch-token
 * count, is written to `slotsOut` (one int32 on the device: the token dimension of y). y and size
 * are written densely as [B, P+K, D] / [B, P+K]; their buffers must hold the upper bound (P+N
 * resp. T rows per image).
 * CLAP takes its threshold per image from `thresholds` [B] (float32, on the device).
 */
#ifndef ALGM_KERNELS_H
#define ALGM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define ALGM_KERNELS_API __declspec(dllexport)
#else
#define ALGM_KERNELS_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Token dtype of x and y. */
typedef enum
{
    ALGM_DTYPE_FLOAT32 = 0,
    ALGM_DTYPE_FLOAT16 = 1
} AlgmDtype;

/* Return codes. */
typedef enum
{
    ALGM_STATUS_SUCCESS = 0,
    ALGM_STATUS_INVALID_ARGUMENT = 1, /* a shape or attribute outside the supported range */
    ALGM_STATUS_WORKSPACE_TOO_SMALL = 2,
    ALGM_STATUS_CUDA_ERROR = 3 /* a kernel launch failed (cudaGetLastError) */
} AlgmStatus;

/* Version of this API (bumped on any change of signatures or semantics): 2 added the dynamic token
 * mode, 3 any number of prefix tokens (algmMaxPrefix). */
ALGM_KERNELS_API int32_t algmKernelsVersion(void);

/* Largest numPrefix the kernels accept. */
ALGM_KERNELS_API int32_t algmMaxPrefix(void);

/* Human-readable text of a status code. */
ALGM_KERNELS_API const char* algmStatusString(int32_t status);

/* Bytes of workspace AlgmClap needs for `batch` images (0 if the arguments are invalid). */
ALGM_KERNELS_API size_t algmClapWorkspaceSize(int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH,
    int32_t windowW, int32_t numPrefix, int32_t capacity);

/* Checks the AlgmClap attributes; returns ALGM_STATUS_SUCCESS or ALGM_STATUS_INVALID_ARGUMENT. */
ALGM_KERNELS_API int32_t algmClapCheckAttributes(
    int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity);

ALGM_KERNELS_API int32_t algmClapForward(const void* x, void* y, float* sizeOut, int32_t* assignOut,
    int32_t* statsOut, int32_t batch, int32_t dim, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW,
    int32_t numPrefix, int32_t capacity, float threshold, int32_t dtype, void* workspace, size_t workspaceSize,
    void* stream);

/* Dynamic token mode (API version 2). */
ALGM_KERNELS_API size_t algmClapDynamicWorkspaceSize(
    int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix);

ALGM_KERNELS_API int32_t algmClapDynamicForward(const void* x, const float* thresholds, void* y, float* sizeOut,
    int32_t* assignOut, int32_t* statsOut, int32_t* slotsOut, int32_t batch, int32_t dim, int32_t gridH,
    int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t dtype, void* workspace,
    size_t workspaceSize, void* stream);

/* Bytes of workspace AlgmGbm needs for `batch` images with numTokens = T = P + C1 input tokens. */
ALGM_KERNELS_API size_t algmGbmWorkspaceSize(
    int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity);

/* Checks the AlgmGbm attributes against the input sizes (T = numTokens, N = numPatches). */
ALGM_KERNELS_API int32_t algmGbmCheckAttributes(
    int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity);

ALGM_KERNELS_API int32_t algmGbmForward(const void* x, const float* sizeIn, const int32_t* assignIn, void* y,
    float* sizeOut, int32_t* assignOut, int32_t* statsOut, int32_t batch, int32_t numTokens, int32_t numPatches,
    int32_t dim, int32_t numPrefix, int32_t capacity, float divisor, int32_t dtype, void* workspace,
    size_t workspaceSize, void* stream);

/* Dynamic token mode (API version 2): numTokens = T = P + K1 input tokens. */
ALGM_KERNELS_API size_t algmGbmDynamicWorkspaceSize(
    int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix);

ALGM_KERNELS_API int32_t algmGbmDynamicForward(const void* x, const float* sizeIn, const int32_t* assignIn, void* y,
    float* sizeOut, int32_t* assignOut, int32_t* statsOut, int32_t* slotsOut, int32_t batch, int32_t numTokens,
    int32_t numPatches, int32_t dim, int32_t numPrefix, float divisor, int32_t dtype, void* workspace,
    size_t workspaceSize, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ALGM_KERNELS_H */
