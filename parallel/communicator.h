// Collective communication within one group of ranks: the seam between loom's parallel machinery
// and a transport (MPI for host memory, NCCL for device memory).
//
// Every operation comes async (returning a Work handle) and blocking (the async one, waited on).
// Ordering rule, as in NCCL and c10d: every rank of a group calls the group's collectives in the
// same order with the same sizes; send/recv pairs match in the order they are called between two
// ranks. Buffers must stay valid and untouched until the Work completes.
//
// Sharded operations split n elements over the group's p ranks with shard_range(n, p, rank): the
// first n % p ranks get one element more. Sizes that do not divide p, and n = 0, are allowed.
//
//   std::shared_ptr<loom::Work> w = comm.all_reduce_async(grads, n, loom::ReduceOp::kAvg);
//   compute_something_else();
//   w->wait();                     // throws loom::CommError on failure or timeout
//   comm.all_gather(shard, full, n);
#pragma once
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace loom {

// A communication failure: timeout, a peer that failed, a transport error. The message names
// the group, the operation and, when known, the ranks involved.
class CommError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class ReduceOp { kSum, kAvg, kMax };
// kBfloat16: bf16 activations (the upper half of an fp32); sums and maxima of it are computed in
// fp32 and rounded to nearest even once per step of the reduction.
enum class DataType { kFloat32, kFloat64, kInt64, kByte, kBfloat16 };

size_t data_type_size(DataType type);
const char* data_type_name(DataType type);  // "float32", "bfloat16", ...
const char* reduce_op_name(ReduceOp op);

struct ShardRange {
  size_t begin = 0, end = 0;
  size_t size() const { return end - begin; }
};
// Elements [begin, end) of n that rank `index` of `parts` owns.
ShardRange shard_range(size_t n, int parts, int index);

// Handle of one async operation.
class Work {
 public:
  virtual ~Work() = default;
  // True once the operation finished (successfully or not); never blocks.
  virtual bool is_completed() = 0;
  // Blocks until the operation finished; throws CommError if it failed. Idempotent.
  virtual void wait() = 0;
};
using WorkPtr = std::shared_ptr<Work>;

// One group's communicator. `rank()` is the position in the group, 0 .. size() − 1.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The group's name in messages, e.g. "dp" or "world", and its members' global ranks.
  virtual const std::string& name() const = 0;
  virtual const std::vector<int>& global_ranks() const = 0;

  // data (count elements) ← op over the group, on every rank. kAvg divides the sum by size().
  virtual WorkPtr all_reduce_async(void* data, size_t count, DataType type, ReduceOp op) = 0;
  // out (shard_range(count, size(), rank()).size() elements) ← op over the group of in[count],
  // this rank's shard of the result.
  virtual WorkPtr reduce_scatter_async(const void* in, void* out, size_t count, DataType type,
                                       ReduceOp op) = 0;
  // out[count] ← the concatenation of every rank's shard; `shard` holds this rank's shard
  // (shard_range(count, size(), rank())). `shard` may point into `out` at the shard's place.
  virtual WorkPtr all_gather_async(const void* shard, void* out, size_t count, DataType type) = 0;
  // data (count elements) ← root's data, on every rank.
  virtual WorkPtr broadcast_async(void* data, size_t count, DataType type, int root) = 0;
  // out (size() · count) ← block r of every rank r's `in`: `in` holds size() blocks of count
  // elements, block j for rank j; out's block r is what rank r sent this one. in and out must
  // not overlap.
  virtual WorkPtr all_to_all_async(const void* in, void* out, size_t count, DataType type) = 0;
  virtual WorkPtr send_async(const void* data, size_t count, DataType type, int peer) = 0;
  virtual WorkPtr recv_async(void* data, size_t count, DataType type, int peer) = 0;
  virtual WorkPtr barrier_async() = 0;

  // Blocking forms, with float data by default.
  void all_reduce(float* data, size_t count, ReduceOp op = ReduceOp::kSum) {
    all_reduce_async(data, count, DataType::kFloat32, op)->wait();
  }
  void all_reduce(double* data, size_t count, ReduceOp op = ReduceOp::kSum) {
    all_reduce_async(data, count, DataType::kFloat64, op)->wait();
  }
  void reduce_scatter(const float* in, float* out, size_t count, ReduceOp op = ReduceOp::kSum) {
    reduce_scatter_async(in, out, count, DataType::kFloat32, op)->wait();
  }
  void all_gather(const float* shard, float* out, size_t count) {
    all_gather_async(shard, out, count, DataType::kFloat32)->wait();
  }
  void broadcast(void* data, size_t count, DataType type, int root) {
    broadcast_async(data, count, type, root)->wait();
  }
  void send(const void* data, size_t count, DataType type, int peer) {
    send_async(data, count, type, peer)->wait();
  }
  void recv(void* data, size_t count, DataType type, int peer) {
    recv_async(data, count, type, peer)->wait();
  }
  void barrier() { barrier_async()->wait(); }
};

// A group of one rank: every operation completes at once (copies where in and out differ).
// What a single-process run uses, so callers need no special case.
std::unique_ptr<Communicator> make_self_communicator(const std::string& name, int global_rank);

// A Work that is already complete (optionally with an error).
WorkPtr make_completed_work(std::string error = "");

}  // namespace loom
