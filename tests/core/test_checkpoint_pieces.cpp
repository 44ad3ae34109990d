// Sharded checkpoint pieces, without MPI: the ranks of pp × tp × ZeRO-1 layouts write their
// pieces by the rule; every other layout (pp 1, 2, 4 × tp 1, 2, 4 × whole or sharded moments)
// reads back exactly its shards of the global tensors, reading only what overlaps them. Also the
// single-file format of earlier versions.
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "base/rng.h"
#include "core/checkpoint.h"
#include "core/checkpoint_pieces.h"
#include "core/config.h"
#include "core/param_shards.h"
#include "core/stage_plan.h"
#include "tests/core/test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using Meta = config::CheckpointMeta;
using testing::error_of;
using testing::TempDir;

config::RunConfig wide_config() {
  config::RunConfig cfg;
  // The vocabulary pads at tp = 4; wte's pieces span several 256 KiB checksum blocks.
  for (const char* o :
       {"model.vocab_size=9001", "model.d_model=64", "model.n_heads=4", "model.d_mlp=128",
        "model.max_seq_len=8", "model.prelude_layers=0", "model.block_layers=2", "model.loops=2",
        "model.coda_layers=0", "train.seq_len=8", "train.micro_batch=1", "train.global_batch=1"})
    apply_override(cfg, o);
  return cfg;
}

// The whole model's buffers (global tensors back to back, as a tp = 1 layout holds them).
struct Global {
  Model layout;
  std::vector<float> params, m, v;
  std::map<std::string, size_t> offset;  // of each tensor
};

Global make_global(const config::RunConfig& cfg) {
  Global g{model_layout(cfg.model()), {}, {}, {}, {}};
  Rng rng{3};
  for (std::vector<float>* b : {&g.params, &g.m, &g.v}) {
    b->resize(g.layout.layout.num_params);
    for (float& x : *b) x = static_cast<float>(rng.next_u64() % 100000) * 1e-5f - 0.5f;
  }
  for (float& x : g.v) x = std::fabs(x);  // AdamW's second moments are never negative
  for (const ParamTensor& t : g.layout.layout.tensors) g.offset[t.name] = t.offset;
  return g;
}

// A layout's buffer (laid out as `local`) cut from a global one; padding is 0.
std::vector<float> shard_of(const Global& g, const Model& local, const std::vector<float>& global) {
  std::vector<float> out(local.layout.num_params);
  for (const ParamTensor& t : local.layout.tensors)
    tensor_shard_extract(t, local.par.tp.rank, global.data() + g.offset.at(t.name),
                         out.data() + t.offset);
  return out;
}

std::vector<float> compact(const std::vector<float>& flat, const std::vector<ShardRange>& owned) {
  std::vector<float> out;
  for (const ShardRange& r : owned)
    out.insert(out.end(), flat.begin() + r.begin, flat.begin() + r.end);
  return out;
}

void write_meta(const fs::path& dir, const config::RunConfig& cfg, const Meta& pieces) {
  Meta meta = pieces;
  meta.set_step(1);  // and as every step, one global batch read
  meta.set_data_position(cfg.train().global_batch());
  meta.set_tokens_seen(int64_t{cfg.train().global_batch()} * cfg.train().seq_len());
  *meta.mutable_config() = cfg;
  std::string text;
  google::protobuf::TextFormat::PrintToString(meta, &text);
  std::ofstream(dir / "checkpoint.textproto") << text;
}

struct Layout {
  int pp = 1, tp = 1, zero = 1;  // zero: ranks the moments are sharded over (1: whole)
  std::string name() const {
    return "pp " + std::to_string(pp) + " × tp " + std::to_string(tp) + " × ZeRO over " +
           std::to_string(zero);
  }
};

// The buffers' layout of pipeline rank `pp` and tensor-parallel rank `tp` of `l`.
Model layout_of(const config::RunConfig& cfg, const Layout& l, int pp, int tp) {
  config::RunConfig c = cfg;
  c.mutable_parallel()->set_pp(l.pp);
  return model_layout(c.model(), nullptr, {l.tp, tp, nullptr}, {stage_plan_create(c), pp});
}

// Writes step_0000001 as the ranks of `l` would (its dp = the ZeRO group).
fs::path write_sharded(const fs::path& root, const config::RunConfig& cfg, const Global& g,
                       const Layout& l) {
  const fs::path dir = root / "step_0000001";
  fs::create_directories(dir);
  Meta all;
  int rank = 0;
  for (int pp = 0; pp < l.pp; ++pp)
    for (int dp = 0; dp < l.zero; ++dp)
      for (int tp = 0; tp < l.tp; ++tp, ++rank) {
        const Model local = layout_of(cfg, l, pp, tp);
        Optimizer opt;
        opt.owned = {shard_range(local.layout.num_params, l.zero, dp)};
        const std::vector<float> m = compact(shard_of(g, local, g.m), opt.owned);
        const std::vector<float> v = compact(shard_of(g, local, g.v), opt.owned);
        const std::vector<float> params = shard_of(g, local, g.params);
        const CheckpointPieces pieces = checkpoint_pieces_written(local, opt, dp == 0);
        all.MergeFrom(checkpoint_pieces_write(
            dir, "rank_" + std::to_string(100000 + rank).substr(1) + ".bin", local.layout.tensors,
            params.data(), m.data(), v.data(), pieces));
      }
  write_meta(dir, cfg, all);
  return dir;
}

fs::path write_sharded(const TempDir& tmp, const config::RunConfig& cfg, const Global& g) {
  return write_sharded(fs::path(tmp.str()), cfg, g, {1, 2, 2});
}

TEST(CheckpointPieces, EveryLayoutReadsItsShardsOfAShardedCheckpoint) {
  TempDir tmp;
  const config::RunConfig cfg = wide_config();
  const Global g = make_global(cfg);
  for (const Layout& written : {Layout{1, 2, 2}, Layout{2, 2, 1}, Layout{4, 1, 2}}) {
    const fs::path dir = write_sharded(fs::path(tmp.str()) / written.name(), cfg, g, written);
    int64_t stored = 0;
    for (const auto& f : fs::directory_iterator(dir))
      if (f.path().extension() == ".bin") stored += static_cast<int64_t>(fs::file_size(f.path()));
    EXPECT_EQ(stored, static_cast<int64_t>(3 * g.layout.layout.num_params * 4))
        << written.name() << ": every global element of params, m and v is written exactly once";
    for (int pp_size : {1, 2, 4})
      for (int tp_size : {1, 2, 4})
        for (int zero : {1, 3}) {
          const Layout reader{pp_size, tp_size, zero};
          for (int pp = 0; pp < pp_size; ++pp)
            for (int tp = 0; tp < tp_size; ++tp) {
              SCOPED_TRACE("written at " + written.name() + ", read at " + reader.name() +
                           " by pp rank " + std::to_string(pp) + ", tp rank " + std::to_string(tp));
              Model local = layout_of(cfg, reader, pp, tp);
              local.buf.params =
                  kernels::DeviceArray<float>(local.buf.backend, local.layout.num_params);
              local.buf.params.upload(std::vector<float>(local.layout.num_params, 7.0f));
              Optimizer opt =
                  optimizer_create(local, {shard_range(local.layout.num_params, zero, zero - 1)});
              const CheckpointState s = checkpoint_load(dir.string(), local, &opt);
              EXPECT_EQ(local.buf.params.download(), shard_of(g, local, g.params));
              EXPECT_EQ(opt.m.download(), compact(shard_of(g, local, g.m), opt.owned));
              EXPECT_EQ(opt.v.download(), compact(shard_of(g, local, g.v), opt.owned));
              EXPECT_EQ(s.bytes_stored, stored);
              // At the layout that wrote it, a rank reads its own bytes (rounded out to the 256
              // KiB checksum blocks); at another, the blocks of the pieces that overlap it: at
              // most all rows of a column-cut piece of which it needs some columns.
              const int64_t own =
                  static_cast<int64_t>(local.layout.num_params + 2 * opt.m.size()) * 4;
              const int64_t blocks = 8 * (int64_t{1} << 18);
              if (pp_size == written.pp && tp_size == written.tp && zero == written.zero) {
                EXPECT_LT(s.bytes_read, own + blocks);
              }
              EXPECT_LT(s.bytes_read, 2 * own + blocks);
              EXPECT_GE(s.bytes_read, own - 4 * 9001 * 64);  // (the padding is not read)
            }
        }
  }
}

TEST(CheckpointPieces, DamageIsFoundWhereItIsRead) {
  TempDir tmp;
  const config::RunConfig cfg = wide_config();
  const Global g = make_global(cfg);
  const fs::path dir = write_sharded(tmp, cfg, g);
  {  // a byte of the last 256 KiB block of rank 0's wte piece (rows 0–4500 of 9001)
    std::fstream f(dir / "rank_00000.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4500 * 64 * 4 - 8);
    f.put('\x11');
  }
  Model whole = model_layout(cfg.model());
  whole.buf.params = kernels::DeviceArray<float>(whole.buf.backend, whole.layout.num_params);
  EXPECT_NE(
      error_of([&] { checkpoint_load(dir.string(), whole, nullptr); }).find("checksum of wte"),
      std::string::npos);
  // tp rank 0 of 4 reads rows 0–2250 of wte: the first blocks only, which are intact.
  Model quarter = model_layout(cfg.model(), nullptr, {4, 0, nullptr});
  quarter.buf.params = kernels::DeviceArray<float>(quarter.buf.backend, quarter.layout.num_params);
  EXPECT_EQ(error_of([&] { checkpoint_load(dir.string(), quarter, nullptr); }), "");

  // Metadata that claims a piece outside its tensor, or two pieces of the same elements.
  std::ifstream in(dir / "checkpoint.textproto");
  std::stringstream text;
  text << in.rdbuf();
  Meta meta;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(text.str(), &meta));
  Meta outside = meta;
  outside.mutable_params(0)->set_shard_offset(0, 9000);
  write_meta(dir, cfg, outside);
  EXPECT_NE(
      error_of([&] { checkpoint_load(dir.string(), quarter, nullptr); }).find("outside the tensor"),
      std::string::npos);
  Meta twice = meta;
  *twice.add_params() = meta.params(0);
  write_meta(dir, cfg, twice);
  EXPECT_NE(error_of([&] { checkpoint_load(dir.string(), quarter, nullptr); }).find("overlapping"),
            std::string::npos);
  Meta escape = meta;
  escape.mutable_params(0)->set_file("../../etc/passwd");
  write_meta(dir, cfg, escape);
  EXPECT_NE(
      error_of([&] { checkpoint_load(dir.string(), quarter, nullptr); }).find("not a file name"),
      std::string::npos);
}

uint32_t crc_of(const float* data, size_t n) {
  return static_cast<uint32_t>(
      crc32(crc32(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data), static_cast<uInt>(n * 4)));
}

TEST(CheckpointPieces, SingleFileCheckpointsOfEarlierVersionsLoad) {
  // Before sharded checkpoints rank 0 wrote params.bin, adam_m.bin and adam_v.bin, each the
  // global tensors back to back, one entry per tensor covering it whole.
  TempDir tmp;
  const config::RunConfig cfg = wide_config();
  const Global g = make_global(cfg);
  const fs::path dir = tmp / "step_0000001";
  fs::create_directories(dir);
  Meta meta;
  for (auto [file, buffer, entries] : {std::tuple{"params.bin", &g.params, meta.mutable_params()},
                                       std::tuple{"adam_m.bin", &g.m, meta.mutable_adam_m()},
                                       std::tuple{"adam_v.bin", &g.v, meta.mutable_adam_v()}}) {
    std::ofstream(dir / file, std::ios::binary)
        .write(reinterpret_cast<const char*>(buffer->data()),
               static_cast<std::streamsize>(buffer->size() * 4));
    for (const ParamTensor& t : g.layout.layout.tensors) {
      Meta::Tensor* e = entries->Add();
      e->set_name(t.name);
      for (int64_t d : t.global_shape) {
        e->add_global_shape(d);
        e->add_shard_offset(0);
        e->add_shard_shape(d);
      }
      e->set_file(file);
      e->set_offset(static_cast<int64_t>(t.offset * 4));
      e->set_crc32(crc_of(buffer->data() + t.offset, t.size));
    }
  }
  write_meta(dir, cfg, meta);
  Model half = model_layout(cfg.model(), nullptr, {2, 1, nullptr});
  half.buf.params = kernels::DeviceArray<float>(half.buf.backend, half.layout.num_params);
  Optimizer opt = optimizer_create(half, {shard_range(half.layout.num_params, 2, 1)});
  checkpoint_load(dir.string(), half, &opt);
  EXPECT_EQ(half.buf.params.download(), shard_of(g, half, g.params));
  EXPECT_EQ(opt.v.download(), compact(shard_of(g, half, g.v), opt.owned));
}


Meta read_meta(const fs::path& dir) {
  std::ifstream in(dir / "checkpoint.textproto");
  std::stringstream text;
  text << in.rdbuf();
  Meta meta;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text.str(), &meta));
  return meta;
}

// The entry of `name`'s params piece written by the rank whose file is `file`.
Meta::Tensor* piece_of(Meta& meta, const std::string& name, const std::string& file) {
  for (Meta::Tensor& e : *meta.mutable_params())
    if (e.name() == name && e.file() == file) return &e;
  ADD_FAILURE() << "no piece of " << name << " in " << file;
  static Meta::Tensor none;
  return &none;
}

// Issue 22: pieces were checked by counting their elements. Rank 1's wte piece of a tp 2
// checkpoint moved one row up (same size, checksums intact) loaded, and the export had its rows
// shifted by one and the last row zero. Every element of every tensor must now lie in exactly
// one piece, at every layout that reads it.
TEST(CheckpointPieces, ShiftedOverlappingAndDuplicatedPiecesAreRefused) {
  TempDir tmp;
  const config::RunConfig cfg = wide_config();  // vocabulary 9001: rows 0–4500 and 4501–9000
  const Global g = make_global(cfg);
  const fs::path dir = write_sharded(fs::path(tmp.str()), cfg, g, {1, 2, 1});
  const Meta meta = read_meta(dir);
  const struct {
    std::function<void(Meta&)> edit;
    const char* error;
  } cases[] = {
      {[](Meta& m) { piece_of(m, "wte", "rank_00001.bin")->set_shard_offset(0, 4500); },
       "tensor \"wte\": two of its pieces hold row 4500, column 0"},
      {[](Meta& m) { piece_of(m, "wte", "rank_00000.bin")->set_shard_offset(0, 1); },
       "tensor \"wte\": no piece holds row 0, column 0"},
      {[](Meta& m) {  // a row-parallel weight: columns cut over tp
         piece_of(m, "block.0.mlp.proj.weight", "rank_00001.bin")->set_shard_offset(1, 0);
       },
       "tensor \"block.0.mlp.proj.weight\": two of its pieces hold row 0, column 0"},
      {[](Meta& m) {
         piece_of(m, "block.1.mlp.fc.bias", "rank_00001.bin")->set_shard_offset(0, 63);
       },
       "tensor \"block.1.mlp.fc.bias\": two of its pieces hold row 0, column 63"},
      {[](Meta& m) {  // the same piece twice, the other one gone
         *piece_of(m, "wte", "rank_00001.bin") = *piece_of(m, "wte", "rank_00000.bin");
       },
       "tensor \"wte\": two of its pieces hold row 0, column 0"},
  };
  for (const auto& c : cases) {
    Meta bad = meta;
    c.edit(bad);
    write_meta(dir, cfg, bad);
    for (int tp_size : {1, 2})
      for (int tp = 0; tp < tp_size; ++tp) {
        Model local = model_layout(cfg.model(), nullptr, {tp_size, tp, nullptr});
        local.buf.params = kernels::DeviceArray<float>(local.buf.backend, local.layout.num_params);
        const std::string error = error_of([&] { checkpoint_load(dir.string(), local, nullptr); });
        EXPECT_NE(error.find(c.error), std::string::npos)
            << "tp " << tp << " of " << tp_size << ": " << error;
      }
  }
  write_meta(dir, cfg, meta);
  Model whole = model_layout(cfg.model());
  whole.buf.params = kernels::DeviceArray<float>(whole.buf.backend, whole.layout.num_params);
  EXPECT_EQ(error_of([&] { checkpoint_load(dir.string(), whole, nullptr); }), "");
}

// Issue 22: checksums hold for whatever was written, a NaN too. A non-finite value (or a
// negative AdamW second moment) that a rank reads makes the checkpoint unusable, naming the file
// and the tensor; a rank that does not read it is not stopped.
TEST(CheckpointPieces, NonFiniteValuesMakeTheCheckpointUnusable) {
  TempDir tmp;
  const config::RunConfig cfg = wide_config();
  Global g = make_global(cfg);
  g.params[g.offset.at("wte") + 5000 * 64 + 2] = NAN;  // row 5000: tp rank 1's piece
  const fs::path dir = write_sharded(fs::path(tmp.str()) / "nan", cfg, g, {1, 2, 1});
  Model whole = model_layout(cfg.model());
  whole.buf.params = kernels::DeviceArray<float>(whole.buf.backend, whole.layout.num_params);
  EXPECT_NE(error_of([&] { checkpoint_load(dir.string(), whole, nullptr); })
                .find("checkpoint file " + (dir / "rank_00001.bin").string() +
                      ": params of tensor \"wte\" holds nan at row 5000, column 2"),
            std::string::npos);
  Model quarter = model_layout(cfg.model(), nullptr, {4, 0, nullptr});  // rows 0–2250
  quarter.buf.params = kernels::DeviceArray<float>(quarter.buf.backend, quarter.layout.num_params);
  EXPECT_EQ(error_of([&] { checkpoint_load(dir.string(), quarter, nullptr); }), "");

  g = make_global(cfg);
  g.v[g.offset.at("norm_f.weight") + 1] = -0.5f;
  const fs::path negative = write_sharded(fs::path(tmp.str()) / "negative", cfg, g, {1, 2, 1});
  Optimizer opt = optimizer_create(whole);
  EXPECT_NE(error_of([&] {
              checkpoint_load(negative.string(), whole, &opt);
            }).find("adam_v of tensor \"norm_f.weight\" holds -0.500000 at row 0, column 1"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { checkpoint_load(negative.string(), whole, nullptr); }), "")
      << "the parameters alone are sound";
}

}  // namespace
}  // namespace loom
