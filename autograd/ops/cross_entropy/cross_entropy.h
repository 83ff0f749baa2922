// Cross-entropy of logits x against class indices t, fused with the log-softmax (one pass per
// row for max, log-sum-exp and loss):
//   loss = (1 / C) sum_{n : t_n != ignore} (lse_n - x[n, t_n]),  lse_n = m_n + log sum_v exp(x[n, v] - m_n)
//   dx[n, v] = (exp(x[n, v] - lse_n) - [v == t_n]) * dloss / C,  zero rows where t_n == ignore
// C counts the targets that are not ignored; when C = 0 the loss and every gradient are 0.
// Shapes: logits [N, V] (or [*, V], e.g. [B, T, V], leading dims flattened to N), targets [N]
// (or [*], e.g. [B, T]) -> loss [] (0-d). dtypes: logits f32, f64; targets i32 (CPU; row sums
// accumulate in double). CUDA: logits f32, targets i32 (f32 accumulation).
// Saved for backward: logits, targets and lse [N]; the probabilities are recomputed from lse
// rather than stored ([N, V] is the largest tensor of a language model).
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "lib/device.h"

namespace attnlab {

struct CrossEntropyOp {
  struct Forward {
    Tensor loss;    // [] in the logits' dtype
    Tensor lse;     // [N] in the logits' dtype (unused rows where the target is ignored)
    int64_t count;  // C: targets not ignored
  };
  // Shapes and dtypes; target values are checked by the forward, which reads them anyway.
  static void check(const Tensor& logits, const Tensor& targets);
  // logits and targets contiguous. Throws when a target is outside [0, V) and not ignore_index.
  static Forward forward(CpuTag, const Tensor& logits, const Tensor& targets, int32_t ignore_index);
  static Tensor backward(CpuTag, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t count,
                         int32_t ignore_index, const Tensor& dloss);
  static Forward forward(CudaTag, const Tensor& logits, const Tensor& targets, int32_t ignore_index);
  static Tensor backward(CudaTag, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t count,
                         int32_t ignore_index, const Tensor& dloss);
  static std::vector<OpSample> samples();
  // Larger shapes for the CUDA parity test: every launch shape, ragged edges.
  static std::vector<OpSample> parity_samples();
  static std::vector<OpMisuse> misuses();
};

Variable cross_entropy(const Variable& logits, const Variable& targets, int32_t ignore_index = -100);

}  // namespace attnlab
