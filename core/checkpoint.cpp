#include "core/checkpoint.h"

#include <fcntl.h>
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
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

// A name of the form step_ followed by decimal digits.
bool is_step_name(const std::string& name) {
  return name.size() > 5 && name.rfind("step_", 0) == 0 &&
         name.find_first_not_of("0123456789", 5) == std::string::npos;
}

// The step a step_N name says; none when N does not fit 64 bits (no run gets there).
std::optional<long> step_of_name(const std::string& name) {
  if (!is_step_name(name)) return std::nullopt;
  long step = 0;
  const char* last = name.data() + name.size();
  const auto [end, error] = std::from_chars(name.data() + 5, last, step);
  if (error != std::errc() || end != last) return std::nullopt;
  return step;
}

// Complete checkpoint folders, oldest first by step number (not by name: step_10000000 comes
// after step_9999999). A step_N folder whose N is too large for any run is no checkpoint.
std::vector<fs::path> step_folders(const std::string& checkpoints_dir) {
  std::vector<std::pair<long, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(checkpoints_dir, ec)) return {};
  for (const auto& entry : fs::directory_iterator(checkpoints_dir)) {
    const std::optional<long> step = step_of_name(entry.path().filename().string());
    if (step && entry.is_directory(ec) && fs::exists(entry.path() / kMetaFile, ec))
      found.emplace_back(*step, entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [step, folder] : found) out.push_back(std::move(folder));
  return out;
}

// A field that no run writes makes the checkpoint unusable (resume falls back to the one before).
// The numbers follow from one another and from the config they were written with: every step,
// skipped ones too, reads train.global_batch sequences of train.seq_len tokens, and AdamW cannot
// have applied more updates than steps ran.
void check_fields(const Meta& meta, const std::string& path) {
  auto refuse = [&](const std::string& field, int64_t value, const std::string& rule) {
    return Error("checkpoint metadata " + path + ": " + field + " " + std::to_string(value) + " " +
                 rule + " (corrupt or edited metadata)");
  };
  const config::TrainConfig& train = meta.config().train();
  if (train.global_batch() < 1)
    throw refuse("config.train.global_batch", train.global_batch(), "is not positive");
  if (train.seq_len() < 1) throw refuse("config.train.seq_len", train.seq_len(), "is not positive");
  const int64_t step = meta.step();
  if (step < 0 || step > train.steps())
    throw refuse("step", step,
                 "is outside [0, " + std::to_string(train.steps()) +
                     "], the train.steps of the run that wrote it");
  if (meta.optimizer_step() < 0 || meta.optimizer_step() > step)
    throw refuse("optimizer_step", meta.optimizer_step(),
                 "is outside [0, step " + std::to_string(step) +
                     "]: AdamW cannot have applied more updates than steps ran");
  // < 2^62: steps and global_batch are int32.
  const int64_t position = step * train.global_batch();
  if (meta.data_position() != position)
    throw refuse("data_position", meta.data_position(),
                 "is not step " + std::to_string(step) + " × train.global_batch " +
                     std::to_string(train.global_batch()) + " = " + std::to_string(position) +
                     ", the sequences the run had read");
  int64_t tokens = 0;
  if (__builtin_mul_overflow(position, int64_t{train.seq_len()}, &tokens) ||
      meta.tokens_seen() != tokens)
    throw refuse("tokens_seen", meta.tokens_seen(),
                 "is not data_position " + std::to_string(position) + " × train.seq_len " +
                     std::to_string(train.seq_len()));
  if (meta.has_crc_block_bytes() &&
      (meta.crc_block_bytes() < 4 || meta.crc_block_bytes() % 4 != 0 ||
       meta.crc_block_bytes() > (int64_t{1} << 30)))
    throw refuse("crc_block_bytes", meta.crc_block_bytes(),
                 "is not a whole number of floats between 4 bytes and 1 GiB");
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
  check_fields(meta, path.string());
  // The metadata, not the folder's name, says which step it holds; a folder renamed to a later
  // step would otherwise shadow the real newest checkpoint.
  fs::path folder = fs::path(checkpoint_dir).lexically_normal();
  if (!folder.has_filename()) folder = folder.parent_path();  // a trailing '/'
  const std::string name = folder.filename().string();
  if (is_step_name(name) && step_of_name(name) != meta.step())
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
                const std::string& run_token, const std::vector<Meta>& parts) {
  Meta meta;
  if (!run_token.empty()) meta.set_run_token(run_token);
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

// The run token a checkpoint's metadata records ("" for none); none when it cannot be read.
std::optional<std::string> token_of(const fs::path& folder) {
  try {
    Meta meta;
    if (!google::protobuf::TextFormat::ParseFromString(
            read_regular_file((folder / kMetaFile).string(), size_t{256} << 20,
                              "checkpoint metadata"),
            &meta))
      return std::nullopt;
    return meta.run_token();
  } catch (const Error&) {
    return std::nullopt;
  }
}

// Renames the complete folder to step_NNNNNNN (replacing a checkpoint of the same step only
// then) and keeps the newest keep_last of the run's own (those whose metadata carries its token:
// another run's checkpoints, or one whose owner cannot be read, are never removed).
fs::path publish(const fs::path& tmp, const std::string& checkpoints_dir, long step, int keep_last,
                 const std::string& run_token) {
  const fs::path final_dir = fs::path(checkpoints_dir) / step_name(step);
  const fs::path old_dir = fs::path(checkpoints_dir) / (".old-" + step_name(step));
  fs::remove_all(old_dir);
  if (fs::exists(final_dir)) fs::rename(final_dir, old_dir);
  fs::rename(tmp, final_dir);
  sync_path(checkpoints_dir);
  fs::remove_all(old_dir);
  if (keep_last > 0) {
    std::vector<fs::path> own;
    for (const fs::path& folder : step_folders(checkpoints_dir))
      if (token_of(folder) == run_token) own.push_back(folder);
    for (size_t i = 0; i + keep_last < own.size(); ++i) fs::remove_all(own[i]);
  }
  return final_dir;
}

// Every rank's verdict on what it is about to write (`mine`: why it cannot, "" when it can), so
// that all refuse together (the write is collective: a rank that went on alone would wait for
// the others forever). The lowest rank that cannot names its reason.
void refuse_together(Communicator& world, long step, const std::string& mine) {
  int64_t first = mine.empty() ? 0 : world.size() - world.rank();  // the max: the lowest rank
  world.all_reduce_async(&first, 1, DataType::kInt64, ReduceOp::kMax)->wait();
  if (first == 0) return;
  const int root = world.size() - static_cast<int>(first);
  int64_t bytes = static_cast<int64_t>(mine.size());
  world.broadcast(&bytes, 1, DataType::kInt64, root);
  std::string why = mine;
  why.resize(static_cast<size_t>(bytes));
  world.broadcast(why.data(), why.size(), DataType::kByte, root);
  throw Error("checkpoint of step " + std::to_string(step) + " not written: " +
              (world.size() > 1 ? "rank " + std::to_string(root) + ": " : std::string()) + why);
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

CheckpointWriter::CheckpointWriter(Communicator* world, bool background, std::string run_token)
    : world_(world), background_(background), run_token_(std::move(run_token)) {
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
                                    const Optimizer& optimizer, bool first_replica, int keep_last) {
  wait();
  const CheckpointPieces pieces = checkpoint_pieces_written(model, optimizer, first_replica);
  // This rank's own state, nothing gathered: a direct write reads it in place on a host backend
  // (else downloaded), a background one writes from a copy of its own while training goes on.
  std::vector<float> params_copy, m_copy, v_copy;
  const float *params = nullptr, *m = nullptr, *v = nullptr;
  std::string problem;
  try {
    if (background_) {
      params_copy = model.buf.params.download();
      m_copy = optimizer.m.download();
      v_copy = optimizer.v.download();
      params = params_copy.data();
      m = m_copy.data();
      v = v_copy.data();
    } else {
      params = host_view(model.buf.params, params_copy);
      m = host_view(optimizer.m, m_copy);
      v = host_view(optimizer.v, v_copy);
    }
    const std::string bad = checkpoint_pieces_bad_value(model.layout.tensors, params, m, v, pieces);
    if (!bad.empty())
      problem = bad +
                " (a checkpoint holds only finite values: training diverged; the checkpoints "
                "before it are intact: resume from the newest with a lower optim.lr)";
  } catch (const std::exception& e) {
    problem = std::string("its state could not be copied: ") + e.what();
  }
  refuse_together(*world_, state.step, problem);
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
    throw Error(world_->rank() == 0
                    ? error
                    : "checkpoint of step " + std::to_string(state.step) +
                          ": rank 0 could not create its folder in " + checkpoints_dir);
  auto p = std::make_unique<Pending>();
  p->checkpoints_dir = checkpoints_dir;
  p->tmp = tmp_folder(checkpoints_dir, state.step, pid);
  p->state = state;
  p->optimizer_step = optimizer.step;
  p->keep_last = keep_last;
  const std::string file = rank_file(world_->rank());
  if (!background_) {
    try {
      p->part = checkpoint_pieces_write(p->tmp.string(), file, model.layout.tensors, params, m, v,
                                        pieces);
    } catch (...) {
      p->error = std::current_exception();
    }
    pending_ = std::move(p);
    return wait();
  }
  Pending* raw = p.get();
  raw->thread =
      std::thread([raw, file, pieces, tensors = model.layout.tensors,
                   params = std::move(params_copy), m = std::move(m_copy), v = std::move(v_copy)] {
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
      failures +=
          (failures.empty() ? "" : "; ") + ("rank " + std::to_string(r) + ": unreadable entries");
  }
  std::error_code ec;
  try {
    if (!failures.empty())
      throw Error("checkpoint of step " + std::to_string(p->state.step) +
                  " could not be written (the previous checkpoint is intact): " + failures);
    write_meta(p->tmp, p->state, p->optimizer_step, run_token_, parts);
    return publish(p->tmp, p->checkpoints_dir, p->state.step, p->keep_last, run_token_).string();
  } catch (...) {
    fs::remove_all(p->tmp, ec);  // a failed save leaves nothing behind to fill the disk
    throw;
  }
}

std::string checkpoint_save(const std::string& checkpoints_dir, const CheckpointState& state,
                            const Model& model, const Optimizer& optimizer, int keep_last,
                            const std::string& run_token) {
  const std::unique_ptr<Communicator> self = make_self_communicator("world", 0);
  CheckpointWriter writer(self.get(), false, run_token);
  return writer.write(checkpoints_dir, state, model, optimizer, true, keep_last);
}

namespace {

constexpr const char* kOwnerFile = "OWNER";         // in a checkpoint directory
constexpr const char* kRunTokenFile = "run.token";  // in a run directory

struct Owner {
  std::string token, run_dir;
};

bool is_token(const std::string& text) {
  return text.size() == 32 && text.find_first_not_of("0123456789abcdef") == std::string::npos;
}

std::string new_token() {
  std::random_device random;
  char text[33];
  std::snprintf(text, sizeof(text), "%08x%08x%08x%08x", random(), random(), random(), random());
  return text;
}

// `text` in `path`, atomically: written and synced beside it, then renamed onto it.
void replace_file(const fs::path& path, const std::string& text) {
  const fs::path tmp =
      path.parent_path() / ("." + path.filename().string() + "-" + std::to_string(getpid()));
  std::error_code ec;
  try {
    write_file(tmp.string(), text.data(), text.size());
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw Error("cannot write " + path.string() + ": " + why);
  }
}

// The run's token (RUN_DIR/run.token), made on its first start.
std::string run_token_of(const fs::path& run_dir) {
  const fs::path file = run_dir / kRunTokenFile;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(file, ec))) {
    const std::string token = new_token();
    replace_file(file, token + "\n");
    return token;
  }
  std::string token = read_regular_file(file.string(), 4096, "run token");
  if (!token.empty() && token.back() == '\n') token.pop_back();
  if (!is_token(token))
    throw Error("run token " + file.string() +
                " is not one loom wrote (32 hex digits); restore it, or remove it and the run's "
                "checkpoint directory's OWNER file to let this run take its checkpoints over");
  return token;
}

std::string owner_text(const Owner& owner) {
  return "# The run that owns this checkpoint directory: only it writes here, and its\n"
         "# checkpoint.keep_last removes only its own checkpoints (docs/checkpoint-format.md).\n"
         "token: " +
         owner.token + "\nrun_dir: " + owner.run_dir + "\n";
}

// The owner a checkpoint directory's OWNER file names; none when there is no such file.
std::optional<Owner> read_owner(const fs::path& file) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(file, ec))) return std::nullopt;
  std::istringstream text(
      read_regular_file(file.string(), size_t{1} << 16, "checkpoint owner file"));
  Owner owner;
  for (std::string line; std::getline(text, line);) {
    if (line.rfind("token: ", 0) == 0) owner.token = line.substr(7);
    if (line.rfind("run_dir: ", 0) == 0) owner.run_dir = line.substr(9);
  }
  if (!is_token(owner.token))
    throw Error("checkpoint owner file " + file.string() +
                " names no run token (not written by loom?); remove it if no run writes to this "
                "directory any more");
  return owner;
}

}  // namespace

std::string checkpoint_claim_directory(const std::string& checkpoints_dir,
                                       const std::string& run_dir) {
  const std::string token = run_token_of(run_dir);
  const std::string me = fs::absolute(run_dir).lexically_normal().string();
  const fs::path file = fs::path(checkpoints_dir) / kOwnerFile;
  std::error_code ec;
  fs::create_directories(checkpoints_dir, ec);
  if (ec)
    throw Error("cannot create checkpoint.directory " + checkpoints_dir + ": " + ec.message());
  std::optional<Owner> owner = read_owner(file);
  if (!owner) {
    // Unowned (new, or written by a loom that recorded no owner): this run takes it. link()
    // creates the complete file only where none is, so of two runs claiming it at once one wins
    // and the other reads the winner's.
    const fs::path tmp = fs::path(checkpoints_dir) / (".OWNER-" + std::to_string(getpid()));
    const std::string text = owner_text({token, me});
    try {
      write_file(tmp.string(), text.data(), text.size());
      if (::link(tmp.c_str(), file.c_str()) != 0 && errno != EEXIST) {
        fs::rename(tmp, file, ec);  // a file system without hard links
        if (ec) throw Error("cannot write " + file.string() + ": " + ec.message());
      }
    } catch (...) {
      fs::remove(tmp, ec);
      throw;
    }
    fs::remove(tmp, ec);
    sync_path(checkpoints_dir);
    owner = read_owner(file);
  }
  if (owner->token != token)
    throw Error("checkpoint.directory " + checkpoints_dir + " belongs to another run, the one in " +
                owner->run_dir + " (" + file.string() +
                "): runs sharing a checkpoint directory delete each other's checkpoints. Give "
                "this run a checkpoint.directory of its own, or continue that run with --resume "
                "--run-dir " +
                owner->run_dir);
  if (owner->run_dir != me) replace_file(file, owner_text({token, me}));  // the run was moved
  return token;
}

std::string checkpoint_start_run(const std::string& run_dir, const config::RunConfig& cfg,
                                 const Model& model) {
  std::error_code ec;
  if (fs::exists(run_dir, ec) && !fs::is_empty(run_dir, ec))
    throw Error(run_dir + " exists and is not empty; name a new folder");
  fs::create_directories(run_dir, ec);
  if (ec) throw Error("cannot create " + run_dir + ": " + ec.message());
  const std::string text = config_to_text(cfg);
  write_file((fs::path(run_dir) / "config.textproto").string(), text.data(), text.size());
  CheckpointState state;
  state.config = cfg;
  const Optimizer optimizer = optimizer_create(model);  // zero moments: a start, not a resume
  return checkpoint_save((fs::path(run_dir) / cfg.checkpoint().directory()).string(), state, model,
                         optimizer, 0);
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
