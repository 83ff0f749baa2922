// safetensors files: an 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the raw little-endian tensor bytes, offsets relative to the end of the header.
// attnlab writes F32, F64, BF16 and I32 and reads the same. Writing is atomic (temporary file,
// flush, fsync, rename); reading validates everything and throws IoError naming the file and
// what was wrong, never reading out of bounds.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "lib/tensor.h"

namespace attnlab {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

SafetensorsFile load_safetensors(const std::string& path);

// Parses an in-memory file; `source` names it in error messages.
SafetensorsFile parse_safetensors(std::string_view bytes, std::string_view source);

// The bytes save_safetensors writes, without touching the file system.
std::string serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace attnlab
