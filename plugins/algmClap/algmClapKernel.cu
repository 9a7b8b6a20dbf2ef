/*
 * AlgmClap: static-shape CLAP, step by step as in docs/static-ops.md.
 *
 * Three kernels per call:
 *   1. clapScoreKernel     one block per (window, image): the published window score
 *                          (cosine matrix of normalised tokens, diagonal excluded, summed
 *                          row by row, divided by k*(k-1)), summed in the order PyTorch sums
 *                          it on a CPU for 2x2 windows, so the scores are bit-identical to the
 *                          reference there (docs/static-ops.md, step 2).
 *   2. clapDecisionKernel  one block per image: merge count r, window ranks by counting,
 *                          output position of every patch (assign), slot table, stats.
 *   3. clapGatherKernel    one block per (output slot, image): prefix copy, window mean,
 *                          patch copy or zero padding.
 * Every sum has a fixed order, so results are deterministic and independent of the batch.
 *
 * Prefix tokens (any number P <= kMaxPrefix: class, distillation, register tokens) never merge:
 * the windows cover the N patch tokens after them, and the gather copies them in front unchanged.
 *
 * Dynamic token mode (ClapParams::slotsOut set, capacity N, docs/static-ops.md "Dynamic token
 * mode"): the decision kernel also records every image's real count, `slotCountKernel` writes
 * the token slots of the batch P + K (K = max real patch-token count) to slotsOut, and the gather
 * kernel writes y [B, P+K, D] / size [B, P+K] with that row stride (blocks past P+K return at
 * once). The threshold may come per image from device memory (ClapParams::thresholds).
 */
#include "algmClapKernel.h"

#include "../common/algmCommon.h"
#include "../common/algmCudaCompat.h"
#include "../common/algmDeviceUtils.h"
#include "../common/algmKernels.h"

namespace algm
{
namespace clap_detail
{

constexpr int kScoreThreads = 128;
constexpr int kScoreChains = 4;  // interleaved partial sums of a dot product (torch's row_sum)
constexpr int kScoreBlock = 16;  // rows summed one after the other before a cascade level (multi_row_sum)
constexpr int kScoreLevels = 4;  // cascade levels of multi_row_sum
constexpr int kPairsPerRound = kScoreThreads / kScoreChains;
constexpr int kDecisionThreads = 512;
constexpr int kGatherThreads = 128;
constexpr int kMaxPairs = kMaxWindowArea * (kMaxWindowArea - 1) / 2;

//! Patch index (raster order over the grid) of token t of window w.
ALGM_DEVICE int windowPatch(int w, int t, int gridW, int windowH, int windowW, int winGridW)
{
    int const row = (w / winGridW) * windowH + t / windowW;
    int const col = (w % winGridW) * windowW + t % windowW;
    return row * gridW + col;
}

//! Window of patch i.
ALGM_DEVICE int patchWindow(int i, int gridW, int windowH, int windowW, int winGridW)
{
    int const row = i / gridW;
    int const col = i % gridW;
    return (row / windowH) * winGridW + col / windowW;
}

//! One partial sum of torch's CPU reduction `multi_row_sum` (ATen SumKernel.cpp), for one column:
//! the `rows` values value(0), value(1), ... added one after the other in blocks of 16, each block
//! into a cascade of 4 levels that carries upwards every 16^level rows, the levels added last.
template <typename F>
ALGM_DEVICE float cascadeSum(int rows, F value)
{
    float acc[kScoreLevels] = {0.0f, 0.0f, 0.0f, 0.0f};
    int i = 0;
    while (i + kScoreBlock <= rows)
    {
        for (int j = 0; j < kScoreBlock; ++j, ++i)
        {
            acc[0] = acc[0] + value(i);
        }
        for (int l = 1; l < kScoreLevels; ++l)
        {
            acc[l] = acc[l] + acc[l - 1];
            acc[l - 1] = 0.0f;
            if ((i & ((kScoreBlock - 1) << (4 * l))) != 0)
            {
                break;
            }
        }
    }
    for (; i < rows; ++i)
    {
        acc[0] = acc[0] + value(i);
    }
    for (int l = 1; l < kScoreLevels; ++l)
    {
        acc[0] = acc[0] + acc[l];
    }
    return acc[0];
}

template <typename T>
ALGM_KERNEL void clapScoreKernel(T const* __restrict__ x, float* __restrict__ scores, int tokens, int dim,
    int numPrefix, int gridW, int windowH, int windowW, int winGridW, int numWindows)
{
    ALGM_SHARED_ARRAY(float, part, kScoreThreads);
    ALGM_SHARED_ARRAY(float, nrm, kMaxWindowArea);
    ALGM_SHARED_ARRAY(float, cosv, kMaxWindowArea * kMaxWindowArea);
    ALGM_SHARED_ARRAY(long long, tokOff, kMaxWindowArea);
    ALGM_SHARED_ARRAY(unsigned char, pairI, kMaxPairs);
    ALGM_SHARED_ARRAY(unsigned char, pairJ, kMaxPairs);

    int const tid = static_cast<int>(threadIdx.x);
    int const w = static_cast<int>(blockIdx.x);
    int const b = static_cast<int>(blockIdx.y);
    int const k = windowH * windowW;
    int const nPairs = k * (k - 1) / 2;

    for (int t = tid; t < k; t += kScoreThreads)
    {
        int const patch = windowPatch(w, t, gridW, windowH, windowW, winGridW);
        tokOff[t] = (static_cast<long long>(b) * tokens + numPrefix + patch) * dim;
    }
    if (tid == 0)
    {
        int p = 0;
        for (int i = 0; i < k; ++i)
        {
            for (int j = i + 1; j < k; ++j)
            {
                pairI[p] = static_cast<unsigned char>(i);
                pairJ[p] = static_cast<unsigned char>(j);
                ++p;
            }
        }
    }
    ALGM_SYNC();

    // 1. norms, clamped to 1e-8 (torch.nn.functional.cosine_similarity): ||x||^2 summed over d one
    //    element after the other, as torch.linalg.vector_norm does here
    for (int t = tid; t < k; t += kScoreThreads)
    {
        T const* xt = x + tokOff[t];
        float acc = 0.0f;
        for (int d = 0; d < dim; ++d)
        {
            float const v = toFloat(xt[d]);
            acc = acc + v * v;
        }
        float const n = sqrtf(acc);
        nrm[t] = n < 1e-8f ? 1e-8f : n;
    }
    ALGM_SYNC();

    // 2. cosine of every pair i < j: sum_d (x_i/n_i) * (x_j/n_j) as torch's row_sum: 4 interleaved
    //    partial sums (rows d = 4m + c), each a cascadeSum; the last dim % 4 rows go to partial 0;
    //    then partial 0 + 1 + 2 + 3. One thread per (pair, partial), kPairsPerRound pairs a round.
    int const rowsPerChain = dim / kScoreChains;
    for (int g0 = 0; g0 < nPairs; g0 += kPairsPerRound)
    {
        int const pair = g0 + tid / kScoreChains;
        int const c = tid % kScoreChains;
        if (pair < nPairs)
        {
            int const i = pairI[pair];
            int const j = pairJ[pair];
            T const* xi = x + tokOff[i];
            T const* xj = x + tokOff[j];
            float const ni = nrm[i];
            float const nj = nrm[j];
            part[tid] = cascadeSum(rowsPerChain, [&](int m) {
                int const d = m * kScoreChains + c;
                return (toFloat(xi[d]) / ni) * (toFloat(xj[d]) / nj);
            });
        }
        ALGM_SYNC();
        if (tid < kPairsPerRound && g0 + tid < nPairs)
        {
            int const q = g0 + tid;
            int const i = pairI[q];
            int const j = pairJ[q];
            T const* xi = x + tokOff[i];
            T const* xj = x + tokOff[j];
            float sum = part[tid * kScoreChains];
            for (int d = rowsPerChain * kScoreChains; d < dim; ++d)
            {
                sum = sum + (toFloat(xi[d]) / nrm[i]) * (toFloat(xj[d]) / nrm[j]);
            }
            for (int cc = 1; cc < kScoreChains; ++cc)
            {
                sum = sum + part[tid * kScoreChains + cc];
            }
            cosv[i * k + j] = sum;
            cosv[j * k + i] = sum;
        }
        ALGM_SYNC();
    }

    // 3. score: off-diagonal entries summed row by row, then over rows, divided by k*(k-1)
    if (tid == 0)
    {
        float total = 0.0f;
        for (int i = 0; i < k; ++i)
        {
            float row = 0.0f;
            for (int j = 0; j < k; ++j)
            {
                if (j != i)
                {
                    row = row + cosv[i * k + j];
                }
            }
            total = total + row;
        }
        scores[static_cast<long long>(b) * numWindows + w] = total / static_cast<float>(k * (k - 1));
    }
}

//! Slot table entries: >= 0 copy patch i; -1 padding; <= -2 merged window (-2 - w).
ALGM_KERNEL void clapDecisionKernel(float const* __restrict__ scores, int32_t* __restrict__ assignOut,
    int32_t* __restrict__ statsOut, int32_t* __restrict__ slotSrc, int numPatches, int gridW, int windowH,
    int windowW, int winGridW, int numWindows, int capacity, int need, float threshold,
    float const* __restrict__ thresholds, int32_t* __restrict__ realCount)
{
    ALGM_SHARED_ARRAY(int, ired, 2 * kDecisionThreads);
    ALGM_DYNAMIC_SHARED(unsigned char, dyn);
    float* sScore = reinterpret_cast<float*>(dyn);
    int* sRank = reinterpret_cast<int*>(dyn + sizeof(float) * numWindows);

    int const tid = static_cast<int>(threadIdx.x);
    int const b = static_cast<int>(blockIdx.x);
    int const W = numWindows;
    float const tau = thresholds != nullptr ? thresholds[b] : threshold;

    int above = 0;
    for (int w = tid; w < W; w += kDecisionThreads)
    {
        float const s = scores[static_cast<long long>(b) * W + w];
        sScore[w] = s;
        above += s >= tau ? 1 : 0;
    }
    int const m = blockSum<kDecisionThreads>(above, ired);
    int r = m > need ? m : need;
    r = r < W ? r : W;
    int const forced = r - m > 0 ? r - m : 0;

    // rank by counting: descending score, ties by lower window index
    for (int w = tid; w < W; w += kDecisionThreads)
    {
        float const s = sScore[w];
        int rank = 0;
        for (int v = 0; v < W; ++v)
        {
            float const o = sScore[v];
            rank += (o > s || (o == s && v < w)) ? 1 : 0;
        }
        sRank[w] = rank;
    }
    if (tid == 0)
    {
        statsOut[2 * b] = r;
        statsOut[2 * b + 1] = forced;
    }
    ALGM_SYNC();

    // positions: merged window -> its rank; unmerged patch -> r + #unmerged patches before it
    int begin, end;
    chunkOf<kDecisionThreads>(numPatches, begin, end);
    int cnt = 0;
    for (int i = begin; i < end; ++i)
    {
        cnt += sRank[patchWindow(i, gridW, windowH, windowW, winGridW)] >= r ? 1 : 0;
    }
    int totalUnmerged = 0;
    int pos = r + blockExclusiveScan<kDecisionThreads>(cnt, ired, totalUnmerged);
    int32_t* slots = slotSrc + static_cast<long long>(b) * capacity;
    for (int i = begin; i < end; ++i)
    {
        int const rank = sRank[patchWindow(i, gridW, windowH, windowW, winGridW)];
        if (rank < r)
        {
            assignOut[static_cast<long long>(b) * numPatches + i] = rank;
        }
        else
        {
            assignOut[static_cast<long long>(b) * numPatches + i] = pos;
            if (pos < capacity)
            {
                slots[pos] = i;
            }
            ++pos;
        }
    }
    for (int w = tid; w < W; w += kDecisionThreads)
    {
        int const rank = sRank[w];
        if (rank < r && rank < capacity)
        {
            slots[rank] = -2 - w;
        }
    }
    int const nOut = r + totalUnmerged;
    for (int s = nOut + tid; s < capacity; s += kDecisionThreads)
    {
        slots[s] = -1;
    }
    if (realCount != nullptr && tid == 0)
    {
        realCount[b] = nOut;
    }
}

//! dynSlots (dynamic token mode): the token slots of the batch P + K on the device; y and size are
//! then [B, P+K, ...] and blocks past P+K return (the slot table keeps its stride `capacity`).
template <typename T>
ALGM_KERNEL void clapGatherKernel(T const* __restrict__ x, T* __restrict__ y, float* __restrict__ sizeOut,
    int32_t const* __restrict__ slotSrc, int tokens, int dim, int numPrefix, int capacity, int gridW, int windowH,
    int windowW, int winGridW, int32_t const* __restrict__ dynSlots)
{
    ALGM_SHARED_ARRAY(long long, tokOff, kMaxWindowArea);
    int const tid = static_cast<int>(threadIdx.x);
    int const p = static_cast<int>(blockIdx.x);
    int const b = static_cast<int>(blockIdx.y);
    int const outTokens = dynSlots != nullptr ? *dynSlots : numPrefix + capacity;
    if (p >= outTokens)
    {
        return; // the whole block: no barrier is reached
    }
    T* yRow = y + (static_cast<long long>(b) * outTokens + p) * dim;
    float* sizeSlot = sizeOut + static_cast<long long>(b) * outTokens + p;
    T const* xImg = x + static_cast<long long>(b) * tokens * dim;

    int const src = p < numPrefix ? p : slotSrc[static_cast<long long>(b) * capacity + (p - numPrefix)];
    if (p < numPrefix || src >= 0)
    {
        // prefix token or unmerged patch: copied (through float32, which is exact)
        int const t = p < numPrefix ? p : numPrefix + src;
        writeSlot<kGatherThreads>(yRow, xImg + static_cast<long long>(t) * dim, dim, sizeSlot, 1.0f);
    }
    else if (src == -1)
    {
        writeSlot<kGatherThreads, T>(yRow, nullptr, dim, sizeSlot, 0.0f);
    }
    else
    {
        // merged window: sum of its k tokens in row-major order, divided by k
        int const w = -2 - src;
        int const k = windowH * windowW;
        for (int t = tid; t < k; t += kGatherThreads)
        {
            tokOff[t] = static_cast<long long>(numPrefix + windowPatch(w, t, gridW, windowH, windowW, winGridW)) * dim;
        }
        ALGM_SYNC();
        float const kf = static_cast<float>(k);
        for (int d = tid; d < dim; d += kGatherThreads)
        {
            float acc = 0.0f;
            for (int t = 0; t < k; ++t)
            {
                acc = acc + toFloat(xImg[tokOff[t] + d]);
            }
            yRow[d] = fromFloat<T>(acc / kf);
        }
        if (tid == 0)
        {
            *sizeSlot = kf;
        }
    }
}

struct ClapLayout
{
    float* scores;
    int32_t* slotSrc;
    int32_t* realCount; //!< dynamic token mode only: real patch tokens of every image
};

ClapLayout carveClap(WorkspaceCarver& c, int batch, int numWindows, int capacity, bool dynamic)
{
    ClapLayout l;
    l.scores = c.take<float>(static_cast<size_t>(batch) * numWindows);
    l.slotSrc = c.take<int32_t>(static_cast<size_t>(batch) * capacity);
    l.realCount = dynamic ? c.take<int32_t>(static_cast<size_t>(batch)) : nullptr;
    return l;
}

template <typename T>
int32_t launchClap(ClapParams const& p, void const* xv, void* yv, float* sizeOut, int32_t* assignOut,
    int32_t* statsOut, ClapLayout const& ws, cudaStream_t stream)
{
    T const* x = static_cast<T const*>(xv);
    T* y = static_cast<T*>(yv);
    int const N = p.gridH * p.gridW;
    int const k = p.windowH * p.windowW;
    int const W = N / k;
    int const winGridW = p.gridW / p.windowW;
    int const tokens = p.numPrefix + N;
    int const need = N > p.capacity ? ceilDiv(N - p.capacity, k - 1) : 0;

    auto score = clapScoreKernel<T>;
    ALGM_LAUNCH(score, dim3(W, p.batch), dim3(kScoreThreads), 0, stream, x, ws.scores, tokens, p.dim, p.numPrefix,
        p.gridW, p.windowH, p.windowW, winGridW, W);
    size_t const smem = static_cast<size_t>(W) * (sizeof(float) + sizeof(int));
    ALGM_LAUNCH(clapDecisionKernel, dim3(p.batch), dim3(kDecisionThreads), smem, stream, ws.scores, assignOut,
        statsOut, ws.slotSrc, N, p.gridW, p.windowH, p.windowW, winGridW, W, p.capacity, need, p.threshold,
        p.thresholds, ws.realCount);
    if (p.slotsOut != nullptr)
    {
        auto count = slotCountKernel<kDecisionThreads>;
        ALGM_LAUNCH(count, dim3(1), dim3(kDecisionThreads), 0, stream, ws.realCount, p.batch, p.numPrefix, p.slotsOut);
    }
    auto gather = clapGatherKernel<T>;
    ALGM_LAUNCH(gather, dim3(p.numPrefix + p.capacity, p.batch), dim3(kGatherThreads), 0, stream, x, y, sizeOut,
        ws.slotSrc, tokens, p.dim, p.numPrefix, p.capacity, p.gridW, p.windowH, p.windowW, winGridW, p.slotsOut);
    return cudaGetLastError() == cudaSuccess ? ALGM_STATUS_SUCCESS : ALGM_STATUS_CUDA_ERROR;
}

} // namespace clap_detail

using namespace clap_detail;

int32_t clapCheckAttributes(
    int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity)
{
    if (gridH < 1 || gridW < 1 || windowH < 1 || windowW < 1 || numPrefix < 0 || numPrefix > kMaxPrefix)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    if (gridH % windowH != 0 || gridW % windowW != 0)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    int64_t const n = static_cast<int64_t>(gridH) * gridW;
    int64_t const k = static_cast<int64_t>(windowH) * windowW;
    if (n > kMaxTokens || k < 2 || k > kMaxWindowArea)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    if (capacity < n / k || capacity > n)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    return ALGM_STATUS_SUCCESS;
}

size_t clapWorkspaceSize(
    int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix, int32_t capacity)
{
    if (batch < 0 || clapCheckAttributes(gridH, gridW, windowH, windowW, numPrefix, capacity) != ALGM_STATUS_SUCCESS)
    {
        return 0;
    }
    WorkspaceCarver c;
    carveClap(c, batch, gridH * gridW / (windowH * windowW), capacity, false);
    return c.size();
}

size_t clapDynamicWorkspaceSize(
    int32_t batch, int32_t gridH, int32_t gridW, int32_t windowH, int32_t windowW, int32_t numPrefix)
{
    int32_t const n = gridH * gridW;
    if (batch < 0 || clapCheckAttributes(gridH, gridW, windowH, windowW, numPrefix, n) != ALGM_STATUS_SUCCESS)
    {
        return 0;
    }
    WorkspaceCarver c;
    carveClap(c, batch, n / (windowH * windowW), n, true);
    return c.size();
}

int32_t clapForward(ClapParams const& p, int32_t dtype, void const* x, void* y, float* sizeOut, int32_t* assignOut,
    int32_t* statsOut, void* workspace, size_t workspaceSize, void* stream)
{
    bool const dynamic = p.slotsOut != nullptr;
    if (clapCheckAttributes(p.gridH, p.gridW, p.windowH, p.windowW, p.numPrefix, p.capacity) != ALGM_STATUS_SUCCESS
        || p.batch < 0 || p.dim < 1 || (dtype != ALGM_DTYPE_FLOAT32 && dtype != ALGM_DTYPE_FLOAT16)
        || (dynamic && p.capacity != p.gridH * p.gridW))
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    if (p.batch == 0)
    {
        return ALGM_STATUS_SUCCESS;
    }
    if (p.batch > 65535)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    int const W = p.gridH * p.gridW / (p.windowH * p.windowW);
    WorkspaceCarver sizer;
    carveClap(sizer, p.batch, W, p.capacity, dynamic);
    if (workspace == nullptr || workspaceSize < sizer.size())
    {
        return ALGM_STATUS_WORKSPACE_TOO_SMALL;
    }
    WorkspaceCarver carver(workspace);
    ClapLayout const ws = carveClap(carver, p.batch, W, p.capacity, dynamic);
    cudaStream_t const s = reinterpret_cast<cudaStream_t>(stream);
    if (dtype == ALGM_DTYPE_FLOAT16)
    {
        return launchClap<half_t>(p, x, y, sizeOut, assignOut, statsOut, ws, s);
    }
    return launchClap<float>(p, x, y, sizeOut, assignOut, statsOut, ws, s);
}

} // namespace algm
