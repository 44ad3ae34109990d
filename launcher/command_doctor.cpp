#include <iostream>
#include <string>

#include "base/error.h"
#include "tools/flight_doctor.h"
#include "launcher/args.h"
#include "launcher/commands.h"

namespace loom {
namespace {

constexpr const char* kHelp = R"(usage: loom doctor RUN_DIR

Explains a hung or failed multi-rank run from its flight-recorder dumps (RUN_DIR/flight/
rank_R.json). Every rank keeps its last logging.flight_entries communication operations (group,
operation, sequence number, bytes, when issued / started / finished, state) and the step phase
it is in, and writes them there on a collective timeout (every rank that can, when one times
out), on a fatal error, and on SIGUSR2 (`kill -USR2` on loom train's launcher reaches every rank;
the run goes on).

The report lines the ranks' operations up group by group and says in plain words
  - where ranks called different collectives as the same operation of a group (another
    operation, size, type or reduction; two operations issued in opposite orders),
  - which rank is behind: the one the others wait for, the operation it never issued, the phase
    it is in and whether it waits itself (for another group: a skipped or reordered operation),
  - who waits in which operation of which group, for whom and for how long,
  - which ranks left no dump (died, stopped, or could not write).
Exit status 0 when it read dumps and wrote a report; 1 when RUN_DIR has none.
)";

}  // namespace

int command_doctor(int argc, char** argv) {
  const Args args = parse_args("doctor", argv, argc, {}, {});
  if (args.flag("--help")) {
    std::cout << kHelp;
    return 0;
  }
  if (args.positional.size() != 1)
    throw Error("expected exactly one RUN_DIR (see loom doctor --help)");
  const FlightDiagnosis diagnosis = flight_diagnose(flight_dumps_read(args.positional[0]));
  std::cout << diagnosis.text;
  return 0;
}

}  // namespace loom
