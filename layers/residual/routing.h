// Residual routing of a pre-norm transformer (spec: shared/specs/residuals_focusft_qttt.md
// Part 1): what each sublayer reads instead of (or on top of) the running residual stream.
//
// Sublayers s = 0 .. 2L-1 (even: attention of layer s/2, odd: its MLP), each computing
// u_s = f_s(h_s) (norm included) from its input h_s; e is the embedding.
//   standard       h_s = r_s, r_{s+1} = r_s + u_s, the head reads r_{2L}. (No router is built.)
//   delta_attnres  additive routing over the deltas (spec 1.3): h_s = r_s + gate_s sum_i a_i v_i,
//                  the stream r is still r_s + u_s and the head reads r_{2L}.
//     sublayer:    sources [e, u_0, ..., u_{s-1}] (e joins after the first attention, which
//                  routes over nothing and reads r_0 = e).
//     block:       block deltas (spec 1.3.2, the clean definition): at the first layer of block b,
//                  after its attention's routing, the sources gain e (b = 0) or
//                  Delta_{b-1} = r(start of block b) - r(start of block b-1).
//   attnres        replacement routing (Kimi, spec 1.2): h_s = sum_i a_i v_i, and the head reads
//                  one last routing over every source (its own query and gain, "final").
//     sublayer:    sources [e, u_0, ..., u_{s-1}].
//     block:       sources [e, b_1, ..., b_{n-1}] plus the current block's partial sum of u's
//                  (when it has one); a block's sum joins the sources when the block ends.
// Blocks are `block_size` layers (0: ceil(L / 4), four blocks, S2's default).
//
// Parameters, under "res." (spec 1.3.3 and the "Defaults attnlab uses"): per routing sublayer s
// "res.<s>.query" [D] (pseudo-query w_s, init 0: uniform weights; normal(0, 0.02) when the model
// has gates, since a zero query under a zero gate is a stationary point), "res.<s>.key_gain" [D] (the key
// RMSNorm gain g_s, init 1) and, for delta_attnres with gate on, "res.<s>.gate" [1] (init 0, so a
// model converted from a standard checkpoint computes exactly what the standard model did);
// attnres adds "res.final.query" and "res.final.key_gain". Sublayers that never route (the first
// attention in the delta modes) have none. Routing parameters are named so the trainer can give
// them their own learning rate (is_routing_parameter).
//
// Memory (spec 1.5): every source is one Variable held once; each routing op keeps references
// (attnres_route), never a stacked copy, so activation memory grows linearly in depth.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "layers/module.h"

namespace attnlab {

struct ResidualConfig {
  std::string mode = "standard";         // standard | attnres | delta_attnres
  std::string granularity = "sublayer";  // sublayer | block
  int64_t block_size = 0;                // layers per block (block granularity); 0 = ceil(layers / 4)
  bool gate = false;                     // delta_attnres only: a scalar gate per routing sublayer, init 0
  bool routed() const { return mode != "standard"; }
  // Layers per block for a model of `layers` layers.
  int64_t layers_per_block(int64_t layers) const;
  // ConfigError naming the field ("GptConfig: residual.block_size ...").
  void validate(int64_t layers) const;
};

// What one routing op did on a batch (eval-step diagnostics, spec 1.9).
struct RoutingStats {
  std::string name;           // "<s>" (the sublayer) or "final"
  std::string kind;           // "attn", "mlp" or "final"
  int64_t sources = 0;
  double max_weight = 0.0;    // mean over tokens of max_i a_i
  double entropy = 0.0;       // mean over tokens of -sum_i a_i log a_i (nats)
  std::vector<double> argmax_share;  // per source: share of tokens whose largest weight is on it
  double gate = 1.0;          // the gate's value (1 when the op has none)
};

// True for the router's parameters ("res.<...>"): the trainer's routing learning rate group.
bool is_routing_parameter(const std::string& name);

class ResidualRouter : public Module {
 public:
  ResidualRouter(const ResidualConfig& config, int64_t layers, int64_t d_model, DType dtype);
  const ResidualConfig& config() const { return config_; }
  // The spec's init: queries 0, gains 1, gates 0; with gates, queries ~ normal(0, 0.02) drawn
  // from `seed` (see routing.cpp: a zero query and a zero gate would never move).
  void init_parameters(uint64_t seed);

  // f(s, h) runs sublayer s on its input h and returns its output u_s [B, T, C].
  using Sublayer = std::function<Variable(int64_t s, const Variable& h)>;
  // Runs every sublayer from the embedding e under this routing; returns what the final norm
  // reads. `stats` (optional) receives one entry per routing op, in order.
  Variable run(const Variable& e, const Sublayer& f, std::vector<RoutingStats>* stats = nullptr) const;

 private:
  struct Slot {
    Variable w, g, gate;
  };
  // The routing op of slot `s` (a sublayer, or final = 2L) over `sources`; r undefined for attnres.
  Variable route(int64_t s, const std::vector<Variable>& sources, const Variable& r,
                 std::vector<RoutingStats>* stats) const;
  bool routes(int64_t s) const;

  ResidualConfig config_;
  int64_t layers_ = 0;
  std::vector<Slot> slots_;  // 2L sublayers, then final (attnres)
};

}  // namespace attnlab
