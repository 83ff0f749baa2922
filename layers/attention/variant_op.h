// The core op of every attention variant, described by name so that one generic test suite, the
// `attnlab op` command and the benchmarks drive every variant the same way.
//
// A variant folder layers/attention/<name>/ registers one AttentionOpSpec per public form (e.g.
// sigmoid registers "sigmoid", "sigmoid_neglog_visible" and "sigmoid_neglogn") from its
// register_attention_<name>(OpRegistry&, AttentionOpRegistry&), and usually an OpInfo made by
// attention_op_info() so the generic gradcheck, misuse and CUDA parity tests cover it too.
//
// Every call: q [B, H, T, Dk], k [B, H, S, Dk], v [B, H, S, Dv] (query i at absolute position
// S - T + i, see common.h), the variant's extra inputs in the order its spec lists them, a mask
// and string options; the result is out [B, H, T, Dv] plus named auxiliary tensors (the final
// carried state, an updated buffer) that carry no gradient, and named differentiable extra
// outputs (KDA's final state, which a test-time-training loop or truncated BPTT differentiates).
//
// Recurrent variants (AttentionOpSpec::recurrent, e.g. KDA) have no key axis of their own: k and v
// have T rows like q (S = T), the op is causal by construction and takes no mask (only the
// default plain causal mask is accepted), and everything before position 0 is the carried state.
//
// Carried state: a variant whose rows depend on earlier rows (InfSA's prefix energy, the
// linear-InfSA running mean query) lists {input, aux output} pairs in `carried`. Running
// positions [0, S - T) and then [S - T, S) with the first call's aux outputs as the second
// call's inputs must equal one call over [0, S) (tests/layers/variants/generic_test.cpp checks
// it). An absent carried input means "nothing before position 0": zeros. The output side of a
// pair is looked up in `aux` first, then in `outputs`. A recurrent variant splits q, k, v and
// every query-indexed extra at the same row instead.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "autograd/registry.h"
#include "autograd/variable.h"
#include "layers/attention/common.h"

namespace attnlab {

// The sizes of one call. Dm is the model width for inputs taken from the hidden state (affine's
// x [B, T, Dm]).
struct AttnDims {
  int64_t B = 1, H = 1, T = 1, S = 1, Dk = 1, Dv = 1, Dm = 8;
  std::string str() const;
};

struct AttnInputSpec {
  std::string name = {};  // the tensor's name in a case file; its gradient is "d" + name
  std::function<Shape(const AttnDims&)> shape = {};
  bool differentiable = true;
  // The axis indexed by query (row) position, or -1. The causality test perturbs this input at
  // rows >= t along with q, k, v at positions >= t.
  int query_axis = -1;
  // Random test values are uniform in [low, high].
  double low = -1.0, high = 1.0;
  // May be left out of a call (an undefined Variable); the op then uses its default.
  bool optional = false;
};

struct AttnOpArgs {
  Variable q = {}, k = {}, v = {};
  std::vector<Variable> extras = {};  // in AttentionOpSpec::extras order; undefined = left out
  AttentionMask mask = {};
  std::map<std::string, std::string> options = {};  // `--opt key=value`; keys from AttentionOpSpec::options

  // The extra input `name` (undefined when left out); ConfigError for a name the spec lacks.
  const Variable& extra(const struct AttentionOpSpec& spec, std::string_view name) const;
  // Option `key` parsed as a number / taken as a string, or `fallback` when not given;
  // ConfigError naming the op and key when the value does not parse.
  double number(std::string_view op, std::string_view key, double fallback) const;
  std::string text(std::string_view key, std::string fallback) const;
};

struct AttnOpResult {
  Variable out = {};
  std::map<std::string, Tensor> aux = {};  // no gradient: carried state, updated buffers
  // Differentiable extra outputs (AttentionOpSpec::outputs names them): a caller may backpropagate
  // an upstream gradient through each (`attnlab op` reads it as "d" + name).
  std::map<std::string, Variable> outputs = {};

  // The carried output `name`: aux[name], else outputs[name].data(); ConfigError when neither has it.
  Tensor carried(std::string_view name) const;
};

struct AttentionOpSpec {
  std::string name = {};         // `attnlab op NAME`
  std::string description = {};  // one line: the maths and the extras, for `attnlab op --list`
  std::vector<AttnInputSpec> extras = {};
  std::vector<std::pair<std::string, std::string>> carried = {};  // {input, aux output}
  // Options `--opt key=value` the op understands, each "key: meaning (default)".
  std::vector<std::string> options = {};
  // Option sets the generic tests run every case under (the default set first).
  std::vector<std::map<std::string, std::string>> test_options = {{}};
  bool prefix_mask = true;  // supports AttentionMask::prefix > 0
  bool non_causal = true;   // supports AttentionMask::causal = false
  bool cuda = false;        // has CUDA kernels (fused runs on CUDA tensors)
  // k and v have T rows like q (no S != T), no mask is accepted but the default causal one, and
  // a continuation splits q, k, v and the query-indexed extras at the same row (see above).
  bool recurrent = false;
  // The names of the differentiable extra outputs (AttnOpResult::outputs), in the order the
  // registry sample returns them after out (std::map order: sorted by name).
  std::vector<std::string> outputs = {};
  // Adjusts random test inputs after they are drawn (e.g. L2-normalises the rows of q and k, as the
  // model does before a delta-rule op); optional.
  std::function<void(AttnOpArgs&)> adjust_random_args = {};
  std::function<AttnOpResult(const AttnOpArgs&)> fused = {}, reference = {};

  const AttnInputSpec* find(std::string_view input) const;
  size_t index_of(std::string_view input) const;  // ConfigError when absent
};

class AttentionOpRegistry {
 public:
  void add(AttentionOpSpec spec);
  const std::vector<AttentionOpSpec>& specs() const { return specs_; }
  // ConfigError listing the names when `name` is unknown.
  const AttentionOpSpec& get(std::string_view name) const;

 private:
  std::vector<AttentionOpSpec> specs_;
};

// Every variant's specs (registered with all_ops(), layers/all_ops.h).
const AttentionOpRegistry& attention_ops();

// Random inputs for a call of `spec` at `dims` in f64: q, k, v ~ N(0, 1) and each extra uniform
// in its [low, high]; optional extras are included; then spec.adjust_random_args. A recurrent
// spec gets k, v with T rows (dims.S is not used). Deterministic in `seed`.
AttnOpArgs random_attention_args(const AttentionOpSpec& spec, const AttnDims& dims, const AttentionMask& mask,
                                 uint64_t seed, std::map<std::string, std::string> options = {});

// One registry sample (generic gradcheck and CUDA parity tests) of `spec` at `dims`: inputs
// q, k, v, then the extras; only the differentiable ones get gradients. Its run returns out, then
// the differentiable extra outputs in name order, so gradcheck and parity cover them too.
OpSample attention_op_sample(const AttentionOpSpec& spec, const AttnDims& dims, const AttentionMask& mask,
                             uint64_t seed, std::map<std::string, std::string> options = {});

// An OpInfo named spec.name + "_attention" with the given samples (small, f64 gradcheck) and
// parity samples (larger, CUDA), and misuses.
OpInfo attention_op_info(const AttentionOpSpec& spec, std::vector<OpSample> samples,
                         std::vector<OpSample> parity_samples = {}, std::vector<OpMisuse> misuses = {});

}  // namespace attnlab
