// Config phase 2 and the text entry points: the checks that span several keys or need the world
// size (overrides, tp against world, dtype against bf16, ZeRO stage against tp, the optimizer's
// defaults, batch arithmetic), which assemble the resolved TrainConfig from what phase 1
// (config_read.cpp) recorded.
#include <algorithm>
#include <string>

#include "autotp/error.h"
#include "runtime/config_internal.h"

namespace autotp::config_detail {
namespace {

// ---- phase 2: what depends on several keys ------------------------------------------------------------

void check_overrides(Ctx& ctx) {
  const auto& o = ctx.overrides;
  if (o.world_size && *o.world_size < 1) ctx.add("--world-size", "expected a positive integer, got " + std::to_string(*o.world_size));
  if (o.micro_batch && *o.micro_batch < 1) ctx.add("--micro-batch", "expected a positive integer, got " + std::to_string(*o.micro_batch));
  if (o.grad_accum && *o.grad_accum < 1) ctx.add("--grad-accum", "expected a positive integer, got " + std::to_string(*o.grad_accum));
  if (o.lr && !(*o.lr >= 0)) ctx.add("--lr", "expected a non-negative number, got " + num(*o.lr));
  if (o.steps_per_print && *o.steps_per_print < 1)
    ctx.add("logging_steps", "expected a positive integer, got " + std::to_string(*o.steps_per_print));
  else if (o.steps_per_print) ctx.cfg.steps_per_print = *o.steps_per_print;
}

void resolve_tp(Ctx& ctx) {
  auto& r = ctx.raw;
  ctx.cfg.tp = std::max<int64_t>(1, r.autotp_size.value_or(1));
  if (r.tp_size) {
    if (!r.autotp_size) {
      // DeepSpeed's training path reads autotp_size only; tp.tp_size alone leaves TP off.
      ctx.add(r.tp_size_path, "DeepSpeed training reads tensor_parallel.autotp_size (tp.tp_size alone leaves "
                              "tensor parallelism off): write \"autotp_size\": " + std::to_string(*r.tp_size));
    } else if (*r.tp_size != ctx.cfg.tp) {
      ctx.add(r.tp_size_path, std::to_string(*r.tp_size) + " disagrees with tensor_parallel.autotp_size " +
                                  std::to_string(*r.autotp_size) + ": make them equal or delete tp.tp_size");
    }
  }
  const auto& world = ctx.overrides.world_size;
  if (world && *world >= 1 && *world % ctx.cfg.tp != 0)
    ctx.add("tensor_parallel.autotp_size", std::to_string(ctx.cfg.tp) + " does not divide the world size " +
                                               std::to_string(*world) + " (--world-size): ranks form autotp_size x dp");
}

void resolve_precision(Ctx& ctx, const Json& root) {
  auto& r = ctx.raw;
  if (root.contains("bf16") && root.contains("bfloat16"))
    ctx.add("bfloat16", "bf16 is DeepSpeed's newer name for this section and the one it reads: delete bfloat16");
  ctx.cfg.bf16 = r.bf16.value_or(false);
  if (!r.tp_dtype || r.bf16_bad) return;
  const std::string& d = *r.tp_dtype;
  if (d == "fp16") {
    ctx.add("tensor_parallel.dtype", kFp16);
  } else if ((d == "bf16") != ctx.cfg.bf16) {
    ctx.add("tensor_parallel.dtype", "\"" + d + "\" disagrees with bf16.enabled " + (ctx.cfg.bf16 ? "true" : "false") +
                                         "; autotp takes the training dtype from bf16.enabled: delete dtype");
  }
}

void resolve_zero(Ctx& ctx) {
  if (!ctx.raw.stage) return;
  ctx.cfg.zero_stage = static_cast<int>(*ctx.raw.stage);
  if (ctx.cfg.zero_stage < 2) return;
  if (ctx.cfg.zero_stage == 2) {
    // ZeroOneOptimizer's own refusal (zero_optimizer.cpp), so `autotp check` fails a config exactly
    // where and as `autotp train` would.
    ctx.add("zero_optimization.stage", "2: autotp runs stage 0 (no partitioning) or 1 (optimizer state partitioned "
                                       "over data-parallel ranks); write 1");
  } else if (ctx.cfg.tp > 1) {
    ctx.add("zero_optimization.stage", "ZeRO-3 partitions and re-gathers every parameter, and AutoTP has already "
                                       "split them across the TP group; autotp runs ZeRO stage 0 or 1 with tensor "
                                       "parallelism: use stage 1");
  } else {
    ctx.add("zero_optimization.stage", "autotp does not run ZeRO-3; use stage 1 (ZeRO-3 needs DeepSpeed itself)");
  }
  ctx.cfg.zero_stage = 0;
}

// Takes the flag if given, else the file's number; "auto" with no flag is a problem.
std::optional<int64_t> pick(Ctx& ctx, const Slot<int64_t>& slot, const std::optional<int64_t>& flag,
                            const std::string& key, const std::string& flag_name, bool& failed) {
  if (flag) {
    if (*flag >= 1) return flag;
    failed = true;  // check_overrides reports it
    return std::nullopt;
  }
  if (slot.is_auto) {
    ctx.add(key, kAutoPrefix + "write a number, or pass " + flag_name + hf_auto_hint(ctx, key));
    failed = true;
  } else if (slot.present && !slot.value) {
    failed = true;  // its type problem is already reported
  }
  return slot.value;
}

struct Batch {
  std::optional<int64_t> train, micro, ga;
  std::string micro_text, ga_text;  // "train_micro_batch_size_per_gpu 4 (--micro-batch)"
};

// DeepSpeed's _set_batch_related_parameters + _batch_assertion with dp in place of its world size:
// autotp's train_batch_size counts distinct samples per optimizer step, and TP peers share samples.
void resolve_batch_with_dp(Ctx& ctx, Batch b, int64_t world, int64_t dp) {
  auto& c = ctx.cfg;
  const std::string dp_text = "dp " + std::to_string(dp) + " (world " + std::to_string(world) + " / autotp_size " +
                              std::to_string(c.tp) + ")";
  auto not_multiple = [&](int64_t of, const std::string& what) {
    ctx.add("train_batch_size", std::to_string(*b.train) + " is not a multiple of " + what + " × " + dp_text + " = " +
                                    std::to_string(of));
  };
  if (b.train && b.micro && b.ga) {
    int64_t product = *b.micro * *b.ga * dp;
    if (*b.train != product) {
      std::string msg = std::to_string(*b.train) + " != " + b.micro_text + " × " + b.ga_text + " × " + dp_text +
                        " = " + std::to_string(product);
      if (c.tp > 1 && *b.train == *b.micro * *b.ga * world)
        msg += "; " + std::to_string(*b.train) + " is DeepSpeed's count over all " + std::to_string(world) +
               " ranks (TP replicas included, as when no mpu is passed), while autotp counts distinct samples: write " +
               std::to_string(product) + " or delete train_batch_size";
      ctx.add("train_batch_size", msg);
      return;
    }
  } else if (b.train && b.micro) {
    if (*b.train % (*b.micro * dp) != 0) return not_multiple(*b.micro * dp, b.micro_text);
    b.ga = *b.train / (*b.micro * dp);
  } else if (b.train) {
    b.ga = b.ga.value_or(1);
    if (*b.train % (*b.ga * dp) != 0) return not_multiple(*b.ga * dp, b.ga_text);
    b.micro = *b.train / (*b.ga * dp);
  } else {
    b.ga = b.ga.value_or(1);
    b.train = *b.micro * *b.ga * dp;
  }
  c.micro_batch = *b.micro;
  c.grad_accum = *b.ga;
  c.train_batch = *b.train;
}

// Without the world size only divisibility can be checked; record what is known.
void resolve_batch_without_dp(Ctx& ctx, const Batch& b) {
  auto& c = ctx.cfg;
  c.micro_batch = b.micro.value_or(0);
  c.grad_accum = b.ga.value_or(b.micro && b.train ? 0 : 1);
  c.train_batch = b.train.value_or(0);
  int64_t per_rank = b.micro.value_or(1) * b.ga.value_or(1);
  if (b.train && (b.micro || b.ga) && *b.train % per_rank != 0) {
    std::string what = b.micro && b.ga ? b.micro_text + " × " + b.ga_text : (b.micro ? b.micro_text : b.ga_text);
    ctx.add("train_batch_size", std::to_string(*b.train) + " is not a multiple of " + what + " = " +
                                    std::to_string(per_rank) + ", so no data-parallel size fits");
  }
}

void resolve_batch(Ctx& ctx) {
  auto& r = ctx.raw;
  const auto& o = ctx.overrides;
  bool failed = false;
  Batch b;
  b.micro = pick(ctx, r.micro, o.micro_batch, "train_micro_batch_size_per_gpu", "--micro-batch", failed);
  b.ga = pick(ctx, r.grad_accum, o.grad_accum, "gradient_accumulation_steps", "--grad-accum", failed);
  b.train = r.train_batch.value;
  if (r.train_batch.present && !r.train_batch.value && !r.train_batch.is_auto) failed = true;
  // "auto" here is what the Trainer computes from the other two, so it stands when they do.
  if (r.train_batch.is_auto && !b.micro && !failed) {
    ctx.add("train_batch_size", kAutoPrefix + "write a number, or give train_micro_batch_size_per_gpu (or "
                                              "--micro-batch) and autotp derives it" + hf_auto_hint(ctx, "train_batch_size"));
    failed = true;
  }
  if (failed) return;
  if (!b.train && !b.micro) {
    // DeepSpeed: "Either train_batch_size or train_micro_batch_size_per_gpu needs to be provided".
    return ctx.add("train_micro_batch_size_per_gpu",
                   "missing; write it (or train_batch_size), or pass --micro-batch");
  }
  b.micro_text = "train_micro_batch_size_per_gpu " + (b.micro ? std::to_string(*b.micro) : "?") +
                 (o.micro_batch ? " (--micro-batch)" : "");
  b.ga_text = "gradient_accumulation_steps " + (b.ga ? std::to_string(*b.ga) : "1") +
              (o.grad_accum ? " (--grad-accum)" : "");
  const auto& world = o.world_size;
  if (world && *world >= 1 && *world % ctx.cfg.tp == 0) {
    ctx.cfg.world_size = *world;
    ctx.cfg.dp = *world / ctx.cfg.tp;
    resolve_batch_with_dp(ctx, b, *world, ctx.cfg.dp);
  } else if (!world) {
    resolve_batch_without_dp(ctx, b);
  }
}

void resolve_optimizer(Ctx& ctx) {
  auto& r = ctx.raw;
  auto& opt = ctx.cfg.optimizer;
  opt.type = r.optimizer_type.value_or("AdamW");
  // engine.py: effective_adam_w_mode = (name == "adamw") or adam_w_mode (default true).
  if (opt.type == "AdamW" && r.adam_w_mode == false)
    ctx.add("optimizer.params.adam_w_mode", "false has no effect on AdamW (DeepSpeed ignores it); for L2-coupled "
                                            "weight decay write type \"Adam\"");
  opt.decoupled = opt.type == "AdamW" || r.adam_w_mode.value_or(true);
  opt.beta1 = r.beta1.value_or(0.9);
  opt.beta2 = r.beta2.value_or(0.999);
  opt.eps = r.eps.value_or(1e-8);
  // DeepSpeed's FusedAdam defaults weight_decay to 0; torch_adam picks torch.optim, whose AdamW says 0.01.
  opt.weight_decay = r.weight_decay.value_or(r.torch_adam.value_or(false) && opt.decoupled ? 0.01 : 0.0);
  if (ctx.overrides.lr) {
    opt.lr = *ctx.overrides.lr;
  } else if (r.lr.is_auto) {
    ctx.add("optimizer.params.lr", kAutoPrefix + "write a number, or pass --lr" + hf_auto_hint(ctx, "optimizer.params.lr"));
  } else if (r.lr.value) {
    opt.lr = *r.lr.value;
  } else if (!r.lr.present && !ctx.judged.count("optimizer")) {  // judged: --hf-args named the optimizer problem
    // DeepSpeed would silently train at FusedAdam's 0.001; the one hyperparameter never to guess.
    ctx.add("optimizer.params.lr", "missing; write the learning rate, or pass --lr");
  }
}

void resolve_scheduler(Ctx& ctx) {
  if (!ctx.raw.scheduler) return;
  SchedulerConfig s = *ctx.raw.scheduler;
  // WarmupDecayLR's constructor defaults warmup_max_lr to 0.001; only WarmupLR falls back to the
  // optimizer's lr (lr_schedules.py).
  if (s.type == SchedulerType::WarmupDecayLR && !s.warmup_max_lr) s.warmup_max_lr = 0.001;
  ctx.cfg.scheduler = s;
}

}  // namespace
}  // namespace autotp::config_detail

// ---- public API: text ----------------------------------------------------------------------------

namespace autotp {

ConfigResult validate_config_text(const std::string& text, const std::string& source_name,
                                  const ConfigOverrides& overrides) {
  using namespace config_detail;
  ConfigResult result;
  result.config.source = source_name;
  auto root = parse_json(text, result.problems);
  if (!root) return result;
  if (!root->is_object()) {
    result.problems.push_back({"", "expected a JSON object {...} at the top level, got " + show(*root)});
    return result;
  }
  Ctx ctx{overrides, result.config, {}, std::move(result.problems), {}, {}};
  fill_from_hf_args(ctx, *root);
  read_config(ctx, *root);
  check_overrides(ctx);
  resolve_tp(ctx);
  resolve_precision(ctx, *root);
  resolve_zero(ctx);
  resolve_optimizer(ctx);
  resolve_scheduler(ctx);
  resolve_batch(ctx);
  result.problems = std::move(ctx.problems);
  return result;
}

TrainConfig parse_config_text(const std::string& text, const std::string& source_name,
                              const ConfigOverrides& overrides) {
  ConfigResult r = validate_config_text(text, source_name, overrides);
  if (!r.ok()) throw Error(r.message());
  return r.config;
}

}  // namespace autotp
