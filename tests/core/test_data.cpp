#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>

#include "base/error.h"
#include "core/data.h"
#include "core/tokenizer.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

using testing::error_of;

using testing::TempDir;

std::vector<uint16_t> ramp(size_t n, int modulo) {
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint16_t>(i % modulo);
  return v;
}

TEST(Data, SequencesAreConsecutiveWithShiftedTargets) {
  TempDir dir;
  shard_write(dir / "train_000000.bin", ramp(41, 200));  // (41 − 1) / 8 = 5 sequences
  shard_write(dir / "train_000001.bin", ramp(20, 200));  // (20 − 1) / 8 = 2 sequences
  const TokenDataset data = dataset_open(dir / "train_*.bin", 8, 257);
  ASSERT_EQ(data.num_sequences(), 7);
  std::vector<int> in(8), tgt(8);
  dataset_read_sequence(data, 1, in.data(), tgt.data());
  for (int t = 0; t < 8; ++t) {
    EXPECT_EQ(in[t], 8 + t);
    EXPECT_EQ(tgt[t], 9 + t);
  }
  dataset_read_sequence(data, 6, in.data(), tgt.data());  // second shard, second sequence
  EXPECT_EQ(in[0], 8);
  EXPECT_EQ(tgt[7], 16);
}

TEST(Data, ShuffledLoaderVisitsEverySequenceOncePerEpochAndResumesExactly) {
  TempDir dir;
  shard_write(dir / "s_000000.bin", ramp(8 * 50 + 1, 250));
  const TokenDataset data = dataset_open(dir / "s_*.bin", 8, 257);
  DataLoader loader{&data, 99, true};
  std::set<int64_t> seen;
  for (int64_t p = 0; p < 50; ++p) seen.insert(loader_sequence_at(loader, p));
  EXPECT_EQ(seen.size(), 50u);
  EXPECT_NE(loader_sequence_at(loader, 0), loader_sequence_at(loader, 50))
      << "new epoch, new order";

  // Batches 17..19 straddle the epoch boundary at 50; a loader restored at position 48 (as a
  // checkpoint restores it) must produce exactly what the uninterrupted one does.
  std::vector<int> a(3 * 8), at(3 * 8), b(3 * 8), bt(3 * 8);
  DataLoader uninterrupted{&data, 99, true};
  for (int i = 0; i < 17; ++i) loader_next(uninterrupted, a.data(), at.data(), 3);
  DataLoader resumed{&data, 99, true};
  resumed.position = uninterrupted.position;
  loader_next(uninterrupted, a.data(), at.data(), 3);
  loader_next(resumed, b.data(), bt.data(), 3);
  EXPECT_EQ(a, b);
  EXPECT_EQ(at, bt);
}

TEST(Data, CorruptAndTruncatedShardsAreReported) {
  TempDir dir;
  shard_write(dir / "good.bin", ramp(100, 200));
  {
    std::ifstream in(dir / "good.bin", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(dir / "truncated.bin", std::ios::binary) << bytes.substr(0, bytes.size() - 10);
    std::string bad_magic = bytes;
    bad_magic[0] = 'X';
    std::ofstream(dir / "magic.bin", std::ios::binary) << bad_magic;
    std::ofstream(dir / "tiny.bin", std::ios::binary) << bytes.substr(0, 100);
  }
  EXPECT_NE(error_of([&] { shard_open(dir / "truncated.bin"); }).find("is truncated"),
            std::string::npos);
  EXPECT_NE(error_of([&] { shard_open(dir / "magic.bin"); }).find("not a token shard"),
            std::string::npos);
  EXPECT_NE(error_of([&] { shard_open(dir / "tiny.bin"); }).find("shorter than its 1024-byte"),
            std::string::npos);
  EXPECT_NE(error_of([&] { shard_open(dir / "missing.bin"); }).find("cannot open shard"),
            std::string::npos);
  EXPECT_NE(error_of([&] { dataset_open(dir / "nothing_*.bin", 8, 257); }).find("no shard matches"),
            std::string::npos);

  shard_write(dir / "vocab.bin", ramp(300, 300));  // tokens up to 299
  const std::string msg = error_of([&] { dataset_open(dir / "vocab.bin", 8, 257); });
  EXPECT_NE(msg.find("has token 257 at position 257"), std::string::npos) << msg;
}

TEST(Data, PrepareSplitsDocumentsAndEndsEachWithEndOfText) {
  TempDir dir;
  std::filesystem::create_directories(dir / "text/sub");
  for (int i = 0; i < 10; ++i)
    std::ofstream(dir / ("text/sub/doc" + std::to_string(i) + ".py")) << "print(" << i << ")\n";
  std::ofstream(dir / "text/skip.txt") << "not python";
  PrepareOptions options;
  options.inputs = {dir / "text"};
  options.extensions = {".py"};
  options.output_dir = dir / "out";
  options.val_fraction = 0.2;
  options.shard_tokens = 1000;
  const PrepareResult r = prepare_text(options);
  EXPECT_EQ(r.documents, 10);
  EXPECT_EQ(r.val_tokens, 2 * 10);  // "print(N)\n" is 9 bytes + end-of-text
  EXPECT_EQ(r.train_tokens, 8 * 10);
  EXPECT_EQ(r.train_bytes, r.train_tokens);  // bytes: one token per byte (and per end)
  const Shard val = shard_open(dir / "out/val_000000.bin");
  EXPECT_EQ(val.tokens[9], kEndOfText);
  EXPECT_EQ(val.tokens[0], 'p');
  // What the shards hold, beside them.
  const config::DataInfo info = data_info_read(dir / "out/data.textproto");
  EXPECT_EQ(info.tokenizer(), config::DataInfo::BYTES);
  EXPECT_EQ(info.vocab_size(), 257);
  EXPECT_EQ(info.end_of_text(), kEndOfText);
  EXPECT_EQ(info.val_tokens(), 20);
  EXPECT_EQ(info.val_bytes(), 20);
  ASSERT_TRUE(data_info_for_shards(dir / "out/train_*.bin").has_value());
  EXPECT_FALSE(data_info_for_shards(dir / "text/train_*.bin").has_value());
  // Bits per byte of a byte-level loss: the loss in bits.
  EXPECT_DOUBLE_EQ(bits_per_byte(2.0, info.val_tokens(), info.val_bytes()), 2.0 / std::log(2.0));
}

// Issue 22: a data.textproto whose numbers no data set has was trusted (a vocabulary of 0, an
// end-of-text past the vocabulary, negative counts); loom train and loom sample read it through
// data_info_read, which now refuses it naming the file and field.
TEST(Data, DescriptionsNoDataSetHasAreRefused) {
  TempDir dir;
  std::filesystem::create_directories(dir / "text");
  for (int i = 0; i < 5; ++i) std::ofstream(dir / ("text/doc" + std::to_string(i))) << "x = " << i;
  PrepareOptions options;
  options.inputs = {dir / "text"};
  options.output_dir = dir / "out";
  options.val_fraction = 0.2;
  prepare_text(options);
  const std::string path = dir / "out/data.textproto";
  const config::DataInfo good = data_info_read(path);
  const struct {
    std::function<void(config::DataInfo&)> edit;
    const char* error;
  } cases[] = {
      {[](config::DataInfo& i) { i.set_vocab_size(0); }, "vocab_size 0 is outside [1, 65536]"},
      {[](config::DataInfo& i) { i.set_vocab_size(70000); }, "vocab_size 70000 is outside"},
      {[](config::DataInfo& i) { i.set_end_of_text(257); },
       "end_of_text 257 is outside the vocabulary [0, 257)"},
      {[](config::DataInfo& i) { i.set_end_of_text(-1); }, "end_of_text -1 is outside"},
      {[](config::DataInfo& i) { i.set_vocab_size(300); }, "a BYTES tokenizer has vocab_size 257"},
      {[](config::DataInfo& i) { i.set_train_tokens(-5); }, "train_tokens -5 and train_bytes"},
      {[](config::DataInfo& i) { i.set_val_bytes(-1); }, "must not be negative"},
      {[](config::DataInfo& i) { i.set_val_bytes(0); }, "a split with tokens has bytes of text"},
      {[](config::DataInfo& i) {
         i.set_tokenizer(config::DataInfo::SENTENCEPIECE);
         i.set_vocab_size(400);
         i.set_end_of_text(3);
         i.set_tokenizer_file("../elsewhere.model");
       },
       "tokenizer_file \"../elsewhere.model\" is not the name of a file beside it"},
  };
  for (const auto& c : cases) {
    config::DataInfo bad = good;
    c.edit(bad);
    data_info_write(path, bad);
    const std::string error = error_of([&] { data_info_read(path); });
    EXPECT_NE(error.find(c.error), std::string::npos) << error;
    EXPECT_NE(error.find(path), std::string::npos) << error;
  }
  // A directory where the file should be.
  std::filesystem::remove(path);
  std::filesystem::create_directory(path);
  EXPECT_NE(error_of([&] { data_info_read(path); }).find("is a directory"), std::string::npos);
  std::filesystem::remove(path);

  // Counts smaller than what the shards hold describe other shards; a glob of some of them is
  // fine.
  data_info_write(path, good);
  const TokenDataset all = dataset_open(dir / "out/*.bin", 4, 257);
  EXPECT_EQ(error_of([&] { data_info_check_shards(good, path, all); }), "");
  const TokenDataset some = dataset_open(dir / "out/train_*.bin", 4, 257);
  EXPECT_EQ(error_of([&] { data_info_check_shards(good, path, some); }), "");
  config::DataInfo fewer = good;
  fewer.set_train_tokens(good.train_tokens() - 1);
  EXPECT_NE(
      error_of([&] { data_info_check_shards(fewer, path, all); }).find("it describes other shards"),
      std::string::npos);
}

}  // namespace
}  // namespace loom
