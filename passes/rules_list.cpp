// Rules for ops over lists of tensors (cat, stack, broadcast_tensors) and ops that make lists
// (chunk, split, unbind): every element carries its own placement, so a split tensor inside a list
// is seen wherever the list goes. Also the int-valued ops that read sizes.
#include <algorithm>

#include "passes/rules.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// The placements of a list input built in the graph (a list the graph received or computed
// otherwise cannot hold split tensors: those only come from ops with rules).
std::vector<TensorPlacement> list_input(RuleContext& c, Node* n, const char* name) {
  Value* list = c.arg(n, name);
  if (!c.list_items(list)) {
    if (c.any_split(list)) c.fail(n, "takes a list of split tensors it cannot follow");
    return {};
  }
  return c.elements(list);
}

// All split elements must agree on one dim (aligned to the output rank `ro` when `align`).
int common_dim(RuleContext& c, Node* n, const std::vector<TensorPlacement>& ps, const std::vector<Value*>& items, int64_t ro) {
  int d = -1;
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].partial()) c.fail(n, "takes a partial sum in a list");
    if (!ps[i].split()) continue;
    int aligned = static_cast<int>(ps[i].dim + (ro - c.rank(items[i])));
    if (d >= 0 && aligned != d) c.need_full(n, merged(ps), "combines tensors split on different dims");
    d = aligned;
  }
  return d;
}

void cat_rule(RuleContext& c, Node* n) {
  auto ps = list_input(c, n, "tensors");
  auto* items = c.list_items(c.arg(n, "tensors"));
  if (ps.empty() || !std::any_of(ps.begin(), ps.end(), [](const TensorPlacement& p) { return p.split(); })) return c.set(n->output(), {});
  const int64_t ro = c.rank(n->output());
  if (std::any_of(ps.begin(), ps.end(), [](const TensorPlacement& p) { return p.replicated(); }))
    c.need_full(n, merged(ps), "concatenates split and replicated tensors");
  int d = common_dim(c, n, ps, *items, ro);
  if (norm_dim(c.int_of(c.arg(n, "dim")), ro) == d) c.need_full(n, merged(ps), "concatenates along the split dim");
  c.set(n->output(), TensorPlacement::shard(d, merged(ps)));
}

// stack inserts a new dim; its elements have equal shapes, so they must all be split alike.
void stack_rule(RuleContext& c, Node* n) {
  auto ps = list_input(c, n, "tensors");
  auto* items = c.list_items(c.arg(n, "tensors"));
  if (ps.empty() || !std::any_of(ps.begin(), ps.end(), [](const TensorPlacement& p) { return p.split(); })) return c.set(n->output(), {});
  if (std::any_of(ps.begin(), ps.end(), [](const TensorPlacement& p) { return p.replicated(); }))
    c.need_full(n, merged(ps), "stacks split and replicated tensors");
  const int64_t r = c.rank(items->front());
  int d = common_dim(c, n, ps, *items, r);
  int k = norm_dim(c.int_of(c.arg(n, "dim")), r + 1);
  c.set(n->output(), TensorPlacement::shard(d >= k ? d + 1 : d, merged(ps)));
}

// chunk / split / split_with_sizes / unbind: off the split dim every piece keeps the split.
void split_like_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  const size_t pieces = c.probed(n->output()) && c.probed(n->output())->isList() ? c.probed(n->output())->toListRef().size() : 0;
  if (p.partial()) c.fail(n, "splits a partial sum");
  if (!p.split()) return c.set_elements(n->output(), std::vector<TensorPlacement>(pieces));
  const int64_t r = c.rank(n->input(0));
  const int d = norm_dim(c.int_of(c.arg(n, "dim")), r);
  const bool unbind = n->kind() == c10::aten::unbind;
  if (d == p.dim) {
    // A fused projection cut into segments (q, k, v; gate, up): each rank keeps its slice of each.
    const int64_t extent = c.sizes(n->input(0)).at(static_cast<size_t>(d));
    std::vector<int64_t> bounds{0};
    if (!unbind)
      for (const auto& piece : c.probed(n->output())->toListRef())
        bounds.push_back(bounds.back() + piece.toTensor().size(d));
    if (unbind || !cut_fused_projection(c, n, p, extent, bounds))
      c.need_full(n, p.origins, std::string(unbind ? "unbinds" : "cuts") + " the split dim " + std::to_string(d) + " of " +
                                    c.describe(n->input(0)) + ", which is not the output of a column-parallel linear");
    if (c.arg(n, "split_size")) c.rescale_int(n, static_cast<size_t>(c.arg_index(n, "split_size")), -1, p.origins);
    if (Value* sizes = c.arg(n, "split_sizes")) {
      auto* items = c.list_items(sizes);
      const bool constant = sizes->node()->kind() == c10::prim::Constant;
      if (!items && !constant) c.fail(n, "cuts the split dim with sizes computed at run time; autotp needs them built from single sizes");
      const size_t count = items ? items->size() : c.probed(sizes)->toIntVector().size();
      for (size_t i = 0; i < count; ++i) c.rescale_int(n, static_cast<size_t>(c.arg_index(n, "split_sizes")), static_cast<int64_t>(i), p.origins);
    }
    return c.set_elements(n->output(), std::vector<TensorPlacement>(pieces, p));
  }
  TensorPlacement each = p;
  if (unbind && d < p.dim) --each.dim;
  c.set_elements(n->output(), std::vector<TensorPlacement>(pieces, each));
}

// broadcast_tensors: each output is its input, broadcast to the common shape.
void broadcast_tensors_rule(RuleContext& c, Node* n) {
  auto ps = list_input(c, n, "tensors");
  auto* items = c.list_items(c.arg(n, "tensors"));
  if (ps.empty()) return;
  const auto* out = c.probed(n->output());
  const int64_t ro = out && out->isList() && !out->toListRef().empty() ? out->toListRef()[0].toTensor().dim() : 0;
  int d = common_dim(c, n, ps, *items, ro);
  if (d < 0) return c.set_elements(n->output(), std::vector<TensorPlacement>(ps.size()));
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].split()) continue;
    auto sz = c.sizes((*items)[i]);
    int k = d - static_cast<int>(ro - static_cast<int64_t>(sz.size()));
    if (k >= 0 && sz[k] != 1) c.need_full(n, merged(ps), "broadcasts a replicated tensor of full extent against a split one");
  }
  c.set_elements(n->output(), std::vector<TensorPlacement>(ps.size(), TensorPlacement::shard(d, merged(ps))));
}

// aten::size(x, d): a per-rank size when d is the split dim, else a full one.
void size_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (!c.arg(n, "dim")) {  // x.shape: each entry means what x.size(d) would
    if (p.partial()) c.fail(n, "reads the sizes of a partial sum");
    std::vector<IntTag> tags;
    for (int64_t d = 0; d < c.rank(n->input(0)); ++d)
      tags.push_back(p.split() && p.dim == d ? IntTag{IntTag::Local, ""} : IntTag{IntTag::Full, ""});
    return c.set_element_tags(n->output(), tags);
  }
  int d = norm_dim(c.int_of(c.arg(n, "dim")), c.rank(n->input(0)));
  c.set_tag(n->output(), p.split() && p.dim == d ? IntTag{IntTag::Local, ""} : IntTag{IntTag::Full, ""});
}

// int(x), x.item(), a scalar from a 0-dim tensor: the same size meaning.
void scalar_rule(RuleContext& c, Node* n) {
  if (!c.placement(n->input(0)).replicated()) c.fail(n, "reads a number out of " + c.describe(n->input(0)));
  c.set_tag(n->output(), c.tag(n->input(0)));
}

// dtype, device, dim: metadata, the same on every rank whatever the placement.
void metadata_rule(RuleContext& c, Node* n) {
  for (size_t i = 0; i < n->inputs().size(); ++i) c.exempt(n, i);
  for (Value* out : n->outputs()) c.set(out, {});
}

}  // namespace

void register_list_rules(RuleTable& t) {
  add_rule(t, "aten::cat", cat_rule);
  add_rule(t, "aten::concat", cat_rule);
  add_rule(t, "aten::stack", stack_rule);
  add_rule(t, "aten::chunk", split_like_rule);
  add_rule(t, "aten::split.Tensor", split_like_rule);
  add_rule(t, "aten::split_with_sizes", split_like_rule);
  add_rule(t, "aten::unbind.int", split_like_rule);
  add_rule(t, "aten::broadcast_tensors", broadcast_tensors_rule);
  add_rule(t, "aten::__getitem__.t", [](RuleContext& c, Node* n) { c.index_into(n); });
  add_rule(t, "aten::size", size_rule);  // size(x) -> int[] and size.int(x, dim) -> int
  add_rule(t, "aten::sym_size.int", size_rule);
  for (const char* k : {"prim::dtype", "prim::device", "prim::layout", "aten::dim", "prim::requires_grad",
                        "aten::is_floating_point", "prim::is_cuda"})
    add_rule(t, k, metadata_rule);
  for (const char* k : {"aten::Int", "aten::ScalarImplicit", "aten::IntImplicit", "aten::item", "aten::Float"})
    add_rule(t, k, scalar_rule);
}

}  // namespace autotp
