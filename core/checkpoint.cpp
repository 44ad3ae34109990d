#include "core/checkpoint.h"

#include <google/protobuf/text_format.h>
#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "core/config.h"
#include "core/error.h"
#include "core/tensor_parallel.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using Meta = config::CheckpointMeta;

constexpr const char* kMetaFile = "checkpoint.textproto";

uint32_t crc_of(const float* data, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const Bytef* bytes = reinterpret_cast<const Bytef*>(data);
  size_t left = n * sizeof(float);
  while (left > 0) {  // zlib takes a 32-bit length
    const uInt len = static_cast<uInt>(std::min<size_t>(left, 1u << 30));
    crc = crc32(crc, bytes, len);
    bytes += len;
    left -= len;
  }
  return static_cast<uint32_t>(crc);
}

// Writes `bytes` bytes to a new file at `path`; errors say what the system said (no space left
// on device, read-only file system, ...).
void write_file(const fs::path& path, const void* data, size_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot write " + path.string() + ": " + std::strerror(errno));
  const char* at = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, at, std::min<size_t>(bytes, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int error = n < 0 ? errno : EIO;
      ::close(fd);
      throw Error("cannot write " + path.string() + ": " + std::strerror(error));
    }
    at += n;
    bytes -= static_cast<size_t>(n);
  }
  if (::close(fd) != 0) throw Error("cannot write " + path.string() + ": " + std::strerror(errno));
}

// Writes one buffer (laid out as the model's parameters) to `file` and describes each tensor.
void write_buffer(const fs::path& dir, const std::string& file, const Model& model,
                  const std::vector<float>& buffer,
                  google::protobuf::RepeatedPtrField<Meta::Tensor>* entries) {
  for (const ParamTensor& t : model.tensors) {
    Meta::Tensor* e = entries->Add();
    e->set_name(t.name);
    for (int64_t d : t.shape) {
      e->add_global_shape(d);
      e->add_shard_offset(0);
      e->add_shard_shape(d);
    }
    e->set_file(file);
    e->set_offset(static_cast<int64_t>(t.offset * sizeof(float)));
    e->set_crc32(crc_of(buffer.data() + t.offset, t.size));
  }
  write_file(dir / file, buffer.data(), buffer.size() * sizeof(float));
}

// Reads every tensor of the model (this pipeline rank's) from `entries` (all global tensors, in
// global order), checking it against the model, into `buffer` (laid out as the model's
// parameters): the whole tensor, one at a time, then this rank's shard of it (all of it without
// tensor parallelism).
void read_buffer(const fs::path& dir, const Model& model,
                 const google::protobuf::RepeatedPtrField<Meta::Tensor>& entries,
                 std::vector<float>& buffer) {
  if (static_cast<size_t>(entries.size()) != model.global_tensors)
    throw Error("checkpoint " + dir.string() + " has " + std::to_string(entries.size()) +
                " tensors where the model has " + std::to_string(model.global_tensors));
  std::vector<float> whole;
  for (const ParamTensor& t : model.tensors) {  // this pipeline rank's, by global index
    const int i = t.global_index;
    const Meta::Tensor& e = entries[i];
    const std::vector<int64_t> shape(e.global_shape().begin(), e.global_shape().end());
    const std::vector<int64_t> piece(e.shard_shape().begin(), e.shard_shape().end());
    if (e.name() != t.name || shape != t.global_shape || piece != t.global_shape)
      throw Error("checkpoint " + dir.string() + " does not fit this model: tensor " +
                  std::to_string(i) + " is \"" + e.name() + "\" there and \"" + t.name +
                  "\" here, or their shapes differ");
    const size_t elements = tensor_global_size(t);
    whole.resize(elements);
    std::ifstream in(dir / e.file(), std::ios::binary);
    if (!in) throw Error("checkpoint " + dir.string() + " lacks " + e.file());
    in.seekg(e.offset());
    in.read(reinterpret_cast<char*>(whole.data()),
            static_cast<std::streamsize>(elements * sizeof(float)));
    if (!in)
      throw Error("checkpoint file " + (dir / e.file()).string() + " is truncated at tensor " +
                  t.name);
    if (crc_of(whole.data(), elements) != e.crc32())
      throw Error("checkpoint file " + (dir / e.file()).string() + " is corrupt: checksum of " +
                  t.name + " does not match");
    tensor_shard_extract(t, model.tp.rank, whole.data(), buffer.data() + t.offset);
  }
}

std::string step_name(long step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%07ld", step);
  return name;
}

bool is_step_folder(const fs::directory_entry& entry) {
  const std::string name = entry.path().filename().string();
  return entry.is_directory() && name.rfind("step_", 0) == 0 &&
         name.find_first_not_of("0123456789", 5) == std::string::npos && name.size() > 5;
}

long step_of(const fs::path& folder) { return std::stol(folder.filename().string().substr(5)); }

// Complete checkpoint folders, oldest first by step number (not by name: step_10000000 comes
// after step_9999999).
std::vector<fs::path> step_folders(const std::string& checkpoints_dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return out;
  for (const auto& entry : fs::directory_iterator(checkpoints_dir))
    if (is_step_folder(entry) && fs::exists(entry.path() / kMetaFile)) out.push_back(entry.path());
  std::sort(out.begin(), out.end(),
            [](const fs::path& a, const fs::path& b) { return step_of(a) < step_of(b); });
  return out;
}

// Flushes a file's or a folder's contents to the device, so a rename that follows cannot be
// seen before the data it names (a power loss would otherwise leave complete-looking folders
// of empty files).
void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error("cannot open " + path.string() + " to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error("cannot sync " + path.string() + ": " + std::strerror(errno));
}

Meta read_meta(const std::string& checkpoint_dir) {
  const fs::path path = fs::path(checkpoint_dir) / kMetaFile;
  std::ifstream in(path);
  if (!in)
    throw Error("no checkpoint at " + checkpoint_dir + " (missing " + path.string() +
                "); pass a step_NNNNNNN folder inside a run's checkpoints/");
  std::stringstream text;
  text << in.rdbuf();
  Meta meta;
  if (!google::protobuf::TextFormat::ParseFromString(text.str(), &meta))
    throw Error("checkpoint metadata " + path.string() + " is corrupt (cannot parse it)");
  if (!meta.has_step() || !meta.has_config() || meta.params_size() == 0)
    throw Error("checkpoint metadata " + path.string() +
                " is incomplete (no step, config or tensors: empty or cut short)");
  // The metadata, not the folder's name, says which step it holds; a folder renamed to a later
  // step would otherwise shadow the real newest checkpoint.
  const std::string name = fs::path(checkpoint_dir).lexically_normal().filename().string();
  if (name.rfind("step_", 0) == 0 && name.find_first_not_of("0123456789", 5) == std::string::npos &&
      name.size() > 5 && std::stol(name.substr(5)) != static_cast<long>(meta.step()))
    throw Error("checkpoint " + checkpoint_dir + " holds step " + std::to_string(meta.step()) +
                ", not the step its name says (renamed?)");
  return meta;
}

CheckpointState state_of(const Meta& meta) {
  CheckpointState state;
  state.config = meta.config();
  state.step = static_cast<long>(meta.step());
  state.data_position = meta.data_position();
  state.rng_state = meta.rng_state();
  state.tokens_seen = meta.tokens_seen();
  return state;
}

// The checkpoint's files, synced, in `dir`.
void write_checkpoint_files(const fs::path& dir, const CheckpointState& state, const Model& model,
                            const Optimizer& optimizer) {
  Meta meta;
  meta.set_step(state.step);
  meta.set_data_position(state.data_position);
  meta.set_rng_state(state.rng_state);
  meta.set_tokens_seen(state.tokens_seen);
  *meta.mutable_config() = resolve_defaults(state.config);
  LOOM_CHECK(optimizer.m.size() == model.num_params);  // ZeRO shards are gathered first
  LOOM_CHECK(model.tensors.size() == model.global_tensors);  // the whole model
  meta.set_optimizer_step(optimizer.step);
  write_buffer(dir, "params.bin", model, model.params, meta.mutable_params());
  write_buffer(dir, "adam_m.bin", model, optimizer.m, meta.mutable_adam_m());
  write_buffer(dir, "adam_v.bin", model, optimizer.v, meta.mutable_adam_v());
  std::string text;
  google::protobuf::TextFormat::PrintToString(meta, &text);
  write_file(dir / kMetaFile, text.data(), text.size());
  for (const char* file : {"params.bin", "adam_m.bin", "adam_v.bin", kMetaFile})
    sync_path(dir / file);
  sync_path(dir);
}

}  // namespace

std::string checkpoint_save(const std::string& checkpoints_dir, const CheckpointState& state,
                            const Model& model, const Optimizer& optimizer, int keep_last) {
  const fs::path final_dir = fs::path(checkpoints_dir) / step_name(state.step);
  const fs::path tmp_dir =
      fs::path(checkpoints_dir) / (".tmp-" + step_name(state.step) + "-" + std::to_string(getpid()));
  // Partial folders of a save that died midway are left-overs: nothing refers to them.
  std::error_code ec;
  if (fs::is_directory(checkpoints_dir, ec))
    for (const auto& entry : fs::directory_iterator(checkpoints_dir))
      if (entry.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(entry.path());
  fs::create_directories(tmp_dir, ec);
  if (ec) throw Error("cannot create " + tmp_dir.string() + ": " + ec.message());
  try {
    write_checkpoint_files(tmp_dir, state, model, optimizer);
  } catch (...) {
    fs::remove_all(tmp_dir, ec);  // a failed save leaves nothing behind to fill the disk
    throw;
  }

  // A checkpoint of the same step (a re-save) is replaced only once the new one is complete.
  const fs::path old_dir = fs::path(checkpoints_dir) / (".old-" + final_dir.filename().string());
  fs::remove_all(old_dir);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);
  fs::rename(tmp_dir, final_dir);
  sync_path(checkpoints_dir);
  fs::remove_all(old_dir);

  if (keep_last > 0) {
    std::vector<fs::path> folders = step_folders(checkpoints_dir);
    for (size_t i = 0; i + keep_last < folders.size(); ++i) fs::remove_all(folders[i]);
  }
  return final_dir.string();
}

CheckpointWriter::~CheckpointWriter() {
  if (!thread_.joinable()) return;
  thread_.join();
  if (error_) try {
      std::rethrow_exception(error_);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "loom: the last checkpoint write failed: %s\n", e.what());
    }
}

void CheckpointWriter::wait() {
  if (thread_.joinable()) thread_.join();
  if (std::exception_ptr error = std::exchange(error_, nullptr)) std::rethrow_exception(error);
}

void CheckpointWriter::write(const std::string& checkpoints_dir, const CheckpointState& state,
                             const Model& model, const Optimizer& optimizer, int keep_last) {
  wait();
  if (!background_) {
    checkpoint_save(checkpoints_dir, state, model, optimizer, keep_last);
    return;
  }
  // The host copy the background thread writes from: the layout and parameters (no arena).
  Model copy = model_layout(model.config);
  copy.params = model.params;
  thread_ = std::thread([this, dir = checkpoints_dir, state, copy = std::move(copy), optimizer,
                         keep_last] {
    try {
      checkpoint_save(dir, state, copy, optimizer, keep_last);
    } catch (...) {
      error_ = std::current_exception();
    }
  });
}

std::vector<std::string> checkpoint_list(const std::string& checkpoints_dir) {
  std::vector<std::string> out;
  for (const fs::path& folder : step_folders(checkpoints_dir)) out.push_back(folder.string());
  return out;
}

std::string checkpoint_latest(const std::string& checkpoints_dir) {
  const std::vector<std::string> all = checkpoint_list(checkpoints_dir);
  return all.empty() ? "" : all.back();
}

CheckpointState checkpoint_read_state(const std::string& checkpoint_dir) {
  return state_of(read_meta(checkpoint_dir));
}

CheckpointState checkpoint_load(const std::string& checkpoint_dir, Model& model,
                                Optimizer* optimizer) {
  const Meta meta = read_meta(checkpoint_dir);
  read_buffer(checkpoint_dir, model, meta.params(), model.params);
  if (optimizer) {
    LOOM_CHECK(optimizer->m.size() == model.num_params);
    read_buffer(checkpoint_dir, model, meta.adam_m(), optimizer->m);
    read_buffer(checkpoint_dir, model, meta.adam_v(), optimizer->v);
    optimizer->step = static_cast<long>(meta.optimizer_step());
  }
  return state_of(meta);
}

}  // namespace loom
