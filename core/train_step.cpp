#include "core/train_step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "base/error.h"
#include "core/param_shards.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// With sequence parallelism the model takes this rank's rows of each sequence: the micro-batches'
// (B, T) inputs and targets cut to (B, T / sp) in `local`; T becomes the local length.
MicroBatches sequence_part(const Model& model, MicroBatches batch, std::vector<int>& local) {
  if (model.par.sp.size == 1) return batch;
  const int Tl = batch.T / model.par.sp.size;
  const size_t tokens = static_cast<size_t>(batch.B) * Tl, whole = static_cast<size_t>(batch.B) * batch.T;
  local.resize(2 * tokens * batch.count);
  int* inputs = local.data();
  int* targets = local.data() + tokens * batch.count;
  LOOM_CHECK(static_cast<int>(model.temps.positions.size()) == Tl);  // planned for this length
  for (int k = 0; k < batch.count; ++k) {
    sequence_select(model.temps.positions, batch.inputs + k * whole, inputs + k * tokens, batch.B,
                    batch.T);
    if (batch.targets)
      sequence_select(model.temps.positions, batch.targets + k * whole, targets + k * tokens,
                      batch.B, batch.T);
  }
  batch.inputs = inputs;
  if (batch.targets) batch.targets = targets;
  batch.T = Tl;
  return batch;
}

// The step's sums over the data-parallel ranks, in one all-reduce: the loss (averaged), under
// ZeRO the shards' squared norms, the recomputed FLOPs, and what the router did (averaged; the
// FLOPs summed).
void reduce_over_dp(Communicator& dp, StepResult& result, double& squares, bool zero,
                    double& recomputed) {
  RoutingStats& routing = result.routing;
  std::vector<double> sums = {result.loss, zero ? squares : 0.0, recomputed};
  const bool routed = !routing.active_fraction.empty();
  if (routed) {
    sums.insert(sums.end(), {routing.aux_loss, result.step_flops});
    sums.insert(sums.end(), routing.active_fraction.begin(), routing.active_fraction.end());
  }
  dp.all_reduce(sums.data(), sums.size(), ReduceOp::kSum);
  const double ranks = dp.size();
  result.loss = sums[0] / ranks;
  if (zero) squares = sums[1];
  recomputed = sums[2];
  if (!routed) return;
  routing.aux_loss = sums[3] / ranks;
  result.step_flops = sums[4];
  for (size_t r = 0; r < routing.active_fraction.size(); ++r)
    routing.active_fraction[r] = sums[5 + r] / ranks;
}

// A step's gradients start at zero: the whole buffer, or ZeRO-2's windows; the reductions know
// that nothing is final yet.
void begin_gradients(Model& model, const StepParallel& parallel) {
  if (model.buf.grad_windows)
    grad_windows_begin(*model.buf.grad_windows);
  else
    model.buf.backend->zero_bytes(model.buf.grads.data(), model.layout.num_params * sizeof(float));
  if (parallel.reducer) grad_reducer_begin(*parallel.reducer);
  if (parallel.replicas) replica_sync_begin(*parallel.replicas);
}

// Where backward's final ranges go for the data-parallel reduction: the buckets, ZeRO-2's windows
// or nowhere.
GradsFinalFn reduction_of(GradReducer* reducer, GradWindows* windows) {
  if (reducer)
    return [reducer](size_t offset, size_t count) { grad_reducer_ready(*reducer, offset, count); };
  if (windows)
    return [windows](size_t offset, size_t count) { grad_windows_ready(*windows, offset, count); };
  return {};
}

// After the last backward: the replicas' sums and the data-parallel reduction finished. Returns
// this rank's averaged shard of the gradients under ZeRO-1 and 2, else null.
const float* finish_reductions(Model& model, const StepParallel& parallel,
                               const GradsFinalFn& to_reducer, StepResult& result) {
  flight_phase(parallel.flight, "gradient reduction");
  if (ReplicaSync* replicas = parallel.replicas) {
    replica_sync_finish(*replicas, to_reducer);
    result.comm_wait_s += replicas->wait_seconds;
  }
  if (GradReducer* reducer = parallel.reducer) {
    TraceSpan span(parallel.trace, "dp reduce", "dp_reduce");
    grad_reducer_finish(*reducer);
    result.comm_wait_s += reducer->wait_seconds;
    return reducer->zero ? reducer->shard : nullptr;
  }
  if (GradWindows* windows = model.buf.grad_windows) {
    TraceSpan span(parallel.trace, "dp reduce", "dp_reduce");
    grad_windows_finish(*windows);
    result.comm_wait_s += windows->wait_seconds;
    return windows->shard;
  }
  return nullptr;
}

// The squares and the recomputed FLOPs summed over tp, then with the last stage's loss over pp.
void sum_over_tp_and_pp(const Model& model, Communicator* pp, double& loss, double& squares,
                        double& recomputed) {
  if (model.par.tp.comm) {
    double sums[2] = {squares, recomputed};
    model.par.tp.comm->all_reduce(sums, 2, ReduceOp::kSum);
    squares = sums[0];
    recomputed = sums[1];
  }
  if (pp && pp->size() > 1) {  // the last stage's loss and every stage's squares, in one
    double sums[3] = {loss, squares, recomputed};
    pp->all_reduce(sums, 3, ReduceOp::kSum);
    loss = sums[0];
    squares = sums[1];
    recomputed = sums[2];
  }
}

}  // namespace

StepResult train_step(Model& model, Optimizer& optimizer, Pipeline& pipe,
                      const config::RunConfig& cfg, float lr, const int* inputs,
                      const int* targets, const StepParallel& parallel) {
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len() / model.par.sp.size;
  const int m = pipe.micro_batches;
  ReplicaSync* replicas = parallel.replicas;
  begin_gradients(model, parallel);
  model_begin_passes(model, parallel.trace);
  pipe.wait_seconds = 0.0;
  pipe.trace = parallel.trace;
  pipe.flight = parallel.flight;
  StepResult result;
  // Each rank's gradients are the mean over its tokens (its part of the sequences with sp > 1);
  // the reduction averages over the dp × sp ranks, which hold equally many.
  const float scale = 1.0f / static_cast<float>(static_cast<size_t>(B) * T * m);
  // Gradients are reduced once, during the last micro-batch's backward: data-parallel buckets
  // start as soon as their gradients are final; replicated ones after their sum over stages.
  const GradsFinalFn to_reducer = reduction_of(parallel.reducer, model.buf.grad_windows);
  // The model finishes some gradients as it reports them final (the tensor-parallel sum of the
  // norms' under sequence parallelism): the last micro-batch is marked by a callback even with
  // nothing to reduce.
  GradsFinalFn on_final = to_reducer ? to_reducer : GradsFinalFn([](size_t, size_t) {});
  if (replicas)
    on_final = [&](size_t offset, size_t count) {
      replica_sync_ready(*replicas, offset, count, to_reducer);
    };
  std::vector<int> local;
  const MicroBatches batch =
      sequence_part(model, {inputs, targets, m, B, cfg.train().seq_len(), scale}, local);
  const double loss_sum = pipeline_run(pipe, model, pipe.train, batch, true, on_final);
  result.loss = loss_sum / m;
  const float* shard = finish_reductions(model, parallel, to_reducer, result);
  const bool zero = shard != nullptr;
  // Σ g² of this rank's part of the global gradient: its ZeRO shard or its whole buffer, each
  // global element counted on one tensor-parallel rank and one pipeline stage.
  double squares = grad_sum_squares(model, optimizer.owned, zero ? shard : model.buf.grads.data());
  flight_phase(parallel.flight, "loss and gradient norm");
  const auto start = Clock::now();
  std::optional<TraceSpan> sums_span(std::in_place, parallel.trace, "loss and norm sums",
                                     "sum_wait");
  double recomputed = model_recompute_flops(model);
  sum_over_tp_and_pp(model, parallel.pp, result.loss, squares, recomputed);
  result.routing = model_routing_stats(model);
  result.step_flops = result.routing.train_flops_per_token * static_cast<double>(B) * T * m;
  if (parallel.dp) reduce_over_dp(*parallel.dp, result, squares, zero, recomputed);
  // Model FLOPs: every data-parallel replica's tokens (dp × sp ranks hold B·T each), at the
  // whole sequence length.
  const int sequence_ranks = model.par.sp.size;
  const double step_tokens =
      static_cast<double>(B) * T * m * (parallel.dp ? parallel.dp->size() : 1);
  result.model_flops = result.routing.active_fraction.empty()
                           ? model_train_flops_per_token(model, T * sequence_ranks) * step_tokens
                           : result.step_flops;
  result.hardware_flops = result.model_flops + recomputed;
  sums_span.reset();
  result.grad_norm = std::sqrt(squares);
  result.comm_wait_s += model_comm_wait_seconds(model) + pipe.wait_seconds + seconds_since(start);
  result.finite = std::isfinite(result.loss) && std::isfinite(result.grad_norm);
  if (!result.finite) return result;
  flight_phase(parallel.flight, "optimizer");
  TraceSpan span(parallel.trace, "optimizer", "optimizer");
  optimizer_step(optimizer, model, cfg.optim(), lr,
                 clip_scale(result.grad_norm, cfg.train().grad_clip()), shard);
  if (zero) {
    const auto start = Clock::now();
    TraceSpan gather_span(parallel.trace, "zero gather", "zero_gather");
    if (model.buf.grad_windows)
      grad_windows_gather_in_place(*model.buf.grad_windows, model.buf.params.data());
    else
      grad_reducer_gather_in_place(*parallel.reducer, model.buf.params.data());
    result.comm_wait_s += seconds_since(start);
  }
  model_refresh_weights(model);
  return result;
}

double evaluate(Model& model, Pipeline& pipe, const TokenDataset& val, int batches,
                int global_batch, int B, int T, const DataShare& share, Communicator& dp_sp,
                Communicator* pp) {
  DataLoader loader{&val, 0, false};
  const int micro_batches = batches * (global_batch / B);
  const size_t tokens = static_cast<size_t>(B) * T;
  // This dp rank's micro-batches: every share.size-th, from its rank.
  const int mine =
      micro_batches > share.rank ? (micro_batches - 1 - share.rank) / share.size + 1 : 0;
  std::vector<int> inputs(mine * tokens), targets(mine * tokens);
  for (int k = 0; k < mine; ++k) {
    loader.position = static_cast<int64_t>(share.rank + k * share.size) * B;
    loader_next(loader, inputs.data() + k * tokens, targets.data() + k * tokens, B);
  }
  double total = 0.0;
  if (mine > 0) {
    const int v = static_cast<int>(model.par.chunks.size());
    const std::vector<PipelineAction> forwards =
        pipeline_forward_schedule(pipe.size, mine, v, pipe.rank, pipeline_v_shape(pipe.kind));
    pipe.trace = nullptr;
    pipe.flight = nullptr;  // the caller's phase ("evaluation") stands
    model_begin_passes(model, nullptr);
    std::vector<int> local;
    total = pipeline_run(pipe, model, forwards,
                         sequence_part(model, {inputs.data(), targets.data(), mine, B, T, 0.0f},
                                       local),
                         false, {});
  }
  if (pp && pp->size() > 1) pp->all_reduce(&total, 1, ReduceOp::kSum);  // the last stage's
  // Each sp rank's loss is the mean over its part of the tokens: their mean is the sequences'.
  dp_sp.all_reduce(&total, 1, ReduceOp::kSum);
  return total / micro_batches / model.par.sp.size;
}

}  // namespace loom
