#include "core/config.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <tuple>

#include "base/error.h"
#include "core/layout_advice.h"
#include "core/loop_sampling.h"
#include "core/parallel_layout.h"

namespace loom {
namespace {

namespace pb = google::protobuf;

// A config is a regular file of at most this many bytes (a directory, a device or /proc file is
// refused before anything is read from it).
constexpr uintmax_t kMaxConfigBytes = 1 << 20;

std::string read_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec) throw Error("cannot read config " + path + ": " + ec.message());
  if (!std::filesystem::is_regular_file(status))
    throw Error("config " + path + " is not a regular file (a " +
                (std::filesystem::is_directory(status) ? std::string("directory")
                                                       : std::string("device or special file")) +
                "); name a .textproto file");
  const uintmax_t size = std::filesystem::file_size(path, ec);
  if (ec) throw Error("cannot read config " + path + ": " + ec.message());
  if (size > kMaxConfigBytes)
    throw Error("config " + path + " is " + std::to_string(size) + " bytes; a config is at most " +
                std::to_string(kMaxConfigBytes) + " (is it the right file?)");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read config " + path + ": " + std::strerror(errno));
  std::string text(kMaxConfigBytes + 1, '\0');
  errno = 0;
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad())
    throw Error("cannot read config " + path + ": " +
                (errno != 0 ? std::strerror(errno) : "read error"));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfigBytes)
    throw Error("config " + path + " grew past " + std::to_string(kMaxConfigBytes) +
                " bytes while it was read");
  return text;
}

void require(bool ok, const std::string& message) {
  if (!ok) throw Error("invalid config: " + message);
}

std::string num(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Sets every unset scalar field to its default, so printing shows what a run actually used.
void materialize_defaults(pb::Message* root) {
  std::vector<pb::Message*> stack{root};
  while (!stack.empty()) {
    pb::Message* msg = stack.back();
    stack.pop_back();
    const pb::Reflection* r = msg->GetReflection();
    const pb::Descriptor* d = msg->GetDescriptor();
    for (int i = 0; i < d->field_count(); ++i) {
      const pb::FieldDescriptor* f = d->field(i);
      if (f->is_repeated()) continue;
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        stack.push_back(r->MutableMessage(msg, f));
        continue;
      }
      if (r->HasField(*msg, f)) continue;
      switch (f->cpp_type()) {
        case pb::FieldDescriptor::CPPTYPE_INT32: r->SetInt32(msg, f, r->GetInt32(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_INT64: r->SetInt64(msg, f, r->GetInt64(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_UINT32: r->SetUInt32(msg, f, r->GetUInt32(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_UINT64: r->SetUInt64(msg, f, r->GetUInt64(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_FLOAT: r->SetFloat(msg, f, r->GetFloat(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_DOUBLE: r->SetDouble(msg, f, r->GetDouble(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_BOOL: r->SetBool(msg, f, r->GetBool(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_ENUM: r->SetEnum(msg, f, r->GetEnum(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_STRING: r->SetString(msg, f, r->GetString(*msg, f)); break;
        case pb::FieldDescriptor::CPPTYPE_MESSAGE: break;
      }
    }
  }
}

}  // namespace

namespace {

// The zero-bubble schedules split backward into B and a deferred W.
bool splits_backward(const config::ParallelConfig& p) {
  return p.pipeline_schedule() == config::ParallelConfig::ZERO_BUBBLE_H1 ||
         p.pipeline_schedule() == config::ParallelConfig::ZERO_BUBBLE_V;
}
std::string schedule_name(const config::ParallelConfig& p) {
  return config::ParallelConfig::PipelineSchedule_Name(p.pipeline_schedule());
}

// Upper bounds far beyond any model this code can train, so that no size product overflows an
// int (or a size_t) before the memory check can name what is too big.
void check_sizes(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  const auto& t = cfg.train();
  for (auto [name, value, most] :
       {std::tuple{"model.d_model", static_cast<long>(m.d_model()), 1L << 16},
        {"model.n_heads", m.n_heads(), 1L << 12},
        {"model.n_kv_heads", m.n_kv_heads(), 1L << 12},
        {"model.loop_lora_rank", m.loop_lora_rank(), 1L << 16},
        {"model.d_mlp", m.d_mlp(), 1L << 18},
        {"model.max_seq_len", m.max_seq_len(), 1L << 24},
        {"model.prelude_layers", m.prelude_layers(), 1L << 12},
        {"model.block_layers", m.block_layers(), 1L << 12},
        {"model.coda_layers", m.coda_layers(), 1L << 12},
        {"model.loops", m.loops(), 1L << 20},
        {"model.loops_sampling.max", m.loops_sampling().max(), 1L << 20},
        {"model.lm_head_chunk", m.lm_head_chunk(), 1L << 24},
        {"train.micro_batch", t.micro_batch(), 1L << 20},
        {"train.global_batch", t.global_batch(), 1L << 30},
        {"train.seq_len", t.seq_len(), 1L << 24},
        {"train.eval_batches", t.eval_batches(), 1L << 24},
        {"logging.flight_entries", cfg.logging().flight_entries(), 1L << 24},
        {"runtime.threads", cfg.runtime().threads(), 1L << 12}})
    require(value <= most, std::string(name) + " (" + std::to_string(value) +
                               ") is larger than loom accepts (at most " +
                               std::to_string(most) + ")");
  const long positions = static_cast<long>(m.prelude_layers()) + m.coda_layers() +
                         static_cast<long>(m.block_layers()) *
                             std::max(m.loops(), m.loops_sampling().max());
  require(positions <= (1L << 22),
          "the model unrolls to " + std::to_string(positions) +
              " layers (prelude_layers + block_layers × loops + coda_layers), more than loom "
              "accepts (4194304)");
  const auto& o = cfg.optim();
  for (auto [name, value] : {std::pair{"optim.lr", static_cast<double>(o.lr())},
                             {"optim.beta1", o.beta1()},
                             {"optim.beta2", o.beta2()},
                             {"optim.eps", o.eps()},
                             {"optim.weight_decay", o.weight_decay()},
                             {"optim.lr_min_ratio", o.lr_min_ratio()},
                             {"train.grad_clip", t.grad_clip()},
                             {"model.init_std", m.init_std()},
                             {"model.norm_eps", m.norm_eps()},
                             {"model.rope_theta", m.rope_theta()},
                             {"model.loops_sampling.mean", m.loops_sampling().mean()},
                             {"model.loops_sampling.sigma", m.loops_sampling().sigma()},
                             {"logging.sample_temperature", cfg.logging().sample_temperature()},
                             {"logging.straggler_pct", cfg.logging().straggler_pct()},
                             {"runtime.peak_tflops", cfg.runtime().peak_tflops()}})
    require(std::isfinite(value), std::string(name) + " must be a finite number (got " +
                                      std::to_string(value) + ")");
  const long tokens = static_cast<long>(t.micro_batch()) * t.seq_len();
  require(tokens <= 2147483647L, "train.micro_batch × train.seq_len (" + std::to_string(tokens) +
                                    " tokens) is larger than loom accepts (2^31 − 1)");
}

// train.eval_loops: at most kMaxEvalLoopCounts counts, each ≥ 0 (0: model.loops) and at most
// 2^20, listed once, at least 2 with input injection, and model.loops itself when pipeline stages
// cut the unrolled layers.
void validate_eval_loops(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  constexpr int kMaxEvalLoopCounts = 64;
  require(cfg.train().eval_loops_size() <= kMaxEvalLoopCounts,
          "train.eval_loops lists " + num(cfg.train().eval_loops_size()) +
              " loop counts; at most " + num(kMaxEvalLoopCounts) + " (each is a validation pass)");
  for (const int eval : cfg.train().eval_loops()) {
    const std::string name = "train.eval_loops (" + num(eval) + ")";
    require(eval >= 0, name + " must not be negative (0: model.loops)");
    require(eval <= (1 << 20), name + " is larger than loom accepts (at most 1048576)");
    require(eval == 0 || eval == m.loops() || cfg.parallel().pp() == 1,
            name + " differs from model.loops (" + num(m.loops()) + ") but parallel.pp is " +
                num(cfg.parallel().pp()) +
                ": pipeline stages cut the unrolled layers of one loop count");
    require(eval == 0 || !m.input_injection() || eval >= 2,
            name +
                " must be at least 2 with model.input_injection (the injected input joins "
                "from the second iteration on)");
  }
  const std::vector<int> counts = eval_loop_counts(cfg);
  for (size_t i = 0; i < counts.size(); ++i)
    require(std::find(counts.begin(), counts.begin() + i, counts[i]) == counts.begin() + i,
            "train.eval_loops lists the loop count " + num(counts[i]) +
                " twice (a 0 stands for model.loops)");
}

// model.loop_lora_rank: deltas exist for model.loops iterations, so no loop count may exceed it;
// the zero-bubble schedule's deferred weight pass does not compute the factors' gradients.
void validate_loop_lora(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  const int r = m.loop_lora_rank();
  require(r >= 0 && r <= m.d_model(), "model.loop_lora_rank (" + num(r) +
                                          ") must be in [0, model.d_model = " + num(m.d_model()) +
                                          "] (0: pure recursion)");
  if (r == 0) return;
  const std::string why = ": model.loop_lora_rank gives only model.loops = " + num(m.loops()) +
                          " iterations their own deltas";
  const auto& s = m.loops_sampling();
  require(s.kind() == config::LoopsSampling::FIXED || s.max() <= m.loops(),
          "model.loops_sampling.max (" + num(s.max()) + ") exceeds model.loops" + why);
  for (const int eval : eval_loop_counts(cfg))
    require(eval <= m.loops(), "train.eval_loops (" + num(eval) + ") exceeds model.loops" + why);
  require(!splits_backward(cfg.parallel()),
          "model.loop_lora_rank cannot run with parallel.pipeline_schedule " +
              schedule_name(cfg.parallel()) +
              ": its deferred weight pass does not compute the LoRA factors' gradients");
}

// Mixture-of-Recursions: what the routed loop walk supports (core/model_routed.cpp).
void validate_recursion_router(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  using M = config::ModelConfig;
  if (m.recursion_router() == M::NONE) {
    require(m.recursion_capacity_size() == 0,
            "model.recursion_capacity is set but model.recursion_router is NONE");
    require(m.recursion_kv() == M::RECURSION_WISE,
            "model.recursion_kv SHARED_FIRST is set but model.recursion_router is NONE: every "
            "token runs every iteration");
    return;
  }
  const std::string routed =
      "model.recursion_router " + M::RecursionRouter_Name(m.recursion_router());
  require(m.recursion_kv() == M::RECURSION_WISE || m.recursion_router() == M::TOKEN_CHOICE ||
              m.recursion_capacity_size() == 0 || m.recursion_capacity(0) == 1,
          "model.recursion_kv SHARED_FIRST needs the first iteration to run every token "
          "(model.recursion_capacity[0] = 1): later iterations attend to its keys and values");
  require(m.recursion_gate_scale() > 0, "model.recursion_gate_scale must be positive");
  require(m.recursion_aux_weight() >= 0, "model.recursion_aux_weight must not be negative");
  if (m.recursion_router() == M::TOKEN_CHOICE) {
    require(m.recursion_capacity_size() == 0,
            "model.recursion_capacity is for EXPERT_CHOICE: with TOKEN_CHOICE the router gives "
            "each token its depth");
  } else if (m.recursion_capacity_size() > 0) {
    require(m.recursion_capacity_size() == m.loops(),
            "model.recursion_capacity has " + num(m.recursion_capacity_size()) +
                " values for model.loops = " + num(m.loops()) + " iterations: give one each");
    for (int r = 0; r < m.loops(); ++r) {
      const float c = m.recursion_capacity(r);
      require(c > 0 && c <= 1 && (r == 0 || c <= m.recursion_capacity(r - 1)),
              "model.recursion_capacity[" + num(r) + "] = " + std::to_string(c) +
                  " must be in (0, 1] and not above the one before: an iteration keeps a subset "
                  "of the previous one's tokens");
    }
  }
  require(!cfg.logging().loop_stats(),
          "logging.loop_stats does not measure a routed loop (" + routed +
              "): each iteration runs a subset of the tokens, so its state is not one tensor; "
              "turn one of them off");
  const auto& p = cfg.parallel();
  require(p.sp() == 1, routed +
                           " needs parallel.sp = 1: sequence parallelism splits a sequence "
                           "over ranks, while expert choice ranks its tokens whole and either "
                           "router gathers each sequence's tokens in order");
  require(p.pp() == 1, routed +
                           " needs parallel.pp = 1: a routed iteration gathers tokens and "
                           "a pipeline stage boundary would cut the block between them");
  require(m.residual() == M::STANDARD,
          routed +
              " needs model.residual STANDARD: the ladder's delayed outputs would cross the "
              "gather at each iteration's start");
  require(!m.input_injection(), routed + " cannot run with model.input_injection");
  require(m.backprop_loops() == 0 || m.backprop_loops() >= m.loops(),
          routed + " cannot run with model.backprop_loops (truncated backprop)");
  require(cfg.train().recompute() == config::TrainConfig::NONE,
          routed + " needs train.recompute NONE: recomputation does not replay the routing");
  require(m.loops_sampling().kind() == config::LoopsSampling::FIXED,
          routed + " needs model.loops_sampling FIXED: the router has one row per iteration");
  for (const int eval : eval_loop_counts(cfg))
    require(eval == m.loops(), "train.eval_loops (" + num(eval) +
                                   ") differs from model.loops = " + num(m.loops()) + ": " +
                                   routed + " has one router row and capacity per iteration");
}

// The loop-count options: truncated backprop, sampling, evaluation depth and recomputation.
void validate_loops(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  const auto& s = m.loops_sampling();
  const auto& p = cfg.parallel();
  using Sampling = config::LoopsSampling;
  const bool sampled = s.kind() != Sampling::FIXED;
  if (!sampled) {
    require(s.max() == 0 && s.mean() == 0,
            "model.loops_sampling.max and .mean are set but its kind is FIXED (model.loops "
            "every step): set model.loops_sampling.kind=UNIFORM or POISSON_LOGNORMAL");
  } else {
    const int least = m.input_injection() ? 2 : 1;
    require(s.min() >= least,
            "model.loops_sampling.min (" + num(s.min()) + ") must be at least " + num(least) +
                (least == 2 ? " with model.input_injection" : ""));
    require(s.max() >= s.min(), "model.loops_sampling.max (" + num(s.max()) +
                                    ") must be at least its min (" + num(s.min()) + ")");
    require(s.kind() != Sampling::POISSON_LOGNORMAL || (s.mean() >= 1 && s.mean() <= s.max()),
            "model.loops_sampling.mean (" + num(s.mean()) + ") must be in [1, max = " +
                num(s.max()) + "] for POISSON_LOGNORMAL");
    require(s.sigma() >= 0, "model.loops_sampling.sigma must not be negative");
    require(p.pp() == 1, "model.loops_sampling needs parallel.pp = 1: pipeline stages cut the "
                         "unrolled layers of one loop count");
  }
  const int most = sampled ? s.max() : m.loops();
  require(m.backprop_loops() >= 0 && m.backprop_loops() <= most,
          "model.backprop_loops (" + num(m.backprop_loops()) + ") must be in [0, " + num(most) +
              "] (0: every iteration gets gradient)");
  require(cfg.train().max_restarts() >= 0 && cfg.train().max_restarts() <= 1000,
          "train.max_restarts must be between 0 and 1000 (got " + num(cfg.train().max_restarts()) +
              ")");
  validate_eval_loops(cfg);
  const bool split = splits_backward(p);
  require(!split || m.backprop_loops() == 0,
          "model.backprop_loops cannot run with parallel.pipeline_schedule " + schedule_name(p));
  validate_loop_lora(cfg);
  validate_recursion_router(cfg);
}

}  // namespace

namespace {

// parallel.*: sizes that divide the model and the batch (refused with values that would), MPI's
// message limit, the pipeline's layout and schedule, ZeRO and the gradient reduction.
// ZeRO-2's gradient windows (parallel/grad_windows.h) are reduced as backward finishes them, in
// fp32.
void check_zero2(const config::RunConfig& cfg) {
  const auto& p = cfg.parallel();
  require(p.overlap_grad_reduce(),
          "parallel.zero_stage 2 reduces each layer's gradients as backward finishes them (its "
          "windows are freed that way): parallel.overlap_grad_reduce false is ZeRO-1's or 0's");
  require(p.grad_reduce_dtype() == config::RuntimeConfig::FP32,
          "parallel.zero_stage 2 reduces gradients in fp32: set parallel.grad_reduce_dtype FP32 "
          "(or zero_stage 1)");
  require(!model_routed(cfg.model()),
          "parallel.zero_stage 2 does not run with "
          "model.recursion_router (Mixture-of-Recursions); use "
          "zero_stage 1");
}

void validate_parallel(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  const auto& t = cfg.train();
  const auto& p = cfg.parallel();
  for (auto [name, size] :
       {std::pair{"dp", p.dp()}, {"tp", p.tp()}, {"pp", p.pp()}, {"sp", p.sp()}})
    require(size >= 1, std::string("parallel.") + name + " must be at least 1");
  // A layout that does not divide the model is refused with values that would (layout_advice).
  const auto advised = [](const std::string& advice) {
    return advice.empty() ? "" : "; " + advice;
  };
  const long per_step = static_cast<long>(t.micro_batch()) * p.dp();
  if (t.global_batch() % per_step != 0)
    require(false, "train.global_batch (" + num(t.global_batch()) +
                       ") must be a multiple of "
                       "train.micro_batch × parallel.dp (" +
                       num(t.micro_batch()) + " × " + num(p.dp()) + ")" +
                       advised(layout_advice_batch(cfg)));
  if (m.n_heads() % p.tp() != 0)
    require(false, "parallel.tp (" + num(p.tp()) + ") must divide model.n_heads (" +
                       num(m.n_heads()) + "): each tensor-parallel rank holds whole heads" +
                       advised(layout_advice_tp(cfg)));
  if (m.d_mlp() % p.tp() != 0)
    require(false, "parallel.tp (" + num(p.tp()) + ") must divide model.d_mlp (" + num(m.d_mlp()) +
                       ")" + advised(layout_advice_tp(cfg)));
  if (model_kv_heads(m) % p.tp() != 0)
    require(false, "parallel.tp (" + num(p.tp()) + ") must divide model.n_kv_heads (" +
                       num(model_kv_heads(m)) +
                       "): each tensor-parallel rank holds whole key/value heads" +
                       advised(layout_advice_tp(cfg)));
  if (p.sequence_layout() == config::ParallelConfig::ZIGZAG && t.seq_len() % (2 * p.sp()) != 0)
    require(false, "train.seq_len (" + num(t.seq_len()) +
                       ") must be divisible by 2 × parallel.sp (" + num(2 * p.sp()) +
                       "): the zigzag layout cuts each sequence into 2·sp chunks" +
                       advised(layout_advice_seq_len(cfg)));
  if (p.sequence_layout() != config::ParallelConfig::ZIGZAG && t.seq_len() % p.sp() != 0)
    require(false, "train.seq_len (" + num(t.seq_len()) + ") must be divisible by parallel.sp (" +
                       num(p.sp()) + ") for the contiguous sequence layout" +
                       advised(layout_advice_seq_len(cfg)));
  if (p.sequence_method() == config::ParallelConfig::ULYSSES) {
    const std::string ulysses = "parallel.sequence_method ULYSSES";
    require(p.sp() > 1, ulysses +
                            " needs parallel.sp > 1 (it splits attention's heads over the "
                            "sp ranks)");
    const int heads = m.n_heads() / p.tp(), kv_heads = model_kv_heads(m) / p.tp();
    require(heads % p.sp() == 0 && kv_heads % p.sp() == 0,
            ulysses + " gives each sp rank whole heads: parallel.sp (" + num(p.sp()) +
                ") must divide the heads per tensor-parallel rank, model.n_heads / parallel.tp = " +
                num(heads) + " and model.n_kv_heads / parallel.tp = " + num(kv_heads) +
                "; use sequence_method RING, or a smaller sp or tp");
  }
  if (p.tp_sequence_parallel()) {
    const std::string tsp = "parallel.tp_sequence_parallel";
    require(p.tp() > 1, tsp +
                            " needs parallel.tp > 1 (it cuts the tokens between the "
                            "tensor-parallel regions over the tp ranks)");
    const long tokens = static_cast<long>(t.micro_batch()) * (t.seq_len() / p.sp());
    require(tokens % p.tp() == 0,
            tsp +
                " gives each tp rank whole tokens: train.micro_batch × train.seq_len / "
                "parallel.sp (" +
                num(t.micro_batch()) + " × " + num(t.seq_len() / p.sp()) + " = " +
                std::to_string(tokens) + ") must be divisible by parallel.tp (" + num(p.tp()) +
                ")");
    require(!model_routed(m), tsp +
                                  " does not support model.recursion_router (a routed loop "
                                  "gathers its tokens across the whole micro-batch)");
  }
  // One MPI message carries at most INT32_MAX elements: ring attention's key/value block and a
  // pipeline boundary state are each sent whole.
  const double local_tokens = static_cast<double>(t.micro_batch()) * t.seq_len() / p.sp();
  const double ring_message = local_tokens * 2.0 * m.d_model() / p.tp();
  require(p.sp() == 1 || ring_message <= 2147483647.0,
          "ring attention would send " + std::to_string(static_cast<long long>(ring_message)) +
              " floats in one message (micro_batch × seq_len / sp × 2 × d_model / tp), more than "
              "MPI's 2^31 − 1: raise parallel.sp or parallel.tp, or lower train.micro_batch");
  const double boundary_message = local_tokens * 3.0 * m.d_model();  // stream, ladder output, e
  require(p.pp() == 1 || boundary_message <= 2147483647.0,
          "a pipeline boundary would send up to " +
              std::to_string(static_cast<long long>(boundary_message)) +
              " floats in one message (3 × micro_batch × seq_len / sp × d_model), more than "
              "MPI's 2^31 − 1: raise parallel.sp or lower train.micro_batch");
  require(p.virtual_stages() >= 1, "parallel.virtual_stages must be at least 1");
  require(p.virtual_stages() == 1 || p.pp() > 1,
          "parallel.virtual_stages (" + num(p.virtual_stages()) +
              ") needs parallel.pp > 1: "
              "virtual stages are chunks of a pipeline rank");
  require(p.pipeline_layout().empty() || p.pp() > 1,
          "parallel.pipeline_layout is set but parallel.pp is 1: there is nothing to cut");
  try {
    parallel_layout(cfg);  // the schedule runs this layout; the stage plan fits the model
  } catch (const Error& e) {
    throw Error(std::string("invalid config: ") + e.what());
  }
  require(p.zero_stage() >= 0 && p.zero_stage() <= 2,
          "parallel.zero_stage must be 0, 1 or 2 (got " + num(p.zero_stage()) +
              "); stage 3 (sharded parameters) is not implemented yet");
  if (p.zero_stage() == 2) check_zero2(cfg);
  require(p.grad_reduce_dtype() == config::RuntimeConfig::FP32 ||
              cfg.runtime().precision() == config::RuntimeConfig::BF16,
          "parallel.grad_reduce_dtype BF16 needs runtime.precision BF16 (the bf16 backend "
          "rounds the gradients for the wire); with FP32 training gradients are reduced in fp32");
  require(p.bucket_mb() > 0, "parallel.bucket_mb must be positive");
  require(p.collective_timeout_s() > 0, "parallel.collective_timeout_s must be positive");
}

}  // namespace

void validate_config(const config::RunConfig& cfg) {
  const auto& m = cfg.model();
  const auto& t = cfg.train();
  const auto& o = cfg.optim();
  check_sizes(cfg);
  require(m.vocab_size() >= 2 && m.vocab_size() <= 65536,
          "model.vocab_size (" + num(m.vocab_size()) +
              ") must be in [2, 65536]: shard tokens are uint16");
  require(m.d_model() > 0, "model.d_model must be positive");
  require(m.n_heads() > 0, "model.n_heads must be positive");
  require(m.d_model() % m.n_heads() == 0,
          "model.n_heads (" + num(m.n_heads()) + ") must divide model.d_model (" +
              num(m.d_model()) + ")");
  require(m.n_kv_heads() >= 0 && (m.n_kv_heads() == 0 || m.n_heads() % m.n_kv_heads() == 0),
          "model.n_kv_heads (" + num(m.n_kv_heads()) + ") must divide model.n_heads (" +
              num(m.n_heads()) + "): each key/value head serves a group of query heads " +
              "(0: n_heads)");
  require(m.d_mlp() > 0, "model.d_mlp must be positive");
  require(m.max_seq_len() > 0, "model.max_seq_len must be positive");
  const int head_dim = m.d_model() / m.n_heads();
  require(m.position() != config::ModelConfig::ROTARY || head_dim % 2 == 0,
          "model.position ROTARY needs an even head dimension, but d_model / n_heads = " +
              num(head_dim));
  require(m.rope_theta() > 0, "model.rope_theta must be positive");
  require(m.norm_eps() > 0, "model.norm_eps must be positive");
  require(m.prelude_layers() >= 0, "model.prelude_layers must not be negative");
  require(m.coda_layers() >= 0, "model.coda_layers must not be negative");
  require(m.block_layers() >= 1, "model.block_layers must be at least 1 (a plain GPT is "
                                 "block_layers = L, loops = 1)");
  require(m.loops() >= 1, "model.loops must be at least 1");
  require(!m.input_injection() || m.loops() >= 2,
          "model.input_injection needs model.loops >= 2: it adds the prelude output at the "
          "start of every iteration after the first");
  validate_loops(cfg);
  require(m.init_std() > 0, "model.init_std must be positive");
  require(m.lm_head_chunk() > 0, "model.lm_head_chunk must be positive");

  require(t.seq_len() > 0, "train.seq_len must be positive");
  require(t.seq_len() <= m.max_seq_len(),
          "train.seq_len (" + num(t.seq_len()) + ") must not exceed model.max_seq_len (" +
              num(m.max_seq_len()) + ")");
  require(t.micro_batch() > 0, "train.micro_batch must be positive");
  require(t.global_batch() > 0, "train.global_batch must be positive");
  require(t.steps() >= 0, "train.steps must not be negative");
  require(t.grad_clip() >= 0, "train.grad_clip must not be negative (0 turns clipping off)");
  require(t.eval_interval() >= 0, "train.eval_interval must not be negative");
  require(t.eval_batches() > 0 || t.eval_interval() == 0,
          "train.eval_batches must be positive when train.eval_interval is set");

  require(o.lr() > 0, "optim.lr must be positive");
  require(o.beta1() >= 0 && o.beta1() < 1, "optim.beta1 must be in [0, 1)");
  require(o.beta2() >= 0 && o.beta2() < 1, "optim.beta2 must be in [0, 1)");
  require(o.eps() > 0, "optim.eps must be positive");
  require(o.weight_decay() >= 0, "optim.weight_decay must not be negative");
  require(o.warmup_steps() >= 0, "optim.warmup_steps must not be negative");
  require(o.lr_min_ratio() >= 0 && o.lr_min_ratio() <= 1, "optim.lr_min_ratio must be in [0, 1]");

  require(!cfg.data().train_shards().empty(), "data.train_shards must name the training shards");
  require(cfg.checkpoint().interval() >= 0, "checkpoint.interval must not be negative");
  require(cfg.checkpoint().keep_last() >= 0, "checkpoint.keep_last must not be negative");
  require(!cfg.checkpoint().directory().empty(), "checkpoint.directory must name a folder");
  {
    const std::filesystem::path dir =
        std::filesystem::path(cfg.checkpoint().directory()).lexically_normal();
    require(dir.is_absolute() || (!dir.empty() && *dir.begin() != ".." && dir != "."),
            "checkpoint.directory \"" + cfg.checkpoint().directory() +
                "\" leaves the run directory (a relative path is inside it, and must name a "
                "folder below it); give an absolute path to keep checkpoints elsewhere");
  }
  require(cfg.logging().interval() > 0, "logging.interval must be positive");
  require(cfg.logging().sample_tokens() >= 0 && cfg.logging().sample_tokens() <= kMaxSampleTokens,
          "logging.sample_tokens must be between 0 and " + num(kMaxSampleTokens) + " (got " +
              num(cfg.logging().sample_tokens()) + ")");
  require(cfg.logging().trace_steps() >= 0,
          "logging.trace_steps must not be negative (0: no trace)");
  require(cfg.logging().sample_temperature() >= 0,
          "logging.sample_temperature must not be negative");
  require(cfg.logging().sample_top_k() >= 0, "logging.sample_top_k must not be negative");
  require(cfg.logging().straggler_pct() >= 0,
          "logging.straggler_pct must not be negative (0: no straggler warning)");
  require(cfg.logging().flight_entries() >= 0,
          "logging.flight_entries must not be negative (0: no flight recorder)");
  require(cfg.runtime().threads() >= 0, "runtime.threads must not be negative (0 = all cores)");
  require(cfg.runtime().peak_tflops() >= 0,
          "runtime.peak_tflops must not be negative (0 = measured: core/peak_flops.h)");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  require(cfg.runtime().threads() <= 4 * cores,
          "runtime.threads (" + num(cfg.runtime().threads()) + ") is more than 4× this machine's " +
              num(cores) + " cores; use 0 for one thread per core");
  validate_parallel(cfg);
}

int recursion_keep(const config::ModelConfig& m, int r, int T) {
  const double c = m.recursion_capacity_size() > 0 ? static_cast<double>(m.recursion_capacity(r))
                                                   : static_cast<double>(m.loops() - r) / m.loops();
  return static_cast<int>(std::floor(c * T + 1e-6));
}

int grad_accum_steps(const config::RunConfig& cfg) {
  return cfg.train().global_batch() / (cfg.train().micro_batch() * cfg.parallel().dp());
}

namespace {

// Makes the data paths absolute: each relative one from `folder`. Those written in a config file
// are taken from the file's folder, so a config runs from any working directory; defaults and
// --set values from the working directory, as a shell would. The run directory's
// config.textproto then names the same files wherever it is read from.
void resolve_data_paths(config::DataConfig& data, const std::filesystem::path& folder) {
  const auto resolve = [&](const std::string& value) {
    if (value.empty() || std::filesystem::path(value).is_absolute()) return value;
    return (std::filesystem::absolute(folder) / value).lexically_normal().string();
  };
  if (data.has_train_shards()) data.set_train_shards(resolve(data.train_shards()));
  if (data.has_val_shards()) data.set_val_shards(resolve(data.val_shards()));
}

}  // namespace

config::RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  config::RunConfig cfg = parse_config_text(read_file(path), path);
  resolve_data_paths(*cfg.mutable_data(), std::filesystem::absolute(path).parent_path());
  for (const std::string& assignment : overrides) apply_override(cfg, assignment);
  validate_config(cfg);
  config::RunConfig full = resolve_defaults(cfg);
  resolve_data_paths(*full.mutable_data(), std::filesystem::current_path());
  return full;
}

config::RunConfig resolve_defaults(const config::RunConfig& cfg) {
  config::RunConfig full = cfg;
  materialize_defaults(&full);
  return full;
}

std::string config_to_text(const config::RunConfig& cfg) {
  const config::RunConfig full = resolve_defaults(cfg);
  std::string text;
  pb::TextFormat::PrintToString(full, &text);
  return text;
}

std::string model_config_json(const config::ModelConfig& model) {
  config::ModelConfig full = model;
  materialize_defaults(&full);
  std::string json;
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!pb::util::MessageToJsonString(full, &json, options).ok()) LOOM_CHECK(false);
  return json;
}

}  // namespace loom
