// Strided elementwise iteration over up to a few tensors that share a (broadcast) shape.
//
// for_each_row coalesces dims that are contiguous for every operand, then calls
//   fn(n, offsets, inner_strides)
// once per innermost row: `n` elements, operand k's first element at offsets[k] and its
// elements inner_strides[k] apart. Rows are spread over threads when the total is large.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "lib/cpu/parallel.h"
#include "lib/shape.h"

namespace attnlab::cpu {

inline constexpr int64_t kElementwiseGrain = 1 << 15;

template <size_t N, typename Fn>
void for_each_row(const Shape& shape, const std::array<std::vector<int64_t>, N>& strides, Fn&& fn) {
  // Collect the dims that matter (size > 1), then merge neighbours that are contiguous for all.
  std::vector<int64_t> sizes;
  std::array<std::vector<int64_t>, N> st;
  for (int64_t d = 0; d < shape.ndim(); ++d) {
    if (shape[d] == 1) continue;
    sizes.push_back(shape[d]);
    for (size_t k = 0; k < N; ++k) st[k].push_back(strides[k][static_cast<size_t>(d)]);
  }
  for (size_t i = sizes.size(); i-- > 1;) {
    bool mergeable = true;
    for (size_t k = 0; k < N; ++k) mergeable = mergeable && st[k][i - 1] == st[k][i] * sizes[i];
    if (!mergeable) continue;
    sizes[i - 1] *= sizes[i];
    sizes.erase(sizes.begin() + static_cast<std::ptrdiff_t>(i));
    for (size_t k = 0; k < N; ++k) {
      st[k][i - 1] = st[k][i];
      st[k].erase(st[k].begin() + static_cast<std::ptrdiff_t>(i));
    }
  }
  if (shape.numel() == 0) return;
  if (sizes.empty()) {  // a single element
    std::array<int64_t, N> offs{}, inner{};
    fn(int64_t{1}, offs, inner);
    return;
  }
  const size_t nd = sizes.size();
  const int64_t inner_n = sizes[nd - 1];
  std::array<int64_t, N> inner{};
  for (size_t k = 0; k < N; ++k) inner[k] = st[k][nd - 1];
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < nd; ++i) rows *= sizes[i];
  // A few long rows (a contiguous tensor is one row) are cut into pieces of about the grain,
  // so that both threads get work; the calls are elementwise, so the cut changes no result.
  const int64_t pieces = rows >= 2 * max_threads() ? 1 : std::max<int64_t>(1, inner_n / kElementwiseGrain);
  const int64_t piece_n = (inner_n + pieces - 1) / pieces;
  const int64_t grain = std::max<int64_t>(1, kElementwiseGrain / piece_n);
  parallel_for(0, rows * pieces, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      std::array<int64_t, N> offs{};
      int64_t rem = t / pieces;
      for (size_t i = nd - 1; i-- > 0;) {
        const int64_t idx = rem % sizes[i];
        rem /= sizes[i];
        for (size_t k = 0; k < N; ++k) offs[k] += idx * st[k][i];
      }
      const int64_t start = (t % pieces) * piece_n;
      for (size_t k = 0; k < N; ++k) offs[k] += start * inner[k];
      fn(std::min(piece_n, inner_n - start), offs, inner);
    }
  });
}

}  // namespace attnlab::cpu
