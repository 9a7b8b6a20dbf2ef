/*
 * Host emulator for the algm kernels (tests only; never part of the plugin library).
 *
 * A launch runs the blocks of the grid one after another. Inside a block every CUDA thread is
 * a cooperative fiber (ucontext); ALGM_SYNC() switches back to the scheduler, which resumes the
 * next fiber once every fiber of the block has reached the barrier. Fibers run in a
 * configurable order inside each barrier phase (forward, reverse or interleaved), so that a
 * missing barrier shows up as a different result when the order changes. Shared memory is an
 * arena per block, allocated in declaration order, and filled with garbage before each block.
 */
#ifndef ALGM_EMU_H
#define ALGM_EMU_H

#include <cstddef>
#include <cstdint>
#include <functional>

namespace algm_emu
{

struct Dim3
{
    unsigned x, y, z;
    Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
        : x(x_)
        , y(y_)
        , z(z_)
    {
    }
};

Dim3 const& threadIdxRef();
Dim3 const& blockIdxRef();
Dim3 const& blockDimRef();
Dim3 const& gridDimRef();

void syncthreads();
void* sharedAlloc(size_t bytes);
void* dynamicShared();
int lastError();

template <typename T>
T* sharedArray(size_t count)
{
    return static_cast<T*>(sharedAlloc(count * sizeof(T)));
}

void launch(Dim3 grid, Dim3 block, size_t dynamicSmemBytes, std::function<void()> body);

//! 0: fibers run in thread order inside each phase, 1: reverse order, 2: odd threads first.
void setOrder(int order);

float halfBitsToFloat(uint16_t h);
uint16_t floatToHalfBits(float f);

} // namespace algm_emu

#endif // ALGM_EMU_H
