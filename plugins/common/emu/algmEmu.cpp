// Host emulator for the algm kernels: see algmEmu.h.
#include "algmEmu.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if defined(__x86_64__) && !defined(ALGM_EMU_UCONTEXT)
#define ALGM_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#if defined(ALGM_EMU_ASM_SWITCH)
// Minimal cooperative context switch (System V x86-64): saves the callee-saved registers on
// the current stack, stores the stack pointer to *from and continues on the stack `to`.
// (ucontext's swapcontext does the same plus a signal-mask system call on every switch.)
extern "C" void algmEmuSwitch(void** from, void* to);
asm(".text\n"
    ".globl algmEmuSwitch\n"
    ".hidden algmEmuSwitch\n"
    ".type algmEmuSwitch,@function\n"
    "algmEmuSwitch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size algmEmuSwitch,.-algmEmuSwitch\n");
#endif

namespace algm_emu
{
namespace
{

constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kSharedArenaBytes = 64 * 1024;
constexpr unsigned kMaxThreads = 1024;

struct Fiber
{
#if defined(ALGM_EMU_ASM_SWITCH)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    char* stack = nullptr;
    Dim3 tid;
    size_t sharedOffset = 0;
    bool done = false;
    bool atBarrier = false;
};

struct State
{
    std::mutex mutex;
    std::vector<Fiber> fibers;
#if defined(ALGM_EMU_ASM_SWITCH)
    void* schedulerSp = nullptr;
#else
    ucontext_t scheduler;
#endif
    Fiber* current = nullptr;
    Dim3 blockIdx, blockDim, gridDim;
    std::vector<unsigned char> shared;
    std::vector<unsigned char> dynShared;
    std::function<void()>* body = nullptr;
    int order = 0;
    int error = 0;
};

State& state()
{
    static State s;
    return s;
}

void fail(char const* msg)
{
    std::fprintf(stderr, "algm emulator: %s\n", msg);
    std::abort();
}

void fiberEntry()
{
    State& s = state();
    (*s.body)();
    s.current->done = true;
#if defined(ALGM_EMU_ASM_SWITCH)
    algmEmuSwitch(&s.current->sp, s.schedulerSp); // never resumed
    fail("finished fiber resumed");
#endif
    // ucontext: returning resumes uc_link (the scheduler)
}

void initFiber(State& s, Fiber& f)
{
#if defined(ALGM_EMU_ASM_SWITCH)
    // initial stack: six zeroed callee-saved registers, then fiberEntry as the return address
    auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                // fake return address of fiberEntry
    *--sp = reinterpret_cast<void*>(&fiberEntry);   // popped by ret
    for (int i = 0; i < 6; ++i)
    {
        *--sp = nullptr;                            // rbp rbx r12 r13 r14 r15
    }
    f.sp = sp;
    (void) s;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &s.scheduler;
    makecontext(&f.ctx, fiberEntry, 0);
#endif
}

void resumeFiber(State& s, Fiber& f)
{
#if defined(ALGM_EMU_ASM_SWITCH)
    algmEmuSwitch(&s.schedulerSp, f.sp);
#else
    swapcontext(&s.scheduler, &f.ctx);
#endif
}

// Runs one block: every thread a fiber, barrier phases until all fibers have returned.
void runBlock(State& s, Dim3 block, unsigned nThreads)
{
    // uninitialised shared memory: fill with a NaN-looking garbage pattern
    std::memset(s.shared.data(), 0xFF, s.shared.size());
    std::memset(s.dynShared.data(), 0xFF, s.dynShared.size());
    for (unsigned t = 0; t < nThreads; ++t)
    {
        Fiber& f = s.fibers[t];
        f.tid = Dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
        f.sharedOffset = 0;
        f.done = false;
        f.atBarrier = false;
        initFiber(s, f);
    }
    std::vector<unsigned> order(nThreads);
    for (int phase = 0;; ++phase)
    {
        for (unsigned t = 0; t < nThreads; ++t)
        {
            order[t] = s.order == 1 ? nThreads - 1 - t : t;
        }
        if (s.order == 2)
        {
            unsigned j = 0;
            for (unsigned t = (phase & 1) ? 0u : 1u; t < nThreads; t += 2)
                order[j++] = t;
            for (unsigned t = (phase & 1) ? 1u : 0u; t < nThreads; t += 2)
                order[j++] = t;
        }
        for (unsigned i = 0; i < nThreads; ++i)
        {
            Fiber& f = s.fibers[order[i]];
            if (f.done)
                continue;
            f.atBarrier = false;
            s.current = &f;
            resumeFiber(s, f);
        }
        unsigned nDone = 0, nBarrier = 0;
        for (unsigned t = 0; t < nThreads; ++t)
        {
            nDone += s.fibers[t].done ? 1u : 0u;
            nBarrier += s.fibers[t].atBarrier ? 1u : 0u;
        }
        if (nDone == nThreads)
            break;
        if (nBarrier != nThreads)
            fail("__syncthreads() not reached by every thread of the block");
    }
    s.current = nullptr;
}

} // namespace

Dim3 const& threadIdxRef()
{
    return state().current->tid;
}
Dim3 const& blockIdxRef()
{
    return state().blockIdx;
}
Dim3 const& blockDimRef()
{
    return state().blockDim;
}
Dim3 const& gridDimRef()
{
    return state().gridDim;
}

int lastError()
{
    State& s = state();
    int e = s.error;
    s.error = 0;
    return e;
}

void setOrder(int order)
{
    state().order = order;
}

void syncthreads()
{
    State& s = state();
    Fiber* f = s.current;
    f->atBarrier = true;
#if defined(ALGM_EMU_ASM_SWITCH)
    algmEmuSwitch(&f->sp, s.schedulerSp);
#else
    swapcontext(&f->ctx, &s.scheduler);
#endif
}

void* sharedAlloc(size_t bytes)
{
    State& s = state();
    Fiber* f = s.current;
    size_t const off = (f->sharedOffset + 15) & ~size_t(15);
    if (off + bytes > s.shared.size())
    {
        fail("static shared memory arena exhausted");
    }
    f->sharedOffset = off + bytes;
    return s.shared.data() + off;
}

void* dynamicShared()
{
    return state().dynShared.data();
}

void launch(Dim3 grid, Dim3 block, size_t dynamicSmemBytes, std::function<void()> body)
{
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    unsigned const nThreads = block.x * block.y * block.z;
    if (nThreads == 0 || nThreads > kMaxThreads || dynamicSmemBytes > 48 * 1024)
    {
        s.error = 1;
        return;
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0)
    {
        s.error = 1;
        return;
    }
    if (s.fibers.size() < kMaxThreads)
    {
        s.fibers.resize(kMaxThreads);
        for (auto& f : s.fibers)
        {
            f.stack = static_cast<char*>(std::malloc(kStackBytes));
        }
    }
    s.shared.assign(kSharedArenaBytes, 0);
    s.dynShared.assign(dynamicSmemBytes + 16, 0);
    s.body = &body;
    s.blockDim = block;
    s.gridDim = grid;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                s.blockIdx = Dim3(bx, by, bz);
                runBlock(s, block, nThreads);
            }
    s.body = nullptr;
}

float halfBitsToFloat(uint16_t h)
{
    uint32_t const sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t mant = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F)
    {
        bits = sign | 0x7F800000u | (mant << 13);
    }
    else if (exp == 0)
    {
        if (mant == 0)
        {
            bits = sign;
        }
        else
        {
            // subnormal: normalise
            int e = -1;
            do
            {
                ++e;
                mant <<= 1;
            } while ((mant & 0x400u) == 0);
            mant &= 0x3FFu;
            bits = sign | (uint32_t(127 - 15 - e) << 23) | (mant << 13);
        }
    }
    else
    {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
}

uint16_t floatToHalfBits(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, sizeof(x));
    uint16_t const sign = uint16_t((x >> 16) & 0x8000u);
    uint32_t const absx = x & 0x7FFFFFFFu;
    if (absx >= 0x7F800000u)
    {
        // inf or nan
        return uint16_t(sign | 0x7C00u | (absx > 0x7F800000u ? 0x200u : 0u));
    }
    if (absx >= 0x477FF000u)
    {
        // >= 65520 rounds to inf
        return uint16_t(sign | 0x7C00u);
    }
    if (absx < 0x38800000u)
    {
        // result is subnormal or zero: value = absx as float, scale to units of 2^-24
        if (absx < 0x33000000u)
        {
            return sign; // < 2^-25 rounds to zero (2^-25 exactly ties to even -> 0)
        }
        uint32_t const e = absx >> 23;
        uint32_t const m = (absx & 0x7FFFFFu) | 0x800000u;
        uint32_t const shift = 126u - e; // 113 - e + 13
        uint32_t const q = m >> shift;
        uint32_t const rem = m & ((1u << shift) - 1u);
        uint32_t const halfway = 1u << (shift - 1u);
        uint32_t r = q;
        if (rem > halfway || (rem == halfway && (q & 1u)))
        {
            ++r;
        }
        return uint16_t(sign | r);
    }
    uint32_t const e = (absx >> 23) - 127u + 15u;
    uint32_t const m = absx & 0x7FFFFFu;
    uint32_t r = (e << 10) | (m >> 13);
    uint32_t const rem = m & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u)))
    {
        ++r; // may carry into the exponent (and up to inf), which is correct
    }
    return uint16_t(sign | r);
}

} // namespace algm_emu
