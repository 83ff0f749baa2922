#include <gtest/gtest.h>

#include "autograd/gradcheck.h"
#include "lib/cpu/arith.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

// y = x^2 elementwise, with a backward that is right or deliberately off by `bug` * x.
Variable square(const Variable& x, double bug) {
  Tensor xv = x.data().contiguous();
  Tensor y = xv.clone();
  double* py = y.data<double>();
  for (int64_t i = 0; i < y.numel(); ++i) py[i] *= py[i];
  return make_output("square", {x}, y, [xv, bug](const Tensor& dy, const GradMask&) {
    Tensor dx = Tensor::zeros(xv.shape(), DType::f64);
    cpu::add_inplace(dx, xv, 2.0 + bug);
    const double* pd = dy.contiguous().data<double>();
    double* px = dx.data<double>();
    for (int64_t i = 0; i < dx.numel(); ++i) px[i] *= pd[i];
    return std::vector<Tensor>{dx};
  });
}

OpFn square_fn(double bug) {
  return [bug](const std::vector<Variable>& in) { return std::vector<Variable>{square(in[0], bug)}; };
}

TEST(Gradcheck, PassesACorrectBackwardInBothModes) {
  Generator g(1);
  const Tensor small = randn(Shape{3, 4}, g, DType::f64);
  const GradcheckResult full = gradcheck(square_fn(0.0), {small});
  EXPECT_TRUE(full.ok) << full.worst;
  EXPECT_TRUE(full.full_jacobian);
  EXPECT_EQ(full.checked, 144);
  EXPECT_LT(full.max_abs_err, 1e-8);

  const Tensor large = randn(Shape{300, 200}, g, DType::f64);
  const GradcheckResult proj = gradcheck(square_fn(0.0), {large});
  EXPECT_TRUE(proj.ok) << proj.worst;
  EXPECT_FALSE(proj.full_jacobian);
}

TEST(Gradcheck, CatchesAWrongBackwardInBothModes) {
  Generator g(2);
  const GradcheckResult full = gradcheck(square_fn(1e-3), {randn(Shape{3, 4}, g, DType::f64)});
  EXPECT_FALSE(full.ok);
  EXPECT_FALSE(full.worst.empty());
  const GradcheckResult proj = gradcheck(square_fn(1e-3), {randn(Shape{300, 200}, g, DType::f64)});
  EXPECT_FALSE(proj.ok);
}

TEST(Gradcheck, RefusesFloat32Inputs) {
  EXPECT_THROW(gradcheck(square_fn(0.0), {Tensor::ones(Shape{2})}), DTypeError);
}

}  // namespace
}  // namespace attnlab
