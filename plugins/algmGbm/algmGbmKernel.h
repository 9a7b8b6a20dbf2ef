/*
 * AlgmGbm kernels: static-shape global bipartite matching (docs/static-ops.md).
 * Launched by algmGbmForward (plugins/common/algmKernels.h) and by the AlgmGbm TensorRT plugin.
 */
#ifndef ALGM_GBM_KERNEL_H
#define ALGM_GBM_KERNEL_H

#include <cstddef>
#include <cstdint>

namespace algm
{

struct GbmParams
{
    int32_t batch;
    int32_t numTokens;  //!< T = P + C1 input tokens
    int32_t numPatches; //!< N, length of the assignment map
    int32_t dim;
    int32_t numPrefix;
    int32_t capacity; //!< C2
    float divisor;    //!< L
    //! Dynamic token mode (capacity must be numTokens - numPrefix): receives P + K2, the token slots
    //! of the batch (an int32 on the device); y / size are then written as [B, P+K2, ...].
    int32_t* slotsOut = nullptr;
};

int32_t gbmCheckAttributes(int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity);

size_t gbmWorkspaceSize(int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity);

size_t gbmDynamicWorkspaceSize(int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix);

int32_t gbmForward(GbmParams const& p, int32_t dtype, void const* x, float const* sizeIn, int32_t const* assignIn,
    void* y, float* sizeOut, int32_t* assignOut, int32_t* statsOut, void* workspace, size_t workspaceSize,
    void* stream);

} // namespace algm

#endif // ALGM_GBM_KERNEL_H
