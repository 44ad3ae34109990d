#include "parallel/device_communicator.h"

#include <utility>

namespace loom {
namespace {

// The inner operation's handle, holding the backend's lend until the operation has completed.
class LendingWork : public Work {
 public:
  LendingWork(WorkPtr inner, std::shared_ptr<void> lend)
      : inner_(std::move(inner)), lend_(std::move(lend)) {}
  bool is_completed() override {
    if (!inner_->is_completed()) return false;
    lend_.reset();
    return true;
  }
  void wait() override {
    try {
      inner_->wait();
    } catch (...) {
      lend_.reset();
      throw;
    }
    lend_.reset();
  }

 private:
  WorkPtr inner_;
  std::shared_ptr<void> lend_;
};

class DeviceCommunicator : public Communicator {
 public:
  DeviceCommunicator(std::unique_ptr<Communicator> inner,
                     std::shared_ptr<const kernels::KernelBackend> backend,
                     std::shared_ptr<std::atomic<uint64_t>> sent_bytes)
      : inner_(std::move(inner)), backend_(std::move(backend)), sent_(std::move(sent_bytes)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  const std::vector<int>& global_ranks() const override { return inner_->global_ranks(); }

  WorkPtr all_reduce_async(void* data, size_t count, DataType type, ReduceOp op) override {
    count_sent(count, type);
    return lent([&] { return inner_->all_reduce_async(data, count, type, op); });
  }
  WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                               ReduceOp op) override {
    count_sent(count, type);
    return lent([&] { return inner_->reduce_scatter_async(in, out, count, type, op); });
  }
  WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) override {
    count_sent(shard_range(count, size(), rank()).size(), type);
    return lent([&] { return inner_->all_gather_async(shard, out, count, type); });
  }
  WorkPtr broadcast_async(void* data, size_t count, DataType type, int root) override {
    if (rank() == root) count_sent(count, type);
    return lent([&] { return inner_->broadcast_async(data, count, type, root); });
  }
  WorkPtr send_async(const void* data, size_t count, DataType type, int peer) override {
    count_sent(count, type);
    return lent([&] { return inner_->send_async(data, count, type, peer); });
  }
  WorkPtr recv_async(void* data, size_t count, DataType type, int peer) override {
    return lent([&] { return inner_->recv_async(data, count, type, peer); });
  }
  WorkPtr barrier_async() override { return inner_->barrier_async(); }

 private:
  void count_sent(size_t count, DataType type) {
    if (sent_) sent_->fetch_add(count * data_type_size(type), std::memory_order_relaxed);
  }
  template <class Start>
  WorkPtr lent(Start start) {
    std::shared_ptr<void> lend = backend_->lend_to_host();
    WorkPtr work = start();
    if (!lend) return work;
    return std::make_shared<LendingWork>(std::move(work), std::move(lend));
  }

  std::unique_ptr<Communicator> inner_;
  std::shared_ptr<const kernels::KernelBackend> backend_;
  std::shared_ptr<std::atomic<uint64_t>> sent_;
};

}  // namespace

DataType activation_data_type(const kernels::KernelBackend& be) {
  return be.activation_bytes() == 2 ? DataType::kBfloat16 : DataType::kFloat32;
}

std::unique_ptr<Communicator> make_device_communicator(
    std::unique_ptr<Communicator> inner, std::shared_ptr<const kernels::KernelBackend> backend,
    std::shared_ptr<std::atomic<uint64_t>> sent_bytes) {
  return std::make_unique<DeviceCommunicator>(std::move(inner), std::move(backend),
                                              std::move(sent_bytes));
}

}  // namespace loom
