// Hugging Face Llama checkpoints (config.json + model.safetensors, or shards listed in
// model.safetensors.index.json) and loom models: which loom model a config.json describes, and
// where each Hugging Face tensor lies in loom's flat parameter buffer.
//
// The layout: model.embed_tokens, model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head (absent when tied). A
// Llama layer is a loom layer with mlp SWIGLU, RMSNORM and ROTARY: q, k and v are the rows of
// loom's attn.qkv, gate and up those of mlp.fc, and Hugging Face's rotary (rotate_half, angles
// t · theta^(−2d/hd)) is loom's. Imported, a model is one unshared block (loops 1); exported,
// a looped one is unrolled, each iteration a layer of its own (docs/checkpoint-format.md).
//
//   const loom::HfLlamaModel hf = loom::hf_llama_read("SmolLM-135M");
//   loom::Model model = loom::model_create(hf.model);
//   std::vector<float> params = loom::hf_llama_params(model, hf);
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/model.h"
#include "loom.pb.h"

namespace loom {

// A Hugging Face Llama checkpoint read whole: the loom model its config.json describes, the
// tensors by name (as floats), and the config's end-of-text id (eos_token_id; −1 when absent).
struct HfLlamaModel {
  config::ModelConfig model;
  std::map<std::string, std::vector<float>> tensors;
  std::map<std::string, std::vector<int64_t>> shapes;
  int end_of_text = -1;
};

// The loom model of DIR/config.json. Every field loom cannot honour (another architecture,
// rope_scaling, a sliding window, biases on only some layers, head_dim other than
// hidden_size / num_attention_heads, an activation other than silu, dropout, an unknown field)
// is a loom::Error naming it.
config::ModelConfig hf_llama_config(const std::string& dir, int* end_of_text = nullptr);

// Reads DIR's config and every tensor of its safetensors file or shards; throws loom::Error
// naming the file and tensor that is missing, misshapen, unexpected or of an unread dtype.
HfLlamaModel hf_llama_read(const std::string& dir);

// The flat parameter buffer of `model` (created from hf.model, whole: tp = pp = 1) holding hf's
// tensors.
std::vector<float> hf_llama_params(const Model& model, const HfLlamaModel& hf);

// Writes `model`'s parameters (params: its whole flat buffer, host memory) as a Hugging Face
// Llama checkpoint in DIR (created; config.json and model.safetensors, F32), every loop
// iteration unrolled into its own layers. A model Llama cannot express (LAYERNORM, LEARNED
// positions, GELU, the ladder residual, input injection) is a loom::Error saying which field.
void hf_llama_write(const std::string& dir, const Model& model, const float* params);

}  // namespace loom
