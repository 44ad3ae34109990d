// A run's communication groups beyond the mesh's (parallel/groups.h): every group moved onto the
// backend's transport (parallel/device_communicator.h) with a counter of what it sends, and the
// replica groups of the pipeline stages that hold one shared tensor. Part of train()'s set-up
// (core/trainer.cpp).
//
//   loom::Traffic traffic;
//   loom::device_groups(groups, backend, traffic, timeout_s);
//   auto replicas = loom::create_replica_groups(model, groups, timeout_s, traffic);
#pragma once
#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/model.h"
#include "core/pipeline.h"
#include "parallel/groups.h"

namespace loom {

// The payload bytes this rank's groups sent (parallel/device_communicator.h), read and reset
// each step: tp, sp, pp, dp (dp × sp, the gradient reduction), replica (shared weights summed
// over pipeline stages) and world (the step's scalars).
struct Traffic {
  std::vector<std::pair<std::string, std::shared_ptr<std::atomic<uint64_t>>>> groups;
  std::shared_ptr<std::atomic<uint64_t>> counter(const std::string& name) {
    for (auto& [n, c] : groups)
      if (n == name) return c;
    groups.emplace_back(name, std::make_shared<std::atomic<uint64_t>>(0));
    return groups.back().second;
  }
};

// Every group of `groups` communicates through `backend` (parallel/device_communicator.h); the
// ones of more than one rank count what they send into `traffic`.
void device_groups(ProcessGroups& groups,
                   const std::shared_ptr<const kernels::KernelBackend>& backend, Traffic& traffic,
                   double timeout_s);

// Groups for the tensors several stages hold; collective over the world, the same order on every
// rank.
std::vector<ReplicaGroup> create_replica_groups(const Model& model, ProcessGroups& groups,
                                                double timeout_s, Traffic& traffic);

}  // namespace loom
