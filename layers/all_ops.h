// Every registered differentiable op: the primitives of autograd/ops/ and the attention
// variants of layers/attention/. The generic tests and `attnlab gradcheck` / `attnlab ops` read
// this list, so a new folder in either place is checked without further wiring.
#pragma once

#include "autograd/registry.h"

namespace attnlab {

const OpRegistry& all_ops();

// Generated from the folders under layers/attention/ (cmake/OpRegistry.cmake).
void register_all_attention_ops(OpRegistry& registry);

}  // namespace attnlab
