// kv heads held by several ranks: can a GQA family be cut finer than its kv heads?
//
// Preconditions: a ShardingStructure from propagate() (with per_rank, taken_branch and repeats) and
// one of its split families.
// Method: follow the kv side — every value computed from the k/v projections' outputs, up to the
// place where kv heads become q heads (a repeat recorded by the reshape / repeat_interleave rules,
// or an attention op that groups q heads itself). On m ranks holding the same kv head, the kv side
// is m copies of one rank's work at tp = kv heads, which the propagation already proved sound; what
// would break it is (a) kv-side values meeting q-side ones before a repeat (the q side is cut m
// times finer), (b) a sum over the split dim of kv-side values (m copies would be summed), (c) kv
// heads reaching a row linear or leaving the graph, (d) a kv weight read elsewhere, (e) a fused
// projection holding q and kv heads in one weight. Any of these leaves the family to be kept whole,
// with the reason. Gradients (rewrite, runtime): each holder's kv weight gradient covers its own q
// heads only, so it is summed over the m holders; replicated values feeding both sides keep
// copy_to_tp over the whole TP group (the holders' shares are disjoint, their sum is the whole).
#include <algorithm>
#include <functional>

#include "passes/analyze.h"

namespace autotp {
namespace {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Value;
using Mode = ShardingStructure::Mode;

std::string where(const Node* n) { return std::string(n->kind().toQualString()) + " at " + source_of(n); }

bool container(const Value* v) {
  const auto k = v->type()->kind();
  return k == c10::TypeKind::ListType || k == c10::TypeKind::TupleType;
}

bool groups_heads(const Node* n) {  // attention ops that repeat kv heads to q heads themselves
  const std::string k = n->kind().toQualString();
  return k == "aten::scaled_dot_product_attention" || k == "autotp::causal_attention";
}

// The input of n that reads `tensor` (directly or through a view or cast), or -1.
int input_reading(const ModelGraph& mg, const Node* n, int tensor) {
  for (size_t i = 0; i < n->inputs().size(); ++i) {
    const Value* v = n->input(i);
    for (int hops = 0; hops < 4 && v; ++hops) {
      auto t = mg.tensor_of.find(v);
      if (t != mg.tensor_of.end()) {
        if (t->second == tensor) return static_cast<int>(i);
        break;
      }
      v = v->node()->inputs().empty() ? nullptr : v->node()->input(0);
    }
  }
  return -1;
}

}  // namespace

void analyze_kv_replication(const ModelGraph& mg, const ShardingStructure& s, Family& f) {
  f.kv.reset();
  f.kv_refused.clear();
  if (f.heads == 0 || f.kv_heads == 0 || f.kv_heads >= f.heads) return;  // not grouped-query attention
  const auto& L = s.linears;
  if (f.gcd != f.kv_heads) {
    f.kv_refused = "its whole units (" + std::to_string(f.gcd) + ") are not its kv heads (" + std::to_string(f.kv_heads) + ")";
    return;
  }
  KvReplication kv;
  std::unordered_set<int> kv_cols;
  for (int c : f.columns) {
    if (L[c].heads != f.kv_heads) continue;
    if (L[c].cuts.size() > 2) {
      f.kv_refused = "the fused projection " + mg.tensors[L[c].weight].name + " holds q and kv heads in one weight";
      return;
    }
    for (int t : {L[c].weight, L[c].bias})
      if (t >= 0 && s.tensor_use.count(t)) {
        f.kv_refused = mg.tensors[t].name + " is also read by " + s.tensor_use.at(t);
        return;
      }
    kv.kv_columns.push_back(c);
    kv_cols.insert(c);
  }
  std::unordered_set<const Node*> repeat_nodes, reduce_nodes, row_nodes;
  for (const auto& r : s.repeats) repeat_nodes.insert(r.node);
  // A mean over the split dim is all-reduced and divided by tp: the m holders of each kv head add m
  // equal means, so the result is the mean over all kv heads as it is (OLMo2's norm over k's
  // features). A plain sum would count each kv head m times.
  std::unordered_set<const Node*> mean_nodes;
  for (const auto& r : s.reduces) {
    reduce_nodes.insert(r.node);
    if (r.mean) mean_nodes.insert(r.node);
#if AUTOTP_MUTANT == 9  // mutant (make mutants): a plain sum over the kv heads is let through like a mean
    mean_nodes.insert(r.node);
#endif
  }
  for (const auto& l : L)
    if (l.mode == Mode::Row) row_nodes.insert(l.node);

  std::unordered_set<const Value*> kvv;  // kv-side values (a container: when one element is)
  for (int c : kv.kv_columns) kvv.insert(L[c].node->output());
  // Tuples and lists built in the graph hold q- and kv-side values side by side (rotary's (q, k)):
  // followed per element, so unpacking gives each its side back; any other use of a container
  // holding both mixes them.
  std::unordered_map<const Value*, std::vector<bool>> elements;
  std::unordered_set<const Value*> mixed;
  auto element_of = [&](const Value* container, int64_t i) {
    auto e = elements.find(container);
    if (e == elements.end()) return kvv.count(container) > 0;
    return i >= 0 && i < static_cast<int64_t>(e->second.size()) && e->second[static_cast<size_t>(i)];
  };
  std::string why;
  std::function<void(Block*)> walk = [&](Block* b) {
    for (Node* n : b->nodes()) {
      if (!why.empty()) return;
      bool tainted = false;
      for (Value* in : n->inputs()) tainted |= kvv.count(in) > 0;
      if (!n->blocks().empty()) {
        auto t = s.taken_branch.find(n);
        if (t == s.taken_branch.end()) {
          if (tainted) why = where(n) + " carries kv heads into control flow";
          continue;
        }
        Block* taken = n->blocks()[static_cast<size_t>(t->second)];
        walk(taken);
        for (size_t i = 0; i < n->outputs().size(); ++i)
          if (kvv.count(taken->outputs()[i])) kvv.insert(n->outputs()[i]);
        continue;
      }
      if (!tainted) continue;
      const auto kind = n->kind();
      if (kind == c10::prim::TupleConstruct || kind == c10::prim::ListConstruct) {
        std::vector<bool> el;
        bool q_side = false;
        for (Value* in : n->inputs()) {
          el.push_back(kvv.count(in) > 0);
          q_side |= !el.back() && s.per_rank.count(in);
        }
        elements[n->output()] = el;
        kvv.insert(n->output());
        if (q_side) mixed.insert(n->output());
        continue;
      }
      if ((kind == c10::prim::TupleUnpack || kind == c10::prim::ListUnpack) && elements.count(n->input(0))) {
        for (size_t i = 0; i < n->outputs().size(); ++i)
          if (element_of(n->input(0), static_cast<int64_t>(i))) kvv.insert(n->outputs()[i]);
        continue;
      }
      if (kind == c10::prim::TupleIndex || kind == c10::aten::__getitem__) {
        auto index = torch::jit::toIValue(n->input(1));
        if (elements.count(n->input(0)) && index && index->isInt()) {
          if (element_of(n->input(0), index->toInt())) kvv.insert(n->output());
          continue;
        }
      }
      kv.kv_nodes.insert(n);
      if (repeat_nodes.count(n) && kvv.count(n->input(0))) {
        for (const auto& r : s.repeats)
          if (r.node == n) kv.merges.push_back({n, r.dim, r.extent, true});
        continue;  // its output holds q heads
      }
      if (groups_heads(n) && !kvv.count(n->input(0)) && kvv.count(n->input(1)) && kvv.count(n->input(2))) {
        kv.merges.push_back({n, 0, 0, false});
        continue;
      }
      for (Value* in : n->inputs())
        if (mixed.count(in) || (!kvv.count(in) && s.per_rank.count(in))) {
          why = where(n) + " meets kv heads with values split by q heads (%" + in->debugName() + ") before they are repeated";
          return;
        }
      if (reduce_nodes.count(n) && !mean_nodes.count(n)) why = where(n) + " sums over the kv heads";
      else if (row_nodes.count(n)) why = where(n) + " contracts the kv heads";
      if (!why.empty()) return;
      for (Value* out : n->outputs())
        if (s.per_rank.count(out) || container(out)) kvv.insert(out);
    }
  };
  walk(mg.graph->block());
  for (const Value* out : mg.graph->outputs())
    if (why.empty() && kvv.count(out)) why = "kv heads leave the graph (" + where(out->node()) + ")";
  if (why.empty() && kv.merges.empty()) why = "no repeat of the kv heads to q heads was found";
  if (!why.empty()) {
    f.kv_refused = why;
    return;
  }

  // The extents cut in tp parts: everything outside the kv side.
  auto extent = [&](int tensor, int dim) { return mg.tensors[static_cast<size_t>(tensor)].tensor.size(dim); };
  auto in_family = [&](const std::vector<int>& origins) {
    return std::any_of(origins.begin(), origins.end(), [&](int o) { return std::count(f.columns.begin(), f.columns.end(), o) > 0; });
  };
  for (int c : f.columns) {
    if (kv_cols.count(c)) continue;
    if (L[c].cuts.size() > 2) {
      for (auto it = std::next(L[c].cuts.begin()); it != L[c].cuts.end(); ++it) kv.q_extents.push_back(*it - *std::prev(it));
    } else {
      kv.q_extents.push_back(extent(L[c].weight, L[c].column_dim));
    }
  }
  for (int r : f.rows) kv.q_extents.push_back(extent(L[r].weight, L[r].row_dim));
  for (const auto& c : s.constraints)
    if (c.linear >= 0 && std::count(f.columns.begin(), f.columns.end(), c.linear) && !kv.kv_nodes.count(c.node) &&
        !(kv_cols.count(c.linear) && c.node == L[c.linear].node))
      kv.q_extents.push_back(c.extent);
  for (const auto& r : s.rescales)
    if (in_family(r.origins) && !kv.kv_nodes.count(r.node)) kv.q_extents.push_back(std::abs(r.from));
  for (const auto& p : s.param_splits)
    if (in_family(p.origins) && !kv.kv_nodes.count(p.node)) kv.q_extents.push_back(extent(p.tensor, p.dim));

  // Where each kv-side parameter is read, for the sum of its gradient over the holders.
  auto add_use = [&](int tensor, Node* n, int input) {
    if (tensor < 0 || mg.kind == GraphKind::Frozen || !mg.tensors[static_cast<size_t>(tensor)].trainable) return true;  // no gradient
    if (input < 0) input = input_reading(mg, n, tensor);
    if (input < 0) return false;
    kv.params.push_back(tensor);
    kv.param_uses.push_back({n, static_cast<size_t>(input)});
    return true;
  };
  for (int c : kv.kv_columns)
    if (!add_use(L[c].weight, L[c].node, static_cast<int>(L[c].weight_input)) || !add_use(L[c].bias, L[c].node, L[c].bias_input)) {
      f.kv_refused = "the read of " + mg.tensors[L[c].weight].name + "'s parameters was not found in " + where(L[c].node);
      return;
    }
  for (const auto& p : s.param_splits)
    if (in_family(p.origins) && kv.kv_nodes.count(p.node) && !add_use(p.tensor, p.node, -1)) {
      f.kv_refused = "the read of " + mg.tensors[p.tensor].name + " was not found in " + where(p.node);
      return;
    }
  f.kv = std::move(kv);
}

}  // namespace autotp
