#include "layers/attention/common.h"

#include <cmath>

#include "lib/error.h"

namespace attnlab {

void check_attention_inputs(std::string_view op, const Tensor& q, const Tensor& k, const Tensor& v) {
  auto shapes = [&] {
    return detail::concat("; got q=", q, ", k=", k, ", v=", v);
  };
  AL_CHECK_SHAPE(q.ndim() == 4 && k.ndim() == 4 && v.ndim() == 4, op,
                 ": q, k, v must be [B, H, T, Dk], [B, H, S, Dk], [B, H, S, Dv]", shapes());
  AL_CHECK_SHAPE(k.size(0) == q.size(0) && v.size(0) == q.size(0) && k.size(1) == q.size(1) && v.size(1) == q.size(1),
                 op, ": q, k, v must share B and H", shapes());
  AL_CHECK_SHAPE(k.size(3) == q.size(3), op, ": k must be [B, H, S, Dk] like q", shapes());
  AL_CHECK_SHAPE(v.size(2) == k.size(2), op, ": v must have k's length S", shapes());
  AL_CHECK_SHAPE(k.size(2) >= q.size(2), op, ": S must be >= T (queries are the last T positions)", shapes());
  AL_CHECK_DTYPE((q.dtype() == DType::f32 || q.dtype() == DType::f64) && k.dtype() == q.dtype() &&
                     v.dtype() == q.dtype(),
                 op, ": q, k, v must share one dtype, f32 or f64", shapes());
  AL_CHECK_DEVICE(k.device() == q.device() && v.device() == q.device(), op, ": q, k, v must share a device",
                  shapes());
}

double attention_scale(double scale, int64_t head_dim) {
  return scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

Tensor unit_last_dim(const Tensor& t) {
  return t.ndim() == 4 && (t.size(3) <= 1 || t.stride(3) == 1) ? t : t.contiguous();
}

}  // namespace attnlab
