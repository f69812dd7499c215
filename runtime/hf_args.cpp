// The flat YAML reader behind `--hf-args` (runtime/hf_args.h) and the two numbers transformers derives
// from TrainingArguments: warmup steps and training steps.
#include "runtime/hf_args.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "autotp/error.h"

namespace autotp {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Shortest text that reads back as the same double (5e-05, 0.0001).
std::string num(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

struct Reader {
  std::string source;
  HfArgsResult out;
  std::vector<std::pair<int, std::string>> problems;  // by line: the typed checks run after the walk
  void problem(int line, const std::string& key, const std::string& message) {
    problems.push_back({line, source + ":" + std::to_string(line) + ": " + (key.empty() ? "" : key + ": ") + message});
  }
};

const std::string kFlat = "autotp reads flat `key: value` lines, as LLaMA-Factory's YAMLs are";

// A plain scalar as LLaMA-Factory's loader (OmegaConf on PyYAML) resolves it.
HfValue plain_scalar(const std::string& text) {
  static const std::regex int_re("[-+]?[0-9]+");
  static const std::regex float_re("[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?");
  HfValue v;
  v.s = text;
  const std::string l = lower(text);
  if (text.empty() || text == "~" || l == "null") {
    v.kind = HfValue::Kind::Null;
  } else if (l == "true" || l == "false") {
    v.kind = HfValue::Kind::Bool;
    v.b = l == "true";
  } else if (std::regex_match(text, int_re)) {
    v.kind = HfValue::Kind::Int;
    v.i = std::strtoll(text.c_str(), nullptr, 10);
    v.f = static_cast<double>(v.i);
  } else if (std::regex_match(text, float_re)) {
    v.kind = HfValue::Kind::Float;
    v.f = std::strtod(text.c_str(), nullptr);
  } else {
    v.kind = HfValue::Kind::String;
  }
  return v;
}

// The value part of `key: value` (after the colon); nullopt after reporting a problem.
std::optional<HfValue> read_value(Reader& r, int line, const std::string& key, const std::string& rest) {
  std::string t = trim(rest);
  if (!t.empty() && (t[0] == '"' || t[0] == '\'')) {
    const char q = t[0];
    std::string s;
    size_t i = 1;
    bool closed = false;
    for (; i < t.size(); ++i) {
      char c = t[i];
      if (q == '\'' && c == '\'' && i + 1 < t.size() && t[i + 1] == '\'') { s += '\''; ++i; continue; }
      if (q == '"' && c == '\\' && i + 1 < t.size()) {
        char e = t[++i];
        s += e == 'n' ? '\n' : e == 't' ? '\t' : e;
        continue;
      }
      if (c == q) { closed = true; ++i; break; }
      s += c;
    }
    std::string after = trim(t.substr(std::min(i, t.size())));
    if (!closed) {
      r.problem(line, key, std::string("unterminated ") + (q == '"' ? "double" : "single") + "-quoted string");
      return std::nullopt;
    }
    if (!after.empty() && after[0] != '#') {
      r.problem(line, key, "unexpected text after the quoted string: " + after);
      return std::nullopt;
    }
    HfValue v;
    v.kind = HfValue::Kind::String;
    v.quoted = true;
    v.s = s;
    return v;
  }
  // A comment starts at " #" (or a leading "#").
  size_t hash = t.rfind('#', 0) == 0 ? 0 : t.find(" #");
  if (hash != std::string::npos) t = trim(t.substr(0, hash));
  if (!t.empty()) {
    const char c = t[0];
    if (c == '[' || c == '{') {
      r.problem(line, key, "a flow " + std::string(c == '[' ? "list" : "mapping") + " is nested YAML; " + kFlat);
      return std::nullopt;
    }
    if (c == '|' || c == '>') {
      r.problem(line, key, "a block scalar (" + std::string(1, c) + ") spans several lines; " + kFlat);
      return std::nullopt;
    }
    if (c == '&' || c == '*' || c == '!') {
      r.problem(line, key, std::string(c == '!' ? "a tag" : c == '&' ? "an anchor" : "an alias") +
                               " is not read by autotp's flat YAML reader; write the value itself");
      return std::nullopt;
    }
    if (t.find(": ") != std::string::npos || t.back() == ':') {
      r.problem(line, key, "a mapping inside a value is nested YAML; " + kFlat + " (quote the value if it is text)");
      return std::nullopt;
    }
  }
  return plain_scalar(t);
}

// ---- typed fields: a wrong type is a problem at the key's line -----------------------------------------

std::string shown(const HfValue& v) { return v.quoted ? "\"" + v.s + "\" (a quoted string)" : v.s.empty() ? "null" : v.s; }

void int_field(Reader& r, const char* key, int64_t& field, int64_t min) {
  auto it = r.out.args.values.find(key);
  if (it == r.out.args.values.end()) return;
  const HfValue& v = it->second;
  if (v.kind != HfValue::Kind::Int || v.i < min)
    return r.problem(v.line, key, std::string("expected an integer") + (min == 1 ? " >= 1" : min == 0 ? " >= 0" : "") +
                                      " (TrainingArguments declares it int), got " + shown(v));
  field = v.i;
}

void float_field(Reader& r, const char* key, double& field, double min, double max = HUGE_VAL) {
  auto it = r.out.args.values.find(key);
  if (it == r.out.args.values.end()) return;
  const HfValue& v = it->second;
  if ((v.kind != HfValue::Kind::Int && v.kind != HfValue::Kind::Float) || v.f < min || v.f > max) {
    std::string range = max < HUGE_VAL ? " in [" + num(min) + ", " + num(max) + "]" : min == 0 ? " >= 0" : "";
    return r.problem(v.line, key, "expected a number" + range + ", got " + shown(v));
  }
  field = v.f;
}

void bool_field(Reader& r, const char* key, bool& field) {
  auto it = r.out.args.values.find(key);
  if (it == r.out.args.values.end()) return;
  const HfValue& v = it->second;
  if (v.kind == HfValue::Kind::Bool) return void(field = v.b);
  const std::string l = lower(v.s);
  const bool yaml11 = !v.quoted && (l == "yes" || l == "no" || l == "on" || l == "off" || l == "y" || l == "n");
  r.problem(v.line, key, "expected true or false, got " + shown(v) +
                             (yaml11 ? " (YAML 1.1 loaders read it as a boolean, YAML 1.2 ones as a string): write true or false" : ""));
}

void string_field(Reader& r, const char* key, std::string& field) {
  auto it = r.out.args.values.find(key);
  if (it == r.out.args.values.end()) return;
  const HfValue& v = it->second;
  if (v.kind == HfValue::Kind::Null) return r.problem(v.line, key, "expected a name, got null");
  field = v.s;
}

void typed_fields(Reader& r) {
  HfArgs& a = r.out.args;
  int_field(r, "per_device_train_batch_size", a.per_device_train_batch_size, 1);
  int_field(r, "gradient_accumulation_steps", a.gradient_accumulation_steps, 1);
  float_field(r, "learning_rate", a.learning_rate, 0);
  float_field(r, "adam_beta1", a.adam_beta1, 0, 1);
  float_field(r, "adam_beta2", a.adam_beta2, 0, 1);
  float_field(r, "adam_epsilon", a.adam_epsilon, 0);
  float_field(r, "weight_decay", a.weight_decay, 0);
  float_field(r, "max_grad_norm", a.max_grad_norm, 0);
  float_field(r, "num_train_epochs", a.num_train_epochs, 0);
  int_field(r, "max_steps", a.max_steps, -1);
  int_field(r, "warmup_steps", a.warmup_steps, 0);
  float_field(r, "warmup_ratio", a.warmup_ratio, 0, 1);  // TrainingArguments raises outside [0, 1]
  bool_field(r, "fp16", a.fp16);
  bool_field(r, "fp16_full_eval", a.fp16_full_eval);
  bool_field(r, "bf16", a.bf16);
  bool_field(r, "bf16_full_eval", a.bf16_full_eval);
  string_field(r, "fp16_backend", a.fp16_backend);
  bool_field(r, "auto_find_batch_size", a.auto_find_batch_size);
  bool_field(r, "dataloader_drop_last", a.dataloader_drop_last);
  string_field(r, "lr_scheduler_type", a.lr_scheduler_type);
  string_field(r, "optim", a.optim);
  string_field(r, "deepspeed", a.deepspeed);
}

}  // namespace

std::string HfArgs::where(const std::string& key) const {
  auto it = values.find(key);
  return it == values.end() ? source : source + ":" + std::to_string(it->second.line);
}

std::string HfArgs::describe(const std::string& key) const {
  auto it = values.find(key);
  std::string value;
  if (it != values.end()) return key + " " + (it->second.s.empty() ? "null" : it->second.s) + " (" + where(key) + ")";
  if (key == "per_device_train_batch_size") value = std::to_string(per_device_train_batch_size);
  else if (key == "gradient_accumulation_steps") value = std::to_string(gradient_accumulation_steps);
  else if (key == "learning_rate") value = num(learning_rate);
  else if (key == "adam_beta1") value = num(adam_beta1);
  else if (key == "adam_beta2") value = num(adam_beta2);
  else if (key == "adam_epsilon") value = num(adam_epsilon);
  else if (key == "weight_decay") value = num(weight_decay);
  else if (key == "max_grad_norm") value = num(max_grad_norm);
  else if (key == "num_train_epochs") value = num(num_train_epochs);
  else if (key == "max_steps") value = std::to_string(max_steps);
  else if (key == "warmup_steps") value = std::to_string(warmup_steps);
  else if (key == "warmup_ratio") value = num(warmup_ratio);
  else if (key == "fp16") value = fp16 ? "true" : "false";
  else if (key == "bf16") value = bf16 ? "true" : "false";
  else if (key == "lr_scheduler_type") value = lr_scheduler_type;
  else if (key == "optim") value = optim;
  return key + " " + value + " (transformers' default; " + source + " does not set it)";
}

std::string HfArgsResult::message() const {
  std::string m;
  for (const auto& p : problems) m += (m.empty() ? "" : "\n") + p;
  return m;
}

HfArgsResult read_hf_args_text(const std::string& text, const std::string& source) {
  Reader r{source, {}};
  r.out.args.source = source;
  std::istringstream in(text);
  std::string raw, parent;  // parent: the last key, for an indented line under it
  int line = 0;
  bool content_seen = false;
  for (; std::getline(in, raw); ) {
    ++line;
    if (!raw.empty() && raw.back() == '\r') raw.pop_back();
    if (line == 1 && raw.rfind("\xEF\xBB\xBF", 0) == 0) raw = raw.substr(3);
    const std::string t = trim(raw);
    if (t.empty() || t[0] == '#') continue;
    if (t == "---" || t.rfind("--- ", 0) == 0) {
      if (content_seen) r.problem(line, "", "a second YAML document; " + kFlat);
      continue;
    }
    if (t == "...") continue;
    content_seen = true;
    if (raw[0] == ' ' || raw[0] == '\t') {
      r.problem(line, "", "an indented line is nested YAML" + (parent.empty() ? "" : " (under " + parent + ")") + "; " + kFlat);
      continue;
    }
    if (t == "-" || t.rfind("- ", 0) == 0) {
      r.problem(line, "", "a list item is nested YAML" + (parent.empty() ? "" : " (under " + parent + ")") + "; " + kFlat);
      continue;
    }
    size_t colon = std::string::npos;
    for (size_t i = 0; i < t.size(); ++i)
      if (t[i] == ':' && (i + 1 == t.size() || t[i + 1] == ' ' || t[i + 1] == '\t')) { colon = i; break; }
    static const std::regex key_re("[A-Za-z_][A-Za-z0-9_.-]*");
    const std::string key = colon == std::string::npos ? "" : trim(t.substr(0, colon));
    if (colon == std::string::npos || !std::regex_match(key, key_re)) {
      r.problem(line, "", "expected `key: value`, got " + t);
      continue;
    }
    parent = key;
    auto value = read_value(r, line, key, t.substr(colon + 1));
    if (!value) continue;
    value->line = line;
    auto [it, fresh] = r.out.args.values.emplace(key, *value);
    if (!fresh)
      r.problem(line, key, "duplicate key (first at line " + std::to_string(it->second.line) +
                               "); LLaMA-Factory's loader refuses a YAML that repeats one");
  }
  typed_fields(r);
  std::stable_sort(r.problems.begin(), r.problems.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& p : r.problems) r.out.problems.push_back(std::move(p.second));
  return r.out;
}

HfArgsResult read_hf_args_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  HfArgsResult bad;
  bad.args.source = path;
  if (!fs::exists(path, ec)) bad.problems.push_back(path + ": no such file; pass a LLaMA-Factory / TrainingArguments YAML");
  else if (fs::is_directory(path, ec)) bad.problems.push_back(path + ": is a directory; pass a LLaMA-Factory / TrainingArguments YAML");
  std::ifstream in(path, std::ios::binary);
  if (bad.problems.empty() && !in) bad.problems.push_back(path + ": cannot be read");
  if (!bad.problems.empty()) return bad;
  std::ostringstream text;
  text << in.rdbuf();
  return read_hf_args_text(text.str(), path);
}

HfArgs load_hf_args(const std::string& path) {
  HfArgsResult r = read_hf_args_file(path);
  if (!r.ok()) throw Error(r.message());
  return r.args;
}

int64_t hf_warmup_steps(const HfArgs& a, int64_t num_training_steps) {
  return a.warmup_steps > 0 ? a.warmup_steps
                            : static_cast<int64_t>(std::ceil(static_cast<double>(num_training_steps) * a.warmup_ratio));
}

std::optional<int64_t> hf_steps_per_epoch(const HfArgs& a, std::optional<int64_t> samples, int64_t dp) {
  if (!samples || dp < 1) return std::nullopt;
  const int64_t micro = a.per_device_train_batch_size;
  const int64_t batches = a.dataloader_drop_last ? (*samples / micro) / dp : (*samples + micro * dp - 1) / (micro * dp);
  return std::max<int64_t>(batches / a.gradient_accumulation_steps, 1);
}

std::optional<int64_t> hf_training_steps(const HfArgs& a, std::optional<int64_t> samples, int64_t dp) {
  if (a.max_steps >= 0) return a.max_steps;  // epoch-based only when negative, as the Trainer decides
  auto per_epoch = hf_steps_per_epoch(a, samples, dp);
  if (!per_epoch) return std::nullopt;
  return static_cast<int64_t>(std::ceil(a.num_train_epochs * static_cast<double>(*per_epoch)));
}

}  // namespace autotp
