// ZeRO-1 AdamW (see zero_optimizer.h for the layout and the step).
#include "runtime/zero_optimizer.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "autotp/error.h"

namespace autotp {

ZeroOneOptimizer::ZeroOneOptimizer(std::vector<TrainableParam> params, std::shared_ptr<Group> dp,
                                   std::shared_ptr<Group> tp, const OptimizerConfig& options, int zero_stage,
                                   double gradient_clipping, CommOptions comm)
    : params_(std::move(params)), dp_(std::move(dp)), tp_(std::move(tp)), opt_(options), stage_(zero_stage),
      clip_(gradient_clipping), comm_(comm) {
  if (stage_ != 0 && stage_ != 1)
    throw Error("zero_optimization.stage " + std::to_string(stage_) +
                ": autotp runs stage 0 (no partitioning) or 1 (optimizer state partitioned over data-parallel "
                "ranks); write 1");
  for (const auto& p : params_) {
    offsets_.push_back(flat_);
    flat_ += p.param.numel();
  }
  const int64_t dp_size = dp_->size();
  padded_ = (flat_ + dp_size - 1) / dp_size * dp_size;
  partition_ = stage_ == 1 ? padded_ / dp_size : padded_;
  begin_ = stage_ == 1 ? dp_->rank() * partition_ : 0;

  at::NoGradGuard no_grad;
  if (!params_.empty()) device_ = params_.front().param.device();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor full = at::zeros({padded_}, f32);
  at::Tensor weight = at::zeros({padded_}, f32);
  const float replicated_weight = 1.0f / static_cast<float>(tp_->size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t n = params_[i].param.numel();
    full.narrow(0, offsets_[i], n).copy_(params_[i].param.detach().reshape({-1}));
    weight.narrow(0, offsets_[i], n)
        .fill_(params_[i].tp_split ? 1.0f / static_cast<float>(std::max<int64_t>(params_[i].replicas, 1)) : replicated_weight);
  }
  master_ = full.narrow(0, begin_, partition_).clone();
  norm_weight_ = weight.narrow(0, begin_, partition_).clone();
  bool all_decay = true;
  for (const auto& p : params_) all_decay = all_decay && p.decay;
  if (!all_decay && opt_.weight_decay != 0) {
    at::Tensor mask = at::zeros({padded_}, at::TensorOptions().dtype(at::kBool).device(device_));
    for (size_t i = 0; i < params_.size(); ++i)
      if (params_[i].decay) mask.narrow(0, offsets_[i], params_[i].param.numel()).fill_(true);
    decay_mask_ = mask.narrow(0, begin_, partition_).clone();
  }
  exp_avg_ = at::zeros({partition_}, f32);
  exp_avg_sq_ = at::zeros({partition_}, f32);

  // Overlap: buckets of the padded flat vector, cut at every partition boundary (stage 1) and every
  // reduce_bucket elements, in launch order (backwards); a hook per parameter.
  if (!comm_.overlap || dp_->size() == 1 || params_.empty()) return;
  const int64_t step = std::max<int64_t>(1, comm_.reduce_bucket), part = stage_ == 1 ? partition_ : padded_;
  for (int64_t p0 = 0; p0 < padded_; p0 += part)
    for (int64_t b = p0; b < std::min(p0 + part, padded_); b += step)
      buckets_.push_back({b, std::min({b + step, p0 + part, padded_}), static_cast<int>(p0 / part), 0});
  std::reverse(buckets_.begin(), buckets_.end());
  buckets_of_.resize(params_.size());
  for (size_t k = 0; k < buckets_.size(); ++k)
    for (size_t i = 0; i < params_.size(); ++i) {
      const int64_t lo = offsets_[i], hi = lo + params_[i].param.numel();
      if (lo < buckets_[k].end && buckets_[k].begin < hi) {
        buckets_of_[i].push_back(k);
        ++buckets_[k].params;
      }
    }
  for (size_t i = 0; i < params_.size(); ++i)
    hooks_.push_back(params_[i].param.register_hook([this, i](const at::Tensor& g) { on_grad(i, g); }));
}

ZeroOneOptimizer::~ZeroOneOptimizer() {
  for (size_t i = 0; i < hooks_.size(); ++i) params_[i].param.remove_hook(hooks_[i]);
  for (auto& w : works_)
    if (w) w->wait();  // never leave a collective writing into a freed buffer
}

void ZeroOneOptimizer::last_micro_batch() {
  if (buckets_.empty()) return;
  armed_ = true;
  gbuf_ = at::zeros({padded_}, at::TensorOptions().dtype(at::kFloat).device(device_));
  pending_.clear();
  for (const auto& b : buckets_) pending_.push_back(b.params);
  arrived_.assign(params_.size(), false);
  next_launch_ = 0;
  works_.clear();
  launch_ready();  // a bucket of padding alone is ready now
}

void ZeroOneOptimizer::on_grad(size_t i, const at::Tensor& g) {
  if (!armed_ || arrived_[i]) return;
  at::NoGradGuard no_grad;
  arrive(i, &g);
  launch_ready();
}

// The parameter's final gradient for this step into the buffer: what earlier micro-batches left
// (the fp32 accumulation of low-precision weights, or .grad) plus this backward's, summed in fp32
// exactly as accumulate() and autograd's accumulation would.
void ZeroOneOptimizer::arrive(size_t i, const at::Tensor* g) {
  const int64_t n = params_[i].param.numel();
  at::Tensor dst = gbuf_.narrow(0, offsets_[i], n);
  const at::Tensor& before = params_[i].param.grad();
  if (grad_acc_.defined()) dst.copy_(grad_acc_.narrow(0, offsets_[i], n));
  else if (before.defined()) dst.copy_(before.reshape({-1}));
  if (g) {
    if (grad_acc_.defined() || before.defined()) dst.add_(g->reshape({-1}));
    else dst.copy_(g->reshape({-1}));
  }
  arrived_[i] = true;
  for (size_t k : buckets_of_[i]) --pending_[k];
}

void ZeroOneOptimizer::launch_ready() {
  while (next_launch_ < buckets_.size() && pending_[next_launch_] == 0) {
    const Bucket& b = buckets_[next_launch_++];
    at::Tensor slice = gbuf_.narrow(0, b.begin, b.end - b.begin);
    works_.push_back(stage_ == 1 ? dp_->reduce_async(slice, b.root, "zero1.reduce_grads")
                                 : dp_->all_reduce_async(slice, "zero0.all_reduce_grads"));
  }
}

void ZeroOneOptimizer::copy_flat_to_params(int64_t lo, const at::Tensor& src) {
  const int64_t hi = lo + src.numel();
  auto first = std::upper_bound(offsets_.begin(), offsets_.end(), lo);
  for (size_t i = static_cast<size_t>(std::max<std::ptrdiff_t>(0, first - offsets_.begin() - 1)); i < params_.size(); ++i) {
    const int64_t plo = offsets_[i], phi = plo + params_[i].param.numel();
    if (plo >= hi) break;
    const int64_t b = std::max(lo, plo), e = std::min(hi, phi);
    at::Tensor& p = params_[i].param;
    if (b == plo && e == phi) p.copy_(src.narrow(0, b - lo, e - b).view(p.sizes()));  // whole: any strides
    else if (b < e) p.view({-1}).narrow(0, b - plo, e - b).copy_(src.narrow(0, b - lo, e - b));  // a chunk's part: contiguous
  }
}

bool ZeroOneOptimizer::low_precision() const {
  for (const auto& p : params_)
    if (p.param.scalar_type() != at::kFloat) return true;
  return false;
}

void ZeroOneOptimizer::accumulate() {
  if (armed_) return;  // the hooks took the last micro-batch's gradients
  if (!low_precision()) return;  // fp32 gradients accumulate in .grad already, in fp32
  at::NoGradGuard no_grad;
  if (!grad_acc_.defined()) {
    grad_acc_ = flat_grads();
  } else {  // added slice by slice in fp32: no second padded vector per micro-batch
    for (size_t i = 0; i < params_.size(); ++i) {
      const at::Tensor& grad = params_[i].param.grad();
      if (grad.defined()) grad_acc_.narrow(0, offsets_[i], grad.numel()).add_(grad.reshape({-1}));
    }
  }
  zero_grad();
}

at::Tensor ZeroOneOptimizer::flat_grads() const {
  at::Tensor g = at::zeros({padded_}, at::TensorOptions().dtype(at::kFloat).device(device_));
  for (size_t i = 0; i < params_.size(); ++i) {
    const at::Tensor& grad = params_[i].param.grad();
    if (grad.defined()) g.narrow(0, offsets_[i], grad.numel()).copy_(grad.reshape({-1}));
  }
  return g;
}

StepStats ZeroOneOptimizer::step(double lr) {
  at::NoGradGuard no_grad;
  StepStats stats;
  step_ += 1;
  const double dp_size = static_cast<double>(dp_->size());

  // 1. mean gradient of the owned partition
  at::Tensor grad;
  launched_in_backward_ = armed_ ? static_cast<int64_t>(next_launch_) : 0;
  if (armed_) {  // overlapped: what never arrived (parameters this forward did not use), then wait
    for (size_t i = 0; i < params_.size(); ++i)
      if (!arrived_[i]) arrive(i, nullptr);
    launch_ready();
    for (auto& w : works_)
      if (w) w->wait();
    works_.clear();
    armed_ = false;
    grad_acc_ = at::Tensor();
    grad = stage_ == 1 ? gbuf_.narrow(0, begin_, partition_) : gbuf_;
    gbuf_ = at::Tensor();
  } else {
    accumulate();  // a low-precision micro-batch the caller did not hand over yet
    at::Tensor all = grad_acc_.defined() ? grad_acc_ : flat_grads();
    grad_acc_ = at::Tensor();
    if (stage_ == 1) {
      grad = at::empty({partition_}, all.options());
      dp_->reduce_scatter_flat(grad, all, "zero1.reduce_scatter_grads");
    } else {
      dp_->all_reduce(all, c10d::ReduceOp::SUM, "zero0.all_reduce_grads");
      grad = all;
    }
  }
#if AUTOTP_MUTANT != 4  // mutant (make mutants): the sum over DP is not divided into a mean
  grad.div_(dp_size);
#endif

  // 2. global norm: each element once over TP x DP
  at::Tensor sq = (grad.to(at::kDouble).square() * norm_weight_.to(at::kDouble)).sum().reshape({1});
  if (stage_ == 1) dp_->all_reduce(sq, c10d::ReduceOp::SUM, "zero1.grad_norm");
  tp_->all_reduce(sq, c10d::ReduceOp::SUM, "zero1.grad_norm");
  stats.grad_norm = std::sqrt(sq.item<double>());

  // 3. clipping, as torch::nn::utils::clip_grad_norm_
  if (clip_ > 0) {
    stats.clip_coef = std::min(1.0, clip_ / (stats.grad_norm + 1e-6));
    grad.mul_(stats.clip_coef);
  }

  // 4. AdamW / Adam on the owned partition, op for op as torch::optim::AdamW / Adam
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(step_));
  if (opt_.weight_decay != 0) {
    // AdamW shrinks the master by 1 - lr·wd; Adam (L2) adds wd·master to the gradient. Parameters
    // outside decay_mask_ (norms and biases) keep their values.
    const double keep = 1 - lr * opt_.weight_decay;
    const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
    auto decay = [&] {
      if (decay_mask_.defined()) master_.mul_(at::where(decay_mask_, at::scalar_tensor(keep, f32), at::scalar_tensor(1.0, f32)));
      else master_.mul_(keep);
    };
    if (opt_.decoupled) {
      decay();
#if AUTOTP_MUTANT == 5  // mutant (make mutants): decoupled weight decay applied twice
      decay();
#endif
    } else {
      grad = grad.add(decay_mask_.defined() ? master_ * decay_mask_ : master_, opt_.weight_decay);
    }
  }
  exp_avg_.mul_(b1).add_(grad, 1 - b1);
  exp_avg_sq_.mul_(b2).addcmul_(grad, grad, 1 - b2);
  at::Tensor denom = (exp_avg_sq_.sqrt() / std::sqrt(bc2)).add_(opt_.eps);
  master_.addcdiv_(exp_avg_, denom, -lr / bc1);

  // 5. every rank's model gets every updated partition: chunk k of every partition per all-gather
  const int64_t dp_ranks = dp_->size();
  const int64_t chunk = stage_ == 1 ? std::min(partition_, std::max<int64_t>(1, comm_.allgather_bucket / dp_ranks)) : partition_;
  for (int64_t k = 0; k < partition_; k += chunk) {
    const int64_t len = std::min(chunk, partition_ - k);
    at::Tensor gathered = master_.narrow(0, k, len);
    if (stage_ == 1) {
      gathered = at::empty({dp_ranks * len}, master_.options());
      dp_->all_gather_flat(gathered, master_.narrow(0, k, len), "zero1.all_gather_params");
    }
    for (int64_t j = 0; j < (stage_ == 1 ? dp_ranks : 1); ++j)
      copy_flat_to_params(j * partition_ + k, gathered.narrow(0, j * len, len));
  }
  return stats;
}

OptimizerState ZeroOneOptimizer::state() const {
  return {step_, begin_, flat_, padded_, master_, exp_avg_, exp_avg_sq_};
}

void ZeroOneOptimizer::load_state(int64_t step, const std::vector<FlatPiece>& pieces) {
  at::NoGradGuard no_grad;
  // Coverage of [0, flat_): the pieces sorted by offset must leave no gap.
  std::vector<std::pair<int64_t, int64_t>> runs;
  for (const auto& p : pieces) runs.emplace_back(p.offset, p.offset + p.master.numel());
  std::sort(runs.begin(), runs.end());
  int64_t covered = 0;
  for (const auto& [b, e] : runs) {
    if (b > covered) break;
    covered = std::max(covered, e);
  }
  if (covered < flat_)
    throw Error("checkpoint: the optimizer state covers elements [0, " + std::to_string(covered) + ") of this rank's " +
                std::to_string(flat_) + "; a partition file is missing or was written for another model");
  // Copies the overlap of [lo, hi) with every piece into dst (indexed from lo).
  auto copy_range = [&](int64_t lo, int64_t hi, auto&& dst_of) {
    for (const auto& p : pieces) {
      const int64_t b = std::max(lo, p.offset), e = std::min(hi, p.offset + p.master.numel());
      if (b < e) dst_of(b - lo, e - b, p, b - p.offset);
    }
  };
  master_.zero_();
  exp_avg_.zero_();
  exp_avg_sq_.zero_();
  copy_range(begin_, std::min(begin_ + partition_, flat_), [&](int64_t at, int64_t n, const FlatPiece& p, int64_t from) {
    master_.narrow(0, at, n).copy_(p.master.narrow(0, from, n));
    exp_avg_.narrow(0, at, n).copy_(p.exp_avg.narrow(0, from, n));
    exp_avg_sq_.narrow(0, at, n).copy_(p.exp_avg_sq.narrow(0, from, n));
  });
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor flat_param = params_[i].param.view({-1});
    copy_range(offsets_[i], offsets_[i] + flat_param.numel(), [&](int64_t at, int64_t n, const FlatPiece& p, int64_t from) {
      flat_param.narrow(0, at, n).copy_(p.master.narrow(0, from, n));
    });
  }
  step_ = step;
  grad_acc_ = at::Tensor();
}

void ZeroOneOptimizer::zero_grad() {
  for (auto& p : params_) p.param.mutable_grad() = at::Tensor();
}

OptimizerBytes ZeroOneOptimizer::bytes() const {
  OptimizerBytes b;
  b.flat = flat_;
  b.padded = padded_;
  b.partition = partition_;
  b.state = 3 * partition_ * static_cast<int64_t>(sizeof(float));
  for (const auto& p : params_) {
    b.params += p.param.numel() * p.param.element_size();
    b.grads += p.param.numel() * p.param.element_size();  // gradients match their parameter
  }
  if (low_precision()) b.grads += padded_ * static_cast<int64_t>(sizeof(float));  // the fp32 accumulation buffer
  return b;
}

}  // namespace autotp
