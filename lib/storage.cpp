#include "lib/storage.h"

#include <cstdlib>
#include <new>

#include "lib/error.h"

namespace attnlab {

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  AL_CHECK_DEVICE(device.is_cpu(), "storage: device ", device, " is not available in this build of attnlab");
  // aligned_alloc needs a size that is a multiple of the alignment; never 0 so data() is valid.
  size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded == 0) rounded = kAlignment;
  data_ = std::aligned_alloc(kAlignment, rounded);
  if (!data_) throw std::bad_alloc();
}

Storage::~Storage() { std::free(data_); }

}  // namespace attnlab
