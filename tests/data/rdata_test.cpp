#include "data/rdata.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "data_test_util.h"
#include "lib/rng.h"

namespace attnlab {
namespace {

using rdata::RObject;
using test::be32;
using test::index_blob;
using test::RSer;
using test::strsxp_blob;
using test::write_db;
using test::zlib_blob;

TEST(RData, ReadsCharacterVectorsWithNaAndEncodings) {
  RSer s;
  s.header()
      .i(16)
      .i(5)
      .chars("It is a truth")
      .na_chars()
      .chars("")
      .chars(
          "\xA3"
          "5",
          4)
      .chars(
          "\xC2\xA3"
          "7",
          8);
  const RObject o = rdata::unserialize(s.b, "blob");
  ASSERT_EQ(o.type, rdata::kCharacter);
  ASSERT_EQ(o.length(), 5);
  EXPECT_EQ(o.strings[0], "It is a truth");
  EXPECT_TRUE(o.na[1]);
  EXPECT_FALSE(o.na[2]);
  EXPECT_EQ(o.strings[2], "");
  EXPECT_EQ(o.strings[3],
            "\xC2\xA3"
            "5");  // latin1 converted to UTF-8
  EXPECT_EQ(o.strings[4],
            "\xC2\xA3"
            "7");
}

TEST(RData, ReadsNamedListsSymbolsReferencesAndVectors) {
  RSer s;
  s.header(2).list(3, true);
  s.ints({1, 2, rdata::kNaInteger});
  s.ints({1}, 10);
  s.i(14).i(1).i(0x3FF00000).i(0);  // double 1.0
  s.names_attr({"a", "b", "c"}, true);
  const RObject o = rdata::unserialize(s.b, "blob");
  ASSERT_EQ(o.type, rdata::kList);
  EXPECT_EQ(o.names(), (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_NE(o.element("a"), nullptr);
  EXPECT_EQ(o.element("a")->ints, (std::vector<int32_t>{1, 2, rdata::kNaInteger}));
  EXPECT_EQ(o.element("b")->type, rdata::kLogical);
  EXPECT_EQ(o.element("c")->reals, std::vector<double>{1.0});
  EXPECT_EQ(o.element("d"), nullptr);

  // The same symbol used again by reference.
  RSer t;
  t.header().list(2, true).list(0, true).names_attr({}, true).nil().names_attr({"x", "y"}, false);
  const RObject u = rdata::unserialize(t.b, "blob");
  EXPECT_EQ(u.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(u.elements[0].type, rdata::kList);
  EXPECT_EQ(u.elements[1].type, rdata::kNil);
}

TEST(RData, EveryTruncationIsAnIoError) {
  const std::string full = index_blob({{"emma", {0, 100}}, {"persuasion", {100, 50}}}, 1);
  ASSERT_NO_THROW(rdata::unserialize(full, "index"));
  for (size_t n = 0; n < full.size(); ++n)
    test::expect_io_error([&] { rdata::unserialize(full.substr(0, n), "cut.rdx"); }, {"cut.rdx"});
}

TEST(RData, RejectsMalformedStreamsByName) {
  const std::string good = strsxp_blob({"a", "b"});
  test::expect_io_error([&] { rdata::unserialize("Y\n" + good.substr(2), "f.rdb"); }, {"f.rdb", "not an R XDR"});
  test::expect_io_error([&] { rdata::unserialize("A\n" + good.substr(2), "f.rdb"); }, {"f.rdb", "not supported"});
  test::expect_io_error([&] { rdata::unserialize(RSer().header().b.replace(2, 4, be32(7)) + "", "f.rdb"); },
                        {"version 7"});
  // Unknown and unsupported SEXP types.
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(99).i(0).b, "f.rdb"); },
                        {"f.rdb", "unsupported SEXP type 99"});
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(3).b, "f.rdb"); },
                        {"unsupported SEXP type 3", "closure"});
  // A character vector element that is not a CHARSXP.
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(16).i(1).ints({1}).b, "f.rdb"); },
                        {"expected a CHARSXP"});
  // A reference to a symbol never read.
  test::expect_io_error([&] { rdata::unserialize(RSer().header().ref(3).b, "f.rdb"); }, {"reference 3"});
  // Lengths: negative, and far more than the bytes left (must not allocate).
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(13).i(-5).b, "f.rdb"); }, {"negative length"});
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(16).i(0x7FFFFFFF).b, "f.rdb"); }, {"truncated"});
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(13).i(-1).i(0x7FFF).i(0).b, "f.rdb"); },
                        {"truncated"});
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(9).i(-7).b, "f.rdb"); }, {"negative string length"});
  // Trailing garbage.
  test::expect_io_error([&] { rdata::unserialize(good + "xx", "f.rdb"); }, {"unexpected bytes after"});
  // Attributes that are not a pairlist; a tag that is not a symbol.
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(0x210).i(0).ints({1}).b, "f.rdb"); },
                        {"attributes must be a pairlist"});
  test::expect_io_error([&] { rdata::unserialize(RSer().header().i(0x402).ints({1}).nil().nil().b, "f.rdb"); },
                        {"tag must be a symbol"});
  // Nesting deep enough to overflow a careless recursive reader.
  RSer deep;
  deep.header();
  for (int k = 0; k < 100000; ++k) deep.list(1, false);
  deep.nil();
  test::expect_io_error([&] { rdata::unserialize(deep.b, "f.rdb"); }, {"deeper"});
}

TEST(RData, RandomCorruptionNeverCrashes) {
  const std::string good = index_blob({{"emma", {0, 100}}, {"persuasion", {100, 50}}}, 1);
  Generator gen(11);
  const std::vector<int32_t> r = randint(Shape{3 * 4000}, 1 << 30, gen).to_vector<int32_t>();
  int parsed = 0, rejected = 0;
  for (int k = 0; k < 4000; ++k) {
    std::string bad = good;
    const size_t at = static_cast<size_t>(r[3 * static_cast<size_t>(k)]) % bad.size();
    bad[at] = static_cast<char>(r[3 * static_cast<size_t>(k) + 1] & 0xFF);
    if (k % 3 == 0) bad.resize(static_cast<size_t>(r[3 * static_cast<size_t>(k) + 2]) % bad.size());
    try {
      rdata::unserialize(bad, "fuzz");
      ++parsed;
    } catch (const IoError&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 0);
  EXPECT_EQ(parsed + rejected, 4000);
}

TEST(RData, LazyLoadDatabaseRoundTrip) {
  test::TempDir dir;
  const std::vector<std::string> emma{"EMMA", "", "By Jane Austen"};
  const std::vector<std::string> persuasion{"Persuasion", "Chapter 1"};
  const std::string base =
      write_db(dir.file("Rdata"), {{"emma", strsxp_blob(emma)}, {"persuasion", strsxp_blob(persuasion)}}, 1, zlib_blob);
  const rdata::LazyLoadDb db(base);
  EXPECT_EQ(db.names(), (std::vector<std::string>{"emma", "persuasion"}));
  EXPECT_TRUE(db.contains("emma"));
  EXPECT_FALSE(db.contains("mobydick"));
  EXPECT_EQ(db.compressed(), 1);
  EXPECT_EQ(db.read_strings("emma"), emma);
  EXPECT_EQ(db.read_strings("persuasion"), persuasion);
  test::expect_io_error([&] { db.read("mobydick"); }, {"no object 'mobydick'", "emma, persuasion"});
}

TEST(RData, TypeByteVariantsAndRefusedCompressors) {
  const std::vector<std::string> lines{"one", "two"};
  const std::string ser = strsxp_blob(lines);
  const auto typed = [](char type, const std::string& body) {
    return [type, body](const std::string& s) { return be32(static_cast<uint32_t>(s.size())) + type + body; };
  };
  {
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 3, typed('Z', test::deflate_bytes(ser)));
    EXPECT_EQ(rdata::LazyLoadDb(base).read_strings("x"), lines);
  }
  {
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 3, typed('0', ser));
    EXPECT_EQ(rdata::LazyLoadDb(base).read_strings("x"), lines);
  }
  {
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 3, typed('2', "BZh91AY&SY"));
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"Rdata.rdb", "object 'x'", "bzip2"});
  }
  {
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 3,
                                      typed('X',
                                            "\xFD"
                                            "7zXZ"));
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"xz"});
  }
  {
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 3, typed('Q', ser));
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"unknown compression type byte 81"});
  }
  // The index as a 4-byte length + zlib stream, and uncompressed, read the same; bzip2 refused.
  for (const std::string& rdx : {be32(static_cast<uint32_t>(index_blob({{"x", {0, 10}}}, 1).size())) +
                                     test::deflate_bytes(index_blob({{"x", {0, 10}}}, 1)),
                                 index_blob({{"x", {0, 10}}}, 1)}) {
    test::TempDir dir;
    test::write_bytes(dir.file("db.rdx"), rdx);
    EXPECT_EQ(rdata::LazyLoadDb(dir.file("db")).names(), std::vector<std::string>{"x"});
  }
  test::TempDir dir;
  test::write_bytes(dir.file("db.rdx"), "BZh91AY&SY....");
  test::expect_io_error([&] { rdata::LazyLoadDb(dir.file("db")); }, {"db.rdx", "bzip2"});
}

TEST(RData, CorruptDatabasesAreIoErrors) {
  const std::string ser = strsxp_blob({"line"});
  {  // Missing files.
    test::TempDir dir;
    test::expect_io_error([&] { rdata::LazyLoadDb(dir.file("none")); }, {"none.rdx"});
  }
  {  // A span past the end of the .rdb.
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 1, zlib_blob);
    test::write_bytes(base + ".rdb", test::read_bytes(base + ".rdb").substr(0, 10));
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"runs past the end"});
  }
  {  // Declared length disagrees with the inflated size.
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 1, [](const std::string& s) {
      return be32(static_cast<uint32_t>(s.size() + 3)) + test::deflate_bytes(s);
    });
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"declares"});
  }
  {  // A corrupt zlib stream.
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 1, [](const std::string& s) {
      std::string z = test::deflate_bytes(s);
      for (size_t k = 2; k < z.size(); k += 3) z[k] = static_cast<char>(~z[k]);
      return be32(static_cast<uint32_t>(s.size())) + z;
    });
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"object 'x'"});
  }
  {  // A truncated zlib stream.
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", ser}}, 1, [](const std::string& s) {
      const std::string z = test::deflate_bytes(s);
      return be32(static_cast<uint32_t>(s.size())) + z.substr(0, z.size() / 2);
    });
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read("x"); }, {"truncated"});
  }
  {  // An object that is not a character vector.
    test::TempDir dir;
    const std::string base = write_db(dir.file("Rdata"), {{"x", RSer().header().ints({1, 2}).b}}, 1, zlib_blob);
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read_strings("x"); },
                          {"expected a character vector", "integer"});
  }
  {  // NA lines.
    test::TempDir dir;
    const std::string base =
        write_db(dir.file("Rdata"), {{"x", RSer().header().i(16).i(2).chars("a").na_chars().b}}, 1, zlib_blob);
    test::expect_io_error([&] { rdata::LazyLoadDb(base).read_strings("x"); }, {"element 2 is NA"});
  }
  {  // An index that is not the expected list.
    test::TempDir dir;
    test::write_bytes(dir.file("db.rdx"), test::deflate_bytes(strsxp_blob({"x"}), 31));
    test::expect_io_error([&] { rdata::LazyLoadDb(dir.file("db")); }, {"db.rdx", "expected a list"});
  }
  {  // A truncated gzip index.
    test::TempDir dir;
    const std::string gz = test::deflate_bytes(index_blob({{"x", {0, 10}}}, 1), 31);
    test::write_bytes(dir.file("db.rdx"), gz.substr(0, gz.size() / 2));
    test::expect_io_error([&] { rdata::LazyLoadDb(dir.file("db")); }, {"db.rdx"});
  }
  {  // Negative offsets and a bad compression value.
    test::TempDir dir;
    test::write_bytes(dir.file("db.rdx"), index_blob({{"x", {-4, 10}}}, 1));
    test::expect_io_error([&] { rdata::LazyLoadDb(dir.file("db")); }, {"variable 'x'", "offset, length"});
    test::write_bytes(dir.file("db.rdx"), index_blob({{"x", {0, 10}}}, 9, false));
    test::expect_io_error([&] { rdata::LazyLoadDb(dir.file("db")); }, {"'compressed'"});
  }
}

}  // namespace
}  // namespace attnlab
