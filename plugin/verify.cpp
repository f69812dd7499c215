// autotp verify: the rewrite against the unsharded model, forward + backward (see autotp/verify.h).
#include "autotp/verify.h"

#include <iomanip>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/error.h"
#include "autotp/rewrite.h"
#include "passes/analyze.h"
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

// max |got - ref| / max |whole|: `whole` is the full reference tensor when `ref` is a rank's slice
// of it, so a slice's error is the number the re-assembled comparison gives.
double rel(const at::Tensor& got, const at::Tensor& ref, const at::Tensor& whole) {
  const double scale = whole.to(at::kDouble).abs().max().item<double>();
  const double diff = (got.to(at::kDouble) - ref.to(at::kDouble)).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}
double rel(const at::Tensor& got, const at::Tensor& ref) { return rel(got, ref, ref); }

Batch make_batch(const std::vector<int64_t>& shape, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Batch b;
  b.ids = at::randint(vocab, shape, gen, at::TensorOptions().dtype(at::kLong));
  b.labels = b.ids.narrow(1, 1, shape[1] - 1).contiguous();
  return b;
}

// Everything both modes share: the original (in the requested dtype), its plan, the batch, the
// reference step.
struct Setup {
  torch::jit::Module original;
  TpPlan plan;
  Batch batch;
  StepResult reference;
  std::map<std::string, const ParamPlan*> params;  // by every name and alias
  int64_t vocab = 0;
  VerifyReport report;
};

Setup prepare(const std::string& path, const VerifyOptions& o) {
  if (o.dtype != "fp32" && o.dtype != "bf16")
    throw Error("verify: --dtype " + o.dtype + " is not supported; use fp32 or bf16");
  Setup s;
  s.original = load_model(path);
  if (o.dtype == "bf16") s.original.to(at::kBFloat16);
  ModelGraph mg = model_graph_from(s.original, path);
  auto example = example_inputs(mg);
  ShardingStructure st = propagate(mg, probe(mg, example));
  s.plan = make_plan(mg, st, o.tp);
  for (const auto& e : st.embeddings) s.vocab = mg.tensors[e.weight].tensor.size(0);
  for (const auto& p : s.plan.parameters) {
    s.params[p.name] = &p;
    for (const auto& a : p.aliases) s.params[a] = &p;
  }
  std::vector<int64_t> shape = example.at(0).toTensor().sizes().vec();
  if (o.batch > 0) shape[0] = o.batch;
  if (o.seq > 0) shape[1] = o.seq;
  if (shape[1] < 2) throw Error("verify: --seq must be at least 2 (the loss predicts the next token)");
  s.batch = make_batch(shape, s.vocab > 0 ? s.vocab : 2, o.seed);
  try {
    s.reference = step(s.original, s.batch, /*vocab_split=*/false, 1);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const std::string hint = o.batch > 0 || o.seq > 0
                                 ? "; a traced model may only run on the shape it was traced with: leave --batch/--seq out"
                                 : "";
    throw Error(path + ": the original model fails on a batch of shape [" + std::to_string(shape[0]) + ", " +
                std::to_string(shape[1]) + "] (" + user_message(e) + ")" + hint);
  }
  auto& r = s.report;
  r.model = path;
  r.tp = o.tp;
  r.dtype = o.dtype;
  r.input_shape = shape;
  r.tolerance = verify_tolerance(o.dtype);
  r.loss_reference = s.reference.loss;
  r.per_parameter = o.per_parameter;
  return s;
}

const ParamPlan& plan_of(const Setup& s, const std::string& name) {
  auto it = s.params.find(name);
  if (it == s.params.end()) throw Error("verify: rank module has parameter " + name + " that the plan does not list");
  return *it->second;
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

}  // namespace

double verify_tolerance(const std::string& dtype) {
  // bf16 keeps 8 significant bits (relative step 2^-8 = 3.9e-3). The sharded model rounds each
  // rank's partial sums to bf16 before the all-reduce adds them, the unsharded one rounds the full
  // sum once, so a value can differ by a few units of the last place; 3e-2 allows ~8 of them
  // relative to the tensor's largest value.
  return dtype == "bf16" ? 3e-2 : 1e-5;
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

VerifyReport verify_threads(const std::string& path, const VerifyOptions& o) {
  Setup s = prepare(path, o);
  const int tp = o.tp;
  std::vector<torch::jit::Module> ranks;
  for (int r = 0; r < tp; ++r) ranks.push_back(rewrite(s.original, s.plan, r));
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
        results[r] = step(ranks[r], s.batch, vocab_split, tp);
        if (r == 0) {
          by_site = mesh->tp_group().by_site();
          by_kind = mesh->tp_group().by_kind();
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
  rep.vocab_split = vocab_split;
  rep.tp_by_site = by_site;
  rep.tp_by_kind = by_kind;
  std::vector<at::Tensor> logits;
  for (const auto& res : results) logits.push_back(res.logits);
  at::Tensor assembled = vocab_split ? at::cat(logits, -1) : logits[0];
  rep.logits_rel = rel(assembled, s.reference.logits);
  if (!vocab_split)  // replicated logits: every rank must hold the same
    for (const auto& l : logits) rep.logits_rel = std::max(rep.logits_rel, rel(l, s.reference.logits));
  rep.loss_sharded = results[0].loss;
  for (const auto& res : results)
    rep.loss_rel = std::max(rep.loss_rel, std::abs(res.loss - s.reference.loss) / std::abs(s.reference.loss));
  for (const auto& [name, ref] : s.reference.grads) {
    const ParamPlan& p = plan_of(s, name);
    std::vector<at::Tensor> shards;
    for (int r = 0; r < tp; ++r) {
      auto it = results[r].grads.find(name);
      if (it == results[r].grads.end()) throw Error("verify: rank " + std::to_string(r) + " has no gradient for " + name);
      shards.push_back(it->second);
    }
    double e = 0;
    if (p.split_dim >= 0)
      e = rel(at::cat(shards, p.split_dim), ref);
    else
      for (const auto& replica : shards) e = std::max(e, rel(replica, ref));  // each replica in full
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
  const int r = mesh.tp_rank(), tp = o.tp;
  torch::jit::Module mine = rewrite(s.original, s.plan, r);
  const bool vocab_split = rewrite_info(mine).vocab > 0;
  mesh.reset_counts();
  StepResult res = step(mine, s.batch, vocab_split, tp);

  VerifyReport rep = s.report;
  rep.vocab_split = vocab_split;
  rep.tp_by_site = mesh.tp_group().by_site();
  rep.tp_by_kind = mesh.tp_group().by_kind();
  // Each rank compares its slice with the same slice of the reference, scaled by the whole
  // reference: the same number the re-assembled comparison gives.
  auto slice_rel = [&](const at::Tensor& got, const at::Tensor& ref, int dim) {
    if (dim < 0) return rel(got, ref);
    const int64_t len = ref.size(dim) / tp;
    return rel(got, ref.narrow(dim, r * len, len), ref);
  };
  rep.logits_rel = slice_rel(res.logits, s.reference.logits, vocab_split ? static_cast<int>(res.logits.dim()) - 1 : -1);
  rep.loss_sharded = res.loss;
  rep.loss_rel = std::abs(res.loss - s.reference.loss) / std::abs(s.reference.loss);
  for (const auto& [name, ref] : s.reference.grads) {
    auto it = res.grads.find(name);
    if (it == res.grads.end()) throw Error("verify: rank " + std::to_string(r) + " has no gradient for " + name);
    record_grad(rep, name, slice_rel(it->second, ref, plan_of(s, name).split_dim));
  }
  // Agree on the worst over all ranks (world group, so the tp counts above stay one step's).
  at::Tensor worst = at::tensor({rep.logits_rel, rep.loss_rel, rep.grads_rel}, at::kDouble);
  mesh.world_group().all_reduce(worst, c10d::ReduceOp::MAX, "verify.report");
  rep.logits_rel = worst[0].item<double>();
  rep.loss_rel = worst[1].item<double>();
  rep.grads_rel = worst[2].item<double>();
  return rep;
}

}  // namespace autotp
