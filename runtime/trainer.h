// The distributed trainer behind `autotp train`: AutoTP inside the TP group, ZeRO-1 across DP.
//
// Every rank: load the TorchScript model, plan it for the config's autotp_size, rewrite it for its
// TP rank, wrap its parameters in a ZeroOneOptimizer over its DP group, and train on its DP shard of
// the token file. One optimizer step = gradient_accumulation_steps micro-batches of
// train_micro_batch_size_per_gpu samples of `seq` tokens. The loss of a step is the mean
// vocab-parallel cross-entropy over every counted label of the global batch (all micro-batches, all
// DP ranks; prompt tokens of SFT data and padding do not count), as a single process training on all
// of it would compute it — token-weighted, as transformers does since 4.46.
// Checkpoints (runtime/checkpoint.h): --save-dir/--save-every/--keep, --resume, and --out at the end.
// Evaluation: --eval-data/--eval-every, loss and perplexity without gradients.
// Failures: a collective that fails names the lost rank (runtime/liveness.h) and the checkpoint to
// resume from; a worker torchrun restarts resumes from --save-dir's latest by itself.
#pragma once

#include <string>
#include <vector>

#include "autotp/mesh.h"
#include "runtime/config.h"
#include "runtime/zero_optimizer.h"

namespace autotp {

struct TrainOptions {
  std::string config_path, model_path, data_path;
  std::string out_dir;       // empty: no final checkpoint folder
  std::string metrics_path;  // empty: no JSON lines
  std::string save_dir;      // checkpoints DIR/step-<N>, DIR/latest; empty: none
  int64_t save_every = 0;    // steps between checkpoints (0: only after the last step)
  int64_t keep = 0;          // newest checkpoints kept in save_dir (0: all)
  std::string resume;        // a checkpoint folder or a save_dir root (its latest)
  std::string eval_data;     // held-out token file; empty: no evaluation
  int64_t eval_every = 0;    // steps between evaluations (0: only after the last step)
  int64_t eval_samples = 0;  // evaluate on the first N samples (0: all)
  bool shuffle = true;       // shuffle the sample order every epoch (by the config's seed)
  int64_t steps = 20;
  int64_t seq = 64;
  ConfigOverrides overrides;
  bool quiet = false;        // no printing (tests)
  // Before step 1, compare this rank's sharded module with the unsharded one on one small batch
  // (only possible when --model is a single archive: every rank holds the full model then).
  bool verify = true;
  // Eager causal attention -> scaled_dot_product_attention (use_sdpa) before planning.
  bool sdpa = false;
  // cpu | cuda | auto: the mesh is made for it (mesh_options_for); the model, batches and ZeRO state
  // go to the mesh's rank_device() after the pre-step check, which runs on the CPU.
  std::string device = "auto";
};

struct StepMetrics {
  int64_t step = 0;  // 1-based
  int64_t epoch = 0;  // 0-based epoch of the step's first sample
  int64_t loss_tokens = 0;  // labels the loss averaged over (global batch)
  double loss = 0, lr = 0, grad_norm = 0, tokens_per_s = 0, seconds = 0;
  int64_t param_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  // The most one micro-batch's forward and backward held at once on this rank besides the model
  // states (its gradients not counted): `autotp plan`'s activation memory (runtime/memory_meter.h).
  // Measured on the run's first step (every step has the same shapes) and repeated on later ones.
  int64_t peak_activation_bytes = 0;
  // CUDA builds on a GPU: torch.cuda.max_memory_allocated of this rank's GPU since the process began
  // (model states, activations, everything the caching allocator handed out); 0 (and not in the JSON) on CPU.
  int64_t cuda_peak_allocated_bytes = 0;
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
