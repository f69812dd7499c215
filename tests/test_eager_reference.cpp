// Traced fixtures against the Hugging Face eager model they were traced from, on a batch of another
// shape than the trace. Everything else checks a traced archive against itself (verify: the rewrite
// against the unsharded archive) on its trace shape; here the expected numbers come only from
// FIXTURE.eager.pt, written in Python by transformers' eager forward and backward
// (tests/fixtures/eager_reference.py): ids [3, 12] (traced [2, 8]), logits, the mean next-token
// cross-entropy and every parameter's gradient, by the archive's parameter names.
//
// For each fixture: the unsharded archive, and its tp=2 rewrite (ranks as threads over gloo, the
// vocab-parallel cross-entropy, logits re-assembled over the vocabulary with the padding cut off,
// gradients re-assembled from their shards), each within 1e-5 relative of eager for the logits,
// the loss and every gradient. Relative error: max |got - eager| / max |eager| over the tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <thread>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/jit/serialization/import.h>

#include "autotp/autotp.h"
#include "autotp/mesh.h"
#include "autotp/passes.h"
#include "fixtures.h"
#include "ranks.h"
#include "runtime/tp_ops.h"

using autotp_test::fixture;

namespace {

// Every Hugging Face traced fixture but smollm2 (its gradients alone would be 540 MB).
const std::vector<std::string> kFixtures = {
    "llama_mha", "llama_gqa", "llama_tied", "qwen2", "mistral", "qwen3", "qwen3_tied", "llama_vocab251", "qwen2_kv2x3",
    "zoo_llama", "zoo_mistral", "zoo_mixtral", "zoo_qwen2", "zoo_qwen3", "zoo_gemma", "zoo_gemma2", "zoo_phi",
    "zoo_phi3", "zoo_olmo2", "zoo_stablelm", "zoo_cohere", "zoo_granite", "zoo_gpt_neox", "zoo_falcon", "zoo_gpt2",
    "zoo_opt", "zoo_gptj", "zoo_codegen", "zoo_starcoder2", "zoo_gpt_bigcode", "zoo_bloom",
    // Traced in bf16; load_model makes it compute in fp32, which transformers' fp32 eager model on
    // the same (bf16-rounded) weights computed (passes/compute_dtype.cpp).
    "llama_gqa_bf16"};
constexpr double kTolerance = 1e-5;  // fp32, as autotp verify

std::string eager_path(const std::string& name) { return std::string(AUTOTP_FIXTURES_DIR) + "/" + name + ".eager.pt"; }

nlohmann::json manifest() {
  std::ifstream in(std::string(AUTOTP_FIXTURES_DIR) + "/manifest.json");
  return nlohmann::json::parse(in);
}

// What transformers computed (the scripted container eager_reference.py writes).
struct Eager {
  at::Tensor ids, logits;
  double loss = 0;
  std::vector<std::pair<std::string, at::Tensor>> grads;  // in the archive's parameter order
};

Eager load_eager(const std::string& name) {
  torch::jit::Module m = torch::jit::load(eager_path(name));
  Eager e;
  e.ids = m.attr("ids").toTensor();
  e.logits = m.attr("logits").toTensor();
  e.loss = m.attr("loss").toTensor().item<double>();
  for (const auto& kv : m.attr("grads").toGenericDict()) e.grads.emplace_back(kv.key().toStringRef(), kv.value().toTensor());
  return e;
}

// One forward + backward: the logits as the module returns them (a rank's vocabulary slice on a
// rewritten module), the loss and every parameter's gradient by every name the module gives it.
struct Step {
  at::Tensor logits;
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
};

Step run(torch::jit::Module& module, const at::Tensor& ids, bool vocab_parallel) {
  for (const auto& p : module.parameters(/*recurse=*/true)) p.mutable_grad() = at::Tensor();
  c10::IValue out = module.forward({ids});
  at::Tensor logits = out.isTuple() ? out.toTupleRef().elements().at(0).toTensor() : out.toTensor();
  const int64_t s = ids.size(1);
  at::Tensor shifted = logits.narrow(1, 0, s - 1), labels = ids.narrow(1, 1, s - 1).contiguous();
  at::Tensor loss = vocab_parallel ? autotp::vocab_parallel_cross_entropy(shifted, labels, -100, "tp", 2).mean()
                                   : at::cross_entropy_loss(shifted.reshape({-1, shifted.size(-1)}), labels.reshape({-1}));
  torch::autograd::backward({loss});
  Step r{logits.detach(), loss.item<double>(), {}};
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (p.value.grad().defined()) r.grads[p.name] = p.value.grad().detach();
  return r;
}

// `floor`: a gradient is judged against its own scale but never less than a thousandth of the
// model's largest gradient — OPT's k_proj bias has an analytically zero gradient (softmax ignores a
// shift shared by all keys) that holds only rounding, ~2e-11, where any ratio is noise.
double rel(const at::Tensor& got, const at::Tensor& ref, double floor = 0) {
  if (got.sizes() != ref.sizes()) return std::numeric_limits<double>::infinity();
  const double scale = std::max(ref.to(at::kDouble).abs().max().item<double>(), floor);
  const double diff = (got.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>();
  return diff / scale;
}

// The worst error of each quantity; the worst gradient's name.
struct Errors {
  double logits = 0, loss = 0, grads = 0;
  std::string worst;
  void grad(const std::string& name, double e) {
    if (e >= grads) grads = e, worst = name;
  }
};

void expect_within(const Errors& e, const std::string& what) {
  EXPECT_LE(e.logits, kTolerance) << what << " logits";
  EXPECT_LE(e.loss, kTolerance) << what << " loss";
  EXPECT_LE(e.grads, kTolerance) << what << " gradient of " << e.worst;
  auto sci = [](double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3e", v);
    return std::string(buf);
  };
  // In the --gtest_output=xml report: the measured errors.
  testing::Test::RecordProperty(what + "_logits", sci(e.logits));
  testing::Test::RecordProperty(what + "_loss", sci(e.loss));
  testing::Test::RecordProperty(what + "_grads", sci(e.grads) + " " + e.worst);
}

// Runs fn(rank) on `tp` threads, each with its own gloo mesh (tp ranks, dp 1); no rank may fail.
template <typename Fn>
void on_ranks(int tp, Fn fn) {
  auto errors = autotp_test::run_ranks(tp, tp, [&](int r, autotp::Mesh&) { fn(r); });
  for (int r = 0; r < tp; ++r) ASSERT_EQ(errors[r], "") << "rank " << r;
}

class EagerReference : public testing::TestWithParam<std::string> {};

// Attention sites use_sdpa replaces per fixture: every layer (2) where the model's attention is
// Hugging Face's eager_attention_forward shape (q·kᵀ times a constant + a causal mask built from
// sizes, softmax, ·v); 0 where it is another shape, which stays as traced (Gemma-2's soft-capping,
// GPT-2's scale divided by a tensor, Bloom's ALiBi, and the rest with their own attention code).
const std::map<std::string, int> kSdpaSites = {
    {"llama_mha", 2},     {"llama_gqa", 2},    {"llama_tied", 2},    {"qwen2", 2},         {"mistral", 2},
    {"qwen3", 2},         {"qwen3_tied", 2},   {"llama_vocab251", 2}, {"llama_gqa_bf16", 2}, {"zoo_llama", 2},
    {"zoo_mistral", 2},   {"zoo_mixtral", 2},  {"zoo_qwen2", 2},     {"zoo_qwen3", 2},     {"zoo_gemma", 2},
    {"zoo_phi", 2},       {"zoo_phi3", 2},     {"zoo_olmo2", 2},     {"zoo_cohere", 2},    {"zoo_granite", 2},
    {"zoo_gpt_neox", 2},  {"zoo_opt", 2},      {"zoo_gptj", 2},      {"zoo_starcoder2", 2}, {"zoo_stablelm", 0},
    {"zoo_gemma2", 0},    {"zoo_falcon", 0},   {"zoo_gpt2", 0},      {"zoo_codegen", 0},   {"zoo_gpt_bigcode", 0},
    {"zoo_bloom", 0},     {"qwen2_kv2x3", 2}};

// The archive (with its eager attention made scaled_dot_product_attention when `sdpa`), unsharded
// and at tp=2, against transformers' eager model: logits, loss and every gradient within 1e-5.
void check_against_eager(const std::string& name, bool sdpa) {
  const Eager eager = load_eager(name);
  const auto entry = manifest().at(name);
  const int64_t vocab = entry.at("vocab");
  // Not the shape the archive was traced with: batch and sequence both differ.
  ASSERT_EQ(eager.ids.dim(), 2);
  EXPECT_NE(eager.ids.size(0), entry.at("batch").get<int64_t>());
  EXPECT_NE(eager.ids.size(1), entry.at("seq").get<int64_t>());
  EXPECT_EQ(eager.logits.sizes(), (std::vector<int64_t>{eager.ids.size(0), eager.ids.size(1), vocab}));

  torch::jit::Module original = autotp::load_model(fixture(name));
  if (sdpa) {
    ASSERT_TRUE(kSdpaSites.count(name)) << name << ": how many sites should use_sdpa replace?";
    EXPECT_EQ(autotp::use_sdpa(original), kSdpaSites.at(name));
  }
  // Every parameter of the archive has a gradient in the file, once per tensor (a tied weight's
  // other names point at a tensor the file lists).
  std::map<std::string, const at::Tensor*> eager_grad;
  for (const auto& [n, g] : eager.grads) eager_grad[n] = &g;
  std::map<const void*, std::string> listed;
  for (const auto& p : original.named_parameters(true))
    if (eager_grad.count(p.name)) listed[p.value.unsafeGetTensorImpl()] = p.name;
  EXPECT_EQ(listed.size(), eager.grads.size()) << "the file lists a gradient the archive has no parameter for";
  for (const auto& p : original.named_parameters(true))
    EXPECT_TRUE(listed.count(p.value.unsafeGetTensorImpl())) << p.name << " has no eager gradient";

  double floor = 0;
  for (const auto& [n, g] : eager.grads) floor = std::max(floor, 1e-3 * g.abs().max().item<double>());

  // ---- the unsharded archive ----
  {
    Step s = run(original, eager.ids, /*vocab_parallel=*/false);
    Errors e;
    e.logits = rel(s.logits, eager.logits);
    e.loss = std::abs(s.loss - eager.loss) / std::abs(eager.loss);
    for (const auto& [n, g] : eager.grads) {
      auto it = s.grads.find(n);
      e.grad(n, it == s.grads.end() ? std::numeric_limits<double>::infinity() : rel(it->second, g, floor));
    }
    expect_within(e, "unsharded");
  }

  // ---- tp=2: the rank modules, ranks as threads ----
  const int tp = 2;
  const autotp::TpPlan plan = autotp::plan_model(original, tp, name);
  std::vector<torch::jit::Module> ranks;
  for (int r = 0; r < tp; ++r) ranks.push_back(autotp::rewrite(original, plan, r));
  ASSERT_GT(autotp::rewrite_info(ranks[0]).vocab, 0) << "the logits should leave the rank modules vocab-split";
  std::vector<Step> steps(tp);
  on_ranks(tp, [&](int r) { steps[r] = run(ranks[r], eager.ids, /*vocab_parallel=*/true); });
  if (testing::Test::HasFatalFailure()) return;

  std::map<std::string, const autotp::ParamPlan*> planned;
  for (const auto& p : plan.parameters) {
    planned[p.name] = &p;
    for (const auto& a : p.aliases) planned[a] = &p;
  }
  Errors e;
  // The vocabulary slices in rank order, the padding columns (a vocabulary tp does not divide) off.
  std::vector<at::Tensor> slices;
  for (const auto& s : steps) slices.push_back(s.logits);
  e.logits = rel(at::cat(slices, -1).narrow(-1, 0, vocab), eager.logits);
  for (const auto& s : steps) e.loss = std::max(e.loss, std::abs(s.loss - eager.loss) / std::abs(eager.loss));
  for (const auto& [n, g] : eager.grads) {
    ASSERT_TRUE(planned.count(n)) << n << " is not in the plan";
    const autotp::ParamPlan& p = *planned.at(n);
    std::vector<at::Tensor> parts;
    for (const auto& s : steps)
      if (auto it = s.grads.find(n); it != s.grads.end()) parts.push_back(it->second);
    double err = std::numeric_limits<double>::infinity();  // a rank without this gradient
    if (parts.size() == steps.size() && p.split_dim >= 0) {
      err = rel(autotp::assemble(parts, p), g, floor);
    } else if (parts.size() == steps.size()) {
      err = 0;
      for (const auto& replica : parts) err = std::max(err, rel(replica, g, floor));  // every replica whole
    }
    e.grad(n, err);
  }
  expect_within(e, "tp2");
}

TEST_P(EagerReference, UnshardedAndTp2MatchTheHuggingFaceEagerModel) { check_against_eager(GetParam(), false); }
// use_sdpa (passes/sdpa.cpp) proven in fp32 on every traced fixture, unsharded and at tp=2.
TEST_P(EagerReference, WithSdpaUnshardedAndTp2MatchTheHuggingFaceEagerModel) { check_against_eager(GetParam(), true); }

INSTANTIATE_TEST_SUITE_P(Traced, EagerReference, testing::ValuesIn(kFixtures),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

// Every traced fixture in the manifest has its eager reference and is in the list above, but
// smollm2 (135M parameters: its gradients alone would be 540 MB).
TEST(EagerReferenceFiles, EveryTracedFixtureHasOne) {
  const nlohmann::json fixtures = manifest();
  std::vector<std::string> traced;
  for (const auto& [name, entry] : fixtures.items())
    if (entry.at("export") == "trace" && name != "smollm2") traced.push_back(name);
  std::vector<std::string> listed = kFixtures;
  std::sort(traced.begin(), traced.end());
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(traced, listed);
  for (const auto& name : kFixtures) EXPECT_TRUE(std::filesystem::exists(eager_path(name))) << eager_path(name);
}

}  // namespace
