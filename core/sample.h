// Text generation from a trained model: byte-level tokens, temperature and top-k sampling, the
// context cropped to the model's planned sequence length.
//
//   std::vector<int> out = loom::sample_tokens(model, loom::encode_bytes("def "), 200, 0.8f, 40, rng);
//   std::cout << loom::decode_bytes(out);
#pragma once
#include <string>
#include <vector>

#include "core/model.h"
#include "core/rng.h"

namespace loom {

std::vector<int> encode_bytes(const std::string& text);
// Bytes as they are; the end-of-text token becomes a line "<|endoftext|>".
std::string decode_bytes(const std::vector<int>& tokens);

// Continues `prompt` (an empty prompt starts from end-of-text) by `count` tokens. The model must
// be planned for B ≥ 1. top_k = 0 samples from the whole vocabulary; temperature 0 is greedy.
std::vector<int> sample_tokens(Model& model, const std::vector<int>& prompt, int count,
                               float temperature, int top_k, Rng& rng);

}  // namespace loom
