// Whole-file reads and atomic writes. Nothing attnlab writes is ever half-written: the bytes go
// to a temporary file beside the target, are flushed to disk, then renamed over it.
#pragma once

#include <string>
#include <string_view>

namespace attnlab {

// Writes `bytes` to `path` atomically; IoError naming the path on any failure (the target is
// then untouched and no temporary file remains).
void write_file_atomic(const std::string& path, std::string_view bytes);

// The whole file; IoError naming the path when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace attnlab
