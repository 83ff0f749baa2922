// AL_HOST_DEVICE marks inline maths that CPU kernels and CUDA kernels share.
#pragma once

#if defined(__CUDACC__)
#define AL_HOST_DEVICE __host__ __device__
#else
#define AL_HOST_DEVICE
#endif
