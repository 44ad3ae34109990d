#include "launcher/hosts.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "base/regular_file.h"

namespace loom {
namespace {

// placement_summary names the first of many nodes (and of a node's many rank runs) and the last.
constexpr size_t kListedNodes = 4;
constexpr size_t kListedRuns = 4;

// A whole number (digits only, at most 9), or -1.
long whole(const std::string& text) {
  if (text.empty() || text.size() > 9) return -1;
  for (char c : text)
    if (c < '0' || c > '9') return -1;
  return std::strtol(text.c_str(), nullptr, 10);
}

// A whole positive number, or -1.
long positive(const std::string& text) {
  const long n = whole(text);
  return n > 0 ? n : -1;
}

void add_slots(std::vector<NodeSlots>& nodes, const std::string& host, int slots) {
  for (NodeSlots& n : nodes)
    if (n.node == host) {
      n.slots += slots;
      return;
    }
  nodes.push_back({host, slots});
}

// Splits at commas outside brackets.
std::vector<std::string> split_top_level(const std::string& list) {
  std::vector<std::string> items;
  std::string item;
  int depth = 0;
  for (char c : list) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0) throw Error("Slurm host list \"" + list + "\" has an unbalanced ]");
    if (c == ',' && depth == 0) {
      items.push_back(item);
      item.clear();
    } else {
      item += c;
    }
  }
  if (depth != 0) throw Error("Slurm host list \"" + list + "\" has an unbalanced [");
  items.push_back(item);
  return items;
}

// Expands one item's first bracket, then the rest recursively.
void expand_item(const std::string& item, const std::string& list, std::vector<std::string>& out) {
  const size_t open = item.find('[');
  if (open == std::string::npos) {
    if (!item.empty()) out.push_back(item);
    return;
  }
  const size_t close = item.find(']', open);
  const std::string prefix = item.substr(0, open), rest = item.substr(close + 1);
  std::stringstream ranges(item.substr(open + 1, close - open - 1));
  std::string range;
  while (std::getline(ranges, range, ',')) {
    const size_t dash = range.find('-');
    const std::string low = range.substr(0, dash);
    const std::string high = dash == std::string::npos ? low : range.substr(dash + 1);
    const long a = whole(low), b = whole(high);
    if (a < 0 || b < a || b - a > 100000)
      throw Error("Slurm host list \"" + list + "\" has a bad range \"" + range + "\"");
    for (long i = a; i <= b; ++i) {
      std::string number = std::to_string(i);
      if (number.size() < low.size()) number.insert(0, low.size() - number.size(), '0');
      expand_item(prefix + number + rest, list, out);
    }
  }
}

}  // namespace

std::vector<NodeSlots> hostfile_read(const std::string& path) {
  std::istringstream in(read_regular_file(path, size_t{1} << 20, "hostfile"));
  std::vector<NodeSlots> nodes;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::istringstream words(line);
    std::string host, word;
    if (!(words >> host)) continue;
    const std::string where = path + ":" + std::to_string(number) + ": ";
    long slots = -1;
    while (words >> word) {
      const size_t eq = word.find('=');
      const std::string key = word.substr(0, eq);
      const long value = eq == std::string::npos ? -1 : positive(word.substr(eq + 1));
      if (key == "slots" || key == "count") {
        if (value < 0) throw Error(where + "\"" + word + "\": slots takes a positive number");
        slots = value;
      } else if (key != "max_slots" && key != "max-slots") {
        throw Error(where + "unknown field \"" + word + "\" (expected: host slots=N [max_slots=M])");
      }
    }
    if (slots < 0)
      throw Error(where + "host " + host + " has no slots=N; loom places ranks by each node's "
                  "slots (ranks fill one node, then the next), so give every host its slots");
    add_slots(nodes, host, static_cast<int>(slots));
  }
  if (nodes.empty()) throw Error("hostfile " + path + " names no host");
  return nodes;
}

std::vector<NodeSlots> hosts_parse(const std::string& spec) {
  std::vector<NodeSlots> nodes;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    const size_t colon = item.rfind(':');
    const std::string host = item.substr(0, colon);
    const long slots = colon == std::string::npos ? 1 : positive(item.substr(colon + 1));
    if (host.empty() || slots < 0)
      throw Error("--hosts \"" + spec + "\": \"" + item + "\" is not HOST or HOST:SLOTS");
    add_slots(nodes, host, static_cast<int>(slots));
  }
  if (nodes.empty()) throw Error("--hosts is empty (expected e.g. a:4,b:4)");
  return nodes;
}

std::vector<std::string> slurm_hostlist_expand(const std::string& list) {
  std::vector<std::string> hosts;
  for (const std::string& item : split_top_level(list)) expand_item(item, list, hosts);
  return hosts;
}

std::vector<NodeSlots> slurm_allocation_nodes(const GetEnv& env) {
  const char* list = env("SLURM_JOB_NODELIST");
  const char* tasks = env("SLURM_TASKS_PER_NODE");
  if (!list || !*list || !tasks || !*tasks) return {};
  const std::vector<std::string> hosts = slurm_hostlist_expand(list);
  std::vector<int> counts;
  std::stringstream items(tasks);
  std::string item;
  while (std::getline(items, item, ',')) {  // "2(x3)" is 2, 2, 2
    const size_t paren = item.find("(x");
    const long count = positive(item.substr(0, paren));
    const long repeat = paren == std::string::npos
                            ? 1
                            : positive(item.substr(paren + 2, item.size() - paren - 3));
    if (count < 0 || repeat < 0 || (paren != std::string::npos && item.back() != ')'))
      throw Error("SLURM_TASKS_PER_NODE \"" + std::string(tasks) + "\" is not N(xK),...");
    counts.insert(counts.end(), static_cast<size_t>(repeat), static_cast<int>(count));
  }
  if (counts.size() != hosts.size())
    throw Error("SLURM_TASKS_PER_NODE \"" + std::string(tasks) + "\" counts " +
                std::to_string(counts.size()) + " nodes but SLURM_JOB_NODELIST \"" + list +
                "\" names " + std::to_string(hosts.size()));
  std::vector<NodeSlots> nodes;
  for (size_t i = 0; i < hosts.size(); ++i) nodes.push_back({hosts[i], counts[i]});
  return nodes;
}

std::string placement_summary(const Placement& placement) {
  // Runs of consecutive ranks on each node, in one pass over the ranks.
  std::vector<std::vector<std::pair<int, int>>> runs(placement.nodes.size());
  std::vector<int> count(placement.nodes.size(), 0);
  for (int r = 0; r < static_cast<int>(placement.node_of_rank.size()); ++r) {
    auto& node_runs = runs[static_cast<size_t>(placement.node_of_rank[r])];
    ++count[static_cast<size_t>(placement.node_of_rank[r])];
    if (!node_runs.empty() && node_runs.back().second == r - 1)
      node_runs.back().second = r;
    else
      node_runs.push_back({r, r});
  }
  auto node_text = [&](size_t node) {
    const auto& node_runs = runs[node];
    std::string ranks;
    for (size_t i = 0; i < node_runs.size(); ++i) {
      if (node_runs.size() > kListedRuns && i == kListedRuns - 1) {  // the first runs and the last
        ranks += ",…";
        i = node_runs.size() - 1;
      }
      const auto [first, last] = node_runs[i];
      if (i > 0) ranks += ',';
      ranks += std::to_string(first);
      if (last > first) {
        ranks += '-';
        ranks += std::to_string(last);
      }
    }
    if (node_runs.size() > kListedRuns) ranks += " (" + std::to_string(count[node]) + " ranks)";
    return placement.nodes[node] + ": rank" + (count[node] == 1 ? " " : "s ") + ranks;
  };
  const size_t nodes = placement.nodes.size();
  std::string out;
  for (size_t node = 0; node < nodes; ++node) {
    if (nodes > kListedNodes && node == kListedNodes - 1) {  // the first nodes and the last
      out += "; …";
      node = nodes - 1;
    }
    out += (out.empty() ? "" : "; ") + node_text(node);
  }
  if (nodes > kListedNodes) out += " (" + std::to_string(nodes) + " nodes)";
  return out;
}

}  // namespace loom
