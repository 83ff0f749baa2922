#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "data/batch_sampler.h"
#include "data/bpe.h"
#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "layers/gpt.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/file_io.h"
#if ATTNLAB_WITH_CUDA
#include "lib/cuda/runtime.h"
#endif
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "optim/sgd.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
#include "train/finetune.h"
#include "train/model_io.h"
#include "train/residual_train.h"
#include "train/results.h"
#include "train/run_common.h"
#include "train/sampling.h"
#include "train/task_train.h"

namespace attnlab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ---- configuration ----------------------------------------------------------------------

// The recipe's keys: [run], [train]'s loop keys and AdamW's [optim] keys as `attnlab finetune`
// reads them too (train/run_common.h), then this command's own.
struct RunConfig : RunKeys, LoopKeys, AdamWKeys {
  // [data]
  std::string task = kCorpusTask;  // data.task: "corpus" (text) or a synthetic task's name
  TaskSetup task_setup;            // synthetic tasks only
  std::string corpus, corpus_dir, tokenizer;
  int64_t bpe_vocab = 0;
  double val_fraction = 0.1;
  // [model]
  GptConfig model;
  // [optim] (AdamWKeys: the schedule and AdamW's settings)
  std::string optimizer;
  double momentum = 0.9;   // sgd
  double routing_lr = 0;   // peak lr of the residual routing parameters (train/residual_train.h)
  std::string init_from;   // init.from: a checkpoint whose weights start the run
  // [dist]
  DataParallelKeys dist;
  // [sample]
  SampleOptions sample;
  std::string prompt;

  bool is_task() const { return task != kCorpusTask; }
  // The checkpoint's "tokenizer" entry.
  std::string tokenizer_meta() const { return is_task() ? kTaskTokenizer : tokenizer; }
};

// Runs a config struct's own validate(), prefixing its message with the recipe's name.
template <typename Fn>
void in_recipe(const Recipe& r, Fn&& validate) {
  try {
    validate();
  } catch (const ConfigError& e) {
    detail::throw_error<ConfigError>("recipe ", r.source(), ": ", e.what());
  }
}

std::string device_description(Device d) {
#if ATTNLAB_WITH_CUDA
  if (d.is_cuda()) return d.str() + " (" + cuda::device_name(d.index) + ")";
#endif
  return d.str();
}

RunConfig read_config(Recipe& r) {
  RunConfig c;
  static_cast<RunKeys&>(c) = read_run_keys(r, "run");

  c.task = r.get_string("data.task", kCorpusTask);
  if (c.is_task()) {
    // The text keys mean nothing to a generated task: say so rather than "unknown key".
    for (const char* key : {"data.corpus", "data.corpus_dir", "data.tokenizer", "data.bpe_vocab", "data.val_fraction"})
      AL_CHECK_CONFIG(!r.has(key), "recipe ", r.source(), ": ", key, " is for text corpora; data.task = ", c.task,
                      " generates its own sequences (remove the key, or set data.task = corpus)");
  } else {
    c.corpus = r.get_string("data.corpus", "austen");
    c.corpus_dir = r.get_string("data.corpus_dir", "corpora");
    c.tokenizer = r.get_string("data.tokenizer", "byte");
    c.bpe_vocab = r.get_int("data.bpe_vocab", 2048);
    c.val_fraction = r.get_double("data.val_fraction", 0.1);
    AL_CHECK_CONFIG(c.tokenizer == "byte" || c.tokenizer == "bpe", "recipe ", r.source(),
                    ": data.tokenizer must be byte or bpe; got '", c.tokenizer, "'");
    AL_CHECK_CONFIG(c.tokenizer != "bpe" || (c.bpe_vocab > 256 && c.bpe_vocab <= 65536), "recipe ", r.source(),
                    ": data.bpe_vocab must be in (256, 65536]; got ", c.bpe_vocab);
    AL_CHECK_CONFIG(c.val_fraction > 0 && c.val_fraction < 0.5, "recipe ", r.source(),
                    ": data.val_fraction must be in (0, 0.5); got ", c.val_fraction);
  }

  static_cast<LoopKeys&>(c) = read_loop_keys(r, /*default_eval_batches=*/20);

  GptConfig& m = c.model;
  m.vocab_size = c.tokenizer == "byte" ? 256 : c.bpe_vocab;
  m.vocab_pad = r.get_int("model.vocab_pad", 1);
  m.context = r.get_int("model.context", c.seq_len);
  if (c.is_task()) {
    c.task_setup = read_task_recipe(r, c.task, c.seq_len, m.context);
    const SyntheticTask& t = *c.task_setup.task;
    m.vocab_size = t.vocab_size();
    m.input_dim = t.input_dim();
    m.output_dim = t.output_dim();
  }
  m.layers = r.get_int("model.layers", m.layers);
  m.d_model = r.get_int("model.d_model", m.d_model);
  m.heads = r.get_int("model.heads", m.heads);
  m.mlp_hidden = r.get_int("model.mlp_hidden", 0);
  m.norm = r.get_string("model.norm", m.norm);
  m.mlp = r.get_string("model.mlp", m.mlp);
  m.positions = r.get_string("model.positions", m.positions);
  m.attention = r.get_string("model.attention", m.attention);
  AttentionOptions& ao = m.attention_options;
  ao.qk_norm = r.get_bool("model.qk_norm", ao.qk_norm);
  ao.sigmoid_bias = r.get_string("model.sigmoid.bias", ao.sigmoid_bias);
  ao.affine_phi = r.get_string("model.affine.phi", ao.affine_phi);
  ao.affine_bias_norm = r.get_string("model.affine.bias_norm", ao.affine_bias_norm);
  ao.affine_rho = r.get_double("model.affine.rho", ao.affine_rho);
  ao.infsa_gamma = r.get_double("model.infsa.gamma", ao.infsa_gamma);
  ao.linear_infsa_form = r.get_string("model.linear_infsa.form", ao.linear_infsa_form);
  ao.kda_conv = r.get_int("model.kda.conv", ao.kda_conv);
  ao.lla_lambda = r.get_double("model.lla.lambda", ao.lla_lambda);
  ao.lla_learn_lambda = r.get_bool("model.lla.learn_lambda", ao.lla_learn_lambda);
  ao.lla_flashlla_grad = r.get_bool("model.lla.flashlla_grad", ao.lla_flashlla_grad);
  m.layer_pattern = r.get_string("model.layer_pattern", m.layer_pattern);
  m.bias = r.get_bool("model.bias", m.bias);
  m.tie_embeddings = r.get_bool("model.tie_embeddings", m.tie_embeddings);
  m.dropout = r.get_double("model.dropout", 0.0);
  m.rope_base = r.get_double("model.rope_base", m.rope_base);
  read_residual_recipe(r, m);
  const std::string precision = r.get_string("model.precision", "f32");
  in_recipe(r, [&] { m.matmul_precision = parse_matmul_precision(precision); });
  in_recipe(r, [&] { m.validate(); });
  AL_CHECK_CONFIG(c.seq_len <= m.context, "recipe ", r.source(), ": train.seq_len (", c.seq_len,
                  ") must be <= model.context (", m.context, ")");

  c.optimizer = r.get_string("optim.name", "adamw");
  AL_CHECK_CONFIG(c.optimizer == "adamw" || c.optimizer == "sgd", "recipe ", r.source(),
                  ": optim.name must be adamw or sgd; got '", c.optimizer, "'");
  static_cast<AdamWKeys&>(c) = read_adamw_keys(r, c.steps, /*default_lr=*/1e-3, /*default_weight_decay=*/0.1);
  c.momentum = r.get_double("optim.momentum", 0.9);
  c.routing_lr = r.get_double("optim.routing_lr", c.schedule.peak);
  AL_CHECK_CONFIG(c.routing_lr >= 0, "recipe ", r.source(), ": optim.routing_lr must be >= 0; got ", c.routing_lr);
  if (r.has("init.from")) c.init_from = r.get_string("init.from", "");
  check_adamw_keys(r, c);
  c.dist = read_data_parallel_keys(r);

  // A task run shows validation rows instead of a text sample: no [sample] keys.
  if (!c.is_task()) {
    c.prompt = r.get_string("sample.prompt", "\n");
    c.sample.tokens = r.get_int("sample.tokens", 300);
    c.sample.temperature = r.get_double("sample.temperature", 0.8);
    c.sample.top_k = r.get_int("sample.top_k", 40);
    c.sample.seed = c.seed;
    AL_CHECK_CONFIG(c.sample.temperature > 0 && c.sample.tokens >= 0 && c.sample.top_k >= 0, "recipe ", r.source(),
                    ": sample.temperature must be > 0, sample.tokens and sample.top_k >= 0");
  }
  r.check_all_used();
  return c;
}

// ---- data ---------------------------------------------------------------------------------

struct Dataset {
  std::unique_ptr<Tokenizer> tokenizer;
  Tensor train, val;  // i32 token streams
  bool from_run_dir = false;
};

Tensor encode(const Tokenizer& tok, std::string_view text) {
  const std::vector<int32_t> ids = tok.encode(text);
  return Tensor::from_vector(Shape{static_cast<int64_t>(ids.size())}, ids);
}

// Splits the corpus by bytes (the last val_fraction is validation) and tokenizes each part; a
// BPE tokenizer is trained on the training part only. With `reuse`, the tokenizer and token
// shards an earlier save_data left in the run directory are read instead. Writes nothing.
Dataset prepare_data(const RunConfig& c, const std::string& run_dir, bool reuse, std::ostream& out) {
  Dataset d;
  const fs::path dir(run_dir);
  const fs::path train_shard = dir / "tokens.train.bin", val_shard = dir / "tokens.val.bin";
  const bool have_tok = c.tokenizer == "byte" || fs::exists(dir / "tokenizer.bpe");
  if (reuse && have_tok && fs::exists(train_shard) && fs::exists(val_shard)) {
    d.tokenizer = load_run_tokenizer(c.tokenizer, run_dir);
    d.train = read_token_shard(train_shard.string());
    d.val = read_token_shard(val_shard.string());
    d.from_run_dir = true;
    return d;
  }
  const std::string text = load_corpus(c.corpus, c.corpus_dir);
  const size_t split = text.size() - static_cast<size_t>(static_cast<double>(text.size()) * c.val_fraction);
  const std::string_view train_text = std::string_view(text).substr(0, split);
  const std::string_view val_text = std::string_view(text).substr(split);
  if (reuse && have_tok) {
    d.tokenizer = load_run_tokenizer(c.tokenizer, run_dir);
  } else if (c.tokenizer == "byte") {
    d.tokenizer = std::make_unique<ByteTokenizer>();
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    d.tokenizer = std::make_unique<BpeTokenizer>(BpeTokenizer::train(train_text, c.bpe_vocab));
    out << "trained a byte-level BPE tokenizer (vocab " << c.bpe_vocab << ") in "
        << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s\n";
  }
  d.train = encode(*d.tokenizer, train_text);
  d.val = encode(*d.tokenizer, val_text);
  return d;
}

// Saves what prepare_data built so that resume and eval read it back.
void save_data(const Dataset& d, const std::string& run_dir) {
  const fs::path dir(run_dir);
  if (const auto* bpe = dynamic_cast<const BpeTokenizer*>(d.tokenizer.get()))
    bpe->save((dir / "tokenizer.bpe").string());
  write_token_shard((dir / "tokens.train.bin").string(), d.train, d.tokenizer->vocab_size());
  write_token_shard((dir / "tokens.val.bin").string(), d.val, d.tokenizer->vocab_size());
}

// ---- evaluation -----------------------------------------------------------------------------

double evaluate(const Gpt& model, const Tensor& tokens, int64_t batch, int64_t seq_len, int64_t max_batches) {
  NoGradGuard no_grad;
  double total = 0;
  int64_t n = 0;
  for (const Batch& b : sequential_batches(tokens, batch, seq_len, max_batches)) {
    total += cross_entropy(model.forward(Variable(b.x.to(model.device()))), Variable(b.y.to(model.device())))
                 .data()
                 .item<double>();
    ++n;
  }
  return total / static_cast<double>(std::max<int64_t>(n, 1));
}

// Per layer at an eval step: its kind, the attention-sink mass (mean weight on the first position,
// and that weight as a share of each query's total weight; not for kda) and the
// variant's own numbers (InfSA's learned gamma per head; affine's alpha statistics and running
// mean; KDA's mean decay and beta; LLA's ridge and the conditioning of its solves), on the first
// validation batch (x: its ids, or a vector task's inputs).
json attention_diagnostics_json(const Gpt& model, const Variable& x) {
  json layers = json::array();
  {
    const std::vector<AttentionDiagnostics> ds = model.attention_diagnostics(x);
    for (size_t i = 0; i < ds.size(); ++i) {
      const AttentionDiagnostics& d = ds[i];
      json l = {{"layer", i}, {"kind", d.kind}};
      if (d.has_sink) {
        l["sink"] = d.sink;
        l["sink_share"] = d.sink_share;
      }
      if (d.kind == "kda") {
        l["decay_mean"] = d.kda_decay_mean;
        l["beta_mean"] = d.kda_beta_mean;
      }
      if (d.kind == "lla") {
        l["lambda"] = d.lla_lambda;
        l["delta_ratio_min"] = d.lla_delta_ratio_min;
        l["delta_ratio_mean"] = d.lla_delta_ratio_mean;
        l["cond_mean"] = d.lla_cond_mean;
        l["cond_max"] = d.lla_cond_max;
      }
      if (!d.gamma.empty()) l["gamma"] = d.gamma;
      if (!d.alpha_running.empty()) {
        l["alpha_mean"] = d.alpha_mean;
        l["alpha_std"] = d.alpha_std;
        l["alpha_min"] = d.alpha_min;
        l["alpha_max"] = d.alpha_max;
        l["alpha_running"] = d.alpha_running;
      }
      layers.push_back(l);
    }
  }
  return layers;
}

// The console's eval note: the validation loss, the mean sink over the layers that have one, and
// for KDA and LLA layers their mean decay and beta, or ridge and worst conditioning.
std::string eval_summary(double val_loss, const json& layers, const std::string& metric_note) {
  double sink = 0, decay = 0, beta = 0, lam = 0, cond = 0;
  int64_t sinks = 0, kdas = 0, llas = 0;
  for (const json& l : layers) {
    if (l.contains("sink")) {
      sink += l["sink"].get<double>();
      ++sinks;
    }
    if (l.contains("decay_mean")) {
      decay += l["decay_mean"].get<double>();
      beta += l["beta_mean"].get<double>();
      ++kdas;
    }
    if (l.contains("lambda")) {
      lam += l["lambda"].get<double>();
      cond = std::max(cond, l["cond_max"].get<double>());
      ++llas;
    }
  }
  char v[224];
  int n = std::snprintf(v, sizeof v, "  val %.4f%s", val_loss, metric_note.c_str());
  if (sinks)
    n += std::snprintf(v + n, sizeof v - static_cast<size_t>(n), "  sink %.3f", sink / static_cast<double>(sinks));
  if (kdas)
    n += std::snprintf(v + n, sizeof v - static_cast<size_t>(n), "  decay %.3f  beta %.3f",
                       decay / static_cast<double>(kdas), beta / static_cast<double>(kdas));
  if (llas)
    std::snprintf(v + n, sizeof v - static_cast<size_t>(n), "  lam %.3g  cond %.3g", lam / static_cast<double>(llas),
                  cond);
  return v;
}

std::string sample_text(const Gpt& model, const Tokenizer& tok, const std::string& prompt, const SampleOptions& o) {
  const std::vector<int32_t> ids = generate(model, tok.encode(prompt), o);
  return prompt + tok.decode(ids);
}

// ---- metrics and progress -------------------------------------------------------------------

std::unique_ptr<Optimizer> make_optimizer(const RunConfig& c, const Gpt& model);

// A routed model's optimizer: the base parameters at optim.lr, the routing ones (res.*) at
// optim.routing_lr, each group its own optimizer of the recipe's kind.
std::unique_ptr<Optimizer> make_two_group_optimizer(const RunConfig& c, const Gpt& model) {
  std::vector<Variable> groups[2];
  std::vector<bool> decay[2];
  for (const auto& [name, p] : model.named_parameters()) {
    const int k = is_routing_parameter(name) ? 1 : 0;
    groups[k].push_back(p);
    decay[k].push_back(c.decay_all || !is_no_decay_parameter(name));
  }
  auto make = [&](int k) -> std::unique_ptr<Optimizer> {
    if (c.optimizer == "adamw") return std::make_unique<AdamW>(groups[k], c.adamw(), decay[k]);
    return std::make_unique<Sgd>(
        groups[k], SgdConfig{.lr = c.schedule.peak, .momentum = c.momentum, .weight_decay = c.weight_decay});
  };
  auto opt = std::make_unique<TwoGroupOptimizer>(make(0), make(1), c.routing_lr / c.schedule.peak);
  opt->set_lr(c.schedule.peak);
  return opt;
}

// The recipe's optimizer over the model's parameters.
std::unique_ptr<Optimizer> make_optimizer(const RunConfig& c, const Gpt& model) {
  if (model.router()) return make_two_group_optimizer(c, model);
  if (c.optimizer == "adamw")
    return std::make_unique<AdamW>(model.parameters(), c.adamw(), decay_mask(model, c.decay_all));
  return std::make_unique<Sgd>(
      model.parameters(), SgdConfig{.lr = c.schedule.peak, .momentum = c.momentum, .weight_decay = c.weight_decay});
}

// ---- evaluation steps and the run's result -------------------------------------------------

// What one evaluation found: the metrics line's fields, the console's note and what result.json
// takes from the last one.
struct EvalOutcome {
  double val_loss = 0;
  double metric = 0;                           // the task's metric at train.seq_len (corpus runs: val_loss)
  std::map<int64_t, double> metric_by_length;  // tasks with data.eval_lengths: seq_len and each length
  json fields = json::object();                // val_loss, val_<metric>..., attention, residual
  std::string note;                            // the console's eval note
  std::optional<double> sink_mean, routing_max_weight;
};

// The validation loss (and a task's metric at each evaluated length), then the attention and
// routing diagnostics on the first validation batch.
EvalOutcome evaluate_run(const RunConfig& c, const Gpt& model, const Dataset& data) {
  EvalOutcome e;
  Variable first;  // the first validation batch's input
  std::string metric_note;
  if (c.is_task()) {
    const SyntheticTask& task = *c.task_setup.task;
    const uint64_t seed = validation_seed(c.seed);
    const TaskEval te = evaluate_task(model, task, seed, c.batch, c.seq_len, c.eval_batches);
    const std::string name = "val_" + task.metric_name();
    e.val_loss = te.loss;
    e.metric = te.score.value();
    e.fields[name] = e.metric;
    for (const auto& [part, sc] : te.score.parts)
      e.fields[name + "_" + part] = sc.second > 0 ? sc.first / sc.second : 0.0;
    char v[64];
    std::snprintf(v, sizeof v, "  %s %.4f", task.metric_name().c_str(), e.metric);
    metric_note = v;
    if (!c.task_setup.eval_lengths.empty()) {
      e.metric_by_length[c.seq_len] = e.metric;
      for (const int64_t len : c.task_setup.eval_lengths) {
        const double at =
            len == c.seq_len ? e.metric : evaluate_task(model, task, seed, c.batch, len, c.eval_batches).score.value();
        e.metric_by_length[len] = at;
        e.fields[name + "@" + std::to_string(len)] = at;
        std::snprintf(v, sizeof v, " @%lld %.3f", static_cast<long long>(len), at);
        metric_note += v;
      }
    }
    first = task_input(task.batch(seed, 0, c.batch, c.seq_len), model.device());
  } else {
    e.val_loss = evaluate(model, data.val, c.batch, c.seq_len, c.eval_batches);
    e.metric = e.val_loss;
    for (const Batch& b : sequential_batches(data.val, c.batch, c.seq_len, 1)) first = Variable(b.x.to(model.device()));
  }
  e.fields["val_loss"] = e.val_loss;
  const json layers = first.defined() ? attention_diagnostics_json(model, first) : json::array();
  e.fields["attention"] = layers;
  double sink = 0;
  int64_t sinks = 0;
  for (const json& l : layers)
    if (l.contains("sink")) sink += l["sink"].get<double>(), ++sinks;
  if (sinks) e.sink_mean = sink / static_cast<double>(sinks);
  e.note = eval_summary(e.val_loss, layers, metric_note);
  if (model.router() && first.defined()) {
    // Per routing op (layers/residual/routing.h): mean max weight, entropy, gate.
    const std::vector<RoutingStats> rs = model.routing_diagnostics(first);
    e.fields["residual"] = routing_stats_json(rs);
    double mx = 0, h = 0;
    for (const RoutingStats& st : rs) mx += st.max_weight, h += st.entropy;
    const double n = static_cast<double>(std::max<size_t>(rs.size(), 1));
    e.routing_max_weight = mx / n;
    char v[64];
    std::snprintf(v, sizeof v, "  route max %.3f H %.3f", mx / n, h / n);
    e.note += v;
  }
  return e;
}

// result.json (train/results.h): written once the final checkpoint and samples are, so its
// presence means the run finished. The fields every run writes are run_common.h's result_json.
void write_result(const RunConfig& c, const std::string& run_dir, const TrainResult& r, const EvalOutcome& last,
                  const Gpt& model, double seconds, const DataParallel& dp) {
  json j = result_json(run_dir, r, last.val_loss, seconds, c.batch * c.seq_len, model, c.model, c.device);
  j["ranks"] = dp.world_size();  // tokens_per_s is the whole job's: global batch tokens a step
  j.update(json{{"metric", c.is_task() ? c.task_setup.task->metric_name() : std::string("val_loss")},
                {"metric_value", last.metric},
                {"higher_is_better", c.is_task() && c.task_setup.task->higher_is_better()},
                {"task", c.task}});
  if (!last.metric_by_length.empty()) j["metric_by_length"] = by_length_json(last.metric_by_length);
  if (last.sink_mean) j["sink_mean"] = *last.sink_mean;
  if (last.routing_max_weight) j["routing_max_weight"] = *last.routing_max_weight;
  write_file_atomic((fs::path(run_dir) / kResultFile).string(), j.dump(2) + "\n");
}

}  // namespace

TrainResult run_train(Recipe& recipe, const TrainOptions& options, std::ostream& console) {
  const RunConfig base = read_config(recipe);
  const std::string run_dir = base.run_dir();
  check_run_dir(run_dir, options.resume);

  // Everything that can fail on bad input happens before anything is written.
  const auto t_run = std::chrono::steady_clock::now();
  RunConfig c = base;
  // One process, or one rank of `mpirun -np N` (train/data_parallel.h): only rank 0 prints and
  // writes the run directory.
  DataParallel dp(c.dist, c.device, c.batch, recipe.source());
  c.device = dp.device();
  std::ostream& out = dp.log(console);
  const SyntheticTask* task = c.is_task() ? c.task_setup.task.get() : nullptr;
  Dataset data;  // a task generates its batches: no text, no token shards
  if (!task) {
    data = prepare_data(c, run_dir, /*reuse=*/options.resume, out);
    // A BPE trainer stops early when no pair is left to merge: the model takes the real size.
    c.model.vocab_size = data.tokenizer->vocab_size();
  }
  Generator init_gen(c.seed);
  Gpt model(c.model, init_gen);
  model.to(c.device);
  Checkpoint resumed;
  std::string resumed_from;
  if (options.resume) {
    resumed_from = resolve_checkpoint(run_dir);
    resumed = load_checkpoint(resumed_from, /*with_state=*/true);
    const GptConfig saved = gpt_config_from_json(resumed.model_meta["config"], resumed_from);
    AL_CHECK_CONFIG(gpt_config_json(saved) == gpt_config_json(c.model), "--resume: checkpoint ", resumed_from,
                    " holds a model with config ", gpt_config_json(saved), "; the recipe asks for ",
                    gpt_config_json(c.model));
    try {
      model.load_state_dict(resumed.weights);
    } catch (const Error& e) {
      detail::throw_error<IoError>("--resume: checkpoint ", resumed_from, " does not fit the model: ", e.what());
    }
  } else if (!c.init_from.empty()) {
    init_from_checkpoint(model, c.init_from, out);
  }
  if (dp.is_root()) {
    fs::create_directories(run_dir);
    // A result.json says "finished": a run that starts (or resumes) is not, until it writes its own.
    fs::remove(fs::path(run_dir) / kResultFile);
    if (!task && !data.from_run_dir) save_data(data, run_dir);
    write_file_atomic((fs::path(run_dir) / "recipe.ini").string(), recipe.resolved());
  }
  // Rank 0's weights on every rank, and the gradient reducer over them.
  dp.start(model);

  std::unique_ptr<Optimizer> opt = make_optimizer(c, model);
  std::unique_ptr<BatchSampler> sampler;
  // Every rank draws the global batch (the one-process stream) and trains on its rows of it.
  if (!task) sampler = std::make_unique<BatchSampler>(data.train, c.batch, c.seq_len, c.seed);
  Generator dropout_gen = dp.rank_generator(Generator(c.seed ^ 0x9e3779b97f4a7c15ull));
  int64_t step = 0;
  BadSteps bad{.max_in_a_row = c.max_bad_steps, .in_a_row = 0, .skipped = 0};
  if (options.resume) {
    restore_run_state(resumed_from, /*with_weights=*/false, [&] {
      opt->load_state(resumed.state);
      step = std::stoll(resumed.state_meta.at("step"));
      // A task's batch is a function of the step alone.
      if (sampler) sampler->set_step(std::stoull(resumed.state_meta.at("sampler_step")));
      dropout_gen = dp.rank_generator(generator_from_meta(resumed.state_meta, "dropout"));
      bad.skipped = std::stoll(resumed.state_meta.at("skipped_steps"));
    });
  }
  std::ofstream metrics;
  if (dp.is_root()) metrics = open_metrics(run_dir, options.resume, step, out);

  const int64_t tokens_per_step = c.batch * c.seq_len;
  out << "attnlab train: " << run_dir << "\n";
  if (task)
    out << "  data: task " << c.task
        << (task->is_token_task() ? " (vocab " + std::to_string(c.model.vocab_size)
                                  : " (vectors " + std::to_string(task->input_dim()) + " in, " +
                                        std::to_string(task->output_dim()) + " out")
        << ", metric " << task->metric_name() << "), generated from run.seed; validation from another fixed seed\n";
  else
    out << "  data: " << c.corpus << ", " << c.tokenizer << " tokenizer (vocab " << c.model.vocab_size << "), "
        << data.train.numel() << " train / " << data.val.numel() << " validation tokens\n";
  out << "  model: " << c.model.layers << " layers, d_model " << c.model.d_model << ", " << c.model.heads
      << " heads, context " << c.model.context << ", "
      << (c.model.layer_pattern.empty() ? c.model.attention : "layer pattern " + c.model.layer_pattern) << " attention"
      << (c.model.residual.routed() ? ", " + c.model.residual.mode + " residual (" + c.model.residual.granularity + ")"
                                    : "")
      << ": " << model.num_parameters() << " parameters\n"
      << "  train: " << c.steps << " steps of " << c.batch << " x " << c.seq_len << " tokens, " << c.optimizer << " lr "
      << c.schedule.peak << ", " << cpu::max_threads() << " threads\n"
      << "  device: " << device_description(c.device) << "\n";
  if (dp.several()) out << "  data parallel: " << dp.describe(cpu::max_threads()) << "\n";
  out << std::flush;

  const std::vector<Variable> params = model.parameters();
  auto save = [&](int64_t at_step) {
    Checkpoint ck = run_checkpoint(model, c.model, c.tokenizer_meta(), *opt, at_step, bad.skipped);
    ck.state_meta["sampler_step"] = std::to_string(sampler ? sampler->step() : static_cast<uint64_t>(at_step));
    put_generator(ck.state_meta, "dropout", dropout_gen);
    return save_checkpoint(run_dir, at_step, ck);
  };

  TrainResult result{run_dir, step, 0, 0, bad.skipped};
  const RunClock clock{.start = std::chrono::steady_clock::now(), .first_step = step};
  LogWindow window;
  double window_wait_ms = 0;  // all-reduce waits after the backward, summed over the log window
  std::string last_checkpoint;
  std::optional<EvalOutcome> last_eval;
  while (step < c.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = c.schedule(step);
    opt->set_lr(lr);
    Generator* drop = c.model.dropout > 0 ? &dropout_gen : nullptr;
    Variable loss;
    if (task) {
      // Batch `step` of the training stream: a resumed run redraws it exactly.
      const TaskBatch global = task->batch(c.seed, static_cast<uint64_t>(step), c.batch, c.seq_len);
      const TaskBatch b = dp.shard(global);
      loss = task_loss(*task, model.forward(task_input(b, c.device), drop), b);
      if (const double w = dp.loss_weight(global); w != 1.0) loss = mul_scalar(loss, w);
    } else {
      const Batch b = dp.shard(sampler->next());
      loss = cross_entropy(model.forward(Variable(b.x.to(c.device)), drop), Variable(b.y.to(c.device)));
    }
    opt->zero_grad();
    // The backward, then (on several ranks) the gradients averaged over them before clipping.
    dp.backward(loss);
    const double norm = c.grad_clip > 0 ? clip_grad_norm(params, c.grad_clip) : grad_norm(params);
    const double loss_value = dp.mean(loss.data().item<double>());
    ++step;
    if (bad.skip(step, loss_value, norm, out, options.interactive)) {
      opt->zero_grad();
      if (bad.diverged())
        bad.throw_diverged(
            "training", step,
            (last_checkpoint.empty() ? (options.resume ? "the checkpoint resumed from, " + resumed_from + ","
                                                       : std::string("no checkpoint"))
                                     : "the last good checkpoint, " + last_checkpoint + ",") +
                " is kept. Lower optim.lr or set optim.grad_clip.");
      continue;
    }
    opt->step();
    window.add(loss_value, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    window_wait_ms += dp.last_wait_ms();
    result.final_train_loss = loss_value;

    const bool eval_now = c.eval_due(step);
    const bool log_now = c.log_due(step);
    char line[256];
    std::snprintf(line, sizeof line, "step %6lld/%lld  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  ETA %s",
                  static_cast<long long>(step), static_cast<long long>(c.steps), window.mean_loss(), lr, norm,
                  window.tokens_per_s(tokens_per_step), clock.eta(step, c.steps).c_str());
    if (!log_now) {
      // On a terminal the progress line is redrawn every step; logs get the log steps only.
      if (options.interactive) out << "\r" << line << std::flush;
    } else {
      json m = window.metrics(step, lr, norm, tokens_per_step, bad.skipped);
      if (dp.several()) m["allreduce_wait_ms"] = window_wait_ms / static_cast<double>(window.steps);
      out << (options.interactive ? "\r" : "") << line;
      if (eval_now) {
        dp.check_in_sync(model, step);
        if (dp.is_root()) {  // the other ranks hold the same weights: one evaluation serves
          last_eval = evaluate_run(c, model, data);
          result.final_val_loss = last_eval->val_loss;
          m.update(last_eval->fields);
          out << last_eval->note;
        }
      }
      if (dp.is_root()) metrics << m.dump() << "\n" << std::flush;
      // Eval lines stay on screen; plain log lines always end.
      out << (options.interactive && !eval_now ? "" : "\n") << std::flush;
      window.reset();
      window_wait_ms = 0;
    }
    if (c.checkpoint_due(step) && dp.is_root()) last_checkpoint = save(step);
  }
  result.steps = step;
  result.skipped_steps = bad.skipped;
  if (options.interactive) out << "\n";
  // The run directory's last words are rank 0's.
  if (!dp.is_root()) return result;
  if (!last_eval) {
    // Resumed at the last step: nothing trained, but result.json needs the final evaluation.
    last_eval = evaluate_run(c, model, data);
    result.final_val_loss = last_eval->val_loss;
    out << "step " << step << "/" << c.steps << " (already trained)" << last_eval->note << "\n";
  }
  if (!last_checkpoint.empty()) out << "checkpoint: " << last_checkpoint << "\n";
  if (task) {
    // Validation rows with the model's answers, in place of a text sample.
    std::string text;
    for (const std::string& line :
         describe_task_rows(model, *task, validation_seed(c.seed), c.batch, c.seq_len, /*rows=*/4))
      text += line + "\n";
    write_file_atomic((fs::path(run_dir) / "samples.txt").string(), text);
    out << "validation rows (target, model):\n" << text;
  } else {
    const std::string text = sample_text(model, *data.tokenizer, c.prompt, c.sample);
    write_file_atomic((fs::path(run_dir) / "samples.txt").string(), text + "\n");
    out << "sample (temperature " << c.sample.temperature << ", top-k " << c.sample.top_k << "):\n" << text << "\n";
  }
  write_result(c, run_dir, result, *last_eval, model,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count(), dp);
  return result;
}

namespace {

// Largest |a - b| over all elements, relative to max(1e-6, max |b|) of the reference b.
double max_rel_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double diff = 0, scale = 1e-6;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::abs(x[i] - y[i]));
    scale = std::max(scale, std::abs(y[i]));
  }
  return diff / scale;
}

}  // namespace

bool run_compare_devices(Recipe& recipe, int64_t steps, std::ostream& out) {
  RunConfig c = read_config(recipe);
  AL_CHECK_CONFIG(!c.device.is_cpu(),
                  "compare-devices: run.device is cpu; name the device to compare with the CPU, "
                  "e.g. --run.device=cuda");
  AL_CHECK_CONFIG(steps > 0, "compare-devices: --steps must be >= 1; got ", steps);
  AL_CHECK_CONFIG(!c.is_task(), "compare-devices: recipe ", recipe.source(), " trains data.task = ", c.task,
                  "; compare-devices runs corpus recipes (data.task = corpus)");
  Dataset data = prepare_data(c, c.run_dir(), /*reuse=*/false, out);
  c.model.vocab_size = data.tokenizer->vocab_size();

  struct Side {
    Device device;
    std::unique_ptr<Gpt> model;
    std::unique_ptr<Optimizer> opt;
    std::unique_ptr<BatchSampler> sampler;
    std::unique_ptr<Generator> dropout;
    double loss = 0, seconds = 0;
  };
  auto make_side = [&](Device device) {
    Side s{device, nullptr, nullptr, nullptr, nullptr};
    Generator init(c.seed);
    s.model = std::make_unique<Gpt>(c.model, init);
    s.model->to(device);
    s.opt = make_optimizer(c, *s.model);
    s.sampler = std::make_unique<BatchSampler>(data.train, c.batch, c.seq_len, c.seed);
    s.dropout = std::make_unique<Generator>(c.seed ^ 0x9e3779b97f4a7c15ull);
    return s;
  };
  Side ref = make_side(Device::cpu()), dev = make_side(c.device);
  out << "compare-devices: " << recipe.source() << ", " << steps << " " << c.optimizer << " step(s) of " << c.batch
      << " x " << c.seq_len << " tokens, " << ref.model->num_parameters() << " parameters\n  cpu ("
      << cpu::max_threads() << " threads) vs " << device_description(c.device) << "\n"
      << "  step   loss cpu      loss " << c.device.str() << "    |d loss|    max grad diff (relative)\n";

  auto train_step = [&](Side& s, int64_t step) {
    const auto t0 = std::chrono::steady_clock::now();
    s.opt->set_lr(c.schedule(step));
    const Batch b = s.sampler->next();
    const Variable logits =
        s.model->forward(Variable(b.x.to(s.device)), c.model.dropout > 0 ? s.dropout.get() : nullptr);
    const Variable loss = cross_entropy(logits, Variable(b.y.to(s.device)));
    s.opt->zero_grad();
    loss.backward();
    s.loss = loss.data().item<double>();
    s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };

  bool ok = true;
  const auto ref_params = ref.model->named_parameters(), dev_params = dev.model->named_parameters();
  for (int64_t step = 0; step < steps; ++step) {
    train_step(ref, step);
    train_step(dev, step);
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < ref_params.size(); ++i) {
      const Tensor& g = ref_params[i].second.grad();
      if (!g.defined()) continue;
      const double d = max_rel_diff(dev_params[i].second.grad(), g);
      if (d > worst) worst = d, worst_name = ref_params[i].first;
    }
    const double dloss = std::abs(ref.loss - dev.loss);
    ok = ok && dloss <= 1e-4 * std::max(1.0, std::abs(ref.loss)) && worst <= 1e-3;
    char line[200];
    std::snprintf(line, sizeof line, "  %4lld   %.6f    %.6f    %.2e    %.2e (%s)\n", static_cast<long long>(step + 1),
                  ref.loss, dev.loss, dloss, worst, worst_name.c_str());
    out << line;
    for (Side* s : {&ref, &dev}) {
      const auto t0 = std::chrono::steady_clock::now();
      clip_grad_norm(s->model->parameters(), c.grad_clip > 0 ? c.grad_clip : 1e30);
      s->opt->step();
      s->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  // Weights are shown, not judged: AdamW moves every element by about lr whatever its gradient's
  // size, so an element whose gradient is f32 noise (1e-9 here, -1e-9 there) may step either way.
  double weights = 0;
  for (size_t i = 0; i < ref_params.size(); ++i) {
    const std::vector<double> a = dev_params[i].second.data().to_vector<double>();
    const std::vector<double> b = ref_params[i].second.data().to_vector<double>();
    for (size_t j = 0; j < a.size(); ++j) weights = std::max(weights, std::abs(a[j] - b[j]));
  }
  char line[320];
  std::snprintf(line, sizeof line,
                "  weights after %lld step(s): max |difference| %.2e (AdamW moves each element by up to lr = %.1e "
                "a step)\n  time per step: cpu %.1f ms, %s %.1f ms (%.2fx)\n  %s\n",
                static_cast<long long>(steps), weights, c.schedule.peak, 1e3 * ref.seconds / static_cast<double>(steps),
                c.device.str().c_str(), 1e3 * dev.seconds / static_cast<double>(steps), ref.seconds / dev.seconds,
                ok ? "PASS: losses and gradients agree to f32 tolerance"
                   : "FAIL: losses or gradients disagree beyond f32 tolerance");
  out << line;
  return ok;
}

void check_train_recipe(Recipe& recipe) { read_config(recipe); }

TrainRecipeModel train_recipe_model(Recipe& recipe) {
  const RunConfig c = read_config(recipe);
  return {c.model, c.tokenizer_meta()};
}

void run_eval(const std::string& checkpoint, int64_t max_batches, std::ostream& out) {
  AL_CHECK_CONFIG(max_batches == -1 || max_batches > 0, "eval: --batches must be positive; got ", max_batches);
  LoadedModel run = load_model(checkpoint);
  Recipe recipe = Recipe::load((fs::path(run.run_dir) / "recipe.ini").string());
  if (is_finetune_recipe(recipe)) {
    // A fine-tuned model: its answers under each eval mask (train/finetune.h).
    eval_finetune_checkpoint(run, recipe, max_batches, out);
    return;
  }
  const RunConfig c = read_config(recipe);
  if (c.is_task()) {
    // A task's validation set is the fixed seed's stream: --batches of it (train.eval_batches by default).
    const SyntheticTask& task = *c.task_setup.task;
    const int64_t batches = max_batches < 0 ? c.eval_batches : max_batches;
    const uint64_t seed = validation_seed(c.seed);
    const TaskEval e = evaluate_task(*run.model, task, seed, c.batch, c.seq_len, batches);
    char line[320];
    std::snprintf(line, sizeof line, "%s: task %s, validation %s %.4f, loss %.4f (%lld batches of %lld x %lld)\n",
                  run.model_path.c_str(), c.task.c_str(), task.metric_name().c_str(), e.score.value(), e.loss,
                  static_cast<long long>(batches), static_cast<long long>(c.batch), static_cast<long long>(c.seq_len));
    out << line;
    for (const auto& [part, sc] : e.score.parts) {
      std::snprintf(line, sizeof line, "  %s %s %.4f\n", task.metric_name().c_str(), part.c_str(),
                    sc.second > 0 ? sc.first / sc.second : 0.0);
      out << line;
    }
    for (const int64_t len : c.task_setup.eval_lengths) {
      std::snprintf(line, sizeof line, "  %s at length %lld: %.4f\n", task.metric_name().c_str(),
                    static_cast<long long>(len),
                    evaluate_task(*run.model, task, seed, c.batch, len, batches).score.value());
      out << line;
    }
    return;
  }
  const Dataset data = prepare_data(c, run.run_dir, /*reuse=*/true, out);
  const double loss = evaluate(*run.model, data.val, c.batch, c.seq_len, max_batches);
  const int64_t windows = (data.val.numel() - 1) / c.seq_len / c.batch;
  const int64_t used = max_batches < 0 ? windows : std::min(windows, max_batches);
  char line[256];
  std::snprintf(line, sizeof line,
                "%s: validation loss %.4f nats/token, perplexity %.3f (%lld batches of %lld x %lld)\n",
                run.model_path.c_str(), loss, std::exp(loss), static_cast<long long>(used),
                static_cast<long long>(c.batch), static_cast<long long>(c.seq_len));
  out << line;
}

void run_sample(const SampleCommand& cmd, std::ostream& out) {
  LoadedModel run = load_model(cmd.checkpoint);
  AL_CHECK_CONFIG(run.tokenizer != kTaskTokenizer && !run.config.vector_mode(), "sample: ", run.model_path,
                  " was trained on a synthetic task (", run.config.vector_mode() ? "a vector model" : "task token ids",
                  "), not on text: there is nothing to sample; `attnlab eval` reports its metric and the run's "
                  "samples.txt shows validation rows with its answers");
  const std::unique_ptr<Tokenizer> tok = load_run_tokenizer(run.tokenizer, run.run_dir);
  out << sample_text(
             *run.model, *tok, cmd.prompt,
             SampleOptions{.tokens = cmd.tokens, .temperature = cmd.temperature, .top_k = cmd.top_k, .seed = cmd.seed})
      << "\n";
}

}  // namespace attnlab
