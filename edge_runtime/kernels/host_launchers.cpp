// Host build of the kernels (edge_runtime/kernels/host.py): g++ -include host_emulation.h host_launchers.cpp.
// One launcher per kernel; the parameter lists must match the kernels (checked at compile time) and
// launch.PARAMS (checked by the tests).
#include "glad_kernels.cu"

GLAD_HOST_LAUNCHER(cosine_min_f16, (const __half* a, const __half* b, float* out, int L, int P, int D, int directions),
                   (a, b, out, L, P, D, directions))
GLAD_HOST_LAUNCHER(cosine_min_f32, (const float* a, const float* b, float* out, int L, int P, int D, int directions),
                   (a, b, out, L, P, D, directions))
GLAD_HOST_LAUNCHER(axpby_f32, (float* out, const float* x, const float* y, float a, float b, int n),
                   (out, x, y, a, b, n))
GLAD_HOST_LAUNCHER(blend_f32,
                   (float* out, const float* x_rec, const float* x_in, const float* m, int channels, int hw),
                   (out, x_rec, x_in, m, channels, hw))
GLAD_HOST_LAUNCHER(resize_affine_f32,
                   (const float* in, float* out, int n, int c, int h, int w, int oh, int ow, const float* scale,
                    const float* shift),
                   (in, out, n, c, h, w, oh, ow, scale, shift))
GLAD_HOST_LAUNCHER(absdiff_channel_mean_f32, (const float* a, const float* b, float* out, int c, int hw),
                   (a, b, out, c, hw))
