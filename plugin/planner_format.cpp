// `autotp plan`'s faces: the human table, the JSON document, and the configs it emits for one
// strategy — a DeepSpeed JSON (the keys configs/README.md documents, so `autotp check` reads it as
// DeepSpeed does) and a LLaMA-Factory full-SFT YAML that points at it.
#include <cstdio>
#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autotp/autotp.h"

namespace autotp {
namespace {

std::string fixed(double v, int digits) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(digits) << v;
  return o.str();
}
std::string gib(int64_t bytes) { return fixed(static_cast<double>(bytes) / (1ull << 30), 1); }
std::string gbytes(int64_t bytes) { return fixed(static_cast<double>(bytes) / 1e9, bytes != 0 && bytes < 100'000'000 ? 3 : 1); }

std::string grouped(int64_t v) {  // 6738415616 -> 6,738,415,616
  std::string digits = std::to_string(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string where_it_runs(const StrategyPlan& s) {
  return s.autotp_runs() ? "autotp train or DeepSpeed" : "DeepSpeed only (autotp runs ZeRO stages 0 and 1)";
}

// A number PyYAML reads as a float (YAML 1.1 wants a dot before the exponent: 1.0e-05, not 1e-5).
std::string yaml_float(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6e", v);
  std::string s = buf;
  const size_t e = s.find('e');
  std::string mantissa = s.substr(0, e);
  while (mantissa.size() > 3 && mantissa.back() == '0') mantissa.pop_back();
  return mantissa + s.substr(e);
}

}  // namespace

std::string cluster_plan_table(const ClusterPlan& p) {
  const ModelShape& m = p.model;
  const ClusterSpec& c = p.cluster;
  const TrainingSpec& t = p.training;
  std::ostringstream o;
  o << "model     " << m.name << " (" << m.source << "): " << grouped(m.parameters) << " parameters; hidden " << m.hidden
    << ", intermediate " << m.intermediate << ", " << m.layers << " layers, " << m.heads << " heads / " << m.kv_heads
    << " kv heads, vocabulary " << m.vocab << (m.tied ? " (tied)" : "") << "\n";
  o << "cluster   " << c.name << ": " << c.nodes << " node" << (c.nodes > 1 ? "s" : "") << " x " << c.gpus_per_node
    << " GPUs, " << gib(c.gpu_memory) << " GiB each; " << fixed(c.intra_node_bw / 1e9, 1) << " GB/s per GPU inside a node";
  if (c.nodes > 1 || c.inter_node_bw > 0) o << ", " << fixed(c.inter_node_bw / 1e9, 2) << " GB/s per GPU between nodes";
  o << "\ntraining  seq " << t.seq << ", micro-batch " << t.micro_batch << ", global batch " << t.global_batch << ", "
    << (t.bf16 ? "bf16 mixed-precision Adam (2 + 2 + 12 bytes per parameter)" : "fp32 Adam (4 + 4 + 12 bytes per parameter)")
    << ", " << (t.activation_checkpointing ? "full activation checkpointing" : "no activation checkpointing")
    << (t.flash_attention ? ", attention scores not stored (FlashAttention)" : "") << "\n\n";
  o << "memory per GPU in GiB; communication per GPU per optimizer step in GB (10^9 bytes)\n";
  o << std::left << std::setw(18) << "strategy" << std::right << std::setw(4) << "tp" << std::setw(5) << "dp"
    << std::setw(6) << "zero" << std::setw(5) << "GA" << std::setw(8) << "params" << std::setw(8) << "grads"
    << std::setw(8) << "optim" << std::setw(8) << "activ" << std::setw(8) << "buffers" << std::setw(8) << "total"
    << std::setw(6) << "fits" << std::setw(10) << "intra" << std::setw(10) << "inter" << std::setw(9) << "comm s" << "\n";
  for (const auto& s : p.strategies) {
    o << std::left << std::setw(18) << s.name << std::right << std::setw(4) << s.tp << std::setw(5) << s.dp << std::setw(6)
      << s.zero_stage << std::setw(5) << s.grad_accum << std::setw(8) << gib(s.params) << std::setw(8) << gib(s.grads)
      << std::setw(8) << gib(s.optimizer) << std::setw(8) << gib(s.activations) << std::setw(8) << gib(s.buffers)
      << std::setw(8) << gib(s.total) << std::setw(6) << (s.fits ? "yes" : "no") << std::setw(10)
      << gbytes(s.intra_node_bytes) << std::setw(10) << gbytes(s.inter_node_bytes) << std::setw(9)
      << fixed(s.comm_seconds, 2) << "\n";
  }
  for (const auto& s : p.skipped) o << "skipped   " << s << "\n";
  o << "\nZeRO-2 and ZeRO-3 rows run on DeepSpeed only; autotp train runs the DDP (stage 0), ZeRO-1 and AutoTP+ZeRO-1 rows.\n";
  if (p.recommended.empty()) o << "no recommendation: " << p.reason << "\n";
  else o << "recommended: " << p.reason << "\n";
  return o.str();
}

std::string cluster_plan_json(const ClusterPlan& p) {
  using json = nlohmann::ordered_json;  // keys in the documented order
  const ModelShape& m = p.model;
  json model{{"name", m.name}, {"source", m.source}, {"hidden_size", m.hidden}, {"intermediate_size", m.intermediate},
             {"num_hidden_layers", m.layers}, {"num_attention_heads", m.heads}, {"num_key_value_heads", m.kv_heads},
             {"vocab_size", m.vocab}, {"tie_word_embeddings", m.tied}, {"parameters", m.parameters}, {"valid_tp", m.valid_tp}};
  const ClusterSpec& c = p.cluster;
  json cluster{{"name", c.name}, {"gpus_per_node", c.gpus_per_node}, {"nodes", c.nodes}, {"gpu_memory_bytes", c.gpu_memory},
               {"intra_node_bytes_per_second", c.intra_node_bw}, {"inter_node_bytes_per_second", c.inter_node_bw}};
  const TrainingSpec& t = p.training;
  json training{{"seq", t.seq}, {"micro_batch", t.micro_batch}, {"global_batch", t.global_batch},
                {"dtype", t.bf16 ? "bf16" : "fp32"}, {"activation_checkpointing", t.activation_checkpointing},
                {"flash_attention", t.flash_attention}};
  json strategies = json::array();
  for (const auto& s : p.strategies)
    strategies.push_back({{"name", s.name}, {"tp", s.tp}, {"dp", s.dp}, {"zero_stage", s.zero_stage},
                          {"gradient_accumulation_steps", s.grad_accum},
                          {"memory_bytes", {{"params", s.params}, {"grads", s.grads}, {"optimizer", s.optimizer},
                                            {"activations", s.activations}, {"buffers", s.buffers}, {"total", s.total}}},
                          {"comm_bytes_per_step", {{"intra_node", s.intra_node_bytes}, {"inter_node", s.inter_node_bytes}}},
                          {"comm_seconds", s.comm_seconds}, {"fits", s.fits}, {"runs_on", where_it_runs(s)}});
  json j{{"model", model}, {"cluster", cluster}, {"training", training}, {"strategies", strategies},
         {"skipped", p.skipped}};
  j["recommended"] = p.recommended.empty() ? json(nullptr) : json(p.recommended);
  j["reason"] = p.reason;
  return j.dump(2);
}

std::string deepspeed_config_for(const ClusterPlan& p, const StrategyPlan& s, double lr) {
  using nlohmann::ordered_json;
  // No train_batch_size: with AutoTP DeepSpeed counts it over the whole world, TP replicas included
  // (configs/README.md "Batch sizes"); the micro-batch and GA mean the same in both.
  ordered_json j;
  j["train_micro_batch_size_per_gpu"] = p.training.micro_batch;
  j["gradient_accumulation_steps"] = s.grad_accum;
  // Hugging Face's Trainer (LLaMA-Factory) checks these against its own defaults: lr as given,
  // betas (0.9, 0.999), eps 1e-8, weight decay 0, clipping 1.0.
  j["optimizer"] = {{"type", "AdamW"}, {"params", {{"lr", lr}, {"betas", {0.9, 0.999}}, {"eps", 1e-8}, {"weight_decay", 0.0}}}};
  j["bf16"] = {{"enabled", p.training.bf16}};
  j["zero_optimization"] = {{"stage", s.zero_stage}};
  if (s.zero_stage == 3) j["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = true;
  if (s.tp > 1) j["tensor_parallel"] = {{"autotp_size", s.tp}};
  j["gradient_clipping"] = 1.0;
  j["steps_per_print"] = 10;
  return j.dump(2) + "\n";
}

std::string llamafactory_yaml_for(const ClusterPlan& p, const StrategyPlan& s, const LlamaFactoryOptions& o) {
  auto q = [](const std::string& v) { return nlohmann::json(v).dump(); };  // a JSON string is a YAML string
  std::ostringstream y;
  y << "# LLaMA-Factory full SFT, written by autotp plan for " << s.name << " (tp " << s.tp << ", dp " << s.dp
    << ", ZeRO-" << s.zero_stage << ") on " << p.cluster.nodes << " x " << p.cluster.gpus_per_node << " GPUs\n";
  y << "# run: FORCE_TORCHRUN=1 llamafactory-cli train THIS.yaml (on every node with NNODES, NODE_RANK, MASTER_ADDR)\n";
  y << "### model\nmodel_name_or_path: " << q(o.model_name_or_path) << "\n";
  y << "### method\nstage: sft\ndo_train: true\nfinetuning_type: full\ndeepspeed: " << q(o.deepspeed_path) << "\n";
  if (!p.training.activation_checkpointing) y << "disable_gradient_checkpointing: true\n";  // LLaMA-Factory turns it on by default
  if (p.training.flash_attention) y << "flash_attn: fa2\n";
  y << "### dataset\ndataset: " << q(o.dataset) << "\ntemplate: " << q(o.templ) << "\ncutoff_len: " << p.training.seq << "\n";
  y << "### output\noutput_dir: " << q(o.output_dir) << "\nlogging_steps: 10\n";
  y << "### train\nper_device_train_batch_size: " << p.training.micro_batch << "\ngradient_accumulation_steps: "
    << s.grad_accum << "\nlearning_rate: " << yaml_float(o.lr) << "\nnum_train_epochs: 1.0\n";
  y << "bf16: " << (p.training.bf16 ? "true" : "false") << "\n";
  return y.str();
}

}  // namespace autotp
