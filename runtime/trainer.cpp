// The training loop (see trainer.h).
#include "runtime/trainer.h"

#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unistd.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#ifdef AUTOTP_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/passes.h"
#include "runtime/checkpoint.h"
#include "runtime/evaluate.h"
#include "runtime/hf_args.h"
#include "runtime/liveness.h"
#include "runtime/memory_meter.h"
#include "runtime/rank_model.h"
#include "runtime/token_data.h"
#include "runtime/tp_ops.h"
#include "runtime/trainer_checks.h"
#include "runtime/zero_optimizer.h"

namespace autotp {
namespace fs = std::filesystem;
namespace {

// Trainable parameters in module order, tied tensors once. Weight decay skips 1-D parameters (norm
// weights, biases) unless the config asks for it: what transformers' Trainer does by name, read
// here from the shape, which holds for every architecture in the zoo.
std::vector<TrainableParam> trainable_params(const torch::jit::Module& m, bool decay_1d) {
  const RewriteInfo info = rewrite_info(m);
  std::set<std::string> split(info.split.begin(), info.split.end());
  std::map<std::string, int64_t> replicas;  // kv heads held by several ranks
  for (const auto& p : info.params)
    if (p.replicas > 1) {
      replicas[p.name] = p.replicas;
      for (const auto& a : p.aliases) replicas[a] = p.replicas;
    }
  std::vector<TrainableParam> out;
  std::set<const void*> seen;  // tied weights: one tensor under two names, trained once
  for (const auto& p : m.named_parameters(/*recurse=*/true)) {
    if (!p.value.requires_grad() || !seen.insert(p.value.unsafeGetTensorImpl()).second) continue;
    out.push_back({p.name, p.value, split.count(p.name) > 0, decay_1d || p.value.dim() >= 2});
    if (auto it = replicas.find(p.name); it != replicas.end()) out.back().replicas = it->second;
  }
  return out;
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

// Collective totals of the world, tp and dp groups; tp includes the groups of ranks holding one kv
// head (their gradient sums are TP-side traffic).
std::array<CollectiveCount, 3> totals(Mesh& mesh) {
  CollectiveCount tp = mesh.tp_group().total();
  for (const auto& g : mesh.replica_groups()) {
    const CollectiveCount t = g->total();
    tp.calls += t.calls;
    tp.bytes += t.bytes;
  }
  return {mesh.world_group().total(), tp, mesh.dp_group().total()};
}

// Tests kill a rank at a chosen point (AUTOTP_TEST_KILL=point:rank:step, point "step" or "save"),
// on the first attempt only, so a restarted worker runs through. SIGKILL: nothing is cleaned up.
void die_here_if_asked(const std::string& point, int rank, int64_t step) {
  const char* spec = std::getenv("AUTOTP_TEST_KILL");
  if (!spec) return;
  const char* attempt = std::getenv("TORCHELASTIC_RESTART_COUNT");
  if (attempt && std::string(attempt) != "0") return;
  if (std::string(spec) == point + ":" + std::to_string(rank) + ":" + std::to_string(step)) {
    std::cerr << "autotp: AUTOTP_TEST_KILL: rank " << rank << " kills itself at " << point << " of step " << step << std::endl;
    std::raise(SIGKILL);
  }
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// torch.cuda.max_memory_allocated(d): the caching allocator's peak of allocated bytes on GPU d since
// the process began (CUDA builds); 0 on the CPU.
int64_t cuda_peak_allocated(const c10::Device& d) {
#ifdef AUTOTP_WITH_CUDA
  if (d.is_cuda()) return c10::cuda::CUDACachingAllocator::getDeviceStats(d.index()).allocated_bytes[0].peak;  // [0]: aggregate
#endif
  return 0;
}

// The model failed in bf16 on a dtype clash ("expected m1 and m2 to have the same dtype": a Hugging
// Face graph traced in fp32 keeps the fp32 casts it was traced with, where one traced in bf16 follows
// its parameters' dtype, passes/compute_dtype.cpp): one line with the interpreter's root cause and
// what to do, instead of its traceback's first line.
void bf16_dtype_failure(const std::string& what, int64_t step) {
  if (what.find("dtype") == std::string::npos && what.find("scalar type") == std::string::npos) return;
  std::string cause = what;
  const size_t at = what.rfind("RuntimeError: ");
  if (at != std::string::npos) cause = what.substr(at + 14);
  cause = first_line(cause);
  throw Error("train: step " + std::to_string(step) + ": bf16 fails inside the model (" + cause +
              "): a graph traced in fp32 keeps the fp32 casts it was traced with; trace it in bf16 "
              "(scripts/export_hf.py --dtype bf16) or train it in fp32 (\"bf16\": {\"enabled\": false})");
}

// --out must not swallow a folder of something else: an autotp checkpoint or rank folder, or new.
void check_out_folder(const std::string& dir) {
  if (dir.empty() || !fs::exists(dir)) return;
  if (!fs::is_directory(dir)) throw Error("--out " + dir + ": exists and is not a folder; pick a new path");
  if (fs::exists(fs::path(dir) / "trainer_state.json")) return;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (!(name.rfind("rank", 0) == 0 && e.path().extension() == ".pt"))
      throw Error("--out " + dir + ": holds " + name + ", so it is not an autotp checkpoint it may replace; pick a new folder");
  }
}

// On resume: the metrics file keeps the lines up to the checkpoint's step (a crashed run may have
// written later ones), so the file reads as one run.
void trim_metrics(const std::string& path, int64_t step) {
  std::ifstream in(path);
  if (!in) return;
  std::vector<std::string> kept;
  for (std::string line; std::getline(in, line);) {
    try {
      if (!line.empty() && nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept.push_back(line);
    } catch (const std::exception&) {
    }
  }
  in.close();
  std::ofstream out(path, std::ios::trunc);
  for (const auto& l : kept) out << l << "\n";
}

}  // namespace

std::string StepMetrics::json() const {
  nlohmann::json j{{"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens_per_s", tokens_per_s},
                   {"seconds", seconds}, {"epoch", epoch}, {"loss_tokens", loss_tokens}, {"param_bytes", param_bytes}, {"grad_bytes", grad_bytes},
                   {"optimizer_bytes", optimizer_bytes}, {"peak_activation_bytes", peak_activation_bytes}};
  if (cuda_peak_allocated_bytes > 0) j["cuda_peak_allocated_bytes"] = cuda_peak_allocated_bytes;
  for (const auto& [name, c] : {std::pair<const char*, CollectiveCount>{"tp", tp_bytes}, {"dp", dp_bytes}, {"world", world_bytes}})
    j["collectives"][name] = {{"calls", c.calls}, {"bytes", c.bytes}};
  return j.dump();
}

TrainConfig load_train_config(const TrainOptions& options, int64_t world_size) {
  ConfigOverrides o = options.overrides;
  o.world_size = world_size;
  // --hf-args with num_train_epochs and no max_steps: the Trainer's step count needs the data size.
  if (o.hf_args && o.hf_args->max_steps < 0 && !o.dataset_samples && !options.data_path.empty())
    o.dataset_samples = TokenData(options.data_path).samples(options.seq);
  return load_config(options.config_path, o);
}


std::vector<StepMetrics> train(const TrainOptions& options, Mesh& mesh) {
  TrainConfig cfg = load_train_config(options, mesh.world());
  if (cfg.tp != mesh.tp())
    throw Error(options.config_path + ": tensor_parallel.autotp_size is " + std::to_string(cfg.tp) + " but the mesh has tp=" +
                std::to_string(mesh.tp()));
  if (options.steps < 1) throw Error("train: --steps must be at least 1");
  if (options.save_every < 0 || options.eval_every < 0) throw Error("train: --save-every and --eval-every must be at least 0");
  if (options.save_every > 0 && options.save_dir.empty()) throw Error("train: --save-every needs --save-dir DIR");
  check_out_folder(options.out_dir);
  const bool chatty = !options.quiet && mesh.rank() == 0;
  const int64_t micro = cfg.micro_batch, ga = cfg.grad_accum, dp = mesh.dp(), seq = options.seq;

  // Where to continue from: --resume, or, in a worker torchrun restarted, --save-dir's latest.
  std::string resume = options.resume;
  const char* attempt = std::getenv("TORCHELASTIC_RESTART_COUNT");
  if (resume.empty() && !options.save_dir.empty() && attempt && std::string(attempt) != "0" &&
      fs::exists(fs::path(options.save_dir) / "latest")) {
    resume = options.save_dir;
    if (chatty) std::cout << "restart " << attempt << ": resuming from " << options.save_dir << "/latest\n";
  }
  // A fresh run into a folder that holds another run's checkpoints would interleave with them (and
  // --keep would delete theirs): continuing is --resume, anything else another folder.
  if (resume.empty() && !options.save_dir.empty() && fs::exists(fs::path(options.save_dir) / "latest"))
    throw Error("--save-dir " + options.save_dir + ": holds checkpoints of an earlier run (see its latest); continue it with --resume " +
                options.save_dir + ", or save to another folder");
  std::string from_folder;
  std::optional<CheckpointState> from;
  if (!resume.empty()) {
    from_folder = resolve_checkpoint(resume);
    from = read_checkpoint_state(from_folder);
  }

  at::manual_seed(cfg.seed);
  if (chatty)
    std::cout << "autotp train: " << options.model_path << " world " << mesh.world() << " = tp " << mesh.tp() << " x dp "
              << dp << ", ZeRO-" << cfg.zero_stage << ", " << (cfg.bf16 ? "bf16" : "fp32") << ", global batch "
              << micro * ga * dp << " x " << seq << " tokens (micro " << micro << ", accumulation " << ga << ")\n";

  torch::jit::Module model;
  TpPlan plan;
  {
    RankModel rm = load_rank_model(options.model_path, cfg.tp, mesh.tp_rank(), options.sdpa);
    if (chatty && rm.sdpa_sites >= 0)
      std::cout << "sdpa: " << rm.sdpa_sites << " attention site" << (rm.sdpa_sites == 1 ? "" : "s")
                << " now scaled_dot_product_attention(is_causal=True)"
                << (rm.sdpa_sites == 0 ? " (none matched the eager causal pattern: attention stays as traced)" : "") << "\n";
    model = rm.module;
    plan = rm.plan;
    if (options.verify && rm.original && !from) {
      // A second rewrite by the same plan is checked, not `model`, so training is bit for bit what
      // it is without the check. (Module::clone is no substitute: a cloned rank module loses a
      // gradient.)
      torch::jit::Module twin = rewrite(*rm.original, rm.plan, mesh.tp_rank());
      check_sharding(*rm.original, rm.plan, twin, options, cfg.seed, mesh, chatty);
    }
    else if (options.verify && chatty && !from)
      std::cout << "check: skipped: the rank archives come without the full model to compare with\n";
  }  // the full model is dropped here
  const bool planned = !plan.parameters.empty();
  // TorchScript's profiling executor swaps a method's plan after its first runs (profiled, then
  // optimized with symbolic-script gradients), and the two round differently: a run resumed from a
  // checkpoint would start on the first plan where the uninterrupted one is on the second. Training
  // runs the graph as written, with eager autograd, on every step of every run (this thread only;
  // planning and the check above ran before it, as the analysis expects).
  torch::jit::GraphOptimizerEnabledGuard plain_graph(false);
  const c10::Device device = mesh.rank_device();
  if (!device.is_cpu()) model.to(device);
  if (cfg.bf16) set_compute_dtype(model, at::kBFloat16);
  model.train();

  TokenData data(options.data_path);
  if (options.shuffle) data.shuffle(static_cast<uint64_t>(cfg.seed));
  const int64_t vocab = rewrite_info(model).vocab;
  if (vocab == 0) throw Error(options.model_path + ": its logits are not split over the vocabulary; autotp train needs a vocab-parallel lm-head");
  if (data.vocab() > vocab)
    throw Error(options.data_path + ": tokens were made for a vocabulary of " + std::to_string(data.vocab()) +
                " but the model has " + std::to_string(vocab) + "; tokenize with the model's tokenizer");
  if (chatty && data.truncated(seq) > 0)
    std::cout << "data: " << data.truncated(seq) << " of " << data.examples() << " examples are longer than --seq " << seq
              << " + 1 tokens and are cut\n";
  std::optional<TokenData> eval_data;
  if (!options.eval_data.empty()) {
    eval_data.emplace(options.eval_data);
    if (eval_data->vocab() > vocab)
      throw Error(options.eval_data + ": tokens were made for a vocabulary of " + std::to_string(eval_data->vocab()) +
                  " but the model has " + std::to_string(vocab));
  }

  const std::vector<TrainableParam> params = trainable_params(model, cfg.decay_norms_and_biases);
  std::vector<at::Tensor> weights;  // for the activation peak: their gradients are model states
  for (const auto& p : params) weights.push_back(p.param);
  ZeroOneOptimizer opt(params, mesh.find("dp"), mesh.find("tp"), cfg.optimizer, cfg.zero_stage, cfg.gradient_clipping,
                       CommOptions{cfg.overlap_comm, cfg.reduce_bucket_size, cfg.allgather_bucket_size});

  int64_t start = 0;
  if (from) {
    const CheckpointState& st = *from;
    auto refuse = [&](const std::string& what) { throw Error(from_folder + ": cannot resume: " + what); };
    if (st.global_batch != micro * ga * dp)
      refuse("it was trained with a global batch of " + std::to_string(st.global_batch) + " samples (micro " +
             std::to_string(st.micro_batch) + " x accumulation " + std::to_string(st.grad_accum) + " x dp " + std::to_string(st.dp) +
             "), this run's is " + std::to_string(micro * ga * dp) + "; choose --micro-batch/--grad-accum so they match");
    if (st.seq != seq) refuse("it was trained at --seq " + std::to_string(st.seq) + ", this run asks for " + std::to_string(seq));
    if (st.data_tokens != data.tokens())
      refuse("it was trained on " + st.data + " (" + std::to_string(st.data_tokens) + " tokens), --data " + options.data_path +
             " holds " + std::to_string(data.tokens()) + "; resume on the same data");
    if (st.seed != cfg.seed)
      refuse("it was trained with seed " + std::to_string(st.seed) + ", the config says " + std::to_string(cfg.seed) +
             "; the data order depends on it");
    if (st.step >= options.steps)
      refuse("it is at step " + std::to_string(st.step) + " already; pass --steps larger than that (the total, not the remainder)");
    load_checkpoint(from_folder, st, planned ? plan.parameters : rewrite_info(model).params, opt, mesh);
    start = st.step;
    if (chatty)
      std::cout << "resumed from " << from_folder << " at step " << st.step << " (tp " << st.tp << " x dp " << st.dp << " -> tp "
                << mesh.tp() << " x dp " << dp << "), next lr " << sci(lr_for_update(cfg, start), 3) << "\n";
  }
  check_tp_peers_agree(mesh.tp_group(), data.batch(start, 0, ga, mesh.dp_rank(), dp, micro, seq).input);
  mesh.reset_counts();  // the metrics count training traffic from here on, not the start-up checks
  Heartbeat heartbeat(mesh);

  std::ofstream metrics;
  if (!options.metrics_path.empty() && mesh.rank() == 0) {
    if (const fs::path parent = fs::path(options.metrics_path).parent_path(); !parent.empty()) fs::create_directories(parent);
    if (from) trim_metrics(options.metrics_path, start);
    metrics.open(options.metrics_path, from ? std::ios::app : std::ios::trunc);
    if (!metrics) throw Error(options.metrics_path + ": cannot write the metrics file");
  }
  const bool bar = chatty && isatty(fileno(stdout));
  auto make_request = [&](const std::string& folder, int64_t step, double loss) {
    SaveRequest req;
    req.folder = folder;
    CheckpointState& s = req.state;
    s.step = step;
    s.tp = mesh.tp();
    s.dp = dp;
    s.world = mesh.world();
    s.zero_stage = cfg.zero_stage;
    s.global_batch = micro * ga * dp;
    s.micro_batch = micro;
    s.grad_accum = ga;
    s.seq = seq;
    s.samples_seen = step * s.global_batch;
    s.epoch = data.epoch_at(std::max<int64_t>(step - 1, 0), ga, dp, micro, seq);
    s.seed = cfg.seed;
    s.bf16 = cfg.bf16;
    s.data = options.data_path;
    s.data_tokens = data.tokens();
    s.loss = loss;
    req.config_json = cfg.to_json();
    if (planned) req.plan_json = plan_to_json(plan);
    return req;
  };
  std::string last_saved = from ? from_folder : "";
  auto save_to = [&](const std::string& folder, int64_t step, double loss) {
    const auto t0 = std::chrono::steady_clock::now();
    die_here_if_asked("save", mesh.rank(), step);
    save_checkpoint(make_request(folder, step, loss), model, opt, mesh);
    last_saved = folder;
    if (chatty)
      std::cout << "saved " << folder << " (step " << step << ", "
                << std::fixed << std::setprecision(2) << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()
                << " s)\n" << std::defaultfloat;
  };

  // The held-out loss before training, so the curve has its starting point (not on resume: the
  // first run recorded it).
  auto run_eval = [&](int64_t step) {
    const EvalResult e = evaluate(model, *eval_data, mesh, micro, seq, options.eval_samples);
    if (chatty)
      std::cout << "eval  step " << step << "  loss " << std::fixed << std::setprecision(4) << e.loss << "  perplexity "
                << std::setprecision(2) << std::exp(e.loss) << "  (" << e.tokens << " tokens of " << options.eval_data << ")\n"
                << std::defaultfloat;
    if (metrics.is_open())
      metrics << nlohmann::json{{"step", step}, {"eval_loss", e.loss}, {"eval_perplexity", std::exp(e.loss)}, {"eval_tokens", e.tokens}}
                     .dump()
              << "\n" << std::flush;
  };
  if (eval_data && !from) run_eval(0);

  std::vector<StepMetrics> out;
  std::array<CollectiveCount, 3> trained{};
  int64_t activation_peak = 0;  // measured at the first step, reported on every one
  int64_t epoch = start > 0 ? data.epoch_at(start - 1, ga, dp, micro, seq) : -1;
  for (int64_t step = start; step < options.steps; ++step) {
    try {
      const int64_t now_epoch = data.epoch_at(step, ga, dp, micro, seq);
      if (now_epoch != epoch && chatty)
        std::cout << "epoch " << now_epoch + 1 << " begins at step " << step + 1 << " (" << data.samples(seq)
                  << " samples per epoch" << (options.shuffle ? ", shuffled" : "") << ")\n";
      epoch = now_epoch;
      const auto before = totals(mesh);
      const auto t0 = std::chrono::steady_clock::now();
      // The loss is the mean over every counted label of the global batch (token-weighted across
      // micro-batches and DP ranks, as transformers does since 4.46): each micro-batch contributes
      // its sum × dp / count, and the DP mean of gradients divides the dp back out.
      const int64_t counted = std::max<int64_t>(1, data.loss_tokens(step, ga, dp, micro, seq));
      const double scale = static_cast<double>(dp) / static_cast<double>(counted);
      // Summed where the loss is (no device sync per micro-batch) and read once per step.
      at::Tensor loss_sum = at::zeros({1}, at::TensorOptions().dtype(at::kDouble).device(device));
      for (int64_t k = 0; k < ga; ++k) {
        Batch b = data.batch(step, k, ga, mesh.dp_rank(), dp, micro, seq);
        b.input = b.input.to(device);
        b.labels = b.labels.to(device);
        // The activation peak is measured on this run's first step only: every step has the same
        // shapes ([micro, seq]), and the meter hears every allocation (and makes CPU collectives wait
        // for gloo to let their tensors go), which later steps need not pay for.
        std::optional<MemoryMeter> meter;
        if (step == start) meter.emplace(mesh.device());  // this micro-batch's forward and backward
        at::Tensor logits = logits_of(model.forward({b.input}));
        at::Tensor loss = vocab_parallel_cross_entropy(logits, b.labels, kIgnoreLabel, "tp", mesh.tp()).sum() * scale;
        die_here_if_asked("step", mesh.rank(), step + 1);
        if (k == ga - 1) opt.last_micro_batch();  // overlap_comm: its DP reduction runs in this backward
        torch::autograd::backward({loss});
        if (meter) activation_peak = std::max(activation_peak, meter->peak_without_grads(weights));
        opt.accumulate();
        loss_sum += loss.detach().to(at::kDouble);
      }
      const double lr = lr_for_update(cfg, step);
      StepStats st = opt.step(lr);
      opt.zero_grad();
      mesh.dp_group().all_reduce(loss_sum, c10d::ReduceOp::SUM, "train.metrics");
      // Read before the clock: on a GPU it waits for the step's queued kernels (the optimizer's
      // last), so `seconds` is the step's run time, not its launch's.
      const double loss_total = loss_sum.item<double>();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const auto after = totals(mesh);
      for (int g = 0; g < 3; ++g) {
        trained[g].calls += after[g].calls - before[g].calls;
        trained[g].bytes += after[g].bytes - before[g].bytes;
      }

      StepMetrics m;
      m.step = step + 1;
      m.epoch = epoch;
      m.loss = loss_total / static_cast<double>(dp);
      m.loss_tokens = counted;
      m.lr = lr;
      m.grad_norm = st.grad_norm;
      m.seconds = seconds;
      m.tokens_per_s = static_cast<double>(micro * ga * dp * seq) / seconds;
      auto b = opt.bytes();
      m.param_bytes = b.params;
      m.grad_bytes = b.grads;
      m.optimizer_bytes = b.state;
      m.peak_activation_bytes = activation_peak;
      m.cuda_peak_allocated_bytes = cuda_peak_allocated(device);
      m.world_bytes = trained[0];
      m.tp_bytes = trained[1];
      m.dp_bytes = trained[2];
      out.push_back(m);
      if (metrics.is_open()) metrics << m.json() << "\n" << std::flush;
      const bool last = m.step == options.steps;
      const bool print = chatty && (m.step == 1 || m.step % cfg.steps_per_print == 0 || last);
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
                  << ", activations " << human_bytes(m.peak_activation_bytes)
                  << "  collectives: tp " << human_bytes(m.tp_bytes.bytes) << ", dp " << human_bytes(m.dp_bytes.bytes)
                  << "\n" << std::defaultfloat;
      }
      // Replicas drift apart silently when a gradient misses its TP reduction: compare them now and
      // then (every rank decides alike, so every rank of the group joins the all-reduce).
      if (m.step % cfg.steps_per_print == 0 || last) check_tp_replicas(params, mesh.tp_group(), m.step);
      if (eval_data && ((options.eval_every > 0 && m.step % options.eval_every == 0) || last)) {
        run_eval(m.step);
      }
      if (!options.save_dir.empty() && ((options.save_every > 0 && m.step % options.save_every == 0) || last)) {
        const std::string folder = (fs::path(options.save_dir) / ("step-" + std::to_string(m.step))).string();
        save_to(folder, m.step, m.loss);
        if (mesh.rank() == 0) commit_latest(options.save_dir, folder, options.keep);
        mesh.world_group().barrier();
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      // A collective failed because a peer died (its sockets closed) or went silent past --timeout,
      // or the model itself failed: the heartbeats tell which.
      const std::string lost = heartbeat.lost_ranks();
      if (lost.empty() && cfg.bf16) bf16_dtype_failure(e.what(), step + 1);
      if (lost.empty()) throw Error("train: step " + std::to_string(step + 1) + ": " + user_message(e));
      throw Error("train: rank " + std::to_string(mesh.rank()) + ": step " + std::to_string(step + 1) + " failed: " + lost +
                  " is lost (" + first_line(e.what()) + "); " +
                  (last_saved.empty() ? "no checkpoint was written (--save-dir DIR --save-every N keeps one)"
                                      : "the last complete checkpoint is " + last_saved + "; continue with --resume " +
                                            (options.save_dir.empty() ? last_saved : options.save_dir)));
    }
  }
  if (bar) std::cout << "\n";

  if (!options.out_dir.empty()) save_to(options.out_dir, options.steps, out.empty() ? 0.0 : out.back().loss);
  mesh.world_group().barrier();
  return out;
}

}  // namespace autotp
