#include "core/hf_llama.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "base/error.h"
#include "core/config.h"
#include "core/file_io.h"
#include "core/safetensors.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using google::protobuf::Struct;
using google::protobuf::Value;

Struct read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in)
    throw Error("cannot read " + path.string() + " (a Hugging Face checkpoint folder has one)");
  std::stringstream text;
  text << in.rdbuf();
  Struct out;
  if (!google::protobuf::util::JsonStringToMessage(text.str(), &out).ok())
    throw Error(path.string() + " is not a JSON object");
  return out;
}

// One config.json field, read with the checks its use needs.
struct ConfigField {
  const fs::path& file;
  std::string key;
  const Value& value;

  std::string where() const { return file.string() + ": \"" + key + "\""; }
  long whole(long least, long most) const {
    const double v = value.number_value();
    if (value.kind_case() != Value::kNumberValue || std::floor(v) != v || v < least || v > most)
      throw Error(where() + " must be a whole number in [" + std::to_string(least) + ", " +
                  std::to_string(most) + "]");
    return static_cast<long>(v);
  }
  double number() const {
    if (value.kind_case() != Value::kNumberValue || !std::isfinite(value.number_value()))
      throw Error(where() + " must be a number");
    return value.number_value();
  }
  bool flag() const {
    if (value.kind_case() != Value::kBoolValue) throw Error(where() + " must be true or false");
    return value.bool_value();
  }
  std::string text() const {
    if (value.kind_case() != Value::kStringValue) throw Error(where() + " must be a string");
    return value.string_value();
  }
  bool null() const { return value.kind_case() == Value::kNullValue; }
  [[noreturn]] void unsupported(const std::string& why) const { throw Error(where() + ": " + why); }
};

// Fields that change nothing loom computes: names, versions, token ids, generation settings.
const std::set<std::string> kIgnored = {
    "_name_or_path",     "transformers_version", "torch_dtype",    "use_cache",
    "bos_token_id",      "pad_token_id",         "pretraining_tp", "initializer_range",
    "output_attentions", "output_hidden_states", "return_dict",    "tie_encoder_decoder",
    "is_llama_config"};

void apply_field(const ConfigField& f, config::ModelConfig& m, bool& attention_bias, bool& mlp_bias,
                 long& head_dim, int* end_of_text) {
  const std::string& k = f.key;
  if (k == "architectures") {
    const auto& list = f.value.list_value().values();
    if (f.value.kind_case() != Value::kListValue || list.size() != 1 ||
        list[0].string_value() != "LlamaForCausalLM")
      f.unsupported("loom imports LlamaForCausalLM checkpoints only");
  } else if (k == "model_type") {
    if (f.text() != "llama")
      f.unsupported("\"" + f.text() + "\" is not the llama layout loom imports");
  } else if (k == "vocab_size") {
    if (f.value.number_value() > 65536)
      f.unsupported(
          "loom's token shards hold uint16 ids, so it takes vocabularies of at most "
          "65536 tokens");
    m.set_vocab_size(static_cast<int>(f.whole(2, 65536)));
  } else if (k == "hidden_size") {
    m.set_d_model(static_cast<int>(f.whole(1, 1 << 16)));
  } else if (k == "intermediate_size") {
    m.set_d_mlp(static_cast<int>(f.whole(1, 1 << 18)));
  } else if (k == "num_hidden_layers") {
    m.set_block_layers(static_cast<int>(f.whole(1, 1 << 12)));
  } else if (k == "num_attention_heads") {
    m.set_n_heads(static_cast<int>(f.whole(1, 1 << 12)));
  } else if (k == "num_key_value_heads") {
    m.set_n_kv_heads(static_cast<int>(f.whole(1, 1 << 12)));
  } else if (k == "head_dim") {
    head_dim = f.whole(1, 1 << 16);
  } else if (k == "max_position_embeddings") {
    m.set_max_seq_len(static_cast<int>(f.whole(1, 1 << 24)));
  } else if (k == "rms_norm_eps") {
    m.set_norm_eps(static_cast<float>(f.number()));
  } else if (k == "rope_theta") {
    m.set_rope_theta(static_cast<float>(f.number()));
  } else if (k == "tie_word_embeddings") {
    m.set_tie_embeddings(f.flag());
  } else if (k == "hidden_act") {
    if (f.text() != "silu") f.unsupported("loom's SwiGLU uses silu, not " + f.text());
  } else if (k == "attention_bias") {
    attention_bias = f.flag();
  } else if (k == "mlp_bias") {
    mlp_bias = f.flag();
  } else if (k == "rope_scaling") {
    if (!f.null()) f.unsupported("loom has no rotary scaling (it must be null)");
  } else if (k == "rope_interleaved") {
    if (f.flag())
      f.unsupported("loom's rotary pairs d with d + hd/2 (rotate_half), not 2d, 2d + 1");
  } else if (k == "sliding_window") {
    if (!f.null()) f.unsupported("loom has no sliding-window attention (it must be null)");
  } else if (k == "attention_dropout") {
    if (f.number() != 0) f.unsupported("loom has no dropout (it must be 0)");
  } else if (k == "eos_token_id") {
    if (end_of_text && f.value.kind_case() == Value::kNumberValue)
      *end_of_text = static_cast<int>(f.whole(0, 65535));
  } else if (!kIgnored.count(k)) {
    f.unsupported(
        "a field loom's Llama import does not know; it cannot tell whether the model "
        "needs it");
  }
}

}  // namespace

config::ModelConfig hf_llama_config(const std::string& dir, int* end_of_text) {
  const fs::path file = fs::path(dir) / "config.json";
  const Struct json = read_json(file);
  config::ModelConfig m;
  m.set_prelude_layers(0);
  m.set_coda_layers(0);
  m.set_loops(1);
  m.set_block_layers(0);
  m.set_mlp(config::ModelConfig::SWIGLU);
  m.set_norm(config::ModelConfig::RMSNORM);
  m.set_position(config::ModelConfig::ROTARY);
  // Hugging Face LlamaConfig's defaults for the fields a config.json may leave out.
  m.set_max_seq_len(2048);
  m.set_norm_eps(1e-6f);
  m.set_rope_theta(10000.0f);
  m.set_tie_embeddings(false);
  bool attention_bias = false, mlp_bias = false;
  long head_dim = 0;
  if (end_of_text) *end_of_text = -1;
  for (const auto& [key, value] : json.fields())
    apply_field({file, key, value}, m, attention_bias, mlp_bias, head_dim, end_of_text);
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads"})
    if (!json.fields().count(key)) throw Error(file.string() + " lacks \"" + key + "\"");
  if (attention_bias != mlp_bias)
    throw Error(file.string() + ": attention_bias " + (attention_bias ? "true" : "false") +
                " and mlp_bias " + (mlp_bias ? "true" : "false") +
                " differ; loom's model.bias covers every linear layer");
  m.set_bias(attention_bias);
  if (m.d_model() % m.n_heads() != 0 || (head_dim != 0 && head_dim != m.d_model() / m.n_heads()))
    throw Error(file.string() + ": \"head_dim\" " + std::to_string(head_dim) +
                " must be hidden_size / num_attention_heads (" + std::to_string(m.d_model()) +
                " / " + std::to_string(m.n_heads()) + ") in loom");
  config::RunConfig run;
  *run.mutable_model() = m;
  run.mutable_train()->set_seq_len(std::min(run.train().seq_len(), m.max_seq_len()));
  try {
    validate_config(resolve_defaults(run));
  } catch (const Error& e) {
    throw Error(file.string() + " describes a model loom refuses: " + e.what());
  }
  return m;
}

namespace {

// Where one Hugging Face tensor lies in a loom model's flat buffer: `rows` of its rows from
// `offset` (a contiguous block: a whole loom tensor, or q, k, v of attn.qkv, gate or up of
// mlp.fc).
struct HfPlace {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;
  // A weight matrix's rows: its unrolled position, which of the layer's four linear layers
  // (Linear), and its first row there (−1: not a weight matrix of a layer).
  int position = -1, linear = -1;
  int64_t row = 0;
  const float* data = nullptr;  // export: where its values are
};

enum Linear { kQkv, kAttnProj, kFc, kMlpProj };

// Every Hugging Face tensor of `model` (whole: tp = pp = 1), layer i being unrolled position i.
std::vector<HfPlace> hf_places(const Model& model) {
  const int64_t C = model.spec.C, F = model.spec.F, V = model.spec.V;
  const int64_t Ckv = static_cast<int64_t>(model.spec.Hkv) * (C / model.spec.H);
  const bool bias = model.spec.config.bias();
  std::vector<HfPlace> places = {{"model.embed_tokens.weight", {V, C}, model.layout.wte}};
  for (size_t i = 0; i < model.spec.unrolled.size(); ++i) {
    const LayerOffsets& o = model.layout.layers[model.spec.unrolled[i]];
    const std::string at = "model.layers." + std::to_string(i) + ".";
    const std::string attn = at + "self_attn.", mlp = at + "mlp.";
    const int p = static_cast<int>(i);
    places.push_back({at + "input_layernorm.weight", {C}, o.norm1_w});
    places.push_back({attn + "q_proj.weight", {C, C}, o.qkv_w, p, kQkv, 0});
    places.push_back({attn + "k_proj.weight", {Ckv, C}, o.qkv_w + C * C, p, kQkv, C});
    places.push_back({attn + "v_proj.weight", {Ckv, C}, o.qkv_w + (C + Ckv) * C, p, kQkv, C + Ckv});
    places.push_back({attn + "o_proj.weight", {C, C}, o.attn_proj_w, p, kAttnProj, 0});
    places.push_back({at + "post_attention_layernorm.weight", {C}, o.norm2_w});
    places.push_back({mlp + "gate_proj.weight", {F, C}, o.fc_w, p, kFc, 0});
    places.push_back({mlp + "up_proj.weight", {F, C}, o.fc_w + F * C, p, kFc, F});
    places.push_back({mlp + "down_proj.weight", {C, F}, o.mlp_proj_w, p, kMlpProj, 0});
    if (!bias) continue;
    places.push_back({attn + "q_proj.bias", {C}, o.qkv_b});
    places.push_back({attn + "k_proj.bias", {Ckv}, o.qkv_b + C});
    places.push_back({attn + "v_proj.bias", {Ckv}, o.qkv_b + C + Ckv});
    places.push_back({attn + "o_proj.bias", {C}, o.attn_proj_b});
    places.push_back({mlp + "gate_proj.bias", {F}, o.fc_b});
    places.push_back({mlp + "up_proj.bias", {F}, o.fc_b + F});
    places.push_back({mlp + "down_proj.bias", {C}, o.mlp_proj_b});
  }
  places.push_back({"model.norm.weight", {C}, model.layout.norm_f_w});
  if (!model.spec.config.tie_embeddings())
    places.push_back({"lm_head.weight", {V, C}, model.layout.lm_head});
  return places;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + ")";
}

// The safetensors files of a checkpoint folder: model.safetensors, or the shards its index
// lists.
std::vector<fs::path> weight_files(const fs::path& dir) {
  if (fs::exists(dir / "model.safetensors")) return {dir / "model.safetensors"};
  const fs::path index = dir / "model.safetensors.index.json";
  if (!fs::exists(index))
    throw Error(dir.string() + " has neither model.safetensors nor model.safetensors.index.json");
  const Struct json = read_json(index);
  const auto map = json.fields().find("weight_map");
  if (map == json.fields().end() || map->second.kind_case() != Value::kStructValue)
    throw Error(index.string() + " lacks its \"weight_map\" object");
  std::set<std::string> files;
  for (const auto& [name, file] : map->second.struct_value().fields()) {
    if (file.kind_case() != Value::kStringValue ||
        file.string_value().find('/') != std::string::npos)
      throw Error(index.string() + ": the file of \"" + name + "\" must be a file name beside it");
    files.insert(file.string_value());
  }
  std::vector<fs::path> out;
  for (const std::string& file : files) out.push_back(dir / file);
  return out;
}

}  // namespace

HfLlamaModel hf_llama_read(const std::string& dir) {
  HfLlamaModel hf;
  hf.model = hf_llama_config(dir, &hf.end_of_text);
  for (const fs::path& file : weight_files(dir)) {
    SafetensorsFile read = safetensors_read(file.string());
    for (SafetensorsTensor& t : read.tensors) {
      if (hf.tensors.count(t.name))
        throw Error(file.string() + " holds " + t.name + " a second time");
      hf.shapes[t.name] = t.shape;
      hf.tensors[t.name] = std::move(t.values);
    }
  }
  return hf;
}

std::vector<float> hf_llama_params(const Model& model, const HfLlamaModel& hf) {
  LOOM_CHECK(model.par.tp.size == 1 && model.par.stage.plan.pp == 1);
  std::vector<float> params(model.layout.num_params, 0.0f);
  std::set<std::string> used;
  for (const HfPlace& p : hf_places(model)) {
    const auto found = hf.tensors.find(p.name);
    if (found == hf.tensors.end())
      throw Error("the checkpoint lacks " + p.name + " " + shape_text(p.shape));
    if (hf.shapes.at(p.name) != p.shape)
      throw Error(p.name + " has shape " + shape_text(hf.shapes.at(p.name)) +
                  "; config.json says " + shape_text(p.shape));
    std::copy(found->second.begin(), found->second.end(), params.begin() + p.offset);
    used.insert(p.name);
  }
  for (const auto& [name, values] : hf.tensors)
    // Rotary frequencies some older checkpoints store: loom computes them from rope_theta.
    if (!used.count(name) && !name.ends_with("rotary_emb.inv_freq"))
      throw Error("the checkpoint holds " + name +
                  ", which a Llama model of its config.json has "
                  "no place for");
  return params;
}

namespace {

// Relaxed recursion in a Llama checkpoint: each unrolled loop position's matrices become
// W + B_ℓ·A_ℓ of its iteration ℓ, computed (in double) into `merged`, which the places' data
// then point into.
void merge_lora(const Model& model, const float* params, std::vector<HfPlace>& places,
                std::map<std::pair<int, int>, std::vector<float>>& merged) {
  const int K = model.spec.config.block_layers(), r = model.spec.config.loop_lora_rank();
  for (HfPlace& place : places) {
    const int in_loop = place.position - model.spec.loop_begin;
    if (place.linear < 0 || in_loop < 0 || in_loop >= K * model.spec.loops) continue;
    const LayerOffsets& lora = model.layout.lora[in_loop / K][in_loop % K];
    const LoraFactors f = place.linear == kQkv        ? lora.qkv_lora
                          : place.linear == kAttnProj ? lora.attn_proj_lora
                          : place.linear == kFc       ? lora.fc_lora
                                                      : lora.mlp_proj_lora;
    const int64_t in = place.shape[1];
    const size_t base = place.offset - static_cast<size_t>(place.row * in);  // the matrix's start
    std::vector<float>& w = merged[{place.position, place.linear}];
    if (w.empty()) {
      const int64_t C = model.spec.C, F = model.spec.F;
      const int64_t out = place.linear == kQkv  ? C + 2 * model.spec.Hkv * (C / model.spec.H)
                          : place.linear == kFc ? 2 * F  // Llama's MLP is SwiGLU
                                                : C;
      w.assign(params + base, params + base + out * in);
      for (int64_t o = 0; o < out; ++o)
        for (int64_t c = 0; c < in; ++c) {
          double sum = 0;
          for (int k = 0; k < r; ++k)
            sum += static_cast<double>(params[f.b + o * r + k]) * params[f.a + k * in + c];
          w[o * in + c] = static_cast<float>(w[o * in + c] + sum);
        }
    }
    place.data = w.data() + place.row * in;
  }
}

// Why a Llama checkpoint cannot express `m` ("" when it can).
std::string not_llama(const config::ModelConfig& m) {
  using M = config::ModelConfig;
  if (m.mlp() != M::SWIGLU) return "model.mlp is GELU (Llama's MLP is SWIGLU)";
  if (m.norm() != M::RMSNORM) return "model.norm is LAYERNORM (Llama's is RMSNORM)";
  if (m.position() != M::ROTARY) return "model.position is LEARNED (Llama's is ROTARY)";
  if (m.residual() != M::STANDARD) return "model.residual is LADDER";
  if (m.input_injection()) return "model.input_injection is on";
  if (m.recursion_router() != M::NONE)
    return "model.recursion_router routes tokens past iterations, which Llama's layer list "
           "cannot say";
  return "";
}

std::string float_json(float v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.7g", static_cast<double>(v));
  return text;
}

std::string config_json(const Model& model) {
  const config::ModelConfig& m = model.spec.config;
  const std::string bias = m.bias() ? "true" : "false";
  std::ostringstream out;
  out << "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
      << "  \"vocab_size\": " << m.vocab_size() << ",\n  \"hidden_size\": " << m.d_model()
      << ",\n  \"intermediate_size\": " << m.d_mlp()
      << ",\n  \"num_hidden_layers\": " << model.spec.unrolled.size()
      << ",\n  \"num_attention_heads\": " << m.n_heads()
      << ",\n  \"num_key_value_heads\": " << model.spec.Hkv
      << ",\n  \"head_dim\": " << m.d_model() / m.n_heads()
      << ",\n  \"max_position_embeddings\": " << m.max_seq_len()
      << ",\n  \"rms_norm_eps\": " << float_json(m.norm_eps())
      << ",\n  \"rope_theta\": " << float_json(m.rope_theta())
      << ",\n  \"rope_scaling\": null,\n  \"hidden_act\": \"silu\""
      << ",\n  \"attention_bias\": " << bias << ",\n  \"mlp_bias\": " << bias
      << ",\n  \"attention_dropout\": 0.0,\n  \"tie_word_embeddings\": "
      << (m.tie_embeddings() ? "true" : "false")
      << ",\n  \"initializer_range\": " << float_json(m.init_std())
      << ",\n  \"torch_dtype\": \"float32\"\n}\n";
  return out.str();
}

}  // namespace

void hf_llama_write(const std::string& dir, const Model& model, const float* params) {
  LOOM_CHECK(model.par.tp.size == 1 && model.par.stage.plan.pp == 1);
  if (const std::string why = not_llama(model.spec.config); !why.empty())
    throw Error("a Hugging Face Llama checkpoint cannot hold this model: " + why);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create " + dir + ": " + ec.message());
  std::vector<HfPlace> places = hf_places(model);
  for (HfPlace& p : places) p.data = params + p.offset;
  std::map<std::pair<int, int>, std::vector<float>> merged;
  if (!model.layout.lora.empty()) merge_lora(model, params, places, merged);
  std::vector<NamedTensor> tensors;
  for (const HfPlace& p : places) tensors.push_back({p.name, p.shape, p.data});
  safetensors_write((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  const std::string text = config_json(model);
  const fs::path config = fs::path(dir) / "config.json";
  write_file(config.string() + ".tmp", text.data(), text.size());
  fs::rename(config.string() + ".tmp", config);
}

}  // namespace loom
