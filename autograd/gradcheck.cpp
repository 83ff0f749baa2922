#include "autograd/gradcheck.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "autograd/grad_mode.h"
#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab {

namespace {

struct Problem {
  const OpFn& f;
  std::vector<Tensor> inputs;  // contiguous f64 copies
  std::vector<bool> mask;

  // Outputs that take part: the floating ones, flattened to contiguous f64.
  std::vector<Tensor> eval(const std::vector<Tensor>& xs) const {
    NoGradGuard ng;
    std::vector<Variable> vars;
    for (const Tensor& x : xs) vars.emplace_back(x, false);
    std::vector<Tensor> outs;
    // A copy, never a view: an output may share storage with the input being perturbed.
    for (const Variable& y : f(vars))
      if (is_floating(y.dtype())) outs.push_back(y.data().to(DType::f64).clone());
    return outs;
  }

  // One forward with a graph, for repeated backward calls.
  std::pair<std::vector<Variable>, std::vector<Variable>> build() const {
    std::vector<Variable> vars;
    for (size_t i = 0; i < inputs.size(); ++i) vars.emplace_back(inputs[i].clone(), static_cast<bool>(mask[i]));
    std::vector<Variable> outs;
    for (const Variable& y : f(vars))
      if (is_floating(y.dtype())) outs.push_back(y);
    return {vars, outs};
  }
};

// Runs backward from `outs` with gradients `gs` and returns each masked input's gradient (zeros
// when the graph did not reach it, undefined for unmasked inputs).
std::vector<Tensor> analytic(std::vector<Variable>& vars, const std::vector<Variable>& outs,
                             const std::vector<Tensor>& gs, const std::vector<bool>& mask) {
  for (Variable& v : vars) v.zero_grad();
  std::vector<Variable> roots;
  std::vector<Tensor> grads;
  for (size_t k = 0; k < outs.size(); ++k) {
    if (!outs[k].requires_grad()) continue;
    roots.push_back(outs[k]);
    grads.push_back(gs[k].to(outs[k].dtype()).view(outs[k].shape()));
  }
  if (!roots.empty()) backward(roots, grads, /*retain_graph=*/true);
  std::vector<Tensor> result(vars.size());
  for (size_t i = 0; i < vars.size(); ++i) {
    if (!mask[i]) continue;
    result[i] = vars[i].grad().defined() ? vars[i].grad().to(DType::f64).contiguous()
                                         : Tensor::zeros(vars[i].shape(), DType::f64);
  }
  return result;
}

// `where` describes the entry; it is only called for the first violation.
template <typename Where>
void record(GradcheckResult& r, const GradcheckOptions& o, double a, double n, Where&& where) {
  const double err = std::abs(a - n);
  ++r.checked;
  const bool bad = !(err <= o.atol + o.rtol * std::abs(n));  // also catches NaN
  if (bad && r.ok) {
    std::ostringstream os;
    os << where() << ": analytic " << a << ", numeric " << n;
    r.worst = os.str();
  }
  r.ok = r.ok && !bad;
  r.max_abs_err = std::max(r.max_abs_err, std::isnan(err) ? INFINITY : err);
  if (std::abs(n) > o.atol) r.max_rel_err = std::max(r.max_rel_err, err / std::abs(n));
}

double dot(const Tensor& a, const Tensor& b) {
  const double* pa = a.data<double>();
  const double* pb = b.data<double>();
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += pa[i] * pb[i];
  return s;
}

}  // namespace

GradcheckResult gradcheck(const OpFn& f, const std::vector<Tensor>& inputs, std::vector<bool> grad_inputs,
                          const GradcheckOptions& o) {
  if (grad_inputs.empty())
    for (const Tensor& x : inputs) grad_inputs.push_back(is_floating(x.dtype()));
  AL_CHECK(grad_inputs.size() == inputs.size(), "gradcheck: mask has ", grad_inputs.size(), " entries for ",
           inputs.size(), " inputs");
  Problem p{f, {}, grad_inputs};
  int64_t n_in = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    AL_CHECK_DTYPE(!grad_inputs[i] || inputs[i].dtype() == DType::f64, "gradcheck: input ", i,
                   " needs float64 for central differences; got ", inputs[i]);
    p.inputs.push_back(inputs[i].contiguous().clone());
    if (grad_inputs[i]) n_in += inputs[i].numel();
  }
  auto [vars, outs] = p.build();
  int64_t n_out = 0;
  for (const Variable& y : outs) n_out += y.numel();

  GradcheckResult r;
  r.full_jacobian = n_in * n_out <= o.full_jacobian_limit;
  if (r.full_jacobian) {
    // Analytic Jacobian, one backward per output element: rows[k][j] = gradients of outs[k][j].
    std::vector<std::vector<std::vector<Tensor>>> rows(outs.size());
    for (size_t k = 0; k < outs.size(); ++k) {
      for (int64_t j = 0; j < outs[k].numel(); ++j) {
        std::vector<Tensor> gs;
        for (const Variable& y : outs) gs.push_back(Tensor::zeros(Shape{y.numel()}, DType::f64));
        gs[k].data<double>()[j] = 1.0;
        rows[k].push_back(analytic(vars, outs, gs, grad_inputs));
      }
    }
    // Numeric Jacobian, one pair of evaluations per input element.
    for (size_t i = 0; i < p.inputs.size(); ++i) {
      if (!grad_inputs[i]) continue;
      double* x = p.inputs[i].data<double>();
      for (int64_t e = 0; e < p.inputs[i].numel(); ++e) {
        const double saved = x[e];
        x[e] = saved + o.eps;
        const std::vector<Tensor> plus = p.eval(p.inputs);
        x[e] = saved - o.eps;
        const std::vector<Tensor> minus = p.eval(p.inputs);
        x[e] = saved;
        for (size_t k = 0; k < outs.size(); ++k) {
          for (int64_t j = 0; j < outs[k].numel(); ++j) {
            const double num = (plus[k].data<double>()[j] - minus[k].data<double>()[j]) / (2 * o.eps);
            const double an = rows[k][static_cast<size_t>(j)][i].data<double>()[e];
            record(r, o, an, num, [&] {
              std::ostringstream where;
              where << "d output " << k << "[" << j << "] / d input " << i << "[" << e << "]";
              return where.str();
            });
          }
        }
      }
    }
    return r;
  }

  Generator gen(o.seed);
  for (int t = 0; t < o.projections; ++t) {
    std::vector<Tensor> us, vs(p.inputs.size());
    double nu = 0, nv = 0;
    for (const Variable& y : outs) {
      us.push_back(randn(Shape{y.numel()}, gen, DType::f64));
      nu += dot(us.back(), us.back());
    }
    for (size_t i = 0; i < p.inputs.size(); ++i) {
      if (!grad_inputs[i]) continue;
      vs[i] = randn(p.inputs[i].shape(), gen, DType::f64);
      nv += dot(vs[i], vs[i]);
    }
    for (Tensor& u : us) {
      double* pu = u.data<double>();
      for (int64_t j = 0; j < u.numel(); ++j) pu[j] /= std::sqrt(nu);
    }
    double an = 0;
    const std::vector<Tensor> g = analytic(vars, outs, us, grad_inputs);
    for (size_t i = 0; i < p.inputs.size(); ++i) {
      if (!grad_inputs[i]) continue;
      double* pv = vs[i].data<double>();
      for (int64_t j = 0; j < vs[i].numel(); ++j) pv[j] /= std::sqrt(nv);
      an += dot(g[i], vs[i]);
    }
    auto shifted = [&](double s) {
      std::vector<Tensor> xs;
      for (size_t i = 0; i < p.inputs.size(); ++i) {
        xs.push_back(p.inputs[i].clone());
        if (grad_inputs[i])
          for (int64_t j = 0; j < xs[i].numel(); ++j) xs[i].data<double>()[j] += s * vs[i].data<double>()[j];
      }
      double val = 0;
      const std::vector<Tensor> ys = p.eval(xs);
      for (size_t k = 0; k < ys.size(); ++k) val += dot(ys[k].view(Shape{ys[k].numel()}), us[k]);
      return val;
    };
    const double num = (shifted(o.eps) - shifted(-o.eps)) / (2 * o.eps);
    record(r, o, an, num, [t] { return "projection " + std::to_string(t); });
  }
  return r;
}

OpGradcheckSummary gradcheck_op(const OpInfo& op, const GradcheckOptions& options) {
  OpGradcheckSummary s;
  s.op = op.name;
  const std::vector<OpSample> samples = op.samples();
  s.samples = samples.size();
  s.ok = !samples.empty();
  if (samples.empty()) s.failures.push_back("no samples: every op must be gradchecked");
  for (const OpSample& sample : samples) {
    const GradcheckResult r = gradcheck(sample.run, sample.inputs, sample.grad_inputs, options);
    if (!r.ok) s.failures.push_back("sample " + sample.label + ": " + r.worst);
    if (r.checked == 0) s.failures.push_back("sample " + sample.label + ": compared nothing");
    s.ok = s.ok && r.ok && r.checked > 0;
    s.checked += r.checked;
    s.max_abs_err = std::max(s.max_abs_err, r.max_abs_err);
    s.max_rel_err = std::max(s.max_rel_err, r.max_rel_err);
  }
  return s;
}

std::string OpGradcheckSummary::line() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-16s %-4s samples %2zu  checked %7lld  max abs err %.2e  max rel err %.2e", op.c_str(),
                ok ? "ok" : "FAIL", samples, static_cast<long long>(checked), max_abs_err, max_rel_err);
  return buf;
}

}  // namespace attnlab
