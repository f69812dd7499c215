// The propagation engine (see analyze.h and rules.h): walks the flat graph once per round (the
// per-value state lives in RuleContext, rule_context.cpp), runs each op's rule, records parameter
// reads, and applies the one rule every op shares: a replicated operand with a gradient that meets
// a split or partial result goes through copy_to_tp. Structural ops (constants, attributes, lists,
// tuples, control flow) are handled here; everything with a schema goes through the registry.
#include <algorithm>
#include <sstream>

#include "autotp/error.h"
#include "passes/rules.h"

namespace autotp {

namespace {

using torch::jit::Node;
using torch::jit::Value;

// Thrown inside propagation when a known op needs the full extent of a split dim.
struct NeedsFull {
  std::vector<Node*> linears;
  std::string reason;
};

class Propagator final : public RuleContext {
 public:
  Propagator(const ModelGraph& mg, const ProbeValues& values, const ForcedReplicated& forced)
      : RuleContext(mg, values), forced_(forced) {}

  ShardingStructure run() {
    walk(mg_.graph->block());
    finish_outputs();
    collect_copies();
    for (auto& r : s_.reduces) r.bytes = bytes_of(r.node->output());
    snapshot_per_rank();
#if AUTOTP_MUTANT == 6  // mutant (make mutants): only the column linears' copy_to_tp, no partial-gradient copies
    s_.copies.erase(std::remove_if(s_.copies.begin(), s_.copies.end(), [](const auto& c) { return !c.for_linear; }),
                    s_.copies.end());
#endif
    return std::move(s_);
  }

  [[noreturn]] void need_full(const Node* n, const std::set<int>& origins, const std::string& why) override {
    if (origins.empty()) fail(n, why);
    NeedsFull nf{{}, at(n) + " " + why};
    for (int o : origins) nf.linears.push_back(s_.linears[o].node);
    throw nf;
  }
  const std::string* forced_reason(Node* n) const override {
    auto f = forced_.find(n);
    return f == forced_.end() ? nullptr : &f->second;
  }

 private:
  const ForcedReplicated& forced_;
  // Replicated operands with a gradient feeding a split/partial result, in graph order.
  std::vector<std::pair<Node*, size_t>> copy_uses_;

  int64_t bytes_of(const Value* v) const {
    auto* iv = probed(v);
    if (!iv || !iv->isTensor()) return 0;
    const auto& t = iv->toTensor();
    return static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size());
  }

  bool carries_grad(const Value* v) const {
    auto* iv = probed(v);
    return iv && iv->isTensor() && iv->toTensor().requires_grad();
  }

  // ---- the walk ----------------------------------------------------------------------------------
  void walk(torch::jit::Block* b) {
    for (Node* n : b->nodes()) visit(n);
  }

  void visit(Node* n) {
    const auto kind = n->kind();
    if (kind == c10::prim::Constant || kind == c10::prim::GetAttr) return visit_read(n);
    if (kind == c10::prim::TupleConstruct || kind == c10::prim::ListConstruct)
      return set_items(n->output(), std::vector<Value*>(n->inputs().begin(), n->inputs().end()));
    if (kind == c10::prim::TupleUnpack || kind == c10::prim::ListUnpack) return visit_unpack(n);
    if (kind == c10::prim::TupleIndex) return index_into(n);
    if (kind == c10::prim::NumToTensor) return set_tag(n->output(), tag(n->input(0)));
    if (!n->blocks().empty()) return visit_control_flow(n);
    Rule rule = find_rule(n);
    if (!rule) return visit_unknown(n);
    rule(*this, n);
    // Every read of a parameter is recorded, whatever the rule: a view passes the parameter on (its
    // output is a view of it), an exempt operand is one the rewrite slices; anything else reads it whole.
    bool views = false;
    for (Value* out : n->outputs()) views |= param_view(out) != nullptr;
    if (!views) reads(n);
    note_copy_uses(n);
    resolve_partials(n);
  }

  // A module attribute or a constant: a size to tag, or a tensor of the model (a frozen graph's
  // weights are constants).
  void visit_read(Node* n) {
    auto a = mg_.attribute_of.find(n->output());
    if (a != mg_.attribute_of.end()) set_tag(n->output(), {IntTag::Static, "attribute " + a->second});
    auto t = mg_.tensor_of.find(n->output());
    if (t != mg_.tensor_of.end()) {
      ParamView pv{t->second, {}};
      for (int64_t d = 0; d < rank(n->output()); ++d) pv.dims.push_back(static_cast<int>(d));
      set_param_view(n->output(), pv);
    }
  }

  void visit_unpack(Node* n) {
    if (auto* items = list_items(n->input(0)); items && items->size() == n->outputs().size()) {
      for (size_t i = 0; i < items->size(); ++i) copy_state((*items)[i], n->outputs()[i], nullptr);
      return;
    }
    auto el = elements(n->input(0));
    if (el.size() == n->outputs().size()) {
      for (size_t i = 0; i < el.size(); ++i) copy_state(nullptr, n->outputs()[i], &el[i]);
      return;
    }
    auto* tags = element_tags(n->input(0));
    if (tags && tags->size() == n->outputs().size()) {
      for (size_t i = 0; i < tags->size(); ++i) copy_state(nullptr, n->outputs()[i], nullptr, &(*tags)[i]);
      return;
    }
    if (any_split(n->input(0))) fail(n, "unpacks a container holding split tensors it cannot follow");
  }

  void visit_control_flow(Node* n) {
    // An if on constants and module attributes only (`if self.n_rep == 1`) takes the same branch on
    // every run: that branch is followed like straight-line code.
    if (n->kind() == c10::prim::If && tag(n->input(0)).kind == IntTag::Static && probed(n->input(0))) {
      const int branch = probed(n->input(0))->toBool() ? 0 : 1;
      s_.taken_branch[n] = branch;
      torch::jit::Block* taken = n->blocks()[static_cast<size_t>(branch)];
      walk(taken);
      for (size_t i = 0; i < n->outputs().size(); ++i) copy_state(taken->outputs()[i], n->outputs()[i], nullptr);
      return;
    }
    for (Value* in : n->inputs())
      if (any_split(in)) fail(n, "carries a split tensor (" + describe(in) + ") into control flow");
    std::vector<torch::jit::Block*> blocks(n->blocks().begin(), n->blocks().end());
    while (!blocks.empty()) {  // blocks read outer values without declaring them as inputs
      auto* b = blocks.back();
      blocks.pop_back();
      for (Node* inner : b->nodes()) {
        for (Value* in : inner->inputs())
          if (any_split(in)) fail(n, "reads a split tensor (" + describe(in) + ") inside control flow");
        blocks.insert(blocks.end(), inner->blocks().begin(), inner->blocks().end());
      }
    }
    for (Value* out : n->outputs()) set(out, {});
  }

  void visit_unknown(Node* n) {
    reads(n);
    for (Value* in : n->inputs()) {
      if (!any_split(in)) continue;
      const std::string what = placement(in).replicated() ? "holds split tensors" : "is split (" + describe(in) + ")";
      fail(n, "has no sharding rule and its input %" + in->debugName() + " " + what +
                  "; rules exist for linear/matmul, views and reshapes, slicing off the split dim, lists (cat, "
                  "stack, chunk, split, unbind), element-wise ops, reductions, softmax, einsum and "
                  "scaled_dot_product_attention");
    }
    for (Value* out : n->outputs()) set(out, {});
  }

  // A partial output is all-reduced where it is made (a row linear recorded its own, with its bias).
  void resolve_partials(Node* n) {
    for (Value* out : n->outputs()) {
      if (!placement(out).partial()) continue;
      bool recorded = false;
      for (const auto& r : s_.reduces) recorded |= r.node == n;
      if (!recorded) {
        const auto& o = placement(out).origins;
        s_.reduces.push_back({n, -1, -1, 0, false, std::vector<int>(o.begin(), o.end())});
      }
      set(out, {});
    }
  }

  // The shared rule: a replicated operand with a gradient feeding a split or partial output.
  void note_copy_uses(Node* n) {
    bool split_out = false;
    for (Value* out : n->outputs()) split_out |= any_split(out);
    if (!split_out) return;
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      if (is_exempt(n, i)) continue;
      Value* in = n->input(i);
      if (auto* items = list_items(in)) {
        Node* list = in->node();
        for (size_t k = 0; k < items->size(); ++k)
          if (placement((*items)[k]).replicated() && carries_grad((*items)[k])) copy_uses_.push_back({list, k});
        continue;
      }
      if (placement(in).replicated() && carries_grad(in)) copy_uses_.push_back({n, i});
    }
  }

  void collect_copies() {
    std::map<Value*, size_t> by_value;
    for (const auto& [n, i] : copy_uses_) {
      Value* v = n->input(i);
      auto it = by_value.find(v);
      if (it == by_value.end()) {
        ShardingStructure::Copy c;
        c.value = v;
        c.reason = at(n);
        c.for_linear = true;
        c.bytes = bytes_of(v);
        if (const ParamView* pv = param_view(v)) c.params.push_back(pv->tensor);
        it = by_value.emplace(v, s_.copies.size()).first;
        s_.copies.push_back(std::move(c));
      }
      auto& c = s_.copies[it->second];
      c.uses.push_back({n, i});
      bool linear_use = false;
      for (const auto& l : s_.linears) linear_use |= l.node == n && l.mode == ShardingStructure::Mode::Column;
      c.for_linear &= linear_use;
    }
  }

  void finish_outputs() {
    std::vector<const Value*> todo(mg_.graph->outputs().begin(), mg_.graph->outputs().end());
    while (!todo.empty()) {
      const Value* v = todo.back();
      todo.pop_back();
      if (auto* items = list_items(v)) {
        todo.insert(todo.end(), items->begin(), items->end());
        continue;
      }
      TensorPlacement p = placement(v);
      if (p.replicated()) {
        if (any_split(v)) fail(v->node(), "returns a list holding split tensors");
        continue;
      }
      if (!p.split() || p.dim != rank(v) - 1 || p.origins.empty())
        fail(v->node(), "returns a tensor " + describe(v) + "; only logits split over the vocabulary may leave the graph");
      for (int c : p.origins) s_.linears[c].logits = true;
      if (std::find(s_.logits.begin(), s_.logits.end(), v) == s_.logits.end()) s_.logits.push_back(v);
    }
  }
};

}  // namespace

ShardingStructure propagate(const ModelGraph& mg, const ProbeValues& values, ForcedReplicated forced) {
  for (;;) {
    try {
      return Propagator(mg, values, forced).run();
    } catch (const NeedsFull& nf) {
      // Send the linears the split came from back to replicated and start again.
      bool progressed = false;
      for (Node* n : nf.linears)
        progressed |= forced.emplace(n, "replicated: its split output would reach " + nf.reason).second;
      if (!progressed) throw Error(mg.path + ": " + nf.reason);
    }
  }
}

}  // namespace autotp
