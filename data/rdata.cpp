#include "data/rdata.h"

#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "lib/error.h"
#include "lib/file_io.h"

namespace attnlab::rdata {

namespace {

// R's special SEXPTYPE codes used only in serialized streams.
constexpr int kRefSxp = 255;
constexpr int kNilValueSxp = 254;
// Flag bits of a serialized item's header int.
constexpr uint32_t kHasAttrBit = 1u << 9;
constexpr uint32_t kHasTagBit = 1u << 10;
// CHARSXP encoding marks (the "levels" field, flags >> 12).
constexpr uint32_t kLatin1Mask = 1u << 2;

// Nothing real nests this deep; a malicious stream must not exhaust the stack.
constexpr int kMaxDepth = 256;
// Inflated streams beyond this are refused before they fill memory (the Austen blobs are ~1 MB).
constexpr uint64_t kMaxInflated = uint64_t{1} << 31;

uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

std::string latin1_to_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// zlib (window_bits 15) or gzip (window_bits 31) stream -> bytes. `expected` is the length the
// container declares (or UINT64_MAX when it declares none).
std::string inflate_stream(std::string_view in, int window_bits, uint64_t expected, const std::string& source) {
  const char* kind = window_bits > 15 ? "gzip" : "zlib";
  AL_CHECK_IO(in.size() <= std::numeric_limits<uInt>::max(), source, ": ", kind, " stream of ", in.size(),
              " bytes is too large");
  AL_CHECK_IO(expected == UINT64_MAX || expected <= kMaxInflated, source, ": declares ", expected,
              " uncompressed bytes, more than this reader accepts (", kMaxInflated, ")");
  z_stream zs{};
  AL_CHECK_IO(inflateInit2(&zs, window_bits) == Z_OK, source, ": cannot initialise zlib");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  std::string out;
  const uint64_t cap = expected == UINT64_MAX ? kMaxInflated : expected;
  out.reserve(static_cast<size_t>(std::min<uint64_t>(cap, 64u << 20)));
  char chunk[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(chunk);
    zs.avail_out = sizeof(chunk);
    rc = inflate(&zs, Z_NO_FLUSH);
    const size_t got = sizeof(chunk) - zs.avail_out;
    if (rc != Z_OK && rc != Z_STREAM_END) {
      const std::string msg = zs.msg ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      if (rc == Z_BUF_ERROR)
        detail::throw_error<IoError>(source, ": ", kind, " stream is truncated (ends after ", out.size() + got,
                                     " inflated bytes)");
      detail::throw_error<IoError>(source, ": corrupt ", kind, " stream: ", msg);
    }
    if (out.size() + got > cap) {
      inflateEnd(&zs);
      if (expected == UINT64_MAX)
        detail::throw_error<IoError>(source, ": ", kind, " stream inflates to more than ", cap, " bytes");
      detail::throw_error<IoError>(source, ": ", kind, " stream inflates to more than the ", expected,
                                   " bytes its header declares");
    }
    out.append(chunk, got);
    if (rc == Z_OK && got == 0 && zs.avail_in == 0) {
      inflateEnd(&zs);
      detail::throw_error<IoError>(source, ": ", kind, " stream is truncated (ends after ", out.size(),
                                   " inflated bytes)");
    }
  }
  inflateEnd(&zs);
  AL_CHECK_IO(expected == UINT64_MAX || out.size() == expected, source, ": ", kind, " stream inflates to ", out.size(),
              " bytes; its header declares ", expected);
  return out;
}

// Reads one serialized object, bounds-checking every read.
class Reader {
 public:
  Reader(std::string_view bytes, const std::string& source) : b_(bytes), src_(source) {}

  RObject parse() {
    AL_CHECK_IO(b_.size() >= 2, src_, ": only ", b_.size(), " bytes; not an R serialization");
    const std::string_view magic = b_.substr(0, 2);
    if (magic != "X\n") {
      if (magic == "A\n" || magic == "B\n")
        fail("R serialization format '", magic[0], "' is not supported; only XDR ('X') is");
      fail("not an R XDR serialization (expected \"X\\n\", got bytes 0x", hex_byte(b_[0]), " 0x", hex_byte(b_[1]), ")");
    }
    pos_ = 2;
    const int32_t version = read_int("format version");
    if (version != 2 && version != 3)
      fail("unsupported R serialization format version ", version, " (expected 2 or 3)");
    read_int("writer R version");
    read_int("minimal reader R version");
    if (version == 3) {
      const int32_t n = read_int("native encoding length");
      if (n < 0 || n > 64) fail("native encoding length ", n, " is outside [0, 64]");
      read_bytes(static_cast<size_t>(n), "native encoding");
    }
    RObject obj = item(0);
    if (pos_ != b_.size()) fail(b_.size() - pos_, " unexpected bytes after the object");
    return obj;
  }

 private:
  static std::string hex_byte(char c) {
    static const char* kDigits = "0123456789abcdef";
    const auto u = static_cast<unsigned char>(c);
    return {kDigits[u >> 4], kDigits[u & 15]};
  }

  template <typename... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    detail::throw_error<IoError>(src_, ": ", parts..., " (at byte ", pos_, ")");
  }

  size_t remaining() const { return b_.size() - pos_; }

  std::string_view read_bytes(size_t n, const char* what) {
    if (n > remaining()) fail("truncated: ", what, " needs ", n, " bytes, only ", remaining(), " left");
    const std::string_view s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }

  int32_t read_int(const char* what) {
    const std::string_view s = read_bytes(4, what);
    return static_cast<int32_t>(be32(reinterpret_cast<const unsigned char*>(s.data())));
  }

  double read_double(const char* what) {
    const std::string_view s = read_bytes(8, what);
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const uint64_t u = (uint64_t{be32(p)} << 32) | be32(p + 4);
    double d;
    std::memcpy(&d, &u, 8);
    return d;
  }

  // A vector length (R's long-vector form included), checked against the bytes left given that
  // each element takes at least `min_bytes`, so a corrupt length cannot trigger a huge allocation.
  size_t read_length(const char* what, size_t min_bytes) {
    int32_t n = read_int("vector length");
    uint64_t len;
    if (n == -1) {
      const auto hi = static_cast<uint32_t>(read_int("long vector length"));
      const auto lo = static_cast<uint32_t>(read_int("long vector length"));
      len = (uint64_t{hi} << 32) | lo;
    } else if (n < 0) {
      fail("negative length ", n, " of a ", what);
    } else {
      len = static_cast<uint64_t>(n);
    }
    if (len > remaining() / min_bytes)
      fail("truncated: a ", what, " of length ", len, " needs at least ", len * min_bytes, " bytes, only ", remaining(),
           " left");
    return static_cast<size_t>(len);
  }

  // A CHARSXP body after its flags: length (-1 = NA) and bytes.
  void read_charsxp(uint32_t flags, std::string& out, bool& is_na) {
    const int32_t n = read_int("string length");
    if (n == -1) {
      out.clear();
      is_na = true;
      return;
    }
    if (n < 0) fail("negative string length ", n);
    const std::string_view s = read_bytes(static_cast<size_t>(n), "string bytes");
    is_na = false;
    out = ((flags >> 12) & kLatin1Mask) ? latin1_to_utf8(s) : std::string(s);
  }

  RObject read_attributes(int depth) {
    RObject a = item(depth + 1);
    if (a.type != kPairlist) fail("attributes must be a pairlist; got ", type_name(a.type));
    return a;
  }

  RObject item(int depth) {
    if (depth > kMaxDepth) fail("objects nest deeper than ", kMaxDepth);
    const size_t start = pos_;
    const auto flags = static_cast<uint32_t>(read_int("item header"));
    const int type = static_cast<int>(flags & 0xFF);
    const bool has_attr = flags & kHasAttrBit;
    RObject obj;
    obj.type = type;
    switch (type) {
      case kNilValueSxp:
        obj.type = kNil;
        return obj;
      case kRefSxp: {
        uint64_t index = flags >> 8;
        if (index == 0) index = static_cast<uint32_t>(read_int("reference index"));
        if (index < 1 || index > symbols_.size()) {
          pos_ = start;
          fail("reference ", index, " is outside the ", symbols_.size(), " symbols read so far");
        }
        obj.type = kSymbol;
        obj.strings = {symbols_[index - 1]};
        return obj;
      }
      case kSymbol: {
        const RObject name = item(depth + 1);
        if (name.type != kChar) fail("a symbol's name must be a CHARSXP; got ", type_name(name.type));
        if (name.na[0]) fail("a symbol's name is NA");
        symbols_.push_back(name.strings[0]);
        obj.strings = name.strings;
        return obj;
      }
      case kPairlist: {
        // Iterative over the CDR chain: long pairlists must not recurse.
        uint32_t cell = flags;
        while (true) {
          if (cell & kHasAttrBit) read_attributes(depth);  // attributes of a pairlist cell: unused
          std::string tag;
          if (cell & kHasTagBit) {
            const RObject t = item(depth + 1);
            if (t.type != kSymbol) fail("a pairlist tag must be a symbol; got ", type_name(t.type));
            tag = t.strings[0];
          }
          obj.elements.push_back(item(depth + 1));
          obj.tags.push_back(std::move(tag));
          const size_t at = pos_;
          cell = static_cast<uint32_t>(read_int("pairlist cell header"));
          const int next = static_cast<int>(cell & 0xFF);
          if (next == kNilValueSxp) break;
          if (next != kPairlist) {
            pos_ = at;
            fail("a pairlist ends in a ", type_name(next), " cell; only NULL-terminated pairlists are supported");
          }
        }
        return obj;
      }
      case kChar: {
        obj.strings.resize(1);
        bool na = false;
        read_charsxp(flags, obj.strings[0], na);
        obj.na = {na};
        return obj;  // CHARSXPs carry no attributes
      }
      case kLogical:
      case kInteger: {
        const size_t n = read_length(type == kLogical ? "logical vector" : "integer vector", 4);
        obj.ints.resize(n);
        for (size_t i = 0; i < n; ++i) obj.ints[i] = read_int("vector element");
        break;
      }
      case kReal: {
        const size_t n = read_length("double vector", 8);
        obj.reals.resize(n);
        for (size_t i = 0; i < n; ++i) obj.reals[i] = read_double("vector element");
        break;
      }
      case kCharacter: {
        const size_t n = read_length("character vector", 8);
        obj.strings.resize(n);
        obj.na.resize(n);
        for (size_t i = 0; i < n; ++i) {
          const size_t at = pos_;
          const auto ef = static_cast<uint32_t>(read_int("string header"));
          if ((ef & 0xFF) != kChar) {
            pos_ = at;
            fail("element ", i, " of a character vector has type ", type_name(static_cast<int>(ef & 0xFF)),
                 ", expected a CHARSXP");
          }
          bool na = false;
          read_charsxp(ef, obj.strings[i], na);
          obj.na[i] = na;
        }
        break;
      }
      case kList:
      case kExpression: {
        const size_t n = read_length("list", 4);
        obj.elements.reserve(n);
        for (size_t i = 0; i < n; ++i) obj.elements.push_back(item(depth + 1));
        break;
      }
      default:
        pos_ = start;
        fail("unsupported SEXP type ", type, " (", type_name(type), ", item header ", flags, ")");
    }
    if (has_attr) {
      RObject a = read_attributes(depth);
      obj.attr_names = std::move(a.tags);
      obj.attr_values = std::move(a.elements);
    }
    return obj;
  }

  std::string_view b_;
  size_t pos_ = 0;
  const std::string& src_;
  std::vector<std::string> symbols_;
};

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// bzip2 and xz streams, which this reader (zlib only) refuses by name.
void reject_other_compressors(std::string_view bytes, const std::string& source) {
  AL_CHECK_IO(!starts_with(bytes, "BZh"), source, ": bzip2 compression is not supported (only zlib/gzip)");
  AL_CHECK_IO(!starts_with(bytes, std::string_view("\xFD"
                                                   "7zXZ\0",
                                                   6)),
              source, ": xz compression is not supported (only zlib/gzip)");
}

}  // namespace

std::string type_name(int type) {
  switch (type) {
    case 0:
      return "NULL";
    case 1:
      return "symbol";
    case 2:
      return "pairlist";
    case 3:
      return "closure";
    case 4:
      return "environment";
    case 5:
      return "promise";
    case 6:
      return "language";
    case 7:
      return "special";
    case 8:
      return "builtin";
    case 9:
      return "CHARSXP";
    case 10:
      return "logical";
    case 13:
      return "integer";
    case 14:
      return "double";
    case 15:
      return "complex";
    case 16:
      return "character";
    case 17:
      return "...";
    case 19:
      return "list";
    case 20:
      return "expression";
    case 21:
      return "bytecode";
    case 22:
      return "externalptr";
    case 23:
      return "weakref";
    case 24:
      return "raw";
    case 25:
      return "S4";
    case 238:
      return "ALTREP";
    case 239:
      return "ATTRLISTSXP";
    case 240:
      return "ATTRLANGSXP";
    case 241:
      return "base environment";
    case 242:
      return "empty environment";
    case 247:
      return "PERSISTSXP";
    case 248:
      return "package environment";
    case 249:
      return "namespace";
    case 250:
      return "base namespace";
    case 251:
      return "missing argument";
    case 252:
      return "unbound value";
    case 253:
      return "global environment";
    case 254:
      return "NULL";
    case 255:
      return "reference";
    default:
      return "SEXP type " + std::to_string(type);
  }
}

int64_t RObject::length() const {
  switch (type) {
    case kChar:
      return 1;
    case kCharacter:
      return static_cast<int64_t>(strings.size());
    case kLogical:
    case kInteger:
      return static_cast<int64_t>(ints.size());
    case kReal:
      return static_cast<int64_t>(reals.size());
    case kList:
    case kExpression:
    case kPairlist:
      return static_cast<int64_t>(elements.size());
    case kSymbol:
      return 1;
    default:
      return 0;
  }
}

const RObject* RObject::attribute(std::string_view name) const {
  for (size_t i = 0; i < attr_names.size(); ++i)
    if (attr_names[i] == name) return &attr_values[i];
  return nullptr;
}

std::vector<std::string> RObject::names() const {
  if (type == kPairlist) return tags;
  const RObject* n = attribute("names");
  if (!n || n->type != kCharacter) return {};
  return n->strings;
}

const RObject* RObject::element(std::string_view name) const {
  if (type != kList && type != kExpression && type != kPairlist) return nullptr;
  const std::vector<std::string> n = names();
  for (size_t i = 0; i < n.size() && i < elements.size(); ++i)
    if (n[i] == name) return &elements[i];
  return nullptr;
}

RObject unserialize(std::string_view bytes, const std::string& source) { return Reader(bytes, source).parse(); }

std::string decompress_rds(std::string_view bytes, const std::string& source) {
  AL_CHECK_IO(bytes.size() >= 2, source, ": ", bytes.size(), " bytes is too short for an R data file");
  if (static_cast<unsigned char>(bytes[0]) == 0x1F && static_cast<unsigned char>(bytes[1]) == 0x8B)
    return inflate_stream(bytes, 15 + 16, UINT64_MAX, source);
  if (starts_with(bytes, "X\n") || starts_with(bytes, "A\n") || starts_with(bytes, "B\n")) return std::string(bytes);
  reject_other_compressors(bytes, source);
  AL_CHECK_IO(bytes.size() >= 6 && (static_cast<unsigned char>(bytes[4]) & 0x0F) == 8, source,
              ": not an R data file (neither gzip, nor a length + zlib stream, nor an uncompressed serialization)");
  const uint32_t len = be32(reinterpret_cast<const unsigned char*>(bytes.data()));
  return inflate_stream(bytes.substr(4), 15, len, source);
}

std::string decompress_rdb_blob(std::string_view blob, int compressed, const std::string& source) {
  if (compressed == 0) return std::string(blob);
  AL_CHECK_IO(compressed >= 1 && compressed <= 3, source, ": unknown compression ", compressed,
              " in the index (expected FALSE, TRUE, 2 or 3)");
  AL_CHECK_IO(blob.size() >= 4, source, ": blob of ", blob.size(), " bytes is shorter than its 4-byte length header");
  const uint32_t len = be32(reinterpret_cast<const unsigned char*>(blob.data()));
  if (compressed == 1) return inflate_stream(blob.substr(4), 15, len, source);
  AL_CHECK_IO(blob.size() >= 5, source, ": blob of ", blob.size(), " bytes has no compression type byte");
  const char kind = blob[4];
  const std::string_view body = blob.substr(5);
  switch (kind) {
    case 'Z':
      return inflate_stream(body, 15, len, source);
    case '0':
      AL_CHECK_IO(body.size() == len, source, ": stored blob has ", body.size(), " bytes; its header declares ", len);
      return std::string(body);
    case '2':
      detail::throw_error<IoError>(source, ": bzip2 compression is not supported (only zlib)");
    case 'X':
      detail::throw_error<IoError>(source, ": xz compression is not supported (only zlib)");
    default: {
      const auto u = static_cast<unsigned>(static_cast<unsigned char>(kind));
      detail::throw_error<IoError>(source, ": unknown compression type byte ", u,
                                   " (expected 'Z' zlib, '0' stored, '2' bzip2 or 'X' xz)");
    }
  }
}

LazyLoadDb::LazyLoadDb(const std::string& base) : rdx_path_(base + ".rdx"), rdb_path_(base + ".rdb") {
  const std::string index_src = "R lazy-load index '" + rdx_path_ + "'";
  const RObject index = unserialize(decompress_rds(read_file(rdx_path_), index_src), index_src);
  AL_CHECK_IO(index.type == kList, index_src, ": expected a list (variables, references, compressed); got ",
              type_name(index.type));
  const RObject* vars = index.element("variables");
  AL_CHECK_IO(vars != nullptr, index_src, ": has no 'variables' element");
  AL_CHECK_IO(vars->type == kList, index_src, ": 'variables' must be a list; got ", type_name(vars->type));
  const std::vector<std::string> names = vars->names();
  AL_CHECK_IO(names.size() == vars->elements.size(), index_src, ": 'variables' has ", vars->elements.size(),
              " elements but ", names.size(), " names");
  for (size_t i = 0; i < names.size(); ++i) {
    const RObject& v = vars->elements[i];
    uint64_t span[2] = {0, 0};
    bool ok = v.length() == 2;
    if (ok && v.type == kInteger) {
      ok = v.ints[0] >= 0 && v.ints[1] >= 0;
      if (ok) span[0] = static_cast<uint64_t>(v.ints[0]), span[1] = static_cast<uint64_t>(v.ints[1]);
    } else if (ok && v.type == kReal) {
      for (int j = 0; j < 2 && ok; ++j) {
        const double d = v.reals[static_cast<size_t>(j)];
        ok = d >= 0 && d < 9.0e15 && d == static_cast<double>(static_cast<uint64_t>(d));
        if (ok) span[j] = static_cast<uint64_t>(d);
      }
    } else {
      ok = false;
    }
    AL_CHECK_IO(ok, index_src, ": variable '", names[i], "' must be two non-negative integers (offset, length); got a ",
                type_name(v.type), " of length ", v.length());
    names_.push_back(names[i]);
    spans_.emplace_back(span[0], span[1]);
  }
  if (const RObject* c = index.element("compressed")) {
    bool ok = c->length() == 1;
    if (ok && (c->type == kLogical || c->type == kInteger))
      compressed_ = c->ints[0];
    else if (ok && c->type == kReal)
      compressed_ = static_cast<int>(c->reals[0]);
    else
      ok = false;
    AL_CHECK_IO(ok && compressed_ >= 0 && compressed_ <= 3, index_src,
                ": 'compressed' must be FALSE, TRUE, 2 or 3; got a ", type_name(c->type), " of length ", c->length());
  }
}

bool LazyLoadDb::contains(std::string_view name) const {
  for (const std::string& n : names_)
    if (n == name) return true;
  return false;
}

RObject LazyLoadDb::read(const std::string& name) const {
  size_t i = 0;
  while (i < names_.size() && names_[i] != name) ++i;
  if (i == names_.size()) {
    std::string all;
    for (const std::string& n : names_) all += (all.empty() ? "" : ", ") + n;
    detail::throw_error<IoError>("R lazy-load database '", rdb_path_, "' has no object '", name, "' (it has: ", all,
                                 ")");
  }
  const std::string src = "R lazy-load database '" + rdb_path_ + "' object '" + name + "'";
  const auto [offset, length] = spans_[i];
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(rdb_path_, ec);
  AL_CHECK_IO(!ec, "cannot open '", rdb_path_, "': ", ec.message());
  AL_CHECK_IO(offset <= size && length <= size - offset, src, ": its span (offset ", offset, ", length ", length,
              ") runs past the end of the ", size, "-byte file");
  std::ifstream in(rdb_path_, std::ios::binary);
  AL_CHECK_IO(in.good(), "cannot open '", rdb_path_, "': ", std::strerror(errno));
  std::string blob(static_cast<size_t>(length), '\0');
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(blob.data(), static_cast<std::streamsize>(length));
  AL_CHECK_IO(in.good() || (in.eof() && in.gcount() == static_cast<std::streamsize>(length)), src, ": reading ", length,
              " bytes at offset ", offset, " failed");
  return unserialize(decompress_rdb_blob(blob, compressed_, src), src);
}

std::vector<std::string> LazyLoadDb::read_strings(const std::string& name) const {
  RObject obj = read(name);
  const std::string src = "R lazy-load database '" + rdb_path_ + "' object '" + name + "'";
  AL_CHECK_IO(obj.type == kCharacter, src, ": expected a character vector; got ", type_name(obj.type));
  for (size_t i = 0; i < obj.na.size(); ++i) AL_CHECK_IO(!obj.na[i], src, ": element ", i + 1, " is NA");
  return std::move(obj.strings);
}

}  // namespace attnlab::rdata
