// The module a training rank trains (trainer.cpp): its TP shard of the model.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/csrc/jit/api/module.h>

#include "autotp/plan.h"

namespace autotp {

// This rank's module: rewritten here from the full model (every rank loads it once, then drops
// it), or read from a directory `autotp rewrite` wrote, so no rank ever holds the full weights.
// The full model and its plan come back too while they are at hand, for the pre-step check.
struct RankModel {
  torch::jit::Module module;
  std::optional<torch::jit::Module> original;  // the full model when --model is one archive
  TpPlan plan;
  int sdpa_sites = -1;  // attention sites use_sdpa replaced (-1: not asked)
};

// Throws autotp::Error for a rank folder of another tp or a missing rank archive.
// sdpa: the full model's eager causal attention becomes scaled_dot_product_attention first (use_sdpa).
RankModel load_rank_model(const std::string& path, int64_t tp, int tp_rank, bool sdpa = false);

}  // namespace autotp
