// Synthetic tasks: sequences generated on the fly from a seed (no files), each with its metric.
// They are the tasks the attention papers use to tell variants apart (specs: attention_kda_lla.md
// A10 and B9, residuals_focusft_qttt.md 3.6 and Part 4).
//
//   name                  input (layouts in detail: the opening comment of each task's .cpp)   metric
//   mqar                  tokens: k v k v ... then q a q a ... PAD; target at each q: its value  accuracy
//   kv_retrieval          tokens: BOS, k v pairs among filler runs, demos "Q k A v", final
//                         "Q k* A"; target at each A: the value (part "final": the last alone)  accuracy
//   selective_copy        tokens: content among blanks, SEP, then the content in order (teacher
//                         forced); targets from SEP on: the next content token               accuracy
//   regression            vectors: [x_i, 0] at 2i, [0, y_i] at 2i+1, y = W x + noise; target
//                         at 2i: y_i                                                         mse
//   piecewise_regression  vectors: as regression, W redrawn in each of `segments` segments
//                         (parts "seg1".."segS": the mse within each)                        mse
//   needle                tokens: BOS, filler haystack with one "N k v" needle (and distractor
//                         needles), final "Q k A"; target at the final A: v                 accuracy
//   fact_chain            tokens: BABILong-like facts "X went L" / "X took O" among filler
//                         sentences, question "where O ?"; target: the location of the
//                         holder of O after its last move                                    accuracy
//
// Token tasks: x i32 [B, T] ids in [0, vocab_size()), y i32 [B, T] the target at each position
// (kIgnoreTarget where nothing is predicted: cross_entropy skips it), mask f32 [B, T] 1 where y is
// a target. Vector tasks: x f32 [B, T, input_dim()], y f32 [B, T, output_dim()] (0 where masked
// out), mask f32 [B, T] 1 where the model's output is scored. All tensors are on the CPU.
//
// Determinism: batch(seed, index, B, T) is a pure function of its arguments (Philox streams keyed
// by seed, counters from index), so a resumed run redraws exactly what it would have drawn, and a
// validation set is just another seed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lib/tensor.h"

namespace attnlab {

inline constexpr int32_t kIgnoreTarget = -100;  // cross_entropy's default ignore_index

// Every task's parameters (recipe keys data.<field>); each task reads the ones it uses.
struct TaskConfig {
  std::string name;         // one of task_names()
  int64_t vocab = 64;       // token tasks: size of the content alphabet (specials come on top;
                            // fact_chain: the filler words)
  int64_t pairs = 8;        // mqar, kv_retrieval: key-value pairs per sequence; needle: needles
  int64_t queries = 0;      // mqar: queries per sequence (0 = one per pair); kv_retrieval: demo queries
  int64_t copy_tokens = 8;  // selective_copy: content tokens to copy
  int64_t dim = 8;          // regression tasks: dimension of x
  int64_t out_dim = 1;      // regression tasks: dimension of y
  double noise = 0.0;       // regression tasks: std of the Gaussian noise added to y
  int64_t segments = 2;     // piecewise_regression: segments, each with its own map
  int64_t entities = 20;    // fact_chain: entities that move and carry objects
  int64_t locations = 10;   // fact_chain: locations (the answers)
  int64_t objects = 10;     // fact_chain: objects (the questions)
  int64_t facts = 8;        // fact_chain: facts per story
  // ConfigError naming the field and the task when a value is out of range or when sequences of
  // seq_len cannot hold the task (e.g. mqar needs seq_len >= 2 * (pairs + queries)).
  void validate(int64_t seq_len) const;
};

struct TaskBatch {
  Tensor x;     // i32 [B, T] (token tasks) or f32 [B, T, input_dim] (vector tasks)
  Tensor y;     // i32 [B, T] with kIgnoreTarget, or f32 [B, T, output_dim]
  Tensor mask;  // f32 [B, T]: 1 where the loss and the metric count
};

// A metric summed over batches: value() = sum / count (accuracy: correct / answers; mse: summed
// squared error / (positions * output_dim)). `parts` holds named sub-metrics the same way
// (piecewise_regression: "seg1", "seg2", ...: the mse in each segment).
struct TaskScore {
  double sum = 0;
  double count = 0;
  std::map<std::string, std::pair<double, double>> parts;  // name -> (sum, count)
  double value() const { return count > 0 ? sum / count : 0.0; }
  void add(const TaskScore& other);
};

class SyntheticTask {
 public:
  explicit SyntheticTask(TaskConfig config) : config_(std::move(config)) {}
  virtual ~SyntheticTask() = default;
  const TaskConfig& config() const { return config_; }
  const std::string& name() const { return config_.name; }

  bool is_token_task() const { return input_dim() == 0; }
  virtual int64_t vocab_size() const = 0;           // token tasks: ids are < this; vector tasks: 0
  virtual int64_t input_dim() const { return 0; }   // vector tasks: features per position
  virtual int64_t output_dim() const { return 0; }  // vector tasks: predicted features per position
  // The shortest sequence the config fits in.
  virtual int64_t min_seq_len() const = 0;
  // ConfigError naming the task, train.seq_len and the bound when sequences of seq_len cannot hold
  // the task (too short; regression tasks: also odd). TaskConfig::validate() and batch() call it.
  virtual void check_seq_len(int64_t seq_len) const;

  // Supervised fine-tuning (train/finetune.h, data/sft/sft_data.h): how many leading positions of
  // a row of seq_len form the context, the same in every row; the answer is predicted from
  // position context_length - 1 on (FocuSFT's bidirectional prefix is [0, context_length)).
  // 0 (the default) when the task has no context / answer split (mqar, copy, regression).
  virtual int64_t context_length(int64_t /*seq_len*/) const { return 0; }

  // Batch `index` of the stream `seed`; batch >= 1, seq_len >= min_seq_len() (ConfigError else).
  virtual TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const = 0;

  // "accuracy" (token tasks; higher is better) or "mse" (vector tasks; lower is better).
  std::string metric_name() const { return is_token_task() ? "accuracy" : "mse"; }
  bool higher_is_better() const { return is_token_task(); }
  // Scores the model's output for a batch. Token tasks: logits f32/f64 [B, T, V'] with
  // V' >= vocab_size() (argmax over the first vocab_size() columns == y where mask is 1). Vector
  // tasks: predictions f32/f64 [B, T, output_dim]. CPU tensors.
  virtual TaskScore score(const TaskBatch& batch, const Tensor& output) const;

  // Row `row` of a batch as one readable line, e.g. "k12 v40 k3 v33 ... | k3 -> v33", with the
  // model's answers next to the targets when `output` is given (same layout as score()).
  virtual std::string describe(const TaskBatch& batch, int64_t row, const Tensor& output = Tensor()) const = 0;

 private:
  TaskConfig config_;
};

// The tasks by name; ConfigError listing task_names() for an unknown one.
std::unique_ptr<SyntheticTask> make_task(const TaskConfig& config);
std::vector<std::string> task_names();

}  // namespace attnlab
