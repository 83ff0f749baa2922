// OpenMP helpers for CPU kernels. Work is split into chunks that depend only on the problem
// size and the grain, never on the thread count, whenever the order of floating-point
// operations matters (see parallel_reduce): results are identical on 1 or N threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace attnlab::cpu {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline bool in_parallel() {
#ifdef _OPENMP
  return omp_in_parallel() != 0;
#else
  return false;
#endif
}

// Calls fn(b, e) over [begin, end) split into contiguous ranges, one per thread, when the range
// is longer than `grain`; runs inline when small or already inside a parallel region.
template <typename Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, Fn&& fn) {
  const int64_t n = end - begin;
  if (n <= 0) return;
  if (n <= grain || max_threads() == 1 || in_parallel()) {
    fn(begin, end);
    return;
  }
#ifdef _OPENMP
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads();
    const int64_t t = omp_get_thread_num();
    const int64_t chunk = (n + nt - 1) / nt;
    const int64_t b = begin + t * chunk;
    const int64_t e = std::min(end, b + chunk);
    if (b < e) fn(b, e);
  }
#else
  fn(begin, end);
#endif
}

// Deterministic parallel reduction: [begin, end) is cut into blocks of `block` elements (a
// constant), each block is reduced by block_fn(b, e) -> Acc, and the block results are combined
// left to right on one thread. The same inputs give the same bits on any thread count.
template <typename Acc, typename BlockFn, typename Combine>
Acc parallel_reduce(int64_t begin, int64_t end, int64_t block, Acc init, BlockFn&& block_fn, Combine&& combine) {
  const int64_t n = end - begin;
  if (n <= 0) return init;
  const int64_t nblocks = (n + block - 1) / block;
  std::vector<Acc> partial(static_cast<size_t>(nblocks));
  parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      const int64_t lo = begin + i * block;
      partial[static_cast<size_t>(i)] = block_fn(lo, std::min(end, lo + block));
    }
  });
  Acc acc = init;
  for (const Acc& p : partial) acc = combine(acc, p);
  return acc;
}

// Rows per task for row-wise kernels: enough rows that a task touches ~16K elements.
inline constexpr int64_t kRowTaskElements = 1 << 14;
inline int64_t row_grain(int64_t row_elements) {
  return std::max<int64_t>(1, kRowTaskElements / std::max<int64_t>(1, row_elements));
}

// Row-parallel pass that also sums `width` per-column quantities over all rows (a norm's
// dweight, a convolution's dbias): calls row_fn(r, acc) for every row r in [0, rows), where acc
// points at the current block's `width` partial sums (nullptr when width is 0). Rows go in at
// most 32 blocks of at least min_block rows, sized from the shape only, and the block partials
// are added in block order: the same bits on any thread count, and bounded scratch.
template <typename RowFn>
std::vector<double> for_rows_summing_columns(int64_t rows, int64_t min_block, int64_t width, RowFn&& row_fn) {
  constexpr int64_t kMaxBlocks = 32;
  const int64_t block = std::max<int64_t>({1, min_block, (rows + kMaxBlocks - 1) / kMaxBlocks});
  const int64_t nblocks = (rows + block - 1) / block;
  std::vector<double> partial(static_cast<size_t>(nblocks * width), 0.0);
  parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* acc = width > 0 ? partial.data() + b * width : nullptr;
      for (int64_t r = b * block, e = std::min(rows, r + block); r < e; ++r) row_fn(r, acc);
    }
  });
  std::vector<double> total(static_cast<size_t>(width), 0.0);
  parallel_for(0, width, kRowTaskElements, [&](int64_t k0, int64_t k1) {
    for (int64_t b = 0; b < nblocks; ++b) {
      const double* p = partial.data() + b * width;
      for (int64_t k = k0; k < k1; ++k) total[static_cast<size_t>(k)] += p[k];
    }
  });
  return total;
}

}  // namespace attnlab::cpu
