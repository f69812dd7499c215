// `--hf-args sft.yaml`: a DeepSpeed config's "auto"s filled from a LLaMA-Factory / TrainingArguments
// YAML as transformers' DeepSpeed integration fills them (runtime/config_hf.cpp), the flat YAML reader
// (runtime/hf_args.cpp), and both sides computed: tests/deepspeed/hf_auto.py runs transformers'
// HfTrainerDeepSpeedConfig on the same files and compares every value with `autotp check --json`.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include "autotp/error.h"
#include "fixtures.h"
#include "runtime/config.h"
#include "runtime/hf_args.h"
#include "runtime/token_data.h"

using autotp::ConfigOverrides;
using autotp::ConfigResult;
using autotp::TrainConfig;

namespace {

std::string repo(const std::string& relative) { return std::string(AUTOTP_SOURCE_DIR) + "/" + relative; }

ConfigOverrides with_yaml(const std::string& yaml_path, std::optional<int64_t> world,
                          std::optional<int64_t> samples = std::nullopt) {
  ConfigOverrides o;
  o.hf_args = std::make_shared<autotp::HfArgs>(autotp::load_hf_args(yaml_path));
  o.world_size = world;
  o.dataset_samples = samples;
  return o;
}

ConfigOverrides with_yaml_text(const std::string& yaml, std::optional<int64_t> world = std::nullopt) {
  autotp::HfArgsResult r = autotp::read_hf_args_text(yaml, "t.yaml");
  EXPECT_TRUE(r.ok()) << r.message();
  ConfigOverrides o;
  o.hf_args = std::make_shared<autotp::HfArgs>(r.args);
  o.world_size = world;
  return o;
}

std::vector<std::string> paths_of(const ConfigResult& r) {
  std::vector<std::string> out;
  for (const auto& p : r.problems) out.push_back(p.path);
  return out;
}

std::string first_problem(const std::string& yaml) {
  auto r = autotp::read_hf_args_text(yaml, "n.yaml");
  return r.problems.empty() ? "" : r.problems.front();
}

autotp_test::CliRun run_in_source(const std::string& args) {
  return autotp_test::run_command("cd " + std::string(AUTOTP_SOURCE_DIR) + " && " + AUTOTP_CLI + " " + args);
}

}  // namespace

// ---- the shipped LLaMA-Factory pairs ---------------------------------------------------------------

TEST(ConfigHfArgs, ShippedTp2PairFillsEveryAutoFromTheYaml) {
  ConfigResult r = autotp::validate_config_file(repo("configs/llamafactory/ds_zero1_tp2_auto.json"),
                                                with_yaml(repo("configs/llamafactory/sft_tp2.yaml"), 4));
  ASSERT_TRUE(r.ok()) << r.message();
  const TrainConfig& c = r.config;
  EXPECT_EQ(c.tp, 2);
  EXPECT_EQ(c.dp, 2);
  EXPECT_EQ(c.micro_batch, 4);   // per_device_train_batch_size
  EXPECT_EQ(c.grad_accum, 2);    // gradient_accumulation_steps
  EXPECT_EQ(c.train_batch, 16);  // distinct samples: 4 x 2 x dp 2 (transformers writes world 4 x 4 x 2 = 32)
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 1e-5);
  EXPECT_DOUBLE_EQ(c.optimizer.beta1, 0.9);  // transformers' defaults: the YAML does not set them
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(c.optimizer.weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(c.gradient_clipping, 1.0);
  EXPECT_TRUE(c.bf16);
  ASSERT_TRUE(c.scheduler.has_value());
  EXPECT_EQ(c.scheduler->type, autotp::SchedulerType::WarmupCosineLR);
  EXPECT_EQ(c.scheduler->total_num_steps, 1000);  // max_steps
  EXPECT_EQ(c.scheduler->warmup_num_steps, 50);   // warmup_steps
  EXPECT_EQ(c.hf_training_steps, 1000);
  EXPECT_EQ(c.zero_stage, 1);
  EXPECT_EQ(c.hf_filled.size(), 12u) << r.config.to_json();
  EXPECT_NE(autotp::check_report(c).find("optimizer.params.lr <- learning_rate 1.0e-5 ("), std::string::npos)
      << autotp::check_report(c);
}

TEST(ConfigHfArgs, ShippedTp4PairCountsEpochsFromTheDataSize) {
  // 30 samples, micro 2 x dp 2: 8 batches per rank, 2 optimizer steps per epoch (GA 4), 3 epochs.
  ConfigResult r = autotp::validate_config_file(repo("configs/llamafactory/ds_zero1_tp4_auto.json"),
                                                with_yaml(repo("configs/llamafactory/sft_tp4.yaml"), 8, 30));
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r.config.dp, 2);
  EXPECT_EQ(r.config.train_batch, 16);
  EXPECT_EQ(r.config.scheduler->type, autotp::SchedulerType::WarmupDecayLR);
  EXPECT_EQ(r.config.scheduler->total_num_steps, 6);
  EXPECT_EQ(r.config.scheduler->warmup_num_steps, 1);  // ceil(0.1 x 6)
  EXPECT_DOUBLE_EQ(*r.config.scheduler->warmup_max_lr, 2e-5);
  EXPECT_DOUBLE_EQ(r.config.scheduler->warmup_min_lr, 0.0);
}

TEST(ConfigHfArgs, CheckReadsTheConfigTheYamlNames) {
  auto ok = run_in_source("check --hf-args configs/llamafactory/sft_tp2.yaml --world-size 4");
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_NE(ok.out.find("configs/llamafactory/ds_zero1_tp2_auto.json: ok"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("hf args    configs/llamafactory/sft_tp2.yaml"), std::string::npos) << ok.out;
}

// ---- the four behaviours the issue asks for ------------------------------------------------------------

TEST(ConfigHfArgs, MismatchIsReportedWithBothValues) {
  ConfigResult r = autotp::validate_config_text(
      R"({"train_micro_batch_size_per_gpu": "auto", "optimizer": {"type": "AdamW", "params": {"lr": 3e-4}},
          "gradient_clipping": 0.5, "bf16": {"enabled": false}})",
      "ds.json", with_yaml_text("# sft\nlearning_rate: 1.0e-4\nbf16: true\nlr_scheduler_type: constant\n"));
  ASSERT_EQ(paths_of(r), (std::vector<std::string>{"gradient_clipping", "optimizer.params.lr", "bf16.enabled"}))
      << r.message();
  EXPECT_EQ(r.message(),
            "ds.json: gradient_clipping: 0.5 disagrees with max_grad_norm 1 (transformers' default; t.yaml does not set "
            "it), which the Hugging Face Trainer fills this key from and checks it against: write \"auto\" or 1.0\n"
            "ds.json: optimizer.params.lr: 0.0003 disagrees with learning_rate 1.0e-4 (t.yaml:2), which the Hugging Face "
            "Trainer fills this key from and checks it against: write \"auto\" or 0.0001\n"
            "ds.json: bf16.enabled: false disagrees with bf16 true (t.yaml:3), which the Hugging Face Trainer fills this "
            "key from and checks it against: write \"auto\" or true");
  // Every mismatch at once, as transformers' one ValueError lists them.
  ConfigResult all = autotp::validate_config_file(repo("tests/configs_hf/ds_mismatch.json"),
                                                  with_yaml(repo("tests/configs_hf/mismatch.yaml"), 2));
  EXPECT_EQ(paths_of(all),
            (std::vector<std::string>{"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                                      "gradient_clipping", "optimizer.params.lr", "optimizer.params.betas",
                                      "optimizer.params.eps", "optimizer.params.weight_decay", "bf16.enabled",
                                      "scheduler.params.warmup_max_lr", "scheduler.params.total_num_steps",
                                      "scheduler.params.warmup_num_steps"}))
      << all.message();
}

TEST(ConfigHfArgs, AutoWithoutYamlNamesTheYamlKeyThatFillsIt) {
  ConfigResult r = autotp::validate_config_text(
      R"({"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
          "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto"}},
          "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": "auto", "warmup_num_steps": "auto"}},
          "bf16": {"enabled": "auto"}})",
      "ds.json");
  const std::string kAuto = "\"auto\" is filled in only by the Hugging Face Trainer; ";
  const std::string kYaml = "; or pass --hf-args sft.yaml to fill it from ";
  const std::string kAsHf = ", as the Hugging Face Trainer does";
  EXPECT_EQ(r.message(),
            "ds.json: gradient_clipping: " + kAuto + "write a number, e.g. 1.0 (0 turns clipping off)" + kYaml +
                "max_grad_norm" + kAsHf + "\n"
                "ds.json: optimizer.params.betas: " + kAuto + "write [0.9, 0.999] (DeepSpeed's default)" + kYaml +
                "adam_beta1 and adam_beta2" + kAsHf + "\n"
                "ds.json: scheduler.params.total_num_steps: " + kAuto + "write the number of optimizer steps the run takes" +
                kYaml + "max_steps (or num_train_epochs, with --data)" + kAsHf + "\n"
                "ds.json: scheduler.params.warmup_num_steps: " + kAuto +
                "write a number of optimizer steps (DeepSpeed's default is 1000)" + kYaml + "warmup_steps or warmup_ratio" + kAsHf + "\n"
                "ds.json: bf16.enabled: " + kAuto + "write true for bf16 or false for fp32" + kYaml + "bf16" + kAsHf + "\n"
                "ds.json: optimizer.params.lr: " + kAuto + "write a number, or pass --lr" + kYaml + "learning_rate" + kAsHf + "\n"
                "ds.json: train_micro_batch_size_per_gpu: " + kAuto + "write a number, or pass --micro-batch" + kYaml +
                "per_device_train_batch_size" + kAsHf);
}

TEST(ConfigHfArgs, NestedYamlIsRefusedWithFileAndLine) {
  EXPECT_EQ(first_problem("stage: sft\nlr_scheduler_kwargs:\n  min_lr: 0.0\n"),
            "n.yaml:3: an indented line is nested YAML (under lr_scheduler_kwargs); autotp reads flat `key: value` "
            "lines, as LLaMA-Factory's YAMLs are");
  EXPECT_EQ(first_problem("# c\n\ndataset: [alpaca_en_demo, identity]\n"),
            "n.yaml:3: dataset: a flow list is nested YAML; autotp reads flat `key: value` lines, as LLaMA-Factory's YAMLs are");
  EXPECT_EQ(first_problem("report_to: {a: 1}\n").substr(0, 39), "n.yaml:1: report_to: a flow mapping is ");
  EXPECT_EQ(first_problem("report_to:\n- wandb\n").substr(0, 40), "n.yaml:2: a list item is nested YAML (un");
  EXPECT_EQ(first_problem("system: |\n").substr(0, 38), "n.yaml:1: system: a block scalar (|) s");
  EXPECT_EQ(first_problem("a: 1\n---\nb: 2\n").substr(0, 37), "n.yaml:2: a second YAML document; aut");
  // The throwing form names the file and line too, every problem on its own line.
  const std::string path = testing::TempDir() + "autotp_nested_" + std::to_string(getpid()) + ".yaml";
  std::ofstream(path) << "learning_rate: 1.0e-5\noptim:\n  name: adamw\nwarmup_ratio: 2\n";
  try {
    autotp::load_hf_args(path);
    FAIL() << "no error";
  } catch (const autotp::Error& e) {
    EXPECT_EQ(std::string(e.what()),
              path + ":2: optim: expected a name, got null\n" + path +
                  ":3: an indented line is nested YAML (under optim); autotp reads flat `key: value` lines, as "
                  "LLaMA-Factory's YAMLs are\n" + path + ":4: warmup_ratio: expected a number in [0, 1], got 2");
  }
  std::filesystem::remove(path);
}

TEST(ConfigHfArgs, EpochsWithoutMaxStepsOrDataSizeIsAClearError) {
  ConfigResult r = autotp::validate_config_file(repo("configs/llamafactory/ds_zero1_tp4_auto.json"),
                                                with_yaml(repo("configs/llamafactory/sft_tp4.yaml"), 8));
  ASSERT_EQ(paths_of(r), (std::vector<std::string>{"scheduler.params.total_num_steps", "scheduler.params.warmup_num_steps"}))
      << r.message();
  const std::string yaml = repo("configs/llamafactory/sft_tp4.yaml");
  EXPECT_EQ(r.problems[0].message,
            "\"auto\" is the Hugging Face Trainer's num_training_steps; " + yaml + " sets no max_steps, so it is "
            "num_train_epochs 3.0 (" + yaml + ":30) × steps per epoch, which needs the number of training samples (pass "
            "--data D.tokens); or set max_steps in " + yaml);
  EXPECT_EQ(r.problems[1].message.find("\"auto\" is ceil(warmup_ratio 0.1 (" + yaml + ":32) × num_training_steps), and " +
                                        yaml + " sets no max_steps"),
            0u)
      << r.problems[1].message;
  // Without the world size either, both are named; from the command line, one line each.
  auto cli = run_in_source("check --hf-args configs/llamafactory/sft_tp4.yaml");
  EXPECT_EQ(cli.status, 1);
  EXPECT_EQ(std::count(cli.err.begin(), cli.err.end(), '\n'), 2) << cli.err;
  EXPECT_NE(cli.err.find("needs the number of training samples (pass --data D.tokens) and the world size (pass "
                         "--world-size W); or set max_steps in configs/llamafactory/sft_tp4.yaml"),
            std::string::npos)
      << cli.err;
}

// ---- what autotp says beyond transformers ------------------------------------------------------------

TEST(ConfigHfArgs, TheTrainersOwnOptimizerIsWrittenInAndItsOwnScheduleRefused) {
  const std::string ds = repo("tests/configs_hf/ds_no_sections.json");
  ConfigResult constant = autotp::validate_config_file(ds, with_yaml(repo("tests/configs_hf/defaults.yaml"), 2));
  ASSERT_TRUE(constant.ok()) << constant.message();
  EXPECT_EQ(constant.config.optimizer.type, "AdamW");
  EXPECT_DOUBLE_EQ(constant.config.optimizer.lr, 5e-5);
  EXPECT_EQ(constant.config.micro_batch, 8);
  EXPECT_FALSE(constant.config.scheduler.has_value());
  EXPECT_FALSE(constant.config.bf16);
  // LLaMA-Factory's own YAMLs ask for cosine; the Trainer would run its LambdaLR, not a DeepSpeed schedule.
  ConfigResult cosine = autotp::validate_config_file(ds, with_yaml_text("lr_scheduler_type: cosine\nmax_steps: 10\n", 2));
  ASSERT_EQ(paths_of(cosine), std::vector<std::string>{"scheduler"}) << cosine.message();
  EXPECT_NE(cosine.problems[0].message.find("from lr_scheduler_type cosine (t.yaml:1); autotp runs DeepSpeed's schedules: "
                                            "add \"scheduler\": {\"type\": \"WarmupCosineLR\""),
            std::string::npos)
      << cosine.message();
  ConfigResult adafactor = autotp::validate_config_file(ds, with_yaml_text("optim: adafactor\nlr_scheduler_type: constant\n"));
  EXPECT_EQ(paths_of(adafactor), std::vector<std::string>{"optimizer"}) << adafactor.message();
}

TEST(ConfigHfArgs, DeepSpeedsOptimizerDecaysNormsAndBiasesTheTrainersDoesNot) {
  // The Trainer hands an "optimizer" section every parameter in one group (DummyOptim), so DeepSpeed
  // decays the norms too; its own AdamW (no section) leaves 1-D parameters undecayed. make
  // llamafactory-check measured the difference: 4e-4 on every norm weight after 10 steps at lr 1e-3, wd 0.1.
  ConfigResult ds = autotp::validate_config_file(repo("tests/configs_hf/ds_decay.json"),
                                                 with_yaml(repo("tests/configs_hf/decay.yaml"), 2, 37));
  ASSERT_TRUE(ds.ok()) << ds.message();
  EXPECT_TRUE(ds.config.decay_norms_and_biases);
  EXPECT_NE(autotp::check_report(ds.config).find("decay_norms_and_biases <- true"), std::string::npos)
      << autotp::check_report(ds.config);
  ConfigResult own = autotp::validate_config_file(repo("tests/configs_hf/ds_no_sections.json"),
                                                  with_yaml(repo("tests/configs_hf/defaults.yaml"), 2));
  ASSERT_TRUE(own.ok()) << own.message();
  EXPECT_FALSE(own.config.decay_norms_and_biases);
  ConfigResult kept = autotp::validate_config_text(
      R"({"train_micro_batch_size_per_gpu": "auto", "decay_norms_and_biases": false,
          "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}})", "ds.json",
      with_yaml_text("weight_decay: 0.1\nlr_scheduler_type: constant\n"));
  ASSERT_TRUE(kept.ok()) << kept.message();
  EXPECT_FALSE(kept.config.decay_norms_and_biases);  // written in the file: the file wins
}

TEST(ConfigHfArgs, NoTrainBatchSizeNumberSatisfiesBothAtTp2) {
  const std::string ds = R"({"train_batch_size": 32, "train_micro_batch_size_per_gpu": "auto", "tensor_parallel": {"autotp_size": 2},
      "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}})";
  ConfigResult r = autotp::validate_config_text(ds, "ds.json", with_yaml_text("per_device_train_batch_size: 4\n"
                                                                             "gradient_accumulation_steps: 2\n"
                                                                             "lr_scheduler_type: constant\n", 4));
  ASSERT_EQ(paths_of(r), std::vector<std::string>{"train_batch_size"}) << r.message();
  EXPECT_EQ(r.problems[0].message,
            "32: at autotp_size 2 no number satisfies both the Hugging Face Trainer, which checks it against world 4 × "
            "per_device_train_batch_size 4 × gradient_accumulation_steps 2 = 32 (TP replicas counted), and autotp, which "
            "counts distinct samples (16 = micro × GA × dp): write \"auto\"");
}

TEST(ConfigHfArgs, ZeroWarmupAndDisagreeingFlagsAreNamed) {
  const std::string ds = R"({"train_micro_batch_size_per_gpu": "auto", "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
      "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}})";
  ConfigOverrides o = with_yaml_text("max_steps: 100\n");
  o.micro_batch = 2;
  ConfigResult r = autotp::validate_config_text(ds, "ds.json", o);
  ASSERT_EQ(paths_of(r), (std::vector<std::string>{"--micro-batch", "scheduler.params.warmup_num_steps"})) << r.message();
  EXPECT_EQ(r.problems[0].message, "2 disagrees with per_device_train_batch_size 8 (transformers' default; t.yaml does "
                                   "not set it); with --hf-args the YAML sets it: drop the flag or edit t.yaml");
  EXPECT_NE(r.problems[1].message.find("\"auto\" would be 0, from warmup_steps 0 (transformers' default"), std::string::npos)
      << r.problems[1].message;
}

TEST(ConfigHfArgs, ScalarsResolveAsLlamaFactorysLoaderReadsThem) {
  auto r = autotp::read_hf_args_text(
      "---\n# comment\nlearning_rate: 1e-5   # OmegaConf reads 1e-5 as a number\noutput_dir: 'it''s: here'\n"
      "template: \"llama3\"\nbf16: True\nwarmup_steps: 7\nresume_from_checkpoint: null\nrun_name: a#b\n",
      "s.yaml");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_DOUBLE_EQ(r.args.learning_rate, 1e-5);
  EXPECT_EQ(r.args.values.at("output_dir").s, "it's: here");
  EXPECT_EQ(r.args.values.at("template").s, "llama3");
  EXPECT_EQ(r.args.values.at("run_name").s, "a#b");
  EXPECT_TRUE(r.args.bf16);
  EXPECT_EQ(r.args.warmup_steps, 7);
  EXPECT_EQ(r.args.values.at("resume_from_checkpoint").kind, autotp::HfValue::Kind::Null);
  EXPECT_EQ(r.args.describe("warmup_steps"), "warmup_steps 7 (s.yaml:7)");
  EXPECT_EQ(first_problem("bf16: yes\n"), "n.yaml:1: bf16: expected true or false, got yes (YAML 1.1 loaders read it as "
                                          "a boolean, YAML 1.2 ones as a string): write true or false");
  EXPECT_EQ(first_problem("gradient_accumulation_steps: 2.0\n"),
            "n.yaml:1: gradient_accumulation_steps: expected an integer >= 1 (TrainingArguments declares it int), got 2.0");
  EXPECT_EQ(first_problem("per_device_train_batch_size: \"4\"\n"),
            "n.yaml:1: per_device_train_batch_size: expected an integer >= 1 (TrainingArguments declares it int), got "
            "\"4\" (a quoted string)");
  EXPECT_EQ(first_problem("a: 1\nbf16: true\na: 2\n"),
            "n.yaml:3: a: duplicate key (first at line 1); LLaMA-Factory's loader refuses a YAML that repeats one");
}

// ---- both sides computed: transformers' HfTrainerDeepSpeedConfig against autotp check --json --------------

TEST(ConfigHfArgs, EveryFilledValueMatchesTransformersDeepSpeedIntegration) {
  // 37 examples: at micro 3 x dp 2, 7 batches per rank, 3 steps per epoch at GA 2, ceil(2.5 x 3) = 8 steps.
  const std::string data = testing::TempDir() + "autotp_hf_auto_" + std::to_string(getpid()) + ".tokens";
  autotp::TokenFileV2 file;
  file.vocab = 50;
  for (int64_t e = 0; e < 37; ++e) {
    file.example_offsets.push_back(static_cast<int64_t>(file.tokens.size()));
    for (int64_t t = 0; t < 5 + e % 4; ++t) file.tokens.push_back((e + t) % 50);
  }
  file.example_offsets.push_back(static_cast<int64_t>(file.tokens.size()));
  autotp::write_token_file(data, file);
  const std::string lf = repo("configs/llamafactory/"), hf = repo("tests/configs_hf/");
  const std::string cases = " " + lf + "sft_tp2.yaml," + lf + "ds_zero1_tp2_auto.json,4 " + lf + "sft_tp4.yaml," + lf +
                            "ds_zero1_tp4_auto.json,8," + data + " " + hf + "decay.yaml," + hf + "ds_decay.json,2," + data +
                            " " + hf + "defaults.yaml," + hf + "ds_no_sections.json,2 " + hf + "mismatch.yaml," + hf +
                            "ds_mismatch.json,2";
  auto r = autotp_test::run_command(std::string(AUTOTP_VENV_BIN) + "/python " + repo("tests/deepspeed/hf_auto.py") + " " +
                                    AUTOTP_CLI + cases);
  std::filesystem::remove(data);
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  for (const char* line : {"sft_tp2.yaml + ds_zero1_tp2_auto.json at world 4: 16 values agree with transformers 4.51.3",
                           "sft_tp4.yaml + ds_zero1_tp4_auto.json at world 8: 18 values agree with transformers",
                           "decay.yaml + ds_decay.json at world 2: 17 values agree with transformers",
                           "defaults.yaml + ds_no_sections.json at world 2: 13 values agree with transformers",
                           "mismatch.yaml + ds_mismatch.json at world 2: the same 12 mismatches refused by transformers"})
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
  // The shipped YAMLs hold only LLaMA-Factory keys, with the types its dataclasses declare.
  auto keys = autotp_test::run_command(std::string(AUTOTP_VENV_BIN) + "/python " +
                                       repo("tests/deepspeed/check_plan_configs.py") + " --yaml " + lf + "sft_tp2.yaml --yaml " +
                                       lf + "sft_tp4.yaml");
  EXPECT_EQ(keys.status, 0) << keys.out << keys.err;
}

// ---- autotp train --hf-args: the YAML's deepspeed: file, and the Trainer's step count -------------------

TEST(ConfigHfArgs, TrainRunsAsManyStepsAsTheTrainerWould) {
  // 10 examples, micro 2 x dp 1: 5 steps per epoch, 2 epochs -> 10 optimizer steps; no --config, no --steps.
  const std::string dir = testing::TempDir() + "autotp_hf_train_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  autotp::TokenFileV2 file;
  file.vocab = autotp_test::config_of("llama_gqa").vocab;
  for (int64_t e = 0; e < 10; ++e) {
    file.example_offsets.push_back(static_cast<int64_t>(file.tokens.size()));
    for (int64_t t = 0; t < 12; ++t) file.tokens.push_back((7 * e + 3 * t) % file.vocab);
  }
  file.example_offsets.push_back(static_cast<int64_t>(file.tokens.size()));
  autotp::write_token_file(dir + "/data.tokens", file);
  std::ofstream(dir + "/ds.json") << R"({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
      "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
      "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}},
      "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto", "warmup_min_lr": "auto",
                    "warmup_max_lr": "auto", "warmup_num_steps": "auto", "warmup_type": "linear"}},
      "zero_optimization": {"stage": 1}})";
  std::ofstream(dir + "/sft.yaml") << "stage: sft\nfinetuning_type: full\ndeepspeed: " << dir << "/ds.json\n"
                                   << "per_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nnum_train_epochs: 2.0\n"
                                   << "warmup_ratio: 0.3\nlr_scheduler_type: linear\n";
  auto r = autotp_test::run_command(std::string(AUTOTP_CLI) + " train --hf-args " + dir + "/sft.yaml --model " +
                                    autotp_test::fixture("llama_gqa") + " --data " + dir + "/data.tokens --seq 12 --metrics " +
                                    dir + "/m.jsonl");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  std::ifstream in(dir + "/m.jsonl");
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 10u) << r.out;
  EXPECT_EQ(rows.back().at("step"), 10);
  EXPECT_EQ(rows.back().at("epoch"), 1);
  std::filesystem::remove_all(dir);
}
