// Private to the config reader (runtime/config_*.cpp): what the two phases of validate_config_text
// share, and the text helpers their messages and reports use. The public API is runtime/config.h.
//   1. walk the JSON in file order: every key is known, rejected with a reason, or unknown (with the
//      closest valid key); every leaf has the right type. Typed values land in `Raw`. (config_read.cpp)
//   2. resolve what depends on several keys or on the world size: tp and dp, batch arithmetic,
//      "auto" values a CLI flag may supply, optimizer defaults, ZeRO stage against tp. (config_validate.cpp)
// Problems from both phases are collected; nothing stops at the first one.
// DeepSpeed facts cited in these files are from deepspeed/runtime/{config.py,constants.py,engine.py,
// lr_schedules.py,precision_config.py,zero/config.py,tensor_parallel/config.py} at v0.19.6.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/config.h"

namespace autotp::config_detail {

// Ordered, so problems come out in the order the keys appear in the file.
using Json = nlohmann::ordered_json;

// ---- text helpers --------------------------------------------------------------------------------

// Shortest text that reads back as the same double: 0.0003, not 0.00029999999999999997.
inline std::string num(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// A JSON value as the user wrote it, on one line and short enough for a message.
inline std::string show(const Json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

// One problem is one line, whatever a parser or a value put into the text.
inline std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

// Levenshtein distance: the "did you mean" of an unknown key (config_read.cpp, llamafactory.cpp).
inline size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

inline const std::string kAutoPrefix = "\"auto\" is filled in only by the Hugging Face Trainer; ";

inline const std::string kFp16 = "autotp trains in bf16 (bf16.enabled) or fp32; fp16 needs loss scaling, which autotp "
                                 "does not implement";

// ---- what phase 1 records --------------------------------------------------------------------------

// A key that "auto" may leave open for a CLI flag to fill.
template <typename T>
struct Slot {
  bool present = false;
  bool is_auto = false;
  std::optional<T> value;  // unset when present: the type problem is already reported
};

struct Raw {
  Slot<int64_t> train_batch, micro, grad_accum;
  Slot<double> lr;
  std::optional<int64_t> autotp_size, tp_size;
  std::string tp_size_path;
  std::optional<std::string> tp_dtype;
  std::optional<int64_t> stage;
  std::optional<bool> bf16;
  bool bf16_bad = false;  // bf16.enabled had a problem of its own
  std::optional<std::string> optimizer_type;  // canonical "AdamW" / "Adam"
  std::optional<double> beta1, beta2, eps, weight_decay;
  std::optional<bool> adam_w_mode, torch_adam;
  std::optional<SchedulerConfig> scheduler;
};

struct Ctx {
  const ConfigOverrides& overrides;
  TrainConfig& cfg;
  Raw raw;
  std::vector<ConfigProblem> problems;
  // --hf-args (config_hf.cpp): where each filled value came from, appended to any later problem at
  // its path; and the "auto"s that step already reported (phase 1 stays silent about them).
  std::map<std::string, std::string> filled;
  std::set<std::string> judged;
  void add(const std::string& path, const std::string& message) {
    auto from = filled.find(path);
    problems.push_back({path, one_line(from == filled.end() ? message : message + " (" + from->second + ")")});
  }
};

// ---- phase 1 (config_read.cpp) ---------------------------------------------------------------------

// The JSON in `text` (comments allowed), or nullopt after adding its syntax error to `problems`.
// A repeated key is a problem too, though the text still parses.
std::optional<Json> parse_json(const std::string& text, std::vector<ConfigProblem>& problems);

// Phase 1 over the top-level object `root`: typed values into ctx.raw (and the keys that need no
// other key straight into ctx.cfg), problems into ctx.problems.
void read_config(Ctx& ctx, const Json& root);

// ---- --hf-args (config_hf.cpp) ------------------------------------------------------------------------

// Before phase 1: transformers' trainer_config_process + trainer_config_finalize over `root` with the
// YAML of ctx.overrides.hf_args — every "auto" it fills takes the YAML's value (or transformers'
// default), every other value it checks must equal it (one problem per mismatch, both values named).
// Without an optimizer section the Trainer's own AdamW is written in; a scheduler section missing
// where the YAML asks for a schedule is a problem. No-op without --hf-args.
void fill_from_hf_args(Ctx& ctx, Json& root);

// What an "auto" at `path` needs besides the hint phase 1 gives: without --hf-args, the YAML key
// that would fill it ("; or pass --hf-args YAML, whose learning_rate fills it"); "" when none does.
std::string hf_auto_hint(const Ctx& ctx, const std::string& path);

}  // namespace autotp::config_detail
