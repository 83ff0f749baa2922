#include "train/model_io.h"

#include <nlohmann/json.hpp>

#include "lib/error.h"
#include "train/checkpoint.h"

namespace attnlab {

using json = nlohmann::json;

std::string gpt_config_json(const GptConfig& m) {
  const AttentionOptions& a = m.attention_options;
  const json options = {{"qk_norm", a.qk_norm},         {"sigmoid_bias", a.sigmoid_bias},
                        {"affine_phi", a.affine_phi},   {"affine_bias_norm", a.affine_bias_norm},
                        {"affine_rho", a.affine_rho},   {"infsa_gamma", a.infsa_gamma},
                        {"linear_infsa_form", a.linear_infsa_form},
                        {"kda_conv", a.kda_conv},       {"lla_lambda", a.lla_lambda},
                        {"lla_learn_lambda", a.lla_learn_lambda}, {"lla_flashlla_grad", a.lla_flashlla_grad}};
  const json j = {{"attention_options", options}, {"vocab_size", m.vocab_size}, {"vocab_pad", m.vocab_pad},   {"context", m.context},
                  {"layers", m.layers},         {"d_model", m.d_model},       {"heads", m.heads},
                  {"mlp_hidden", m.mlp_hidden}, {"norm", m.norm},             {"mlp", m.mlp},
                  {"positions", m.positions},   {"attention", m.attention},   {"layer_pattern", m.layer_pattern},
                  {"bias", m.bias},
                  {"tie_embeddings", m.tie_embeddings}, {"dropout", m.dropout}, {"rope_base", m.rope_base},
                  {"matmul_precision", std::string(matmul_precision_name(m.matmul_precision))}};
  // Only routed models carry the key, so a standard model's config reads as it always did; the
  // same for vector-mode models and their input/output dims.
  json jr = j;
  if (m.residual.routed())
    jr["residual"] = {{"mode", m.residual.mode},
                      {"granularity", m.residual.granularity},
                      {"block_size", m.residual.block_size},
                      {"gate", m.residual.gate}};
  if (m.vector_mode()) {
    jr["input_dim"] = m.input_dim;
    jr["output_dim"] = m.output_dim;
  }
  return jr.dump();
}

GptConfig gpt_config_from_json(const std::string& text, const std::string& source) {
  try {
    const json j = json::parse(text);
    GptConfig m;
    m.vocab_size = j.at("vocab_size");
    m.vocab_pad = j.at("vocab_pad");
    m.context = j.at("context");
    m.layers = j.at("layers");
    m.d_model = j.at("d_model");
    m.heads = j.at("heads");
    m.mlp_hidden = j.at("mlp_hidden");
    m.norm = j.at("norm");
    m.mlp = j.at("mlp");
    m.positions = j.at("positions");
    m.attention = j.at("attention");
    m.bias = j.at("bias");
    m.tie_embeddings = j.at("tie_embeddings");
    m.dropout = j.at("dropout");
    m.rope_base = j.at("rope_base");
    // Checkpoints written before mixed precision existed are f32.
    if (j.contains("matmul_precision")) m.matmul_precision = parse_matmul_precision(j.at("matmul_precision").get<std::string>());
    // ... and before the attention variants had options (softmax, which has none).
    if (j.contains("attention_options")) {
      const json& o = j.at("attention_options");
      AttentionOptions& a = m.attention_options;
      a.qk_norm = o.at("qk_norm");
      a.sigmoid_bias = o.at("sigmoid_bias");
      a.affine_phi = o.at("affine_phi");
      a.affine_bias_norm = o.at("affine_bias_norm");
      a.affine_rho = o.at("affine_rho");
      a.infsa_gamma = o.at("infsa_gamma");
      a.linear_infsa_form = o.at("linear_infsa_form");
      // Checkpoints from before kda and lla keep their defaults.
      if (o.contains("kda_conv")) a.kda_conv = o.at("kda_conv");
      if (o.contains("lla_lambda")) a.lla_lambda = o.at("lla_lambda");
      if (o.contains("lla_learn_lambda")) a.lla_learn_lambda = o.at("lla_learn_lambda");
      if (o.contains("lla_flashlla_grad")) a.lla_flashlla_grad = o.at("lla_flashlla_grad");
    }
    // ... and before layer patterns (every layer the same).
    if (j.contains("layer_pattern")) m.layer_pattern = j.at("layer_pattern");
    if (j.contains("residual")) {
      const json& o = j.at("residual");
      m.residual.mode = o.at("mode");
      m.residual.granularity = o.at("granularity");
      m.residual.block_size = o.at("block_size");
      m.residual.gate = o.at("gate");
    }
    // ... and before vector mode (token models).
    if (j.contains("input_dim")) m.input_dim = j.at("input_dim");
    if (j.contains("output_dim")) m.output_dim = j.at("output_dim");
    m.validate();
    return m;
  } catch (const json::exception& e) {
    detail::throw_error<IoError>("checkpoint '", source, "': malformed model config metadata (", e.what(), ")");
  } catch (const ConfigError& e) {
    detail::throw_error<IoError>("checkpoint '", source, "': invalid model config (", e.what(), ")");
  }
}

LoadedModel load_model(const std::string& path) {
  LoadedModel r;
  r.model_path = resolve_checkpoint(path);
  r.run_dir = run_dir_of_checkpoint(r.model_path);
  Checkpoint ck = load_checkpoint(r.model_path, /*with_state=*/false);
  AL_CHECK_IO(ck.model_meta.count("config") && ck.model_meta.count("tokenizer"), "checkpoint '", r.model_path,
              "' has no attnlab model metadata");
  r.config = gpt_config_from_json(ck.model_meta["config"], r.model_path);
  r.tokenizer = ck.model_meta["tokenizer"];
  AL_CHECK_IO(r.tokenizer == "byte" || r.tokenizer == "bpe" || r.tokenizer == kTaskTokenizer, "checkpoint '",
              r.model_path, "' names tokenizer '", r.tokenizer, "' (expected byte, bpe or ", kTaskTokenizer, ")");
  Generator gen(0);
  r.model = std::make_unique<Gpt>(r.config, gen);
  try {
    r.model->load_state_dict(ck.weights);
  } catch (const Error& e) {
    detail::throw_error<IoError>("checkpoint '", r.model_path, "' does not fit its own config: ", e.what());
  }
  r.model->set_training(false);
  return r;
}

}  // namespace attnlab
