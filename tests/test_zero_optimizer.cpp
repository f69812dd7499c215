// ZeRO-1 AdamW on its own: bf16 weights with fp32 masters, against a hand-computed Adam recurrence.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/error.h"
#include "autotp/mesh.h"
#include "runtime/zero_optimizer.h"

namespace {

// Each step's update (lr 1e-3, a constant gradient: Adam's step is ~lr) is a quarter of a bf16 unit
// at 1.0 (2^-8 below 1): a pure-bf16 weight never moves, since 1.0 - 1e-3 rounds back to 1.0. The
// fp32 master accumulates the steps; the bf16 weight is the master rounded, so it moves exactly when
// the master crosses a rounding midpoint: 1 - 2^-9 at step 2, 1 - 3·2^-9 at step 6, 1 - 5·2^-9 at 10.
TEST(ZeroOptimizer, Bf16WeightsStepExactlyWhenTheFp32MasterCrossesARoundingBoundary) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  autotp::MeshOptions mo;
  mo.tp = 1;
  auto mesh = autotp::Mesh::create(store, 0, 1, mo);
  at::Tensor w = at::ones({4}, at::kBFloat16).set_requires_grad(true);
  autotp::OptimizerConfig oc;
  oc.lr = 1e-3;
  oc.beta1 = 0.9;
  oc.beta2 = 0.999;
  oc.eps = 1e-8;
  oc.weight_decay = 0.0;
  autotp::ZeroOneOptimizer opt({{"w", w, false}}, mesh->find("dp"), mesh->find("tp"), oc, 1, /*clip=*/0.0);

  // A pure-bf16 update would be lost: the difference this test exists to tell.
  EXPECT_EQ((at::ones({1}, at::kBFloat16) - 1e-3).item<float>(), 1.0f);

  const double g = 0.5, b1 = 0.9, b2 = 0.999, lr = 1e-3, eps = 1e-8;
  double m = 0, v = 0, master = 1.0;
  std::vector<float> seen;
  for (int step = 1; step <= 10; ++step) {
    w.mutable_grad() = at::full({4}, g, at::kBFloat16);
    opt.step(lr);
    opt.zero_grad();
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    master -= lr / (1 - std::pow(b1, step)) * m / (std::sqrt(v) / std::sqrt(1 - std::pow(b2, step)) + eps);
    const float expected = at::scalar_tensor(master, at::kDouble).to(at::kBFloat16).item<float>();
    for (int i = 0; i < 4; ++i) EXPECT_EQ(w[i].item<float>(), expected) << "step " << step << ", master " << master;
    seen.push_back(w[0].item<float>());
  }
  // 1.0 at step 1; 1 - 2^-8 from step 2 (master 0.998 < 1 - 2^-9); 1 - 2·2^-8 from step 6
  // (0.994 < 1 - 3·2^-9); 1 - 3·2^-8 at step 10 (0.990 < 1 - 5·2^-9).
  EXPECT_EQ(seen[0], 1.0f);
  for (int s = 1; s < 5; ++s) EXPECT_EQ(seen[s], 1.0f - 1.0f / 256) << "step " << s + 1;
  for (int s = 5; s < 9; ++s) EXPECT_EQ(seen[s], 1.0f - 2.0f / 256) << "step " << s + 1;
  EXPECT_EQ(seen[9], 1.0f - 3.0f / 256) << "step 10";
}

}  // namespace

namespace {

std::shared_ptr<autotp::Mesh> one_rank_mesh() {
  autotp::MeshOptions mo;
  mo.tp = 1;
  return autotp::Mesh::create(c10::make_intrusive<c10d::HashStore>(), 0, 1, mo);
}

// bf16 weights: two micro-batches' gradients 1 and 2^-9 sum to 1 + 2^-9 in fp32 but to 1 in bf16
// (its unit at 1 is 2^-7). accumulate() after each backward keeps the fp32 sum: the global norm of
// four such elements is exactly 2·(1 + 2^-9); bf16 accumulation would give 2.
TEST(ZeroOptimizer, Bf16GradientsAccumulateInFp32AcrossMicroBatches) {
  auto mesh = one_rank_mesh();
  at::Tensor w = at::ones({4}, at::kBFloat16).set_requires_grad(true);
  autotp::OptimizerConfig oc;
  oc.lr = 1e-3;
  autotp::ZeroOneOptimizer opt({{"w", w, false}}, mesh->find("dp"), mesh->find("tp"), oc, 1, /*clip=*/0.0);
  EXPECT_EQ((at::ones({1}, at::kBFloat16) + std::ldexp(1.0, -9)).item<float>(), 1.0f) << "bf16 would lose it";
  w.mutable_grad() = at::full({4}, 1.0, at::kBFloat16);
  opt.accumulate();
  EXPECT_FALSE(w.grad().defined()) << "handed over: the next backward starts from nothing";
  w.mutable_grad() = at::full({4}, std::ldexp(1.0, -9), at::kBFloat16);
  opt.accumulate();
  const autotp::StepStats st = opt.step(1e-3);
  EXPECT_EQ(st.grad_norm, 2.0 * (1.0 + std::ldexp(1.0, -9)));
  // The buffer is part of the gradient bytes: 4 fp32 elements besides the 4 bf16 ones.
  EXPECT_EQ(opt.bytes().grads, 4 * 2 + 4 * 4);
}

// Decoupled weight decay acts on matrices only (decay = false for norm weights and biases): with a
// zero gradient Adam's step is 0, so after one update at lr 0.1 and decay 0.5 the matrix is
// exactly 1 - 0.05 and the vector untouched.
TEST(ZeroOptimizer, WeightDecaySkipsParametersMarkedNoDecay) {
  auto mesh = one_rank_mesh();
  at::Tensor m = at::ones({2, 3}).set_requires_grad(true), v = at::ones({3}).set_requires_grad(true);
  autotp::OptimizerConfig oc;
  oc.lr = 0.1;
  oc.weight_decay = 0.5;
  autotp::ZeroOneOptimizer opt({{"m", m, false, true}, {"v", v, false, false}}, mesh->find("dp"), mesh->find("tp"), oc, 1, 0.0);
  m.mutable_grad() = at::zeros({2, 3});
  v.mutable_grad() = at::zeros({3});
  opt.step(0.1);
  EXPECT_TRUE(at::equal(m, at::full({2, 3}, static_cast<float>(1 - 0.1 * 0.5))));
  EXPECT_TRUE(at::equal(v, at::ones({3})));
}

// state() / load_state(): a second optimizer loaded from the first's state (in two pieces, as two
// DP partitions would be) steps exactly as the first does.
TEST(ZeroOptimizer, LoadStateContinuesBitForBit) {
  auto mesh = one_rank_mesh();
  autotp::OptimizerConfig oc;
  oc.lr = 1e-2;
  oc.weight_decay = 0.1;
  at::Tensor a = at::randn({5, 3}).set_requires_grad(true), b = a.detach().clone().set_requires_grad(true);
  autotp::ZeroOneOptimizer first({{"a", a, false}}, mesh->find("dp"), mesh->find("tp"), oc, 1, 1.0);
  for (int s = 0; s < 3; ++s) {
    a.mutable_grad() = at::randn({5, 3});
    first.step(1e-2);
  }
  const autotp::OptimizerState st = first.state();
  b.detach().zero_();  // the loaded parameters come from the masters, not from b
  autotp::ZeroOneOptimizer second({{"b", b, false}}, mesh->find("dp"), mesh->find("tp"), oc, 1, 1.0);
  second.load_state(st.step, {{0, st.master.narrow(0, 0, 7), st.exp_avg.narrow(0, 0, 7), st.exp_avg_sq.narrow(0, 0, 7)},
                              {7, st.master.narrow(0, 7, 8), st.exp_avg.narrow(0, 7, 8), st.exp_avg_sq.narrow(0, 7, 8)}});
  EXPECT_TRUE(at::equal(a, b));
  at::Tensor g = at::randn({5, 3});
  a.mutable_grad() = g.clone();
  b.mutable_grad() = g.clone();
  first.step(1e-2);
  second.step(1e-2);
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_THROW(second.load_state(1, {{0, st.master.narrow(0, 0, 7), st.exp_avg.narrow(0, 0, 7), st.exp_avg_sq.narrow(0, 0, 7)}}),
               autotp::Error);
}

// ---- overlap_comm: the DP reduction in buckets during the last backward ----------------------------

// One DP rank's run of a toy model: parameters of 5, 7, 3, 11 and 2 elements (28; dp 3 pads to 30,
// partitions of 10). `unused` (first in the flat vector) gets no gradient; `tied` is read twice. The
// loss Σ_i Σ w_i·x_i gives gradients x_i exactly: x = (rank + 1)·(micro-batch + 1)·2^-4 per element,
// small dyadic numbers whose sums are exact in any order, so the overlapped and the one-shot
// reduction must agree bit for bit.
struct ToyRun {
  std::vector<at::Tensor> weights;
  std::vector<double> norms;
  autotp::CollectiveCount reduces, reduce_scatters, gathers;
  int64_t buckets = 0, launched_in_backward = 0;
};

ToyRun toy_run(int rank, int dp, const c10::intrusive_ptr<c10d::Store>& store, autotp::CommOptions comm, at::ScalarType dtype) {
  autotp::MeshOptions mo;
  mo.tp = 1;
  auto mesh = autotp::Mesh::create(store, rank, dp, mo);
  std::vector<at::Tensor> w;
  for (int64_t n : {5, 7, 3, 11, 2}) w.push_back(at::ones({n}, dtype).set_requires_grad(true));
  autotp::OptimizerConfig oc;
  oc.lr = 1e-2;
  std::vector<autotp::TrainableParam> params;
  for (size_t i = 0; i < w.size(); ++i) params.push_back({"w" + std::to_string(i), w[i], false});
  autotp::ZeroOneOptimizer opt(params, mesh->find("dp"), mesh->find("tp"), oc, 1, /*clip=*/0.0, comm);
  ToyRun out;
  for (int step = 0; step < 3; ++step) {
    for (int micro = 0; micro < 2; ++micro) {
      const double x = (rank + 1) * (micro + 1) / 16.0;
      at::Tensor loss = at::zeros({}, at::kFloat);
      for (size_t i = 1; i < w.size(); ++i) loss = loss + (w[i].to(at::kFloat) * x).sum();
      loss = loss + (w[2].to(at::kFloat) * x).sum();  // read twice: its hook sees the sum once
      if (micro == 1) opt.last_micro_batch();
      loss.backward();
      opt.accumulate();
    }
    out.norms.push_back(opt.step(1e-2).grad_norm);
    opt.zero_grad();
  }
  for (auto& t : w) out.weights.push_back(t.detach().to(at::kFloat).clone());
  auto kinds = mesh->dp_group().by_kind();
  out.reduces = kinds["reduce"];
  out.reduce_scatters = kinds["reduce_scatter"];
  out.gathers = kinds["all_gather"];
  out.buckets = opt.buckets();
  out.launched_in_backward = opt.buckets_launched_in_backward();
  return out;
}

std::vector<ToyRun> toy_ranks(int dp, autotp::CommOptions comm, at::ScalarType dtype) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<ToyRun> runs(static_cast<size_t>(dp));
  std::vector<std::thread> threads;
  for (int r = 0; r < dp; ++r) threads.emplace_back([&, r] { runs[static_cast<size_t>(r)] = toy_run(r, dp, store, comm, dtype); });
  for (auto& t : threads) t.join();
  return runs;
}

TEST(ZeroOptimizer, OverlappedBucketsReduceExactlyWhatTheOneShotReduceScatterDoes) {
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16})
    for (int dp : {2, 3}) {
      SCOPED_TRACE(std::string(dtype == at::kFloat ? "fp32" : "bf16") + " dp " + std::to_string(dp));
      autotp::CommOptions overlap{true, 4, 6};
      const auto one = toy_ranks(dp, {}, dtype), lap = toy_ranks(dp, overlap, dtype);
      // The gradient of every used element, averaged over dp: Σ_r Σ_m (r+1)(m+1)/16 / dp, twice for
      // the tied parameter; the global norm (no clipping) sums its square over the used elements.
      const double g = 3.0 * dp * (dp + 1) / 2 / 16.0 / dp;
      const double norm = std::sqrt(g * g * (7 + 11 + 2) + 4 * g * g * 3);
      for (int r = 0; r < dp; ++r) {
        const auto& a = one[static_cast<size_t>(r)];
        const auto& b = lap[static_cast<size_t>(r)];
        for (size_t i = 0; i < a.weights.size(); ++i) EXPECT_TRUE(at::equal(a.weights[i], b.weights[i])) << "rank " << r << " w" << i;
        EXPECT_TRUE(at::equal(b.weights[0], at::ones({5}))) << "no gradient, no weight decay: untouched";
        for (size_t s = 0; s < 3; ++s) {
          EXPECT_DOUBLE_EQ(a.norms[s], norm);
          EXPECT_DOUBLE_EQ(b.norms[s], norm);
        }
        // Buckets of at most 4 elements that never straddle a partition: dp 2 partitions of 14 in
        // 4+4+4+2 → 8 buckets; dp 3 partitions of 10 in 4+4+2 → 9. Per step one reduce each, the same
        // bytes as the one reduce-scatter of the padded vector; the all-gather in chunks of 6 / dp.
        const int64_t padded = dp == 2 ? 28 : 30, partition = padded / dp, buckets = dp == 2 ? 8 : 9;
        EXPECT_EQ(b.buckets, buckets);
        EXPECT_EQ(a.reduce_scatters, (autotp::CollectiveCount{3, 3 * padded * 4}));
        EXPECT_EQ(b.reduces, (autotp::CollectiveCount{3 * buckets, 3 * padded * 4}));
        EXPECT_EQ(b.reduce_scatters.calls, 0);
        const int64_t chunk = 6 / dp;
        EXPECT_EQ(b.gathers, (autotp::CollectiveCount{3 * ((partition + chunk - 1) / chunk), 3 * partition * 4}));
        EXPECT_EQ(a.gathers, (autotp::CollectiveCount{3, 3 * partition * 4}));
        // What overlapped: every bucket but those holding the unused first parameter (elements 0-4,
        // the last in launch order, which step() completes) started during the backward.
        EXPECT_EQ(b.launched_in_backward, buckets - 2) << "buckets [0, 4) and [4, 8) wait for w0";
      }
    }
}

}  // namespace

