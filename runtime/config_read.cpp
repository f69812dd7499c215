// Config phase 1, the structural pass: parse the JSON text (comments allowed, repeated keys refused),
// then walk it in file order against the key tables. Every key is known, rejected with a reason, or
// unknown (with the closest valid key); every leaf has the right type; "auto" is accepted only where a
// CLI flag may fill it in. Typed values land in `Raw` for phase 2 (config_validate.cpp).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "autotp/error.h"
#include "runtime/config_internal.h"

namespace autotp::config_detail {
namespace {

// ---- text helpers --------------------------------------------------------------------------------

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::vector<std::string> words(const std::string& key) {
  std::vector<std::string> out;
  std::stringstream in(lower(key));
  for (std::string w; std::getline(in, w, '_');)
    if (!w.empty()) out.push_back(w);
  return out;
}

// Every word of `key` is a word of `candidate`: warmup_steps -> warmup_num_steps.
bool has_all_words(const std::string& candidate, const std::string& key) {
  auto mine = words(candidate);
  for (const auto& w : words(key))
    if (std::find(mine.begin(), mine.end(), w) == mine.end()) return false;
  return true;
}

// The candidate to suggest for an unknown `word`. One holding all of its words wins (a shortened
// name); otherwise the nearest by edit distance (case-insensitive), if near enough to be a plausible
// typo or abbreviation (tp_size -> autotp_size is 4 edits of 11 characters).
std::optional<std::string> closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::optional<std::string> best, best_containing;
  size_t best_distance = std::numeric_limits<size_t>::max(), best_containing_distance = best_distance;
  for (const auto& c : candidates) {
    size_t d = edit_distance(lower(word), lower(c));
    if (d < best_distance) best = c, best_distance = d;
    if (has_all_words(c, word) && d < best_containing_distance) best_containing = c, best_containing_distance = d;
  }
  if (best_containing) return best_containing;
  if (!best) return std::nullopt;
  size_t limit = std::max<size_t>(2, (std::max(word.size(), best->size()) + 1) / 3);
  return best_distance <= limit ? best : std::nullopt;
}

// ---- typed leaf readers: a wrong type is a problem naming the expected type and the value -----------

bool is_auto(const Json& v) { return v.is_string() && v.get<std::string>() == "auto"; }

// `auto_hint` says what to write instead of "auto".
bool reject_auto(Ctx& ctx, const Json& v, const std::string& path, const std::string& auto_hint) {
  if (!is_auto(v)) return false;
  if (!ctx.judged.count(path)) ctx.add(path, kAutoPrefix + auto_hint + hf_auto_hint(ctx, path));
  return true;
}

std::string int_kind(int64_t min) {
  if (min == 1) return "a positive integer";
  if (min == 0) return "a non-negative integer";
  return "an integer >= " + std::to_string(min);
}

// Integers may be written 500000000 or 5e8 (as DeepSpeed users do for bucket sizes).
std::optional<int64_t> integral(const Json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9e18) return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

std::optional<int64_t> read_int(Ctx& ctx, const Json& v, const std::string& path, int64_t min,
                                const std::string& auto_hint) {
  if (reject_auto(ctx, v, path, auto_hint)) return std::nullopt;
  auto i = integral(v);
  if (!i || *i < min) {
    ctx.add(path, "expected " + int_kind(min) + ", got " + show(v));
    return std::nullopt;
  }
  return i;
}

std::optional<double> read_number(Ctx& ctx, const Json& v, const std::string& path, double min,
                                  const std::string& auto_hint) {
  if (reject_auto(ctx, v, path, auto_hint)) return std::nullopt;
  if (!v.is_number() || v.get<double>() < min) {
    ctx.add(path, std::string("expected a ") + (min == 0 ? "non-negative " : "") + "number, got " + show(v));
    return std::nullopt;
  }
  return v.get<double>();
}

std::optional<bool> read_bool(Ctx& ctx, const Json& v, const std::string& path, const std::string& auto_hint) {
  if (reject_auto(ctx, v, path, auto_hint)) return std::nullopt;
  if (!v.is_boolean()) {
    ctx.add(path, "expected true or false, got " + show(v));
    return std::nullopt;
  }
  return v.get<bool>();
}

std::optional<std::string> read_string(Ctx& ctx, const Json& v, const std::string& path,
                                       const std::string& auto_hint) {
  if (reject_auto(ctx, v, path, auto_hint)) return std::nullopt;
  if (!v.is_string()) {
    ctx.add(path, "expected a string, got " + show(v));
    return std::nullopt;
  }
  return v.get<std::string>();
}

bool expect_object(Ctx& ctx, const Json& v, const std::string& path) {
  if (v.is_object()) return true;
  if (!reject_auto(ctx, v, path, "write an object"))
    ctx.add(path, "expected an object {...}, got " + show(v));
  return false;
}

// A key whose slot may hold "auto" until phase 2 sees the flags.
template <typename T, typename Read>
void read_slot(Slot<T>& slot, const Json& v, Read read) {
  slot.present = true;
  if (is_auto(v))
    slot.is_auto = true;
  else
    slot.value = read();
}

// ---- walking an object -------------------------------------------------------------------------------

using Reader = std::function<void(Ctx&, const Json&, const std::string& path)>;

struct Section {
  std::vector<std::pair<std::string, Reader>> keys;      // accepted keys, in documentation order
  std::map<std::string, std::string> rejected;            // DeepSpeed keys autotp refuses: why
  std::map<std::string, std::string> elsewhere;           // keys that belong at another path
};

void unknown_key(Ctx& ctx, const Section& s, const std::string& path, const std::string& key) {
  const std::string where = join_path(path, key);
  auto moved = s.elsewhere.find(key);
  if (moved != s.elsewhere.end()) return ctx.add(where, "unknown key; did you mean " + moved->second + "?");
  std::vector<std::string> names;
  for (const auto& [name, read] : s.keys) names.push_back(name);
  auto near = closest(key, names);
  ctx.add(where, near ? "unknown key; did you mean " + *near + "?" : "unknown key");
}

void walk(Ctx& ctx, const Json& obj, const std::string& path, const Section& s) {
  for (const auto& [key, value] : obj.items()) {
    auto rule = std::find_if(s.keys.begin(), s.keys.end(), [&](const auto& k) { return k.first == key; });
    if (rule != s.keys.end()) {
      rule->second(ctx, value, join_path(path, key));
    } else if (auto why = s.rejected.find(key); why != s.rejected.end()) {
      ctx.add(join_path(path, key), why->second);
    } else {
      unknown_key(ctx, s, path, key);
    }
  }
}

// Two spellings DeepSpeed accepts for one setting (an alias): it reads only one of them.
void reject_both(Ctx& ctx, const Json& obj, const std::string& path, const std::string& a, const std::string& b) {
  if (obj.contains(a) && obj.contains(b))
    ctx.add(join_path(path, b), "same setting as " + a + "; DeepSpeed reads only one of them: delete one");
}

// Accepted so that DeepSpeed configs load, but autotp has nothing it would change. Type-checked
// all the same; "auto" is fine here since autotp would ignore whatever the Trainer filled in.
enum class Kind { Bool, Count, Number };
Reader no_effect(Kind kind) {
  return [kind](Ctx& ctx, const Json& v, const std::string& path) {
    if (!is_auto(v)) {
      if (kind == Kind::Bool && !read_bool(ctx, v, path, "")) return;
      if (kind == Kind::Count && !read_int(ctx, v, path, 0, "")) return;
      if (kind == Kind::Number && !read_number(ctx, v, path, -HUGE_VAL, "")) return;
    }
    ctx.cfg.no_effect.push_back(path);
  };
}

// ---- sections --------------------------------------------------------------------------------------

const std::string kNameBased =
    "DeepSpeed's AutoTP picks column/row splits by module names; autotp derives them from the graph "
    "(see autotp inspect): delete it";

const Section& tp_inner_section() {
  static const Section s{
      {{"tp_size",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          ctx.raw.tp_size = read_int(ctx, v, path, 1, "write the same number as tensor_parallel.autotp_size");
          ctx.raw.tp_size_path = path;
        }},
       // DeepSpeed's own docstring: "not activated in training yet".
       {"tp_grain_size", no_effect(Kind::Count)}},
      {{"mpu", "a Python object deepspeed.initialize receives, not a JSON value; autotp builds its own groups"},
       {"tp_group", "a Python object tp_model_init receives, not a JSON value; autotp builds its own groups"}},
      {}};
  return s;
}

void read_tp_inner(Ctx& ctx, const Json& v, const std::string& path) {
  if (expect_object(ctx, v, path)) walk(ctx, v, path, tp_inner_section());
}

void read_kernel_inject(Ctx& ctx, const Json& v, const std::string& path) {
  auto on = read_bool(ctx, v, path, "write false");
  if (on && *on) ctx.add(path, "true injects DeepSpeed's inference kernels; autotp trains: write false");
}

const Section& tensor_parallel_section() {
  static const Section s{
      {{"autotp_size",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          ctx.raw.autotp_size = read_int(ctx, v, path, 0, "write the tensor-parallel size, e.g. 2");
        }},
       {"tp", read_tp_inner},
       {"tensor_parallel", read_tp_inner},  // DeepSpeed's field name; "tp" is its alias
       {"dtype",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          auto name = read_string(ctx, v, path, "delete it: bf16.enabled sets the training dtype");
          if (!name) return;
          static const std::map<std::string, std::string> names{
              {"bf16", "bf16"}, {"bfloat16", "bf16"}, {"torch.bfloat16", "bf16"}, {"fp32", "fp32"},
              {"float32", "fp32"}, {"torch.float32", "fp32"}, {"fp16", "fp16"}, {"float16", "fp16"},
              {"torch.float16", "fp16"}};
          auto it = names.find(lower(*name));
          if (it == names.end())
            ctx.add(path, "expected \"bf16\" or \"fp32\", got " + show(v));
          else
            ctx.raw.tp_dtype = it->second;
        }},
       {"tp_overlap_comm", no_effect(Kind::Bool)},
       {"keep_module_on_host", no_effect(Kind::Bool)},
       {"replace_with_kernel_inject", read_kernel_inject},
       {"kernel_inject", read_kernel_inject}},  // alias
      {{"injection_policy_tuple", kNameBased}, {"partition_config", kNameBased}, {"preset_model", kNameBased}},
      {}};
  return s;
}

void read_tensor_parallel(Ctx& ctx, const Json& v, const std::string& path) {
  if (!expect_object(ctx, v, path)) return;
  walk(ctx, v, path, tensor_parallel_section());
  reject_both(ctx, v, path, "tp", "tensor_parallel");
  reject_both(ctx, v, path, "replace_with_kernel_inject", "kernel_inject");
}

// ZeRO keys DeepSpeed users write for stages 1-2 (and the ZeRO-3 ones HF templates carry, which
// DeepSpeed itself ignores below stage 3): accepted, no effect in autotp.
const Section& zero_section() {
  static const Section s = [] {
    Section z;
    z.keys.push_back({"stage", [](Ctx& ctx, const Json& v, const std::string& path) {
                        ctx.raw.stage = read_int(ctx, v, path, 0, "write 1 (ZeRO-1)");
                        if (ctx.raw.stage && *ctx.raw.stage > 3) {
                          ctx.add(path, "expected 0, 1, 2 or 3, got " + show(v));
                          ctx.raw.stage.reset();
                        }
                      }});
    z.keys.push_back({"overlap_comm", [](Ctx& ctx, const Json& v, const std::string& path) {
                        if (is_auto(v)) return;
                        if (auto b = read_bool(ctx, v, path, "")) ctx.cfg.overlap_comm = *b;
                      }});
    for (const char* k : {"reduce_bucket_size", "allgather_bucket_size"})
      z.keys.push_back({k, [k](Ctx& ctx, const Json& v, const std::string& path) {
                          if (is_auto(v)) return;  // the Trainer fills hidden²; DeepSpeed's 5e8 stays
                          if (auto n = read_int(ctx, v, path, 1, "")) (std::string(k) == "reduce_bucket_size" ? ctx.cfg.reduce_bucket_size : ctx.cfg.allgather_bucket_size) = *n;
                        }});
    for (const char* k : {"contiguous_gradients", "reduce_scatter", "allgather_partitions",
                          "use_multi_rank_bucket_allreduce", "load_from_fp32_weights", "round_robin_gradients",
                          "ignore_unused_parameters", "elastic_checkpoint",
                          "stage3_gather_16bit_weights_on_model_save", "stage3_use_all_reduce_for_fetch_params",
                          "stage3_allgather_sequential"})
      z.keys.push_back({k, no_effect(Kind::Bool)});
    for (const char* k : {"sub_group_size",
                          "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
                          "stage3_model_persistence_threshold", "stage3_max_live_parameters",
                          "stage3_max_reuse_distance", "stage3_module_granularity_threshold"})
      z.keys.push_back({k, no_effect(Kind::Count)});
    const std::string offload = "autotp keeps parameters and optimizer state on the GPU; offloading is not "
                                "implemented: delete it";
    for (const char* k : {"offload_optimizer", "offload_param", "cpu_offload", "cpu_offload_param",
                          "cpu_offload_use_pin_memory", "zenflow"})
      z.rejected[k] = offload;
    for (const char* k : {"zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_nontrainable_weights",
                          "zero_quantized_gradients", "zeropp_loco_param", "mics_shard_size",
                          "mics_hierarchical_params_gather", "memory_efficient_linear", "pipeline_loading_checkpoint",
                          "override_module_apply", "log_trace_cache_warnings", "enable_sanity_checks",
                          "save_muon_momentum_buffer_in_memory", "leaf_module"})
      z.rejected[k] = "a DeepSpeed ZeRO option autotp does not implement: delete it";
    return z;
  }();
  return s;
}

void read_zero(Ctx& ctx, const Json& v, const std::string& path) {
  if (v.is_boolean()) {
    // DeepSpeed still reads the pre-0.3 boolean form, with a deprecation warning.
    return ctx.add(path, "the boolean form is deprecated in DeepSpeed; write {\"stage\": " +
                             std::string(v.get<bool>() ? "1" : "0") + "}");
  }
  if (expect_object(ctx, v, path)) walk(ctx, v, path, zero_section());
}

const Section& bf16_section() {
  static const Section s = [] {
    Section b;
    b.keys.push_back({"enabled", [](Ctx& ctx, const Json& v, const std::string& path) {
                        ctx.raw.bf16 = read_bool(ctx, v, path, "write true for bf16 or false for fp32");
                        ctx.raw.bf16_bad = !ctx.raw.bf16;
                      }});
    b.keys.push_back({"immediate_grad_update", no_effect(Kind::Bool)});
    b.keys.push_back({"check_grad_overflow", no_effect(Kind::Bool)});
    for (const char* k : {"bf16_master_weights_and_grads", "bf16_optimizer_states"})
      b.keys.push_back({k, [](Ctx& ctx, const Json& v, const std::string& path) {
                          auto on = read_bool(ctx, v, path, "write false");
                          if (on && *on)
                            ctx.add(path, "autotp keeps fp32 master weights, gradients and Adam moments: write false");
                        }});
    return b;
  }();
  return s;
}

void read_bf16(Ctx& ctx, const Json& v, const std::string& path) {
  if (expect_object(ctx, v, path)) walk(ctx, v, path, bf16_section());
}

const Section& fp16_section() {
  static const Section s = [] {
    Section f;
    f.keys.push_back({"enabled", [](Ctx& ctx, const Json& v, const std::string& path) {
                        auto on = read_bool(ctx, v, path, "write false (" + kFp16 + ")");
                        if (on && *on) ctx.add(path, kFp16);
                      }});
    // Loss-scaling settings: meaningless while fp16 is off, which autotp requires.
    for (const char* k : {"auto_cast", "consecutive_hysteresis", "fp16_master_weights_and_grads"})
      f.keys.push_back({k, no_effect(Kind::Bool)});
    for (const char* k : {"initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"})
      f.keys.push_back({k, no_effect(Kind::Count)});
    f.keys.push_back({"loss_scale", no_effect(Kind::Number)});
    return f;
  }();
  return s;
}

void read_fp16(Ctx& ctx, const Json& v, const std::string& path) {
  if (expect_object(ctx, v, path)) walk(ctx, v, path, fp16_section());
}

// ---- optimizer -----------------------------------------------------------------------------------

// DeepSpeed's DEEPSPEED_OPTIMIZERS and the torch.optim classes it would also accept by name.
const std::vector<std::string> kOtherOptimizers = {
    "Adagrad", "Lamb", "OneBitAdam", "ZeroOneAdam", "OneBitLamb", "MuAdam", "MuAdamW", "MuSGD", "Lion", "Muon",
    "SGD", "RMSprop", "Adadelta", "Adamax", "NAdam", "RAdam", "LBFGS", "SparseAdam", "ASGD", "Rprop"};

void read_optimizer_type(Ctx& ctx, const Json& v, const std::string& path) {
  auto name = read_string(ctx, v, path, "write \"AdamW\"");
  if (!name) return;
  // DeepSpeed lower-cases names it implements itself, so "adamw" and "ADAMW" are AdamW too.
  if (lower(*name) == "adamw") return void(ctx.raw.optimizer_type = "AdamW");
  if (lower(*name) == "adam") return void(ctx.raw.optimizer_type = "Adam");
  for (const auto& other : kOtherOptimizers)
    if (lower(other) == lower(*name))
      return ctx.add(path, "\"" + *name + "\" is an optimizer autotp does not implement; use \"AdamW\" or \"Adam\"");
  auto near = closest(*name, {"AdamW", "Adam"});
  ctx.add(path, "unknown optimizer \"" + *name + "\"" + (near ? "; did you mean " + *near + "?" : "; use \"AdamW\" or \"Adam\""));
}

const Section& optimizer_params_section() {
  static const Section s{
      {{"lr",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          read_slot(ctx.raw.lr, v, [&] { return read_number(ctx, v, path, 0, ""); });
        }},
       {"betas",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          if (reject_auto(ctx, v, path, "write [0.9, 0.999] (DeepSpeed's default)")) return;
          if (!v.is_array() || v.size() != 2) return ctx.add(path, "expected two numbers [beta1, beta2], got " + show(v));
          ctx.raw.beta1 = read_number(ctx, v[0], path + "[0]", 0, "");
          ctx.raw.beta2 = read_number(ctx, v[1], path + "[1]", 0, "");
        }},
       {"eps",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          ctx.raw.eps = read_number(ctx, v, path, 0, "write a number (DeepSpeed's default is 1e-8)");
        }},
       {"weight_decay",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          ctx.raw.weight_decay = read_number(ctx, v, path, 0, "write a number (DeepSpeed's default is 0)");
        }},
       {"adam_w_mode",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          ctx.raw.adam_w_mode = read_bool(ctx, v, path, "write true (decoupled weight decay) or false (L2)");
        }},
       // Picks torch.optim over DeepSpeed's fused kernel: the same update, different code; it only
       // changes the default weight_decay (torch.optim.AdamW's is 0.01).
       {"torch_adam",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          ctx.raw.torch_adam = read_bool(ctx, v, path, "write false");
        }},
       {"bias_correction",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          auto on = read_bool(ctx, v, path, "write true");
          if (on && !*on) ctx.add(path, "autotp always applies Adam's bias correction: write true or delete it");
        }},
       {"amsgrad",
        [](Ctx& ctx, const Json& v, const std::string& path) {
          auto on = read_bool(ctx, v, path, "write false");
          // DeepSpeed's FusedAdam raises for amsgrad too.
          if (on && *on) ctx.add(path, "AMSGrad is not implemented (nor by DeepSpeed's FusedAdam): write false");
        }}},
      // DeepSpeed's own error for this key (engine.py _configure_basic_optimizer).
      {{"max_grad_norm", "not an optimizer parameter; use the top-level gradient_clipping, as DeepSpeed requires"}},
      {}};
  return s;
}

void read_optimizer_params(Ctx& ctx, const Json& v, const std::string& path) {
  if (expect_object(ctx, v, path)) walk(ctx, v, path, optimizer_params_section());
}

void read_optimizer(Ctx& ctx, const Json& v, const std::string& path) {
  if (!expect_object(ctx, v, path)) return;
  Section s{{{"type", read_optimizer_type},
             {"params", read_optimizer_params},
             {"legacy_fusion", no_effect(Kind::Bool)}},
            {},
            {}};
  for (const auto& [name, read] : optimizer_params_section().keys) s.elsewhere[name] = join_path(path, "params." + name);
  walk(ctx, v, path, s);
  if (!v.contains("type")) ctx.add(join_path(path, "type"), "missing; write \"AdamW\"");
}

// ---- scheduler -----------------------------------------------------------------------------------

struct ScheduleName {
  const char* name;
  SchedulerType type;
  std::vector<std::string> params;  // the constructor's keyword arguments autotp accepts
};

const std::vector<ScheduleName>& schedules() {
  static const std::vector<ScheduleName> all{
      {"WarmupLR", SchedulerType::WarmupLR, {"warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type"}},
      {"WarmupDecayLR", SchedulerType::WarmupDecayLR,
       {"total_num_steps", "warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type"}},
      {"WarmupCosineLR", SchedulerType::WarmupCosineLR,
       {"total_num_steps", "warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type"}}};
  return all;
}

// Schedules DeepSpeed knows that autotp does not implement (its own and torch.optim.lr_scheduler's).
const std::vector<std::string> kOtherSchedules = {
    "OneCycle", "LRRangeTest", "LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR",
    "LinearLR", "ExponentialLR", "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau",
    "CyclicLR", "CosineAnnealingWarmRestarts", "OneCycleLR", "PolynomialLR"};

std::optional<SchedulerType> read_schedule_type(Ctx& ctx, const Json& v, const std::string& path) {
  auto name = read_string(ctx, v, path, "write \"WarmupLR\", \"WarmupDecayLR\" or \"WarmupCosineLR\"");
  if (!name) return std::nullopt;
  std::vector<std::string> names;
  for (const auto& s : schedules()) {
    if (*name == s.name) return s.type;
    names.push_back(s.name);
  }
  if (std::find(kOtherSchedules.begin(), kOtherSchedules.end(), *name) != kOtherSchedules.end()) {
    ctx.add(path, "\"" + *name + "\" is a schedule autotp does not implement; use WarmupLR, WarmupDecayLR or WarmupCosineLR");
    return std::nullopt;
  }
  // DeepSpeed looks schedule names up case-sensitively (getattr on lr_schedules).
  auto near = closest(*name, names);
  ctx.add(path, "unknown scheduler \"" + *name + "\"" +
                    (near ? "; did you mean " + *near + "?" : "; use WarmupLR, WarmupDecayLR or WarmupCosineLR"));
  return std::nullopt;
}

void read_schedule_param(Ctx& ctx, SchedulerConfig& s, const std::string& key, const Json& v, const std::string& path) {
  if (key == "warmup_min_lr") {
    if (auto x = read_number(ctx, v, path, 0, "write a number (DeepSpeed's default is 0)")) s.warmup_min_lr = *x;
  } else if (key == "warmup_max_lr") {
    const std::string hint = s.type == SchedulerType::WarmupLR
                                 ? "write a number, or delete it to warm up to optimizer.params.lr"
                                 : "write a number (if deleted, DeepSpeed's WarmupDecayLR peaks at 0.001, not at "
                                   "optimizer.params.lr)";
    if (auto x = read_number(ctx, v, path, 0, hint)) s.warmup_max_lr = *x;
  } else if (key == "warmup_num_steps") {
    // DeepSpeed raises unless this is a positive integer (lr_schedules.py, since 0.19.3).
    if (auto x = read_int(ctx, v, path, 1, "write a number of optimizer steps (DeepSpeed's default is 1000)"))
      s.warmup_num_steps = *x;
  } else if (key == "total_num_steps") {
    if (auto x = read_int(ctx, v, path, 1, "write the number of optimizer steps the run takes")) s.total_num_steps = *x;
  } else if (key == "warmup_type") {
    auto t = read_string(ctx, v, path, "write \"linear\" or \"log\"");
    if (!t) return;
    // DeepSpeed warns and falls back to "log" for anything else; a typo should not change the schedule.
    if (*t == "log") s.warmup_type = WarmupType::Log;
    else if (*t == "linear") s.warmup_type = WarmupType::Linear;
    else ctx.add(path, "expected \"log\" or \"linear\", got " + show(v));
  } else if (key == "warmup_min_ratio") {
    if (auto x = read_number(ctx, v, path, 0, "write a number (DeepSpeed's default is 0)")) s.warmup_min_ratio = *x;
  } else if (key == "cos_min_ratio") {
    if (auto x = read_number(ctx, v, path, 0, "write a number (DeepSpeed's default is 0.0001)")) s.cos_min_ratio = *x;
  }
}

void read_schedule_params(Ctx& ctx, SchedulerConfig& s, const ScheduleName& kind, const Json& params,
                          const std::string& path) {
  for (const auto& [key, value] : params.items()) {
    const std::string where = join_path(path, key);
    if (std::find(kind.params.begin(), kind.params.end(), key) != kind.params.end()) {
      read_schedule_param(ctx, s, key, value, where);
      continue;
    }
    std::string owners;
    for (const auto& other : schedules())
      if (std::find(other.params.begin(), other.params.end(), key) != other.params.end())
        owners += std::string(owners.empty() ? "" : ", ") + other.name;
    if (!owners.empty()) {
      ctx.add(where, "not a parameter of " + std::string(kind.name) + " (it belongs to " + owners + ")");
    } else if (key == "last_batch_iteration") {
      ctx.add(where, "autotp train --resume DIR restores the schedule position from a checkpoint (--save-dir DIR writes them): delete it");
    } else {
      auto near = closest(key, kind.params);
      ctx.add(where, "unknown " + std::string(kind.name) + " parameter" + (near ? "; did you mean " + *near + "?" : ""));
    }
  }
}

void read_scheduler(Ctx& ctx, const Json& v, const std::string& path) {
  if (!expect_object(ctx, v, path)) return;
  std::optional<SchedulerType> type;
  const Json* params = nullptr;
  Section s{{{"type", [&](Ctx& c, const Json& value, const std::string& where) {
                type = read_schedule_type(c, value, where);
              }},
             {"params", [&](Ctx& c, const Json& value, const std::string& where) {
                if (expect_object(c, value, where)) params = &value;
              }}},
            {},
            {}};
  for (const auto& kind : schedules())
    for (const auto& p : kind.params) s.elsewhere[p] = join_path(path, "params." + p);
  walk(ctx, v, path, s);
  if (!v.contains("type")) return ctx.add(join_path(path, "type"), "missing; write \"WarmupLR\", \"WarmupDecayLR\" or \"WarmupCosineLR\"");
  if (!type) return;  // params cannot be judged without knowing whose they are
  const auto& kind = *std::find_if(schedules().begin(), schedules().end(), [&](const auto& k) { return k.type == *type; });
  SchedulerConfig sched;
  sched.type = *type;
  if (params) read_schedule_params(ctx, sched, kind, *params, join_path(path, "params"));
  bool needs_total = *type != SchedulerType::WarmupLR;
  if (needs_total && !(params && params->contains("total_num_steps")))
    ctx.add(join_path(path, "params.total_num_steps"),
            std::string("missing; ") + kind.name + " needs the number of optimizer steps the run takes");
  ctx.raw.scheduler = sched;
}

// ---- top level -----------------------------------------------------------------------------------

Reader batch_reader(Slot<int64_t> Raw::*slot) {
  return [slot](Ctx& ctx, const Json& v, const std::string& path) {
    read_slot(ctx.raw.*slot, v, [&] { return read_int(ctx, v, path, 1, ""); });
  };
}

const Section& top_section() {
  static const Section s = [] {
    Section t;
    t.keys = {
        {"train_batch_size", batch_reader(&Raw::train_batch)},
        {"train_micro_batch_size_per_gpu", batch_reader(&Raw::micro)},
        {"gradient_accumulation_steps", batch_reader(&Raw::grad_accum)},
        {"optimizer", read_optimizer},
        {"scheduler", read_scheduler},
        {"bf16", read_bf16},
        {"bfloat16", read_bf16},  // DeepSpeed's older name, read when bf16 is absent
        {"fp16", read_fp16},
        {"zero_optimization", read_zero},
        {"tensor_parallel", read_tensor_parallel},
        {"gradient_clipping",
         [](Ctx& ctx, const Json& v, const std::string& path) {
           if (auto x = read_number(ctx, v, path, 0, "write a number, e.g. 1.0 (0 turns clipping off)"))
             ctx.cfg.gradient_clipping = *x;
         }},
        {"steps_per_print",
         [](Ctx& ctx, const Json& v, const std::string& path) {
           if (auto x = read_int(ctx, v, path, 1, "write how many optimizer steps between log lines"))
             ctx.cfg.steps_per_print = *x;
         }},
        {"seed",
         [](Ctx& ctx, const Json& v, const std::string& path) {
           if (auto x = read_int(ctx, v, path, 0, "write a number")) ctx.cfg.seed = *x;
         }},
        {"decay_norms_and_biases",  // autotp's key: transformers' Trainer never decays them
         [](Ctx& ctx, const Json& v, const std::string& path) {
           if (auto x = read_bool(ctx, v, path, "write true or false")) ctx.cfg.decay_norms_and_biases = *x;
         }},
        {"wall_clock_breakdown",
         [](Ctx& ctx, const Json& v, const std::string& path) {
           if (auto x = read_bool(ctx, v, path, "write true or false")) ctx.cfg.wall_clock_breakdown = *x;
         }},
        {"zero_allow_untested_optimizer", no_effect(Kind::Bool)},
        {"zero_force_ds_cpu_optimizer", no_effect(Kind::Bool)},
        {"memory_breakdown", no_effect(Kind::Bool)},
    };
    for (const char* k : {"amp", "torch_autocast"})
      t.rejected[k] = "autotp trains in bf16 (bf16.enabled) or fp32 without autocast: delete it";
    t.rejected["pipeline"] = "autotp combines tensor and data parallelism only; pipeline parallelism is not "
                             "implemented: delete it";
    t.rejected["activation_checkpointing"] = "autotp does not recompute activations: delete it";
    for (const char* k : {"sequence_parallel_size", "data_parallel_size", "expert_parallel"})
      t.rejected[k] = "autotp's mesh is tensor_parallel.autotp_size x (world / autotp_size) data parallel: delete it";
    for (const char* k : {"communication_data_type", "seq_parallel_communication_data_type", "prescale_gradients",
                          "gradient_predivide_factor", "gradient_allreduce_op", "sparse_gradients", "disable_allgather",
                          "dump_state", "vocabulary_size", "eigenvalue", "progressive_layer_drop", "flops_profiler",
                          "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger", "sparse_attention",
                          "elasticity", "autotuning", "compression_training", "data_efficiency",
                          "curriculum_learning", "checkpoint", "data_types", "aio", "nebula", "compile",
                          "hybrid_engine", "dataloader_drop_last", "weight_quantization", "log_level",
                          "managed_gradient_accumulation", "graph_harvesting", "timers", "quantize_training"})
      t.rejected[k] = "a DeepSpeed key autotp does not implement: delete it";
    // Keys people put at the top level that live in a section.
    for (const char* k : {"tp_size", "autotp_size", "tensor_parallel_size", "tp"})
      t.elsewhere[k] = "tensor_parallel.autotp_size";
    for (const char* k : {"stage", "zero_stage"}) t.elsewhere[k] = "zero_optimization.stage";
    for (const char* k : {"lr", "betas", "eps", "weight_decay", "adam_w_mode"})
      t.elsewhere[k] = std::string("optimizer.params.") + k;
    t.elsewhere["learning_rate"] = "optimizer.params.lr";
    for (const auto& kind : schedules())
      for (const auto& p : kind.params) t.elsewhere[p] = "scheduler.params." + p;
    t.elsewhere["max_grad_norm"] = "gradient_clipping";
    t.elsewhere["micro_batch_size"] = "train_micro_batch_size_per_gpu";
    return t;
  }();
  return s;
}

// ---- parsing -------------------------------------------------------------------------------------------

// nlohmann keeps the last of two equal keys; DeepSpeed refuses them (dict_raise_error_on_duplicate_keys).
// The parser callback sees each key with its nesting, enough to name the duplicate's path.
class DuplicateKeys {
 public:
  explicit DuplicateKeys(std::vector<ConfigProblem>& out) : out_(out) {}
  bool operator()(int, Json::parse_event_t event, Json& parsed) {
    using E = Json::parse_event_t;
    if (event == E::object_start || event == E::array_start) {
      frames_.push_back({event == E::object_start, {}, {}, 0});
    } else if (event == E::key) {
      auto& f = frames_.back();
      f.key = parsed.get<std::string>();
      if (!f.keys.insert(f.key).second) out_.push_back({path(), "duplicate key; DeepSpeed refuses a config that repeats one"});
    } else if (event == E::object_end || event == E::array_end) {
      frames_.pop_back();
      element_done();
    } else if (event == E::value) {
      element_done();
    }
    return true;
  }

 private:
  struct Frame {
    bool object;
    std::set<std::string> keys;
    std::string key;
    size_t index;
  };
  void element_done() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().index;
  }
  std::string path() const {
    std::string p;
    for (const auto& f : frames_) p = f.object ? join_path(p, f.key) : p + "[" + std::to_string(f.index) + "]";
    return p;
  }
  std::vector<Frame> frames_;
  std::vector<ConfigProblem>& out_;
};

// "line 3, column 14: syntax error while parsing object - ...": nlohmann's message without its
// "[json.exception.parse_error.101] parse error at " prefix.
std::string syntax_problem(const nlohmann::json::parse_error& e) {
  std::string what = e.what();
  size_t at = what.find("at line ");
  return at == std::string::npos ? what : what.substr(at + 3);
}

}  // namespace

std::optional<Json> parse_json(const std::string& text, std::vector<ConfigProblem>& problems) {
  try {
    return Json::parse(text, DuplicateKeys(problems), /*allow_exceptions=*/true, /*ignore_comments=*/true);
  } catch (const nlohmann::json::parse_error& e) {
    problems.push_back({"", one_line(syntax_problem(e))});
    return std::nullopt;
  }
}

void read_config(Ctx& ctx, const Json& root) { walk(ctx, root, "", top_section()); }

}  // namespace autotp::config_detail

// ---- public API: files ---------------------------------------------------------------------------

namespace autotp {

ConfigResult validate_config_file(const std::string& path, const ConfigOverrides& overrides) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string problem;
  if (!fs::exists(path, ec)) problem = "no such file; pass a DeepSpeed-style JSON config (see configs/README.md)";
  else if (fs::is_directory(path, ec)) problem = "is a directory; pass a DeepSpeed-style JSON config file";
  std::ifstream in(path, std::ios::binary);
  if (problem.empty() && !in) problem = "cannot be read";
  if (!problem.empty()) {
    ConfigResult result;
    result.config.source = path;
    result.problems.push_back({"", problem});
    return result;
  }
  std::ostringstream text;
  text << in.rdbuf();
  return validate_config_text(text.str(), path, overrides);
}

TrainConfig load_config(const std::string& path, const ConfigOverrides& overrides) {
  ConfigResult r = validate_config_file(path, overrides);
  if (!r.ok()) throw Error(r.message());
  return r.config;
}

}  // namespace autotp
