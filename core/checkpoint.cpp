#include "core/checkpoint.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "base/error.h"
#include "base/regular_file.h"
#include "core/checkpoint_pieces.h"
#include "core/config.h"
#include "core/file_io.h"

namespace loom {
namespace {

// `a`'s elements in host memory: `a` itself where the backend's memory is the host's, else a
// download into `copy`.
const float* host_view(const kernels::DeviceArray<float>& a, std::vector<float>& copy) {
  if (const float* p = a.host_data()) return p;
  copy = a.download();
  return copy.data();
}

namespace fs = std::filesystem;
using Meta = config::CheckpointMeta;

constexpr const char* kMetaFile = "checkpoint.textproto";

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

Meta read_meta(const std::string& checkpoint_dir) {
  const fs::path path = fs::path(checkpoint_dir) / kMetaFile;
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw Error("no checkpoint at " + checkpoint_dir + " (missing " + path.string() +
                "); pass a step_NNNNNNN folder inside a run's checkpoints/");
  const std::string text =
      read_regular_file(path.string(), size_t{256} << 20, "checkpoint metadata");
  Meta meta;
  if (!google::protobuf::TextFormat::ParseFromString(text, &meta))
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

// checkpoint.textproto of a checkpoint whose data files are all synced in `dir`: the state, and
// every rank's entries (`parts`).
void write_meta(const fs::path& dir, const CheckpointState& state, long optimizer_step,
                const std::vector<Meta>& parts) {
  Meta meta;
  meta.set_step(state.step);
  meta.set_data_position(state.data_position);
  meta.set_rng_state(state.rng_state);
  meta.set_tokens_seen(state.tokens_seen);
  meta.set_optimizer_step(optimizer_step);
  *meta.mutable_config() = resolve_defaults(state.config);
  for (const Meta& part : parts) {
    meta.mutable_params()->MergeFrom(part.params());
    meta.mutable_adam_m()->MergeFrom(part.adam_m());
    meta.mutable_adam_v()->MergeFrom(part.adam_v());
    if (part.has_crc_block_bytes()) meta.set_crc_block_bytes(part.crc_block_bytes());
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(meta, &text);
  write_file((dir / kMetaFile).string(), text.data(), text.size());
  sync_path(dir.string());
}

// Creates the folder a checkpoint is written into, after removing the partial folders of saves
// that died midway (nothing refers to them).
fs::path tmp_folder(const std::string& checkpoints_dir, long step, int64_t pid) {
  return fs::path(checkpoints_dir) / (".tmp-" + step_name(step) + "-" + std::to_string(pid));
}

void create_tmp_folder(const std::string& checkpoints_dir, long step) {
  std::error_code ec;
  if (fs::is_directory(checkpoints_dir, ec))
    for (const auto& entry : fs::directory_iterator(checkpoints_dir))
      if (entry.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(entry.path());
  const fs::path tmp = tmp_folder(checkpoints_dir, step, getpid());
  fs::create_directories(tmp, ec);
  if (ec) throw Error("cannot create " + tmp.string() + ": " + ec.message());
}

// Renames the complete folder to step_NNNNNNN (replacing a checkpoint of the same step only
// then) and keeps the newest keep_last.
fs::path publish(const fs::path& tmp, const std::string& checkpoints_dir, long step,
                 int keep_last) {
  const fs::path final_dir = fs::path(checkpoints_dir) / step_name(step);
  const fs::path old_dir = fs::path(checkpoints_dir) / (".old-" + step_name(step));
  fs::remove_all(old_dir);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);
  fs::rename(tmp, final_dir);
  sync_path(checkpoints_dir);
  fs::remove_all(old_dir);
  if (keep_last > 0) {
    std::vector<fs::path> folders = step_folders(checkpoints_dir);
    for (size_t i = 0; i + keep_last < folders.size(); ++i) fs::remove_all(folders[i]);
  }
  return final_dir;
}

std::string rank_file(int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "rank_%05d.bin", rank);
  return name;
}

}  // namespace

struct CheckpointWriter::Pending {
  std::string checkpoints_dir;
  fs::path tmp;
  CheckpointState state;
  long optimizer_step = 0;
  int keep_last = 0;
  std::thread thread;
  std::atomic<bool> done{false};
  std::exception_ptr error;
  Meta part;  // this rank's entries, once written
};

CheckpointWriter::CheckpointWriter(Communicator* world, bool background)
    : world_(world), background_(background) {
  LOOM_CHECK(world_);
}

CheckpointWriter::~CheckpointWriter() {
  if (!pending_ || !pending_->thread.joinable()) return;
  pending_->thread.join();
  if (pending_->error) try {
      std::rethrow_exception(pending_->error);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "loom: the last checkpoint write failed: %s\n", e.what());
    }
}

std::string CheckpointWriter::write(const std::string& checkpoints_dir,
                                    const CheckpointState& state, const Model& model,
                                    const Optimizer& optimizer, bool first_replica,
                                    int keep_last) {
  wait();
  // Rank 0 makes the folder; its pid (or −1) tells every rank the name (or that it failed).
  int64_t pid = 0;
  std::string error;
  if (world_->rank() == 0) try {
      create_tmp_folder(checkpoints_dir, state.step);
      pid = getpid();
    } catch (const std::exception& e) {
      error = e.what();
      pid = -1;
    }
  world_->broadcast(&pid, 1, DataType::kInt64, 0);
  if (pid < 0)
    throw Error(world_->rank() == 0 ? error
                                    : "checkpoint of step " + std::to_string(state.step) +
                                          ": rank 0 could not create its folder in " +
                                          checkpoints_dir);
  auto p = std::make_unique<Pending>();
  p->checkpoints_dir = checkpoints_dir;
  p->tmp = tmp_folder(checkpoints_dir, state.step, pid);
  p->state = state;
  p->optimizer_step = optimizer.step;
  p->keep_last = keep_last;
  const CheckpointPieces pieces = checkpoint_pieces_written(model, optimizer, first_replica);
  const std::string file = rank_file(world_->rank());
  if (!background_) {
    // This rank's own state, nothing gathered: in place on a host backend, else downloaded.
    std::vector<float> params, m, v;
    try {
      p->part = checkpoint_pieces_write(
          p->tmp.string(), file, model.layout.tensors, host_view(model.buf.params, params),
          host_view(optimizer.m, m), host_view(optimizer.v, v), pieces);
    } catch (...) {
      p->error = std::current_exception();
    }
    pending_ = std::move(p);
    return wait();
  }
  // The copy the thread writes from while training goes on.
  Pending* raw = p.get();
  raw->thread = std::thread([raw, file, pieces, tensors = model.layout.tensors,
                             params = model.buf.params.download(), m = optimizer.m.download(),
                             v = optimizer.v.download()] {
    try {
      raw->part = checkpoint_pieces_write(raw->tmp.string(), file, tensors, params.data(),
                                          m.data(), v.data(), pieces);
    } catch (...) {
      raw->error = std::current_exception();
    }
    raw->done = true;
  });
  pending_ = std::move(p);
  return "";
}

void CheckpointWriter::poll() {
  if (!pending_) return;
  int64_t busy = pending_->done ? 0 : 1;
  world_->all_reduce_async(&busy, 1, DataType::kInt64, ReduceOp::kMax)->wait();
  if (busy == 0) commit();
}

std::string CheckpointWriter::wait() { return pending_ ? commit() : ""; }

// Every rank sends rank 0 its entries (or its error); rank 0 writes the metadata and publishes
// the folder once all are on disk.
std::string CheckpointWriter::commit() {
  std::unique_ptr<Pending> p = std::move(pending_);
  if (p->thread.joinable()) p->thread.join();
  std::string mine;
  if (p->error) try {
      std::rethrow_exception(p->error);
    } catch (const std::exception& e) {
      mine = e.what();
    }
  const bool failed = static_cast<bool>(p->error);
  if (!failed) p->part.SerializeToString(&mine);
  if (world_->rank() != 0) {
    int64_t header[2] = {failed ? 1 : 0, static_cast<int64_t>(mine.size())};
    world_->send(header, 2, DataType::kInt64, 0);
    if (!mine.empty()) world_->send(mine.data(), mine.size(), DataType::kByte, 0);
    if (failed) std::rethrow_exception(p->error);
    return "";
  }
  std::vector<Meta> parts{p->part};
  std::string failures = failed ? "rank 0: " + mine : "";
  for (int r = 1; r < world_->size(); ++r) {
    int64_t header[2] = {0, 0};
    world_->recv(header, 2, DataType::kInt64, r);
    std::string bytes(static_cast<size_t>(header[1]), '\0');
    if (!bytes.empty()) world_->recv(bytes.data(), bytes.size(), DataType::kByte, r);
    if (header[0] != 0)
      failures += (failures.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": " + bytes);
    else if (!parts.emplace_back().ParseFromString(bytes))
      failures += (failures.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": unreadable entries");
  }
  std::error_code ec;
  try {
    if (!failures.empty())
      throw Error("checkpoint of step " + std::to_string(p->state.step) +
                  " could not be written (the previous checkpoint is intact): " + failures);
    write_meta(p->tmp, p->state, p->optimizer_step, parts);
    return publish(p->tmp, p->checkpoints_dir, p->state.step, p->keep_last).string();
  } catch (...) {
    fs::remove_all(p->tmp, ec);  // a failed save leaves nothing behind to fill the disk
    throw;
  }
}

std::string checkpoint_save(const std::string& checkpoints_dir, const CheckpointState& state,
                            const Model& model, const Optimizer& optimizer, int keep_last) {
  const std::unique_ptr<Communicator> self = make_self_communicator("world", 0);
  CheckpointWriter writer(self.get(), false);
  return writer.write(checkpoints_dir, state, model, optimizer, true, keep_last);
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
  const PiecesReadStats read = checkpoint_pieces_read(checkpoint_dir, meta, model, optimizer);
  if (optimizer) optimizer->step = static_cast<long>(meta.optimizer_step());
  CheckpointState state = state_of(meta);
  state.bytes_read = read.bytes_read;
  state.bytes_stored = read.bytes_stored;
  return state;
}

}  // namespace loom
