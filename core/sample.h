// Text generation from a trained model: temperature and top-k sampling of token ids, the
// context cropped to the model's planned sequence length. Text goes in and out through the
// run's tokenizer (core/tokenizer.h).
//
//   std::vector<int> prompt = loom::tokenizer_encode(tok, "def ");
//   std::vector<int> out = loom::sample_tokens(model, prompt, tok.end_of_text, 200, 0.8f, 40, rng);
//   std::cout << loom::printable_text(loom::tokenizer_decode(tok, out));
#pragma once
#include <string>
#include <vector>

#include "core/model.h"
#include "base/rng.h"

namespace loom {

// Continues `prompt` (an empty prompt starts from the end_of_text id) by `count` tokens. The
// model must be planned for B ≥ 1. top_k = 0 samples from the whole vocabulary; temperature 0 is
// greedy.
std::vector<int> sample_tokens(Model& model, const std::vector<int>& prompt, int end_of_text,
                               int count, float temperature, int top_k, Rng& rng);

// Generated text made safe for a terminal and a UTF-8 log: newlines, tabs and valid UTF-8 stay;
// control characters (ESC, CR, DEL, C1) and bidirectional overrides become visible escapes
// (\x1b, \u0085, \u202e), and bytes that are not UTF-8 become \xNN. A byte-level model writes
// any byte, and an ESC would reach the terminal. (A backslash stays as it is: the model's own
// "\x1b" text reads the same as an escaped ESC.)
std::string printable_text(const std::string& text);

}  // namespace loom
