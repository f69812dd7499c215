// Learning-rate schedules: deepspeed/runtime/lr_schedules.py, formula for formula.
#include <algorithm>
#include <cmath>

#include "runtime/config.h"

namespace autotp {

const char* scheduler_type_name(SchedulerType t) {
  switch (t) {
    case SchedulerType::WarmupLR: return "WarmupLR";
    case SchedulerType::WarmupDecayLR: return "WarmupDecayLR";
    case SchedulerType::WarmupCosineLR: return "WarmupCosineLR";
  }
  return "?";
}

namespace {

// WarmupLR._get_gamma / WarmupCosineLR's warmup branch, for step < warmup steps.
double warmup_fraction(const SchedulerConfig& s, int64_t step, int64_t warmup) {
  if (s.warmup_type == WarmupType::Log) return std::log(static_cast<double>(step + 1)) / std::log(static_cast<double>(warmup));
  return static_cast<double>(step) / static_cast<double>(warmup);
}

}  // namespace

double lr_at(const SchedulerConfig& s, double base_lr, int64_t step) {
  const int64_t warmup = std::max<int64_t>(2, s.warmup_num_steps);  // DeepSpeed: max(2, warmup_num_steps)
  if (s.type == SchedulerType::WarmupCosineLR) {
    if (step < 0) return 0.0;  // get_lr() before the first step() returns 0.0 for every group
    double ratio;
    if (step < warmup) {
      ratio = s.warmup_min_ratio + warmup_fraction(s, step, warmup) * (1.0 - s.warmup_min_ratio);
    } else {
      double real_last_step = static_cast<double>(step - warmup + 1);
      double real_total_steps = static_cast<double>(std::max<int64_t>(1, s.total_num_steps - warmup));
      double progress = std::min(1.0, real_last_step / real_total_steps);  // clamped since 0.19.3
      const double pi = std::acos(-1.0);  // Python's math.pi
      ratio = std::max(0.0, s.cos_min_ratio + (1.0 - s.cos_min_ratio) * (1.0 + std::cos(pi * progress)) / 2.0);
    }
    return base_lr * ratio;
  }
  const double min_lr = s.warmup_min_lr;
  const double max_lr = s.warmup_max_lr.value_or(s.type == SchedulerType::WarmupDecayLR ? 0.001 : base_lr);
  if (step < 0) return min_lr;  // WarmupLR.get_lr() before the first step() returns min_lrs
  double gamma;
  if (step < warmup) {
    gamma = warmup_fraction(s, step, warmup);
  } else if (s.type == SchedulerType::WarmupLR) {
    gamma = 1.0;
  } else {
    gamma = std::max(0.0, static_cast<double>(s.total_num_steps - step) /
                              std::max(1.0, static_cast<double>(s.total_num_steps - warmup)));
  }
  return min_lr + (max_lr - min_lr) * gamma;
}

double lr_for_update(const TrainConfig& c, int64_t update) {
  return c.scheduler ? lr_at(*c.scheduler, c.optimizer.lr, update - 1) : c.optimizer.lr;
}

}  // namespace autotp
