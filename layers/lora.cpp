#include "layers/lora.h"

#include <cmath>
#include <regex>
#include <set>

#include "autograd/ops.h"
#include "lib/error.h"

namespace attnlab {

void LoraConfig::validate() const {
  AL_CHECK_CONFIG(rank >= 1, "lora: rank must be >= 1; got ", rank);
  AL_CHECK_CONFIG(std::isfinite(alpha) && alpha > 0, "lora: alpha must be > 0; got ", alpha);
  AL_CHECK_CONFIG(top_fraction > 0 && top_fraction <= 1, "lora: top_fraction must be in (0, 1]; got ", top_fraction);
  AL_CHECK_CONFIG(!targets.empty(), "lora: targets must name at least one projection (mlp, attn, mlp.c_fc, ...)");
}

namespace {

// Whether block-relative weight path `rel` ("mlp.c_fc.weight") is adapted by `target`.
bool matches(const std::string& target, const std::string& rel) {
  if (target == "mlp" || target == "attn") return rel.rfind(target + ".", 0) == 0;
  return rel == target + ".weight";
}

}  // namespace

LoraSet::LoraSet(const Gpt& model, const LoraConfig& config) {
  config.validate();
  const int64_t L = model.config().layers;
  first_layer_ = static_cast<int64_t>(std::floor(static_cast<double>(L) * (1.0 - config.top_fraction) + 1e-9));
  first_layer_ = std::min(first_layer_, L - 1);
  scale_ = config.alpha / static_cast<double>(config.rank);
  const std::regex block_weight(R"(h\.(\d+)\.(.+\.weight))");
  std::set<std::string> used, available;
  for (const auto& [name, w] : model.named_parameters()) {
    std::smatch m;
    if (!std::regex_match(name, m, block_weight) || w.ndim() != 2) continue;
    const int64_t layer = std::stoll(m[1].str());
    const std::string rel = m[2].str();
    // Linear weights only (2-D under attn or mlp): the layers that read effective().
    if (rel.rfind("attn.", 0) != 0 && rel.rfind("mlp.", 0) != 0) continue;
    if (layer < first_layer_) continue;
    available.insert(rel.substr(0, rel.size() - 7));
    for (const std::string& t : config.targets)
      if (matches(t, rel)) {
        used.insert(t);
        const int64_t out = w.size(0), in = w.size(1);
        Adapter a{name, w, Variable(Tensor::zeros(Shape{config.rank, in}, w.dtype(), w.device()), true),
                  Variable(Tensor::zeros(Shape{out, config.rank}, w.dtype(), w.device()), true)};
        const std::string base = name.substr(0, name.size() - 7);  // without ".weight"
        params_.emplace_back(base + ".lora_A", a.a);
        params_.emplace_back(base + ".lora_B", a.b);
        adapters_.push_back(std::move(a));
        break;
      }
  }
  for (const std::string& t : config.targets) {
    if (used.count(t)) continue;
    std::string list;
    for (const std::string& a : available) list += (list.empty() ? "" : ", ") + a;
    throw ConfigError("lora: target '" + t + "' matches no linear weight of layers " + std::to_string(first_layer_) +
                      ".." + std::to_string(L - 1) + "; there are: mlp, attn, " + list);
  }
}

void LoraSet::reset(Generator& gen) {
  for (Adapter& a : adapters_) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.a.size(1)));
    Tensor draw = Tensor::empty(a.a.shape(), a.a.dtype());
    fill_uniform(draw, gen, -bound, bound);
    a.a.mutable_data().copy_(draw.to(a.a.device()));
    a.b.mutable_data().zero_();
    a.a.zero_grad();
    a.b.zero_grad();
  }
}

ParameterOverrides LoraSet::overrides() const {
  ParameterOverrides o;
  for (const Adapter& a : adapters_) o.set(a.weight, add(a.weight, mul_scalar(matmul(a.b, a.a), scale_)));
  return o;
}

std::vector<Variable> LoraSet::parameters() const {
  std::vector<Variable> out;
  for (const auto& [name, p] : params_) out.push_back(p);
  return out;
}

void LoraSet::set_requires_grad(bool on) {
  for (auto& [name, p] : params_) p.set_requires_grad(on);
}

std::vector<std::string> LoraSet::adapted() const {
  std::vector<std::string> out;
  for (const Adapter& a : adapters_) out.push_back(a.name);
  return out;
}

}  // namespace attnlab
