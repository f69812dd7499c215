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
// Overlap (zero_optimization.overlap_comm, CommOptions): step 1 runs during the last micro-batch's
// backward instead. The flat vector is cut in buckets of at most reduce_bucket elements that never
// straddle a partition; a hook on every parameter writes its final gradient (earlier micro-batches'
// sum + this one) into an fp32 buffer, and a bucket whose parameters have all arrived is reduced to
// the rank that owns its partition (stage 0: all-reduced), asynchronously, in a fixed order (the
// flat vector backwards: backward produces the last layers' gradients first) so that every DP rank
// issues the same collectives. step() reduces what never arrived (unused parameters: zeros) and
// waits. The contiguous partitions are unchanged (checkpoints too); the bytes are the same as one
// reduce-scatter, in more calls. Step 5's all-gather goes in chunks of allgather_bucket elements.
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

// zero_optimization.overlap_comm / reduce_bucket_size / allgather_bucket_size (elements).
struct CommOptions {
  bool overlap = false;
  int64_t reduce_bucket = 500'000'000;
  int64_t allgather_bucket = 500'000'000;
};

struct StepStats {
  double grad_norm = 0;  // global, before clipping
  double clip_coef = 1;
};

class ZeroOneOptimizer {
 public:
  ZeroOneOptimizer(std::vector<TrainableParam> params, std::shared_ptr<Group> dp, std::shared_ptr<Group> tp,
                   const OptimizerConfig& options, int zero_stage, double gradient_clipping, CommOptions comm = {});
  ~ZeroOneOptimizer();
  ZeroOneOptimizer(const ZeroOneOptimizer&) = delete;  // its gradient hooks point at it
  ZeroOneOptimizer& operator=(const ZeroOneOptimizer&) = delete;

  // Before the last micro-batch's backward of a step: with overlap (and dp > 1) each bucket's
  // reduction starts in that backward as soon as its gradients are in. No-op otherwise.
  void last_micro_batch();
  // Buckets whose reduction started during the last backward (before step()): what overlapped.
  int64_t buckets_launched_in_backward() const { return launched_in_backward_; }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }

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
  struct Bucket {
    int64_t begin = 0, end = 0;  // [begin, end) of the padded flat vector
    int root = 0;                // the DP rank owning that partition
    int params = 0;              // parameters overlapping it
  };
  void on_grad(size_t i, const at::Tensor& g);  // a parameter's gradient of the armed backward
  void arrive(size_t i, const at::Tensor* g);   // into the buffer (g: this backward's; null: none)
  void launch_ready();
  void copy_flat_to_params(int64_t lo, const at::Tensor& src);  // [lo, lo + src.numel()) into the model

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
  CommOptions comm_;
  std::vector<Bucket> buckets_;                 // in launch order: descending begin
  std::vector<std::vector<size_t>> buckets_of_;  // per parameter
  std::vector<unsigned> hooks_;
  bool armed_ = false;
  at::Tensor gbuf_;                             // the armed step's fp32 gradients [padded]
  std::vector<int> pending_;                    // per bucket: parameters not arrived yet
  std::vector<bool> arrived_;
  size_t next_launch_ = 0;
  int64_t launched_in_backward_ = 0;
  std::vector<c10::intrusive_ptr<c10d::Work>> works_;
};

}  // namespace autotp
