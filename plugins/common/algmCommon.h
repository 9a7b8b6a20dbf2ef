/*
 * Host-side helpers shared by the algm kernel launchers: workspace carving with alignment,
 * integer helpers and limits.
 */
#ifndef ALGM_COMMON_H
#define ALGM_COMMON_H

#include <cstddef>
#include <cstdint>

namespace algm
{

//! Alignment of every buffer carved out of a workspace (and of the workspace itself).
constexpr size_t kWorkspaceAlignment = 256;

//! Largest number of patch tokens N (and of GBM input tokens) the kernels accept: the per-image
//! decision kernels keep their per-token state in shared memory.
constexpr int kMaxTokens = 8192;

//! Largest window area k = window_h * window_w supported by CLAP.
constexpr int kMaxWindowArea = 64;

//! Largest number of prefix tokens P (class, distillation and register tokens, which never merge).
//! The rule is the same for every P (plugins/algmGbm/README.md); the bound only keeps GBM's
//! per-image decision state for T = kMaxTokens + P input tokens inside 48 KiB of shared memory
//! (checked in algmGbmKernel.cu). Also returned by algmMaxPrefix() (common/algmKernels.h).
constexpr int kMaxPrefix = 64;

constexpr size_t alignUp(size_t v, size_t a = kWorkspaceAlignment)
{
    return (v + a - 1) / a * a;
}

constexpr int ceilDiv(int a, int b)
{
    return (a + b - 1) / b;
}

//! Hands out aligned sub-buffers of a workspace in a fixed order. Used twice with the same
//! sequence of requests: once with base == nullptr to size the workspace, once to carve it.
class WorkspaceCarver
{
public:
    explicit WorkspaceCarver(void* base = nullptr)
        : mBase(static_cast<unsigned char*>(base))
    {
    }

    template <typename T>
    T* take(size_t count)
    {
        size_t const off = mOffset;
        mOffset = alignUp(mOffset + count * sizeof(T));
        return mBase ? reinterpret_cast<T*>(mBase + off) : nullptr;
    }

    size_t size() const
    {
        return mOffset;
    }

private:
    unsigned char* mBase;
    size_t mOffset{0};
};

} // namespace algm

#endif // ALGM_COMMON_H
