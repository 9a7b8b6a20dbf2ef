/*
 * AlgmClap kernels: static-shape conditional local average pooling (docs/static-ops.md).
 * Launched by algmClapForward (plugins/common/algmKernels.h) and by the AlgmClap TensorRT plugin.
 */
#ifndef ALGM_CLAP_KERNEL_H
#define ALGM_CLAP_KERNEL_H

#include <cstddef>
#include <cstdint>

namespace algm
{

struct ClapParams
{
    int32_t batch;
    int32_t dim;
    int32_t gridH;
    int32_t gridW;
    int32_t windowH;
    int32_t windowW;
    int32_t numPrefix;
    int32_t capacity;
    float threshold;
    //! Per-image thresholds [batch] on the device (replace `threshold` when set).
    float const* thresholds = nullptr;
    //! Dynamic token mode (capacity must be N): receives P + K, the token slots of the batch (K the
    //! largest real patch-token count; an int32 on the device); y / size are then [B, P+K, ...].
    int32_t* slotsOut = nullptr;
};

//! ALGM_STATUS_SUCCESS when the attributes are supported (see plugins/algmClap/README.md).
int32_t clapCheckAttributes(
    int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity);

//! Workspace bytes for `batch` images; 0 when the attributes are invalid.
size_t clapWorkspaceSize(
    int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity);

//! Workspace bytes of the dynamic token mode (capacity N, per-image counts).
size_t clapDynamicWorkspaceSize(
    int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix);

//! Enqueues the three CLAP kernels on `stream` (a cudaStream_t). dtype: AlgmDtype.
int32_t clapForward(ClapParams const& p, int32_t dtype, void const* x, void* y, float* sizeOut, int32_t* assignOut,
    int32_t* statsOut, void* workspace, size_t workspaceSize, void* stream);

} // namespace algm

#endif // ALGM_CLAP_KERNEL_H
