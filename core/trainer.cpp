#include "core/trainer.h"

#include <algorithm>
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

#include <unistd.h>

#include "core/backend.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "core/error.h"
#include "core/loop_sampling.h"
#include "core/rank_health.h"
#include "core/rng.h"
#include "core/run_dir.h"
#include "core/shared_files.h"
#include "core/sample.h"
#include "core/tensor_parallel.h"
#include "core/tokenizer.h"
#include "kernels/cpu/threads.h"
#include "parallel/device_communicator.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Bits per byte of the training and validation losses, when the data says how many bytes of
// text its tokens hold (negative: unknown).
struct BitsPerByte {
  double train = -1, val = -1;
};

std::string metrics_line(long step, int loops, const StepResult& r, float lr, double tokens_per_s,
                         double ms, double val_loss, bool skipped, double activation_bytes,
                         const BitsPerByte& bpb, const RankHealth* health) {
  std::ostringstream out;
  out.precision(8);
  out << "{\"step\":" << step << ",\"loops\":" << loops << ",\"loss\":" << json_number(r.loss)
      << ",\"lr\":" << lr
      << ",\"grad_norm\":" << json_number(r.grad_norm) << ",\"tokens_per_s\":" << tokens_per_s
      << ",\"ms_per_step\":" << ms << ",\"comm_wait_ms\":" << r.comm_wait_s * 1000.0;
  if (bpb.train >= 0 || std::isnan(bpb.train)) out << ",\"bpb\":" << json_number(bpb.train);
  if (val_loss >= 0 || std::isnan(val_loss)) out << ",\"val_loss\":" << json_number(val_loss);
  if (bpb.val >= 0 || std::isnan(bpb.val)) out << ",\"val_bpb\":" << json_number(bpb.val);
  out << ",\"activation_peak_mib\":" << activation_bytes / (1024.0 * 1024.0);
  if (health)
    out << ",\"rank_busy_ms_min\":" << health->min_ms << ",\"rank_busy_ms_median\":"
        << health->median_ms << ",\"rank_busy_ms_max\":" << health->max_ms
        << ",\"slowest_rank\":" << health->slowest;
  if (skipped) out << ",\"skipped\":true";
  out << "}";
  return out.str();
}

}  // namespace

namespace {

// Everything one rank trains with, built once by train().
struct Run {
  const config::RunConfig& cfg;
  ProcessGroups& groups;
  Model model;
  Pipeline pipe;
  GradReducer reducer;
  bool zero = false;
  Optimizer optimizer;
  std::vector<ReplicaGroup> replica_groups;
  ReplicaSync replicas;
  TraceRecorder trace;
  CheckpointWriter checkpoints;  // every rank writes its pieces (checkpoint.async: in the background)
  kernels::DeviceArray<float> grad_shard;  // ZeRO-1: the reducer's shard of the gradients
};

// The model's layout on this rank: its tensor-parallel shards, its pipeline pieces and its part
// of every sequence.
Model create_model(const config::RunConfig& cfg, ProcessGroups& groups,
                   std::shared_ptr<const kernels::KernelBackend> backend) {
  const TensorParallel tp{groups.mesh.tp, groups.coord.tp, groups.tp.get()};
  const SequenceParallel sp{groups.mesh.sp, groups.coord.sp, groups.sp.get(),
                            sequence_layout(cfg.parallel())};
  return model_create(cfg.model(), backend, tp, {stage_plan_create(cfg), groups.coord.pp}, sp);
}

// Every group of `groups` communicates through `backend` (parallel/device_communicator.h).
void device_groups(ProcessGroups& groups, const std::shared_ptr<const kernels::KernelBackend>& backend) {
  for (std::unique_ptr<Communicator>* comm :
       {&groups.world, &groups.dp, &groups.pp, &groups.sp, &groups.tp, &groups.dp_sp})
    *comm = make_device_communicator(std::move(*comm), backend);
}

// Groups for the tensors several stages hold; collective over the world, the same order on every
// rank.
std::vector<ReplicaGroup> create_replica_groups(const Model& model, ProcessGroups& groups) {
  std::vector<ReplicaGroup> out;
  if (!groups.mpi) return out;
  for (const std::vector<int>& holders : pipeline_replica_sets(model)) {
    std::string name = "replica";
    for (int s : holders) name.append("_").append(std::to_string(s));
    std::unique_ptr<Communicator> comm = process_groups_pipeline_subset(groups, holders, name);
    if (comm) comm = make_device_communicator(std::move(comm), model.backend);
    out.push_back({holders, std::move(comm)});
  }
  return out;
}

// Writes a checkpoint; collective, every rank writes its own pieces (core/checkpoint_pieces.h).
// Replicas of shared weights are first set to the lowest stage's (their rounding may have
// drifted: replica_sync_broadcast), so the run goes on from exactly what is saved.
void save_checkpoint(Run& run, const CheckpointState& state, const std::string& checkpoints_dir) {
  if (!run.replicas.ranges.empty()) {
    replica_sync_broadcast(run.replicas, run.model.params.data());
    model_refresh_weights(run.model);
    if (!run.zero) {
      replica_sync_broadcast(run.replicas, run.optimizer.m.data());
      replica_sync_broadcast(run.replicas, run.optimizer.v.data());
    } else {  // the replica ranges are flat: the moments are whole here for a moment
      Optimizer full = optimizer_create(run.model);
      for (auto [compact, flat] : {std::pair{&run.optimizer.m, &full.m}, {&run.optimizer.v, &full.v}}) {
        grad_reducer_gather(run.reducer, compact->data(), flat->data());
        replica_sync_broadcast(run.replicas, flat->data());
        optimizer_scatter(*run.model.backend, run.optimizer, flat->data(), compact->data());
      }
    }
  }
  const MeshCoord& c = run.groups.coord;
  run.checkpoints.write(checkpoints_dir, state, run.model, run.optimizer, c.dp == 0 && c.sp == 0,
                        run.cfg.checkpoint().keep_last());
}

// The whole model's parameters on rank 0 (pp or sp > 1), for sampling on one rank; collective.
void gather_whole_params(Run& run, std::vector<float>& out) {
  const Model& model = run.model;
  if (model.tp.size == 1 && run.groups.mesh.pp == 1) {  // sp ranks hold the same weights
    if (run.groups.rank == 0) out = model.params.download();
    return;
  }
  const std::vector<float> local = model.params.download();
  std::vector<float> stage;
  if (model.tp.size > 1) model_gather_global(model, local.data(), stage);
  const MeshCoord& c = run.groups.coord;
  if (c.dp != 0 || c.sp != 0 || c.tp != 0) return;
  const float* from = model.tp.size > 1 ? stage.data() : local.data();
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
  model_plan(model, cfg.train().micro_batch(), cfg.train().seq_len() / model.sp.size,
             run.pipe.slots, run.pipe.boundaries, run.pipe.split_backward,
             recompute_policy(cfg.train()));
  run.replica_groups = create_replica_groups(model, run.groups);
  run.replicas = replica_sync_create(model, run.replica_groups);
  run.replicas.trace = &run.trace;
  if (run.groups.dp_sp->size() > 1) {
    const bool zero = cfg.parallel().zero_stage() == 1;
    const size_t bucket = grad_bucket_floats(cfg.parallel());
    Communicator& dp_sp = *run.groups.dp_sp;
    if (zero)
      run.grad_shard = kernels::DeviceArray<float>(
          model.backend,
          grad_reducer_shard_floats(model.num_params, bucket, dp_sp.size(), dp_sp.rank()));
    run.reducer = grad_reducer_create(dp_sp, model.grads.data(), model.num_params, bucket, zero,
                                      cfg.parallel().overlap_grad_reduce(), run.grad_shard.data());
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

void log_layout(RunLog& log, const Run& run, int threads, size_t global_params) {
  const config::RunConfig& cfg = run.cfg;
  const Model& model = run.model;
  const ProcessGroups& groups = run.groups;
  const bool tensor_parallel = model.tp.size > 1;
  log.line(format("loom: %zu parameters%s, %zu unrolled layers (%d prelude + %d × %d loops + %d "
                  "coda), %s residual, %d threads%s, %s kernels",
                  global_params,
                  groups.is_distributed()
                      ? format(" (%zu on this rank)", model.num_params).c_str()
                      : "",
                  model.unrolled.size(), cfg.model().prelude_layers(),
                  cfg.model().block_layers(), cfg.model().loops(), cfg.model().coda_layers(),
                  model.delay == 2 ? "ladder" : "standard", threads,
                  groups.is_distributed() ? " per rank" : "", model.backend->name()));
  const config::ModelConfig& m = cfg.model();
  if (cfg.train().recompute() != config::TrainConfig::NONE || m.backprop_loops() > 0 ||
      m.loops_sampling().kind() != config::LoopsSampling::FIXED) {
    std::string deep = "train.recompute " + config::TrainConfig::Recompute_Name(cfg.train().recompute());
    if (m.backprop_loops() > 0)
      deep += format("; gradient through the last %d loop iterations", m.backprop_loops());
    if (m.loops_sampling().kind() != config::LoopsSampling::FIXED)
      deep += format("; each step's loop count drawn %s from [%d, %d], validation at %d",
                     config::LoopsSampling::Kind_Name(m.loops_sampling().kind()).c_str(),
                     m.loops_sampling().min(), m.loops_sampling().max(), eval_loops(cfg));
    log.line(format("deep loops: %s; activation arena %.2f MiB%s", deep.c_str(),
                    pipeline_activation_memory(run.pipe, model).planned / (1024.0 * 1024.0),
                    groups.is_distributed() ? " per rank" : ""));
  }
  if (!groups.is_distributed()) return;
  std::string line = format("mesh: %d ranks = dp %d × pp %d × sp %d × tp %d",
                            groups.mesh.world_size(), groups.mesh.dp, groups.mesh.pp,
                            groups.mesh.sp, groups.mesh.tp);
  if (tensor_parallel)
    line += format("; heads, MLP and vocabulary (%d rows per rank) split over tp, all-reduces %s",
                   model.vocab.rows,
                   model.delay == 2 ? "overlapped by the ladder residual" : "waited at once");
  if (groups.mesh.pp > 1) {
    const char* kinds[] = {"GPipe", "1F1B", "interleaved 1F1B", "zero-bubble H1"};
    line += format("; pipeline %s over %d stages × %d chunk(s), %d micro-batches, bubble %.1f%%",
                   kinds[static_cast<int>(pipeline_kind(cfg))], groups.mesh.pp,
                   cfg.parallel().virtual_stages(), run.pipe.micro_batches,
                   100.0 * pipeline_bubble_fraction(pipeline_kind(cfg), groups.mesh.pp,
                                                    run.pipe.micro_batches,
                                                    cfg.parallel().virtual_stages()));
  }
  if (groups.mesh.sp > 1)
    line += format("; sequences of %d tokens cut %s over sp (%d rows per rank), attention "
                   "over the sp ring",
                   cfg.train().seq_len(),
                   sequence_layout(cfg.parallel()) == SequenceLayout::kZigzag ? "zigzag"
                                                                              : "contiguously",
                   cfg.train().seq_len() / groups.mesh.sp);
  if (run.reducer.comm)
    line += format("; gradients averaged over %d ranks in %zu bucket(s)%s%s",
                   run.reducer.comm->size(), run.reducer.buckets.size(),
                   cfg.parallel().overlap_grad_reduce() ? " overlapped with backward" : "",
                   run.zero ? ", ZeRO-1 optimizer shards" : "");
  log.line(line);
  if (groups.mesh.pp > 1) {
    std::string mine;
    for (const ModelChunk& c : model.chunks)
      mine += (mine.empty() ? "" : "; ") +
              stage_plan_describe(cfg.model(), c.begin, c.end);
    log.line(format("pipeline stage %d runs %s", groups.coord.pp, mine.c_str()));
  }
}

// What the training shards hold (data.textproto beside them; none for shards made elsewhere),
// checked against the model's vocabulary.
std::optional<config::DataInfo> training_data_info(const config::RunConfig& cfg,
                                                   std::string* dir) {
  const std::optional<config::DataInfo> info =
      data_info_for_shards(cfg.data().train_shards(), dir);
  if (info && cfg.model().vocab_size() < info->vocab_size())
    throw Error("model.vocab_size (" + std::to_string(cfg.model().vocab_size()) +
                ") is smaller than the data's vocabulary (" +
                std::to_string(info->vocab_size()) + " ids, " + *dir + "/" + kDataInfoFile +
                "): set model.vocab_size=" + std::to_string(info->vocab_size()));
  return info;
}

// What the validation shards hold, when described: the same tokens as the training data's.
std::optional<config::DataInfo> validation_data_info(const config::RunConfig& cfg,
                                                     const std::optional<config::DataInfo>& train,
                                                     const std::string& train_dir,
                                                     std::string* dir) {
  if (cfg.data().val_shards().empty()) return std::nullopt;
  const std::optional<config::DataInfo> val = data_info_for_shards(cfg.data().val_shards(), dir);
  if (val && train && !data_info_same_tokens(*train, train_dir, *val, *dir))
    throw Error("data.val_shards (" + *dir + "/" + kDataInfoFile +
                ") hold other tokens than data.train_shards (" + train_dir + "/" +
                kDataInfoFile + "): validate on shards made with the same tokenizer");
  return val;
}

// Keeps the data's description (and tokenizer) in the run directory, for loom sample. A resumed
// run must go on with the same tokens: what the run recorded must match the data's.
void record_data(const config::DataInfo& info, const std::string& data_dir,
                 const fs::path& run_dir, bool resume) {
  const fs::path recorded = run_dir / kDataInfoFile;
  std::error_code ec;
  if (resume && fs::exists(recorded, ec)) {
    if (!data_info_same_tokens(data_info_read(recorded.string()), run_dir.string(), info,
                               data_dir))
      throw Error("--resume: the data's tokens (" + data_dir + "/" + kDataInfoFile +
                  ") are not the ones the run was trained on (" + recorded.string() +
                  "): resume with the run's data");
    return;
  }
  data_info_copy(info, data_dir, run_dir.string());
}

// Generates logging.sample_tokens tokens at the end of training: collective over the
// tensor-parallel group of rank 0 (pp = sp = 1), or on rank 0 alone from the gathered global
// model.
void sample_at_end(Run& run, const std::vector<float>* global_params, uint64_t rng_state,
                   const std::optional<Tokenizer>& tokenizer, RunLog& log) {
  const auto& l = run.cfg.logging();
  if (l.sample_tokens() == 0) return;
  const MeshCoord& c = run.groups.coord;
  if (c.dp != 0 || c.pp != 0 || c.sp != 0) return;
  if (!tokenizer) {
    log.line("no sample: the data has no data.textproto saying how to decode it (shards made "
             "elsewhere?); use loom sample --tokenizer-file");
    return;
  }
  Rng sample_rng{rng_state ^ 0x5EEDull};
  const std::vector<int> prompt = tokenizer_encode(*tokenizer, l.sample_prompt());
  std::vector<int> out;
  if (!global_params) {
    model_set_loops(run.model, eval_loops(run.cfg));
    out = sample_tokens(run.model, prompt, tokenizer->end_of_text, l.sample_tokens(), l.sample_temperature(),
                        l.sample_top_k(), sample_rng);
  } else {
    if (run.groups.rank != 0) return;
    config::ModelConfig model_cfg = run.cfg.model();
    model_cfg.set_loops(eval_loops(run.cfg));
    Model whole = model_create(model_cfg, run.model.backend);
    whole.params.upload(*global_params);
    model_refresh_weights(whole);
    model_plan(whole, 1, run.cfg.train().seq_len());
    out = sample_tokens(whole, prompt, tokenizer->end_of_text, l.sample_tokens(), l.sample_temperature(),
                        l.sample_top_k(), sample_rng);
  }
  // Decoded together: a subword tokenizer joins the prompt's last piece and the first new one.
  std::vector<int> all = prompt;
  all.insert(all.end(), out.begin(), out.end());
  log.line("sample:\n" + tokenizer_decode(*tokenizer, all));
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

}  // namespace

TrainSummary train(const config::RunConfig& cfg, const TrainOptions& options) {
  ProcessGroups single;
  ProcessGroups& groups = options.groups ? *options.groups : single;
  if (!options.groups) single = process_groups_create(nullptr, Mesh{});
  Communicator& dp = *groups.dp_sp;
  const bool writer = groups.rank == 0;  // rank 0 alone writes the run directory
  const bool distributed = dp.size() > 1;

  const auto& t = cfg.train();
  const int B = t.micro_batch(), T = t.seq_len(), accum = grad_accum_steps(cfg);
  // Memory, then data, first: a run that cannot start leaves no run directory behind, and a
  // layout this machine cannot hold is refused before anything is allocated.
  const std::string too_big =
      memory_problem(cfg, std::max(1, groups.local_ranks), host_available_bytes());
  if (!too_big.empty()) throw Error(too_big);
  std::string data_dir, val_dir;
  const std::optional<config::DataInfo> data_info = training_data_info(cfg, &data_dir);
  const std::optional<config::DataInfo> val_info =
      validation_data_info(cfg, data_info, data_dir, &val_dir);
  const std::optional<Tokenizer> tokenizer =
      tokenizer_for_run(data_info, data_dir, cfg.model().vocab_size());
  TokenDataset train_data = dataset_open(cfg.data().train_shards(), T, cfg.model().vocab_size());
  const bool validate = t.eval_interval() > 0 && !cfg.data().val_shards().empty();
  TokenDataset val_data;
  if (validate) val_data = dataset_open(cfg.data().val_shards(), T, cfg.model().vocab_size());
  if (groups.is_distributed()) {  // every node must read the same data (core/shared_files.h)
    std::vector<std::pair<std::string, const TokenDataset*>> sets = {
        {"data.train_shards", &train_data}};
    if (validate) sets.push_back({"data.val_shards", &val_data});
    check_same_data(*groups.world, groups.placement, sets);
  }

  const fs::path run_dir = options.run_dir;
  RunDirLock lock;  // held until train() returns; the kernel releases it if the process dies
  if (writer) lock = prepare_run_dir(run_dir, options.resume);
  if (writer && data_info) record_data(*data_info, data_dir, run_dir, options.resume);
  const fs::path checkpoints_dir = run_dir / cfg.checkpoint().directory();
  if (writer) {  // a folder checkpoints cannot be written to is found now, not after training
    std::error_code ec;
    fs::create_directories(checkpoints_dir, ec);
    if (ec || access(checkpoints_dir.c_str(), W_OK) != 0)
      throw Error("checkpoint.directory " + checkpoints_dir.string() + " cannot be written: " +
                  (ec ? ec.message() : std::string(std::strerror(errno))));
  }
  if (groups.is_distributed()) check_same_run_dir(*groups.world, groups.placement, run_dir);
  // Ranks that share a node share its cores.
  int threads = cfg.runtime().threads();
  if (threads == 0 && groups.local_ranks > 1)
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / groups.local_ranks);
  threads = kernels::cpu::init_threads(threads);
  // The model's memory and kernels (runtime.device); every group communicates through it, so an
  // operation starts only once the kernels that wrote its buffer have run.
  const std::shared_ptr<const kernels::KernelBackend> backend = make_backend(cfg.runtime());
  device_groups(groups, backend);

  Run run{cfg,
          groups,
          create_model(cfg, groups, backend),
          pipeline_create(cfg, groups.pp.get(), groups.coord.pp),
          {},
          false,
          {},
          {},
          {},
          {},
          CheckpointWriter(groups.world.get(), cfg.checkpoint().async())};
  Model& model = run.model;
  Rng rng{t.seed()};
  model_init(model, rng.next_u64());
  set_up_run(run);
  Optimizer& optimizer = run.optimizer;
  DataLoader loader{&train_data, t.seed(), t.shuffle()};
  long step = 0;
  int64_t tokens_seen = 0;

  RunLog log(run_dir / "train.log", options.quiet, writer,
             groups.is_distributed() ? groups.label() + " " : "");
  if (options.resume) {
    if (const std::optional<CheckpointState> state =
            resume_run(run, checkpoints_dir.string(), log)) {
      step = state->step;
      loader.position = state->data_position;
      rng.state = state->rng_state;
      tokens_seen = state->tokens_seen;
    }
    if (writer) truncate_metrics(run_dir / "metrics.jsonl", step);
  }
  std::ofstream metrics;
  if (writer) {
    std::ofstream out(run_dir / "config.textproto", std::ios::trunc);
    out << config_to_text(cfg);
    metrics.open(run_dir / "metrics.jsonl", std::ios::app);
  }
  log_layout(log, run, threads, model_global_floats(model_layout(cfg.model())));
  if (groups.mesh.pp == 1 && pipeline_kind(cfg) != PipelineKind::kOneFOneB)
    log.warn(std::string("parallel.pipeline_schedule ") + pipeline_kind_name(pipeline_kind(cfg)) +
             " with parallel.pp = 1 only costs memory (" +
             (pipeline_kind(cfg) == PipelineKind::kGPipe
                  ? "every micro-batch's activations are kept"
                  : "each slot keeps the weight pass's output gradients") +
             "); ONE_F_ONE_B runs one micro-batch at a time");
  log.line(format("data: %lld training sequences of %d tokens; %d micro-batch(es) of %d "
                  "sequences per step%s; run directory %s",
                  static_cast<long long>(train_data.num_sequences()), T, accum, B,
                  distributed ? " per rank" : "", run_dir.string().c_str()));
  if (data_info)
    log.line(format("tokens: %s, vocabulary %d (end-of-text %d), %.2f bytes of text per token",
                    data_info->tokenizer() == config::DataInfo::SENTENCEPIECE
                        ? ("SentencePiece " + data_dir + "/" + data_info->tokenizer_file()).c_str()
                        : "bytes",
                    data_info->vocab_size(), data_info->end_of_text(),
                    static_cast<double>(data_info->train_bytes()) / data_info->train_tokens()));

  const int64_t global_batch = t.global_batch();
  const int64_t local_sequences = static_cast<int64_t>(B) * accum;
  const size_t step_tokens = static_cast<size_t>(global_batch) * T;
  std::vector<int> inputs(static_cast<size_t>(local_sequences) * T),
      targets(static_cast<size_t>(local_sequences) * T);
  TrainSummary summary;
  summary.run_dir = run_dir.string();
  const auto started = Clock::now();
  const long first_step = step;
  // pp or sp > 1: the whole model's parameters, on rank 0, for sampling on one rank.
  const bool sample_whole = groups.mesh.pp > 1 || groups.mesh.sp > 1;
  std::vector<float> final_params;
  FlightRecorder* flight = options.flight;
  auto save = [&](bool final) {
    flight_phase(flight, "checkpoint");
    CheckpointState state{cfg, step, loader.position, rng.state, tokens_seen};
    const auto start = Clock::now();
    save_checkpoint(run, state, checkpoints_dir.string());
    if (final && sample_whole) gather_whole_params(run, final_params);
    summary.last_checkpoint = (checkpoints_dir / format("step_%07ld", step)).string();
    const double stall = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    log.line(format("checkpoint of step %ld: training stalled %.1f ms%s", step, stall,
                    cfg.checkpoint().async() ? " (written in the background)" : ""));
  };
  StepParallel parallel;
  if (distributed) parallel = {&dp, &run.reducer};
  parallel.flight = flight;
  if (groups.mesh.pp > 1) {
    parallel.pp = groups.pp.get();
    parallel.replicas = &run.replicas;
  }
  double activation_peak = -1;  // bytes
  double busy_ms = 0;           // this rank's, since the last logging interval
  int busy_steps = 0;
  StragglerWatch straggler;
  const int trace_steps = cfg.logging().trace_steps();
  if (trace_steps > 0) {
    if (groups.is_distributed()) groups.world->barrier();  // one time 0 for every rank
    trace_start(run.trace);
  }

  while (step < t.steps()) {
    const auto step_start = Clock::now();
    flight_step(flight, step + 1, "loading data");
    run.trace.step = static_cast<int>(step - first_step);
    const bool tracing = run.trace.enabled;
    parallel.trace = tracing ? &run.trace : nullptr;
    // This rank's contiguous part of the global batch, in micro-batches.
    const int64_t batch_start = loader.position;
    loader.position = batch_start + groups.coord.dp * local_sequences;
    try {
      for (int micro = 0; micro < accum; ++micro)
        loader_next(loader, inputs.data() + static_cast<size_t>(micro) * B * T,
                    targets.data() + static_cast<size_t>(micro) * B * T, B);
    } catch (const Error& e) {
      // A shard that changed under the run: the state after the last step is sound, so one
      // process keeps it (ranks of a job cannot all be reached for the collective save).
      loader.position = batch_start;
      if (groups.is_distributed() || step == 0) throw;
      save(false);
      throw Error(std::string(e.what()) + " (a checkpoint of step " + std::to_string(step) +
                  " was saved)");
    }
    loader.position = batch_start + global_batch;
    const float lr = learning_rate(cfg.optim(), t.steps(), step);
    const int loops = draw_loops(cfg, step);
    model_set_loops(model, loops);
    StepResult result =
        train_step(model, optimizer, run.pipe, cfg, lr, inputs.data(), targets.data(), parallel);
    if (!result.finite) {
      const std::string what = format("non-finite %s at step %ld (loss %g, gradient norm %g)",
                                      std::isfinite(result.loss) ? "gradient" : "loss", step + 1,
                                      result.loss, result.grad_norm);
      if (t.on_nonfinite() == config::TrainConfig::STOP)
        throw Error(what + "; the run stopped (its last checkpoint is intact). Lower optim.lr, "
                           "or set train.on_nonfinite=SKIP_STEP to skip such steps");
      log.line(what + ": step skipped");
    }
    ++step;
    tokens_seen += static_cast<int64_t>(step_tokens);
    const double ms =
        std::chrono::duration<double, std::milli>(Clock::now() - step_start).count();
    const double tokens_per_s = step_tokens / (ms / 1000.0);

    double val_loss = -1.0;
    if (validate && (step % t.eval_interval() == 0 || step == t.steps())) {
      model_set_loops(model, eval_loops(cfg));
      flight_phase(flight, "evaluation");
      val_loss = evaluate(model, run.pipe, val_data, t.eval_batches(), t.global_batch(), B, T,
                          {groups.coord.dp, groups.mesh.dp}, dp, groups.pp.get());
      summary.last_val_loss = val_loss;
    }
    flight_phase(flight, "end of step (trace, metrics, stop check)");
    if (tracing && step - first_step == trace_steps) write_trace(run, run_dir, log);
    // The largest activation peak of any rank, reached in the first step (every step runs
    // the same schedule).
    if (activation_peak < 0) {
      activation_peak = pipeline_activation_memory(run.pipe, model).peak;
      if (groups.is_distributed())
        groups.world->all_reduce_async(&activation_peak, 1, DataType::kFloat64, ReduceOp::kMax)
            ->wait();
    }
    // Every logging interval (the same steps on every rank): each rank's mean busy time.
    busy_ms += ms - result.comm_wait_s * 1000.0;
    ++busy_steps;
    std::optional<RankHealth> health;
    if (groups.is_distributed() && (step % cfg.logging().interval() == 0 || step == t.steps())) {
      health = rank_health_gather(*groups.world, busy_ms / busy_steps);
      busy_ms = 0;
      busy_steps = 0;
      const std::string warning =
          straggler_check(straggler, *health, cfg.logging().straggler_pct());
      if (!warning.empty() && writer) log.warn(warning);
    }
    if (writer) {
      BitsPerByte bpb;
      if (data_info) {
        bpb.train = bits_per_byte(result.loss, data_info->train_tokens(), data_info->train_bytes());
        if (val_info && (val_loss >= 0 || std::isnan(val_loss)))
          bpb.val = bits_per_byte(val_loss, val_info->val_tokens(), val_info->val_bytes());
      }
      metrics << metrics_line(step, loops, result, lr, tokens_per_s, ms, val_loss, !result.finite,
                              activation_peak, bpb, health ? &*health : nullptr)
              << '\n';
      metrics.flush();
    }
    summary.last_loss = result.loss;

    if (step % cfg.logging().interval() == 0 || step == first_step + 1 || step == t.steps() ||
        val_loss >= 0) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - started).count();
      const double eta = elapsed / (step - first_step) * (t.steps() - step);
      std::string line = format("step %5ld/%ld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s "
                                "| %.0f ms/step | ETA %s",
                                step, static_cast<long>(t.steps()), result.loss, lr,
                                result.grad_norm, tokens_per_s, ms, duration(eta).c_str());
      if (groups.is_distributed())
        line += format(" | comm wait %.0f ms", result.comm_wait_s * 1000.0);
      if (val_loss >= 0) line += format(" | val_loss %.4f", val_loss);
      log.line(line);
    }
    if (cfg.checkpoint().interval() > 0 && step % cfg.checkpoint().interval() == 0)
      save(step == t.steps());
    run.checkpoints.poll();  // publishes a background checkpoint once every rank has written it
    // A stop request on any rank stops every rank after the same step.
    int64_t stop = options.stop_request ? options.stop_request->load() : 0;
    if (groups.is_distributed()) groups.world->all_reduce_async(&stop, 1, DataType::kInt64, ReduceOp::kMax)->wait();
    if (stop != 0 && step < t.steps()) {
      summary.stopped_by_signal = static_cast<int>(stop);
      break;
    }
  }
  if (run.trace.enabled) write_trace(run, run_dir, log);  // fewer steps than trace_steps
  if (summary.last_checkpoint.empty() || !summary.last_checkpoint.ends_with(
                                             format("step_%07ld", step)))
    save(true);
  run.checkpoints.wait();  // the run's last checkpoint is on disk when it ends
  log.line("checkpoint: " + summary.last_checkpoint);
  // The last checkpoint is published before any rank goes on; the sampling below can take
  // longer than a collective timeout, and nothing waits for it.
  flight_phase(flight, "finishing");
  if (groups.is_distributed()) groups.world->barrier();
  summary.steps = step;
  if (summary.stopped_by_signal) {
    log.line(format("stopped at step %ld of %ld on signal %d; continue with --resume --run-dir %s",
                    step, static_cast<long>(t.steps()), summary.stopped_by_signal,
                    run_dir.string().c_str()));
    return summary;
  }
  flight_phase(flight, "sampling");
  sample_at_end(run, sample_whole ? &final_params : nullptr, rng.state, tokenizer, log);
  flight_phase(flight, "done");
  return summary;
}

}  // namespace loom
