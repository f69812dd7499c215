// Training config: the shipped configs resolve to exact numbers, every bad fixture reports exactly its
// problems (path + message), and lr_at reproduces DeepSpeed's lr_schedules.py step by step.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autotp/error.h"
#include "runtime/config.h"

using autotp::ConfigOverrides;
using autotp::ConfigProblem;
using autotp::ConfigResult;
using autotp::SchedulerConfig;
using autotp::SchedulerType;
using autotp::TrainConfig;
using autotp::WarmupType;

namespace {

std::string repo(const std::string& relative) { return std::string(AUTOTP_SOURCE_DIR) + "/" + relative; }

ConfigOverrides world(int64_t w) {
  ConfigOverrides o;
  o.world_size = w;
  return o;
}

TrainConfig shipped(const std::string& name, const ConfigOverrides& o) {
  ConfigResult r = autotp::validate_config_file(repo("configs/" + name), o);
  EXPECT_TRUE(r.ok()) << r.message();
  return r.config;
}

std::vector<ConfigProblem> problems_of(const std::string& text, const ConfigOverrides& o = {}) {
  return autotp::validate_config_text(text, "t.json", o).problems;
}

// The smallest valid config, for tests that vary one key.
const std::string kMinimal = R"({"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})";

std::string with(const std::string& extra) { return kMinimal.substr(0, kMinimal.size() - 1) + ", " + extra + "}"; }

}  // namespace

// ---- shipped configs -------------------------------------------------------------------------------

TEST(Config, ShippedTp2ResolvesAtWorld4) {
  TrainConfig c = shipped("zero1_tp2.json", world(4));
  EXPECT_EQ(c.tp, 2);
  EXPECT_EQ(c.world_size, 4);
  EXPECT_EQ(c.dp, 2);
  EXPECT_EQ(c.micro_batch, 4);
  EXPECT_EQ(c.grad_accum, 2);
  EXPECT_EQ(c.train_batch, 16);  // 4 x 2 x dp 2: distinct samples per optimizer step
  EXPECT_EQ(c.optimizer.type, "AdamW");
  EXPECT_TRUE(c.optimizer.decoupled);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.1);
  ASSERT_TRUE(c.scheduler.has_value());
  EXPECT_EQ(c.scheduler->type, SchedulerType::WarmupCosineLR);
  EXPECT_EQ(c.scheduler->warmup_type, WarmupType::Linear);
  EXPECT_EQ(c.scheduler->warmup_num_steps, 100);
  EXPECT_EQ(c.scheduler->total_num_steps, 1000);
  EXPECT_DOUBLE_EQ(c.scheduler->warmup_min_ratio, 0.0);
  EXPECT_DOUBLE_EQ(c.scheduler->cos_min_ratio, 0.1);
  EXPECT_TRUE(c.bf16);
  EXPECT_EQ(c.zero_stage, 1);
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 1.0);
  EXPECT_EQ(c.steps_per_print, 10);
  EXPECT_EQ(c.seed, 42);
  EXPECT_TRUE(c.no_effect.empty());
}

TEST(Config, ShippedTp2AtWorld8DoublesDp) {
  TrainConfig c = shipped("zero1_tp2.json", world(8));
  EXPECT_EQ(c.dp, 4);
  EXPECT_EQ(c.train_batch, 32);  // 4 x 2 x 4
}

TEST(Config, ShippedTp2WithoutWorldSizeLeavesDpOpen) {
  TrainConfig c = shipped("zero1_tp2.json", {});
  EXPECT_EQ(c.micro_batch, 4);
  EXPECT_EQ(c.grad_accum, 2);
  EXPECT_EQ(c.train_batch, 0);
  EXPECT_EQ(c.dp, 0);
  EXPECT_EQ(c.world_size, 0);
}

TEST(Config, ShippedTp4ResolvesAtWorld4And8) {
  TrainConfig c = shipped("zero1_tp4.json", world(4));
  EXPECT_EQ(c.tp, 4);
  EXPECT_EQ(c.dp, 1);
  EXPECT_EQ(c.micro_batch, 2);
  EXPECT_EQ(c.grad_accum, 4);
  EXPECT_EQ(c.train_batch, 8);  // 2 x 4 x 1
  ASSERT_TRUE(c.scheduler.has_value());
  EXPECT_EQ(c.scheduler->type, SchedulerType::WarmupDecayLR);
  EXPECT_EQ(c.scheduler->warmup_num_steps, 200);
  EXPECT_EQ(c.scheduler->total_num_steps, 2000);
  EXPECT_DOUBLE_EQ(*c.scheduler->warmup_max_lr, 2e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 2e-4);
  EXPECT_EQ(c.steps_per_print, 20);
  EXPECT_EQ(c.seed, 1234);
  EXPECT_EQ(shipped("zero1_tp4.json", world(8)).train_batch, 16);  // 2 x 4 x dp 2
}

TEST(Config, ShippedDpResolvesAndRecordsNoEffectKeys) {
  TrainConfig c = shipped("zero1_dp.json", world(4));
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.dp, 4);
  EXPECT_EQ(c.train_batch, 32);  // 4 x 2 x 4, as written
  EXPECT_EQ(c.micro_batch, 4);
  EXPECT_EQ(c.grad_accum, 2);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-4);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.01);
  ASSERT_TRUE(c.scheduler.has_value());
  EXPECT_EQ(c.scheduler->type, SchedulerType::WarmupLR);
  EXPECT_DOUBLE_EQ(*c.scheduler->warmup_max_lr, 1e-4);
  EXPECT_EQ(c.zero_stage, 1);
  EXPECT_EQ(c.no_effect, (std::vector<std::string>{"zero_optimization.reduce_scatter", "zero_optimization.contiguous_gradients"}));
  // overlap_comm and the bucket sizes are honoured (runtime/zero_optimizer.h): off, 5e8, 5e8 as written.
  EXPECT_FALSE(c.overlap_comm);
  EXPECT_EQ(c.reduce_bucket_size, 500000000);
  EXPECT_EQ(c.allgather_bucket_size, 500000000);
}

TEST(Config, ShippedDpAtWorld8BreaksItsWrittenTrainBatch) {
  auto r = autotp::validate_config_file(repo("configs/zero1_dp.json"), world(8));
  ASSERT_EQ(r.problems.size(), 1u) << r.message();
  EXPECT_EQ(r.problems[0].path, "train_batch_size");
  EXPECT_EQ(r.problems[0].message,
            "32 != train_micro_batch_size_per_gpu 4 × gradient_accumulation_steps 2 × dp 8 (world 8 / autotp_size 1) = 64");
}

TEST(Config, ToJsonReadsBackToTheSameConfig) {
  for (const char* name : {"zero1_tp2.json", "zero1_tp4.json", "zero1_dp.json"}) {
    SCOPED_TRACE(name);
    TrainConfig a = shipped(name, world(4));
    ConfigResult r = autotp::validate_config_text(a.to_json(), "resolved.json", world(4));
    ASSERT_TRUE(r.ok()) << r.message();
    const TrainConfig& b = r.config;
    EXPECT_EQ(b.to_json(), a.to_json());
    EXPECT_EQ(b.train_batch, a.train_batch);
    EXPECT_EQ(b.tp, a.tp);
    EXPECT_DOUBLE_EQ(b.optimizer.lr, a.optimizer.lr);
    ASSERT_TRUE(b.scheduler.has_value());
    EXPECT_EQ(b.scheduler->type, a.scheduler->type);
    EXPECT_EQ(b.scheduler->warmup_max_lr, a.scheduler->warmup_max_lr);
  }
}

// ---- bad configs: the exact list of problems, in order --------------------------------------------

namespace {

struct Want {
  std::string path;
  std::string message_part;
};

struct BadCase {
  std::string file;
  ConfigOverrides overrides;
  std::vector<Want> problems;
};

ConfigOverrides flags(std::optional<int64_t> micro, std::optional<int64_t> ga, std::optional<double> lr,
                      std::optional<int64_t> world_size) {
  ConfigOverrides o;
  o.micro_batch = micro;
  o.grad_accum = ga;
  o.lr = lr;
  o.world_size = world_size;
  return o;
}

const std::string kAuto = "\"auto\" is filled in only by the Hugging Face Trainer; ";
const std::string kFp16 = "autotp trains in bf16 (bf16.enabled) or fp32; fp16 needs loss scaling";

std::vector<BadCase> bad_cases() {
  return {
      {"comments_auto_madeup.json",
       {},
       {{"optimizer.params.betas", kAuto + "write [0.9, 0.999]"},
        {"optimizer.params.weight_decay", kAuto + "write a number (DeepSpeed's default is 0)"},
        {"bf16.enabled", kAuto + "write true for bf16 or false for fp32"},
        {"tensor_parallel.tp_linear_layer_row_parallelism", "unknown key"},
        {"pp_partition_method", "unknown key"},
        {"tp_consecutive_ranks", "unknown key"},
        {"optimizer.params.lr", kAuto + "write a number, or pass --lr"},
        {"train_micro_batch_size_per_gpu", kAuto + "write a number, or pass --micro-batch"},
        {"gradient_accumulation_steps", kAuto + "write a number, or pass --grad-accum"}}},
      // The same file with the flags that fill its batch and lr "auto"s: those problems go away.
      {"comments_auto_madeup.json",
       flags(4, 2, 3e-4, 4),
       {{"optimizer.params.betas", kAuto},
        {"optimizer.params.weight_decay", kAuto},
        {"bf16.enabled", kAuto},
        {"tensor_parallel.tp_linear_layer_row_parallelism", "unknown key"},
        {"pp_partition_method", "unknown key"},
        {"tp_consecutive_ranks", "unknown key"}}},
      {"tp_size_misplaced.json",
       {},
       {{"tp_size", "unknown key; did you mean tensor_parallel.autotp_size?"},
        {"tensor_parallel.tp_size", "unknown key; did you mean autotp_size?"}}},
      {"tp_size_disagrees.json",
       {},
       {{"tensor_parallel.tp.tp_size",
         "4 disagrees with tensor_parallel.autotp_size 2: make them equal or delete tp.tp_size"}}},
      {"zero3_autotp.json",
       {},
       {{"zero_optimization.stage",
         "ZeRO-3 partitions and re-gathers every parameter, and AutoTP has already split them across the TP "
         "group; autotp runs ZeRO stage 0 or 1 with tensor parallelism: use stage 1"}}},
      {"autotp_not_dividing_world.json",
       world(4),
       {{"tensor_parallel.autotp_size", "3 does not divide the world size 4 (--world-size)"}}},
      {"batch_arithmetic.json",
       world(4),
       {{"train_batch_size",
         "32 != train_micro_batch_size_per_gpu 4 × gradient_accumulation_steps 2 × dp 2 (world 4 / autotp_size 2) "
         "= 16; 32 is DeepSpeed's count over all 4 ranks (TP replicas included, as when no mpu is passed), while "
         "autotp counts distinct samples: write 16 or delete train_batch_size"}}},
      {"wrong_types.json",
       {},
       {{"train_micro_batch_size_per_gpu", "expected a positive integer, got \"4\""},
        {"gradient_accumulation_steps", "expected a positive integer, got 0"},
        {"optimizer.params.lr", "expected a non-negative number, got \"3e-4\""},
        {"optimizer.params.betas", "expected two numbers [beta1, beta2], got [0.9]"},
        {"optimizer.params.eps", "expected a non-negative number, got -1"},
        {"bf16.enabled", "expected true or false, got \"yes\""},
        {"zero_optimization.stage", "expected a non-negative integer, got 1.5"},
        {"tensor_parallel.autotp_size", "expected a non-negative integer, got \"2\""},
        {"gradient_clipping", "expected a non-negative number, got true"},
        {"steps_per_print", "expected a positive integer, got [10]"},
        {"scheduler", "expected an object {...}, got \"WarmupLR\""}}},
      {"fp16_enabled.json", {}, {{"fp16.enabled", kFp16}, {"tensor_parallel.dtype", kFp16}}},
      {"unknown_optimizer.json",
       {},
       {{"optimizer.type", "unknown optimizer \"AdamX\"; did you mean AdamW?"},
        {"optimizer.params.weight_decays", "unknown key; did you mean weight_decay?"},
        {"optimizer.params.max_grad_norm", "not an optimizer parameter; use the top-level gradient_clipping"},
        {"lr", "unknown key; did you mean optimizer.params.lr?"}}},
      {"unknown_scheduler_param.json",
       {},
       {{"scheduler.params.warmup_steps", "unknown WarmupCosineLR parameter; did you mean warmup_num_steps?"},
        {"scheduler.params.warmup_max_lr", "not a parameter of WarmupCosineLR (it belongs to WarmupLR, WarmupDecayLR)"},
        {"scheduler.params.warmup_type", "expected \"log\" or \"linear\", got \"cosine\""},
        {"scheduler.params.total_num_steps", "missing; WarmupCosineLR needs the number of optimizer steps"}}},
      {"syntax_error.json",
       {},
       {{"", "line 4, column 21: syntax error while parsing object - unexpected string literal; expected '}'"}}},
      {"deepspeed_unsupported.json",
       {},
       {{"steps_per_print", "duplicate key"},
        {"optimizer.type", "\"Lamb\" is an optimizer autotp does not implement; use \"AdamW\" or \"Adam\""},
        {"scheduler.type", "\"OneCycle\" is a schedule autotp does not implement"},
        {"activation_checkpointing", "autotp does not recompute activations: delete it"},
        {"bf16.bf16_master_weights_and_grads", "autotp keeps fp32 master weights"},
        {"zero_optimization.offload_optimizer", "offloading is not implemented: delete it"},
        {"tensor_parallel.preset_model", "autotp derives them from the graph"}}},
      {"contradictions.json",
       {},
       {{"scheduler.type", "unknown scheduler \"warmupLR\"; did you mean WarmupLR?"},
        {"zero_optimization", "the boolean form is deprecated in DeepSpeed; write {\"stage\": 1}"},
        {"tensor_parallel.tp.tp_size", "DeepSpeed training reads tensor_parallel.autotp_size"},
        {"bfloat16", "delete bfloat16"},
        {"tensor_parallel.dtype", "\"fp32\" disagrees with bf16.enabled true"},
        {"optimizer.params.adam_w_mode", "false has no effect on AdamW"}}},
  };
}

}  // namespace

TEST(Config, BadConfigsReportExactlyTheirProblems) {
  for (const auto& bad : bad_cases()) {
    const std::string path = repo("tests/configs_bad/" + bad.file);
    SCOPED_TRACE(bad.file);
    ConfigResult r = autotp::validate_config_file(path, bad.overrides);
    ASSERT_EQ(r.problems.size(), bad.problems.size()) << r.message();
    for (size_t i = 0; i < bad.problems.size(); ++i) {
      EXPECT_EQ(r.problems[i].path, bad.problems[i].path) << r.message();
      EXPECT_NE(r.problems[i].message.find(bad.problems[i].message_part), std::string::npos)
          << "problem " << i << ": " << r.problems[i].message;
      EXPECT_EQ(r.problems[i].message.find('\n'), std::string::npos);
    }
  }
}

TEST(Config, ThrownErrorListsEveryProblemOnItsOwnLinePrefixedByTheFile) {
  const std::string path = repo("tests/configs_bad/tp_size_misplaced.json");
  try {
    autotp::load_config(path);
    FAIL() << "no error";
  } catch (const autotp::Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": tp_size: unknown key; did you mean tensor_parallel.autotp_size?\n" +
                                         path + ": tensor_parallel.tp_size: unknown key; did you mean autotp_size?");
  }
}

TEST(Config, SyntaxErrorNamesFileLineAndColumnOnOneLine) {
  const std::string path = repo("tests/configs_bad/syntax_error.json");
  try {
    autotp::load_config(path);
    FAIL() << "no error";
  } catch (const autotp::Error& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ": line 4, column 21: syntax error while parsing object - unexpected string literal; expected '}'");
  }
}

TEST(Config, MissingFileIsOneLine) {
  EXPECT_THROW(
      {
        try {
          autotp::load_config("/nonexistent/ds.json");
        } catch (const autotp::Error& e) {
          EXPECT_EQ(std::string(e.what()),
                    "/nonexistent/ds.json: no such file; pass a DeepSpeed-style JSON config (see configs/README.md)");
          throw;
        }
      },
      autotp::Error);
}

TEST(Config, CommentsAreAccepted) {
  auto r = autotp::validate_config_text(
      "// line comment\n{ /* block */ \"train_micro_batch_size_per_gpu\": 2, // trailing\n"
      "  \"optimizer\": {\"type\": \"AdamW\", \"params\": {\"lr\": 1e-3 /* peak */}} }\n",
      "c.json");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r.config.micro_batch, 2);
}

TEST(Config, TopLevelMustBeAnObject) {
  auto p = problems_of("[1, 2]");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].message, "expected a JSON object {...} at the top level, got [1,2]");
}

// ---- batch arithmetic: DeepSpeed's _set_batch_related_parameters with dp = world / autotp_size -----

TEST(Config, BatchDerivesTheMissingOneFromTheOtherTwo) {
  auto tp2 = [](const std::string& batch) {
    return R"({"optimizer": {"params": {"lr": 1e-4}, "type": "AdamW"}, "tensor_parallel": {"autotp_size": 2}, )" +
           batch + "}";
  };
  // train + micro: GA = 32 / (4 x dp 4) = 2
  auto a = autotp::validate_config_text(tp2(R"("train_batch_size": 32, "train_micro_batch_size_per_gpu": 4)"), "a", world(8));
  ASSERT_TRUE(a.ok()) << a.message();
  EXPECT_EQ(a.config.grad_accum, 2);
  // train + GA: micro = 32 / (dp 2 x 2) = 8
  auto b = autotp::validate_config_text(tp2(R"("train_batch_size": 32, "gradient_accumulation_steps": 2)"), "b", world(4));
  ASSERT_TRUE(b.ok()) << b.message();
  EXPECT_EQ(b.config.micro_batch, 8);
  // train only: GA 1, micro = 32 / dp 2 = 16
  auto c = autotp::validate_config_text(tp2(R"("train_batch_size": 32)"), "c", world(4));
  ASSERT_TRUE(c.ok()) << c.message();
  EXPECT_EQ(c.config.grad_accum, 1);
  EXPECT_EQ(c.config.micro_batch, 16);
  // micro only: GA 1, train = 4 x 1 x dp 2 = 8
  auto d = autotp::validate_config_text(tp2(R"("train_micro_batch_size_per_gpu": 4)"), "d", world(4));
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d.config.grad_accum, 1);
  EXPECT_EQ(d.config.train_batch, 8);
}

TEST(Config, BatchThatDoesNotDividePrintsBothSides) {
  auto p = problems_of(with(R"("train_batch_size": 30, "tensor_parallel": {"autotp_size": 2})"), world(4));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].path, "train_batch_size");
  EXPECT_EQ(p[0].message,
            "30 is not a multiple of train_micro_batch_size_per_gpu 4 × dp 2 (world 4 / autotp_size 2) = 8");
}

TEST(Config, WithoutWorldSizeOnlyDivisibilityIsChecked) {
  // 32 = 4 x 2 x dp 4 fits some world size (8 at tp 2): fine until --world-size says otherwise.
  auto ok = autotp::validate_config_file(repo("tests/configs_bad/batch_arithmetic.json"), {});
  EXPECT_TRUE(ok.ok()) << ok.message();
  EXPECT_EQ(ok.config.train_batch, 32);
  EXPECT_NE(autotp::check_report(ok.config).find("x dp 4, so world size must be 8"), std::string::npos);
  auto p = problems_of(with(R"("train_batch_size": 30, "gradient_accumulation_steps": 2)"));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].message, "30 is not a multiple of train_micro_batch_size_per_gpu 4 × gradient_accumulation_steps 2 "
                          "= 8, so no data-parallel size fits");
}

TEST(Config, NeitherBatchSizeIsAProblem) {
  auto p = problems_of(R"({"optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}})");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].path, "train_micro_batch_size_per_gpu");
  EXPECT_EQ(p[0].message, "missing; write it (or train_batch_size), or pass --micro-batch");
}

TEST(Config, FlagsReplaceFileValuesAndShowInTheArithmetic) {
  auto r = autotp::validate_config_file(repo("configs/zero1_dp.json"), flags(8, std::nullopt, 5e-5, 4));
  ASSERT_EQ(r.problems.size(), 1u) << r.message();
  EXPECT_EQ(r.problems[0].message, "32 != train_micro_batch_size_per_gpu 8 (--micro-batch) × gradient_accumulation_steps "
                                   "2 × dp 4 (world 4 / autotp_size 1) = 64");
  auto ok = autotp::validate_config_file(repo("configs/zero1_tp2.json"), flags(8, 1, 5e-5, 4));
  ASSERT_TRUE(ok.ok()) << ok.message();
  EXPECT_EQ(ok.config.micro_batch, 8);
  EXPECT_EQ(ok.config.grad_accum, 1);
  EXPECT_EQ(ok.config.train_batch, 16);  // 8 x 1 x dp 2
  EXPECT_DOUBLE_EQ(ok.config.optimizer.lr, 5e-5);
}

TEST(Config, TrainBatchAutoStandsWhenMicroBatchIsKnown) {
  auto r = autotp::validate_config_text(with(R"("train_batch_size": "auto", "gradient_accumulation_steps": 2)"), "t",
                                        world(4));
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r.config.train_batch, 32);  // 4 x 2 x dp 4
}

TEST(Config, BadFlagsAreProblemsToo) {
  auto p = problems_of(kMinimal, flags(0, std::nullopt, -1.0, 0));
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].path, "--world-size");
  EXPECT_EQ(p[1].path, "--micro-batch");
  EXPECT_EQ(p[2].path, "--lr");
}

// ---- optimizer and other single keys ---------------------------------------------------------------

TEST(Config, OptimizerNamesAreCaseInsensitiveAndAdamDefaultsToAdamW) {
  auto adam = autotp::validate_config_text(R"({"train_micro_batch_size_per_gpu": 1,
      "optimizer": {"type": "ADAM", "params": {"lr": 1e-3}}})", "t");
  ASSERT_TRUE(adam.ok()) << adam.message();
  EXPECT_EQ(adam.config.optimizer.type, "Adam");
  EXPECT_TRUE(adam.config.optimizer.decoupled);  // DeepSpeed's adam_w_mode defaults to true
  auto l2 = autotp::validate_config_text(R"({"train_micro_batch_size_per_gpu": 1,
      "optimizer": {"type": "adam", "params": {"lr": 1e-3, "adam_w_mode": false}}})", "t");
  ASSERT_TRUE(l2.ok()) << l2.message();
  EXPECT_FALSE(l2.config.optimizer.decoupled);
  EXPECT_DOUBLE_EQ(l2.config.optimizer.weight_decay, 0.0);  // FusedAdam's default
}

TEST(Config, TorchAdamTakesTorchAdamWsDefaultWeightDecay) {
  auto r = autotp::validate_config_text(R"({"train_micro_batch_size_per_gpu": 1,
      "optimizer": {"type": "adamw", "params": {"lr": 1e-3, "torch_adam": true}}})", "t");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_DOUBLE_EQ(r.config.optimizer.weight_decay, 0.01);  // torch.optim.AdamW's default
}

TEST(Config, MissingLrIsAProblemUnlessGivenByFlag) {
  auto p = problems_of(R"({"train_micro_batch_size_per_gpu": 1})");
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].path, "optimizer.params.lr");
  EXPECT_EQ(p[0].message, "missing; write the learning rate, or pass --lr");
  auto r = autotp::validate_config_text(R"({"train_micro_batch_size_per_gpu": 1})", "t", flags({}, {}, 2e-4, {}));
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r.config.optimizer.type, "AdamW");
  EXPECT_DOUBLE_EQ(r.config.optimizer.lr, 2e-4);
}

TEST(Config, DefaultsFollowDeepSpeed) {
  auto r = autotp::validate_config_text(kMinimal, "t");
  ASSERT_TRUE(r.ok()) << r.message();
  const TrainConfig& c = r.config;
  EXPECT_EQ(c.tp, 1);
  EXPECT_EQ(c.zero_stage, 0);
  EXPECT_FALSE(c.bf16);
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 1.0);  // DeepSpeed >= 0.19.3
  EXPECT_EQ(c.steps_per_print, 10);
  EXPECT_EQ(c.seed, 42);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-8);
  EXPECT_FALSE(c.scheduler.has_value());
  EXPECT_EQ(c.grad_accum, 1);
}

// `autotp train` runs stages 0 and 1 only; `autotp check` refuses stage 2 in the trainer's own words
// (ZeroOneOptimizer's error), so a config that checks clean also trains.
TEST(Config, ZeroStage2IsRefusedInTheTrainersWordsAndZero3AloneIsNot) {
  auto two = autotp::validate_config_text(with(R"("zero_optimization": {"stage": 2})"), "t.json");
  ASSERT_EQ(two.problems.size(), 1u) << two.message();
  EXPECT_EQ(two.message(), "t.json: zero_optimization.stage: 2: autotp runs stage 0 (no partitioning) or 1 (optimizer "
                           "state partitioned over data-parallel ranks); write 1");
  auto p = problems_of(with(R"("zero_optimization": {"stage": 3})"));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].message, "autotp does not run ZeRO-3; use stage 1 (ZeRO-3 needs DeepSpeed itself)");
}

// autotp's own key: weight decay on norms and biases too (default off, as transformers' Trainer);
// it reads back from the resolved JSON and `check` says which parameters decay.
TEST(Config, DecayNormsAndBiasesIsAnAutotpKey) {
  const std::string decayed = R"({"train_micro_batch_size_per_gpu": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1}})";
  TrainConfig off = autotp::parse_config_text(decayed + "}", "t");
  EXPECT_FALSE(off.decay_norms_and_biases);
  EXPECT_NE(autotp::check_report(off).find("weight_decay 0.1 (decoupled weight decay), not on norms and biases"), std::string::npos);
  TrainConfig on = autotp::parse_config_text(decayed + R"(, "decay_norms_and_biases": true})", "t");
  EXPECT_TRUE(on.decay_norms_and_biases);
  EXPECT_NE(autotp::check_report(on).find(", on every parameter"), std::string::npos);
  EXPECT_TRUE(autotp::parse_config_text(on.to_json(), "again").decay_norms_and_biases);
  auto bad = autotp::validate_config_text(with(R"("decay_norms_and_biases": "yes")"), "t.json");
  ASSERT_EQ(bad.problems.size(), 1u);
  EXPECT_EQ(bad.problems[0].path, "decay_norms_and_biases");
}

// DeepSpeed's way to resume a schedule is a config value; autotp's is a checkpoint.
TEST(Config, LastBatchIterationPointsAtResume) {
  auto p = problems_of(with(R"("scheduler": {"type": "WarmupLR", "params": {"last_batch_iteration": 99}})"));
  ASSERT_EQ(p.size(), 1u);
  EXPECT_EQ(p[0].path, "scheduler.params.last_batch_iteration");
  EXPECT_EQ(p[0].message, "autotp train --resume DIR restores the schedule position from a checkpoint (--save-dir DIR writes them): delete it");
}

TEST(Config, NestedTpSizeEqualToAutotpSizeIsFine) {
  auto r = autotp::validate_config_text(
      with(R"("tensor_parallel": {"autotp_size": 2, "tp": {"tp_size": 2}, "tp_overlap_comm": false})"), "t", world(2));
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r.config.tp, 2);
  EXPECT_EQ(r.config.dp, 1);
  EXPECT_EQ(r.config.no_effect, std::vector<std::string>{"tensor_parallel.tp_overlap_comm"});
}

TEST(Config, WarmupDecayLRWithoutMaxLrPeaksAtDeepSpeedsDefault) {
  auto r = autotp::validate_config_text(
      with(R"("scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 100, "warmup_num_steps": 10}})"),
      "t");
  ASSERT_TRUE(r.ok()) << r.message();
  ASSERT_TRUE(r.config.scheduler->warmup_max_lr.has_value());
  EXPECT_DOUBLE_EQ(*r.config.scheduler->warmup_max_lr, 0.001);  // not optimizer lr 1e-4
  EXPECT_DOUBLE_EQ(autotp::lr_at(*r.config.scheduler, 1e-4, 10), 0.001);
  EXPECT_NE(autotp::check_report(r.config).find("DeepSpeed's default; optimizer lr 0.0001 is not used"),
            std::string::npos);
}

// ---- learning-rate schedules: DeepSpeed's lr_schedules.py, values computed by hand ------------------

namespace {

SchedulerConfig schedule(SchedulerType type, WarmupType warmup, int64_t warmup_steps) {
  SchedulerConfig s;
  s.type = type;
  s.warmup_type = warmup;
  s.warmup_num_steps = warmup_steps;
  return s;
}

}  // namespace

TEST(Config, WarmupLRLogWarmup) {
  SchedulerConfig s = schedule(SchedulerType::WarmupLR, WarmupType::Log, 100);
  s.warmup_max_lr = 0.001;
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, -1), 0.0);      // before the first step(): min lr
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 0), 0.0);       // log(1) / log(100) = 0
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 9), 0.0005);    // log(10) / log(100) = 0.5
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 99), 0.001);    // log(100) / log(100) = 1
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 5000), 0.001);  // held at max
}

TEST(Config, WarmupLRLinearWarmupToOptimizerLr) {
  SchedulerConfig s = schedule(SchedulerType::WarmupLR, WarmupType::Linear, 10);
  s.warmup_min_lr = 1e-5;  // warmup_max_lr unset: the optimizer's lr, 1e-3
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 0), 1e-5);
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 5), 5.05e-4);  // 1e-5 + (1e-3 - 1e-5) x 5/10
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 10), 1e-3);
  // DeepSpeed warms up over max(2, warmup_num_steps): with 1 step, step 1 is halfway.
  SchedulerConfig one = schedule(SchedulerType::WarmupLR, WarmupType::Linear, 1);
  EXPECT_DOUBLE_EQ(autotp::lr_at(one, 1e-3, 1), 5e-4);
  EXPECT_DOUBLE_EQ(autotp::lr_at(one, 1e-3, 2), 1e-3);
}

TEST(Config, WarmupDecayLRLinear) {
  SchedulerConfig s = schedule(SchedulerType::WarmupDecayLR, WarmupType::Linear, 10);
  s.warmup_max_lr = 0.01;
  s.total_num_steps = 110;
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 5), 0.005);    // 0.01 x 5/10
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 10), 0.01);    // (110 - 10) / (110 - 10) = 1
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 60), 0.005);   // (110 - 60) / 100 = 0.5
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 100), 0.001);  // (110 - 100) / 100 = 0.1
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 110), 0.0);
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1.0, 200), 0.0);    // max(0, negative)
}

TEST(Config, WarmupDecayLRLogWarmup) {
  SchedulerConfig s = schedule(SchedulerType::WarmupDecayLR, WarmupType::Log, 20);
  s.warmup_max_lr = 0.001;
  s.total_num_steps = 50;
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 3e-4, 19), 0.001);    // log(20) / log(20) = 1
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 3e-4, 35), 0.0005);   // (50 - 35) / (50 - 20) = 0.5
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 3e-4, 3), 0.001 * std::log(4.0) / std::log(20.0));
}

TEST(Config, WarmupCosineLRLinearWarmup) {
  SchedulerConfig s = schedule(SchedulerType::WarmupCosineLR, WarmupType::Linear, 10);
  s.total_num_steps = 110;
  s.warmup_min_ratio = 0.1;
  s.cos_min_ratio = 0.01;
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, -1), 0.0);      // get_lr() before step(): 0.0
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 0), 1e-4);      // ratio 0.1 + 0 x 0.9
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 5), 5.5e-4);    // 0.1 + 0.5 x 0.9 = 0.55
  // step 10: progress (10 - 10 + 1) / 100 = 0.01; ratio 0.01 + 0.99 x (1 + cos(0.01 pi)) / 2
  //        = 0.01 + 0.99 x 0.99975328018 = 0.99975574738
  EXPECT_NEAR(autotp::lr_at(s, 1e-3, 10), 9.9975574738e-4, 1e-14);
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 59), 5.05e-4);  // progress 0.5: 0.01 + 0.99 x 0.5 = 0.505
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 109), 1e-5);    // progress 1: cos_min_ratio
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 5000), 1e-5);   // clamped at 1 (DeepSpeed >= 0.19.3)
}

TEST(Config, WarmupCosineLRLogWarmupAndNoDecayWindow) {
  SchedulerConfig s = schedule(SchedulerType::WarmupCosineLR, WarmupType::Log, 100);
  s.total_num_steps = 1000;
  EXPECT_DOUBLE_EQ(autotp::lr_at(s, 1e-3, 9), 5e-4);  // log(10) / log(100) = 0.5, warmup_min_ratio 0
  // total <= warmup: denominator max(1, ...) and clamp keep every later step at cos_min_ratio.
  SchedulerConfig s2 = schedule(SchedulerType::WarmupCosineLR, WarmupType::Linear, 10);
  s2.total_num_steps = 5;
  EXPECT_DOUBLE_EQ(autotp::lr_at(s2, 2e-3, 9), 1.8e-3);
  EXPECT_DOUBLE_EQ(autotp::lr_at(s2, 2e-3, 10), 2e-7);  // 2e-3 x 1e-4
  EXPECT_DOUBLE_EQ(autotp::lr_at(s2, 2e-3, 100), 2e-7);
}

TEST(Config, UpdateNRunsWithTheScheduleOfStepNMinus1) {
  TrainConfig c = shipped("zero1_tp2.json", world(4));  // WarmupCosineLR, linear over 100, lr 3e-4
  EXPECT_DOUBLE_EQ(autotp::lr_for_update(c, 0), 0.0);      // DeepSpeed's first update: scheduler at -1
  EXPECT_DOUBLE_EQ(autotp::lr_for_update(c, 1), 0.0);      // step 0: ratio 0
  EXPECT_DOUBLE_EQ(autotp::lr_for_update(c, 2), 3e-6);     // step 1: 3e-4 x 1/100
  EXPECT_DOUBLE_EQ(autotp::lr_for_update(c, 550), 1.65e-4);  // step 549: progress 450/900 -> 0.1 + 0.9 x 0.5
  TrainConfig flat = autotp::validate_config_text(kMinimal, "t").config;
  EXPECT_DOUBLE_EQ(autotp::lr_for_update(flat, 0), 1e-4);
  EXPECT_DOUBLE_EQ(autotp::lr_for_update(flat, 1000), 1e-4);
}

// ---- autotp check -------------------------------------------------------------------------------------

TEST(Config, CheckReportSaysMeshBatchOptimizerScheduleAndZero) {
  TrainConfig c = shipped("zero1_tp2.json", world(4));
  std::string report = autotp::check_report(c);
  for (const char* line : {
           "zero1_tp2.json: ok\n",
           "  mesh       tp 2 x dp 2 = world 4",
           "  batch      16 samples per optimizer step = micro 4 x grad_accum 2 x dp 2\n",
           "would call this train_batch_size 32)",
           "  optimizer  AdamW lr 0.0003, betas (0.9, 0.95), eps 1e-08, weight_decay 0.1 (decoupled weight decay), not on "
           "norms and biases (1-D parameters)\n",
           "  schedule   WarmupCosineLR: linear warmup over 100 steps from 0 x lr to lr 0.0003, cosine to 0.1 x lr at "
           "step 1000\n",
           "  ZeRO       stage 1: fp32 master weights and Adam moments partitioned over dp 2",
           "  clipping   global gradient norm 1\n",
       }) {
    EXPECT_NE(report.find(line), std::string::npos) << "missing: " << line << "\nin:\n" << report;
  }
  std::string open = autotp::check_report(shipped("zero1_tp2.json", {}));
  EXPECT_NE(open.find("tp 2 x dp ? = world ?"), std::string::npos) << open;
  EXPECT_NE(open.find("pass --world-size"), std::string::npos) << open;
}
