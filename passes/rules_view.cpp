// Rules for views, reshapes, dim moves and slicing. A parameter seen through t/transpose/permute
// keeps its dim map (so x @ W.t() is recognised as a linear); any other view of it is still a read
// of that parameter.
//
// Reshape rules (passes/README.md, as in DTensor and XLA): a dim that passes straight through keeps its
// split; when dims merge, only the leftmost may be split; when a dim splits into pieces, only the
// first piece carries the split (attention heads), and tp must divide it.
#include <algorithm>

#include "passes/rules.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// A view of a parameter stays a view of it; `dims` maps output dims to the parameter's (or empty).
void view_of_param(RuleContext& c, Node* n, std::vector<int> dims) {
  if (const ParamView* pv = c.param_view(n->input(0))) {
    std::vector<int> mapped;
    if (!pv->dims.empty() && !dims.empty())
      for (int d : dims) mapped.push_back(d < 0 ? -1 : pv->dims.at(static_cast<size_t>(d)));
    if (std::count(mapped.begin(), mapped.end(), -1)) mapped.clear();
    c.set_param_view(n->output(), {pv->tensor, mapped});
  }
}

std::vector<int> identity_dims(int64_t r) {
  std::vector<int> d;
  for (int64_t i = 0; i < r; ++i) d.push_back(static_cast<int>(i));
  return d;
}

// Replicated input: replicated output; a size read from a split dim must not sit in it.
void replicated_reshape(RuleContext& c, Node* n, const Value* list) {
  if (list)
    if (auto* items = c.list_items(list))
      for (auto* v : *items)
        if (c.tag(v).kind == IntTag::Local) c.fail(n, "reshapes a replicated tensor with a size read from a split dim");
  view_of_param(c, n, {});
  c.set(n->output(), {});
}

// Whether dims [from, to) of x are repeats of one slice: x is an expand (through contiguous/clone)
// of a tensor that has size 1 there (repeat_kv's x[:, :, None].expand(b, kv, n_rep, s, d)).
bool broadcast_dims(RuleContext& c, const Value* x, size_t from, size_t to) {
  while (x->node()->kind() == c10::aten::contiguous || x->node()->kind() == c10::aten::clone) x = x->node()->input(0);
  const Node* e = x->node();
  if (e->kind() != c10::aten::expand && e->kind() != c10::aten::broadcast_to) return false;
  const auto in = c.sizes(e->input(0)), out = c.sizes(x);
  const int64_t offset = static_cast<int64_t>(out.size()) - static_cast<int64_t>(in.size());
  for (size_t a = from; a < to; ++a) {
    const int64_t k = static_cast<int64_t>(a) - offset;
    if (out[a] > 1 && k >= 0 && in[static_cast<size_t>(k)] != 1) return false;
  }
  return true;
}

// The reshape rule over probed shapes; `list` is the size-list input (or nullptr).
void reshape_rule(RuleContext& c, Node* n, int list_input) {
  const Value* x = n->input(0);
  TensorPlacement px = c.placement(x);
  if (px.partial()) c.fail(n, "reshapes a partial sum");
  if (!px.split()) return replicated_reshape(c, n, list_input >= 0 ? n->input(static_cast<size_t>(list_input)) : nullptr);
  auto in = c.sizes(x), out = c.sizes(n->output());
  size_t i = 0, j = 0;
  int out_dim = -1;
  while (i < in.size() || j < out.size()) {
    size_t i0 = i, j0 = j;
    int64_t pin = 1, pout = 1;
    if (i < in.size()) pin *= in[i++];
    if (j < out.size()) pout *= out[j++];
    while (pin != pout) {
      if (pin < pout && i < in.size()) pin *= in[i++];
      else if (pout < pin && j < out.size()) pout *= out[j++];
      else c.fail(n, "cannot match " + join_shape(in) + " to " + join_shape(out));
    }
    if (static_cast<size_t>(px.dim) < i0 || static_cast<size_t>(px.dim) >= i) continue;
    size_t first_in = i0, first_out = j0;
    while (first_in < i && in[first_in] == 1) ++first_in;
    while (first_out < j && out[first_out] == 1) ++first_out;
    if (static_cast<size_t>(px.dim) != first_in)
      c.need_full(n, px.origins, "merges dims " + join_shape(in) + " -> " + join_shape(out) + " with the split dim " +
                                     std::to_string(px.dim) + " not leftmost");
    int in_pieces = 0, out_pieces = 0;
    for (size_t a = i0; a < i; ++a) in_pieces += in[a] > 1;
    for (size_t a = j0; a < j; ++a) out_pieces += out[a] > 1;
    if (in_pieces > 1 && out_pieces > 1)
      c.need_full(n, px.origins, "regroups dims " + join_shape(in) + " -> " + join_shape(out) + " across the split dim " +
                                     std::to_string(px.dim));
    out_dim = static_cast<int>(first_out);
    if (in_pieces > 1 && out_pieces == 1 && broadcast_dims(c, x, first_in + 1, i))  // kv heads repeated to q heads
      c.structure().repeats.push_back({n, out_dim, out[first_out]});
    if (out_pieces > 1) {  // the split dim divided into pieces: the first carries the split (heads)
      auto& s = c.structure();
      for (int o : px.origins) {
        auto& lin = s.linears[o];
        if (lin.heads == 0) lin.heads = out[first_out];
        s.constraints.push_back({out[first_out], "heads", o, -1, n});
      }
      if (px.origins.empty()) s.constraints.push_back({out[first_out], "size", -1, -1, n});
    }
    break;
  }
  if (out_dim < 0) c.fail(n, "lost the split dim " + std::to_string(px.dim) + " of " + c.describe(x));
  if (list_input >= 0) c.check_size_list(n, static_cast<size_t>(list_input), out_dim, px.origins);
  c.set(n->output(), TensorPlacement::shard(out_dim, px.origins));
}

void view_rule(RuleContext& c, Node* n) { reshape_rule(c, n, c.arg_index(n, "size") >= 0 ? c.arg_index(n, "size") : c.arg_index(n, "shape")); }
void flatten_rule(RuleContext& c, Node* n) { reshape_rule(c, n, -1); }
void unflatten_rule(RuleContext& c, Node* n) {
  // The sizes of unflatten are the pieces of one dim; check them like a view's size list.
  reshape_rule(c, n, -1);
  TensorPlacement p = c.placement(n->output());
  if (!p.split()) return;
  const int d = norm_dim(c.int_of(c.arg(n, "dim")), c.rank(n->input(0)));
  if (p.dim >= d && p.dim < d + static_cast<int>(c.ints_of(c.arg(n, "sizes")).size()))
    c.check_size_list(n, static_cast<size_t>(c.arg_index(n, "sizes")), p.dim - d, p.origins);
}

// aten::index(x, [None, ..., idx]): one index tensor on a dim off the split one (Falcon picks k and v
// out of its fused groups this way); the indexed dim becomes the index's dims.
void index_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.replicated()) return c.set(n->output(), {});
  // The index list as probed (a list of constants may itself have been folded into a constant).
  Value* list = c.arg(n, "indices");
  auto* items = c.list_items(list);
  const c10::IValue* probed = c.probed(list);
  int indexed = -1, tensors = 0;
  int64_t index_rank = 0;
  if (probed && probed->isList()) {
    const auto& elems = probed->toListRef();
    for (size_t k = 0; k < elems.size(); ++k) {
      if (!elems[k].isTensor()) continue;
      indexed = static_cast<int>(k);
      index_rank = elems[k].toTensor().dim();
      ++tensors;
      if (items && !c.placement((*items)[k]).replicated()) c.fail(n, "indexes with a split index tensor");
    }
  }
  if (p.partial() || tensors != 1) c.fail(n, "indexes " + c.describe(n->input(0)) + " with other than one index tensor");
  if (indexed == p.dim) c.need_full(n, p.origins, "picks entries of the split dim of " + c.describe(n->input(0)));
  if (p.dim > indexed) p.dim += static_cast<int>(index_rank) - 1;
  c.set(n->output(), p);
}

void expand_rule(RuleContext& c, Node* n) {
  const Value* x = n->input(0);
  TensorPlacement px = c.placement(x);
  const int64_t r_out = c.rank(n->output());
  if (px.partial()) c.fail(n, "expands a partial sum");
  if (!px.split()) {
    if (auto* items = c.list_items(n->input(1)))
      for (auto* v : *items)
        if (c.tag(v).kind == IntTag::Local) c.fail(n, "expands a replicated tensor with a size read from a split dim");
    view_of_param(c, n, {});
    return c.set(n->output(), {});
  }
  int od = static_cast<int>(px.dim + (r_out - c.rank(x)));
  c.check_size_list(n, 1, od, px.origins);
  c.set(n->output(), TensorPlacement::shard(od, px.origins));
}

// Output dim i comes from input dim perm[i].
void permute_dims(RuleContext& c, Node* n, const std::vector<int>& perm) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.split()) p.dim = static_cast<int>(std::find(perm.begin(), perm.end(), p.dim) - perm.begin());
  view_of_param(c, n, perm);
  c.set(n->output(), p);
}

void transpose_rule(RuleContext& c, Node* n) {
  const int64_t r = c.rank(n->input(0));
  std::vector<int> perm = identity_dims(r);
  int a = norm_dim(c.int_of(c.arg(n, "dim0")), r), b = norm_dim(c.int_of(c.arg(n, "dim1")), r);
  std::swap(perm[a], perm[b]);
  permute_dims(c, n, perm);
}

void t_rule(RuleContext& c, Node* n) {
  std::vector<int> perm = identity_dims(c.rank(n->input(0)));
  std::reverse(perm.begin(), perm.end());
  permute_dims(c, n, perm);
}

void permute_rule(RuleContext& c, Node* n) {
  const int64_t r = c.rank(n->input(0));
  std::vector<int> perm;
  for (auto d : c.ints_of(c.arg(n, "dims"))) perm.push_back(norm_dim(d, r));
  permute_dims(c, n, perm);
}

void unsqueeze_rule(RuleContext& c, Node* n) {
  const int64_t r = c.rank(n->input(0));
  int k = norm_dim(c.int_of(c.arg(n, "dim")), r + 1);
  TensorPlacement p = c.placement(n->input(0));
  if (p.split() && p.dim >= k) ++p.dim;
  view_of_param(c, n, {});
  c.set(n->output(), p);
}

void squeeze_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  auto in = c.sizes(n->input(0));
  std::vector<int> removed;
  if (Value* dim = c.arg(n, "dim")) {
    for (auto d : c.ints_of(dim)) {
      int nd = norm_dim(d, static_cast<int64_t>(in.size()));
      if (in[nd] == 1) removed.push_back(nd);
    }
  } else {
    for (size_t d = 0; d < in.size(); ++d)
      if (in[d] == 1) removed.push_back(static_cast<int>(d));
  }
  if (p.split()) p.dim -= static_cast<int>(std::count_if(removed.begin(), removed.end(), [&](int d) { return d < p.dim; }));
  view_of_param(c, n, {});
  c.set(n->output(), p);
}

// slice / narrow: off the split dim they pass; slicing the split dim is a fused projection's
// segment (slice with step 1 only; narrow there needs the full extent).
void slice_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.partial()) c.fail(n, "slices a partial sum");
  if (p.split()) {
    int d = norm_dim(c.int_of(c.arg(n, "dim")), c.rank(n->input(0)));
    const int64_t extent = c.sizes(n->input(0))[d];
    const bool cuts = d == p.dim && extent != c.sizes(n->output())[d];
    if (cuts && c.arg(n, "length"))
      c.need_full(n, p.origins, "narrows the split dim " + std::to_string(d) + " of " + c.describe(n->input(0)));
    if (cuts) {
      // A fused projection sliced into segments: bounds from the probe, rescaled by tp.
      auto bound = [&](const char* name, int64_t none) {
        Value* v = c.arg(n, name);
        if (!v || v->type()->kind() == c10::TypeKind::NoneType) return none;
        int64_t b = c.int_of(v);
        return b < 0 ? b + extent : std::min(b, extent);
      };
      Value* step = c.arg(n, "step");
      const int64_t start = bound("start", 0), end = bound("end", extent);
      if ((step && c.int_of(step) != 1) || !cut_fused_projection(c, n, p, extent, {start, end}))
        c.need_full(n, p.origins, "cuts the split dim " + std::to_string(d) + " of " + c.describe(n->input(0)) +
                                      ", which is not the output of a column-parallel linear sliced with step 1");
      for (const char* name : {"start", "end"}) {
        Value* v = c.arg(n, name);
        if (!v || v->type()->kind() == c10::TypeKind::NoneType) continue;
        const int64_t b = c.int_of(v);
        if (b != 0 && b < extent && b > -extent) c.rescale_int(n, static_cast<size_t>(c.arg_index(n, name)), -1, p.origins);
      }
      view_of_param(c, n, {});
      return c.set(n->output(), p);
    }
  }
  view_of_param(c, n, {});
  c.set(n->output(), p);
}

void select_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.partial()) c.fail(n, "selects from a partial sum");
  if (p.split()) {
    int d = norm_dim(c.int_of(c.arg(n, "dim")), c.rank(n->input(0)));
    if (d == p.dim) c.need_full(n, p.origins, "selects an index of the split dim of " + c.describe(n->input(0)));
    if (d < p.dim) --p.dim;
  }
  view_of_param(c, n, {});
  c.set(n->output(), p);
}

// view_as_complex drops the trailing pair dim; view_as_real adds one.
void view_as_complex_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.split() && p.dim == c.rank(n->input(0)) - 1) c.need_full(n, p.origins, "views the split dim as complex pairs");
  c.set(n->output(), p);
}

// repeat_interleave(x, n, dim): each rank repeats its own slices, in the order a column split keeps
// (grouped-query attention repeating kv heads to the q heads of the same rank).
void repeat_interleave_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.partial()) c.fail(n, "repeats a partial sum");
  Value* dim = c.arg(n, "dim");
  const bool no_dim = !dim || dim->type()->kind() == c10::TypeKind::NoneType;
  if (p.split()) {
    if (no_dim) c.need_full(n, p.origins, "repeats a flattened split tensor");
    Value* size = c.arg(n, "output_size");
    const bool on_split = norm_dim(c.int_of(dim), c.rank(n->input(0))) == p.dim;
    if (on_split && size && size->type()->kind() != c10::TypeKind::NoneType)
      c.fail(n, "repeats along the split dim with a fixed output_size; leave output_size out");
    if (on_split) c.structure().repeats.push_back({n, p.dim, c.sizes(n->output()).at(static_cast<size_t>(p.dim))});
  }
  c.set(n->output(), p);
}

}  // namespace

void pass_through(RuleContext& c, Node* n) {
  view_of_param(c, n, identity_dims(c.rank(n->input(0))));
  c.set(n->output(), c.placement(n->input(0)));
}

void register_view_rules(RuleTable& t) {
  for (const char* k : {"aten::view", "aten::reshape", "aten::_unsafe_view"}) add_rule(t, k, view_rule);
  add_rule(t, "aten::flatten.using_ints", flatten_rule);
  add_rule(t, "aten::unflatten.int", unflatten_rule);
  add_rule(t, "aten::expand", expand_rule);
  add_rule(t, "aten::broadcast_to", expand_rule);  // expand with the size list as input 1 too
  add_rule(t, "aten::index.Tensor", index_rule);
  add_rule(t, "aten::numpy_T", t_rule);
  add_rule(t, "aten::transpose.int", transpose_rule);
  add_rule(t, "aten::t", t_rule);
  add_rule(t, "aten::permute", permute_rule);
  add_rule(t, "aten::unsqueeze", unsqueeze_rule);
  add_rule(t, "aten::squeeze", squeeze_rule);  // every overload: squeeze(), .dim, .dims
  add_rule(t, "aten::slice.Tensor", slice_rule);
  add_rule(t, "aten::narrow", slice_rule);
  add_rule(t, "aten::select.int", select_rule);
  add_rule(t, "aten::repeat_interleave.self_int", repeat_interleave_rule);
  add_rule(t, "aten::view_as_complex", view_as_complex_rule);
  add_rule(t, "aten::view_as_real", pass_through);
  for (const char* k : {"aten::contiguous", "aten::alias", "aten::detach", "aten::clone"}) add_rule(t, k, pass_through);
}

}  // namespace autotp
