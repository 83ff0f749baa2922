#include "autograd/registry.h"

#include <mutex>
#include <sstream>

#include "lib/error.h"
#include "lib/rng.h"

namespace attnlab {

void OpRegistry::add(OpInfo info) {
  for (const OpInfo& o : ops_) AL_ASSERT(o.name != info.name, "op '", info.name, "' registered twice");
  ops_.push_back(std::move(info));
}

const OpInfo& OpRegistry::get(std::string_view name) const {
  std::ostringstream names;
  for (const OpInfo& o : ops_) {
    if (o.name == name) return o;
    names << (names.tellp() > 0 ? ", " : "") << o.name;
  }
  detail::throw_error<ConfigError>("unknown op '", name, "'; registered ops: ", names.str());
}

Tensor sample_randn(const Shape& shape, uint64_t seed, double scale) {
  Generator gen(seed);
  Tensor t = Tensor::empty(shape, DType::f64);
  fill_normal(t, gen, 0.0, scale);
  return t;
}

Tensor sample_uniform(const Shape& shape, uint64_t seed, double low, double high) {
  Generator gen(seed);
  Tensor t = Tensor::empty(shape, DType::f64);
  fill_uniform(t, gen, low, high);
  return t;
}

}  // namespace attnlab
