#include "data/byte_tokenizer.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "lib/error.h"

namespace attnlab {

Tensor ByteTokenizer::encode(std::string_view text) const {
  Tensor ids = Tensor::empty(Shape{static_cast<int64_t>(text.size())}, DType::i32);
  int32_t* p = ids.data<int32_t>();
  for (size_t i = 0; i < text.size(); ++i) p[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const Tensor& ids) const {
  AL_CHECK_DTYPE(ids.dtype() == DType::i32, "ByteTokenizer::decode: ids must be i32; got ", ids);
  std::string out;
  out.reserve(static_cast<size_t>(ids.numel()));
  for (int32_t id : ids.to_vector<int32_t>()) {
    AL_CHECK(id >= 0 && id < kVocabSize, "ByteTokenizer::decode: id ", id, " is outside [0, 256) in ids ", ids);
    out.push_back(static_cast<char>(id));
  }
  return out;
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AL_CHECK_IO(in.good(), "cannot open text file '", path, "': ", std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  AL_CHECK_IO(!in.bad(), "reading '", path, "' failed");
  std::string text = buf.str();
  AL_CHECK_IO(!text.empty(), "text file '", path, "' is empty");
  return text;
}

}  // namespace attnlab
