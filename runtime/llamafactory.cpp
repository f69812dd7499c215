// The key-by-key reading of a LLaMA-Factory YAML behind `autotp train --llamafactory` (runtime/llamafactory.h).
#include "runtime/llamafactory.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "runtime/config_internal.h"

namespace autotp {
namespace {

namespace fs = std::filesystem;

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The value as the YAML wrote it, for messages and for comparing with the harmless values.
std::string text_of(const HfValue& v) {
  if (v.kind == HfValue::Kind::Null) return "null";
  if (v.kind == HfValue::Kind::Bool) return v.b ? "true" : "false";
  return v.s;
}

// Keys --hf-args reads (runtime/hf_args.cpp, typed_fields) and config_hf.cpp turns into the DeepSpeed config.
const std::set<std::string>& hf_keys() {
  static const std::set<std::string> k{
      "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "adam_beta1", "adam_beta2",
      "adam_epsilon", "weight_decay", "max_grad_norm", "num_train_epochs", "max_steps", "warmup_steps", "warmup_ratio",
      "fp16", "fp16_full_eval", "bf16", "bf16_full_eval", "fp16_backend", "dataloader_drop_last", "lr_scheduler_type",
      "optim", "deepspeed"};
  return k;
}

// Run keys that set one field of LlamaFactoryRun as written, by the field's type. A nullable one keeps
// its default at null (LLaMA-Factory's `max_samples: null`); for the others null is a problem.
template <typename T>
struct FieldKey {
  T LlamaFactoryRun::*field;
  bool nullable = false;
};
const std::map<std::string, FieldKey<std::string>>& string_keys() {
  static const std::map<std::string, FieldKey<std::string>> k{{"model_name_or_path", {&LlamaFactoryRun::model_dir}},
                                                               {"dataset_dir", {&LlamaFactoryRun::dataset_dir}},
                                                               {"output_dir", {&LlamaFactoryRun::output_dir}},
                                                               {"resume_from_checkpoint", {&LlamaFactoryRun::resume_from_checkpoint, true}}};
  return k;
}
const std::map<std::string, FieldKey<int64_t>>& int_keys() {
  static const std::map<std::string, FieldKey<int64_t>> k{{"cutoff_len", {&LlamaFactoryRun::cutoff_len}},
                                                           {"max_samples", {&LlamaFactoryRun::max_samples, true}},
                                                           {"logging_steps", {&LlamaFactoryRun::logging_steps}},
                                                           {"save_steps", {&LlamaFactoryRun::save_steps}},
                                                           {"save_total_limit", {&LlamaFactoryRun::save_total_limit, true}}};
  return k;
}
const std::map<std::string, FieldKey<bool>>& bool_keys() {
  static const std::map<std::string, FieldKey<bool>> k{{"train_on_prompt", {&LlamaFactoryRun::train_on_prompt}},
                                                        {"disable_shuffling", {&LlamaFactoryRun::disable_shuffling}},
                                                        {"overwrite_output_dir", {&LlamaFactoryRun::overwrite_output_dir}}};
  return k;
}
// Run keys read with their own rule (read_run below).
const std::set<std::string> kRuleKeys{"dataset", "template", "save_strategy"};

// Keys read into LlamaFactoryRun: the field keys and the rule keys.
const std::set<std::string>& run_keys() {
  static const std::set<std::string> k = [] {
    std::set<std::string> all = kRuleKeys;
    for (const auto& [key, f] : string_keys()) all.insert(key);
    for (const auto& [key, f] : int_keys()) all.insert(key);
    for (const auto& [key, f] : bool_keys()) all.insert(key);
    return all;
  }();
  return k;
}

// Keys that change nothing autotp computes: logging, workers, timeouts, kernels and attention
// implementations of the same math, how checkpoints are stored, and options of methods that are off.
const std::set<std::string>& ignored_keys() {
  static const std::set<std::string> k{
      "report_to", "run_name", "logging_dir", "logging_strategy", "logging_first_step", "logging_nan_inf_filter",
      "plot_loss", "overwrite_cache", "preprocessing_num_workers", "preprocessing_batch_size", "dataloader_num_workers",
      "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor", "ddp_timeout",
      "ddp_find_unused_parameters", "ddp_backend", "trust_remote_code", "flash_attn", "disable_gradient_checkpointing",
      "gradient_checkpointing", "use_reentrant_gc", "enable_liger_kernel", "save_only_model", "save_safetensors",
      "disable_tqdm", "log_level", "log_level_replica", "include_num_input_tokens_seen", "seed", "data_seed", "tf32",
      "low_cpu_mem_usage", "cache_dir", "model_revision", "infer_backend", "print_param_status",
      "per_device_eval_batch_size", "eval_steps", "torch_empty_cache_steps", "skip_memory_metrics", "torch_compile",
      "full_determinism", "remove_unused_columns", "quantization_method", "double_quantization", "enable_thinking",
      "buffer_size", "media_dir", "hub_model_id", "hub_strategy", "hub_private_repo"};
  return k;
}

// Keys harmless at the listed values (and null); any other value would change training and is refused.
struct Conditional {
  std::vector<std::string> fine;  // lower case
  std::string why;                // "<reason>: <what to write>"
};
const std::map<std::string, Conditional>& conditional_keys() {
  static const std::string kNoLora = "autotp trains every weight (finetuning_type: full), with no adapters: remove it";
  static const std::string kNoEval =
      "evaluation is not implemented for --llamafactory runs (tokenize_data.py --eval-split and autotp train --eval-data "
      "do it): remove it";
  static const std::string kOptimizer = "autotp's optimizer is AdamW (or Adam) with ZeRO-1: write false";
  static const std::map<std::string, Conditional> k{
      {"stage", {{"sft"}, "autotp's --llamafactory runs supervised fine-tuning (pt, rm, ppo, dpo and kto are not implemented): write stage: sft"}},
      {"do_train", {{"true"}, "autotp train trains: write do_train: true"}},
      {"finetuning_type", {{"full"}, "autotp trains every weight; LoRA, OFT and freeze tuning are not implemented: write finetuning_type: full"}},
      {"packing", {{"false"}, "autotp trains one example per sample, padded, as LLaMA-Factory's sft does without packing: write packing: false"}},
      {"neat_packing", {{"false"}, "packing is not implemented (one example per sample, padded): write neat_packing: false"}},
      {"mask_history", {{"false"}, "autotp trains on every assistant turn (LLaMA-Factory's default); the last turn only is not implemented: write mask_history: false"}},
      {"use_unsloth", {{"false"}, "Unsloth's patched model is not what autotp traces and shards: write use_unsloth: false"}},
      {"use_unsloth_gc", {{"false"}, "Unsloth is not used by autotp: write use_unsloth_gc: false"}},
      {"quantization_bit", {{}, "autotp trains fp32 weights (or bf16 with fp32 masters); quantized (QLoRA) training is not implemented: remove it"}},
      {"val_size", {{"0", "0.0"}, "holding out part of the training data is not implemented for --llamafactory runs (tokenize_data.py --eval-split and autotp train --eval-data do it): remove it"}},
      {"eval_dataset", {{}, kNoEval}},
      {"do_eval", {{"false"}, kNoEval}},
      {"do_predict", {{"false"}, "prediction is not implemented: write do_predict: false"}},
      {"eval_strategy", {{"no"}, kNoEval}},
      {"evaluation_strategy", {{"no"}, kNoEval}},
      {"predict_with_generate", {{"false"}, "generation is not implemented: write predict_with_generate: false"}},
      {"compute_accuracy", {{"false"}, kNoEval}},
      {"streaming", {{"false"}, "autotp tokenizes the whole dataset before training: write streaming: false"}},
      {"mix_strategy", {{"concat"}, "autotp concatenates the datasets: write mix_strategy: concat"}},
      {"interleave_probs", {{}, "interleaved mixing is not implemented (autotp concatenates the datasets): remove it"}},
      {"tokenized_path", {{}, "autotp tokenizes into its own cache (a token file), not a datasets folder: remove it"}},
      {"neftune_noise_alpha", {{"0", "0.0"}, "NEFTune's embedding noise is not implemented: remove it"}},
      {"rope_scaling", {{}, "autotp trains the model as its config.json defines it: remove it"}},
      {"resize_vocab", {{"false"}, "autotp trains the model's own vocabulary: write resize_vocab: false"}},
      {"new_special_tokens", {{}, "autotp trains the model's own vocabulary: remove it"}},
      {"split_special_tokens", {{"false"}, "autotp tokenizes special tokens as tokens, as LLaMA-Factory does by default: write false"}},
      {"use_fast_tokenizer", {{"true"}, "autotp tokenizes with the fast tokenizer, as LLaMA-Factory does by default: write true"}},
      {"ignore_pad_token_for_loss", {{"true"}, "autotp never trains on padding: write true"}},
      {"tool_format", {{}, "tool calls are not rendered by autotp's templates: remove it"}},
      {"use_galore", {{"false"}, kOptimizer}},
      {"use_apollo", {{"false"}, kOptimizer}},
      {"use_badam", {{"false"}, kOptimizer}},
      {"use_adam_mini", {{"false"}, kOptimizer}},
      {"use_muon", {{"false"}, kOptimizer}},
      {"adafactor", {{"false"}, kOptimizer}},
      {"optim_args", {{}, "autotp's AdamW takes its arguments from adam_beta1, adam_beta2, adam_epsilon and weight_decay: remove it"}},
      {"use_llama_pro", {{"false"}, "LLaMA Pro's block expansion is not implemented: write use_llama_pro: false"}},
      {"shift_attn", {{"false"}, "shift short attention (S^2-Attn) is not implemented: write shift_attn: false"}},
      {"upcast_layernorm", {{"false"}, "autotp keeps the norms in the training dtype: write upcast_layernorm: false"}},
      {"upcast_lmhead_output", {{"false"}, "autotp computes the loss from the lm-head output as it is: write upcast_lmhead_output: false"}},
      {"label_smoothing_factor", {{"0", "0.0"}, "autotp's loss is plain cross-entropy: write label_smoothing_factor: 0"}},
      {"auto_find_batch_size", {{"false"}, "autotp trains per_device_train_batch_size as given: write auto_find_batch_size: false"}},
      {"group_by_length", {{"false"}, "autotp orders samples by its seeded shuffle, not by length: write group_by_length: false"}},
      {"push_to_hub", {{"false"}, "autotp does not upload: write push_to_hub: false"}},
      {"use_dora", {{"false"}, kNoLora}},
      {"use_rslora", {{"false"}, kNoLora}},
      {"create_new_adapter", {{"false"}, kNoLora}},
      {"adapter_name_or_path", {{}, kNoLora}},
      {"additional_target", {{}, kNoLora}},
  };
  return k;
}

// Whole families refused at any value: they only mean something with LoRA / OFT / freeze tuning.
std::string family_of(const std::string& key) {
  for (const char* prefix : {"lora_", "loraplus_", "pissa_", "oft_"})
    if (key.rfind(prefix, 0) == 0) return "a LoRA key";
  if (key.rfind("freeze_", 0) == 0) return "a freeze-tuning key";
  return "";
}

bool ignored_family(const std::string& key) {  // options of optimizers that conditional_keys keeps off
  for (const char* prefix : {"galore_", "apollo_", "badam_"})
    if (key.rfind(prefix, 0) == 0) return true;
  return false;
}

std::string template_names() {
  std::string names;
  for (const auto& n : llamafactory_templates()) names += (names.empty() ? "" : ", ") + n;
  return names;
}

std::string closest_known(const std::string& key) {
  std::string best;
  size_t best_d = 4;  // at most 3 edits
  auto consider = [&](const std::string& k) {
    const size_t d = config_detail::edit_distance(key, k);
    if (d < best_d) best_d = d, best = k;
  };
  for (const auto* set : {&hf_keys(), &run_keys(), &ignored_keys()})
    for (const auto& k : *set) consider(k);
  for (const auto& [k, c] : conditional_keys()) consider(k);
  return best;
}

struct Reader {
  const HfArgs& args;
  LlamaFactoryResult out;
  std::vector<std::pair<int, std::string>> problems;  // by line

  void problem(const std::string& key, const std::string& message) {
    auto it = args.values.find(key);
    const int line = it == args.values.end() ? 1 << 30 : it->second.line;
    problems.push_back({line, args.where(key) + ": " + key + ": " + message});
  }
  void refuse(const std::string& key, const HfValue& v, const std::string& why) { problem(key, text_of(v) + ": " + why); }

  std::optional<std::string> string_value(const std::string& key, const HfValue& v) {
    if (v.kind == HfValue::Kind::Null || v.s.empty()) {
      problem(key, "expected a value, got " + text_of(v));
      return std::nullopt;
    }
    return v.s;
  }
  std::optional<int64_t> int_value(const std::string& key, const HfValue& v) {
    if (v.kind != HfValue::Kind::Int || v.i < 1) {
      problem(key, "expected a whole number >= 1, got " + text_of(v) +
                       (v.kind == HfValue::Kind::Float ? " (a fraction of the run is not supported: write a number of steps)" : ""));
      return std::nullopt;
    }
    return v.i;
  }
  std::optional<bool> bool_value(const std::string& key, const HfValue& v) {
    if (v.kind != HfValue::Kind::Bool) {
      problem(key, "expected true or false, got " + text_of(v));
      return std::nullopt;
    }
    return v.b;
  }

  // One field key: the value into its field, unless it is a nullable key's null.
  template <typename T, typename Read>
  bool read_field(const std::map<std::string, FieldKey<T>>& keys, const std::string& key, const HfValue& v, Read read) {
    auto it = keys.find(key);
    if (it == keys.end()) return false;
    if (it->second.nullable && v.kind == HfValue::Kind::Null) return true;
    if (auto x = (this->*read)(key, v)) out.run.*(it->second.field) = *x;
    return true;
  }

  void read_run(const std::string& key, const HfValue& v) {
    if (read_field(string_keys(), key, v, &Reader::string_value) || read_field(int_keys(), key, v, &Reader::int_value) ||
        read_field(bool_keys(), key, v, &Reader::bool_value))
      return;
    LlamaFactoryRun& r = out.run;
    if (key == "dataset") {
      if (auto s = string_value(key, v)) {
        for (size_t start = 0; start <= s->size();) {
          size_t comma = s->find(',', start);
          if (comma == std::string::npos) comma = s->size();
          std::string name = s->substr(start, comma - start);
          name.erase(0, name.find_first_not_of(" \t"));
          name.erase(name.find_last_not_of(" \t") + 1);
          if (!name.empty()) r.datasets.push_back(name);
          start = comma + 1;
        }
      }
    } else if (key == "template") {
      if (auto s = string_value(key, v)) {
        const auto& t = llamafactory_templates();
        if (std::find(t.begin(), t.end(), *s) == t.end()) {
          refuse(key, v, "autotp renders LLaMA-Factory's templates " + template_names() + " (scripts/llamafactory_data.py); "
                         "write your model's one of these");
        } else {
          r.template_name = *s;
        }
      }
    } else if (key == "save_strategy") {
      const std::string s = lower(text_of(v));
      if (s == "steps" || s == "no") r.save_every_steps = s == "steps";
      else refuse(key, v, "autotp saves every save_steps steps and after the last one: write save_strategy: steps, or no");
    }
  }

  void classify(const std::string& key, const HfValue& v) {
    if (hf_keys().count(key)) return;
    if (run_keys().count(key)) return read_run(key, v);
    if (ignored_keys().count(key) || ignored_family(key)) return out.run.ignored.push_back(key);
    auto c = conditional_keys().find(key);
    if (c != conditional_keys().end()) {
      const std::string t = lower(text_of(v));
      if (t == "null" || std::find(c->second.fine.begin(), c->second.fine.end(), t) != c->second.fine.end()) {
        if (key != "stage" && key != "do_train" && key != "finetuning_type") out.run.ignored.push_back(key);
        return;
      }
      return refuse(key, v, c->second.why);
    }
    const std::string family = family_of(key);
    if (!family.empty() && (v.kind == HfValue::Kind::Null || (v.kind == HfValue::Kind::Bool && !v.b)))
      return out.run.ignored.push_back(key);  // unset, as with finetuning_type: full
    if (!family.empty())
      return refuse(key, v, family + "; autotp trains every weight (finetuning_type: full), with no adapters or frozen "
                                     "layers: remove it");
    const std::string near = closest_known(key);
    problem(key, "not a key autotp's --llamafactory knows" + (near.empty() ? std::string() : " (did you mean " + near + "?)") +
                     "; autotp refuses what it cannot tell the effect of on training: remove or correct it");
  }

  void required(const std::string& key, bool missing, const std::string& what) {
    if (missing && !args.values.count(key)) problems.push_back({1 << 30, args.source + ": " + key + ": not set; " + what});
  }

  void check_files() {
    const LlamaFactoryRun& r = out.run;
    std::error_code ec;
    if (!r.model_dir.empty() && !fs::is_regular_file(fs::path(r.model_dir) / "config.json", ec))
      problem("model_name_or_path",
              r.model_dir + " is not a local Hugging Face folder (no " + (fs::path(r.model_dir) / "config.json").string() +
                  "); autotp does not download: fetch it first (huggingface-cli download " + r.model_dir +
                  " --local-dir DIR) and write that folder");
    const fs::path info = fs::path(r.dataset_dir) / "dataset_info.json";
    if (!r.datasets.empty() && !fs::is_regular_file(info, ec)) {
      const std::string message = "no " + info.string() + ", which names the datasets' files and formats";
      if (args.values.count("dataset_dir")) problem("dataset_dir", r.dataset_dir + ": " + message);
      else problem("dataset", "dataset_dir is LLaMA-Factory's default data, and there is " + message + "; set dataset_dir");
    }
  }
};

}  // namespace

const std::vector<std::string>& llamafactory_templates() {
  static const std::vector<std::string> t{"empty", "default", "chatml", "qwen", "smollm", "smollm2", "llama3"};
  return t;
}

std::string LlamaFactoryResult::message() const {
  std::string m;
  for (const auto& p : problems) m += (m.empty() ? "" : "\n") + p;
  return m;
}

LlamaFactoryResult read_llamafactory(const HfArgs& args) {
  Reader r{args, {}, {}};
  std::vector<std::pair<int, std::string>> by_line;
  for (const auto& [key, v] : args.values) by_line.push_back({v.line, key});
  std::sort(by_line.begin(), by_line.end());
  for (const auto& [line, key] : by_line) r.classify(key, args.values.at(key));
  const LlamaFactoryRun& run = r.out.run;
  r.required("model_name_or_path", run.model_dir.empty(), "write the local Hugging Face folder to train");
  r.required("dataset", run.datasets.empty(), "write the dataset names of dataset_dir/dataset_info.json, comma-separated");
  r.required("template", run.template_name.empty(),
             "write the model's LLaMA-Factory template (autotp renders " + template_names() + ")");
  r.required("output_dir", run.output_dir.empty(), "write the folder for checkpoints and the trained Hugging Face model");
  r.required("deepspeed", args.deepspeed.empty(),
             "autotp takes tensor_parallel.autotp_size and the ZeRO stage from the DeepSpeed config: write its path, e.g. "
             "configs/llamafactory/ds_zero1_tp2_auto.json");
  r.check_files();
  std::stable_sort(r.problems.begin(), r.problems.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& p : r.problems) r.out.problems.push_back(std::move(p.second));
  return r.out;
}

}  // namespace autotp
