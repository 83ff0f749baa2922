// Position information for a transformer.
//
// Learned absolute positions (GPT-2's wpe): a table weight [context, C]; positions
// [offset, offset + T) give rows weight[offset : offset + T] [T, C], added to the token
// embeddings [B, T, C] by broadcasting.
//
// Rotary positions (RoPE): q and k [B, H, T, D] rotated by the rope op
// (autograd/ops/rope/rope.h: half-split pairs (x[i], x[i + D/2]), angle pos * base^(-2i/D)).
// rope_reference composes the same maths from autograd primitives, as a test oracle.
#pragma once

#include <vector>

#include "layers/module.h"
#include "lib/rng.h"

namespace attnlab {

class LearnedPositions : public Module {
 public:
  LearnedPositions(int64_t context, int64_t dim, Generator& gen, DType dtype = DType::f32, double init_std = 0.02);
  // Rows [offset, offset + length) of the table: [length, C]. ShapeError past the context.
  Variable forward(int64_t offset, int64_t length) const;
  const Variable& weight() const { return weight_; }
  int64_t context() const { return weight_.size(0); }

 private:
  Variable weight_;
};

// base^(-2i / D) for i in [0, D/2): the angular frequency of each rotated pair.
std::vector<double> rope_inverse_frequencies(int64_t head_dim, double base);

// x [B, H, T, D] -> rotated, positions position_offset + t. The fused op.
Variable apply_rope(const Variable& x, int64_t position_offset, double base = 10000.0);

// The same function from narrow, mul, add, sub and concat with constant cos/sin tables.
Variable rope_reference(const Variable& x, int64_t position_offset, double base = 10000.0);

}  // namespace attnlab
