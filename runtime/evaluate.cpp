// Held-out evaluation (see evaluate.h).
#include "runtime/evaluate.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "autotp/passes.h"
#include "runtime/tp_ops.h"

namespace autotp {

// Mean cross-entropy over every counted label of the first `max_samples` samples of `data` (all when
// 0), without gradients: DP rank d takes a contiguous share, TP peers the same one.
EvalResult evaluate(torch::jit::Module& model, const TokenData& data, Mesh& mesh, int64_t micro, int64_t seq,
                    int64_t max_samples) {
  const int64_t all = data.samples(seq);
  const int64_t n = max_samples > 0 ? std::min(all, max_samples) : all;
  const int64_t dp = mesh.dp(), d = mesh.dp_rank();
  const int64_t lo = n * d / dp, hi = n * (d + 1) / dp;
  double sum = 0, count = 0;
  {
    c10::NoGradGuard no_grad;
    model.eval();
    for (int64_t first = lo; first < hi; first += micro) {
      Batch b = data.samples_at(first, std::min(micro, hi - first), seq);
      b.input = b.input.to(mesh.rank_device());
      b.labels = b.labels.to(mesh.rank_device());
      at::Tensor logits = logits_of(model.forward({b.input}));
      sum += vocab_parallel_cross_entropy(logits, b.labels, kIgnoreLabel, "tp", mesh.tp()).to(at::kDouble).sum().item<double>();
      count += static_cast<double>(b.labels.ne(kIgnoreLabel).sum().item<int64_t>());
    }
    model.train();
  }
  at::Tensor t = at::tensor({sum, count}, at::kDouble);
  mesh.dp_group().all_reduce(t, c10d::ReduceOp::SUM, "train.eval");
  EvalResult r;
  r.tokens = static_cast<int64_t>(t[1].item<double>());
  r.loss = r.tokens > 0 ? t[0].item<double>() / static_cast<double>(r.tokens) : 0.0;
  return r;
}

}  // namespace autotp
