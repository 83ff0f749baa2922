#include "layers/all_ops.h"

namespace attnlab {

const OpRegistry& all_ops() {
  static const OpRegistry registry = [] {
    OpRegistry r;
    register_all_ops(r);
    register_all_attention_ops(r);
    return r;
  }();
  return registry;
}

}  // namespace attnlab
