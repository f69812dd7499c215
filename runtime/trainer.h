// The distributed trainer behind `autotp train`: AutoTP inside the TP group, ZeRO-1 across DP.
//
// Every rank: load the TorchScript model, plan it for the config's autotp_size, rewrite it for its
// TP rank, wrap its parameters in a ZeroOneOptimizer over its DP group, and train on its DP shard of
// the token file. One optimizer step = gradient_accumulation_steps micro-batches of
// train_micro_batch_size_per_gpu samples of `seq` tokens; the micro-batch loss is the
// vocab-parallel cross-entropy (mean over tokens) / gradient_accumulation_steps. The reported loss
// is the mean over the step's micro-batches and DP ranks, before the update — the loss of the global
// batch, as a single process training on all of it would report.
#pragma once

#include <string>
#include <vector>

#include "autotp/mesh.h"
#include "runtime/config.h"
#include "runtime/zero_optimizer.h"

namespace autotp {

struct TrainOptions {
  std::string config_path, model_path, data_path;
  std::string out_dir;       // empty: no checkpoint
  std::string metrics_path;  // empty: no JSON lines
  int64_t steps = 20;
  int64_t seq = 64;
  ConfigOverrides overrides;
  bool quiet = false;        // no printing (tests)
  // Before step 1, compare this rank's sharded module with the unsharded one on one small batch
  // (only possible when --model is a single archive: every rank holds the full model then).
  bool verify = true;
};

struct StepMetrics {
  int64_t step = 0;  // 1-based
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, seconds = 0;
  int64_t param_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  CollectiveCount tp_bytes, dp_bytes, world_bytes;  // cumulative per group
  std::string json() const;
};

// Reads and validates the config for mesh.world() ranks; throws autotp::Error on any problem.
TrainConfig load_train_config(const TrainOptions& options, int64_t world_size);

// Runs the whole training on this rank; every rank gets the same metrics. Throws autotp::Error
// when the pre-step check or a replica checksum finds the sharded training wrong.
std::vector<StepMetrics> train(const TrainOptions& options, Mesh& mesh);

// Every rank of the TP group must hold the same replicated parameters (tp_split false): their
// gradients are reduced over TP, so the updates are identical. Compares two float64 checksums per
// parameter across `tp` in one all-reduce (site "train.check_replicas") and throws autotp::Error
// naming the first parameter that differs and `step`. Collective: every rank of `tp` calls it.
void check_tp_replicas(const std::vector<TrainableParam>& params, Group& tp, int64_t step);

}  // namespace autotp
