// Autograd wiring of the unary ops, their samples and their registration.
#include "autograd/ops/unary/unary.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
struct KindInfo {
  UnaryKind kind;
  std::string_view name;
  double low, high;  // sample input range: inside the domain, away from kinks
  double param;      // sample parameter (pow's p, the scalar of add/mul_scalar)
};

constexpr KindInfo kKinds[] = {
    {UnaryKind::neg, "neg", -2, 2, 0},          {UnaryKind::exp, "exp", -2, 2, 0},
    {UnaryKind::log, "log", 0.2, 3, 0},         {UnaryKind::sqrt, "sqrt", 0.2, 3, 0},
    {UnaryKind::rsqrt, "rsqrt", 0.2, 3, 0},     {UnaryKind::pow, "pow", 0.2, 3, 2.5},
    {UnaryKind::tanh, "tanh", -2, 2, 0},        {UnaryKind::sigmoid, "sigmoid", -4, 4, 0},
    {UnaryKind::relu, "relu", -2, 2, 0},        {UnaryKind::gelu, "gelu", -3, 3, 0},
    {UnaryKind::silu, "silu", -3, 3, 0},        {UnaryKind::softplus, "softplus", -4, 4, 0},
    {UnaryKind::add_scalar, "add_scalar", -2, 2, 0.75},
    {UnaryKind::mul_scalar, "mul_scalar", -2, 2, -1.5},
};

const KindInfo& info(UnaryKind kind) {
  for (const KindInfo& k : kKinds)
    if (k.kind == kind) return k;
  AL_ASSERT(false, "unknown UnaryKind");
}

// Moves samples off relu's kink so central differences see one side only.
Tensor away_from_zero(Tensor t) {
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i)
    if (std::abs(p[i]) < 0.05) p[i] = p[i] < 0 ? -0.05 - p[i] : 0.05 + p[i];
  return t;
}
}  // namespace

std::string_view unary_name(UnaryKind kind) { return info(kind).name; }

void UnaryOp::check(UnaryKind kind, const Tensor& x) { op::check_float(unary_name(kind), "x", x); }

Variable unary(UnaryKind kind, const Variable& x, double param) {
  const std::string_view name = unary_name(kind);
  op::check_defined(name, "x", x);
  UnaryOp::check(kind, x.data());
  const Tensor xc = x.data().contiguous();
  Tensor y = op::on_device(name, xc, [&](auto dev) { return UnaryOp::forward(dev, kind, param, xc); });
  return make_output(name, {x}, y, [kind, param, xc, y](const Tensor& dy, const GradMask&) {
    const Tensor dyc = dy.contiguous();
    return std::vector<Tensor>{
        op::on_device(unary_name(kind), xc, [&](auto dev) { return UnaryOp::backward(dev, kind, param, xc, y, dyc); })};
  });
}

Variable neg(const Variable& x) { return unary(UnaryKind::neg, x); }
Variable exp(const Variable& x) { return unary(UnaryKind::exp, x); }
Variable log(const Variable& x) { return unary(UnaryKind::log, x); }
Variable sqrt(const Variable& x) { return unary(UnaryKind::sqrt, x); }
Variable rsqrt(const Variable& x) { return unary(UnaryKind::rsqrt, x); }
Variable pow(const Variable& x, double p) { return unary(UnaryKind::pow, x, p); }
Variable tanh(const Variable& x) { return unary(UnaryKind::tanh, x); }
Variable sigmoid(const Variable& x) { return unary(UnaryKind::sigmoid, x); }
Variable relu(const Variable& x) { return unary(UnaryKind::relu, x); }
Variable gelu(const Variable& x) { return unary(UnaryKind::gelu, x); }
Variable silu(const Variable& x) { return unary(UnaryKind::silu, x); }
Variable softplus(const Variable& x) { return unary(UnaryKind::softplus, x); }
Variable add_scalar(const Variable& x, double s) { return unary(UnaryKind::add_scalar, x, s); }
Variable mul_scalar(const Variable& x, double s) { return unary(UnaryKind::mul_scalar, x, s); }

Variable operator-(const Variable& x) { return neg(x); }
Variable operator+(const Variable& x, double s) { return add_scalar(x, s); }
Variable operator+(double s, const Variable& x) { return add_scalar(x, s); }
Variable operator-(const Variable& x, double s) { return add_scalar(x, -s); }
Variable operator-(double s, const Variable& x) { return add_scalar(neg(x), s); }
Variable operator*(const Variable& x, double s) { return mul_scalar(x, s); }
Variable operator*(double s, const Variable& x) { return mul_scalar(x, s); }
Variable operator/(const Variable& x, double s) { return mul_scalar(x, 1.0 / s); }

std::vector<OpSample> UnaryOp::samples(UnaryKind kind) {
  const KindInfo& k = info(kind);
  auto run = [kind, p = k.param](const std::vector<Variable>& in) { return std::vector<Variable>{unary(kind, in[0], p)}; };
  Tensor a = sample_uniform(Shape{3, 4}, 11, k.low, k.high);
  Tensor b = sample_uniform(Shape{2, 3, 5}, 12, k.low, k.high);
  if (kind == UnaryKind::relu) a = away_from_zero(a), b = away_from_zero(b);
  return {{"[3, 4]", {a}, run}, {"[2, 3, 5]", {b}, run}};
}

std::vector<OpSample> UnaryOp::parity_samples(UnaryKind kind) {
  const KindInfo& k = info(kind);
  auto run = [kind, p = k.param](const std::vector<Variable>& in) { return std::vector<Variable>{unary(kind, in[0], p)}; };
  Tensor a = sample_uniform(Shape{3, 37, 130}, 13, k.low, k.high);  // 14430: 57 blocks of 256, the last ragged
  Tensor b = sample_uniform(Shape{1000}, 14, k.low, k.high);
  if (kind == UnaryKind::relu) a = away_from_zero(a), b = away_from_zero(b);
  return {{"[3, 37, 130]", {a}, run}, {"[1000]", {b}, run}};
}

std::vector<OpMisuse> UnaryOp::misuses(UnaryKind kind) {
  return {{"i32 input", [kind] { unary(kind, Variable(Tensor::zeros(Shape{2, 3}, DType::i32)), 1.0); }}};
}

void register_ops_unary(OpRegistry& registry) {
  for (const KindInfo& k : kKinds)
    registry.add({.name = std::string(k.name),
                  .samples = [kind = k.kind] { return UnaryOp::samples(kind); },
                  .misuses = [kind = k.kind] { return UnaryOp::misuses(kind); },
                  .cuda = true,
                  .parity_samples = [kind = k.kind] { return UnaryOp::parity_samples(kind); }});
}

}  // namespace attnlab
