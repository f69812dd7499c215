// Training config: a strict reader of DeepSpeed's own JSON keys for what autotp does (batch sizes,
// AdamW/Adam, the Warmup* LR schedules, bf16, ZeRO stage, tensor_parallel.autotp_size, clipping).
// Every problem in a file is collected (path + message) and reported at once, one line each; an
// unknown key names the closest valid one. Key-by-key meanings and decisions: configs/README.md.
// No LibTorch and no JSON library in this header: the trainer and the CLI include it cheaply.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace autotp {

struct HfArgs;  // runtime/hf_args.h

// One thing wrong with a config. `path` is the JSON path ("tensor_parallel.tp.tp_size",
// "optimizer.params.betas[1]"), a CLI flag ("--world-size"), or empty for the file as a whole.
struct ConfigProblem {
  std::string path;
  std::string message;
};

// Values given on the command line (`autotp train --micro-batch 4 --grad-accum 2 --lr 3e-4
// --world-size 8`). A flag replaces the file's value and satisfies an "auto" there.
struct ConfigOverrides {
  std::optional<int64_t> micro_batch;  // --micro-batch -> train_micro_batch_size_per_gpu
  std::optional<int64_t> grad_accum;   // --grad-accum  -> gradient_accumulation_steps
  std::optional<double> lr;            // --lr          -> optimizer.params.lr
  std::optional<int64_t> world_size;   // --world-size: total ranks (tp x dp); not a config key
  std::optional<int64_t> steps_per_print;  // --llamafactory's logging_steps -> steps_per_print
  // --hf-args sft.yaml: fills every "auto" as transformers' DeepSpeed integration does, and checks
  // the values that are not "auto" against it (runtime/config_hf.cpp).
  std::shared_ptr<const HfArgs> hf_args;
  // Samples per epoch of the training data (--data): with --hf-args, num_train_epochs needs it to
  // count the training steps when max_steps is not set.
  std::optional<int64_t> dataset_samples;
};

enum class SchedulerType { WarmupLR, WarmupDecayLR, WarmupCosineLR };
enum class WarmupType { Log, Linear };
const char* scheduler_type_name(SchedulerType t);

// DeepSpeed's lr_schedules.py parameters, as written (defaults are DeepSpeed's).
struct SchedulerConfig {
  SchedulerType type = SchedulerType::WarmupLR;
  WarmupType warmup_type = WarmupType::Log;
  int64_t warmup_num_steps = 1000;      // as written; lr_at applies DeepSpeed's max(2, n)
  double warmup_min_lr = 0.0;           // WarmupLR, WarmupDecayLR
  std::optional<double> warmup_max_lr;  // WarmupLR: unset = optimizer lr; WarmupDecayLR: 0.001 if unset
  int64_t total_num_steps = 0;          // WarmupDecayLR, WarmupCosineLR (required there)
  double warmup_min_ratio = 0.0;        // WarmupCosineLR
  double cos_min_ratio = 0.0001;        // WarmupCosineLR
};

struct OptimizerConfig {
  std::string type = "AdamW";  // "AdamW" or "Adam" (DeepSpeed matches them case-insensitively)
  double lr = 0.0;             // required: optimizer.params.lr or --lr
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool decoupled = true;  // AdamW semantics: "AdamW", or "Adam" with adam_w_mode true (the default)
};

// The resolved config. Batch fields that need the world size are 0 until it is known.
struct TrainConfig {
  std::string source;          // file name problems and reports are prefixed with
  int64_t micro_batch = 0;     // train_micro_batch_size_per_gpu
  int64_t grad_accum = 0;      // gradient_accumulation_steps
  int64_t train_batch = 0;     // train_batch_size = micro_batch x grad_accum x dp (distinct samples)
  int64_t world_size = 0;      // from --world-size; 0 = unknown
  int64_t dp = 0;              // world_size / tp; 0 = unknown
  int64_t tp = 1;              // tensor_parallel.autotp_size (0 and 1 both mean no TP)
  OptimizerConfig optimizer;
  std::optional<SchedulerConfig> scheduler;  // none: constant optimizer.lr
  bool bf16 = false;           // bf16.enabled; false = fp32
  int zero_stage = 0;          // zero_optimization.stage: 0 or 1 (2 and 3 are refused)
  // zero_optimization.overlap_comm: the DP gradient reduction runs in buckets of reduce_bucket_size
  // elements during the last micro-batch's backward; the parameter all-gather after the step in
  // buckets of allgather_bucket_size. DeepSpeed's defaults (off, 5e8, 5e8).
  bool overlap_comm = false;
  int64_t reduce_bucket_size = 500'000'000, allgather_bucket_size = 500'000'000;
  double gradient_clipping = 1.0;  // max global grad norm; 0 = off (DeepSpeed's default is 1.0 since 0.19.3)
  int64_t steps_per_print = 10;
  int64_t seed = 42;           // autotp's key; DeepSpeed ignores unknown top-level keys
  // autotp's key: weight decay on 1-D parameters (norm weights, biases) too. Default false, as
  // transformers' Trainer and LLaMA-Factory (and Megatron) do; DeepSpeed alone decays everything.
  bool decay_norms_and_biases = false;
  bool wall_clock_breakdown = false;
  std::vector<std::string> no_effect;  // accepted keys that change nothing in autotp, by path
  // With --hf-args: the YAML, what it filled ("optimizer.params.lr <- learning_rate 1e-05 (sft.yaml:12)"),
  // and the Trainer's num_training_steps (max_steps, or epochs x steps per epoch; 0 = unknown).
  std::string hf_source;
  std::vector<std::string> hf_filled;
  int64_t hf_training_steps = 0;

  // The resolved values in DeepSpeed's layout; validate_config_text reads it back to the same config.
  std::string to_json() const;
};

struct ConfigResult {
  TrainConfig config;  // meaningful only when ok()
  std::vector<ConfigProblem> problems;
  bool ok() const { return problems.empty(); }
  std::string message() const;  // format_problems(config.source, problems)
};

// Parse and validate without throwing. `text` may hold // and /* */ comments.
ConfigResult validate_config_text(const std::string& text, const std::string& source_name,
                                  const ConfigOverrides& overrides = {});
// Same for a file; a missing or unreadable file is one problem with an empty path.
ConfigResult validate_config_file(const std::string& path, const ConfigOverrides& overrides = {});

// Throwing forms: one autotp::Error whose what() has one line per problem.
TrainConfig parse_config_text(const std::string& text, const std::string& source_name,
                              const ConfigOverrides& overrides = {});
TrainConfig load_config(const std::string& path, const ConfigOverrides& overrides = {});

// "file.json: tensor_parallel.tp_size: unknown key; did you mean autotp_size?", one line each.
std::string format_problems(const std::string& source, const std::vector<ConfigProblem>& problems);

// The learning rate DeepSpeed's scheduler reports when its last_batch_iteration is `step`
// (-1 right after construction; DeepSpeed steps the scheduler after every optimizer update, so
// update n, counting from 0, runs with lr_at(n - 1)). `base_lr` is optimizer.params.lr.
double lr_at(const SchedulerConfig& s, double base_lr, int64_t step);
// The learning rate optimizer update `update` (0-based) uses: lr_at(update - 1), or the constant lr.
double lr_for_update(const TrainConfig& c, int64_t update);

// What `autotp check` prints: mesh, batch arithmetic, optimizer, schedule, ZeRO stage.
std::string check_report(const TrainConfig& c);

}  // namespace autotp
