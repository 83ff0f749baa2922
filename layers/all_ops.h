// Every registered differentiable op: the primitives of autograd/ops/ and the attention
// variants of layers/attention/ (with their AttentionOpSpecs). The generic tests,
// `attnlab gradcheck` / `attnlab ops` / `attnlab op` read these lists, so a new folder in either
// place is checked without further wiring.
#pragma once

#include "autograd/registry.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

const OpRegistry& all_ops();

// Generated from the folders under layers/attention/ (cmake/OpRegistry.cmake): calls each
// folder's register_attention_<name>(ops, attention).
void register_all_attention_ops(OpRegistry& ops, AttentionOpRegistry& attention);

}  // namespace attnlab
