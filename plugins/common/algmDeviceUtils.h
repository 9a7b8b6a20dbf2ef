/*
 * Block-wide building blocks shared by the algm kernels. Every reduction has a fixed shape
 * (a binary tree over thread slots, each thread first reducing its own elements in ascending
 * order), so results never depend on scheduling: the kernels are deterministic.
 * All functions must be called by every thread of the block (they contain barriers).
 */
#ifndef ALGM_DEVICE_UTILS_H
#define ALGM_DEVICE_UTILS_H

#include "algmCudaCompat.h"

namespace algm
{

//! Sum of `v` (float or int) over the block (fixed tree). `red` holds BLOCK values of shared memory.
template <int BLOCK, typename V>
ALGM_DEVICE V blockSum(V v, V* red)
{
    int const tid = static_cast<int>(threadIdx.x);
    red[tid] = v;
    ALGM_SYNC();
    for (int s = BLOCK / 2; s > 0; s >>= 1)
    {
        if (tid < s)
        {
            red[tid] = red[tid] + red[tid + s];
        }
        ALGM_SYNC();
    }
    V const total = red[0];
    ALGM_SYNC();
    return total;
}

//! Maximum of `v` over the block (fixed tree). `red` holds BLOCK values of shared memory.
template <int BLOCK, typename V>
ALGM_DEVICE V blockMax(V v, V* red)
{
    int const tid = static_cast<int>(threadIdx.x);
    red[tid] = v;
    ALGM_SYNC();
    for (int s = BLOCK / 2; s > 0; s >>= 1)
    {
        if (tid < s)
        {
            red[tid] = red[tid] > red[tid + s] ? red[tid] : red[tid + s];
        }
        ALGM_SYNC();
    }
    V const best = red[0];
    ALGM_SYNC();
    return best;
}

//! Dynamic token mode: the token slots a batch needs, max_b counts[b] + add, written to *slots (the
//! plugin's size tensor, read back by the gather kernels). One block of BLOCK threads.
template <int BLOCK>
ALGM_KERNEL void slotCountKernel(int32_t const* __restrict__ counts, int batch, int add, int32_t* __restrict__ slots)
{
    ALGM_SHARED_ARRAY(int, red, BLOCK);
    int best = 0;
    for (int b = static_cast<int>(threadIdx.x); b < batch; b += BLOCK)
    {
        best = counts[b] > best ? counts[b] : best;
    }
    best = blockMax<BLOCK>(best, red);
    if (threadIdx.x == 0)
    {
        *slots = best + add;
    }
}

//! Exclusive prefix sum of `v` over the threads of the block (Hillis-Steele on 2*BLOCK ints).
//! Returns the sum of the values of threads 0..tid-1; `total` receives the block sum.
template <int BLOCK>
ALGM_DEVICE int blockExclusiveScan(int v, int* buf, int& total)
{
    int const tid = static_cast<int>(threadIdx.x);
    int* src = buf;
    int* dst = buf + BLOCK;
    src[tid] = v;
    ALGM_SYNC();
    for (int off = 1; off < BLOCK; off <<= 1)
    {
        dst[tid] = tid >= off ? src[tid] + src[tid - off] : src[tid];
        ALGM_SYNC();
        int* t = src;
        src = dst;
        dst = t;
    }
    int const inclusive = src[tid];
    total = src[BLOCK - 1];
    ALGM_SYNC();
    return inclusive - v;
}

//! Contiguous chunk [begin, end) of n elements owned by thread tid when a block scans n elements.
template <int BLOCK>
ALGM_DEVICE void chunkOf(int n, int& begin, int& end)
{
    int const chunk = (n + BLOCK - 1) / BLOCK;
    int const tid = static_cast<int>(threadIdx.x);
    begin = tid * chunk < n ? tid * chunk : n;
    end = begin + chunk < n ? begin + chunk : n;
}

//! One output slot, by the NT threads of the block: row `dst` = row `src` (through float32, exact)
//! or zeros when `src` is null, and `*sizeSlot` = `size` (written by thread 0).
template <int NT, typename T>
ALGM_DEVICE void writeSlot(T* dst, T const* src, int dim, float* sizeSlot, float size)
{
    for (int d = static_cast<int>(threadIdx.x); d < dim; d += NT)
    {
        dst[d] = src != nullptr ? fromFloat<T>(toFloat(src[d])) : fromFloat<T>(0.0f);
    }
    if (threadIdx.x == 0)
    {
        *sizeSlot = size;
    }
}

} // namespace algm

#endif // ALGM_DEVICE_UTILS_H
