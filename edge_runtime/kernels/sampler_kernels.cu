// Elementwise kernels of the on-device sampler and scoring: DDIM updates (axpby), the SAFF blend, the
// resize + normalisation in front of DINO, and the pixel term of the anomaly map. Each mirrors a numpy
// function of edge_runtime (sampler.py, adaptive.py, scoring.py), which the tests use as the oracle.
//
// Launch geometry: edge_runtime/kernels/launch.py (elementwise(n), resize(n, c, oh, ow)). The 1-D kernels
// loop grid-stride, so any grid is correct and launch.py caps it.

#define GLAD_ELEMENTWISE_THREADS 256
#define GLAD_RESIZE_THREADS_X 16
#define GLAD_RESIZE_THREADS_Y 16

// Products and sums are rounded separately (no FMA contraction) so that the GPU result is bitwise the
// numpy result wherever numpy evaluates the same expression in float32.

// out = a*x + b*y. out may alias x or y: every element is read and written by the same thread.
extern "C" __global__ void axpby_f32(float* out, const float* x, const float* y, float a, float b, int n) {
    const int stride = blockDim.x * gridDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = __fadd_rn(__fmul_rn(a, x[i]), __fmul_rn(b, y[i]));
    }
}

// SAFF: out[c, p] = m[p] * x_rec[c, p] + (1 - m[p]) * x_in[c, p]; n = channels * hw threads' worth of work.
extern "C" __global__ void blend_f32(float* out, const float* x_rec, const float* x_in, const float* m, int channels,
                                     int hw) {
    const int n = channels * hw;
    const int stride = blockDim.x * gridDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float w = m[i % hw];
        out[i] = __fadd_rn(__fmul_rn(w, x_rec[i]), __fmul_rn(__fadd_rn(1.0f, -w), x_in[i]));
    }
}

// Source index pair and weight of one output coordinate, exactly as edge_runtime.scoring._ac_matrix builds
// its rows: the position in double, the fraction rounded to float; equal sizes are an exact copy.
__device__ __forceinline__ void glad_ac_coord(int o, int n_in, int n_out, int* lo, int* hi, float* frac) {
    if (n_in == 1 || n_out == 1) {
        *lo = 0;
        *hi = 0;
        *frac = 0.0f;
        return;
    }
    if (n_in == n_out) {
        *lo = o;
        *hi = o;
        *frac = 0.0f;
        return;
    }
    const double src = (double)o * (double)(n_in - 1) / (double)(n_out - 1);
    int l = (int)floor(src);
    l = l < 0 ? 0 : (l > n_in - 1 ? n_in - 1 : l);
    *lo = l;
    *hi = l + 1 < n_in - 1 ? l + 1 : n_in - 1;
    *frac = (float)(src - (double)l);
}

// Bilinear resize with align_corners=True ([n, c, h, w] -> [n, c, oh, ow]), then out = v * scale[ch] +
// shift[ch]: with scale = 0.5 / std and shift = (0.5 - mean) / std this is imagenet_normalise(resize_ac(x)).
// Rows are interpolated first, then columns, the order of resize_ac's two matrix products.
extern "C" __global__ void resize_affine_f32(const float* in, float* out, int n, int c, int h, int w, int oh, int ow,
                                             const float* scale, const float* shift) {
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    const int plane = blockIdx.z;
    if (ox >= ow || oy >= oh || plane >= n * c) {
        return;
    }
    int y0, y1, x0, x1;
    float fy, fx;
    glad_ac_coord(oy, h, oh, &y0, &y1, &fy);
    glad_ac_coord(ox, w, ow, &x0, &x1, &fx);
    const float* src = in + (size_t)plane * h * w;
    const float gy = __fadd_rn(1.0f, -fy);
    const float gx = __fadd_rn(1.0f, -fx);
    const float left = __fadd_rn(__fmul_rn(gy, src[(size_t)y0 * w + x0]), __fmul_rn(fy, src[(size_t)y1 * w + x0]));
    const float right = __fadd_rn(__fmul_rn(gy, src[(size_t)y0 * w + x1]), __fmul_rn(fy, src[(size_t)y1 * w + x1]));
    const float v = __fadd_rn(__fmul_rn(gx, left), __fmul_rn(fx, right));
    const int ch = plane % c;
    out[((size_t)plane * oh + oy) * ow + ox] = __fadd_rn(__fmul_rn(v, scale[ch]), shift[ch]);
}

// out[p] = mean over channels of |a[ch, p] - b[ch, p]|, summed in channel order like numpy's mean(axis=0).
extern "C" __global__ void absdiff_channel_mean_f32(const float* a, const float* b, float* out, int c, int hw) {
    const int stride = blockDim.x * gridDim.x;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < hw; p += stride) {
        float s = 0.0f;
        for (int ch = 0; ch < c; ++ch) {
            s = __fadd_rn(s, fabsf(__fadd_rn(a[(size_t)ch * hw + p], -b[(size_t)ch * hw + p])));
        }
        out[p] = __fdiv_rn(s, (float)c);
    }
}
