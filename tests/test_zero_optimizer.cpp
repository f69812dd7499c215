// ZeRO-1 AdamW on its own: bf16 weights with fp32 masters, against a hand-computed Adam recurrence.
#include <gtest/gtest.h>

#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

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
