// Supervised fine-tuning data: examples with a context and an answer, loss on the answer only
// (../shared/specs/residuals_focusft_qttt.md Part 2; `attnlab finetune`, train/finetune.h).
//
// Two sources give the same batches:
// - JSONL files, one example per line, in one of three forms:
//     {"context": "text", "answer": "text"}
//     {"turns": [{"role": "system" | "user" | "assistant", "content": "text"}, ...]}
//     {"context_ids": [int, ...], "answer_ids": [int, ...]}   (pre-tokenized; task-tokenizer models)
//   Text is tokenized with the model's tokenizer. A turn renders as "<role>: <content>\n"; in an
//   assistant turn the header "assistant: " belongs to the context (loss 0) and the content plus
//   its "\n" is answer (loss 1). Loss is on every assistant turn; the context (the bidirectional
//   prefix) is everything before the first answer token: later user turns are causal, since the
//   core-op mask has a single prefix (common.h; the spec's per-turn mask is not supported).
// - the synthetic tasks with a context / answer split (SyntheticTask::context_length:
//   kv_retrieval, needle, fact_chain), generated per step from the seed.
//
// A batch: x i32 [B, T] and y i32 [B, T] where y[b, i] = x[b, i + 1] when that token is an answer
// token, else kIgnoreTarget; every row of a batch has the same context length `prefix`, so one
// AttentionMask{.prefix} serves the batch (right padding with pad_id, which no real position
// sees: pads come after everything real and the mask is causal past the prefix).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/synthetic/task.h"
#include "data/tokenizer.h"

namespace attnlab {

struct SftExample {
  std::vector<int32_t> ids;   // the whole sequence: context then answer (and later turns)
  std::vector<uint8_t> loss;  // per position of ids: 1 = an answer token (predicted from i - 1)
  int64_t context = 0;        // tokens before the first answer token (>= 1)
};

struct SftBatch {
  TaskBatch
      batch;  // x i32 [B, T], y i32 [B, T] (kIgnoreTarget off the answers), mask f32 [B, T] (1 where y is a target)
  int64_t prefix = 0;  // the context length shared by every row
};

// Reads a JSONL file. `tokenizer` may be null only when every line is in the *_ids form.
// Examples longer than max_len are cut on the right (their answer must keep >= 1 token; else the
// line is an error). IoError naming path:line and what was expected for a malformed line, an
// unknown role, an empty answer, no assistant turn, an id outside [0, vocab) (vocab = the
// tokenizer's, or `vocab` when given > 0), or an empty file.
std::vector<SftExample> read_sft_jsonl(const std::string& path, const Tokenizer* tokenizer, int64_t max_len,
                                       int64_t vocab = 0);

// The examples `indices` as batches, grouped by context length (one SftBatch per distinct
// context, rows in the order given), each padded on the right to its longest row with pad_id.
std::vector<SftBatch> make_sft_batches(const std::vector<SftExample>& examples, const std::vector<int64_t>& indices,
                                       int32_t pad_id);

// Training batch `index` of a JSONL dataset: `rows` example indices drawn without replacement
// within an epoch (a Philox shuffle per epoch from `seed`), so resume redraws the same rows.
std::vector<int64_t> sft_batch_indices(uint64_t seed, uint64_t index, int64_t rows, int64_t num_examples);

// A synthetic task's batch as an SFT batch: keeps the targets at positions >= context - 1 (the
// answer), drops earlier ones (in-context demos), prefix = task.context_length(T). ConfigError
// when the task has no context / answer split.
SftBatch sft_from_task(const SyntheticTask& task, TaskBatch batch);

}  // namespace attnlab
