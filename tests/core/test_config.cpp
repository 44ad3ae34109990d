#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "base/error.h"
#include "base/names.h"
#include "core/config.h"
#include "core/loop_sampling.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

using testing::error_of;

// What validate_config says of the default config with `sets` applied ("" when it is valid).
std::string violations(const std::vector<std::string>& sets) {
  config::RunConfig cfg;
  for (const std::string& s : sets) apply_override(cfg, s);
  return error_of([&] { validate_config(cfg); });
}

TEST(Config, DefaultConfigFileIsValid) {
  const config::RunConfig cfg =
      load_config(std::string(LOOM_SOURCE_DIR) + "/configs/default.textproto", {});
  EXPECT_GE(cfg.model().loops(), 2);
  EXPECT_EQ(grad_accum_steps(cfg) * cfg.train().micro_batch(), cfg.train().global_batch());
}

TEST(Config, UnknownFieldNamesFileLineAndColumn) {
  const std::string msg = error_of(
      [] { parse_config_text("model {\n  d_model: 64\n  d_modle: 3\n}\n", "run.textproto"); });
  EXPECT_NE(msg.find("run.textproto:3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("d_modle"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Fields: vocab_size, d_model,"), std::string::npos) << msg;
}

TEST(Config, BadEnumListsValidValues) {
  const std::string msg =
      error_of([] { parse_config_text("model { residual: LADDR }", "x.textproto"); });
  EXPECT_NE(msg.find("x.textproto:1:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Valid values: STANDARD, LADDER"), std::string::npos) << msg;
}

TEST(Config, MistakesSayWhatWasMeantAndWhere) {
  // A misspelled field: the closest one, at the field's own position.
  std::string msg = error_of([] { parse_config_text("model {\n  d_mpl: 3\n}\n", "a.textproto"); });
  EXPECT_NE(msg.find("a.textproto:2:3:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(did you mean d_mlp?)"), std::string::npos) << msg;
  // A bad enum value is reported at its own line and column, not at the token after it.
  msg = error_of([] {
    parse_config_text("model {\n  d_model: 64\n  residual: LADDR\n}\ntrain {\n  steps: 2\n}\n",
                      "b.textproto");
  });
  EXPECT_NE(msg.find("b.textproto:3:13: Unknown enumeration value of \"LADDR\""), std::string::npos)
      << msg;
  // ... also after a comment naming it, and with tabs, which protobuf counts as up to 8 columns.
  msg =
      error_of([] { parse_config_text("model {\n  residual: LADDR # LADDR is a typo\n}\n", "d"); });
  EXPECT_NE(msg.find("d:2:13: Unknown enumeration value"), std::string::npos) << msg;
  msg = error_of([] { parse_config_text("model {\n\td_mpl: 3\n\td_mpl: 4\n}\n", "e"); });
  EXPECT_NE(msg.find("e:2:2: Message type"), std::string::npos) << msg;
  // A bad number names its field.
  msg = error_of([] { parse_config_text("model {\n  d_model: abc\n}\n", "c.textproto"); });
  EXPECT_NE(msg.find("c.textproto:2:12: d_model: Expected integer"), std::string::npos) << msg;
  config::RunConfig cfg;
  msg = error_of([&] { apply_override(cfg, "model.d_mpl=3"); });
  EXPECT_NE(msg.find("(did you mean d_mlp?)"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "train.steps"); });
  EXPECT_NE(msg.find("--set train.steps=VALUE"), std::string::npos) << msg;
  EXPECT_EQ(closest_name("d_modle", {"d_model", "d_mlp", "n_heads"}), "d_model");
  EXPECT_EQ(closest_name("zzz", {"d_model", "d_mlp"}), "");
}

TEST(Config, EnumValuesIgnoreCase) {
  const config::RunConfig cfg = parse_config_text(
      "model { residual: ladder norm: rmsnorm }\ntrain { recompute: Loop_Boundary }", "x");
  EXPECT_EQ(cfg.model().residual(), config::ModelConfig::LADDER);
  EXPECT_EQ(cfg.train().recompute(), config::TrainConfig::LOOP_BOUNDARY);
  config::RunConfig set;
  apply_override(set, "model.residual=ladder");
  EXPECT_EQ(set.model().residual(), config::ModelConfig::LADDER);
}

TEST(Config, DataPathsAreRelativeToTheConfigFile) {
  namespace fs = std::filesystem;
  const testing::TempDir temp;
  const fs::path dir = temp.str();
  fs::create_directories(dir / "configs");
  std::ofstream(dir / "configs" / "run.textproto")
      << "data { train_shards: \"../data/train_*.bin\" val_shards: \"/abs/val_*.bin\" }\n";
  const config::RunConfig cfg = load_config((dir / "configs" / "run.textproto").string(), {});
  EXPECT_EQ(cfg.data().train_shards(), (fs::absolute(dir) / "data" / "train_*.bin").string());
  EXPECT_EQ(cfg.data().val_shards(), "/abs/val_*.bin");
  // --set values and defaults are the working directory's.
  const config::RunConfig set = load_config((dir / "configs" / "run.textproto").string(),
                                            {"data.train_shards=mine/train_*.bin"});
  EXPECT_EQ(set.data().train_shards(), (fs::current_path() / "mine" / "train_*.bin").string());
  std::ofstream(dir / "configs" / "plain.textproto") << "train { steps: 2 }\n";
  const config::RunConfig plain = load_config((dir / "configs" / "plain.textproto").string(), {});
  EXPECT_EQ(plain.data().train_shards(),
            (fs::current_path() / "data" / "pystdlib" / "train_*.bin").string());
  // The run's own config.textproto, read back from anywhere, names the same files.
  std::ofstream(dir / "saved.textproto") << config_to_text(set);
  EXPECT_EQ(load_config((dir / "saved.textproto").string(), {}).data().train_shards(),
            set.data().train_shards());
}

TEST(Config, OverridesSetNestedScalarsAndEnums) {
  config::RunConfig cfg;
  apply_override(cfg, "optim.lr=0.5");
  apply_override(cfg, "model.residual=LADDER");
  apply_override(cfg, "model.input_injection=true");
  apply_override(cfg, "data.train_shards=/tmp/a_*.bin");
  EXPECT_FLOAT_EQ(cfg.optim().lr(), 0.5f);
  EXPECT_EQ(cfg.model().residual(), config::ModelConfig::LADDER);
  EXPECT_TRUE(cfg.model().input_injection());
  EXPECT_EQ(cfg.data().train_shards(), "/tmp/a_*.bin");
}

TEST(Config, BadOverridesSayWhatIsWrong) {
  config::RunConfig cfg;
  std::string msg = error_of([&] { apply_override(cfg, "model.d_modle=3"); });
  EXPECT_NE(msg.find("--set model.d_modle=3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no field \"d_modle\" in model"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "model.residual=SIDEWAYS"); });
  EXPECT_NE(msg.find("Valid values: STANDARD, LADDER"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "optim.lr=fast"); });
  EXPECT_NE(msg.find("not a valid number"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "optim=3"); });
  EXPECT_NE(msg.find("is a section"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "optim.lr"); });
  EXPECT_NE(msg.find("expected path.to.field=value"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "model.tie_embeddings=yes"); });
  EXPECT_NE(msg.find("true or false"), std::string::npos) << msg;
}

TEST(Config, EvalLoopsIsAList) {
  // Text: a list, or the field repeated; --set: a comma list that replaces the values.
  config::RunConfig cfg = parse_config_text("train { eval_loops: [1, 2, 4] }", "x");
  EXPECT_EQ(eval_loop_counts(cfg), (std::vector<int>{1, 2, 4}));
  cfg = parse_config_text("train { eval_loops: 8 eval_loops: 2 }", "x");
  EXPECT_EQ(eval_loop_counts(cfg), (std::vector<int>{8, 2}));
  EXPECT_EQ(eval_loops(cfg), 8) << "validation's val_loss and sampling take the first";
  apply_override(cfg, "train.eval_loops=1, 16,32");
  EXPECT_EQ(eval_loop_counts(cfg), (std::vector<int>{1, 16, 32}));
  EXPECT_EQ(run_loop_counts(cfg).min, 1);
  EXPECT_EQ(run_loop_counts(cfg).max, 32) << "the arena is planned for the largest";
  // None listed, or a 0 (a single count of 0 meant model.loops before the field was a list):
  // model.loops, so configs and checkpoints written then read the same.
  apply_override(cfg, "train.eval_loops=");
  EXPECT_EQ(eval_loop_counts(cfg), (std::vector<int>{cfg.model().loops()}));
  cfg = parse_config_text("train { eval_loops: 0 }", "old");
  EXPECT_EQ(eval_loop_counts(cfg), (std::vector<int>{cfg.model().loops()}));
  EXPECT_EQ(error_of([&] { validate_config(cfg); }), "");
  // The list survives the run's config.textproto.
  apply_override(cfg, "train.eval_loops=4,1");
  const config::RunConfig back = parse_config_text(config_to_text(cfg), "written");
  EXPECT_EQ(eval_loop_counts(back), (std::vector<int>{4, 1}));

  std::string msg = error_of([&] { apply_override(cfg, "train.eval_loops=1,x"); });
  EXPECT_NE(msg.find("\"x\" is not a valid number"), std::string::npos) << msg;
  msg = error_of([&] { apply_override(cfg, "train.eval_loops=1,,2"); });
  EXPECT_NE(msg.find("an empty item in the list"), std::string::npos) << msg;
  msg = error_of([&] { parse_config_text("train { eval_loops: [1, two] }", "y"); });
  EXPECT_NE(msg.find("y:1:"), std::string::npos) << msg;
  EXPECT_EQ(violations({"train.eval_loops=1,2,4,8"}), "");
  EXPECT_NE(
      violations({"train.eval_loops=2,-1"}).find("train.eval_loops (-1) must not be negative"),
      std::string::npos);
  EXPECT_NE(violations({"train.eval_loops=2,4,2"}).find("lists the loop count 2 twice"),
            std::string::npos);
  EXPECT_NE(violations({"train.eval_loops=0,4"}).find("lists the loop count 4 twice"),
            std::string::npos)
      << "0 is model.loops (4)";
  EXPECT_NE(violations({"train.eval_loops=2,1", "model.input_injection=true"})
                .find("train.eval_loops (1) must be at least 2 with model.input_injection"),
            std::string::npos);
  EXPECT_NE(violations({"train.eval_loops=4,8", "parallel.pp=2"})
                .find("train.eval_loops (8) differs from model.loops (4) but parallel.pp is 2"),
            std::string::npos);
  EXPECT_EQ(violations({"train.eval_loops=4,0", "parallel.pp=2"}).find("differs"),
            std::string::npos);
  EXPECT_NE(violations({"train.eval_loops=2,2097152"}).find("larger than loom accepts"),
            std::string::npos);
  std::string many = "train.eval_loops=1";
  for (int i = 2; i <= 65; ++i) many.append(",").append(std::to_string(i));
  EXPECT_NE(violations({many}).find("lists 65 loop counts; at most 64"), std::string::npos);
}

TEST(Config, InvariantsNameTheFields) {
  auto violation = [](const std::string& assignment) {
    config::RunConfig cfg;
    apply_override(cfg, assignment);
    return error_of([&] { validate_config(cfg); });
  };
  EXPECT_EQ(error_of([] { validate_config(config::RunConfig()); }), "");
  EXPECT_NE(violation("model.n_heads=5").find("model.n_heads (5) must divide model.d_model (128)"),
            std::string::npos);
  EXPECT_NE(violation("train.seq_len=300").find("must not exceed model.max_seq_len (256)"),
            std::string::npos);
  EXPECT_NE(violation("train.global_batch=12").find("multiple of train.micro_batch"),
            std::string::npos);
  EXPECT_NE(violation("parallel.tp=3").find("parallel.tp (3) must divide model.n_heads (4)"),
            std::string::npos);
  EXPECT_NE(violation("parallel.sp=3").find(
                "train.seq_len (256) must be divisible by 2 × parallel.sp (6)"),
            std::string::npos);
  EXPECT_NE(violation("parallel.sp=3").find("zigzag"), std::string::npos);
  EXPECT_EQ(violation("parallel.sp=4"), "");  // sequence parallelism trains
  config::RunConfig contiguous;
  apply_override(contiguous, "parallel.sequence_layout=CONTIGUOUS");
  apply_override(contiguous, "parallel.sp=4");
  apply_override(contiguous, "train.seq_len=36");
  EXPECT_EQ(error_of([&] { validate_config(contiguous); }), "");
  apply_override(contiguous, "train.seq_len=38");
  EXPECT_NE(error_of([&] { validate_config(contiguous); })
                .find("train.seq_len (38) must be divisible by parallel.sp (4)"),
            std::string::npos);
  EXPECT_NE(
      violation("parallel.zero_stage=3").find("parallel.zero_stage must be 0, 1 or 2 (got 3)"),
      std::string::npos);
  EXPECT_EQ(violation("parallel.pp=2"), "");  // pipeline parallelism trains
  EXPECT_NE(violation("parallel.pp=4").find("= 2) must be at least parallel.pp (4)"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.sp=2", "model.position=ROTARY", "model.max_seq_len=16777216",
                        "train.seq_len=16777216"})
                .find("floats in one message (micro_batch × seq_len / sp × 2 × d_model / tp)"),
            std::string::npos);
  EXPECT_NE(
      violations({"parallel.pp=2", "parallel.virtual_stages=2"})
          .find("parallel.virtual_stages (2) applies to INTERLEAVED_1F1B and ZERO_BUBBLE_V only"),
      std::string::npos);
  EXPECT_NE(violations({"parallel.pp=2", "parallel.pipeline_schedule=INTERLEAVED_1F1B",
                        "parallel.virtual_stages=2", "train.micro_batch=16"})
                .find("= 1) must be at least parallel.pp (2)"),
            std::string::npos);
  EXPECT_EQ(violations({"parallel.pp=2", "parallel.pipeline_schedule=INTERLEAVED_1F1B",
                        "parallel.virtual_stages=2", "train.micro_batch=4"}),
            "");
  // ZB-V: two chunks per rank in a V, the weight pass deferred as ZB-H1's.
  EXPECT_EQ(violations({"parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_V",
                        "parallel.virtual_stages=2", "train.micro_batch=4"}),
            "");
  EXPECT_NE(violations({"parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_V",
                        "train.micro_batch=4"})
                .find("ZERO_BUBBLE_V runs two chunks per rank in a V: set "
                      "parallel.virtual_stages: 2 (got 1)"),
            std::string::npos);
  EXPECT_EQ(violations({"parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_V",
                        "parallel.virtual_stages=2", "train.micro_batch=4",
                        "train.recompute=LOOP_BOUNDARY"}),
            "");
  EXPECT_NE(
      violations({"parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_V",
                  "parallel.virtual_stages=2", "train.micro_batch=4", "model.backprop_loops=2"})
          .find("model.backprop_loops cannot run with parallel.pipeline_schedule "
                "ZERO_BUBBLE_V"),
      std::string::npos);
  // Sequence parallelism inside tp: tp > 1, whole tokens per tp rank, no routed loop.
  EXPECT_EQ(violations({"parallel.tp=2", "parallel.tp_sequence_parallel=true"}), "");
  EXPECT_NE(violation("parallel.tp_sequence_parallel=true").find("needs parallel.tp > 1"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.tp=4", "parallel.tp_sequence_parallel=true",
                        "train.micro_batch=1", "train.seq_len=6", "train.global_batch=4"})
                .find("must be divisible by parallel.tp (4)"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.tp=2", "parallel.tp_sequence_parallel=true",
                        "model.recursion_router=TOKEN_CHOICE"})
                .find("does not support model.recursion_router"),
            std::string::npos);
  // Ulysses: whole heads per sp rank.
  EXPECT_EQ(violations({"parallel.sp=4", "parallel.sequence_method=ULYSSES"}), "");
  EXPECT_NE(violation("parallel.sequence_method=ULYSSES").find("needs parallel.sp > 1"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.sp=2", "parallel.tp=4", "parallel.sequence_method=ULYSSES"})
                .find("parallel.sp (2) must divide the heads per tensor-parallel rank, "
                      "model.n_heads / parallel.tp = 1"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.sp=2", "model.n_kv_heads=1", "parallel.sequence_method=ULYSSES"})
                .find("model.n_kv_heads / parallel.tp = 1"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.pp=2", "parallel.pipeline_layout=3,3,3"})
                .find("has 3 numbers but the pipeline has 2 pieces"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.pp=2", "parallel.pipeline_layout=3,x"})
                .find("\"x\" is not a number of layers"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.virtual_stages=2"}).find("needs parallel.pp > 1"),
            std::string::npos);
  EXPECT_NE(violations({"parallel.pipeline_schedule=INTERLEAVED_1F1B"})
                .find("needs parallel.virtual_stages of at least 2"),
            std::string::npos);
  for (const char* layout : {"3 4,6", "2,8,", ",2,8", "2,,8", "2,+8", "-2,12", "2,8000000"})
    EXPECT_NE(violations({"parallel.pp=2", std::string("parallel.pipeline_layout=") + layout})
                  .find("is not a number of layers"),
              std::string::npos)
        << layout;
  EXPECT_EQ(violations({"parallel.pp=2", "parallel.pipeline_layout= 2 , 8 "}), "");
  EXPECT_NE(violations({"parallel.pp=11", "train.micro_batch=1"})
                .find("more pipeline pieces than the model's 10 unrolled layers"),
            std::string::npos);
  EXPECT_EQ(violation("parallel.tp=2"), "");  // tensor parallelism trains
  EXPECT_NE(violation("model.loops=0").find("model.loops"), std::string::npos);
  // A CUDA run is a valid config; whether this machine has a GPU is make_backend's to say.
  EXPECT_EQ(violation("runtime.device=CUDA"), "");
  EXPECT_NE(violation("parallel.grad_reduce_dtype=BF16").find("needs runtime.precision BF16"),
            std::string::npos);
  EXPECT_EQ(violations({"parallel.grad_reduce_dtype=BF16", "runtime.precision=BF16"}), "");
}

// Mixture-of-Recursions: what the routed loop cannot run is refused, saying why.
TEST(Config, MixtureOfRecursionsRefusesWhatItCannotRun) {
  const std::string ec = "model.recursion_router=EXPERT_CHOICE";
  EXPECT_EQ(violations({ec}), "");
  EXPECT_EQ(violations({"model.recursion_router=TOKEN_CHOICE", "parallel.tp=2"}), "");
  EXPECT_NE(violations({ec, "parallel.sp=2"}).find("needs parallel.sp = 1: sequence parallelism splits"),
            std::string::npos);
  EXPECT_NE(violations({ec, "parallel.pp=2"}).find("needs parallel.pp = 1"), std::string::npos);
  EXPECT_NE(violations({ec, "model.residual=LADDER"}).find("needs model.residual STANDARD"),
            std::string::npos);
  EXPECT_NE(violations({ec, "train.recompute=LOOP_BOUNDARY"}).find("needs train.recompute NONE"),
            std::string::npos);
  EXPECT_EQ(violations({ec, "model.recursion_kv=SHARED_FIRST"}), "");
  EXPECT_NE(violations({"model.recursion_kv=SHARED_FIRST"}).find("model.recursion_router is NONE"),
            std::string::npos);
  EXPECT_NE(violations({ec, "train.eval_loops=2"}).find("differs from model.loops = 4"),
            std::string::npos);
  config::RunConfig cfg;
  apply_override(cfg, ec);
  for (const float c : {1.0f, 0.5f, 0.75f}) cfg.mutable_model()->add_recursion_capacity(c);
  EXPECT_NE(error_of([&] { validate_config(cfg); }).find("has 3 values for model.loops = 4"),
            std::string::npos);
  cfg.mutable_model()->add_recursion_capacity(0.25f);
  EXPECT_NE(error_of([&] {
              validate_config(cfg);
            }).find("recursion_capacity[2] = 0.750000 must be in (0, 1] and not above"),
            std::string::npos);
  cfg.mutable_model()->set_recursion_capacity(2, 0.5f);
  EXPECT_EQ(error_of([&] { validate_config(cfg); }), "");
  apply_override(cfg, "model.recursion_kv=SHARED_FIRST");
  cfg.mutable_model()->set_recursion_capacity(0, 0.9f);
  EXPECT_NE(error_of([&] {
              validate_config(cfg);
            }).find("SHARED_FIRST needs the first iteration to run every token"),
            std::string::npos);
  cfg.mutable_model()->set_recursion_capacity(0, 1.0f);
  apply_override(cfg, "model.recursion_kv=RECURSION_WISE");
  EXPECT_EQ(recursion_keep(cfg.model(), 3, 256), 64);
  apply_override(cfg, "model.recursion_router=TOKEN_CHOICE");
  EXPECT_NE(error_of([&] { validate_config(cfg); }).find("is for EXPERT_CHOICE"),
            std::string::npos);
}

// ZeRO-2 runs what its gradient windows can reduce, and says why it refuses the rest.
TEST(Config, ZeroStage2RefusesWhatItCannotRun) {
  auto violation = [](const std::vector<std::string>& assignments) {
    config::RunConfig cfg;
    apply_override(cfg, "parallel.zero_stage=2");
    apply_override(cfg, "parallel.dp=2");
    apply_override(cfg, "train.global_batch=64");  // micro-batches for pp 2
    for (const std::string& a : assignments) apply_override(cfg, a);
    return error_of([&] { validate_config(cfg); });
  };
  EXPECT_EQ(violation({}), "");
  EXPECT_EQ(violation({"parallel.tp=2", "parallel.tp_sequence_parallel=true"}), "");
  // Tensors several stages hold (the tied embedding, the loop cut over stages) and the
  // zero-bubble schedules run.
  EXPECT_EQ(violation({"parallel.pp=2"}), "");
  EXPECT_EQ(violation({"parallel.pp=2", "parallel.pipeline_schedule=ZERO_BUBBLE_V",
                       "parallel.virtual_stages=2"}),
            "");
  EXPECT_NE(violation({"parallel.overlap_grad_reduce=false"}).find("windows are freed that way"),
            std::string::npos);
  EXPECT_NE(violation({"runtime.precision=BF16", "parallel.grad_reduce_dtype=BF16"})
                .find("set parallel.grad_reduce_dtype FP32"),
            std::string::npos);
}

TEST(Config, WrittenConfigReadsBackIdentically) {
  config::RunConfig cfg;
  apply_override(cfg, "model.d_model=96");
  const std::string text = config_to_text(cfg);
  EXPECT_NE(text.find("loops: 4"), std::string::npos) << "defaults are written out";
  const config::RunConfig back = parse_config_text(text, "written");
  EXPECT_EQ(back.model().d_model(), 96);
  EXPECT_EQ(config_to_text(back), text);
}

TEST(Config, ModelJsonHasEveryField) {
  const std::string json = model_config_json(config::ModelConfig());
  EXPECT_NE(json.find("\"residual\":\"STANDARD\""), std::string::npos) << json;
  EXPECT_NE(json.find("\"vocab_size\":257"), std::string::npos) << json;
}

}  // namespace
}  // namespace loom
