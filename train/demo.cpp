#include "train/demo.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "data/byte_tokenizer.h"
#include "layers/linear.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "optim/adamw.h"

namespace attnlab {

namespace {

struct DemoConfig {
  std::string text_path;
  double val_fraction;
  int64_t context, embed, hidden;
  int64_t batch, steps, log_every;
  double lr, weight_decay;
  uint64_t seed;
  int64_t sample_bytes;
  double temperature;
  std::string prompt;
};

DemoConfig read_config(Recipe& r) {
  DemoConfig c;
  c.text_path = r.get_string("data.text", "/usr/share/common-licenses/GPL-3");
  c.val_fraction = r.get_double("data.val_fraction", 0.1);
  c.context = r.get_int("model.context", 8);
  c.embed = r.get_int("model.embed", 24);
  c.hidden = r.get_int("model.hidden", 256);
  c.lr = r.get_double("optim.lr", 3e-3);
  c.weight_decay = r.get_double("optim.weight_decay", 0.0);
  c.batch = r.get_int("train.batch", 64);
  c.steps = r.get_int("train.steps", 1000);
  c.log_every = r.get_int("train.log_every", 100);
  c.seed = static_cast<uint64_t>(r.get_int("run.seed", 1));
  c.sample_bytes = r.get_int("sample.bytes", 300);
  c.temperature = r.get_double("sample.temperature", 0.8);
  c.prompt = r.get_string("sample.prompt", "The ");
  r.check_all_used();
  auto positive = [&](const char* key, int64_t v) {
    AL_CHECK_CONFIG(v > 0, "recipe ", r.source(), ": ", key, " must be > 0; got ", v);
  };
  positive("model.context", c.context);
  positive("model.embed", c.embed);
  positive("model.hidden", c.hidden);
  positive("train.batch", c.batch);
  positive("train.steps", c.steps);
  positive("train.log_every", c.log_every);
  AL_CHECK_CONFIG(c.val_fraction > 0 && c.val_fraction < 0.5, "recipe ", r.source(),
                  ": data.val_fraction must be in (0, 0.5); got ", c.val_fraction);
  AL_CHECK_CONFIG(c.temperature > 0, "recipe ", r.source(), ": sample.temperature must be > 0; got ", c.temperature);
  return c;
}

class ByteMlp : public Module {
 public:
  ByteMlp(const DemoConfig& c, Generator& gen) : context_(c.context), embed_dim_(c.embed) {
    embed_ = register_parameter("embed.weight", randn(Shape{256, c.embed}, gen));
    fc1_ = register_module("fc1", std::make_shared<Linear>(c.context * c.embed, c.hidden, true, gen));
    fc2_ = register_module("fc2", std::make_shared<Linear>(c.hidden, 256, true, gen));
  }

  // ids [B, context] i32 -> logits [B, 256]
  Variable forward(const Variable& ids) const {
    const Variable e = embedding(embed_, ids);  // [B, context, embed]
    const Variable h = gelu(fc1_->forward(reshape(e, Shape{ids.size(0), context_ * embed_dim_})));
    return fc2_->forward(h);
  }

 private:
  int64_t context_, embed_dim_;
  Variable embed_;
  std::shared_ptr<Linear> fc1_, fc2_;
};

// Inputs [B, context] and next-byte targets [B] at random offsets of `tokens`.
std::pair<Tensor, Tensor> sample_batch(const Tensor& tokens, int64_t batch, int64_t context, Generator& gen) {
  const Tensor starts = randint(Shape{batch}, tokens.numel() - context, gen);
  Tensor x = Tensor::empty(Shape{batch, context}, DType::i32), y = Tensor::empty(Shape{batch}, DType::i32);
  const int32_t* t = tokens.data<int32_t>();
  const int32_t* s = starts.data<int32_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < context; ++j) x.data<int32_t>()[b * context + j] = t[s[b] + j];
    y.data<int32_t>()[b] = t[s[b] + context];
  }
  return {x, y};
}

// Mean loss over every position of a held-out token stream, without a graph.
double evaluate(const ByteMlp& model, const Tensor& tokens, int64_t context) {
  NoGradGuard ng;
  const int64_t n = tokens.numel() - context;
  double total = 0;
  const int64_t chunk = 1024;
  for (int64_t b0 = 0; b0 < n; b0 += chunk) {
    const int64_t m = std::min(chunk, n - b0);
    Tensor x = Tensor::empty(Shape{m, context}, DType::i32), y = Tensor::empty(Shape{m}, DType::i32);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < context; ++j) x.data<int32_t>()[i * context + j] = tokens.data<int32_t>()[b0 + i + j];
      y.data<int32_t>()[i] = tokens.data<int32_t>()[b0 + i + context];
    }
    total += cross_entropy(model.forward(Variable(x)), Variable(y)).data().item<double>() * static_cast<double>(m);
  }
  return total / static_cast<double>(n);
}

std::string sample_text(const ByteMlp& model, const DemoConfig& c, Generator& gen) {
  NoGradGuard ng;
  std::string text = c.prompt;
  const std::string pad(static_cast<size_t>(std::max<int64_t>(0, c.context - static_cast<int64_t>(text.size()))), ' ');
  std::string window = pad + text;
  ByteTokenizer tok;
  for (int64_t i = 0; i < c.sample_bytes; ++i) {
    const Tensor ids = tok.encode(std::string_view(window).substr(window.size() - static_cast<size_t>(c.context)))
                           .reshape(Shape{1, c.context});
    const Tensor probs = softmax(model.forward(Variable(ids)) * (1.0 / c.temperature)).data();
    const double u = rand(Shape{}, gen, DType::f64).item<double>();
    const std::vector<float> p = probs.to_vector<float>();
    double acc = 0;
    int next = 255;
    for (int k = 0; k < 256; ++k) {
      acc += p[static_cast<size_t>(k)];
      if (u < acc) {
        next = k;
        break;
      }
    }
    text.push_back(static_cast<char>(next));
    window.push_back(static_cast<char>(next));
  }
  return text;
}

}  // namespace

double run_demo(Recipe& recipe, std::ostream& out) {
  const DemoConfig c = read_config(recipe);
  const std::string text = read_text_file(c.text_path);
  ByteTokenizer tok;
  const Tensor all = tok.encode(text);
  const int64_t n_val = static_cast<int64_t>(static_cast<double>(all.numel()) * c.val_fraction);
  const Tensor train = all.narrow(0, 0, all.numel() - n_val).contiguous();
  const Tensor val = all.narrow(0, all.numel() - n_val, n_val).contiguous();
  AL_CHECK_IO(val.numel() > c.context && train.numel() > c.context, "text file '", c.text_path, "' (", text.size(),
              " bytes) is too short for model.context = ", c.context);

  Generator gen(c.seed);
  ByteMlp model(c, gen);
  AdamW opt(model.parameters(), {.lr = c.lr, .weight_decay = c.weight_decay});
  out << "attnlab demo: byte-level MLP language model on " << c.text_path << " (" << text.size() << " bytes: "
      << train.numel() << " train, " << val.numel() << " validation)\n"
      << "model: context " << c.context << ", embed " << c.embed << ", hidden " << c.hidden << " -> "
      << model.num_parameters() << " parameters; AdamW lr " << c.lr << ", batch " << c.batch << ", "
      << cpu::max_threads() << " threads\n";

  const auto t0 = std::chrono::steady_clock::now();
  double running = 0;
  int64_t in_window = 0;
  for (int64_t step = 1; step <= c.steps; ++step) {
    auto [x, y] = sample_batch(train, c.batch, c.context, gen);
    Variable loss = cross_entropy(model.forward(Variable(x)), Variable(y));
    opt.zero_grad();
    loss.backward();
    opt.step();
    running += loss.data().item<double>();
    ++in_window;
    if (step % c.log_every == 0 || step == 1 || step == c.steps) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      char line[160];
      std::snprintf(line, sizeof line, "step %5lld/%lld  train loss %.4f  %.0f bytes/s\n", static_cast<long long>(step),
                    static_cast<long long>(c.steps), running / static_cast<double>(in_window),
                    static_cast<double>(step * c.batch) / std::max(secs, 1e-9));
      out << line << std::flush;
      running = 0;
      in_window = 0;
    }
  }
  const double val_loss = evaluate(model, val, c.context);
  char line[160];
  std::snprintf(line, sizeof line, "validation loss %.4f nats/byte (%.3f bits/byte; uniform is 8)\n", val_loss,
                val_loss / std::log(2.0));
  out << line << "sample (temperature " << c.temperature << "):\n" << sample_text(model, c, gen) << "\n";
  return val_loss;
}

}  // namespace attnlab
