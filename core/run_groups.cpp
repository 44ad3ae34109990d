#include "core/run_groups.h"

#include "parallel/device_communicator.h"

namespace loom {

void device_groups(ProcessGroups& groups,
                   const std::shared_ptr<const kernels::KernelBackend>& backend, Traffic& traffic,
                   double timeout_s) {
  const std::pair<std::unique_ptr<Communicator>*, const char*> all[] = {
      {&groups.world, "world"}, {&groups.dp, nullptr}, {&groups.pp, "pp"},
      {&groups.sp, "sp"},       {&groups.tp, "tp"},    {&groups.dp_sp, "dp"}};
  for (auto [comm, name] : all) {  // dp alone carries nothing of its own: dp_sp reduces gradients
    auto sent = name && (*comm)->size() > 1 ? traffic.counter(name) : nullptr;
    *comm = make_device_communicator(std::move(*comm), backend, std::move(sent), timeout_s);
  }
  if (groups.tp_gather)
    groups.tp_gather = make_device_communicator(std::move(groups.tp_gather), backend,
                                                traffic.counter("tp"), timeout_s);
}

std::vector<ReplicaGroup> create_replica_groups(const Model& model, ProcessGroups& groups,
                                                double timeout_s, Traffic& traffic) {
  std::vector<ReplicaGroup> out;
  if (!groups.mpi) return out;
  for (const std::vector<int>& holders : pipeline_replica_sets(model)) {
    std::string name = "replica";
    for (int s : holders) name.append("_").append(std::to_string(s));
    std::unique_ptr<Communicator> comm = process_groups_pipeline_subset(groups, holders, name);
    if (comm)
      comm = make_device_communicator(std::move(comm), model.buf.backend,
                                      traffic.counter("replica"), timeout_s);
    out.push_back({holders, std::move(comm)});
  }
  return out;
}

}  // namespace loom
