// Tensor-parallel parameter shards and their global form.
//
// Under tensor parallelism each rank's flat buffers (parameters, gradients, Adam moments) hold
// its shards (ParamTensor in core/model.h says how a tensor is cut). Checkpoints, init and export
// see global tensors: the buffer of the same model at tp = 1, tensors in the same order. These
// functions move between the two.
//
//   std::vector<float> global;
//   loom::model_gather_global(model, model.params.download().data(), global);  // collective
//   loom::tensor_shard_extract(t, model.tp.rank, whole_tensor, model.params.data() + t.offset);
#pragma once
#include <vector>

#include "core/model.h"

namespace loom {

// Elements of the global tensor (t.global_shape).
size_t tensor_global_size(const ParamTensor& t);

// this rank's shard (t.shape) ← the global tensor (t.global_shape, row-major); padding rows of a
// padded vocabulary become 0.
void tensor_shard_extract(const ParamTensor& t, int rank, const float* global, float* local);
// The global tensor's elements that rank `rank` holds ← its shard; padding rows are dropped.
void tensor_shard_insert(const ParamTensor& t, int rank, const float* local, float* global);

// A run of elements contiguous both in the global tensor and in rank `rank`'s shard: global
// index (row-major in t.global_shape), index into the shard, length; padding runs (a padded
// vocabulary's rows past the end) have no global place.
struct ShardRun {
  size_t global = 0, local = 0, count = 0;
  bool padding = false;
};
std::vector<ShardRun> tensor_shard_runs(const ParamTensor& t, int rank);

// Floats of the global buffer (the model's layout at tp = 1).
size_t model_global_floats(const Model& m);

// On tensor-parallel rank 0: global (model_global_floats) ← every rank's `local` buffer (host
// memory laid out
// as m.params: a download of it), received one rank at a time; on the other ranks global is left empty. Collective
// over m.tp.comm (every rank calls it).
void model_gather_global(const Model& m, const float* local, std::vector<float>& global);

// This rank's share of Σ g² over the global gradient: its shards of sharded tensors, the
// replicated tensors (identical on every tensor-parallel rank) on tp rank 0 only, and a tensor
// held by several pipeline stages (summed across them) on the lowest only, so a sum over the tp
// and pp groups counts every global element once. `grads` holds the `owned` ranges of the flat
// buffer compactly (Optimizer's layout).
double grad_sum_squares(const Model& m, const std::vector<ShardRange>& owned, const float* grads);

}  // namespace loom
