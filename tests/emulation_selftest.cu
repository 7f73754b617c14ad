// Semantics checks of host_emulation.h against what CUDA documents (and, in tests/test_gpu_kernels.py, against
// a real GPU): warp primitives with widths and edge lanes, ballot/any/all, shared memory per block with a
// barrier-stepped reduction, threads that exit before a barrier, 3-D indices, half conversions.
#ifndef GLAD_HOST_EMULATION
#include <cuda_fp16.h>
#endif

extern "C" __global__ void selftest_warp(const int* in, int* out) {
    const int t = threadIdx.x + blockIdx.x * blockDim.x;
    const int v = in[t];
    int* o = out + t * 8;
    o[0] = __shfl_xor_sync(0xffffffffu, v, 5);
    o[1] = __shfl_down_sync(0xffffffffu, v, 3);
    o[2] = __shfl_up_sync(0xffffffffu, v, 2, 8);
    o[3] = __shfl_sync(0xffffffffu, v, 7, 16);
    o[4] = (int)__ballot_sync(0xffffffffu, v & 1);
    o[5] = __any_sync(0xffffffffu, v == 7) ? 1 : 0;
    o[6] = __all_sync(0xffffffffu, v >= 0) ? 1 : 0;
    o[7] = __shfl_down_sync(0xffffffffu, v, 4, 16);
}

extern "C" __global__ void selftest_block_sum(const int* in, int* out, int n) {
    __shared__ int s[256];
    const int t = threadIdx.x;
    const int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? in[i] : 0;
    __syncthreads();
    for (int k = blockDim.x / 2; k > 0; k /= 2) {
        if (t < k) {
            s[t] += s[t + k];
        }
        __syncthreads();
    }
    if (t == 0) {
        out[blockIdx.x] = s[0];
    }
}

// Odd threads return before the barrier; the even ones must get through it (exited threads leave barriers).
extern "C" __global__ void selftest_early_exit(int* out) {
    __shared__ int s[64];
    const int t = threadIdx.x;
    s[t] = t * 10 + blockIdx.x;
    if (t % 2 == 1) {
        return;
    }
    __syncthreads();
    out[blockIdx.x * 64 + t] = s[(t + 2) % 64];
}

extern "C" __global__ void selftest_indices(int* out) {
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int threads = blockDim.x * blockDim.y * blockDim.z;
    int* o = out + (b * threads + t) * 4;
    o[0] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16;
    o[1] = blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16;
    o[2] = blockDim.x | blockDim.y << 8 | blockDim.z << 16;
    o[3] = gridDim.x | gridDim.y << 8 | gridDim.z << 16;
}

extern "C" __global__ void selftest_half(const float* in, __half* out, float* back, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        out[i] = __float2half(in[i]);
        back[i] = __half2float(out[i]);
    }
}

#ifdef GLAD_HOST_EMULATION
GLAD_HOST_LAUNCHER(selftest_warp, (const int* in, int* out), (in, out))
GLAD_HOST_LAUNCHER(selftest_block_sum, (const int* in, int* out, int n), (in, out, n))
GLAD_HOST_LAUNCHER(selftest_early_exit, (int* out), (out))
GLAD_HOST_LAUNCHER(selftest_indices, (int* out), (out))
GLAD_HOST_LAUNCHER(selftest_half, (const float* in, __half* out, float* back, int n), (in, out, back, n))
#endif
