// `autotp train --llamafactory sft.yaml`: what a LLaMA-Factory training YAML asks for, read key by key
// (LLaMA-Factory 0.9.3, the release that runs on transformers 4.51.3).
//
// Every key of the file falls in one of four classes, decided here:
//   - read by --hf-args (runtime/hf_args.h, config_hf.cpp): batch sizes, learning rate, Adam, clipping,
//     epochs / max_steps, warmup, lr_scheduler_type, optim, bf16 / fp16, deepspeed;
//   - read here (LlamaFactoryRun): the model folder, the data (dataset, dataset_dir, template,
//     cutoff_len, max_samples, train_on_prompt), disable_shuffling, output_dir, logging_steps, save_* and resume keys;
//   - ignored: keys that change nothing autotp computes (report_to, run_name, dataloader workers, ...),
//     listed once when training starts;
//   - refused: keys that would change training and that autotp does not implement (LoRA, freezing,
//     packing, quantization, other stages, evaluation splits, ...), one line each naming the key, its
//     value and what to write instead. A key in no class is refused too: autotp does not guess what an
//     unknown key would change.
// No LibTorch and no JSON library here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/hf_args.h"

namespace autotp {

struct LlamaFactoryRun {
  std::string model_dir;                 // model_name_or_path: a local Hugging Face folder
  std::vector<std::string> datasets;     // dataset: names in dataset_dir/dataset_info.json
  std::string dataset_dir = "data";      // LLaMA-Factory's default, relative to the working directory
  std::string template_name;             // template
  int64_t cutoff_len = 2048;
  int64_t max_samples = 0;               // 0: every record
  bool train_on_prompt = false;
  bool disable_shuffling = false;        // true: the samples in file order (the Trainer's SequentialSampler), as --no-shuffle
  std::string output_dir;                // checkpoints (step-<N>/, latest) and the merged Hugging Face files
  int64_t logging_steps = 500;           // TrainingArguments' defaults
  int64_t save_steps = 500;
  bool save_every_steps = true;          // save_strategy steps; false: no (the final checkpoint only)
  int64_t save_total_limit = 0;          // 0: keep every checkpoint
  bool overwrite_output_dir = false;
  std::string resume_from_checkpoint;    // empty: none given
  std::vector<std::string> ignored;      // keys with no effect on autotp's training, in file order
};

struct LlamaFactoryResult {
  LlamaFactoryRun run;                 // meaningful only when ok()
  std::vector<std::string> problems;   // "sft.yaml:9: finetuning_type: lora: ...", in file order
  bool ok() const { return problems.empty(); }
  std::string message() const;         // the problems, one per line
};

// Classifies every key of an already read YAML (read_hf_args_file reports its syntax and types).
// Checks the files it can without Python: model_name_or_path/config.json, dataset_dir/dataset_info.json.
LlamaFactoryResult read_llamafactory(const HfArgs& args);

// The templates scripts/llamafactory_data.py renders (its TEMPLATES), in that order.
const std::vector<std::string>& llamafactory_templates();

}  // namespace autotp
