// The SFT and FocuSFT micro-batch steps (train/focusft.h).
#include "train/focusft.h"

#include <cmath>

#include "autograd/ops.h"
#include "layers/param_override.h"
#include "lib/error.h"
#include "optim/optimizer.h"
#include "optim/sgd.h"

namespace attnlab {

void FocusftSettings::validate() const {
  AL_CHECK_CONFIG(inner_steps >= 1, "focusft.inner_steps must be >= 1; got ", inner_steps);
  AL_CHECK_CONFIG(std::isfinite(inner_lr) && inner_lr > 0, "focusft.inner_lr must be > 0; got ", inner_lr);
  AL_CHECK_CONFIG(std::isfinite(inner_clip) && inner_clip > 0, "focusft.inner_clip must be > 0; got ", inner_clip);
}

Variable answer_loss(const Gpt& model, const SftBatch& batch, int64_t mask_prefix) {
  const Variable logits = model.forward(Variable(batch.batch.x.to(model.device())), nullptr, mask_prefix);
  return cross_entropy(logits, Variable(batch.batch.y.to(model.device())), kIgnoreTarget);
}

StepLosses adapt_fast_weights(const Gpt& model, LoraSet& lora, const SftBatch& batch, int64_t mask_prefix,
                              const FocusftSettings& settings, Generator& gen) {
  StepLosses out;
  lora.reset(gen);
  lora.set_requires_grad(true);
  // Gradients with respect to the fast weights only: the base weights record no graph and get no
  // .grad (the layers below the first adapted one run graph-free by themselves).
  const RequiresGradGuard frozen(model.parameters(), false);
  std::vector<Variable> fast = lora.parameters();
  // Plain SGD (no momentum, no decay) on the fast weights only.
  Sgd sgd(fast, SgdConfig{.lr = settings.inner_lr, .momentum = 0.0, .weight_decay = 0.0});
  for (int64_t k = 0; k < settings.inner_steps; ++k) {
    for (Variable& p : fast) p.zero_grad();
    Variable loss;
    {
      const ParameterOverrides overrides = lora.overrides();
      const OverrideScope scope(overrides);
      loss = answer_loss(model, batch, mask_prefix);
    }
    const double value = loss.data().item<double>();
    out.inner.push_back(value);
    if (!std::isfinite(value)) {
      ++out.inner_skipped;
      continue;
    }
    loss.backward();
    // g <- g min(1, clip / |g|) per tensor; a non-finite norm anywhere skips the step (the
    // gradients it scaled are zeroed before the next one).
    bool finite = true;
    for (const Variable& p : fast)
      if (p.grad().defined() && !std::isfinite(clip_grad_norm({p}, settings.inner_clip))) finite = false;
    if (!finite) {
      ++out.inner_skipped;
      continue;
    }
    sgd.step();  // p <- p - inner_lr g, in place
  }
  for (Variable& p : fast) p.zero_grad();
  return out;
}

StepLosses focusft_step(const Gpt& model, LoraSet& lora, const SftBatch& batch, int64_t mask_prefix,
                        const FocusftSettings& settings, Generator& gen, double outer_scale) {
  StepLosses out = adapt_fast_weights(model, lora, batch, mask_prefix, settings, gen);
  // The adapted fast weights are constants of the outer pass: W_eff = W + (a constant), so the
  // graph reaches the base weights only.
  lora.set_requires_grad(false);
  const ParameterOverrides overrides = lora.overrides();
  const OverrideScope scope(overrides);
  const Variable loss = answer_loss(model, batch, mask_prefix);
  out.outer = loss.data().item<double>();
  mul_scalar(loss, outer_scale).backward();
  return out;
}

StepLosses sft_step(const Gpt& model, const SftBatch& batch, int64_t mask_prefix, double outer_scale) {
  StepLosses out;
  const Variable loss = answer_loss(model, batch, mask_prefix);
  out.outer = loss.data().item<double>();
  mul_scalar(loss, outer_scale).backward();
  return out;
}

}  // namespace attnlab
