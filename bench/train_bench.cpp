// Training-step throughput of attnlab's GPT at a fixed shape, measured the way
// ../shared/peers/torch_gpt.py measures the PyTorch peer, so the two print comparable lines:
// GPT-2 architecture (pre-LayerNorm with biases, learned positions, GELU-tanh MLP 4x, causal
// softmax attention, tied embeddings), AdamW lr 1e-4, random tokens; one step = batch + forward
// + cross-entropy + backward + AdamW. Prints per-step times, then
//   RESULT B=.. T=.. steps=.. median_ms=.. min_ms=.. max_ms=.. tok_per_s=.. peak_rss_mb=..
//
//   build/bench/train_bench --L 4 --C 256 --NH 4 --V 512 --B 8 --T 128 --steps 10
// bench/compare_torch.sh runs both programs at the same shape and prints the ratio.
#include <sys/resource.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "autograd/ops.h"
#include "layers/gpt.h"
#include "lib/cpu/gemm.h"
#include "lib/cpu/parallel.h"
#include "lib/rng.h"
#include "optim/adamw.h"

namespace po = boost::program_options;
using namespace attnlab;

namespace {
double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux reports KiB
}
}  // namespace

int main(int argc, char** argv) {
  int64_t L = 4, C = 256, NH = 4, V = 512, pad = 128, block = 1024, B = 8, T = 128, steps = 10, warmup = 2;
  uint64_t seed = 1337;
  po::options_description desc("train_bench options (the peer's names)");
  desc.add_options()("help", "this text")("L", po::value(&L), "layers")("C", po::value(&C), "d_model")(
      "NH", po::value(&NH), "heads")("V", po::value(&V), "vocabulary")("pad-vocab", po::value(&pad),
                                                                      "pad the vocabulary to a multiple of this")(
      "block-size", po::value(&block), "context (rows of wpe)")("B", po::value(&B), "batch")("T", po::value(&T),
                                                                                             "sequence length")(
      "steps", po::value(&steps), "timed steps")("warmup", po::value(&warmup), "untimed steps")("seed", po::value(&seed),
                                                                                              "random seed");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::cerr << "train_bench: " << e.what() << "\n" << desc;
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc;
    return 0;
  }
  GptConfig cfg;
  cfg.vocab_size = V;
  cfg.vocab_pad = pad;
  cfg.context = block;
  cfg.layers = L;
  cfg.d_model = C;
  cfg.heads = NH;
  Generator gen(seed);
  Gpt model(cfg, gen);
  AdamW opt(model.parameters(), AdamWConfig{.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0});
  const Tensor data = randint(Shape{200000}, V, gen);
  std::printf("attnlab threads=%d gemm=%s L=%lld C=%lld NH=%lld V=%lld Vp=%lld block=%lld B=%lld T=%lld params=%lld\n",
              cpu::max_threads(), cpu::gemm_backend(), static_cast<long long>(L), static_cast<long long>(C),
              static_cast<long long>(NH), static_cast<long long>(V), static_cast<long long>(cfg.padded_vocab()),
              static_cast<long long>(block), static_cast<long long>(B), static_cast<long long>(T),
              static_cast<long long>(model.num_parameters()));
  std::vector<double> times;
  for (int64_t step = 0; step < warmup + steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const Tensor starts = randint(Shape{B}, data.numel() - T - 1, gen);
    Tensor x = Tensor::empty(Shape{B, T}, DType::i32), y = Tensor::empty(Shape{B, T}, DType::i32);
    for (int64_t b = 0; b < B; ++b) {
      const int32_t s = starts.data<int32_t>()[b];
      std::copy_n(data.data<int32_t>() + s, T, x.data<int32_t>() + b * T);
      std::copy_n(data.data<int32_t>() + s + 1, T, y.data<int32_t>() + b * T);
    }
    const Variable loss = cross_entropy(model.forward(Variable(x)), Variable(y));
    opt.zero_grad();
    loss.backward();
    opt.step();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("step %lld: loss %.6f (%.2f ms)%s\n", static_cast<long long>(step), loss.data().item<double>(), ms,
                step < warmup ? " [warmup]" : "");
    std::fflush(stdout);
    if (step >= warmup) times.push_back(ms);
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                       : 0.5 * (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]);
  std::printf("RESULT B=%lld T=%lld steps=%lld median_ms=%.2f min_ms=%.2f max_ms=%.2f tok_per_s=%.1f peak_rss_mb=%.1f\n",
              static_cast<long long>(B), static_cast<long long>(T), static_cast<long long>(steps), med, sorted.front(),
              sorted.back(), static_cast<double>(B * T) / (med / 1000.0), peak_rss_mb());
  return 0;
}
