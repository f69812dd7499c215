// The tensor-parallel ops a rewritten graph calls, registered as torch.ops.autotp.* with autograd.
//
// Megatron's conjugate pair and the vocab-parallel pieces (runtime/README.md):
//   copy_to_tp      forward identity (a view, declared as such)  backward all-reduce over tp
//   copy_to_replicas  the same over the ranks holding one kv head (kv heads on several ranks)
//   reduce_from_tp  forward all-reduce into a new tensor         backward identity
//   gather_from_tp  forward all-gather on the last dim           backward this rank's slice
//   vocab_parallel_embedding   masked lookup in this rank's rows, zero the rest, reduce_from_tp
//   vocab_parallel_cross_entropy  per-token loss from vocab-split logits: three all-reduces of one
//                   value per token (max, target logit, sum of exp); no [tokens, vocab] gather
// Every op takes the group name and the tp it was planned for: running a rewritten module without
// a mesh, or on a mesh whose tp group has another size, fails with one line that says so.
// The autograd node saves the group's handle, not the name: backward may run on another thread
// (CUDA's device threads) than the one whose MeshScope resolved it.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "autotp/error.h"
#include "autotp/mesh.h"
#include "runtime/tp_ops.h"

namespace autotp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

thread_local const char* t_site = nullptr;  // label override while a composite op runs

struct SiteLabel {
  const char* previous;
  explicit SiteLabel(const char* label) : previous(t_site) { t_site = label; }
  ~SiteLabel() { t_site = previous; }
};
std::string site(const char* op, const char* direction) {
  return std::string(t_site ? t_site : op) + "." + direction;
}

}  // namespace

std::shared_ptr<Group> resolve_group(const std::string& op, const std::string& name, int64_t tp) {
  auto mesh = current_mesh();
  if (!mesh)
    throw Error("autotp::" + op + ": no device mesh in this process; set one up first: "
                "autotp::init_mesh_from_env (C++), torch.ops.autotp.init_mesh_from_env(tp) (Python under "
                "torchrun), or autotp verify");
  auto g = mesh->find(name);
  if (!g) throw Error("autotp::" + op + ": unknown process group '" + name + "'; groups are tp, dp, world");
  if (g->size() != tp)
    throw Error("autotp::" + op + ": this module was rewritten for tp=" + std::to_string(tp) + " but the mesh's " +
                name + " group has " + std::to_string(g->size()) + " ranks; rewrite the model with --tp " +
                std::to_string(g->size()) + " or start the mesh with tp=" + std::to_string(tp));
  return g;
}

std::shared_ptr<Group> replica_group(const std::string& op, const std::string& name, int64_t tp, int64_t replicas) {
  resolve_group(op, name, tp);
  if (replicas < 1 || tp % replicas != 0)
    throw Error("autotp::" + op + ": " + std::to_string(replicas) + " ranks per kv head does not divide tp=" + std::to_string(tp));
  return current_mesh()->replica_group(static_cast<int>(replicas));
}

namespace {

struct CopyToTp : torch::autograd::Function<CopyToTp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& group, int64_t tp) {
    ctx->saved_data["group"] = resolve_group("copy_to_tp", group, tp)->id();
    return x;  // autograd returns it as a view of x: the schema says Tensor(a) -> Tensor(a)
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = group_by_id(ctx->saved_data["group"].toInt());
    at::Tensor dx = grads[0].contiguous().clone();
#if AUTOTP_MUTANT != 2  // mutant (make mutants): copy_to_tp's backward skips its all-reduce
    g->all_reduce(dx, c10d::ReduceOp::SUM, site("copy_to_tp", "backward"));
#endif
    return {dx, at::Tensor(), at::Tensor()};
  }
};

// kv heads held by several ranks: identity forward; backward sums the gradient over the `replicas`
// consecutive ranks of the TP group that hold the same kv head (each covers only its own q heads).
struct CopyToReplicas : torch::autograd::Function<CopyToReplicas> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& group, int64_t tp, int64_t replicas) {
    ctx->saved_data["group"] = replica_group("copy_to_replicas", group, tp, replicas)->id();
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto g = group_by_id(ctx->saved_data["group"].toInt());
    at::Tensor dx = grads[0].contiguous().clone();
#if AUTOTP_MUTANT != 8  // mutant (make mutants): the kv-head holders' gradients are not summed
    g->all_reduce(dx, c10d::ReduceOp::SUM, site("copy_to_replicas", "backward"));
#endif
    return {dx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor reduce_forward(const at::Tensor& x, const std::shared_ptr<Group>& g) {
  at::Tensor out = x.contiguous().clone();
  g->all_reduce(out, c10d::ReduceOp::SUM, site("reduce_from_tp", "forward"));
  return out;
}

struct ReduceFromTp : torch::autograd::Function<ReduceFromTp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& group, int64_t tp) {
    return reduce_forward(x, resolve_group("reduce_from_tp", group, tp));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0], at::Tensor(), at::Tensor()};
  }
};

struct GatherFromTp : torch::autograd::Function<GatherFromTp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const std::string& group, int64_t tp) {
    auto g = resolve_group("gather_from_tp", group, tp);
    ctx->saved_data["rank"] = static_cast<int64_t>(g->rank());
    ctx->saved_data["width"] = x.size(-1);
    return g->all_gather(x, x.dim() - 1, site("gather_from_tp", "forward"));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t r = ctx->saved_data["rank"].toInt(), w = ctx->saved_data["width"].toInt();
    return {grads[0].narrow(-1, r * w, w).contiguous(), at::Tensor(), at::Tensor()};
  }
};

// Per-token cross-entropy over logits split on the vocabulary (Megatron's vocab-parallel CE).
struct VocabParallelCrossEntropy : torch::autograd::Function<VocabParallelCrossEntropy> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                            int64_t ignore_index, const std::string& group, int64_t tp) {
    auto g = resolve_group("vocab_parallel_cross_entropy", group, tp);
    const int64_t v = logits.size(-1);
    at::Tensor x = logits.reshape({-1, v}).to(at::kFloat);
    at::Tensor t = target.reshape({-1});
    if (t.size(0) != x.size(0))
      throw Error("autotp::vocab_parallel_cross_entropy: " + std::to_string(x.size(0)) + " tokens of logits but " +
                  std::to_string(t.size(0)) + " targets");
    const std::string s = site("vocab_parallel_cross_entropy", "forward");
    at::Tensor max = std::get<0>(x.max(1)).contiguous();
    g->all_reduce(max, c10d::ReduceOp::MAX, s);
    x = x - max.unsqueeze(1);
    const int64_t start = g->rank() * v;
    at::Tensor ignored = t.eq(ignore_index);
    at::Tensor mine = t.ge(start).logical_and(t.lt(start + v)).logical_and(ignored.logical_not());
    at::Tensor local = (t - start).masked_fill(mine.logical_not(), 0);
    at::Tensor predicted = x.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(mine.logical_not(), 0).contiguous();
    g->all_reduce(predicted, c10d::ReduceOp::SUM, s);
    at::Tensor e = x.exp();
    at::Tensor sum = e.sum(1).contiguous();
    g->all_reduce(sum, c10d::ReduceOp::SUM, s);
    at::Tensor loss = (sum.log() - predicted).masked_fill(ignored, 0);
    e.div_(sum.unsqueeze(1));  // softmax of this rank's slice, kept for backward
    ctx->save_for_backward({e, local, mine, ignored});
    ctx->saved_data["shape"] = logits.sizes().vec();
    ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
    return loss;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor grad = saved[0].clone();
    const at::Tensor& local = saved[1];
    const at::Tensor& mine = saved[2];
    const at::Tensor& ignored = saved[3];
    grad.scatter_add_(1, local.unsqueeze(1), mine.to(grad.scalar_type()).neg().unsqueeze(1));
    grad.mul_(grads[0].to(at::kFloat).masked_fill(ignored, 0).unsqueeze(1));
    auto shape = ctx->saved_data["shape"].toIntVector();
    auto dtype = static_cast<at::ScalarType>(ctx->saved_data["dtype"].toInt());
    return {grad.reshape(shape).to(dtype), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// ---- kernels ---------------------------------------------------------------------------------------
// Below autograd (inference mode, or a caller that excluded autograd) the forward runs alone.

at::Tensor copy_to_tp_fwd(const at::Tensor& x, c10::string_view group, int64_t tp) {
  resolve_group("copy_to_tp", std::string(group), tp);
  return x.alias();
}
at::Tensor reduce_from_tp_fwd(const at::Tensor& x, c10::string_view group, int64_t tp) {
  return reduce_forward(x, resolve_group("reduce_from_tp", std::string(group), tp));
}
at::Tensor gather_from_tp_fwd(const at::Tensor& x, c10::string_view group, int64_t tp) {
  auto g = resolve_group("gather_from_tp", std::string(group), tp);
  return g->all_gather(x, x.dim() - 1, site("gather_from_tp", "forward"));
}
at::Tensor vpce_fwd(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index, c10::string_view group,
                    int64_t tp) {
  return VocabParallelCrossEntropy::apply(logits, target, ignore_index, std::string(group), tp);
}

at::Tensor copy_to_replicas_fwd(const at::Tensor& x, c10::string_view group, int64_t tp, int64_t replicas) {
  replica_group("copy_to_replicas", std::string(group), tp, replicas);
  return x.alias();
}
at::Tensor copy_to_replicas_ad(const at::Tensor& x, c10::string_view group, int64_t tp, int64_t replicas) {
  return CopyToReplicas::apply(x, std::string(group), tp, replicas);
}
at::Tensor copy_to_tp_ad(const at::Tensor& x, c10::string_view group, int64_t tp) {
  return CopyToTp::apply(x, std::string(group), tp);
}
at::Tensor reduce_from_tp_ad(const at::Tensor& x, c10::string_view group, int64_t tp) {
  return ReduceFromTp::apply(x, std::string(group), tp);
}
at::Tensor gather_from_tp_ad(const at::Tensor& x, c10::string_view group, int64_t tp) {
  return GatherFromTp::apply(x, std::string(group), tp);
}
at::Tensor vpce_ad(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index, c10::string_view group,
                   int64_t tp) {
  return VocabParallelCrossEntropy::apply(logits, target, ignore_index, std::string(group), tp);
}

// Composite: autograd comes from the ops it calls (embedding, masked_fill, reduce_from_tp).
at::Tensor vocab_parallel_embedding(const at::Tensor& weight, const at::Tensor& ids, int64_t padding_idx,
                                    c10::string_view group, int64_t tp) {
  auto g = resolve_group("vocab_parallel_embedding", std::string(group), tp);
  const int64_t rows = weight.size(0), start = g->rank() * rows;
  at::Tensor outside = ids.lt(start).logical_or(ids.ge(start + rows));
  at::Tensor local = (ids - start).masked_fill(outside, 0);
  const int64_t local_pad = padding_idx >= start && padding_idx < start + rows ? padding_idx - start : -1;
  at::Tensor out = at::embedding(weight, local, local_pad).masked_fill(outside.unsqueeze(-1), 0);
  SiteLabel label("vocab_parallel_embedding");
  static auto reduce = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("autotp::reduce_from_tp", "")
                           .typed<at::Tensor(const at::Tensor&, c10::string_view, int64_t)>();
  return reduce.call(out, group, tp);
}

}  // namespace

at::Tensor copy_to_tp(const at::Tensor& x, const std::string& group, int64_t tp) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("autotp::copy_to_tp", "")
                       .typed<at::Tensor(const at::Tensor&, c10::string_view, int64_t)>();
  return op.call(x, group, tp);
}
at::Tensor reduce_from_tp(const at::Tensor& x, const std::string& group, int64_t tp) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("autotp::reduce_from_tp", "")
                       .typed<at::Tensor(const at::Tensor&, c10::string_view, int64_t)>();
  return op.call(x, group, tp);
}
at::Tensor gather_from_tp(const at::Tensor& x, const std::string& group, int64_t tp) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("autotp::gather_from_tp", "")
                       .typed<at::Tensor(const at::Tensor&, c10::string_view, int64_t)>();
  return op.call(x, group, tp);
}
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index,
                                        const std::string& group, int64_t tp) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("autotp::vocab_parallel_cross_entropy", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view, int64_t)>();
  return op.call(logits, target, ignore_index, group, tp);
}

}  // namespace autotp

TORCH_LIBRARY(autotp, m) {
  m.def("copy_to_tp(Tensor(a) x, str group, int tp) -> Tensor(a)");
  m.def("copy_to_replicas(Tensor(a) x, str group, int tp, int replicas) -> Tensor(a)");
  m.def("reduce_from_tp(Tensor x, str group, int tp) -> Tensor");
  m.def("gather_from_tp(Tensor x, str group, int tp) -> Tensor");
  m.def("vocab_parallel_embedding(Tensor weight, Tensor ids, int padding_idx, str group, int tp) -> Tensor",
        torch::dispatch(c10::DispatchKey::CompositeImplicitAutograd, TORCH_FN(autotp::vocab_parallel_embedding)));
  m.def("vocab_parallel_cross_entropy(Tensor logits, Tensor target, int ignore_index, str group, int tp) -> Tensor");
}

TORCH_LIBRARY_IMPL(autotp, CompositeExplicitAutograd, m) {
  m.impl("copy_to_tp", TORCH_FN(autotp::copy_to_tp_fwd));
  m.impl("copy_to_replicas", TORCH_FN(autotp::copy_to_replicas_fwd));
  m.impl("reduce_from_tp", TORCH_FN(autotp::reduce_from_tp_fwd));
  m.impl("gather_from_tp", TORCH_FN(autotp::gather_from_tp_fwd));
  m.impl("vocab_parallel_cross_entropy", TORCH_FN(autotp::vpce_fwd));
}

TORCH_LIBRARY_IMPL(autotp, Autograd, m) {
  m.impl("copy_to_tp", TORCH_FN(autotp::copy_to_tp_ad));
  m.impl("copy_to_replicas", TORCH_FN(autotp::copy_to_replicas_ad));
  m.impl("reduce_from_tp", TORCH_FN(autotp::reduce_from_tp_ad));
  m.impl("gather_from_tp", TORCH_FN(autotp::gather_from_tp_ad));
  m.impl("vocab_parallel_cross_entropy", TORCH_FN(autotp::vpce_ad));
}
