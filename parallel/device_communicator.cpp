#include "parallel/device_communicator.h"

#include <utility>

#include "base/error.h"
#ifdef LOOM_WITH_NCCL
#include "parallel/nccl_communicator.h"
#endif

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

// What an operation on a group of one over device memory returns: it has already happened.
class DoneWork : public Work {
 public:
  bool is_completed() override { return true; }
  void wait() override {}
};

class DeviceCommunicator : public Communicator {
 public:
  DeviceCommunicator(std::unique_ptr<Communicator> inner,
                     std::shared_ptr<const kernels::KernelBackend> backend,
                     std::shared_ptr<std::atomic<uint64_t>> sent_bytes,
                     std::unique_ptr<Communicator> device)
      : inner_(std::move(inner)),
        device_(std::move(device)),
        backend_(std::move(backend)),
        sent_(std::move(sent_bytes)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  const std::vector<int>& global_ranks() const override { return inner_->global_ranks(); }

  WorkPtr all_reduce_async(void* data, size_t count, DataType type, ReduceOp op) override {
    count_sent(count, type);
    if (on_device(data)) {
      if (size() == 1) return done();
      return device_->all_reduce_async(data, count, type, op);
    }
    return lent([&] { return inner_->all_reduce_async(data, count, type, op); });
  }
  WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                               ReduceOp op) override {
    count_sent(count, type);
    if (on_device(in)) {
      if (size() == 1) return copied(in, out, count, type);
      return device_->reduce_scatter_async(in, out, count, type, op);
    }
    return lent([&] { return inner_->reduce_scatter_async(in, out, count, type, op); });
  }
  WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) override {
    count_sent(shard_range(count, size(), rank()).size(), type);
    if (on_device(out)) {
      if (size() == 1) return copied(shard, out, count, type);
      return device_->all_gather_async(shard, out, count, type);
    }
    return lent([&] { return inner_->all_gather_async(shard, out, count, type); });
  }
  WorkPtr broadcast_async(void* data, size_t count, DataType type, int root) override {
    if (rank() == root) count_sent(count, type);
    if (on_device(data)) {
      if (size() == 1) return done();
      return device_->broadcast_async(data, count, type, root);
    }
    return lent([&] { return inner_->broadcast_async(data, count, type, root); });
  }
  WorkPtr all_to_all_async(const void* in, void* out, size_t count, DataType type) override {
    count_sent(count * (size() - 1), type);  // its own block stays
    if (on_device(in)) {
      if (size() == 1) return copied(in, out, count, type);
      return device_->all_to_all_async(in, out, count, type);
    }
    return lent([&] { return inner_->all_to_all_async(in, out, count, type); });
  }
  WorkPtr send_async(const void* data, size_t count, DataType type, int peer) override {
    count_sent(count, type);
    if (on_device(data)) return device_->send_async(data, count, type, peer);
    return lent([&] { return inner_->send_async(data, count, type, peer); });
  }
  WorkPtr recv_async(void* data, size_t count, DataType type, int peer) override {
    if (on_device(data)) return device_->recv_async(data, count, type, peer);
    return lent([&] { return inner_->recv_async(data, count, type, peer); });
  }
  WorkPtr barrier_async() override { return inner_->barrier_async(); }

 private:
  // A buffer of the backend's memory that the host cannot reach goes through the device
  // transport (a group of one needs none: its collectives are copies or nothing).
  bool on_device(const void* p) const {
    if (!p || !backend_->device_memory(p)) return false;
    if (size() > 1 && !device_)
      throw Error("group " + name() + " has no transport for device memory (a GPU's buffers " +
                  "need NCCL, which this build lacks)");
    return true;
  }
  static WorkPtr done() { return std::make_shared<DoneWork>(); }
  WorkPtr copied(const void* in, void* out, size_t count, DataType type) {
    if (in != out) backend_->copy_bytes(out, in, count * data_type_size(type));
    return done();
  }

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

  std::unique_ptr<Communicator> inner_;   // host memory (MPI)
  std::unique_ptr<Communicator> device_;  // device memory (NCCL); null where there is none
  std::shared_ptr<const kernels::KernelBackend> backend_;
  std::shared_ptr<std::atomic<uint64_t>> sent_;
};

}  // namespace

DataType activation_data_type(const kernels::KernelBackend& be) {
  return be.activation_bytes() == 2 ? DataType::kBfloat16 : DataType::kFloat32;
}

std::unique_ptr<Communicator> make_device_communicator(
    std::unique_ptr<Communicator> inner, std::shared_ptr<const kernels::KernelBackend> backend,
    std::shared_ptr<std::atomic<uint64_t>> sent_bytes, double timeout_s) {
  std::unique_ptr<Communicator> device;
  if (backend->stream() && inner->size() > 1) {
#ifdef LOOM_WITH_NCCL
    NcclOptions options;
    options.timeout_s = timeout_s;
    options.device = backend->device();
    options.input_stream = backend->stream();
    device = nccl_communicator_create(*inner, options);
#else
    (void)timeout_s;
    throw Error("group " + inner->name() + ": a " + backend->name() +
                " backend with several ranks needs NCCL, and this build has none (no nccl.h "
                "or libnccl where CMake looked: /usr/local/cuda)");
#endif
  }
  return std::make_unique<DeviceCommunicator>(std::move(inner), std::move(backend),
                                              std::move(sent_bytes), std::move(device));
}

}  // namespace loom
