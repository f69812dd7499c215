// The training loop (see trainer.h).
#include "runtime/trainer.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/rewrite.h"
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
torch::jit::Module load_rank_model(const std::string& path, int64_t tp, int tp_rank) {
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
    return m;
  }
  torch::jit::Module original = load_model(path);
  if (rewrite_info(original).tp != 0)
    throw Error(path + ": is one rank of a rewritten model; pass the directory that holds all rank<r>.pt files");
  TpPlan plan = plan_model(original, static_cast<int>(tp), path);
  return rewrite(original, plan, tp_rank);
}

}  // namespace

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

  torch::jit::Module model = load_rank_model(options.model_path, cfg.tp, mesh.tp_rank());
  if (cfg.bf16) model.to(at::kBFloat16);
  model.train();

  TokenData data(options.data_path);
  const int64_t vocab = rewrite_info(model).vocab;
  if (vocab == 0) throw Error(options.model_path + ": its logits are not split over the vocabulary; autotp train needs a vocab-parallel lm-head");
  if (data.vocab() > vocab)
    throw Error(options.data_path + ": tokens were made for a vocabulary of " + std::to_string(data.vocab()) +
                " but the model has " + std::to_string(vocab) + "; tokenize with the model's tokenizer");

  ZeroOneOptimizer opt(trainable_params(model), mesh.find("dp"), mesh.find("tp"), cfg.optimizer, cfg.zero_stage,
                       cfg.gradient_clipping);
  const int64_t micro = cfg.micro_batch, ga = cfg.grad_accum, dp = mesh.dp(), seq = options.seq;
  check_tp_peers_agree(mesh.tp_group(), data.batch(0, 0, ga, mesh.dp_rank(), dp, micro, seq));
  mesh.reset_counts();

  std::ofstream metrics;
  if (!options.metrics_path.empty() && mesh.rank() == 0) {
    metrics.open(options.metrics_path);
    if (!metrics) throw Error(options.metrics_path + ": cannot write the metrics file");
  }
  if (chatty)
    std::cout << "autotp train: " << options.model_path << " world " << mesh.world() << " = tp " << mesh.tp() << " x dp "
              << dp << ", ZeRO-" << cfg.zero_stage << ", " << (cfg.bf16 ? "bf16" : "fp32") << ", global batch "
              << micro * ga * dp << " x " << seq << " tokens (micro " << micro << ", accumulation " << ga << ")\n";
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
    m.tp_bytes = mesh.tp_group().total();
    m.dp_bytes = mesh.dp_group().total();
    m.world_bytes = mesh.world_group().total();
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
