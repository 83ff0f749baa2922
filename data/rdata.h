// A small reader of R's lazy-load databases (NAME.rdx + NAME.rdb, what R packages ship their
// data sets in), enough to read named character vectors without R. Format notes and the Austen
// corpus that motivates it: ../shared/specs/data_sources.md.
//
//   NAME.rdx  an R-serialized list (variables, references, compressed), stored as saveRDS writes
//             it (gzip) or as a 4-byte big-endian length + zlib stream; `variables` is a named
//             list of integer pairs (offset, length) into NAME.rdb.
//   NAME.rdb  at each (offset, length): a 4-byte big-endian uncompressed length, then (when
//             `compressed` is 2 or 3) a type byte 'Z' zlib, '0' stored, '2' bzip2, 'X' xz, then
//             the stream (plain zlib when `compressed` is TRUE). bzip2 and xz are refused.
//   a blob    R's XDR serialization: "X\n", format version 2 or 3, R versions, (v3) the native
//             encoding, then one object.
//
// Only what character data needs is understood: NULL, symbols and references to them,
// pairlists (attributes), logical/integer/double/character vectors and lists. Anything else,
// and any malformed or truncated input, is an IoError naming the file (and object) and what
// was unexpected, with the byte offset; every read is bounds-checked.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace attnlab::rdata {

// R's SEXPTYPE codes for the types this reader understands.
enum SexpType : int {
  kNil = 0,
  kSymbol = 1,
  kPairlist = 2,
  kChar = 9,
  kLogical = 10,
  kInteger = 13,
  kReal = 14,
  kCharacter = 16,
  kList = 19,
  kExpression = 20,
};

// R's NA for integers and logicals.
constexpr int32_t kNaInteger = INT32_MIN;

// One deserialized R object. Which members are used depends on `type`.
struct RObject {
  int type = kNil;
  std::vector<std::string> strings;  // kCharacter elements; kChar: its bytes; kSymbol: its name
  std::vector<bool> na;              // kCharacter / kChar: which strings are NA (then "")
  std::vector<int32_t> ints;         // kLogical, kInteger (NA = kNaInteger)
  std::vector<double> reals;         // kReal
  std::vector<RObject> elements;     // kList / kExpression elements; kPairlist values
  std::vector<std::string> tags;     // kPairlist: each value's tag ("" when untagged)
  std::vector<std::string> attr_names;
  std::vector<RObject> attr_values;

  int64_t length() const;
  const RObject* attribute(std::string_view name) const;  // nullptr when absent
  // The "names" attribute; empty when there is none.
  std::vector<std::string> names() const;
  // The list element called `name` (by the names attribute); nullptr when absent.
  const RObject* element(std::string_view name) const;
};

// "character", "integer", ..., or "SEXP type N".
std::string type_name(int type);

// Parses R's XDR serialization of one object. `source` names the bytes in error messages.
RObject unserialize(std::string_view bytes, const std::string& source);

// The serialized bytes of an .rds/.rdx file: gzip (what saveRDS writes), a 4-byte big-endian
// length + zlib stream, or already uncompressed ("X\n..."). bzip2 and xz are refused.
std::string decompress_rds(std::string_view bytes, const std::string& source);

// Decodes one NAME.rdb blob for a database whose index says `compressed` (0 = FALSE,
// 1 = TRUE: zlib, 2 and 3: a type byte follows the length).
std::string decompress_rdb_blob(std::string_view blob, int compressed, const std::string& source);

class LazyLoadDb {
 public:
  // `base` is the path without the extension: ".../data/Rdata" for Rdata.rdx and Rdata.rdb.
  // Reads and checks the index; IoError when it is missing or malformed.
  explicit LazyLoadDb(const std::string& base);

  const std::vector<std::string>& names() const { return names_; }  // in index order
  bool contains(std::string_view name) const;
  int compressed() const { return compressed_; }

  // The object called `name`; IoError when absent (listing the names) or malformed.
  RObject read(const std::string& name) const;
  // The character vector `name`: IoError when it is another type or holds an NA.
  std::vector<std::string> read_strings(const std::string& name) const;

 private:
  std::string rdx_path_, rdb_path_;
  std::vector<std::string> names_;
  std::vector<std::pair<uint64_t, uint64_t>> spans_;  // (offset, length) into the .rdb
  int compressed_ = 1;
};

}  // namespace attnlab::rdata
