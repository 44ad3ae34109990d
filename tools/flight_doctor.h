// `loom doctor`: reads the flight-recorder dumps of a run (RUN_DIR/flight/rank_R.json,
// configs/loom.proto FlightDump, written by parallel/flight_recorder.h) and says in plain words
// what went wrong between the ranks (docs/architecture.md, "Flight recorder").
//
// Operations line up across ranks by (group name and members, sequence number): op #k of a group
// is the same collective on every member, and a send/recv is matched by its pair sequence. From
// that it finds
// - mismatches: members whose op #k of a group differs (another collective, size, type or
//   reduction), and whether two of them were issued in opposite orders;
// - waits: each rank's oldest open operation per group and the members that have not issued it
//   (or the peer that has not issued the matching send/recv), or left no dump;
// - who is behind: the ranks the others wait for that wait for nobody themselves (or left no
//   dump); in a cycle of waits, the rank that went further in its step than the wait it left.
// A wait counts as stuck after kStuckWaitS; shorter ones are progress.
//
//   std::vector<loom::config::FlightDump> dumps = loom::flight_dumps_read("runs/x");
//   loom::FlightDiagnosis d = loom::flight_diagnose(dumps);
//   std::cout << d.text;
#pragma once
#include <string>
#include <vector>

#include "loom.pb.h"

namespace loom {

constexpr double kStuckWaitS = 1.0;

// One dump from its JSON; throws loom::Error naming `name` when it is not a FlightDump.
config::FlightDump flight_dump_parse(const std::string& json, const std::string& name);

// Every RUN_DIR/flight/rank_*.json, by rank. Throws loom::Error when the folder holds none.
std::vector<config::FlightDump> flight_dumps_read(const std::string& run_dir);

struct FlightDiagnosis {
  std::vector<int> behind;   // the ranks the others wait for (the likely cause), ascending
  std::vector<int> missing;  // ranks of the job that left no dump
  // Groups whose members called different collectives, as "dp_sp #12".
  std::vector<std::string> mismatches;
  bool stuck = false;  // some rank waited at least kStuckWaitS
  std::string text;    // the report, in plain words
};

FlightDiagnosis flight_diagnose(const std::vector<config::FlightDump>& dumps);

}  // namespace loom
