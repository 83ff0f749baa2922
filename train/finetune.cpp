// `attnlab finetune` (train/finetune.h): recipe, data, the outer loop around the SFT / FocuSFT
// micro-batch steps of train/focusft.h, evaluation under several masks, checkpoints of the base
// weights, result.json.
//
// Batches: training micro-batch m of optimizer step s is example batch s * grad_accum + m of the
// training stream (a synthetic task: task.batch(run.seed, index, B, T) cut to its answer), so a
// resumed run draws exactly what an uninterrupted one would; validation batch i at length L is
// batch i of the validation seed's stream (train/task_train.h validation_seed).
#include "train/finetune.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "layers/lora.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/file_io.h"
#include "optim/adamw.h"
#include "optim/schedule.h"
#include "train/checkpoint.h"
#include "train/focusft.h"
#include "train/model_io.h"
#include "train/results.h"
#include "train/run_common.h"
#include "train/task_train.h"

namespace attnlab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ---- configuration ----------------------------------------------------------------------

// The recipe's keys: [run], [train]'s loop keys and AdamW's [optim] keys as `attnlab train` reads
// them too (train/run_common.h), then this command's own.
struct FinetuneConfig : RunKeys, LoopKeys, AdamWKeys {
  // [finetune]
  std::string init, init_recipe, method = "sft", mask = "auto";
  std::vector<std::string> eval_masks;  // causal | prefix, the first one ranks the run
  // [focusft]
  FocusftSettings inner;
  LoraConfig lora;
  // [data]: a synthetic task, or JSONL files (task = "")
  std::string task;
  TaskSetup task_setup;
  std::string train_file, val_file;
  // [train]: the micro-batches one optimizer step sums (train only takes one)
  int64_t grad_accum = 1;

  bool focusft() const { return method == "focusft"; }
  bool files() const { return !train_file.empty(); }
  // The training mask: prefix (bidirectional context) or causal.
  bool train_prefix() const { return mask == "prefix"; }
  InitModel init_model() const { return {"finetune.init", init, init_recipe}; }
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!trim(item).empty()) out.push_back(trim(item));
  return out;
}

// The task's context length at seq_len: the bidirectional prefix; the answers are predicted from
// its last position on (0: the task has no context / answer split).
int64_t task_context(const SyntheticTask& task, int64_t seq_len) { return task.context_length(seq_len); }

FinetuneConfig read_config(Recipe& r) {
  FinetuneConfig c;
  const std::string src = r.source();
  static_cast<RunKeys&>(c) = read_run_keys(r, "finetune");

  c.init = r.require_string("finetune.init");
  if (r.has("finetune.init_recipe")) c.init_recipe = r.get_string("finetune.init_recipe", "");
  c.method = r.get_string("finetune.method", "sft");
  AL_CHECK_CONFIG(c.method == "sft" || c.method == "focusft", "recipe ", src,
                  ": finetune.method must be sft or focusft; got '", c.method, "'");
  c.mask = r.get_string("finetune.mask", "auto");
  AL_CHECK_CONFIG(c.mask == "auto" || c.mask == "causal" || c.mask == "prefix", "recipe ", src,
                  ": finetune.mask must be auto, causal or prefix; got '", c.mask, "'");
  if (c.mask == "auto") c.mask = c.focusft() ? "prefix" : "causal";
  const std::string eval_masks = r.get_string("finetune.eval_masks", "causal,prefix");
  c.eval_masks = split_list(eval_masks);
  AL_CHECK_CONFIG(!c.eval_masks.empty(), "recipe ", src,
                  ": finetune.eval_masks must list causal and/or prefix, e.g. causal,prefix; got '", eval_masks, "'");
  for (size_t i = 0; i < c.eval_masks.size(); ++i) {
    const std::string& m = c.eval_masks[i];
    AL_CHECK_CONFIG(m == "causal" || m == "prefix", "recipe ", src, ": finetune.eval_masks entry '", m,
                    "' is not a mask; expected causal or prefix (e.g. causal,prefix)");
    for (size_t j = 0; j < i; ++j)
      AL_CHECK_CONFIG(c.eval_masks[j] != m, "recipe ", src, ": finetune.eval_masks names ", m, " twice");
  }

  // [focusft] is read for every method, so an ablation over finetune.method shares one recipe.
  c.inner.inner_steps = r.get_int("focusft.inner_steps", c.inner.inner_steps);
  c.inner.inner_lr = r.get_double("focusft.inner_lr", c.inner.inner_lr);
  c.inner.inner_clip = r.get_double("focusft.inner_clip", c.inner.inner_clip);
  c.lora.rank = r.get_int("focusft.rank", c.lora.rank);
  c.lora.alpha = r.get_double("focusft.alpha", c.lora.alpha);
  c.lora.top_fraction = r.get_double("focusft.top_fraction", c.lora.top_fraction);
  const std::string targets = r.get_string("focusft.targets", "mlp");
  c.lora.targets = split_list(targets);
  try {
    c.inner.validate();
    c.lora.validate();
  } catch (const ConfigError& e) {
    // LoraConfig says "lora: rank ..."; the recipe keys are focusft.<field>.
    std::string what = e.what();
    if (what.rfind("lora: ", 0) == 0) what = "focusft." + what.substr(6);
    detail::throw_error<ConfigError>("recipe ", src, ": ", what);
  }

  static_cast<LoopKeys&>(c) = read_loop_keys(r, /*default_eval_batches=*/8);
  c.grad_accum = r.get_int("train.grad_accum", c.grad_accum);
  AL_CHECK_CONFIG(c.grad_accum > 0, "recipe ", src, ": train.grad_accum must be > 0; got ", c.grad_accum);

  if (r.has("data.train_file") || r.has("data.val_file")) {
    // JSONL examples (data/sft/sft_data.h), read once the model's tokenizer is known.
    AL_CHECK_CONFIG(!r.has("data.task"), "recipe ", src,
                    ": data.task and data.train_file are two sources of data; give one of them");
    c.train_file = r.require_string("data.train_file");
    c.val_file = r.require_string("data.val_file");
    for (const auto& [key, path] : {std::pair{"data.train_file", c.train_file}, {"data.val_file", c.val_file}})
      AL_CHECK_CONFIG(fs::is_regular_file(path), "recipe ", src, ": ", key, " = ", path,
                      ": no such file (expected a JSONL file of examples, data/sft/sft_data.h)");
  } else {
    c.task = r.require_string("data.task");
    AL_CHECK_CONFIG(c.task != kCorpusTask, "recipe ", src,
                    ": data.task = corpus has no answers to fine-tune on; use kv_retrieval, needle or fact_chain, "
                    "or JSONL examples (data.train_file, data.val_file)");
    // The model's context is known once the init checkpoint is read (check_model below).
    c.task_setup = read_task_recipe(r, c.task, c.seq_len, std::numeric_limits<int64_t>::max());
    AL_CHECK_CONFIG(task_context(*c.task_setup.task, c.seq_len) > 0, "recipe ", src, ": data.task = ", c.task,
                    " has no context / answer split to fine-tune on; use kv_retrieval, needle or fact_chain");
  }

  static_cast<AdamWKeys&>(c) = read_adamw_keys(r, c.steps, /*default_lr=*/3e-4, /*default_weight_decay=*/0.01);
  check_adamw_keys(r, c);
  r.check_all_used();
  return c;
}

// ---- data ---------------------------------------------------------------------------------

// The batches of a run: a synthetic task's (one batch of `batch` rows per index, any length), or
// JSONL examples' (`batch` rows per index, split by context length into one SftBatch each; the
// files' own lengths, cut at train.seq_len).
struct FinetuneData {
  const SyntheticTask* task = nullptr;
  std::vector<SftExample> train_examples, val_examples;
  uint64_t seed = 1;
  int64_t batch = 1;

  std::vector<SftBatch> train(uint64_t index, int64_t seq_len) const {
    if (task) return {sft_from_task(*task, task->batch(seed, index, batch, seq_len))};
    const int64_t n = static_cast<int64_t>(train_examples.size());
    return make_sft_batches(train_examples, sft_batch_indices(seed, index, std::min(batch, n), n), /*pad_id=*/0);
  }
  // Validation batch `index`; empty past the end of a file.
  std::vector<SftBatch> val(uint64_t index, int64_t seq_len) const {
    if (task) return {sft_from_task(*task, task->batch(validation_seed(seed), index, batch, seq_len))};
    std::vector<int64_t> rows;
    const int64_t n = static_cast<int64_t>(val_examples.size());
    for (int64_t i = static_cast<int64_t>(index) * batch; i < std::min(n, static_cast<int64_t>(index + 1) * batch); ++i)
      rows.push_back(i);
    return rows.empty() ? std::vector<SftBatch>{} : make_sft_batches(val_examples, rows, /*pad_id=*/0);
  }
};

FinetuneData make_data(const FinetuneConfig& c, const Tokenizer* tokenizer, int64_t vocab) {
  FinetuneData d;
  d.task = c.task_setup.task.get();
  d.seed = c.seed;
  d.batch = c.batch;
  if (c.files()) {
    d.train_examples = read_sft_jsonl(c.train_file, tokenizer, c.seq_len, vocab);
    d.val_examples = read_sft_jsonl(c.val_file, tokenizer, c.seq_len, vocab);
  }
  return d;
}

// ---- the model ----------------------------------------------------------------------------

// Checks that the init model can be fine-tuned as the recipe says: its vocabulary is the task's,
// every length fits its context, its layers take the masks asked for, the LoRA targets exist.
// `what` names the model in messages (a checkpoint, or the recipe that will train it).
void check_model(const FinetuneConfig& c, const std::string& src, const std::string& what, const GptConfig& mc,
                 const std::string& tokenizer, const Gpt& model) {
  AL_CHECK_CONFIG(!mc.vector_mode(), "recipe ", src, ": ", what,
                  " is a vector model; fine-tuning needs a model of token ids");
  if (!c.files()) {
    const SyntheticTask& task = *c.task_setup.task;
    AL_CHECK_CONFIG(tokenizer == kTaskTokenizer, "recipe ", src, ": ", what, " is trained on text (", tokenizer,
                    " tokenizer); data.task = ", c.task, " needs a model trained on task token ids");
    AL_CHECK_CONFIG(mc.vocab_size == task.vocab_size(), "recipe ", src, ": ", what, " has vocab_size ", mc.vocab_size,
                    " but data.task = ", c.task, " with these data keys (data.vocab) has ", task.vocab_size(),
                    " token ids; use the data keys of the pretraining recipe");
    for (const int64_t len : c.task_setup.eval_lengths)
      AL_CHECK_CONFIG(task_context(task, len) > 0, "recipe ", src, ": data.task = ", c.task,
                      " has no context / answer split to fine-tune on; use kv_retrieval, needle or fact_chain");
  }
  std::vector<int64_t> lengths = c.task_setup.eval_lengths;
  lengths.push_back(c.seq_len);
  for (const int64_t len : lengths)
    AL_CHECK_CONFIG(len <= mc.context, "recipe ", src, ": sequence length ", len,
                    " (train.seq_len or data.eval_lengths) is longer than the context ", mc.context, " of ", what);
  bool prefix = c.train_prefix();
  for (const std::string& e : c.eval_masks) prefix = prefix || e == "prefix";
  if (prefix) {
    const std::string why = model.prefix_mask_unsupported();
    AL_CHECK_CONFIG(why.empty(), "recipe ", src, ": the prefix mask (finetune.mask or finetune.eval_masks) needs ",
                    "bidirectional attention over the context, but ", why);
  }
  if (c.focusft()) {
    try {
      LoraSet probe(model, c.lora);
    } catch (const ConfigError& e) {
      std::string msg = e.what();
      if (msg.rfind("lora: ", 0) == 0) msg = "focusft." + msg.substr(6);
      detail::throw_error<ConfigError>("recipe ", src, ": ", msg);
    }
  }
}

// Checks finetune.init against the recipe before anything is written: the checkpoint when it is
// there, else the model finetune.init_recipe would train (built untrained, to check against).
void check_init(const FinetuneConfig& c, const std::string& src) {
  if (init_needs_training(c.init_model())) {
    const TrainRecipeModel pre = check_init_recipe(c.init_model(), src);
    Generator gen(0);
    const Gpt model(pre.config, gen);
    check_model(c, src, "the model of finetune.init_recipe = " + c.init_recipe, pre.config, pre.tokenizer, model);
    // JSONL files are read with the model's tokenizer: a BPE one exists only once it is trained.
    if (c.files() && pre.tokenizer != "bpe") {
      const std::unique_ptr<Tokenizer> tok = load_run_tokenizer(pre.tokenizer, "");
      make_data(c, tok.get(), pre.config.vocab_size);
    }
    return;
  }
  const LoadedModel m = load_init_checkpoint(c.init_model(), src);
  check_model(c, src, "finetune.init " + m.model_path, m.config, m.tokenizer, *m.model);
  if (c.files()) {
    const std::unique_ptr<Tokenizer> tok = load_run_tokenizer(m.tokenizer, m.run_dir);
    make_data(c, tok.get(), m.config.vocab_size);
  }
}

// ---- evaluation ---------------------------------------------------------------------------

struct MaskEval {
  double loss = 0;
  double correct = 0, answers = 0;
  double accuracy() const { return answers > 0 ? correct / answers : 0.0; }
};

// Answer loss and token accuracy over `batches` validation batches at seq_len under a mask.
MaskEval evaluate_mask(const Gpt& model, const FinetuneData& data, int64_t seq_len, bool prefix, int64_t batches) {
  NoGradGuard no_grad;
  MaskEval e;
  const int64_t V = model.config().vocab_size;
  double loss_sum = 0;
  for (int64_t i = 0; i < batches; ++i)
    for (const SftBatch& b : data.val(static_cast<uint64_t>(i), seq_len)) {
      const Variable logits = model.forward(Variable(b.batch.x.to(model.device())), nullptr, prefix ? b.prefix : 0);
      const double ce =
          cross_entropy(logits, Variable(b.batch.y.to(model.device())), kIgnoreTarget).data().item<double>();
      const std::vector<double> z = logits.data().to(Device::cpu()).to_vector<double>();
      const std::vector<int32_t> y = b.batch.y.to_vector<int32_t>();
      const int64_t Vp = logits.size(2);
      double answers = 0;
      for (size_t at = 0; at < y.size(); ++at) {
        if (y[at] == kIgnoreTarget) continue;
        const double* row = z.data() + at * static_cast<size_t>(Vp);
        int64_t best = 0;
        for (int64_t v = 1; v < V; ++v)
          if (row[v] > row[best]) best = v;
        e.correct += best == y[at] ? 1.0 : 0.0;
        answers += 1.0;
      }
      // The mean over answer tokens of the whole set (batches of different sizes weigh by it).
      loss_sum += ce * answers;
      e.answers += answers;
    }
  e.loss = e.answers > 0 ? loss_sum / e.answers : 0.0;
  return e;
}

// The attention-mass probe (spec 2.8) of validation batch 0 at seq_len: context = the prefix,
// queries = the positions that predict answer tokens, under the training mask.
MassProbe make_probe(const SftBatch& b, bool train_prefix) {
  MassProbe p;
  p.mask.causal = true;
  p.mask.prefix = train_prefix ? b.prefix : 0;
  p.context = b.prefix;
  p.first_query = b.prefix - 1;
  const std::vector<int32_t> y = b.batch.y.to_vector<int32_t>();
  const int64_t T = b.batch.y.size(1);
  int64_t last = p.first_query;
  for (size_t at = 0; at < y.size(); ++at)
    if (y[at] != kIgnoreTarget) last = std::max(last, static_cast<int64_t>(at) % T);
  p.end_query = last + 1;
  return p;
}

struct EvalOutcome {
  double val_loss = 0, metric = 0;               // under the first eval mask at seq_len
  std::map<int64_t, double> metric_by_length;    // first eval mask, when data.eval_lengths is given
  std::map<std::string, double> metric_by_mask;  // at seq_len
  std::optional<double> sink_mass, engagement;   // means over the measured layers
  json fields = json::object();
  std::string note;
};

EvalOutcome evaluate_run(const FinetuneConfig& c, const Gpt& model, const FinetuneData& data) {
  EvalOutcome e;
  std::vector<int64_t> lengths = {c.seq_len};
  for (const int64_t len : c.task_setup.eval_lengths)
    if (std::find(lengths.begin(), lengths.end(), len) == lengths.end()) lengths.push_back(len);
  char v[96];
  for (size_t k = 0; k < c.eval_masks.size(); ++k) {
    const std::string& mask = c.eval_masks[k];
    for (const int64_t len : lengths) {
      const MaskEval me = evaluate_mask(model, data, len, mask == "prefix", c.eval_batches);
      std::string at;
      if (len != c.seq_len) at = std::string("@").append(std::to_string(len));
      e.fields["val_accuracy_" + mask + at] = me.accuracy();
      e.fields["val_loss_" + mask + at] = me.loss;
      if (k == 0) {
        e.fields["val_accuracy" + at] = me.accuracy();
        if (len == c.seq_len) {
          e.val_loss = me.loss;
          e.metric = me.accuracy();
          e.fields["val_loss"] = me.loss;
        }
        if (lengths.size() > 1) e.metric_by_length[len] = me.accuracy();
      }
      if (len == c.seq_len) {
        e.metric_by_mask[mask] = me.accuracy();
        std::snprintf(v, sizeof v, "  %s acc %.3f", mask.c_str(), me.accuracy());
        e.note += v;
      } else {
        std::snprintf(v, sizeof v, " @%lld %.3f", static_cast<long long>(len), me.accuracy());
        e.note += v;
      }
    }
  }
  // Sink mass and context engagement per layer on a fixed probe batch.
  const SftBatch probe_batch = data.val(0, c.seq_len).front();
  const MassProbe probe = make_probe(probe_batch, c.train_prefix());
  const std::vector<AttentionMass> masses =
      model.attention_mass(Variable(probe_batch.batch.x.to(model.device())), probe);
  json layers = json::array();
  double sink = 0, ctx = 0;
  int64_t measured = 0;
  for (size_t l = 0; l < masses.size(); ++l) {
    json j = {{"layer", l}, {"kind", masses[l].kind}, {"measured", masses[l].measured}};
    if (masses[l].measured) {
      j["sink"] = masses[l].sink;
      j["context"] = masses[l].context;
      sink += masses[l].sink;
      ctx += masses[l].context;
      ++measured;
    }
    layers.push_back(j);
  }
  e.fields["attention_mass"] = layers;
  if (measured) {
    e.sink_mass = sink / static_cast<double>(measured);
    e.engagement = ctx / static_cast<double>(measured);
    e.fields["sink_mass"] = *e.sink_mass;
    e.fields["context_engagement"] = *e.engagement;
    std::snprintf(v, sizeof v, "  sink %.3f  ctx %.3f", *e.sink_mass, *e.engagement);
    e.note += v;
  }
  std::snprintf(v, sizeof v, "  val %.4f", e.val_loss);
  e.note = v + e.note;
  return e;
}

// ---- run bookkeeping ----------------------------------------------------------------------

// result.json (train/results.h) with the finetune's own additions: method, mask, metric_by_mask,
// sink_mass, context_engagement. The metric is the answer accuracy under the first eval mask.
void write_result(const FinetuneConfig& c, const GptConfig& mc, const std::string& run_dir, const TrainResult& r,
                  const EvalOutcome& last, const Gpt& model, double seconds) {
  json j = result_json(run_dir, r, last.val_loss, seconds, c.batch * c.grad_accum * c.seq_len, model, mc, c.device,
                       /*ms_per_step=*/true);
  j.update(json{{"metric", "accuracy"},
                {"metric_mask", c.eval_masks.front()},
                {"metric_value", last.metric},
                {"higher_is_better", true},
                {"task", c.files() ? "jsonl" : c.task},
                {"method", c.method},
                {"mask", c.mask},
                {"init", c.init}});
  json by_mask = json::object();
  for (const auto& [mask, v] : last.metric_by_mask) by_mask[mask] = v;
  j["metric_by_mask"] = by_mask;
  if (!last.metric_by_length.empty()) j["metric_by_length"] = by_length_json(last.metric_by_length);
  if (last.sink_mass) {
    j["sink_mass"] = *last.sink_mass;
    j["sink_mean"] = *last.sink_mass;  // the tables' sink column
    j["context_engagement"] = *last.engagement;
  }
  write_file_atomic((fs::path(run_dir) / kResultFile).string(), j.dump(2) + "\n");
}

// Loads finetune.init, training it first from finetune.init_recipe when asked to (check_init
// has checked both).
LoadedModel load_init(const FinetuneConfig& c, const std::string& src, std::ostream& out) {
  LoadedModel m = train_and_load_init(c.init_model(), src, out);
  check_model(c, src, "finetune.init " + m.model_path, m.config, m.tokenizer, *m.model);
  return m;
}

}  // namespace

void check_finetune_recipe(Recipe& recipe) {
  const FinetuneConfig c = read_config(recipe);
  check_init(c, recipe.source());
}

bool is_finetune_recipe(const Recipe& recipe) {
  for (const auto& [key, value] : recipe.values())
    if (key.rfind("finetune.", 0) == 0) return true;
  return false;
}

void eval_finetune_checkpoint(const LoadedModel& run, Recipe& recipe, int64_t max_batches, std::ostream& out) {
  const FinetuneConfig c = read_config(recipe);
  const int64_t batches = max_batches < 0 ? c.eval_batches : max_batches;
  const std::unique_ptr<Tokenizer> tok = load_run_tokenizer(run.tokenizer, run.run_dir);
  const FinetuneData data = make_data(c, tok.get(), run.config.vocab_size);
  const std::string& model_path = run.model_path;
  const Gpt& model = *run.model;
  std::vector<int64_t> lengths = {c.seq_len};
  for (const int64_t len : c.task_setup.eval_lengths)
    if (std::find(lengths.begin(), lengths.end(), len) == lengths.end()) lengths.push_back(len);
  char line[256];
  std::snprintf(line, sizeof line, "%s: finetune (%s, %s mask) on %s, answer accuracy (%lld batches of %lld)\n",
                model_path.c_str(), c.method.c_str(), c.mask.c_str(), c.files() ? c.train_file.c_str() : c.task.c_str(),
                static_cast<long long>(batches), static_cast<long long>(c.batch));
  out << line;
  for (const std::string& mask : c.eval_masks)
    for (const int64_t len : lengths) {
      const MaskEval e = evaluate_mask(model, data, len, mask == "prefix", batches);
      std::snprintf(line, sizeof line, "  %-6s mask, length %4lld: accuracy %.4f, loss %.4f\n", mask.c_str(),
                    static_cast<long long>(len), e.accuracy(), e.loss);
      out << line;
    }
}

TrainResult run_finetune(Recipe& recipe, const TrainOptions& options, std::ostream& out) {
  const FinetuneConfig c = read_config(recipe);
  const std::string src = recipe.source();
  const std::string run_dir = c.run_dir();
  check_run_dir(run_dir, options.resume);
  check_init(c, src);
  const auto t_run = std::chrono::steady_clock::now();
  LoadedModel init = load_init(c, src, out);
  Gpt& model = *init.model;
  model.to(c.device);
  model.set_training(true);
  const std::unique_ptr<Tokenizer> tok = load_run_tokenizer(init.tokenizer, init.run_dir);
  const FinetuneData data = make_data(c, tok.get(), init.config.vocab_size);
  std::unique_ptr<LoraSet> lora;
  if (c.focusft()) lora = std::make_unique<LoraSet>(model, c.lora);

  const std::vector<Variable> params = model.parameters();
  AdamW opt(params, c.adamw(), decay_mask(model, c.decay_all));
  Generator fast_gen(c.seed ^ 0xF0C05F7ull);
  int64_t step = 0;
  BadSteps bad{.max_in_a_row = c.max_bad_steps, .in_a_row = 0, .skipped = 0};
  if (options.resume) {
    const std::string resumed_from = resolve_checkpoint(run_dir);
    const Checkpoint ck = load_checkpoint(resumed_from, /*with_state=*/true);
    restore_run_state(resumed_from, /*with_weights=*/true, [&] {
      model.load_state_dict(ck.weights);
      opt.load_state(ck.state);
      step = std::stoll(ck.state_meta.at("step"));
      bad.skipped = std::stoll(ck.state_meta.at("skipped_steps"));
      fast_gen = generator_from_meta(ck.state_meta, "fast");
    });
  }

  fs::create_directories(run_dir);
  fs::remove(fs::path(run_dir) / kResultFile);
  write_file_atomic((fs::path(run_dir) / "recipe.ini").string(), recipe.resolved());
  // A BPE model's tokenizer travels with its checkpoints (`attnlab sample` and `eval` read it).
  if (init.tokenizer == "bpe")
    fs::copy_file(fs::path(init.run_dir) / "tokenizer.bpe", fs::path(run_dir) / "tokenizer.bpe",
                  fs::copy_options::overwrite_existing);
  std::ofstream metrics = open_metrics(run_dir, options.resume, step, out);
  const int64_t tokens_per_step = c.batch * c.grad_accum * c.seq_len;
  const SftBatch first = data.val(0, c.seq_len).front();
  out << "attnlab finetune: " << run_dir << " (" << c.method << ", " << c.mask << " mask)\n"
      << "  init: " << init.model_path << ": " << model.num_parameters() << " parameters, " << init.config.layers
      << " layers, d_model " << init.config.d_model << "\n"
      << "  data: "
      << (c.files() ? c.train_file + " (" + std::to_string(data.train_examples.size()) + " examples), " + c.val_file +
                          " (" + std::to_string(data.val_examples.size()) + ")"
                    : "task " + c.task)
      << "; first validation batch: context " << first.prefix << " of " << first.batch.x.size(1)
      << " tokens, answers after it; eval masks";
  for (const std::string& m : c.eval_masks) out << " " << m;
  out << "\n";
  if (lora)
    out << "  fast weights: LoRA rank " << c.lora.rank << ", alpha " << c.lora.alpha << " on " << lora->adapted().size()
        << " weights (layers " << lora->first_layer() << ".." << init.config.layers - 1 << "), " << c.inner.inner_steps
        << " inner SGD steps, lr " << c.inner.inner_lr << ", clip " << c.inner.inner_clip << "\n";
  out << "  train: " << c.steps << " steps of " << c.grad_accum << " x " << c.batch << " x " << c.seq_len
      << " tokens, adamw lr " << c.schedule.peak << ", " << cpu::max_threads() << " threads\n"
      << std::flush;

  auto save = [&](int64_t at_step) {
    // Base weights only: the fast weights are not the model's (they are reset every micro-batch).
    Checkpoint ck = run_checkpoint(model, init.config, init.tokenizer, opt, at_step, bad.skipped);
    put_generator(ck.state_meta, "fast", fast_gen);
    return save_checkpoint(run_dir, at_step, ck);
  };

  TrainResult result{run_dir, step, 0, 0, bad.skipped};
  const RunClock clock{.start = std::chrono::steady_clock::now(), .first_step = step};
  LogWindow window;
  // FocuSFT's inner-loop losses over the same window (train has no inner loop).
  double window_inner_first = 0, window_inner_last = 0;
  int64_t window_inner_skipped = 0;
  std::string last_checkpoint;
  std::optional<EvalOutcome> last_eval;
  const double scale = 1.0 / static_cast<double>(c.grad_accum);
  while (step < c.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    const double lr = c.schedule(step);
    opt.set_lr(lr);
    opt.zero_grad();
    double loss_value = 0, inner_first = 0, inner_last = 0;
    int64_t inner_skipped = 0;
    for (int64_t m = 0; m < c.grad_accum; ++m) {
      // One micro-batch; JSONL rows of different context lengths come as several SftBatches,
      // each weighted by its share of the rows (a task's is one batch).
      const std::vector<SftBatch> parts = data.train(static_cast<uint64_t>(step * c.grad_accum + m), c.seq_len);
      double rows = 0;
      for (const SftBatch& b : parts) rows += static_cast<double>(b.batch.x.size(0));
      for (const SftBatch& b : parts) {
        const double w = scale * static_cast<double>(b.batch.x.size(0)) / rows;
        const int64_t prefix = c.train_prefix() ? b.prefix : 0;
        const StepLosses s =
            lora ? focusft_step(model, *lora, b, prefix, c.inner, fast_gen, w) : sft_step(model, b, prefix, w);
        loss_value += s.outer * w;
        if (!s.inner.empty()) {
          inner_first += s.inner.front() * w;
          inner_last += s.inner.back() * w;
        }
        inner_skipped += s.inner_skipped;
      }
    }
    const double norm = c.grad_clip > 0 ? clip_grad_norm(params, c.grad_clip) : grad_norm(params);
    ++step;
    if (bad.skip(step, loss_value, norm, out)) {
      opt.zero_grad();
      if (bad.diverged()) bad.throw_diverged("fine-tuning", step, "lower optim.lr or focusft.inner_lr");
      continue;
    }
    opt.step();
    window.add(loss_value, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    window_inner_first += inner_first;
    window_inner_last += inner_last;
    window_inner_skipped += inner_skipped;
    result.final_train_loss = loss_value;

    const bool eval_now = c.eval_due(step);
    if (!c.log_due(step)) {
      if (c.checkpoint_due(step)) last_checkpoint = save(step);
      continue;
    }
    const double n = static_cast<double>(window.steps);
    char line[320];
    int len = std::snprintf(line, sizeof line, "step %6lld/%lld  loss %.4f", static_cast<long long>(step),
                            static_cast<long long>(c.steps), window.mean_loss());
    if (lora)
      len += std::snprintf(line + len, sizeof line - static_cast<size_t>(len), "  inner %.4f -> %.4f",
                           window_inner_first / n, window_inner_last / n);
    std::snprintf(line + len, sizeof line - static_cast<size_t>(len), "  lr %.2e  |g| %.3f  %.0f ms/step  ETA %s", lr,
                  norm, window.ms_per_step(), clock.eta(step, c.steps).c_str());
    json m = window.metrics(step, lr, norm, tokens_per_step, bad.skipped);
    if (lora) {
      m["inner_loss_first"] = window_inner_first / n;
      m["inner_loss_last"] = window_inner_last / n;
      m["inner_skipped"] = window_inner_skipped;
    }
    out << line;
    if (eval_now) {
      last_eval = evaluate_run(c, model, data);
      result.final_val_loss = last_eval->val_loss;
      m.update(last_eval->fields);
      out << last_eval->note;
    }
    metrics << m.dump() << "\n" << std::flush;
    out << "\n" << std::flush;
    window.reset();
    window_inner_first = window_inner_last = 0;
    window_inner_skipped = 0;
    if (c.checkpoint_due(step)) last_checkpoint = save(step);
  }
  result.steps = step;
  result.skipped_steps = bad.skipped;
  if (!last_eval) {
    last_eval = evaluate_run(c, model, data);
    result.final_val_loss = last_eval->val_loss;
    out << "step " << step << "/" << c.steps << " (already trained)" << last_eval->note << "\n";
  }
  if (!last_checkpoint.empty()) out << "checkpoint: " << last_checkpoint << "\n";
  write_result(c, init.config, run_dir, result, *last_eval, model,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t_run).count());
  return result;
}

}  // namespace attnlab
