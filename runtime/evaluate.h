// Held-out evaluation for `autotp train --eval-data` (trainer.cpp).
#pragma once

#include <cstdint>

#include <torch/csrc/jit/api/module.h>

#include "autotp/mesh.h"
#include "runtime/token_data.h"

namespace autotp {

struct EvalResult {
  double loss = 0;
  int64_t tokens = 0;
};

// Mean cross-entropy over every counted label of the first `max_samples` samples of `data` (all when
// 0), without gradients: DP rank d takes a contiguous share, TP peers the same one.
EvalResult evaluate(torch::jit::Module& model, const TokenData& data, Mesh& mesh, int64_t micro, int64_t seq,
                    int64_t max_samples);

}  // namespace autotp
