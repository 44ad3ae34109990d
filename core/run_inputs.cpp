#include "core/run_inputs.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/file_io.h"
#include "core/pipeline.h"
#include "core/shared_files.h"

namespace loom {
namespace {

namespace fs = std::filesystem;

// What the training shards hold (data.textproto beside them; none for shards made elsewhere),
// checked against the model's vocabulary.
std::optional<config::DataInfo> training_data_info(const config::RunConfig& cfg,
                                                   std::string* dir) {
  const std::optional<config::DataInfo> info =
      data_info_for_shards(cfg.data().train_shards(), dir);
  if (info && cfg.model().vocab_size() < info->vocab_size())
    throw Error("model.vocab_size (" + std::to_string(cfg.model().vocab_size()) +
                ") is smaller than the data's vocabulary (" +
                std::to_string(info->vocab_size()) + " ids, " + *dir + "/" + kDataInfoFile +
                "): set model.vocab_size=" + std::to_string(info->vocab_size()));
  return info;
}

// What the validation shards hold, when described: the same tokens as the training data's.
std::optional<config::DataInfo> validation_data_info(const config::RunConfig& cfg,
                                                     const std::optional<config::DataInfo>& train,
                                                     const std::string& train_dir,
                                                     std::string* dir) {
  if (cfg.data().val_shards().empty()) return std::nullopt;
  const std::optional<config::DataInfo> val = data_info_for_shards(cfg.data().val_shards(), dir);
  if (val && train && !data_info_same_tokens(*train, train_dir, *val, *dir))
    throw Error("data.val_shards (" + *dir + "/" + kDataInfoFile +
                ") hold other tokens than data.train_shards (" + train_dir + "/" +
                kDataInfoFile + "): validate on shards made with the same tokenizer");
  return val;
}

// Keeps the data's description (and tokenizer) in the run directory, for loom sample. A resumed
// run must go on with the same tokens: what the run recorded must match the data's.
void record_data(const config::DataInfo& info, const std::string& data_dir,
                 const fs::path& run_dir, bool resume) {
  const fs::path recorded = run_dir / kDataInfoFile;
  std::error_code ec;
  if (resume && fs::exists(recorded, ec)) {
    if (!data_info_same_tokens(data_info_read(recorded.string()), run_dir.string(), info,
                               data_dir))
      throw Error("--resume: the data's tokens (" + data_dir + "/" + kDataInfoFile +
                  ") are not the ones the run was trained on (" + recorded.string() +
                  "): resume with the run's data");
    return;
  }
  data_info_copy(info, data_dir, run_dir.string());
}

// --resume with another checkpoint.directory than the run's own (its config.textproto) would
// find no checkpoint and start again from step 0 while the run's checkpoints sit where they were.
void check_checkpoint_directory(const config::RunConfig& cfg, const fs::path& run_dir) {
  const fs::path saved_config = run_dir / "config.textproto";
  std::error_code ec;
  if (!fs::exists(saved_config, ec)) return;
  const config::RunConfig saved = read_run_config(saved_config);
  const std::string before = saved.checkpoint().directory(), now = cfg.checkpoint().directory();
  if (fs::path(before).lexically_normal() == fs::path(now).lexically_normal()) return;
  const fs::path kept = run_dir / before;
  bool holds = false;
  for (const fs::directory_entry& e : fs::directory_iterator(kept, ec))
    holds = holds || e.path().filename().string().starts_with("step_");
  if (holds)
    throw Error("--resume: checkpoint.directory is \"" + now + "\" but this run kept its " +
                "checkpoints in \"" + before + "\" (" + kept.string() + ", as " +
                saved_config.string() + " says); resume with --set checkpoint.directory=" + before +
                ", or move the checkpoints there first");
}

constexpr const char* kShardRecord = "shards.crc";

// RUN_DIR/shards.crc: every shard the run reads with its size and a CRC-32 of its file as the run
// started ("CRC BYTES PATH" lines). On --resume the shards must still be those (a shard written
// over since would feed the resumed run other data than its checkpoints assume); every rank
// checks, rank 0 then writes the record.
void check_shard_record(
    const fs::path& run_dir, bool resume, bool writer,
    const std::vector<std::pair<const TokenDataset*, std::vector<int64_t>>>& sets) {
  const fs::path path = run_dir / kShardRecord;
  std::string now;
  for (const auto& [data, crcs] : sets)
    for (size_t s = 0; s < data->shards.size(); ++s)
      now += std::to_string(crcs[s]) + " " + std::to_string(data->shards[s].file_bytes) + " " +
             data->shards[s].path + "\n";
  std::error_code ec;
  if (resume && fs::exists(fs::symlink_status(path, ec))) {
    const std::string before = read_regular_file(path.string(), size_t{64} << 20, "shard record");
    std::map<std::string, std::string> recorded, current;
    for (auto [text, into] : {std::pair{&before, &recorded}, {&now, &current}}) {
      std::istringstream lines(*text);
      std::string line;
      while (std::getline(lines, line)) {
        const size_t a = line.find(' '), b = a == std::string::npos ? a : line.find(' ', a + 1);
        if (b == std::string::npos)
          throw Error(path.string() + " is damaged: line \"" + line + "\"");
        // Shards by absolute path: a run started before data paths were absolute recorded them
        // relative to the working directory.
        (*into)[fs::absolute(line.substr(b + 1)).lexically_normal().string()] = line.substr(0, b);
      }
    }
    for (const auto& [shard, crc] : current) {
      const auto was = recorded.find(shard);
      if (was == recorded.end())
        throw Error("--resume: shard " + shard +
                    " was not among the shards the run started with (" + path.string() +
                    "); resume with the run's data, or start a new run");
      if (was->second != crc)
        throw Error("--resume: shard " + shard + " changed since the run started (CRC-32 and " +
                    "size now " + crc + ", recorded " + was->second + " in " + path.string() +
                    "); restore it, or start a new run on the new data");
    }
    for (const auto& [shard, crc] : recorded)
      if (!current.count(shard))
        throw Error("--resume: shard " + shard + ", which the run started with (" + path.string() +
                    "), is gone; restore it, or start a new run");
  }
  if (!writer) return;
  const std::string tmp = path.string() + ".tmp";  // other ranks may be reading the record
  write_file(tmp, now.data(), now.size());
  fs::rename(tmp, path);
}

}  // namespace

void check_before_start(const config::RunConfig& cfg, const std::string& run_dir, bool resume) {
  if (const std::string problem = run_dir_problem(run_dir, resume); !problem.empty())
    throw Error(problem);
  const fs::path saved_config = fs::path(run_dir) / "config.textproto";
  std::error_code ec;
  if (resume && fs::exists(saved_config, ec)) {
    check_resumable(read_run_config(saved_config), cfg, saved_config.string());
    check_checkpoint_directory(cfg, run_dir);
  }
  std::string dir, val_dir;
  const std::optional<config::DataInfo> info = training_data_info(cfg, &dir);
  validation_data_info(cfg, info, dir, &val_dir);
  shard_paths(cfg.data().train_shards());
  if (cfg.train().eval_interval() > 0 && !cfg.data().val_shards().empty())
    shard_paths(cfg.data().val_shards());
}

RunInputs open_run(const config::RunConfig& cfg, const TrainOptions& options, ProcessGroups& groups,
                   const kernels::KernelBackend& backend) {
  const bool writer = groups.rank == 0;  // rank 0 alone writes the run directory
  const int T = cfg.train().seq_len(), V = cfg.model().vocab_size();
  // The ranks of a node share its memory; on a GPU each rank has its own.
  const std::string too_big =
      backend.device() >= 0
          ? memory_problem(cfg, 1, backend.memory_available(),
                           "GPU " + std::to_string(backend.device()))
          : memory_problem(cfg, std::max(1, groups.local_ranks), host_available_bytes());
  if (!too_big.empty()) throw Error(too_big);
  RunInputs in;
  in.data_info = training_data_info(cfg, &in.data_dir);
  in.val_info = validation_data_info(cfg, in.data_info, in.data_dir, &in.val_dir);
  in.tokenizer = tokenizer_for_run(in.data_info, in.data_dir, V);
  in.train_data = dataset_open(cfg.data().train_shards(), T, V);
  in.validate = cfg.train().eval_interval() > 0 && !cfg.data().val_shards().empty();
  if (in.validate) in.val_data = dataset_open(cfg.data().val_shards(), T, V);
  if (groups.is_distributed()) {  // every node must read the same data (core/shared_files.h)
    std::vector<std::pair<std::string, const TokenDataset*>> sets = {
        {"data.train_shards", &in.train_data}};
    if (in.validate) sets.push_back({"data.val_shards", &in.val_data});
    check_same_data(*groups.world, groups.placement, sets);
  }
  // After the ranks compared their views: a node with a stale copy is named as such first.
  if (in.data_info)
    data_info_check_shards(*in.data_info, in.data_dir + "/" + kDataInfoFile, in.train_data);
  if (in.validate && in.val_info)
    data_info_check_shards(*in.val_info, in.val_dir + "/" + kDataInfoFile, in.val_data);
  std::vector<std::pair<const TokenDataset*, std::vector<int64_t>>> checksums = {
      {&in.train_data, shard_checksums(groups.world.get(), in.train_data)}};
  if (in.validate)
    checksums.push_back({&in.val_data, shard_checksums(groups.world.get(), in.val_data)});
  in.run_dir = options.run_dir;
  if (writer) in.lock = prepare_run_dir(in.run_dir, options.resume);
  if (writer && in.data_info) record_data(*in.data_info, in.data_dir, in.run_dir, options.resume);
  in.checkpoints_dir = in.run_dir / cfg.checkpoint().directory();
  if (writer && options.resume) check_checkpoint_directory(cfg, in.run_dir);
  if (writer) {  // a folder checkpoints cannot be written to is found now, not after training
    std::error_code ec;
    fs::create_directories(in.checkpoints_dir, ec);
    if (ec || access(in.checkpoints_dir.c_str(), W_OK) != 0)
      throw Error("checkpoint.directory " + in.checkpoints_dir.string() + " cannot be written: " +
                  (ec ? ec.message() : std::string(std::strerror(errno))));
    in.run_token = checkpoint_claim_directory(in.checkpoints_dir.string(), in.run_dir.string());
  }
  if (groups.is_distributed()) check_same_run_dir(*groups.world, groups.placement, in.run_dir);
  check_shard_record(in.run_dir, options.resume, writer, checksums);
  return in;
}

}  // namespace loom
