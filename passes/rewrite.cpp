// The rewrite pass: a TpPlan made real for one tensor-parallel rank (see autotp/rewrite.h).
//
// Preconditions: `module` has a forward that the analysis accepts; `plan` was made by the
// analysis of the same model (checked: the placements are re-derived and compared).
// Method: clone the module (new classes, tensors shared until replaced), re-run the analysis on the
// clone to get node pointers into a private inlined graph, edit that graph (collectives, vocab-
// parallel embedding, rescaled sizes), replace parameters by slices, then make the edited graph the
// clone's forward. Edits, by the structure the analysis found:
//   column linear  its input goes through copy_to_tp (one per distinct input: q/k/v share one)
//   row linear     output -> reduce_from_tp; a bias is dropped from the linear and added after
//   embedding      aten::embedding -> autotp::vocab_parallel_embedding on this rank's rows
//   size constant  the list entry on a split dim becomes from/tp (the module attribute is left as
//                  it was: other reads of it are not on a split dim)
#include <algorithm>
#include <map>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/named_value.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include "autotp/error.h"
#include "autotp/rewrite.h"
#include "passes/analyze.h"
#include "passes/model_graph.h"
#include "passes/shape_probe.h"

namespace autotp {
namespace {

using torch::jit::Graph;
using torch::jit::NamedValue;
using torch::jit::Node;
using torch::jit::Value;
using torch::jit::WithInsertPoint;
using Mode = ShardingStructure::Mode;

const c10::Symbol kCopy = c10::Symbol::fromQualString("autotp::copy_to_tp");
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
  Rewriter(ModelGraph& mg, const ShardingStructure& s, const TpPlan& plan, int rank)
      : mg_(mg), s_(s), plan_(plan), g_(*mg.graph), tp_(plan.tp), rank_(rank) {}

  void run() {
    insert_copies();
    insert_reduces();
    replace_embeddings();
    rescale_sizes();
    replace_tensors();
    torch::jit::EliminateDeadCode(mg_.graph);
    g_.lint();
  }

 private:
  std::vector<NamedValue> tp_args(Value* x) { return {NamedValue(x), NamedValue(std::string("tp")), NamedValue(int64_t{tp_})}; }

  void insert_copies() {
    std::map<Value*, std::vector<Node*>> by_input;
    std::vector<Value*> order;
    for (const auto& l : s_.linears) {
      if (l.mode != Mode::Column) continue;
      Value* x = l.node->input(0);
      if (!by_input.count(x)) order.push_back(x);
      by_input[x].push_back(l.node);
    }
    for (Value* x : order) {
      const auto& users = by_input[x];
      WithInsertPoint at(users.front());  // linears are in graph order: the first one comes first
      Value* copied = g_.insert(kCopy, tp_args(x));
      for (Node* lin : users) lin->replaceInput(0, copied);
    }
  }

  void insert_reduces() {
    for (const auto& l : s_.linears) {
      if (l.mode != Mode::Row) continue;
      Node* n = l.node;
      Value* y = n->output();
      auto uses = y->uses();
      Value* bias = n->inputs().size() > 2 && !is_none(n->input(2)) ? n->input(2) : nullptr;
      if (bias) {
        WithInsertPoint before(n);
        n->replaceInput(2, g_.insertConstant(c10::IValue()));
      }
      WithInsertPoint after(n->next());
      Value* out = g_.insert(kReduce, tp_args(y));
      if (bias) out = g_.insert(c10::aten::add, {NamedValue(out), NamedValue(bias)});
      for (const auto& u : uses) u.user->replaceInput(u.offset, out);
    }
  }

  void replace_embeddings() {
    for (const auto& e : s_.embeddings) {
      Node* n = e.node;
      for (size_t i = 3; i < n->inputs().size(); ++i) {
        auto flag = torch::jit::toIValue(n->input(i));
        if (!flag || (flag->isBool() && flag->toBool()))
          throw Error(mg_.path + ": " + mg_.tensors[e.weight].name + " is looked up with scale_grad_by_freq or sparse " +
                      "gradients, which the vocab-parallel embedding does not support; export with both False");
      }
      WithInsertPoint at(n);
      Value* out = g_.insert(kEmbedding, {NamedValue(n->input(0)), NamedValue(n->input(1)), NamedValue(n->input(2)),
                                          NamedValue(std::string("tp")), NamedValue(int64_t{tp_})});
      n->output()->replaceAllUsesWith(out);
      n->destroy();
    }
  }

  void rescale_sizes() {
    for (const auto& r : s_.rescales) {
      Node* n = r.node;
      Node* list = n->input(r.list_input)->node();
      if (list->kind() != c10::prim::ListConstruct)
        throw Error(mg_.path + ": " + source_of(n) + ": the size list of " + n->kind().toQualString() +
                    " is not built in place, so its split size " + std::to_string(r.from) + " cannot be rescaled");
      WithInsertPoint at(n);
      std::vector<Value*> items(list->inputs().begin(), list->inputs().end());
      items[r.list_index] = g_.insertConstant(r.from / tp_);
      Node* fresh = g_.insertNode(g_.createList(c10::IntType::get(), items));
      n->replaceInput(r.list_input, fresh->output());
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
      at::Tensor t = e.tensor.detach();
      if (p.split_dim >= 0) {
        const int64_t len = t.size(p.split_dim) / tp_;
        t = t.narrow(p.split_dim, rank_ * len, len);
      }
      t = t.contiguous().clone();
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
  const ShardingStructure& s_;
  const TpPlan& plan_;
  Graph& g_;
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

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

void check_same_plan(const TpPlan& given, const TpPlan& derived) {
  std::map<std::string, const ParamPlan*> mine;
  for (const auto& p : derived.parameters) mine[p.name] = &p;
  for (const auto& p : given.parameters) {
    auto it = mine.find(p.name);
    if (it == mine.end())
      throw Error(given.model + ": the plan names parameter " + p.name + ", which this module does not have; "
                  "make the plan from this model");
    if (it->second->shape != p.shape)
      throw Error(given.model + ": the plan has " + p.name + " of shape " + shape_text(p.shape) + " but this module's is " +
                  shape_text(it->second->shape) + "; make the plan from this model");
    if (it->second->placement != p.placement)
      throw Error(given.model + ": the plan says " + p.name + " is " + placement_name(p.placement) + " but this module's " +
                  "analysis finds " + placement_name(it->second->placement) + "; make the plan from this model");
  }
  if (given.parameters.size() != derived.parameters.size())
    throw Error(given.model + ": the plan lists " + std::to_string(given.parameters.size()) + " parameters, this module has " +
                std::to_string(derived.parameters.size()) + "; make the plan from this model");
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
  ShardingStructure s = propagate(mg, probe(mg, example_inputs(mg)));
  TpPlan derived = make_plan(mg, s, plan.tp);
  check_same_plan(plan, derived);
  Rewriter(mg, s, derived, tp_rank).run();
  install_forward(out, *mg.graph);

  int64_t vocab = 0;
  for (const auto& l : s.linears)
    if (l.logits) vocab = mg.tensors[l.weight].tensor.size(0);
  out.register_attribute("autotp_tp", c10::IntType::get(), int64_t{plan.tp});
  out.register_attribute("autotp_tp_rank", c10::IntType::get(), int64_t{tp_rank});
  out.register_attribute("autotp_vocab", c10::IntType::get(), vocab);
  // Which parameters are shards (every name of a tied one): the optimizer counts replicated ones
  // once across the TP group, also when training starts from a saved rank archive.
  c10::List<std::string> split;
  for (const auto& p : derived.parameters)
    if (p.split_dim >= 0) {
      split.push_back(p.name);
      for (const auto& a : p.aliases) split.push_back(a);
    }
  out.register_attribute("autotp_split", c10::ListType::ofStrings(), split);
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
  return info;
}

}  // namespace autotp
