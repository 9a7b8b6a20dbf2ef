// C API of libalgm_kernels.so (see algmKernels.h): thin wrappers around the kernel launchers.
#include "algmKernels.h"

#include "../algmClap/algmClapKernel.h"
#include "../algmGbm/algmGbmKernel.h"
#include "algmCommon.h"

extern "C" {

int32_t algmKernelsVersion(void)
{
    return 3; // 2: the dynamic token mode functions; 3: any number of prefix tokens (algmMaxPrefix)
}

int32_t algmMaxPrefix(void)
{
    return algm::kMaxPrefix;
}

const char* algmStatusString(int32_t status)
{
    switch (status)
    {
    case ALGM_STATUS_SUCCESS: return "success";
    case ALGM_STATUS_INVALID_ARGUMENT: return "invalid argument (shape, attribute or dtype outside the supported range)";
    case ALGM_STATUS_WORKSPACE_TOO_SMALL: return "workspace missing or smaller than the ...WorkspaceSize() result";
    case ALGM_STATUS_CUDA_ERROR: return "CUDA error while launching a kernel";
    default: return "unknown status";
    }
}

size_t algmClapWorkspaceSize(int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW,
    int32_t numPrefix, int32_t capacity)
{
    return algm::clapWorkspaceSize(batch, gridH, gridW, windowH, windowW, numPrefix, capacity);
}

int32_t algmClapCheckAttributes(
    int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity)
{
    return algm::clapCheckAttributes(gridH, gridW, windowH, windowW, numPrefix, capacity);
}

int32_t algmClapForward(const void* x, void* y, float* sizeOut, int32_t* assignOut, int32_t* statsOut, int32_t batch,
    int32_t dim, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity,
    float threshold, int32_t dtype, void* workspace, size_t workspaceSize, void* stream)
{
    algm::ClapParams p{batch, dim, gridH, gridW, windowH, windowW, numPrefix, capacity, threshold};
    return algm::clapForward(p, dtype, x, y, sizeOut, assignOut, statsOut, workspace, workspaceSize, stream);
}

size_t algmClapDynamicWorkspaceSize(
    int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix)
{
    return algm::clapDynamicWorkspaceSize(batch, gridH, gridW, windowH, windowW, numPrefix);
}

int32_t algmClapDynamicForward(const void* x, const float* thresholds, void* y, float* sizeOut, int32_t* assignOut,
    int32_t* statsOut, int32_t* slotsOut, int32_t batch, int32_t dim, int32_t gridH, int32_t gridW, int32_t windowH,
    int32_t windowW, int32_t numPrefix, int32_t dtype, void* workspace, size_t workspaceSize, void* stream)
{
    if (thresholds == nullptr || slotsOut == nullptr)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    algm::ClapParams p{batch, dim, gridH, gridW, windowH, windowW, numPrefix, gridH * gridW, 0.0f};
    p.thresholds = thresholds;
    p.slotsOut = slotsOut;
    return algm::clapForward(p, dtype, x, y, sizeOut, assignOut, statsOut, workspace, workspaceSize, stream);
}

size_t algmGbmWorkspaceSize(
    int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity)
{
    return algm::gbmWorkspaceSize(batch, numTokens, numPatches, numPrefix, capacity);
}

int32_t algmGbmCheckAttributes(int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity)
{
    return algm::gbmCheckAttributes(numTokens, numPatches, numPrefix, capacity);
}

int32_t algmGbmForward(const void* x, const float* sizeIn, const int32_t* assignIn, void* y, float* sizeOut,
    int32_t* assignOut, int32_t* statsOut, int32_t batch, int32_t numTokens, int32_t numPatches, int32_t dim,
    int32_t numPrefix, int32_t capacity, float divisor, int32_t dtype, void* workspace, size_t workspaceSize,
    void* stream)
{
    algm::GbmParams p{batch, numTokens, numPatches, dim, numPrefix, capacity, divisor};
    return algm::gbmForward(
        p, dtype, x, sizeIn, assignIn, y, sizeOut, assignOut, statsOut, workspace, workspaceSize, stream);
}

size_t algmGbmDynamicWorkspaceSize(int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix)
{
    return algm::gbmDynamicWorkspaceSize(batch, numTokens, numPatches, numPrefix);
}

int32_t algmGbmDynamicForward(const void* x, const float* sizeIn, const int32_t* assignIn, void* y, float* sizeOut,
    int32_t* assignOut, int32_t* statsOut, int32_t* slotsOut, int32_t batch, int32_t numTokens, int32_t numPatches,
    int32_t dim, int32_t numPrefix, float divisor, int32_t dtype, void* workspace, size_t workspaceSize, void* stream)
{
    if (slotsOut == nullptr)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    algm::GbmParams p{batch, numTokens, numPatches, dim, numPrefix, numTokens - numPrefix, divisor};
    p.slotsOut = slotsOut;
    return algm::gbmForward(
        p, dtype, x, sizeIn, assignIn, y, sizeOut, assignOut, statsOut, workspace, workspaceSize, stream);
}

} // extern "C"
