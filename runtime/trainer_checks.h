// The trainer's self-checks (trainer.cpp calls them): TP peers read the same batch; the sharded
// module against the unsharded one before step 1; replicated parameters identical across TP.
#pragma once

#include <string>

#include <ATen/core/Tensor.h>
#include <torch/csrc/jit/api/module.h>

#include "autotp/mesh.h"
#include "autotp/plan.h"
#include "runtime/trainer.h"

namespace autotp {

// TP peers must train on the same tokens: compares a checksum of `batch` over the TP group.
void check_tp_peers_agree(Group& tp, const at::Tensor& batch);

// Before step 1: this rank's sharded module against the unsharded one on one small batch; throws
// autotp::Error saying what is off and by how much.
void check_sharding(torch::jit::Module& original, const TpPlan& plan, torch::jit::Module& mine, const TrainOptions& o,
                    uint64_t seed, Mesh& mesh, bool chatty);

std::string sci(double v, int digits);  // 1.2e-05

}  // namespace autotp
