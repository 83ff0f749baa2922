// Forward + backward time of every attention variant's fused op on the CPU, next to its composed
// reference and the fused softmax baseline, as ratios; plus the peak memory of both.
//
//   build/bench/attention_bench [--ops softmax,sigmoid,...] [--T 256,1024,4096] [--B 4] [--H 8]
//                               [--D 64] [--reps 3] [--ref-full-max-T 1024] [--ref-max-T N]
//                               [--pairs slow:fast,...]
//
// One timed call = forward, then backward with a random upstream gradient (every differentiable
// input's gradient), causal mask, f32; the median of --reps calls after one warm-up call.
// The composed reference materialises [T, S] matrices per (b, h): above --ref-full-max-T it runs at
// B = 1, H = 2 and its time is scaled by B * H / 2 (the (b, h) pairs are independent work), and the
// row is marked so (its peak memory is scaled the same way); above --ref-max-T it is not run at
// all. --pairs a:b prints, per T, how many times longer op a's fused call takes than op b's (e.g.
// kda_recurrent:kda, the token-by-token form against the chunkwise one). Peak memory is the growth of the
// process's peak resident set during one call (Linux: /proc/self/clear_refs resets the peak;
// large buffers are mmapped and returned on free, so earlier calls do not hide the growth),
// block cache emptied first.
// Threads: OpenMP's default (all cores); the header says how many.
#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <malloc.h>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "layers/all_ops.h"
#include "lib/cpu/parallel.h"
#include "lib/storage.h"

namespace po = boost::program_options;
using namespace attnlab;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

// kB from /proc/self/status ("VmRSS", "VmHWM").
double status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(line.find(':') + 1));
  return 0;
}

void reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

AttnOpArgs inputs(const AttentionOpSpec& spec, int64_t B, int64_t H, int64_t T, int64_t D) {
  AttnDims d;
  d.B = B, d.H = H, d.T = d.S = T, d.Dk = d.Dv = D, d.Dm = H * D;
  AttnOpArgs a = random_attention_args(spec, d, AttentionMask{true, 0}, 1);
  auto f32 = [](const Variable& v, bool grad) { return Variable(v.data().to(DType::f32), grad); };
  a.q = f32(a.q, true), a.k = f32(a.k, true), a.v = f32(a.v, true);
  for (size_t i = 0; i < a.extras.size(); ++i) a.extras[i] = f32(a.extras[i], spec.extras[i].differentiable);
  return a;
}

// Seconds for one forward + backward.
double run_once(const std::function<AttnOpResult(const AttnOpArgs&)>& fn, const AttnOpArgs& a, const Tensor& dout) {
  const auto t0 = std::chrono::steady_clock::now();
  const AttnOpResult r = fn(a);
  r.out.backward(dout);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median_time(const std::function<AttnOpResult(const AttnOpArgs&)>& fn, const AttnOpArgs& a, int reps) {
  const Tensor dout = sample_randn(a.q.shape(), 7).to(DType::f32);  // Dv = Dk here
  run_once(fn, a, dout);
  std::vector<double> ts;
  for (int i = 0; i < reps; ++i) ts.push_back(run_once(fn, a, dout));
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

// Growth of the process's peak resident memory during one call (forward and backward), in MB.
// Small calls reuse pages the process already holds and read as ~0: the column is meant for
// the large T.
double peak_mb_of(const std::function<AttnOpResult(const AttnOpArgs&)>& fn, const AttnOpArgs& a) {
  const Tensor dout = sample_randn(a.q.shape(), 3).to(DType::f32);
  host_cache_empty();
  reset_peak_rss();
  const double rss0 = status_kb("VmRSS");
  run_once(fn, a, dout);
  return std::max(0.0, (status_kb("VmHWM") - rss0) / 1024.0);
}

}  // namespace

int main(int argc, char** argv) {
  // A fixed mmap threshold: glibc otherwise raises it after the first large free, later large
  // buffers come from a heap that is never trimmed, and every call after the first big one reads
  // as ~0 MB of peak growth.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);
  std::string ops_arg, t_arg = "256,1024,4096";
  std::string pairs_arg;
  int64_t B = 4, H = 8, D = 64, ref_full_max_t = 1024, ref_max_t = -1;
  int reps = 3;
  po::options_description desc("attention_bench options");
  desc.add_options()("help", "this text")("ops", po::value(&ops_arg), "comma-separated op names (default: all)")(
      "T", po::value(&t_arg), "comma-separated sequence lengths")("B", po::value(&B), "batch")(
      "H", po::value(&H), "heads")("D", po::value(&D), "head dim")("reps", po::value(&reps), "timed calls")(
      "ref-full-max-T", po::value(&ref_full_max_t), "largest T at which the reference runs at full B, H")(
      "ref-max-T", po::value(&ref_max_t), "largest T at which the reference runs at all (default: every T)")(
      "pairs", po::value(&pairs_arg), "comma-separated slow:fast op pairs whose fused time ratio to print");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "attention_bench: " << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  std::vector<std::string> names = split(ops_arg);
  if (names.empty())
    for (const AttentionOpSpec& s : attention_ops().specs()) names.push_back(s.name);
  std::vector<int64_t> Ts;
  for (const std::string& t : split(t_arg)) Ts.push_back(std::stoll(t));

  std::printf("attention fwd+bwd on the CPU, f32, causal, B=%lld H=%lld D=%lld, %d OpenMP threads, median of %d\n",
              static_cast<long long>(B), static_cast<long long>(H), static_cast<long long>(D), cpu::max_threads(), reps);
  std::printf("| op | T | fused ms | reference ms | reference / fused | fused / softmax | fused peak MB | reference peak MB |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  const AttentionOpSpec& softmax = attention_ops().get("softmax");
  std::map<int64_t, double> softmax_ms;
  std::map<std::string, std::map<int64_t, double>> fused_ms;
  for (int64_t T : Ts) softmax_ms[T] = 1e3 * median_time(softmax.fused, inputs(softmax, B, H, T, D), reps);
  for (const std::string& name : names) {
    const AttentionOpSpec& spec = attention_ops().get(name);
    for (int64_t T : Ts) {
      const AttnOpArgs a = inputs(spec, B, H, T, D);
      const double f = name == "softmax" ? softmax_ms[T] : 1e3 * median_time(spec.fused, a, reps);
      fused_ms[name][T] = f;
      const double peak_mb = peak_mb_of(spec.fused, a);
      if (ref_max_t >= 0 && T > ref_max_t) {
        std::printf("| %s | %lld | %.1f | not run (T > --ref-max-T) | | %.2f | %.0f | |\n", name.c_str(),
                    static_cast<long long>(T), f, f / softmax_ms[T], peak_mb);
        std::fflush(stdout);
        continue;
      }
      // The reference, at full size or scaled from B = 1, H = 2 (time and memory both grow
      // linearly in the number of (b, h) pairs).
      const bool full = T <= ref_full_max_t;
      const int64_t small_h = std::min<int64_t>(2, H);
      const double factor = full ? 1.0 : static_cast<double>(B * H) / static_cast<double>(small_h);
      const AttnOpArgs ra = full ? a : inputs(spec, 1, small_h, T, D);
      const double ref = 1e3 * median_time(spec.reference, ra, full ? std::max(1, reps / 2) : 1) * factor;
      const double ref_peak_mb = peak_mb_of(spec.reference, ra) * factor;
      std::printf("| %s | %lld | %.1f | %.1f%s | %.1f | %.2f | %.0f | %.0f |\n", name.c_str(), static_cast<long long>(T),
                  f, ref, full ? "" : " (scaled from B=1 H=2)", ref / f, f / softmax_ms[T], peak_mb, ref_peak_mb);
      std::fflush(stdout);
    }
  }
  for (const std::string& pair : split(pairs_arg)) {
    const size_t colon = pair.find(':');
    const std::string slow = pair.substr(0, colon), fast = colon == std::string::npos ? "" : pair.substr(colon + 1);
    if (!fused_ms.count(slow) || !fused_ms.count(fast)) {
      std::printf("pair %s: both ops must be among --ops\n", pair.c_str());
      continue;
    }
    for (int64_t T : Ts)
      std::printf("%s / %s at T=%lld: %.2f\n", slow.c_str(), fast.c_str(), static_cast<long long>(T),
                  fused_ms[slow][T] / fused_ms[fast][T]);
  }
  // How each op's time grows: 4x T costs 4x for a linear-time op, 16x for a quadratic one.
  for (const auto& [name, by_t] : fused_ms)
    for (size_t i = 1; i < Ts.size(); ++i)
      if (by_t.count(Ts[i]) && by_t.count(Ts[i - 1]))
        std::printf("scaling %s: T=%lld / T=%lld time ratio %.2f (T ratio %.1f)\n", name.c_str(),
                    static_cast<long long>(Ts[i]), static_cast<long long>(Ts[i - 1]),
                    by_t.at(Ts[i]) / by_t.at(Ts[i - 1]), static_cast<double>(Ts[i]) / static_cast<double>(Ts[i - 1]));
  return 0;
}
