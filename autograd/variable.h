// Reverse-mode autograd: a Variable is a tensor plus its gradient and, when it was computed by
// an op that needs a gradient, the graph Node that made it.
//
// Ownership runs from outputs to inputs: a Variable holds its Node, a Node holds its input
// Variables, so the graph lives exactly as long as something can still call backward() on it.
// backward() frees each node's saved tensors as it goes unless retain_graph is set.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lib/tensor.h"

namespace attnlab {

class Node;

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor data, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& data() const;
  // The value, for in-place updates outside the graph (optimizer steps, loading weights).
  Tensor& mutable_data();
  // The accumulated gradient of a leaf (undefined until a backward reaches it).
  const Tensor& grad() const;
  void set_grad(Tensor g);
  void zero_grad();

  bool requires_grad() const;
  // Only leaves: a computed Variable's requirement follows from its inputs.
  void set_requires_grad(bool on);
  bool is_leaf() const;
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;

  // Backpropagates from this Variable. `grad` defaults to 1 for a one-element Variable.
  void backward(const Tensor& grad = {}, bool retain_graph = false) const;
  // The same data, cut from the graph.
  Variable detach() const;

  const Shape& shape() const { return data().shape(); }
  int64_t ndim() const { return data().ndim(); }
  int64_t size(int64_t d) const { return data().size(d); }
  int64_t numel() const { return data().numel(); }
  DType dtype() const { return data().dtype(); }
  Device device() const { return data().device(); }
  std::string str() const { return data().str(); }

  // Internal: a Variable computed by `node` as its output number `output_nr`.
  Variable(Tensor data, std::shared_ptr<Node> node, int output_nr);
  bool same(const Variable& o) const { return impl_ == o.impl_; }
  // The identity same() compares (stable while the Variable lives; null when undefined): a key
  // for maps of Variables (layers/param_override.h).
  const void* id() const { return impl_.get(); }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Variable& v);

// Which inputs of a node want a gradient; backward functions skip the others.
using GradMask = std::vector<bool>;
// Given the gradients of every output (zeros where an output was unused), returns one gradient
// per input, shaped like that input, or an undefined Tensor where mask says none is needed.
using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& douts, const GradMask& needs)>;

class Node {
 public:
  Node(std::string name, std::vector<Variable> inputs, BackwardFn fn, std::vector<Tensor> outputs_meta);
  const std::string& name() const { return name_; }
  const std::vector<Variable>& inputs() const { return inputs_; }
  int64_t num_outputs() const { return static_cast<int64_t>(out_shapes_.size()); }
  const Shape& output_shape(int64_t i) const { return out_shapes_[static_cast<size_t>(i)]; }
  DType output_dtype(int64_t i) const { return out_dtypes_[static_cast<size_t>(i)]; }
  Device output_device(int64_t i) const { return out_devices_[static_cast<size_t>(i)]; }
  bool released() const { return !fn_; }
  std::vector<Tensor> apply(const std::vector<Tensor>& douts, const GradMask& needs) const { return fn_(douts, needs); }
  // Drops saved tensors and input edges once backward has used them.
  void release();

 private:
  std::string name_;
  std::vector<Variable> inputs_;
  BackwardFn fn_;
  std::vector<Shape> out_shapes_;
  std::vector<DType> out_dtypes_;
  std::vector<Device> out_devices_;
};

// Wires freshly computed output tensors into the graph as the results of op `name` applied to
// `inputs`. When grad mode is off or no input requires a gradient, returns plain Variables and
// drops `fn` (so saved tensors are freed at once).
std::vector<Variable> make_outputs(std::string_view name, const std::vector<Variable>& inputs,
                                   std::vector<Tensor> outputs, BackwardFn fn);

// The single-output form: fn gets dout alone.
using BackwardFn1 = std::function<std::vector<Tensor>(const Tensor& dout, const GradMask& needs)>;
Variable make_output(std::string_view name, const std::vector<Variable>& inputs, Tensor output, BackwardFn1 fn);

// Backpropagates from several roots at once (each with its gradient; undefined = ones).
void backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grads = {}, bool retain_graph = false);

}  // namespace attnlab
