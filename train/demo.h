// `attnlab demo`: the core end to end on a real text. A byte-level MLP language model
// (Bengio et al. 2003 style: the embeddings of the last `context` bytes, concatenated, through
// a GELU hidden layer to next-byte logits) trained with AdamW, then sampled. It exercises the
// tensor runtime, autograd, embedding, matmul, fused cross-entropy and the optimizer.
#pragma once

#include <ostream>

#include "train/recipe.h"

namespace attnlab {

// Reads [data] [model] [optim] [train] [sample] keys from the recipe; prints progress to `out`.
// Returns the final validation loss (nats per byte).
double run_demo(Recipe& recipe, std::ostream& out);

}  // namespace attnlab
