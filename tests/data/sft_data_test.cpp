// SFT data (data/sft/sft_data.h): the three JSONL forms, multi-turn loss masks and context,
// truncation, the malformed-line errors (each naming path:line), batching by context length with
// right padding, the per-epoch shuffle, and synthetic-task batches reduced to their final answer.
#include "data/sft/sft_data.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/synthetic/task.h"
#include "tests/data/data_test_util.h"

namespace attnlab {
namespace {

using test::expect_io_error;
using test::TempDir;
using test::write_bytes;

std::vector<int32_t> bytes(const std::string& s) { return std::vector<int32_t>(s.begin(), s.end()); }

// ids = context then answer; loss 0 on the context, 1 on the answer.
void expect_example(const SftExample& ex, const std::string& context, const std::string& answer) {
  EXPECT_EQ(ex.ids, bytes(context + answer));
  std::vector<uint8_t> loss(context.size(), 0);
  loss.resize(context.size() + answer.size(), 1);
  EXPECT_EQ(ex.loss, loss);
  EXPECT_EQ(ex.context, static_cast<int64_t>(context.size()));
}

TEST(SftJsonl, TextAndIdForms) {
  TempDir dir;
  const std::string path = dir.file("a.jsonl");
  write_bytes(path,
              "{\"context\": \"2+2=\", \"answer\": \"4\"}\n"
              "\n"
              "{\"context_ids\": [5, 6, 7], \"answer_ids\": [8, 9]}\r\n"
              "{\"answer\": \"yes\", \"context\": \"ok?\"}");
  const ByteTokenizer tok;
  const std::vector<SftExample> ex = read_sft_jsonl(path, &tok, 64);
  ASSERT_EQ(ex.size(), 3u);
  expect_example(ex[0], "2+2=", "4");
  EXPECT_EQ(ex[1].ids, (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(ex[1].loss, (std::vector<uint8_t>{0, 0, 0, 1, 1}));
  EXPECT_EQ(ex[1].context, 3);
  expect_example(ex[2], "ok?", "yes");

  // The id form needs no tokenizer; `vocab` bounds its ids.
  const std::string ids = dir.file("ids.jsonl");
  write_bytes(ids, "{\"context_ids\": [0, 1], \"answer_ids\": [2]}\n{\"context_ids\": [3], \"answer_ids\": [9, 4]}\n");
  const std::vector<SftExample> e2 = read_sft_jsonl(ids, nullptr, 16, 10);
  ASSERT_EQ(e2.size(), 2u);
  EXPECT_EQ(e2[1].ids, (std::vector<int32_t>{3, 9, 4}));
  EXPECT_EQ(e2[1].context, 1);
  expect_io_error([&] { read_sft_jsonl(ids, nullptr, 16, 9); }, {ids + ":2:", "token id 9", "[0, 9)"});
  // Text lines without a tokenizer name the fix.
  expect_io_error([&] { read_sft_jsonl(path, nullptr, 16, 300); }, {path + ":1:", "tokenizer", "context_ids"});
}

TEST(SftJsonl, TurnsLossMaskAndContext) {
  TempDir dir;
  const std::string path = dir.file("chat.jsonl");
  write_bytes(path,
              "{\"turns\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": "
              "\"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}, {\"role\": \"user\", \"content\": \"and?\"}, "
              "{\"role\": \"assistant\", \"content\": \"done\"}]}\n");
  const ByteTokenizer tok;
  const std::vector<SftExample> ex = read_sft_jsonl(path, &tok, 1000);
  ASSERT_EQ(ex.size(), 1u);
  const std::string head = "system: be brief\nuser: hi\nassistant: ";
  const std::string a1 = "yo\n", mid = "user: and?\nassistant: ", a2 = "done\n";
  EXPECT_EQ(ex[0].ids, bytes(head + a1 + mid + a2));
  std::vector<uint8_t> loss;
  loss.insert(loss.end(), head.size(), 0);
  loss.insert(loss.end(), a1.size(), 1);
  loss.insert(loss.end(), mid.size(), 0);
  loss.insert(loss.end(), a2.size(), 1);
  EXPECT_EQ(ex[0].loss, loss);
  // The context is everything before the first answer token; the later user turn is not in it.
  EXPECT_EQ(ex[0].context, static_cast<int64_t>(head.size()));

  // A conversation that starts with the assistant still has its header as context.
  write_bytes(path, "{\"turns\": [{\"role\": \"assistant\", \"content\": \"x\"}]}\n");
  const std::vector<SftExample> e2 = read_sft_jsonl(path, &tok, 100);
  EXPECT_EQ(e2[0].context, static_cast<int64_t>(std::string("assistant: ").size()));
}

TEST(SftJsonl, TruncationKeepsAnAnswerToken) {
  TempDir dir;
  const std::string path = dir.file("t.jsonl");
  write_bytes(path, "{\"context\": \"abcd\", \"answer\": \"efgh\"}\n");
  const ByteTokenizer tok;
  const std::vector<SftExample> ex = read_sft_jsonl(path, &tok, 6);
  expect_example(ex[0], "abcd", "ef");
  expect_example(read_sft_jsonl(path, &tok, 5)[0], "abcd", "e");
  expect_example(read_sft_jsonl(path, &tok, 8)[0], "abcd", "efgh");
  expect_io_error([&] { read_sft_jsonl(path, &tok, 4); }, {path + ":1:", "context is 4 tokens", "max_len = 4"});
  EXPECT_THROW(read_sft_jsonl(path, &tok, 1), ConfigError);
}

TEST(SftJsonl, MalformedLinesNamePathAndLine) {
  TempDir dir;
  const std::string path = dir.file("bad.jsonl");
  const ByteTokenizer tok;
  const std::string good = "{\"context\": \"c\", \"answer\": \"a\"}\n";
  // Each bad line goes on line 2, after a good one.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"context\": \"c\", \"answer\": ", "not valid JSON"},
      {"[1, 2]", "must be a JSON object"},
      {"{\"question\": \"q\"}", "no known form"},
      {"{\"context\": \"c\"}", "needs \"answer\""},
      {"{\"context\": \"c\", \"answer\": \"\"}", "empty answer"},
      {"{\"context\": 3, \"answer\": \"a\"}", "\"context\" must be a string"},
      {"{\"context\": \"c\", \"answer\": \"a\", \"extra\": 1}", "unexpected key \"extra\""},
      {"{\"context\": \"\", \"answer\": \"a\"}", "empty context"},
      {"{\"turns\": []}", "non-empty array"},
      {"{\"turns\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant turn"},
      {"{\"turns\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", "unknown role \"robot\""},
      {"{\"turns\": [{\"role\": \"user\"}]}", "needs a \"content\""},
      {"{\"turns\": [{\"role\": \"assistant\", \"content\": \"\"}]}", "empty answer"},
      {"{\"turns\": [\"hi\"]}", "turns[0]"},
      {"{\"context_ids\": [1, 2.5], \"answer_ids\": [3]}", "\"context_ids\"[1] must be an integer"},
      {"{\"context_ids\": [1], \"answer_ids\": []}", "empty answer"},
      {"{\"context_ids\": [], \"answer_ids\": [1]}", "empty context"},
      {"{\"context_ids\": [-1], \"answer_ids\": [1]}", "not a token id"},
      {"{\"context_ids\": [1], \"answer_ids\": [300]}", "token id 300"},
      {"{\"context_ids\": [1]}", "needs \"answer_ids\""},
      {"{\"context_ids\": 1, \"answer_ids\": [1]}", "must be an array"},
  };
  for (const auto& [line, what] : cases) {
    SCOPED_TRACE(line);
    write_bytes(path, good + line + "\n" + good);
    expect_io_error([&] { read_sft_jsonl(path, &tok, 64); }, {path + ":2:", what});
  }
  write_bytes(path, "\n  \n");
  expect_io_error([&] { read_sft_jsonl(path, &tok, 64); }, {path, "no examples"});
  expect_io_error([&] { read_sft_jsonl(dir.file("missing.jsonl"), &tok, 64); }, {"missing.jsonl"});
}

SftExample example(std::vector<int32_t> ids, int64_t context) {
  SftExample e;
  e.loss.assign(ids.size(), 0);
  std::fill(e.loss.begin() + context, e.loss.end(), uint8_t{1});
  e.ids = std::move(ids);
  e.context = context;
  return e;
}

TEST(SftBatches, GroupByContextAndPadRight) {
  const std::vector<SftExample> ex = {
      example({1, 2, 3, 4}, 2),        // context 2
      example({5, 6, 7}, 1),           // context 1
      example({8, 9, 10, 11, 12}, 2),  // context 2, longer
  };
  const std::vector<SftBatch> b = make_sft_batches(ex, {2, 1, 0}, 99);
  ASSERT_EQ(b.size(), 2u);
  // First group: context 2 (first seen), rows in the order given: 2 then 0; padded to 5.
  EXPECT_EQ(b[0].prefix, 2);
  EXPECT_EQ(b[0].batch.x.shape(), (Shape{2, 5}));
  EXPECT_EQ(b[0].batch.x.to_vector<int32_t>(), (std::vector<int32_t>{8, 9, 10, 11, 12, 1, 2, 3, 4, 99}));
  const int32_t I = kIgnoreTarget;
  // y[i] = x[i + 1] where that token is an answer token: positions context - 1 .. len - 2.
  EXPECT_EQ(b[0].batch.y.to_vector<int32_t>(), (std::vector<int32_t>{I, 10, 11, 12, I, I, 3, 4, I, I}));
  EXPECT_EQ(b[0].batch.mask.to_vector<float>(), (std::vector<float>{0, 1, 1, 1, 0, 0, 1, 1, 0, 0}));
  EXPECT_EQ(b[1].prefix, 1);
  EXPECT_EQ(b[1].batch.x.to_vector<int32_t>(), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(b[1].batch.y.to_vector<int32_t>(), (std::vector<int32_t>{6, 7, I}));

  // Multi-turn: a later context run inside the answer region is not a target.
  SftExample mt = example({1, 2, 3, 4, 5, 6}, 1);
  mt.loss = {0, 1, 0, 0, 1, 1};
  const std::vector<SftBatch> m = make_sft_batches({mt}, {0}, 0);
  EXPECT_EQ(m[0].batch.y.to_vector<int32_t>(), (std::vector<int32_t>{2, I, I, 5, 6, I}));

  EXPECT_THROW(make_sft_batches(ex, {3}, 0), ConfigError);
  EXPECT_THROW(make_sft_batches(ex, {0}, -1), ConfigError);
  EXPECT_TRUE(make_sft_batches(ex, {}, 0).empty());
}

TEST(SftBatches, IndicesArePerEpochPermutationsAndDeterministic) {
  const int64_t n = 12, rows = 4;
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<int64_t> all;
    for (uint64_t i = 0; i < 3; ++i) {
      const std::vector<int64_t> b = sft_batch_indices(7, epoch * 3 + i, rows, n);
      EXPECT_EQ(b, sft_batch_indices(7, epoch * 3 + i, rows, n));
      ASSERT_EQ(b.size(), static_cast<size_t>(rows));
      all.insert(all.end(), b.begin(), b.end());
    }
    std::vector<int64_t> sorted = all;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] = i;
    EXPECT_EQ(sorted, want) << "epoch " << epoch << " is a permutation";
  }
  // Epochs are shuffled differently, and seeds differ.
  EXPECT_NE(sft_batch_indices(7, 0, 12, 12), sft_batch_indices(7, 1, 12, 12));
  EXPECT_NE(sft_batch_indices(7, 0, 12, 12), sft_batch_indices(8, 0, 12, 12));
  // A batch that crosses the epoch boundary: rows 8..12 of the stream with n = 10.
  const std::vector<int64_t> e0 = sft_batch_indices(3, 0, 10, 10), e1 = sft_batch_indices(3, 1, 10, 10);
  const std::vector<int64_t> cross = sft_batch_indices(3, 2, 4, 10);
  EXPECT_EQ(cross, (std::vector<int64_t>{e0[8], e0[9], e1[0], e1[1]}));
  // More rows than examples: every example at least once.
  const std::vector<int64_t> big = sft_batch_indices(1, 0, 7, 3);
  EXPECT_EQ(std::set<int64_t>(big.begin(), big.end()).size(), 3u);
  EXPECT_THROW(sft_batch_indices(1, 0, 0, 3), ConfigError);
  EXPECT_THROW(sft_batch_indices(1, 0, 2, 0), ConfigError);
}

TEST(SftBatches, FromTaskKeepsOnlyTheFinalAnswer) {
  TaskConfig c;
  c.name = "kv_retrieval";
  c.vocab = 16;
  c.pairs = 4;
  c.queries = 2;
  const auto task = make_task(c);
  const int64_t t_len = 40;
  TaskBatch b = task->batch(1, 2, 3, t_len);
  EXPECT_EQ(b.mask.to_vector<float>().size(), 3u * t_len);
  const std::vector<int32_t> x0 = b.x.to_vector<int32_t>(), y0 = b.y.to_vector<int32_t>();
  const SftBatch s = sft_from_task(*task, b);
  EXPECT_EQ(s.prefix, t_len);
  EXPECT_EQ(s.batch.x.to_vector<int32_t>(), x0);
  const std::vector<int32_t> y = s.batch.y.to_vector<int32_t>();
  const std::vector<float> mask = s.batch.mask.to_vector<float>();
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t t = 0; t < t_len; ++t) {
      const size_t i = static_cast<size_t>(r * t_len + t);
      if (t == t_len - 1) {
        EXPECT_EQ(y[i], y0[i]);
        EXPECT_NE(y[i], kIgnoreTarget);
        EXPECT_EQ(mask[i], 1.0f);
      } else {
        EXPECT_EQ(y[i], kIgnoreTarget) << "demo targets are dropped";
        EXPECT_EQ(mask[i], 0.0f);
      }
    }
  for (const std::string name : {"needle", "fact_chain"}) {
    TaskConfig tc;
    tc.name = name;
    const auto t = make_task(tc);
    const SftBatch sb = sft_from_task(*t, t->batch(0, 0, 2, 64));
    EXPECT_EQ(sb.prefix, 64) << name;
    const std::vector<float> m = sb.batch.mask.to_vector<float>();
    EXPECT_EQ(std::count(m.begin(), m.end(), 1.0f), 2) << name;
    EXPECT_EQ(m[63], 1.0f);
    EXPECT_EQ(m[127], 1.0f);
  }
  for (const std::string name : {"mqar", "selective_copy", "regression"}) {
    TaskConfig tc;
    tc.name = name;
    const auto t = make_task(tc);
    EXPECT_THROW(sft_from_task(*t, t->batch(0, 0, 1, 64)), ConfigError) << name;
  }
}

}  // namespace
}  // namespace attnlab
