// The backward engine: Kahn's algorithm over the graph reachable from the roots. A node runs
// once every consumer of its outputs has delivered its gradient; gradients that reach the same
// output or leaf along several paths are summed.
#include <unordered_map>
#include <utility>

#include "autograd/grad_hooks.h"
#include "autograd/grad_mode.h"
#include "autograd/variable.h"
#include "lib/arith.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// Whether `t` is the only reference to its storage (so it may be written in place or kept):
// gradients an op made fresh are, gradients it passed through or saved (add's dy goes to both
// inputs) are not.
bool sole_owner(const Tensor& t) { return t.storage().use_count() == 1; }

// A sum of incoming gradients. The first one is kept as given (no copy). A second one is added
// into whichever of the two is the sole owner of its memory, and only if neither is, into a
// private copy. (a + b and b + a are the same bits, so which one takes the sum does not matter.)
struct GradSlot {
  Tensor sum;

  void add(Tensor g) {
    if (!sum.defined()) {
      sum = std::move(g);
      return;
    }
    if (!sole_owner(sum)) {
      if (sole_owner(g) && g.shape() == sum.shape()) std::swap(sum, g);
      else sum = sum.clone();
    }
    add_inplace(sum, g);
  }
};

// A leaf keeps a gradient that nothing else holds and that is exactly its storage; anything
// else (a view, a tensor an op still holds) is copied, so the gradient owns its memory.
void accumulate_leaf(Variable& leaf, Tensor g) {
  if (!leaf.grad().defined()) {
    const bool whole = g.is_contiguous() && g.numel() * static_cast<int64_t>(dtype_size(g.dtype())) ==
                                                static_cast<int64_t>(g.storage()->bytes());
    leaf.set_grad(sole_owner(g) && whole ? std::move(g) : g.contiguous().clone());
  } else {
    Tensor acc = leaf.grad();
    add_inplace(acc, g);
  }
}

thread_local const LeafGradHook* leaf_grad_hook = nullptr;

}  // namespace

LeafGradHookScope::LeafGradHookScope(LeafGradHook hook) : hook_(std::move(hook)), previous_(leaf_grad_hook) {
  leaf_grad_hook = &hook_;
}
LeafGradHookScope::~LeafGradHookScope() { leaf_grad_hook = previous_; }

namespace detail {
const LeafGradHook* current_leaf_grad_hook() { return leaf_grad_hook; }
}  // namespace detail

void backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grads, bool retain_graph) {
  AL_CHECK(grads.empty() || grads.size() == roots.size(), "backward: got ", grads.size(), " gradients for ",
           roots.size(), " roots");
  // Gradients are computed without recording a graph of their own.
  NoGradGuard no_grad;

  std::unordered_map<Node*, std::vector<GradSlot>> slots;
  std::unordered_map<Node*, int64_t> pending;  // consumers that have not delivered yet
  std::vector<Node*> stack, ready;
  // Every reachable node stays alive until the end, even after release() drops the edges to it.
  std::vector<std::shared_ptr<Node>> alive;
  // With a leaf hook: the edges into each leaf that have not delivered yet (the hook fires at 0).
  const LeafGradHook* hook = leaf_grad_hook;
  std::unordered_map<const void*, int64_t> leaf_pending;

  for (size_t i = 0; i < roots.size(); ++i) {
    const Variable& root = roots[i];
    AL_CHECK(root.requires_grad(), "backward: root ", i, " ", root.str(),
             " does not require a gradient (no input of it requires one)");
    Tensor g = grads.empty() || !grads[i].defined() ? Tensor() : grads[i];
    if (!g.defined()) {
      AL_CHECK_SHAPE(root.numel() == 1, "backward: a gradient is needed for a root with more than one element; got ",
                     root.str());
      g = Tensor::ones(root.shape(), root.dtype(), root.device());
    }
    AL_CHECK_SHAPE(g.shape() == root.shape() && g.dtype() == root.dtype(), "backward: gradient ", g,
                   " does not match root ", root.str());
    if (root.is_leaf()) {
      Variable leaf = root;
      accumulate_leaf(leaf, g);
      if (hook) (*hook)(leaf);
      continue;
    }
    Node* node = root.grad_fn().get();
    auto [it, fresh] = slots.try_emplace(node, static_cast<size_t>(node->num_outputs()));
    it->second[static_cast<size_t>(root.output_nr())].add(g);
    if (fresh) {
      stack.push_back(node);
      alive.push_back(root.grad_fn());
    }
  }

  // Count, for every reachable node, how many input edges point at it.
  std::vector<Node*> order = stack;
  std::unordered_map<Node*, bool> seen;
  for (Node* n : stack) seen[n] = true;
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    AL_CHECK(!n->released(), "backward: the graph through '", n->name(),
             "' was already freed by an earlier backward; pass retain_graph=true to the first one");
    for (const Variable& in : n->inputs()) {
      Node* p = in.grad_fn().get();
      if (!p) {
        if (hook && in.requires_grad()) ++leaf_pending[in.id()];
        continue;
      }
      ++pending[p];
      if (!seen[p]) {
        seen[p] = true;
        stack.push_back(p);
        alive.push_back(in.grad_fn());
      }
    }
  }
  for (Node* n : order)
    if (pending[n] == 0) ready.push_back(n);

  while (!ready.empty()) {
    Node* node = ready.back();
    ready.pop_back();
    std::vector<GradSlot> node_slots = std::move(slots[node]);
    slots.erase(node);
    std::vector<Tensor> douts(static_cast<size_t>(node->num_outputs()));
    for (int64_t i = 0; i < node->num_outputs(); ++i) {
      Tensor& d = douts[static_cast<size_t>(i)];
      if (i < static_cast<int64_t>(node_slots.size())) d = std::move(node_slots[static_cast<size_t>(i)].sum);
      if (!d.defined()) d = Tensor::zeros(node->output_shape(i), node->output_dtype(i), node->output_device(i));
    }
    const std::vector<Variable>& inputs = node->inputs();
    GradMask needs(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) needs[i] = inputs[i].requires_grad();
    std::vector<Tensor> dins = node->apply(douts, needs);
    douts.clear();  // frees them now, and lets a gradient passed straight through be owned below
    AL_ASSERT(dins.size() == inputs.size(), "op '", node->name(), "' returned ", dins.size(), " gradients for ",
              inputs.size(), " inputs");
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Variable& in = inputs[i];
      Node* producer = in.grad_fn().get();
      if (needs[i]) {
        // Moved out, so that the slot or leaf can tell whether anything else holds it.
        Tensor g = std::move(dins[i]);
        AL_ASSERT(g.defined(), "op '", node->name(), "' gave no gradient for input ", i, " ", in.str());
        AL_ASSERT(g.shape() == in.shape() && g.dtype() == in.dtype(), "op '", node->name(), "' gave gradient ", g,
                  " for input ", i, " ", in.str());
        if (producer) {
          auto [it, fresh] = slots.try_emplace(producer, static_cast<size_t>(producer->num_outputs()));
          (void)fresh;
          it->second[static_cast<size_t>(in.output_nr())].add(std::move(g));
        } else {
          Variable leaf = in;
          accumulate_leaf(leaf, std::move(g));
          if (hook && --leaf_pending[in.id()] == 0) (*hook)(leaf);
        }
      }
      if (producer && --pending[producer] == 0) ready.push_back(producer);
    }
    if (!retain_graph) node->release();
  }
}

}  // namespace attnlab
