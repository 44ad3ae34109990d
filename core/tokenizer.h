// Tokenizers: what turns text into a data set's ids and ids back into text.
//
// SentencePiece runs in a module of its own, libloom_sentencepiece.so, loaded on first use (the
// reason is in core/sentencepiece_module.cpp).
//
// Three kinds. BYTES: ids 0..255 are bytes and 256 is end-of-text (the default data set).
// SENTENCEPIECE: a subword model trained by `loom prepare` (or given to it) through Debian's
// libsentencepiece, configured so that decoding gives the text back exactly (identity
// normalisation, whitespace kept, unknown bytes as byte pieces). LLMC_FILE: llm.c's tokenizer
// file (gpt2_tokenizer.bin: a 256 × uint32 header — magic 20240328, version 1 or 2, vocabulary
// size, end-of-text id from version 2 on — then each token's bytes, length-prefixed), which can
// only decode: it holds no merges.
//
// A data set's tokenizer is described by its DataInfo (configs/loom.proto), written by
// `loom prepare` as data.textproto beside the shards and copied into every run directory.
//
//   loom::Tokenizer tok = loom::tokenizer_for_data("data/sp8k");   // reads data.textproto
//   std::vector<int> ids = loom::tokenizer_encode(tok, "def main():\n");
//   std::string text = loom::tokenizer_decode(tok, ids);           // "def main():\n"
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loom.pb.h"

namespace loom {

struct SentencePieceModel;  // a loaded model (core/tokenizer.cpp)

struct Tokenizer {
  enum class Kind { kBytes, kSentencePiece, kLlmcFile };
  Kind kind = Kind::kBytes;
  int vocab_size = 257, end_of_text = 256;
  std::string source;  // the model or tokenizer file (for messages); "" for bytes
  std::shared_ptr<const SentencePieceModel> sentencepiece;
  std::vector<std::string> token_bytes;  // LLMC_FILE: each id's bytes
};

Tokenizer tokenizer_bytes();
// Loads a SentencePiece model file; throws loom::Error naming it when it cannot.
Tokenizer tokenizer_sentencepiece(const std::string& model_path);
// Reads llm.c's tokenizer file; throws loom::Error naming the file and what is wrong.
Tokenizer tokenizer_llmc_file(const std::string& path);
// The tokenizer `info` describes; its files are relative to `dir`.
Tokenizer tokenizer_from_info(const config::DataInfo& info, const std::string& dir);

// The tokenizer a run decodes with: the one `info` (in `dir`) describes; without a description,
// bytes for a model of the byte vocabulary (257); otherwise none (e.g. llm.c's shards).
std::optional<Tokenizer> tokenizer_for_run(const std::optional<config::DataInfo>& info,
                                           const std::string& dir, int model_vocab_size);

// Text → ids, without an end-of-text. Throws for non-empty text with an llm.c file (it cannot
// encode).
std::vector<int> tokenizer_encode(const Tokenizer& tok, const std::string& text);
// Ids → text; the end-of-text id becomes a line "<|endoftext|>", an id outside the tokenizer's
// vocabulary (a model's vocabulary may be padded past it) "<|id|>".
std::string tokenizer_decode(const Tokenizer& tok, const std::vector<int>& ids);

// Bytes of text `ids` hold, counted as DataInfo counts a split's: one per end-of-text id (the
// document's end), and each run of ids between them decoded (bytes: one per id); an id outside
// the tokenizer's vocabulary counts none. Ids in the order of the data, so that a subword
// tokenizer decodes them as it encoded them (a run cut at an arbitrary point may lose the space
// SentencePiece strips from a text's start).
int64_t tokenizer_text_bytes(const Tokenizer& tok, const std::vector<int>& ids);

// Trains a SentencePiece model (model_type "bpe" or "unigram") of vocab_size pieces on `lines`
// and returns it serialized (the bytes of a .model file). Throws loom::Error with
// SentencePiece's message when it fails (e.g. a vocabulary too small for the text's characters).
std::string sentencepiece_train(const std::vector<std::string>& lines, int vocab_size,
                                const std::string& model_type);

// The DataInfo file beside a data set's shards.
constexpr const char* kDataInfoFile = "data.textproto";
void data_info_write(const std::string& path, const config::DataInfo& info);
// Throws loom::Error naming the file when it cannot be read or parsed.
config::DataInfo data_info_read(const std::string& path);
// The DataInfo in the folder of a shard pattern ("data/sp8k/train_*.bin" → data/sp8k), or none
// (shards made elsewhere, e.g. by llm.c).
std::optional<config::DataInfo> data_info_for_shards(const std::string& pattern,
                                                     std::string* dir = nullptr);

// Whether two data descriptions (in folders a_dir and b_dir) describe the same tokens: the same
// kind, vocabulary, end-of-text and tokenizer file contents.
bool data_info_same_tokens(const config::DataInfo& a, const std::string& a_dir,
                           const config::DataInfo& b, const std::string& b_dir);

// Copies a data set's description (and its tokenizer file) from its folder into a run directory,
// so the run keeps what it was trained on.
void data_info_copy(const config::DataInfo& info, const std::string& from_dir,
                    const std::string& to_dir);

// The tokenizer of the run that wrote `checkpoint`: the one the data.textproto nearest above it
// describes (the run directory's, for RUN/checkpoints/step_N; at most 4 folders up), else
// tokenizer_for_run's fallback (bytes for a model of the byte vocabulary); none otherwise.
std::optional<Tokenizer> tokenizer_of_checkpoint(const std::string& checkpoint,
                                                 int model_vocab_size);
// The folder holding that data.textproto ("" when there is none).
std::string data_info_dir_of_checkpoint(const std::string& checkpoint);

// Bits per byte of a mean loss (nats per token) over a split with `tokens` tokens holding
// `bytes` bytes of text: loss · tokens / (bytes · ln 2).
double bits_per_byte(double loss, int64_t tokens, int64_t bytes);

}  // namespace loom
