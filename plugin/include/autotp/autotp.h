// autotp public C++ API (links libautotp.so). No LibTorch headers: cheap to include.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "autotp/error.h"
#include "autotp/plan.h"

namespace autotp {

// Loads a TorchScript archive and plans tensor parallelism for it. tp = 0 picks the largest valid
// tp that is at most 8 (one node). Throws autotp::Error with a one-line message on bad input.
TpPlan inspect(const std::string& model_path, int tp = 0);

// The plan as one JSON document (keys: model, graph_kind, tp, valid_tp, blocks, parameters,
// rescaled, collectives, constraints, bytes, sites: the graph nodes the rewrite edits).
std::string plan_to_json(const TpPlan& plan, int indent = 2);

// A plan written by plan_to_json (perhaps edited by a user), read back. Throws autotp::Error
// naming `label` and the key for malformed input; whether it fits a model is checked by
// autotp::check_plan (autotp/passes.h).
TpPlan plan_from_json(const std::string& text, const std::string& label);

// The one line of an exception meant for the user: an autotp message raised inside a TorchScript
// op arrives wrapped in the interpreter's traceback; this finds it again.
std::string user_message(const std::exception& e);

// `autotp merge`: the rank archives of one rewrite or training run back as a Hugging Face folder.
struct MergeOptions {
  std::string source;  // DIR of rank0.pt..rank{tp-1}.pt, or a checkpoint root whose file `latest` names that DIR
  std::string out;     // the Hugging Face folder to write (created; an existing file there is an error)
  std::string dtype;   // "fp32" | "bf16" | "" (each tensor as the archive holds it)
  int64_t max_shard_bytes = 5'000'000'000;  // transformers' default "5GB"
};
struct MergeReport {
  std::string ranks_dir;           // where the rank archives were read from
  int tp = 0;
  int64_t tensors = 0, bytes = 0;  // tensors written (tied ones once) and their bytes
  std::vector<std::string> files;  // every file written into out, in the order written
};
// Writes out/model.safetensors (or model-0000k-of-0000n.safetensors + model.safetensors.index.json
// above max_shard_bytes) with the archive's parameter names, tied weights once, vocab padding
// stripped, plus the Hugging Face side files the archive recorded (scripts/export_hf.py:
// config.json with torch_dtype set to what was written, generation_config.json, tokenizer files).
// Throws autotp::Error with one line for a missing rank file, mixed tps, a bad dtype, etc.
MergeReport merge_to_hf(const MergeOptions& options);
// "5GB" (10^9), "500MB", "100KB", "2GiB" (2^30), "1000" (bytes), as transformers reads max_shard_size.
int64_t parse_size(const std::string& text);

// The plan as a human table and summary.
std::string plan_to_table(const TpPlan& plan);
// Bytes of parameters each tp rank holds under the plan (they differ when a split is uneven).
std::vector<int64_t> rank_bytes(const TpPlan& plan);

// ---- `autotp plan`: every parallel strategy for a model on a cluster we may not have ----------------
// Memory per GPU and communication per optimizer step for DDP, ZeRO-1/2/3 and AutoTP(t)+ZeRO-1/2,
// and one recommendation. The formulas, their sources and what is counted: plugin/planner.cpp and
// README.md "`autotp plan`".

// The shapes the estimates need. From a Hugging Face config.json (Llama-style count) or from a
// TorchScript archive through the analysis (exact parameter counts per tp rank).
struct ModelShape {
  std::string name;    // the file it came from
  std::string source;  // "hf-config" | "torchscript"
  int64_t hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0;
  int64_t head_dim = 0;  // 0: hidden / heads (config.json's head_dim, or the q projection's width / heads)
  bool tied = false;
  int64_t parameters = 0;     // Ψ: every trainable value once (tied weights once)
  int64_t largest_unit = 0;   // parameters of the largest of one layer and the embedding (ZeRO-3's gather)
  std::vector<int> valid_tp;  // tp values the model's split extents admit (vocabulary padded)
  std::vector<std::pair<int, int64_t>> per_rank;  // (tp, Ψ_tp): parameters one TP rank holds
  int64_t parameters_per_rank(int tp) const;      // throws when tp is not in per_rank
};
ModelShape shape_from_hf_config(const std::string& path);
ModelShape shape_from_hf_config_text(const std::string& text, const std::string& label);
// Runs the analysis once, plans every valid tp up to max_tp for its bytes per rank.
ModelShape shape_from_archive(const std::string& path, int max_tp);

struct ClusterSpec {
  std::string name;  // a preset's name, or "custom"
  int gpus_per_node = 0, nodes = 1;
  int64_t gpu_memory = 0;      // bytes
  double intra_node_bw = 0;    // bytes/s one GPU sends inside a node (per direction)
  double inter_node_bw = 0;    // bytes/s one GPU sends to other nodes: the node's network / its GPUs
  std::string about;           // where a preset's numbers come from
};
std::vector<ClusterSpec> cluster_presets();  // gpus_per_node set, nodes = 1
ClusterSpec cluster_preset(const std::string& name);  // throws naming the presets
// "80GiB", "24GB", "1e9" -> bytes; "450GB/s", "400Gb/s", "25GiB/s" -> bytes/s. Errors name the flag.
int64_t parse_memory_flag(const std::string& flag, const std::string& text);
double parse_bandwidth_flag(const std::string& flag, const std::string& text);

struct TrainingSpec {
  int64_t seq = 0, micro_batch = 1, global_batch = 0;
  bool bf16 = true;  // bf16 mixed precision; false: fp32
  bool activation_checkpointing = false;
  // FlashAttention: the attention scores and softmax (a·s² per layer) are recomputed in the
  // backward, not stored; q, k, v, the output and the softmax's log-sum-exp are.
  bool flash_attention = false;
};

struct StrategyPlan {
  std::string name;  // DDP, ZeRO-1, ZeRO-2, ZeRO-3, AutoTP(t)+ZeRO-1, AutoTP(t)+ZeRO-2
  int tp = 1, dp = 1, zero_stage = 0;
  int64_t grad_accum = 1;
  int64_t params = 0, grads = 0, optimizer = 0, activations = 0, buffers = 0, total = 0;  // bytes per GPU
  int64_t intra_node_bytes = 0, inter_node_bytes = 0;  // sent per GPU per optimizer step
  double comm_seconds = 0;
  bool fits = false;
  bool autotp_runs() const { return zero_stage <= 1; }  // autotp's trainer: stage 0 or 1
};

struct ClusterPlan {
  ModelShape model;
  ClusterSpec cluster;
  TrainingSpec training;
  std::vector<StrategyPlan> strategies;
  std::vector<std::string> skipped;  // strategies left out, each with why (batch does not divide)
  std::string recommended;           // a strategy's name, or empty when nothing fits
  std::string reason;                // why that one, or what to change when nothing fits
  const StrategyPlan& strategy(const std::string& name) const;  // case-insensitive; throws listing names
};
ClusterPlan plan_cluster(const ModelShape& model, const ClusterSpec& cluster, const TrainingSpec& training);

std::string cluster_plan_table(const ClusterPlan& plan);
std::string cluster_plan_json(const ClusterPlan& plan);  // integer bytes; "recommended": null when none
// A DeepSpeed config for one strategy (autotp check accepts it when autotp_runs()).
std::string deepspeed_config_for(const ClusterPlan& plan, const StrategyPlan& s, double lr);
struct LlamaFactoryOptions {
  std::string model_name_or_path, deepspeed_path, dataset = "alpaca_en_demo", templ = "default",
              output_dir = "saves/autotp-plan";
  double lr = 1e-5;
};
// A LLaMA-Factory full-SFT YAML that trains with the DeepSpeed config at options.deepspeed_path.
std::string llamafactory_yaml_for(const ClusterPlan& plan, const StrategyPlan& s, const LlamaFactoryOptions& options);

}  // namespace autotp
