// Host emulation of the CUDA subset our kernels use, so that g++ compiles the very .cu files nvcc compiles
// (g++ -include host_emulation.h) and the tests run them against the numpy oracle on any CPU.
//
// - Every thread of a block is a real std::thread; __syncthreads() is a real barrier over the block's
//   threads, warp primitives are real exchanges among the 32 threads of a warp.
// - __shared__ is `static`: blocks run one after another (threads of one block run concurrently), so a
//   function-static array is exactly one block's shared memory. Launches are serialised process-wide for
//   the same reason. Dynamic (extern __shared__) shared memory is not emulated.
// - A thread that returns leaves the block's and its warp's barriers, as on Volta and later GPUs.
// - With a schedule seed, threads start in a shuffled order, blocks run in a shuffled order, and at about
//   half of the barriers (block start and every __syncthreads) a random subset of warps or of lanes is held
//   back until every other thread is stuck at a point that needs a held-back one (a barrier, a warp primitive
//   of a warp with a held-back lane, the end of the kernel). The others thus run as far ahead as the barriers
//   allow, so a missing barrier shows up as a wrong result instead of passing by luck of the OS scheduler.
//   Random yields at every barrier and warp primitive vary the rest.
// - __half is the compiler's _Float16 (IEEE binary16, conversions round to nearest even, as __float2half).
// - Floating-point contraction must be off (-ffp-contract=off) for __fmul_rn / __fadd_rn to mean what they
//   say; host.py compiles with it.
#pragma once

#define GLAD_HOST_EMULATION 1

#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

typedef _Float16 __half;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half(float f) { return static_cast<__half>(f); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, sizeof i);
    return i;
}
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

namespace glad_emu {

constexpr unsigned kWarp = 32;

struct Grid;

// What an emulated thread knows about itself; reached through a thread_local.
struct ThreadState {
    Grid* grid = nullptr;
    unsigned tid = 0;  // linear thread index in the block
    unsigned warp = 0;
    unsigned lane = 0;
    unsigned parity = 0;   // which half of the warp's double-buffered exchange slots the next primitive uses
    bool pending = false;  // runs ahead in this phase and has not yet reported being stuck
    uint64_t rng = 0;
};
inline thread_local ThreadState tls;

inline uint64_t splitmix64(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

struct PhaseStart {
    Grid* grid;
    void operator()() noexcept;
};
struct EndOfBlock {
    Grid* grid;
    void operator()() noexcept;
};

struct WarpExchange {
    alignas(64) uint64_t slot[2][kWarp];
};

struct Grid {
    dim3 grid, block;
    unsigned threads = 0, warps = 0;
    uint64_t blocks = 0;
    int64_t seed = -1;  // < 0: no schedule perturbation
    std::function<void()> body;
    std::vector<uint64_t> order;  // block visiting order (shuffled under a seed)
    uint64_t step = 0;            // position in `order` of the block being run
    std::unique_ptr<std::barrier<PhaseStart>> sync;            // __syncthreads of the current block
    std::vector<std::unique_ptr<std::barrier<>>> warp_sync;    // one per warp, for warp primitives
    std::vector<WarpExchange> exchange;
    std::unique_ptr<std::barrier<EndOfBlock>> end;             // every thread, every block; never dropped

    // The current phase's plan (written only by a barrier completion, while every thread is inside it).
    uint64_t phase = 0;
    std::vector<uint8_t> held;       // per thread: held back in this phase
    std::vector<uint8_t> warp_held;  // per warp: has a held-back lane
    std::vector<uint8_t> exited;     // per thread: returned from the kernel in this block
    std::atomic<int> running{0};     // threads running ahead that are not yet stuck

    unsigned lanes_in_warp(unsigned w) const { return std::min(kWarp, threads - w * kWarp); }

    void fresh_barriers() {
        sync = std::make_unique<std::barrier<PhaseStart>>(static_cast<std::ptrdiff_t>(threads), PhaseStart{this});
        for (unsigned w = 0; w < warps; ++w) {
            warp_sync[w] = std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(lanes_in_warp(w)));
        }
    }

    void plan_phase() {
        if (seed < 0) {
            return;
        }
        uint64_t s = static_cast<uint64_t>(seed) * 0xD1B54A32D192ED03ull + (++phase);
        const uint64_t h = splitmix64(s);
        std::fill(held.begin(), held.end(), uint8_t(0));
        std::fill(warp_held.begin(), warp_held.end(), uint8_t(0));
        if (h & 1) {
            const bool by_warp = (h >> 1) & 1;
            std::vector<uint8_t> warp_pick(warps);
            for (auto& w : warp_pick) {
                w = splitmix64(s) & 1;
            }
            for (unsigned t = 0; t < threads; ++t) {
                held[t] = by_warp ? warp_pick[t / kWarp] : uint8_t(splitmix64(s) & 1);
            }
        }
        int ahead = 0;
        for (unsigned t = 0; t < threads; ++t) {
            if (exited[t]) {
                held[t] = 0;
            } else if (held[t]) {
                warp_held[t / kWarp] = 1;
            } else {
                ++ahead;
            }
        }
        running.store(ahead);
    }
};

inline void PhaseStart::operator()() noexcept { grid->plan_phase(); }

inline void EndOfBlock::operator()() noexcept {
    // Runs once, by one thread, after all threads finished the block and before any starts the next.
    ++grid->step;
    if (grid->step < grid->blocks) {
        grid->fresh_barriers();
        std::fill(grid->exited.begin(), grid->exited.end(), uint8_t(0));
        grid->plan_phase();
    }
}

inline void yield_sometimes() {
    if (tls.grid->seed >= 0 && splitmix64(tls.rng) % 16 == 0) {
        std::this_thread::yield();
    }
}

// After a barrier: a held-back thread waits until every thread running ahead is stuck.
inline void enter_phase() {
    Grid* g = tls.grid;
    tls.pending = false;
    if (g->seed < 0) {
        return;
    }
    if (g->held[tls.tid]) {
        for (int v = g->running.load(); v > 0; v = g->running.load()) {
            g->running.wait(v);
        }
    } else {
        tls.pending = true;
    }
    yield_sometimes();
}

// Before a wait that cannot finish without the held-back threads: this thread is stuck.
inline void stuck(bool needs_held) {
    if (tls.pending && needs_held) {
        tls.pending = false;
        if (tls.grid->running.fetch_sub(1) == 1) {
            tls.grid->running.notify_all();
        }
    }
}

inline dim3 unflatten(uint64_t i, dim3 extent) {
    const unsigned x = static_cast<unsigned>(i % extent.x);
    i /= extent.x;
    const unsigned y = static_cast<unsigned>(i % extent.y);
    return dim3(x, y, static_cast<unsigned>(i / extent.y));
}

inline void run_thread(Grid* g, unsigned tid) {
    tls = ThreadState{};
    tls.grid = g;
    tls.tid = tid;
    tls.warp = tid / kWarp;
    tls.lane = tid % kWarp;
    tls.rng = static_cast<uint64_t>(g->seed) * 0x100000001B3ull + tid;
    threadIdx = unflatten(tid, g->block);
    blockDim = g->block;
    gridDim = g->grid;
    // g->step and the plan are written only inside barrier completions, which happen-before these reads.
    while (g->step < g->blocks) {
        blockIdx = unflatten(g->order[g->step], g->grid);
        tls.parity = 0;
        enter_phase();
        g->body();
        stuck(true);
        g->exited[tid] = 1;
        g->sync->arrive_and_drop();
        g->warp_sync[tls.warp]->arrive_and_drop();
        g->end->arrive_and_wait();
    }
    tls = ThreadState{};
}

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

enum Status : int {
    kOk = 0,
    kBadBlock = 1,
    kBadGrid = 2,
    kDynamicShared = 3,
};

inline double timeout_seconds() {
    const char* env = std::getenv("GLAD_EDGE_EMU_TIMEOUT_S");
    const double t = env ? std::atof(env) : 0.0;
    return t > 0 ? t : 300.0;
}

// Runs body on every thread of every block of the grid; returns a Status.
inline int launch(dim3 grid, dim3 block, unsigned shared, long long seed, std::function<void()> body) {
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || threads > 1024 || block.z > 64) {
        return kBadBlock;
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        return kBadGrid;
    }
    if (shared != 0) {
        return kDynamicShared;
    }
    std::lock_guard<std::mutex> serial(launch_mutex());

    Grid g;
    g.grid = grid;
    g.block = block;
    g.threads = static_cast<unsigned>(threads);
    g.warps = (g.threads + kWarp - 1) / kWarp;
    g.blocks = uint64_t(grid.x) * grid.y * grid.z;
    g.seed = seed < 0 ? -1 : seed;
    g.body = std::move(body);
    g.order.resize(g.blocks);
    std::iota(g.order.begin(), g.order.end(), uint64_t(0));
    std::vector<unsigned> start(g.threads);
    std::iota(start.begin(), start.end(), 0u);
    if (g.seed >= 0) {
        uint64_t s = static_cast<uint64_t>(g.seed) ^ 0xC0FFEEull;
        for (uint64_t i = g.blocks; i > 1; --i) {
            std::swap(g.order[i - 1], g.order[splitmix64(s) % i]);
        }
        for (unsigned i = g.threads; i > 1; --i) {
            std::swap(start[i - 1], start[splitmix64(s) % i]);
        }
    }
    g.warp_sync.resize(g.warps);
    g.exchange.resize(g.warps);
    g.held.assign(g.threads, 0);
    g.warp_held.assign(g.warps, 0);
    g.exited.assign(g.threads, 0);
    g.fresh_barriers();
    g.plan_phase();
    g.end = std::make_unique<std::barrier<EndOfBlock>>(static_cast<std::ptrdiff_t>(g.threads), EndOfBlock{&g});

    std::atomic<unsigned> finished{0};
    std::mutex done_mutex;
    std::condition_variable done;
    std::vector<std::thread> pool;
    pool.reserve(g.threads);
    for (unsigned t : start) {
        pool.emplace_back([&, t] {
            run_thread(&g, t);
            std::lock_guard<std::mutex> lk(done_mutex);
            finished.fetch_add(1);
            done.notify_one();
        });
    }
    {
        // A kernel whose threads do not all reach a __syncthreads would hang CI forever (a GPU would hang
        // or misbehave too), so stop loudly instead.
        std::unique_lock<std::mutex> lk(done_mutex);
        const auto limit = std::chrono::duration<double>(timeout_seconds());
        if (!done.wait_for(lk, limit, [&] { return finished.load() == g.threads; })) {
            std::fprintf(stderr,
                         "glad host emulation: a launch did not finish within %.0f s (a __syncthreads or warp "
                         "primitive that not every thread reaches?); aborting\n",
                         limit.count());
            std::fflush(stderr);
            std::abort();
        }
    }
    for (auto& t : pool) {
        t.join();
    }
    return kOk;
}

template <typename T>
inline T exchange(T v, unsigned src_lane) {
    static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "warp exchange of a scalar");
    Grid* g = tls.grid;
    WarpExchange& ex = g->exchange[tls.warp];
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    yield_sometimes();
    ex.slot[tls.parity][tls.lane] = bits;
    stuck(g->warp_held[tls.warp]);
    g->warp_sync[tls.warp]->arrive_and_wait();
    // Double buffering: a lane that runs ahead writes the other half, and cannot come back to this half
    // before every lane has passed the next warp barrier, i.e. has read this one.
    const uint64_t got = ex.slot[tls.parity][src_lane];
    tls.parity ^= 1u;
    yield_sometimes();
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}

inline unsigned ballot(bool pred) {
    Grid* g = tls.grid;
    WarpExchange& ex = g->exchange[tls.warp];
    yield_sometimes();
    ex.slot[tls.parity][tls.lane] = pred ? 1u : 0u;
    stuck(g->warp_held[tls.warp]);
    g->warp_sync[tls.warp]->arrive_and_wait();
    unsigned mask = 0;
    const unsigned lanes = g->lanes_in_warp(tls.warp);
    for (unsigned l = 0; l < lanes; ++l) {
        mask |= (ex.slot[tls.parity][l] ? 1u : 0u) << l;
    }
    tls.parity ^= 1u;
    yield_sometimes();
    return mask;
}

}  // namespace glad_emu

inline void __syncthreads() {
    glad_emu::yield_sometimes();
    glad_emu::stuck(true);
    glad_emu::tls.grid->sync->arrive_and_wait();
    glad_emu::enter_phase();
}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    glad_emu::yield_sometimes();
    glad_emu::stuck(glad_emu::tls.grid->warp_held[glad_emu::tls.warp]);
    glad_emu::tls.grid->warp_sync[glad_emu::tls.warp]->arrive_and_wait();
    glad_emu::yield_sometimes();
}

// Lane arithmetic as in the CUDA programming guide: a lane outside its width-segment reads its own value.
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    (void)mask;
    const unsigned lane = glad_emu::tls.lane;
    const unsigned base = lane & ~unsigned(width - 1);
    return glad_emu::exchange(var, base + (unsigned(src_lane) & unsigned(width - 1)));
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    (void)mask;
    const unsigned lane = glad_emu::tls.lane;
    const unsigned src = lane ^ unsigned(lane_mask);
    const unsigned end = (lane & ~unsigned(width - 1)) + unsigned(width);
    return glad_emu::exchange(var, src < end ? src : lane);
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    const unsigned lane = glad_emu::tls.lane;
    const bool inside = (lane & unsigned(width - 1)) + delta < unsigned(width);
    return glad_emu::exchange(var, inside ? lane + delta : lane);
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    (void)mask;
    const unsigned lane = glad_emu::tls.lane;
    const bool inside = (lane & unsigned(width - 1)) >= delta;
    return glad_emu::exchange(var, inside ? lane - delta : lane);
}

inline unsigned __ballot_sync(unsigned mask, int pred) { return glad_emu::ballot(pred != 0) & mask; }
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, !pred) == 0; }

#define GLAD_UNPAREN(...) __VA_ARGS__

// One C entry point per kernel: host_launch_<name>(grid, block, shared, seed, kernel args...) -> Status.
// The static_assert keeps the spelled-out parameter list identical to the kernel's.
#define GLAD_HOST_LAUNCHER(name, params, args)                                                               \
    static_assert(std::is_same_v<decltype(&name), void(*) params>, #name ": launcher parameters differ");     \
    extern "C" __attribute__((visibility("default"))) int host_launch_##name(                                \
        unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,         \
        long long seed, GLAD_UNPAREN params) {                                                               \
        return glad_emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), shared, seed, [=] { name args; });     \
    }
