#include "core/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <thread>

#include <google/protobuf/util/message_differencer.h>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/sample.h"
#include "core/tensor_parallel.h"
#include "kernels/cpu/threads.h"
#include "kernels/cpu/vector.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Terminal lines, mirrored into run_dir/train.log. Rank 0 writes the log and prints progress;
// other ranks print warnings only. In a multi-rank run every line carries the rank's label.
class RunLog {
 public:
  RunLog(const fs::path& path, bool quiet, bool writer, std::string prefix)
      : quiet_(quiet), writer_(writer), prefix_(std::move(prefix)) {
    if (writer_) file_.open(path, std::ios::app);
  }
  void line(const std::string& text) {
    if (!writer_) return;
    const std::string out = prefix_ + text;
    if (!quiet_) std::cout << out << std::endl;
    file_ << out << '\n';
    file_.flush();
  }
  void warn(const std::string& text) {
    if (writer_) return line("warning: " + text);
    if (!quiet_) std::cerr << prefix_ << "warning: " << text << std::endl;
  }

 private:
  std::ofstream file_;
  bool quiet_, writer_;
  std::string prefix_;
};

std::string format(const char* fmt, auto... args) {
  char buffer[512];
  std::snprintf(buffer, sizeof(buffer), fmt, args...);
  return buffer;
}

std::string duration(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  return s >= 3600 ? format("%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60)
                   : format("%ld:%02ld", s / 60, s % 60);
}

// A run directory that already has results is never overwritten.
void prepare_run_dir(const fs::path& dir, bool resume) {
  std::error_code ec;
  if (resume) {
    if (!fs::is_directory(dir, ec))
      throw Error("--resume: run directory " + dir.string() + " does not exist");
    return;
  }
  if (fs::exists(dir / "metrics.jsonl", ec) || fs::exists(dir / "checkpoints", ec))
    throw Error("run directory " + dir.string() +
                " already holds a run; pass --resume to continue it, or choose another "
                "--run-dir");
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create run directory " + dir.string() + ": " + ec.message());
}

// A resumed run must read the same model and the same data stream as the run it continues;
// steps, learning rate, logging and checkpointing may change.
void check_resumable(const config::RunConfig& saved, const config::RunConfig& now,
                     const std::string& checkpoint) {
  const std::string where = "--resume from " + checkpoint + ": ";
  if (!google::protobuf::util::MessageDifferencer::Equivalent(saved.model(), now.model()))
    throw Error(where + "the model section of the config differs from the one the run was "
                        "trained with; resume with the run's own config.textproto");
  const auto& a = saved.train();
  const auto& b = now.train();
  for (auto [name, same] : {std::pair{"train.seq_len", a.seq_len() == b.seq_len()},
                            {"train.global_batch", a.global_batch() == b.global_batch()},
                            {"train.seed", a.seed() == b.seed()},
                            {"train.shuffle", a.shuffle() == b.shuffle()},
                            {"data.train_shards",
                             saved.data().train_shards() == now.data().train_shards()}})
    if (!same)
      throw Error(where + std::string(name) +
                  " differs from the run's: the resumed run would read other data than the "
                  "uninterrupted one; keep the run's value");
}

// Loads the newest usable checkpoint. One that cannot be read or fails its checksums (a disk
// that lost it) falls back to the one before, and says so; a config that does not fit the run
// is the user's to fix, so it stops the resume.
std::string resume_from(const std::string& checkpoints_dir, const config::RunConfig& cfg,
                        Model& model, Optimizer* optimizer, CheckpointState& state, RunLog& log) {
  const std::vector<std::string> saved = checkpoint_list(checkpoints_dir);
  if (saved.empty()) throw Error("--resume: no complete checkpoint in " + checkpoints_dir);
  for (auto it = saved.rbegin(); it != saved.rend(); ++it) {
    const bool last_chance = std::next(it) == saved.rend();
    auto usable = [&](const std::function<void()>& read) {
      try {
        read();
        return true;
      } catch (const Error& e) {
        if (last_chance) throw;
        log.warn(std::string(e.what()) + "; trying the checkpoint before it");
        return false;
      }
    };
    config::RunConfig saved_cfg;
    if (!usable([&] { saved_cfg = checkpoint_read_state(*it).config; })) continue;
    check_resumable(saved_cfg, cfg, *it);
    if (!usable([&] { state = checkpoint_load(*it, model, optimizer); })) continue;
    if (state.step >= cfg.train().steps())
      throw Error("--resume from " + *it + ": the run has already completed " +
                  std::to_string(state.step) + " steps of train.steps = " +
                  std::to_string(cfg.train().steps()) + "; raise train.steps to train further");
    return *it;
  }
  LOOM_CHECK(false);
}

// On resume, metrics of steps after the checkpoint are dropped: they will be recomputed.
void truncate_metrics(const fs::path& path, long last_step) {
  std::ifstream in(path);
  if (!in) return;
  std::string line, kept;
  while (std::getline(in, line)) {
    long step = 0;
    if (std::sscanf(line.c_str(), "{\"step\":%ld", &step) == 1 && step <= last_step)
      kept += line + '\n';
  }
  in.close();
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << kept;
    if (!out.flush()) throw Error("cannot rewrite " + path.string() + " (disk full?); it is unchanged");
  }
  fs::rename(tmp, path);
}

// Mean loss over the first `batches` global batches of the validation set (so the same
// sequences whatever the micro-batch size and dp), in micro-batches of B shared out over the dp
// ranks.
double evaluate(Model& model, const TokenDataset& val, int batches, int global_batch, int B, int T,
                std::vector<int>& inputs, std::vector<int>& targets, Communicator& dp) {
  DataLoader loader{&val, 0, false};
  const int micro_batches = batches * (global_batch / B);
  double total = 0.0;
  for (int i = dp.rank(); i < micro_batches; i += dp.size()) {
    loader.position = static_cast<int64_t>(i) * B;
    loader_next(loader, inputs.data(), targets.data(), B);
    total += model_forward(model, inputs.data(), targets.data(), B, T, 0.0f);
  }
  dp.all_reduce(&total, 1, ReduceOp::kSum);
  return total / micro_batches;
}

// JSON has no NaN or Infinity: a non-finite value is written as null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream out;
  out.precision(8);
  out << v;
  return out.str();
}

std::string metrics_line(long step, const StepResult& r, float lr, double tokens_per_s,
                         double ms, double val_loss, bool skipped) {
  std::ostringstream out;
  out.precision(8);
  out << "{\"step\":" << step << ",\"loss\":" << json_number(r.loss) << ",\"lr\":" << lr
      << ",\"grad_norm\":" << json_number(r.grad_norm) << ",\"tokens_per_s\":" << tokens_per_s
      << ",\"ms_per_step\":" << ms << ",\"comm_wait_ms\":" << r.comm_wait_s * 1000.0;
  if (val_loss >= 0 || std::isnan(val_loss)) out << ",\"val_loss\":" << json_number(val_loss);
  if (skipped) out << ",\"skipped\":true";
  out << "}";
  return out.str();
}

}  // namespace

StepResult train_step(Model& model, Optimizer& optimizer, const config::RunConfig& cfg, float lr,
                      const int* inputs, const int* targets, int micro_batches,
                      const DataParallelStep& parallel) {
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len();
  const size_t tokens = static_cast<size_t>(B) * T;
  GradReducer* reducer = parallel.reducer;
  std::fill(model.grads.begin(), model.grads.end(), 0.0f);
  model.tp_wait_seconds = 0.0;
  StepResult result;
  // Each rank's gradients are the mean over its tokens; the reduction averages over ranks.
  const float scale = 1.0f / static_cast<float>(tokens * micro_batches);
  for (int micro = 0; micro < micro_batches; ++micro) {
    const double loss = model_forward(model, inputs + micro * tokens, targets + micro * tokens, B,
                                      T, scale);
    result.loss += loss / micro_batches;
    // Gradients are reduced once, during the last micro-batch's backward.
    if (reducer && micro == micro_batches - 1) {
      grad_reducer_begin(*reducer);
      model_backward(model, B, T, [reducer](size_t offset, size_t count) {
        grad_reducer_ready(*reducer, offset, count);
      });
      grad_reducer_finish(*reducer);
      result.comm_wait_s += reducer->wait_seconds;
    } else {
      model_backward(model, B, T);
    }
  }
  const bool zero = reducer && reducer->zero;
  // Σ g² of this rank's part of the global gradient: its ZeRO shard or its whole buffer, each
  // global element counted on one tensor-parallel rank.
  double squares = grad_sum_squares(model, optimizer.owned,
                                    zero ? reducer->shard.data() : model.grads.data());
  const auto start = Clock::now();
  if (model.tp.comm) model.tp.comm->all_reduce(&squares, 1);
  if (parallel.dp) {
    // Loss and, under ZeRO, the squared norms of the shards, in one all-reduce.
    double sums[2] = {result.loss, zero ? squares : 0.0};
    parallel.dp->all_reduce(sums, 2, ReduceOp::kSum);
    result.loss = sums[0] / parallel.dp->size();
    if (zero) squares = sums[1];
  }
  result.grad_norm = std::sqrt(squares);
  result.comm_wait_s += model.tp_wait_seconds +
                        std::chrono::duration<double>(Clock::now() - start).count();
  result.finite = std::isfinite(result.loss) && std::isfinite(result.grad_norm);
  if (!result.finite) return result;
  optimizer_step(optimizer, model, cfg.optim(), lr,
                 clip_scale(result.grad_norm, cfg.train().grad_clip()),
                 zero ? reducer->shard.data() : nullptr);
  if (zero) {
    const auto start = Clock::now();
    grad_reducer_gather_in_place(*reducer, model.params.data());
    result.comm_wait_s += std::chrono::duration<double>(Clock::now() - start).count();
  }
  return result;
}

TrainSummary train(const config::RunConfig& cfg, const TrainOptions& options) {
  validate_trainable(cfg);
  ProcessGroups single;
  ProcessGroups& groups = options.groups ? *options.groups : single;
  if (!options.groups) single = process_groups_create(nullptr, Mesh{});
  Communicator& dp = *groups.dp_sp;
  const bool writer = groups.rank == 0;  // rank 0 alone writes the run directory
  const bool distributed = dp.size() > 1;

  const auto& t = cfg.train();
  const int B = t.micro_batch(), T = t.seq_len(), accum = grad_accum_steps(cfg);
  // Data first: a run that cannot start leaves no run directory behind.
  TokenDataset train_data = dataset_open(cfg.data().train_shards(), T, cfg.model().vocab_size());
  const bool validate = t.eval_interval() > 0 && !cfg.data().val_shards().empty();
  TokenDataset val_data;
  if (validate) val_data = dataset_open(cfg.data().val_shards(), T, cfg.model().vocab_size());

  const fs::path run_dir = options.run_dir;
  if (writer) prepare_run_dir(run_dir, options.resume);
  const fs::path checkpoints_dir = run_dir / cfg.checkpoint().directory();
  // Ranks that share a node share its cores.
  int threads = cfg.runtime().threads();
  if (threads == 0 && groups.local_ranks > 1)
    threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / groups.local_ranks);
  threads = kernels::cpu::init_threads(threads);

  const TensorParallel tp{groups.mesh.tp, groups.coord.tp, groups.tp.get()};
  Model model = model_create(cfg.model(), nullptr, tp);
  Rng rng{t.seed()};
  model_init(model, rng.next_u64());
  model_plan(model, B, T);
  GradReducer reducer;
  if (distributed) {
    const size_t bucket_floats =
        std::max<size_t>(1, static_cast<size_t>(cfg.parallel().bucket_mb() * (1 << 20) / 4));
    reducer = grad_reducer_create(dp, model.grads.data(), model.num_params, bucket_floats,
                                  cfg.parallel().zero_stage() == 1,
                                  cfg.parallel().overlap_grad_reduce());
  }
  const bool zero = reducer.zero;  // only set for a distributed run
  Optimizer optimizer = zero ? optimizer_create(model, grad_reducer_owned(reducer))
                             : optimizer_create(model);
  DataLoader loader{&train_data, t.seed(), t.shuffle()};
  long step = 0;
  int64_t tokens_seen = 0;

  RunLog log(run_dir / "train.log", options.quiet, writer,
             groups.is_distributed() ? groups.label() + " " : "");
  const bool tensor_parallel = tp.size > 1;
  if (options.resume) {
    CheckpointState state;
    // Every rank reads the checkpoint (the run directory is on a shared file system), which
    // holds global tensors: each rank keeps its tensor-parallel shards, ZeRO ranks then their
    // shards of the optimizer state.
    Optimizer full = zero ? optimizer_create(model) : Optimizer{};
    const std::string latest = resume_from(checkpoints_dir.string(), cfg, model,
                                           zero ? &full : &optimizer, state, log);
    if (zero) {
      optimizer_scatter(optimizer, full.m.data(), optimizer.m.data());
      optimizer_scatter(optimizer, full.v.data(), optimizer.v.data());
      optimizer.step = full.step;
    }
    step = state.step;
    if (groups.is_distributed()) {
      // Every rank chose its checkpoint itself; a rank that could not read the newest (or saw
      // another listing) would silently train from another step.
      int64_t seen[2] = {state.step, -state.step};
      groups.world->all_reduce_async(seen, 2, DataType::kInt64, ReduceOp::kMax)->wait();
      if (seen[0] != -seen[1])
        throw Error("--resume: the ranks loaded different checkpoints (steps " +
                    std::to_string(-seen[1]) + " to " + std::to_string(seen[0]) +
                    "); check that every rank sees the same " + checkpoints_dir.string());
    }
    loader.position = state.data_position;
    rng.state = state.rng_state;
    tokens_seen = state.tokens_seen;
    if (writer) truncate_metrics(run_dir / "metrics.jsonl", step);
    log.line("resumed from " + latest + " at step " + std::to_string(step));
  }
  std::ofstream metrics;
  if (writer) {
    std::ofstream out(run_dir / "config.textproto", std::ios::trunc);
    out << config_to_text(cfg);
    metrics.open(run_dir / "metrics.jsonl", std::ios::app);
  }

  log.line(format("loom: %zu parameters%s, %zu unrolled layers (%d prelude + %d × %d loops + %d "
                  "coda), %s residual, %d threads%s",
                  tensor_parallel ? model_global_floats(model) : model.num_params,
                  tensor_parallel ? format(" (%zu per tensor-parallel rank)", model.num_params).c_str()
                                  : "",
                  model.unrolled.size(), cfg.model().prelude_layers(),
                  cfg.model().block_layers(), cfg.model().loops(), cfg.model().coda_layers(),
                  model.delay == 2 ? "ladder" : "standard", threads,
                  groups.is_distributed() ? " per rank" : ""));
  if (groups.is_distributed()) {
    std::string line = format("mesh: %d ranks = dp %d × pp %d × sp %d × tp %d",
                              groups.mesh.world_size(), groups.mesh.dp, groups.mesh.pp,
                              groups.mesh.sp, groups.mesh.tp);
    if (tensor_parallel)
      line += format("; heads, MLP and vocabulary (%d rows per rank) split over tp, all-reduces %s",
                     model.vocab.rows,
                     model.delay == 2 ? "overlapped by the ladder residual" : "waited at once");
    if (distributed)
      line += format("; gradients averaged over %d ranks in %zu bucket(s)%s%s", dp.size(),
                     reducer.buckets.size(),
                     cfg.parallel().overlap_grad_reduce() ? " overlapped with backward" : "",
                     zero ? ", ZeRO-1 optimizer shards" : "");
    log.line(line);
  }
  log.line(format("data: %lld training sequences of %d tokens; %d micro-batch(es) of %d "
                  "sequences per step%s; run directory %s",
                  static_cast<long long>(train_data.num_sequences()), T, accum, B,
                  distributed ? " per rank" : "", run_dir.string().c_str()));

  const int64_t global_batch = t.global_batch();
  const int64_t local_sequences = static_cast<int64_t>(B) * accum;
  const size_t step_tokens = static_cast<size_t>(global_batch) * T;
  std::vector<int> inputs(static_cast<size_t>(local_sequences) * T),
      targets(static_cast<size_t>(local_sequences) * T);
  std::vector<int> val_inputs(static_cast<size_t>(B) * T), val_targets(static_cast<size_t>(B) * T);
  TrainSummary summary;
  summary.run_dir = run_dir.string();
  const auto started = Clock::now();
  const long first_step = step;
  auto save = [&]() {
    CheckpointState state{cfg, step, loader.position, rng.state, tokens_seen};
    const Optimizer* to_save = &optimizer;
    const Model* model_to_save = &model;
    Optimizer full, global_opt;
    Model global;
    if (zero) {  // collective: every rank takes part, rank 0 writes
      full = optimizer_create(model);
      full.step = optimizer.step;
      grad_reducer_gather(reducer, optimizer.m.data(), full.m.data());
      grad_reducer_gather(reducer, optimizer.v.data(), full.v.data());
      to_save = &full;
    }
    if (tensor_parallel) {  // global tensors, assembled from every tensor-parallel rank's shards
      global = model_layout(cfg.model());
      global_opt.step = to_save->step;
      model_gather_global(model, model.params.data(), global.params);
      model_gather_global(model, to_save->m.data(), global_opt.m);
      model_gather_global(model, to_save->v.data(), global_opt.v);
      to_save = &global_opt;
      model_to_save = &global;
    }
    const std::string path = (checkpoints_dir / format("step_%07ld", step)).string();
    if (writer)
      summary.last_checkpoint = checkpoint_save(checkpoints_dir.string(), state, *model_to_save,
                                                *to_save, cfg.checkpoint().keep_last());
    else
      summary.last_checkpoint = path;
  };
  DataParallelStep parallel;
  if (distributed) parallel = {&dp, &reducer};

  while (step < t.steps()) {
    const auto step_start = Clock::now();
    // This rank's contiguous part of the global batch, in micro-batches.
    const int64_t batch_start = loader.position;
    loader.position = batch_start + dp.rank() * local_sequences;
    for (int micro = 0; micro < accum; ++micro)
      loader_next(loader, inputs.data() + static_cast<size_t>(micro) * B * T,
                  targets.data() + static_cast<size_t>(micro) * B * T, B);
    loader.position = batch_start + global_batch;
    const float lr = learning_rate(cfg.optim(), t.steps(), step);
    StepResult result =
        train_step(model, optimizer, cfg, lr, inputs.data(), targets.data(), accum, parallel);
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
      val_loss = evaluate(model, val_data, t.eval_batches(), t.global_batch(), B, T, val_inputs,
                          val_targets, dp);
      summary.last_val_loss = val_loss;
    }
    if (writer) {
      metrics << metrics_line(step, result, lr, tokens_per_s, ms, val_loss, !result.finite) << '\n';
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
    if (cfg.checkpoint().interval() > 0 && step % cfg.checkpoint().interval() == 0) save();
    // A stop request on any rank stops every rank after the same step.
    int64_t stop = options.stop_request ? options.stop_request->load() : 0;
    if (groups.is_distributed()) groups.world->all_reduce_async(&stop, 1, DataType::kInt64, ReduceOp::kMax)->wait();
    if (stop != 0 && step < t.steps()) {
      summary.stopped_by_signal = static_cast<int>(stop);
      break;
    }
  }
  if (summary.last_checkpoint.empty() || !summary.last_checkpoint.ends_with(
                                             format("step_%07ld", step)))
    save();
  log.line("checkpoint: " + summary.last_checkpoint);
  // Rank 0's last checkpoint is written before any rank goes on; the sampling below can take
  // longer than a collective timeout, and nothing waits for it.
  if (groups.is_distributed()) groups.world->barrier();
  summary.steps = step;
  if (summary.stopped_by_signal) {
    log.line(format("stopped at step %ld of %ld on signal %d; continue with --resume --run-dir %s",
                    step, static_cast<long>(t.steps()), summary.stopped_by_signal,
                    run_dir.string().c_str()));
    return summary;
  }

  // Sampling is collective over the tensor-parallel group of rank 0.
  const bool samples = groups.coord.dp == 0 && groups.coord.pp == 0 && groups.coord.sp == 0;
  if (samples && cfg.logging().sample_tokens() > 0) {
    Rng sample_rng{rng.state ^ 0x5EEDull};
    const std::vector<int> prompt = encode_bytes(cfg.logging().sample_prompt());
    const std::vector<int> out =
        sample_tokens(model, prompt, cfg.logging().sample_tokens(),
                      cfg.logging().sample_temperature(), cfg.logging().sample_top_k(), sample_rng);
    log.line("sample:\n" + cfg.logging().sample_prompt() + decode_bytes(out));
  }
  return summary;
}

}  // namespace loom
