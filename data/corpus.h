// Training text by name. "austen" is Jane Austen's six novels, read from the Debian package
// r-cran-janeaustenr that scripts/fetch-corpus.sh unpacks under corpora/ (never installed; see
// ../shared/specs/data_sources.md); anything else is the path of a text file.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace attnlab {

// "austen" -> the six novels from the unpacked Debian package under corpus_dir (default
// "corpora", made by scripts/fetch-corpus.sh), sha256-checked; anything else -> a path to a
// UTF-8 text file. IoError naming what is missing and how to get it.
std::string load_corpus(const std::string& name_or_path, const std::string& corpus_dir = "corpora");

// The Austen corpus: every line of every novel ends in "\n", novels in publication order
// (sensesensibility, prideprejudice, mansfieldpark, emma, northangerabbey, persuasion).
inline constexpr const char* kAustenSha256 = "f2516f2139e3cecf49657122fed58ac46313f1fdff32a26fc66789293e92d573";
inline constexpr int64_t kAustenBytes = 4025029;
const std::vector<std::string>& austen_novel_names();
// Where fetch-corpus.sh puts the package's lazy-load database (without .rdx/.rdb).
std::string austen_database_base(const std::string& corpus_dir = "corpora");
// Each novel's text (lines ending in "\n"), in publication order; concatenated they are
// load_corpus("austen") (whose hash check this does not repeat). For held-out-novel splits.
std::vector<std::pair<std::string, std::string>> load_austen_novels(const std::string& corpus_dir = "corpora");

}  // namespace attnlab
