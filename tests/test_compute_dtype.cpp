// A Hugging Face model traced in bf16 (passes/compute_dtype.cpp): load_model makes it compute the
// fp32 function on its own weights, and set_compute_dtype(bf16) gives back the trace's bf16
// computation op for op. The fp32 side is checked against another archive — llama_gqa, the same
// model traced in fp32 — with its weights rounded to bf16; the bf16 side against the archive as
// torch::jit::load gives it, untouched.
#include <gtest/gtest.h>

#include <map>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/jit/serialization/import.h>

#include "autotp/autotp.h"
#include "autotp/passes.h"
#include "fixtures.h"

using autotp_test::fixture;

namespace {

at::Tensor logits(torch::jit::Module& m, const at::Tensor& ids) {
  at::NoGradGuard no_grad;
  return autotp::logits_of(m.forward({ids}));
}

double rel(const at::Tensor& got, const at::Tensor& want) {
  return (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() / want.to(at::kDouble).abs().max().item<double>();
}

at::Tensor some_ids(int64_t vocab, int64_t batch, int64_t seq) {
  return at::randint(0, vocab, {batch, seq}, at::TensorOptions().dtype(at::kLong).device(at::kCPU)).set_requires_grad(false);
}

TEST(ComputeDtype, Bf16TraceComputesTheFp32FunctionAndItsOwnBf16) {
  at::manual_seed(3);
  const at::Tensor ids = some_ids(256, 3, 12);  // not the traced [2, 8]
  torch::jit::Module raw = torch::jit::load(fixture("llama_gqa_bf16"));
  for (const auto& p : raw.parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);

  torch::jit::Module m = autotp::load_model(fixture("llama_gqa_bf16"));
  ASSERT_TRUE(autotp::follows_parameter_dtype(m));
  // The weights, exactly, in fp32.
  std::map<std::string, at::Tensor> raw_params;
  for (const auto& p : raw.named_parameters()) raw_params[p.name] = p.value;
  for (const auto& p : m.named_parameters()) {
    ASSERT_EQ(p.value.scalar_type(), at::kFloat) << p.name;
    EXPECT_TRUE(at::equal(p.value, raw_params.at(p.name).to(at::kFloat))) << p.name;
  }

  // fp32: the fp32 trace of the same model on the same (rounded) weights.
  torch::jit::Module fp32 = autotp::load_model(fixture("llama_gqa"));
  EXPECT_FALSE(autotp::follows_parameter_dtype(fp32)) << "an fp32 trace's casts cannot be told apart: left as it is";
  {
    at::NoGradGuard no_grad;
    for (const auto& p : fp32.named_parameters()) p.value.copy_(p.value.to(at::kBFloat16).to(at::kFloat));
  }
  const at::Tensor want32 = logits(fp32, ids), got32 = logits(m, ids);
  EXPECT_EQ(got32.scalar_type(), at::kFloat);
  EXPECT_LE(rel(got32, want32), 1e-5);

  // bf16: the archive's own computation, bit for bit.
  autotp::set_compute_dtype(m, at::kBFloat16);
  for (const auto& p : m.parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
  std::map<std::string, at::ScalarType> raw_buffers;
  for (const auto& b : raw.named_buffers()) raw_buffers[b.name] = b.value.scalar_type();
  for (const auto& b : m.named_buffers())  // the rotary table keeps the archive's dtype
    if (b.name != "autotp_compute_dtype") EXPECT_EQ(b.value.scalar_type(), raw_buffers.at(b.name)) << b.name;
  const at::Tensor want16 = logits(raw, ids), got16 = logits(m, ids);
  EXPECT_EQ(got16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(got16, want16)) << "max difference " << (got16 - want16).abs().max().item<double>();
  // And it is bf16, not fp32 relabelled: the two differ by bf16 rounding.
  const double r = rel(got16, got32);
  EXPECT_GT(r, 1e-4);
  EXPECT_LT(r, 5e-2);

  // Back to fp32: the fp32 function again.
  autotp::set_compute_dtype(m, at::kFloat);
  EXPECT_TRUE(at::equal(logits(m, ids), got32));
}

// Saved and loaded again (a rank archive, `autotp rewrite --out`), the module still follows its
// parameters' dtype and is not changed a second time.
TEST(ComputeDtype, SurvivesSaveAndRewrite) {
  torch::jit::Module m = autotp::load_model(fixture("llama_gqa_bf16"));
  const autotp::TpPlan plan = autotp::plan_model(m, 2, "llama_gqa_bf16");
  torch::jit::Module rank = autotp::rewrite(m, plan, 0);
  EXPECT_TRUE(autotp::follows_parameter_dtype(rank));
  const std::string path = testing::TempDir() + "compute_dtype_rank0.pt";
  rank.save(path);
  torch::jit::Module again = autotp::load_model(path);
  EXPECT_TRUE(autotp::follows_parameter_dtype(again));
  EXPECT_FALSE(autotp::follow_parameter_dtype(again));
  for (const auto& p : again.parameters()) EXPECT_EQ(p.scalar_type(), at::kFloat);
  std::remove(path.c_str());
}

// Nothing to do: fp32 traces, scripted code (reads dtypes at run time), an fp32 archive cast to bf16
// after tracing (no dtype argument reads bf16).
TEST(ComputeDtype, LeavesOtherModelsAsTheyAre) {
  for (const char* name : {"llama_gqa", "ref_script", "zoo_gpt2"}) {
    torch::jit::Module m = torch::jit::load(fixture(name));
    EXPECT_FALSE(autotp::follow_parameter_dtype(m)) << name;
    EXPECT_FALSE(autotp::follows_parameter_dtype(m)) << name;
  }
  torch::jit::Module cast = torch::jit::load(fixture("llama_gqa"));
  cast.to(at::kBFloat16);
  EXPECT_FALSE(autotp::follow_parameter_dtype(cast));
  for (const auto& p : cast.parameters()) EXPECT_EQ(p.scalar_type(), at::kBFloat16);
}

}  // namespace
