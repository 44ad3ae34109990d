#include "parallel/vocab_parallel.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "base/error.h"
#include "parallel/device_communicator.h"

namespace loom {

VocabShard vocab_shard(int V, int parts, int rank) {
  VocabShard s;
  s.rows = (V + parts - 1) / parts;
  s.vocab_begin = rank * s.rows;
  s.valid = std::clamp(V - s.vocab_begin, 0, s.rows);
  return s;
}

// Scratch layout: the (chunk, rows) logits block in the backend's activation type, padded to 16
// bytes, then row_max (chunk) and sums (chunk, 2) in fp32.
namespace {

size_t logits_block_bytes(const kernels::KernelBackend& be, int chunk, int rows) {
  return (static_cast<size_t>(chunk) * rows * be.activation_bytes() + 15) / 16 * 16;
}

}  // namespace

size_t vocab_parallel_scratch_bytes(const kernels::KernelBackend& be, int chunk, int rows) {
  return logits_block_bytes(be, chunk, rows) + 3 * static_cast<size_t>(chunk) * sizeof(float);
}

double vocab_parallel_cross_entropy(const kernels::KernelBackend& be, Communicator& tp, void* dx,
                                    float* dweight, const void* x, const void* weight,
                                    const int* targets, int N, int C, const VocabShard& shard,
                                    float grad_scale, void* scratch, int chunk,
                                    double* wait_seconds) {
  // The statistics are fp32; dx is an activation (bf16 on a bf16 backend).
  const size_t bytes = be.activation_bytes();
  void* logits = scratch;
  float* row_max = reinterpret_cast<float*>(static_cast<char*>(scratch) +
                                            logits_block_bytes(be, chunk, shard.rows));
  float* sums = row_max + chunk;
  // Blocking on the group: timed, as exposed communication.
  auto wait = [wait_seconds](const WorkPtr& work) {
    const auto start = std::chrono::steady_clock::now();
    work->wait();
    if (wait_seconds)
      *wait_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  double loss_sum = 0.0;
  std::vector<WorkPtr> dx_sums;  // one per chunk
  for (int n0 = 0; n0 < N; n0 += chunk) {
    const int n = std::min(chunk, N - n0);
    const void* x_chunk = static_cast<const char*>(x) + static_cast<size_t>(n0) * C * bytes;
    be.matmul_forward(logits, x_chunk, weight, nullptr, n, C, shard.rows);
    be.cross_entropy_local_max(row_max, logits, n, shard.rows, shard.valid);
    wait(tp.all_reduce_async(row_max, n, DataType::kFloat32, ReduceOp::kMax));
    be.cross_entropy_local_sums(sums, logits, row_max, targets + n0, n, shard.rows, shard.valid,
                                shard.vocab_begin);
    wait(tp.all_reduce_async(sums, 2 * static_cast<size_t>(n), DataType::kFloat32, ReduceOp::kSum));
    loss_sum += be.cross_entropy_local_loss(row_max, sums, n);
    if (!dx) continue;
    be.cross_entropy_local_grad(logits, row_max, sums, targets + n0, n, shard.rows, shard.valid,
                                shard.vocab_begin, grad_scale);
    // dx_chunk (n, C) = dlogits · weight, this rank's part: its sum over the group runs while
    // dweight += dlogitsᵀ · x_chunk computes (and the next chunk).
    void* dx_chunk = static_cast<char*>(dx) + static_cast<size_t>(n0) * C * bytes;
    be.matmul_backward(dx_chunk, nullptr, nullptr, logits, x_chunk, weight, n, C, shard.rows);
    dx_sums.push_back(tp.all_reduce_async(dx_chunk, static_cast<size_t>(n) * C,
                                          activation_data_type(be), ReduceOp::kSum));
    be.matmul_backward(nullptr, dweight, nullptr, logits, x_chunk, weight, n, C, shard.rows);
  }
  for (const WorkPtr& w : dx_sums) wait(w);
  return loss_sum;
}

}  // namespace loom
