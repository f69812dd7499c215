// `--hf-args sft.yaml`: a LLaMA-Factory / Hugging Face TrainingArguments YAML, the file whose values
// transformers' DeepSpeed integration writes into a DeepSpeed config's "auto" placeholders
// (HfTrainerDeepSpeedConfig.trainer_config_process / trainer_config_finalize, transformers 4.51;
// the filling itself is runtime/config_hf.cpp).
//
// The reader is flat on purpose: LLaMA-Factory's YAMLs are `key: value` lines with comments, quoted
// strings, numbers and booleans. Anything nested (an indented line, a `- item`, a flow `[...]` /
// `{...}`, a block scalar `|` / `>`, anchors, tags, a second document) is an error naming file:line.
// Scalars resolve as LLaMA-Factory's loader (OmegaConf) does: `1e-5` is a number, `"4"` a string.
// Keys autotp does not read are kept and otherwise ignored (LLaMA-Factory has hundreds).
// No LibTorch and no JSON library in this header.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace autotp {

// One `key: value` line as written.
struct HfValue {
  enum class Kind { Null, Bool, Int, Float, String };
  Kind kind = Kind::Null;
  bool quoted = false;  // a quoted string: never a number or boolean
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;     // the string, or the scalar's text for the other kinds
  int line = 0;
};

// The TrainingArguments fields the DeepSpeed integration reads, with transformers 4.51's defaults for
// keys the YAML does not set.
struct HfArgs {
  std::string source;                     // the YAML's path, for messages
  std::map<std::string, HfValue> values;  // every key in the file
  int64_t per_device_train_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 5e-5;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;
  double num_train_epochs = 3.0;
  int64_t max_steps = -1;  // >= 0 overrides num_train_epochs
  int64_t warmup_steps = 0;  // > 0 overrides warmup_ratio
  double warmup_ratio = 0.0;
  bool fp16 = false, fp16_full_eval = false, bf16 = false, bf16_full_eval = false;
  std::string fp16_backend = "auto";  // "apex" routes fp16 to amp.enabled instead of fp16.enabled
  bool auto_find_batch_size = false;  // the micro batch and train_batch_size are then filled, not checked
  bool dataloader_drop_last = false;
  std::string lr_scheduler_type = "linear";  // the Trainer's own schedule, used when DeepSpeed has none
  std::string optim = "adamw_torch";         // the Trainer's own optimizer, used when DeepSpeed has none
  std::string deepspeed;                     // the DeepSpeed config the YAML names; empty: none

  // "learning_rate 0.0001 (sft.yaml:12)", or "learning_rate 5e-05 (transformers' default)".
  std::string describe(const std::string& key) const;
  // "sft.yaml:12", or "sft.yaml" when the key is not in the file.
  std::string where(const std::string& key) const;
};

struct HfArgsResult {
  HfArgs args;                        // meaningful only when ok()
  std::vector<std::string> problems;  // "sft.yaml:7: key: message", one line each, in file order
  bool ok() const { return problems.empty(); }
  std::string message() const;        // the problems, one per line
};

HfArgsResult read_hf_args_text(const std::string& text, const std::string& source);
// A missing or unreadable file is one problem.
HfArgsResult read_hf_args_file(const std::string& path);
// Throwing form: one autotp::Error with every problem on its own line.
HfArgs load_hf_args(const std::string& path);

// TrainingArguments.get_warmup_steps: warmup_steps if > 0, else ceil(num_training_steps × warmup_ratio).
int64_t hf_warmup_steps(const HfArgs& a, int64_t num_training_steps);
// Trainer.set_initial_training_values: max_steps unless negative; else ceil(num_train_epochs × steps per epoch),
// steps per epoch = max(batches // gradient_accumulation_steps, 1), batches = what accelerate's sharded
// loader gives one of `dp` ranks from `samples` samples (ceil(samples / (micro × dp)); with
// dataloader_drop_last, floor(floor(samples / micro) / dp)). Nullopt when max_steps is unset and the
// data size or dp is unknown.
std::optional<int64_t> hf_training_steps(const HfArgs& a, std::optional<int64_t> samples, int64_t dp);
// The steps per epoch above; nullopt when the data size or dp is unknown.
std::optional<int64_t> hf_steps_per_epoch(const HfArgs& a, std::optional<int64_t> samples, int64_t dp);

}  // namespace autotp
