#include "layers/attention/variant_op.h"

#include <cstdio>
#include <cstdlib>
#include <memory>

#include "lib/error.h"

namespace attnlab {

std::string AttnDims::str() const {
  char buf[128];
  std::snprintf(buf, sizeof buf, "B=%lld H=%lld T=%lld S=%lld Dk=%lld Dv=%lld Dm=%lld", static_cast<long long>(B),
                static_cast<long long>(H), static_cast<long long>(T), static_cast<long long>(S),
                static_cast<long long>(Dk), static_cast<long long>(Dv), static_cast<long long>(Dm));
  return buf;
}

Tensor AttnOpResult::carried(std::string_view name) const {
  const std::string key(name);
  if (const auto it = aux.find(key); it != aux.end()) return it->second;
  if (const auto it = outputs.find(key); it != outputs.end()) return it->second.data();
  throw ConfigError(detail::concat("attention op result has no output '", name, "'"));
}

const AttnInputSpec* AttentionOpSpec::find(std::string_view input) const {
  for (const AttnInputSpec& e : extras)
    if (e.name == input) return &e;
  return nullptr;
}

size_t AttentionOpSpec::index_of(std::string_view input) const {
  for (size_t i = 0; i < extras.size(); ++i)
    if (extras[i].name == input) return i;
  throw ConfigError(detail::concat("attention op '", name, "' has no input '", input, "'"));
}

const Variable& AttnOpArgs::extra(const AttentionOpSpec& spec, std::string_view name) const {
  const size_t i = spec.index_of(name);
  static const Variable kAbsent;
  return i < extras.size() ? extras[i] : kAbsent;
}

double AttnOpArgs::number(std::string_view op, std::string_view key, double fallback) const {
  const auto it = options.find(std::string(key));
  if (it == options.end()) return fallback;
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  AL_CHECK_CONFIG(!it->second.empty() && end && *end == '\0', op, ": option ", key, " needs a number; got '",
                  it->second, "'");
  return v;
}

std::string AttnOpArgs::text(std::string_view key, std::string fallback) const {
  const auto it = options.find(std::string(key));
  return it == options.end() ? fallback : it->second;
}

void AttentionOpRegistry::add(AttentionOpSpec spec) {
  for (const AttentionOpSpec& s : specs_)
    AL_CHECK_CONFIG(s.name != spec.name, "attention op '", spec.name, "' registered twice");
  specs_.push_back(std::move(spec));
}

const AttentionOpSpec& AttentionOpRegistry::get(std::string_view name) const {
  std::string names;
  for (const AttentionOpSpec& s : specs_) {
    if (s.name == name) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw ConfigError(detail::concat("unknown attention op '", name, "'; known: ", names));
}

AttnOpArgs random_attention_args(const AttentionOpSpec& spec, const AttnDims& d, const AttentionMask& mask,
                                 uint64_t seed, std::map<std::string, std::string> options) {
  AttnOpArgs a;
  a.q = Variable(sample_randn(Shape{d.B, d.H, d.T, d.Dk}, seed));
  const int64_t S = spec.recurrent ? d.T : d.S;  // a recurrent op's keys follow its queries
  a.k = Variable(sample_randn(Shape{d.B, d.H, S, d.Dk}, seed + 1));
  a.v = Variable(sample_randn(Shape{d.B, d.H, S, d.Dv}, seed + 2));
  for (size_t i = 0; i < spec.extras.size(); ++i) {
    const AttnInputSpec& e = spec.extras[i];
    a.extras.emplace_back(sample_uniform(e.shape(d), seed + 3 + i, e.low, e.high));
  }
  a.mask = mask;
  a.options = std::move(options);
  if (spec.adjust_random_args) spec.adjust_random_args(a);
  return a;
}

OpSample attention_op_sample(const AttentionOpSpec& spec, const AttnDims& dims, const AttentionMask& mask,
                             uint64_t seed, std::map<std::string, std::string> options) {
  const AttnOpArgs a = random_attention_args(spec, dims, mask, seed, options);
  OpSample s;
  char label[64];
  std::snprintf(label, sizeof label, " %s prefix=%lld", mask.causal ? "causal" : "full",
                static_cast<long long>(mask.prefix));
  s.label = dims.str() + label;
  for (const auto& [k, v] : options) s.label += " " + k + "=" + v;
  s.inputs = {a.q.data(), a.k.data(), a.v.data()};
  s.grad_inputs = {true, true, true};
  for (size_t i = 0; i < spec.extras.size(); ++i) {
    s.inputs.push_back(a.extras[i].data());
    s.grad_inputs.push_back(spec.extras[i].differentiable);
  }
  auto sp = std::make_shared<const AttentionOpSpec>(spec);
  s.run = [sp, mask, options](const std::vector<Variable>& in) {
    AttnOpArgs call;
    call.q = in[0];
    call.k = in[1];
    call.v = in[2];
    call.extras.assign(in.begin() + 3, in.end());
    call.mask = mask;
    call.options = options;
    const AttnOpResult r = sp->fused(call);
    std::vector<Variable> outs{r.out};
    for (const auto& [name, v] : r.outputs) outs.push_back(v);
    return outs;
  };
  return s;
}

OpInfo attention_op_info(const AttentionOpSpec& spec, std::vector<OpSample> samples,
                         std::vector<OpSample> parity_samples, std::vector<OpMisuse> misuses) {
  OpInfo info;
  info.name = spec.name + "_attention";
  info.samples = [samples] { return samples; };
  info.misuses = [misuses] { return misuses; };
  info.cuda = spec.cuda;
  if (!parity_samples.empty()) info.parity_samples = [parity_samples] { return parity_samples; };
  return info;
}

}  // namespace attnlab
