// One fine-tuning step on one micro-batch, plain (SFT) or bilevel (FocuSFT,
// ../shared/specs/residuals_focusft_qttt.md 2.3-2.6), as a unit the finetune loop
// (train/finetune.h) and the tests call.
//
// The loss, in both loops and in the plain step: mean cross-entropy over the answer targets of an
// SftBatch (y != kIgnoreTarget), the model run under AttentionMask{.prefix = mask_prefix}
// (0: causal; batch.prefix: FocuSFT's bidirectional context, causal answers).
//
// FocuSFT on a micro-batch, with fast weights W_eff = W + s B A (layers/lora.h):
//   reset:  A ~ U(-1/sqrt(in), 1/sqrt(in)) from `gen`, B = 0 (the adapter starts as a no-op)
//   inner:  K times, base weights frozen: l_k = loss(W + s B A); g = dl_k/d{A, B};
//           each tensor's gradient clipped to norm <= inner_clip; A -= lr g_A, B -= lr g_B
//           (in place, no graph). A non-finite loss or gradient skips the update. Since B = 0 at
//           reset, g_A = 0 at the first step: after K = 2, B has moved twice and A once.
//   outer:  A, B held constant (requires_grad off): l = loss(W + s B A); backward of
//           outer_scale * l leaves dl/dW on the base weights and nothing on A, B. First order:
//           the inner updates are data, so no gradient flows through them; since W_eff is W plus
//           a constant, dl/dW equals the gradient of a model whose W holds W + s B A.
// Gradients accumulate into the base weights' .grad (the caller zeroes them per optimizer step).
#pragma once

#include <cstdint>
#include <vector>

#include "autograd/variable.h"
#include "data/sft/sft_data.h"
#include "layers/gpt.h"
#include "layers/lora.h"
#include "lib/rng.h"

namespace attnlab {

struct FocusftSettings {
  int64_t inner_steps = 2;  // K >= 1
  double inner_lr = 1.0;    // plain SGD on the fast weights
  double inner_clip = 1.0;  // per-tensor gradient norm bound (> 0)
  void validate() const;    // ConfigError naming focusft.<field>
};

// The answer cross-entropy of `model` on `batch` under mask_prefix (0 = causal), differentiable
// into whatever requires a gradient (parameters or active overrides).
Variable answer_loss(const Gpt& model, const SftBatch& batch, int64_t mask_prefix);

struct StepLosses {
  // FocuSFT: the inner loss at each of the K inner steps, before that step's update (inner[0] is
  // the base model's loss, the adapter being a no-op); empty for SFT.
  std::vector<double> inner;
  int64_t inner_skipped = 0;  // inner steps whose loss or gradient was not finite
  double outer = 0;           // the loss the base weights' gradient comes from
};

// Resets the fast weights from `gen` and runs the K inner steps (base weights frozen for the
// duration, restored after). Returns the inner losses and skips; the adapted A, B stay in `lora`.
StepLosses adapt_fast_weights(const Gpt& model, LoraSet& lora, const SftBatch& batch, int64_t mask_prefix,
                              const FocusftSettings& settings, Generator& gen);

// The FocuSFT step: adapt_fast_weights, then the outer pass with the adapted fast weights as
// constants; backward of outer_scale * loss into the base weights.
StepLosses focusft_step(const Gpt& model, LoraSet& lora, const SftBatch& batch, int64_t mask_prefix,
                        const FocusftSettings& settings, Generator& gen, double outer_scale = 1.0);

// The plain SFT step: the same outer pass without fast weights.
StepLosses sft_step(const Gpt& model, const SftBatch& batch, int64_t mask_prefix, double outer_scale = 1.0);

}  // namespace attnlab
