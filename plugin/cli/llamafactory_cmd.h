// `autotp train --llamafactory sft.yaml` (README, "autotp train --llamafactory"): the YAML's keys
// classified (runtime/llamafactory.h), the Hugging Face folder traced by scripts/export_hf.py and the
// datasets tokenized by scripts/tokenize_data.py through the project's Python, both cached, then the
// same TrainOptions as `autotp train --hf-args YAML --config <its deepspeed:> --model M.pt --data D.tokens`,
// with checkpoints and the merged Hugging Face files in output_dir.
#pragma once

#include <string>
#include <vector>

#include "runtime/trainer.h"

namespace autotp_cli {

struct LlamaFactoryTrain {
  std::string output_dir;  // where llamafactory_merge writes the Hugging Face files
  bool chatty = true;      // rank 0 and not --quiet
};

// Fills `o` from the YAML (every option `flags_given` names must be one the YAML does not own), preparing
// the model and token files in the cache. Returns false after printing the YAML's problems, one per line.
bool llamafactory_train_options(const std::string& yaml, const std::vector<std::string>& flags_given,
                                autotp::TrainOptions& o, LlamaFactoryTrain& lf);

// Rank 0, after training: the last checkpoint of output_dir merged into output_dir as a Hugging Face folder.
void llamafactory_merge(const LlamaFactoryTrain& lf);

}  // namespace autotp_cli
