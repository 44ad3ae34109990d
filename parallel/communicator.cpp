#include "parallel/communicator.h"

#include <cstring>

#include "base/error.h"

namespace loom {

size_t data_type_size(DataType type) {
  switch (type) {
    case DataType::kFloat32: return 4;
    case DataType::kFloat64: return 8;
    case DataType::kInt64: return 8;
    case DataType::kByte: return 1;
    case DataType::kBfloat16: return 2;
  }
  LOOM_CHECK(false);
}

const char* data_type_name(DataType type) {
  switch (type) {
    case DataType::kFloat32: return "float32";
    case DataType::kFloat64: return "float64";
    case DataType::kInt64: return "int64";
    case DataType::kByte: return "bytes";
    case DataType::kBfloat16: return "bfloat16";
  }
  LOOM_CHECK(false);
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kAvg: return "avg";
    case ReduceOp::kMax: return "max";
  }
  LOOM_CHECK(false);
}

ShardRange shard_range(size_t n, int parts, int index) {
  LOOM_CHECK(parts > 0 && index >= 0 && index < parts);
  const size_t base = n / parts, extra = n % parts, i = static_cast<size_t>(index);
  const size_t begin = i * base + std::min(i, extra);
  return {begin, begin + base + (i < extra ? 1 : 0)};
}

namespace {

class CompletedWork : public Work {
 public:
  explicit CompletedWork(std::string error) : error_(std::move(error)) {}
  bool is_completed() override { return true; }
  void wait() override {
    if (!error_.empty()) throw CommError(error_);
  }

 private:
  std::string error_;
};

class SelfCommunicator : public Communicator {
 public:
  SelfCommunicator(std::string name, int global_rank) : name_(std::move(name)), ranks_{global_rank} {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  const std::vector<int>& global_ranks() const override { return ranks_; }

  WorkPtr all_reduce_async(void*, size_t, DataType, ReduceOp) override { return done(); }
  WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                               ReduceOp) override {
    return copy(in, out, count, type);
  }
  WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) override {
    return copy(shard, out, count, type);
  }
  WorkPtr broadcast_async(void*, size_t, DataType, int root) override {
    LOOM_CHECK(root == 0);
    return done();
  }
  WorkPtr all_to_all_async(const void* in, void* out, size_t count, DataType type) override {
    return copy(in, out, count, type);
  }
  WorkPtr send_async(const void*, size_t, DataType, int peer) override { return no_peer(peer); }
  WorkPtr recv_async(void*, size_t, DataType, int peer) override { return no_peer(peer); }
  WorkPtr barrier_async() override { return done(); }

 private:
  static WorkPtr done() { return make_completed_work(); }
  static WorkPtr copy(const void* in, void* out, size_t count, DataType type) {
    if (in != out && count > 0) std::memmove(out, in, count * data_type_size(type));
    return done();
  }
  WorkPtr no_peer(int peer) {
    return make_completed_work("send/recv to rank " + std::to_string(peer) + " in group " +
                               name_ + " of one rank");
  }
  std::string name_;
  std::vector<int> ranks_;
};

}  // namespace

WorkPtr make_completed_work(std::string error) {
  return std::make_shared<CompletedWork>(std::move(error));
}

std::unique_ptr<Communicator> make_self_communicator(const std::string& name, int global_rank) {
  return std::make_unique<SelfCommunicator>(name, global_rank);
}

}  // namespace loom
