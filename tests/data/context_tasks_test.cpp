// The long-context synthetic tasks needle and fact_chain (data/synthetic/needle.cpp,
// fact_chain.cpp): determinism, the layouts re-read by independent parsers that see only x, the
// answers re-derived by a brute-force solver (fact_chain: a re-simulation of the story), length
// scaling that keeps every needle / fact and only adds filler, the context split, config errors.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "data/synthetic/task.h"
#include "lib/error.h"
#include "tests/data/data_test_util.h"

namespace attnlab {
namespace {

using test::expect_config_error;
using test::task_config;

bool same_batch(const TaskBatch& a, const TaskBatch& b) {
  return a.x.to_vector<int32_t>() == b.x.to_vector<int32_t>() && a.y.to_vector<int32_t>() == b.y.to_vector<int32_t>() &&
         a.mask.to_vector<float>() == b.mask.to_vector<float>();
}

// Logits [B, T, V] with the largest value at the final position on answer[b] (elsewhere on 0).
Tensor final_logits(const std::vector<int32_t>& answer, int64_t t_len, int64_t vocab) {
  const int64_t rows = static_cast<int64_t>(answer.size());
  std::vector<float> v(static_cast<size_t>(rows * t_len * vocab), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < t_len; ++t) v[static_cast<size_t>((r * t_len + t) * vocab)] = 1.0f;
    v[static_cast<size_t>((r * t_len + t_len - 1) * vocab + answer[static_cast<size_t>(r)])] = 5.0f;
  }
  return Tensor::from_vector(Shape{rows, t_len, vocab}, v);
}

// What a parser reads from one row: the non-filler content in order, and the answer it derives.
struct Reading {
  std::vector<std::vector<int32_t>> items;  // needles "N k v" / facts "X verb arg DOT"
  std::vector<int32_t> question;            // the final three tokens
  int32_t answer = -1;                      // derived from x alone
  int64_t filler = 0;                       // filler tokens (fact_chain: filler words and their DOTs)
};

// Checks y and mask of row r: the one target is at the last position and equals `answer`.
void check_targets(const TaskBatch& b, int64_t r, int32_t answer) {
  const int64_t t_len = b.x.size(1);
  const std::vector<int32_t> y = b.y.to_vector<int32_t>();
  const std::vector<float> mask = b.mask.to_vector<float>();
  for (int64_t t = 0; t < t_len; ++t) {
    const size_t i = static_cast<size_t>(r * t_len + t);
    if (t == t_len - 1) {
      EXPECT_EQ(y[i], answer) << "row " << r;
      EXPECT_EQ(mask[i], 1.0f);
    } else {
      EXPECT_EQ(y[i], kIgnoreTarget) << "row " << r << " position " << t;
      EXPECT_EQ(mask[i], 0.0f);
    }
  }
}

// --- needle ----------------------------------------------------------------------------------

Reading read_needle(const TaskConfig& c, const TaskBatch& b, int64_t r) {
  const int64_t t_len = b.x.size(1), v = c.vocab, half = v / 2;
  const int32_t bos = static_cast<int32_t>(v), n_tok = bos + 1, q_tok = bos + 2, a_tok = bos + 3, f0 = bos + 4;
  const std::vector<int32_t> x = b.x.to_vector<int32_t>();
  const int32_t* row = x.data() + r * t_len;
  Reading out;
  EXPECT_EQ(row[0], bos);
  std::map<int32_t, int32_t> value_of;
  int64_t t = 1;
  for (; t < t_len - 3; ++t) {
    if (row[t] >= f0 && row[t] < f0 + 16) {
      ++out.filler;
      continue;
    }
    EXPECT_EQ(row[t], n_tok) << "position " << t << ": only fillers and needles before the question";
    if (row[t] != n_tok) continue;
    EXPECT_LT(row[t + 1], half);
    EXPECT_GE(row[t + 2], half);
    EXPECT_LT(row[t + 2], v);
    EXPECT_TRUE(value_of.emplace(row[t + 1], row[t + 2]).second) << "needle keys are distinct";
    out.items.push_back({row[t], row[t + 1], row[t + 2]});
    t += 2;
  }
  EXPECT_EQ(t, t_len - 3);
  out.question = {row[t_len - 3], row[t_len - 2], row[t_len - 1]};
  EXPECT_EQ(row[t_len - 3], q_tok);
  EXPECT_EQ(row[t_len - 1], a_tok);
  const auto it = value_of.find(row[t_len - 2]);
  EXPECT_NE(it, value_of.end()) << "the asked key is a needle's";
  if (it != value_of.end()) out.answer = it->second;
  return out;
}

TEST(ContextTasks, NeedleLayoutAnswersAndDilution) {
  TaskConfig c = task_config("needle");
  c.vocab = 32;
  c.pairs = 4;
  const auto task = make_task(c);
  EXPECT_EQ(task->vocab_size(), 32 + 20);
  EXPECT_EQ(task->min_seq_len(), 1 + 3 * 4 + 3);
  const int64_t rows = 6;
  std::map<int64_t, std::vector<Reading>> by_len;
  std::set<int64_t> depths;
  for (const int64_t t_len : {16, 64, 256, 4096}) {
    EXPECT_EQ(task->context_length(t_len), t_len);
    const TaskBatch b = task->batch(3, 5, rows, t_len);
    EXPECT_TRUE(same_batch(b, task->batch(3, 5, rows, t_len)));
    EXPECT_FALSE(same_batch(b, task->batch(3, 6, rows, t_len)));
    std::vector<int32_t> answers;
    for (int64_t r = 0; r < rows; ++r) {
      Reading rd = read_needle(c, b, r);
      EXPECT_EQ(static_cast<int64_t>(rd.items.size()), c.pairs);
      EXPECT_EQ(rd.filler, t_len - task->min_seq_len());
      check_targets(b, r, rd.answer);
      answers.push_back(rd.answer);
      for (size_t i = 0; i < rd.items.size(); ++i)
        if (rd.items[i][1] == rd.question[1]) depths.insert(static_cast<int64_t>(i));
      by_len[t_len].push_back(std::move(rd));
    }
    // The solver's answers score 1; shifted ones 0.
    EXPECT_EQ(task->score(b, final_logits(answers, t_len, task->vocab_size())).value(), 1.0);
    for (int32_t& a : answers) a = (a + 1) % static_cast<int32_t>(task->vocab_size());
    const TaskScore wrong = task->score(b, final_logits(answers, t_len, task->vocab_size()));
    EXPECT_EQ(wrong.value(), 0.0);
    EXPECT_EQ(wrong.count, rows);
  }
  // Longer sequences: the same needles in the same order and the same question; only filler grows.
  for (int64_t r = 0; r < rows; ++r)
    for (const int64_t t_len : {64, 256, 4096}) {
      EXPECT_EQ(by_len[t_len][static_cast<size_t>(r)].items, by_len[16][static_cast<size_t>(r)].items);
      EXPECT_EQ(by_len[t_len][static_cast<size_t>(r)].question, by_len[16][static_cast<size_t>(r)].question);
    }
  EXPECT_GT(depths.size(), 1u) << "the asked needle is not always the same one";
}

TEST(ContextTasks, NeedleDescribe) {
  TaskConfig c = task_config("needle");
  c.vocab = 16;
  c.pairs = 2;
  const auto task = make_task(c);
  const TaskBatch b = task->batch(0, 0, 1, 40);
  const std::string d = task->describe(b, 0);
  EXPECT_EQ(d.rfind("BOS ", 0), 0u) << d;
  EXPECT_NE(d.find(" | Q k"), std::string::npos) << d;
  EXPECT_NE(d.find(" A -> v"), std::string::npos) << d;
  EXPECT_NE(d.find(" N k"), std::string::npos) << d;
  std::vector<int32_t> a = {0};
  EXPECT_NE(task->describe(b, 0, final_logits(a, 40, task->vocab_size())).find("(model k0)"), std::string::npos);
  EXPECT_THROW(task->describe(b, 1), ShapeError);
}

// --- fact_chain ------------------------------------------------------------------------------

// Reads a fact_chain row and answers its question by replaying the facts (the brute-force solver:
// it knows only the token groups and the verbs' meaning, nothing about how stories are drawn).
Reading solve_fact_chain(const TaskConfig& c, const TaskBatch& b, int64_t r) {
  const int64_t t_len = b.x.size(1), e_n = c.entities, l_n = c.locations, o_n = c.objects;
  const int32_t loc0 = static_cast<int32_t>(e_n), obj0 = static_cast<int32_t>(e_n + l_n),
                bos = static_cast<int32_t>(e_n + l_n + o_n);
  const int32_t went = bos + 1, took = bos + 2, dropped = bos + 3, dot = bos + 4, q_tok = bos + 5, a_tok = bos + 6,
                f0 = bos + 7;
  auto is_loc = [&](int32_t id) { return id >= loc0 && id < obj0; };
  auto is_obj = [&](int32_t id) { return id >= obj0 && id < bos; };
  const std::vector<int32_t> x = b.x.to_vector<int32_t>();
  const int32_t* row = x.data() + r * t_len;
  Reading out;
  EXPECT_EQ(row[0], bos);
  std::vector<int32_t> loc(static_cast<size_t>(e_n), -1);  // entity -> location id
  std::map<int32_t, int32_t> holder;                       // object id -> entity
  std::map<int32_t, int32_t> lies;                         // free object id -> location id
  int64_t t = 1;
  while (t < t_len - 3) {
    if (row[t] >= 0 && row[t] < loc0) {  // a fact
      const int32_t e = row[t], verb = row[t + 1], arg = row[t + 2];
      EXPECT_EQ(row[t + 3], dot) << "a fact ends with a period";
      out.items.push_back({row[t], row[t + 1], row[t + 2], row[t + 3]});
      if (verb == went) {
        EXPECT_TRUE(is_loc(arg));
        EXPECT_NE(loc[static_cast<size_t>(e)], arg) << "a move goes somewhere else";
        loc[static_cast<size_t>(e)] = arg;
      } else if (verb == took) {
        EXPECT_TRUE(is_obj(arg));
        EXPECT_EQ(holder.count(arg), 0u) << "only a free object can be taken";
        EXPECT_NE(loc[static_cast<size_t>(e)], -1) << "the taker's location is known";
        if (lies.count(arg)) {
          EXPECT_EQ(lies[arg], loc[static_cast<size_t>(e)]) << "taken where it lies";
        }
        lies.erase(arg);
        holder[arg] = e;
      } else if (verb == dropped) {
        EXPECT_TRUE(is_obj(arg));
        EXPECT_TRUE(holder.count(arg) && holder[arg] == e) << "only the holder drops an object";
        holder.erase(arg);
        lies[arg] = loc[static_cast<size_t>(e)];
      } else {
        ADD_FAILURE() << "position " << t + 1 << ": " << verb << " is not a verb";
      }
      t += 4;
      continue;
    }
    // A filler sentence: filler words up to a period.
    for (; t < t_len - 3 && row[t] != dot; ++t) {
      EXPECT_TRUE(row[t] >= f0 && row[t] < f0 + c.vocab) << "position " << t << " is neither a fact nor filler";
      ++out.filler;
    }
    EXPECT_EQ(row[t], dot) << "a filler sentence ends with a period";
    ++out.filler;
    ++t;
  }
  EXPECT_EQ(t, t_len - 3);
  out.question = {row[t_len - 3], row[t_len - 2], row[t_len - 1]};
  EXPECT_EQ(row[t_len - 3], q_tok);
  EXPECT_TRUE(is_obj(row[t_len - 2]));
  EXPECT_EQ(row[t_len - 1], a_tok);
  const int32_t o = row[t_len - 2];
  if (holder.count(o))
    out.answer = loc[static_cast<size_t>(holder[o])];
  else if (lies.count(o))
    out.answer = lies[o];
  EXPECT_NE(out.answer, -1) << "the asked object was taken at some point";
  return out;
}

TEST(ContextTasks, FactChainSolverAgreesAndScalingOnlyAddsFiller) {
  TaskConfig c = task_config("fact_chain");
  c.entities = 4;
  c.locations = 3;
  c.objects = 3;
  c.facts = 10;
  c.vocab = 12;
  const auto task = make_task(c);
  EXPECT_EQ(task->vocab_size(), 4 + 3 + 3 + 7 + 12);
  EXPECT_EQ(task->min_seq_len(), 1 + 4 * 10 + 3);
  const int64_t rows = 16;
  std::map<int64_t, std::vector<Reading>> by_len;
  std::map<int32_t, int64_t> verbs;
  int64_t moved_after_take = 0;
  for (const int64_t t_len : {44, 45, 46, 47, 100, 256, 4096}) {
    EXPECT_EQ(task->context_length(t_len), t_len);
    const TaskBatch b = task->batch(11, 2, rows, t_len);
    EXPECT_TRUE(same_batch(b, task->batch(11, 2, rows, t_len)));
    EXPECT_FALSE(same_batch(b, task->batch(12, 2, rows, t_len)));
    std::vector<int32_t> answers;
    for (int64_t r = 0; r < rows; ++r) {
      Reading rd = solve_fact_chain(c, b, r);
      EXPECT_EQ(static_cast<int64_t>(rd.items.size()), c.facts);
      EXPECT_EQ(rd.filler, t_len - task->min_seq_len());
      check_targets(b, r, rd.answer);
      answers.push_back(rd.answer);
      if (t_len == 44) {
        for (const auto& f : rd.items) ++verbs[f[1]];
        // Does the holder move after taking the asked object? (Then the take alone does not answer.)
        bool taken = false;
        int32_t who = -1;
        for (const auto& f : rd.items) {
          if (f[1] == 4 + 3 + 3 + 2 && f[2] == rd.question[1]) taken = true, who = f[0];
          if (taken && f[1] == 4 + 3 + 3 + 1 && f[0] == who) {
            ++moved_after_take;
            break;
          }
        }
      }
      by_len[t_len].push_back(std::move(rd));
    }
    EXPECT_EQ(task->score(b, final_logits(answers, t_len, task->vocab_size())).value(), 1.0);
  }
  for (int64_t r = 0; r < rows; ++r)
    for (const auto& [t_len, readings] : by_len) {
      EXPECT_EQ(readings[static_cast<size_t>(r)].items, by_len[44][static_cast<size_t>(r)].items) << t_len;
      EXPECT_EQ(readings[static_cast<size_t>(r)].question, by_len[44][static_cast<size_t>(r)].question) << t_len;
      EXPECT_EQ(readings[static_cast<size_t>(r)].answer, by_len[44][static_cast<size_t>(r)].answer) << t_len;
    }
  // Every verb occurs, and some answers need a move that came after the take.
  EXPECT_EQ(verbs.size(), 3u);
  EXPECT_GT(moved_after_take, 0);
}

TEST(ContextTasks, FactChainDefaultsManyRows) {
  // The spec's sizes (20 entities, 10 locations, 10 objects) at 256 tokens: the solver agrees on
  // every row, and the answers spread over the locations.
  const TaskConfig c = task_config("fact_chain");
  const auto task = make_task(c);
  const TaskBatch b = task->batch(1, 0, 64, 256);
  std::set<int32_t> answers;
  for (int64_t r = 0; r < 64; ++r) {
    const Reading rd = solve_fact_chain(c, b, r);
    check_targets(b, r, rd.answer);
    answers.insert(rd.answer);
  }
  EXPECT_GT(answers.size(), 4u);
}

TEST(ContextTasks, FactChainDescribe) {
  TaskConfig c = task_config("fact_chain");
  c.facts = 3;
  const auto task = make_task(c);
  const TaskBatch b = task->batch(0, 0, 1, 48);
  const std::string d = task->describe(b, 0);
  EXPECT_EQ(d.rfind("BOS", 0), 0u) << d;
  EXPECT_NE(d.find(" went l"), std::string::npos) << d;
  EXPECT_NE(d.find("| where o"), std::string::npos) << d;
  EXPECT_NE(d.find(" ? -> l"), std::string::npos) << d;
}

TEST(ContextTasks, KvRetrievalContextIsTheWholeRow) {
  const auto task = make_task(task_config("kv_retrieval"));
  EXPECT_EQ(task->context_length(128), 128);
  EXPECT_EQ(make_task(task_config("mqar"))->context_length(128), 0);
}

TEST(ContextTasks, ConfigErrors) {
  TaskConfig n = task_config("needle");
  n.vocab = 7;
  expect_config_error([&] { make_task(n); }, {"data.task = needle", "data.vocab", "even"});
  n.vocab = 8;
  n.pairs = 5;
  expect_config_error([&] { make_task(n); }, {"data.task = needle", "data.pairs", "got 5"});
  n.pairs = 4;
  expect_config_error([&] { n.validate(15); }, {"data.task = needle", "1 + 3 * data.pairs + 3 = 16", "got 15"});
  EXPECT_NO_THROW(n.validate(16));
  expect_config_error([&] { make_task(n)->batch(0, 0, 0, 16); }, {"batch size"});

  TaskConfig f = task_config("fact_chain");
  f.facts = 4;
  expect_config_error([&] { f.validate(19); }, {"data.task = fact_chain", "1 + 4 * data.facts + 3 = 20", "got 19"});
  EXPECT_NO_THROW(f.validate(20));
  const std::vector<std::pair<std::function<void(TaskConfig&)>, std::string>> bad = {
      {[](TaskConfig& t) { t.entities = 0; }, "data.entities"},
      {[](TaskConfig& t) { t.locations = 1; }, "data.locations"},
      {[](TaskConfig& t) { t.objects = 0; }, "data.objects"},
      {[](TaskConfig& t) { t.facts = 1; }, "data.facts"},
      {[](TaskConfig& t) { t.vocab = 0; }, "data.vocab"},
  };
  for (const auto& [edit, key] : bad) {
    TaskConfig t = f;
    edit(t);
    expect_config_error([&] { make_task(t); }, {"data.task = fact_chain", key});
  }
}

}  // namespace
}  // namespace attnlab
