#include "autograd/variable.h"

#include "autograd/grad_mode.h"
#include "lib/error.h"

namespace attnlab {

namespace {
thread_local bool grad_mode_enabled = true;
}

bool GradMode::enabled() { return grad_mode_enabled; }
void GradMode::set_enabled(bool on) { grad_mode_enabled = on; }

struct Variable::Impl {
  Tensor data;
  Tensor grad;
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  int output_nr = 0;
};

Variable::Variable(Tensor data, bool requires_grad) : impl_(std::make_shared<Impl>()) {
  AL_CHECK(data.defined(), "Variable: cannot wrap an undefined tensor");
  AL_CHECK_DTYPE(!requires_grad || is_floating(data.dtype()), "Variable: only floating tensors can require a gradient; got ",
                 data);
  impl_->data = std::move(data);
  impl_->requires_grad = requires_grad;
}

Variable::Variable(Tensor data, std::shared_ptr<Node> node, int output_nr) : impl_(std::make_shared<Impl>()) {
  impl_->data = std::move(data);
  impl_->requires_grad = true;
  impl_->grad_fn = std::move(node);
  impl_->output_nr = output_nr;
}

const Tensor& Variable::data() const {
  AL_CHECK(impl_, "Variable: use of an undefined Variable");
  return impl_->data;
}
Tensor& Variable::mutable_data() {
  AL_CHECK(impl_, "Variable: use of an undefined Variable");
  return impl_->data;
}
const Tensor& Variable::grad() const {
  AL_CHECK(impl_, "Variable: use of an undefined Variable");
  return impl_->grad;
}
void Variable::set_grad(Tensor g) {
  AL_CHECK(impl_, "Variable: use of an undefined Variable");
  AL_CHECK_SHAPE(!g.defined() || g.shape() == shape(), "Variable::set_grad: gradient ", g, " does not match ", str());
  impl_->grad = std::move(g);
}
void Variable::zero_grad() {
  if (impl_) impl_->grad = Tensor();
}
bool Variable::requires_grad() const { return impl_ && impl_->requires_grad; }
void Variable::set_requires_grad(bool on) {
  AL_CHECK(impl_ && is_leaf(), "Variable::set_requires_grad: only leaf Variables can change it; ", str(),
           " was computed by '", impl_ ? impl_->grad_fn->name() : "", "'");
  AL_CHECK_DTYPE(!on || is_floating(impl_->data.dtype()), "Variable: only floating tensors can require a gradient; got ",
                 str());
  impl_->requires_grad = on;
}
bool Variable::is_leaf() const { return !impl_ || !impl_->grad_fn; }
const std::shared_ptr<Node>& Variable::grad_fn() const {
  static const std::shared_ptr<Node> none;
  return impl_ ? impl_->grad_fn : none;
}
int Variable::output_nr() const { return impl_ ? impl_->output_nr : 0; }

Variable Variable::detach() const { return Variable(data(), false); }

void Variable::backward(const Tensor& grad, bool retain_graph) const {
  attnlab::backward({*this}, {grad}, retain_graph);
}

std::ostream& operator<<(std::ostream& os, const Variable& v) { return os << (v.defined() ? v.str() : "undefined"); }

Node::Node(std::string name, std::vector<Variable> inputs, BackwardFn fn, std::vector<Tensor> outputs_meta)
    : name_(std::move(name)), inputs_(std::move(inputs)), fn_(std::move(fn)) {
  for (const Tensor& t : outputs_meta) {
    out_shapes_.push_back(t.shape());
    out_dtypes_.push_back(t.dtype());
    out_devices_.push_back(t.device());
  }
}

void Node::release() {
  fn_ = nullptr;
  inputs_.clear();
}

std::vector<Variable> make_outputs(std::string_view name, const std::vector<Variable>& inputs,
                                   std::vector<Tensor> outputs, BackwardFn fn) {
  bool needs_graph = false;
  if (GradMode::enabled())
    for (const Variable& v : inputs) needs_graph = needs_graph || v.requires_grad();
  std::vector<Variable> result;
  result.reserve(outputs.size());
  if (!needs_graph) {
    for (Tensor& t : outputs) result.emplace_back(std::move(t), false);
    return result;
  }
  auto node = std::make_shared<Node>(std::string(name), inputs, std::move(fn), outputs);
  for (size_t i = 0; i < outputs.size(); ++i) result.emplace_back(std::move(outputs[i]), node, static_cast<int>(i));
  return result;
}

Variable make_output(std::string_view name, const std::vector<Variable>& inputs, Tensor output, BackwardFn1 fn) {
  BackwardFn wrapped = [f = std::move(fn)](const std::vector<Tensor>& douts, const GradMask& needs) {
    return f(douts[0], needs);
  };
  return make_outputs(name, inputs, {std::move(output)}, std::move(wrapped))[0];
}

}  // namespace attnlab
