// The training loop (see trainer.h).
#include "runtime/trainer.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/passes.h"
#include "autotp/verify.h"
#include "runtime/token_data.h"
#include "runtime/tp_ops.h"
#include "runtime/zero_optimizer.h"

namespace autotp {
namespace {

std::vector<TrainableParam> trainable_params(const torch::jit::Module& m) {
  std::set<std::string> split;
  for (const auto& name : rewrite_info(m).split) split.insert(name);
  std::vector<TrainableParam> out;
  std::set<const void*> seen;  // tied weights: one tensor under two names, trained once
  for (const auto& p : m.named_parameters(/*recurse=*/true)) {
    if (!p.value.requires_grad() || !seen.insert(p.value.unsafeGetTensorImpl()).second) continue;
    out.push_back({p.name, p.value, split.count(p.name) > 0});
  }
  return out;
}

// TP peers must train on the same tokens: compare a checksum of the first batch once.
void check_tp_peers_agree(Group& tp, const at::Tensor& batch) {
  at::Tensor sig = (batch.to(at::kDouble) * at::arange(1, batch.numel() + 1, at::kDouble).view(batch.sizes())).sum().reshape({1});
  at::Tensor hi = sig.clone(), lo = -sig;
  tp.all_reduce(hi, c10d::ReduceOp::MAX, "train.check_batch");
  tp.all_reduce(lo, c10d::ReduceOp::MAX, "train.check_batch");
  if (hi.item<double>() != -lo.item<double>())
    throw Error("train: tensor-parallel peers read different batches; every rank of a TP group must see the same data file");
}

std::string human_bytes(int64_t b) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(1);
  if (b >= (1 << 30)) o << b / double(1 << 30) << " GiB";
  else if (b >= (1 << 20)) o << b / double(1 << 20) << " MiB";
  else if (b >= 1024) o << b / 1024.0 << " KiB";
  else o << b << " B";
  return o.str();
}

// This rank's module: rewritten here from the full model (every rank loads it once, then drops
// it), or read from a directory `autotp rewrite` wrote, so no rank ever holds the full weights.
// The full model and its plan come back too while they are at hand, for the pre-step check.
struct RankModel {
  torch::jit::Module module;
  std::optional<torch::jit::Module> original;  // the full model when --model is one archive
  TpPlan plan;
};

RankModel load_rank_model(const std::string& path, int64_t tp, int tp_rank) {
  if (std::filesystem::is_directory(path)) {
    const std::string mine = path + "/rank" + std::to_string(tp_rank) + ".pt";
    if (!std::filesystem::exists(mine))
      throw Error(path + ": no rank" + std::to_string(tp_rank) + ".pt; write the rank archives with autotp rewrite MODEL.pt --tp " +
                  std::to_string(tp) + " --out " + path);
    torch::jit::Module m = load_model(mine);
    const RewriteInfo info = rewrite_info(m);
    if (info.tp != tp || info.tp_rank != tp_rank)
      throw Error(mine + ": rewritten for tp=" + std::to_string(info.tp) + " rank " + std::to_string(info.tp_rank) +
                  ", but this is rank " + std::to_string(tp_rank) + " of tensor_parallel.autotp_size " + std::to_string(tp) +
                  "; rewrite the model with --tp " + std::to_string(tp));
    return {m, std::nullopt, {}};
  }
  torch::jit::Module original = load_model(path);
  if (rewrite_info(original).tp != 0)
    throw Error(path + ": is one rank of a rewritten model; pass the directory that holds all rank<r>.pt files");
  TpPlan plan = plan_model(original, static_cast<int>(tp), path);
  torch::jit::Module mine = rewrite(original, plan, tp_rank);
  return {mine, original, plan};
}

// Whether the module's forward runs on token ids of `shape` (a trace may be tied to its shape).
bool runs_at(torch::jit::Module& module, const std::vector<int64_t>& shape) {
  try {
    c10::NoGradGuard no_grad;
    module.forward({at::zeros(shape, at::kLong)});
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  return "[" + std::to_string(shape.at(0)) + ", " + std::to_string(shape.at(1)) + "]";
}

std::string sci(double v, int digits) {
  std::ostringstream o;
  o << std::scientific << std::setprecision(digits) << v;
  return o.str();
}

// Before step 1: this rank's sharded module against the unsharded one on one small batch
// (verify_rank), in fp32 before any bf16 cast, so a wrong rewrite stops here naming the parameter
// instead of training silently wrong. The batch is [1, min(seq, 16)]: small, and the training's own
// length when that is short; a trace that cannot run it gets its traced shape, and a model that
// runs neither is skipped with a notice (training itself will tell).
void check_sharding(torch::jit::Module& original, const TpPlan& plan, torch::jit::Module& mine,
                    const TrainOptions& o, uint64_t seed, Mesh& mesh, bool chatty) {
  original.eval();  // dropout off on both sides: they must compute one function
  mine.eval();
  std::vector<int64_t> shape{1, std::min<int64_t>(o.seq, 16)};
  if (shape[1] < 2 || !runs_at(original, shape)) shape = example_shape(original);
  if (!runs_at(original, shape)) {
    if (chatty) std::cout << "check: skipped: the unsharded model runs neither on [1, " << std::min<int64_t>(o.seq, 16)
                          << "] nor on " << shape_text(shape) << "\n";
    return;
  }
  const std::string rerun = "rerun with autotp verify " + o.model_path + " --tp " + std::to_string(mesh.tp()) +
                            " --per-param, or --no-verify to train anyway";
  VerifyReport rep;
  try {
    rep = verify_rank(original, plan, mine, shape, seed, mesh);
  } catch (const std::exception& e) {
    throw Error("train: the sharded model fails on the check batch " + shape_text(shape) + " (" + user_message(e) + "); " + rerun);
  }
  // This check is for wrong sharding, which moves values by 10% to 100% (an unreduced partial
  // gradient: 0.5-1.3; a dropped bias or size: the logits), not for fp32 reordering: TP's partial
  // sums move a 30-layer pretrained model's gradients by up to ~1e-3 on random tokens (SmolLM2 at
  // tp=3, README "Tolerances"). So it allows 1e-4 on logits and loss and 1e-2 on gradients, where
  // `autotp verify` holds everything to 1e-5, and says when gradients differ by more than that.
  constexpr double kLogitsLoss = 1e-4, kGrads = 1e-2;
  std::string wrong;
  if (rep.grads_rel > kGrads) wrong = "gradient of " + rep.worst_grad + " off by " + sci(rep.grads_rel, 2) + " (tolerance 1e-02)";
  else if (rep.logits_rel > kLogitsLoss) wrong = "logits off by " + sci(rep.logits_rel, 2) + " (tolerance 1e-04)";
  else if (rep.loss_rel > kLogitsLoss) wrong = "loss off by " + sci(rep.loss_rel, 2) + " (tolerance 1e-04)";
  if (!wrong.empty())
    throw Error("train: the sharded model disagrees with the unsharded one on a check batch: " + wrong + "; " + rerun);
  if (chatty)
    std::cout << "check: sharded vs unsharded on " << shape_text(shape) << ": logits " << sci(rep.logits_rel, 1) << ", loss "
              << sci(rep.loss_rel, 1) << ", grads " << sci(rep.grads_rel, 1) << " (" << rep.grads_compared << " parameters) ok"
              << (rep.grads_rel > rep.tolerance ? " (gradients beyond verify's 1e-5: fp32 reordering of TP's partial sums)" : "")
              << "\n";
}

// Two float64 checksums of a tensor: its sum, and the sum of |x| weighted by position (cyclic
// 1..1021), which also moves when elements trade places or one changes without the sum changing.
std::pair<double, double> checksums(const at::Tensor& t) {
  at::Tensor x = t.detach().reshape({-1}).to(at::kDouble);
  at::Tensor w = at::arange(x.numel(), at::kDouble).fmod(1021) + 1;
  return {x.sum().item<double>(), (x.abs() * w).sum().item<double>()};
}

// A group's traffic without the self-checks (sites "train.check_*"): the metrics count only what
// training steps send, so each step's bytes stay exact whether or not a check ran in between.
CollectiveCount training_traffic(const Group& g) {
  CollectiveCount c = g.total();
  for (const auto& [site, n] : g.by_site())
    if (site.rfind("train.check", 0) == 0) {
      c.calls -= n.calls;
      c.bytes -= n.bytes;
    }
  return c;
}

}  // namespace

void check_tp_replicas(const std::vector<TrainableParam>& params, Group& tp, int64_t step) {
  if (tp.size() == 1) return;
  std::vector<const TrainableParam*> replicated;
  std::vector<double> sums;
  for (const auto& p : params) {
    if (p.tp_split) continue;
    auto [sum, weighted] = checksums(p.param);
    replicated.push_back(&p);
    sums.insert(sums.end(), {sum, weighted});
  }
  if (replicated.empty()) return;  // the same on every rank: one plan
  // Max of v and max of -v (the min) in one all-reduce; NaN/inf become fixed values first, since a
  // max-reduce may drop a NaN and equal replicas must compare equal.
  at::Tensor v = at::nan_to_num(at::tensor(sums, at::kDouble), 0.5 * std::numeric_limits<double>::max());
  at::Tensor both = at::cat({v, -v});
  tp.all_reduce(both, c10d::ReduceOp::MAX, "train.check_replicas");
  const int64_t n = v.numel();
  at::Tensor spread = both.narrow(0, 0, n) + both.narrow(0, n, n);  // max - min per checksum
  const double* sp = spread.data_ptr<double>();
  for (size_t i = 0; i < replicated.size(); ++i) {
    const double d = std::max(sp[2 * i], sp[2 * i + 1]);
    if (d != 0)
      throw Error("train: step " + std::to_string(step) + ": replicated parameter " + replicated[i]->name +
                  " differs across the tensor-parallel group (max |diff| of checksums " + sci(d, 1) +
                  "); its gradient was not reduced over TP — report this model to autotp");
  }
}

std::string StepMetrics::json() const {
  nlohmann::json j{{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens_per_s", tokens_per_s},
                   {"seconds", seconds}, {"param_bytes", param_bytes}, {"grad_bytes", grad_bytes},
                   {"optimizer_bytes", optimizer_bytes}};
  for (const auto& [name, c] : {std::pair<const char*, CollectiveCount>{"tp", tp_bytes}, {"dp", dp_bytes}, {"world", world_bytes}})
    j["collectives"][name] = {{"calls", c.calls}, {"bytes", c.bytes}};
  return j.dump();
}

TrainConfig load_train_config(const TrainOptions& options, int64_t world_size) {
  ConfigOverrides o = options.overrides;
  o.world_size = world_size;
  return load_config(options.config_path, o);
}

std::vector<StepMetrics> train(const TrainOptions& options, Mesh& mesh) {
  TrainConfig cfg = load_train_config(options, mesh.world());
  if (cfg.tp != mesh.tp())
    throw Error(options.config_path + ": tensor_parallel.autotp_size is " + std::to_string(cfg.tp) + " but the mesh has tp=" +
                std::to_string(mesh.tp()));
  if (options.steps < 1) throw Error("train: --steps must be at least 1");
  at::manual_seed(cfg.seed);
  const bool chatty = !options.quiet && mesh.rank() == 0;
  const int64_t micro = cfg.micro_batch, ga = cfg.grad_accum, dp = mesh.dp(), seq = options.seq;
  if (chatty)
    std::cout << "autotp train: " << options.model_path << " world " << mesh.world() << " = tp " << mesh.tp() << " x dp "
              << dp << ", ZeRO-" << cfg.zero_stage << ", " << (cfg.bf16 ? "bf16" : "fp32") << ", global batch "
              << micro * ga * dp << " x " << seq << " tokens (micro " << micro << ", accumulation " << ga << ")\n";

  torch::jit::Module model;
  {
    RankModel rm = load_rank_model(options.model_path, cfg.tp, mesh.tp_rank());
    model = rm.module;
    if (options.verify && rm.original) {
      // A second rewrite by the same plan is checked, not `model`: TorchScript's profiling executor
      // re-optimizes a method after its first runs, so running `model` here would move that point
      // and change training's rounding; this way training is bit for bit what it is without the
      // check. (Module::clone is no substitute: a cloned rank module loses a gradient.)
      torch::jit::Module twin = rewrite(*rm.original, rm.plan, mesh.tp_rank());
      check_sharding(*rm.original, rm.plan, twin, options, cfg.seed, mesh, chatty);
    }
    else if (options.verify && chatty)
      std::cout << "check: skipped: the rank archives come without the full model to compare with\n";
  }  // the full model is dropped here
  if (cfg.bf16) model.to(at::kBFloat16);
  model.train();

  TokenData data(options.data_path);
  const int64_t vocab = rewrite_info(model).vocab;
  if (vocab == 0) throw Error(options.model_path + ": its logits are not split over the vocabulary; autotp train needs a vocab-parallel lm-head");
  if (data.vocab() > vocab)
    throw Error(options.data_path + ": tokens were made for a vocabulary of " + std::to_string(data.vocab()) +
                " but the model has " + std::to_string(vocab) + "; tokenize with the model's tokenizer");

  const std::vector<TrainableParam> params = trainable_params(model);
  ZeroOneOptimizer opt(params, mesh.find("dp"), mesh.find("tp"), cfg.optimizer, cfg.zero_stage, cfg.gradient_clipping);
  check_tp_peers_agree(mesh.tp_group(), data.batch(0, 0, ga, mesh.dp_rank(), dp, micro, seq));
  mesh.reset_counts();  // the metrics count training traffic from step 1 on, not the start-up checks

  std::ofstream metrics;
  if (!options.metrics_path.empty() && mesh.rank() == 0) {
    metrics.open(options.metrics_path);
    if (!metrics) throw Error(options.metrics_path + ": cannot write the metrics file");
  }
  const bool bar = chatty && isatty(fileno(stdout));

  std::vector<StepMetrics> out;
  for (int64_t step = 0; step < options.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    double loss_sum = 0;
    for (int64_t k = 0; k < ga; ++k) {
      at::Tensor ids = data.batch(step, k, ga, mesh.dp_rank(), dp, micro, seq);
      at::Tensor input = ids.narrow(1, 0, seq), labels = ids.narrow(1, 1, seq);
      at::Tensor logits = logits_of(model.forward({input}));
      at::Tensor loss = vocab_parallel_cross_entropy(logits, labels, -100, "tp", mesh.tp()).mean() / static_cast<double>(ga);
      torch::autograd::backward({loss});
      loss_sum += loss.item<double>();
    }
    const double lr = lr_for_update(cfg, step);
    StepStats st = opt.step(lr);
    opt.zero_grad();
    at::Tensor l = at::tensor({loss_sum}, at::kDouble);
    mesh.dp_group().all_reduce(l, c10d::ReduceOp::SUM, "train.metrics");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    StepMetrics m;
    m.step = step + 1;
    m.loss = l.item<double>() / static_cast<double>(dp);
    m.lr = lr;
    m.grad_norm = st.grad_norm;
    m.seconds = seconds;
    m.tokens_per_s = static_cast<double>(micro * ga * dp * seq) / seconds;
    auto b = opt.bytes();
    m.param_bytes = b.params;
    m.grad_bytes = b.grads;
    m.optimizer_bytes = b.state;
    m.tp_bytes = training_traffic(mesh.tp_group());
    m.dp_bytes = training_traffic(mesh.dp_group());
    m.world_bytes = training_traffic(mesh.world_group());
    out.push_back(m);
    if (metrics.is_open()) metrics << m.json() << "\n" << std::flush;
    const bool print = chatty && (m.step == 1 || m.step % cfg.steps_per_print == 0 || m.step == options.steps);
    if (bar) {
      const int width = 30, done = static_cast<int>(width * m.step / options.steps);
      std::cout << "\r[" << std::string(done, '#') << std::string(width - done, '.') << "] step " << m.step << "/"
                << options.steps << " loss " << std::fixed << std::setprecision(4) << m.loss << std::flush;
      if (print) std::cout << "\n";
    }
    if (print) {
      std::cout << std::defaultfloat << "step " << m.step << "/" << options.steps << "  loss " << std::fixed
                << std::setprecision(4) << m.loss << "  lr " << std::scientific << std::setprecision(3) << m.lr
                << "  grad_norm " << std::fixed << std::setprecision(4) << m.grad_norm << "  tokens/s "
                << std::setprecision(1) << m.tokens_per_s << "  per rank: params " << human_bytes(m.param_bytes)
                << ", grads " << human_bytes(m.grad_bytes) << ", optimizer " << human_bytes(m.optimizer_bytes)
                << "  collectives: tp " << human_bytes(m.tp_bytes.bytes) << ", dp " << human_bytes(m.dp_bytes.bytes)
                << "\n" << std::defaultfloat;
    }
    // Replicas drift apart silently when a gradient misses its TP reduction: compare them now and
    // then (every rank decides alike, so every rank of the group joins the all-reduce).
    if (m.step % cfg.steps_per_print == 0 || m.step == options.steps) check_tp_replicas(params, mesh.tp_group(), m.step);
  }
  if (bar) std::cout << "\n";

  if (!options.out_dir.empty() && mesh.dp_rank() == 0) {
    std::filesystem::create_directories(options.out_dir);
    model.save(options.out_dir + "/rank" + std::to_string(mesh.tp_rank()) + ".pt");
    if (chatty) std::cout << "saved " << options.out_dir << "/rank<r>.pt for r in 0.." << mesh.tp() - 1 << "\n";
  }
  mesh.world_group().barrier();
  return out;
}

}  // namespace autotp
