// Synthetic-task training (train/task_train.h): recipe keys, loss, validation metric, samples.
#include "train/task_train.h"

#include <algorithm>
#include <set>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "lib/error.h"

namespace attnlab {

namespace {

// The TaskConfig fields each task reads. A task missing here (one added to data/synthetic later)
// reads every field the recipe gives, so its recipes still run; the table only makes the
// unused-key check precise.
const std::map<std::string, std::set<std::string>>& task_fields() {
  static const std::map<std::string, std::set<std::string>> fields{
      {"mqar", {"vocab", "pairs", "queries"}},
      {"kv_retrieval", {"vocab", "pairs", "queries"}},
      {"selective_copy", {"vocab", "copy_tokens"}},
      {"regression", {"dim", "out_dim", "noise"}},
      {"piecewise_regression", {"dim", "out_dim", "noise", "segments"}},
      {"needle", {"vocab", "pairs"}},
      {"fact_chain", {"vocab", "entities", "locations", "objects", "facts"}},
  };
  return fields;
}

}  // namespace

std::vector<int64_t> parse_eval_lengths(const Recipe& r, const std::string& text) {
  std::vector<int64_t> out;
  if (text.find_first_not_of(" \t") == std::string::npos) return out;
  size_t at = 0;
  while (true) {
    const size_t comma = text.find(',', at);
    const std::string item = text.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    const std::string word = b == std::string::npos ? std::string() : item.substr(b, e - b + 1);
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    AL_CHECK_CONFIG(!word.empty() && used == word.size(), "recipe ", r.source(), ": data.eval_lengths = '", text,
                    "' must be a comma list of sequence lengths, e.g. 64,128,256; '", word, "' is not a number");
    out.push_back(v);
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

TaskSetup read_task_recipe(Recipe& r, const std::string& name, int64_t seq_len, int64_t context) {
  TaskConfig tc;
  tc.name = name;
  const auto known = task_fields().find(name);
  auto wants = [&](const char* field) {
    return known == task_fields().end() ? r.has(std::string("data.") + field) : known->second.count(field) > 0;
  };
  if (wants("vocab")) tc.vocab = r.get_int("data.vocab", tc.vocab);
  if (wants("pairs")) tc.pairs = r.get_int("data.pairs", tc.pairs);
  if (wants("queries")) tc.queries = r.get_int("data.queries", tc.queries);
  if (wants("copy_tokens")) tc.copy_tokens = r.get_int("data.copy_tokens", tc.copy_tokens);
  if (wants("dim")) tc.dim = r.get_int("data.dim", tc.dim);
  if (wants("out_dim")) tc.out_dim = r.get_int("data.out_dim", tc.out_dim);
  if (wants("noise")) tc.noise = r.get_double("data.noise", tc.noise);
  if (wants("segments")) tc.segments = r.get_int("data.segments", tc.segments);
  if (wants("entities")) tc.entities = r.get_int("data.entities", tc.entities);
  if (wants("locations")) tc.locations = r.get_int("data.locations", tc.locations);
  if (wants("objects")) tc.objects = r.get_int("data.objects", tc.objects);
  if (wants("facts")) tc.facts = r.get_int("data.facts", tc.facts);
  TaskSetup setup;
  setup.eval_lengths = parse_eval_lengths(r, r.get_string("data.eval_lengths", ""));
  try {
    setup.task = make_task(tc);
    tc.validate(seq_len);
  } catch (const ConfigError& e) {
    // The task's messages name the task and the key already.
    detail::throw_error<ConfigError>("recipe ", r.source(), ": ", e.what());
  }
  const int64_t min_len = setup.task->min_seq_len();
  AL_CHECK_CONFIG(seq_len >= min_len, "recipe ", r.source(), ": train.seq_len = ", seq_len,
                  " is too short for data.task = ", name, ", which needs sequences of at least ", min_len);
  for (const int64_t len : setup.eval_lengths) {
    AL_CHECK_CONFIG(len <= context, "recipe ", r.source(), ": data.eval_lengths entry ", len,
                    " is longer than model.context = ", context, " (raise model.context to evaluate at it)");
    AL_CHECK_CONFIG(len >= min_len, "recipe ", r.source(), ": data.eval_lengths entry ", len,
                    " is too short for data.task = ", name, ", which needs sequences of at least ", min_len);
    try {
      tc.validate(len);
    } catch (const ConfigError& e) {
      detail::throw_error<ConfigError>("recipe ", r.source(), ": data.eval_lengths entry ", len, ": ", e.what());
    }
  }
  return setup;
}

uint64_t validation_seed(uint64_t run_seed) { return run_seed ^ 0x76A11DA7E5EEDull; }

Variable task_input(const TaskBatch& batch, Device device) { return Variable(batch.x.to(device)); }

Variable task_loss(const SyntheticTask& task, const Variable& output, const TaskBatch& batch) {
  const Device device = output.device();
  if (task.is_token_task()) return cross_entropy(output, Variable(batch.y.to(device)), kIgnoreTarget);
  // Masked mean squared error from primitives, so it runs (and differentiates) on any device.
  const int64_t B = batch.mask.size(0), T = batch.mask.size(1), D = task.output_dim();
  const double positions = sum(Variable(batch.mask)).data().item<double>();
  const Variable y(batch.y.to(output.dtype()).to(device));
  const Variable mask(batch.mask.to(output.dtype()).reshape(Shape{B, T, 1}).to(device));
  const Variable diff = sub(output, y);
  const Variable err = sum(mul(mul(diff, diff), mask));
  return mul_scalar(err, 1.0 / std::max(1.0, positions * static_cast<double>(D)));
}

TaskEval evaluate_task(const Gpt& model, const SyntheticTask& task, uint64_t seed, int64_t batch, int64_t seq_len,
                       int64_t batches) {
  NoGradGuard no_grad;
  TaskEval out;
  for (int64_t i = 0; i < batches; ++i) {
    const TaskBatch b = task.batch(seed, static_cast<uint64_t>(i), batch, seq_len);
    const Variable output = model.forward(task_input(b, model.device()));
    out.loss += task_loss(task, output, b).data().item<double>();
    out.score.add(task.score(b, output.data().to(Device::cpu())));
  }
  out.loss /= static_cast<double>(std::max<int64_t>(batches, 1));
  return out;
}

std::vector<std::string> describe_task_rows(const Gpt& model, const SyntheticTask& task, uint64_t seed, int64_t batch,
                                            int64_t seq_len, int64_t rows) {
  NoGradGuard no_grad;
  const TaskBatch b = task.batch(seed, 0, batch, seq_len);
  const Tensor output = model.forward(task_input(b, model.device())).data().to(Device::cpu());
  std::vector<std::string> lines;
  for (int64_t i = 0; i < std::min(rows, batch); ++i) lines.push_back(task.describe(b, i, output));
  return lines;
}

}  // namespace attnlab
