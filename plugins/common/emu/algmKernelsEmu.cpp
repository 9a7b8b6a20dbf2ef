/*
 * Host-emulation build of libalgm_kernels (libalgm_kernels_emu.so): the CUDA kernel sources
 * compiled by the host C++ compiler with ALGM_EMULATE, exporting the same C API
 * (plugins/common/algmKernels.h) on host pointers, plus algmEmuSetOrder. Tests only.
 * Build flags must keep float arithmetic unfused (-ffp-contract=off), as the CUDA build does
 * with -fmad=false, so that both builds compute the same bits.
 */
#ifndef ALGM_EMULATE
#define ALGM_EMULATE 1
#endif

#include "../../algmClap/algmClapKernel.cu"
#include "../../algmGbm/algmGbmKernel.cu"
#include "../algmKernelsApi.cpp"

extern "C" ALGM_KERNELS_API void algmEmuSetOrder(int32_t order)
{
    ::algm_emu::setOrder(order);
}

//! Forces the tile of the GBM similarity kernel (16, 32 or 64; 0 = automatic).
extern "C" ALGM_KERNELS_API void algmEmuSetGbmTile(int32_t tile)
{
    ::algm::gbm_detail::gSimTileOverride = tile;
}
