#include "data/byte_tokenizer.h"

#include "lib/error.h"
#include "lib/file_io.h"

namespace attnlab {

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    AL_CHECK(id >= 0 && id < kVocabSize, "ByteTokenizer::decode: id ", id, " at position ", i,
             " is outside the vocabulary [0, 256)");
    out.push_back(static_cast<char>(id));
  }
  return out;
}

std::string read_text_file(const std::string& path) {
  std::string text = read_file(path);
  AL_CHECK_IO(!text.empty(), "text file '", path, "' is empty");
  return text;
}

}  // namespace attnlab
