#include "core/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "base/rng.h"
#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "core/file_io.h"
#include "core/loop_sampling.h"
#include "core/parallel_layout.h"
#include "core/param_shards.h"
#include "core/peak_flops.h"
#include "core/rank_health.h"
#include "core/replica_shards.h"
#include "core/run_dir.h"
#include "core/run_groups.h"
#include "core/run_inputs.h"
#include "core/run_report.h"
#include "core/shared_files.h"
#include "core/tensorboard.h"
#include "core/tokenizer.h"
#include "kernels/cpu/threads.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// The model's layout on this rank: its tensor-parallel shards, its pipeline pieces and its part
// of every sequence.
Model create_model(const config::RunConfig& cfg, const ParallelLayout& layout,
                   ProcessGroups& groups, std::shared_ptr<const kernels::KernelBackend> backend) {
  TensorParallel tp{groups.mesh.tp, groups.coord.tp, groups.tp.get()};
  tp.sequence = layout.tp_sequence;
  tp.gather_comm = groups.tp_gather.get();
  const SequenceParallel sp{groups.mesh.sp, groups.coord.sp, groups.sp.get(), layout.sequence,
                            layout.sequence_method};
  return model_create(cfg.model(), backend, tp, {layout.stages, groups.coord.pp}, sp,
                      !layout.zero_grads);
}

// ZeRO-2: the gradient windows, this rank's shard and the slots' reduce-scatter results
// (parallel/grad_windows.h), and the model's gradients pointed at them.
void set_up_grad_windows(Run& run) {
  Model& model = run.model;
  Communicator& dp_sp = *run.groups.dp_sp;
  const GradWindowsPlan plan = grad_windows_plan(
      model_grad_units(model), run.layout.grad_window_slots, dp_sp.size(), dp_sp.rank());
  const auto& backend = model.buf.backend;
  run.grad_storage = kernels::DeviceArray<float>(backend, plan.window_floats());
  run.grad_shard = kernels::DeviceArray<float>(backend, plan.shard_floats);
  run.grad_received = kernels::DeviceArray<float>(backend, plan.slots * plan.received_floats);
  run.windows = grad_windows_create(plan, dp_sp, *backend, run.grad_storage.data(),
                                    run.grad_shard.data(), run.grad_received.data());
  model.buf.grad_windows = &run.windows;
  run.replicas.windows = &run.windows;
  run.zero = true;
  run.optimizer = optimizer_create(model, grad_windows_owned(plan));
}

// Writes a checkpoint; collective, every rank writes its own pieces (core/checkpoint_pieces.h).
// Replicas of shared weights are first set to the lowest stage's (their rounding may have
// drifted: replica_sync_broadcast), so the run goes on from exactly what is saved.
void save_checkpoint(Run& run, const CheckpointState& state, const std::string& checkpoints_dir) {
  if (!run.replicas.ranges.empty()) {
    replica_sync_broadcast(run.replicas, run.model.buf.params.data());
    model_refresh_weights(run.model);
    if (!run.zero) {
      replica_sync_broadcast(run.replicas, run.optimizer.m.data());
      replica_sync_broadcast(run.replicas, run.optimizer.v.data());
    } else {  // each rank's shard of the moments, owner to owner
      replica_sync_moment_shards(run.replicas, run.replica_groups, run.groups,
                                 run.model.layout.num_params,
                                 zero_owned_of(run.cfg, run.layout, run.groups.dp_sp->size(),
                                               run.groups.coord.tp),
                                 run.optimizer);
    }
  }
  const MeshCoord& c = run.groups.coord;
  run.checkpoints.write(checkpoints_dir, state, run.model, run.optimizer, c.dp == 0 && c.sp == 0,
                        run.cfg.checkpoint().keep_last());
}

// The whole model's parameters on rank 0 (pp or sp > 1), for sampling on one rank; collective.
void gather_whole_params(Run& run, std::vector<float>& out) {
  const Model& model = run.model;
  if (model.par.tp.size == 1 && run.groups.mesh.pp == 1) {  // sp ranks hold the same weights
    if (run.groups.rank == 0) out = model.buf.params.download();
    return;
  }
  const std::vector<float> local = model.buf.params.download();
  std::vector<float> stage;
  if (model.par.tp.size > 1) model_gather_global(model, local.data(), stage);
  const MeshCoord& c = run.groups.coord;
  if (c.dp != 0 || c.sp != 0 || c.tp != 0) return;
  const float* from = model.par.tp.size > 1 ? stage.data() : local.data();
  if (run.groups.mesh.pp > 1)
    pipeline_gather_global(model, from, *run.groups.pp, out);
  else
    out = std::move(stage);
}

// The rest of a run's state once the model is initialised: activation arena, replica groups,
// data-parallel buckets, optimizer.
void set_up_run(Run& run) {
  const config::RunConfig& cfg = run.cfg;
  Model& model = run.model;
  const LoopCounts loops = run_loop_counts(cfg);
  model_set_loop_range(model, loops.min, loops.max);
  model_plan(model, cfg.train().micro_batch(), cfg.train().seq_len() / model.par.sp.size,
             run.pipe.slots, run.pipe.boundaries, run.pipe.split_backward, run.layout.recompute);
  run.replica_groups = create_replica_groups(
      model, run.groups, run.cfg.parallel().collective_timeout_s(), *run.traffic);
  run.replicas = replica_sync_create(model, run.replica_groups);
  run.replicas.trace = &run.trace;
  if (run.layout.zero_grads) return set_up_grad_windows(run);
  if (run.groups.dp_sp->size() > 1) {
    const bool zero = run.layout.zero;
    const size_t bucket = run.layout.bucket_floats;
    Communicator& dp_sp = *run.groups.dp_sp;
    const size_t shard = zero ? grad_reducer_shard_floats(model.layout.num_params, bucket,
                                                          dp_sp.size(), dp_sp.rank())
                              : 0;
    if (zero) run.grad_shard = kernels::DeviceArray<float>(model.buf.backend, shard);
    GradWire wire;
    if (run.layout.bf16_grad_reduce) {
      const size_t act = model.buf.backend->activation_bytes();
      run.grad_wire =
          kernels::DeviceArray<unsigned char>(model.buf.backend, model.layout.num_params * act);
      if (zero)
        run.grad_wire_shard = kernels::DeviceArray<unsigned char>(model.buf.backend, shard * act);
      wire = {model.buf.backend.get(), run.grad_wire.data(), run.grad_wire_shard.data()};
    }
    run.reducer =
        grad_reducer_create(dp_sp, model.buf.grads.data(), model.layout.num_params, bucket, zero,
                            run.layout.overlap_grad_reduce, run.grad_shard.data(), wire);
  }
  run.zero = run.reducer.zero;  // only set for a distributed run
  run.optimizer = run.zero ? optimizer_create(model, grad_reducer_owned(run.reducer))
                           : optimizer_create(model);
}

// Loads the newest usable checkpoint into the run on every rank (the run directory is on a
// shared file system): each rank reads only the pieces that overlap its tensors, its
// tensor-parallel shards and its ZeRO-1 shard of the moments.
std::optional<CheckpointState> resume_run(Run& run, const std::string& checkpoints_dir,
                                          RunLog& log) {
  CheckpointState state;
  const std::string latest =
      resume_from(checkpoints_dir, run.cfg, run.model, &run.optimizer, state, log);
  if (latest.empty()) {  // every rank sees the same (shared) folder
    log.warn("--resume: no checkpoint in " + checkpoints_dir +
             " yet (the run stopped before its first); starting it again from step 0");
    return std::nullopt;
  }
  if (run.groups.is_distributed()) {
    // Every rank chose its checkpoint itself; a rank that could not read the newest (or saw
    // another listing) would silently train from another step.
    int64_t seen[2] = {state.step, -state.step};
    run.groups.world->all_reduce_async(seen, 2, DataType::kInt64, ReduceOp::kMax)->wait();
    if (seen[0] != -seen[1])
      throw Error("--resume: the ranks loaded different checkpoints (steps " +
                  std::to_string(-seen[1]) + " to " + std::to_string(seen[0]) +
                  "); check that every rank sees the same " + checkpoints_dir);
  }
  log.line(format("resumed from %s at step %ld (this rank read %.2f MiB of the checkpoint's %.2f MiB)",
                  latest.c_str(), state.step, state.bytes_read / 1048576.0,
                  state.bytes_stored / 1048576.0));
  return state;
}

// --init-from: every rank reads its own parts of the checkpoint's weights (any layout).
void init_from_checkpoint(Run& run, const std::string& path, RunLog& log) {
  const std::string checkpoint = init_checkpoint(path, run.cfg);
  const CheckpointState state = checkpoint_load(checkpoint, run.model, nullptr);
  model_refresh_weights(run.model);
  log.line(
      format("initialised the weights from %s (step %ld of its run; the optimizer starts "
             "afresh)",
             checkpoint.c_str(), state.step));
}

// Chrome trace of the first logging.trace_steps steps, written collectively by every rank.
void write_trace(Run& run, const fs::path& run_dir, RunLog& log) {
  std::vector<std::string> labels;
  for (int r = 0; r < run.groups.mesh.world_size(); ++r) {
    const MeshCoord c = mesh_coord(run.groups.mesh, r);
    labels.push_back(format("rank %d (pp %d, dp %d, sp %d, tp %d)", r, c.pp, c.dp, c.sp, c.tp));
  }
  trace_write(run.trace, *run.groups.world, labels, (run_dir / "trace.json").string());
  run.trace.enabled = false;
  log.line("trace of the first " + std::to_string(run.cfg.logging().trace_steps()) +
           " steps: " + (run_dir / "trace.json").string() + " (loom trace FILE --svg OUT)");
}

// The compute threads of this rank: runtime.threads, or its share of the node's cores.
int start_threads(const config::RunConfig& cfg, const ProcessGroups& groups) {
  int threads = cfg.runtime().threads();
  if (threads == 0 && groups.local_ranks > 1)
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / groups.local_ranks);
  return kernels::cpu::init_threads(threads);
}

// The training loop's state, shared by its phases.
struct LoopState {
  explicit LoopState(const config::RunConfig& cfg, const TokenDataset* data)
      : rng{cfg.train().seed()}, loader{data, cfg.train().seed(), cfg.train().shuffle()} {}
  Rng rng;
  DataLoader loader;
  long step = 0, first_step = 0;
  int64_t tokens_seen = 0;
  std::vector<int> inputs, targets;  // this rank's micro-batches of the step
  StepParallel parallel;
  double activation_peak = -1;  // bytes, the largest of any rank (from the first step)
  double busy_ms = 0;           // this rank's, since the last logging interval
  int busy_steps = 0;
  StragglerWatch straggler;
  // pp or sp > 1: the whole model's parameters, on rank 0, for sampling on one rank.
  bool sample_whole = false;
  std::vector<float> final_params;
  Clock::time_point started;
  std::ofstream metrics;   // rank 0
  double peak_tflops = 0;  // rank 0: one rank's, MFU's denominator (core/peak_flops.h)
  std::optional<EventWriter> events;  // rank 0 with logging.tensorboard
  bool peak_doubted = false;          // rank 0 said the peak is below a step's rate
  TrainSummary summary;
};

// Everything the phases of train() work on.
struct Training {
  const config::RunConfig& cfg;
  const TrainOptions& options;
  RunInputs& in;
  Run& run;
  RunLog& log;
  LoopState& loop;
  Traffic& traffic;
  bool writer() const { return run.groups.rank == 0; }
};

// What one step left for the phase after it.
struct StepOutcome {
  StepResult result;
  float lr = 0;
  int loops = 0;
  double ms = 0;
  std::string sent;  // metrics.jsonl's sent_mib
  std::optional<LoopStats> loop_stats;  // logging.loop_stats, on a logging step
};

// Whether the progress line (and logging.loop_stats) reports step `step` (1-based): every
// logging interval, the run's first and last steps.
bool logging_step(const Training& tr, long step) {
  return step % tr.cfg.logging().interval() == 0 || step == tr.loop.first_step + 1 ||
         step == tr.cfg.train().steps();
}

// logging.loop_stats: the step's sums over every rank, as figures (collective).
LoopStats gather_loop_stats(Training& tr) {
  std::vector<double> sums = model_loop_stat_sums(tr.run.model);
  if (tr.run.groups.is_distributed())
    tr.run.groups.world->all_reduce(sums.data(), sums.size(), ReduceOp::kSum);
  const auto& t = tr.cfg.train();
  return loop_stats_of(sums, static_cast<double>(t.global_batch()) * t.seq_len(),
                       tr.run.model.spec.C, tr.run.groups.dp_sp->size());
}

// Writes a checkpoint of the step just completed (with `final`, also gathers the parameters the
// closing sample needs); collective.
void save_now(Training& tr, bool final) {
  LoopState& loop = tr.loop;
  flight_phase(tr.options.flight, "checkpoint");
  CheckpointState state{tr.cfg, loop.step, loop.loader.position, loop.rng.state, loop.tokens_seen};
  const auto start = Clock::now();
  save_checkpoint(tr.run, state, tr.in.checkpoints_dir.string());
  if (final && loop.sample_whole) gather_whole_params(tr.run, loop.final_params);
  loop.summary.last_checkpoint = (tr.in.checkpoints_dir / format("step_%07ld", loop.step)).string();
  const double stall = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  tr.log.line(format("checkpoint of step %ld: training stalled %.1f ms%s", loop.step, stall,
                     tr.cfg.checkpoint().async() ? " (written in the background)" : ""));
}

// Resumes from the newest checkpoint (--resume), records the config, opens metrics.jsonl and
// logs what the run is; collective.
// Rank 0: MFU's peak (measured or cached on first use) and the lines saying it and what the run
// runs on ("hardware:", which loom plot puts on its charts: tools/run_chart.h).
void log_machine(Training& tr, int threads) {
  const config::RunConfig& cfg = tr.cfg;
  const ProcessGroups& groups = tr.run.groups;
  tr.loop.peak_tflops = peak_tflops(cfg.runtime());
  const std::filesystem::path cache = peak_cache_path();
  tr.log.line(
      format("utilisation: MFU against %.3g TFLOP/s per rank (%s)", tr.loop.peak_tflops,
             cfg.runtime().peak_tflops() > 0
                 ? "runtime.peak_tflops"
                 : format("an fp32 GEMM at %s, measured once, cached in %s",
                          counted(threads, "thread").c_str(),
                          cache.empty() ? "no file: HOME is not set" : cache.string().c_str())
                       .c_str()));
  const long cores = std::max(1u, std::thread::hardware_concurrency());
  const int local = std::max(1, groups.local_ranks);
  tr.log.line(format("hardware: %s (%s); %s × %s; %s on %s (%s per core)", cpu_model_name().c_str(),
                     counted(cores, "core").c_str(),
                     counted(groups.mesh.world_size(), "rank").c_str(),
                     counted(threads, "thread").c_str(),
                     counted(static_cast<long>(local) * threads, "thread").c_str(),
                     counted(cores, "core").c_str(),
                     format("%.3g", static_cast<double>(local) * threads / cores).c_str()) +
              (groups.mesh.world_size() > local ? " on each node" : ""));
}

void start_loop(Training& tr, int threads) {
  const config::RunConfig& cfg = tr.cfg;
  LoopState& loop = tr.loop;
  const ProcessGroups& groups = tr.run.groups;
  bool resumed = false;
  if (tr.options.resume) {
    if (const std::optional<CheckpointState> state =
            resume_run(tr.run, tr.in.checkpoints_dir.string(), tr.log)) {
      loop.step = state->step;
      loop.loader.position = state->data_position;
      loop.rng.state = state->rng_state;
      loop.tokens_seen = state->tokens_seen;
      resumed = true;
    }
    if (tr.writer()) {
      truncate_metrics(tr.in.run_dir / "metrics.jsonl", loop.step);
      truncate_events(tr.in.run_dir / "tensorboard", loop.step);
    }
  }
  if (!resumed && !tr.options.init_from.empty())
    init_from_checkpoint(tr.run, tr.options.init_from, tr.log);
  if (tr.writer()) {
    // Whole or not at all: `loom train --resume --run-dir DIR` reads it as its config.
    const std::string text = config_to_text(cfg),
                      saved = (tr.in.run_dir / "config.textproto").string();
    write_file(saved + ".tmp", text.data(), text.size());
    std::filesystem::rename(saved + ".tmp", saved);
    loop.metrics.open(tr.in.run_dir / "metrics.jsonl", std::ios::app);
    if (tr.options.restart > 0)
      loop.metrics << restart_metrics_line(loop.step, tr.options.restart, tr.options.restart_cause)
                   << std::endl;
    if (cfg.logging().tensorboard()) {
      loop.events.emplace(tr.in.run_dir / "tensorboard");
      tr.log.line("tensorboard: " + loop.events->path() + " (tensorboard --logdir " +
                  (tr.in.run_dir / "tensorboard").string() + ")");
    }
  }
  if (tr.options.restart > 0)
    tr.log.line(format("automatic restart %d, at step %ld, after: %s", tr.options.restart,
                       loop.step, tr.options.restart_cause.c_str()));
  log_layout(tr.log, tr.run, threads, model_global_floats(model_layout(cfg.model())));
  const PipelineKind kind = tr.run.pipe.kind;
  if (groups.mesh.pp == 1 && kind != PipelineKind::kOneFOneB)
    tr.log.warn(std::string("parallel.pipeline_schedule ") + pipeline_kind_name(kind) +
                " with parallel.pp = 1 only costs memory (" +
                (kind == PipelineKind::kGPipe ? "every micro-batch's activations are kept"
                                              : "each slot keeps the weight pass's output gradients") +
                "); ONE_F_ONE_B runs one micro-batch at a time");
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  tr.log.line(format(
      "data: %lld training sequences of %d tokens; %s of %s per step%s; run directory %s",
      static_cast<long long>(tr.in.train_data.num_sequences()), T,
      counted(tr.run.layout.micro_batches, "micro-batch").c_str(), counted(B, "sequence").c_str(),
      groups.dp_sp->size() > 1 ? " per rank" : "", tr.in.run_dir.string().c_str()));
  if (const auto& info = tr.in.data_info)
    tr.log.line(format("tokens: %s, vocabulary %d (end-of-text %d), %.2f bytes of text per token",
                       info->tokenizer() == config::DataInfo::SENTENCEPIECE
                           ? ("SentencePiece " + tr.in.data_dir + "/" + info->tokenizer_file()).c_str()
                           : "bytes",
                       info->vocab_size(), info->end_of_text(),
                       static_cast<double>(info->train_bytes()) / info->train_tokens()));
  const size_t local_tokens = static_cast<size_t>(B) * tr.run.layout.micro_batches * T;
  loop.inputs.resize(local_tokens);
  loop.targets.resize(local_tokens);
  loop.summary.run_dir = tr.in.run_dir.string();
  if (tr.writer()) log_machine(tr, threads);
  loop.started = Clock::now();
  loop.first_step = loop.step;
  // (Without a closing sample, rank 0 never holds the whole model.) Sampling runs prompts of
  // any length, which sequence parallelism (over sp, or inside tp) cannot cut.
  loop.sample_whole = (groups.mesh.pp > 1 || groups.mesh.sp > 1 || tr.run.layout.tp_sequence) &&
                      cfg.logging().sample_tokens() > 0;
  if (groups.dp_sp->size() > 1)  // ZeRO-2 reduces through the model's gradient windows
    loop.parallel = {groups.dp_sp.get(), tr.run.layout.zero_grads ? nullptr : &tr.run.reducer};
  loop.parallel.flight = tr.options.flight;
  if (groups.mesh.pp > 1) {
    loop.parallel.pp = groups.pp.get();
    loop.parallel.replicas = &tr.run.replicas;
  }
  if (cfg.logging().trace_steps() > 0) {
    if (groups.is_distributed()) groups.world->barrier();  // one time 0 for every rank
    trace_start(tr.run.trace);
  }
}

// Reads this rank's part of the global batch and trains one step on it.
StepOutcome run_step(Training& tr) {
  const config::RunConfig& cfg = tr.cfg;
  const auto& t = cfg.train();
  LoopState& loop = tr.loop;
  const ProcessGroups& groups = tr.run.groups;
  const int B = t.micro_batch(), T = t.seq_len(), accum = tr.run.layout.micro_batches;
  const auto step_start = Clock::now();
  for (auto& [name, bytes] : tr.traffic.groups) bytes->store(0);
  flight_step(tr.options.flight, loop.step + 1, "loading data");
  tr.run.trace.step = static_cast<int>(loop.step + 1);  // numbered as the progress line's
  loop.parallel.trace = tr.run.trace.enabled ? &tr.run.trace : nullptr;
  // This rank's contiguous part of the global batch, in micro-batches.
  const int64_t batch_start = loop.loader.position;
  loop.loader.position = batch_start + groups.coord.dp * static_cast<int64_t>(B) * accum;
  try {
    for (int micro = 0; micro < accum; ++micro)
      loader_next(loop.loader, loop.inputs.data() + static_cast<size_t>(micro) * B * T,
                  loop.targets.data() + static_cast<size_t>(micro) * B * T, B);
  } catch (const Error& e) {
    // A shard that changed under the run: the state after the last step is sound, so one
    // process keeps it (ranks of a job cannot all be reached for the collective save).
    loop.loader.position = batch_start;
    if (groups.is_distributed() || loop.step == 0) throw;
    save_now(tr, false);
    throw Error(std::string(e.what()) + " (a checkpoint of step " + std::to_string(loop.step) +
                " was saved)");
  }
  loop.loader.position = batch_start + t.global_batch();
  StepOutcome out;
  out.lr = learning_rate(cfg.optim(), t.steps(), loop.step);
  out.loops = draw_loops(cfg, loop.step);
  model_set_loops(tr.run.model, out.loops);
  const bool loop_stats = cfg.logging().loop_stats() && logging_step(tr, loop.step + 1);
  model_collect_loop_stats(tr.run.model, loop_stats);
  out.result = train_step(tr.run.model, tr.run.optimizer, tr.run.pipe, cfg, out.lr,
                          loop.inputs.data(), loop.targets.data(), loop.parallel);
  model_collect_loop_stats(tr.run.model, false);  // validation's passes are not the step's
  if (loop_stats) out.loop_stats = gather_loop_stats(tr);
  if (!out.result.finite) {
    const std::string what = format("non-finite %s at step %ld (loss %g, gradient norm %g)",
                                    std::isfinite(out.result.loss) ? "gradient" : "loss",
                                    loop.step + 1, out.result.loss, out.result.grad_norm);
    if (loop.step == 0)  // before any update: the learning rate played no part
      throw Error(what + ", before any update: the initial weights (model.init_std " +
                  format("%g", cfg.model().init_std()) + ") or the model's scale make the " +
                  "forward pass overflow; use a smaller model.init_std");
    if (t.on_nonfinite() == config::TrainConfig::STOP)
      throw Error(what + "; the run stopped (its last checkpoint is intact). Lower optim.lr, "
                         "or set train.on_nonfinite=SKIP_STEP to skip such steps");
    tr.log.line(what + ": step skipped");
  }
  ++loop.step;
  loop.tokens_seen += static_cast<int64_t>(t.global_batch()) * T;
  out.ms = std::chrono::duration<double, std::milli>(Clock::now() - step_start).count();
  // What each group sent during the step (validation and the checks after it not counted).
  for (auto& [name, bytes] : tr.traffic.groups)
    out.sent += format("%s\"%s\":%.6f", out.sent.empty() ? "" : ",", name.c_str(),
                       bytes->load() / 1048576.0);
  return out;
}

// The step's line in metrics.jsonl (rank 0) and, every logging interval, on the terminal.
void record_step(Training& tr, const StepOutcome& o, const std::vector<ValLoss>& val,
                 const std::optional<RankHealth>& health) {
  const auto& t = tr.cfg.train();
  LoopState& loop = tr.loop;
  const double tokens_per_s = static_cast<double>(t.global_batch()) * t.seq_len() / (o.ms / 1000.0);
  const Utilisation use =
      step_utilisation(o.result, o.ms, tr.run.groups.mesh.world_size(), loop.peak_tflops);
  if (tr.writer() && use.mfu > 1 && !loop.peak_doubted) {
    loop.peak_doubted = true;
    tr.log.warn(format(
        "step %ld ran %.3g TFLOP/s per rank, above the peak MFU divides by (%.3g): %s", loop.step,
        use.tflops_per_rank, use.peak_tflops,
        tr.cfg.runtime().peak_tflops() > 0
            ? "runtime.peak_tflops is too low"
            : ("the cached GEMM measurement was taken while the machine was busy; measure it "
               "again with `loom bench sgemm --threads " +
               std::to_string(kernels::cpu::thread_count()) + "` on an idle machine")
                  .c_str()));
  }
  if (tr.writer()) {
    BitsPerByte bpb;
    if (const auto& info = tr.in.data_info) {
      bpb.train = bits_per_byte(o.result.loss, info->train_tokens(), info->train_bytes());
      if (tr.in.val_info && !val.empty())
        bpb.val = bits_per_byte(val.front().loss, tr.in.val_info->val_tokens(),
                                tr.in.val_info->val_bytes());
    }
    StepRecord record{loop.step,
                      o.loops,
                      &o.result,
                      o.lr,
                      tokens_per_s,
                      o.ms,
                      val,
                      !o.result.finite,
                      loop.activation_peak,
                      bpb,
                      health ? &*health : nullptr,
                      o.sent,
                      use,
                      o.loop_stats ? &*o.loop_stats : nullptr};
    loop.metrics << metrics_line(record) << '\n';
    if (!loop.metrics.flush()) throw_write_error((tr.in.run_dir / "metrics.jsonl").string());
    if (loop.events) loop.events->scalars(loop.step, step_scalars(record));
  }
  loop.summary.last_loss = o.result.loss;
  const long step = loop.step;
  if (!logging_step(tr, step) && val.empty()) return;
  if (loop.events) loop.events->flush();
  const double elapsed = std::chrono::duration<double>(Clock::now() - loop.started).count();
  const double eta = elapsed / (step - loop.first_step) * (t.steps() - step);
  std::string line = format(
      "step %5ld/%ld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s "
      "| %.0f ms/step | %.3g TFLOP/s/rank, MFU %.1f%% | ETA %s",
      step, static_cast<long>(t.steps()), o.result.loss, o.lr, o.result.grad_norm, tokens_per_s,
      o.ms, use.tflops_per_rank, 100.0 * use.mfu, duration(eta).c_str());
  if (tr.run.groups.is_distributed())
    line += format(" | comm wait %.0f ms", o.result.comm_wait_s * 1000.0);
  const std::vector<double>& routed = o.result.routing.active_fraction;
  for (size_t i = 0; i < routed.size(); ++i)  // Mixture-of-Recursions: tokens each iteration ran
    line += format(i == 0 ? " | routed %.0f%%" : "/%.0f%%", 100.0 * routed[i]);
  if (val.size() == 1) line += format(" | val_loss %.4f", val.front().loss);
  for (size_t i = 0; val.size() > 1 && i < val.size(); ++i)  // the first is val_loss
    line +=
        format("%s%d: %.4f", i == 0 ? " | val_loss by loops " : ", ", val[i].loops, val[i].loss);
  tr.log.line(line);
}

// After a step: validation, the trace, the activation peak and the ranks' health, the step's
// record, a checkpoint when due, and the stop check. Returns false when the run stops here (a
// stop request on any rank stops every rank after the same step); collective.
bool after_step(Training& tr, const StepOutcome& o) {
  const config::RunConfig& cfg = tr.cfg;
  const auto& t = cfg.train();
  LoopState& loop = tr.loop;
  ProcessGroups& groups = tr.run.groups;
  FlightRecorder* flight = tr.options.flight;
  std::vector<ValLoss> val;  // at each of train.eval_loops' counts
  if (tr.in.validate && (loop.step % t.eval_interval() == 0 || loop.step == t.steps())) {
    flight_phase(flight, "evaluation");
    for (const int loops : eval_loop_counts(cfg)) {
      model_set_loops(tr.run.model, loops);
      val.push_back(
          {loops, evaluate(tr.run.model, tr.run.pipe, tr.in.val_data, t.eval_batches(),
                           t.global_batch(), t.micro_batch(), t.seq_len(),
                           {groups.coord.dp, groups.mesh.dp}, *groups.dp_sp, groups.pp.get())});
    }
    loop.summary.last_val_loss = val.front().loss;
  }
  flight_phase(flight, "end of step (trace, metrics, stop check)");
  if (tr.run.trace.enabled && loop.step - loop.first_step == cfg.logging().trace_steps())
    write_trace(tr.run, tr.in.run_dir, tr.log);
  // The largest activation peak of any rank, reached in the first step (every step runs the
  // same schedule).
  if (loop.activation_peak < 0) {
    loop.activation_peak = pipeline_activation_memory(tr.run.pipe, tr.run.model).peak;
    if (groups.is_distributed())
      groups.world->all_reduce_async(&loop.activation_peak, 1, DataType::kFloat64, ReduceOp::kMax)
          ->wait();
  }
  // Every logging interval (the same steps on every rank): each rank's mean busy time.
  loop.busy_ms += o.ms - o.result.comm_wait_s * 1000.0;
  ++loop.busy_steps;
  std::optional<RankHealth> health;
  if (groups.is_distributed() &&
      (loop.step % cfg.logging().interval() == 0 || loop.step == t.steps())) {
    health = rank_health_gather(*groups.world, loop.busy_ms / loop.busy_steps);
    loop.busy_ms = 0;
    loop.busy_steps = 0;
    const std::string warning =
        straggler_check(loop.straggler, *health, cfg.logging().straggler_pct());
    if (!warning.empty() && tr.writer()) tr.log.warn(warning);
  }
  record_step(tr, o, val, health);
  if (cfg.checkpoint().interval() > 0 && loop.step % cfg.checkpoint().interval() == 0)
    save_now(tr, loop.step == t.steps());
  tr.run.checkpoints.poll();  // publishes a background checkpoint once every rank has written it
  RunSignals* signals = tr.options.signals;
  if (signals) signals->step.store(loop.step);
  int64_t stop = signals ? signals->stop.load() : 0;
  if (groups.is_distributed())
    groups.world->all_reduce_async(&stop, 1, DataType::kInt64, ReduceOp::kMax)->wait();
  if (stop == 0 || loop.step >= t.steps()) return true;
  loop.summary.stopped_by_signal = static_cast<int>(stop);
  return false;
}

// The last checkpoint, published before any rank goes on, then the closing sample.
TrainSummary finish_run(Training& tr) {
  LoopState& loop = tr.loop;
  FlightRecorder* flight = tr.options.flight;
  if (tr.run.trace.enabled) write_trace(tr.run, tr.in.run_dir, tr.log);  // fewer steps than asked
  if (loop.summary.last_checkpoint.empty() ||
      !loop.summary.last_checkpoint.ends_with(format("step_%07ld", loop.step)))
    save_now(tr, true);
  tr.run.checkpoints.wait();  // the run's last checkpoint is on disk when it ends
  tr.log.line("checkpoint: " + loop.summary.last_checkpoint);
  if (double peak = tr.run.model.buf.backend->memory_peak(); peak > 0) {  // 0: host memory
    if (tr.run.groups.is_distributed())
      tr.run.groups.world->all_reduce_async(&peak, 1, DataType::kFloat64, ReduceOp::kMax)->wait();
    tr.log.line(format("device memory: at most %.1f MiB allocated at once (the largest rank)",
                       peak / 1048576.0));
  }
  // The sampling below can take longer than a collective timeout, and nothing waits for it.
  flight_phase(flight, "finishing");
  if (tr.run.groups.is_distributed()) tr.run.groups.world->barrier();
  loop.summary.steps = loop.step;
  if (loop.summary.stopped_by_signal) {
    tr.log.line(format("stopped at step %ld of %ld on %s; continue with --resume --run-dir %s",
                       loop.step, static_cast<long>(tr.cfg.train().steps()),
                       signal_name(loop.summary.stopped_by_signal),
                       tr.in.run_dir.string().c_str()));
    return loop.summary;
  }
  // Whether to sample is decided from rank 0's loss, so that every rank of the sampling tensor
  // group decides alike.
  if (tr.run.groups.is_distributed())
    tr.run.groups.world->broadcast(&loop.summary.last_loss, 1, DataType::kFloat64, 0);
  flight_phase(flight, "sampling");
  sample_at_end(tr.run, loop.sample_whole ? &loop.final_params : nullptr, loop.rng.state,
                tr.in.tokenizer, loop.summary.last_loss, tr.log);
  flight_phase(flight, "done");
  // The run's last line, on the terminal and in train.log alike.
  const TrainSummary& done = loop.summary;
  tr.log.line(
      format("done: %ld steps, final loss %.4f%s; run directory %s", done.steps, done.last_loss,
             done.last_val_loss >= 0 ? format(", val_loss %.4f", done.last_val_loss).c_str() : "",
             tr.in.run_dir.string().c_str()));
  return loop.summary;
}

}  // namespace

TrainSummary train(const config::RunConfig& cfg, const TrainOptions& options) {
  ProcessGroups single;
  ProcessGroups& groups = options.groups ? *options.groups : single;
  if (!options.groups) single = process_groups_create(nullptr, Mesh{});
  // The model's memory and kernels (runtime.device), before anything is written: a device this
  // machine lacks leaves no run directory behind. Every group communicates through it, so an
  // operation starts only once the kernels that wrote its buffer have run.
  const std::shared_ptr<const kernels::KernelBackend> backend =
      make_backend(cfg.runtime(), groups.local_rank());
  RunInputs in = open_run(cfg, options, groups, *backend);
  const int threads = start_threads(cfg, groups);
  Traffic traffic;
  const ParallelLayout layout = parallel_layout(cfg);
  if (layout.tp_sequence) process_groups_add_tp_gather(groups);
  device_groups(groups, backend, traffic, cfg.parallel().collective_timeout_s());
  Run run{cfg,
          layout,
          groups,
          create_model(cfg, layout, groups, backend),
          pipeline_create(layout, groups.pp.get(), groups.coord.pp),
          {},
          false,
          {},
          {},
          {},
          {},
          CheckpointWriter(groups.world.get(), cfg.checkpoint().async(), in.run_token),
          {},
          {},
          {},
          &traffic};
  LoopState loop(cfg, &in.train_data);
  model_init(run.model, loop.rng.next_u64());
  set_up_run(run);
  RunLog log(in.run_dir / "train.log", options.quiet, groups.rank == 0,
             groups.is_distributed() ? groups.label() + " " : "");
  const LastLineLog last_line(in.run_dir / "train.log", options.signals && groups.rank == 0
                                                            ? &options.signals->log_fd
                                                            : nullptr);
  Training tr{cfg, options, in, run, log, loop, traffic};
  start_loop(tr, threads);
  if (options.on_started) options.on_started();
  while (loop.step < cfg.train().steps())
    if (!after_step(tr, run_step(tr))) break;
  return finish_run(tr);
}

}  // namespace loom
