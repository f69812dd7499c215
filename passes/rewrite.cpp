// The rewrite pass: a TpPlan made real for one tensor-parallel rank (see autotp/passes.h).
//
// Preconditions: `plan` was made by the analysis of this model (checked: the plan's graph
// fingerprint and parameter shapes must match the module's flat graph). No analysis runs here:
// the plan's sites name the nodes to edit by number in the flat graph.
// Method: clone the module (new classes, tensors shared until replaced), build its flat graph,
// edit it at the plan's sites, replace parameters by slices, make the edited graph the clone's
// forward. Edits:
//   copy             copy_to_tp between a replicated value and its uses on split work (the input
//                    of q/k/v, a norm weight used on heads): identity forward, gradient all-reduced
//   reduce           a partial result -> reduce_from_tp; a row linear's bias is dropped from the op
//                    and added once after
//   embedding        aten::embedding -> autotp::vocab_parallel_embedding on this rank's rows
//   rescale          the size-list entry on a split dim becomes from/tp (the module attribute is left
//                    as it was: other reads of it are not on a split dim)
//   kv slice         kv heads on several ranks: after a repeat of the kv heads, this rank's q heads
//   copy_to_replicas kv heads on several ranks: at a k/v weight, its gradient summed over the holders
#include <algorithm>
#include <limits>
#include <map>
#include <numeric>

#include <ATen/ATen.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/named_value.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "autotp/error.h"
#include "autotp/passes.h"
#include "passes/layout.h"
#include "passes/model_graph.h"

namespace autotp {
namespace {

using torch::jit::Graph;
using torch::jit::NamedValue;
using torch::jit::Node;
using torch::jit::Value;
using torch::jit::WithInsertPoint;

const c10::Symbol kCopy = c10::Symbol::fromQualString("autotp::copy_to_tp");
const c10::Symbol kCopyReplicas = c10::Symbol::fromQualString("autotp::copy_to_replicas");
const c10::Symbol kReduce = c10::Symbol::fromQualString("autotp::reduce_from_tp");
const c10::Symbol kEmbedding = c10::Symbol::fromQualString("autotp::vocab_parallel_embedding");

bool is_none(const Value* v) { return v->type()->kind() == c10::TypeKind::NoneType; }

// Sets `tensor` at the dotted attribute path under root ("model.layers.0.mlp.up_proj.weight").
void set_tensor_attr(torch::jit::Module root, const std::string& path, const at::Tensor& tensor) {
  size_t start = 0;
  for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', start)) {
    root = root.attr(path.substr(start, dot - start)).toModule();
    start = dot + 1;
  }
  root.setattr(path.substr(start), tensor);
}

class Rewriter {
 public:
  Rewriter(ModelGraph& mg, const TpPlan& plan, int rank)
      : mg_(mg), plan_(plan), g_(*mg.graph), nodes_(numbered_nodes(*mg.graph)), tp_(plan.tp), rank_(rank) {}

  void run() {
    mask_padded_logits();
    insert_copies();
    insert_reduces();
    rescale_sizes();
    slice_repeated_kv();
    replace_embeddings();
    replace_tensors();
    torch::jit::EliminateDeadCode(mg_.graph);
    g_.lint();
  }

 private:
  std::vector<NamedValue> tp_args(Value* x) { return {NamedValue(x), NamedValue(std::string("tp")), NamedValue(int64_t{tp_})}; }

  Node* node(int64_t k) const {
    if (k < 0 || k >= static_cast<int64_t>(nodes_.size()))
      throw Error(plan_.model + ": the plan names graph node " + std::to_string(k) + " of " + std::to_string(nodes_.size()) +
                  "; make the plan from this model");
    return nodes_[static_cast<size_t>(k)];
  }

  // With a padded vocabulary, this rank's padded logit columns are -inf as they leave the graph:
  // no probability, no gradient, the cross-entropy unchanged.
  void mask_padded_logits() {
    const auto& g = plan_.sites;
    if (g.vocab_padded <= g.vocab) return;
    const int64_t local = g.vocab_padded / tp_, first = rank_ * local;
    if (first + local <= g.vocab) return;  // no padded column on this rank
    at::Tensor mask = at::arange(first, first + local, at::kLong).ge(g.vocab);
    for (const auto& o : g.logits) {
      Node* n = node(o.node);
      Value* v = n->outputs().at(static_cast<size_t>(o.output));
      WithInsertPoint after(n->next());
      Value* masked = g_.insert(c10::aten::masked_fill, {NamedValue(v), NamedValue(g_.insertConstant(mask)),
                                                         NamedValue(-std::numeric_limits<double>::infinity())});
      v->replaceAllUsesWith(masked);
      masked->node()->replaceInput(0, v);
    }
  }

  void insert_copies() {
    for (const auto& c : plan_.sites.copies) {
      Value* x = c.node < 0 ? g_.inputs().at(static_cast<size_t>(c.output)) : node(c.node)->outputs().at(static_cast<size_t>(c.output));
      int64_t first = c.uses.front().node;
      for (const auto& u : c.uses) first = std::min(first, u.node);
      WithInsertPoint at(node(first));
      Value* copied = c.replicas > 1 ? g_.insert(kCopyReplicas, {NamedValue(x), NamedValue(std::string("tp")), NamedValue(int64_t{tp_}),
                                                                 NamedValue(c.replicas)})
                                     : g_.insert(kCopy, tp_args(x));
      for (const auto& u : c.uses) node(u.node)->replaceInput(static_cast<size_t>(u.input), copied);
    }
  }

  void insert_reduces() {
    for (const auto& r : plan_.sites.reduces) {
      Node* n = node(r.node);
      Value* y = n->output();
      auto uses = y->uses();
      Value* bias = r.bias_input >= 0 && !is_none(n->input(static_cast<size_t>(r.bias_input))) ? n->input(static_cast<size_t>(r.bias_input)) : nullptr;
      if (bias && n->kind() == c10::aten::addmm) {  // addmm(b, x, W) -> x @ W; b is added after the reduce
        WithInsertPoint before(n);
        y = g_.insert(c10::aten::matmul, {NamedValue(n->input(1)), NamedValue(n->input(2))});
        n->output()->replaceAllUsesWith(y);
        uses = y->uses();
        n = y->node();
      } else if (bias) {
        WithInsertPoint before(n);
        n->replaceInput(static_cast<size_t>(r.bias_input), g_.insertConstant(c10::IValue()));
      }
      WithInsertPoint after(n->next());
      Value* out = nullptr;
      if (r.mean && !r.units.empty()) {  // uneven: each rank's mean weighted by its share, then summed
        const int64_t n = std::accumulate(r.units.begin(), r.units.end(), int64_t{0});
        const double share = static_cast<double>(r.units.at(static_cast<size_t>(rank_))) / static_cast<double>(n);
        out = g_.insert(kReduce, tp_args(g_.insert(c10::aten::mul, {NamedValue(y), NamedValue(share)})));
      } else {
        out = g_.insert(kReduce, tp_args(y));
        if (r.mean) out = g_.insert(c10::aten::div, {NamedValue(out), NamedValue(static_cast<double>(tp_))});
      }
#if AUTOTP_MUTANT == 1  // mutant (make mutants): the row-parallel bias is dropped instead of added after the reduce
      bias = nullptr;
#endif
      if (bias) out = g_.insert(c10::aten::add, {NamedValue(out), NamedValue(bias)});
      for (const auto& u : uses) u.user->replaceInput(u.offset, out);
    }
  }

  void replace_embeddings() {
    for (int64_t k : plan_.sites.embeddings) {
      Node* n = node(k);
      for (size_t i = 3; i < n->inputs().size(); ++i) {
        auto flag = torch::jit::toIValue(n->input(i));
        if (!flag || (flag->isBool() && flag->toBool()))
          throw Error(mg_.path + ": " + source_of(n) + ": an embedding is looked up with scale_grad_by_freq or sparse " +
                      "gradients, which the vocab-parallel embedding does not support; export with both False");
      }
      WithInsertPoint at(n);
      Value* out = g_.insert(kEmbedding, {NamedValue(n->input(0)), NamedValue(n->input(1)), NamedValue(n->input(2)),
                                          NamedValue(std::string("tp")), NamedValue(int64_t{tp_})});
      n->output()->replaceAllUsesWith(out);
      n->destroy();
    }
  }

  // A size on a split dim: a static one replaced by this rank's value, one read at run time
  // divided by tp where it is used (uneven: times this rank's units, divided by all units).
  Value* rescaled(Value* size, const GraphSites::Rescale& r) {
    if (r.replicas > 1)  // the kv side with kv heads on several ranks: one kv head's share
      return r.runtime ? g_.insert(c10::aten::floordiv, {NamedValue(size), NamedValue(int64_t{tp_ / r.replicas})})
                       : g_.insertConstant(r.from / (tp_ / r.replicas));
    if (r.units.empty())
      return r.runtime ? g_.insert(c10::aten::floordiv, {NamedValue(size), NamedValue(int64_t{tp_})}) : g_.insertConstant(r.to);
    const int64_t n = std::accumulate(r.units.begin(), r.units.end(), int64_t{0}), mine = r.units.at(static_cast<size_t>(rank_));
    if (!r.runtime) return g_.insertConstant(r.from / n * mine);
    Value* scaled = g_.insert(c10::aten::mul, {NamedValue(size), NamedValue(mine)});
    return g_.insert(c10::aten::floordiv, {NamedValue(scaled), NamedValue(n)});
  }

  void rescale_sizes() {
    for (const auto& r : plan_.sites.rescales) {
#if AUTOTP_MUTANT == 3  // mutant (make mutants): the first recorded size is left as it was
      if (&r == &plan_.sites.rescales.front()) continue;
#endif
      Node* n = node(r.node);
      if (r.list_index < 0) {  // the int input itself (a slice bound, a split size)
        WithInsertPoint at(n);
        n->replaceInput(static_cast<size_t>(r.list_input), rescaled(n->input(static_cast<size_t>(r.list_input)), r));
        continue;
      }
      Node* list = n->input(static_cast<size_t>(r.list_input))->node();
      if (list->kind() == c10::prim::Constant) {  // a list folded into one constant: built in place again
        WithInsertPoint at(n);
        std::vector<Value*> items;
        for (int64_t v : torch::jit::toIValue(list->output())->toIntVector()) items.push_back(g_.insertConstant(v));
        list = g_.insertNode(g_.createList(c10::IntType::get(), items));
        n->replaceInput(static_cast<size_t>(r.list_input), list->output());
      }
      if (list->kind() != c10::prim::ListConstruct)
        throw Error(mg_.path + ": " + source_of(n) + ": the size list of " + n->kind().toQualString() +
                    " is not built in place, so its split size " + std::to_string(r.from) + " cannot be rescaled");
      WithInsertPoint at(n);
      std::vector<Value*> items(list->inputs().begin(), list->inputs().end());
      Value*& item = items.at(static_cast<size_t>(r.list_index));
      item = rescaled(item, r);
      Node* fresh = g_.insertNode(g_.createList(c10::IntType::get(), items));
      n->replaceInput(static_cast<size_t>(r.list_input), fresh->output());
    }
  }

  // kv heads on several ranks: a repeat made every q head of this rank's kv head; this rank keeps
  // its own (the q heads its slice of q_proj computes).
  void slice_repeated_kv() {
    for (const auto& k : plan_.sites.kv_slices) {
      Node* n = node(k.node);
      Value* v = n->outputs().at(static_cast<size_t>(k.output));
      int64_t keep = k.extent / tp_, start = (rank_ % k.replicas) * keep;
      if (!k.units.empty()) {  // q heads uneven over the holders: this rank's after those of the holders before it
        const int64_t n = std::accumulate(k.units.begin(), k.units.end(), int64_t{0}), per = k.extent / n;
        const int first = rank_ / static_cast<int>(k.replicas) * static_cast<int>(k.replicas);
        start = per * std::accumulate(k.units.begin() + first, k.units.begin() + rank_, int64_t{0});
        keep = per * k.units.at(static_cast<size_t>(rank_));
      }
      WithInsertPoint after(n->next());
      Value* mine = g_.insert(c10::aten::slice, {NamedValue(v), NamedValue(k.dim), NamedValue(start), NamedValue(start + keep),
                                                 NamedValue(int64_t{1})});
      v->replaceAllUsesWith(mine);
      mine->node()->replaceInput(0, v);
    }
  }

  // Every parameter gets a tensor of its own (a slice or a private copy): the rank modules of one
  // process never share a tensor, so their gradients never mix.
  void replace_tensors() {
    std::map<std::string, const ParamPlan*> by_name;
    for (const auto& p : plan_.parameters) by_name[p.name] = &p;
    std::map<int, at::Tensor> fresh;
    for (size_t i = 0; i < mg_.tensors.size(); ++i) {
      const auto& e = mg_.tensors[i];
      auto it = by_name.find(e.name);
      if (it == by_name.end()) continue;  // a buffer: read-only, shared
      const ParamPlan& p = *it->second;
      at::Tensor t = shard_of(e.tensor.detach(), p, tp_, rank_).contiguous().clone();
      t.set_requires_grad(e.tensor.requires_grad());
      fresh[static_cast<int>(i)] = t;
      if (mg_.kind == GraphKind::Frozen) continue;
      set_tensor_attr(mg_.module, e.name, t);
      for (const auto& alias : e.aliases) set_tensor_attr(mg_.module, alias, t);
    }
    if (mg_.kind != GraphKind::Frozen) return;
    // Frozen graphs read weights as constants: new constants at the top of the graph.
    std::vector<std::pair<Value*, int>> constants;
    for (const auto& [v, idx] : mg_.tensor_of)
      if (v->node()->kind() == c10::prim::Constant && fresh.count(idx)) constants.push_back({const_cast<Value*>(v), idx});
    WithInsertPoint top(g_.block()->nodes().front());
    for (auto& [v, idx] : constants) {
      at::Tensor t = fresh[idx].detach();
      v->replaceAllUsesWith(g_.insertConstant(t));
    }
  }

  ModelGraph& mg_;
  const TpPlan& plan_;
  Graph& g_;
  std::vector<Node*> nodes_;
  int tp_, rank_;
};

// Makes `edited` (a graph with the same inputs) the body of module's forward.
void install_forward(torch::jit::Module& module, Graph& edited) {
  auto& fn = torch::jit::toGraphFunction(module.get_method("forward").function());
  std::shared_ptr<Graph> g = fn.graph();
  while (!g->outputs().empty()) g->eraseOutput(0);
  std::vector<Node*> old(g->nodes().begin(), g->nodes().end());
  for (auto it = old.rbegin(); it != old.rend(); ++it) (*it)->destroy();
  std::vector<Value*> inputs(g->inputs().begin(), g->inputs().end());
  for (Value* out : torch::jit::insertGraph(*g, edited, inputs)) g->registerOutput(out);
  g->lint();
  fn.clear_optimized_graphs();
}


// The plan must be this model's: same flat graph, same parameters and shapes.
void check_plan_fits(const TpPlan& plan, const ModelGraph& mg) {
  if (plan.sites.fingerprint.empty())
    throw Error(plan.model + ": the plan has no graph sites; make it with autotp inspect --json or autotp rewrite of this autotp version");
  const std::string mine = graph_fingerprint(*mg.graph);
  if (plan.sites.fingerprint != mine)
    throw Error(plan.model + ": the plan was made for another model (graph " + plan.sites.fingerprint + ", this model's is " + mine +
                "); make the plan from this model");
  std::map<std::string, const TensorEntry*> mine_by_name;
  for (const auto& e : mg.tensors) mine_by_name[e.name] = &e;
  for (const auto& p : plan.parameters) {
    auto it = mine_by_name.find(p.name);
    if (it == mine_by_name.end())
      throw Error(plan.model + ": the plan names parameter " + p.name + ", which this module does not have; make the plan from this model");
    if (it->second->tensor.sizes().vec() != p.shape)
      throw Error(plan.model + ": the plan has " + p.name + " of shape " + join_shape(p.shape) + " but this module's is " +
                  join_shape(it->second->tensor.sizes().vec()) + "; make the plan from this model");
    if (p.split_dim < 0) continue;
    const int64_t extent = p.padded ? p.padded : p.shape.at(static_cast<size_t>(p.split_dim));
    if (p.replicas > 1) {
      if (plan.tp % p.replicas != 0 || extent % (plan.tp / p.replicas) != 0)
        throw Error(plan.model + ": the plan holds " + p.name + " (" + join_shape(p.shape) + ") on " + std::to_string(p.replicas) +
                    " ranks per part, which does not fit tp=" + std::to_string(plan.tp) + "; make the plan from this model");
    } else if (!p.units.empty()) {
      const int64_t n = std::accumulate(p.units.begin(), p.units.end(), int64_t{0});
      bool whole = p.units.size() == static_cast<size_t>(plan.tp) && n > 0;
      for (int64_t seg : p.segments.empty() ? std::vector<int64_t>{extent} : p.segments) whole = whole && seg % n == 0;
      if (!whole)
        throw Error(plan.model + ": the plan cuts " + p.name + " (" + join_shape(p.shape) + ") into " + std::to_string(n) +
                    " units over " + std::to_string(p.units.size()) + " ranks, which does not fit tp=" + std::to_string(plan.tp) +
                    " and its dim " + std::to_string(p.split_dim) + "; make the plan from this model");
    } else if (extent % plan.tp != 0) {
      throw Error(plan.model + ": the plan splits " + p.name + " on dim " + std::to_string(p.split_dim) + " of " + join_shape(p.shape) +
                  ", which tp=" + std::to_string(plan.tp) + " does not divide");
    }
  }
}

}  // namespace

torch::jit::Module rewrite(const torch::jit::Module& module, const TpPlan& plan, int tp_rank) {
  if (plan.tp < 1 || tp_rank < 0 || tp_rank >= plan.tp)
    throw Error(plan.model + ": tp rank " + std::to_string(tp_rank) + " is outside 0.." + std::to_string(plan.tp - 1) +
                " for the plan's tp=" + std::to_string(plan.tp));
  if (rewrite_info(module).tp != 0)
    throw Error(plan.model + ": this module is already rewritten for tp=" + std::to_string(rewrite_info(module).tp) +
                "; rewrite the original model");
  torch::jit::Module out = module.clone(/*inplace=*/true);
  ModelGraph mg = model_graph_from(out, plan.model);
  check_plan_fits(plan, mg);
  Rewriter(mg, plan, tp_rank).run();
  install_forward(out, *mg.graph);

  const int64_t vocab = plan.sites.vocab;  // the real one: the cross-entropy never sees padded columns
  out.register_attribute("autotp_tp", c10::IntType::get(), int64_t{plan.tp});
  out.register_attribute("autotp_tp_rank", c10::IntType::get(), int64_t{tp_rank});
  out.register_attribute("autotp_vocab", c10::IntType::get(), vocab);
  // Which parameters are shards (every name of a tied one): the optimizer counts replicated ones
  // once across the TP group, also when training starts from a saved rank archive.
  c10::List<std::string> split;
  for (const auto& p : plan.parameters)
    if (p.split_dim >= 0) {
      split.push_back(p.name);
      for (const auto& a : p.aliases) split.push_back(a);
    }
  out.register_attribute("autotp_split", c10::ListType::ofStrings(), split);
  // How to put the ranks back together (merge_ranks, autotp merge), with no plan file beside them.
  out.register_attribute("autotp_layout", c10::StringType::get(), layout_to_json(plan));
  return out;
}

namespace {
at::Tensor first_tensor(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor();
  if (v.isTuple())
    for (const auto& e : v.toTupleRef().elements())
      if (auto t = first_tensor(e); t.defined()) return t;
  if (v.isList())
    for (const auto& e : v.toListRef())
      if (auto t = first_tensor(e); t.defined()) return t;
  return {};
}
}  // namespace

std::vector<std::pair<int64_t, int64_t>> rank_slices(const ParamPlan& p, int64_t extent, int tp, int rank) {
  if (p.replicas > 1) {  // kv heads on several ranks: tp / replicas parts, rank r holds part r / replicas
    tp /= static_cast<int>(p.replicas);
    rank /= static_cast<int>(p.replicas);
  }
  const std::vector<int64_t> segments = p.segments.empty() ? std::vector<int64_t>{extent} : p.segments;
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t start = 0;
  for (int64_t seg : segments) {
    if (p.units.empty()) {
      out.push_back({start + rank * (seg / tp), seg / tp});
    } else {  // whole units: rank r takes units[r] after the units of the ranks before it
      const int64_t n = std::accumulate(p.units.begin(), p.units.end(), int64_t{0}), unit = seg / n;
      int64_t before = std::accumulate(p.units.begin(), p.units.begin() + rank, int64_t{0});
#if AUTOTP_MUTANT == 7  // mutant (make mutants): an uneven cut's ranks all start at the first unit
      before = 0;
#endif
      out.push_back({start + before * unit, p.units.at(static_cast<size_t>(rank)) * unit});
    }
    start += seg;
  }
  return out;
}

std::vector<int64_t> local_shape(const ParamPlan& p, int tp, int rank) {
  std::vector<int64_t> shape = p.shape;
  if (p.split_dim < 0) return shape;
  int64_t& d = shape.at(static_cast<size_t>(p.split_dim));
  const int64_t extent = p.padded ? p.padded : d;
  d = 0;
  for (const auto& [start, length] : rank_slices(p, extent, tp, rank)) d += length;
  return shape;
}

at::Tensor shard_of(const at::Tensor& whole, const ParamPlan& p, int tp, int rank) {
  if (p.split_dim < 0) return whole;
  at::Tensor full = whole;
  if (p.padded > whole.size(p.split_dim)) {  // zero rows so tp divides the vocabulary
    std::vector<int64_t> pad_shape = whole.sizes().vec();
    pad_shape[static_cast<size_t>(p.split_dim)] = p.padded - whole.size(p.split_dim);
    full = at::cat({whole, at::zeros(pad_shape, whole.options())}, p.split_dim);
  }
  std::vector<at::Tensor> parts;
  for (const auto& [start, length] : rank_slices(p, full.size(p.split_dim), tp, rank)) parts.push_back(full.narrow(p.split_dim, start, length));
  return parts.size() == 1 ? parts[0] : at::cat(parts, p.split_dim);
}

at::Tensor assemble(const std::vector<at::Tensor>& all_parts, const ParamPlan& p) {
  if (p.split_dim < 0) return all_parts.at(0);
  std::vector<at::Tensor> parts;  // kv heads on several ranks: the first holder of each part
  for (size_t r = 0; r < all_parts.size(); r += static_cast<size_t>(std::max<int64_t>(p.replicas, 1))) parts.push_back(all_parts[r]);
  const int tp = static_cast<int>(parts.size());
  if (p.segments.empty()) {
    at::Tensor whole = at::cat(parts, p.split_dim);
    return p.padded ? whole.narrow(p.split_dim, 0, p.shape.at(static_cast<size_t>(p.split_dim))) : whole;  // padding off
  }
  const int64_t extent = std::accumulate(p.segments.begin(), p.segments.end(), int64_t{0});
  std::vector<std::vector<std::pair<int64_t, int64_t>>> slices;
  for (int r = 0; r < tp; ++r) slices.push_back(rank_slices(p, extent, tp, r));
  std::vector<at::Tensor> pieces;
  std::vector<int64_t> local(static_cast<size_t>(tp), 0);
  for (size_t seg = 0; seg < p.segments.size(); ++seg)
    for (int r = 0; r < tp; ++r) {
      const int64_t length = slices[static_cast<size_t>(r)][seg].second;
      pieces.push_back(parts[static_cast<size_t>(r)].narrow(p.split_dim, local[static_cast<size_t>(r)], length));
      local[static_cast<size_t>(r)] += length;
    }
  return at::cat(pieces, p.split_dim);
}

at::Tensor logits_of(const c10::IValue& output) {
  at::Tensor t = first_tensor(output);
  if (!t.defined()) throw Error("the model's forward returned no tensor; autotp needs the logits as its output or first element");
  return t;
}

RewriteInfo rewrite_info(const torch::jit::Module& module) {
  RewriteInfo info;
  if (!module.hasattr("autotp_tp")) return info;
  info.tp = static_cast<int>(module.attr("autotp_tp").toInt());
  info.tp_rank = static_cast<int>(module.attr("autotp_tp_rank").toInt());
  info.vocab = module.attr("autotp_vocab").toInt();
  if (module.hasattr("autotp_split"))
    for (const auto& name : module.attr("autotp_split").toListRef()) info.split.push_back(name.toStringRef());
  if (module.hasattr("autotp_layout"))  // absent in archives written before layouts were recorded
    info.params = layout_params(module.attr("autotp_layout").toStringRef(), "rank " + std::to_string(info.tp_rank));
  return info;
}

}  // namespace autotp
