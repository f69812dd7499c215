// The trainer's self-checks (see trainer_checks.h).
#include "runtime/trainer_checks.h"

#include <cmath>
#include <iomanip>
#include <iostream>
#include <limits>
#include <sstream>
#include <vector>

#include <ATen/ATen.h>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/verify.h"

namespace autotp {
namespace {

// Whether the module's forward runs on token ids of `shape` (a trace may be tied to its shape).
bool runs_at(torch::jit::Module& module, const std::vector<int64_t>& shape) {
  try {
    c10::NoGradGuard no_grad;
    module.forward({at::zeros(shape, at::kLong)});
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return "[" + std::to_string(shape.at(0)) + ", " + std::to_string(shape.at(1)) + "]";
}


}  // namespace

std::string sci(double v, int digits) {
  std::ostringstream o;
  o << std::scientific << std::setprecision(digits) << v;
  return o.str();
}

// TP peers must train on the same tokens: compare a checksum of the first batch once.
void check_tp_peers_agree(Group& tp, const at::Tensor& batch) {
  at::Tensor sig = (batch.to(at::kDouble) * at::arange(1, batch.numel() + 1, at::kDouble).view(batch.sizes())).sum().reshape({1});
  at::Tensor hi = sig.clone(), lo = -sig;
  tp.all_reduce(hi, c10d::ReduceOp::MAX, "train.check_batch");
  tp.all_reduce(lo, c10d::ReduceOp::MAX, "train.check_batch");
  if (hi.item<double>() != -lo.item<double>())
    throw Error("train: tensor-parallel peers read different batches; every rank of a TP group must see the same data file");
}


// Before step 1: this rank's sharded module against the unsharded one on one small batch
// (verify_rank), in fp32 before any bf16 cast, so a wrong rewrite stops here naming the parameter
// instead of training silently wrong. The batch is [1, min(seq, 16)]: small, and the training's own
// length when that is short; a trace that cannot run it gets its traced shape, and a model that
// runs neither is skipped with a notice (training itself will tell).
void check_sharding(torch::jit::Module& original, const TpPlan& plan, torch::jit::Module& mine,
                    const TrainOptions& o, uint64_t seed, Mesh& mesh, bool chatty) {
  original.eval();  // dropout off on both sides: they must compute one function
  mine.eval();
  std::vector<int64_t> shape{1, std::min<int64_t>(o.seq, 16)};
  if (shape[1] < 2 || !runs_at(original, shape)) shape = example_shape(original);
  if (!runs_at(original, shape)) {
    if (chatty) std::cout << "check: skipped: the unsharded model runs neither on [1, " << std::min<int64_t>(o.seq, 16)
                          << "] nor on " << shape_text(shape) << "\n";
    return;
  }
  const std::string rerun = "rerun with autotp verify " + o.model_path + " --tp " + std::to_string(mesh.tp()) +
                            " --per-param, or --no-verify to train anyway";
  VerifyReport rep;
  try {
    rep = verify_rank(original, plan, mine, shape, seed, mesh);
  } catch (const std::exception& e) {
    throw Error("train: the sharded model fails on the check batch " + shape_text(shape) + " (" + user_message(e) + "); " + rerun);
  }
  // This check is for wrong sharding, which moves values by 10% to 100% (an unreduced partial
  // gradient: 0.5-1.3; a dropped bias or size: the logits), not for fp32 reordering: TP's partial
  // sums move a 30-layer pretrained model's gradients by up to ~1e-3 on random tokens (SmolLM2 at
  // tp=3, README "Tolerances"). So it allows 1e-4 on logits and loss and 1e-2 on gradients, where
  // `autotp verify` holds everything to 1e-5, and says when gradients differ by more than that.
  constexpr double kLogitsLoss = 1e-4, kGrads = 1e-2;
  std::string wrong;
  if (rep.grads_rel > kGrads) wrong = "gradient of " + rep.worst_grad + " off by " + sci(rep.grads_rel, 2) + " (tolerance 1e-02)";
  else if (rep.logits_rel > kLogitsLoss) wrong = "logits off by " + sci(rep.logits_rel, 2) + " (tolerance 1e-04)";
  else if (rep.loss_rel > kLogitsLoss) wrong = "loss off by " + sci(rep.loss_rel, 2) + " (tolerance 1e-04)";
  if (!wrong.empty())
    throw Error("train: the sharded model disagrees with the unsharded one on a check batch: " + wrong + "; " + rerun);
  if (chatty)
    std::cout << "check: sharded vs unsharded on " << shape_text(shape) << ": logits " << sci(rep.logits_rel, 1) << ", loss "
              << sci(rep.loss_rel, 1) << ", grads " << sci(rep.grads_rel, 1) << " (" << rep.grads_compared << " parameters) ok"
              << (rep.grads_rel > rep.tolerance ? " (gradients beyond verify's 1e-5: fp32 reordering of TP's partial sums)" : "")
              << "\n";
}

// Two float64 checksums of a tensor: its sum, and the sum of |x| weighted by position (cyclic
// 1..1021), which also moves when elements trade places or one changes without the sum changing.
static std::pair<double, double> checksums(const at::Tensor& t) {
  at::Tensor x = t.detach().reshape({-1}).to(at::kDouble);
  at::Tensor w = at::arange(x.numel(), at::kDouble).fmod(1021) + 1;
  return {x.sum().item<double>(), (x.abs() * w).sum().item<double>()};
}


void check_tp_replicas(const std::vector<TrainableParam>& params, Group& tp, int64_t step) {
  if (tp.size() == 1) return;
  std::vector<const TrainableParam*> replicated;
  std::vector<double> sums;
  for (const auto& p : params) {
    if (p.tp_split) continue;
    auto [sum, weighted] = checksums(p.param);
    replicated.push_back(&p);
    sums.insert(sums.end(), {sum, weighted});
  }
  if (replicated.empty()) return;  // the same on every rank: one plan
  // Max of v and max of -v (the min) in one all-reduce; NaN/inf become fixed values first, since a
  // max-reduce may drop a NaN and equal replicas must compare equal.
  at::Tensor v = at::nan_to_num(at::tensor(sums, at::kDouble), 0.5 * std::numeric_limits<double>::max());
  at::Tensor both = at::cat({v, -v});
  tp.all_reduce(both, c10d::ReduceOp::MAX, "train.check_replicas");
  const int64_t n = v.numel();
  at::Tensor spread = both.narrow(0, 0, n) + both.narrow(0, n, n);  // max - min per checksum
  const double* sp = spread.data_ptr<double>();
  for (size_t i = 0; i < replicated.size(); ++i) {
    const double d = std::max(sp[2 * i], sp[2 * i + 1]);
    if (d != 0)
      throw Error("train: step " + std::to_string(step) + ": replicated parameter " + replicated[i]->name +
                  " differs across the tensor-parallel group (max |diff| of checksums " + sci(d, 1) +
                  "); its gradient was not reduced over TP — report this model to autotp");
  }
  // kv heads on several ranks: the holders of each kv part must agree too. Every rank's checksums
  // of its kv parameters, gathered over TP, compared between ranks r and r' with r / m == r' / m.
  std::vector<const TrainableParam*> held;
  std::vector<double> mine;
  for (const auto& p : params) {
    if (!p.tp_split || p.replicas <= 1) continue;
    auto [sum, weighted] = checksums(p.param);
    held.push_back(&p);
    mine.insert(mine.end(), {sum, weighted});
  }
  if (held.empty()) return;
  at::Tensor all = at::nan_to_num(tp.all_gather(at::tensor(mine, at::kDouble), 0, "train.check_replicas").view({tp.size(), -1}), 0.5);
  for (size_t i = 0; i < held.size(); ++i) {
    const int64_t m = held[i]->replicas;
    for (int r = 0; r < tp.size(); ++r) {
      const int first = static_cast<int>(r / m * m);
      const double d = std::max(std::abs(all[r][2 * i].item<double>() - all[first][2 * i].item<double>()),
                                std::abs(all[r][2 * i + 1].item<double>() - all[first][2 * i + 1].item<double>()));
      if (d != 0 || std::isnan(d))
        throw Error("train: step " + std::to_string(step) + ": " + held[i]->name + ", a kv head held by " + std::to_string(m) +
                    " ranks, differs between tp ranks " + std::to_string(first) + " and " + std::to_string(r) +
                    " (max |diff| of checksums " + sci(d, 1) + "); its gradient was not summed over its holders — report this model to autotp");
    }
  }
}


}  // namespace autotp
