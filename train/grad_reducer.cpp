// Placeholder while the bucketed reducer is written (replaced before this lands).
#include "train/grad_reducer.h"

namespace attnlab::dist {

struct GradientReducer::State {};

GradientReducer::GradientReducer(Communicator& comm, std::vector<Variable>, ReducerOptions) : comm_(comm) {}
GradientReducer::~GradientReducer() = default;
void GradientReducer::backward(const Variable& loss) { loss.backward(); }
int64_t GradientReducer::num_buckets() const { return 0; }

}  // namespace attnlab::dist
