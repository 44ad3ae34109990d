#include "core/cluster.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <vector>

#include "base/error.h"
#include "base/regular_file.h"

namespace loom {
namespace {

namespace pb = google::protobuf;

class Errors : public pb::io::ErrorCollector {
 public:
  void AddError(int line, int column, const std::string& message) override {
    if (text.empty())
      text = "line " + std::to_string(line + 1) + ", column " + std::to_string(column + 1) + ": " +
             message;
  }
  std::string text;
};

// Every field is required and every figure positive (efficiencies at most 1).
void check_cluster(const ClusterConfig& c, const std::string& source) {
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw Error(source + ": " + what);
  };
  need(c.has_name() && c.has_device() && c.has_devices_per_node() && c.has_intra_node() &&
           c.has_inter_node() && c.has_collective_latency_us(),
       "a cluster needs name, device, devices_per_node, intra_node, inter_node and "
       "collective_latency_us");
  const ClusterConfig::Device& d = c.device();
  need(d.has_fp32_tflops() && d.has_bf16_tflops() && d.has_memory_gib() && d.has_memory_gbs() &&
           d.has_gemm_efficiency() && d.has_memory_efficiency(),
       "device needs fp32_tflops, bf16_tflops, memory_gib, memory_gbs, gemm_efficiency and "
       "memory_efficiency");
  need(d.fp32_tflops() > 0 && d.bf16_tflops() > 0 && d.memory_gib() > 0 && d.memory_gbs() > 0,
       "device peaks, memory and bandwidth must be positive");
  need(d.gemm_efficiency() > 0 && d.gemm_efficiency() <= 1 && d.memory_efficiency() > 0 &&
           d.memory_efficiency() <= 1,
       "device efficiencies are fractions in (0, 1]");
  need(c.devices_per_node() >= 1, "devices_per_node must be at least 1");
  for (const auto& [link, name] :
       {std::pair{&c.intra_node(), "intra_node"}, std::pair{&c.inter_node(), "inter_node"}})
    need(link->has_bandwidth_gbs() && link->bandwidth_gbs() > 0 && link->has_latency_us() &&
             link->latency_us() >= 0,
         std::string(name) + " needs a positive bandwidth_gbs and a latency_us of at least 0");
  need(c.collective_latency_us() >= 0, "collective_latency_us must not be negative");
}

LinkCost link_cost(const ClusterConfig& c, bool inter) {
  const ClusterConfig::Link& l = inter ? c.inter_node() : c.intra_node();
  return {c.collective_latency_us() * 1e-6, l.latency_us() * 1e-6, l.bandwidth_gbs() * 1e9, inter};
}

}  // namespace

ClusterConfig parse_cluster(const std::string& text, const std::string& source) {
  ClusterConfig c;
  pb::TextFormat::Parser parser;
  Errors errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &c))
    throw Error(source +
                ": not a cluster description (configs/loom.proto, ClusterConfig): " + errors.text);
  check_cluster(c, source);
  return c;
}

ClusterConfig load_cluster(const std::string& path) {
  return parse_cluster(read_regular_file(path, size_t{1} << 20, "the cluster description"), path);
}

LinkCost group_link(const ClusterConfig& c, const Mesh& mesh, Axis axis) {
  const int per_node = c.devices_per_node();
  bool inter = false;
  for (int rank = 0; rank < mesh.world_size() && !inter; ++rank) {
    const std::vector<int> group = mesh_group(mesh, rank, axis);
    const auto [lo, hi] = std::minmax_element(group.begin(), group.end());
    inter = *lo / per_node != *hi / per_node;
  }
  return link_cost(c, inter);
}

LinkCost link_between(const ClusterConfig& c, int a, int b) {
  return link_cost(c, a / c.devices_per_node() != b / c.devices_per_node());
}

double collective_seconds(Collective kind, double bytes, int ranks, const LinkCost& link) {
  if (ranks <= 1 && kind != Collective::kSendRecv) return 0.0;
  const double p = ranks;
  double steps = p - 1, share = (p - 1) / p;
  if (kind == Collective::kAllReduce) {
    steps = 2 * (p - 1);
    share = 2 * (p - 1) / p;
  } else if (kind == Collective::kSendRecv) {
    steps = 1;
    share = 1;
  }
  return link.base_s + steps * link.hop_s + share * bytes / link.bytes_per_s;
}

}  // namespace loom
