// Tokenizers (core/tokenizer.h): bytes; a SentencePiece model trained on this repository's
// Python sources, whose decoding gives every file back exactly; llm.c's tokenizer file read
// from a file written here in its layout; and `loom prepare` with SentencePiece (shards, token
// counts, end-of-text after every document, the data description).
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/data.h"
#include "base/error.h"
#include "core/tokenizer.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using testing::error_of;
using testing::TempDir;

std::vector<std::string> python_sources() {
  std::vector<std::string> texts;
  for (const auto& entry : fs::recursive_directory_iterator(LOOM_SOURCE_DIR "/tests"))
    if (entry.path().extension() == ".py") {
      std::ifstream in(entry.path(), std::ios::binary);
      std::ostringstream text;
      text << in.rdbuf();
      texts.push_back(text.str());
    }
  return texts;
}

TEST(Tokenizer, BytesRoundTripAndEndOfText) {
  const Tokenizer tok = tokenizer_bytes();
  const std::string text = "def f():\n\treturn 'é'\n";
  const std::vector<int> ids = tokenizer_encode(tok, text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(tokenizer_decode(tok, ids), text);
  EXPECT_EQ(tokenizer_decode(tok, {'a', 256, 'b', 300}), "a\n<|endoftext|>\nb<|300|>");
  // Bytes of text as loom prepare counts them: an end-of-text one, an id past the vocabulary none.
  EXPECT_EQ(tokenizer_text_bytes(tok, {'a', 256, 'b', 300}), 3);
}

TEST(Tokenizer, SentencePieceGivesThePythonSourcesBackExactly) {
  const std::vector<std::string> texts = python_sources();
  ASSERT_GE(texts.size(), 5u);
  std::vector<std::string> lines;
  size_t bytes = 0;
  for (const std::string& text : texts) {
    bytes += text.size();
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) lines.push_back(line);
  }
  TempDir dir;
  const std::string model = sentencepiece_train(lines, 600, "bpe");
  std::ofstream(dir / "sp.model", std::ios::binary) << model;
  const Tokenizer tok = tokenizer_sentencepiece(dir / "sp.model");
  EXPECT_EQ(tok.vocab_size, 600);
  size_t tokens = 0;
  for (const std::string& text : texts) {
    const std::vector<int> ids = tokenizer_encode(tok, text);
    tokens += ids.size();
    EXPECT_EQ(tokenizer_decode(tok, ids), text);
  }
  EXPECT_LT(tokens * 3, bytes * 2) << "subwords: over 1.5 bytes a token";
  // Characters the training text never had come back through byte pieces.
  const std::string unseen = "λ → 日本 \x01";
  EXPECT_EQ(tokenizer_decode(tok, tokenizer_encode(tok, unseen)), unseen);
  EXPECT_NE(error_of([&] { sentencepiece_train({"a b c"}, 70000, "bpe"); })
                .find("SentencePiece training (bpe, vocabulary 70000) failed"),
            std::string::npos);
  EXPECT_NE(error_of([&] { tokenizer_sentencepiece(dir / "missing.model"); })
                .find("cannot open SentencePiece model"),
            std::string::npos);
}

// llm.c's gpt2_tokenizer.bin layout: 256 × uint32 header, then length-prefixed token bytes.
void write_llmc_tokenizer(const fs::path& path, uint32_t version,
                          const std::vector<std::string>& tokens, uint32_t eot) {
  uint32_t header[256] = {};
  header[0] = 20240328;
  header[1] = version;
  header[2] = static_cast<uint32_t>(tokens.size());
  header[3] = eot;
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header), sizeof(header));
  for (const std::string& t : tokens) {
    out.put(static_cast<char>(t.size()));
    out.write(t.data(), static_cast<std::streamsize>(t.size()));
  }
}

TEST(Tokenizer, ReadsLlmcTokenizerFiles) {
  TempDir dir;
  write_llmc_tokenizer(dir / "tok.bin", 2, {"Hello", ",", " world", "<|endoftext|>"}, 3);
  const Tokenizer tok = tokenizer_llmc_file(dir / "tok.bin");
  EXPECT_EQ(tok.vocab_size, 4);
  EXPECT_EQ(tok.end_of_text, 3);
  EXPECT_EQ(tokenizer_decode(tok, {0, 1, 2, 3, 0}), "Hello, world\n<|endoftext|>\nHello");
  EXPECT_NE(error_of([&] { tokenizer_encode(tok, "Hello"); }).find("cannot encode"),
            std::string::npos);
  // Version 1 is GPT-2's: end-of-text 50256.
  std::vector<std::string> gpt2(50257, "x");
  write_llmc_tokenizer(dir / "v1.bin", 1, gpt2, 0);
  EXPECT_EQ(tokenizer_llmc_file(dir / "v1.bin").end_of_text, 50256);
  // Broken files name what is wrong.
  std::ofstream(dir / "short.bin") << "abc";
  EXPECT_NE(error_of([&] { tokenizer_llmc_file(dir / "short.bin"); }).find("shorter than"),
            std::string::npos);
  write_llmc_tokenizer(dir / "magic.bin", 7, {"a"}, 0);
  EXPECT_NE(error_of([&] { tokenizer_llmc_file(dir / "magic.bin"); }).find("version 7"),
            std::string::npos);
  write_llmc_tokenizer(dir / "cut.bin", 2, {"a", "bcd"}, 1);
  fs::resize_file(dir / "cut.bin", fs::file_size(dir / "cut.bin") - 1);
  EXPECT_NE(error_of([&] { tokenizer_llmc_file(dir / "cut.bin"); }).find("token 1 has a bad length"),
            std::string::npos);
  write_llmc_tokenizer(dir / "count.bin", 2, {"a"}, 0);
  std::fstream patch(dir / "count.bin", std::ios::in | std::ios::out | std::ios::binary);
  const uint32_t huge = 1u << 30;
  patch.seekp(2 * sizeof(uint32_t));
  patch.write(reinterpret_cast<const char*>(&huge), sizeof(huge));
  patch.close();
  EXPECT_NE(error_of([&] { tokenizer_llmc_file(dir / "count.bin"); })
                .find("the header promises 1073741824 tokens but 2 bytes follow it"),
            std::string::npos);
}

TEST(Tokenizer, PrepareWithSentencePieceWritesShardsAndTheirDescription) {
  TempDir dir;
  PrepareOptions o;
  o.inputs = {LOOM_SOURCE_DIR "/tests"};
  o.extensions = {".py"};
  o.output_dir = dir / "sp";
  o.val_fraction = 0.2;
  o.tokenizer = config::DataInfo::SENTENCEPIECE;
  o.vocab_size = 500;
  const PrepareResult r = prepare_text(o);
  const config::DataInfo info = data_info_read(dir / "sp/data.textproto");
  EXPECT_EQ(info.tokenizer(), config::DataInfo::SENTENCEPIECE);
  EXPECT_EQ(info.vocab_size(), 500);
  EXPECT_EQ(info.train_tokens(), r.train_tokens);
  EXPECT_GT(2 * info.train_bytes(), 3 * info.train_tokens());
  const Tokenizer tok = tokenizer_from_info(info, dir / "sp");
  // Every document ends with end-of-text: as many as documents over both splits, the last token
  // of each split among them, and the shards decode to the documents again.
  const Shard train = shard_open(dir / "sp/train_000000.bin");
  const Shard val = shard_open(dir / "sp/val_000000.bin");
  EXPECT_EQ(static_cast<int64_t>(train.num_tokens), r.train_tokens);
  EXPECT_EQ(static_cast<int64_t>(val.num_tokens), r.val_tokens);
  int64_t ends[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    const Shard& s = k == 0 ? train : val;
    for (size_t i = 0; i < s.num_tokens; ++i) ends[k] += s.tokens[i] == info.end_of_text();
    EXPECT_EQ(s.tokens[s.num_tokens - 1], info.end_of_text());
  }
  EXPECT_EQ(ends[0] + ends[1], r.documents);
  EXPECT_EQ(ends[1], r.documents / 5);  // ⌊n · 0.2⌋ documents held out
  // The validation shard decodes to its documents: their bytes, each end a 15-byte line.
  const std::vector<int> val_ids(val.tokens, val.tokens + val.num_tokens);
  EXPECT_EQ(static_cast<int64_t>(tokenizer_decode(tok, val_ids).size()),
            info.val_bytes() - ends[1] + 15 * ends[1]);
  // Counted by decoding (loom eval's bits per byte), the split's bytes are the description's.
  EXPECT_EQ(tokenizer_text_bytes(tok, val_ids), info.val_bytes());
  // Too large a vocabulary for uint16 shards, and a bad model type.
  o.output_dir = dir / "big";
  o.vocab_size = 70000;
  EXPECT_NE(error_of([&] { prepare_text(o); }).find("they store uint16 ids, at most 65536"),
            std::string::npos);
  // A file that is not UTF-8 would not come back exactly: refused, naming it.
  fs::create_directories(dir / "latin");
  std::ofstream(dir / "latin/zz.py", std::ios::binary) << "caf\xe9 = 1\n";
  o.inputs = {LOOM_SOURCE_DIR "/tests", dir / "latin"};
  o.output_dir = dir / "latin-out";
  o.vocab_size = 500;
  const std::string latin = error_of([&] { prepare_text(o); });
  EXPECT_NE(latin.find("does not give"), std::string::npos) << latin;
  EXPECT_NE(latin.find("zz.py"), std::string::npos) << latin;
  o.model_type = "wordpiece";
  EXPECT_NE(error_of([&] { prepare_text(o); }).find("--model-type must be bpe or unigram"),
            std::string::npos);
}

}  // namespace
}  // namespace loom
