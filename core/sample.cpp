#include "core/sample.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace loom {

std::vector<int> sample_tokens(Model& model, const std::vector<int>& prompt, int end_of_text,
                               int count, float temperature, int top_k, Rng& rng) {
  std::vector<int> context = prompt.empty() ? std::vector<int>{end_of_text} : prompt;
  for (int token : context)
    if (token < 0 || token >= model.spec.V)
      throw Error("prompt token " + std::to_string(token) +
                  " is outside the model's vocabulary of " + std::to_string(model.spec.V) +
                  (prompt.empty() ? " (no end-of-text token to start "
                                    "from: give a prompt)"
                                  : ""));
  std::vector<int> generated;
  std::vector<float> logits(model.spec.V);
  std::vector<std::pair<float, int>> ranked(model.spec.V);
  for (int n = 0; n < count; ++n) {
    const int T = std::min<int>(static_cast<int>(context.size()), model.plan.T);
    const int* window = context.data() + context.size() - T;
    model_forward(model, window, nullptr, 1, T, 0.0f);
    model_last_logits(model, 1, T, logits.data());
    int next = 0;
    if (temperature <= 0.0f) {
      next = static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    } else {
      for (int v = 0; v < model.spec.V; ++v) ranked[v] = {logits[v], v};
      const int keep = top_k > 0 ? std::min(top_k, model.spec.V) : model.spec.V;
      std::partial_sort(ranked.begin(), ranked.begin() + keep, ranked.end(),
                        [](const auto& a, const auto& b) { return a.first > b.first; });
      double total = 0.0;
      std::vector<double> weight(keep);
      for (int i = 0; i < keep; ++i)
        total += weight[i] = std::exp((ranked[i].first - ranked[0].first) / temperature);
      double pick = rng.uniform() * total;
      next = ranked[keep - 1].second;
      for (int i = 0; i < keep; ++i) {
        if ((pick -= weight[i]) < 0) {
          next = ranked[i].second;
          break;
        }
      }
    }
    context.push_back(next);
    generated.push_back(next);
  }
  return generated;
}

}  // namespace loom
