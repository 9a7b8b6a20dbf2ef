/*
 * AlgmGbm: static-shape GBM, step by step as in docs/static-ops.md.
 *
 * Three kernels per call:
 *   1. gbmSimKernel       one block per (A tile, B tile, image): S = An @ Bn^T on a TILE x TILE
 *                         tile (TILE 16, 32 or 64 by problem size; normalised on load, every
 *                         S[a, b] one sequential fma chain over d = 0..D-1, so the tiling never
 *                         changes a value), masked, reduced to a per-row (max, first argmax).
 *   2. gbmDecisionKernel  one block per image: node_max / node_idx over the tiles, threshold
 *                         statistics, merge count r, sources by rank counting, output positions,
 *                         per-destination source lists, slot table, assignment map, stats.
 *   3. gbmGatherKernel    one block per (output slot, image): A copy, size-weighted B merge
 *                         (sources in ascending A order) or zero padding.
 * No floating-point atomics; integer counts only. Deterministic and batch independent.
 *
 * Prefix tokens (positions 0..P-1, any P <= kMaxPrefix) keep the alternating split: the prefix
 * positions in A (even, the first ceil(P/2) A rows) are masked as rows and left out of the
 * threshold statistics, those in B (odd, the first floor(P/2) B columns) are masked as columns,
 * so no prefix token merges or receives a merge. The output is the prefix in its original order,
 * the unmerged non-prefix A tokens (ascending), the non-prefix B tokens. P = 1 (class token) and
 * P = 2 (class + distillation token) are the published handling.
 *
 * Dynamic token mode (GbmParams::slotsOut set, capacity = every input slot T - P): the decision
 * kernel also records every image's real output count, `slotCountKernel` writes the token slots
 * of the batch P + K2 (the largest real count, prefix included) to slotsOut, and the gather kernel
 * writes y [B, P+K2, D] / size [B, P+K2] with that row stride.
 */
#include "algmGbmKernel.h"

#include "../common/algmCommon.h"
#include "../common/algmCudaCompat.h"
#include "../common/algmDeviceUtils.h"
#include "../common/algmKernels.h"

namespace algm
{
namespace gbm_detail
{

constexpr int kSimThreads = 256; // 16 x 16
constexpr int kSimKc = 32;       // channels per shared-memory k step
constexpr int kNormSplit = 4;    // threads per token norm (fixed: norms do not depend on the tile)

int gSimTileOverride = 0; // tests (emulator build) force a tile to check that it changes no value

//! Tile of the similarity kernel: the largest of 64/32/16 that still gives enough blocks per
//! image to fill a GPU. Depends on the token count only (not on the batch), so that the
//! workspace layout is fixed; the tile never changes a value, only the speed.

int simTile(int nA, int nB)
{
    if (gSimTileOverride == 16 || gSimTileOverride == 32 || gSimTileOverride == 64)
    {
        return gSimTileOverride;
    }
    auto blocks = [&](int t) { return static_cast<long long>(ceilDiv(nA, t)) * ceilDiv(nB, t); };
    if (blocks(64) >= 256)
    {
        return 64;
    }
    if (blocks(32) >= 192)
    {
        return 32;
    }
    return 16;
}

constexpr int kDecisionThreads = 512;
constexpr int kGatherThreads = 128;

//! Prefix rows of A (even positions < P) and prefix columns of B (odd positions < P).
ALGM_DEVICE int prefixRows(int numPrefix)
{
    return (numPrefix + 1) / 2;
}
ALGM_DEVICE int prefixCols(int numPrefix)
{
    return numPrefix / 2;
}

//! Dynamic shared memory of gbmDecisionKernel for T input tokens: per A row a float node_max and two
//! flags, per B column an int count. With the static part (ired, fred) it must stay within the
//! 48 KiB every CUDA device gives a block without opt-in, for the largest T = kMaxTokens + kMaxPrefix.
constexpr size_t decisionDynamicShared(int tokens)
{
    return static_cast<size_t>((tokens + 1) / 2) * (sizeof(float) + 2) + static_cast<size_t>(tokens / 2) * sizeof(int);
}
constexpr size_t kDecisionStaticShared = sizeof(int) * 2 * kDecisionThreads + sizeof(float) * kDecisionThreads;
static_assert(kDecisionStaticShared + decisionDynamicShared(kMaxTokens + kMaxPrefix) <= 48 * 1024,
    "kMaxTokens + kMaxPrefix input tokens exceed the decision kernel's shared memory");

template <typename T, int TILE>
ALGM_KERNEL void gbmSimKernel(T const* __restrict__ x, float const* __restrict__ sizeIn, float* __restrict__ pmax,
    int32_t* __restrict__ pidx, int tokens, int dim, int numPrefix, int nA, int nB, int tileStride)
{
    constexpr int TPT = TILE / 16;                    // outputs per thread along each axis
    constexpr int LD = TILE + 1;                      // padded row of the k-major tiles
    constexpr int LPT = TILE * kSimKc / kSimThreads;  // tile elements each thread loads per k step
    ALGM_SHARED_ARRAY(float, As, kSimKc * LD);
    ALGM_SHARED_ARRAY(float, Bs, kSimKc * LD);
    ALGM_SHARED_ARRAY(float, nrm, 2 * TILE);
    ALGM_SHARED_ARRAY(float, npart, 2 * TILE * kNormSplit);
    ALGM_SHARED_ARRAY(int, ired, kSimThreads);
    ALGM_SHARED_ARRAY(float, sS, TILE * LD);

    int const tid = static_cast<int>(threadIdx.x);
    int const tx = tid % 16;
    int const ty = tid / 16;
    int const a0 = static_cast<int>(blockIdx.x) * TILE;
    int const b0 = static_cast<int>(blockIdx.y) * TILE;
    int const b = static_cast<int>(blockIdx.z);
    T const* xImg = x + static_cast<long long>(b) * tokens * dim;

    // real tokens: n_real = #{t : size_t > 0}
    int cnt = 0;
    for (int t = tid; t < tokens; t += kSimThreads)
    {
        cnt += sizeIn[static_cast<long long>(b) * tokens + t] > 0.0f ? 1 : 0;
    }
    int const nReal = blockSum<kSimThreads>(cnt, ired);
    // a tile whose rows or columns are all padding is entirely masked: skip the products
    bool const live = (2 * a0 < nReal) && (2 * b0 + 1 < nReal);

    float acc[TPT][TPT];
    ALGM_UNROLL
    for (int i = 0; i < TPT; ++i)
    {
        ALGM_UNROLL
        for (int j = 0; j < TPT; ++j)
        {
            acc[i][j] = 0.0f;
        }
    }

    if (live)
    {
        // norms of the TILE A rows and TILE B columns, clamped to 1e-12; kNormSplit threads per
        // token in a fixed pattern, so that a norm never depends on the tile size
        for (int u = tid; u < 2 * TILE * kNormSplit; u += kSimThreads)
        {
            int const tok = u / kNormSplit;
            int const part = u % kNormSplit;
            int const idx = tok < TILE ? a0 + tok : b0 + tok - TILE;
            bool const ok = tok < TILE ? idx < nA : idx < nB;
            int const pos = tok < TILE ? 2 * idx : 2 * idx + 1;
            float s = 0.0f;
            if (ok)
            {
                T const* row = xImg + static_cast<long long>(pos) * dim;
                for (int d = part; d < dim; d += kNormSplit)
                {
                    float const v = toFloat(row[d]);
                    s = fmaf(v, v, s);
                }
            }
            npart[u] = s;
        }
        ALGM_SYNC();
        for (int tok = tid; tok < 2 * TILE; tok += kSimThreads)
        {
            float const* q = npart + tok * kNormSplit;
            float const n = sqrtf((q[0] + q[1]) + (q[2] + q[3]));
            nrm[tok] = n < 1e-12f ? 1e-12f : n;
        }
        ALGM_SYNC();

        // S tile: k steps of kSimKc channels; the next step's raw values are fetched into
        // registers while the current step is multiplied
        float ra[LPT];
        float rb[LPT];
        auto fetch = [&](int d0) {
            ALGM_UNROLL
            for (int e = 0; e < LPT; ++e)
            {
                int const l = tid + e * kSimThreads;
                int const r = l / kSimKc;
                int const d = d0 + l % kSimKc;
                int const a = a0 + r;
                int const bb = b0 + r;
                ra[e] = (d < dim && a < nA) ? toFloat(xImg[static_cast<long long>(2 * a) * dim + d]) : 0.0f;
                rb[e] = (d < dim && bb < nB) ? toFloat(xImg[static_cast<long long>(2 * bb + 1) * dim + d]) : 0.0f;
            }
        };
        fetch(0);
        for (int d0 = 0; d0 < dim; d0 += kSimKc)
        {
            ALGM_UNROLL
            for (int e = 0; e < LPT; ++e)
            {
                int const l = tid + e * kSimThreads;
                int const r = l / kSimKc;
                int const kk = l % kSimKc;
                As[kk * LD + r] = ra[e] / nrm[r]; // xn = x / max(||x||, 1e-12)
                Bs[kk * LD + r] = rb[e] / nrm[TILE + r];
            }
            ALGM_SYNC();
            if (d0 + kSimKc < dim)
            {
                fetch(d0 + kSimKc);
            }
            ALGM_UNROLL
            for (int kk = 0; kk < kSimKc; ++kk)
            {
                float va[TPT];
                float vb[TPT];
                ALGM_UNROLL
                for (int i = 0; i < TPT; ++i)
                {
                    va[i] = As[kk * LD + ty + 16 * i];
                    vb[i] = Bs[kk * LD + tx + 16 * i];
                }
                ALGM_UNROLL
                for (int i = 0; i < TPT; ++i)
                {
                    ALGM_UNROLL
                    for (int j = 0; j < TPT; ++j)
                    {
                        acc[i][j] = fmaf(va[i], vb[j], acc[i][j]);
                    }
                }
            }
            ALGM_SYNC();
        }
    }

    // mask: prefix rows of A, prefix columns of B, padding rows and columns
    int const firstRow = prefixRows(numPrefix);
    int const firstCol = prefixCols(numPrefix);
    ALGM_UNROLL
    for (int i = 0; i < TPT; ++i)
    {
        ALGM_UNROLL
        for (int j = 0; j < TPT; ++j)
        {
            int const a = a0 + ty + 16 * i;
            int const bb = b0 + tx + 16 * j;
            bool const rowOk = live && a >= firstRow && 2 * a < nReal;
            bool const colOk = live && 2 * bb + 1 < nReal && bb >= firstCol;
            sS[(ty + 16 * i) * LD + tx + 16 * j] = (rowOk && colOk) ? acc[i][j] : -INFINITY;
        }
    }
    ALGM_SYNC();
    // per row of the tile: max over its columns, first column on ties
    int const nCols = nB - b0 < TILE ? nB - b0 : TILE;
    for (int r = tid; r < TILE; r += kSimThreads)
    {
        int const a = a0 + r;
        if (a < nA)
        {
            float best = sS[r * LD];
            int bi = b0;
            for (int j = 1; j < nCols; ++j)
            {
                float const v = sS[r * LD + j];
                if (v > best)
                {
                    best = v;
                    bi = b0 + j;
                }
            }
            long long const o = (static_cast<long long>(b) * nA + a) * tileStride + blockIdx.y;
            pmax[o] = best;
            pidx[o] = bi;
        }
    }
}

//! Slot table entries: >= 0 copy input token; -1 padding; <= -2 merged B token (-2 - b).
ALGM_KERNEL void gbmDecisionKernel(float const* __restrict__ sizeIn, int32_t const* __restrict__ assignIn,
    float const* __restrict__ pmax, int32_t const* __restrict__ pidx, int32_t* __restrict__ nodeIdx,
    int32_t* __restrict__ posA, int32_t* __restrict__ posB, int32_t* __restrict__ srcStart,
    int32_t* __restrict__ srcList, int32_t* __restrict__ slotSrc, int32_t* __restrict__ assignOut,
    int32_t* __restrict__ statsOut, int tokens, int numPatches, int numPrefix, int capacity, int nA, int nB,
    int nTiles, int tileStride, float divisor, int32_t* __restrict__ realCount)
{
    ALGM_SHARED_ARRAY(int, ired, 2 * kDecisionThreads);
    ALGM_SHARED_ARRAY(float, fred, kDecisionThreads);
    ALGM_DYNAMIC_SHARED(unsigned char, dyn);
    float* sNm = reinterpret_cast<float*>(dyn);
    int* sCnt = reinterpret_cast<int*>(dyn + sizeof(float) * nA);
    unsigned char* sRowOk = dyn + sizeof(float) * nA + sizeof(int) * nB;
    unsigned char* sSrc = sRowOk + nA;

    int const tid = static_cast<int>(threadIdx.x);
    int const b = static_cast<int>(blockIdx.x);
    int const P = numPrefix;
    int const keep = P + capacity;
    long long const bA = static_cast<long long>(b) * nA;
    long long const bB = static_cast<long long>(b) * nB;
    int32_t* slots = slotSrc + static_cast<long long>(b) * keep;

    // 1. real tokens
    int cnt = 0;
    for (int t = tid; t < tokens; t += kDecisionThreads)
    {
        cnt += sizeIn[static_cast<long long>(b) * tokens + t] > 0.0f ? 1 : 0;
    }
    int const nReal = blockSum<kDecisionThreads>(cnt, ired);

    // 2. node_max / node_idx: tiles in ascending column order, first index wins ties. Candidates:
    //    the real A rows past the prefix (with no prefix token, P = 0, every real A row)
    int const firstRow = prefixRows(P);
    int const firstCol = prefixCols(P);
    int c = 0;
    float sum = 0.0f;
    for (int a = tid; a < nA; a += kDecisionThreads)
    {
        float best = -INFINITY;
        int bi = 0;
        for (int t = 0; t < nTiles; ++t)
        {
            long long const o = (bA + a) * tileStride + t;
            float const v = pmax[o];
            if (t == 0 || v > best)
            {
                best = v;
                bi = pidx[o];
            }
        }
        bool const rowOk = a >= firstRow && 2 * a < nReal;
        sNm[a] = best;
        nodeIdx[bA + a] = bi;
        sRowOk[a] = rowOk ? 1 : 0;
        sSrc[a] = 0;
        if (rowOk)
        {
            sum = sum + best;
            ++c;
        }
    }
    for (int bb = tid; bb < nB; bb += kDecisionThreads)
    {
        sCnt[bb] = 0;
    }
    int const nCand = blockSum<kDecisionThreads>(c, ired);
    float const total = blockSum<kDecisionThreads>(sum, fred);

    // 3. threshold: mean + unbiased std / divisor over the candidates
    float const cf = static_cast<float>(nCand);
    float const mu = total / cf;
    float sq = 0.0f;
    for (int a = tid; a < nA; a += kDecisionThreads)
    {
        if (sRowOk[a])
        {
            float const dlt = sNm[a] - mu;
            sq = sq + dlt * dlt;
        }
    }
    float const var = blockSum<kDecisionThreads>(sq, fred) / (cf - 1.0f);
    float const tau = mu + sqrtf(var) / divisor;
    int above = 0;
    for (int a = tid; a < nA; a += kDecisionThreads)
    {
        above += (sRowOk[a] && sNm[a] >= tau) ? 1 : 0;
    }
    int const m = blockSum<kDecisionThreads>(above, ired);
    bool const noop = nReal - P < 2;
    int const need = nReal - P - capacity > 0 ? nReal - P - capacity : 0;
    int r = m > need ? m : need;
    r = r < nCand ? r : nCand;
    if (noop)
    {
        r = 0;
    }
    int const mEff = noop ? 0 : m;
    int const forced = r - mEff > 0 ? r - mEff : 0;
    if (tid == 0)
    {
        statsOut[2 * b] = r;
        statsOut[2 * b + 1] = forced;
    }

    // 4. sources: the r candidates ranked first (descending node_max, ties by lower index)
    if (r > 0)
    {
        for (int a = tid; a < nA; a += kDecisionThreads)
        {
            if (!sRowOk[a])
            {
                continue;
            }
            float const v = sNm[a];
            int rank = 0;
            for (int o = 0; o < nA && rank < r; ++o)
            {
                float const w = sNm[o];
                rank += (sRowOk[o] && (w > v || (w == v && o < a))) ? 1 : 0;
            }
            sSrc[a] = rank < r ? 1 : 0;
        }
    }
    ALGM_SYNC();

    // 5. positions: a prefix token keeps its own (A row a: 2a, B column bb: 2bb + 1); the unmerged
    //    non-prefix A tokens follow the prefix in ascending order (cum counts the prefix A rows
    //    too, so P + (cum - firstRow) - 1 = cum - 1 + firstCol), then the non-prefix B tokens
    //    (U = every unmerged real A token, prefix included: P + (U - firstRow) + (bb - firstCol))
    int begin, end;
    chunkOf<kDecisionThreads>(nA, begin, end);
    int unm = 0;
    for (int a = begin; a < end; ++a)
    {
        unm += (2 * a < nReal && !sSrc[a]) ? 1 : 0;
    }
    int U = 0;
    int cum = blockExclusiveScan<kDecisionThreads>(unm, ired, U);
    for (int a = begin; a < end; ++a)
    {
        bool const keepA = 2 * a < nReal && !sSrc[a];
        cum += keepA ? 1 : 0;
        int const pa = a < firstRow ? 2 * a : cum - 1 + firstCol;
        posA[bA + a] = pa;
        if (!noop && keepA && pa < keep)
        {
            slots[pa] = 2 * a;
        }
    }
    for (int bb = tid; bb < nB; bb += kDecisionThreads)
    {
        int const pb = bb < firstCol ? 2 * bb + 1 : U + bb;
        posB[bB + bb] = pb;
        if (!noop && 2 * bb + 1 < nReal && pb < keep)
        {
            slots[pb] = -2 - bb;
        }
    }
    // 6. per-destination source lists (sources of one destination in ascending A order)
    for (int a = tid; a < nA; a += kDecisionThreads)
    {
        if (sSrc[a])
        {
            atomicAddInt(&sCnt[nodeIdx[bA + a]], 1);
        }
    }
    ALGM_SYNC();
    chunkOf<kDecisionThreads>(nB, begin, end);
    int ns = 0;
    for (int bb = begin; bb < end; ++bb)
    {
        ns += sCnt[bb];
    }
    int nSources = 0;
    int run = blockExclusiveScan<kDecisionThreads>(ns, ired, nSources);
    int32_t* start = srcStart + static_cast<long long>(b) * (nB + 1);
    for (int bb = begin; bb < end; ++bb)
    {
        start[bb] = run;
        run += sCnt[bb];
    }
    if (tid == 0)
    {
        start[nB] = nSources;
    }
    ALGM_SYNC();
    for (int a = tid; a < nA; a += kDecisionThreads)
    {
        if (sSrc[a])
        {
            int const dst = nodeIdx[bA + a];
            int off = 0;
            for (int o = 0; o < a; ++o)
            {
                off += (sSrc[o] && nodeIdx[bA + o] == dst) ? 1 : 0;
            }
            srcList[bA + start[dst] + off] = a;
        }
    }

    // 7. padding slots (or the pass-through table of a no-op)
    int const nOut = noop ? nReal : U + nReal / 2; // real tokens out, prefix included
    if (noop)
    {
        for (int p = tid; p < keep; p += kDecisionThreads)
        {
            slots[p] = p < tokens ? p : -1;
        }
    }
    else
    {
        for (int p = nOut + tid; p < keep; p += kDecisionThreads)
        {
            slots[p] = -1;
        }
    }
    if (realCount != nullptr && tid == 0)
    {
        realCount[b] = nOut;
    }

    // 8. assignment map
    for (int i = tid; i < numPatches; i += kDecisionThreads)
    {
        long long const o = static_cast<long long>(b) * numPatches + i;
        int const in = assignIn[o];
        if (noop)
        {
            assignOut[o] = in;
            continue;
        }
        int const q = in + P;
        int pos;
        if ((q & 1) == 0)
        {
            int ai = q >> 1;
            ai = ai < nA - 1 ? ai : nA - 1;
            ai = ai > 0 ? ai : 0;
            pos = sSrc[ai] ? posB[bB + nodeIdx[bA + ai]] : posA[bA + ai];
        }
        else
        {
            int bi = (q - 1) >> 1;
            bi = bi < nB - 1 ? bi : nB - 1;
            bi = bi > 0 ? bi : 0;
            pos = posB[bB + bi];
        }
        assignOut[o] = pos - P;
    }
}

//! dynSlots (dynamic token mode): P + K2 on the device; y and size are then [B, P+K2, ...] and
//! blocks past P+K2 return (the slot table keeps its stride `keep`).
template <typename T>
ALGM_KERNEL void gbmGatherKernel(T const* __restrict__ x, float const* __restrict__ sizeIn,
    int32_t const* __restrict__ slotSrc, int32_t const* __restrict__ srcStart, int32_t const* __restrict__ srcList,
    T* __restrict__ y, float* __restrict__ sizeOut, int tokens, int dim, int keep, int nA, int nB,
    int32_t const* __restrict__ dynSlots)
{
    int const tid = static_cast<int>(threadIdx.x);
    int const p = static_cast<int>(blockIdx.x);
    int const b = static_cast<int>(blockIdx.y);
    int const outTokens = dynSlots != nullptr ? *dynSlots : keep;
    if (p >= outTokens)
    {
        return;
    }
    T const* xImg = x + static_cast<long long>(b) * tokens * dim;
    float const* sImg = sizeIn + static_cast<long long>(b) * tokens;
    T* yRow = y + (static_cast<long long>(b) * outTokens + p) * dim;
    float* sizeSlot = sizeOut + static_cast<long long>(b) * outTokens + p;
    int const src = slotSrc[static_cast<long long>(b) * keep + p];

    if (src >= 0)
    {
        writeSlot<kGatherThreads>(yRow, xImg + static_cast<long long>(src) * dim, dim, sizeSlot, sImg[src]);
    }
    else if (src == -1)
    {
        writeSlot<kGatherThreads, T>(yRow, nullptr, dim, sizeSlot, 0.0f);
    }
    else
    {
        // B token: (s_B * x_B + sum_src s_a * x_a) / (s_B + sum_src s_a), sources in ascending order
        int const bb = -2 - src;
        int const q = 2 * bb + 1;
        int32_t const* start = srcStart + static_cast<long long>(b) * (nB + 1);
        int32_t const* list = srcList + static_cast<long long>(b) * nA;
        int const s0 = start[bb];
        int const s1 = start[bb + 1];
        float const sB = sImg[q];
        float sAcc = 0.0f;
        for (int j = s0; j < s1; ++j)
        {
            sAcc = sAcc + sImg[2 * list[j]];
        }
        float const sz = sB + sAcc;
        T const* xB = xImg + static_cast<long long>(q) * dim;
        for (int d = tid; d < dim; d += kGatherThreads)
        {
            float acc = 0.0f;
            for (int j = s0; j < s1; ++j)
            {
                int const a = list[j];
                float const prod = toFloat(xImg[static_cast<long long>(2 * a) * dim + d]) * sImg[2 * a];
                acc = acc + prod;
            }
            float const num = toFloat(xB[d]) * sB + acc;
            yRow[d] = fromFloat<T>(sz > 0.0f ? num / sz : 0.0f);
        }
        if (tid == 0)
        {
            *sizeSlot = sz;
        }
    }
}

struct GbmLayout
{
    float* pmax;
    int32_t* pidx;
    int32_t* nodeIdx;
    int32_t* posA;
    int32_t* posB;
    int32_t* srcStart;
    int32_t* srcList;
    int32_t* slotSrc;
    int32_t* realCount; //!< dynamic token mode only: real tokens out of every image
    int tileStride;
};

GbmLayout carveGbm(WorkspaceCarver& c, int batch, int numTokens, int numPrefix, int capacity, bool dynamic)
{
    GbmLayout l;
    size_t const B = static_cast<size_t>(batch);
    int const nA = (numTokens + 1) / 2;
    int const nB = numTokens / 2;
    l.tileStride = nB > 0 ? ceilDiv(nB, simTile(nA, nB)) : 0;
    l.pmax = c.take<float>(B * nA * l.tileStride);
    l.pidx = c.take<int32_t>(B * nA * l.tileStride);
    l.nodeIdx = c.take<int32_t>(B * nA);
    l.posA = c.take<int32_t>(B * nA);
    l.posB = c.take<int32_t>(B * nB);
    l.srcStart = c.take<int32_t>(B * (nB + 1));
    l.srcList = c.take<int32_t>(B * nA);
    l.slotSrc = c.take<int32_t>(B * (numPrefix + capacity));
    l.realCount = dynamic ? c.take<int32_t>(B) : nullptr;
    return l;
}

template <typename T>
int32_t launchGbm(GbmParams const& p, void const* xv, float const* sizeIn, int32_t const* assignIn, void* yv,
    float* sizeOut, int32_t* assignOut, int32_t* statsOut, GbmLayout const& ws, cudaStream_t stream)
{
    T const* x = static_cast<T const*>(xv);
    T* y = static_cast<T*>(yv);
    int const tokens = p.numTokens;
    int const nA = (tokens + 1) / 2;
    int const nB = tokens / 2;
    int const keep = p.numPrefix + p.capacity;
    int const tile = nB > 0 ? simTile(nA, nB) : 0;
    int const nTiles = ws.tileStride;
    if (tile == 64)
    {
        auto sim = gbmSimKernel<T, 64>;
        ALGM_LAUNCH(sim, dim3(ceilDiv(nA, 64), nTiles, p.batch), dim3(kSimThreads), 0, stream, x, sizeIn, ws.pmax,
            ws.pidx, tokens, p.dim, p.numPrefix, nA, nB, ws.tileStride);
    }
    else if (tile == 32)
    {
        auto sim = gbmSimKernel<T, 32>;
        ALGM_LAUNCH(sim, dim3(ceilDiv(nA, 32), nTiles, p.batch), dim3(kSimThreads), 0, stream, x, sizeIn, ws.pmax,
            ws.pidx, tokens, p.dim, p.numPrefix, nA, nB, ws.tileStride);
    }
    else if (tile == 16)
    {
        auto sim = gbmSimKernel<T, 16>;
        ALGM_LAUNCH(sim, dim3(ceilDiv(nA, 16), nTiles, p.batch), dim3(kSimThreads), 0, stream, x, sizeIn, ws.pmax,
            ws.pidx, tokens, p.dim, p.numPrefix, nA, nB, ws.tileStride);
    }
    size_t const smem = decisionDynamicShared(tokens);
    ALGM_LAUNCH(gbmDecisionKernel, dim3(p.batch), dim3(kDecisionThreads), smem, stream, sizeIn, assignIn, ws.pmax,
        ws.pidx, ws.nodeIdx, ws.posA, ws.posB, ws.srcStart, ws.srcList, ws.slotSrc, assignOut, statsOut, tokens,
        p.numPatches, p.numPrefix, p.capacity, nA, nB, nTiles, ws.tileStride, p.divisor, ws.realCount);
    if (p.slotsOut != nullptr)
    {
        auto count = slotCountKernel<kDecisionThreads>;
        ALGM_LAUNCH(count, dim3(1), dim3(kDecisionThreads), 0, stream, ws.realCount, p.batch, 0, p.slotsOut);
    }
    auto gather = gbmGatherKernel<T>;
    ALGM_LAUNCH(gather, dim3(keep, p.batch), dim3(kGatherThreads), 0, stream, x, sizeIn, ws.slotSrc, ws.srcStart,
        ws.srcList, y, sizeOut, tokens, p.dim, keep, nA, nB, p.slotsOut);
    return cudaGetLastError() == cudaSuccess ? ALGM_STATUS_SUCCESS : ALGM_STATUS_CUDA_ERROR;
}

} // namespace gbm_detail

using namespace gbm_detail;

int32_t gbmCheckAttributes(int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity)
{
    if (numPrefix < 0 || numPrefix > kMaxPrefix || numPatches < 1 || numPatches > kMaxTokens)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    if (numTokens < numPrefix + 1 || numTokens > kMaxTokens + numPrefix)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    if (capacity < 1 || capacity > numTokens - numPrefix)
    {
        return ALGM_STATUS_INVALID_ARGUMENT;
    }
    return ALGM_STATUS_SUCCESS;
}

size_t gbmWorkspaceSize(int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix, int32_t capacity)
{
    if (batch < 0 || gbmCheckAttributes(numTokens, numPatches, numPrefix, capacity) != ALGM_STATUS_SUCCESS)
    {
        return 0;
    }
    WorkspaceCarver c;
    carveGbm(c, batch, numTokens, numPrefix, capacity, false);
    return c.size();
}

//! Dynamic token mode: numTokens is the upper bound of a data-dependent T, so the workspace covers
//! every T' <= numTokens (the similarity tile, hence the layout, depends on T': the size is not
//! monotonic in it).
size_t gbmDynamicWorkspaceSize(int32_t batch, int32_t numTokens, int32_t numPatches, int32_t numPrefix)
{
    if (batch < 0 || gbmCheckAttributes(numTokens, numPatches, numPrefix, numTokens - numPrefix) != ALGM_STATUS_SUCCESS)
    {
        return 0;
    }
    size_t best = 0;
    for (int32_t t = numPrefix + 1; t <= numTokens; ++t)
    {
        WorkspaceCarver c;
        carveGbm(c, batch, t, numPrefix, t - numPrefix, true);
        best = c.size() > best ? c.size() : best;
    }
    return best;
}

int32_t gbmForward(GbmParams const& p, int32_t dtype, void const* x, float const* sizeIn, int32_t const* assignIn,
    void* y, float* sizeOut, int32_t* assignOut, int32_t* statsOut, void* workspace, size_t workspaceSize,
    void* stream)
{
    bool const dynamic = p.slotsOut != nullptr;
    if (gbmCheckAttributes(p.numTokens, p.numPatches, p.numPrefix, p.capacity) != ALGM_STATUS_SUCCESS || p.batch < 0
        || p.dim < 1 || (dtype != ALGM_DTYPE_FLOAT32 && dtype != ALGM_DTYPE_FLOAT16)
        || (dynamic && p.capacity != p.numTokens - p.numPrefix))
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
    WorkspaceCarver sizer;
    carveGbm(sizer, p.batch, p.numTokens, p.numPrefix, p.capacity, dynamic);
    if (workspace == nullptr || workspaceSize < sizer.size())
    {
        return ALGM_STATUS_WORKSPACE_TOO_SMALL;
    }
    WorkspaceCarver carver(workspace);
    GbmLayout const ws = carveGbm(carver, p.batch, p.numTokens, p.numPrefix, p.capacity, dynamic);
    cudaStream_t const s = reinterpret_cast<cudaStream_t>(stream);
    if (dtype == ALGM_DTYPE_FLOAT16)
    {
        return launchGbm<half_t>(p, x, sizeIn, assignIn, y, sizeOut, assignOut, statsOut, ws, s);
    }
    return launchGbm<float>(p, x, sizeIn, assignIn, y, sizeOut, assignOut, statsOut, ws, s);
}

} // namespace algm
