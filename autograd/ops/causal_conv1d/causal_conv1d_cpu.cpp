// CPU kernels of causal_conv1d on contiguous tensors; rows are the R = B * T (b, t) pairs, each
// row of C channels handled by one thread, the channel loop innermost (contiguous in x).
//
//   forward:  x [B, T, C], weight [C, W], bias [C] or none -> y [B, T, C]
//             y[b, t, :] = bias + sum_{j >= W-1-t} wt[j, :] * x[b, t-(W-1)+j, :]
//   backward: dy [B, T, C] -> dx [B, T, C], dweight [C, W], dbias [C]
//             dx[b, s, :] = sum_{j >= s+W-T} wt[j, :] * dy[b, s+(W-1)-j, :]
//             dweight and dbias summed in the same pass per fixed block of rows, the blocks then
//             added in order, in double.
// wt [W, C] is weight transposed once per call, so the channel loops read it contiguously.
// The W-term sums of forward and dx stay in T: W is a short kernel.
#include <algorithm>
#include <vector>

#include "autograd/ops/causal_conv1d/causal_conv1d.h"
#include "lib/cpu/parallel.h"

namespace attnlab {

using cpu::for_rows_summing_columns;
using cpu::row_grain;

namespace {
// weight [C, W] -> wt [W, C].
template <typename T>
std::vector<T> transpose_weight(const T* w, int64_t C, int64_t W) {
  std::vector<T> wt(static_cast<size_t>(C * W));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t j = 0; j < W; ++j) wt[static_cast<size_t>(j * C + c)] = w[c * W + j];
  return wt;
}
}  // namespace

Tensor CausalConv1dOp::forward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const int64_t T_ = x.size(1), C = x.size(2), W = weight.size(1);
  const int64_t R = x.size(0) * T_;
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_float(x.dtype(), "causal_conv1d", [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> wt = transpose_weight(weight.data<T>(), C, W);
    const T* px = x.data<T>();
    const T* pb = bias.defined() ? bias.data<T>() : nullptr;
    T* py = y.data<T>();
    cpu::parallel_for(0, R, row_grain(C * W), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = r % T_;
        T* yr = py + r * C;
        for (int64_t c = 0; c < C; ++c) yr[c] = pb ? pb[c] : T(0);
        // Tap j reads time t - (W-1) + j, which is row r - (W-1) + j of the same batch.
        for (int64_t j = std::max<int64_t>(0, W - 1 - t); j < W; ++j) {
          const T* xr = px + (r - (W - 1) + j) * C;
          const T* wj = wt.data() + j * C;
          for (int64_t c = 0; c < C; ++c) yr[c] += wj[c] * xr[c];
        }
      }
    });
  });
  return y;
}

CausalConv1dOp::Grads CausalConv1dOp::backward(CpuTag, const Tensor& x, const Tensor& weight, const Tensor& dy,
                                               bool need_dx, bool need_dweight, bool need_dbias) {
  const int64_t T_ = x.size(1), C = x.size(2), W = weight.size(1);
  const int64_t R = x.size(0) * T_;
  Grads g;
  if (need_dx) g.dx = Tensor::empty(x.shape(), x.dtype());
  const bool need_sums = need_dweight || need_dbias;
  dispatch_float(x.dtype(), "causal_conv1d", [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> wt = transpose_weight(weight.data<T>(), C, W);
    const T* px = x.data<T>();
    const T* pdy = dy.data<T>();
    T* pdx = need_dx ? g.dx.data<T>() : nullptr;
    // Partial sums per block: [dweight transposed, [W, C] | dbias [C]]. Blocks of at least W+1
    // rows keep the scratch no larger than the tensors.
    const int64_t width = need_sums ? (W + 1) * C : 0;
    const std::vector<double> sums =
        for_rows_summing_columns(R, std::max(row_grain(C * W), W + 1), width, [&](int64_t r, double* acc) {
          const int64_t t = r % T_;
          if (pdx) {
            T* dxr = pdx + r * C;
            std::fill(dxr, dxr + C, T(0));
            // Tap j carries x at time s to the output at s + (W-1) - j, if that is before T.
            for (int64_t j = std::max<int64_t>(0, t + W - T_); j < W; ++j) {
              const T* dyr = pdy + (r + (W - 1) - j) * C;
              const T* wj = wt.data() + j * C;
              for (int64_t c = 0; c < C; ++c) dxr[c] += wj[c] * dyr[c];
            }
          }
          if (acc) {
            const T* dyr = pdy + r * C;
            for (int64_t j = std::max<int64_t>(0, W - 1 - t); j < W; ++j) {
              const T* xr = px + (r - (W - 1) + j) * C;
              double* aj = acc + j * C;
              for (int64_t c = 0; c < C; ++c) aj[c] += static_cast<double>(dyr[c]) * static_cast<double>(xr[c]);
            }
            double* ab = acc + W * C;
            for (int64_t c = 0; c < C; ++c) ab[c] += static_cast<double>(dyr[c]);
          }
        });
    if (need_dweight) {
      g.dweight = Tensor::empty(weight.shape(), x.dtype());
      T* p = g.dweight.data<T>();
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < W; ++j) p[c * W + j] = static_cast<T>(sums[static_cast<size_t>(j * C + c)]);
    }
    if (need_dbias) {
      g.dbias = Tensor::empty(Shape{C}, x.dtype());
      T* p = g.dbias.data<T>();
      for (int64_t c = 0; c < C; ++c) p[c] = static_cast<T>(sums[static_cast<size_t>(W * C + c)]);
    }
  });
  return g;
}

}  // namespace attnlab
