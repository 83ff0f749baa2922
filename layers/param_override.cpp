#include "layers/param_override.h"

#include "lib/error.h"

namespace attnlab {

namespace {
thread_local const OverrideScope* innermost = nullptr;
}  // namespace

void ParameterOverrides::set(const Variable& parameter, Variable value) {
  AL_CHECK_SHAPE(parameter.defined() && value.defined(),
                 "ParameterOverrides::set: parameter and value must be defined");
  AL_CHECK_SHAPE(
      value.shape() == parameter.shape() && value.dtype() == parameter.dtype() && value.device() == parameter.device(),
      "ParameterOverrides::set: the replacement must match the parameter's shape, dtype and device; got "
      "parameter=",
      parameter.str(), ", value=", value.str());
  map_[parameter.id()] = std::move(value);
}

const Variable* ParameterOverrides::find(const Variable& parameter) const {
  const auto it = map_.find(parameter.id());
  return it == map_.end() ? nullptr : &it->second;
}

OverrideScope::OverrideScope(const ParameterOverrides& overrides) : overrides_(&overrides), outer_(innermost) {
  innermost = this;
}

OverrideScope::~OverrideScope() { innermost = outer_; }

const Variable& effective(const Variable& parameter) {
  if (!innermost || !parameter.defined()) return parameter;  // the common case: one pointer test
  for (const OverrideScope* s = innermost; s; s = s->outer_)
    if (const Variable* v = s->overrides_->find(parameter)) return *v;
  return parameter;
}

RequiresGradGuard::RequiresGradGuard(const std::vector<Variable>& parameters, bool on) {
  saved_.reserve(parameters.size());
  for (const Variable& p : parameters) {
    saved_.emplace_back(p, p.requires_grad());
    Variable(p).set_requires_grad(on);
  }
}

RequiresGradGuard::~RequiresGradGuard() {
  for (auto& [p, was] : saved_) p.set_requires_grad(was);
}

}  // namespace attnlab
