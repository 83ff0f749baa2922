#include "train/residual_train.h"

#include "lib/error.h"
#include "train/checkpoint.h"
#include "train/model_io.h"

namespace attnlab {

void read_residual_recipe(Recipe& r, GptConfig& m) {
  ResidualConfig& c = m.residual;
  c.mode = r.get_string("model.residual", c.mode);
  AL_CHECK_CONFIG(c.mode == "standard" || c.mode == "attnres" || c.mode == "delta_attnres", "recipe ", r.source(),
                  ": model.residual = '", c.mode, "' is not known; valid: standard, attnres, delta_attnres");
  c.granularity = r.get_string("model.residual.granularity", c.granularity);
  AL_CHECK_CONFIG(c.granularity == "sublayer" || c.granularity == "block", "recipe ", r.source(),
                  ": model.residual.granularity = '", c.granularity, "' is not known; valid: sublayer, block");
  c.block_size = r.get_int("model.residual.block_size", c.block_size);
  AL_CHECK_CONFIG(c.block_size >= 0 && c.block_size <= m.layers, "recipe ", r.source(),
                  ": model.residual.block_size = ", c.block_size, " must be in [0, model.layers = ", m.layers,
                  "] (layers per block; 0 = ceil(layers / 4))");
  c.gate = r.get_bool("model.residual.gate", c.mode == "delta_attnres");
  AL_CHECK_CONFIG(!c.gate || c.mode == "delta_attnres", "recipe ", r.source(),
                  ": model.residual.gate applies to delta_attnres only; model.residual = ", c.mode);
}

// ---- two parameter groups ---------------------------------------------------------------------

namespace {
std::vector<Variable> joined(const Optimizer& a, const Optimizer& b) {
  std::vector<Variable> p = a.params();
  p.insert(p.end(), b.params().begin(), b.params().end());
  return p;
}
}  // namespace

TwoGroupOptimizer::TwoGroupOptimizer(std::unique_ptr<Optimizer> base, std::unique_ptr<Optimizer> routing,
                                     double routing_scale)
    : Optimizer(joined(*base, *routing)), base_(std::move(base)), routing_(std::move(routing)), scale_(routing_scale) {}

void TwoGroupOptimizer::step() {
  base_->set_lr(lr());
  routing_->set_lr(lr() * scale_);
  base_->step();
  routing_->step();
}

std::map<std::string, Tensor> TwoGroupOptimizer::state() const {
  std::map<std::string, Tensor> s;
  for (const auto& [k, v] : base_->state()) s["base." + k] = v;
  for (const auto& [k, v] : routing_->state()) s["routing." + k] = v;
  return s;
}

void TwoGroupOptimizer::load_state(const std::map<std::string, Tensor>& state) {
  std::map<std::string, Tensor> b, r;
  for (const auto& [k, v] : state) {
    if (k.rfind("base.", 0) == 0)
      b[k.substr(5)] = v;
    else if (k.rfind("routing.", 0) == 0)
      r[k.substr(8)] = v;
    else
      detail::throw_error<IoError>("optimizer state: key '", k, "' belongs to neither the base nor the routing group");
  }
  base_->load_state(b);
  routing_->load_state(r);
}

// ---- conversion -------------------------------------------------------------------------------

std::string init_from_checkpoint(Gpt& model, const std::string& path, std::ostream& out) {
  const std::string file = resolve_checkpoint(path);
  Checkpoint ck = load_checkpoint(file, /*with_state=*/false);
  AL_CHECK_CONFIG(ck.model_meta.count("config"), "--init.from: '", file, "' has no attnlab model config");
  const GptConfig src = gpt_config_from_json(ck.model_meta["config"], file);
  GptConfig a = src, b = model.config();
  a.residual = b.residual = ResidualConfig{};
  a.dropout = b.dropout = 0.0;
  AL_CHECK_CONFIG(gpt_config_json(a) == gpt_config_json(b), "--init.from: checkpoint ", file,
                  " holds a model with config ", gpt_config_json(src), "; the recipe asks for ",
                  gpt_config_json(model.config()), " (only model.residual* and model.dropout may differ)");
  std::map<std::string, Tensor> state = model.state_dict();
  for (const auto& [name, t] : ck.weights)
    AL_CHECK_CONFIG(state.count(name), "--init.from: checkpoint ", file, " has '", name,
                    "', which the model lacks (model.residual = ", model.config().residual.mode, ", checkpoint's = ",
                    src.residual.mode, ")");
  int64_t fresh = 0;
  for (auto& [name, t] : state) {
    const auto it = ck.weights.find(name);
    if (it != ck.weights.end()) {
      t = it->second;
      continue;
    }
    AL_CHECK_CONFIG(is_routing_parameter(name), "--init.from: checkpoint ", file, " lacks the model's '", name, "'");
    ++fresh;
  }
  try {
    model.load_state_dict(state);
  } catch (const Error& e) {
    detail::throw_error<ConfigError>("--init.from: checkpoint ", file, " does not fit the model: ", e.what());
  }
  out << "init.from " << file << ": " << ck.weights.size() << " tensors loaded";
  if (fresh > 0) out << ", " << fresh << " new routing parameters at their init (key gains 1, gates 0)";
  out << "\n";
  const ResidualConfig& rc = model.config().residual;
  if (!src.residual.routed() && rc.routed() && !(rc.mode == "delta_attnres" && rc.gate))
    out << "note: only delta_attnres with model.residual.gate = true starts equal to the standard model it came from\n";
  return file;
}

// ---- diagnostics ------------------------------------------------------------------------------

nlohmann::json routing_stats_json(const std::vector<RoutingStats>& stats) {
  nlohmann::json ops = nlohmann::json::array();
  for (const RoutingStats& s : stats)
    ops.push_back({{"op", s.name},
                   {"kind", s.kind},
                   {"sources", s.sources},
                   {"max_weight", s.max_weight},
                   {"entropy", s.entropy},
                   {"argmax_share", s.argmax_share},
                   {"gate", s.gate}});
  return ops;
}

}  // namespace attnlab
