#include "data/corpus.h"

#include <filesystem>

#include "data/byte_tokenizer.h"
#include "data/rdata.h"
#include "data/sha256.h"
#include "lib/error.h"

namespace attnlab {

const std::vector<std::string>& austen_novel_names() {
  static const std::vector<std::string> names{"sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                                              "northangerabbey",  "persuasion"};
  return names;
}

std::string austen_database_base(const std::string& corpus_dir) {
  return corpus_dir + "/janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata";
}

std::vector<std::pair<std::string, std::string>> load_austen_novels(const std::string& corpus_dir) {
  const std::string base = austen_database_base(corpus_dir);
  std::error_code ec;
  AL_CHECK_IO(
      std::filesystem::is_regular_file(base + ".rdx", ec) && std::filesystem::is_regular_file(base + ".rdb", ec),
      "corpus 'austen' is not there: no '", base, ".rdx' and '.rdb' (corpus_dir '", corpus_dir,
      "'). Run scripts/fetch-corpus.sh from the repository root: it downloads the Debian package "
      "r-cran-janeaustenr with apt-get download and unpacks it into corpora/ (nothing is installed)");
  const rdata::LazyLoadDb db(base);
  std::vector<std::pair<std::string, std::string>> novels;
  for (const std::string& name : austen_novel_names()) {
    std::string text;
    for (const std::string& line : db.read_strings(name)) {
      text += line;
      text += '\n';
    }
    novels.emplace_back(name, std::move(text));
  }
  return novels;
}

std::string load_corpus(const std::string& name_or_path, const std::string& corpus_dir) {
  if (name_or_path != "austen") {
    std::error_code ec;
    AL_CHECK_IO(std::filesystem::exists(name_or_path, ec), "corpus '", name_or_path,
                "' is neither a known corpus name (austen) nor an existing text file");
    AL_CHECK_IO(!std::filesystem::is_directory(name_or_path, ec), "corpus '", name_or_path,
                "' is a directory; expected a text file or a known corpus name (austen)");
    return read_text_file(name_or_path);
  }
  std::string text;
  text.reserve(static_cast<size_t>(kAustenBytes));
  for (const auto& novel : load_austen_novels(corpus_dir)) text += novel.second;
  const std::string digest = sha256_hex(text);
  AL_CHECK_IO(digest == kAustenSha256, "corpus 'austen' from '", austen_database_base(corpus_dir),
              ".rdb' is not the expected text: ", text.size(), " bytes with sha256 ", digest, "; expected ",
              kAustenBytes, " bytes with sha256 ", kAustenSha256,
              ". Delete corpora/janeaustenr and rerun scripts/fetch-corpus.sh (package r-cran-janeaustenr 1.0.0-1)");
  return text;
}

}  // namespace attnlab
