// Learning-rate schedules, as a pure function of the step (so a resumed run needs no state).
//   warmup_cosine: linear warmup from 0 to `peak` over `warmup` steps, then cosine decay to
//   `min_lr` at `total` steps (and `min_lr` after). Step counts from 0.
#pragma once

#include <cstdint>

namespace attnlab {

struct WarmupCosine {
  double peak = 1e-3;
  double min_lr = 0.0;
  int64_t warmup = 0;
  int64_t total = 1;

  // Throws ConfigError unless 0 <= min_lr <= peak, 0 <= warmup <= total and total > 0.
  void validate() const;
  double operator()(int64_t step) const;
};

}  // namespace attnlab
