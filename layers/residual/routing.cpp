#include "layers/residual/routing.h"

#include <algorithm>
#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/residual/attnres/attnres.h"
#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab {

int64_t ResidualConfig::layers_per_block(int64_t layers) const {
  return block_size > 0 ? block_size : std::max<int64_t>(1, (layers + 3) / 4);
}

void ResidualConfig::validate(int64_t layers) const {
  AL_CHECK_CONFIG(mode == "standard" || mode == "attnres" || mode == "delta_attnres", "GptConfig: residual = '", mode,
                  "' is not known; valid: standard, attnres, delta_attnres");
  AL_CHECK_CONFIG(granularity == "sublayer" || granularity == "block", "GptConfig: residual.granularity = '",
                  granularity, "' is not known; valid: sublayer, block");
  AL_CHECK_CONFIG(block_size >= 0 && block_size <= std::max<int64_t>(layers, 1), "GptConfig: residual.block_size = ",
                  block_size, " must be in [0, layers = ", layers, "] (layers per block; 0 = ceil(layers / 4))");
  AL_CHECK_CONFIG(!gate || mode == "delta_attnres", "GptConfig: residual.gate applies to delta_attnres only; got residual = ",
                  mode, " with residual.gate = true");
}

bool is_routing_parameter(const std::string& name) { return name.rfind("res.", 0) == 0; }

ResidualRouter::ResidualRouter(const ResidualConfig& config, int64_t layers, int64_t d_model, DType dtype)
    : config_(config), layers_(layers) {
  config.validate(layers);
  AL_CHECK_CONFIG(config.routed(), "ResidualRouter: residual = standard needs no router");
  const int64_t n = 2 * layers + (config.mode == "attnres" ? 1 : 0);
  slots_.resize(static_cast<size_t>(n));
  for (int64_t s = 0; s < n; ++s) {
    if (!routes(s)) continue;
    const std::string p = s == 2 * layers ? "final" : std::to_string(s);
    Slot& slot = slots_[static_cast<size_t>(s)];
    slot.w = register_parameter(p + ".query", Tensor::zeros(Shape{d_model}, dtype));
    slot.g = register_parameter(p + ".key_gain", Tensor::ones(Shape{d_model}, dtype));
    if (config.gate) slot.gate = register_parameter(p + ".gate", Tensor::zeros(Shape{1}, dtype));
  }
}

// The delta modes' first attention routes over nothing (no source exists yet).
bool ResidualRouter::routes(int64_t s) const { return config_.mode == "attnres" || s > 0; }

void ResidualRouter::init_parameters(uint64_t seed) {
  NoGradGuard no_grad;
  Generator gen(seed);
  for (Slot& s : slots_) {
    if (!s.w.defined()) continue;
    // With a zero gate, w = 0 would be a stationary point of the sublayer routing under a
    // pre-norm: the uniform mix of [e, u_0, ..., u_{s-1}] is r_s / N, parallel to the sublayer's
    // input, which its norm ignores, so d loss / d gate = <dh, r_s> / N = 0 and (gate = 0) w and
    // g get no gradient either. A small random query (the released code's 0.02) breaks it.
    if (config_.gate)
      fill_normal(s.w.mutable_data(), gen, 0.0, 0.02);
    else
      s.w.mutable_data().zero_();
    s.g.mutable_data().fill_(1.0);
    if (s.gate.defined()) s.gate.mutable_data().zero_();
  }
}

namespace {

// Sources are read in place by every later routing op: keep them contiguous so none is packed
// per op.
Variable keep(const Variable& v) { return v.data().is_contiguous() ? v : contiguous(v); }

RoutingStats stats_of(const Tensor& a_dev, const std::string& name, const std::string& kind, double gate) {
  const Tensor a = a_dev.to(Device::cpu()).to(DType::f64).contiguous();
  const int64_t N = a.size(0), BT = a.numel() / std::max<int64_t>(N, 1);
  const double* p = a.data<double>();
  RoutingStats st;
  st.name = name;
  st.kind = kind;
  st.sources = N;
  st.gate = gate;
  st.argmax_share.assign(static_cast<size_t>(N), 0.0);
  for (int64_t t = 0; t < BT; ++t) {
    double mx = -1, h = 0;
    int64_t arg = 0;
    for (int64_t i = 0; i < N; ++i) {
      const double x = p[i * BT + t];
      if (x > mx) mx = x, arg = i;
      if (x > 0) h -= x * std::log(x);
    }
    st.max_weight += mx;
    st.entropy += h;
    st.argmax_share[static_cast<size_t>(arg)] += 1;
  }
  const double inv = 1.0 / static_cast<double>(std::max<int64_t>(BT, 1));
  st.max_weight *= inv;
  st.entropy *= inv;
  for (double& x : st.argmax_share) x *= inv;
  return st;
}

}  // namespace

Variable ResidualRouter::route(int64_t s, const std::vector<Variable>& sources, const Variable& r,
                               std::vector<RoutingStats>* stats) const {
  const Slot& slot = slots_.at(static_cast<size_t>(s));
  AL_ASSERT(slot.w.defined(), "ResidualRouter: sublayer ", s, " has no routing parameters");
  const AttnResResult res = attnres_route(sources, r, slot.w, slot.g, slot.gate);
  if (stats) {
    const bool final = s == 2 * layers_;
    const double gate = slot.gate.defined() ? slot.gate.data().to(Device::cpu()).to(DType::f64).item<double>() : 1.0;
    stats->push_back(stats_of(res.a, final ? "final" : std::to_string(s), final ? "final" : (s % 2 ? "mlp" : "attn"),
                              gate));
  }
  return res.out;
}

Variable ResidualRouter::run(const Variable& e0, const Sublayer& f, std::vector<RoutingStats>* stats) const {
  const int64_t L = layers_, S = config_.layers_per_block(L);
  const Variable e = keep(e0);
  const bool block = config_.granularity == "block";
  std::vector<Variable> src;
  if (config_.mode == "delta_attnres") {
    Variable r = e, block_start = e;
    for (int64_t s = 0; s < 2 * L; ++s) {
      const Variable h = src.empty() ? r : route(s, src, r, stats);
      if (!block) {
        if (s == 0) src.push_back(e);
      } else if (s % 2 == 0 && (s / 2) % S == 0) {
        // The first layer of a block, after its attention's routing: the block delta joins.
        src.push_back(s == 0 ? e : keep(sub(r, block_start)));
        block_start = r;
      }
      const Variable u = keep(f(s, h));
      r = add(r, u);
      if (!block) src.push_back(u);
    }
    return r;
  }
  // attnres: replacement routing.
  src.push_back(e);
  Variable partial;
  for (int64_t s = 0; s < 2 * L; ++s) {
    std::vector<Variable> sources = src;
    if (block && partial.defined()) sources.push_back(partial);
    const Variable u = keep(f(s, route(s, sources, Variable(), stats)));
    if (!block) {
      src.push_back(u);
      continue;
    }
    partial = partial.defined() ? add(partial, u) : u;
    if ((s + 1) % (2 * S) == 0 || s + 1 == 2 * L) {
      src.push_back(partial);
      partial = Variable();
    }
  }
  return route(2 * L, src, Variable(), stats);
}

}  // namespace attnlab
