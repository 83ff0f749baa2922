// A hook the backward engine calls once per leaf and backward, as soon as that leaf's gradient for
// the backward is complete: every path from the roots to it has delivered (a tied embedding used
// by the input and the head is ready after its second use). The data-parallel gradient reducer
// (train/grad_reducer.h) uses it to all-reduce buckets of gradients while the rest of the backward
// still runs. Thread-local, like grad mode; scopes nest and the innermost one is called. With no
// scope alive the engine does no extra work.
#pragma once

#include <functional>

#include "autograd/variable.h"

namespace attnlab {

// Called with the leaf whose .grad() now holds its full gradient for this backward (plus what it
// held before, when gradients are accumulated over several backwards).
using LeafGradHook = std::function<void(const Variable& leaf)>;

class LeafGradHookScope {
 public:
  explicit LeafGradHookScope(LeafGradHook hook);
  ~LeafGradHookScope();
  LeafGradHookScope(const LeafGradHookScope&) = delete;
  LeafGradHookScope& operator=(const LeafGradHookScope&) = delete;

 private:
  LeafGradHook hook_;
  const LeafGradHook* previous_;
};

namespace detail {
// The innermost live hook of this thread, or null.
const LeafGradHook* current_leaf_grad_hook();
}  // namespace detail

}  // namespace attnlab
