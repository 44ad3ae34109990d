#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/data.h"
#include "base/error.h"
#include "core/safetensors.h"
#include "core/trainer.h"
#include "kernels/cpu/threads.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

using testing::error_of;

namespace fs = std::filesystem;
using testing::TempDir;

config::RunConfig tiny_run(const TempDir& dir) {
  std::vector<uint16_t> tokens(4000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint16_t>((i * 7 + i / 13) % 64);
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
  TrainOptions a{.run_dir = dir / "a", .resume = false, .quiet = true};
  train(cfg, a);
  TrainOptions b{.run_dir = dir / "b", .resume = false, .quiet = true};
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
  TrainOptions a{.run_dir = dir / "a", .resume = false, .quiet = true};
  train(cfg, a);
  TrainOptions b{.run_dir = dir / "b", .resume = false, .quiet = true};
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
  TrainOptions options{.run_dir = dir / "run", .resume = false, .quiet = true};
  train(cfg, options);
  EXPECT_NE(error_of([&] { train(cfg, options); }).find("already holds a run"), std::string::npos);
  TrainOptions missing{.run_dir = dir / "none", .resume = true, .quiet = true};
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
  opt.step = 11;  // one of the 12 steps was skipped (non-finite): Adam saw 11 updates
  const CheckpointState state{cfg, 12, 345, 678, 9000};
  for (long step : {4L, 8L, 12L}) {
    CheckpointState s = state;
    s.step = step;
    checkpoint_save(dir / "ckpt", s, model, opt, 2);
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
  EXPECT_EQ(back.data_position, 345);
  EXPECT_EQ(back.rng_state, 678u);
  EXPECT_EQ(back.tokens_seen, 9000);

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
  EXPECT_NE(error_of([&] { checkpoint_load(dir / "ckpt/step_0000008", loaded, &loaded_opt); })
                .find("is truncated"),
            std::string::npos);

  config::RunConfig other = cfg;
  apply_override(other, "model.d_model=32");
  Model wrong = model_create(other.model());
  EXPECT_NE(error_of([&] { checkpoint_load(dir / "ckpt/step_0000008", wrong, nullptr); })
                .find("does not fit this model"),
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
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4, "outside the 4 bytes of data"},
      {R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8,
       "its shape holds 3 floats but its data 8 bytes"},
      {R"({"t":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4, "loom reads F32 only"},
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
