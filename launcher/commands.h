// The `loom` sub-commands. Each takes the arguments after its name, prints its own --help, and
// returns the process exit status; errors a user can fix are thrown as loom::Error.
#pragma once

namespace loom {

int command_train(int argc, char** argv);
int command_prepare(int argc, char** argv);
int command_sample(int argc, char** argv);
int command_eval(int argc, char** argv);
int command_export(int argc, char** argv);
int command_import(int argc, char** argv);
int command_convert(int argc, char** argv);
int command_bench(int argc, char** argv);
int command_bench_comm(int argc, char** argv);  // argv: the arguments after "comm"
int command_bench_ring(int argc, char** argv);  // argv: the arguments after "ring"
int command_bench_calibrate(int argc, char** argv);  // argv: the arguments after "calibrate"
int command_plan(int argc, char** argv);
int command_trace(int argc, char** argv);
int command_doctor(int argc, char** argv);
int command_plot(int argc, char** argv);

}  // namespace loom
