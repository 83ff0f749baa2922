// What `attnlab train` adds for residual routing (layers/residual/routing.h): the recipe keys,
// the routing parameters' learning rate group, conversion from a checkpoint (--init.from) and
// the eval-step routing diagnostics.
//
// Recipe keys:
//   model.residual              standard | attnres | delta_attnres (default standard)
//   model.residual.granularity  sublayer | block (default sublayer)
//   model.residual.block_size   layers per block, 0 = ceil(layers / 4) (default 0)
//   model.residual.gate         delta_attnres: a zero-initialised scalar gate per routing sublayer
//                               (default true for delta_attnres; attnres has none)
//   optim.routing_lr            peak learning rate of the res.* parameters (default optim.lr); the
//                               schedule scales both groups alike
//   init.from                   a checkpoint (run directory, checkpoints directory or model file)
//                               whose weights start the run; parameters the checkpoint lacks must
//                               be routing parameters and keep their init (queries 0, gains 1,
//                               gates 0), so a standard checkpoint converted to delta_attnres
//                               computes exactly what it did.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

#include "layers/gpt.h"
#include "optim/optimizer.h"
#include "train/recipe.h"

namespace attnlab {

// Reads the model.residual keys into m.residual; ConfigErrors name the key.
void read_residual_recipe(Recipe& r, GptConfig& m);

// An optimizer over two parameter groups: the base one at the scheduled lr, the routing one at
// lr * routing_scale. State keys "base.<k>" and "routing.<k>".
class TwoGroupOptimizer : public Optimizer {
 public:
  TwoGroupOptimizer(std::unique_ptr<Optimizer> base, std::unique_ptr<Optimizer> routing, double routing_scale);
  void step() override;
  std::map<std::string, Tensor> state() const override;
  void load_state(const std::map<std::string, Tensor>& state) override;

 private:
  std::unique_ptr<Optimizer> base_, routing_;
  double scale_;
};

// Loads `path`'s weights into `model` (see init.from above); the checkpoint's config must equal
// the model's but for the residual routing (and dropout). Returns the checkpoint file.
std::string init_from_checkpoint(Gpt& model, const std::string& path, std::ostream& out);

// Per routing op: {"op", "kind", "sources", "max_weight", "entropy", "argmax_share", "gate"}.
nlohmann::json routing_stats_json(const std::vector<RoutingStats>& stats);

}  // namespace attnlab
