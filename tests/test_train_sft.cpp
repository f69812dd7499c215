// Instruction tuning through `autotp train` (tp 2 x dp 2 under torchrun) against a hand computation
// in this process: examples of different prompt and answer lengths (padded, one truncated), the loss
// the mean cross-entropy over answer tokens of the whole global batch, and the held-out eval loss.
// The reference builds its inputs and labels from the example vectors the test wrote, not through
// TokenData, and runs the original TorchScript module with at::cross_entropy_loss.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>
#include <torch/nn/utils/clip_grad.h>

#include "autotp/passes.h"
#include "fixtures.h"
#include "runtime/token_data.h"

using autotp_test::fixture;
using autotp_test::run_command;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kSeq = 16, kVocab = 256, kPad = 0;

struct Example {
  std::vector<int64_t> tokens;
  int64_t prompt = 0;  // the first `prompt` tokens are not trained on
};

// Prompt and answer lengths vary so micro-batches count different numbers of answer tokens; example
// 3 is longer than kSeq + 1 (cut), the others shorter (padded).
std::vector<Example> examples(int n, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<Example> out;
  for (int i = 0; i < n; ++i) {
    const int64_t prompt = 2 + (i * 5) % 9, answer = 1 + (i * 3) % 7 + (i == 3 ? 12 : 0);
    at::Tensor t = at::randint(1, kVocab, {prompt + answer}, gen, at::kLong);
    out.push_back({std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()), prompt});
  }
  return out;
}

void write_examples(const std::string& path, const std::vector<Example>& ex) {
  autotp::TokenFileV2 f;
  f.vocab = kVocab;
  f.pad_id = kPad;
  f.example_offsets.push_back(0);
  for (const auto& e : ex) {
    for (size_t j = 0; j < e.tokens.size(); ++j) {
      f.tokens.push_back(e.tokens[j]);
      f.mask.push_back(static_cast<int64_t>(j) >= e.prompt ? 1 : 0);
    }
    f.example_offsets.push_back(static_cast<int64_t>(f.tokens.size()));
  }
  autotp::write_token_file(path, f);
}

// Inputs [n, kSeq] and labels (-100 on prompt and padding) by the definition: input = tokens
// [0, S), label j = token j + 1 when it is an answer token.
std::pair<at::Tensor, at::Tensor> rows(const std::vector<Example>& ex, size_t first, size_t count) {
  at::Tensor input = at::full({static_cast<int64_t>(count), kSeq}, kPad, at::kLong);
  at::Tensor labels = at::full({static_cast<int64_t>(count), kSeq}, -100, at::kLong);
  for (size_t r = 0; r < count; ++r) {
    const Example& e = ex[first + r];
    for (int64_t j = 0; j < kSeq && j < static_cast<int64_t>(e.tokens.size()); ++j) {
      input[r][j] = e.tokens[j];
      if (j + 1 < static_cast<int64_t>(e.tokens.size()) && j + 1 >= e.prompt) labels[r][j] = e.tokens[j + 1];
    }
  }
  return {input, labels};
}

std::string config(const std::string& dir, double lr) {
  const std::string p = dir + "/c.json";
  std::ofstream(p) << R"({"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": )" << lr << R"(, "weight_decay": 0.0}},
    "zero_optimization": {"stage": 1}, "tensor_parallel": {"autotp_size": 2}, "gradient_clipping": 0, "seed": 3})";
  return p;
}

TEST(TrainSft, LossIsTheMeanOverAnswerTokensOfTheGlobalBatchAndEvalIsHeldOut) {
  const std::string dir = testing::TempDir() + "autotp_sft_" + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::vector<Example> train = examples(8, 1), held_out = examples(5, 2);
  write_examples(dir + "/train.tokens", train);
  write_examples(dir + "/eval.tokens", held_out);
  // lr 1e-30: the update is far below an fp32 unit of every weight, so the eval after step 1 sees
  // the untrained model (and step 1's gradient norm is still reported).
  auto r = run_command(std::string(AUTOTP_VENV_BIN) + "/torchrun --standalone --nproc_per_node 4 --no-python " + AUTOTP_CLI +
                       " train --config " + config(dir, 1e-30) + " --model " + fixture("llama_gqa") + " --data " + dir +
                       "/train.tokens --eval-data " + dir + "/eval.tokens --seq " + std::to_string(kSeq) +
                       " --steps 1 --no-shuffle --metrics " + dir + "/m.jsonl");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("1 of 8 examples are longer than --seq 16"), std::string::npos) << r.out;
  std::vector<nlohmann::json> lines;
  std::ifstream in(dir + "/m.jsonl");
  for (std::string l; std::getline(in, l);) lines.push_back(nlohmann::json::parse(l));
  ASSERT_EQ(lines.size(), 3u) << "eval at step 0, step 1, eval at step 1";
  const nlohmann::json step1 = lines[1];

  // The single process: all 8 samples (sample g = example g without shuffling) in one forward.
  auto module = autotp::load_model(fixture("llama_gqa"));
  auto [input, labels] = rows(train, 0, 8);
  at::Tensor logits = autotp::logits_of(module.forward({input})).reshape({-1, kVocab});
  at::Tensor per_token = at::cross_entropy_loss(logits, labels.reshape({-1}), {}, at::Reduction::None, -100);
  const int64_t counted = labels.ne(-100).sum().item<int64_t>();
  at::Tensor loss = per_token.sum() / static_cast<double>(counted);
  torch::autograd::backward({loss});
  std::vector<at::Tensor> params;
  for (const auto& p : module.parameters(true)) params.push_back(p);
  const double norm = torch::nn::utils::clip_grad_norm_(params, 1e30);

  const double got = step1.at("loss");
  EXPECT_LE(std::abs(got - loss.item<double>()) / loss.item<double>(), 1e-5) << got << " vs " << loss.item<double>();
  EXPECT_EQ(step1.at("loss_tokens").get<int64_t>(), counted);
  EXPECT_LE(std::abs(step1.at("grad_norm").get<double>() - norm) / norm, 1e-4) << "the gradient of that loss";
  // The test can tell: the mean of the four micro-batch means (what a per-micro-batch mean gives)
  // is another number.
  double mean_of_means = 0;
  for (int mb = 0; mb < 4; ++mb) {
    at::Tensor l = labels.narrow(0, 2 * mb, 2).reshape({-1});
    mean_of_means += per_token.narrow(0, 2 * mb * kSeq, 2 * kSeq).sum().item<double>() / l.ne(-100).sum().item<double>() / 4;
  }
  EXPECT_GT(std::abs(mean_of_means - loss.item<double>()) / loss.item<double>(), 1e-3);

  // Held-out: the mean over every answer token of the 5 eval examples (2 on DP rank 0, 3 on 1).
  auto [ein, elab] = rows(held_out, 0, 5);
  at::Tensor el = autotp::logits_of(module.forward({ein})).reshape({-1, kVocab});
  const double want = at::cross_entropy_loss(el, elab.reshape({-1}), {}, at::Reduction::Mean, -100).item<double>();
  for (int i : {0, 2}) {
    EXPECT_EQ(lines[i].at("step").get<int64_t>(), i / 2);
    const double eval = lines[i].at("eval_loss");
    EXPECT_LE(std::abs(eval - want) / want, 1e-5) << eval << " vs " << want;
    EXPECT_DOUBLE_EQ(lines[i].at("eval_perplexity").get<double>(), std::exp(eval));
    EXPECT_EQ(lines[i].at("eval_tokens").get<int64_t>(), elab.ne(-100).sum().item<int64_t>());
  }
  EXPECT_NE(r.out.find("eval  step 1  loss"), std::string::npos) << r.out;
  fs::remove_all(dir);
}

}  // namespace
