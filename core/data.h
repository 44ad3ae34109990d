// Token shards and the data loader.
//
// A shard is llm.c's .bin layout: 256 int32 header (magic 20240520, version 1, token count), then
// that many uint16 tokens. A data set is the sorted list of shards a glob pattern matches; it is
// cut into sequences of T + 1 tokens (inputs plus the next-token targets) that never cross a
// shard boundary, consecutive sequences overlapping by one token. The loader's position is the
// number of sequences consumed, so a checkpoint restores it exactly and later data-parallel
// ranks can each take a disjoint slice of every global batch.
//
//   loom::TokenDataset train = loom::dataset_open("data/pystdlib/train_*.bin", T, vocab);
//   loom::DataLoader loader{&train, seed, /*shuffle=*/true};
//   loader_next(loader, inputs, targets, B);   // (B, T) each
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "loom.pb.h"

namespace loom {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr int kShardHeaderInts = 256;
constexpr int kEndOfText = 256;  // byte-level tokenizer: tokens 0..255 are bytes
constexpr int kMaxShardVocabulary = 65536;  // shards store uint16 ids

// A read-only memory-mapped shard; validated on open (header and size).
struct Shard {
  std::string path;
  size_t num_tokens = 0;
  const uint16_t* tokens = nullptr;  // the tokens as they were when opened (validation)
  std::shared_ptr<void> mapping;  // unmaps when the last copy goes
  // Training reads through the file, not the mapping: a shard truncated or rewritten while a run
  // reads it is then an error naming it (a mapping would end the process with SIGBUS).
  std::shared_ptr<int> fd;        // closes when the last copy goes
  // The file's size and modification time when opened: a read finding them changed (the file
  // written over in place) stops the run naming the shard.
  int64_t file_bytes = 0, modified_ns = 0;
};

struct TokenDataset {
  std::string pattern;
  int T = 0;
  int vocab_size = 0;
  std::vector<Shard> shards;
  std::vector<int64_t> first_sequence;  // (shards + 1) prefix sums of sequences per shard
  int64_t num_sequences() const { return first_sequence.back(); }
};

// Opens and validates one shard; throws loom::Error naming the file and what is wrong.
Shard shard_open(const std::string& path);

// Writes tokens as a shard (temporary file, then rename).
void shard_write(const std::string& path, const std::vector<uint16_t>& tokens);

// The files `pattern` (a glob) matches, sorted; throws loom::Error when none does.
std::vector<std::string> shard_paths(const std::string& pattern);

// Opens every shard matching `pattern` and checks every token is below vocab_size; throws when
// none match, a token is out of range, or no shard holds a sequence of T+1.
TokenDataset dataset_open(const std::string& pattern, int T, int vocab_size);

// Copies sequence `index` (0 ≤ index < num_sequences) as T inputs and T targets, read from the
// shard's file; throws loom::Error naming the shard when it has changed since it was opened
// (written over: another size or modification time; or a token not below vocab_size).
void dataset_read_sequence(const TokenDataset& data, int64_t index, int* inputs, int* targets);

struct DataLoader {
  DataLoader(const TokenDataset* data, uint64_t seed, bool shuffle)
      : data(data), seed(seed), shuffle(shuffle) {}

  const TokenDataset* data = nullptr;
  uint64_t seed = 0;
  bool shuffle = false;
  int64_t position = 0;  // sequences consumed since the start of training

  // Cached permutation of the current epoch (shuffle only).
  int64_t permuted_epoch = -1;
  std::vector<int64_t> permutation;
};

// Fills (B, T) inputs and targets with the next B sequences and advances the position.
void loader_next(DataLoader& loader, int* inputs, int* targets, int B);

// The data-set sequence that stream position `position` maps to (epoch-wise permutation when
// shuffling, identity otherwise).
int64_t loader_sequence_at(DataLoader& loader, int64_t position);

// `loom prepare`: reads text files (directories recursively, keeping files whose names end in
// one of `extensions`, or all when empty), tokenizes each with an end-of-text id after it, and
// writes train_NNNNNN.bin and val_NNNNNN.bin shards into output_dir (which must hold no shards
// yet), with data.textproto (DataInfo) and, for SentencePiece, tokenizer.model beside them.
// Documents are taken in sorted path order; ⌊n · val_fraction⌋ of every first n go to
// validation, spread evenly. A SentencePiece model is trained on the training documents' lines
// unless tokenizer_model names one.
struct PrepareOptions {
  std::vector<std::string> inputs, extensions;
  std::string output_dir;
  double val_fraction = 0.05;
  int64_t shard_tokens = 100000000;
  config::DataInfo::Tokenizer tokenizer = config::DataInfo::BYTES;
  int vocab_size = 8192;           // SENTENCEPIECE trained here: pieces, ≤ kMaxShardVocabulary
  std::string model_type = "bpe";  // bpe or unigram
  std::string tokenizer_model;     // SENTENCEPIECE: an existing .model instead of training one
};
struct PrepareResult {
  int64_t documents = 0, train_tokens = 0, val_tokens = 0, train_bytes = 0, val_bytes = 0;
  int train_shards = 0, val_shards = 0;
  int vocab_size = 0, end_of_text = 0;
};
PrepareResult prepare_text(const PrepareOptions& options);

// A data description (data.textproto, DataInfo) read from `path`, checked before anything uses
// it; throws loom::Error naming the file and field: vocab_size outside [1, 65536], end_of_text
// outside the vocabulary, BYTES other than 257 ids with end-of-text 256, a SENTENCEPIECE
// tokenizer_file that is not a file name beside it, a negative token or byte count, or a split
// with tokens but no bytes (or bytes but no tokens). data_info_read calls it (loom train, loom
// sample).
void data_info_check(const config::DataInfo& info, const std::string& path);

// The shards `data` opened, described by `info` (read from `path`), hold no more tokens than it
// counts in both splits (a glob may take a subset of them, never more); throws loom::Error.
// Skipped for a description without counts.
void data_info_check_shards(const config::DataInfo& info, const std::string& path,
                            const TokenDataset& data);

}  // namespace loom
