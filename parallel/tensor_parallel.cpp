#include "parallel/tensor_parallel.h"

#include <chrono>

#include "base/error.h"

namespace loom {

WorkPtr tp_sum_start(const TensorParallel& tp, void* x, size_t n) {
  if (!tp.comm) return nullptr;
  return tp.comm->all_reduce_async(x, n, tp.type, ReduceOp::kSum);
}

WorkPtr tp_complete_start(const TensorParallel& tp, void* partial, void* out, size_t n) {
  if (!tp.comm) return nullptr;
  if (!tp.sequence) {
    LOOM_CHECK(out == partial);
    return tp.comm->all_reduce_async(partial, n, tp.type, ReduceOp::kSum);
  }
  LOOM_CHECK(n % tp.size == 0);  // whole rows per rank (validate_parallel)
  return tp.comm->reduce_scatter_async(partial, out, n, tp.type, ReduceOp::kSum);
}

WorkPtr tp_gather_start(const TensorParallel& tp, const void* local, void* full, size_t n) {
  LOOM_CHECK(tp.comm && tp.sequence && n % tp.size == 0);
  return (tp.gather_comm ? tp.gather_comm : tp.comm)->all_gather_async(local, full, n, tp.type);
}

double tp_wait(TensorParallelSums& sums, WorkPtr& work) {
  if (!work) return 0.0;
  const auto start = std::chrono::steady_clock::now();
  work->wait();
  const double blocked =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  sums.wait_seconds += blocked;
  work.reset();
  return blocked;
}

void tp_drain(TensorParallelSums& sums) {
  for (std::vector<WorkPtr>* works : {&sums.forward, &sums.backward})
    for (WorkPtr& work : *works) {
      if (!work) continue;
      try {
        work->wait();
      } catch (const CommError&) {
      }
      work.reset();
    }
}

}  // namespace loom
