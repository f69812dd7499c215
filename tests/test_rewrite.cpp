// The rewrite against the unsharded model: logits, loss and every gradient for every fixture at
// every valid tp (ranks as threads over gloo); the exact collectives of one micro-batch; save ->
// load; the ops on their own; and the one-line errors of running without the right mesh.
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/autotp.h"
#include "autotp/mesh.h"
#include "autotp/passes.h"
#include "autotp/verify.h"
#include "fixtures.h"
#include "ranks.h"
#include "runtime/tp_ops.h"

namespace autotp {
// Readable failures for the collective counters.
inline void PrintTo(const CollectiveCount& c, std::ostream* os) { *os << "{calls " << c.calls << ", bytes " << c.bytes << "}"; }
}  // namespace autotp

using autotp_test::config_of;
using autotp_test::fixture;

namespace {

// Runs fn(rank, mesh) on `world` threads, each with its own mesh (tp = world) installed; no rank may fail.
template <typename Fn>
void on_ranks(int world, int tp, Fn fn) {
  auto errors = autotp_test::run_ranks(world, tp, fn);
  for (int r = 0; r < world; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
}

int64_t parameter_count(const std::string& name) {
  int64_t n = 0;
  for (const auto& p : autotp::load_model(fixture(name)).named_parameters(true)) (void)p, ++n;
  return n;
}

using autotp_test::case_name;
using Case = autotp_test::FixtureCase;

class VerifyFixture : public testing::TestWithParam<Case> {};

TEST_P(VerifyFixture, LogitsLossAndGradientsMatchTheUnshardedModel) {
  const auto& c = GetParam();
  autotp::VerifyOptions o;
  o.tp = c.tp;
  auto rep = autotp::verify_threads(fixture(c.fixture), o);
  EXPECT_TRUE(rep.vocab_split);
  EXPECT_LE(rep.logits_rel, 1e-5);
  EXPECT_LE(rep.loss_rel, 1e-5);
  EXPECT_LE(rep.grads_rel, 1e-5) << "worst: " << rep.worst_grad;
  // Every parameter's gradient was compared. A frozen archive has no parameters (its weights are
  // constants) and so no gradients: what is comparable is its logits and loss, checked above.
  EXPECT_EQ(rep.grads_compared, parameter_count(c.fixture));
  if (config_of(c.fixture).export_kind == "freeze")
    EXPECT_EQ(rep.grads_compared, 0);
  else
    EXPECT_GT(rep.grads_compared, 0);
}

// The frozen archive is the scripted reference frozen: the same logits on the same ids, bit for bit,
// so verifying its logits and loss checks the same function the scripted fixture's gradients do.
TEST(Verify, FrozenArchiveComputesTheScriptedModelsLogits) {
  auto scripted = autotp::load_model(fixture("ref_script")), frozen = autotp::load_model(fixture("ref_frozen"));
  scripted.eval();
  auto ids = at::randint(config_of("ref_script").vocab, {2, 8}, at::kLong);
  at::Tensor a = autotp::logits_of(scripted.forward({ids})).detach(), b = autotp::logits_of(frozen.forward({ids}));
  EXPECT_TRUE(at::allclose(a, b, 0, 1e-6)) << (a - b).abs().max();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VerifyFixture,
                         testing::Values(Case{"llama_mha", 2}, Case{"llama_mha", 4}, Case{"llama_gqa", 2},
                                         Case{"llama_gqa", 4}, Case{"llama_tied", 2}, Case{"llama_tied", 4},
                                         Case{"qwen2", 2}, Case{"qwen2", 4}, Case{"mistral", 2},
                                         Case{"ref_script", 2}, Case{"ref_script", 4}, Case{"ref_frozen", 2},
                                         Case{"ref_frozen", 4}, Case{"ref_sdpa", 2}, Case{"ref_sdpa", 4}, Case{"ref_bias", 2},
                                         Case{"ref_bias", 4},
                                         // Uneven (issue 13): tp=3 cuts 8 heads 3+3+2 (MHA) or 4 kv groups 2+1+1 and
                                         // the intermediate 128 in blocks of 8 (6+5+5); the scripted and frozen
                                         // references rescale their head counts to each rank's own value. tp=3 on
                                         // mistral (2 kv heads) keeps attention whole and cuts only the MLP.
                                         Case{"llama_mha", 3}, Case{"llama_gqa", 3}, Case{"llama_tied", 3},
                                         Case{"qwen2", 3}, Case{"qwen3", 3}, Case{"mistral", 3},
                                         Case{"ref_script", 3}, Case{"ref_frozen", 3}, Case{"ref_sdpa", 3},
                                         Case{"ref_bias", 3},
                                         // kv heads on several ranks (issue 13 item 2): mistral's 2 kv heads on 2
                                         // ranks each at tp 4 and on 4 at tp 8; the 4 kv heads of the others on 2
                                         // at tp 8 (scripted and frozen: their kv head counts are rescaled per kv
                                         // head, their q head counts per rank; SDPA; q/k/v biases; Qwen3's
                                         // per-head norms on both sides).
                                         Case{"mistral", 4}, Case{"mistral", 8}, Case{"llama_gqa", 8},
                                         Case{"llama_tied", 8}, Case{"qwen2", 8}, Case{"qwen3", 8},
                                         Case{"ref_script", 8}, Case{"ref_frozen", 8}, Case{"ref_sdpa", 8},
                                         Case{"ref_bias", 8},
                                         // ... and q heads a holder count does not divide: mistral's 4 per kv head
                                         // over 3 holders (2+1+1) at tp 6, qwen2_kv2x3's 3 over 2 (2+1) at tp 4.
                                         Case{"mistral", 6}, Case{"qwen2_kv2x3", 4}, Case{"qwen2_kv2x3", 6}),
                         case_name);

// SmolLM2-135M (real pretrained weights, 30 layers) at tp=3. Logits and loss meet 1e-5. Its
// gradients do not, and cannot: tests/fixtures/smollm2_reorder_noise.py computes o_proj/down_proj as
// three partial sums in plain PyTorch on the same batch and moves the gradients by 9.1e-4 (worst:
// layers.5.input_layernorm) -- what verify measures here. Random tokens in a trained model give a
// very peaked softmax whose backward through 30 layers amplifies fp32 rounding; on other seeds the
// same reordering moves them by 1.3e-5. The bound is therefore 2e-3, a factor 2 above that.
// SmolLM2 verified at `tp`: logits and loss within 1e-5, every gradient within the 2e-3 above, and
// the copy_to_tp count (30 layers x 2 + lm-head) every cut shares.
autotp::VerifyReport verify_smollm2(int tp) {
  autotp::VerifyOptions o;
  o.tp = tp;
  auto rep = autotp::verify_threads(fixture("smollm2"), o);
  EXPECT_LE(rep.logits_rel, 1e-5);
  EXPECT_LE(rep.loss_rel, 1e-5);
  EXPECT_LE(rep.grads_rel, 2e-3) << rep.worst_grad;
  EXPECT_EQ(rep.grads_compared, parameter_count("smollm2"));
  EXPECT_EQ(rep.tp_by_site.at("copy_to_tp.backward").calls, 61);
  return rep;
}

TEST(Verify, SmolLM2AtTp3) { EXPECT_EQ(verify_smollm2(3).tp_by_site.at("reduce_from_tp.forward").calls, 60); }

// SmolLM2 at tp=2 (issue 13): its 3 kv groups cut 2+1, the MLP 768 + 768. The same fp32 reordering
// noise as at tp=3 bounds the gradients (measured 1.2e-3, worst layers.5.input_layernorm).
TEST(Verify, SmolLM2AtTp2Uneven) {
  const auto rep = verify_smollm2(2);
  // The reduces move the full hidden size whatever a rank's share: 30 layers x 2 x [2, 8, 576] fp32.
  EXPECT_EQ(rep.tp_by_site.at("reduce_from_tp.forward").bytes, int64_t{60} * 2 * 8 * 576 * 4);
}

// bf16 weights and activations on both sides (the scripted reference; traced HF graphs bake fp32
// casts and cannot run in bf16). Measured: logits 7.5e-3, loss 9e-5, gradients 1.5e-2 -- two to
// four bf16 units (2^-8) of the largest value; the bound 3e-2 is verify's bf16 tolerance.
TEST(Verify, Bf16WithinItsTolerance) {
  for (int tp : {2, 4}) {
    autotp::VerifyOptions o;
    o.tp = tp;
    o.dtype = "bf16";
    auto rep = autotp::verify_threads(fixture("ref_script"), o);
    EXPECT_EQ(rep.tolerance, 3e-2);
    EXPECT_LE(rep.logits_rel, 3e-2);
    EXPECT_LE(rep.loss_rel, 1e-3);
    EXPECT_LE(rep.grads_rel, 3e-2) << rep.worst_grad;
    EXPECT_GT(rep.logits_rel, 0);  // really bf16: not bit-equal like a no-op would be
    EXPECT_EQ(rep.grads_compared, 21);
  }
}

// The scripted model reads its head counts from attributes: a batch and sequence other than the
// example's still run (the traced models are fixed to their traced shape).
TEST(Verify, ScriptedModelOnAnotherBatchShape) {
  autotp::VerifyOptions o;
  o.tp = 2;
  o.batch = 3;
  o.seq = 16;
  auto rep = autotp::verify_threads(fixture("ref_script"), o);
  EXPECT_EQ(rep.input_shape, (std::vector<int64_t>{3, 16}));
  EXPECT_LE(rep.logits_rel, 1e-5);
  EXPECT_LE(rep.grads_rel, 1e-5);
}

// One forward+backward of one micro-batch: per layer 2 forward all-reduces (after o_proj and
// down_proj) and 2 backward all-reduces (copy_to_tp before q/k/v and before gate/up), each of
// batch·seq·hidden fp32 values; plus one forward all-reduce after the vocab-parallel embedding
// (batch·seq·hidden), one backward all-reduce before the lm-head (batch·seq·hidden), and three
// forward all-reduces of one fp32 value per predicted token in the vocab-parallel cross-entropy.
TEST(Collectives, ExactCountsAndBytesOfOneMicroBatch) {
  for (const std::string name : {"llama_gqa", "qwen2", "ref_script"}) {
    for (int tp : {2, 4}) {
      SCOPED_TRACE(name + " tp=" + std::to_string(tp));
      auto cfg = config_of(name);
      autotp::VerifyOptions o;
      o.tp = tp;
      auto rep = autotp::verify_threads(fixture(name), o);
      const int64_t b = rep.input_shape[0], s = rep.input_shape[1];
      const int64_t act = b * s * cfg.hidden * 4, tokens = b * (s - 1) * 4;
      const int64_t L = cfg.layers;
      std::map<std::string, autotp::CollectiveCount> site{
          {"copy_to_tp.backward", {2 * L + 1, (2 * L + 1) * act}},
          {"reduce_from_tp.forward", {2 * L, 2 * L * act}},
          {"vocab_parallel_embedding.forward", {1, act}},
          {"vocab_parallel_cross_entropy.forward", {3, 3 * tokens}}};
      EXPECT_EQ(rep.tp_by_site, site);
      std::map<std::string, autotp::CollectiveCount> kind{
          {"all_reduce", {4 * L + 5, (4 * L + 2) * act + 3 * tokens}}};
      EXPECT_EQ(rep.tp_by_kind, kind);
    }
  }
}

// Rewritten archives save, load again (the ops are registered by libautotp) and give the same
// logits and gradients as the in-memory modules, bit for bit.
TEST(Rewrite, SaveLoadGivesTheSameOutputs) {
  for (const std::string name : {"llama_tied", "ref_script", "ref_frozen"}) {
    SCOPED_TRACE(name);
    const int tp = 2;
    auto original = autotp::load_model(fixture(name));
    auto plan = autotp::plan_model(original, tp, name);
    const std::string dir = testing::TempDir() + "autotp_saveload_" + name + "_" + std::to_string(getpid());
    std::filesystem::create_directories(dir);
    std::vector<torch::jit::Module> fresh, loaded;
    for (int r = 0; r < tp; ++r) {
      fresh.push_back(autotp::rewrite(original, plan, r));
      fresh.back().save(dir + "/rank" + std::to_string(r) + ".pt");
      loaded.push_back(autotp::load_model(dir + "/rank" + std::to_string(r) + ".pt"));
      EXPECT_EQ(autotp::rewrite_info(loaded.back()).tp, tp);
      EXPECT_EQ(autotp::rewrite_info(loaded.back()).tp_rank, r);
      EXPECT_EQ(autotp::rewrite_info(loaded.back()).vocab, config_of(name).vocab);
    }
    auto ids = at::randint(config_of(name).vocab, {2, 8}, at::kLong);
    on_ranks(tp, tp, [&](int r, autotp::Mesh&) {
      at::Tensor a = autotp::logits_of(fresh[r].forward({ids})), b = autotp::logits_of(loaded[r].forward({ids}));
      EXPECT_EQ(a.size(-1), config_of(name).vocab / tp);
      EXPECT_TRUE(at::equal(a, b));
      if (a.requires_grad()) {
        torch::autograd::backward({a.square().sum()});
        torch::autograd::backward({b.square().sum()});
        auto pa = fresh[r].named_parameters(true), pb = loaded[r].named_parameters(true);
        auto ia = pa.begin();
        for (auto ib = pb.begin(); ib != pb.end(); ++ia, ++ib) {
          EXPECT_EQ((*ia).name, (*ib).name);
          EXPECT_TRUE(at::equal((*ia).value.grad(), (*ib).value.grad())) << (*ia).name;
        }
      }
    });
    std::filesystem::remove_all(dir);
  }
}

// The original module is untouched: same parameters (shapes and values) and same outputs.
TEST(Rewrite, LeavesTheInputModuleUntouched) {
  auto original = autotp::load_model(fixture("ref_script"));
  auto before = original.forward({at::arange(16, at::kLong).reshape({2, 8})}).toTensor();
  std::map<std::string, at::Tensor> params;
  for (const auto& p : original.named_parameters(true)) params[p.name] = p.value.clone();
  auto plan = autotp::plan_model(original, 4, "ref_script");
  for (int r = 0; r < 4; ++r) autotp::rewrite(original, plan, r);
  for (const auto& p : original.named_parameters(true)) EXPECT_TRUE(at::equal(p.value, params.at(p.name))) << p.name;
  auto after = original.forward({at::arange(16, at::kLong).reshape({2, 8})}).toTensor();
  EXPECT_TRUE(at::equal(before, after));
  EXPECT_EQ(after.size(-1), config_of("ref_script").vocab);
}

// Each rank holds exactly its share: split parameters have 1/tp of their rows (column, vocab) or
// columns (row), replicated ones are whole.
TEST(Rewrite, RankModulesHoldTheirSlices) {
  auto original = autotp::load_model(fixture("llama_gqa"));
  auto plan = autotp::plan_model(original, 2, "llama_gqa");
  auto mine = autotp::rewrite(original, plan, 1);
  std::map<std::string, at::Tensor> full;
  for (const auto& p : original.named_parameters(true)) full[p.name] = p.value;
  int64_t bytes = 0;
  for (const auto& p : mine.named_parameters(true)) {
    const at::Tensor& f = full.at(p.name);
    const auto& pp = *std::find_if(plan.parameters.begin(), plan.parameters.end(), [&](const autotp::ParamPlan& x) { return x.name == p.name; });
    if (pp.split_dim >= 0) {
      const int64_t len = f.size(pp.split_dim) / 2;
      EXPECT_TRUE(at::equal(p.value, f.narrow(pp.split_dim, len, len))) << p.name;
    } else {
      EXPECT_TRUE(at::equal(p.value, f)) << p.name;
    }
    EXPECT_NE(p.value.data_ptr(), f.data_ptr()) << p.name << " must not share memory with the original";
    bytes += p.value.numel() * p.value.element_size();
  }
  EXPECT_EQ(bytes, plan.bytes.per_rank);
}

// Row-parallel biases (o_proj, down_proj) stay whole on every rank and are added once, after the
// all-reduce: the linear itself no longer reads them. Column and lm-head biases are sliced.
TEST(Rewrite, RowBiasIsAddedOnceAfterTheReduce) {
  auto original = autotp::load_model(fixture("ref_bias"));
  auto plan = autotp::plan_model(original, 2, "ref_bias");
  std::map<std::string, autotp::Placement> placement;
  for (const auto& p : plan.parameters) placement[p.name] = p.placement;
  EXPECT_EQ(placement.at("layers.0.self_attn.o_proj.bias"), autotp::Placement::Replicated);
  EXPECT_EQ(placement.at("layers.1.mlp.down_proj.bias"), autotp::Placement::Replicated);
  EXPECT_EQ(placement.at("layers.0.self_attn.q_proj.bias"), autotp::Placement::Column);
  EXPECT_EQ(placement.at("lm_head.bias"), autotp::Placement::Vocab);
  auto mine = autotp::rewrite(original, plan, 0);
  auto graph = mine.get_method("forward").graph();
  int adds_after_reduce = 0, reduces = 0;
  for (auto* n : graph->nodes()) {
    if (n->kind().toQualString() != std::string("autotp::reduce_from_tp")) continue;
    ++reduces;
    for (const auto& use : n->output()->uses())
      if (use.user->kind() == c10::aten::add && use.user->input(0) == n->output()) ++adds_after_reduce;
  }
  // 2 layers x (o_proj + down_proj) = 4 row linears with a bias; the embedding's reduce is inside
  // autotp::vocab_parallel_embedding, not in the graph.
  EXPECT_EQ(reduces, 4);
  EXPECT_EQ(adds_after_reduce, 4);
}

// ---- the ops on their own ---------------------------------------------------------------------

TEST(Ops, ConjugatePairAndGatherGradients) {
  on_ranks(2, 2, [](int r, autotp::Mesh&) {
    auto x = at::full({3, 4}, double(r + 1)).requires_grad_();
    auto y = autotp::reduce_from_tp(x, "tp", 2);  // 1 + 2
    EXPECT_TRUE(at::equal(y, at::full({3, 4}, 3.0)));
    torch::autograd::backward({(y * (r + 1)).sum()});
    EXPECT_TRUE(at::equal(x.grad(), at::full({3, 4}, double(r + 1))));  // identity backward

    auto a = at::full({3, 4}, 1.0).requires_grad_();
    auto c = autotp::copy_to_tp(a, "tp", 2);
    torch::autograd::backward({(c * (r + 1)).sum()});
    EXPECT_TRUE(at::equal(a.grad(), at::full({3, 4}, 3.0)));  // all-reduced backward

    auto g = at::arange(4, at::kDouble).add(10 * r).reshape({2, 2}).requires_grad_();
    auto full = autotp::gather_from_tp(g, "tp", 2);
    EXPECT_TRUE(at::equal(full, at::tensor({0., 1., 10., 11., 2., 3., 12., 13.}, at::kDouble).reshape({2, 4})));
    torch::autograd::backward({(full * at::arange(8, at::kDouble).reshape({2, 4})).sum()});
    auto expect = r == 0 ? at::tensor({0., 1., 4., 5.}, at::kDouble) : at::tensor({2., 3., 6., 7.}, at::kDouble);
    EXPECT_TRUE(at::equal(g.grad(), expect.reshape({2, 2})));
  });
}

TEST(Ops, VocabParallelCrossEntropyMatchesCrossEntropy) {
  auto logits = at::randn({5, 12}, at::kDouble);
  auto target = at::tensor({0, 11, 5, -100, 6}, at::kLong);
  auto ref_in = logits.clone().requires_grad_();
  auto ref = at::cross_entropy_loss(ref_in, target, {}, at::Reduction::None, -100);
  torch::autograd::backward({(ref * at::arange(5, at::kDouble)).sum()});
  for (int tp : {2, 3, 4}) {
    on_ranks(tp, tp, [&](int r, autotp::Mesh& mesh) {
      const int64_t w = 12 / tp;
      auto mine = logits.narrow(1, r * w, w).clone().requires_grad_();
      auto loss = autotp::vocab_parallel_cross_entropy(mine, target, -100, "tp", tp);
      EXPECT_LT((loss.to(at::kDouble) - ref).abs().max().item<double>(), 1e-5);
      EXPECT_EQ(loss[3].item<double>(), 0.0);
      torch::autograd::backward({(loss * at::arange(5, at::kFloat)).sum()});
      EXPECT_LT((mine.grad() - ref_in.grad().narrow(1, r * w, w)).abs().max().item<double>(), 1e-5);
      // Three all-reduces of one fp32 value per token, forward only.
      auto sites = mesh.tp_group().by_site();
      EXPECT_EQ(sites.size(), 1u);
      EXPECT_EQ(sites["vocab_parallel_cross_entropy.forward"], (autotp::CollectiveCount{3, 3 * 5 * 4}));
    });
  }
}

// ---- errors ------------------------------------------------------------------------------------

TEST(RewriteErrors, RunningWithoutAMeshIsOneClearLine) {
  auto original = autotp::load_model(fixture("llama_gqa"));
  auto mine = autotp::rewrite(original, autotp::plan_model(original, 2, "llama_gqa"), 0);
  autotp::set_process_mesh(nullptr);
  try {
    mine.forward({at::zeros({2, 8}, at::kLong)});
    FAIL() << "ran without a mesh";
  } catch (const std::exception& e) {
    EXPECT_EQ(autotp::user_message(e),
              "autotp::vocab_parallel_embedding: no device mesh in this process; set one up first: "
              "autotp::init_mesh_from_env (C++), torch.ops.autotp.init_mesh_from_env(tp) (Python under torchrun), "
              "or autotp verify");
  }
}

TEST(RewriteErrors, RunningOnAMeshOfAnotherTpIsOneClearLine) {
  auto original = autotp::load_model(fixture("llama_gqa"));
  auto mine = autotp::rewrite(original, autotp::plan_model(original, 2, "llama_gqa"), 0);
  std::string message;
  on_ranks(4, 4, [&](int r, autotp::Mesh&) {
    if (r != 0) return;  // one rank is enough: the check fails before any collective
    try {
      mine.forward({at::zeros({2, 8}, at::kLong)});
    } catch (const std::exception& e) {
      message = autotp::user_message(e);
    }
  });
  EXPECT_EQ(message,
            "autotp::vocab_parallel_embedding: this module was rewritten for tp=2 but the mesh's tp group has 4 "
            "ranks; rewrite the model with --tp 4 or start the mesh with tp=2");
}

TEST(RewriteErrors, PlanOfAnotherModelAndBadRank) {
  auto gqa = autotp::load_model(fixture("llama_gqa"));
  auto mha = autotp::load_model(fixture("llama_mha"));
  auto plan = autotp::plan_model(gqa, 2, "llama_gqa.pt");
  try {
    autotp::rewrite(mha, plan, 0);
    FAIL();
  } catch (const autotp::Error& e) {
    // The plan's sites are node numbers of the graph it was made from: another graph is refused
    // before anything is edited.
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("llama_gqa.pt: the plan was made for another model (graph ", 0), 0u) << msg;
    EXPECT_NE(msg.find(", this model's is "), std::string::npos) << msg;
    EXPECT_EQ(msg.substr(msg.size() - 32), "); make the plan from this model") << msg;
  }
  try {
    autotp::rewrite(gqa, plan, 2);
    FAIL();
  } catch (const autotp::Error& e) {
    EXPECT_EQ(std::string(e.what()), "llama_gqa.pt: tp rank 2 is outside 0..1 for the plan's tp=2");
  }
  auto once = autotp::rewrite(gqa, plan, 0);
  try {
    autotp::rewrite(once, plan, 0);
    FAIL();
  } catch (const autotp::Error& e) {
    EXPECT_EQ(std::string(e.what()), "llama_gqa.pt: this module is already rewritten for tp=2; rewrite the original model");
  }
}

}  // namespace
