// Gradient checking in float64 by central differences: d f / d x_i ~ (f(x + eps e_i) - f(x - eps e_i)) / 2 eps.
//
// Small problems (inputs x outputs up to `full_jacobian_limit` entries) compare the whole
// Jacobian, one backward per output element against one pair of evaluations per input element.
// Larger ones compare random projections u^T J v with unit u, v: a backward with gradient u
// dotted with v, against (u.f(x + eps v) - u.f(x - eps v)) / 2 eps.
// An entry passes when |analytic - numeric| <= atol + rtol * |numeric|.
#pragma once

#include <string>
#include <vector>

#include "autograd/registry.h"

namespace attnlab {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-5;
  int64_t full_jacobian_limit = 20000;
  int projections = 6;
  uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  bool full_jacobian = true;
  int64_t checked = 0;       // Jacobian entries or projections compared
  double max_abs_err = 0.0;  // max |analytic - numeric|
  double max_rel_err = 0.0;  // max |analytic - numeric| / |numeric| over entries with |numeric| > atol
  std::string worst;         // where the largest violation (or error) was
};

// f maps Variables to Variables; inputs must be f64 where grad_inputs (empty = all floating) says.
GradcheckResult gradcheck(const OpFn& f, const std::vector<Tensor>& inputs, std::vector<bool> grad_inputs = {},
                          const GradcheckOptions& options = {});

// Every sample of one registered op, gradchecked and summarised.
struct OpGradcheckSummary {
  std::string op;
  size_t samples = 0;
  bool ok = true;
  int64_t checked = 0;
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;
  std::vector<std::string> failures;  // "sample <label>: <where>"
  // One aligned line: name, ok/FAIL, samples, entries checked, max abs and rel errors.
  std::string line() const;
};

OpGradcheckSummary gradcheck_op(const OpInfo& op, const GradcheckOptions& options = {});

}  // namespace attnlab
