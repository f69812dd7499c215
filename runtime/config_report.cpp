// What a resolved config looks like to a person or a program: problems one line each, the resolved
// values as DeepSpeed JSON (to_json), and the summary `autotp check` prints (check_report).
#include <algorithm>
#include <sstream>
#include <string>

#include "runtime/config_internal.h"

namespace autotp {
namespace {

using config_detail::Json;
using config_detail::num;

}  // namespace

std::string format_problems(const std::string& source, const std::vector<ConfigProblem>& problems) {
  std::string out;
  for (const auto& p : problems) {
    if (!out.empty()) out += "\n";
    out += source + ": " + (p.path.empty() ? "" : p.path + ": ") + p.message;
  }
  return out;
}

std::string ConfigResult::message() const { return format_problems(config.source, problems); }

std::string TrainConfig::to_json() const {
  Json j;
  if (train_batch > 0) j["train_batch_size"] = train_batch;
  if (micro_batch > 0) j["train_micro_batch_size_per_gpu"] = micro_batch;
  if (grad_accum > 0) j["gradient_accumulation_steps"] = grad_accum;
  Json params{{"lr", optimizer.lr},
              {"betas", {optimizer.beta1, optimizer.beta2}},
              {"eps", optimizer.eps},
              {"weight_decay", optimizer.weight_decay}};
  if (optimizer.type == "Adam") params["adam_w_mode"] = optimizer.decoupled;
  j["optimizer"] = {{"type", optimizer.type}, {"params", params}};
  if (scheduler) {
    const auto& s = *scheduler;
    Json p;
    if (s.type != SchedulerType::WarmupLR) p["total_num_steps"] = s.total_num_steps;
    if (s.type == SchedulerType::WarmupCosineLR) {
      p["warmup_min_ratio"] = s.warmup_min_ratio;
      p["cos_min_ratio"] = s.cos_min_ratio;
    } else {
      p["warmup_min_lr"] = s.warmup_min_lr;
      if (s.warmup_max_lr) p["warmup_max_lr"] = *s.warmup_max_lr;
    }
    p["warmup_num_steps"] = s.warmup_num_steps;
    p["warmup_type"] = s.warmup_type == WarmupType::Log ? "log" : "linear";
    j["scheduler"] = {{"type", scheduler_type_name(s.type)}, {"params", p}};
  }
  j["bf16"] = {{"enabled", bf16}};
  j["zero_optimization"] = {{"stage", zero_stage}, {"overlap_comm", overlap_comm}, {"reduce_bucket_size", reduce_bucket_size},
                            {"allgather_bucket_size", allgather_bucket_size}};
  j["tensor_parallel"] = {{"autotp_size", tp}};
  j["gradient_clipping"] = gradient_clipping;
  j["steps_per_print"] = steps_per_print;
  j["seed"] = seed;
  j["decay_norms_and_biases"] = decay_norms_and_biases;
  j["wall_clock_breakdown"] = wall_clock_breakdown;
  return j.dump(2);
}

namespace {

std::string describe_schedule(const TrainConfig& c) {
  if (!c.scheduler) return "constant lr " + num(c.optimizer.lr);
  const auto& s = *c.scheduler;
  const int64_t warmup = std::max<int64_t>(2, s.warmup_num_steps);
  const std::string kind = s.warmup_type == WarmupType::Log ? "log" : "linear";
  std::string out = std::string(scheduler_type_name(s.type)) + ": " + kind + " warmup over " + std::to_string(warmup) + " steps";
  if (s.type == SchedulerType::WarmupCosineLR)
    return out + " from " + num(s.warmup_min_ratio) + " x lr to lr " + num(c.optimizer.lr) + ", cosine to " +
           num(s.cos_min_ratio) + " x lr at step " + std::to_string(s.total_num_steps);
  double peak = s.warmup_max_lr.value_or(c.optimizer.lr);
  out += " from " + num(s.warmup_min_lr) + " to " + num(peak);
  if (peak != c.optimizer.lr)
    out += " (warmup_max_lr" + std::string(s.type == SchedulerType::WarmupDecayLR && peak == 0.001 ? ", DeepSpeed's default" : "") +
           "; optimizer lr " + num(c.optimizer.lr) + " is not used)";
  if (s.type == SchedulerType::WarmupDecayLR) out += ", then linear decay to 0 at step " + std::to_string(s.total_num_steps);
  return out;
}

std::string describe_batch(const TrainConfig& c) {
  const std::string ga = std::to_string(c.grad_accum);
  if (c.dp > 0) {
    std::string out = std::to_string(c.train_batch) + " samples per optimizer step = micro " +
                      std::to_string(c.micro_batch) + " x grad_accum " + ga + " x dp " + std::to_string(c.dp);
    if (c.tp > 1)
      out += "\n             (DeepSpeed without an mpu counts TP replicas too and would call this train_batch_size " +
             std::to_string(c.train_batch * c.tp) + ")";
    return out;
  }
  if (c.train_batch > 0 && c.micro_batch > 0 && c.grad_accum > 0) {
    int64_t dp = c.train_batch / (c.micro_batch * c.grad_accum);
    return "train_batch_size " + std::to_string(c.train_batch) + " = micro " + std::to_string(c.micro_batch) +
           " x grad_accum " + ga + " x dp " + std::to_string(dp) + ", so world size must be " + std::to_string(dp * c.tp);
  }
  std::string m = c.micro_batch > 0 ? std::to_string(c.micro_batch) : "?";
  std::string g = c.grad_accum > 0 ? ga : "?";
  std::string t = c.train_batch > 0 ? std::to_string(c.train_batch) : "micro " + m + " x grad_accum " + g + " x dp";
  return "train_batch_size " + t + " (pass --world-size to resolve dp and check the arithmetic)";
}

std::string describe_zero(const TrainConfig& c) {
  const std::string over = c.dp > 0 ? "dp " + std::to_string(c.dp) : "the dp group";
  switch (c.zero_stage) {
    case 0: return "stage 0: optimizer state replicated on every rank; gradients all-reduced over " + over;
    default: return "stage 1: fp32 master weights and Adam moments partitioned over " + over +
                    "; gradients reduced once per optimizer step, updated weights all-gathered";
  }
}

}  // namespace

std::string check_report(const TrainConfig& c) {
  std::ostringstream out;
  const auto& o = c.optimizer;
  out << c.source << ": ok\n";
  out << "  mesh       tp " << c.tp << " x dp " << (c.dp > 0 ? std::to_string(c.dp) : "?") << " = world "
      << (c.world_size > 0 ? std::to_string(c.world_size) : "?") << " (TP groups: consecutive ranks)\n";
  out << "  batch      " << describe_batch(c) << "\n";
  out << "  optimizer  " << o.type << " lr " << num(o.lr) << ", betas (" << num(o.beta1) << ", " << num(o.beta2)
      << "), eps " << num(o.eps) << ", weight_decay " << num(o.weight_decay)
      << (o.decoupled ? " (decoupled weight decay)" : " (L2 weight decay, added to the gradient)")
      << (o.weight_decay == 0 ? "" : c.decay_norms_and_biases ? ", on every parameter" : ", not on norms and biases (1-D parameters)")
      << "\n";
  out << "  schedule   " << describe_schedule(c) << "\n";
  out << "  precision  " << (c.bf16 ? "bf16 weights, activations and gradients; fp32 master weights and gradient accumulation" : "fp32") << "\n";
  out << "  ZeRO       " << describe_zero(c) << "\n";
  out << "  clipping   " << (c.gradient_clipping > 0 ? "global gradient norm " + num(c.gradient_clipping) : "off") << "\n";
  out << "  logging    every " << c.steps_per_print << " steps; seed " << c.seed << "\n";
  if (!c.hf_source.empty()) {
    out << "  hf args    " << c.hf_source << ", as transformers' Trainer applies it: "
        << (c.hf_training_steps > 0 ? "num_training_steps " + std::to_string(c.hf_training_steps)
                                    : std::string("num_training_steps unknown (no max_steps, no --data)"))
        << "\n";
    for (const auto& f : c.hf_filled) out << "             " << f << "\n";
  }
  if (!c.no_effect.empty()) {
    out << "  no effect ";
    for (size_t i = 0; i < c.no_effect.size(); ++i) out << (i ? ", " : " ") << c.no_effect[i];
    out << "\n";
  }
  return out.str();
}

}  // namespace autotp
