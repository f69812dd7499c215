// use_sdpa (passes/sdpa.cpp) and the op it puts in place, autotp::causal_attention
// (runtime/causal_attention.cpp). Every traced fixture is checked against transformers' eager model
// with the pass applied in test_eager_reference.cpp; here: the op against attention written out by
// hand, the masks it refuses, and which graphs the pass leaves alone.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <unistd.h>
#include <functional>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/api/module.h>

#include "autotp/passes.h"
#include "fixtures.h"

namespace {

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("autotp::causal_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(q, k, v, mask, scale);
}

// The blocking value Hugging Face puts above the diagonal: the dtype's lowest.
const float kLowest = std::numeric_limits<float>::lowest();

at::Tensor causal_mask(int64_t n) {
  at::Tensor m = at::zeros({1, 1, n, n});
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) m[0][0][i][j] = kLowest;
  return m;
}

double rel(const at::Tensor& got, const at::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    std::string what = e.what();  // through the interpreter: the op's own line, not the traceback's header
    const size_t at = what.find("autotp::causal_attention:");
    if (at != std::string::npos) what = what.substr(at);
    return what.substr(0, what.find('\n'));
  }
  return "";
}

TEST(CausalAttention, IsSoftmaxAttentionUnderTheCausalMaskWithItsGradients) {
  at::manual_seed(5);
  const int64_t n = 6;
  auto make = [] { return at::randn({2, 3, 6, 8}).requires_grad_(true); };
  at::Tensor q = make(), k = make(), v = make();
  const double scale = 1.0 / std::sqrt(8.0);
  at::Tensor got = causal_attention(q, k, v, causal_mask(n), scale);
  at::Tensor gq, gk, gv;
  {
    auto g = torch::autograd::grad({(got * got).sum()}, {q, k, v});
    gq = g[0], gk = g[1], gv = g[2];
  }
  // By hand: row i of the probabilities is softmax over keys 0..i only.
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) * scale;
  at::Tensor blocked = at::ones({n, n}, at::kBool).triu(1);
  at::Tensor want = at::matmul(at::softmax(scores.masked_fill(blocked, -INFINITY), -1), v);
  auto g = torch::autograd::grad({(want * want).sum()}, {q, k, v});
  EXPECT_LE(rel(got, want), 1e-6);
  EXPECT_LE(rel(gq, g[0]), 1e-5);
  EXPECT_LE(rel(gk, g[1]), 1e-5);
  EXPECT_LE(rel(gv, g[2]), 1e-5);
}

TEST(CausalAttention, RefusesEveryOtherMaskInOneLine) {
  at::Tensor q = at::randn({1, 2, 5, 4}), k = at::randn({1, 2, 5, 4}), v = at::randn({1, 2, 5, 4});
  const std::string not_causal =
      "autotp::causal_attention: the attention mask [1, 1, 5, 5] is not the plain causal one (0 on and below the "
      "diagonal, a blocking value above it: a padding mask, a sliding window shorter than the 5 tokens, or a cache "
      "offset?); this model's attention cannot become scaled_dot_product_attention here: run without --sdpa";
  at::Tensor window = causal_mask(5);  // a sliding window of 2: key i-2 and before blocked too
  for (int64_t i = 2; i < 5; ++i) window[0][0][i][i - 2] = kLowest;
  EXPECT_EQ(error_of([&] { causal_attention(q, k, v, window, 0.5); }), not_causal);
  at::Tensor padding = causal_mask(5);  // the first key padded out
  for (int64_t i = 0; i < 5; ++i) padding[0][0][i][0] = kLowest;
  EXPECT_EQ(error_of([&] { causal_attention(q, k, v, padding, 0.5); }), not_causal);
  at::Tensor soft = causal_mask(5);  // a finite penalty is a bias, not a mask
  soft[0][0][0][4] = -1e4;
  EXPECT_EQ(error_of([&] { causal_attention(q, k, v, soft, 0.5); }), not_causal);
  EXPECT_EQ(error_of([&] { causal_attention(q, k.narrow(2, 0, 4), v.narrow(2, 0, 4), causal_mask(5).narrow(3, 0, 4), 0.5); }),
            "autotp::causal_attention: the attention mask [1, 1, 5, 4] is not [.., 5, 5] for 5 queries and 4 keys; "
            "this model's attention cannot become scaled_dot_product_attention here: run without --sdpa");
  EXPECT_EQ(error_of([&] { causal_attention(q, k, v, causal_mask(5), 0.5); }), "");
}

// Scripted graphs: the pattern with a mask built from sizes is replaced and computes the same; a
// mask that is an input (a padding mask: its values are the caller's) is left alone; a banded mask
// built from sizes is replaced, and the op refuses it when called.
at::Tensor run(torch::jit::Module& m, const std::vector<c10::IValue>& in) { return m.forward(in).toTensor(); }

TEST(UseSdpa, ReplacesOnlyAMaskBuiltFromSizes) {
  at::manual_seed(6);
  at::Tensor q = at::randn({2, 3, 7, 4}), k = at::randn({2, 3, 7, 4}), v = at::randn({2, 3, 7, 4});
  torch::jit::Module from_sizes("FromSizes");
  from_sizes.define(R"(
def forward(self, q, k, v):
    n = q.size(2)
    mask = torch.triu(torch.full([n, n], -3.0e38), 1)
    s = torch.matmul(q, k.transpose(-2, -1)) * 0.5
    p = torch.softmax(s + mask, -1)
    return torch.matmul(p, v)
)");
  const at::Tensor before = run(from_sizes, {q, k, v});
  EXPECT_EQ(autotp::use_sdpa(from_sizes), 1);
  EXPECT_NE(from_sizes.get_method("forward").graph()->toString().find("autotp::causal_attention"), std::string::npos);
  EXPECT_LE(rel(run(from_sizes, {q, k, v}), before), 1e-6);

  torch::jit::Module from_input("FromInput");
  from_input.define(R"(
def forward(self, q, k, v, mask):
    s = torch.matmul(q, k.transpose(-2, -1)) * 0.5
    p = torch.softmax(s + mask, -1)
    return torch.matmul(p, v)
)");
  EXPECT_EQ(autotp::use_sdpa(from_input), 0);

  torch::jit::Module banded("Banded");
  banded.define(R"(
def forward(self, q, k, v):
    n = q.size(2)
    full = torch.full([n, n], -3.0e38)
    mask = torch.triu(full, 1) + torch.tril(full, -3)
    s = torch.matmul(q, k.transpose(-2, -1)) / 2.0
    p = torch.softmax(s + mask, -1)
    return torch.matmul(p, v)
)");
  EXPECT_EQ(autotp::use_sdpa(banded), 1);
  at::Tensor short_q = q.narrow(2, 0, 3), short_k = k.narrow(2, 0, 3), short_v = v.narrow(2, 0, 3);
  EXPECT_EQ(error_of([&] { run(banded, {short_q, short_k, short_v}); }), "");  // within the window: causal
  const std::string err = error_of([&] { run(banded, {q, k, v}); });
  EXPECT_NE(err.find("is not the plain causal one"), std::string::npos) << err;

  torch::jit::Module with_dropout("WithDropout");  // attention dropout that is on: stays eager
  with_dropout.define(R"(
def forward(self, q, k, v):
    n = q.size(2)
    mask = torch.triu(torch.full([n, n], -3.0e38), 1)
    s = torch.matmul(q, k.transpose(-2, -1)) * 0.5
    p = torch.dropout(torch.softmax(s + mask, -1), 0.1, True)
    return torch.matmul(p, v)
)");
  EXPECT_EQ(autotp::use_sdpa(with_dropout), 0);
}

}  // namespace

namespace {

// `autotp rewrite --sdpa`: the rank archives carry the fused attention (and load anywhere
// libautotp is loaded); with a plan file it is refused, the plan was made for the eager graph.
TEST(UseSdpa, RewriteWritesRankArchivesWithTheFusedAttention) {
  const std::string out = testing::TempDir() + "sdpa_rewrite_" + std::to_string(getpid());
  auto r = autotp_test::run_command(std::string(AUTOTP_CLI) + " rewrite " + autotp_test::fixture("qwen2") + " --tp 2 --sdpa --out " + out);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.rfind("sdpa: 2 attention sites now scaled_dot_product_attention(is_causal=True)\n", 0), 0u) << r.out;
  for (int rank = 0; rank < 2; ++rank) {
    torch::jit::Module m = autotp::load_model(out + "/rank" + std::to_string(rank) + ".pt");
    const std::string graph = m.get_method("forward").graph()->toString();
    size_t sites = 0;
    for (size_t at = graph.find("autotp::causal_attention"); at != std::string::npos; at = graph.find("autotp::causal_attention", at + 1)) ++sites;
    EXPECT_EQ(sites, 2u) << "rank " << rank;
    EXPECT_EQ(graph.find("aten::softmax"), std::string::npos) << "rank " << rank;
  }
  r = autotp_test::run_command(std::string(AUTOTP_CLI) + " rewrite " + autotp_test::fixture("qwen2") + " --plan " + out +
                               "/plan.json --sdpa --out " + out + "/again");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "autotp: error: rewrite: --sdpa changes the graph a plan file was made for; use --sdpa with --tp N\n");
  std::filesystem::remove_all(out);
}

}  // namespace
