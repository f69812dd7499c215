// Rules for the ops that read parameters a rank can hold a slice of: linears (aten::linear, a matmul
// with a parameter or its transpose as right operand: x @ W, x @ W.t(), and addmm(b, x, W)) and
// embeddings.
//   replicated input -> column-parallel: the output is split on its features, the weight on the
//                       parameter dim that becomes them;
//   input split on the contraction dim -> row-parallel: the output is a partial sum, all-reduced
//                       where it is made, and a bias is added once after;
//   embedding -> vocab-parallel: rows split over the vocabulary, masked lookup, all-reduce.
// The rewrite slices the parameter itself, so its uses keep their views (W.t() of a slice is the
// slice of W.t()).
#include "passes/rules.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;
using Mode = ShardingStructure::Mode;

// x's placement (input `xi`) decides the mode; the parameter view at input `wi` is the weight.
void linear_of(RuleContext& c, Node* n, size_t xi, size_t wi, int weight, int col_dim, int row_dim, int bias_input) {
  auto& s = c.structure();
  const Value* x = n->input(xi);
  TensorPlacement px = c.placement(x);
  ShardingStructure::Linear lin;
  lin.node = n;
  lin.weight_input = wi;
  lin.weight = weight;
  lin.column_dim = col_dim;
  lin.row_dim = row_dim;
  lin.bias_input = bias_input;
  if (bias_input >= 0) {
    const ParamView* bv = c.param_view(n->input(static_cast<size_t>(bias_input)));
    if (!bv) c.fail(n, "has a bias that is not a model parameter");
    lin.bias = bv->tensor;
    c.exempt(n, static_cast<size_t>(bias_input));
  }
  c.exempt(n, wi);
  const int idx = static_cast<int>(s.linears.size());
  const int64_t r = c.rank(x);
  if (px.partial()) c.fail(n, "takes a partial sum as input");
  if (px.replicated()) {
    if (const std::string* why = c.forced_reason(n)) {
      lin.mode = Mode::Replicated;
      lin.reason = *why;
      c.set(n->output(), {});
    } else {
      lin.mode = Mode::Column;
      c.set(n->output(), TensorPlacement::shard(static_cast<int>(c.rank(n->output())) - 1, {idx}));
    }
  } else if (px.dim == r - 1) {
    lin.mode = Mode::Row;
    lin.fed_by.assign(px.origins.begin(), px.origins.end());
    for (int o : px.origins) s.linears[o].feeds.push_back(idx);
    s.reduces.push_back({n, bias_input, idx, 0, false, {}});
    c.set(n->output(), TensorPlacement::part(px.origins));
  } else {
    c.fail(n, "input is split on dim " + std::to_string(px.dim) + " of " + c.describe(x) +
                  ", not on the features a linear contracts");
  }
  s.linears.push_back(std::move(lin));
}

void linear_rule(RuleContext& c, Node* n) {
  const ParamView* w = c.param_view(n->input(1));
  if (!w || w->dims.size() != 2) {  // a weight computed in the graph: nothing to slice
    if (!c.placement(n->input(0)).replicated())
      c.fail(n, "input is " + c.describe(n->input(0)) + " but the weight is not a model parameter");
    return c.set(n->output(), {});
  }
  Value* b = c.arg(n, "bias");
  const bool has_bias = b && b->type()->kind() != c10::TypeKind::NoneType;
  // linear(x, V) = x @ V.t(): V's dim 0 gives the output features, dim 1 is contracted.
  linear_of(c, n, 0, 1, w->tensor, w->dims[0], w->dims[1], has_bias ? c.arg_index(n, "bias") : -1);
}

void embedding_rule(RuleContext& c, Node* n) {
  const ParamView* w = c.param_view(n->input(0));
  if (!c.placement(n->input(1)).replicated()) c.fail(n, "token ids are " + c.describe(n->input(1)));
  if (!w || w->dims != std::vector<int>{0, 1}) {
    return c.set(n->output(), {});
  }
  c.exempt(n, 0);
  c.structure().embeddings.push_back({n, w->tensor});
  c.set(n->output(), {});  // vocab-parallel: masked lookup, then all-reduce inside the op
}

}  // namespace

bool matmul_with_parameter(RuleContext& c, Node* n) {
  const ParamView* w = c.param_view(n->input(1));
  if (!w || w->dims.size() != 2 || c.rank(n->input(0)) < 2 || c.param_view(n->input(0))) return false;
  // x @ V with V [in, out]: V's dim 1 gives the output features, dim 0 is contracted.
  linear_of(c, n, 0, 1, w->tensor, w->dims[1], w->dims[0], -1);
  return true;
}

namespace {
bool is_one(RuleContext& c, Node* n, const char* name) {
  Value* v = c.arg(n, name);
  auto iv = v ? torch::jit::toIValue(v) : std::nullopt;
  return !v || (iv && ((iv->isInt() && iv->toInt() == 1) || (iv->isDouble() && iv->toDouble() == 1.0)));
}

// addmm(b, x, W) = b + x @ W (GPT-2's Conv1D, older traces): a linear with W as [in, out].
void addmm_rule(RuleContext& c, Node* n) {
  const ParamView* w = c.param_view(n->input(2));
  const ParamView* b = c.param_view(n->input(0));
  if (!w || w->dims.size() != 2 || !b || c.rank(n->input(0)) != 1 || !is_one(c, n, "beta") || !is_one(c, n, "alpha")) {
    for (Value* in : n->inputs())
      if (!c.placement(in).replicated()) c.fail(n, "is " + c.describe(in) + " but not a linear of model parameters");
    return c.set(n->output(), {});
  }
  linear_of(c, n, 1, 2, w->tensor, w->dims[1], w->dims[0], 0);
}
}  // namespace

bool cut_fused_projection(RuleContext& c, Node* n, const TensorPlacement& p, int64_t extent, const std::vector<int64_t>& bounds) {
  auto& s = c.structure();
  if (p.origins.empty()) return false;
  // The split dim must still be the linears' output features one to one: same extent, and each
  // origin a column-parallel linear (a view that regrouped the features changes the extent).
  for (int o : p.origins) {
    const auto& lin = s.linears[static_cast<size_t>(o)];
    if (lin.mode != ShardingStructure::Mode::Column ||
        c.graph().tensors[static_cast<size_t>(lin.weight)].tensor.size(lin.column_dim) != extent)
      return false;
  }
  for (int o : p.origins) {
    auto& lin = s.linears[static_cast<size_t>(o)];
    lin.cuts.insert(0);
    lin.cuts.insert(extent);
    for (int64_t b : bounds) lin.cuts.insert(std::min(std::max<int64_t>(b, 0), extent));
  }
  return true;
}

void register_param_rules(RuleTable& t) {
  add_rule(t, "aten::linear", linear_rule);
  add_rule(t, "aten::addmm", addmm_rule);
  add_rule(t, "aten::embedding", embedding_rule);
}

}  // namespace autotp
