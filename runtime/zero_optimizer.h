// ZeroOneOptimizer — AdamW/Adam whose fp32 master weights and moments are partitioned over the
// data-parallel group (ZeRO stage 1); stage 0 keeps them whole on every rank.
//
// Layout: this rank's trainable parameters (its tensor-parallel shards and its replicated
// parameters, in a fixed order) form one flat fp32 vector of Ψ_rank elements, padded with zeros to
// P = ceil(Ψ_rank / dp)·dp so that it splits into dp equal partitions; dp rank j owns partition j.
// Each TP rank's DP group partitions its own TP shard: state bytes per rank = 12·P/dp
// (master, exp_avg, exp_avg_sq; 4 bytes each).
// A step, at the gradient-accumulation boundary:
//   1. flatten the accumulated gradients (fp32, padded) and reduce-scatter them over dp (sum),
//      divide by dp: the mean gradient of this rank's partition (stage 0: all-reduce, whole);
//   2. global gradient norm over TP×DP: squares of the owned partition summed over dp, then over tp,
//      with a replicated parameter's elements weighted 1/tp so each counts once, shards once each;
//   3. clip as torch::nn::utils::clip_grad_norm_ does (coef = clip/(norm+1e-6), at most 1);
//   4. update the owned partition exactly as torch::optim::AdamW (decoupled decay) or Adam (L2),
//      weight decay only where TrainableParam::decay (not norms and biases, as transformers' Trainer);
//   5. all-gather the updated partitions over dp and copy them into the model (cast to its dtype).
// Low-precision (bf16) weights: accumulate() after each micro-batch's backward moves their gradients
// into one fp32 buffer (4·Ψ_rank bytes), so accumulation over micro-batches rounds in fp32, not bf16.
// Checkpoints: state() is this rank's partition; load_state() takes pieces of the whole flat vector
// (from any old DP layout) and copies its partition and every parameter from them.
#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "autotp/mesh.h"
#include "runtime/config.h"

namespace autotp {

struct TrainableParam {
  std::string name;
  at::Tensor param;       // the model's tensor (fp32 or bf16); updated in place
  bool tp_split = false;  // a shard over the TP group; otherwise replicated across it
  bool decay = true;      // weight decay applies (false: norms and biases)
  int64_t replicas = 1;   // a shard several TP ranks hold (kv heads on several ranks): its norm weight is 1/replicas
};

// One contiguous run [offset, offset + master.numel()) of a rank's flat fp32 optimizer vector.
struct FlatPiece {
  int64_t offset = 0;
  at::Tensor master, exp_avg, exp_avg_sq;
};

// This rank's partition of the optimizer state, for a checkpoint.
struct OptimizerState {
  int64_t step = 0;        // updates done (Adam's bias correction count)
  int64_t begin = 0;       // partition offset in the padded flat vector
  int64_t flat = 0, padded = 0;
  at::Tensor master, exp_avg, exp_avg_sq;  // [partition] fp32
};

struct OptimizerBytes {
  int64_t flat = 0;       // Ψ_rank: trainable elements on this rank
  int64_t padded = 0;     // P: flat rounded up to a multiple of dp
  int64_t partition = 0;  // elements this rank owns (P/dp, or P at stage 0)
  int64_t state = 0;      // bytes of master + exp_avg + exp_avg_sq this rank holds
  int64_t params = 0;     // bytes of the model's own parameter tensors on this rank
  int64_t grads = 0;      // bytes of the model's gradient tensors on this rank
};

struct StepStats {
  double grad_norm = 0;  // global, before clipping
  double clip_coef = 1;
};

class ZeroOneOptimizer {
 public:
  ZeroOneOptimizer(std::vector<TrainableParam> params, std::shared_ptr<Group> dp, std::shared_ptr<Group> tp,
                   const OptimizerConfig& options, int zero_stage, double gradient_clipping);

  // After each micro-batch's backward (every micro-batch, before step()).
  void accumulate();
  StepStats step(double lr);
  void zero_grad();
  OptimizerBytes bytes() const;
  int64_t steps() const { return step_; }
  const std::vector<TrainableParam>& params() const { return params_; }
  const std::vector<int64_t>& offsets() const { return offsets_; }
  int64_t flat() const { return flat_; }

  OptimizerState state() const;
  // Resumes at `step` updates from pieces that together cover [0, flat()) of this rank's flat vector
  // (they may overlap; later pieces win): its partition of masters and moments, and every parameter
  // (cast to its dtype) from the masters. No collective. Throws autotp::Error on a gap.
  void load_state(int64_t step, const std::vector<FlatPiece>& pieces);

 private:
  at::Tensor flat_grads() const;
  bool low_precision() const;

  std::vector<TrainableParam> params_;
  std::vector<int64_t> offsets_;
  std::shared_ptr<Group> dp_, tp_;
  OptimizerConfig opt_;
  int stage_;
  double clip_;
  int64_t flat_ = 0, padded_ = 0, begin_ = 0, partition_ = 0;
  c10::Device device_{c10::DeviceType::CPU};  // the parameters': masters, moments and flat gradients live there too
  at::Tensor master_, exp_avg_, exp_avg_sq_, norm_weight_, decay_mask_;
  at::Tensor grad_acc_;  // fp32 gradient accumulation for low-precision weights (else undefined)
  int64_t step_ = 0;
};

}  // namespace autotp
