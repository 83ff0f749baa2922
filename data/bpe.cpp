#include "data/bpe.h"

#include <algorithm>
#include <charconv>
#include <queue>

#include "data/sha256.h"
#include "lib/error.h"
#include "lib/file_io.h"

namespace attnlab {

namespace {

constexpr std::string_view kMagic = "attnlab-bpe 1";
constexpr std::string_view kPretokenizer = "gpt2-bytes";
// Far above any vocabulary a model here uses; keeps ids and counts comfortably in range.
constexpr int64_t kMaxVocab = int64_t{1} << 24;

enum CharClass : uint8_t { kSpace, kLetter, kDigit, kOther };

struct ClassTable {
  CharClass c[256];
  constexpr ClassTable() : c{} {
    for (int i = 0; i < 256; ++i) {
      if (i == ' ' || i == '\t' || i == '\n' || i == '\v' || i == '\f' || i == '\r')
        c[i] = kSpace;
      else if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z') || i >= 0x80)
        c[i] = kLetter;
      else if (i >= '0' && i <= '9')
        c[i] = kDigit;
      else
        c[i] = kOther;
    }
  }
};
constexpr ClassTable kClasses;

inline CharClass cls(char ch) { return kClasses.c[static_cast<unsigned char>(ch)]; }

// Calls f(chunk) for each pre-tokenizer chunk of `t`, in order (see bpe.h for the rules).
template <typename F>
void for_each_chunk(std::string_view t, F&& f) {
  const size_t n = t.size();
  size_t i = 0;
  while (i < n) {
    const char c = t[i];
    size_t e;
    if (c == '\'' && i + 1 < n) {  // contractions: 's 't 're 've 'm 'll 'd
      const char d = t[i + 1];
      const char d2 = i + 2 < n ? t[i + 2] : '\0';
      if (d == 's' || d == 't' || d == 'm' || d == 'd') {
        f(t.substr(i, 2));
        i += 2;
        continue;
      }
      if ((d == 'r' && d2 == 'e') || (d == 'v' && d2 == 'e') || (d == 'l' && d2 == 'l')) {
        f(t.substr(i, 3));
        i += 3;
        continue;
      }
    }
    size_t j = i;
    if (c == ' ' && i + 1 < n && cls(t[i + 1]) != kSpace) j = i + 1;  // optional leading space
    const CharClass k = cls(t[j]);
    if (k != kSpace) {
      e = j + 1;
      while (e < n && cls(t[e]) == k) ++e;
    } else {
      e = i + 1;
      while (e < n && cls(t[e]) == kSpace) ++e;
      // A run followed by a non-space leaves its last character to the next chunk (which takes
      // it as its leading space when it is ' ', else it stands alone).
      if (e < n && e - i >= 2) e -= 1;
    }
    f(t.substr(i, e - i));
    i = e;
  }
}

inline uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

struct PairInfo {
  int64_t count = 0;
  std::vector<int32_t> words;  // words that held the pair at some point (may be stale or repeated)
};

struct HeapEntry {
  int64_t count;
  uint64_t key;
  // priority_queue pops the largest: higher count first, then the smaller pair.
  bool operator<(const HeapEntry& o) const { return count != o.count ? count < o.count : key > o.key; }
};

std::string printable(std::string_view s) {
  std::string out;
  for (unsigned char ch : s.substr(0, 60)) {
    if (ch >= 0x20 && ch < 0x7F) {
      out.push_back(static_cast<char>(ch));
    } else {
      static const char* kDigits = "0123456789abcdef";
      out += "\\x";
      out.push_back(kDigits[ch >> 4]);
      out.push_back(kDigits[ch & 15]);
    }
  }
  if (s.size() > 60) out += "...";
  return out;
}

bool parse_int(std::string_view s, int64_t& out) {
  if (s.empty() || s[0] == '+' || s[0] == '-') return false;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

}  // namespace

std::vector<std::string_view> bpe_pretokenize(std::string_view text) {
  std::vector<std::string_view> chunks;
  for_each_chunk(text, [&](std::string_view c) { chunks.push_back(c); });
  return chunks;
}

void BpeTokenizer::build_tables() {
  vocab_.clear();
  rank_.clear();
  vocab_.reserve(256 + merges_.size());
  for (int i = 0; i < 256; ++i) vocab_.emplace_back(1, static_cast<char>(i));
  rank_.reserve(merges_.size() * 2);
  for (size_t k = 0; k < merges_.size(); ++k) {
    const auto [a, b] = merges_[k];
    vocab_.push_back(vocab_[static_cast<size_t>(a)] + vocab_[static_cast<size_t>(b)]);
    rank_.emplace(pair_key(a, b), static_cast<int32_t>(k));
  }
}

BpeTokenizer BpeTokenizer::from_merges(std::vector<std::pair<int32_t, int32_t>> merges) {
  AL_CHECK_CONFIG(static_cast<int64_t>(merges.size()) <= kMaxVocab - 256, "BpeTokenizer: ", merges.size(),
                  " merges is more than the ", kMaxVocab - 256, " supported");
  std::unordered_map<uint64_t, size_t> seen;
  for (size_t k = 0; k < merges.size(); ++k) {
    const auto [a, b] = merges[k];
    const int64_t limit = 256 + static_cast<int64_t>(k);
    AL_CHECK_CONFIG(a >= 0 && a < limit && b >= 0 && b < limit, "BpeTokenizer: merge ", k, " (", a, ", ", b,
                    ") must combine ids in [0, ", limit, ")");
    const auto [it, fresh] = seen.emplace(pair_key(a, b), k);
    AL_CHECK_CONFIG(fresh, "BpeTokenizer: merge ", k, " (", a, ", ", b, ") repeats merge ", it->second);
  }
  BpeTokenizer t;
  t.merges_ = std::move(merges);
  t.build_tables();
  return t;
}

BpeTokenizer BpeTokenizer::train(std::string_view text, int64_t vocab_size) {
  AL_CHECK_CONFIG(vocab_size >= 256 && vocab_size <= kMaxVocab, "BpeTokenizer::train: vocab_size must be in [256, ",
                  kMaxVocab, "]; got ", vocab_size);
  // Unique chunks with their frequencies.
  std::unordered_map<std::string_view, int64_t> chunk_count;
  for_each_chunk(text, [&](std::string_view c) { ++chunk_count[c]; });
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> freq;
  words.reserve(chunk_count.size());
  freq.reserve(chunk_count.size());
  for (const auto& [chunk, count] : chunk_count) {
    if (chunk.size() < 2) continue;  // a single byte holds no pair
    std::vector<int32_t> w(chunk.size());
    for (size_t i = 0; i < chunk.size(); ++i) w[i] = static_cast<unsigned char>(chunk[i]);
    words.push_back(std::move(w));
    freq.push_back(count);
  }

  std::unordered_map<uint64_t, PairInfo> pairs;
  pairs.reserve(words.size() * 4);
  for (size_t w = 0; w < words.size(); ++w) {
    const std::vector<int32_t>& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      PairInfo& p = pairs[pair_key(s[i], s[i + 1])];
      p.count += freq[w];
      if (p.words.empty() || p.words.back() != static_cast<int32_t>(w)) p.words.push_back(static_cast<int32_t>(w));
    }
  }
  std::priority_queue<HeapEntry> heap;
  for (const auto& [key, p] : pairs) heap.push({p.count, key});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<uint32_t> stamp(words.size(), 0);
  std::vector<uint64_t> changed;
  std::vector<int32_t> out;
  const int64_t target = vocab_size - 256;
  while (static_cast<int64_t>(merges.size()) < target) {
    // The most frequent pair (stale heap entries are skipped).
    HeapEntry best{0, 0};
    while (!heap.empty()) {
      const HeapEntry top = heap.top();
      heap.pop();
      const auto it = pairs.find(top.key);
      if (it != pairs.end() && it->second.count == top.count && top.count > 0) {
        best = top;
        break;
      }
    }
    if (best.count < 2) break;
    const auto a = static_cast<int32_t>(best.key >> 32);
    const auto b = static_cast<int32_t>(best.key & 0xFFFFFFFFu);
    const auto c = static_cast<int32_t>(256 + merges.size());
    merges.emplace_back(a, b);
    const std::vector<int32_t> holders = std::move(pairs[best.key].words);
    pairs.erase(best.key);
    const uint32_t this_stamp = static_cast<uint32_t>(merges.size());
    changed.clear();
    auto add = [&](int32_t x, int32_t y, int64_t delta, int32_t w) {
      const uint64_t key = pair_key(x, y);
      if (key == best.key) return;  // the merged pair is gone everywhere after this step
      PairInfo& p = pairs[key];
      p.count += delta;
      if (delta > 0 && (p.words.empty() || p.words.back() != w)) p.words.push_back(w);
      changed.push_back(key);
    };
    for (const int32_t w : holders) {
      if (stamp[static_cast<size_t>(w)] == this_stamp) continue;
      stamp[static_cast<size_t>(w)] = this_stamp;
      const std::vector<int32_t>& s = words[static_cast<size_t>(w)];
      const int64_t f = freq[static_cast<size_t>(w)];
      const size_t n = s.size();
      out.clear();
      bool any = false;
      for (size_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) {
          any = true;
          if (!out.empty()) {  // left neighbour: (s[i-1], a) becomes (out.back(), c)
            add(s[i - 1], a, -f, w);
            add(out.back(), c, f, w);
          }
          // Right neighbour, unless it starts the next merge (which then handles the pair).
          if (i + 2 < n && !(i + 3 < n && s[i + 2] == a && s[i + 3] == b)) {
            add(b, s[i + 2], -f, w);
            add(c, s[i + 2], f, w);
          }
          out.push_back(c);
          i += 2;
        } else {
          out.push_back(s[i]);
          ++i;
        }
      }
      if (any) words[static_cast<size_t>(w)] = out;
    }
    std::sort(changed.begin(), changed.end());
    changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
    for (const uint64_t key : changed) {
      const auto it = pairs.find(key);
      if (it == pairs.end()) continue;
      if (it->second.count <= 0) {
        pairs.erase(it);
        continue;
      }
      heap.push({it->second.count, key});
    }
  }
  BpeTokenizer t;
  t.merges_ = std::move(merges);
  t.build_tables();
  return t;
}

const std::string& BpeTokenizer::token_bytes(int32_t id) const {
  AL_CHECK(id >= 0 && static_cast<size_t>(id) < vocab_.size(), "BpeTokenizer: id ", id,
           " is outside the vocabulary [0, ", vocab_.size(), ")");
  return vocab_[static_cast<size_t>(id)];
}

void BpeTokenizer::encode_chunk(std::string_view chunk, std::vector<int32_t>& out) const {
  const auto n = static_cast<int32_t>(chunk.size());
  if (n == 1 || rank_.empty()) {
    for (char ch : chunk) out.push_back(static_cast<unsigned char>(ch));
    return;
  }
  // Lowest-rank pair first, leftmost first among equal ranks: the same result as GPT-2's loop
  // (merging a pair only creates pairs with the new, higher-ranked token), in O(n log n).
  std::vector<int32_t> sym(static_cast<size_t>(n)), prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    sym[static_cast<size_t>(i)] = static_cast<unsigned char>(chunk[static_cast<size_t>(i)]);
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  auto rank_of = [&](int32_t x, int32_t y) {
    const auto it = rank_.find(pair_key(x, y));
    return it == rank_.end() ? -1 : it->second;
  };
  using Cand = std::pair<int32_t, int32_t>;  // (rank, position)
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  for (int32_t i = 0; i + 1 < n; ++i) {
    const int32_t r = rank_of(sym[static_cast<size_t>(i)], sym[static_cast<size_t>(i + 1)]);
    if (r >= 0) heap.emplace(r, i);
  }
  while (!heap.empty()) {
    const auto [r, i] = heap.top();
    heap.pop();
    const auto ui = static_cast<size_t>(i);
    if (sym[ui] < 0) continue;
    const int32_t j = next[ui];
    if (j < 0 || rank_of(sym[ui], sym[static_cast<size_t>(j)]) != r) continue;
    sym[ui] = 256 + r;
    sym[static_cast<size_t>(j)] = -1;
    next[ui] = next[static_cast<size_t>(j)];
    if (next[ui] >= 0) prev[static_cast<size_t>(next[ui])] = i;
    if (prev[ui] >= 0) {
      const int32_t rl = rank_of(sym[static_cast<size_t>(prev[ui])], sym[ui]);
      if (rl >= 0) heap.emplace(rl, prev[ui]);
    }
    if (next[ui] >= 0) {
      const int32_t rr = rank_of(sym[ui], sym[static_cast<size_t>(next[ui])]);
      if (rr >= 0) heap.emplace(rr, i);
    }
  }
  for (int32_t i = 0; i >= 0; i = next[static_cast<size_t>(i)]) out.push_back(sym[static_cast<size_t>(i)]);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  // Chunks repeat a lot in prose: encode each distinct one once per call.
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;  // chunk -> span in `out`
  for_each_chunk(text, [&](std::string_view chunk) {
    if (chunk.size() == 1) {
      out.push_back(static_cast<unsigned char>(chunk[0]));
      return;
    }
    const auto it = cache.find(chunk);
    if (it != cache.end()) {
      const auto [start, len] = it->second;
      for (size_t k = 0; k < len; ++k) out.push_back(out[start + k]);
      return;
    }
    const size_t start = out.size();
    encode_chunk(chunk, out);
    if (chunk.size() <= 256) cache.emplace(chunk, std::make_pair(start, out.size() - start));
  });
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    AL_CHECK(id >= 0 && static_cast<size_t>(id) < vocab_.size(), "BpeTokenizer::decode: id ", id, " at position ", i,
             " is outside the vocabulary [0, ", vocab_.size(), ")");
    out += vocab_[static_cast<size_t>(id)];
  }
  return out;
}

void BpeTokenizer::save(const std::string& path) const {
  std::string body;
  body.reserve(32 * merges_.size() + 128);
  body += kMagic;
  body += "\npretokenizer ";
  body += kPretokenizer;
  body += "\nvocab_size " + std::to_string(vocab_.size()) + "\nmerges " + std::to_string(merges_.size()) + "\n";
  for (const auto& [a, b] : merges_) body += std::to_string(a) + " " + std::to_string(b) + "\n";
  body += "sha256 " + sha256_hex(body) + "\n";
  write_file_atomic(path, body);
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  const std::string bytes = read_file(path);
  const std::string_view all(bytes);
  size_t pos = 0;
  int64_t line_no = 0;
  size_t line_start = 0;
  // The next line without its "\n"; a missing final newline means the file was cut short.
  auto next_line = [&](const char* expected) -> std::string_view {
    ++line_no;
    line_start = pos;
    AL_CHECK_IO(pos < all.size(), "BPE tokenizer file '", path, "' line ", line_no, ": file ends early; expected ",
                expected);
    const size_t nl = all.find('\n', pos);
    AL_CHECK_IO(nl != std::string_view::npos, "BPE tokenizer file '", path, "' line ", line_no,
                ": truncated (no newline at the end of '", printable(all.substr(pos)), "'); expected ", expected);
    const std::string_view line = all.substr(pos, nl - pos);
    pos = nl + 1;
    return line;
  };
  auto fail = [&](std::string_view line, const auto&... what) {
    detail::throw_error<IoError>("BPE tokenizer file '", path, "' line ", line_no, ": ", what..., "; got '",
                                 printable(line), "'");
  };
  auto keyed_int = [&](std::string_view key) -> int64_t {
    const std::string expected = detail::concat("'", key, " <integer>'");
    const std::string_view line = next_line(expected.c_str());
    int64_t v = 0;
    if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ' ' ||
        !parse_int(line.substr(key.size() + 1), v))
      fail(line, "expected ", expected);
    return v;
  };

  std::string_view line = next_line("the magic line 'attnlab-bpe 1'");
  if (line != kMagic) {
    if (line.substr(0, 12) == "attnlab-bpe ") fail(line, "unsupported version (this build reads '", kMagic, "')");
    fail(line, "not an attnlab BPE tokenizer file (expected the magic line '", kMagic, "')");
  }
  line = next_line("'pretokenizer gpt2-bytes'");
  if (line != "pretokenizer " + std::string(kPretokenizer))
    fail(line, "expected 'pretokenizer ", kPretokenizer, "' (the only pre-tokenizer this build knows)");
  const int64_t vocab = keyed_int("vocab_size");
  const int64_t count = keyed_int("merges");
  if (count > kMaxVocab - 256)
    fail(all.substr(line_start, pos - line_start - 1), "more merges than the ", kMaxVocab - 256, " supported");
  if (vocab != 256 + count) {
    --line_no;
    fail("vocab_size " + std::to_string(vocab), "vocab_size must be 256 + merges = ", 256 + count);
  }
  std::vector<std::pair<int32_t, int32_t>> merges;
  merges.reserve(static_cast<size_t>(std::min<int64_t>(count, static_cast<int64_t>(all.size() / 4 + 1))));
  std::unordered_map<uint64_t, int64_t> seen;
  for (int64_t k = 0; k < count; ++k) {
    const std::string expected = "merge " + std::to_string(k + 1) + " of " + std::to_string(count) + " ('<id> <id>')";
    line = next_line(expected.c_str());
    const size_t sp = line.find(' ');
    int64_t a = 0, b = 0;
    if (sp == std::string_view::npos || !parse_int(line.substr(0, sp), a) || !parse_int(line.substr(sp + 1), b)) {
      if (line.substr(0, 7) == "sha256 ") fail(line, "only ", k, " merges; the header says ", count);
      fail(line, "expected two token ids '<left> <right>' (", expected, ")");
    }
    const int64_t limit = 256 + k;
    if (a >= limit || b >= limit)
      fail(line, "merge ", k + 1, " refers to id ", std::max(a, b), ", unknown at this point (ids so far are < ", limit,
           ")");
    const auto [it, fresh] = seen.emplace(pair_key(static_cast<int32_t>(a), static_cast<int32_t>(b)), k);
    if (!fresh) fail(line, "merge ", k + 1, " repeats merge ", it->second + 1);
    merges.emplace_back(static_cast<int32_t>(a), static_cast<int32_t>(b));
  }
  const size_t body_end = pos;
  line = next_line("'sha256 <hex>'");
  if (line.substr(0, 7) != "sha256 ")
    fail(line, "expected 'sha256 <hex>' after the ", count, " merges the header declares (more merges than declared?)");
  const std::string digest = sha256_hex(all.substr(0, body_end));
  if (line.substr(7) != digest) fail(line, "checksum mismatch: the file's contents hash to ", digest, " (corrupted)");
  AL_CHECK_IO(pos == all.size(), "BPE tokenizer file '", path, "': ", all.size() - pos,
              " unexpected bytes after the sha256 line (line ", line_no + 1, ")");
  BpeTokenizer t;
  t.merges_ = std::move(merges);
  t.build_tables();
  return t;
}

}  // namespace attnlab
