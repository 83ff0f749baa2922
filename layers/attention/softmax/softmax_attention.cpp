// Autograd wiring of the fused softmax attention, its samples, misuses and registration.
#include "layers/attention/softmax/softmax_attention.h"

#include "autograd/op_helpers.h"
#include "autograd/ops/view/view.h"
#include "layers/attention/variant_op.h"

namespace attnlab {

namespace {
constexpr std::string_view kName = "softmax_attention";

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
  const Tensor qc = unit_last_dim(q.data()), kc = unit_last_dim(k.data()), vc = unit_last_dim(v.data());
  SoftmaxAttentionOp::Forward f =
      op::on_device(kName, qc, [&](auto dev) { return SoftmaxAttentionOp::forward(dev, qc, kc, vc, mask, c); });
  return make_output(kName, {q, k, v}, f.out,
                     [qc, kc, vc, out = f.out, lse = f.lse, mask, c](const Tensor& dout, const GradMask& needs) {
                       const Tensor dc = unit_last_dim(dout);
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

// Larger shapes for the CUDA parity test: several query and key tiles at every tile-shape class
// of the kernels (padded head dim 32, 64, 128), ragged edges, T != S, a prefix, and strided inputs.
std::vector<OpSample> SoftmaxAttentionOp::parity_samples() {
  auto run = [](AttentionMask mask, double scale = 0.0) {
    return [mask, scale](const std::vector<Variable>& in) {
      return std::vector<Variable>{softmax_attention(in[0], in[1], in[2], mask, scale)};
    };
  };
  // Inputs given token-major, [B, T, H, D], and permuted to [B, H, T, D] views (row stride H * D).
  auto run_token_major = [](AttentionMask mask) {
    return [mask](const std::vector<Variable>& in) {
      const std::vector<int64_t> bhtd{0, 2, 1, 3};
      return std::vector<Variable>{
          softmax_attention(permute(in[0], bhtd), permute(in[1], bhtd), permute(in[2], bhtd), mask)};
    };
  };
  auto qkv = [](int64_t B, int64_t H, int64_t T, int64_t S, int64_t Dk, int64_t Dv, uint64_t seed) {
    return std::vector<Tensor>{sample_randn(Shape{B, H, T, Dk}, seed), sample_randn(Shape{B, H, S, Dk}, seed + 1),
                               sample_randn(Shape{B, H, S, Dv}, seed + 2)};
  };
  const AttentionMask causal{true, 0}, full{false, 0};
  return {
      {"causal B=2 H=3 T=S=70 D=24", qkv(2, 3, 70, 70, 24, 24, 401), run(causal)},
      {"causal B=1 H=2 T=S=130 D=16 scale=0.3", qkv(1, 2, 130, 130, 16, 16, 411), run(causal, 0.3)},
      {"causal T=5 S=37 (KV-cache offset) Dk=40 Dv=24", qkv(2, 2, 5, 37, 40, 24, 421), run(causal)},
      {"prefix=20 T=S=45 D=24", qkv(1, 2, 45, 45, 24, 24, 431), run(AttentionMask{true, 20})},
      {"not causal T=33 S=50 D=72", qkv(1, 2, 33, 50, 72, 72, 441), run(full)},
      {"causal T=S=40 D=128", qkv(1, 1, 40, 40, 128, 128, 451), run(causal)},
      {"prefix=30 T=40 S=67 Dk=Dv=40, q k v token-major views",
       {sample_randn(Shape{1, 40, 2, 40}, 461), sample_randn(Shape{1, 67, 2, 40}, 462),
        sample_randn(Shape{1, 67, 2, 40}, 463)},
       run_token_major(AttentionMask{true, 30})},
  };
}

void register_attention_softmax(OpRegistry& registry, AttentionOpRegistry& attention) {
  attention.add({.name = "softmax",
                 .description = "softmax(scale q k^T + mask) v, flash-style; no extras",
                 .cuda = true,
                 .fused = [](const AttnOpArgs& a) { return AttnOpResult{.out = softmax_attention(a.q, a.k, a.v, a.mask)}; },
                 .reference =
                     [](const AttnOpArgs& a) { return AttnOpResult{.out = softmax_attention_reference(a.q, a.k, a.v, a.mask)}; }});
  registry.add({.name = std::string(kName),
                .samples = [] { return SoftmaxAttentionOp::samples(); },
                .misuses = [] { return SoftmaxAttentionOp::misuses(); },
                .cuda = true,
                .parity_samples = [] { return SoftmaxAttentionOp::parity_samples(); }});
}

}  // namespace attnlab
