#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "lib/error.h"
#include "lib/rng.h"
#include "lib/safetensors.h"

namespace attnlab {
namespace {

std::string with_header(const std::string& json, const std::string& data = "") {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + data;
}

// Expects IoError whose message names the source and contains `fragment`.
void expect_rejected(const std::string& bytes, const std::string& fragment) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
    ADD_FAILURE() << "accepted a malformed file (expected: " << fragment << ")";
  } catch (const IoError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
  }
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  Generator g(5);
  std::map<std::string, Tensor> tensors{
      {"w.f32", randn(Shape{3, 4}, g)},
      {"w.f64", randn(Shape{2}, g, DType::f64)},
      {"w.bf16", randn(Shape{5}, g).to(DType::bf16)},
      {"ids", Tensor::arange(6, DType::i32).reshape(Shape{2, 3})},
      {"scalar", Tensor::scalar(1.5)},
      {"strided", randn(Shape{3, 2}, g).transpose(0, 1)},
  };
  const auto dir = std::filesystem::temp_directory_path() / "attnlab_safetensors_test";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "model.safetensors").string();
  save_safetensors(path, tensors, {{"format", "pt"}, {"step", "12"}});
  const SafetensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.metadata.at("step"), "12");
  ASSERT_EQ(f.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    const Tensor& r = f.tensors.at(name);
    EXPECT_EQ(r.shape(), t.shape()) << name;
    EXPECT_EQ(r.dtype(), t.dtype()) << name;
    EXPECT_EQ(r.to_vector<double>(), t.to_vector<double>()) << name;
  }
  // The header is 8-byte aligned JSON, as other readers expect.
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  // No temporary file is left behind.
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, RejectsMalformedFilesWithClearErrors) {
  const std::string good = serialize_safetensors({{"x", Tensor::ones(Shape{2, 2})}});
  ASSERT_NO_THROW(parse_safetensors(good, "good"));
  expect_rejected("abc", "at least the 8-byte header length");
  expect_rejected(good.substr(0, 20), "larger than");                       // truncated header
  expect_rejected(good.substr(0, good.size() - 4), "outside");             // truncated data
  expect_rejected(with_header("{\"x\": 1}"), "needs an object");
  expect_rejected(with_header("not json"), "not valid JSON");
  expect_rejected(with_header("[1, 2]"), "must be a JSON object");
  expect_rejected(with_header(R"({"x": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}})", "ab"), "dtype \"F16\"");
  expect_rejected(with_header(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", std::string(8, 'a')),
                  "outside");
  expect_rejected(with_header(R"({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", std::string(8, 'a')),
                  "needs 12 bytes");
  expect_rejected(with_header(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "abcd"),
                  "invalid size");
  expect_rejected(with_header(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", "abcd"), "outside");
  expect_rejected(with_header(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", std::string(12, 'a')),
                  "overlap");
  expect_rejected(with_header(R"({"__metadata__": {"k": 1}})"), "must be a string");
  // A header length near 2^64 must not overflow the bounds check.
  std::string huge(8, '\xff');
  expect_rejected(huge + "{}", "larger than");
}

TEST(Safetensors, MissingFileIsAnIoError) {
  EXPECT_THROW(load_safetensors("/nonexistent/attnlab.safetensors"), IoError);
}

}  // namespace
}  // namespace attnlab
