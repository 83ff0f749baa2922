#include "data/tokenizer.h"

#include "lib/error.h"

namespace attnlab {

Tensor tokens_to_tensor(const std::vector<int32_t>& ids) {
  return Tensor::from_vector(Shape{static_cast<int64_t>(ids.size())}, ids);
}

Tensor Tokenizer::encode_tensor(std::string_view text) const { return tokens_to_tensor(encode(text)); }

std::string Tokenizer::decode_tensor(const Tensor& ids) const {
  AL_CHECK_DTYPE(ids.dtype() == DType::i32, kind(), " tokenizer: decode needs i32 ids; got ", ids);
  return decode(ids.to_vector<int32_t>());
}

}  // namespace attnlab
