#include "data/bpe.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data_test_util.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

const char* kSample =
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters.\n\n\"My dear Mr. Bennet,\" said his lady to him "
    "one day, \"have you heard that Netherfield Park is let at last?\"\n\nMr. Bennet replied that he had not. "
    "\"But it is,\" returned she; \"for Mrs. Long has just been here, and she told me all about it.\" They'll "
    "say we've 1811 reasons, aaaa aaaaaaa ab ab abab.\n";

std::string sample_text(int copies) {
  std::string s;
  for (int i = 0; i < copies; ++i) s += kSample;
  return s;
}

std::vector<std::string> random_strings(uint64_t seed, int count, int max_len) {
  Generator gen(seed);
  std::vector<std::string> out;
  for (int k = 0; k < count; ++k) {
    const int len = randint(Shape{1}, max_len + 1, gen).item<int>();
    std::vector<int32_t> bytes = randint(Shape{std::max(len, 1)}, 256, gen).to_vector<int32_t>();
    std::string s;
    for (int i = 0; i < len; ++i) {
      // Mostly any byte; sometimes runs of spaces, letters and quotes to hit the pre-tokenizer's cases.
      const int32_t b = bytes[static_cast<size_t>(i)];
      s.push_back(b < 40 ? " \n\t'aeS0.\0"[b % 10] : static_cast<char>(b));
    }
    out.push_back(s);
  }
  out.push_back("");
  out.push_back(std::string(1, '\0'));
  out.push_back(std::string(5000, ' '));
  out.push_back(std::string(5000, 'a'));
  out.push_back("\xff\xfe\x80 \xc3\x28 \xe2\x82 \xf0\x9f\x98\x80\x00\x01'll 're's");
  return out;
}

// Reference trainer: recounts every pair over all chunks before each merge (same tie rule:
// highest count, then smallest (left, right); stops below count 2).
std::vector<std::pair<int32_t, int32_t>> naive_train(const std::string& text, int64_t vocab) {
  std::map<std::string, int64_t> counts;
  for (std::string_view c : bpe_pretokenize(text)) ++counts[std::string(c)];
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [c, n] : counts) {
    std::vector<int32_t> w;
    for (unsigned char ch : c) w.push_back(ch);
    words.emplace_back(w, n);
  }
  std::vector<std::pair<int32_t, int32_t>> merges;
  while (static_cast<int64_t>(merges.size()) < vocab - 256) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pc;
    for (const auto& [w, n] : words)
      for (size_t i = 0; i + 1 < w.size(); ++i) pc[{w[i], w[i + 1]}] += n;
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_n = 0;
    for (const auto& [p, n] : pc)
      if (n > best_n) best = p, best_n = n;  // std::map order: the smallest pair wins ties
    if (best_n < 2) break;
    const int32_t id = static_cast<int32_t>(256 + merges.size());
    merges.push_back(best);
    for (auto& [w, n] : words) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < w.size();) {
        if (i + 1 < w.size() && w[i] == best.first && w[i + 1] == best.second) {
          out.push_back(id);
          i += 2;
        } else {
          out.push_back(w[i++]);
        }
      }
      w = out;
    }
  }
  return merges;
}

// Reference encoder: GPT-2's loop (lowest-rank pair, all occurrences left to right, repeat).
std::vector<int32_t> naive_encode(const BpeTokenizer& tok, std::string_view text) {
  std::map<std::pair<int32_t, int32_t>, int32_t> rank;
  for (size_t k = 0; k < tok.merges().size(); ++k) rank[tok.merges()[k]] = static_cast<int32_t>(k);
  std::vector<int32_t> out;
  for (std::string_view c : bpe_pretokenize(text)) {
    std::vector<int32_t> w;
    for (unsigned char ch : c) w.push_back(ch);
    while (w.size() > 1) {
      int32_t best = -1;
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        const auto it = rank.find({w[i], w[i + 1]});
        if (it != rank.end() && (best < 0 || it->second < best)) best = it->second;
      }
      if (best < 0) break;
      const auto [a, b] = tok.merges()[static_cast<size_t>(best)];
      std::vector<int32_t> next;
      for (size_t i = 0; i < w.size();) {
        if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
          next.push_back(256 + best);
          i += 2;
        } else {
          next.push_back(w[i++]);
        }
      }
      w = next;
    }
    out.insert(out.end(), w.begin(), w.end());
  }
  return out;
}

TEST(BpePretokenize, SplitsLikeGpt2) {
  const auto chunks = bpe_pretokenize("Hello world's  end\n\n  x 123 !!don't\tyou've");
  const std::vector<std::string_view> want{"Hello", " world", "'s",  " ",  " end", "\n\n ", " x",
                                           " 123",  " !!",    "don", "'t", "\t",   "you",   "'ve"};
  EXPECT_EQ(chunks, want);
  EXPECT_EQ(bpe_pretokenize("a\n\nb"), (std::vector<std::string_view>{"a", "\n", "\n", "b"}));
  EXPECT_EQ(bpe_pretokenize("end   "), (std::vector<std::string_view>{"end", "   "}));
  EXPECT_EQ(bpe_pretokenize(" 'sx"), (std::vector<std::string_view>{" '", "sx"}));
  EXPECT_EQ(bpe_pretokenize("caf\xc3\xa9s"), (std::vector<std::string_view>{"caf\xc3\xa9s"}));
  EXPECT_TRUE(bpe_pretokenize("").empty());
  for (const std::string& s : random_strings(3, 200, 300)) {
    std::string joined;
    for (std::string_view c : bpe_pretokenize(s)) {
      EXPECT_FALSE(c.empty());
      joined += c;
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(Bpe, TrainsOnSmallTextAndCompresses) {
  const std::string text = sample_text(4);
  const BpeTokenizer tok = BpeTokenizer::train(text, 400);
  EXPECT_EQ(tok.kind(), "bpe");
  EXPECT_GT(tok.vocab_size(), 300);
  EXPECT_LE(tok.vocab_size(), 400);
  EXPECT_EQ(tok.vocab_size(), 256 + static_cast<int64_t>(tok.merges().size()));
  const std::vector<int32_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_LT(ids.size() * 2, text.size());
  for (int32_t id : ids) EXPECT_LT(id, tok.vocab_size());
  EXPECT_EQ(tok.token_bytes(static_cast<int32_t>('a')), "a");
  const auto [a, b] = tok.merges()[0];
  EXPECT_EQ(tok.token_bytes(256), tok.token_bytes(a) + tok.token_bytes(b));
  // vocab 256: no merges, bytes.
  const BpeTokenizer bytes = BpeTokenizer::train(text, 256);
  EXPECT_EQ(bytes.vocab_size(), 256);
  EXPECT_EQ(bytes.encode("abc"), (std::vector<int32_t>{97, 98, 99}));
  EXPECT_THROW(BpeTokenizer::train(text, 255), ConfigError);
  EXPECT_THROW(tok.decode({1, static_cast<int32_t>(tok.vocab_size())}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
}

TEST(Bpe, IncrementalTrainingMatchesFullRecount) {
  std::string text = sample_text(3);
  for (const std::string& s : random_strings(5, 40, 200)) text += s;
  for (int64_t vocab : {260, 330, 600}) {
    const BpeTokenizer tok = BpeTokenizer::train(text, vocab);
    EXPECT_EQ(tok.merges(), naive_train(text, vocab)) << "vocab " << vocab;
  }
}

TEST(Bpe, EncodingMatchesGpt2MergeLoop) {
  const std::string text = sample_text(3);
  const BpeTokenizer tok = BpeTokenizer::train(text, 420);
  EXPECT_EQ(tok.encode(text), naive_encode(tok, text));
  for (const std::string& s : random_strings(9, 100, 400)) EXPECT_EQ(tok.encode(s), naive_encode(tok, s));
}

TEST(Bpe, RoundTripsEveryByteString) {
  const BpeTokenizer tok = BpeTokenizer::train(sample_text(4) + std::string("\0\0\xff\xff\xfe", 5), 500);
  for (const std::string& s : random_strings(7, 300, 3000)) {
    const std::vector<int32_t> ids = tok.encode(s);
    ASSERT_EQ(tok.decode(ids), s);
  }
  // Trained on random bytes too (merges among non-ASCII bytes and NULs).
  std::string noise;
  for (const std::string& s : random_strings(8, 100, 500)) noise += s;
  const BpeTokenizer rnd = BpeTokenizer::train(noise, 700);
  for (const std::string& s : random_strings(10, 100, 1000)) ASSERT_EQ(rnd.decode(rnd.encode(s)), s);
}

TEST(Bpe, TrainingIsDeterministic) {
  const std::string text = sample_text(5);
  const BpeTokenizer a = BpeTokenizer::train(text, 450);
  const BpeTokenizer b = BpeTokenizer::train(text, 450);
  EXPECT_EQ(a.merges(), b.merges());
  test::TempDir dir;
  a.save(dir.file("a.bpe"));
  b.save(dir.file("b.bpe"));
  EXPECT_EQ(test::read_bytes(dir.file("a.bpe")), test::read_bytes(dir.file("b.bpe")));
}

TEST(Bpe, SaveLoadRoundTrip) {
  const std::string text = sample_text(4);
  const BpeTokenizer tok = BpeTokenizer::train(text, 380);
  test::TempDir dir;
  const std::string path = dir.file("tok.bpe");
  tok.save(path);
  const BpeTokenizer back = BpeTokenizer::load(path);
  EXPECT_EQ(back.merges(), tok.merges());
  EXPECT_EQ(back.vocab_size(), tok.vocab_size());
  EXPECT_EQ(back.encode(text), tok.encode(text));
  // Overwriting is atomic and leaves no temporary file behind.
  back.save(path);
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 1);
  // from_merges validates.
  EXPECT_EQ(BpeTokenizer::from_merges(tok.merges()).encode(text), tok.encode(text));
  EXPECT_THROW(BpeTokenizer::from_merges({{1, 256}}), ConfigError);
  EXPECT_THROW(BpeTokenizer::from_merges({{1, 2}, {1, 2}}), ConfigError);
}

TEST(Bpe, CorruptFilesAreRejectedWithTheLine) {
  const BpeTokenizer tok = BpeTokenizer::train(sample_text(4), 300);
  test::TempDir dir;
  const std::string path = dir.file("tok.bpe");
  tok.save(path);
  const std::string good = test::read_bytes(path);
  ASSERT_EQ(good.substr(0, 14), "attnlab-bpe 1\n");
  const size_t merges_start = good.find('\n', good.find("merges ")) + 1;
  const size_t sha_start = good.find("sha256 ");
  const auto rejected = [&](const std::string& bytes, const std::vector<std::string>& fragments) {
    SCOPED_TRACE("expecting: " + fragments[0] + (fragments.size() > 1 ? ", " + fragments[1] : std::string()));
    test::write_bytes(path, bytes);
    std::vector<std::string> f = fragments;
    f.push_back("tok.bpe");
    test::expect_io_error([&] { BpeTokenizer::load(path); }, f);
  };
  const auto replace_line = [&](int line_no, const std::string& with) {
    size_t start = 0;
    for (int i = 1; i < line_no; ++i) start = good.find('\n', start) + 1;
    return good.substr(0, start) + with + good.substr(good.find('\n', start));
  };
  rejected("", {"line 1", "ends early"});
  rejected("GPT2 merges\n" + good.substr(14), {"line 1", "magic"});
  rejected("attnlab-bpe 9\n" + good.substr(14), {"line 1", "unsupported version"});
  rejected(replace_line(2, "pretokenizer whitespace"), {"line 2", "pretokenizer"});
  rejected(replace_line(3, "vocab_size 12x"), {"line 3", "vocab_size <integer>"});
  rejected(replace_line(3, "vocab_size 999"), {"line 3", "256 + merges"});
  rejected(replace_line(4, "merges -1"), {"line 4"});
  rejected(replace_line(5, "70000 3"), {"line 5", "unknown", "70000"});
  rejected(replace_line(5, "256 1"), {"line 5", "unknown", "256"});  // merge 1 can only use bytes
  rejected(replace_line(6, "1 257"), {"line 6", "unknown", "257"});  // merge 2 makes 257
  rejected(replace_line(5, "garbage here"), {"line 5", "two token ids"});
  rejected(replace_line(5, "12"), {"line 5", "two token ids"});
  rejected(replace_line(6, good.substr(merges_start, good.find('\n', merges_start) - merges_start)),
           {"line 6", "repeats merge 1"});
  // Fewer merge lines than declared; more; a file cut mid-line; a changed but valid id.
  const size_t last_merge = good.rfind('\n', sha_start - 2) + 1;
  rejected(good.substr(0, last_merge) + good.substr(sha_start), {"only", "merges"});
  rejected(good.substr(0, sha_start) + "1 2\n" + good.substr(sha_start), {"sha256"});
  rejected(good.substr(0, sha_start - 3), {"truncated"});
  rejected(good.substr(0, good.size() - 1), {"truncated"});
  std::string flipped = good;
  flipped[merges_start] = flipped[merges_start] == '1' ? '2' : '1';
  rejected(flipped, {"checksum mismatch"});
  rejected(good + "extra\n", {"unexpected bytes"});
  test::expect_io_error([&] { BpeTokenizer::load(dir.file("missing.bpe")); }, {"missing.bpe"});
}

// Shared across the Austen tests: one load and one training run.
struct AustenBpe {
  std::string text;
  BpeTokenizer tok = BpeTokenizer::from_merges({});
  double train_seconds = 0;
};
const AustenBpe& austen_bpe() {
  static const AustenBpe* cached = [] {
    auto* a = new AustenBpe;
    const std::string dir = test::repo_corpus_dir();
    if (!std::filesystem::exists(austen_database_base(dir) + ".rdb")) return a;
    a->text = load_corpus("austen", dir);
    const auto t0 = std::chrono::steady_clock::now();
    a->tok = BpeTokenizer::train(a->text, 2048);
    a->train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return a;
  }();
  return *cached;
}

TEST(BpeAusten, TrainsTo2048AndRoundTrips) {
  const AustenBpe& a = austen_bpe();
  ASSERT_FALSE(a.text.empty()) << "the Austen corpus is missing under " << test::repo_corpus_dir()
                               << ": run scripts/fetch-corpus.sh (scripts/install-deps.sh runs it)";
  EXPECT_EQ(a.tok.vocab_size(), 2048);
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = a.tok.encode(a.text);
  const double encode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(a.tok.decode(ids), a.text);
  const double bytes_per_token = static_cast<double>(a.text.size()) / static_cast<double>(ids.size());
  std::printf(
      "[ austen  ] BPE vocab 2048: trained in %.2f s, encoded %zu bytes into %zu tokens (%.3f bytes/token) "
      "in %.2f s\n",
      a.train_seconds, a.text.size(), ids.size(), bytes_per_token, encode_seconds);
  EXPECT_GT(bytes_per_token, 3.0);
  for (const std::string& s : random_strings(12, 100, 2000)) ASSERT_EQ(a.tok.decode(a.tok.encode(s)), s);
  EXPECT_EQ(a.tok.decode(a.tok.encode("It is a truth universally acknowledged")),
            "It is a truth universally acknowledged");
  EXPECT_LE(a.tok.encode(" the").size(), 1u);

  // The incremental trainer agrees with a full recount on the real text too, and a smaller
  // vocabulary is a prefix of a larger one.
  const BpeTokenizer small = BpeTokenizer::train(a.text, 300);
  EXPECT_EQ(small.merges(), naive_train(a.text, 300));
  EXPECT_TRUE(std::equal(small.merges().begin(), small.merges().end(), a.tok.merges().begin()));

  test::TempDir dir;
  a.tok.save(dir.file("austen.bpe"));
  const BpeTokenizer back = BpeTokenizer::load(dir.file("austen.bpe"));
  EXPECT_EQ(back.merges(), a.tok.merges());
  const std::string_view prefix = std::string_view(a.text).substr(0, 100000);
  EXPECT_EQ(back.encode(prefix), a.tok.encode(prefix));
}

}  // namespace
}  // namespace attnlab
