// Training checkpoints: everything a run needs to continue bit for bit, written atomically.
//
// A checkpoint is one folder (`autotp train --save-dir DIR` writes DIR/step-<N>/ and points
// DIR/latest at it; `--out DIR` writes the same folder once, at the end):
//   rank<t>.pt                   TP rank t's module (its trained shard; written by DP rank 0 of t) —
//                                the folder is also a rank directory for --model, verify and merge
//   zero-tp<t>-dp<d>.safetensors that rank's ZeRO partition: fp32 master, exp_avg, exp_avg_sq, and in
//                                __metadata__ the step, partition offset, flat/padded sizes and the
//                                flat layout (parameter names and sizes, in order)
//   rng-rank<r>.safetensors      world rank r's CPU generator state
//   trainer_state.json           step, layout (tp, dp, world, ZeRO stage), global batch, samples
//                                consumed and epoch, data file, last loss
//   config.resolved.json, plan.json (when the run planned the model itself)
// Atomicity (as PyTorch DCP commits): every rank writes into DIR/.step-<N>.partial/ (each file
// written under a temporary name, fsync'd, renamed); after a barrier rank 0 checks every expected
// file is there, writes trainer_state.json, fsyncs, renames the folder to step-<N>, fsyncs DIR, and
// only then replaces DIR/latest (temp file, fsync, rename). A crash at any point leaves the previous
// checkpoint complete and `latest` pointing at it; a leftover .partial folder is invisible to
// resume and removed by the next save.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>

#include "autotp/mesh.h"
#include "autotp/plan.h"
#include "runtime/zero_optimizer.h"

namespace autotp {

struct CheckpointState {  // trainer_state.json
  int64_t step = 0;          // optimizer updates done
  int64_t tp = 1, dp = 1, world = 1;
  int zero_stage = 1;
  int64_t global_batch = 0;  // samples per update (micro × accumulation × dp)
  int64_t micro_batch = 0, grad_accum = 0, seq = 0;
  int64_t samples_seen = 0;  // step × global_batch: the data position
  int64_t epoch = 0;
  int64_t seed = 0;
  bool bf16 = false;
  std::string data;          // the token file trained on
  int64_t data_tokens = 0;
  double loss = 0;           // the last step's
  std::string json() const;
  static CheckpointState parse(const std::string& text, const std::string& label);
};

struct SaveRequest {
  std::string folder;        // the checkpoint folder to create (replaced if it exists)
  CheckpointState state;
  std::string config_json;   // the resolved training config
  std::string plan_json;     // empty when the run did not plan the model
};

// Collective over the world group: every rank calls it with the same request. Writes the folder
// atomically (above). Throws autotp::Error naming the folder when a file cannot be written.
void save_checkpoint(const SaveRequest& request, torch::jit::Module& model, const ZeroOneOptimizer& opt, Mesh& mesh);

// `--save-dir DIR` bookkeeping on rank 0 after save_checkpoint(DIR/step-<N>): points DIR/latest at
// it (atomically) and deletes all but the `keep` newest step-* folders (keep 0: keep all).
void commit_latest(const std::string& dir, const std::string& step_folder, int64_t keep);

// The folder name a save root's `latest` file holds (trimmed); nullopt when it has no such file.
std::optional<std::string> latest_of(const std::string& root);

// A checkpoint folder from what a user passed: a root holding `latest`, or a step folder itself.
// Throws autotp::Error saying what is there instead.
std::string resolve_checkpoint(const std::string& path);
CheckpointState read_checkpoint_state(const std::string& folder);

// Loads this rank's optimizer state and parameters from `folder` into opt (every rank; reads only
// files). Same tp: this TP rank's partitions, any old dp or ZeRO stage. Another tp: every old
// partition, each parameter assembled by the old cut (the checkpoint's plan.json, or the layout its
// rank archives record) and cut again by `layout`, this run's (its plan's parameters, or
// rewrite_info(model).params of a rank archive). Restores this rank's generator state when the
// world layout is the same.
void load_checkpoint(const std::string& folder, const CheckpointState& state, const std::vector<ParamPlan>& layout,
                     ZeroOneOptimizer& opt, Mesh& mesh);

}  // namespace autotp
