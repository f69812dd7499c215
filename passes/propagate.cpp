// The propagation engine (see analyze.h and rules.h): walks the flat graph once per round, keeps
// each value's placement (list elements included), size tags and parameter views, runs each op's
// rule, and applies the one rule every op shares: a replicated operand with a gradient that meets
// a split or partial result goes through copy_to_tp. Structural ops (constants, attributes, lists,
// tuples, control flow) are handled here; everything with a schema goes through the registry.
#include <algorithm>
#include <sstream>

#include "autotp/error.h"
#include "passes/rules.h"

namespace autotp {

int norm_dim(int64_t d, int64_t rank) { return static_cast<int>(d < 0 ? d + rank : d); }

std::set<int> merged(const std::vector<TensorPlacement>& ps) {
  std::set<int> o;
  for (const auto& p : ps) o.insert(p.origins.begin(), p.origins.end());
  return o;
}

std::string join_shape(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

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
      : mg_(mg), values_(values), forced_(forced) {}

  ShardingStructure run() {
    walk(mg_.graph->block());
    finish_outputs();
    collect_copies();
    for (auto& r : s_.reduces) r.bytes = bytes_of(r.node->output());
    return std::move(s_);
  }

  // ---- RuleContext: operands ---------------------------------------------------------------------
  const ModelGraph& graph() const override { return mg_; }
  TensorPlacement placement(const Value* v) const override {
    auto it = place_.find(v);
    return it == place_.end() ? TensorPlacement{} : it->second;
  }
  std::vector<TensorPlacement> elements(const Value* v) const override {
    if (auto* items = list_items(v)) {
      std::vector<TensorPlacement> out;
      for (auto* i : *items) out.push_back(placement(i));
      return out;
    }
    auto it = elem_place_.find(v);
    return it == elem_place_.end() ? std::vector<TensorPlacement>{} : it->second;
  }
  const std::vector<Value*>* list_items(const Value* v) const override {
    auto it = items_.find(v);
    return it == items_.end() ? nullptr : &it->second;
  }
  bool any_split(const Value* v) const override {
    if (!placement(v).replicated()) return true;
    if (auto* items = list_items(v)) {
      for (auto* i : *items)
        if (any_split(i)) return true;
      return false;
    }
    for (const auto& p : elements(v))
      if (!p.replicated()) return true;
    return false;
  }
  const c10::IValue* probed(const Value* v) const override {
    auto it = values_.find(v);
    return it == values_.end() ? nullptr : &it->second;
  }
  bool is_tensor(const Value* v) const override {
    auto* iv = probed(v);
    return iv && iv->isTensor();
  }
  std::vector<int64_t> sizes(const Value* v) const override {
    auto* iv = probed(v);
    if (!iv || !iv->isTensor()) return {};
    return iv->toTensor().sizes().vec();
  }
  int64_t rank(const Value* v) const override { return static_cast<int64_t>(sizes(v).size()); }
  int64_t int_of(const Value* v) const override {
    auto* iv = probed(v);
    if (iv && iv->isInt()) return iv->toInt();
    if (auto c = torch::jit::toIValue(v))
      if (c->isInt()) return c->toInt();
    throw Error(mg_.path + ": expected an int for %" + v->debugName() + " at " + at(v->node()));
  }
  std::vector<int64_t> ints_of(const Value* v) const override {
    auto* iv = probed(v);
    if (iv && iv->isIntList()) return iv->toIntVector();
    if (iv && iv->isInt()) return {iv->toInt()};
    if (auto c = torch::jit::toIValue(v)) {
      if (c->isIntList()) return c->toIntVector();
      if (c->isInt()) return {c->toInt()};
    }
    throw Error(mg_.path + ": expected an int list at " + at(v->node()));
  }
  IntTag tag(const Value* v) const override {
    auto it = tag_.find(v);
    if (it != tag_.end()) return it->second;
    if (v->node()->kind() == c10::prim::Constant) {
      const auto& name = v->debugName();
      if (name.rfind("self.", 0) == 0) return {IntTag::Static, "constant " + name.substr(5)};
      return {IntTag::Static, "constant"};
    }
    return {IntTag::Full, ""};
  }
  const ParamView* param_view(const Value* v) const override {
    auto it = view_.find(v);
    return it == view_.end() ? nullptr : &it->second;
  }
  Value* arg(Node* n, const char* name) const override {
    int i = arg_index(n, name);
    return i < 0 ? nullptr : n->input(static_cast<size_t>(i));
  }
  int arg_index(Node* n, const char* name) const override {
    const auto* schema = n->maybeSchema();
    if (!schema) return -1;
    auto i = schema->argumentIndexWithName(name);
    return i && static_cast<size_t>(*i) < n->inputs().size() ? static_cast<int>(*i) : -1;
  }
  std::string describe(const Value* v) const override {
    TensorPlacement p = placement(v);
    std::string d = "shape " + join_shape(sizes(v));
    if (p.split()) d += " split on dim " + std::to_string(p.dim);
    if (p.partial()) d += " partial";
    return d;
  }

  // ---- RuleContext: answers ----------------------------------------------------------------------
  void set(const Value* v, TensorPlacement p) override { place_[v] = std::move(p); }
  void set_elements(const Value* v, std::vector<TensorPlacement> p) override { elem_place_[v] = std::move(p); }
  void set_tag(const Value* v, IntTag t) override { tag_[v] = std::move(t); }
  void set_element_tags(const Value* v, std::vector<IntTag> t) override { elem_tags_[v] = std::move(t); }
  void set_param_view(const Value* v, ParamView pv) override { view_[v] = std::move(pv); }
  void exempt(Node* n, size_t input) override { exempt_.insert({n, input}); }
  void reads(Node* n) override {
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      if (exempt_.count({n, i})) continue;
      note_read(n->input(i), n);
      if (auto* items = list_items(n->input(i)))
        for (auto* e : *items) note_read(e, n);
    }
  }
  [[noreturn]] void fail(const Node* n, const std::string& what) const override {
    throw Error(mg_.path + ": " + at(n) + ": " + what);
  }
  [[noreturn]] void need_full(const Node* n, const std::set<int>& origins, const std::string& why) override {
    if (origins.empty()) fail(n, why);
    NeedsFull nf{{}, at(n) + " " + why};
    for (int o : origins) nf.linears.push_back(s_.linears[o].node);
    throw nf;
  }
  void check_size_list(Node* n, size_t list_input, int split_pos, const std::set<int>& origins) override {
    auto* items = list_items(n->input(list_input));
    if (!items) fail(n, "takes a size list computed at run time; autotp needs it built from single sizes");
    for (size_t i = 0; i < items->size(); ++i) {
      IntTag t = tag((*items)[i]);
      if (static_cast<int>(i) == split_pos) {
        const int64_t v = int_of((*items)[i]);
        // A static size is replaced by v/tp; one read at run time from an unsplit extent (nanoGPT's
        // reshape(B, T, C) with C = x.size(-1)) is divided by tp where it is used. -1 stays -1.
        if (t.kind != IntTag::Local && v != -1)
          s_.rescales.push_back({n, list_input, static_cast<int64_t>(i), v, t.kind == IntTag::Full ? "size read at run time" : t.what,
                                 std::vector<int>(origins.begin(), origins.end()), t.kind == IntTag::Full});
      } else if (t.kind == IntTag::Local) {
        fail(n, "size[" + std::to_string(i) + "] is read from a split dim but sits on an unsplit one");
      }
    }
  }
  void rescale_int(Node* n, size_t input, int64_t list_index, const std::set<int>& origins) override {
    const Value* v = list_index < 0 ? n->input(input) : list_items(n->input(input))->at(static_cast<size_t>(list_index));
    IntTag t = tag(v);
    if (t.kind == IntTag::Local) return;  // read from the split dim: already per-rank
    const int64_t from = int_of(v);
    if (from == 0) return;
    s_.rescales.push_back({n, input, list_index, from, t.kind == IntTag::Full ? "size read at run time" : t.what,
                           std::vector<int>(origins.begin(), origins.end()), t.kind == IntTag::Full});
  }
  ShardingStructure& structure() override { return s_; }
  const std::string* forced_reason(Node* n) const override {
    auto f = forced_.find(n);
    return f == forced_.end() ? nullptr : &f->second;
  }

 private:
  const ModelGraph& mg_;
  const ProbeValues& values_;
  const ForcedReplicated& forced_;
  ShardingStructure s_;
  std::unordered_map<const Value*, TensorPlacement> place_;
  std::unordered_map<const Value*, std::vector<TensorPlacement>> elem_place_;  // lists made by ops (chunk, split)
  std::unordered_map<const Value*, std::vector<Value*>> items_;          // lists/tuples built in the graph
  std::unordered_map<const Value*, IntTag> tag_;
  std::unordered_map<const Value*, std::vector<IntTag>> elem_tags_;  // int lists made by ops (x.shape)
  std::unordered_map<const Value*, ParamView> view_;
  std::set<std::pair<Node*, size_t>> exempt_;
  // Replicated operands with a gradient feeding a split/partial result, in graph order.
  std::vector<std::pair<Node*, size_t>> copy_uses_;

  std::string at(const Node* n) const {
    std::string where = std::string(n->kind().toQualString()) + " at " + source_of(n);
    std::string m = module_of(mg_, n);
    if (!m.empty()) where += " (" + m + ")";
    return where;
  }

  void note_read(const Value* v, Node* reader) {
    const ParamView* pv = param_view(v);
    if (pv && !s_.tensor_use.count(pv->tensor)) s_.tensor_use[pv->tensor] = at(reader);
  }

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
    if (kind == c10::prim::TupleConstruct || kind == c10::prim::ListConstruct) {
      items_[n->output()] = std::vector<Value*>(n->inputs().begin(), n->inputs().end());
      return;
    }
    if (kind == c10::prim::TupleUnpack || kind == c10::prim::ListUnpack) return visit_unpack(n);
    if (kind == c10::prim::TupleIndex) return visit_index(n);
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

  void copy_state(const Value* from, const Value* to, const TensorPlacement* elem, const IntTag* elem_tag = nullptr) {
    if (elem_tag) tag_[to] = *elem_tag;
    if (elem) place_[to] = *elem;
    else if (place_.count(from)) place_[to] = place_.at(from);
    if (tag_.count(from)) tag_[to] = tag_.at(from);
    if (items_.count(from)) items_[to] = items_.at(from);
    if (elem_place_.count(from)) elem_place_[to] = elem_place_.at(from);
    if (view_.count(from)) view_[to] = view_.at(from);
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
    auto tags = elem_tags_.find(n->input(0));
    if (tags != elem_tags_.end() && tags->second.size() == n->outputs().size()) {
      for (size_t i = 0; i < tags->second.size(); ++i) copy_state(nullptr, n->outputs()[i], nullptr, &tags->second[i]);
      return;
    }
    if (any_split(n->input(0))) fail(n, "unpacks a container holding split tensors it cannot follow");
  }

  // Indexing a tuple/list: the element's state (aten::__getitem__ comes here through its rule too).
 public:
  void index_into(Node* n) {
    const Value* c = n->input(0);
    int64_t i = int_of(n->input(1));
    if (auto* items = list_items(c)) {
      i = norm_dim(i, static_cast<int64_t>(items->size()));
      if (i >= 0 && i < static_cast<int64_t>(items->size())) return copy_state((*items)[i], n->output(), nullptr);
    }
    auto el = elements(c);
    auto tags = elem_tags_.find(c);
    if (el.empty() && tags != elem_tags_.end()) {
      i = norm_dim(i, static_cast<int64_t>(tags->second.size()));
      if (i >= 0 && i < static_cast<int64_t>(tags->second.size())) return copy_state(nullptr, n->output(), nullptr, &tags->second[i]);
    }
    i = norm_dim(i, static_cast<int64_t>(el.size()));
    if (i >= 0 && i < static_cast<int64_t>(el.size())) return copy_state(nullptr, n->output(), &el[i]);
    if (any_split(c)) fail(n, "indexes a container holding split tensors it cannot follow");
  }

 private:
  void visit_index(Node* n) { index_into(n); }

  void visit_control_flow(Node* n) {
    // An if on constants and module attributes only (`if self.n_rep == 1`) takes the same branch on
    // every run: that branch is followed like straight-line code.
    if (n->kind() == c10::prim::If && tag(n->input(0)).kind == IntTag::Static && probed(n->input(0))) {
      torch::jit::Block* taken = n->blocks()[probed(n->input(0))->toBool() ? 0 : 1];
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
      if (!recorded) s_.reduces.push_back({n, -1, -1});
      set(out, {});
    }
  }

  // The shared rule: a replicated operand with a gradient feeding a split or partial output.
  void note_copy_uses(Node* n) {
    bool split_out = false;
    for (Value* out : n->outputs()) split_out |= any_split(out);
    if (!split_out) return;
    for (size_t i = 0; i < n->inputs().size(); ++i) {
      if (exempt_.count({n, i})) continue;
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

void index_container(RuleContext& ctx, torch::jit::Node* n) { static_cast<Propagator&>(ctx).index_into(n); }

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
