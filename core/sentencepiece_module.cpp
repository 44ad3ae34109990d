// The SentencePiece calls core/tokenizer.cpp makes, built as a module of their own
// (libloom_sentencepiece.so) and loaded with dlopen(RTLD_DEEPBIND). Debian's libsentencepiece
// carries its own copy of protobuf 3.14 with exported symbols; linked into loom, which uses the
// system protobuf, its calls would bind to the other version and abort at start-up. Loaded this
// way the library's own symbols come first. The functions are extern "C" so tokenizer.cpp finds
// them by name; both sides share one libstdc++, so they pass std types, and no exception crosses
// back. (Executables are built with -fPIC so that this libstdc++'s std::cerr, which SentencePiece
// logs to, is the constructed one: CMakeLists.txt.)
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace {

class LineIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& lines) : lines_(lines) {}
  bool done() const override { return at_ >= lines_.size(); }
  void Next() override { ++at_; }
  const std::string& value() const override { return lines_[at_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& lines_;
  size_t at_ = 0;
};

bool check(const sentencepiece::util::Status& status, std::string* error) {
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

// No exception crosses back into loom: each becomes an error message.
template <typename F>
bool guarded(std::string* error, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    *error = e.what();
  } catch (...) {
    *error = "unknown exception";
  }
  return false;
}

using Processor = sentencepiece::SentencePieceProcessor;

}  // namespace

extern "C" {

bool loom_spm_train(const std::vector<std::string>* lines,
                    const std::unordered_map<std::string, std::string>* options,
                    std::string* model, std::string* error) {
  return guarded(error, [&] {
    // Sampling and shuffling of the training lines: the same model from the same text.
    sentencepiece::SetRandomGeneratorSeed(20240520);
    LineIterator it(*lines);
    return check(sentencepiece::SentencePieceTrainer::Train(*options, &it, model), error);
  });
}

void* loom_spm_load(const std::string* path, std::string* error) {
  Processor* processor = nullptr;
  const bool loaded = guarded(error, [&] {
    processor = new Processor();
    return check(processor->Load(*path), error);
  });
  if (loaded) return processor;
  delete processor;
  return nullptr;
}

void loom_spm_free(void* processor) { delete static_cast<Processor*>(processor); }

int loom_spm_pieces(const void* processor) {
  return static_cast<const Processor*>(processor)->GetPieceSize();
}

int loom_spm_eos(const void* processor) { return static_cast<const Processor*>(processor)->eos_id(); }

bool loom_spm_encode(const void* processor, const std::string* text, std::vector<int>* ids,
                     std::string* error) {
  return guarded(error, [&] {
    return check(static_cast<const Processor*>(processor)->Encode(*text, ids), error);
  });
}

bool loom_spm_decode(const void* processor, const std::vector<int>* ids, std::string* text,
                     std::string* error) {
  return guarded(error, [&] {
    return check(static_cast<const Processor*>(processor)->Decode(*ids, text), error);
  });
}

}  // extern "C"
