// Hostfiles, --hosts lists, Slurm host lists, rank placement over nodes, the tp-across-nodes rule,
// and the mpirun / srun argument vectors of a multi-node job.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "launcher/hosts.h"
#include "launcher/spawn.h"
#include "parallel/placement.h"

namespace loom {
namespace {

using Strings = std::vector<std::string>;

// A hostfile with `text` in a fresh temporary folder.
class Hostfile {
 public:
  explicit Hostfile(const std::string& text) {
    char dir[] = "/tmp/loom-hostfile-XXXXXX";
    EXPECT_NE(mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/hosts";
    std::ofstream(path_) << text;
  }
  ~Hostfile() {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Hostfile, ReadsSlotsCommentsAndRepeatedHosts) {
  Hostfile file("# two nodes\nnode1 slots=2 max_slots=4\n\n  node2   slots=3  # fast one\nnode1 slots=1\n");
  const std::vector<NodeSlots> nodes = hostfile_read(file.path());
  EXPECT_EQ(nodes, (std::vector<NodeSlots>{{"node1", 3}, {"node2", 3}}));
}

TEST(Hostfile, NamesTheLineOfWhatIsWrong) {
  Hostfile no_slots("node1 slots=2\nnode2\n");
  EXPECT_NE(error_of([&] { hostfile_read(no_slots.path()); }).find(":2: host node2 has no slots=N"),
            std::string::npos);
  Hostfile bad("node1 slots=two\n");
  EXPECT_NE(error_of([&] { hostfile_read(bad.path()); }).find(":1: \"slots=two\""),
            std::string::npos);
  Hostfile unknown("node1 slots=2 cpus=4\n");
  EXPECT_NE(error_of([&] { hostfile_read(unknown.path()); }).find("unknown field \"cpus=4\""),
            std::string::npos);
  Hostfile empty("# nothing\n");
  EXPECT_NE(error_of([&] { hostfile_read(empty.path()); }).find("names no host"), std::string::npos);
  EXPECT_NE(error_of([] { hostfile_read("/nonexistent/hosts"); }).find("cannot open hostfile"),
            std::string::npos);
}

TEST(Hosts, ParsesAList) {
  EXPECT_EQ(hosts_parse("a:4,b:4"), (std::vector<NodeSlots>{{"a", 4}, {"b", 4}}));
  EXPECT_EQ(hosts_parse("10.0.0.2:2,10.0.0.3"),
            (std::vector<NodeSlots>{{"10.0.0.2", 2}, {"10.0.0.3", 1}}));
  EXPECT_NE(error_of([] { hosts_parse("a:0"); }).find("not HOST or HOST:SLOTS"), std::string::npos);
  EXPECT_NE(error_of([] { hosts_parse("a:4,,b:4"); }).find("\"\""), std::string::npos);
}

TEST(SlurmHostlist, Expands) {
  EXPECT_EQ(slurm_hostlist_expand("node[1-3,7],gpu[01-02],login"),
            (Strings{"node1", "node2", "node3", "node7", "gpu01", "gpu02", "login"}));
  EXPECT_EQ(slurm_hostlist_expand("r[1-2]n[0-1]"), (Strings{"r1n0", "r1n1", "r2n0", "r2n1"}));
  EXPECT_NE(error_of([] { slurm_hostlist_expand("node[1-3"); }).find("unbalanced ["),
            std::string::npos);
  EXPECT_NE(error_of([] { slurm_hostlist_expand("node[3-1]"); }).find("bad range"),
            std::string::npos);
}

GetEnv fake_env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

TEST(SlurmAllocation, NodesWithTheirTasks) {
  EXPECT_EQ(slurm_allocation_nodes(fake_env(
                {{"SLURM_JOB_NODELIST", "node[1-3]"}, {"SLURM_TASKS_PER_NODE", "2(x2),1"}})),
            (std::vector<NodeSlots>{{"node1", 2}, {"node2", 2}, {"node3", 1}}));
  EXPECT_TRUE(slurm_allocation_nodes(fake_env({{"SLURM_JOB_NODELIST", "node1"}})).empty());
  EXPECT_NE(error_of([] {
              slurm_allocation_nodes(fake_env(
                  {{"SLURM_JOB_NODELIST", "node[1-3]"}, {"SLURM_TASKS_PER_NODE", "2(x2)"}}));
            }).find("counts 2 nodes"),
            std::string::npos);
}

TEST(Placement, RanksFillOneNodeThenTheNext) {
  const Placement p = placement_fill({{"a", 3}, {"b", 3}, {"c", 3}}, 5);
  EXPECT_EQ(p.nodes, (Strings{"a", "b"}));
  EXPECT_EQ(p.node_of_rank, (std::vector<int>{0, 0, 0, 1, 1}));
  EXPECT_EQ(placement_summary(p), "a: ranks 0-2; b: ranks 3-4");
  EXPECT_NE(error_of([] { placement_fill({{"a", 2}, {"b", 2}}, 5); })
                .find("needs 5 ranks but the hosts offer 4 slots"),
            std::string::npos);
  const Placement reported = placement_of_hosts({"x", "y", "x", "y"});
  EXPECT_EQ(reported.nodes, (Strings{"x", "y"}));
  EXPECT_EQ(placement_summary(reported), "x: ranks 0,2; y: ranks 1,3");
}

TEST(Placement, SummaryOfManyNodesNamesTheFirstAndTheLast) {
  std::vector<NodeSlots> nodes;
  for (int i = 1; i <= 512; ++i)
    nodes.push_back({std::string("node").append(std::to_string(i)), 8});
  EXPECT_EQ(placement_summary(placement_fill(nodes, 4096)),
            "node1: ranks 0-7; node2: ranks 8-15; node3: ranks 16-23; …; node512: ranks "
            "4088-4095 (512 nodes)");
  // A node's many runs of ranks likewise: the first three, the last and how many ranks.
  std::vector<std::string> hosts;
  for (int r = 0; r < 20; ++r) hosts.push_back(r % 2 ? "y" : "x");
  EXPECT_EQ(placement_summary(placement_of_hosts(hosts)),
            "x: ranks 0,2,4,…,18 (10 ranks); y: ranks 1,3,5,…,19 (10 ranks)");
}

TEST(Placement, GroupsAcrossNodesOfALargeWorld) {
  // One dp group of 100000 ranks over 12500 nodes: found once, not once per member.
  std::vector<NodeSlots> nodes;
  for (int i = 0; i < 12500; ++i) nodes.push_back({std::string("n").append(std::to_string(i)), 8});
  const Mesh dp{.dp = 100000};
  const Placement p = placement_fill(nodes, 100000);
  const auto crossing = groups_across_nodes(dp, p, Axis::kData);
  ASSERT_EQ(crossing.size(), 1u);
  EXPECT_EQ(crossing[0].size(), 100000u);
  EXPECT_TRUE(groups_across_nodes(dp, p, Axis::kTensor).empty());
}

TEST(Placement, TensorGroupsMustStayInsideANode) {
  const Mesh dp2_tp2{.dp = 2, .tp = 2};
  // 2 + 2: tp {0,1} and {2,3} inside nodes, dp {0,2} and {1,3} across.
  const Placement even = placement_fill({{"n1", 2}, {"n2", 2}}, 4);
  EXPECT_EQ(cross_node_tp_problem(dp2_tp2, even), "");
  EXPECT_EQ(groups_across_nodes(dp2_tp2, even, Axis::kData),
            (std::vector<std::vector<int>>{{0, 2}, {1, 3}}));
  // 3 + 1: tp {2,3} spans both nodes.
  const Placement uneven = placement_fill({{"n1", 3}, {"n2", 1}}, 4);
  const std::string problem = cross_node_tp_problem(dp2_tp2, uneven);
  EXPECT_NE(problem.find("tensor-parallel group {2,3} would span nodes n1, n2"), std::string::npos);
  EXPECT_NE(problem.find("--allow-cross-node-tp"), std::string::npos);
  // Round-robin over nodes (mpirun --map-by node started by hand): every tp group crosses.
  const Placement round_robin = placement_of_hosts({"n1", "n2", "n1", "n2"});
  EXPECT_NE(cross_node_tp_problem(dp2_tp2, round_robin).find("(and 1 more tp group)"),
            std::string::npos);
  // pp and sp groups may cross: a pipeline of 2 stages over 2 nodes is fine.
  const Mesh pp2_tp2{.pp = 2, .tp = 2};
  EXPECT_EQ(cross_node_tp_problem(pp2_tp2, even), "");
  EXPECT_EQ(groups_across_nodes(pp2_tp2, even, Axis::kPipeline).size(), 2u);
}

const Strings kWorkerArgs = {"train", "cfg.textproto", "--run-dir", "r"};

TEST(LaunchCommand, MpirunOnAHostfile) {
  LaunchHosts hosts;
  hosts.hostfile = "/shared/hosts";
  hosts.workdir = "/shared/work";
  hosts.forward_env = {"LOOM_FAULT", "OMP_NUM_THREADS"};
  const LaunchHost host{2, true, "/opt/loom/bin/loom"};
  EXPECT_EQ(launch_command(4, kWorkerArgs, {}, host, hosts),
            (Strings{"mpirun", "-np", "4", "--allow-run-as-root", "--hostfile", "/shared/hosts",
                     "--map-by", "slot", "--bind-to", "none", "--wdir", "/shared/work", "-x",
                     "LOOM_FAULT", "-x", "OMP_NUM_THREADS", "/opt/loom/bin/loom", "train",
                     "cfg.textproto", "--run-dir", "r"}));
  LaunchHosts list;
  list.hosts = "a:2,b:2";
  EXPECT_EQ(launch_command(4, kWorkerArgs, {}, {64, false, "/l"}, list),
            (Strings{"mpirun", "-np", "4", "--host", "a:2,b:2", "--map-by", "slot", "--bind-to",
                     "none", "/l", "train", "cfg.textproto", "--run-dir", "r"}));
}

TEST(LaunchCommand, SrunKeepsTheAllocationsTasksPerNode) {
  const LaunchEnvironment env = detect_launch_environment(fake_env(
      {{"SLURM_JOB_ID", "7"}, {"SLURM_NTASKS_PER_NODE", "2"}, {"SLURM_JOB_NODELIST", "node[1-2]"}}));
  EXPECT_EQ(env.slurm_ntasks_per_node, 2);
  EXPECT_EQ(launch_command(4, kWorkerArgs, env, {2, true, "/l"}),
            (Strings{"srun", "--ntasks=4", "--kill-on-bad-exit=1", "--quit-on-interrupt",
                     "--mpi=pmix", "--ntasks-per-node=2", "--distribution=block", "/l", "train",
                     "cfg.textproto", "--run-dir", "r"}));
}

TEST(RankEnvironment, ForwardsWhatRanksRead) {
  char a[] = "LOOM_FAULT=rank=1", b[] = "PATH=/bin", c[] = "OMP_NUM_THREADS=2", d[] = "LOOMX=1",
       e[] = "OPENBLAS_NUM_THREADS=1";
  char* entries[] = {a, b, c, d, e, nullptr};
  EXPECT_EQ(rank_environment(entries),
            (Strings{"LOOM_FAULT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"}));
}

}  // namespace
}  // namespace loom
