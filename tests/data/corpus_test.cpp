#include "data/corpus.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "data/sha256.h"
#include "data_test_util.h"

namespace attnlab {
namespace {

// The real corpus. CI gets it from scripts/install-deps.sh (which runs scripts/fetch-corpus.sh);
// its absence is a failure, never a skip.
TEST(Corpus, AustenLoadsWithTheExpectedHashAndLength) {
  const std::string dir = test::repo_corpus_dir();
  ASSERT_TRUE(std::filesystem::exists(austen_database_base(dir) + ".rdb"))
      << "the Austen corpus is missing under " << dir
      << ": run scripts/fetch-corpus.sh (scripts/install-deps.sh runs it)";
  const std::string text = load_corpus("austen", dir);
  EXPECT_EQ(static_cast<int64_t>(text.size()), kAustenBytes);
  EXPECT_EQ(text.size(), 4025029u);
  EXPECT_EQ(sha256_hex(text), "f2516f2139e3cecf49657122fed58ac46313f1fdff32a26fc66789293e92d573");
  EXPECT_EQ(text.substr(0, 21), "SENSE AND SENSIBILITY");
  EXPECT_EQ(text.back(), '\n');

  const auto novels = load_austen_novels(dir);
  ASSERT_EQ(novels.size(), 6u);
  std::string joined;
  for (size_t i = 0; i < novels.size(); ++i) {
    EXPECT_EQ(novels[i].first, austen_novel_names()[i]);
    joined += novels[i].second;
  }
  EXPECT_EQ(joined, text);
  EXPECT_EQ(novels[5].first, "persuasion");
  EXPECT_GT(novels[5].second.size(), 450000u);
}

TEST(Corpus, MissingPackageTellsHowToFetchIt) {
  test::TempDir dir;
  test::expect_io_error([&] { load_corpus("austen", dir.file("corpora")); },
                        {"scripts/fetch-corpus.sh", "r-cran-janeaustenr"});
}

TEST(Corpus, AnotherTextFailsTheHashCheck) {
  // A well-formed database with the six objects, holding other text.
  test::TempDir tmp;
  const std::string base = austen_database_base(tmp.file("corpora"));
  std::filesystem::create_directories(std::filesystem::path(base).parent_path());
  std::vector<std::pair<std::string, std::string>> objects;
  for (const std::string& name : austen_novel_names()) objects.emplace_back(name, test::strsxp_blob({name, "text"}));
  test::write_db(base, objects, 1, test::zlib_blob);
  const auto novels = load_austen_novels(tmp.file("corpora"));
  EXPECT_EQ(novels[0].second, "sensesensibility\ntext\n");
  test::expect_io_error([&] { load_corpus("austen", tmp.file("corpora")); },
                        {"not the expected text", kAustenSha256, "fetch-corpus.sh"});
}

TEST(Corpus, ATruncatedDatabaseIsAnIoError) {
  const std::string dir = test::repo_corpus_dir();
  ASSERT_TRUE(std::filesystem::exists(austen_database_base(dir) + ".rdb"))
      << "the Austen corpus is missing under " << dir << ": run scripts/fetch-corpus.sh";
  test::TempDir tmp;
  const std::string base = austen_database_base(tmp.file("corpora"));
  std::filesystem::create_directories(std::filesystem::path(base).parent_path());
  std::filesystem::copy_file(austen_database_base(dir) + ".rdx", base + ".rdx");
  std::filesystem::copy_file(austen_database_base(dir) + ".rdb", base + ".rdb");
  EXPECT_EQ(load_corpus("austen", tmp.file("corpora")).size(), 4025029u);
  // Cut the .rdb short: the index's last span now runs past its end.
  std::filesystem::resize_file(base + ".rdb", std::filesystem::file_size(base + ".rdb") - 100);
  test::expect_io_error([&] { load_corpus("austen", tmp.file("corpora")); }, {"Rdata.rdb", "runs past the end"});
}

TEST(Corpus, OtherNamesAreTextFiles) {
  test::TempDir dir;
  test::write_bytes(dir.file("tiny.txt"), "hello\nworld\n");
  EXPECT_EQ(load_corpus(dir.file("tiny.txt")), "hello\nworld\n");
  test::write_bytes(dir.file("empty.txt"), "");
  test::expect_io_error([&] { load_corpus(dir.file("empty.txt")); }, {"empty.txt", "empty"});
  test::expect_io_error([&] { load_corpus(dir.file("missing.txt")); }, {"missing.txt", "austen"});
  test::expect_io_error([&] { load_corpus(dir.path().string()); }, {"directory"});
}

}  // namespace
}  // namespace attnlab
