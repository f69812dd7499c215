// `--hf-args sft.yaml`: the DeepSpeed config's "auto" placeholders filled exactly as transformers'
// DeepSpeed integration fills them (transformers 4.51, integrations/deepspeed.py:
// HfTrainerDeepSpeedConfig.fill_match, trainer_config_process, trainer_config_finalize), before
// phase 1 reads the file. "auto" takes the TrainingArguments value; any other value must equal it,
// and a mismatch names both values, as transformers' one ValueError lists every mismatch. Two
// places where autotp must say more than transformers does:
//   - train_batch_size: transformers writes world × micro × GA, DeepSpeed's count with TP replicas;
//     autotp counts distinct samples (configs/README.md), so an "auto" there is derived by autotp.
//   - a missing optimizer / scheduler section: the Trainer then builds its own. Its AdamW is autotp's
//     AdamW, written in; its LambdaLR schedules are not DeepSpeed's, so asking for one is a problem.
#include <algorithm>
#include <cmath>
#include <string>

#include "runtime/config_internal.h"
#include "runtime/hf_args.h"

namespace autotp::config_detail {
namespace {

bool is_auto(const Json& v) { return v.is_string() && v.get<std::string>() == "auto"; }

// transformers' find_config_node: the object that holds the last key of `path`, or nullptr when a
// parent is missing.
Json* parent_of(Json& root, const std::string& path, std::string& key) {
  Json* node = &root;
  size_t start = 0;
  for (size_t dot; (dot = path.find('.', start)) != std::string::npos; start = dot + 1) {
    const std::string part = path.substr(start, dot - start);
    if (!node->is_object() || !node->contains(part)) return nullptr;
    node = &(*node)[part];
  }
  key = path.substr(start);
  return node->is_object() ? node : nullptr;
}

// Python's ==, which fill_match uses: numbers by value (1 == 1.0, True == 1), lists element-wise.
bool python_equal(const Json& a, const Json& b) {
  auto number = [](const Json& v) { return v.is_boolean() ? (v.get<bool>() ? 1.0 : 0.0) : v.get<double>(); };
  if ((a.is_number() || a.is_boolean()) && (b.is_number() || b.is_boolean())) return number(a) == number(b);
  if (a.is_array() && b.is_array()) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (!python_equal(a[i], b[i])) return false;
    return true;
  }
  return a == b;
}

struct Filler {
  Ctx& ctx;
  Json& root;
  const HfArgs& hf;

  // fill_match: "auto" takes `value`; otherwise, when must_match, the file's value must equal it.
  void fill(const std::string& path, const Json& value, const std::string& from, bool must_match = true) {
    std::string key;
    Json* node = parent_of(root, path, key);
    if (!node || !node->contains(key)) return;  // absent: transformers neither fills nor checks it
    Json& v = (*node)[key];
    if (is_auto(v)) {
      v = value;
      ctx.filled[path] = "\"auto\" filled from " + from;
      ctx.cfg.hf_filled.push_back(path + " <- " + from);
      return;
    }
    // A string or object is phase 1's type problem; null is what transformers skips.
    if (!must_match || !(v.is_number() || v.is_boolean() || v.is_array()) || python_equal(v, value)) return;
    ctx.add(path, show(v) + " disagrees with " + from + ", which the Hugging Face Trainer fills this key from and "
                  "checks it against: write \"auto\" or " + value.dump());
    v = value;  // reported once: the later phases read the Trainer's value
  }

  void batch(int64_t tp, std::optional<int64_t> world) {
    const bool must_match = !hf.auto_find_batch_size;
    fill("train_micro_batch_size_per_gpu", hf.per_device_train_batch_size, hf.describe("per_device_train_batch_size"),
         must_match);
    fill("gradient_accumulation_steps", hf.gradient_accumulation_steps, hf.describe("gradient_accumulation_steps"));
    if (!root.contains("train_batch_size")) return;
    Json& v = root["train_batch_size"];
    const int64_t micro_ga = hf.per_device_train_batch_size * hf.gradient_accumulation_steps;
    if (is_auto(v)) {  // phase 2 derives micro × GA × dp
      ctx.cfg.hf_filled.push_back("train_batch_size <- derived by autotp as micro × GA × dp (distinct samples)" +
                                  (tp > 1 ? std::string("; transformers writes world × micro × GA, which counts TP replicas")
                                          : std::string()));
      return;
    }
    if (!must_match || !world || !v.is_number()) return;
    const int64_t counted = *world * micro_ga;
    const std::string calc = "world " + std::to_string(*world) + " × per_device_train_batch_size " +
                             std::to_string(hf.per_device_train_batch_size) + " × gradient_accumulation_steps " +
                             std::to_string(hf.gradient_accumulation_steps) + " = " + std::to_string(counted);
    if (tp == 1) return fill("train_batch_size", counted, "the Trainer's train_batch_size " + calc);
    ctx.add("train_batch_size",
            show(v) + ": at autotp_size " + std::to_string(tp) + " no number satisfies both the Hugging Face Trainer, "
            "which checks it against " + calc + " (TP replicas counted), and autotp, which counts distinct samples (" +
            std::to_string(micro_ga * (*world % tp == 0 ? *world / tp : 0)) + " = micro × GA × dp): write \"auto\"");
    v = "auto";
  }

  void optimizer() {
    if (root.contains("optimizer")) {
      fill("optimizer.params.lr", hf.learning_rate, hf.describe("learning_rate"));
      fill("optimizer.params.betas", Json::array({hf.adam_beta1, hf.adam_beta2}),
           hf.describe("adam_beta1") + " and " + hf.describe("adam_beta2"));
      fill("optimizer.params.eps", hf.adam_epsilon, hf.describe("adam_epsilon"));
      fill("optimizer.params.weight_decay", hf.weight_decay, hf.describe("weight_decay"));
      // The Trainer hands DeepSpeed's optimizer every trainable parameter as one group (transformers'
      // deepspeed_optim_sched: DummyOptim(params=model.parameters())), so DeepSpeed decays norms and
      // biases too, unlike the Trainer's own AdamW below; unless the file says otherwise, so does autotp.
      if (!root.contains("decay_norms_and_biases")) {
        root["decay_norms_and_biases"] = true;
        if (hf.weight_decay != 0)
          ctx.cfg.hf_filled.push_back("decay_norms_and_biases <- true: the Trainer gives DeepSpeed's optimizer every "
                                      "parameter in one group, so weight_decay applies to norms and biases too");
      }
      return;
    }
    // The Trainer's create_optimizer: torch.optim.AdamW with the YAML's lr, betas, eps and weight decay,
    // none on biases and norm weights — autotp's AdamW with its default decay_norms_and_biases false.
    if (hf.optim != "adamw_torch" && hf.optim != "adamw_torch_fused") {
      ctx.judged.insert("optimizer");
      return ctx.add("optimizer", "missing, so the Hugging Face Trainer builds its own optimizer from " + hf.describe("optim") +
                                      "; autotp runs AdamW or Adam: write optim: adamw_torch, or add an \"optimizer\" section");
    }
    root["optimizer"] = {{"type", "AdamW"},
                         {"params", {{"lr", hf.learning_rate}, {"betas", {hf.adam_beta1, hf.adam_beta2}},
                                     {"eps", hf.adam_epsilon}, {"weight_decay", hf.weight_decay}}}};
    ctx.cfg.hf_filled.push_back("optimizer <- the Trainer's own AdamW (" + hf.describe("optim") +
                                "): learning_rate, adam_beta1, adam_beta2, adam_epsilon, weight_decay");
  }

  void precision() {
    const bool fp16 = (hf.fp16 || hf.fp16_full_eval) && hf.fp16_backend != "apex";
    std::string fp16_from = hf.describe("fp16");
    if (hf.fp16_full_eval) fp16_from += " or " + hf.describe("fp16_full_eval");
    if (hf.fp16_backend == "apex") fp16_from += " with " + hf.describe("fp16_backend");
    fill("fp16.enabled", fp16, fp16_from);
    std::string bf16_from = hf.describe("bf16");
    if (hf.bf16_full_eval) bf16_from += " or " + hf.describe("bf16_full_eval");
    fill("bf16.enabled", hf.bf16 || hf.bf16_full_eval, bf16_from);
  }

  // Why num_training_steps is unknown.
  std::string steps_unknown(std::optional<int64_t> dp) const {
    std::string need;
    if (!ctx.overrides.dataset_samples) need = "the number of training samples (pass --data D.tokens)";
    if (!dp) need += std::string(need.empty() ? "" : " and ") + "the world size (pass --world-size W)";
    return hf.source + " sets no max_steps, so it is " + hf.describe("num_train_epochs") +
           " × steps per epoch, which needs " + need + "; or set max_steps in " + hf.source;
  }

  void scheduler(std::optional<int64_t> dp) {
    if (!root.contains("scheduler")) {
      if (hf.lr_scheduler_type == "constant") return;
      std::string type = hf.lr_scheduler_type == "linear"                 ? "WarmupDecayLR"
                         : hf.lr_scheduler_type == "cosine"               ? "WarmupCosineLR"
                         : hf.lr_scheduler_type == "constant_with_warmup" ? "WarmupLR"
                                                                          : "";
      const std::string write =
          type.empty() ? "write lr_scheduler_type: constant, or add a \"scheduler\" section (WarmupLR, WarmupDecayLR or WarmupCosineLR)"
                       : "add \"scheduler\": {\"type\": \"" + type + "\", \"params\": {" +
                             (type == "WarmupLR" ? "" : "\"total_num_steps\": \"auto\", ") +
                             "\"warmup_num_steps\": \"auto\", \"warmup_type\": \"linear\"}} (DeepSpeed's nearest schedule)";
      return ctx.add("scheduler", "missing, so the Hugging Face Trainer runs its own schedule from " +
                                      hf.describe("lr_scheduler_type") + "; autotp runs DeepSpeed's schedules: " + write);
    }
    fill("scheduler.params.warmup_min_lr", 0, "transformers' 0 (not a TrainingArguments key)", false);
    fill("scheduler.params.warmup_max_lr", hf.learning_rate, hf.describe("learning_rate"));
    const auto steps = hf_training_steps(hf, ctx.overrides.dataset_samples, dp.value_or(0));
    std::string steps_from;
    if (steps && hf.max_steps >= 0) {
      steps_from = "num_training_steps = " + hf.describe("max_steps");
    } else if (steps) {
      steps_from = "num_training_steps " + std::to_string(*steps) + " = ceil(" + hf.describe("num_train_epochs") + " × " +
                   std::to_string(*hf_steps_per_epoch(hf, ctx.overrides.dataset_samples, *dp)) + " steps per epoch of " +
                   std::to_string(*ctx.overrides.dataset_samples) + " samples at micro " +
                   std::to_string(hf.per_device_train_batch_size) + " × dp " + std::to_string(*dp) + " × GA " +
                   std::to_string(hf.gradient_accumulation_steps) + ")";
    }
    judge_or_fill("scheduler.params.total_num_steps", steps, steps_from,
                  "\"auto\" is the Hugging Face Trainer's num_training_steps; " + (steps ? "" : steps_unknown(dp)));
    std::optional<int64_t> warmup;
    std::string warmup_from;
    if (hf.warmup_steps > 0 || hf.warmup_ratio == 0 || steps) {
      warmup = hf_warmup_steps(hf, steps.value_or(0));
      warmup_from = hf.warmup_steps > 0 ? hf.describe("warmup_steps")
                    : hf.warmup_ratio == 0
                        ? hf.describe("warmup_steps") + " and " + hf.describe("warmup_ratio")
                        : "warmup_steps " + std::to_string(*warmup) + " = ceil(" + hf.describe("warmup_ratio") +
                              " × num_training_steps " + std::to_string(*steps) + ")";
    }
    const std::string path = "scheduler.params.warmup_num_steps";
    std::string key;
    Json* node = parent_of(root, path, key);
    if (warmup && *warmup < 1 && node && node->contains(key) && is_auto((*node)[key])) {
      ctx.add(path, "\"auto\" would be 0, from " + warmup_from + ", and DeepSpeed's Warmup* schedules need at least 1 "
                    "warmup step: set warmup_steps or warmup_ratio in " + hf.source);
      ctx.judged.insert(path);
      return;
    }
    judge_or_fill(path, warmup, warmup_from,
                  "\"auto\" is ceil(" + hf.describe("warmup_ratio") + " × num_training_steps), and " +
                      (steps ? "" : steps_unknown(dp)));
  }

  // fill() when the value is known; else an "auto" at `path` is reported once (a number cannot be checked).
  void judge_or_fill(const std::string& path, std::optional<int64_t> value, const std::string& from,
                     const std::string& unknown) {
    if (value) return fill(path, *value, from);
    std::string key;
    Json* node = parent_of(root, path, key);
    if (!node || !node->contains(key) || !is_auto((*node)[key])) return;
    ctx.add(path, unknown);
    ctx.judged.insert(path);
  }
};

// Flags replace file values; with the YAML as the source of truth they must agree with it.
void check_flags(Ctx& ctx, const HfArgs& hf) {
  const auto& o = ctx.overrides;
  auto disagree = [&](const std::string& flag, const std::string& value, const std::string& key) {
    ctx.add(flag, value + " disagrees with " + hf.describe(key) + "; with --hf-args the YAML sets it: drop the flag or edit " +
                      hf.source);
  };
  if (o.micro_batch && *o.micro_batch != hf.per_device_train_batch_size)
    disagree("--micro-batch", std::to_string(*o.micro_batch), "per_device_train_batch_size");
  if (o.grad_accum && *o.grad_accum != hf.gradient_accumulation_steps)
    disagree("--grad-accum", std::to_string(*o.grad_accum), "gradient_accumulation_steps");
  if (o.lr && *o.lr != hf.learning_rate) disagree("--lr", num(*o.lr), "learning_rate");
}

}  // namespace

void fill_from_hf_args(Ctx& ctx, Json& root) {
  if (!ctx.overrides.hf_args) return;
  const HfArgs& hf = *ctx.overrides.hf_args;
  ctx.cfg.hf_source = hf.source;
  check_flags(ctx, hf);
  // The mesh as phase 2 will see it; a bad autotp_size is phase 1's problem (tp 1 meanwhile).
  int64_t tp = 1;
  if (root.contains("tensor_parallel") && root["tensor_parallel"].is_object() &&
      root["tensor_parallel"].contains("autotp_size") && root["tensor_parallel"]["autotp_size"].is_number_integer())
    tp = std::max<int64_t>(1, root["tensor_parallel"]["autotp_size"].get<int64_t>());
  std::optional<int64_t> world, dp;
  if (ctx.overrides.world_size && *ctx.overrides.world_size >= 1) world = *ctx.overrides.world_size;
  if (world && *world % tp == 0) dp = *world / tp;
  if (auto steps = hf_training_steps(hf, ctx.overrides.dataset_samples, dp.value_or(0))) ctx.cfg.hf_training_steps = *steps;

  // trainer_config_process, in its order.
  Filler f{ctx, root, hf};
  f.batch(tp, world);
  f.fill("gradient_clipping", hf.max_grad_norm, hf.describe("max_grad_norm"));
  f.optimizer();
  // trainer_config_process fills warmup_min_lr / warmup_max_lr here and trainer_config_finalize the
  // step counts; autotp reports the scheduler's problems together.
  f.precision();
  f.scheduler(dp);
}

std::string hf_auto_hint(const Ctx& ctx, const std::string& path) {
  if (path == "bfloat16.enabled")
    return "; the Hugging Face Trainer fills bf16.enabled only, not DeepSpeed's older name bfloat16: rename the section to bf16";
  if (ctx.overrides.hf_args) return "";
  static const std::map<std::string, std::string> from{
      {"train_micro_batch_size_per_gpu", "per_device_train_batch_size"},
      {"gradient_accumulation_steps", "gradient_accumulation_steps"},
      {"train_batch_size", "per_device_train_batch_size and gradient_accumulation_steps"},
      {"gradient_clipping", "max_grad_norm"},
      {"optimizer.params.lr", "learning_rate"},
      {"optimizer.params.betas", "adam_beta1 and adam_beta2"},
      {"optimizer.params.eps", "adam_epsilon"},
      {"optimizer.params.weight_decay", "weight_decay"},
      {"scheduler.params.warmup_max_lr", "learning_rate"},
      {"scheduler.params.total_num_steps", "max_steps (or num_train_epochs, with --data)"},
      {"scheduler.params.warmup_num_steps", "warmup_steps or warmup_ratio"},
      {"fp16.enabled", "fp16"},
      {"bf16.enabled", "bf16"}};
  if (path == "scheduler.params.warmup_min_lr") return "; or pass --hf-args sft.yaml, and it is 0, as the Hugging Face Trainer fills it";
  auto it = from.find(path);
  return it == from.end() ? "" : "; or pass --hf-args sft.yaml to fill it from " + it->second + ", as the Hugging Face Trainer does";
}

}  // namespace autotp::config_detail
