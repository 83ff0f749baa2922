// Dumps what a checkpoint's model computes, for bench/check_torch_logits.py to compare against
// the PyTorch peer (../shared/peers/torch_gpt.py) loaded with the same weights.
//
//   dump_logits CHECKPOINT OUT.safetensors [--ids 1,2,3,...[;4,5,6,...]]
//       CHECKPOINT: a run directory (its latest checkpoint), a checkpoints directory or a
//       *.model.safetensors file. Runs the model in eval mode (no dropout, no graph) on the ids
//       (rows separated by ';', all of one length; default: 2 rows of min(context, 64)
//       pseudo-random ids from Philox seed 1234) and writes OUT with
//         "ids"    I32 [B, T]
//         "logits" F32 [B, T, padded_vocab]
//       and the metadata "config" (the checkpoint's model config JSON) and "checkpoint" (its path).
//
//   dump_logits --starts NUM_TOKENS BATCH SEQ_LEN SEED FIRST COUNT
//       Prints the window starts BatchSampler (data/batch_sampler.h) draws for batches
//       FIRST .. FIRST + COUNT - 1 of a NUM_TOKENS-token stream, one batch per line
//       ("step: s0 s1 ..."), so bench/torch_train_peer.py can check its numpy Philox against ours.
//
// Exit codes: 0 success, 2 bad arguments or unreadable checkpoint, 1 anything else.
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "data/batch_sampler.h"
#include "layers/gpt.h"
#include "lib/error.h"
#include "lib/rng.h"
#include "lib/safetensors.h"
#include "train/model_io.h"

namespace {

using attnlab::GptConfig;

constexpr const char* kUsage =
    "usage: dump_logits CHECKPOINT OUT.safetensors [--ids 1,2,3,...[;4,5,6,...]]\n"
    "       dump_logits --starts NUM_TOKENS BATCH SEQ_LEN SEED FIRST COUNT\n";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "1,2,3;4,5,6" -> rows of ids.
std::vector<std::vector<int32_t>> parse_ids(const std::string& text) {
  std::vector<std::vector<int32_t>> rows;
  std::stringstream rs(text);
  std::string row;
  while (std::getline(rs, row, ';')) {
    std::vector<int32_t> ids;
    std::stringstream is(row);
    std::string item;
    while (std::getline(is, item, ',')) {
      try {
        size_t used = 0;
        const long v = std::stol(item, &used);
        if (used != item.size()) throw std::invalid_argument(item);
        ids.push_back(static_cast<int32_t>(v));
      } catch (const std::exception&) {
        throw UsageError("--ids: '" + item + "' is not an integer");
      }
    }
    if (ids.empty()) throw UsageError("--ids: an empty row");
    if (!rows.empty() && ids.size() != rows.front().size()) throw UsageError("--ids: rows of different lengths");
    rows.push_back(std::move(ids));
  }
  if (rows.empty()) throw UsageError("--ids: no ids");
  return rows;
}

int dump_starts(const std::vector<std::string>& a) {
  if (a.size() != 7) throw UsageError(std::string("--starts takes 6 numbers\n") + kUsage);
  const int64_t n = std::stoll(a[1]), batch = std::stoll(a[2]), seq_len = std::stoll(a[3]);
  const uint64_t seed = std::stoull(a[4]), first = std::stoull(a[5]), count = std::stoull(a[6]);
  // BatchSampler only looks at the stream's length when drawing starts.
  attnlab::BatchSampler sampler(attnlab::Tensor::zeros(attnlab::Shape{n}, attnlab::DType::i32), batch, seq_len, seed);
  for (uint64_t k = first; k < first + count; ++k) {
    std::cout << k << ":";
    for (int64_t s : sampler.starts(k)) std::cout << " " << s;
    std::cout << "\n";
  }
  return 0;
}

int dump_logits(const std::vector<std::string>& a) {
  std::string ckpt, out, ids_text;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] == "--ids") {
      if (i + 1 >= a.size()) throw UsageError("--ids needs a value");
      ids_text = a[++i];
    } else if (a[i].rfind("--ids=", 0) == 0) {
      ids_text = a[i].substr(6);
    } else if (a[i].rfind("--", 0) == 0) {
      throw UsageError("unknown option '" + a[i] + "'\n" + kUsage);
    } else if (ckpt.empty()) {
      ckpt = a[i];
    } else if (out.empty()) {
      out = a[i];
    } else {
      throw UsageError(std::string("too many arguments\n") + kUsage);
    }
  }
  if (out.empty()) throw UsageError(kUsage);

  const attnlab::LoadedModel loaded = attnlab::load_model(ckpt);
  const std::string& model_path = loaded.model_path;
  const GptConfig& config = loaded.config;
  const attnlab::Gpt& model = *loaded.model;

  std::vector<std::vector<int32_t>> rows;
  if (!ids_text.empty()) {
    rows = parse_ids(ids_text);
  } else {
    const int64_t t = std::min<int64_t>(config.context, 64);
    attnlab::Generator gen(1234);
    const std::vector<int32_t> v = attnlab::randint(attnlab::Shape{2 * t}, config.vocab_size, gen).to_vector<int32_t>();
    rows = {std::vector<int32_t>(v.begin(), v.begin() + t), std::vector<int32_t>(v.begin() + t, v.end())};
  }
  const auto b = static_cast<int64_t>(rows.size()), t = static_cast<int64_t>(rows.front().size());
  if (t > config.context)
    throw UsageError("--ids: " + std::to_string(t) + " ids per row; the model's context is " +
                     std::to_string(config.context));
  std::vector<int32_t> flat;
  for (const auto& r : rows) {
    for (int32_t id : r)
      if (id < 0 || id >= config.vocab_size)
        throw UsageError("--ids: id " + std::to_string(id) + " is outside [0, " + std::to_string(config.vocab_size) + ")");
    flat.insert(flat.end(), r.begin(), r.end());
  }
  const attnlab::Tensor ids = attnlab::Tensor::from_vector(attnlab::Shape{b, t}, flat);

  attnlab::Tensor logits;
  {
    attnlab::NoGradGuard no_grad;
    logits = model.forward(attnlab::Variable(ids)).data().contiguous();
  }
  attnlab::save_safetensors(out, {{"ids", ids}, {"logits", logits}},
                            {{"config", attnlab::gpt_config_json(config)}, {"checkpoint", model_path}});
  std::cout << "dump_logits: " << model_path << " -> " << out << " (ids [" << b << ", " << t << "], logits "
            << logits.str() << ")\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (!args.empty() && args.front() == "--starts") return dump_starts(args);
    return dump_logits(args);
  } catch (const UsageError& e) {
    std::cerr << "dump_logits: " << e.what() << "\n";
    return 2;
  } catch (const attnlab::IoError& e) {
    std::cerr << "dump_logits: " << e.what() << "\n";
    return 2;
  } catch (const attnlab::ConfigError& e) {
    std::cerr << "dump_logits: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dump_logits: " << e.what() << "\n";
    return 1;
  }
}
