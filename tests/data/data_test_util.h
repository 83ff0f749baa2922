// Helpers shared by the data/ tests: temporary directories, files, zlib/gzip, error checks, task
// configs.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "data/synthetic/task.h"
#include "lib/error.h"

namespace attnlab::test {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("attnlab_data_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// window_bits 15: zlib; 31: gzip.
inline std::string deflate_bytes(const std::string& in, int window_bits = 15) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, static_cast<uLong>(in.size())) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

inline std::string be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// Runs f, expecting an IoError whose message contains every fragment.
inline void expect_io_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    ADD_FAILURE() << "accepted bad input (expected an IoError mentioning '" << (fragments.empty() ? "" : fragments[0])
                  << "')";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    for (const std::string& frag : fragments) EXPECT_NE(msg.find(frag), std::string::npos) << "message: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected IoError, got another exception: " << e.what();
  }
}

// Runs fn, expecting a ConfigError whose message contains every one of `parts`.
template <typename Fn>
void expect_config_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a ConfigError containing '" << parts.front() << "'";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// A synthetic task's config with the defaults of every key but the name.
inline TaskConfig task_config(const std::string& name) {
  TaskConfig c;
  c.name = name;
  return c;
}

// Writes R's XDR serialization by hand, item by item (R's serialize.c layout).
struct RSer {
  std::string b;
  RSer& i(int32_t v) {
    b += be32(static_cast<uint32_t>(v));
    return *this;
  }
  RSer& header(int version = 3) {
    b += "X\n";
    i(version).i(0x00040201).i(0x00030500);
    if (version == 3) {
      i(5);
      b += "UTF-8";
    }
    return *this;
  }
  // A CHARSXP; levels 64 = ASCII, 8 = UTF-8, 4 = latin1.
  RSer& chars(const std::string& s, int levels = 64) {
    i((levels << 12) | 9).i(static_cast<int32_t>(s.size()));
    b += s;
    return *this;
  }
  RSer& na_chars() { return i(9).i(-1); }
  RSer& strsxp(const std::vector<std::string>& v, bool attr = false) {
    i(16 | (attr ? 0x200 : 0)).i(static_cast<int32_t>(v.size()));
    for (const std::string& s : v) chars(s);
    return *this;
  }
  RSer& ints(const std::vector<int32_t>& v, int type = 13) {
    i(type).i(static_cast<int32_t>(v.size()));
    for (int32_t x : v) i(x);
    return *this;
  }
  RSer& nil() { return i(254); }
  RSer& sym(const std::string& name) { return i(1).chars(name); }
  RSer& ref(int index) { return i((index << 8) | 255); }
  RSer& list(int n, bool attr) { return i(19 | (attr ? 0x200 : 0)).i(n); }
  // The attribute pairlist (names = ...), naming the symbol afresh or by reference 1.
  RSer& names_attr(const std::vector<std::string>& names, bool first_use) {
    i(0x402);
    if (first_use)
      sym("names");
    else
      ref(1);
    strsxp(names);
    return nil();
  }
};

inline std::string strsxp_blob(const std::vector<std::string>& lines) { return RSer().header().strsxp(lines).b; }

// A lazy-load index like R's: list(variables = list(name = c(offset, length), ...),
// references = list(), compressed = <value>).
inline std::string index_blob(const std::vector<std::pair<std::string, std::pair<int, int>>>& vars, int compressed,
                              bool compressed_is_logical = true) {
  RSer s;
  s.header().list(3, true);
  s.list(static_cast<int>(vars.size()), true);
  std::vector<std::string> names;
  for (const auto& [name, span] : vars) {
    s.ints({span.first, span.second});
    names.push_back(name);
  }
  s.names_attr(names, true);
  s.list(0, true).names_attr({}, false);
  s.ints({compressed}, compressed_is_logical ? 10 : 13);
  s.names_attr({"variables", "references", "compressed"}, false);
  return s.b;
}

// Writes NAME.rdx (gzip, like saveRDS) and NAME.rdb with the given objects, each blob made by
// `encode_blob` from the serialized bytes. Returns `base`.
inline std::string write_db(const std::string& base, const std::vector<std::pair<std::string, std::string>>& objects,
                            int compressed, const std::function<std::string(const std::string&)>& encode_blob) {
  std::string rdb;
  std::vector<std::pair<std::string, std::pair<int, int>>> vars;
  for (const auto& [name, serialized] : objects) {
    const std::string blob = encode_blob(serialized);
    vars.push_back({name, {static_cast<int>(rdb.size()), static_cast<int>(blob.size())}});
    rdb += blob;
  }
  write_bytes(base + ".rdb", rdb);
  write_bytes(base + ".rdx", deflate_bytes(index_blob(vars, compressed), 31));
  return base;
}

inline std::string zlib_blob(const std::string& s) { return be32(static_cast<uint32_t>(s.size())) + deflate_bytes(s); }

// The repository's corpora/ directory (made by scripts/fetch-corpus.sh).
inline std::string repo_corpus_dir() { return std::string(ATTNLAB_SOURCE_DIR) + "/corpora"; }

}  // namespace attnlab::test
