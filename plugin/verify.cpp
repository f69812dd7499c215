// autotp verify: the rewrite against the unsharded model, forward + backward (see autotp/verify.h).
#include "autotp/verify.h"

#include <torch/cuda.h>

#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/passes.h"
#include "runtime/tp_ops.h"

namespace autotp {
namespace {

struct Batch {
  at::Tensor ids;     // [B, S]
  at::Tensor labels;  // [B, S-1]: the next token
};

// What one forward+backward produced: logits as the module returns them (vocab-split on a rank
// module), the loss, and every parameter's gradient by name.
struct StepResult {
  at::Tensor logits;
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
};

StepResult step(torch::jit::Module& module, const Batch& b, bool vocab_split, int tp) {
  // Gradients of this batch only, not added to whatever an earlier backward left.
  for (const auto& p : module.parameters(/*recurse=*/true)) p.mutable_grad() = at::Tensor();
  StepResult r;
  at::Tensor logits = logits_of(module.forward({b.ids}));
  at::Tensor shifted = logits.narrow(1, 0, logits.size(1) - 1);
  at::Tensor loss = vocab_split
                        ? vocab_parallel_cross_entropy(shifted, b.labels, -100, "tp", tp).mean()
                        : at::cross_entropy_loss(shifted.reshape({-1, shifted.size(-1)}).to(at::kFloat), b.labels.reshape({-1}));
  if (loss.requires_grad()) torch::autograd::backward({loss});  // a frozen archive has nothing to train
  r.logits = logits.detach();
  r.loss = loss.item<double>();
  for (const auto& p : module.named_parameters(/*recurse=*/true))
    if (p.value.grad().defined()) r.grads[p.name] = p.value.grad().detach();
  return r;
}

// max |got - ref| / max(max |whole|, floor): `whole` is the full reference tensor when `ref` is a
// rank's slice of it, so a slice's error is the number the re-assembled comparison gives.
double rel(const at::Tensor& got, const at::Tensor& ref, const at::Tensor& whole, double floor = 0) {
  const double scale = std::max(whole.to(at::kDouble).abs().max().item<double>(), floor);
  const double diff = (got.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}
double rel(const at::Tensor& got, const at::Tensor& ref, double floor = 0) { return rel(got, ref, ref, floor); }

// A gradient is judged against its own scale, but never against less than a thousandth of the
// model's largest gradient: some are zero analytically and hold only rounding (OPT's k_proj bias,
// 2e-11, since softmax ignores a shift shared by all keys), where any ratio is noise. A fault that
// moves a gradient by half its size is still caught unless that gradient is below 2e-8 of the
// largest, i.e. rounding itself.
double gradient_floor(const std::map<std::string, at::Tensor>& grads) {
  double largest = 0;
  for (const auto& [name, g] : grads) largest = std::max(largest, g.abs().max().item<double>());
  return 1e-3 * largest;
}

// The logits split as a parameter would be: over the (padded) vocabulary when vocab_split.
ParamPlan logits_part(const at::Tensor& reference_logits, bool vocab_split, const TpPlan& plan) {
  ParamPlan p;
  p.shape = reference_logits.sizes().vec();
  p.split_dim = vocab_split ? static_cast<int>(reference_logits.dim()) - 1 : -1;
  if (vocab_split && plan.sites.vocab_padded > plan.sites.vocab) p.padded = plan.sites.vocab_padded;
  return p;
}


std::string shape_text(const std::vector<int64_t>& shape) {
  return "[" + std::to_string(shape.at(0)) + ", " + std::to_string(shape.at(1)) + "]";
}

Batch make_batch(const std::vector<int64_t>& shape, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Batch b;
  b.ids = at::randint(vocab, shape, gen, at::TensorOptions().dtype(at::kLong));
  b.labels = b.ids.narrow(1, 1, shape[1] - 1).contiguous();
  return b;
}

// Ids are drawn below the vocabulary the plan splits (an embedding or lm-head with placement
// vocab); 2 when nothing is vocab-split, ids every model accepts.
int64_t vocab_of(const TpPlan& plan) {
  for (const auto& p : plan.parameters)
    if (p.placement == Placement::Vocab && !p.shape.empty()) return p.shape[0];
  return 2;
}

// The plan's entry for every name and alias of a parameter.
using PlanIndex = std::map<std::string, const ParamPlan*>;
PlanIndex index_of(const TpPlan& plan) {
  PlanIndex out;
  for (const auto& p : plan.parameters) {
    out[p.name] = &p;
    for (const auto& a : p.aliases) out[a] = &p;
  }
  return out;
}

const ParamPlan& plan_of(const PlanIndex& index, const std::string& name) {
  auto it = index.find(name);
  if (it == index.end()) throw Error("verify: rank module has parameter " + name + " that the plan does not list");
  return *it->second;
}

// The original's forward + backward, or one line naming the shape it cannot run.
StepResult reference_step(torch::jit::Module& original, const Batch& b, const std::string& label) {
  try {
    return step(original, b, /*vocab_split=*/false, 1);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const std::vector<int64_t> shape = b.ids.sizes().vec(), traced = example_shape(original);
    const std::string hint =
        shape != traced ? "; a traced model may only run on the shape it was traced with, " + shape_text(traced) : "";
    throw Error(label + ": the original model fails on a batch of shape " + shape_text(shape) + " (" + user_message(e) + ")" + hint);
  }
}

// One parameter's gradient error, once per parameter.
void record_grad(VerifyReport& r, const std::string& name, double e) {
  r.grad_errors.push_back({name, e});
  if (e >= r.grads_rel) {
    r.grads_rel = e;
    r.worst_grad = name;
  }
  r.grads_compared += 1;
}

// Counts accumulated between two snapshots of a group's counters.
std::map<std::string, CollectiveCount> since(std::map<std::string, CollectiveCount> after,
                                             const std::map<std::string, CollectiveCount>& before) {
  for (const auto& [key, c] : before) {
    after[key].calls -= c.calls;
    after[key].bytes -= c.bytes;
    if (after[key].calls == 0) after.erase(key);
  }
  return after;
}

// Everything verify_threads needs besides the rank modules: the original in the requested dtype,
// its plan, the batch shape and the report's header.
struct Setup {
  torch::jit::Module original;
  torch::jit::Module source;  // what the ranks are rewritten from: the original, or its --sdpa form
  TpPlan plan;
  std::vector<int64_t> shape;
  VerifyReport report;
};

Setup prepare(const std::string& path, const VerifyOptions& o) {
  if (o.dtype != "fp32" && o.dtype != "bf16")
    throw Error("verify: --dtype " + o.dtype + " is not supported; use fp32 or bf16");
  Setup s;
  s.original = load_model(path);
  if (o.dtype == "bf16") set_compute_dtype(s.original, at::kBFloat16);
  s.source = s.original;
  if (o.sdpa) {  // a second load (Module::clone would share what it should not)
    s.source = load_model(path);
    if (o.dtype == "bf16") set_compute_dtype(s.source, at::kBFloat16);
    s.report.sdpa_sites = use_sdpa(s.source);
  }
  s.plan = plan_model(s.source, o.tp, path);
  s.shape = example_shape(s.original);
  if (o.batch > 0) s.shape[0] = o.batch;
  if (o.seq > 0) s.shape[1] = o.seq;
  if (s.shape[1] < 2) throw Error("verify: --seq must be at least 2 (the loss predicts the next token)");
  auto& r = s.report;
  r.model = path;
  r.tp = o.tp;
  r.dtype = o.dtype;
  r.input_shape = s.shape;
  r.tolerance = verify_tolerance(o.dtype);
  r.per_parameter = o.per_parameter;
  return s;
}

// "bf16" when the module's parameters are bf16 (verify --dtype bf16), else "fp32".
std::string dtype_of(const torch::jit::Module& m) {
  for (const auto& p : m.parameters(/*recurse=*/true)) return p.scalar_type() == at::kBFloat16 ? "bf16" : "fp32";
  return "fp32";
}

}  // namespace

double verify_tolerance(const std::string& dtype) {
  // bf16 keeps 8 significant bits (relative step 2^-8 = 3.9e-3). The sharded model rounds each
  // rank's partial sums to bf16 before the all-reduce adds them, the unsharded one rounds the full
  // sum once, so a value can differ by a few units of the last place; 3e-2 allows ~8 of them
  // relative to the tensor's largest value.
  return dtype == "bf16" ? 3e-2 : 1e-5;
}

std::string VerifyReport::failure() const {
  std::ostringstream out;
  out << std::setprecision(2) << std::scientific;
  if (grads_rel > tolerance) out << "gradient of " << worst_grad << " off by " << grads_rel;
  else if (logits_rel > tolerance) out << "logits off by " << logits_rel;
  else if (loss_rel > tolerance) out << "loss off by " << loss_rel;
  return out.str();
}

std::string VerifyReport::text() const {
  std::ostringstream out;
  out << std::setprecision(3) << std::scientific;
  out << "verify " << model << " tp=" << tp << " dtype=" << dtype << " batch=[" << input_shape[0] << ", "
      << input_shape[1] << "]\n";
  auto line = [&](const std::string& what, double v, const std::string& extra) {
    out << "  " << std::left << std::setw(9) << what << " max rel error " << v << (v <= tolerance ? "  ok" : "  FAIL")
        << extra << "\n";
  };
  line("logits", logits_rel, vocab_split ? "  (vocab-split on the ranks, re-assembled)" : "");
  std::ostringstream lv;
  lv << std::setprecision(8) << std::fixed << "  (reference " << loss_reference << ", sharded " << loss_sharded << ")";
  line("loss", loss_rel, lv.str());
  if (grads_compared)
    line("grads", grads_rel, "  (" + std::to_string(grads_compared) + " parameters; worst " + worst_grad + ")");
  else
    out << "  grads     none: the archive has no trainable parameters (frozen)\n";
  if (per_parameter)
    for (const auto& [name, e] : grad_errors)
      out << "    " << std::left << std::setw(56) << name << " " << e << (e <= tolerance ? "" : "  FAIL") << "\n";
  out << "  tolerance " << tolerance << " (" << dtype << ")\n";
  if (sdpa_sites >= 0)
    out << "  sdpa      " << sdpa_sites << " attention sites run as scaled_dot_product_attention(is_causal=True) on the ranks; "
        << "the reference is the model as traced\n";
  out << "  collectives on the tp group of rank 0, one forward+backward:\n";
  for (const auto& [site, c] : tp_by_site)
    out << "    " << std::left << std::setw(42) << site << " calls " << std::setw(4) << c.calls << " bytes " << c.bytes
        << "\n";
  CollectiveCount total;
  for (const auto& [k, c] : tp_by_kind) {
    total.calls += c.calls;
    total.bytes += c.bytes;
  }
  out << "    " << std::left << std::setw(42) << "total" << " calls " << std::setw(4) << total.calls << " bytes "
      << total.bytes << "\n";
  out << (ok() ? "OK" : "FAILED: above tolerance") << "\n";
  return out.str();
}

namespace {

// This rank's error of `got` against the reference `ref`: this rank's part of `ref` as the plan
// splits it (scaled by the whole reference: the number the re-assembled comparison gives). A part
// of the wrong shape is infinitely wrong, not an exception: every rank must reach the max-reduce.
double part_rel(const at::Tensor& got, const at::Tensor& ref, const ParamPlan& p, int rank, int tp, double floor = 0) {
  at::Tensor mine = shard_of(ref, p, tp, rank);
  if (got.sizes() != mine.sizes()) return std::numeric_limits<double>::infinity();
  if (p.padded) {  // padding is not the model's: compare this rank's real rows or columns only
    const int64_t local = p.padded / tp, real = p.shape.at(static_cast<size_t>(p.split_dim));
    const int64_t keep = std::max<int64_t>(0, std::min(local, real - rank * local));
    if (keep == 0) return 0;
    return rel(got.narrow(p.split_dim, 0, keep), mine.narrow(p.split_dim, 0, keep), ref, floor);
  }
  return rel(got, mine, ref, floor);
}

}  // namespace

VerifyReport verify_threads(const std::string& path, const VerifyOptions& o) {
  Setup s = prepare(path, o);
  const bool cuda = torch::cuda::is_available();
  const c10::Device device =
      choose_rank_device(o.device == "auto" ? "cpu" : o.device, cuda, cuda ? static_cast<int64_t>(torch::cuda::device_count()) : 0, 0);
  Batch batch = make_batch(s.shape, vocab_of(s.plan), o.seed);
  const int tp = o.tp;
  std::vector<torch::jit::Module> ranks;
  for (int r = 0; r < tp; ++r) ranks.push_back(rewrite(s.source, s.plan, r));
  if (!device.is_cpu()) {
    batch.ids = batch.ids.to(device);
    batch.labels = batch.labels.to(device);
    s.original.to(device);
    for (auto& m : ranks) m.to(device);
  }
  const StepResult reference = reference_step(s.original, batch, path);
  const PlanIndex index = index_of(s.plan);
  const bool vocab_split = rewrite_info(ranks[0]).vocab > 0;

  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<StepResult> results(tp);
  std::vector<std::string> errors(tp);
  std::map<std::string, CollectiveCount> by_site, by_kind;
  std::vector<std::thread> threads;
  for (int r = 0; r < tp; ++r) {
    threads.emplace_back([&, r] {
      try {
        MeshOptions mo;
        mo.tp = tp;
        mo.timeout = std::chrono::seconds(120);
        auto mesh = Mesh::create(store, r, tp, mo);
        MeshScope scope(mesh);
        results[r] = step(ranks[r], batch, vocab_split, tp);
        if (r == 0) {
          by_site = mesh->tp_group().by_site();
          by_kind = mesh->tp_group().by_kind();
          for (const auto& g : mesh->replica_groups())  // kv heads on several ranks: their gradient sums
            for (const auto& [site, c] : g->by_site()) by_site[site + " (" + g->name() + ")"] = c;
        }
      } catch (const std::exception& e) {
        errors[r] = user_message(e);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < tp; ++r)
    if (!errors[r].empty()) throw Error("verify: rank " + std::to_string(r) + ": " + errors[r]);

  VerifyReport rep = s.report;
  rep.loss_reference = reference.loss;
  rep.vocab_split = vocab_split;
  rep.tp_by_site = by_site;
  rep.tp_by_kind = by_kind;
  std::vector<at::Tensor> logits;
  for (const auto& res : results) logits.push_back(res.logits);
  at::Tensor assembled = vocab_split ? assemble(logits, logits_part(reference.logits, vocab_split, s.plan)) : logits[0];
  rep.logits_rel = rel(assembled, reference.logits);
  if (!vocab_split)  // replicated logits: every rank must hold the same
    for (const auto& l : logits) rep.logits_rel = std::max(rep.logits_rel, rel(l, reference.logits));
  rep.loss_sharded = results[0].loss;
  for (const auto& res : results)
    rep.loss_rel = std::max(rep.loss_rel, std::abs(res.loss - reference.loss) / std::abs(reference.loss));
  const double floor = gradient_floor(reference.grads);
  for (const auto& [name, ref] : reference.grads) {
    const ParamPlan& p = plan_of(index, name);
    std::vector<at::Tensor> shards;
    for (int r = 0; r < tp; ++r) {
      auto it = results[r].grads.find(name);
      if (it == results[r].grads.end()) throw Error("verify: rank " + std::to_string(r) + " has no gradient for " + name);
      shards.push_back(it->second);
    }
    double e = 0;
    if (p.split_dim >= 0) {
      e = rel(assemble(shards, p), ref, floor);
      if (p.replicas > 1)  // kv heads on several ranks: assemble reads the first holder; every holder must agree
        for (int r = 0; r < tp; ++r) e = std::max(e, part_rel(shards[static_cast<size_t>(r)], ref, p, r, tp, floor));
    } else
      for (const auto& replica : shards) e = std::max(e, rel(replica, ref, floor));  // each replica in full
    record_grad(rep, name, e);
  }
  return rep;
}

VerifyReport verify_on_mesh(const std::string& path, const VerifyOptions& o, Mesh& mesh) {
  if (mesh.tp() != o.tp || mesh.dp() != 1)
    throw Error("verify: the mesh has tp=" + std::to_string(mesh.tp()) + ", dp=" + std::to_string(mesh.dp()) +
                " but verify needs exactly one tp group of " + std::to_string(o.tp) +
                " ranks; launch with --nproc_per_node " + std::to_string(o.tp));
  Setup s = prepare(path, o);
  torch::jit::Module mine = rewrite(s.source, s.plan, mesh.tp_rank());
  VerifyReport rep = verify_rank(s.original, s.plan, mine, s.shape, o.seed, mesh);
  rep.model = path;
  rep.sdpa_sites = s.report.sdpa_sites;
  rep.per_parameter = o.per_parameter;
  return rep;
}


VerifyReport verify_rank(torch::jit::Module& original, const TpPlan& plan, torch::jit::Module& mine,
                         const std::vector<int64_t>& shape, uint64_t seed, Mesh& mesh) {
  if (shape.size() != 2 || shape[0] < 1 || shape[1] < 2)
    throw Error("verify: the check batch must be [B >= 1, S >= 2] token ids (the loss predicts the next token)");
  const Batch batch = make_batch(shape, vocab_of(plan), seed);
  const StepResult reference = reference_step(original, batch, plan.model);
  const PlanIndex index = index_of(plan);
  const int r = mesh.tp_rank(), tp = mesh.tp();
  const bool vocab_split = rewrite_info(mine).vocab > 0;

  Group& tpg = mesh.tp_group();
  const auto sites = tpg.by_site(), kinds = tpg.by_kind();
  const StepResult res = step(mine, batch, vocab_split, tp);

  VerifyReport rep;
  rep.model = plan.model;
  rep.tp = tp;
  rep.dtype = dtype_of(original);
  rep.input_shape = shape;
  rep.tolerance = verify_tolerance(rep.dtype);
  rep.vocab_split = vocab_split;
  rep.tp_by_site = since(tpg.by_site(), sites);  // this one forward + backward
  rep.tp_by_kind = since(tpg.by_kind(), kinds);
  rep.loss_reference = reference.loss;
  rep.loss_sharded = res.loss;
  // Errors in one vector: logits, loss, then every gradient in the reference's (name) order, which
  // every rank shares. A gradient this rank lacks counts as zero: a gradient that never arrives.
  std::vector<double> errors{
      part_rel(res.logits, reference.logits, logits_part(reference.logits, vocab_split, plan), r, tp),
      std::abs(res.loss - reference.loss) / std::abs(reference.loss)};
  std::vector<std::string> names;
  const double floor = gradient_floor(reference.grads);
  for (const auto& [name, ref] : reference.grads) {
    const ParamPlan& p = plan_of(index, name);
    auto it = res.grads.find(name);
    at::Tensor got = it != res.grads.end() ? it->second : at::zeros_like(shard_of(ref, p, tp, r));
    errors.push_back(part_rel(got, ref, p, r, tp, floor));
    names.push_back(name);
  }
  // Agree on the worst over all ranks (world group, so the tp counts above stay one step's). NaN
  // becomes +inf first: a max-reduce may drop a NaN, and NaN must fail.
  at::Tensor worst = at::nan_to_num(at::tensor(errors, at::kDouble), std::numeric_limits<double>::infinity());
  mesh.world_group().all_reduce(worst, c10d::ReduceOp::MAX, "verify.report");
  rep.logits_rel = worst[0].item<double>();
  rep.loss_rel = worst[1].item<double>();
  for (size_t i = 0; i < names.size(); ++i) record_grad(rep, names[i], worst[static_cast<int64_t>(i) + 2].item<double>());
  return rep;
}

std::vector<int64_t> example_shape(const torch::jit::Module& module) {
  // As passes/shape_probe.cpp's example_inputs: the first input's recorded sizes, when the graph
  // has them (a trace), else [2, 8].
  if (auto forward = module.find_method("forward")) {
    const auto& inputs = forward->graph()->inputs();
    if (inputs.size() > 1)
      if (auto tt = inputs[1]->type()->cast<c10::TensorType>())
        if (auto sizes = tt->sizes().concrete_sizes(); sizes && sizes->size() == 2) return *sizes;
  }
  return {2, 8};
}

}  // namespace autotp
