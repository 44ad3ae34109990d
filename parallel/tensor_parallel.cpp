#include "parallel/tensor_parallel.h"

#include <chrono>

namespace loom {

WorkPtr tp_sum_start(const TensorParallel& tp, void* x, size_t n) {
  if (!tp.comm) return nullptr;
  return tp.comm->all_reduce_async(x, n, tp.type, ReduceOp::kSum);
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
