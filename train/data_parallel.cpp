// The training loop's data-parallel side (train/data_parallel.h).
#include "train/data_parallel.h"

#include <cstdlib>
#include <ostream>
#include <streambuf>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "lib/error.h"

namespace attnlab {

namespace {

// Where the ranks other than 0 print: nowhere.
class NullBuffer : public std::streambuf {
 protected:
  int overflow(int c) override { return c; }
  std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

std::ostream& null_stream() {
  static NullBuffer buffer;
  static std::ostream stream(&buffer);
  return stream;
}

// Rows [first, first + rows) of a [B, ...] tensor, as a contiguous tensor of its own.
Tensor rows_of(const Tensor& t, int64_t first, int64_t rows) {
  return t.defined() ? t.narrow(0, first, rows).contiguous() : t;
}

// The parameters' values, which the broadcast writes and the checksum reads.
std::vector<Tensor> parameter_values(const Gpt& model) {
  std::vector<Tensor> values;
  for (const Variable& p : model.parameters()) values.push_back(p.data());
  return values;
}

double mask_sum(const Tensor& mask) {
  double s = 0;
  for (const float v : mask.to(Device::cpu()).contiguous().to_vector<float>()) s += v;
  return s;
}

}  // namespace

DataParallelKeys read_data_parallel_keys(Recipe& r) {
  DataParallelKeys k;
  k.backend = r.get_string("dist.backend", k.backend);
  k.bucket_mb = r.get_double("dist.bucket_mb", k.bucket_mb);
  k.overlap = r.get_bool("dist.overlap", k.overlap);
  try {
    dist::check_backend_name(k.backend);
  } catch (const ConfigError& e) {
    detail::throw_error<ConfigError>("recipe ", r.source(), ": ", e.what());
  }
  AL_CHECK_CONFIG(k.bucket_mb > 0, "recipe ", r.source(), ": dist.bucket_mb must be > 0; got ", k.bucket_mb);
  return k;
}

DataParallel::DataParallel(const DataParallelKeys& keys, Device device, int64_t global_batch,
                           const std::string& recipe_src)
    : global_batch_(global_batch), local_batch_(global_batch) {
  try {
    comm_ = dist::make_communicator(device, keys.backend);
  } catch (const ConfigError& e) {
    detail::throw_error<ConfigError>("recipe ", recipe_src, ": ", e.what());
  }
  reducer_options_ =
      dist::ReducerOptions{.bucket_bytes = static_cast<int64_t>(keys.bucket_mb * 1024 * 1024), .overlap = keys.overlap};
  const int64_t w = comm_->world_size();
  if (w == 1) return;
  AL_CHECK_CONFIG(global_batch % w == 0, "recipe ", recipe_src, ": train.batch = ", global_batch,
                  " is the global batch and must split evenly over the ", w, " ranks (use a multiple of ", w,
                  ", or start ", w, " ranks that divide it)");
  local_batch_ = global_batch / w;
#ifdef _OPENMP
  // Ranks of one node share its cores: by default each takes its share rather than all of them
  // (OMP_NUM_THREADS, e.g. `mpirun -x OMP_NUM_THREADS=1`, decides when it is set).
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (!env || !*env) omp_set_num_threads(std::max(1, omp_get_num_procs() / std::max(1, comm_->local_size())));
#endif
}

DataParallel::~DataParallel() = default;

std::ostream& DataParallel::log(std::ostream& out) { return is_root() ? out : null_stream(); }

std::string DataParallel::describe(int threads) const {
  return std::to_string(world_size()) + " ranks (" + comm_->backend() + ", " + std::to_string(threads) +
         (threads == 1 ? " thread" : " threads") + " each), " + std::to_string(local_batch_) +
         (local_batch_ == 1 ? " row" : " rows") + " of the global batch of " + std::to_string(global_batch_) +
         " per rank";
}

Batch DataParallel::shard(const Batch& global) const {
  if (!several()) return global;
  const int64_t first = rank() * local_batch_;
  return Batch{rows_of(global.x, first, local_batch_), rows_of(global.y, first, local_batch_)};
}

TaskBatch DataParallel::shard(const TaskBatch& global) const {
  if (!several()) return global;
  const int64_t first = rank() * local_batch_;
  return TaskBatch{rows_of(global.x, first, local_batch_), rows_of(global.y, first, local_batch_),
                   rows_of(global.mask, first, local_batch_)};
}

double DataParallel::loss_weight(const TaskBatch& global) const {
  if (!several()) return 1.0;
  const double all = mask_sum(global.mask);
  const double mine = mask_sum(rows_of(global.mask, rank() * local_batch_, local_batch_));
  return all > 0 ? mine * static_cast<double>(world_size()) / all : 1.0;
}

void DataParallel::start(const Gpt& model) {
  if (several()) dist::broadcast_tensors(*comm_, parameter_values(model), 0);
  reducer_ = std::make_unique<dist::GradientReducer>(*comm_, model.parameters(), reducer_options_);
}

void DataParallel::backward(const Variable& loss) {
  AL_CHECK(reducer_, "DataParallel::backward before start()");
  reducer_->backward(loss);
}

double DataParallel::mean(double value) { return several() ? comm_->all_reduce(value, dist::ReduceOp::mean) : value; }

void DataParallel::check_in_sync(const Gpt& model, int64_t step) {
  if (!several()) return;
  if (dist::same_on_all_ranks(*comm_, dist::parameter_checksum(parameter_values(model)))) return;
  detail::throw_error<Error>("data-parallel ranks diverged at step ", step, ": the parameters of the ", world_size(),
                             " ranks are no longer the same (compared by checksum at each eval step). Every rank must "
                             "run the same attnlab build, recipe and data; a rank-dependent op or a hardware fault "
                             "can also cause it");
}

Generator DataParallel::rank_generator(const Generator& rank0) const {
  return Generator(rank0.seed() ^ (static_cast<uint64_t>(rank()) * 0xd1b54a32d192ed03ull), rank0.offset());
}

double DataParallel::last_wait_ms() const { return reducer_ ? 1000.0 * reducer_->last_stats().wait_seconds : 0.0; }

}  // namespace attnlab
