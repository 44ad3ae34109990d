#include "core/run_report.h"

#include <cmath>

#include "core/loop_sampling.h"
#include "core/sample.h"
#include "core/stage_plan.h"

namespace loom {
namespace {

// The end-of-run sample is written once the training loss is below this fraction of a uniform
// guess's, ln(vocab_size).
constexpr double kSampleLossFraction = 0.9;

}  // namespace

void log_layout(RunLog& log, const Run& run, int threads, size_t global_params) {
  const config::RunConfig& cfg = run.cfg;
  const Model& model = run.model;
  const ProcessGroups& groups = run.groups;
  const bool tensor_parallel = model.par.tp.size > 1;
  log.line(format(
      "loom: %zu parameters%s, %zu unrolled layers (%d prelude + %d × %d loops + %d "
      "coda), %s residual, %s%s, %s kernels",
      global_params,
      groups.is_distributed() ? format(" (%zu on this rank)", model.layout.num_params).c_str() : "",
      model.spec.unrolled.size(), cfg.model().prelude_layers(), cfg.model().block_layers(),
      cfg.model().loops(), cfg.model().coda_layers(), model.spec.delay == 2 ? "ladder" : "standard",
      counted(threads, "thread").c_str(), groups.is_distributed() ? " per rank" : "",
      model.buf.backend->name()));
  const config::ModelConfig& m = cfg.model();
  if (cfg.train().recompute() != config::TrainConfig::NONE || m.backprop_loops() > 0 ||
      m.loops_sampling().kind() != config::LoopsSampling::FIXED) {
    std::string deep =
        "train.recompute " + config::TrainConfig::Recompute_Name(cfg.train().recompute());
    if (m.backprop_loops() > 0)
      deep += format("; gradient through the last %d loop iterations", m.backprop_loops());
    if (m.loops_sampling().kind() != config::LoopsSampling::FIXED) {
      std::string counts;
      for (const int loops : eval_loop_counts(cfg))
        counts += (counts.empty() ? "" : ", ") + std::to_string(loops);
      deep += format("; each step's loop count drawn %s from [%d, %d], validation at ",
                     config::LoopsSampling::Kind_Name(m.loops_sampling().kind()).c_str(),
                     m.loops_sampling().min(), m.loops_sampling().max()) +
              counts;
    }
    log.line(format("deep loops: %s; activation arena %.2f MiB%s", deep.c_str(),
                    pipeline_activation_memory(run.pipe, model).planned / (1024.0 * 1024.0),
                    groups.is_distributed() ? " per rank" : ""));
  }
  if (!groups.is_distributed()) return;
  std::string line =
      format("mesh: %d ranks = dp %d × pp %d × sp %d × tp %d", groups.mesh.world_size(),
             groups.mesh.dp, groups.mesh.pp, groups.mesh.sp, groups.mesh.tp);
  if (groups.placement.nodes.size() > 1)
    line += format(" on %s, rank 0 on %s", counted(groups.placement.nodes.size(), "node").c_str(),
                   groups.node().c_str());
  if (tensor_parallel && model.par.tp.sequence)
    line += format(
        "; heads, MLP and vocabulary (%d rows per rank) split over tp, the stream's "
        "tokens too (sequence parallel: reduce-scatters %s, all-gathers before each "
        "region)",
        model.par.vocab.rows,
        model.spec.delay == 2 ? "overlapped by the ladder residual" : "waited at once");
  else if (tensor_parallel)
    line += format("; heads, MLP and vocabulary (%d rows per rank) split over tp, all-reduces %s",
                   model.par.vocab.rows,
                   model.spec.delay == 2 ? "overlapped by the ladder residual" : "waited at once");
  if (groups.mesh.pp > 1) {
    line += format(
        "; pipeline %s over %d stages × %s, %s, bubble %.1f%%", pipeline_kind_title(run.pipe.kind),
        groups.mesh.pp, counted(run.layout.stages.virtual_stages, "chunk").c_str(),
        counted(run.pipe.micro_batches, "micro-batch").c_str(),
        100.0 * pipeline_bubble_fraction(run.pipe.kind, groups.mesh.pp, run.pipe.micro_batches,
                                         run.layout.stages.virtual_stages));
  }
  if (groups.mesh.sp > 1)
    line += format("; sequences of %d tokens cut %s over sp (%d rows per rank), attention %s",
                   cfg.train().seq_len(),
                   run.layout.sequence == SequenceLayout::kZigzag ? "zigzag" : "contiguously",
                   cfg.train().seq_len() / groups.mesh.sp,
                   run.layout.sequence_method == SequenceMethod::kUlysses
                       ? "on a head split over sp (Ulysses all-to-alls)"
                       : "over the sp ring");
  if (run.reducer.comm)
    line += format("; gradients averaged over %d ranks in %s%s%s", run.reducer.comm->size(),
                   counted(run.reducer.buckets.size(), "bucket").c_str(),
                   run.layout.overlap_grad_reduce ? " overlapped with backward" : "",
                   run.zero ? ", ZeRO-1 optimizer shards" : "");
  if (const GradWindowsPlan& w = run.windows.plan; run.windows.comm) {
    size_t step_long = 0;
    for (const GradUnit& u : w.units) step_long += u.step_long ? 1 : 0;
    line += format(
        "; ZeRO-2: gradients averaged over %d ranks into shards, %zu step-long "
        "windows (%.2f MiB) and %d slots of %.2f MiB for %zu layers reduced every "
        "micro-batch",
        run.windows.comm->size(), step_long, w.dedicated_floats * 4.0 / 1048576.0, w.slots,
        w.slot_floats * 4.0 / 1048576.0, w.units.size() - step_long);
  }
  log.line(line);
  if (groups.mesh.pp > 1) {  // every stage, from the one plan all ranks share
    const StagePlan& plan = run.layout.stages;
    for (int stage = 0; stage < plan.pp; ++stage) {
      std::string runs;
      for (const int piece : stage_plan_pieces(plan, stage))
        runs += (runs.empty() ? "" : "; ") +
                stage_plan_describe(cfg.model(), plan.bounds[piece], plan.bounds[piece + 1]);
      log.line(format("pipeline stage %d runs %s", stage, runs.c_str()));
    }
  }
}

void sample_at_end(Run& run, const std::vector<float>* global_params, uint64_t rng_state,
                   const std::optional<Tokenizer>& tokenizer, double last_loss, RunLog& log) {
  const auto& l = run.cfg.logging();
  if (l.sample_tokens() == 0) return;
  const MeshCoord& c = run.groups.coord;
  if (c.dp != 0 || c.pp != 0 || c.sp != 0) return;
  if (!tokenizer) {
    log.line(
        "no sample: the data has no data.textproto saying how to decode it (shards made "
        "elsewhere?); use loom sample --tokenizer-file");
    return;
  }
  // A model whose loss is still near a uniform guess's writes noise.
  const double uniform = std::log(static_cast<double>(run.cfg.model().vocab_size()));
  if (!(last_loss < kSampleLossFraction * uniform)) {
    log.line(
        format("no sample: the loss %.3f is still near a uniform guess's (%.3f = ln %d); "
               "a run this short has learned too little for a sample to say anything",
               last_loss, uniform, run.cfg.model().vocab_size()));
    return;
  }
  Rng sample_rng{rng_state ^ 0x5EEDull};
  const std::vector<int> prompt = tokenizer_encode(*tokenizer, l.sample_prompt());
  std::vector<int> out;
  if (!global_params) {
    model_set_loops(run.model, eval_loops(run.cfg));
    out = sample_tokens(run.model, prompt, tokenizer->end_of_text, l.sample_tokens(),
                        l.sample_temperature(), l.sample_top_k(), sample_rng);
  } else {
    if (run.groups.rank != 0) return;
    Model whole = model_create(run.cfg.model(), run.model.buf.backend);
    whole.buf.params.upload(*global_params);
    model_refresh_weights(whole);
    model_set_loop_range(whole, eval_loops(run.cfg), eval_loops(run.cfg));
    model_plan(whole, 1, run.cfg.train().seq_len());
    out = sample_tokens(whole, prompt, tokenizer->end_of_text, l.sample_tokens(),
                        l.sample_temperature(), l.sample_top_k(), sample_rng);
  }
  // Decoded together: a subword tokenizer joins the prompt's last piece and the first new one.
  std::vector<int> all = prompt;
  all.insert(all.end(), out.begin(), out.end());
  log.line("sample:\n" + printable_text(tokenizer_decode(*tokenizer, all)));
}

}  // namespace loom
