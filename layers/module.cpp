#include "layers/module.h"

#include <set>
#include <sstream>

#include "lib/error.h"

namespace attnlab {

Variable Module::register_parameter(const std::string& name, Tensor value) {
  for (const auto& [n, _] : params_) AL_ASSERT(n != name, "parameter '", name, "' registered twice");
  Variable v(std::move(value), /*requires_grad=*/true);
  params_.emplace_back(name, v);
  return v;
}

Variable Module::register_buffer(const std::string& name, Tensor value) {
  for (const auto& [n, _] : buffers_) AL_ASSERT(n != name, "buffer '", name, "' registered twice");
  for (const auto& [n, _] : params_) AL_ASSERT(n != name, "buffer '", name, "' has a parameter's name");
  Variable v(std::move(value), /*requires_grad=*/false);
  buffers_.emplace_back(name, v);
  return v;
}

void Module::collect(const std::string& prefix, std::vector<std::pair<std::string, Variable>>& out,
                     bool buffers) const {
  for (const auto& [name, v] : buffers ? buffers_ : params_) out.emplace_back(prefix + name, v);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out, buffers);
}

std::vector<std::pair<std::string, Variable>> Module::named_parameters() const {
  std::vector<std::pair<std::string, Variable>> out;
  collect("", out, false);
  return out;
}

std::vector<std::pair<std::string, Variable>> Module::named_buffers() const {
  std::vector<std::pair<std::string, Variable>> out;
  collect("", out, true);
  return out;
}

std::vector<std::pair<std::string, Variable>> Module::named_state() const {
  std::vector<std::pair<std::string, Variable>> out = named_parameters();
  for (auto& b : named_buffers()) out.push_back(std::move(b));
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [_, v] : named_parameters()) out.push_back(v);
  return out;
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (const Variable& v : parameters()) n += v.numel();
  return n;
}

void Module::to(Device device) {
  for (auto& [name, v] : named_state()) {
    if (v.device() == device) continue;
    const Tensor moved = v.data().to(device);
    v.mutable_data() = moved;
    if (v.grad().defined()) v.set_grad(v.grad().to(device));
  }
}

Device Module::device() const {
  const auto params = named_parameters();
  return params.empty() ? Device::cpu() : params.front().second.device();
}

void Module::zero_grad() {
  for (Variable& v : parameters()) v.zero_grad();
}

void Module::set_training(bool on) {
  training_ = on;
  for (auto& [_, child] : children_) child->set_training(on);
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (const auto& [name, v] : named_state()) out.emplace(name, v.data());
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state) {
  const auto params = named_state();
  std::set<std::string> known;
  for (const auto& [name, v] : params) {
    known.insert(name);
    auto it = state.find(name);
    AL_CHECK_CONFIG(it != state.end(), "load_state_dict: '", name, "' ", v.str(), " is missing");
    AL_CHECK_SHAPE(it->second.shape() == v.shape(), "load_state_dict: '", name, "' must be ", v.str(),
                   "; got ", it->second);
  }
  for (const auto& [name, t] : state)
    AL_CHECK_CONFIG(known.count(name), "load_state_dict: unexpected tensor '", name, "' ", t,
                    " (the model has no parameter or buffer of that name)");
  for (auto [name, v] : params) v.mutable_data().copy_(state.at(name));
}

}  // namespace attnlab
