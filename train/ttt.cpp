// Query-only test-time training: the adaptation (adapt_queries), the answer, and the three
// commands that use them (`attnlab ttt`, `eval --ttt`, `sample --ttt`). See train/ttt.h.
#include "train/ttt.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <numeric>
#include <ostream>
#include <regex>
#include <sstream>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "lib/cpu/parallel.h"
#include "lib/error.h"
#include "lib/file_io.h"
#include "optim/adamw.h"
#include "train/model_io.h"
#include "train/results.h"
#include "train/run_common.h"
#include "train/task_train.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace attnlab {

void TttConfig::validate() const {
  AL_CHECK_CONFIG(steps >= 0, "ttt.steps must be >= 0; got ", steps);
  AL_CHECK_CONFIG(span >= 1, "ttt.span must be >= 1 (context tokens per step); got ", span);
  AL_CHECK_CONFIG(std::isfinite(lr) && lr > 0, "ttt.lr must be > 0; got ", lr);
  AL_CHECK_CONFIG(std::isfinite(weight_decay) && weight_decay >= 0, "ttt.weight_decay must be >= 0; got ",
                  weight_decay);
  AL_CHECK_CONFIG(std::isfinite(clip) && clip >= 0, "ttt.clip must be >= 0 (0: no clipping); got ", clip);
  AL_CHECK_CONFIG(params == "wq" || params == "lora", "ttt.params must be wq (the full W_Q rows) or lora; got '",
                  params, "'");
  AL_CHECK_CONFIG(rank >= 1, "ttt.rank must be >= 1; got ", rank);
  AL_CHECK_CONFIG(std::isfinite(alpha) && alpha > 0, "ttt.alpha must be > 0; got ", alpha);
  AL_CHECK_CONFIG(spans == "context" || spans == "answers",
                  "ttt.spans must be context (next-token loss on random spans) or answers (on the context's answered "
                  "questions); got '",
                  spans, "'");
}

void check_ttt_model(const Gpt& model, const std::string& who) {
  AL_CHECK_CONFIG(!model.config().vector_mode(), who,
                  ": test-time training needs a token model (next-token loss on the context); this is a vector-mode "
                  "model");
  const std::string why = model.frozen_prefix_unsupported();
  AL_CHECK_CONFIG(why.empty(), who,
                  ": test-time training keeps the prefill's keys and values frozen, which this model "
                  "cannot do: ",
                  why);
}

namespace {

// The trainable queries of every layer and the overrides of c_attn.weight built from them.
class QueryAdapter {
 public:
  QueryAdapter(const Gpt& model, const TttConfig& config, Generator& gen)
      : lora_(config.params == "lora"), scale_(config.alpha / static_cast<double>(config.rank)) {
    const std::regex c_attn(R"(h\.\d+\.attn\.c_attn\.weight)");
    const int64_t C = model.config().d_model;
    for (const auto& [name, w] : model.named_parameters()) {
      if (!std::regex_match(name, c_attn)) continue;
      AL_CHECK_CONFIG(w.ndim() == 2 && w.size(0) == 3 * C && w.size(1) == C, "ttt: ", name,
                      " is not a [3C, C] q, k, v projection (shape ", w.shape(), ")");
      Layer l;
      l.weight = w;
      // Copies, not views: the override must not alias the base weight's storage.
      l.kv = Variable(w.data().narrow(0, C, 2 * C).clone());
      if (lora_) {
        l.q_base = Variable(w.data().narrow(0, 0, C).clone());
        Tensor a = Tensor::empty(Shape{config.rank, C}, w.dtype());
        const double bound = 1.0 / std::sqrt(static_cast<double>(C));
        fill_uniform(a, gen, -bound, bound);
        l.a = Variable(a.to(w.device()), true);
        l.b = Variable(Tensor::zeros(Shape{C, config.rank}, w.dtype(), w.device()), true);
      } else {
        l.q = Variable(w.data().narrow(0, 0, C).clone(), true);
      }
      layers_.push_back(std::move(l));
    }
    AL_CHECK_CONFIG(!layers_.empty(), "ttt: the model has no attention layer with a c_attn projection to adapt");
  }

  std::vector<Variable> params() const {
    std::vector<Variable> out;
    for (const Layer& l : layers_) {
      if (lora_) {
        out.push_back(l.a);
        out.push_back(l.b);
      } else {
        out.push_back(l.q);
      }
    }
    return out;
  }

  // Computed now: in grad mode the graph reaches the trainable tensors.
  ParameterOverrides overrides() const {
    ParameterOverrides o;
    for (const Layer& l : layers_) {
      const Variable q = lora_ ? add(l.q_base, mul_scalar(matmul(l.b, l.a), scale_)) : l.q;
      o.set(l.weight, concat({q, l.kv}, 0));
    }
    return o;
  }

 private:
  struct Layer {
    Variable weight;        // the base c_attn.weight (only its identity is used)
    Variable kv;            // its K and V rows, constant
    Variable q;             // wq: the trainable copy of its Q rows
    Variable q_base, a, b;  // lora: the Q rows (constant) and the adapter
  };
  std::vector<Layer> layers_;
  bool lora_;
  double scale_;
};

Variable id_tensor(const std::vector<int32_t>& ids, int64_t begin, int64_t length, Device device) {
  const std::vector<int32_t> part(ids.begin() + begin, ids.begin() + begin + length);
  return Variable(Tensor::from_vector(Shape{1, length}, part).to(device));
}

// The index of the largest of logits[0, vocab) (the first one on ties).
int32_t argmax(const Tensor& logits, int64_t vocab) {
  const std::vector<double> v = logits.to_vector<double>();
  return static_cast<int32_t>(std::max_element(v.begin(), v.begin() + vocab) - v.begin());
}

// -log softmax(logits[0, vocab))[target].
double answer_nll(const Tensor& logits, int64_t vocab, int32_t target) {
  const std::vector<double> v = logits.to_vector<double>();
  const double m = *std::max_element(v.begin(), v.begin() + vocab);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += std::exp(v[static_cast<size_t>(i)] - m);
  return m + std::log(z) - v[static_cast<size_t>(target)];
}

}  // namespace

ParameterOverrides adapt_queries(const Gpt& model, const std::vector<int32_t>& ids, const TttConfig& config,
                                 Generator& gen, KvCache& cache, const std::vector<int64_t>& answers) {
  config.validate();
  check_ttt_model(model, "ttt");
  const int64_t T = static_cast<int64_t>(ids.size());
  AL_CHECK_CONFIG(T >= config.span + 1, "ttt: a context of ", T, " tokens is too short for ttt.span = ", config.span,
                  " (each step predicts span tokens of the context from the ones before: it needs at least span + 1 "
                  "tokens)");
  AL_CHECK_CONFIG(T <= model.config().context, "ttt: a context of ", T,
                  " tokens is longer than model.context = ", model.config().context);
  const Device device = model.device();
  cache.reset();
  if (T > 1) {
    NoGradGuard no_grad;
    model.forward_cached(id_tensor(ids, 0, T - 1, device), cache);
  }
  // Gradients reach the adapter only; the base weights record no graph and get no .grad.
  RequiresGradGuard freeze(model.parameters(), false);
  QueryAdapter adapter(model, config, gen);
  const std::vector<Variable> params = adapter.params();
  AdamWConfig ac;
  ac.lr = config.lr;
  ac.weight_decay = config.weight_decay;
  AdamW opt(params, ac);
  const bool on_answers = config.spans == "answers";
  AL_CHECK_CONFIG(!on_answers || !answers.empty(),
                  "ttt: ttt.spans = answers needs a context with answered questions (e.g. kv_retrieval with "
                  "data.queries > 0); this one has none");
  for (const int64_t p : answers)
    AL_CHECK_CONFIG(p >= 0 && p < T - 1, "ttt: answer position ", p, " is outside the context's [0, ", T - 1, ")");
  const int64_t starts = T - config.span;  // start in [0, T - 1 - span]
  for (int64_t step = 0; step < config.steps; ++step) {
    int64_t start = 0, len = config.span;
    std::vector<int32_t> targets;
    if (on_answers) {
      // A span that ends at one answered question; the loss only on the answers inside it.
      const int64_t p =
          answers[static_cast<size_t>(randint(Shape{1}, static_cast<int64_t>(answers.size()), gen).item<int64_t>())];
      start = std::max<int64_t>(0, p - config.span + 1);
      len = p - start + 1;
      targets.assign(static_cast<size_t>(len), kIgnoreTarget);
      for (const int64_t a : answers)
        if (a >= start && a <= p) targets[static_cast<size_t>(a - start)] = ids[static_cast<size_t>(a + 1)];
    } else {
      start = randint(Shape{1}, starts, gen).item<int64_t>();
      targets.assign(ids.begin() + start + 1, ids.begin() + start + 1 + len);
    }
    const ParameterOverrides o = adapter.overrides();
    Variable logits;
    {
      OverrideScope scope(o);
      logits = model.forward_after(id_tensor(ids, start, len, device), cache, start);
    }
    const Variable loss = cross_entropy(logits, Variable(Tensor::from_vector(Shape{1, len}, targets).to(device)));
    opt.zero_grad();
    loss.backward();
    if (config.clip > 0) clip_grad_norm(params, config.clip);
    opt.step();
  }
  NoGradGuard no_grad;
  return adapter.overrides();
}

Tensor answer_logits(const Gpt& model, int32_t last, const ParameterOverrides& overrides, KvCache& cache) {
  NoGradGuard no_grad;
  OverrideScope scope(overrides);
  return model.forward_cached(id_tensor({last}, 0, 1, model.device()), cache).data().to(Device::cpu());
}

Tensor plain_answer_logits(const Gpt& model, const std::vector<int32_t>& ids) {
  AL_CHECK_CONFIG(!ids.empty(), "ttt: an empty context");
  NoGradGuard no_grad;
  KvCache cache = model.make_cache(1);
  const int64_t T = static_cast<int64_t>(ids.size());
  if (T > 1) model.forward_cached(id_tensor(ids, 0, T - 1, model.device()), cache);
  return answer_logits(model, ids.back(), ParameterOverrides(), cache);
}

double span_loss(const Gpt& model, const std::vector<int32_t>& ids, const KvCache& cache, int64_t start, int64_t span,
                 const ParameterOverrides& overrides) {
  AL_CHECK_CONFIG(start >= 0 && span >= 1 && start + span < static_cast<int64_t>(ids.size()), "ttt: span [", start,
                  ", ", start + span, ") has no next token inside a context of ", ids.size());
  NoGradGuard no_grad;
  OverrideScope scope(overrides);
  const Variable logits = model.forward_after(id_tensor(ids, start, span, model.device()), cache, start);
  return cross_entropy(logits, id_tensor(ids, start + 1, span, model.device())).data().item<double>();
}

// ---- evaluation over task rows ------------------------------------------------------------------

namespace {

struct LengthResult {
  int64_t length = 0;
  int64_t examples = 0;
  double plain_correct = 0, ttt_correct = 0;
  double plain_nll = 0, ttt_nll = 0;  // summed answer negative log-likelihoods
  double seconds = 0;
  double plain() const { return examples ? plain_correct / static_cast<double>(examples) : 0.0; }
  double ttt() const { return examples ? ttt_correct / static_cast<double>(examples) : 0.0; }
};

std::string fmt(double v, int digits = 4) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << v;
  return os.str();
}

// `examples` rows of the validation stream at `length`, each answered plain and after TTT.
LengthResult evaluate_length(const Gpt& model, const SyntheticTask& task, uint64_t data_seed, uint64_t ttt_seed,
                             int64_t length, int64_t examples, const TttConfig& config, std::ostream& out) {
  const auto t0 = std::chrono::steady_clock::now();
  const TaskBatch batch = task.batch(data_seed, 0, examples, length);
  const int64_t vocab = model.config().vocab_size;
  LengthResult r;
  r.length = length;
  auto last_shown = t0;
  for (int64_t row = 0; row < examples; ++row) {
    const std::vector<int32_t> x = batch.x.narrow(0, row, 1).to_vector<int32_t>();
    const std::vector<int32_t> y = batch.y.narrow(0, row, 1).to_vector<int32_t>();
    const std::vector<float> mask = batch.mask.narrow(0, row, 1).to_vector<float>();
    int64_t p = length - 1;
    while (p >= 0 && mask[static_cast<size_t>(p)] <= 0) --p;
    AL_CHECK_CONFIG(p >= 0, "ttt: task ", task.name(), " gave a row with no scored position");
    const std::vector<int32_t> context(x.begin(), x.begin() + p + 1);
    const int32_t target = y[static_cast<size_t>(p)];
    // The context's own answered questions (kv_retrieval's demos) for ttt.spans = answers.
    std::vector<int64_t> answers;
    for (int64_t i = 0; i < p; ++i)
      if (mask[static_cast<size_t>(i)] > 0) answers.push_back(i);
    const Tensor plain = plain_answer_logits(model, context);
    Generator gen(ttt_seed ^ (static_cast<uint64_t>(length) << 32) ^ static_cast<uint64_t>(row));
    KvCache cache = model.make_cache(1);
    const ParameterOverrides o = adapt_queries(model, context, config, gen, cache, answers);
    const Tensor adapted = answer_logits(model, context.back(), o, cache);
    r.plain_correct += argmax(plain, vocab) == target ? 1 : 0;
    r.ttt_correct += argmax(adapted, vocab) == target ? 1 : 0;
    r.plain_nll += answer_nll(plain, vocab, target);
    r.ttt_nll += answer_nll(adapted, vocab, target);
    r.examples = row + 1;
    const auto now = std::chrono::steady_clock::now();
    if (row + 1 == examples || now - last_shown >= std::chrono::seconds(15)) {
      out << "  length " << length << ": " << row + 1 << "/" << examples << " rows, plain " << fmt(r.plain(), 3)
          << ", ttt " << fmt(r.ttt(), 3) << " (" << fmt(std::chrono::duration<double>(now - t0).count(), 1) << " s)\n"
          << std::flush;
      last_shown = now;
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::string results_table(const std::vector<LengthResult>& rs) {
  std::ostringstream os;
  os << "| length | plain | ttt | delta |\n|---:|---:|---:|---:|\n";
  for (const LengthResult& r : rs)
    os << "| " << r.length << " | " << fmt(r.plain()) << " | " << fmt(r.ttt()) << " | "
       << (r.ttt() >= r.plain() ? "+" : "") << fmt(r.ttt() - r.plain()) << " |\n";
  return os.str();
}

// The resolved recipe a run directory keeps, if any.
bool load_run_recipe(const std::string& run_dir, Recipe& out) {
  const fs::path p = fs::path(run_dir) / "recipe.ini";
  if (!fs::exists(p)) return false;
  out = Recipe::load(p.string());
  return true;
}

struct Seeds {
  uint64_t data = 0;  // the validation stream of the init run
  uint64_t run = 1;   // the init run's run.seed
};

}  // namespace

void run_ttt(Recipe& recipe, std::ostream& out) {
  const std::string src = recipe.source();
  const std::string stem = fs::path(src).stem().string();
  const std::string name = recipe.get_string("run.name", stem.empty() || stem == "<defaults>" ? "ttt" : stem);
  AL_CHECK_CONFIG(!name.empty() && name.find('/') == std::string::npos && name != "." && name != "..", "recipe ", src,
                  ": run.name must be a plain directory name; got '", name, "'");
  const std::string dir = recipe.get_string("run.dir", "runs");
  const uint64_t seed = static_cast<uint64_t>(recipe.get_int("run.seed", 1));
  const int64_t threads = recipe.get_int("run.threads", 0);
  AL_CHECK_CONFIG(threads >= 0, "recipe ", src, ": run.threads must be >= 0 (0: the default); got ", threads);
  const std::string init = recipe.require_string("ttt.init");
  const std::string init_recipe = recipe.get_string("ttt.init_recipe", "");
  TttConfig config;
  config.steps = recipe.get_int("ttt.steps", config.steps);
  config.span = recipe.get_int("ttt.span", config.span);
  config.lr = recipe.get_double("ttt.lr", config.lr);
  config.weight_decay = recipe.get_double("ttt.weight_decay", config.weight_decay);
  config.clip = recipe.get_double("ttt.clip", config.clip);
  config.params = recipe.get_string("ttt.params", config.params);
  config.spans = recipe.get_string("ttt.spans", config.spans);
  if (config.params == "lora") {
    config.rank = recipe.get_int("ttt.rank", config.rank);
    config.alpha = recipe.get_double("ttt.alpha", config.alpha);
  }
  const int64_t examples = recipe.get_int("ttt.examples", 64);
  try {
    config.validate();
  } catch (const ConfigError& e) {
    detail::throw_error<ConfigError>("recipe ", src, ": ", e.what());
  }
  AL_CHECK_CONFIG(examples >= 1, "recipe ", src, ": ttt.examples must be >= 1; got ", examples);
  // The task: this recipe's (checked now, before any training), else the init run's.
  const std::string task_name = recipe.get_string("data.task", "");
  std::vector<int64_t> lengths = parse_eval_lengths(recipe, recipe.get_string("data.eval_lengths", ""));
  TaskSetup setup;
  if (!task_name.empty()) {
    AL_CHECK_CONFIG(!lengths.empty(), "recipe ", src,
                    ": data.eval_lengths must list the lengths to evaluate at when "
                    "data.task is given");
    const int64_t shortest = *std::min_element(lengths.begin(), lengths.end());
    setup = read_task_recipe(recipe, task_name, shortest, INT64_MAX);
  }
  recipe.check_all_used();
  if (threads > 0) {
#ifdef _OPENMP
    omp_set_num_threads(static_cast<int>(threads));
#endif
  }

  // The init model, trained first from ttt.init_recipe when it is not (its recipe and the model
  // it builds checked before anything is written).
  const InitModel init_model{"ttt.init", init, init_recipe};
  if (init_needs_training(init_model)) {
    const TrainRecipeModel pre = check_init_recipe(init_model, src);
    Generator gen(0);
    check_ttt_model(Gpt(pre.config, gen), "recipe " + src + ": the model of ttt.init_recipe = " + init_recipe);
  }
  LoadedModel run = train_and_load_init(init_model, src, out);
  check_ttt_model(*run.model, "recipe " + src + ": ttt.init = " + init);
  Recipe base;
  const bool has_base = load_run_recipe(run.run_dir, base);
  Seeds seeds;
  if (has_base) seeds.run = static_cast<uint64_t>(base.get_int("run.seed", 1));
  seeds.data = validation_seed(seeds.run);
  if (task_name.empty()) {
    AL_CHECK_CONFIG(has_base, "recipe ", src, ": ttt.init = ", init,
                    " has no recipe.ini beside its checkpoints; name "
                    "the task with data.task");
    const std::string t = base.get_string("data.task", kCorpusTask);
    AL_CHECK_CONFIG(t != kCorpusTask, "recipe ", src, ": ttt.init = ", init,
                    " was trained on text; `attnlab ttt` evaluates synthetic-task checkpoints (data.task)");
    const int64_t seq_len = base.get_int("train.seq_len", 0);
    TaskSetup b = read_task_recipe(base, t, seq_len, run.config.context);
    if (lengths.empty()) {
      lengths.push_back(seq_len);
      for (const int64_t l : b.eval_lengths)
        if (std::find(lengths.begin(), lengths.end(), l) == lengths.end()) lengths.push_back(l);
    }
    setup.task = b.task;
  }
  const SyntheticTask& task = *setup.task;
  AL_CHECK_CONFIG(task.is_token_task(), "recipe ", src, ": data.task = ", task.name(),
                  " is a vector task; ttt needs tokens");
  AL_CHECK_CONFIG(task.vocab_size() <= run.config.vocab_size, "recipe ", src, ": data.task = ", task.name(),
                  " uses ids up to ", task.vocab_size() - 1, " but the model's vocabulary has ", run.config.vocab_size);
  for (const int64_t l : lengths) {
    AL_CHECK_CONFIG(l <= run.config.context, "recipe ", src, ": eval length ", l,
                    " is longer than the model's context ", run.config.context);
    task.check_seq_len(l);
  }

  const fs::path run_dir = fs::path(dir) / name;
  fs::create_directories(run_dir);
  write_file_atomic((run_dir / "recipe.ini").string(), recipe.resolved());
  out << "ttt: " << run.model_path << " (" << run.model->num_parameters() << " parameters), task " << task.name()
      << ", " << examples << " rows per length, steps " << config.steps << ", span " << config.span << ", lr "
      << config.lr << ", params " << config.params << ", spans " << config.spans << ", " << cpu::max_threads()
      << " threads\n"
      << std::flush;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<LengthResult> results;
  std::string jsonl;
  for (const int64_t l : lengths) {
    AL_CHECK_CONFIG(config.span + 1 <= l, "recipe ", src, ": ttt.span = ", config.span,
                    " is too long for contexts of length ", l, " (needs span <= length - 1)");
    const LengthResult r = evaluate_length(*run.model, task, seeds.data, seed, l, examples, config, out);
    results.push_back(r);
    const double step_s = config.steps > 0 ? r.seconds / static_cast<double>(examples * config.steps) : 0.0;
    json row = {{"length", l},
                {"examples", r.examples},
                {"plain_accuracy", r.plain()},
                {"ttt_accuracy", r.ttt()},
                {"delta", r.ttt() - r.plain()},
                {"plain_answer_nll", r.plain_nll / static_cast<double>(r.examples)},
                {"ttt_answer_nll", r.ttt_nll / static_cast<double>(r.examples)},
                {"seconds", r.seconds},
                {"seconds_per_step", step_s}};
    jsonl += row.dump() + "\n";
    write_file_atomic((run_dir / "ttt.jsonl").string(), jsonl);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string table = results_table(results);
  std::ostringstream md;
  md << "# " << name << ": query-only test-time training\n\n"
     << "checkpoint " << run.model_path << ", task " << task.name() << ", " << examples << " rows per length; steps "
     << config.steps << ", span " << config.span << ", lr " << config.lr << ", weight_decay " << config.weight_decay
     << ", clip " << config.clip << ", params " << config.params << ", spans " << config.spans << "\n\n"
     << "accuracy of the final answer, plain and after test-time training:\n\n"
     << table;
  write_file_atomic((run_dir / "results.md").string(), md.str());
  json by_length = json::object(), plain_by_length = json::object();
  double mean_ttt = 0, mean_plain = 0;
  for (const LengthResult& r : results) {
    by_length[std::to_string(r.length)] = r.ttt();
    plain_by_length[std::to_string(r.length)] = r.plain();
    mean_ttt += r.ttt() / static_cast<double>(results.size());
    mean_plain += r.plain() / static_cast<double>(results.size());
  }
  const json result = {{"steps", config.steps},
                       {"seconds", seconds},
                       {"parameters", run.model->num_parameters()},
                       {"metric", "accuracy"},
                       {"metric_value", mean_ttt},
                       {"higher_is_better", true},
                       {"metric_by_length", by_length},
                       {"plain_metric_value", mean_plain},
                       {"plain_by_length", plain_by_length},
                       {"attention", run.config.attention},
                       {"task", task.name()},
                       {"device", "cpu"},
                       {"threads", cpu::max_threads()},
                       {"init", run.model_path}};
  write_file_atomic((run_dir / kResultFile).string(), result.dump(2) + "\n");
  out << "\n" << table << "(" << fmt(seconds, 1) << " s; " << run_dir.string() << ")\n";
}

void run_eval_ttt(const std::string& checkpoint, const TttConfig& config, int64_t examples, uint64_t seed,
                  std::ostream& out) {
  config.validate();
  AL_CHECK_CONFIG(examples >= 1, "eval: --ttt.examples must be >= 1; got ", examples);
  LoadedModel run = load_model(checkpoint);
  check_ttt_model(*run.model, "eval --ttt: " + run.model_path);
  Recipe base;
  AL_CHECK_IO(load_run_recipe(run.run_dir, base), "eval --ttt: ", run.run_dir, " has no recipe.ini");
  const std::string t = base.get_string("data.task", kCorpusTask);
  AL_CHECK_CONFIG(t != kCorpusTask, "eval --ttt: ", run.model_path,
                  " was trained on text; --ttt evaluates synthetic-task checkpoints (use `attnlab sample --ttt` for "
                  "text)");
  const int64_t seq_len = base.get_int("train.seq_len", 0);
  const TaskSetup setup = read_task_recipe(base, t, seq_len, run.config.context);
  AL_CHECK_CONFIG(setup.task->is_token_task(), "eval --ttt: task ", t, " is a vector task; ttt needs tokens");
  AL_CHECK_CONFIG(config.span + 1 <= seq_len, "eval --ttt: --ttt.span = ", config.span,
                  " is too long for the run's sequences of ", seq_len, " (needs span <= seq_len - 1)");
  const uint64_t data_seed = validation_seed(static_cast<uint64_t>(base.get_int("run.seed", 1)));
  out << run.model_path << ": task " << t << ", " << examples << " validation rows of " << seq_len << ", ttt steps "
      << config.steps << ", span " << config.span << ", lr " << config.lr << ", params " << config.params << ", spans "
      << config.spans << "\n"
      << std::flush;
  const LengthResult r = evaluate_length(*run.model, *setup.task, data_seed, seed, seq_len, examples, config, out);
  out << results_table({r});
}

void run_sample_ttt(const SampleCommand& cmd, const TttConfig& config, std::ostream& out) {
  config.validate();
  LoadedModel run = load_model(cmd.checkpoint);
  AL_CHECK_CONFIG(run.tokenizer != kTaskTokenizer && !run.config.vector_mode(), "sample --ttt: ", run.model_path,
                  " was trained on a synthetic task, not on text (`attnlab eval --ttt` evaluates it)");
  check_ttt_model(*run.model, "sample --ttt: " + run.model_path);
  AL_CHECK_CONFIG(cmd.temperature > 0, "sample: temperature must be > 0; got ", cmd.temperature);
  AL_CHECK_CONFIG(cmd.tokens >= 0 && cmd.top_k >= 0, "sample: tokens and top_k must be >= 0");
  const std::unique_ptr<Tokenizer> tok = load_run_tokenizer(run.tokenizer, run.run_dir);
  const std::vector<int32_t> prompt = tok->encode(cmd.prompt);
  const int64_t T = static_cast<int64_t>(prompt.size()), context = run.config.context;
  AL_CHECK_CONFIG(T >= config.span + 2, "sample --ttt: the prompt is ", T,
                  " tokens; test-time training with --ttt.span = ", config.span,
                  " needs more than span + 1 = ", config.span + 1, " (a longer --prompt or a smaller --ttt.span)");
  AL_CHECK_CONFIG(T <= context, "sample --ttt: the prompt is ", T, " tokens, longer than the model's context ",
                  context);
  Generator gen(cmd.seed);
  KvCache cache = run.model->make_cache(1);
  const ParameterOverrides o = adapt_queries(*run.model, prompt, config, gen, cache);
  // Decoding continues on the frozen prompt cache, so it stops at the context (no re-prefill:
  // that would recompute the prompt's keys with the adapted queries).
  const int64_t vocab = run.config.vocab_size;
  std::vector<int32_t> generated;
  int32_t next = prompt.back();
  for (int64_t n = 0; n < cmd.tokens && cache.length() < context; ++n) {
    const std::vector<double> logits = answer_logits(*run.model, next, o, cache).to_vector<double>();
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    std::iota(ids.begin(), ids.end(), 0);
    const int64_t k = cmd.top_k > 0 ? std::min(cmd.top_k, vocab) : vocab;
    std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
      return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)];
    });
    const double top = logits[static_cast<size_t>(ids[0])];
    std::vector<double> p(static_cast<size_t>(k));
    double total = 0;
    for (int64_t i = 0; i < k; ++i)
      total += p[static_cast<size_t>(i)] =
          std::exp((logits[static_cast<size_t>(ids[static_cast<size_t>(i)])] - top) / cmd.temperature);
    const double u = rand(Shape{}, gen, DType::f64).item<double>() * total;
    double acc = 0;
    next = ids[static_cast<size_t>(k - 1)];
    for (int64_t i = 0; i < k; ++i) {
      acc += p[static_cast<size_t>(i)];
      if (u < acc) {
        next = ids[static_cast<size_t>(i)];
        break;
      }
    }
    generated.push_back(next);
  }
  out << cmd.prompt << tok->decode(generated) << "\n";
}

}  // namespace attnlab
