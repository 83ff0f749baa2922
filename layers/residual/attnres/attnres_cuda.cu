// CUDA kernels of the routing op (attnres.h), f32 with f32 accumulation.
//
// Maths, per token t of BT = B * T, sources v_i = src_i[t, :] (i < N), D the width:
//   rho_i = sqrt(sum_d v_i^2 / D + eps),  z_i = <w * g, v_i> / rho_i,  a = softmax_i(z)
//   out = r + gate * sum_i a_i v_i   (r absent: out = gate * sum_i a_i v_i; gate absent: 1)
// Backward, G = dout[t], go = <G, o> = sum_i a_i <G, v_i>:
//   dz_i = gate a_i (<G, v_i> - go),  c_i = dz_i / rho_i
//   dsrc_i = a_i gate G + c_i (w * g - v_i z_i / (rho_i D))
//   s = sum_t sum_i c_i v_i,  dw = g * s,  dg = w * s,  dgate = sum_t go
//
// Sources are read through a pointer table passed by value (SrcTable, N <= kMaxCudaSources):
// the model's sources stay where their sublayers wrote them (stored once, routed by index).
//
// Launches:
//   attnres_forward_kernel: block (32, 8), a warp per token, grid ceil(BT / 8). Lane j takes the
//     elements j, j + 32, ... of each row (coalesced). Pass 1 over the sources: the two row sums
//     (sum v^2, <w g, v>) by warp shuffles, rho_i stored by lane 0, an online max / sum of
//     exp(z). Pass 2 recomputes z_i (the same sums in the same order: the same bits), stores
//     a_i and accumulates sum_i a_i v_i into the lane's own elements of out; then
//     out = r + gate * out, each lane on its own elements.
//   attnres_backward_rows_kernel: the same shape. Pass 1: go. Pass 2: per source the sums
//     <G, v_i> and <w g, v_i>, then c_i (lane 0 stores it to coef [N, BT]) and the dsrc row.
//     Lane 0 stores go to gotok [BT].
//   s and dgate: cuda::column_sums (lib/cuda/block_reduce.h), the shared two-pass column sum
//     (rows = tokens): s over D columns of sum_i coef[i, t] v_i[t, d], dgate over one column of
//     gotok[t].
// Tokens past BT in the last block run with zero length (every lane reaches every shuffle) and
// store nothing. No atomics: every sum has a fixed order given the shapes, so results are
// deterministic.
#include <cmath>
#include <cstdint>

#include "layers/residual/attnres/attnres.h"
#include "lib/cuda/block_reduce.h"
#include "lib/cuda/kernel.h"
#include "lib/error.h"

namespace attnlab {

namespace {

constexpr const char* kName = "attnres";
constexpr unsigned kWarpsPerBlock = 8;
using cuda::warp_sum;

struct SrcTable {
  const float* p[AttnResOp::kMaxCudaSources] = {};
};

struct FwdArgs {
  SrcTable src = {};
  const float* r = nullptr;     // [BT, D] or null
  const float* w = nullptr;     // [D]
  const float* g = nullptr;     // [D]
  const float* gate = nullptr;  // [1] or null
  float* out = nullptr;         // [BT, D]
  float* a = nullptr;           // [N, BT]
  float* rho = nullptr;         // [N, BT]
  int64_t N = 0, BT = 0, D = 0;
  float eps = 0.f;
};

// The token of this warp, whether it exists, and the row length it works on (0 past BT).
struct TokenRow {
  int64_t t;
  bool live;
  int64_t len;
};
__device__ inline TokenRow token_row(int64_t BT, int64_t D) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  const bool live = t < BT;
  return {live ? t : 0, live, live ? D : 0};
}

// The two row sums of source row v: sum v^2 and <w g, v>, reduced over the warp.
__device__ inline void row_sums(const float* v, const float* w, const float* g, int64_t len, float& ss, float& zd) {
  ss = 0.f;
  zd = 0.f;
  for (int64_t d = threadIdx.x; d < len; d += 32) {
    const float x = v[d];
    ss += x * x;
    zd += w[d] * g[d] * x;
  }
  ss = warp_sum(ss);
  zd = warp_sum(zd);
}

__global__ void attnres_forward_kernel(FwdArgs p) {
  const TokenRow tr = token_row(p.BT, p.D);
  const int64_t base = tr.t * p.D;
  const float inv_d = 1.f / static_cast<float>(p.D);
  float m = -INFINITY, l = 0.f;
  for (int64_t i = 0; i < p.N; ++i) {
    float ss, zd;
    row_sums(p.src.p[i] + base, p.w, p.g, tr.len, ss, zd);
    const float rho = sqrtf(ss * inv_d + p.eps);
    const float z = zd / rho;
    if (tr.live && threadIdx.x == 0) p.rho[i * p.BT + tr.t] = rho;
    const float mn = fmaxf(m, z);
    l = l * expf(m - mn) + expf(z - mn);
    m = mn;
  }
  float* o = p.out + base;
  for (int64_t i = 0; i < p.N; ++i) {
    const float* v = p.src.p[i] + base;
    float ss, zd;
    row_sums(v, p.w, p.g, tr.len, ss, zd);
    const float rho = sqrtf(ss * inv_d + p.eps);
    const float a = expf(zd / rho - m) / l;
    if (tr.live && threadIdx.x == 0) p.a[i * p.BT + tr.t] = a;
    for (int64_t d = threadIdx.x; d < tr.len; d += 32) o[d] = i == 0 ? a * v[d] : o[d] + a * v[d];
  }
  const float gate = p.gate ? p.gate[0] : 1.f;
  for (int64_t d = threadIdx.x; d < tr.len; d += 32) o[d] = (p.r ? p.r[base + d] : 0.f) + gate * o[d];
}

struct BwdArgs {
  SrcTable src = {};
  const float* w = nullptr;
  const float* g = nullptr;
  const float* gate = nullptr;
  const float* a = nullptr;    // [N, BT]
  const float* rho = nullptr;  // [N, BT]
  const float* G = nullptr;    // [BT, D]
  float* dsrc = nullptr;       // [N, BT, D] or null
  float* coef = nullptr;       // [N, BT]: dz_i / rho_i
  float* gotok = nullptr;      // [BT]: <G, o>
  int64_t N = 0, BT = 0, D = 0;
};

__global__ void attnres_backward_rows_kernel(BwdArgs p) {
  const TokenRow tr = token_row(p.BT, p.D);
  const int64_t base = tr.t * p.D;
  const float* G = p.G + base;
  const float inv_d = 1.f / static_cast<float>(p.D);
  float go = 0.f;
  for (int64_t i = 0; i < p.N; ++i) {
    const float* v = p.src.p[i] + base;
    float s = 0.f;
    for (int64_t d = threadIdx.x; d < tr.len; d += 32) s += G[d] * v[d];
    go += p.a[i * p.BT + tr.t] * warp_sum(s);
  }
  if (tr.live && threadIdx.x == 0) p.gotok[tr.t] = go;
  const float gate = p.gate ? p.gate[0] : 1.f;
  for (int64_t i = 0; i < p.N; ++i) {
    const float* v = p.src.p[i] + base;
    float gv = 0.f, zd = 0.f;
    for (int64_t d = threadIdx.x; d < tr.len; d += 32) {
      gv += G[d] * v[d];
      zd += p.w[d] * p.g[d] * v[d];
    }
    gv = warp_sum(gv);
    zd = warp_sum(zd);
    const float ai = p.a[i * p.BT + tr.t], rh = p.rho[i * p.BT + tr.t];
    const float z = zd / rh;
    const float c = gate * ai * (gv - go) / rh;
    if (tr.live && threadIdx.x == 0) p.coef[i * p.BT + tr.t] = c;
    if (p.dsrc) {
      float* ds = p.dsrc + (i * p.BT) * p.D + base;
      const float ag = ai * gate, zr = z * inv_d / rh;
      for (int64_t d = threadIdx.x; d < tr.len; d += 32) ds[d] = ag * G[d] + c * (p.w[d] * p.g[d] - v[d] * zr);
    }
  }
}

// s[d] = sum_t sum_i coef[i, t] v_i[t, d].
struct STerm {
  SrcTable src;
  const float* coef;
  int64_t N, BT, D;
  __device__ void operator()(float& acc, int64_t, int64_t t, int64_t d) const {
    for (int64_t i = 0; i < N; ++i) acc += coef[i * BT + t] * src.p[i][t * D + d];
  }
};
struct SStore {
  const float *w, *g;
  float *dw, *dg;
  __device__ void operator()(int64_t, int64_t d, float s) const {
    if (dw) dw[d] = g[d] * s;
    if (dg) dg[d] = w[d] * s;
  }
};
struct GateTerm {
  const float* gotok;
  __device__ void operator()(float& acc, int64_t, int64_t t, int64_t) const { acc += gotok[t]; }
};
struct GateStore {
  float* dgate;
  __device__ void operator()(int64_t, int64_t, float s) const { dgate[0] = s; }
};

SrcTable table(const std::vector<Tensor>& src) {
  AL_CHECK_SHAPE(static_cast<int64_t>(src.size()) <= AttnResOp::kMaxCudaSources, kName,
                 ": the CUDA kernels take at most ", AttnResOp::kMaxCudaSources, " sources; got ", src.size(),
                 " of ", src.at(0));
  SrcTable t;
  for (size_t i = 0; i < src.size(); ++i) {
    AL_CHECK_DTYPE(src[i].dtype() == DType::f32, kName, ": the CUDA kernels take f32 only; got src=", src[i]);
    t.p[i] = src[i].data<float>();
  }
  return t;
}

dim3 grid_for(int64_t BT) { return dim3(static_cast<unsigned>((BT + kWarpsPerBlock - 1) / kWarpsPerBlock)); }

}  // namespace

AttnResOp::Forward AttnResOp::forward(CudaTag, const std::vector<Tensor>& src, const Tensor& r, const Tensor& w,
                                      const Tensor& g, const Tensor& gate) {
  const Tensor& s0 = src.at(0);
  const int64_t N = static_cast<int64_t>(src.size()), B = s0.size(0), T = s0.size(1), D = s0.size(2);
  const Device dev = s0.device();
  FwdArgs p;
  p.src = table(src);
  Forward f{Tensor::empty(Shape{B, T, D}, DType::f32, dev), Tensor::empty(Shape{N, B, T}, DType::f32, dev),
            Tensor::empty(Shape{N, B, T}, DType::f32, dev)};
  p.r = r.defined() ? r.data<float>() : nullptr;
  p.w = w.data<float>();
  p.g = g.data<float>();
  p.gate = gate.defined() ? gate.data<float>() : nullptr;
  p.out = f.out.data<float>();
  p.a = f.a.data<float>();
  p.rho = f.rho.data<float>();
  p.N = N, p.BT = B * T, p.D = D;
  p.eps = static_cast<float>(kEps);
  AL_CUDA_LAUNCH(attnres_forward_kernel, grid_for(p.BT), dim3(32, kWarpsPerBlock), 0, p);
  return f;
}

AttnResOp::Grads AttnResOp::backward(CudaTag, const std::vector<Tensor>& src, const Tensor& w, const Tensor& g,
                                     const Tensor& gate, const Tensor& a, const Tensor& rho, const Tensor& dout,
                                     bool need_src, bool need_wg, bool need_gate) {
  const Tensor& s0 = src.at(0);
  const int64_t N = static_cast<int64_t>(src.size()), B = s0.size(0), T = s0.size(1), D = s0.size(2);
  const int64_t BT = B * T;
  const Device dev = s0.device();
  need_gate = need_gate && gate.defined();
  Grads out;
  BwdArgs p;
  p.src = table(src);
  p.w = w.data<float>();
  p.g = g.data<float>();
  p.gate = gate.defined() ? gate.data<float>() : nullptr;
  p.a = a.data<float>();
  p.rho = rho.data<float>();
  p.G = dout.data<float>();
  if (need_src) {
    out.dsrc = Tensor::empty(Shape{N, B, T, D}, DType::f32, dev);
    p.dsrc = out.dsrc.data<float>();
  }
  const Tensor coef = Tensor::empty(Shape{N, BT}, DType::f32, dev);
  const Tensor gotok = Tensor::empty(Shape{BT}, DType::f32, dev);
  p.coef = const_cast<float*>(coef.data<float>());
  p.gotok = const_cast<float*>(gotok.data<float>());
  p.N = N, p.BT = BT, p.D = D;
  AL_CUDA_LAUNCH(attnres_backward_rows_kernel, grid_for(BT), dim3(32, kWarpsPerBlock), 0, p);
  if (need_wg) {
    out.dw = Tensor::empty(Shape{D}, DType::f32, dev);
    out.dg = Tensor::empty(Shape{D}, DType::f32, dev);
    cuda::column_sums(STerm{p.src, p.coef, N, BT, D},
                      SStore{p.w, p.g, out.dw.data<float>(), out.dg.data<float>()}, BT, D, 1, dev);
  }
  if (need_gate) {
    out.dgate = Tensor::empty(gate.shape(), DType::f32, dev);
    cuda::column_sums(GateTerm{p.gotok}, GateStore{out.dgate.data<float>()}, BT, 1, 1, dev);
  }
  return out;
}

}  // namespace attnlab
