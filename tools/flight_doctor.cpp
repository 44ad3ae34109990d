#include "tools/flight_doctor.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "base/error.h"
#include "base/regular_file.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using Dump = config::FlightDump;
using Entry = config::FlightDump::Entry;

// Dumps further apart than this may come from different moments (an earlier signal or failure).
constexpr double kSpreadWarnS = 60;

// One group as its members recorded it: a group is its name and its members.
struct GroupView {
  std::string name;
  std::vector<int> ranks;
  std::map<int, const Dump::Group*> info;  // by global rank, for ranks with a dump
  // By global rank: collectives by sequence number, and every entry in record order.
  std::map<int, std::map<int64_t, const Entry*>> collectives;
  std::map<int, std::vector<const Entry*>> entries;
};

// A rank's oldest open operation in a group, open for at least kStuckWaitS.
struct Wait {
  int rank = 0;
  const GroupView* group = nullptr;
  const Entry* entry = nullptr;
  double age_s = 0;           // until the rank's dump, or until the operation failed
  std::vector<int> blockers;  // members that have not issued it (or its match), or left no dump
};

struct Analysis {
  std::map<int, const Dump*> dumps;  // by rank
  int world_size = 0;
  std::map<std::string, GroupView> groups;  // by name and members
  std::vector<Wait> waits;
};

bool is_pair(const Entry& e) { return e.op() == "send" || e.op() == "recv"; }
bool open_op(const Entry& e) { return e.state() != "completed"; }

std::string join(const std::vector<int>& ranks, const char* separator = " ") {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i)
    out.append(i ? separator : "").append(std::to_string(ranks[i]));
  return out;
}

// "rank 3", "ranks 0 and 2", "ranks 0, 1 and 2".
std::string ranks_text(const std::vector<int>& ranks) {
  if (ranks.size() == 1) return "rank " + std::to_string(ranks[0]);
  std::string out = "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i)
    out += (i == 0 ? "" : i + 1 == ranks.size() ? " and " : ", ") + std::to_string(ranks[i]);
  return out;
}

std::string seconds_text(double s) {
  char text[32];
  std::snprintf(text, sizeof(text), s < 10 ? "%.2f s" : "%.1f s", s);
  return text;
}

// "rank 3 (dp=1 tp=1)": the coordinates of the axes the mesh splits.
std::string rank_label(const Analysis& a, int rank) {
  const Dump* any = a.dumps.begin()->second;
  const Dump::Axes& mesh = any->mesh();
  Dump::Axes coord;
  if (auto it = a.dumps.find(rank); it != a.dumps.end()) {
    coord = it->second->coord();
  } else {  // Megatron's order: rank = ((pp·DP + dp)·SP + sp)·TP + tp
    int r = rank;
    coord.set_tp(r % std::max(1, mesh.tp()));
    r /= std::max(1, mesh.tp());
    coord.set_sp(r % std::max(1, mesh.sp()));
    r /= std::max(1, mesh.sp());
    coord.set_dp(r % std::max(1, mesh.dp()));
    coord.set_pp(r / std::max(1, mesh.dp()));
  }
  std::string axes;
  auto add = [&](const char* name, int size, int value) {
    if (size > 1)
      axes += (axes.empty() ? "" : " ") + std::string(name) + "=" + std::to_string(value);
  };
  add("dp", mesh.dp(), coord.dp());
  add("pp", mesh.pp(), coord.pp());
  add("sp", mesh.sp(), coord.sp());
  add("tp", mesh.tp(), coord.tp());
  return "rank " + std::to_string(rank) + (axes.empty() ? "" : " (" + axes + ")");
}

std::string group_text(const GroupView& g) {
  return "group " + g.name + " [ranks " + join(g.ranks) + "]";
}

// "#12 all_reduce of 4096 float32 (sum)", "recv of 96 float32 from rank 1 (its 3rd)".
std::string op_text(const Entry& e) {
  std::string out = e.seq() >= 0 ? "#" + std::to_string(e.seq()) + " " : "";
  out += e.op() + " of " + std::to_string(e.count()) + " " + e.dtype();
  if (!e.reduce().empty()) out += " (" + e.reduce() + ")";
  if (e.op() == "send") out += " to rank " + std::to_string(e.peer());
  if (e.op() == "recv" || e.op() == "broadcast") out += " from rank " + std::to_string(e.peer());
  if (is_pair(e)) out += " (number " + std::to_string(e.pair_seq()) + " of the pair)";
  return out;
}

std::string signature(const Entry& e) {
  return e.op() + "/" + e.dtype() + "/" + std::to_string(e.count()) + "/" + e.reduce() + "/" +
         std::to_string(e.peer());
}

// "step 5, backward of micro-batch 1 (chunk 0)".
std::string phase_text(const Dump::Phase& p, bool chunks) {
  if (p.name().empty()) return "an unknown phase";
  std::string out = p.step() >= 0 ? "step " + std::to_string(p.step()) + ", " : "";
  out += p.name();
  if (p.micro() >= 0) out += " of micro-batch " + std::to_string(p.micro());
  if (chunks && p.chunk() >= 0) out += " (chunk " + std::to_string(p.chunk()) + ")";
  return out;
}

bool chunks_matter(const Analysis& a) { return a.dumps.begin()->second->mesh().pp() > 1; }

// Where a phase lies in a step, for comparing how far two ranks got.
int phase_order(const std::string& name) {
  static const std::pair<const char*, int> kOrder[] = {
      {"start-up", 0},
      {"loading data", 1},
      {"forward", 2},
      {"backward", 2},
      {"backward (input gradients)", 2},
      {"backward (weight gradients)", 2},
      {"gradient reduction", 3},
      {"loss and gradient norm", 4},
      {"optimizer", 5},
      {"evaluation", 6},
      {"end of step (trace, metrics, stop check)", 7},
      {"checkpoint", 8},
      {"finishing", 9},
      {"sampling", 10},
      {"done", 11}};
  for (const auto& [phase, order] : kOrder)
    if (name == phase) return order;
  return -1;
}

// (step, place in the step): larger went further.
std::pair<int64_t, int> progress(const Dump::Phase& p) { return {p.step(), phase_order(p.name())}; }

Analysis analyse(const std::vector<Dump>& dumps) {
  Analysis a;
  for (const Dump& d : dumps) {
    if (a.dumps.count(d.rank()))
      throw Error("two flight dumps claim rank " + std::to_string(d.rank()) +
                  "; remove the stale one from the run's flight/ folder");
    if (a.world_size != 0 && d.world_size() != a.world_size)
      throw Error("the flight dumps disagree on the job's size (world_size " +
                  std::to_string(a.world_size) + " and " + std::to_string(d.world_size()) +
                  "): they come from different jobs; remove the stale ones from flight/");
    a.dumps[d.rank()] = &d;
    a.world_size = d.world_size();
  }
  for (const auto& [rank, d] : a.dumps) {
    std::vector<GroupView*> mine;
    for (const Dump::Group& g : d->groups()) {
      const std::vector<int> members(g.ranks().begin(), g.ranks().end());
      GroupView& view = a.groups[g.name() + " " + join(members)];
      view.name = g.name();
      view.ranks = members;
      view.info[rank] = &g;
      mine.push_back(&view);
    }
    for (const Entry& e : d->entries()) {
      if (e.group() < 0 || e.group() >= static_cast<int>(mine.size())) continue;
      GroupView& view = *mine[e.group()];
      view.entries[rank].push_back(&e);
      if (e.seq() >= 0) view.collectives[rank][e.seq()] = &e;
    }
  }
  return a;
}

// The members of `g` that have not issued what `e` (rank's) needs from them.
std::vector<int> blockers_of(const GroupView& g, int rank, const Entry& e) {
  std::vector<int> out;
  const auto position = std::find(g.ranks.begin(), g.ranks.end(), rank) - g.ranks.begin();
  for (int member : g.ranks) {
    if (member == rank || (is_pair(e) && member != e.peer())) continue;
    const auto it = g.info.find(member);
    if (it == g.info.end()) {  // no dump: it is the one, as far as anybody can tell
      out.push_back(member);
      continue;
    }
    const Dump::Group& info = *it->second;
    bool reached = true;
    if (!is_pair(e)) {
      reached = info.collectives() > e.seq();
    } else if (position < info.sent_size() && position < info.received_size()) {
      reached = (e.op() == "recv" ? info.sent(position) : info.received(position)) > e.pair_seq();
    }
    if (!reached) out.push_back(member);
  }
  return out;
}

void find_waits(Analysis& a) {
  for (const auto& [key, g] : a.groups) {
    for (const auto& [rank, entries] : g.entries) {
      const Dump& d = *a.dumps.at(rank);
      // Its oldest open operation in the group; later ones queue behind it.
      const auto open =
          std::find_if(entries.begin(), entries.end(), [](const Entry* e) { return open_op(*e); });
      if (open == entries.end()) continue;
      const Entry& e = **open;
      const double until = e.finished_unix() > 0 ? e.finished_unix() : d.time_unix();
      Wait w{rank, &g, &e, until - e.issued_unix(), blockers_of(g, rank, e)};
      if (w.age_s >= kStuckWaitS) a.waits.push_back(std::move(w));
    }
  }
  std::sort(a.waits.begin(), a.waits.end(), [](const Wait& x, const Wait& y) {
    return x.entry->issued_unix() < y.entry->issued_unix();
  });
}

// Ranks that others wait for and that wait for nobody (or left no dump). In a cycle of waits
// (a skipped operation, groups called in different orders) every rank waits; then the ones to
// name went on past a wait: blockers of the least advanced wait that are themselves further
// in their step than that wait (by step and phase); failing that, all its blockers.
std::vector<int> find_behind(const Analysis& a, bool* cycle) {
  std::set<int> waiting, blockers;
  for (const Wait& w : a.waits) {
    if (w.blockers.empty()) continue;
    waiting.insert(w.rank);
    blockers.insert(w.blockers.begin(), w.blockers.end());
  }
  std::vector<int> roots;
  for (int b : blockers)
    if (!waiting.count(b) || !a.dumps.count(b)) roots.push_back(b);
  *cycle = roots.empty() && !blockers.empty();
  if (!*cycle) return roots;
  std::optional<std::pair<int64_t, int>> least;  // the least advanced wait with a rank past it
  std::set<int> past;
  const Wait* first = nullptr;
  for (const Wait& w : a.waits) {
    if (w.blockers.empty()) continue;
    const auto at = progress(w.entry->phase());
    if (!first || at < progress(first->entry->phase())) first = &w;
    std::set<int> ahead;
    for (int b : w.blockers)
      if (progress(a.dumps.at(b)->phase()) > at) ahead.insert(b);
    if (ahead.empty() || (least && at > *least)) continue;
    if (!least || at < *least) past.clear();
    least = at;
    past.insert(ahead.begin(), ahead.end());
  }
  if (!past.empty()) return {past.begin(), past.end()};
  return first->blockers;
}

void report_mismatches(const Analysis& a, FlightDiagnosis& out, std::ostringstream& text) {
  for (const auto& [key, g] : a.groups) {
    std::map<int64_t, std::map<std::string, std::vector<int>>> by_seq;  // seq → signature → ranks
    for (const auto& [rank, seqs] : g.collectives)
      for (const auto& [seq, e] : seqs) by_seq[seq][signature(*e)].push_back(rank);
    for (const auto& [seq, kinds] : by_seq) {
      if (kinds.size() < 2) continue;
      out.mismatches.push_back(g.name + " #" + std::to_string(seq));
      text << group_text(g) << " #" << seq << ": the ranks called different collectives:";
      for (const auto& [sig, ranks] : kinds) {
        const Entry& e = *g.collectives.at(ranks[0]).at(seq);
        text << " " << ranks_text(ranks) << ": " << op_text(e) << " (" << e.state()
             << ", issued in " << phase_text(e.phase(), chunks_matter(a)) << ");";
      }
      // Two members whose #seq and #seq + 1 are each other's: the same calls in opposite orders.
      for (const auto& [r1, c1] : g.collectives)
        for (const auto& [r2, c2] : g.collectives) {
          if (r1 >= r2 || !c1.count(seq) || !c1.count(seq + 1) || !c2.count(seq) ||
              !c2.count(seq + 1))
            continue;
          if (signature(*c1.at(seq)) == signature(*c2.at(seq + 1)) &&
              signature(*c1.at(seq + 1)) == signature(*c2.at(seq)))
            text << " rank " << r1 << " and rank " << r2 << " issued #" << seq << " and #"
                 << seq + 1 << " in opposite orders;";
        }
      text << " every member must call a group's collectives in the same order with the same "
              "sizes.\n\n";
      break;  // what follows the first mismatch is its consequence
    }
  }
}

// The operations of `g` that `rank` never issued and others wait in.
void describe_not_issued(const Analysis& a, int rank, const GroupView& g,
                         const std::vector<const Wait*>& waits, std::ostringstream& text) {
  const Entry& e = *waits.front()->entry;
  std::vector<int> waiting;
  for (const Wait* w : waits) waiting.push_back(w->rank);
  text << " In " << group_text(g) << " it never issued ";
  if (is_pair(e))
    text << "the " << (e.op() == "recv" ? "send" : "recv") << " matching rank "
         << waits.front()->rank << "'s " << op_text(e);
  else
    text << op_text(e);
  text << ", which " << ranks_text(waiting) << (waiting.size() == 1 ? " waits" : " wait") << " in";
  const auto dump = a.dumps.find(rank);
  if (dump == a.dumps.end() || is_pair(e)) {
    text << ".";
    return;
  }
  const auto info = g.info.find(rank);
  const int64_t last = info == g.info.end() ? -1 : info->second->collectives() - 1;
  text << "; its last collective there is ";
  const auto mine = g.collectives.find(rank);
  if (last < 0)
    text << "none";
  else if (mine != g.collectives.end() && mine->second.count(last))
    text << op_text(*mine->second.at(last)) << " (" << mine->second.at(last)->state()
         << ", issued at " << phase_text(mine->second.at(last)->phase(), chunks_matter(a)) << ")";
  else
    text << "#" << last << " (no longer in its ring)";
  text << ".";
}

// What a rank that others wait for is doing.
void describe_behind(const Analysis& a, int rank, std::ostringstream& text) {
  // The waits it blocks, by group, the oldest first.
  std::vector<std::pair<const GroupView*, std::vector<const Wait*>>> blocked;
  for (const Wait& w : a.waits) {
    if (std::find(w.blockers.begin(), w.blockers.end(), rank) == w.blockers.end()) continue;
    auto same = std::find_if(blocked.begin(), blocked.end(),
                             [&](const auto& b) { return b.first == w.group; });
    if (same == blocked.end()) same = blocked.insert(blocked.end(), {w.group, {}});
    same->second.push_back(&w);
  }
  const auto dump = a.dumps.find(rank);
  text << rank_label(a, rank)
       << (dump == a.dumps.end()
               ? " left no dump (it died, is stopped, or could not write it), and the others "
                 "wait for it."
               : " is behind.");
  for (const auto& [group, waits] : blocked) describe_not_issued(a, rank, *group, waits, text);
  if (dump == a.dumps.end()) {
    text << "\n\n";
    return;
  }
  const Dump& d = *dump->second;
  text << " It is at " << phase_text(d.phase(), chunks_matter(a)) << ",";
  const Wait* own = nullptr;
  for (const Wait& w : a.waits)
    if (w.rank == rank && !w.blockers.empty()) own = &w;
  if (!own) {
    text << " and waits on no communication: it is computing, or stuck outside communication.";
  } else {
    text << " and itself waits in " << group_text(*own->group) << " " << op_text(*own->entry)
         << " for " << ranks_text(own->blockers)
         << ": it went on past the operation the others wait in, so it skipped that operation "
            "or called the groups' collectives in a different order than they did.";
  }
  text << "\n\n";
}

void report_waits(const Analysis& a, std::ostringstream& text) {
  text << "Waiting (operations open for " << seconds_text(kStuckWaitS) << " or more):\n";
  // Ranks waiting in the same operation for the same ranks share a line.
  std::vector<std::pair<std::string, std::vector<int>>> lines;
  for (const Wait& w : a.waits) {
    std::ostringstream line;
    line << " in " << group_text(*w.group) << " " << op_text(*w.entry);
    if (w.blockers.empty())
      line << ", which every member issued: the transport did not complete it";
    else
      line << " for " << ranks_text(w.blockers);
    line << " (" << w.entry->state() << "; issued at "
         << phase_text(w.entry->phase(), chunks_matter(a)) << ")";
    const auto same = std::find_if(lines.begin(), lines.end(),
                                   [&](const auto& l) { return l.first == line.str(); });
    if (same != lines.end())
      same->second.push_back(w.rank);
    else
      lines.push_back({line.str(), {w.rank}});
  }
  for (auto& [line, ranks] : lines) {
    std::sort(ranks.begin(), ranks.end());
    double longest = 0;
    for (const Wait& w : a.waits)
      if (std::find(ranks.begin(), ranks.end(), w.rank) != ranks.end())
        longest = std::max(longest, w.age_s);
    text << "  " << ranks_text(ranks) << (ranks.size() == 1 ? " waits " : " wait ")
         << seconds_text(longest) << line << "\n";
  }
}

void report_header(const Analysis& a, FlightDiagnosis& out, std::ostringstream& text) {
  double first = 0, last = 0;
  for (const auto& [rank, d] : a.dumps) {
    first = first == 0 ? d->time_unix() : std::min(first, d->time_unix());
    last = std::max(last, d->time_unix());
  }
  for (int r = 0; r < a.world_size; ++r)
    if (!a.dumps.count(r)) out.missing.push_back(r);
  const std::time_t t = static_cast<std::time_t>(first);
  char when[64];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&t));
  text << "Dumps of " << a.dumps.size() << " of " << a.world_size << " ranks, written from " << when
       << " over " << seconds_text(last - first) << ".\n";
  for (const auto& [rank, d] : a.dumps)
    text << "  " << rank_label(a, rank) << " on " << d->hostname() << ", pid " << d->pid() << ": "
         << (d->error().empty() ? d->trigger() : "error: " + d->error()) << "\n";
  if (!out.missing.empty())
    text << "  no dump from " << ranks_text(out.missing)
         << " (died, stopped, or could not write it)\n";
  if (last - first > kSpreadWarnS)
    text << "  note: the dumps lie " << seconds_text(last - first)
         << " apart; some may come from an earlier signal or failure\n";
  text << "\n";
}

}  // namespace

config::FlightDump flight_dump_parse(const std::string& json, const std::string& name) {
  config::FlightDump dump;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  const auto status = google::protobuf::util::JsonStringToMessage(json, &dump, options);
  if (!status.ok())
    throw Error(name + " is not a flight-recorder dump: " + std::string(status.message()));
  if (!dump.has_rank() || !dump.has_world_size())
    throw Error(name + " is not a flight-recorder dump: it has no rank or world_size");
  // A claim in the file is checked before anything is sized by it.
  constexpr int64_t kMaxWorld = int64_t{1} << 20;
  if (dump.world_size() < 1 || dump.world_size() > kMaxWorld || dump.rank() < 0 ||
      dump.rank() >= dump.world_size())
    throw Error(name + " is damaged: rank " + std::to_string(dump.rank()) + " of world_size " +
                std::to_string(dump.world_size()) + " (a job has 1 to " +
                std::to_string(kMaxWorld) + " ranks, numbered from 0)");
  return dump;
}

std::vector<config::FlightDump> flight_dumps_read(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "flight";
  std::vector<config::FlightDump> dumps;
  std::error_code ec;
  if (fs::is_directory(dir, ec)) {
    for (const fs::directory_entry& f : fs::directory_iterator(dir, ec)) {
      const std::string name = f.path().filename().string();
      if (!name.starts_with("rank_") || !name.ends_with(".json")) continue;
      dumps.push_back(
          flight_dump_parse(read_regular_file(f.path().string(), size_t{256} << 20, "flight dump"),
                            f.path().string()));
    }
  }
  if (dumps.empty())
    throw Error("no flight-recorder dumps in " + dir.string() +
                " (rank_R.json): ranks write them on a collective timeout, a fatal error or "
                "SIGUSR2 when logging.flight_entries > 0; is " +
                run_dir + " a run directory?");
  std::sort(dumps.begin(), dumps.end(),
            [](const auto& x, const auto& y) { return x.rank() < y.rank(); });
  return dumps;
}

FlightDiagnosis flight_diagnose(const std::vector<config::FlightDump>& dumps) {
  LOOM_CHECK(!dumps.empty());
  FlightDiagnosis out;
  Analysis a = analyse(dumps);
  find_waits(a);
  std::ostringstream text;
  report_header(a, out, text);
  report_mismatches(a, out, text);
  bool cycle = false;
  out.behind = find_behind(a, &cycle);
  out.stuck = !a.waits.empty();
  if (cycle)
    text << "The waits form a cycle: every rank in it waits for another, so one went on past an "
            "operation the others wait in: "
         << ranks_text(out.behind) << ".\n\n";
  for (int rank : out.behind) describe_behind(a, rank, text);
  if (!a.waits.empty()) {
    report_waits(a, text);
  } else {
    text << "No rank has waited on an operation for " << seconds_text(kStuckWaitS)
         << " or more: nothing looks stuck in communication. Where each rank is:\n";
    for (const auto& [rank, d] : a.dumps)
      text << "  " << rank_label(a, rank) << ": " << phase_text(d->phase(), chunks_matter(a))
           << "\n";
  }
  out.text = text.str();
  return out;
}

}  // namespace loom
