// `autotp plan` held to what autotp train measures (issue 12, "calibrated, not guessed"): the
// planner's model-state bytes per GPU and its bytes on the wire per GPU per step equal the trainer's
// own accounting exactly, for AutoTP(2)+ZeRO-1 (tp 2 x dp 2) and ZeRO-1 (dp 4) of the llama_gqa
// fixture in fp32 (ranks as threads, real gloo groups). The planner counts what a ring sends; the
// mesh counts what a rank submits (numel x element size), so the test converts each measured
// collective by its kind: all-reduce 2(n-1)/n of the payload, reduce-scatter (n-1)/n of its input,
// all-gather (n-1) x the rank's part. Scalars the planner leaves out (the gradient norm's two
// doubles, the reported loss) and the trainer's self-checks are excluded by site.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>

#include "autotp/autotp.h"
#include "fixtures.h"
#include "ranks.h"
#include "runtime/token_data.h"
#include "runtime/trainer.h"

using autotp_test::fixture;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kSeq = 16, kMicro = 2, kGlobal = 8, kSteps = 2;

// Bytes one rank sends on the wire for its measured collectives of one group, per the ring model.
int64_t wire_bytes(const autotp::Group& g) {
  const int64_t n = g.size();
  int64_t wire = 0;
  for (const auto& [site, c] : g.by_site()) {
    if (site.rfind("train.", 0) == 0 || site == "zero1.grad_norm") continue;  // scalars and self-checks
    if (site == "zero1.reduce_scatter_grads") wire += (n - 1) * c.bytes / n;
    else if (site == "zero1.all_gather_params") wire += (n - 1) * c.bytes;
    else wire += 2 * (n - 1) * c.bytes / n;  // every other site is an all-reduce
  }
  return wire;
}

struct Measured {
  int64_t params = 0, grads = 0, optimizer = 0, wire_per_step = 0;
};

Measured train_in_threads(int tp, int dp, const std::string& dir) {
  const std::string config = dir + "/tp" + std::to_string(tp) + ".json";
  std::ofstream(config) << R"({"train_micro_batch_size_per_gpu": )" << kMicro << R"(, "gradient_accumulation_steps": )"
                        << kGlobal / (kMicro * dp) << R"(, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
      "zero_optimization": {"stage": 1}, "tensor_parallel": {"autotp_size": )" << tp << "}}";
  std::vector<Measured> out(tp * dp);
  auto errors = autotp_test::run_ranks(tp * dp, tp, [&](int rank, autotp::Mesh& mesh) {
    autotp::TrainOptions o;
    o.config_path = config;
    o.model_path = fixture("llama_gqa");
    o.data_path = dir + "/d.tokens";
    o.steps = kSteps;
    o.seq = kSeq;
    o.quiet = true;
    o.verify = false;
    auto rows = autotp::train(o, mesh);
    Measured& m = out[rank];
    m.params = rows.back().param_bytes;
    m.grads = rows.back().grad_bytes;
    m.optimizer = rows.back().optimizer_bytes;
    m.wire_per_step = (wire_bytes(mesh.tp_group()) + wire_bytes(mesh.dp_group())) / kSteps;
  });
  for (const auto& e : errors) EXPECT_EQ(e, "");
  for (const auto& m : out) EXPECT_EQ(m.wire_per_step, out[0].wire_per_step) << "every rank sends alike";
  return out[0];
}

TEST(PlanCalibration, ModelStatesAndWireBytesEqualWhatTrainingMeasures) {
  const std::string dir = testing::TempDir() + "autotp_calibration_" + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int64_t vocab = autotp_test::config_of("llama_gqa").vocab;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  at::Tensor ids = at::randint(vocab, {1025}, gen, at::kLong);
  autotp::write_token_file(dir + "/d.tokens", std::vector<int64_t>(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 1025), vocab);

  const autotp::ModelShape shape = autotp::shape_from_archive(fixture("llama_gqa"), 4);
  autotp::ClusterSpec cluster;
  cluster.name = "test";
  cluster.gpus_per_node = 4;
  cluster.gpu_memory = int64_t{1} << 40;
  cluster.intra_node_bw = cluster.inter_node_bw = 1e9;
  autotp::TrainingSpec training;
  training.seq = kSeq;
  training.micro_batch = kMicro;
  training.global_batch = kGlobal;
  training.bf16 = false;
  const autotp::ClusterPlan plan = autotp::plan_cluster(shape, cluster, training);

  for (auto [name, tp, dp] : std::vector<std::tuple<std::string, int, int>>{{"AutoTP(2)+ZeRO-1", 2, 2}, {"ZeRO-1", 1, 4}}) {
    const autotp::StrategyPlan& s = plan.strategy(name);
    const Measured m = train_in_threads(tp, dp, dir);
    EXPECT_EQ(s.params, m.params) << name;
    EXPECT_EQ(s.grads, m.grads) << name;
    EXPECT_EQ(s.optimizer, m.optimizer) << name;
    EXPECT_EQ(s.intra_node_bytes + s.inter_node_bytes, m.wire_per_step) << name;
    EXPECT_GT(m.wire_per_step, 0) << name;
    std::cout << name << ": params " << m.params << ", grads " << m.grads << ", optimizer " << m.optimizer << " bytes; "
              << m.wire_per_step << " bytes on the wire per step, as planned\n";
  }
  fs::remove_all(dir);
}

}  // namespace
