// fact_chain: a BABILong-like fact-chaining task (residuals spec Part 4, bAbI qa2 "two supporting
// facts"). A short story of facts about entities moving between locations and taking and
// dropping objects hides among filler sentences; the question "where O ?" asks where an object is
// at the end: the location of the entity holding it after that entity's last move, or, if it was
// dropped, where its last holder was when dropping it. The answer always needs two facts (the
// take or drop, and the holder's move before or after it). Growing seq_len with the other
// parameters fixed only adds filler sentences: the same facts in the same order, spread further
// apart, so accuracy against seq_len measures how attention chains facts across distance.
//
// Layout (E = data.entities, L = data.locations >= 2, O = data.objects, S = data.facts >= 2,
// W = data.vocab filler words):
//   ids      entities [0, E), locations [E, E + L), objects [E + L, E + L + O), then BOS, WENT,
//            TOOK, DROPPED, DOT, Q, A (= E + L + O + 0..6), filler words from E + L + O + 7;
//            vocab_size() = E + L + O + 7 + W
//   facts    "X WENT L DOT", "X TOOK O DOT", "X DROPPED O DOT" (4 tokens each), drawn by
//            simulating a world: each step is WENT (1/2: an entity to a random location other
//            than its current one; the entity is, when anyone holds an object, with probability
//            1/2 a random holder, else a random entity), TOOK (7/20: a random entity whose location is known takes
//            a random free object that is either unplaced or lies where the entity is) or DROPPED
//            (3/20: a random held object is dropped where its holder is); a step that cannot
//            happen becomes WENT. A story without any TOOK is redrawn. The asked object is drawn
//            uniformly among the objects taken at least once, so the answer is always defined.
//   x        BOS, then S + 1 runs of filler sentences with the S facts between them, then
//            "Q O* A" ending at position seq_len - 1. The F = seq_len - min_seq_len() filler tokens
//            are split over the S + 1 runs uniformly at random among all compositions; a run is cut
//            into sentences "w ... w DOT" of 2..5 tokens (the last sentence of a run takes what is
//            left: 2..6 tokens, or a lone DOT for a run of one token)
//   y        at the final A: the location of O* at the end of the story; else ignored
//   mask     1 at the final A only (one answer per row)
//   min_seq_len() = 1 + 4S + 3; context_length(seq_len) = seq_len (the answer is never in x)
// Draws per row, in order: the story (and its redraws), the asked object, S run cut points, then
// per run the sentence lengths and filler words; everything before the cuts is independent of
// seq_len.
#include <algorithm>

#include "data/synthetic/common.h"

namespace attnlab::synthetic {
namespace {

constexpr int64_t kMaxGroup = 4096;  // entities, locations, objects: each at most this many

enum Verb : int32_t { kWent = 1, kTook = 2, kDropped = 3 };  // offsets from BOS

struct Fact {
  int32_t verb = kWent;
  int64_t entity = 0;
  int64_t arg = 0;  // a location (kWent) or an object (kTook, kDropped), as an index in its group
};

struct Story {
  std::vector<Fact> facts;
  int64_t object = 0;    // the asked object
  int64_t location = 0;  // its location at the end: the answer
};

class FactChain final : public SyntheticTask {
 public:
  explicit FactChain(const TaskConfig& c) : SyntheticTask(c) {
    auto group = [&](const char* key, int64_t v, int64_t lo) {
      if (v < lo || v > kMaxGroup) config_error(c, key, " must be in [", lo, ", ", kMaxGroup, "]; got ", v);
    };
    group("data.entities", c.entities, 1);
    group("data.locations (a move goes to another location)", c.locations, 2);
    group("data.objects", c.objects, 1);
    if (c.facts < 2 || c.facts > kMaxVocab)
      config_error(c, "data.facts must be in [2, ", kMaxVocab, "] (an answer needs a move and a take); got ", c.facts);
    if (c.vocab < 1 || c.vocab > kMaxVocab)
      config_error(c, "data.vocab (filler words) must be in [1, ", kMaxVocab, "]; got ", c.vocab);
  }

  int64_t entities() const { return config().entities; }
  int64_t locations() const { return config().locations; }
  int64_t objects() const { return config().objects; }
  int32_t loc0() const { return static_cast<int32_t>(entities()); }
  int32_t obj0() const { return loc0() + static_cast<int32_t>(locations()); }
  int32_t bos() const { return obj0() + static_cast<int32_t>(objects()); }
  int32_t dot() const { return bos() + 4; }
  int32_t q_tok() const { return bos() + 5; }
  int32_t a_tok() const { return bos() + 6; }
  int32_t filler0() const { return bos() + 7; }
  bool is_filler(int32_t id) const { return id >= filler0() && id < filler0() + config().vocab; }

  int64_t vocab_size() const override { return filler0() + config().vocab; }
  int64_t min_seq_len() const override { return 1 + 4 * config().facts + 3; }
  int64_t context_length(int64_t seq_len) const override { return seq_len; }

  void check_seq_len(int64_t seq_len) const override {
    if (seq_len < min_seq_len())
      config_error(config(), "needs train.seq_len >= 1 + 4 * data.facts + 3 = ", min_seq_len(), "; got ", seq_len);
  }

  // One story of S facts by simulating the world (see the opening comment).
  Story draw_story(RowRng& rng) const {
    const int64_t e_n = entities(), l_n = locations(), o_n = objects(), s_n = config().facts;
    for (int attempt = 0;; ++attempt) {
      AL_ASSERT(attempt < 100000, "fact_chain: no story with a TOOK fact after many draws");
      std::vector<int64_t> loc(static_cast<size_t>(e_n), -1);     // entity -> location, -1 unknown
      std::vector<int64_t> holder(static_cast<size_t>(o_n), -1);  // object -> entity, -1 none
      std::vector<int64_t> placed(static_cast<size_t>(o_n), -1);  // free object -> where it lies
      std::vector<uint8_t> taken(static_cast<size_t>(o_n), 0);
      Story s;
      for (int64_t step = 0; step < s_n; ++step) {
        const int64_t roll = rng.uniform_int(20);
        Fact f;
        if (roll >= 10 && roll < 17) {
          std::vector<std::pair<int64_t, int64_t>> can;  // (entity, object) takes that can happen
          for (int64_t e = 0; e < e_n; ++e) {
            if (loc[static_cast<size_t>(e)] < 0) continue;
            for (int64_t o = 0; o < o_n; ++o) {
              const size_t oi = static_cast<size_t>(o);
              if (holder[oi] < 0 && (placed[oi] < 0 || placed[oi] == loc[static_cast<size_t>(e)]))
                can.emplace_back(e, o);
            }
          }
          if (!can.empty()) {
            const auto [e, o] = can[static_cast<size_t>(rng.uniform_int(static_cast<int64_t>(can.size())))];
            holder[static_cast<size_t>(o)] = e;
            placed[static_cast<size_t>(o)] = -1;
            taken[static_cast<size_t>(o)] = 1;
            s.facts.push_back(Fact{kTook, e, o});
            continue;
          }
        } else if (roll >= 17) {
          std::vector<int64_t> held;
          for (int64_t o = 0; o < o_n; ++o)
            if (holder[static_cast<size_t>(o)] >= 0) held.push_back(o);
          if (!held.empty()) {
            const int64_t o = held[static_cast<size_t>(rng.uniform_int(static_cast<int64_t>(held.size())))];
            const int64_t e = holder[static_cast<size_t>(o)];
            placed[static_cast<size_t>(o)] = loc[static_cast<size_t>(e)];
            holder[static_cast<size_t>(o)] = -1;
            s.facts.push_back(Fact{kDropped, e, o});
            continue;
          }
        }
        f.verb = kWent;
        // Half the moves (when anyone holds something) move a holder, so objects travel after
        // being taken and the take alone often does not answer the question.
        std::vector<int64_t> holders;
        for (int64_t o = 0; o < o_n; ++o) {
          const int64_t h = holder[static_cast<size_t>(o)];
          if (h >= 0 && std::find(holders.begin(), holders.end(), h) == holders.end()) holders.push_back(h);
        }
        if (!holders.empty() && rng.uniform_int(2) == 0)
          f.entity = holders[static_cast<size_t>(rng.uniform_int(static_cast<int64_t>(holders.size())))];
        else
          f.entity = rng.uniform_int(e_n);
        const int64_t here = loc[static_cast<size_t>(f.entity)];
        if (here < 0) {
          f.arg = rng.uniform_int(l_n);
        } else {
          f.arg = rng.uniform_int(l_n - 1);
          if (f.arg >= here) ++f.arg;
        }
        loc[static_cast<size_t>(f.entity)] = f.arg;
        s.facts.push_back(f);
      }
      std::vector<int64_t> askable;
      for (int64_t o = 0; o < o_n; ++o)
        if (taken[static_cast<size_t>(o)]) askable.push_back(o);
      if (askable.empty()) continue;
      s.object = askable[static_cast<size_t>(rng.uniform_int(static_cast<int64_t>(askable.size())))];
      const size_t oi = static_cast<size_t>(s.object);
      s.location = holder[oi] >= 0 ? loc[static_cast<size_t>(holder[oi])] : placed[oi];
      return s;
    }
  }

  TaskBatch batch(uint64_t seed, uint64_t index, int64_t batch, int64_t seq_len) const override {
    check_batch_args(*this, batch, seq_len);
    const int64_t s_n = config().facts, words = config().vocab;
    const int64_t fill = seq_len - min_seq_len();
    return token_batch(seed, index, batch, seq_len, [&](RowRng& rng, int32_t* x, int32_t* y) {
      const Story story = draw_story(rng);
      const std::vector<int64_t> runs = filler_runs(rng, fill, s_n + 1);
      int64_t t = 0;
      x[t++] = bos();
      auto run = [&](int64_t i) {  // filler run i in [0, S], cut into sentences
        for (int64_t left = runs[static_cast<size_t>(i)]; left > 0;) {
          int64_t n = 2 + rng.uniform_int(4);
          if (left - n < 2) n = left;
          for (int64_t w = 0; w + 1 < n; ++w) x[t++] = filler0() + static_cast<int32_t>(rng.uniform_int(words));
          x[t++] = dot();
          left -= n;
        }
      };
      for (int64_t i = 0; i < s_n; ++i) {
        run(i);
        const Fact& f = story.facts[static_cast<size_t>(i)];
        x[t++] = static_cast<int32_t>(f.entity);
        x[t++] = bos() + f.verb;
        x[t++] = (f.verb == kWent ? loc0() : obj0()) + static_cast<int32_t>(f.arg);
        x[t++] = dot();
      }
      run(s_n);
      x[t++] = q_tok();
      x[t++] = obj0() + static_cast<int32_t>(story.object);
      x[t] = a_tok();
      y[t] = loc0() + static_cast<int32_t>(story.location);
    });
  }

  std::string token(int64_t id) const {
    if (id >= 0 && id < loc0()) return tagged("e", id);
    if (id >= loc0() && id < obj0()) return tagged("l", id - loc0());
    if (id >= obj0() && id < bos()) return tagged("o", id - obj0());
    if (id == bos()) return "BOS";
    if (id == bos() + kWent) return "went";
    if (id == bos() + kTook) return "took";
    if (id == bos() + kDropped) return "dropped";
    if (id == dot()) return ".";
    if (id == q_tok()) return "where";
    if (id == a_tok()) return "?";
    if (is_filler(static_cast<int32_t>(id))) return "~";
    return tagged("?", id);
  }

  // Facts print as words, runs of filler sentences as "~N" (N tokens, periods included), the
  // answer as "? -> l (model l')", e.g.
  // "BOS ~9 e3 went l1 . ~20 e3 took o2 . ~31 e5 went l0 . ~4 | where o2 ? -> l1 (model l0)".
  std::string describe(const TaskBatch& b, int64_t row, const Tensor& output) const override {
    return describe_tokens(b, row, output, vocab_size(), "fact_chain describe",
                           {.token = [this](int64_t id) { return token(id); },
                            .in_run = [this](int32_t id) { return is_filler(id) || id == dot(); },
                            .question = q_tok(),
                            .group = [this](const int32_t* x, int64_t t, int64_t t_len) -> int64_t {
                              return x[t] >= 0 && x[t] < loc0() && t + 3 < t_len ? 4 : 0;  // a fact: four tokens
                            }});
  }
};

}  // namespace

std::unique_ptr<SyntheticTask> make_fact_chain(const TaskConfig& config) { return std::make_unique<FactChain>(config); }

}  // namespace attnlab::synthetic
