// Module: a tree of named parameters. Names are stable dotted paths ("mlp.fc1.weight") built
// from the names given at registration, so checkpoints written today load tomorrow. A parameter
// is a leaf Variable; freezing one is `set_requires_grad(false)`, which the optimizers respect.
// A buffer is state that is saved and moved with the parameters but never trained (affine
// attention's running mean of alpha): a Variable without gradient, in state_dict() but not in
// parameters().
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"

namespace attnlab {

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter with its full name, depth first in registration order.
  std::vector<std::pair<std::string, Variable>> named_parameters() const;
  std::vector<Variable> parameters() const;
  // Every buffer with its full name, depth first in registration order.
  std::vector<std::pair<std::string, Variable>> named_buffers() const;
  int64_t num_parameters() const;
  void zero_grad();

  // Moves every parameter (and any gradient it holds) and every buffer to `device`, keeping each Variable's
  // identity so optimizers built before or after see the same parameters.
  void to(Device device);
  // The device of the parameters (cpu for a module without any).
  Device device() const;

  bool training() const { return training_; }
  void set_training(bool on);

  // Parameter and buffer values by name (shared with the module, not copied).
  std::map<std::string, Tensor> state_dict() const;
  // Copies values in by name. Every parameter and buffer must be present with its exact shape; names in
  // `state` that the module lacks are errors too. Checks everything before changing anything.
  void load_state_dict(const std::map<std::string, Tensor>& state);

 protected:
  Variable register_parameter(const std::string& name, Tensor value);
  // The returned Variable stays the buffer's handle: update it in place (mutable_data().copy_).
  Variable register_buffer(const std::string& name, Tensor value);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    children_.emplace_back(name, module);
    return module;
  }

 private:
  void collect(const std::string& prefix, std::vector<std::pair<std::string, Variable>>& out, bool buffers) const;
  // Parameters, then buffers, with full names.
  std::vector<std::pair<std::string, Variable>> named_state() const;
  std::vector<std::pair<std::string, Variable>> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

}  // namespace attnlab
