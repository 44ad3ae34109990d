#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "core/safetensors.h"
#include "core/trainer.h"
#include "kernels/cpu/threads.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

// A run's options for a test: its directory, resumed or not, nothing printed.
TrainOptions quiet_run(const std::filesystem::path& dir, bool resume) {
  TrainOptions options;
  options.run_dir = dir;
  options.resume = resume;
  options.quiet = true;
  return options;
}

using testing::error_of;

namespace fs = std::filesystem;
using testing::TempDir;

config::RunConfig tiny_run(const TempDir& dir) {
  std::vector<uint16_t> tokens(4000);
  for (size_t i = 0; i < tokens.size(); ++i)
    tokens[i] = static_cast<uint16_t>((i * 7 + i / 13) % 64);
  shard_write(dir / "train_000000.bin", tokens);
  shard_write(dir / "val_000000.bin", std::vector<uint16_t>(tokens.begin(), tokens.begin() + 500));
  config::RunConfig cfg;
  for (const char* o :
       {"model.vocab_size=64", "model.d_model=16", "model.n_heads=2", "model.d_mlp=32",
        "model.max_seq_len=16", "model.loops=2", "train.seq_len=16", "train.global_batch=4",
        "train.micro_batch=2", "train.steps=8", "train.eval_interval=4", "train.eval_batches=2",
        "optim.warmup_steps=2", "checkpoint.interval=4", "checkpoint.keep_last=0",
        "logging.sample_tokens=0", "runtime.threads=2"})
    apply_override(cfg, o);
  apply_override(cfg, "data.train_shards=" + (dir / "train_*.bin"));
  apply_override(cfg, "data.val_shards=" + (dir / "val_*.bin"));
  validate_config(cfg);
  return cfg;
}

std::vector<std::string> metric_lines(const std::string& run_dir) {
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    // Drop the timing fields; the rest (step, loss, lr, grad_norm, val_loss) must match exactly.
    const size_t cut = line.find(",\"tokens_per_s\"");
    const size_t val = line.find(",\"val_loss\"");
    lines.push_back(line.substr(0, cut) + (val == std::string::npos ? "" : line.substr(val)));
  }
  return lines;
}

TEST(Checkpoint, ResumedRunReproducesTheUninterruptedOne) {
  TempDir dir;
  const config::RunConfig cfg = tiny_run(dir);
  TrainOptions a = quiet_run(dir / "a", false);
  train(cfg, a);
  TrainOptions b = quiet_run(dir / "b", false);
  train(cfg, b);
  // Pretend run b died after step 6: only its step-4 checkpoint survived.
  fs::remove_all(dir / "b/checkpoints/step_0000008");
  b.resume = true;
  const TrainSummary resumed = train(cfg, b);
  EXPECT_EQ(resumed.steps, 8);
  const std::vector<std::string> expected = metric_lines(dir / "a"), got = metric_lines(dir / "b");
  ASSERT_EQ(expected.size(), 8u);
  EXPECT_EQ(got, expected);
  std::ifstream log(dir / "b/train.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("resumed from"), std::string::npos);
}

TEST(Checkpoint, ResumeFallsBackPastADamagedCheckpoint) {
  TempDir dir;
  const config::RunConfig cfg = tiny_run(dir);
  TrainOptions a = quiet_run(dir / "a", false);
  train(cfg, a);
  TrainOptions b = quiet_run(dir / "b", false);
  config::RunConfig shorter = cfg;
  apply_override(shorter, "train.steps=6");  // same data stream; stops after step 6
  apply_override(shorter, "checkpoint.interval=2");
  train(shorter, b);
  {  // the step-6 checkpoint loses a byte of its parameters
    std::fstream f(dir / "b/checkpoints/step_0000006/rank_00000.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x55');
  }
  // ... and step 4's metadata is garbage.
  std::ofstream(dir / "b/checkpoints/step_0000004/checkpoint.textproto", std::ios::trunc) << "{{{";
  b.resume = true;
  config::RunConfig resumed_cfg = cfg;
  apply_override(resumed_cfg, "checkpoint.interval=2");
  train(resumed_cfg, b);
  EXPECT_EQ(metric_lines(dir / "b"), metric_lines(dir / "a"));
  std::ifstream log(dir / "b/train.log");
  std::stringstream text;
  text << log.rdbuf();
  EXPECT_NE(text.str().find("checksum of wte does not match; trying the checkpoint before it"),
            std::string::npos);
  EXPECT_NE(text.str().find("is corrupt (cannot parse it); trying the checkpoint before it"),
            std::string::npos);
  EXPECT_NE(text.str().find("resumed from " + (dir / "b/checkpoints/step_0000002")),
            std::string::npos)
      << text.str();
}

TEST(Checkpoint, RunDirectoryIsNeverOverwritten) {
  TempDir dir;
  config::RunConfig cfg = tiny_run(dir);
  apply_override(cfg, "train.steps=1");
  const TrainOptions options = quiet_run(dir / "run", false);
  train(cfg, options);
  EXPECT_NE(error_of([&] { train(cfg, options); }).find("already holds a run"), std::string::npos);
  const TrainOptions missing = quiet_run(dir / "none", true);
  EXPECT_NE(error_of([&] { train(cfg, missing); }).find("does not exist"), std::string::npos);
}

TEST(Checkpoint, RoundTripIsExactAndCorruptionIsDetected) {
  TempDir dir;
  config::RunConfig cfg = tiny_run(dir);
  kernels::cpu::init_threads(1);
  Model model = model_create(cfg.model());
  model_init(model, 5);
  Optimizer opt = optimizer_create(model);
  std::vector<float> m(opt.m.size()), v(opt.v.size());
  for (size_t i = 0; i < m.size(); ++i) {
    m[i] = 0.001f * static_cast<float>(i % 97);
    v[i] = 0.002f * static_cast<float>(i % 89);
  }
  opt.m.upload(m);
  opt.v.upload(v);
  apply_override(cfg, "train.steps=12");
  for (long step : {4L, 8L, 12L}) {  // 4 sequences of 16 tokens a step
    opt.step = step - 1;             // one step was skipped (non-finite): Adam saw one update fewer
    checkpoint_save(dir / "ckpt", {cfg, step, step * 4, 678, step * 64}, model, opt, 2);
  }
  EXPECT_FALSE(fs::exists(dir / "ckpt/step_0000004")) << "keep_last = 2";
  const std::string latest = checkpoint_latest(dir / "ckpt");
  EXPECT_EQ(fs::path(latest).filename(), "step_0000012");

  Model loaded = model_create(cfg.model());
  Optimizer loaded_opt = optimizer_create(loaded);
  const CheckpointState back = checkpoint_load(latest, loaded, &loaded_opt);
  EXPECT_EQ(loaded.buf.params.download(), model.buf.params.download());
  EXPECT_EQ(loaded_opt.m.download(), m);
  EXPECT_EQ(loaded_opt.v.download(), v);
  EXPECT_EQ(loaded_opt.step, 11) << "Adam's bias correction counts updates, not steps";
  EXPECT_EQ(back.data_position, 48);
  EXPECT_EQ(back.rng_state, 678u);
  EXPECT_EQ(back.tokens_seen, 768);

  {  // flip one byte inside the first tensor
    std::fstream f(latest + "/rank_00000.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x7f');
  }
  EXPECT_NE(error_of([&] { checkpoint_load(latest, loaded, nullptr); }).find("checksum of wte"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { checkpoint_load(dir / "ckpt/step_0000008", loaded, &loaded_opt); }), "")
      << "an older intact checkpoint still loads";
  fs::resize_file(dir / "ckpt/step_0000008/rank_00000.bin", 100);
  EXPECT_NE(error_of([&] {
              checkpoint_load(dir / "ckpt/step_0000008", loaded, &loaded_opt);
            }).find("is truncated"),
            std::string::npos);

  config::RunConfig other = cfg;
  apply_override(other, "model.d_model=32");
  Model wrong = model_create(other.model());
  EXPECT_NE(error_of([&] {
              checkpoint_load(dir / "ckpt/step_0000008", wrong, nullptr);
            }).find("does not fit this model"),
            std::string::npos);
  EXPECT_NE(error_of([&] { checkpoint_read_state(dir / "nowhere"); }).find("no checkpoint at"),
            std::string::npos);
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

TEST(Safetensors, WriteThenReadGivesTheSameTensorsAndMetadata) {
  const std::string dir = ::testing::TempDir() + "/loom-safetensors-test";
  std::filesystem::create_directories(dir);
  const std::vector<float> a{1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f}, b{7.0f};
  safetensors_write(dir + "/x.safetensors", {{"a", {2, 3}, a.data()}, {"b", {1}, b.data()}},
                    {{"format", "pt"}, {"note", "quote \" and \\ backslash"}});
  const SafetensorsFile f = safetensors_read(dir + "/x.safetensors");
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].name, "a");
  EXPECT_EQ(f.tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.tensors[0].values, a);
  EXPECT_EQ(f.tensors[1].values, b);
  EXPECT_EQ(f.metadata.at("note"), "quote \" and \\ backslash");
}

TEST(Safetensors, ReadNamesWhatIsWrong) {
  const std::string dir = ::testing::TempDir() + "/loom-safetensors-bad";
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& header, size_t data_bytes) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    const uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), sizeof(n));
    out << header << std::string(data_bytes, '\0');
    return dir + "/" + name;
  };
  auto error_of = [](const std::string& path) {
    try {
      safetensors_read(path);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const struct {
    const char* header;
    size_t data_bytes;
    const char* error;
  } cases[] = {
      {"{nope", 0, "is not a JSON object"},
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4,
       "outside the 4 bytes of data"},
      {R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
       "its shape holds 3 F32 elements but its data 8 bytes"},
      {R"({"t":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8,
       "loom reads F32, BF16 and F16"},
      {R"({"t":{"dtype":"BF16","shape":[2],"data_offsets":[0,8]}})", 8,
       "its shape holds 2 BF16 elements but its data 8 bytes"},
      {R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, "not a whole number"},
  };
  int index = 0;
  for (const auto& c : cases)
    EXPECT_NE(error_of(write("bad" + std::to_string(index++) + ".st", c.header, c.data_bytes))
                  .find(c.error),
              std::string::npos)
        << c.header;
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// BF16 and F16 tensors (Hugging Face checkpoints) are widened to float exactly.
TEST(Safetensors, ReadsBf16AndF16AsFloats) {
  const std::string path = ::testing::TempDir() + "/loom-safetensors-half.safetensors";
  const std::string header =
      R"({"b":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)"
      R"("h":{"dtype":"F16","shape":[5],"data_offsets":[6,16]},)"
      R"("z":{"dtype":"F32","shape":[0],"data_offsets":[16,16]}})";  // empty: nothing copied
  // bf16: 1.0, -2.5, 3.140625; f16: 1.0, -0.5, 65504 (largest), 2^-24 (smallest subnormal), inf.
  const uint16_t data[8] = {0x3F80, 0xC020, 0x4049, 0x3C00, 0xB800, 0x7BFF, 0x0001, 0x7C00};
  {
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), sizeof(n));
    out << header;
    out.write(reinterpret_cast<const char*>(data), sizeof(data));
  }
  const SafetensorsFile f = safetensors_read(path);
  ASSERT_EQ(f.tensors.size(), 3u);
  EXPECT_TRUE(f.tensors[2].values.empty());
  EXPECT_EQ(f.tensors[0].values, (std::vector<float>{1.0f, -2.5f, 3.140625f}));
  EXPECT_EQ(f.tensors[1].values, (std::vector<float>{1.0f, -0.5f, 65504.0f, std::ldexp(1.0f, -24),
                                                     std::numeric_limits<float>::infinity()}));
}

// Found by fuzz_safetensors: metadata that is not UTF-8 made a header no JSON reader accepts.
TEST(Safetensors, RefusesNamesAndMetadataThatAreNotUtf8) {
  const std::string path = ::testing::TempDir() + "/loom-safetensors-utf8.safetensors";
  const float x = 1.0f;
  EXPECT_THROW(safetensors_write(path, {{"a", {1}, &x}}, {{"loom.config", "caf\xe9"}}), Error);
  EXPECT_THROW(safetensors_write(path, {{"\xc0\xaf", {1}, &x}}, {}), Error);  // overlong '/'
  safetensors_write(path, {{"caf\xc3\xa9", {1}, &x}}, {{"emoji", "\xf0\x9f\x98\x80"}});
  EXPECT_EQ(safetensors_read(path).tensors.at(0).name, "caf\xc3\xa9");
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

using testing::error_of;
using testing::TempDir;
namespace fs = std::filesystem;
using Meta = config::CheckpointMeta;

Meta read_meta_file(const std::string& folder) {
  Meta meta;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(
      read_regular_file(folder + "/checkpoint.textproto", size_t{1} << 28, "metadata"), &meta));
  return meta;
}

void write_meta_file(const std::string& folder, const Meta& meta) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(meta, &text);
  std::ofstream(folder + "/checkpoint.textproto", std::ios::trunc) << text;
}

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A checkpoint consistent with tiny_run's config (4 sequences of 16 tokens a step).
CheckpointState state_at(const config::RunConfig& cfg, long step) {
  return {cfg, step, step * 4, 7, step * 64};
}

// Issue 22: checkpoint.textproto's numbers were trusted. data_position -1 ended a resumed run with
// an internal check's abort, 2^63 − 1 with SIGSEGV; optimizer_step −1 or 2^63 − 1 made AdamW's
// bias correction divide by zero, and the resumed run wrote a checkpoint of NaN. Each such field
// now makes the checkpoint unusable, naming the file and the field.
TEST(Checkpoint, MetadataFieldsNoRunWritesMakeTheCheckpointUnusable) {
  TempDir dir;
  const config::RunConfig cfg = tiny_run(dir);  // train.steps 8
  kernels::cpu::init_threads(1);
  Model model = model_create(cfg.model());
  model_init(model, 5);
  Optimizer opt = optimizer_create(model);
  opt.step = 6;
  const std::string folder = checkpoint_save(dir / "ckpt", state_at(cfg, 6), model, opt, 0);
  const Meta good = read_meta_file(folder);
  const struct {
    std::function<void(Meta&)> edit;
    const char* error;
  } cases[] = {
      {[](Meta& m) { m.set_data_position(-1); },
       "data_position -1 is not step 6 × train.global_batch 4 = 24"},
      {[](Meta& m) { m.set_data_position(INT64_MAX); }, "data_position 9223372036854775807 is not"},
      {[](Meta& m) { m.set_optimizer_step(-1); }, "optimizer_step -1 is outside [0, step 6]"},
      {[](Meta& m) { m.set_optimizer_step(INT64_MAX); },
       "optimizer_step 9223372036854775807 is outside [0, step 6]"},
      {[](Meta& m) { m.set_optimizer_step(7); }, "optimizer_step 7 is outside [0, step 6]"},
      {[](Meta& m) { m.set_step(-1); }, ": step -1 is outside [0, 8]"},
      {[](Meta& m) {
         m.set_step(9);
         m.set_data_position(36);
         m.set_tokens_seen(576);
       },
       ": step 9 is outside [0, 8]"},
      {[](Meta& m) { m.set_step(INT64_MAX); }, ": step 9223372036854775807 is outside"},
      {[](Meta& m) { m.set_tokens_seen(-1); },
       "tokens_seen -1 is not data_position 24 × train.seq_len 16"},
      {[](Meta& m) { m.set_crc_block_bytes(6); }, "crc_block_bytes 6 is not"},
      {[](Meta& m) {
         m.mutable_config()->mutable_train()->set_global_batch(0);
         m.set_data_position(0);
       },
       "config.train.global_batch 0 is not positive"},
  };
  Model loaded = model_create(cfg.model());
  Optimizer loaded_opt = optimizer_create(loaded);
  for (const auto& c : cases) {
    Meta bad = good;
    c.edit(bad);
    write_meta_file(folder, bad);
    for (const std::string& error :
         {error_of([&] { checkpoint_read_state(folder); }),
          error_of([&] { checkpoint_load(folder, loaded, &loaded_opt); })}) {
      EXPECT_NE(error.find(c.error), std::string::npos) << error;
      EXPECT_NE(error.find(folder + "/checkpoint.textproto"), std::string::npos) << error;
    }
  }
  write_meta_file(folder, good);
  EXPECT_EQ(error_of([&] { checkpoint_load(folder, loaded, &loaded_opt); }), "");
  EXPECT_EQ(loaded_opt.step, 6);
}

// ... and --resume falls back past such checkpoints to the newest usable one, and goes on exactly
// as the uninterrupted run.
TEST(Checkpoint, ResumeFallsBackPastCheckpointsWithImpossibleFields) {
  TempDir dir;
  config::RunConfig cfg = tiny_run(dir);
  apply_override(cfg, "checkpoint.interval=2");
  TrainOptions a = quiet_run(dir / "a", false);
  train(cfg, a);
  TrainOptions b = quiet_run(dir / "b", false);
  config::RunConfig shorter = cfg;
  apply_override(shorter, "train.steps=6");
  train(shorter, b);
  Meta six = read_meta_file(dir / "b/checkpoints/step_0000006");
  six.set_data_position(-1);
  write_meta_file(dir / "b/checkpoints/step_0000006", six);
  Meta four = read_meta_file(dir / "b/checkpoints/step_0000004");
  four.set_optimizer_step(-1);
  write_meta_file(dir / "b/checkpoints/step_0000004", four);
  b.resume = true;
  train(cfg, b);
  EXPECT_EQ(metric_lines(dir / "b"), metric_lines(dir / "a"));
  const std::string log = text_of(dir / "b/train.log");
  EXPECT_NE(log.find("data_position -1 is not step 6"), std::string::npos) << log;
  EXPECT_NE(log.find("optimizer_step -1 is outside [0, step 4]"), std::string::npos) << log;
  EXPECT_NE(log.find("resumed from " + (dir / "b/checkpoints/step_0000002")), std::string::npos)
      << log;
}

// Issue 22: a folder step_99999999999999999999 ended every listing with "error: stol". Its
// number fits no step: it is no checkpoint, and read directly it is refused in loom's words.
TEST(Checkpoint, StepFolderNumbersBeyond64BitsAreNoCheckpoints) {
  TempDir dir;
  const config::RunConfig cfg = tiny_run(dir);
  kernels::cpu::init_threads(1);
  Model model = model_create(cfg.model());
  model_init(model, 5);
  const Optimizer opt = optimizer_create(model);
  const std::string folder = checkpoint_save(dir / "ckpt", state_at(cfg, 4), model, opt, 0);
  const std::string huge = dir / "ckpt/step_99999999999999999999";
  fs::create_directories(huge);
  fs::copy_file(folder + "/checkpoint.textproto", huge + "/checkpoint.textproto");
  fs::copy_file(folder + "/rank_00000.bin", huge + "/rank_00000.bin");
  EXPECT_EQ(checkpoint_list(dir / "ckpt"), std::vector<std::string>{folder});
  EXPECT_EQ(checkpoint_latest(dir / "ckpt"), folder);
  EXPECT_NE(error_of([&] { checkpoint_read_state(huge); }).find("not the step its name says"),
            std::string::npos);
  // A save goes on beside it (pruning lists the folder too).
  checkpoint_save(dir / "ckpt", state_at(cfg, 8), model, opt, 1);
  EXPECT_EQ(checkpoint_latest(dir / "ckpt"), dir / "ckpt/step_0000008");
}

// Issue 22: a non-finite checkpoint is never written (it would become the newest and every
// resume would train NaN); every rank refuses together, naming the tensor.
TEST(Checkpoint, NonFiniteStateIsNeverWritten) {
  TempDir dir;
  const config::RunConfig cfg = tiny_run(dir);
  kernels::cpu::init_threads(1);
  Model model = model_create(cfg.model());
  model_init(model, 5);
  Optimizer opt = optimizer_create(model);
  const std::string first = checkpoint_save(dir / "ckpt", state_at(cfg, 4), model, opt, 0);
  const ParamTensor& wte = model.layout.tensors.at(0);
  ASSERT_EQ(wte.name, "wte");
  auto poke = [](kernels::DeviceArray<float>& buffer, size_t at, float value) {
    std::vector<float> host = buffer.download();
    const float old = host[at];
    host[at] = value;
    buffer.upload(host);
    return old;
  };
  const size_t at = wte.offset + 16 + 3;  // row 1, column 3 (d_model 16)
  const struct {
    kernels::DeviceArray<float>* buffer;
    float value;
    const char* error;
  } cases[] = {
      {&model.buf.params, NAN, "params of tensor \"wte\" holds nan at row 1, column 3"},
      {&opt.m, INFINITY, "adam_m of tensor \"wte\" holds inf at row 1, column 3"},
      {&opt.v, -1.0f, "adam_v of tensor \"wte\" holds -1.000000 at row 1, column 3"},
  };
  for (const auto& c : cases)
    for (bool background : {false, true}) {
      const float old = poke(*c.buffer, at, c.value);
      const std::unique_ptr<Communicator> self = make_self_communicator("world", 0);
      CheckpointWriter writer(self.get(), background);
      const std::string error =
          error_of([&] { writer.write(dir / "ckpt", state_at(cfg, 8), model, opt, true, 0); });
      EXPECT_NE(error.find("checkpoint of step 8 not written: " + std::string(c.error)),
                std::string::npos)
          << error;
      EXPECT_EQ(writer.wait(), "");
      poke(*c.buffer, at, old);
    }
  std::vector<std::string> left;
  for (const auto& entry : fs::directory_iterator(dir / "ckpt"))
    left.push_back(entry.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"step_0000004"}) << "nothing written, nothing left";
  EXPECT_EQ(checkpoint_latest(dir / "ckpt"), first);
}

// Issue 22: two runs with one absolute checkpoint.directory destroyed each other: run B pruned
// run A's checkpoints. The directory belongs to the first run (its OWNER file); another is
// refused it, the owner is accepted again (also from a moved run directory), and pruning
// removes only checkpoints that carry the run's own token.
TEST(CheckpointOwner, ASecondRunIsRefusedAndPruningKeepsOtherRunsCheckpoints) {
  TempDir dir;
  const std::string shared = dir / "shared";
  fs::create_directories(dir / "a");
  fs::create_directories(dir / "b");
  const std::string a = checkpoint_claim_directory(shared, dir / "a");
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(text_of(dir / "a/run.token"), a + "\n");
  EXPECT_NE(text_of(shared + "/OWNER").find("run_dir: " + (dir / "a")), std::string::npos);
  const std::string refused = error_of([&] { checkpoint_claim_directory(shared, dir / "b"); });
  EXPECT_NE(refused.find("checkpoint.directory " + shared + " belongs to another run, the one in " +
                         (dir / "a")),
            std::string::npos)
      << refused;
  EXPECT_NE(refused.find("--resume --run-dir " + (dir / "a")), std::string::npos) << refused;
  EXPECT_FALSE(fs::exists(dir / "b/checkpoints"));
  EXPECT_EQ(checkpoint_claim_directory(shared, dir / "a"), a) << "the owner resumes";
  fs::rename(dir / "a", dir / "moved");
  EXPECT_EQ(checkpoint_claim_directory(shared, dir / "moved"), a) << "wherever its directory is";
  EXPECT_NE(text_of(shared + "/OWNER").find("run_dir: " + (dir / "moved")), std::string::npos);

  // Checkpoints of another run (from before loom recorded owners, or copied in), with and
  // without a token, survive the owner's keep_last; the owner's own older ones do not.
  const config::RunConfig cfg = tiny_run(dir);
  kernels::cpu::init_threads(1);
  Model model = model_create(cfg.model());
  model_init(model, 5);
  const Optimizer opt = optimizer_create(model);
  const std::string b = checkpoint_claim_directory(dir / "b/checkpoints", dir / "b");
  checkpoint_save(shared, state_at(cfg, 1), model, opt, 0, b);
  checkpoint_save(shared, state_at(cfg, 2), model, opt, 0);
  for (long step : {3L, 4L, 5L, 6L}) checkpoint_save(shared, state_at(cfg, step), model, opt, 2, a);
  std::vector<std::string> left;
  for (const std::string& folder : checkpoint_list(shared))
    left.push_back(fs::path(folder).filename().string());
  EXPECT_EQ(left, (std::vector<std::string>{"step_0000001", "step_0000002", "step_0000005",
                                            "step_0000006"}));
  EXPECT_EQ(read_meta_file(shared + "/step_0000006").run_token(), a);

  // A directory a loom without owners wrote is unowned: the first run to claim it takes it.
  const std::string legacy = dir / "legacy";
  checkpoint_save(legacy, state_at(cfg, 1), model, opt, 0);
  EXPECT_EQ(checkpoint_claim_directory(legacy, dir / "b"), b);
  EXPECT_NE(error_of([&] {
              checkpoint_claim_directory(legacy, dir / "moved");
            }).find("belongs to another run, the one in " + (dir / "b")),
            std::string::npos);
}

}  // namespace
}  // namespace loom
