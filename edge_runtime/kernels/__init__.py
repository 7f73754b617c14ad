"""CUDA kernels of the GPU path (fused cosine-min, sampler elementwise ops): the .cu sources, their launch
geometry and argument signatures (``launch``), and a host build of the same sources for tests (``host``)."""
