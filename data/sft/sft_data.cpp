// Supervised fine-tuning data (data/sft/sft_data.h): the JSONL reader, batching by context
// length, the per-epoch shuffle, and synthetic-task batches as SFT batches.
#include "data/sft/sft_data.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab {

namespace {

using json = nlohmann::json;

const char* const kForms =
    "one JSON object per line: {\"context\": \"text\", \"answer\": \"text\"}, "
    "{\"turns\": [{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": \"text\"}, ...]} or "
    "{\"context_ids\": [int, ...], \"answer_ids\": [int, ...]}";

// Throws IoError "path:line: parts...".
template <typename... Parts>
[[noreturn]] void line_error(const std::string& path, int64_t line, const Parts&... parts) {
  detail::throw_error<IoError>(path, ":", line, ": ", parts...);
}

// An example under construction: pieces appended with their loss flag.
struct Builder {
  SftExample ex;
  void add(const std::vector<int32_t>& ids, uint8_t loss) {
    ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
    ex.loss.insert(ex.loss.end(), ids.size(), loss);
  }
};

// The keys of object `o`, for messages.
std::string key_list(const json& o) {
  std::string s;
  for (auto it = o.begin(); it != o.end(); ++it) s += (s.empty() ? "" : ", ") + it.key();
  return s.empty() ? "none" : s;
}

// The integer array `o[key]` as ids; every entry an integer.
std::vector<int32_t> id_array(const json& o, const char* key, const std::string& path, int64_t line) {
  const json& a = o.at(key);
  if (!a.is_array()) line_error(path, line, "\"", key, "\" must be an array of integer token ids; got ", a.type_name());
  std::vector<int32_t> ids;
  ids.reserve(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const json& v = a[i];
    if (!v.is_number_integer())
      line_error(path, line, "\"", key, "\"[", i, "] must be an integer token id; got ", v.dump());
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id > INT32_MAX) line_error(path, line, "\"", key, "\"[", i, "] = ", id, " is not a token id (< 0)");
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

const std::string& string_field(const json& o, const char* key, const std::string& path, int64_t line,
                                const std::string& where) {
  const auto it = o.find(key);
  if (it == o.end()) line_error(path, line, where, "needs a \"", key, "\" string");
  if (!it->is_string()) line_error(path, line, where, "\"", key, "\" must be a string; got ", it->type_name());
  return it->get_ref<const std::string&>();
}

// One line's object as an example (before truncation and the id range check).
SftExample parse_example(const json& o, const Tokenizer* tok, const std::string& path, int64_t line) {
  auto only = [&](std::initializer_list<const char*> keys, const char* form) {
    const std::set<std::string> allowed(keys.begin(), keys.end());
    for (auto it = o.begin(); it != o.end(); ++it)
      if (!allowed.count(it.key()))
        line_error(path, line, "unexpected key \"", it.key(), "\" in a ", form, " line (keys: ", key_list(o),
                   "); expected ", kForms);
    for (const char* k : keys)
      if (!o.contains(k)) line_error(path, line, "a ", form, " line needs \"", k, "\"; expected ", kForms);
  };
  auto need_tokenizer = [&](const char* form) {
    if (!tok)
      line_error(path, line, "a ", form,
                 " line needs a text tokenizer, and this model has none (a task-tokenizer model): write the line "
                 "as {\"context_ids\": [...], \"answer_ids\": [...]}");
  };
  Builder b;
  if (o.contains("turns")) {
    only({"turns"}, "turns");
    need_tokenizer("turns");
    const json& turns = o.at("turns");
    if (!turns.is_array() || turns.empty())
      line_error(path, line, "\"turns\" must be a non-empty array of {\"role\", \"content\"} objects");
    bool assistant = false;
    for (size_t i = 0; i < turns.size(); ++i) {
      const json& turn = turns[i];
      const std::string where = "turns[" + std::to_string(i) + "]: ";
      if (!turn.is_object()) line_error(path, line, where, "must be an object {\"role\", \"content\"}");
      for (auto it = turn.begin(); it != turn.end(); ++it)
        if (it.key() != "role" && it.key() != "content")
          line_error(path, line, where, "unexpected key \"", it.key(), "\" (a turn has \"role\" and \"content\")");
      const std::string& role = string_field(turn, "role", path, line, where);
      const std::string& content = string_field(turn, "content", path, line, where);
      if (role == "assistant") {
        if (content.empty()) line_error(path, line, where, "empty answer: an assistant turn needs content");
        assistant = true;
        b.add(tok->encode("assistant: "), 0);
        b.add(tok->encode(content + "\n"), 1);
      } else if (role == "system" || role == "user") {
        b.add(tok->encode(role + ": " + content + "\n"), 0);
      } else {
        line_error(path, line, where, "unknown role \"", role, "\"; expected system, user or assistant");
      }
    }
    if (!assistant) line_error(path, line, "no assistant turn: nothing to learn (loss is on assistant turns)");
  } else if (o.contains("context_ids") || o.contains("answer_ids")) {
    only({"context_ids", "answer_ids"}, "context_ids/answer_ids");
    const std::vector<int32_t> c = id_array(o, "context_ids", path, line);
    const std::vector<int32_t> a = id_array(o, "answer_ids", path, line);
    if (c.empty())
      line_error(path, line, "empty context: \"context_ids\" needs >= 1 id (the answer is predicted from it)");
    if (a.empty()) line_error(path, line, "empty answer: \"answer_ids\" needs >= 1 id");
    b.add(c, 0);
    b.add(a, 1);
  } else if (o.contains("context") || o.contains("answer")) {
    only({"context", "answer"}, "context/answer");
    need_tokenizer("context/answer");
    const std::string& c = string_field(o, "context", path, line, "");
    const std::string& a = string_field(o, "answer", path, line, "");
    if (a.empty()) line_error(path, line, "empty answer: \"answer\" needs text");
    b.add(tok->encode(c), 0);
    b.add(tok->encode(a), 1);
  } else {
    line_error(path, line, "no known form (keys: ", key_list(o), "); expected ", kForms);
  }
  const auto first = std::find(b.ex.loss.begin(), b.ex.loss.end(), uint8_t{1});
  b.ex.context = first - b.ex.loss.begin();
  if (b.ex.context < 1) line_error(path, line, "empty context: the first answer token must follow >= 1 context token");
  return std::move(b.ex);
}

// splitmix64's finaliser: unrelated Philox keys for nearby seeds.
uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The permutation of [0, n) for one epoch: Fisher-Yates on Philox words keyed by the seed,
// counter (epoch, block).
std::vector<int64_t> epoch_permutation(uint64_t seed, uint64_t epoch, int64_t n) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t{0});
  const uint64_t key = mix64(seed ^ 0x5F75A11EF1E5ull);
  uint64_t block = 0;
  uint32_t words[4] = {};
  int used = 4;
  auto next = [&]() -> uint32_t {
    if (used == 4) {
      const Philox4x32 r = philox4x32_10(epoch, block++, key);
      for (int j = 0; j < 4; ++j) words[j] = r.v[j];
      used = 0;
    }
    return words[used++];
  };
  for (int64_t i = n; i > 1; --i) {
    const uint64_t w = (static_cast<uint64_t>(next()) << 32) | next();
    const int64_t j = static_cast<int64_t>((static_cast<unsigned __int128>(w) * static_cast<uint64_t>(i)) >> 64);
    std::swap(perm[static_cast<size_t>(i - 1)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

}  // namespace

std::vector<SftExample> read_sft_jsonl(const std::string& path, const Tokenizer* tokenizer, int64_t max_len,
                                       int64_t vocab) {
  AL_CHECK_CONFIG(max_len >= 2, "read_sft_jsonl ", path, ": max_len must be >= 2 (a context token and an answer ",
                  "token); got ", max_len);
  std::ifstream in(path, std::ios::binary);
  if (!in) detail::throw_error<IoError>("cannot open SFT data file ", path);
  const int64_t limit = vocab > 0 ? vocab : tokenizer ? tokenizer->vocab_size() : 0;
  std::vector<SftExample> out;
  std::string text;
  for (int64_t line = 1; std::getline(in, text); ++line) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;  // blank lines separate nothing
    json o;
    try {
      o = json::parse(text);
    } catch (const json::exception& e) {
      line_error(path, line, "not valid JSON (", e.what(), "); expected ", kForms);
    }
    if (!o.is_object()) line_error(path, line, "must be a JSON object, got ", o.type_name(), "; expected ", kForms);
    SftExample ex = parse_example(o, tokenizer, path, line);
    if (limit > 0)
      for (size_t i = 0; i < ex.ids.size(); ++i)
        if (ex.ids[i] >= limit)
          line_error(path, line, "token id ", ex.ids[i], " at position ", i, " is outside the vocabulary [0, ", limit,
                     ")");
    if (static_cast<int64_t>(ex.ids.size()) > max_len) {
      if (ex.context >= max_len)
        line_error(path, line, "the context is ", ex.context, " tokens, so cutting the example to max_len = ", max_len,
                   " leaves no answer token (shorten the context or raise the length)");
      ex.ids.resize(static_cast<size_t>(max_len));
      ex.loss.resize(static_cast<size_t>(max_len));
    }
    out.push_back(std::move(ex));
  }
  if (in.bad()) detail::throw_error<IoError>("error reading SFT data file ", path);
  if (out.empty()) detail::throw_error<IoError>(path, ": no examples (the file is empty); expected ", kForms);
  return out;
}

std::vector<SftBatch> make_sft_batches(const std::vector<SftExample>& examples, const std::vector<int64_t>& indices,
                                       int32_t pad_id) {
  AL_CHECK_CONFIG(pad_id >= 0, "make_sft_batches: pad_id must be a token id >= 0; got ", pad_id);
  // Groups in order of first appearance; rows within a group in the order given.
  std::vector<int64_t> contexts;
  std::map<int64_t, std::vector<int64_t>> groups;
  for (const int64_t i : indices) {
    AL_CHECK_CONFIG(i >= 0 && i < static_cast<int64_t>(examples.size()), "make_sft_batches: example index ", i,
                    " is outside [0, ", examples.size(), ")");
    const SftExample& ex = examples[static_cast<size_t>(i)];
    AL_ASSERT(ex.ids.size() == ex.loss.size() && ex.context >= 1 && ex.context < static_cast<int64_t>(ex.ids.size()),
              "make_sft_batches: example ", i, " is malformed (ids ", ex.ids.size(), ", loss ", ex.loss.size(),
              ", context ", ex.context, ")");
    auto [it, fresh] = groups.try_emplace(ex.context);
    if (fresh) contexts.push_back(ex.context);
    it->second.push_back(i);
  }
  std::vector<SftBatch> out;
  for (const int64_t context : contexts) {
    const std::vector<int64_t>& rows = groups[context];
    int64_t t_len = 0;
    for (const int64_t i : rows)
      t_len = std::max(t_len, static_cast<int64_t>(examples[static_cast<size_t>(i)].ids.size()));
    const int64_t b_n = static_cast<int64_t>(rows.size());
    SftBatch sb;
    sb.prefix = context;
    sb.batch.x = Tensor::full(Shape{b_n, t_len}, pad_id, DType::i32);
    sb.batch.y = Tensor::full(Shape{b_n, t_len}, kIgnoreTarget, DType::i32);
    sb.batch.mask = Tensor::zeros(Shape{b_n, t_len}, DType::f32);
    int32_t* x = sb.batch.x.data<int32_t>();
    int32_t* y = sb.batch.y.data<int32_t>();
    float* mask = sb.batch.mask.data<float>();
    for (int64_t r = 0; r < b_n; ++r) {
      const SftExample& ex = examples[static_cast<size_t>(rows[static_cast<size_t>(r)])];
      const int64_t n = static_cast<int64_t>(ex.ids.size());
      for (int64_t t = 0; t < n; ++t) x[r * t_len + t] = ex.ids[static_cast<size_t>(t)];
      for (int64_t t = 0; t + 1 < n; ++t)
        if (ex.loss[static_cast<size_t>(t + 1)]) {
          y[r * t_len + t] = ex.ids[static_cast<size_t>(t + 1)];
          mask[r * t_len + t] = 1.0f;
        }
    }
    out.push_back(std::move(sb));
  }
  return out;
}

std::vector<int64_t> sft_batch_indices(uint64_t seed, uint64_t index, int64_t rows, int64_t num_examples) {
  AL_CHECK_CONFIG(rows >= 1, "sft_batch_indices: rows (batch size) must be >= 1; got ", rows);
  AL_CHECK_CONFIG(num_examples >= 1, "sft_batch_indices: the dataset has no examples");
  // Position p of the stream of draws is example perm_{p / N}[p % N]: a batch that crosses an
  // epoch boundary takes the rest of one permutation and the start of the next.
  const uint64_t n = static_cast<uint64_t>(num_examples);
  const uint64_t first = index * static_cast<uint64_t>(rows);
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(rows));
  uint64_t epoch = first / n;
  std::vector<int64_t> perm = epoch_permutation(seed, epoch, num_examples);
  for (uint64_t p = first; p < first + static_cast<uint64_t>(rows); ++p) {
    if (p / n != epoch) {
      epoch = p / n;
      perm = epoch_permutation(seed, epoch, num_examples);
    }
    out.push_back(perm[static_cast<size_t>(p % n)]);
  }
  return out;
}

SftBatch sft_from_task(const SyntheticTask& task, TaskBatch batch) {
  AL_CHECK_CONFIG(task.is_token_task(), "data.task = ", task.name(),
                  ": fine-tuning needs a token task with a context and an answer (kv_retrieval, needle, fact_chain)");
  const int64_t b_n = batch.x.size(0), t_len = batch.x.size(1);
  const int64_t context = task.context_length(t_len);
  AL_CHECK_CONFIG(context >= 1 && context <= t_len, "data.task = ", task.name(),
                  " has no context / answer split, so it cannot be fine-tuned on (use kv_retrieval, needle or "
                  "fact_chain)");
  SftBatch out;
  out.prefix = context;
  Tensor y = batch.y.contiguous().clone();
  Tensor mask = Tensor::zeros(Shape{b_n, t_len}, DType::f32);
  int32_t* yp = y.data<int32_t>();
  float* mp = mask.data<float>();
  for (int64_t r = 0; r < b_n; ++r)
    for (int64_t t = 0; t < t_len; ++t) {
      int32_t& v = yp[r * t_len + t];
      if (t < context - 1) v = kIgnoreTarget;  // in-context demos: part of the context, not the answer
      mp[r * t_len + t] = v != kIgnoreTarget ? 1.0f : 0.0f;
    }
  out.batch.x = std::move(batch.x);
  out.batch.y = std::move(y);
  out.batch.mask = std::move(mask);
  return out;
}

}  // namespace attnlab
