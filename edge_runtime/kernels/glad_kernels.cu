// One translation unit for every kernel of the GPU path, so one fatbin (one module load) holds them all.
// model_export/cuda_kernels.py compiles it with nvcc; host_launchers.cpp includes it for the host emulation.
#include "cosine_min.cu"
#include "sampler_kernels.cu"
