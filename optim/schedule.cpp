#include "optim/schedule.h"

#include <cmath>
#include <numbers>

#include "lib/error.h"

namespace attnlab {

void WarmupCosine::validate() const {
  AL_CHECK_CONFIG(peak > 0 && min_lr >= 0 && min_lr <= peak, "lr schedule: need 0 <= min_lr <= lr and lr > 0; got lr=",
                  peak, ", min_lr=", min_lr);
  AL_CHECK_CONFIG(total > 0 && warmup >= 0 && warmup <= total, "lr schedule: need 0 <= warmup <= steps; got warmup=",
                  warmup, ", steps=", total);
}

double WarmupCosine::operator()(int64_t step) const {
  if (step < warmup) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (step >= total) return min_lr;
  const double span = static_cast<double>(std::max<int64_t>(total - warmup, 1));
  const double progress = static_cast<double>(step - warmup) / span;
  return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace attnlab
