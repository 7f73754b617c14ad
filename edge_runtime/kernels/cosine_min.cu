// Fused cosine-min: for every query token i of one image, min over all key tokens j of the other
// image of 1 - <q_i / |q_i|, k_j / |k_j|>, for all layers and both directions in one launch.
//
// Grid (ceil(P / TILE_Q), L, directions), block (THREADS_X, THREADS_Y, 1) -- edge_runtime/kernels/launch.py
// mirrors these constants and a test parses them from here. Each block owns TILE_Q queries and walks
// all keys TILE_K at a time; the feature axis is streamed through shared memory TILE_D at a time.
// Every thread keeps a MICRO_Q x MICRO_K block of dot products in registers, so the P x P similarity
// never exists anywhere: after a key tile only a running maximum per query survives.
// The squared norms come out of the same shared-memory tiles as the dot products (no normalisation
// pass, no normalised copy in global memory); cos = dot / (max(|q|, eps) * max(|k|, eps)) like torch's
// F.normalize. Inputs are converted to float on load and everything accumulates in fp32, in an order that
// does not depend on the thread schedule: the result is deterministic, and identical on every GPU and in
// the host emulation (explicit fmaf, IEEE sqrt and division, no contraction left to the compiler).

#ifndef GLAD_HOST_EMULATION
#include <cuda_fp16.h>
#endif

#define GLAD_COSINE_TILE_Q 64
#define GLAD_COSINE_TILE_K 64
#define GLAD_COSINE_TILE_D 32
#define GLAD_COSINE_THREADS_X 16
#define GLAD_COSINE_THREADS_Y 16
// Occupancy hint for __launch_bounds__: 4 blocks of 256 threads per SM caps registers at 64, which every
// target meets without spilling (unbounded, sm_120's ptxas takes 127 and fits only 2 blocks).
#define GLAD_COSINE_MIN_BLOCKS 4

#define GLAD_COSINE_THREADS (GLAD_COSINE_THREADS_X * GLAD_COSINE_THREADS_Y)
#define GLAD_COSINE_MICRO_Q (GLAD_COSINE_TILE_Q / GLAD_COSINE_THREADS_Y)
#define GLAD_COSINE_MICRO_K (GLAD_COSINE_TILE_K / GLAD_COSINE_THREADS_X)
#define GLAD_COSINE_LOADS ((GLAD_COSINE_TILE_Q * GLAD_COSINE_TILE_D) / GLAD_COSINE_THREADS)

static_assert(GLAD_COSINE_TILE_Q % GLAD_COSINE_THREADS_Y == 0, "query tile must split evenly over threadIdx.y");
static_assert(GLAD_COSINE_TILE_K % GLAD_COSINE_THREADS_X == 0, "key tile must split evenly over threadIdx.x");
static_assert(GLAD_COSINE_TILE_Q == GLAD_COSINE_TILE_K, "one load loop fills both tiles");
static_assert((GLAD_COSINE_TILE_Q * GLAD_COSINE_TILE_D) % GLAD_COSINE_THREADS == 0, "whole loads per thread");
static_assert(GLAD_COSINE_TILE_Q + GLAD_COSINE_TILE_K <= GLAD_COSINE_THREADS, "one thread per norm");
static_assert(GLAD_COSINE_THREADS_X == 16 && GLAD_COSINE_MICRO_Q == 4,
              "the final reduction is written for 4 query rows over the 16 lanes of a half warp");

// Test hook, never set for nvcc: the host emulation's race test compiles with GLAD_TEST_DROP_SYNC=n to
// remove barrier n and proves that the varied thread schedule then breaks the result.
#ifndef GLAD_TEST_DROP_SYNC
#define GLAD_TEST_DROP_SYNC 0
#endif
#define GLAD_COSINE_SYNC(id)                   \
    do {                                       \
        if ((id) != GLAD_TEST_DROP_SYNC) {     \
            __syncthreads();                   \
        }                                      \
    } while (0)

__device__ __forceinline__ float glad_to_float(float x) { return x; }
__device__ __forceinline__ float glad_to_float(__half x) { return __half2float(x); }

// 1 / max(|x|, 1e-12) from |x|^2, IEEE sqrt and division: the fp32 result stays within an ulp or two of
// normalising first, which the tests hold it to.
__device__ __forceinline__ float glad_inv_norm(float norm2) { return 1.0f / fmaxf(sqrtf(norm2), 1e-12f); }

template <typename T>
__device__ __forceinline__ void glad_cosine_min(const T* __restrict__ a, const T* __restrict__ b,
                                                float* __restrict__ out, int L, int P, int D, int directions) {
    // Transposed ([d][token]) so the inner product loop reads a row of tokens per d; the +1 column
    // keeps the transposing stores (consecutive lanes = consecutive d) free of bank conflicts.
    __shared__ float q_tile[GLAD_COSINE_TILE_D][GLAD_COSINE_TILE_Q + 1];
    __shared__ float k_tile[GLAD_COSINE_TILE_D][GLAD_COSINE_TILE_K + 1];
    __shared__ float k_inv[GLAD_COSINE_TILE_K];
    __shared__ float q_inv[GLAD_COSINE_TILE_Q];

    const int layer = blockIdx.y;
    const int dir = blockIdx.z;
    if (layer >= L || dir >= directions) {
        return;  // whole block: no barrier is left waiting
    }
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * GLAD_COSINE_THREADS_X + tx;
    const int q0 = blockIdx.x * GLAD_COSINE_TILE_Q;
    const size_t layer_offset = (size_t)layer * (size_t)P * (size_t)D;
    const T* queries = (dir == 0 ? a : b) + layer_offset;
    const T* keys = (dir == 0 ? b : a) + layer_offset;

    float best[GLAD_COSINE_MICRO_Q];
#pragma unroll
    for (int r = 0; r < GLAD_COSINE_MICRO_Q; ++r) {
        best[r] = -INFINITY;
    }
    // Threads [0, TILE_Q) own one query norm, [TILE_Q, TILE_Q + TILE_K) one key norm.
    float q_norm2 = 0.0f;

    for (int k0 = 0; k0 < P; k0 += GLAD_COSINE_TILE_K) {
        float acc[GLAD_COSINE_MICRO_Q][GLAD_COSINE_MICRO_K];
#pragma unroll
        for (int r = 0; r < GLAD_COSINE_MICRO_Q; ++r) {
#pragma unroll
            for (int c = 0; c < GLAD_COSINE_MICRO_K; ++c) {
                acc[r][c] = 0.0f;
            }
        }
        float k_norm2 = 0.0f;

        for (int d0 = 0; d0 < D; d0 += GLAD_COSINE_TILE_D) {
            // A warp reads TILE_D consecutive features of one token: coalesced rows.
#pragma unroll
            for (int e = 0; e < GLAD_COSINE_LOADS; ++e) {
                const int idx = e * GLAD_COSINE_THREADS + tid;
                const int row = idx / GLAD_COSINE_TILE_D;
                const int d = idx % GLAD_COSINE_TILE_D;
                const int gd = d0 + d;
                float qv = 0.0f;
                float kv = 0.0f;
                if (gd < D) {
                    if (q0 + row < P) {
                        qv = glad_to_float(queries[(size_t)(q0 + row) * D + gd]);
                    }
                    if (k0 + row < P) {
                        kv = glad_to_float(keys[(size_t)(k0 + row) * D + gd]);
                    }
                }
                q_tile[d][row] = qv;  // zeros past P and D add nothing to dots or norms
                k_tile[d][row] = kv;
            }
            GLAD_COSINE_SYNC(1);

            if (tid < GLAD_COSINE_TILE_Q) {
                if (k0 == 0) {  // the query tile is the same for every key tile
#pragma unroll 8
                    for (int d = 0; d < GLAD_COSINE_TILE_D; ++d) {
                        q_norm2 = fmaf(q_tile[d][tid], q_tile[d][tid], q_norm2);
                    }
                }
            } else if (tid < GLAD_COSINE_TILE_Q + GLAD_COSINE_TILE_K) {
                const int kr = tid - GLAD_COSINE_TILE_Q;
#pragma unroll 8
                for (int d = 0; d < GLAD_COSINE_TILE_D; ++d) {
                    k_norm2 = fmaf(k_tile[d][kr], k_tile[d][kr], k_norm2);
                }
            }

#pragma unroll 4
            for (int d = 0; d < GLAD_COSINE_TILE_D; ++d) {
                float qa[GLAD_COSINE_MICRO_Q];
                float kb[GLAD_COSINE_MICRO_K];
#pragma unroll
                for (int r = 0; r < GLAD_COSINE_MICRO_Q; ++r) {
                    qa[r] = q_tile[d][ty + r * GLAD_COSINE_THREADS_Y];
                }
#pragma unroll
                for (int c = 0; c < GLAD_COSINE_MICRO_K; ++c) {
                    kb[c] = k_tile[d][tx + c * GLAD_COSINE_THREADS_X];
                }
#pragma unroll
                for (int r = 0; r < GLAD_COSINE_MICRO_Q; ++r) {
#pragma unroll
                    for (int c = 0; c < GLAD_COSINE_MICRO_K; ++c) {
                        acc[r][c] = fmaf(qa[r], kb[c], acc[r][c]);
                    }
                }
            }
            GLAD_COSINE_SYNC(2);  // the next chunk overwrites the tiles
        }

        if (tid >= GLAD_COSINE_TILE_Q && tid < GLAD_COSINE_TILE_Q + GLAD_COSINE_TILE_K) {
            k_inv[tid - GLAD_COSINE_TILE_Q] = glad_inv_norm(k_norm2);
        }
        GLAD_COSINE_SYNC(3);
        // Scaling by the positive 1/|q| commutes with the max, so only 1/|k| is needed per tile.
#pragma unroll
        for (int c = 0; c < GLAD_COSINE_MICRO_K; ++c) {
            const int kc = tx + c * GLAD_COSINE_THREADS_X;
            if (k0 + kc < P) {
                const float s = k_inv[kc];
#pragma unroll
                for (int r = 0; r < GLAD_COSINE_MICRO_Q; ++r) {
                    best[r] = fmaxf(best[r], acc[r][c] * s);
                }
            }
        }
        // k_inv is rewritten only after the next tile's barrier 1, so no barrier is needed here.
    }

    if (tid < GLAD_COSINE_TILE_Q) {
        q_inv[tid] = glad_inv_norm(q_norm2);
    }
    // The 16 threads of a half warp (one threadIdx.y) hold the same 4 queries, each over its own keys.
    // Halving the rows at each of the first two steps (send two, then one) instead of reducing each row
    // separately takes 5 shuffles instead of 16; afterwards lanes tx = 4r..4r+3 hold query row r's max.
    // max is exact, so the reduction order cannot change the result.
    const bool hi8 = (tx & 8) != 0;
    float k0 = hi8 ? best[2] : best[0];
    float k1 = hi8 ? best[3] : best[1];
    k0 = fmaxf(k0, __shfl_xor_sync(0xffffffffu, hi8 ? best[0] : best[2], 8));
    k1 = fmaxf(k1, __shfl_xor_sync(0xffffffffu, hi8 ? best[1] : best[3], 8));
    const bool hi4 = (tx & 4) != 0;
    float row_max = hi4 ? k1 : k0;
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, hi4 ? k0 : k1, 4));
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
    row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
    GLAD_COSINE_SYNC(4);
    if ((tx & 3) == 0) {
        const int q = ty + (tx >> 2) * GLAD_COSINE_THREADS_Y;
        if (q0 + q < P) {
            // Spelled out so that nvcc cannot contract it into an FMA: the GPU and the host build then
            // agree bit for bit.
            out[((size_t)layer * directions + dir) * (size_t)P + q0 + q] =
                __fadd_rn(1.0f, -__fmul_rn(row_max, q_inv[q]));
        }
    }
}

extern "C" __global__ void __launch_bounds__(GLAD_COSINE_THREADS, GLAD_COSINE_MIN_BLOCKS)
    cosine_min_f16(const __half* a, const __half* b, float* out, int L, int P, int D, int directions) {
    glad_cosine_min<__half>(a, b, out, L, P, D, directions);
}

extern "C" __global__ void __launch_bounds__(GLAD_COSINE_THREADS, GLAD_COSINE_MIN_BLOCKS)
    cosine_min_f32(const float* a, const float* b, float* out, int L, int P, int D, int directions) {
    glad_cosine_min<float>(a, b, out, L, P, D, directions);
}
