// A linear layer's maths as one op: y = x w^T + b.
//   dx = dy w,   dw = dy^T x,   db = sum over rows of dy
// with the leading dims of x folded into rows (one GEMM each, never a batch of small ones).
//
// Shapes: x [*, K] (at least 1-D), w [N, K], b [N] or an undefined Variable (no bias, and then no
// bias input in the graph) -> y [*, N]. R = numel(x) / K rows.
//
// Precision (MatmulPrecision, the autograd entry point linear()):
//   f32   dtypes f32 or f64 (CPU and CUDA), all inputs the same dtype; y and the gradients in
//         that dtype. Saved for backward: x and w themselves (held by the graph anyway).
//   bf16  mixed precision, f32 inputs only (x, w, b; a DTypeError otherwise), CPU and CUDA:
//           xh = bf16(x), wh = bf16(w)                     round to nearest even
//           y  = xh wh^T + b                               products of bf16 values, f32 sums, f32 y
//           dyh = bf16(dy);  dx = dyh wh,  dw = dyh^T xh   f32 sums, f32 dx and dw (w stays f32)
//           db = sum over rows of dy                       the unrounded f32 dy
//         Saved for backward: xh and wh (bf16 copies, half the bytes of x and w), not x and w.
//         Caveat: the graph's edge to an input (Node::inputs_) holds that input's f32 data too
//         until backward, so today xh adds to x's bytes instead of replacing them; it halves
//         them once edges stop holding data.
//         CUDA: the bf16 GEMMs of lib/cuda/gemm.h (cuBLAS GemmEx on a GPU, the tiled kernel on
//         the emulator). CPU: xh, wh and dyh widened back to f32 (exactly) and the f32 GEMM; a
//         product of two bf16 values is exact in f32, so CPU and CUDA differ only in the order
//         of the f32 sums. The CPU path is for parity and tests; it is no faster than f32.
//
// The Tensor-level forward/backward below take the operands as the GEMM reads them: f32 or f64
// x and w (b, dy and the results in the same dtype), or bf16 x and w with f32 b, f32 dy and f32
// results (backward rounds dy to bf16 for the two GEMMs itself).
// Forward writes b into y and lets the GEMM add x w^T to it (beta = 1): the bias costs no pass
// of its own. db is a column sum of dy, each column summed by one thread in row order (on CUDA,
// in fixed chunks of rows then over the chunks: linear_cuda.cu; deterministic either way).
//
// bf16 is not in the op registry's gradcheck (a rounding op has no f64 central difference to
// match); tests/autograd/linear_bf16_test.cpp checks it, and the CUDA parity test runs the
// bf16 parity samples below.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

// The precision of a linear layer's matrix products (see the top of this file).
enum class MatmulPrecision : uint8_t { f32, bf16 };

// "f32" or "bf16" (the names recipes and checkpoint metadata use).
constexpr std::string_view matmul_precision_name(MatmulPrecision p) {
  return p == MatmulPrecision::bf16 ? "bf16" : "f32";
}
// Inverse of matmul_precision_name; ConfigError listing the valid names otherwise.
MatmulPrecision parse_matmul_precision(std::string_view name);

struct LinearOp {
  struct Grads {
    Tensor dx, dw, db;  // undefined where not asked for
  };
  // Checks the autograd inputs: f32/f64 alike for MatmulPrecision::f32, f32 for bf16. b may be
  // undefined.
  static void check(const Tensor& x, const Tensor& w, const Tensor& b,
                    MatmulPrecision precision = MatmulPrecision::f32);
  // x, w and b (or undefined) contiguous; dy contiguous like y. x and w f32/f64 (b and dy alike)
  // or both bf16 (b and dy f32).
  static Tensor forward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& b);
  static Grads backward(CpuTag, const Tensor& x, const Tensor& w, const Tensor& dy, bool need_dx, bool need_dw,
                        bool need_db);
  static Tensor forward(CudaTag, const Tensor& x, const Tensor& w, const Tensor& b);
  static Grads backward(CudaTag, const Tensor& x, const Tensor& w, const Tensor& dy, bool need_dx, bool need_dw,
                        bool need_db);
  // Larger ragged shapes for the CUDA parity test (f32, then bf16).
  static std::vector<OpSample> parity_samples();
  static std::vector<OpSample> samples();
  static std::vector<OpMisuse> misuses();
};

Variable linear(const Variable& x, const Variable& w, const Variable& b,
                MatmulPrecision precision = MatmulPrecision::f32);

}  // namespace attnlab
