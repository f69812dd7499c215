// Distributed training against a single-process reference. `autotp train` runs under torchrun
// (real processes, gloo, torchrun's TCPStore) for (tp, dp) in (1,1) (2,1) (1,2) (2,2) (4,1); the
// reference is the original TorchScript module trained in this process with LibTorch's own
// torch::optim::AdamW and torch::nn::utils::clip_grad_norm_, DeepSpeed's own scheduler's learning
// rates (tests/deepspeed/lr_schedule.py), on the same global batches read from the token file's
// bytes by the documented layout: no autotp code (TokenData, lr_for_update) in the reference.
// Asserted: the loss of every one of 20 steps within 1e-4 relative, the learning rate of every step
// DeepSpeed's, the per-rank optimizer state exactly 12·ceil(Ψ_rank/dp) bytes, and the exact
// data-parallel bytes of every step. The self-checks: the sharded-vs-unsharded check before step 1
// (verify_rank on deliberately broken rank modules, ranks as threads) and the replica checksum
// (check_tp_replicas on replicas that differ).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/autotp.h"
#include "autotp/passes.h"
#include "autotp/verify.h"
#include "fixtures.h"
#include "ranks.h"
#include "runtime/config.h"
#include "runtime/token_data.h"
#include "runtime/trainer.h"

using autotp_test::fixture;
using autotp_test::run_command;

namespace {

constexpr int64_t kSteps = 20, kSeq = 16, kMicro = 2, kAccum = 2;
const std::string kModel = "llama_gqa";

const char* kAdamW = R"({"type": "AdamW", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}})";

std::string config_text(int tp, int stage = 1, const std::string& optimizer = kAdamW) {
  return R"({
    // fp32, AdamW with decay, linear warm-up, clipping that bites in the first steps
    "train_micro_batch_size_per_gpu": )" + std::to_string(kMicro) + R"(,
    "gradient_accumulation_steps": )" + std::to_string(kAccum) + R"(,
    "optimizer": )" + optimizer + R"(,
    "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 1e-4, "warmup_max_lr": 3e-3,
                                                 "warmup_num_steps": 5, "warmup_type": "linear"}},
    "zero_optimization": {"stage": )" + std::to_string(stage) + R"(},
    "tensor_parallel": {"autotp_size": )" + std::to_string(tp) + R"(},
    "gradient_clipping": 1.0,
    "steps_per_print": 5,
    "seed": 7
  })";
}

// A learnable stream over the fixture's vocabulary: 16 random phrases of 4-11 ids, repeated.
std::vector<int64_t> synthetic_tokens(int64_t vocab, int64_t n) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  std::vector<std::vector<int64_t>> phrases;
  for (int i = 0; i < 16; ++i) {
    auto len = at::randint(4, 12, {1}, gen, at::kLong).item<int64_t>();
    auto p = at::randint(vocab, {len}, gen, at::kLong);
    phrases.emplace_back(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + len);
  }
  std::vector<int64_t> out;
  while (static_cast<int64_t>(out.size()) < n) {
    const auto& p = phrases[at::randint(16, {1}, gen, at::kLong).item<int64_t>()];
    out.insert(out.end(), p.begin(), p.end());
  }
  out.resize(n);
  return out;
}

struct Workspace {
  std::string dir, data, config;
};

Workspace workspace(int tp, int dp, const std::string& model = kModel) {
  Workspace w;
  w.dir = testing::TempDir() + "autotp_train_" + std::to_string(tp) + "x" + std::to_string(dp) + "_" + std::to_string(getpid());
  std::filesystem::create_directories(w.dir);
  w.data = w.dir + "/data.tokens";
  const int64_t vocab = autotp_test::config_of(model).vocab;
  autotp::write_token_file(w.data, synthetic_tokens(vocab, 4096), vocab);
  w.config = w.dir + "/config.json";
  std::ofstream(w.config) << config_text(tp);
  return w;
}

// `autotp train ARGS` on `nproc` processes under torchrun.
autotp_test::CliRun torchrun_train(int nproc, const std::string& args) {
  return run_command(std::string(AUTOTP_VENV_BIN) + "/torchrun --standalone --nproc_per_node " + std::to_string(nproc) +
                     " --no-python " + AUTOTP_CLI + " train --no-shuffle " + args);
}

// The --metrics file: one JSON object per step.
std::vector<nlohmann::json> read_metrics(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// The token file's ids, decoded here from its bytes (ATPTOKS1, u32 width, u32 0, u64 count, u64
// vocab, then little-endian ids; runtime/token_data.h) and not through TokenData, so a reader bug
// cannot hide in the reference.
std::vector<int64_t> read_token_ids(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto little_endian = [&](size_t at, size_t width) {
    uint64_t v = 0;
    for (size_t b = width; b-- > 0;) v = v << 8 | bytes.at(at + b);
    return v;
  };
  // A malformed file throws: gtest fails the test with the message, and nothing reads past the end.
  if (bytes.size() < 32 || std::string(bytes.begin(), bytes.begin() + 8) != "ATPTOKS1")
    throw std::runtime_error(path + ": no ATPTOKS1 header");
  const size_t width = little_endian(8, 4), n = little_endian(16, 8);
  if ((width != 2 && width != 4) || bytes.size() != 32 + n * width)
    throw std::runtime_error(path + ": " + std::to_string(bytes.size()) + " bytes do not hold " + std::to_string(n) +
                             " ids of " + std::to_string(width) + " bytes");
  std::vector<int64_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = static_cast<int64_t>(little_endian(32 + i * width, width));
  return ids;
}

// The micro-batch [kMicro, kSeq + 1] of DP rank j, accumulation step k of step t, as README's "Data"
// defines it: global samples ((t·GA + k)·dp + j)·micro + i, sample s being ids [s·S, s·S + S + 1)
// and the (N - 1) / S whole samples wrapping around.
at::Tensor micro_batch(const std::vector<int64_t>& ids, int64_t t, int64_t k, int64_t j, int64_t dp) {
  const int64_t whole = (static_cast<int64_t>(ids.size()) - 1) / kSeq;
  at::Tensor out = at::empty({kMicro, kSeq + 1}, at::kLong);
  for (int64_t i = 0; i < kMicro; ++i) {
    const int64_t sample = (((t * kAccum + k) * dp + j) * kMicro + i) % whole;
    for (int64_t p = 0; p <= kSeq; ++p) out[i][p] = ids[sample * kSeq + p];
  }
  return out;
}

// DeepSpeed's own learning rate for steps 1..steps of each config file (argument CONFIG or
// CONFIG:DP), from tests/deepspeed/lr_schedule.py: its WarmupLR / WarmupDecayLR / WarmupCosineLR
// stepped after each optimizer step as DeepSpeedEngine steps them. Not autotp's lr_for_update.
std::map<std::string, std::vector<double>> deepspeed_lrs(const std::vector<std::string>& configs, int64_t steps) {
  std::string command = std::string(AUTOTP_VENV_BIN) + "/python " + AUTOTP_SOURCE_DIR + "/tests/deepspeed/lr_schedule.py " +
                        std::to_string(steps);
  for (const auto& c : configs) command += " " + c;
  auto r = run_command(command);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  // The JSON is the last line: DeepSpeed's logger prints its warnings on stdout too.
  std::string last = r.out.substr(0, r.out.find_last_not_of('\n') + 1);
  last = last.substr(last.find_last_of('\n') + 1);
  return nlohmann::json::parse(last).get<std::map<std::string, std::vector<double>>>();
}

struct Reference {
  std::vector<double> loss, grad_norm, lr;  // per step; the norm before clipping
  std::map<std::string, at::Tensor> weights;  // every parameter after the last step, by name
};

// The single-process reference: every step trains on all dp × accumulation micro-batches at once,
// read from the token file's bytes with DeepSpeed's learning rates (neither through autotp's code).
Reference reference_run(const Workspace& w, int dp, const std::string& model = kModel, const std::string& text = config_text(1)) {
  autotp::ConfigOverrides o;
  o.world_size = dp;  // tp 1 in the reference; dp only sets which samples form a global batch
  autotp::TrainConfig cfg = autotp::parse_config_text(text, "reference", o);
  const std::string config_path = w.dir + "/reference.json";
  std::ofstream(config_path) << text;
  const std::string ds_case = config_path + ":" + std::to_string(dp);
  const std::vector<double> lrs = deepspeed_lrs({ds_case}, kSteps)[ds_case];
  EXPECT_EQ(static_cast<int64_t>(lrs.size()), kSteps);
  auto module = autotp::load_model(fixture(model));
  module.train();
  std::vector<at::Tensor> params;
  std::set<const void*> seen;  // a tied weight is one tensor under two names: one optimizer entry
  for (const auto& p : module.parameters(true))
    if (seen.insert(p.unsafeGetTensorImpl()).second) params.push_back(p);
  // LibTorch's own optimizers: AdamW (decoupled decay), or Adam (L2) for "Adam" with adam_w_mode false,
  // in two groups as transformers' Trainer builds them: weight decay on matrices, none on norm weights
  // and biases (named here by what they are in these models, not by autotp's shape rule).
  std::vector<at::Tensor> decay, no_decay;
  for (const auto& p : params) {
    bool is_norm_or_bias = false;
    for (const auto& np : module.named_parameters(true))
      if (np.value.is_same(p))
        is_norm_or_bias = np.name.find("norm") != std::string::npos || np.name.find("bias") != std::string::npos;
    (is_norm_or_bias ? no_decay : decay).push_back(p);
  }
  std::unique_ptr<torch::optim::Optimizer> adamw;
  auto groups = [&](auto make) {
    std::vector<torch::optim::OptimizerParamGroup> g;
    g.emplace_back(decay, make(cfg.optimizer.weight_decay));
    if (!no_decay.empty()) g.emplace_back(no_decay, make(0.0));
    return g;
  };
  if (cfg.optimizer.decoupled)
    adamw = std::make_unique<torch::optim::AdamW>(groups([&](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(cfg.optimizer.lr)
                                                              .betas({cfg.optimizer.beta1, cfg.optimizer.beta2})
                                                              .eps(cfg.optimizer.eps)
                                                              .weight_decay(wd));
    }));
  else
    adamw = std::make_unique<torch::optim::Adam>(groups([&](double wd) {
      return std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(cfg.optimizer.lr)
                                                             .betas({cfg.optimizer.beta1, cfg.optimizer.beta2})
                                                             .eps(cfg.optimizer.eps)
                                                             .weight_decay(wd));
    }));
  const std::vector<int64_t> ids = read_token_ids(w.data);
  Reference ref;
  ref.lr = lrs;
  for (int64_t step = 0; step < kSteps; ++step) {
    for (auto& g : adamw->param_groups()) g.options().set_lr(lrs.at(step));
    adamw->zero_grad();
    at::Tensor total = at::zeros({}, at::kFloat);
    for (int64_t j = 0; j < dp; ++j) {
      for (int64_t k = 0; k < kAccum; ++k) {
        at::Tensor batch = micro_batch(ids, step, k, j, dp);
        at::Tensor logits = autotp::logits_of(module.forward({batch.narrow(1, 0, kSeq)}));
        total = total + at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), batch.narrow(1, 1, kSeq).reshape({-1}));
      }
    }
    total = total / static_cast<double>(dp * kAccum);
    torch::autograd::backward({total});
    ref.grad_norm.push_back(torch::nn::utils::clip_grad_norm_(params, cfg.gradient_clipping));
    adamw->step();
    ref.loss.push_back(total.item<double>());
  }
  for (const auto& p : module.named_parameters(true)) ref.weights[p.name] = p.value.detach().clone();
  return ref;
}

// lr_for_update, the trainer's learning rate for update n (0-based), is DeepSpeed's own scheduler's
// for step n + 1 (tests/deepspeed/lr_schedule.py), for every schedule, log and linear warm-up, the
// warm-up of 1 that DeepSpeed raises to 2, DeepSpeed's defaults, and steps past total_num_steps.
TEST(TrainSchedule, LrForUpdateIsDeepSpeedsForEverySchedule) {
  const std::vector<std::string> schedulers = {
      "",  // none: optimizer.params.lr throughout
      R"({"type": "WarmupLR", "params": {"warmup_min_lr": 1e-4, "warmup_max_lr": 3e-3, "warmup_num_steps": 5,
                                          "warmup_type": "linear"}})",
      R"({"type": "WarmupLR", "params": {"warmup_num_steps": 8}})",
      R"({"type": "WarmupLR", "params": {"warmup_min_lr": 1e-4, "warmup_num_steps": 1, "warmup_type": "linear"}})",
      R"({"type": "WarmupDecayLR", "params": {"total_num_steps": 20, "warmup_min_lr": 1e-5, "warmup_num_steps": 6}})",
      R"({"type": "WarmupDecayLR", "params": {"total_num_steps": 12, "warmup_max_lr": 2e-3, "warmup_num_steps": 4,
                                               "warmup_type": "linear"}})",
      R"({"type": "WarmupCosineLR", "params": {"total_num_steps": 20, "warmup_num_steps": 5, "warmup_min_ratio": 0.1,
                                                "warmup_type": "linear"}})",
      R"({"type": "WarmupCosineLR", "params": {"total_num_steps": 14, "warmup_num_steps": 4, "cos_min_ratio": 0.05}})"};
  const int64_t steps = 24;
  const std::string dir = testing::TempDir() + "autotp_schedules_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  std::vector<std::string> paths;
  for (size_t i = 0; i < schedulers.size(); ++i) {
    paths.push_back(dir + "/s" + std::to_string(i) + ".json");
    std::ofstream(paths.back()) << R"({"train_micro_batch_size_per_gpu": 1,
                                      "optimizer": {"type": "AdamW", "params": {"lr": 2e-3}})"
                                << (schedulers[i].empty() ? "" : ", \"scheduler\": " + schedulers[i]) << "}";
  }
  auto theirs = deepspeed_lrs(paths, steps);
  for (size_t i = 0; i < paths.size(); ++i) {
    SCOPED_TRACE(schedulers[i]);
    const autotp::TrainConfig cfg = autotp::load_config(paths[i]);
    const std::vector<double>& want = theirs[paths[i]];
    ASSERT_EQ(static_cast<int64_t>(want.size()), steps);
    for (int64_t n = 0; n < steps; ++n)
      EXPECT_NEAR(autotp::lr_for_update(cfg, n), want[n], 1e-12 * want[n]) << "optimizer step " << n + 1;
  }
  std::filesystem::remove_all(dir);
}

// The largest relative difference between the metrics' loss and the reference's, every step
// (each step above 1e-4 is reported on its own).
double worst_loss_difference(const std::vector<nlohmann::json>& rows, const Reference& ref) {
  double worst = 0;
  for (int64_t s = 0; s < kSteps; ++s) {
    const double got = rows[s].at("loss"), want = ref.loss[s], d = std::abs(got - want) / std::abs(want);
    EXPECT_LE(d, 1e-4) << "step " << s + 1 << ": " << got << " vs " << want;
    worst = std::max(worst, d);
  }
  return worst;
}

struct Mesh2 {
  int tp, dp;
  bool overlap = false;  // zero_optimization.overlap_comm, in buckets of 2000 (reduce) and 5000 (all-gather) elements
};
void PrintTo(const Mesh2& m, std::ostream* os) { *os << "tp=" << m.tp << " dp=" << m.dp << (m.overlap ? " overlap_comm" : ""); }

class TrainMatchesReference : public testing::TestWithParam<Mesh2> {};

TEST_P(TrainMatchesReference, LossEveryStepStateBytesAndDpTraffic) {
  const auto [tp, dp, overlap] = GetParam();
  Workspace w = workspace(tp, dp);
  if (overlap)
    std::ofstream(w.config) << std::regex_replace(config_text(tp), std::regex(R"("zero_optimization": \{"stage": 1\})"),
                                                  R"("zero_optimization": {"stage": 1, "overlap_comm": true, "reduce_bucket_size": 2000, "allgather_bucket_size": 5000})");
  const std::string metrics = w.dir + "/metrics.jsonl";
  auto r = torchrun_train(tp * dp, "--config " + w.config + " --model " + fixture(kModel) + " --data " + w.data + " --steps " +
                                       std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --metrics " + metrics);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  auto rows = read_metrics(metrics);
  ASSERT_EQ(static_cast<int64_t>(rows.size()), kSteps);

  Reference ref = reference_run(w, dp);
  double worst = 0;
  for (int64_t s = 0; s < kSteps; ++s) {
    const double got = rows[s].at("loss"), want = ref.loss[s];
    worst = std::max(worst, std::abs(got - want) / std::abs(want));
    EXPECT_LE(std::abs(got - want) / std::abs(want), 1e-4) << "step " << s + 1 << ": " << got << " vs " << want;
    // The global gradient norm over TP x DP (replicated parameters once) is the single process's.
    const double norm = rows[s].at("grad_norm");
    EXPECT_LE(std::abs(norm - ref.grad_norm[s]) / ref.grad_norm[s], 1e-4) << "step " << s + 1;
    // The learning rate the trainer used is DeepSpeed's for the same step (rounding apart).
    EXPECT_NEAR(rows[s].at("lr").get<double>(), ref.lr[s], 1e-12 * ref.lr[s]) << "step " << s + 1;
  }
  EXPECT_GT(ref.grad_norm.front(), 1.0) << "clipping must bite at least once";
  EXPECT_LT(ref.loss.back(), ref.loss.front() - 0.5) << "the reference itself must learn";
  std::cout << "tp " << tp << " dp " << dp << ": max relative loss difference over " << kSteps << " steps " << worst << "\n";

  // ZeRO-1 state: fp32 master + two moments of this rank's partition of its TP shard.
  const int64_t psi = autotp::inspect(fixture(kModel), tp).bytes.per_rank / 4;  // fp32 elements per TP rank
  const int64_t partition = (psi + dp - 1) / dp;
  EXPECT_EQ(rows.back().at("optimizer_bytes").get<int64_t>(), 12 * partition);
  EXPECT_EQ(rows.back().at("param_bytes").get<int64_t>(), 4 * psi);

  // DP traffic per step: reduce-scatter of the padded fp32 gradients (dp·partition elements), all-gather
  // of the updated partition, one double for the gradient norm and one for the reported loss. With
  // overlap_comm the gradients go as per-bucket reduces during backward: the same bytes, more calls.
  const int64_t per_step = dp == 1 ? 0 : 4 * dp * partition + 4 * partition + 8 + 8;
  EXPECT_EQ(rows.back().at("collectives").at("dp").at("bytes").get<int64_t>(), kSteps * per_step);
  if (overlap) {  // at least one bucket per partition, one all-gather per 5000 / dp elements of a partition
    const int64_t calls = rows.back().at("collectives").at("dp").at("calls").get<int64_t>();
    EXPECT_GE(calls, kSteps * (dp * ((partition + 1999) / 2000) + (partition + 5000 / dp - 1) / (5000 / dp) + 2));
  }
  std::filesystem::remove_all(w.dir);
}

INSTANTIATE_TEST_SUITE_P(Meshes, TrainMatchesReference,
                         testing::Values(Mesh2{1, 1}, Mesh2{2, 1}, Mesh2{1, 2}, Mesh2{2, 2}, Mesh2{4, 1}, Mesh2{2, 2, true}),
                         [](const testing::TestParamInfo<Mesh2>& i) {
                           return "tp" + std::to_string(i.param.tp) + "_dp" + std::to_string(i.param.dp) + (i.param.overlap ? "_overlap" : "");
                         });

// Qwen3 (a norm over head_dim on the split q/k heads): its q_norm/k_norm weights are replicated
// and each TP rank sees only its heads' share of their gradient; the rewrite all-reduces it over TP.
// Trained for 20 steps at tp 2 and 4: the loss follows the single process within 1e-4 every step,
// and after training every replicated parameter is bitwise the same on all TP ranks (without the
// reduce they drift apart by ~0.08 in 5 steps, and the replica checksum stops training).
TEST(Train, Qwen3NormWeightsTrainLikeOneProcessAndStayIdenticalAcrossTp) {
  for (int tp : {2, 4}) {
    SCOPED_TRACE("tp=" + std::to_string(tp));
    Workspace w = workspace(tp, 1);
    const std::string metrics = w.dir + "/metrics.jsonl";
    auto r = torchrun_train(tp, "--config " + w.config + " --model " + fixture("qwen3") + " --data " + w.data + " --steps " +
                                    std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --metrics " + metrics +
                                    " --out " + w.dir + "/out");
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    auto rows = read_metrics(metrics);
    ASSERT_EQ(static_cast<int64_t>(rows.size()), kSteps);
    Reference ref = reference_run(w, 1, "qwen3");
    EXPECT_LE(worst_loss_difference(rows, ref), 1e-4);
    EXPECT_LT(ref.loss.back(), ref.loss.front() - 0.5) << "the reference itself must learn";
    std::vector<torch::jit::Module> ranks;
    for (int k = 0; k < tp; ++k) ranks.push_back(autotp::load_model(w.dir + "/out/rank" + std::to_string(k) + ".pt"));
    const auto split = autotp::rewrite_info(ranks[0]).split;
    int replicated = 0, norms = 0;
    for (const auto& p : ranks[0].named_parameters(true)) {
      if (std::find(split.begin(), split.end(), p.name) != split.end()) continue;
      ++replicated;
      norms += p.name.find("q_norm") != std::string::npos || p.name.find("k_norm") != std::string::npos;
      for (int k = 1; k < tp; ++k)
        for (const auto& q : ranks[k].named_parameters(true))
          if (q.name == p.name) EXPECT_TRUE(at::equal(p.value, q.value)) << p.name << " differs on tp rank " << k;
    }
    EXPECT_EQ(norms, 2 * autotp_test::config_of("qwen3").layers);
    EXPECT_EQ(replicated, 4 * autotp_test::config_of("qwen3").layers + 1);  // 2 layer norms + q/k norms per layer, final norm
    std::filesystem::remove_all(w.dir);
  }
}

// A prime vocabulary (251, tied): padded to a multiple of tp with zero rows whose logits are masked;
// 20 steps at tp 2 and 4 follow the single process within 1e-4, and the trained rank archives hold
// padded rows that are still exactly zero.
TEST(Train, PaddedVocabularyTrainsLikeOneProcess) {
  for (int tp : {2, 4}) {
    SCOPED_TRACE("tp=" + std::to_string(tp));
    Workspace w = workspace(tp, 1, "llama_vocab251");
    const std::string metrics = w.dir + "/metrics.jsonl";
    auto r = torchrun_train(tp, "--config " + w.config + " --model " + fixture("llama_vocab251") + " --data " + w.data +
                                    " --steps " + std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --metrics " +
                                    metrics + " --out " + w.dir + "/out");
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    auto rows = read_metrics(metrics);
    ASSERT_EQ(static_cast<int64_t>(rows.size()), kSteps);
    Reference ref = reference_run(w, 1, "llama_vocab251");
    EXPECT_LE(worst_loss_difference(rows, ref), 1e-4);
    auto last = autotp::load_model(w.dir + "/out/rank" + std::to_string(tp - 1) + ".pt");
    for (const auto& p : last.named_parameters(true))
      if (p.name == "model.embed_tokens.weight") {
        const int64_t local = p.value.size(0), real = 251 - (tp - 1) * local;  // rows of the last rank that are real
        EXPECT_EQ(local, (251 + tp - 1) / tp);
        EXPECT_TRUE(at::equal(p.value.narrow(0, real, local - real), at::zeros({local - real, p.value.size(1)})));
      }
    std::filesystem::remove_all(w.dir);
  }
}

// A tp that divides nothing (issue 13), trained 20 steps against the single process: the loss and
// the gradient norm follow it within 1e-4 every step, and the weights merged back from the ranks'
// --out archives equal its weights within 1e-4 (relative to each tensor's largest entry).
//   llama_gqa tp=3: 4 kv groups cut 2+1+1, the intermediate 128 in blocks of 8 cut 6+5+5;
//   mistral tp=4 (2 kv heads, tp = 2x kv heads): attention kept whole, the MLP 48 features each;
//   smollm2 tp=2 and 4 (real weights, 9 heads, 3 kv heads): kv groups 2+1; attention kept whole.
// One reference run (the config's peak lr replaced by `lr`) against training at each tp.
void expect_trains_like_one_process(const std::string& model, const std::vector<int>& tps, double tolerance,
                                    const std::string& lr = "3e-3", double norm_tolerance = 1e-4, const std::string& extra = "") {
  std::string text = config_text(1);
  for (size_t at = text.find("3e-3"); at != std::string::npos; at = text.find("3e-3", at + lr.size())) text.replace(at, 4, lr);
  Workspace w = workspace(tps.front(), 1, model);
  Reference ref = reference_run(w, 1, model, text);
  EXPECT_LT(ref.loss.back(), ref.loss.front() - 0.5) << "the reference itself must learn";
  for (int tp : tps) {
    SCOPED_TRACE(model + " tp=" + std::to_string(tp));
    std::ofstream(w.config) << std::regex_replace(text, std::regex("\"autotp_size\": 1"), "\"autotp_size\": " + std::to_string(tp));
    const std::string metrics = w.dir + "/metrics" + std::to_string(tp) + ".jsonl", out = w.dir + "/out" + std::to_string(tp);
    auto r = torchrun_train(tp, "--config " + w.config + " --model " + fixture(model) + " --data " + w.data + " --steps " +
                                    std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --metrics " + metrics + " --out " + out + extra);
    ASSERT_EQ(r.status, 0) << r.out << r.err;
    if (extra.find("--sdpa") != std::string::npos)
      EXPECT_NE(r.out.find("sdpa: 2 attention sites now scaled_dot_product_attention(is_causal=True)"), std::string::npos) << r.out;
    auto rows = read_metrics(metrics);
    ASSERT_EQ(static_cast<int64_t>(rows.size()), kSteps);
    double worst = 0, worst_norm = 0;
    for (int64_t s = 0; s < kSteps; ++s) {
      const double d = std::abs(rows[s].at("loss").get<double>() - ref.loss[s]) / std::abs(ref.loss[s]);
      const double n = std::abs(rows[s].at("grad_norm").get<double>() - ref.grad_norm[s]) / ref.grad_norm[s];
      EXPECT_LE(d, tolerance) << "step " << s + 1;
      EXPECT_LE(n, norm_tolerance) << "step " << s + 1;
      worst = std::max(worst, d);
      worst_norm = std::max(worst_norm, n);
    }
    std::vector<torch::jit::Module> ranks;
    for (int t = 0; t < tp; ++t) ranks.push_back(autotp::load_model(out + "/rank" + std::to_string(t) + ".pt"));
    double worst_weight = 0;
    for (const auto& [name, saved] : autotp::merge_ranks(ranks)) {
      const at::Tensor want = ref.weights.at(name);
      ASSERT_EQ(saved.sizes(), want.sizes()) << name;
      const double err = (saved - want).abs().max().item<double>() / want.abs().max().item<double>();
      EXPECT_LE(err, tolerance) << name;
      worst_weight = std::max(worst_weight, err);
    }
    std::cout << model << " tp " << tp << " over " << kSteps << " steps: loss " << worst << ", gradient norm " << worst_norm
              << ", final weights " << worst_weight << " (max relative difference)\n";
  }
  std::filesystem::remove_all(w.dir);
}

TEST(Train, UnevenKvGroupsAndFeatureBlocksTrainLikeOneProcess) { expect_trains_like_one_process("llama_gqa", {3}, 1e-4); }
// kv heads on several ranks (issue 13 item 2): mistral's 2 kv heads on 2 ranks each at tp 4,
// llama_gqa's 4 on 2 ranks each at tp 8, qwen2_kv2x3's 2 on 2 ranks each at tp 4 with its 3 q heads
// per kv head cut 2+1. The gradient norm (within 1e-4 of one process) counts each held kv head
// once: ZeRO's norm weights it 1 / holders.
TEST(Train, KvHeadsOnSeveralRanksTrainLikeOneProcess) {
  expect_trains_like_one_process("mistral", {4}, 1e-4);
  expect_trains_like_one_process("llama_gqa", {8}, 1e-4);
  expect_trains_like_one_process("qwen2_kv2x3", {4}, 1e-4);
}
// --sdpa (passes/sdpa.cpp): the ranks train with scaled_dot_product_attention(is_causal=True) where
// the traced eager attention was; the reference keeps the eager attention.
TEST(Train, SdpaTrainsLikeTheEagerAttention) { expect_trains_like_one_process("qwen2", {2}, 1e-4, "3e-3", 1e-4, " --sdpa"); }

// SmolLM2 (real weights) at tp=2 (kv groups 2+1) and tp=4 (attention whole, MLP 384 each), at a
// fine-tuning lr (1e-4): at the fixtures' 3e-3 its trajectory is chaotic (the gradient norm jumps
// 10x at step 8) and fp32 reordering alone moves it by 1e-2. Loss and final weights within 1e-4;
// the gradient norm within 1e-3, the size of the fp32 reordering noise verify measures on its
// gradients (Verify.SmolLM2AtTp2Uneven). Measured: loss 4.0e-6 / 8.7e-6, gradient norm 2.5e-4 /
// 3.9e-4, weights 1.8e-5 / 2.0e-5 at tp 2 / 4. Heavy (about 5 minutes on 2 cores): `make test-heavy`.
TEST(Heavy, SmolLM2AtTp2And4TrainsLikeOneProcess) { expect_trains_like_one_process("smollm2", {2, 4}, 1e-4, "1e-4", 1e-3); }

// The main job's model (SmolLM2-135M, real pretrained weights, 30 layers) at tp=3 passes the check
// before step 1: its fp32 reordering noise (gradients ~1e-3 off on random tokens) is not a fault.
TEST(Train, PretrainedSmolLM2PassesTheCheckAndTrains) {
  auto r = torchrun_train(3, std::string("--config ") + AUTOTP_SOURCE_DIR + "/configs/smollm2_tp3.json --model " +
                                 fixture("smollm2") + " --data " + AUTOTP_FIXTURES_DIR + "/../data/demo.tokens --steps 1 --seq 16");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("check: sharded vs unsharded on [1, 16]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step 1/1"), std::string::npos) << r.out;
}

// Every architecture of the zoo and the foreign styles trains 5 steps at tp=2 (with the check
// before step 1 and the replica checksum at step 5) and ends with every replicated parameter
// bitwise the same on both TP ranks.
class TrainZoo : public testing::TestWithParam<std::string> {};

TEST_P(TrainZoo, FiveStepsAtTp2KeepReplicasIdentical) {
  const std::string name = GetParam();
  Workspace w = workspace(2, 1);
  auto r = torchrun_train(2, "--config " + w.config + " --model " + fixture(name) + " --data " + w.data +
                                 " --steps 5 --seq 8 --out " + w.dir + "/out");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("check: sharded vs unsharded"), std::string::npos) << r.out;
  auto a = autotp::load_model(w.dir + "/out/rank0.pt"), b = autotp::load_model(w.dir + "/out/rank1.pt");
  const auto split = autotp::rewrite_info(a).split;
  int replicated = 0;
  auto pb = b.named_parameters(true);
  for (const auto& p : a.named_parameters(true)) {
    if (std::find(split.begin(), split.end(), p.name) != split.end()) continue;
    ++replicated;
    for (const auto& q : pb)
      if (q.name == p.name) EXPECT_TRUE(at::equal(p.value, q.value)) << p.name << " differs between the TP ranks";
  }
  EXPECT_GT(replicated, 0);
  std::filesystem::remove_all(w.dir);
}

INSTANTIATE_TEST_SUITE_P(Architectures, TrainZoo,
                         testing::Values("zoo_llama", "zoo_mistral", "zoo_mixtral", "zoo_qwen2", "zoo_qwen3", "zoo_gemma",
                                         "zoo_gemma2", "zoo_phi", "zoo_phi3", "zoo_olmo2", "zoo_stablelm", "zoo_cohere",
                                         "zoo_granite", "zoo_gpt_neox", "zoo_falcon", "zoo_gpt2", "zoo_opt", "zoo_gptj",
                                         "zoo_codegen", "zoo_starcoder2", "zoo_gpt_bigcode", "zoo_bloom", "style_nanogpt",
                                         "style_meta", "style_opaque"),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

// ZeRO stage 0 (state whole on every DP rank, gradients all-reduced) with Adam's L2 decay
// ("Adam", adam_w_mode false) against LibTorch's torch::optim::Adam.
TEST(Train, ZeroStage0WithAdamL2) {
  Workspace w = workspace(1, 2);
  const std::string text = config_text(
      1, 0, R"({"type": "Adam", "params": {"lr": 3e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, "adam_w_mode": false}})");
  std::ofstream(w.config) << text;
  const std::string metrics = w.dir + "/metrics.jsonl";
  auto r = torchrun_train(2, "--config " + w.config + " --model " + fixture(kModel) + " --data " + w.data + " --steps " +
                                std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --metrics " + metrics);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  auto rows = read_metrics(metrics);
  ASSERT_EQ(static_cast<int64_t>(rows.size()), kSteps);
  Reference ref = reference_run(w, 2, kModel, text);
  for (int64_t s = 0; s < kSteps; ++s)
    EXPECT_LE(std::abs(rows[s].at("loss").get<double>() - ref.loss[s]) / ref.loss[s], 1e-4) << "step " << s + 1;
  const int64_t psi = autotp::inspect(fixture(kModel), 1).bytes.per_rank / 4;
  const int64_t padded = (psi + 1) / 2 * 2;
  EXPECT_EQ(rows.back().at("optimizer_bytes").get<int64_t>(), 12 * padded);  // not partitioned
  // One all-reduce of the padded fp32 gradients and the reported loss per step; no norm reduction.
  EXPECT_EQ(rows.back().at("collectives").at("dp").at("bytes").get<int64_t>(), kSteps * (4 * padded + 8));
  std::filesystem::remove_all(w.dir);
}

// bf16 model weights with fp32 masters: parameters take 2 bytes per element, the optimizer state
// stays 12 per owned element, and the loss follows the fp32 single-process reference (the same
// archive, in fp32) within bf16's resolution. Two kinds of model: the scripted reference Llama,
// which reads its dtypes at run time, and a Hugging Face Llama traced in bf16 (load_model makes it
// follow its parameters' dtype: passes/compute_dtype.cpp), which before that failed at step 1.
void expect_bf16_trains_like_fp32(const std::string& model) {
  Workspace w = workspace(2, 2, model);
  std::string text = config_text(2);
  text.replace(text.find("\"seed\""), 0, "\"bf16\": {\"enabled\": true},\n    ");
  std::ofstream(w.config) << text;
  const std::string metrics = w.dir + "/metrics.jsonl";
  auto r = torchrun_train(4, "--config " + w.config + " --model " + fixture(model) + " --data " + w.data + " --steps " +
                                std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --metrics " + metrics);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("bf16"), std::string::npos);
  EXPECT_NE(r.out.find(") ok"), std::string::npos) << "the sharding check ran (in fp32)\n" << r.out;
  auto rows = read_metrics(metrics);
  ASSERT_EQ(static_cast<int64_t>(rows.size()), kSteps);
  const int64_t psi = autotp::inspect(fixture(model), 2).bytes.per_rank / 4;
  EXPECT_EQ(rows.back().at("param_bytes").get<int64_t>(), 2 * psi);
  EXPECT_EQ(rows.back().at("optimizer_bytes").get<int64_t>(), 12 * ((psi + 1) / 2));
  Reference ref = reference_run(w, 2, model);
  double worst = 0;
  for (int64_t s = 0; s < kSteps; ++s)
    worst = std::max(worst, std::abs(rows[s].at("loss").get<double>() - ref.loss[s]) / ref.loss[s]);
  EXPECT_LE(worst, 1e-2);
  EXPECT_GT(worst, 0.0) << "bf16 must round somewhere: the run was not in bf16";
  EXPECT_LT(rows.back().at("loss").get<double>(), rows.front().at("loss").get<double>() - 0.5);
  std::cout << model << " bf16 vs fp32 reference: max relative loss difference " << worst << "\n";
  std::filesystem::remove_all(w.dir);
}

TEST(Train, Bf16WeightsWithFp32Masters) { expect_bf16_trains_like_fp32("ref_script"); }  // measured 1.1e-3
TEST(Train, Bf16OnAHuggingFaceModelTracedInBf16) { expect_bf16_trains_like_fp32("llama_gqa_bf16"); }

// A checkpoint written by --out loads again and holds the trained weights (a trained weight differs
// from the untrained rank module's, same shape).
// The rank archives `--out` writes hold the trained weights: re-assembled from the two shards (by the
// plan, segments and all), every parameter equals the single-process reference after the same 20
// steps within 1e-4 relative — and training moved it, so an untrained or garbage archive fails.
// (Bit for bit would need the same summation order: TP's partial sums reorder fp32 additions.)
TEST(Train, CheckpointHoldsTheTrainedWeights) {
  Workspace w = workspace(2, 1);
  auto r = torchrun_train(2, "--config " + w.config + " --model " + fixture(kModel) + " --data " + w.data + " --steps " +
                                 std::to_string(kSteps) + " --seq " + std::to_string(kSeq) + " --out " + w.dir + "/ckpt");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("step 20/20"), std::string::npos) << r.out;
  std::vector<torch::jit::Module> ranks{autotp::load_model(w.dir + "/ckpt/rank0.pt"), autotp::load_model(w.dir + "/ckpt/rank1.pt")};
  EXPECT_EQ(autotp::rewrite_info(ranks[1]).tp, 2);
  EXPECT_EQ(autotp::rewrite_info(ranks[1]).tp_rank, 1);
  Reference ref = reference_run(w, 1);
  auto original = autotp::load_model(fixture(kModel));
  const autotp::TpPlan plan = autotp::plan_model(original, 2, kModel);
  std::map<std::string, at::Tensor> untrained;
  for (const auto& p : original.named_parameters(true)) untrained[p.name] = p.value.detach();
  double worst = 0;
  int compared = 0;
  for (const auto& pp : plan.parameters) {
    std::vector<at::Tensor> parts;
    for (auto& m : ranks)
      for (const auto& q : m.named_parameters(true))
        if (q.name == pp.name) parts.push_back(q.value.detach());
    ASSERT_EQ(parts.size(), 2u) << pp.name;
    const at::Tensor saved = autotp::assemble(parts, pp), want = ref.weights.at(pp.name);
    ASSERT_EQ(saved.sizes(), want.sizes()) << pp.name;
    const double scale = want.abs().max().item<double>();
    const double err = (saved - want).abs().max().item<double>() / scale;
    const double moved = (want - untrained.at(pp.name)).abs().max().item<double>() / scale;
    EXPECT_LE(err, 1e-4) << pp.name;
    EXPECT_GT(moved, 100 * std::max(err, 1e-7)) << pp.name << ": training must move it far more than the error";
    worst = std::max(worst, err);
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(ref.weights.size()));
  std::cout << "checkpoint vs reference after " << kSteps << " steps: max relative weight difference " << worst << "\n";
  std::filesystem::remove_all(w.dir);
}

// Training from the rank archives `autotp rewrite` wrote (no rank loads the full model) gives the
// same losses as rewriting at start-up, bit for bit; a directory for another tp is one clear line.
TEST(Train, FromRewrittenRankArchives) {
  Workspace w = workspace(2, 1);
  auto rw = run_command(std::string(AUTOTP_CLI) + " rewrite " + fixture(kModel) + " --tp 2 --out " + w.dir + "/ranks");
  ASSERT_EQ(rw.status, 0) << rw.err;
  auto losses = [&](const std::string& model) {
    const std::string metrics = w.dir + "/m.jsonl";
    auto r = torchrun_train(2, "--config " + w.config + " --model " + model + " --data " + w.data + " --steps 5 --seq 16 --metrics " +
                                  metrics);
    EXPECT_EQ(r.status, 0) << r.err;
    std::vector<double> out;
    for (const auto& row : read_metrics(metrics)) out.push_back(row.at("loss"));
    return out;
  };
  auto from_full = losses(fixture(kModel)), from_ranks = losses(w.dir + "/ranks");
  ASSERT_EQ(from_full.size(), 5u);
  EXPECT_EQ(from_full, from_ranks);
  std::ofstream(w.dir + "/tp4.json") << config_text(4);
  auto r = torchrun_train(4, "--config " + w.dir + "/tp4.json --model " + w.dir + "/ranks --data " + w.data + " --steps 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("/ranks: no rank2.pt; write the rank archives with autotp rewrite MODEL.pt --tp 4"), std::string::npos) << r.err;
  std::filesystem::remove_all(w.dir);
}

TEST(Train, BadInputsAreOneLine) {
  Workspace w = workspace(2, 1);
  // A config for tp=2 on one process: the batch arithmetic and autotp_size checks name both sides.
  auto r = run_command(std::string(AUTOTP_CLI) + " train --config " + w.config + " --model " + fixture(kModel) + " --data " + w.data);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("autotp_size"), std::string::npos) << r.err;
  // A token file for another vocabulary.
  autotp::write_token_file(w.dir + "/big.tokens", {1, 2, 300, 4, 5}, 1000);
  std::ofstream(w.dir + "/tp1.json") << config_text(1);
  r = run_command(std::string(AUTOTP_CLI) + " train --config " + w.dir + "/tp1.json --model " + fixture(kModel) + " --data " +
                  w.dir + "/big.tokens");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "autotp: error: " + w.dir + "/big.tokens: tokens were made for a vocabulary of 1000 but the model has 256; "
                   "tokenize with the model's tokenizer\n");
  r = run_command(std::string(AUTOTP_CLI) + " train --config " + w.dir + "/tp1.json --model " + fixture(kModel) + " --data " +
                  w.dir + "/missing.tokens");
  EXPECT_EQ(r.err, "autotp: error: " + w.dir + "/missing.tokens: no such token file; write one with scripts/tokenize_data.py\n");
  // bf16 on a traced Hugging Face graph (its fp32 casts are baked in): the root cause and what to
  // do, on one line, not the interpreter's traceback.
  std::string bf16 = config_text(1);
  bf16.insert(bf16.rfind('}'), R"(, "bf16": {"enabled": true})");
  std::ofstream(w.dir + "/bf16.json") << bf16;
  r = run_command(std::string(AUTOTP_CLI) + " train --config " + w.dir + "/bf16.json --model " + fixture(kModel) + " --data " + w.data +
                  " --steps 1 --seq 8 --no-verify");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "autotp: error: train: step 1: bf16 fails inside the model (expected m1 and m2 to have the same dtype, but got: "
                   "float != c10::BFloat16): a graph traced in fp32 keeps the fp32 casts it was traced with; trace it in "
                   "bf16 (scripts/export_hf.py --dtype bf16) or train it in fp32 (\"bf16\": {\"enabled\": false})\n");
  std::filesystem::remove_all(w.dir);
}

// Ranks as threads (tests/ranks.h).
using autotp_test::run_ranks;

// The parameter `name` of a module (its tensor, shared with the module).
at::Tensor parameter(const torch::jit::Module& m, const std::string& name) {
  for (const auto& p : m.named_parameters(/*recurse=*/true))
    if (p.name == name) return p.value;
  ADD_FAILURE() << "no parameter " << name;
  return {};
}

// The pre-step check's comparison on a rank module whose replicated norm never gets its gradient
// (as when a gradient misses its TP reduction): forward is untouched, so exactly that gradient is
// off, by 1 relative (zero against the reference), and every rank names it.
TEST(TrainCheck, VerifyRankNamesAGradientThatIsMissingOnOneRank) {
  const std::string name = "model.layers.0.input_layernorm.weight";
  const autotp::TpPlan plan = autotp::plan_model(autotp::load_model(fixture(kModel)), 2, kModel);
  std::vector<autotp::VerifyReport> reps(2);
  auto errors = run_ranks(2, 2, [&](int r, autotp::Mesh& mesh) {
    auto original = autotp::load_model(fixture(kModel));  // one per thread: backward writes its .grad
    auto mine = autotp::rewrite(original, plan, r);
    if (r == 1) parameter(mine, name).set_requires_grad(false);
    reps[r] = autotp::verify_rank(original, plan, mine, {1, 8}, 7, mesh);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_FALSE(reps[r].ok());
    EXPECT_LE(reps[r].logits_rel, 1e-5);
    EXPECT_LE(reps[r].loss_rel, 1e-5);
    EXPECT_EQ(reps[r].worst_grad, name);
    EXPECT_EQ(reps[r].failure(), "gradient of " + name + " off by 1.00e+00") << "rank " << r;
    EXPECT_EQ(reps[r].grads_compared, 21);
  }
}

// A replicated parameter corrupted on one rank of one TP group (world 4 = tp 2 x dp 2): every rank
// of both TP groups fails the check alike (the errors are max-reduced over the world), the other
// TP group's own comparison being clean.
TEST(TrainCheck, VerifyRankFailsEveryRankWhenOneReplicaIsCorrupted) {
  const autotp::TpPlan plan = autotp::plan_model(autotp::load_model(fixture(kModel)), 2, kModel);
  std::vector<autotp::VerifyReport> reps(4);
  auto errors = run_ranks(4, 2, [&](int r, autotp::Mesh& mesh) {
    auto original = autotp::load_model(fixture(kModel));
    auto mine = autotp::rewrite(original, plan, mesh.tp_rank());
    if (r == 3) {
      c10::NoGradGuard no_grad;
      parameter(mine, "model.norm.weight").add_(0.5);
    }
    reps[r] = autotp::verify_rank(original, plan, mine, {1, 8}, 7, mesh);
  });
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_FALSE(reps[r].ok()) << "rank " << r;
    EXPECT_GT(reps[r].logits_rel, 1e-2) << "rank " << r;
    EXPECT_EQ(reps[r].failure(), reps[0].failure()) << "rank " << r;
  }
}

// The replica checksum: identical replicas (and split shards that differ, as they should) pass; a
// replicated parameter that differs in one element on one rank, or whose elements trade places
// (same sum), stops training on every rank with one line naming it and the step.
TEST(TrainCheck, ReplicaChecksumNamesTheParameterAndStep) {
  auto params_of = [](int r, const std::string& corrupt) {
    at::Tensor norm = at::linspace(0.5, 1.5, 64, at::kFloat), emb = at::arange(24, at::kFloat).reshape({4, 6});
    if (r == 1 && corrupt == "one") norm[17] += 1e-6;
    if (r == 1 && corrupt == "swap") emb = emb.flatten().flip(0).reshape({4, 6});  // same sum, other order
    return std::vector<autotp::TrainableParam>{{"model.embed_tokens.weight", emb, false},
                                               {"model.layers.0.mlp.up_proj.weight", at::full({8, 4}, float(r)), true},
                                               {"model.norm.weight", norm, false}};
  };
  auto run = [&](const std::string& corrupt) {
    return run_ranks(2, 2, [&](int r, autotp::Mesh& mesh) { autotp::check_tp_replicas(params_of(r, corrupt), mesh.tp_group(), 5); });
  };
  EXPECT_EQ(run(""), std::vector<std::string>(2, ""));
  for (const std::string& e : run("one"))
    EXPECT_EQ(e.substr(0, e.find(" (")), "train: step 5: replicated parameter model.norm.weight differs across the "
                                          "tensor-parallel group");
  for (const std::string& e : run("swap")) {
    EXPECT_NE(e.find("train: step 5: replicated parameter model.embed_tokens.weight differs"), std::string::npos) << e;
    EXPECT_NE(e.find("its gradient was not reduced over TP"), std::string::npos) << e;
  }
}

// `autotp train` from one archive checks itself before step 1 and says so (fp32, [1, 16]: the
// first 16 tokens of a sample's length), the replica checksums at steps 5 and 6 pass, and their
// bytes stay out of the metrics: every step sends the same TP bytes. --no-verify skips the check.
TEST(Train, ChecksTheShardingBeforeStep1) {
  Workspace w = workspace(2, 1);
  const std::string metrics = w.dir + "/metrics.jsonl";
  const std::string args = "--config " + w.config + " --model " + fixture(kModel) + " --data " + w.data + " --seq 16 ";
  auto r = torchrun_train(2, args + "--steps 6 --metrics " + metrics);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(check: sharded vs unsharded on \[1, 16\]: logits (\S+), loss (\S+), grads (\S+) \((\d+) parameters\) ok)")))
      << r.out;
  for (int i = 1; i <= 3; ++i) EXPECT_LE(std::stod(m[i]), 1e-5) << m[0];
  EXPECT_EQ(m[4], "21");
  auto rows = read_metrics(metrics);
  ASSERT_EQ(rows.size(), 6u);
  auto tp_bytes = [&](size_t i) { return rows[i].at("collectives").at("tp").at("bytes").get<int64_t>(); };
  EXPECT_GT(tp_bytes(0), 0);
  for (size_t i = 1; i < rows.size(); ++i) EXPECT_EQ(tp_bytes(i), static_cast<int64_t>(i + 1) * tp_bytes(0)) << "step " << i + 1;

  r = torchrun_train(2, args + "--steps 1 --no-verify");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("check:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("step 1/1"), std::string::npos) << r.out;
  std::filesystem::remove_all(w.dir);
}

}  // namespace
