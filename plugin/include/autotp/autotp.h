// autotp public C++ API (links libautotp.so). No LibTorch headers: cheap to include.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
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

}  // namespace autotp
