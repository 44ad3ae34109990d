#include "core/sample.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>

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

namespace {

// The length of the valid UTF-8 sequence at text[i] (1–4), or 0 when it is not one (overlong
// forms, surrogates and code points past U+10FFFF included).
size_t utf8_length(const std::string& text, size_t i, uint32_t* code) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  size_t n = lead < 0x80           ? 1
             : (lead >> 5) == 0x6  ? 2
             : (lead >> 4) == 0xE  ? 3
             : (lead >> 3) == 0x1E ? 4
                                   : 0;
  if (n == 0 || i + n > text.size()) return 0;
  uint32_t c = n == 1 ? lead : lead & (0x7F >> n);
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    c = (c << 6) | (byte(i + k) & 0x3F);
  }
  static constexpr uint32_t kLeast[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < kLeast[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *code = c;
  return n;
}

}  // namespace

std::string printable_text(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  char escape[12];
  for (size_t i = 0; i < text.size();) {
    uint32_t code = 0;
    const size_t n = utf8_length(text, i, &code);
    if (n == 0) {
      std::snprintf(escape, sizeof(escape), "\\x%02x", static_cast<unsigned char>(text[i]));
      out += escape;
      ++i;
      continue;
    }
    // Controls, and the bidirectional overrides and isolates that reorder what a terminal shows.
    if ((code < 0x20 && code != '\n' && code != '\t') || (code >= 0x7F && code < 0xA0) ||
        (code >= 0x202A && code <= 0x202E) || (code >= 0x2066 && code <= 0x2069)) {
      std::snprintf(escape, sizeof(escape), code < 0x80 ? "\\x%02x" : "\\u%04x", code);
      out += escape;
    } else {
      out.append(text, i, n);
    }
    i += n;
  }
  return out;
}

}  // namespace loom
