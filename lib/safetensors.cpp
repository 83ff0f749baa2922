#include "lib/safetensors.h"

#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "lib/error.h"
#include "lib/file_io.h"

namespace attnlab {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

// Headers beyond this are refused before allocating: real ones are kilobytes.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

std::string_view file_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
  }
  return "?";
}

bool parse_file_dtype(const std::string& s, DType& out) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::i32}) {
    if (s == file_dtype_name(t)) {
      out = t;
      return true;
    }
  }
  return false;
}

}  // namespace

std::string serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<Tensor> packed;
  for (const auto& [name, t] : tensors) {
    AL_CHECK_CONFIG(name != "__metadata__" && !name.empty(), "safetensors: invalid tensor name '", name, "'");
    AL_CHECK(t.defined(), "safetensors: tensor '", name, "' is undefined");
    packed.push_back(t.to(Device::cpu()).contiguous());  // device tensors are written from a host copy
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
    header[name] = {{"dtype", file_dtype_name(t.dtype())}, {"shape", t.shape().dims()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // pad so the data starts 8-byte aligned
  std::string out;
  out.reserve(8 + json.size() + offset);
  const uint64_t n = json.size();
  out.append(reinterpret_cast<const char*>(&n), 8);
  out += json;
  for (const Tensor& t : packed)
    out.append(static_cast<const char*>(t.raw_data()), static_cast<size_t>(t.numel()) * dtype_size(t.dtype()));
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, serialize_safetensors(tensors, metadata));
}

SafetensorsFile load_safetensors(const std::string& path) { return parse_safetensors(read_file(path), path); }

SafetensorsFile parse_safetensors(std::string_view bytes, std::string_view source) {
  auto fail = [&](const auto&... parts) { detail::throw_error<IoError>("safetensors file '", source, "': ", parts...); };
  if (bytes.size() < 8) fail("is ", bytes.size(), " bytes long; a file needs at least the 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  if (n > bytes.size() - 8)
    fail("header length ", n, " is larger than the ", bytes.size() - 8, " bytes that follow it (truncated file?)");
  if (n > kMaxHeaderBytes) fail("header length ", n, " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.substr(8, n));
  } catch (const nlohmann::json::exception& e) {
    fail("header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) fail("header must be a JSON object; got ", header.type_name());

  const std::string_view data = bytes.substr(8 + n);
  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("__metadata__ must be an object of strings");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail("__metadata__ value for '", k, "' must be a string; got ", v.type_name());
        out.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail("tensor '", name, "' needs an object with dtype, shape and data_offsets");
    const auto& jd = entry["dtype"];
    DType dtype{};
    if (!jd.is_string() || !parse_file_dtype(jd.get<std::string>(), dtype))
      fail("tensor '", name, "' has dtype ", jd.dump(), "; attnlab reads F32, F64, BF16 and I32");
    const auto& js = entry["shape"];
    if (!js.is_array()) fail("tensor '", name, "' shape must be an array of sizes; got ", js.dump());
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    for (const auto& d : js) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40))
        fail("tensor '", name, "' has an invalid size ", d.dump(), " in shape ", js.dump());
      dims.push_back(d.get<int64_t>());
      numel *= d.get<uint64_t>();
      if (numel > (uint64_t{1} << 40)) fail("tensor '", name, "' shape ", js.dump(), " is too large");
    }
    const auto& jo = entry["data_offsets"];
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      fail("tensor '", name, "' data_offsets must be [begin, end]; got ", jo.dump());
    const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (begin > end || end > data.size())
      fail("tensor '", name, "' data_offsets [", begin, ", ", end, "] are outside the ", data.size(),
           " bytes of data");
    const uint64_t want = numel * dtype_size(dtype);
    if (end - begin != want)
      fail("tensor '", name, "' of shape ", Shape(dims), " ", dtype, " needs ", want, " bytes; data_offsets span ",
           end - begin);
    ranges.emplace_back(begin, end);
    Tensor t = Tensor::empty(Shape(std::move(dims)), dtype);
    if (want) std::memcpy(t.raw_data(), data.data() + begin, want);
    out.tensors.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) fail("tensor data ranges overlap");
  return out;
}

}  // namespace attnlab
