// The scheduler behind emulator.h: runs a kernel of cuda/fused_ops.cu over
// its grid on the CPU, each block's threads as fibers (ucontext) on the
// calling OS thread. Barriers and shuffles switch fibers; what a launch
// cannot do as CUDA would (a shuffle in a partial or diverged warp, an
// unknown kernel, a block or grid out of CUDA's range) ends the launch with
// an error message instead of hanging or crashing.

#include "emulator.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

thread_local uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
namespace {

struct Registered {
    Invoker invoker;
    std::string signature;
};

std::map<std::string, Registered>& registry() {
    static std::map<std::string, Registered> kernels;
    return kernels;
}

enum class State { Ready, AtBarrier, AtShuffle, Done };

struct Fiber {
    ucontext_t context;
    uint3 index;
    State state;
    // The pending shuffle, and its result once the warp has arrived.
    unsigned mask;
    uint64_t bits;
    int arg, width;
    Shuffle kind;
    uint64_t result;
};

// Stack of one fiber: the kernels keep at most four rows of 128 floats per
// thread (attention's backward), 2 KiB.
constexpr std::size_t kStackBytes = 64 * 1024;

struct Launch {
    Invoker invoker;
    void** params;
    std::vector<Fiber> fibers;
    std::vector<char> stacks;
    ucontext_t scheduler;
    std::size_t current = 0;
    std::string error;
};

thread_local Launch* active = nullptr;

Fiber& me() { return active->fibers[active->current]; }

void yield() { swapcontext(&me().context, &active->scheduler); }

void fiber_main() {
    active->invoker(active->params);
    me().state = State::Done;
    // uc_link returns to the scheduler.
}

// Releases every warp whose lanes all wait at a shuffle; false where a
// warp cannot complete one (lanes elsewhere, a partial warp, a lane mask),
// since no thread is left to run that could complete it.
bool release_shuffles(Launch& l) {
    const std::size_t n = l.fibers.size();
    for (std::size_t w = 0; w * 32 < n; ++w) {
        const std::size_t first = w * 32, last = std::min(n, first + 32);
        bool any = false, all = true;
        for (std::size_t i = first; i < last; ++i) {
            any |= l.fibers[i].state == State::AtShuffle;
            all &= l.fibers[i].state == State::AtShuffle;
        }
        if (!any) continue;
        if (!all) {
            l.error = "a warp shuffle that not every lane of warp " + std::to_string(w) +
                      " reached (lanes diverged, exited or wait at __syncthreads)";
            return false;
        }
        if (last - first != 32) {
            l.error = "a warp shuffle in a partial warp (block size not a multiple of 32)";
            return false;
        }
        for (std::size_t i = first; i < last; ++i) {
            Fiber& f = l.fibers[i];
            if (f.mask != 0xffffffffu || f.width != 32) {
                l.error = "a shuffle with a partial lane mask or a width other than 32";
                return false;
            }
            const int lane = static_cast<int>(i - first);
            int src = lane;
            switch (f.kind) {
                case Shuffle::Xor: src = lane ^ f.arg; break;
                case Shuffle::Down: src = lane + f.arg < 32 ? lane + f.arg : lane; break;
                case Shuffle::Up: src = lane - f.arg >= 0 ? lane - f.arg : lane; break;
                case Shuffle::Index: src = f.arg & 31; break;
            }
            if (src < 0 || src > 31) src = lane;
            f.result = l.fibers[first + src].bits;
        }
        for (std::size_t i = first; i < last; ++i) l.fibers[i].state = State::Ready;
    }
    return true;
}

// Runs one block to its end; false with l.error set where it cannot.
bool run_block(Launch& l, bool descending) {
    const std::size_t n = l.fibers.size();
    for (std::size_t i = 0; i < n; ++i) {
        Fiber& f = l.fibers[i];
        f.index = {static_cast<unsigned>(i % blockDim.x),
                   static_cast<unsigned>(i / blockDim.x % blockDim.y),
                   static_cast<unsigned>(i / (blockDim.x * blockDim.y))};
        f.state = State::Ready;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = l.stacks.data() + i * kStackBytes;
        f.context.uc_stack.ss_size = kStackBytes;
        f.context.uc_link = &l.scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    for (;;) {
        for (std::size_t k = 0; k < n; ++k) {
            const std::size_t i = descending ? n - 1 - k : k;
            if (l.fibers[i].state != State::Ready) continue;
            l.current = i;
            threadIdx = l.fibers[i].index;
            swapcontext(&l.scheduler, &l.fibers[i].context);
        }
        bool shuffling = false, waiting = false;
        for (const Fiber& f : l.fibers) {
            shuffling |= f.state == State::AtShuffle;
            waiting |= f.state == State::AtBarrier;
        }
        if (shuffling) {
            if (!release_shuffles(l)) return false;
        } else if (waiting) {
            // Exited threads count as arrived, as on sm_70 and later.
            for (Fiber& f : l.fibers)
                if (f.state == State::AtBarrier) f.state = State::Ready;
        } else {
            return true;  // every thread has finished
        }
    }
}

}  // namespace

Registration::Registration(const char* name, Invoker invoker, std::string signature) {
    registry()[name] = Registered{invoker, std::move(signature)};
}

void syncthreads() {
    me().state = State::AtBarrier;
    yield();
}

uint64_t shuffle(unsigned mask, uint64_t bits, int arg, int width, Shuffle kind) {
    Fiber& f = me();
    f.mask = mask;
    f.bits = bits;
    f.arg = arg;
    f.width = width;
    f.kind = kind;
    f.state = State::AtShuffle;
    yield();
    return me().result;
}

}  // namespace emu

// Runs kernel `name` over `grid` x `block` with `params` (the addresses of
// its arguments, in order). 0 on success; else 1 with a message in `error`.
extern "C" int fused_ops_emulate_launch(const char* name, const unsigned* grid,
                                        const unsigned* block, void** params,
                                        const char* signature, char* error,
                                        std::size_t error_len) {
    using namespace emu;
    auto fail = [&](const std::string& why) {
        std::snprintf(error, error_len, "%s", why.c_str());
        return 1;
    };
    const auto found = registry().find(name);
    if (found == registry().end()) return fail(std::string("no kernel named ") + name);
    if (found->second.signature != signature)
        return fail(std::string(name) + " takes (" + found->second.signature +
                    "), launched with (" + signature +
                    ") (F float*, B bfloat16*, i int, l int64, f float)");
    const std::size_t threads = static_cast<std::size_t>(block[0]) * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64)
        return fail("block of " + std::to_string(threads) + " threads (1 to 1024, z at most 64)");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535)
        return fail("grid dimensions out of CUDA's range");
    if (active != nullptr) return fail("a launch from inside a kernel");
    // One launch at a time in the process: the kernels' shared memory is
    // static, one copy for whichever block runs.
    static std::mutex one_at_a_time;
    const std::lock_guard<std::mutex> hold(one_at_a_time);
    Launch launch;
    launch.invoker = found->second.invoker;
    launch.params = params;
    launch.fibers.resize(threads);
    launch.stacks.resize(threads * kStackBytes);
    blockDim = {block[0], block[1], block[2]};
    gridDim = {grid[0], grid[1], grid[2]};
    active = &launch;
    std::size_t count = 0;
    bool ok = true;
    for (unsigned z = 0; ok && z < grid[2]; ++z)
        for (unsigned y = 0; ok && y < grid[1]; ++y)
            for (unsigned x = 0; ok && x < grid[0]; ++x) {
                blockIdx = {x, y, z};
                ok = run_block(launch, count++ % 2 == 1);
            }
    active = nullptr;
    if (!ok)
        return fail(std::string(name) + " block (" + std::to_string(blockIdx.x) + ", " +
                    std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) +
                    "): " + launch.error);
    return 0;
}
