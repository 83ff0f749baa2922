#include "layers/all_ops.h"

namespace attnlab {

// Generated from the folders under layers/residual/ (layers/CMakeLists.txt).
void register_all_residual_ops(OpRegistry& registry);

namespace {

struct Registries {
  OpRegistry ops;
  AttentionOpRegistry attention;
};

const Registries& registries() {
  static const Registries r = [] {
    Registries x;
    register_all_ops(x.ops);
    register_all_attention_ops(x.ops, x.attention);
    register_all_residual_ops(x.ops);
    return x;
  }();
  return r;
}

}  // namespace

const OpRegistry& all_ops() { return registries().ops; }

const AttentionOpRegistry& attention_ops() { return registries().attention; }

}  // namespace attnlab
