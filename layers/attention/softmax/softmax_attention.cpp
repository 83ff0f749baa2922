// Autograd wiring of the fused softmax attention, its samples, misuses and registration.
#include "layers/attention/softmax/softmax_attention.h"

#include "autograd/op_helpers.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "softmax_attention";

// The kernels read any strides but the last: a tensor whose last dim is not unit-stride is packed.
Tensor unit_last(const Tensor& t) { return t.ndim() == 4 && (t.size(3) <= 1 || t.stride(3) == 1) ? t : t.contiguous(); }
}  // namespace

void SoftmaxAttentionOp::check(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionMask& mask) {
  check_attention_inputs(kName, q, k, v);
  AL_CHECK_CONFIG(mask.prefix >= 0, kName, ": mask.prefix must be >= 0; got prefix=", mask.prefix, " with q=", q,
                  ", k=", k, ", v=", v);
}

Variable softmax_attention(const Variable& q, const Variable& k, const Variable& v, const AttentionMask& mask,
                           double scale) {
  op::check_defined(kName, "q", q);
  op::check_defined(kName, "k", k);
  op::check_defined(kName, "v", v);
  SoftmaxAttentionOp::check(q.data(), k.data(), v.data(), mask);
  const double c = attention_scale(scale, q.size(3));
  const Tensor qc = unit_last(q.data()), kc = unit_last(k.data()), vc = unit_last(v.data());
  SoftmaxAttentionOp::Forward f =
      op::on_device(kName, qc, [&](auto dev) { return SoftmaxAttentionOp::forward(dev, qc, kc, vc, mask, c); });
  return make_output(kName, {q, k, v}, f.out,
                     [qc, kc, vc, out = f.out, lse = f.lse, mask, c](const Tensor& dout, const GradMask& needs) {
                       const Tensor dc = unit_last(dout);
                       SoftmaxAttentionOp::Grads g = op::on_device(kName, dc, [&](auto dev) {
                         return SoftmaxAttentionOp::backward(dev, qc, kc, vc, out, lse, dc, mask, c);
                       });
                       return std::vector<Tensor>{needs[0] ? g.dq : Tensor(), needs[1] ? g.dk : Tensor(),
                                                  needs[2] ? g.dv : Tensor()};
                     });
}

std::vector<OpSample> SoftmaxAttentionOp::samples() {
  auto run = [](AttentionMask mask, double scale = 0.0) {
    return [mask, scale](const std::vector<Variable>& in) {
      return std::vector<Variable>{softmax_attention(in[0], in[1], in[2], mask, scale)};
    };
  };
  // q, k, v for [B, H, T, Dk], [B, H, S, Dk], [B, H, S, Dv], seeds from `seed`.
  auto qkv = [](int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv, uint64_t seed) {
    return std::vector<Tensor>{sample_randn(Shape{B, H, T, Dk}, seed), sample_randn(Shape{B, H, S, Dk}, seed + 1),
                               sample_randn(Shape{B, H, S, Dv}, seed + 2)};
  };
  const AttentionMask causal{true, 0}, full{false, 0}, prefix{true, 2};
  return {
      {"causal B=2 H=2 T=S=4 D=4", qkv(2, 2, 4, 4, 4, 4, 301), run(causal)},
      {"causal T=3 S=5 (offset) D=4", qkv(1, 2, 3, 5, 4, 4, 311), run(causal)},
      {"not causal T=3 S=5 D=4", qkv(1, 2, 3, 5, 4, 4, 321), run(full)},
      {"prefix=2 T=S=5 D=4", qkv(1, 2, 5, 5, 4, 4, 331), run(prefix)},
      {"prefix=2 T=3 S=5 (offset) D=4", qkv(1, 2, 3, 5, 4, 4, 341), run(prefix)},
      {"causal Dk=4 Dv=3 T=S=4 scale=0.7", qkv(2, 2, 4, 4, 4, 3, 351), run(causal, 0.7)},
  };
}

std::vector<OpMisuse> SoftmaxAttentionOp::misuses() {
  auto t = [](const Shape& s, DType dt = DType::f32) { return Variable(Tensor::ones(s, dt)); };
  return {
      {"k with Dk=3, q with Dk=4",
       [t] { softmax_attention(t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 4, 3}), t(Shape{1, 2, 4, 4})); }},
      {"3-D q", [t] { softmax_attention(t(Shape{2, 4, 4}), t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 4, 4})); }},
      {"S=3 < T=5", [t] { softmax_attention(t(Shape{1, 2, 5, 4}), t(Shape{1, 2, 3, 4}), t(Shape{1, 2, 3, 4})); }},
      {"q f32, k and v f64",
       [t] {
         softmax_attention(t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 4, 4}, DType::f64), t(Shape{1, 2, 4, 4}, DType::f64));
       }},
      {"i32 inputs",
       [t] {
         softmax_attention(t(Shape{1, 2, 4, 4}, DType::i32), t(Shape{1, 2, 4, 4}, DType::i32),
                           t(Shape{1, 2, 4, 4}, DType::i32));
       }},
      {"v with S=5, k with S=4",
       [t] { softmax_attention(t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 5, 4})); }},
      {"negative prefix",
       [t] {
         softmax_attention(t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 4, 4}), t(Shape{1, 2, 4, 4}), AttentionMask{true, -1});
       }},
  };
}

void register_attention_softmax(OpRegistry& registry) {
  registry.add({std::string(kName), [] { return SoftmaxAttentionOp::samples(); },
                [] { return SoftmaxAttentionOp::misuses(); }});
}

}  // namespace attnlab
