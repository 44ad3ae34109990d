#include "core/checkpoint_pieces.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <tuple>

#include "base/error.h"
#include "core/file_io.h"
#include "core/param_shards.h"

namespace loom {
namespace {

using Meta = config::CheckpointMeta;
using Entries = google::protobuf::RepeatedPtrField<Meta::Tensor>;

// Pieces larger than this (256 KiB) carry a CRC-32 per block of it, so a partial read checks what
// it reads.
constexpr int64_t kCrcBlockBytes = int64_t{1} << 18;

// The tensor as (rows, cols): cols is its last dimension.
int64_t cols_of(const std::vector<int64_t>& global_shape) { return global_shape.back(); }

// Appends the rectangles of global elements [global, global + n) of a tensor `cols` wide, held
// contiguously from buffer position `at`: a partial first row, whole rows, a partial last row;
// each merged into the previous piece when it continues it in both places.
void add_run(std::vector<Piece>& out, size_t tensor, int64_t cols, int64_t global, int64_t n,
             size_t at) {
  while (n > 0) {
    const int64_t row = global / cols, col = global % cols;
    PieceRect r{row, 1, col, std::min(n, cols - col)};
    if (col == 0 && n >= cols) r = {row, n / cols, 0, cols};
    Piece* last = out.empty() ? nullptr : &out.back();
    if (last && last->tensor == tensor && last->rect.col == r.col && last->rect.cols == r.cols &&
        last->rect.row + last->rect.rows == r.row &&
        last->at + static_cast<size_t>(last->rect.size()) == at)
      last->rect.rows += r.rows;
    else
      out.push_back({tensor, at, r});
    global += r.size();
    at += static_cast<size_t>(r.size());
    n -= r.size();
  }
}

bool whole_buffer(const Model& model, const Optimizer& optimizer) {
  return optimizer.owned.size() == 1 && optimizer.owned[0].begin == 0 &&
         optimizer.owned[0].end == model.layout.num_params;
}

std::vector<Piece> keep_written(const Model& model, std::vector<Piece> pieces) {
  std::erase_if(pieces, [&](const Piece& p) {
    const ParamTensor& t = model.layout.tensors[p.tensor];
    return t.pp_holders.front() != model.par.stage.rank ||
           (t.shard_dim < 0 && model.par.tp.rank != 0);
  });
  return pieces;
}

PieceRect rect_of(const Meta::Tensor& e) {
  const bool matrix = e.global_shape_size() == 2;
  return {matrix ? e.shard_offset(0) : 0, matrix ? e.shard_shape(0) : 1,
          e.shard_offset(matrix ? 1 : 0), e.shard_shape(matrix ? 1 : 0)};
}

void describe(Meta::Tensor* e, const ParamTensor& t, const PieceRect& r) {
  e->set_name(t.name);
  for (int64_t d : t.global_shape) e->add_global_shape(d);
  if (t.global_shape.size() == 2) {
    e->add_shard_offset(r.row);
    e->add_shard_shape(r.rows);
  }
  e->add_shard_offset(r.col);
  e->add_shard_shape(r.cols);
}

// Open data files of one checkpoint, by name.
class Files {
 public:
  explicit Files(std::string dir) : dir_(std::move(dir)) {}
  Files(const Files&) = delete;
  Files& operator=(const Files&) = delete;
  ~Files() {
    for (auto& [name, fd] : open_) ::close(fd);
  }
  int fd(const std::string& name) {
    if (auto it = open_.find(name); it != open_.end()) return it->second;
    const std::string path = dir_ + "/" + name;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("checkpoint " + dir_ + " lacks " + name + ": " + std::strerror(errno));
    return open_[name] = fd;
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::map<std::string, int> open_;
};

// The pieces of one tensor cover each of its elements exactly once (equal element counts are not
// enough: a piece moved by a row overlaps one and leaves another out). The tensor, as (rows,
// cols), is cut into bands at every piece's first and end row; within a band every piece that
// spans it is one interval of columns, and those intervals must tile [0, cols) in order.
void check_cover(const std::string& dir, const std::string& name,
                 const std::vector<const Meta::Tensor*>& pieces) {
  const auto& shape = pieces.front()->global_shape();
  const int64_t rows = shape.size() == 2 ? shape[0] : 1, cols = shape[shape.size() - 1];
  std::vector<PieceRect> rects;
  std::vector<int64_t> cuts = {0, rows};
  for (const Meta::Tensor* e : pieces) {
    rects.push_back(rect_of(*e));
    cuts.push_back(rects.back().row);
    cuts.push_back(rects.back().row + rects.back().rows);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  const std::string where = "checkpoint " + dir + ": tensor \"" + name + "\": ";
  std::vector<std::pair<int64_t, int64_t>> spans;  // [first column, end column) in one band
  for (size_t b = 0; b + 1 < cuts.size(); ++b) {
    const int64_t row = cuts[b];
    spans.clear();
    for (const PieceRect& r : rects)
      if (r.row <= row && row < r.row + r.rows) spans.emplace_back(r.col, r.col + r.cols);
    std::sort(spans.begin(), spans.end());
    int64_t col = 0;  // the columns before it are covered once
    for (const auto& [first, end] : spans) {
      if (first < col)
        throw Error(where + "two of its pieces hold row " + std::to_string(row) + ", column " +
                    std::to_string(first) +
                    " (overlapping, shifted or duplicated pieces: "
                    "corrupt metadata)");
      if (first > col) break;
      col = end;
    }
    if (col != cols)
      throw Error(where + "no piece holds row " + std::to_string(row) + ", column " +
                  std::to_string(col) + " (missing or shifted pieces: corrupt metadata)");
  }
}

// Every entry of one buffer kind, by tensor name, each checked against the model's global
// tensors (names, shapes, bounds, file names) before anything is read.
std::map<std::string, std::vector<const Meta::Tensor*>> index_entries(const std::string& dir,
                                                                      const Model& model,
                                                                      const Entries& entries) {
  std::map<std::string, const ParamTensor*> local;
  for (const ParamTensor& t : model.layout.tensors) local[t.name] = &t;
  std::map<std::string, std::vector<const Meta::Tensor*>> index;
  for (const Meta::Tensor& e : entries) {
    const std::vector<int64_t> shape(e.global_shape().begin(), e.global_shape().end());
    const std::string where = "checkpoint " + dir + ": tensor \"" + e.name() + "\": ";
    if (shape.empty() || shape.size() > 2 || e.shard_offset_size() != e.global_shape_size() ||
        e.shard_shape_size() != e.global_shape_size() ||
        std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 1 || d >= (1L << 31); }))
      throw Error(where + "its shapes are not 1-D or 2-D of one rank (corrupt metadata)");
    if (auto seen = index.find(e.name());
        seen != index.end() &&
        !std::equal(shape.begin(), shape.end(), seen->second.front()->global_shape().begin(),
                    seen->second.front()->global_shape().end()))
      throw Error(where + "its pieces disagree on the tensor's shape (corrupt metadata)");
    const PieceRect r = rect_of(e);
    const int64_t rows = shape.size() == 2 ? shape[0] : 1, cols = cols_of(shape);
    if (r.row < 0 || r.rows < 1 || r.row > rows - r.rows || r.col < 0 || r.cols < 1 ||
        r.col > cols - r.cols || e.offset() < 0 || e.offset() > (int64_t{1} << 56))
      throw Error(where + "a piece lies outside the tensor or its file (corrupt metadata)");
    if (e.file().empty() || e.file().find('/') != std::string::npos || e.file() == "." ||
        e.file() == "..")
      throw Error(where + "data file \"" + e.file() + "\" is not a file name (corrupt metadata)");
    auto it = local.find(e.name());
    if (it != local.end() && shape != it->second->global_shape)
      throw Error("checkpoint " + dir + " does not fit this model: tensor \"" + e.name() +
                  "\" has another shape there");
    index[e.name()].push_back(&e);
  }
  for (const auto& [name, pieces] : index) check_cover(dir, name, pieces);
  if (index.size() != model.layout.global_tensors)
    throw Error("checkpoint " + dir + " has " + std::to_string(index.size()) +
                " tensors where the model has " + std::to_string(model.layout.global_tensors));
  for (const ParamTensor& t : model.layout.tensors)
    if (!index.count(t.name))
      throw Error("checkpoint " + dir + " does not fit this model: it has no tensor \"" + t.name +
                  "\"");
  return index;
}

PieceRect intersect(const PieceRect& a, const PieceRect& b) {
  const int64_t row = std::max(a.row, b.row), col = std::max(a.col, b.col);
  const int64_t rows = std::min(a.row + a.rows, b.row + b.rows) - row;
  const int64_t cols = std::min(a.col + a.cols, b.col + b.cols) - col;
  return rows > 0 && cols > 0 ? PieceRect{row, rows, col, cols} : PieceRect{};
}

// What a buffer of a checkpoint holds: its name in messages and metadata, and the values it may
// hold.
enum class Stored { kParams, kAdamM, kAdamV };

const char* stored_name(Stored kind) {
  switch (kind) {
    case Stored::kParams:
      return "params";
    case Stored::kAdamM:
      return "adam_m";
    case Stored::kAdamV:
      return "adam_v";
  }
  return "?";
}

// The first of x[0, n) that no checkpoint may hold: a non-finite value, or in adam_v a negative
// one (its square root would make every later AdamW update NaN); n when there is none.
int64_t first_bad(const float* x, int64_t n, Stored kind) {
  const float lowest = kind == Stored::kAdamV ? 0.0f : -FLT_MAX;  // NaN fails both comparisons
  auto good = [lowest](float value) { return value >= lowest && value <= FLT_MAX; };
  constexpr int64_t kBlock = 4096;  // a block at a time without branching, so it vectorises
  for (int64_t at = 0; at < n; at += kBlock) {
    const int64_t end = std::min(n, at + kBlock);
    bool all_good = true;
    for (int64_t i = at; i < end; ++i) all_good &= good(x[i]);
    if (!all_good) return at + (std::find_if_not(x + at, x + end, good) - (x + at));
  }
  return n;
}

std::string value_text(float x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return std::to_string(x);
}

// buffer[want] ∩ the stored piece `e`: reads the CRC blocks of `e` that hold the overlap, checks
// them and the values, and copies the overlap's rows. Returns the bytes read.
int64_t read_overlap(Files& files, const Meta::Tensor& e, Stored kind, int64_t block_bytes,
                     const Piece& want, const PieceRect& overlap, float* buffer,
                     std::vector<float>& scratch) {
  const PieceRect p = rect_of(e);
  const int64_t piece_bytes = p.size() * 4;
  const int64_t first = ((overlap.row - p.row) * p.cols + (overlap.col - p.col)) * 4;
  const int64_t end =
      ((overlap.row + overlap.rows - 1 - p.row) * p.cols + (overlap.col + overlap.cols - p.col)) *
      4;
  const bool blocks = e.block_crc32_size() > 0;
  const int64_t block = blocks ? block_bytes : piece_bytes;
  if (blocks && (block_bytes <= 0 || block_bytes % 4 != 0 ||
                 e.block_crc32_size() != (piece_bytes + block - 1) / block))
    throw Error("checkpoint " + files.dir() + ": tensor \"" + e.name() +
                "\" has block checksums that do not fit its piece (corrupt metadata)");
  const int64_t lo = first / block * block,
                hi = std::min((end - 1) / block * block + block, piece_bytes);
  scratch.resize(static_cast<size_t>((hi - lo) / 4));
  const std::string path = files.dir() + "/" + e.file();
  read_at(files.fd(e.file()), scratch.data(), static_cast<size_t>(hi - lo), e.offset() + lo, path,
          "tensor " + e.name());
  for (int64_t k = lo / block; k * block < hi; ++k) {
    const int64_t from = k * block, to = std::min(from + block, piece_bytes);
    const uint32_t want_crc = blocks ? e.block_crc32(static_cast<int>(k)) : e.crc32();
    if (crc32_of(reinterpret_cast<const char*>(scratch.data()) + (from - lo), to - from) !=
        want_crc)
      throw Error("checkpoint file " + path + " is corrupt: checksum of " + e.name() +
                  " does not match");
  }
  for (int64_t r = overlap.row; r < overlap.row + overlap.rows; ++r) {
    const float* src = scratch.data() + ((r - p.row) * p.cols + (overlap.col - p.col)) - lo / 4;
    float* dst =
        buffer + want.at + (r - want.rect.row) * want.rect.cols + (overlap.col - want.rect.col);
    // Checksums hold for whatever was written: a NaN saved is a NaN read, and resuming from it
    // would only train NaN.
    if (const int64_t bad = first_bad(src, overlap.cols, kind); bad < overlap.cols)
      throw Error("checkpoint file " + path + ": " + stored_name(kind) + " of tensor \"" +
                  e.name() + "\" holds " + value_text(src[bad]) + " at row " + std::to_string(r) +
                  ", column " + std::to_string(overlap.col + bad) +
                  " (not a state to resume from: the run that wrote it had diverged, or the file "
                  "was altered)");
    std::copy_n(src, overlap.cols, dst);
  }
  return hi - lo;
}

// buffer ← every wanted piece, from the stored entries of one kind.
int64_t read_kind(Files& files, const Model& model, const Entries& entries, Stored kind,
                  int64_t block_bytes, const std::vector<Piece>& wanted, float* buffer) {
  const auto index = index_entries(files.dir(), model, entries);
  std::vector<float> scratch;
  int64_t bytes = 0;
  for (const Piece& want : wanted) {
    const ParamTensor& t = model.layout.tensors[want.tensor];
    int64_t covered = 0;
    for (const Meta::Tensor* e : index.at(t.name)) {
      const PieceRect overlap = intersect(want.rect, rect_of(*e));
      if (overlap.size() == 0) continue;
      bytes += read_overlap(files, *e, kind, block_bytes, want, overlap, buffer, scratch);
      covered += overlap.size();
    }
    if (covered != want.rect.size())
      throw Error("checkpoint " + files.dir() + ": the pieces of tensor \"" + t.name + "\" cover " +
                  std::to_string(covered) + " of the " + std::to_string(want.rect.size()) +
                  " elements this rank needs (" +
                  (covered < want.rect.size() ? "missing" : "overlapping") +
                  " pieces: corrupt metadata)");
  }
  return bytes;
}

int64_t stored_bytes(const Entries& entries) {
  int64_t n = 0;
  for (const Meta::Tensor& e : entries) n += rect_of(e).size() * 4;
  return n;
}

}  // namespace

std::vector<Piece> checkpoint_pieces_in(const Model& model, const std::vector<ShardRange>& ranges,
                                        bool compact) {
  std::vector<Piece> out;
  size_t base = 0;  // the range's first position in the compact layout
  for (const ShardRange& range : ranges) {
    for (size_t i = 0; i < model.layout.tensors.size(); ++i) {
      const ParamTensor& t = model.layout.tensors[i];
      if (t.offset >= range.end || t.offset + t.size <= range.begin) continue;
      for (const ShardRun& run : tensor_shard_runs(t, model.par.tp.rank)) {
        if (run.padding) continue;
        const size_t from = t.offset + run.local, lo = std::max(from, range.begin),
                     hi = std::min(from + run.count, range.end);
        if (lo >= hi) continue;
        add_run(out, i, cols_of(t.global_shape), static_cast<int64_t>(run.global + (lo - from)),
                static_cast<int64_t>(hi - lo), compact ? base + (lo - range.begin) : lo);
      }
    }
    base += range.size();
  }
  return out;
}

CheckpointPieces checkpoint_pieces_written(const Model& model, const Optimizer& optimizer,
                                           bool first_replica) {
  CheckpointPieces out;
  if (first_replica)
    out.params =
        keep_written(model, checkpoint_pieces_in(model, {{0, model.layout.num_params}}, false));
  if (!whole_buffer(model, optimizer))  // ZeRO-1: every rank its own shard
    out.moments = keep_written(model, checkpoint_pieces_in(model, optimizer.owned, true));
  else if (first_replica)
    out.moments = out.params;
  return out;
}

std::string checkpoint_pieces_bad_value(const std::vector<ParamTensor>& tensors,
                                        const float* params, const float* m, const float* v,
                                        const CheckpointPieces& pieces) {
  for (auto [list, buffer, kind] : {std::tuple{&pieces.params, params, Stored::kParams},
                                    std::tuple{&pieces.moments, m, Stored::kAdamM},
                                    std::tuple{&pieces.moments, v, Stored::kAdamV}})
    for (const Piece& p : *list) {
      const int64_t bad = first_bad(buffer + p.at, p.rect.size(), kind);
      if (bad == p.rect.size()) continue;
      return std::string(stored_name(kind)) + " of tensor \"" + tensors[p.tensor].name +
             "\" holds " + value_text(buffer[p.at + bad]) + " at row " +
             std::to_string(p.rect.row + bad / p.rect.cols) + ", column " +
             std::to_string(p.rect.col + bad % p.rect.cols);
    }
  return "";
}

Meta checkpoint_pieces_write(const std::string& dir, const std::string& file,
                             const std::vector<ParamTensor>& tensors, const float* params,
                             const float* m, const float* v, const CheckpointPieces& pieces) {
  Meta part;
  if (pieces.params.empty() && pieces.moments.empty()) return part;
  FileWriter out(dir + "/" + file);
  int64_t offset = 0;
  auto put = [&](const std::vector<Piece>& list, const float* buffer, Entries* entries) {
    for (const Piece& p : list) {
      const float* data = buffer + p.at;
      const int64_t bytes = p.rect.size() * 4;
      Meta::Tensor* e = entries->Add();
      describe(e, tensors[p.tensor], p.rect);
      e->set_file(file);
      e->set_offset(offset);
      e->set_crc32(crc32_of(data, static_cast<size_t>(bytes)));
      if (bytes > kCrcBlockBytes)
        for (int64_t at = 0; at < bytes; at += kCrcBlockBytes)
          e->add_block_crc32(crc32_of(reinterpret_cast<const char*>(data) + at,
                                      static_cast<size_t>(std::min(kCrcBlockBytes, bytes - at))));
      out.append(data, static_cast<size_t>(bytes));
      offset += bytes;
    }
  };
  put(pieces.params, params, part.mutable_params());
  put(pieces.moments, m, part.mutable_adam_m());
  put(pieces.moments, v, part.mutable_adam_v());
  out.sync_and_close();
  part.set_crc_block_bytes(kCrcBlockBytes);
  return part;
}

PiecesReadStats checkpoint_pieces_read(const std::string& dir, const Meta& meta, Model& model,
                                       Optimizer* optimizer) {
  Files files(dir);
  PiecesReadStats stats;
  const int64_t block = meta.crc_block_bytes();
  // Read in place on a host backend, else into host memory and uploaded; zeros first (the
  // padding; the rest is read).
  std::vector<float> host;
  auto read_into = [&](kernels::DeviceArray<float>& buffer, const auto& entries, Stored kind,
                       const std::vector<Piece>& wanted) {
    float* to = buffer.host_data();
    if (to) {
      std::fill_n(to, buffer.size(), 0.0f);
    } else {
      host.assign(buffer.size(), 0.0f);
      to = host.data();
    }
    stats.bytes_read += read_kind(files, model, entries, kind, block, wanted, to);
    stats.bytes_stored += stored_bytes(entries);
    if (!buffer.host_data()) buffer.upload(host);
  };
  read_into(model.buf.params, meta.params(), Stored::kParams,
            checkpoint_pieces_in(model, {{0, model.layout.num_params}}, false));
  model_refresh_weights(model);
  if (optimizer) {
    const std::vector<Piece> owned = checkpoint_pieces_in(model, optimizer->owned, true);
    read_into(optimizer->m, meta.adam_m(), Stored::kAdamM, owned);
    read_into(optimizer->v, meta.adam_v(), Stored::kAdamV, owned);
  }
  return stats;
}

}  // namespace loom
