// Trains CONFIG's model for train.steps steps on seeded random tokens (one micro-batch of
// train.global_batch sequences per step) and writes everything check_parity.py needs to replay
// the run in PyTorch: model.json, train.json, init.safetensors, tokens.bin (steps, B, T+1 int32),
// grads0.safetensors (step-0 gradients of the mean loss, before clipping) and losses.txt.
//
//   parity_dump tests/parity/looped.textproto --out /tmp/dump
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/rng.h"
#include "core/config.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "core/parallel_layout.h"
#include "core/safetensors.h"
#include "core/trainer.h"
#include "kernels/cpu/threads.h"

namespace {

std::vector<loom::NamedTensor> named(const loom::Model& model, const std::vector<float>& buffer) {
  std::vector<loom::NamedTensor> out;
  for (const loom::ParamTensor& t : model.layout.tensors)
    out.push_back({t.name, t.shape, buffer.data() + t.offset});
  return out;
}

int run(int argc, char** argv) {
  if (argc != 4 || std::string(argv[2]) != "--out") {
    std::cerr << "usage: parity_dump CONFIG --out DIR\n";
    return 2;
  }
  const std::string out = argv[3];
  loom::config::RunConfig cfg = loom::load_config(argv[1], {});
  if (cfg.train().micro_batch() != cfg.train().global_batch())
    throw loom::Error("parity configs use one micro-batch per step (micro_batch = global_batch)");
  loom::kernels::cpu::init_threads(cfg.runtime().threads());
  const int B = cfg.train().micro_batch(), T = cfg.train().seq_len(), S = cfg.train().steps();

  loom::Model model = loom::model_create(cfg.model());
  loom::model_init(model, cfg.train().seed());
  loom::Pipeline pipe = loom::pipeline_single(1);
  loom::model_plan(model, B, T, pipe.slots, pipe.boundaries, false,
                   loom::parallel_layout(cfg).recompute);
  loom::Optimizer optimizer = loom::optimizer_create(model);
  loom::safetensors_write(out + "/init.safetensors", named(model, model.buf.params.download()), {});

  loom::Rng rng{cfg.train().seed() + 1};
  std::vector<int> tokens(static_cast<size_t>(S) * B * (T + 1));
  for (int& t : tokens) t = static_cast<int>(rng.below(model.spec.V));
  std::ofstream(out + "/tokens.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(tokens.data()),
             static_cast<std::streamsize>(tokens.size() * sizeof(int)));

  std::ofstream losses(out + "/losses.txt");
  losses.precision(10);
  std::vector<float> lrs;
  std::vector<int> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  for (int s = 0; s < S; ++s) {
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        const int* row = tokens.data() + (static_cast<size_t>(s) * B + b) * (T + 1);
        inputs[b * T + t] = row[t];
        targets[b * T + t] = row[t + 1];
      }
    const float lr = loom::learning_rate(cfg.optim(), S, s);
    lrs.push_back(lr);
    const loom::StepResult r =
        loom::train_step(model, optimizer, pipe, cfg, lr, inputs.data(), targets.data());
    if (!r.finite) throw loom::Error("non-finite loss in the parity run");
    losses << r.loss << "\n";
    // AdamW leaves the gradients as they were: step 0's are still there, unclipped.
    if (s == 0)
      loom::safetensors_write(out + "/grads0.safetensors", named(model, model.buf.grads.download()),
                              {});
  }

  std::ofstream(out + "/model.json") << loom::model_config_json(cfg.model()) << "\n";
  std::ofstream train(out + "/train.json");
  train.precision(10);
  train << "{\"batch\":" << B << ",\"seq_len\":" << T << ",\"steps\":" << S << ",\"lr\":[";
  for (int s = 0; s < S; ++s) train << (s ? "," : "") << lrs[s];
  train << "],\"beta1\":" << cfg.optim().beta1() << ",\"beta2\":" << cfg.optim().beta2()
        << ",\"eps\":" << cfg.optim().eps() << ",\"weight_decay\":" << cfg.optim().weight_decay()
        << ",\"grad_clip\":" << cfg.train().grad_clip() << "}\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "parity_dump: " << e.what() << "\n";
    return 1;
  }
}
