// Two kernels in plain CUDA style for the emulator's tests and timings, each with switches that
// plant a missing barrier, and their double-precision CPU references.
//   sgemm    C[M,N] = A[M,K] B[K,N], row-major; 16x16 tiles in static __shared__, one thread per
//            element of C, two barriers per k-tile (read-after-write, write-after-read).
//   softmax  y[r,:] = softmax(x[r,:]); one 256-thread block per row; the row and the per-warp
//            partials in carved dynamic shared memory; xor/down/idx shuffles; three barriers.
#pragma once

#include <vector>

#include "lib/simt/compat.h"

namespace simt_test {

struct Barriers {
  bool raw = true;  // sgemm: after the tile loads
  bool war = true;  // sgemm: end of the k loop; softmax: before the partials array is reused
};

cudaError_t sgemm(const float* a, const float* b, float* c, int m, int n, int k, Barriers barriers = {});
cudaError_t softmax(const float* x, float* y, int rows, int cols, Barriers barriers = {});

std::vector<double> sgemm_reference(const std::vector<float>& a, const std::vector<float>& b, int m, int n, int k);
std::vector<double> softmax_reference(const std::vector<float>& x, int rows, int cols);

// Uniform values in [lo, hi) from a fixed seed.
std::vector<float> random_vector(size_t n, unsigned seed, float lo = -1.0f, float hi = 1.0f);
// max |got - want|.
double max_abs_diff(const std::vector<float>& got, const std::vector<double>& want);

}  // namespace simt_test
