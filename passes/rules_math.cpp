// Rules for arithmetic: element-wise families (with broadcasting, and the same ops on ints, whose
// size meaning they carry), dtype casts, reductions and softmax read by schema argument name,
// tril/triu, matmul/bmm, einsum and scaled_dot_product_attention.
#include <algorithm>
#include <unordered_set>

#include "passes/rules.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;

IntTag combine_tags(const std::vector<IntTag>& ins, const std::string& what, bool divides) {
  IntTag out{IntTag::Static, what};
  for (size_t i = 0; i < ins.size(); ++i) {
    if (ins[i].kind == IntTag::Full) return {IntTag::Full, ""};
    if (ins[i].kind == IntTag::Local) {
      if (divides && i == 1) return {IntTag::Full, ""};  // a per-rank size in a divisor is not a size
      out.kind = IntTag::Local;
    }
  }
  return out;
}

// Arithmetic on ints or 0-dim tensors: the size meaning propagates.
void int_arithmetic(RuleContext& c, Node* n) {
  std::vector<IntTag> tags;
  std::string what = std::string(n->kind().toQualString()) + "(";
  for (Value* in : n->inputs()) {
    if (c.is_tensor(in) && c.rank(in) > 0) continue;
    auto* iv = c.probed(in);
    if (!iv || !(iv->isInt() || iv->isTensor())) continue;
    IntTag t = c.tag(in);
    what += std::string(tags.empty() ? "" : ", ") + (t.what.empty() ? "?" : t.what);
    tags.push_back(t);
  }
  const std::string k = n->kind().toQualString();
  const bool divides = k.find("div") != std::string::npos || k.find("remainder") != std::string::npos;
  c.set_tag(n->output(), combine_tags(tags, what + ")", divides));
  c.set(n->output(), {});
}

// Element-wise with broadcasting: splits must line up; a replicated operand must broadcast (size 1)
// over the split dim.
void elementwise_rule(RuleContext& c, Node* n) {
  const Value* out = n->outputs().at(0);
  if (!c.is_tensor(out) || c.rank(out) == 0) return int_arithmetic(c, n);
  const int64_t ro = c.rank(out);
  std::vector<TensorPlacement> shards;
  int od = -1;
  for (Value* in : n->inputs()) {
    if (!c.is_tensor(in)) continue;
    TensorPlacement p = c.placement(in);
    if (p.partial()) c.fail(n, "combines a partial sum element-wise");
    if (!p.split()) continue;
    int aligned = static_cast<int>(p.dim + (ro - c.rank(in)));
    if (od >= 0 && aligned != od) c.need_full(n, merged({p, shards.front()}), "combines tensors split on different dims");
    od = aligned;
    shards.push_back(p);
  }
  if (od < 0) return c.set(out, {});
  for (size_t i = 0; i < n->inputs().size(); ++i) {
    Value* in = n->input(i);
    if (!c.is_tensor(in) || c.placement(in).split()) continue;
    auto sz = c.sizes(in);
    int d = od - static_cast<int>(ro - static_cast<int64_t>(sz.size()));
    if (d < 0 || sz[d] == 1) continue;
    // A trainable parameter over the split features (a norm weight over a column-parallel output)
    // is split with them; anything else of full extent needs the whole dim.
    const ParamView* pv = c.param_view(in);
    if (pv && !pv->dims.empty() && pv->dims[static_cast<size_t>(d)] >= 0 && c.graph().tensors[static_cast<size_t>(pv->tensor)].trainable) {
      {
        const std::set<int> from = merged(shards);
        c.structure().param_splits.push_back({pv->tensor, pv->dims[static_cast<size_t>(d)], n, std::vector<int>(from.begin(), from.end())});
      }
      c.exempt(n, i);
      continue;
    }
    c.need_full(n, merged(shards), "combines a split tensor with a replicated one of full extent " + std::to_string(sz[d]) +
                                       " on the split dim");
  }
  TensorPlacement res = TensorPlacement::shard(od, merged(shards));
  c.set(out, res);
  const std::string k = n->kind().toQualString();
  if (k.back() == '_' && c.is_tensor(n->input(0))) c.set(n->input(0), res);  // in place
}

// A cast: the output is input 0 in another dtype; other tensor operands only lend their dtype.
void cast_rule(RuleContext& c, Node* n) {
  for (size_t i = 1; i < n->inputs().size(); ++i) c.exempt(n, i);
  if (c.placement(n->input(0)).partial()) c.fail(n, "casts a partial sum");
  pass_through(c, n);
}

std::vector<int> reduced_dims(RuleContext& c, Node* n) {
  const int64_t r = c.rank(n->input(0));
  std::vector<int> dims;
  Value* dim = c.arg(n, "dim");
  auto* iv = dim ? c.probed(dim) : nullptr;
  bool given = dim && !(iv ? iv->isNone() : dim->type()->kind() == c10::TypeKind::NoneType);
  if (given) {
    for (auto d : c.ints_of(dim)) dims.push_back(norm_dim(d, r));
  }
  if (dims.empty())  // dim=None or [] reduces every dim
    for (int64_t d = 0; d < r; ++d) dims.push_back(static_cast<int>(d));
  return dims;
}

// mean/sum/amax/var/std/norm/logsumexp over `dim` (by name), keeping dims if `keepdim` says so.
void reduction_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.partial()) c.fail(n, "reduces a partial sum");
  if (!p.split()) return c.set(n->outputs()[0], {});
  auto dims = reduced_dims(c, n);
  if (std::count(dims.begin(), dims.end(), p.dim)) {
    // A sum over the split dim is a partial sum; a mean is one too, divided by tp (even splits).
    // Each is all-reduced where it is made (a distributed norm: OLMo2's q/k RMSNorm over the
    // whole projection). Other reductions (max, var, norm) need the whole dim.
    const std::string name = n->kind().toQualString();
    if (name == "aten::sum" || name == "aten::mean") {
      c.structure().reduces.push_back({n, -1, -1, 0, name == "aten::mean", std::vector<int>(p.origins.begin(), p.origins.end())});
      for (Value* out : n->outputs()) c.set(out, TensorPlacement::part(p.origins));
      return;
    }
    c.need_full(n, p.origins, "reduces over the split dim of " + c.describe(n->input(0)));
  }
  bool keepdim = false;
  if (Value* kd = c.arg(n, "keepdim")) {
    auto* iv = c.probed(kd);
    keepdim = iv && iv->isBool() ? iv->toBool() : torch::jit::toIValue(kd).value_or(c10::IValue(false)).toBool();
  }
  if (!keepdim) p.dim -= static_cast<int>(std::count_if(dims.begin(), dims.end(), [&](int d) { return d < p.dim; }));
  for (Value* out : n->outputs()) c.set(out, p);
}

void softmax_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  if (p.partial()) c.fail(n, "normalizes a partial sum");
  if (p.split() && norm_dim(c.int_of(c.arg(n, "dim")), c.rank(n->input(0))) == p.dim)
    c.need_full(n, p.origins, "normalizes over the split dim of " + c.describe(n->input(0)));
  c.set(n->output(), p);
}

// tril/triu keep or zero an element by its global row and column: the last two dims must be whole.
void triangle_rule(RuleContext& c, Node* n) {
  TensorPlacement p = c.placement(n->input(0));
  const int64_t r = c.rank(n->input(0));
  if (p.partial()) c.fail(n, "masks a partial sum");
  if (p.split() && p.dim >= r - 2)
    c.need_full(n, p.origins, "keeps a triangle by global index over the split dim of " + c.describe(n->input(0)));
  c.set(n->output(), p);
}

void matmul_rule(RuleContext& c, Node* n) {
  if (matmul_with_parameter(c, n)) return;
  const Value* a = n->input(0);
  const Value* b = n->input(1);
  TensorPlacement sa = c.placement(a), sb = c.placement(b);
  if (sa.partial() || sb.partial()) c.fail(n, "multiplies a partial sum");
  if (!sa.split() && !sb.split()) return c.set(n->output(), {});
  const int64_t ra = c.rank(a), rb = c.rank(b), ro = c.rank(n->output());
  if (ra < 2 || rb < 2) c.fail(n, "multiplies split 1-D operands (" + c.describe(a) + ", " + c.describe(b) + ")");
  std::set<int> origins = merged({sa, sb});
  auto batch_dim = [&](const TensorPlacement& s, int64_t r) { return static_cast<int>(s.dim + (ro - r)); };
  auto broadcasts = [&](const Value* v, int od) {
    auto sz = c.sizes(v);
    int d = od - static_cast<int>(ro - static_cast<int64_t>(sz.size()));
    return d < 0 || sz[d] == 1;
  };
  const bool a_batch = sa.split() && sa.dim < ra - 2, b_batch = sb.split() && sb.dim < rb - 2;
  if (a_batch && b_batch && batch_dim(sa, ra) == batch_dim(sb, rb)) return c.set(n->output(), TensorPlacement::shard(batch_dim(sa, ra), origins));
  if (a_batch && !sb.split()) {
    if (!broadcasts(b, batch_dim(sa, ra))) c.need_full(n, origins, "multiplies a head-split tensor by a replicated one");
    return c.set(n->output(), TensorPlacement::shard(batch_dim(sa, ra), origins));
  }
  if (b_batch && !sa.split()) {
    if (!broadcasts(a, batch_dim(sb, rb))) c.need_full(n, origins, "multiplies a replicated tensor by a head-split one");
    return c.set(n->output(), TensorPlacement::shard(batch_dim(sb, rb), origins));
  }
  if (sa.split() && sa.dim == ra - 2 && !sb.split()) return c.set(n->output(), TensorPlacement::shard(static_cast<int>(ro - 2), origins));
  if (sb.split() && sb.dim == rb - 1 && !sa.split()) return c.set(n->output(), TensorPlacement::shard(static_cast<int>(ro - 1), origins));
  // Both split on the contraction dim: each rank holds part of the sum.
  if (sa.split() && sb.split() && sa.dim == ra - 1 && sb.dim == rb - 2) return c.set(n->output(), TensorPlacement::part(origins));
  c.need_full(n, origins, "contracts or mixes split dims (" + c.describe(a) + " @ " + c.describe(b) + ")");
}

// einsum: the split dim is one letter; it stays split if the output keeps the letter, and becomes
// a partial sum if the equation contracts it.
void einsum_rule(RuleContext& c, Node* n) {
  Value* list = c.arg(n, "tensors");
  auto ps = c.elements(list);
  auto* items = c.list_items(list);
  if (!c.any_split(list)) return c.set(n->output(), {});
  if (!items) c.fail(n, "takes a list of split tensors it cannot follow");
  auto eq_iv = torch::jit::toIValue(c.arg(n, "equation"));
  std::string eq = eq_iv ? eq_iv->toStringRef() : "";
  eq.erase(std::remove(eq.begin(), eq.end(), ' '), eq.end());
  const auto arrow = eq.find("->");
  const std::set<int> origins = merged(ps);
  if (arrow == std::string::npos || eq.find("...") != std::string::npos)
    c.need_full(n, origins, "has an einsum equation '" + eq + "' without an explicit output or with '...'");
  std::vector<std::string> specs;
  for (size_t start = 0, comma;; start = comma + 1) {
    comma = eq.find(',', start);
    specs.push_back(eq.substr(start, std::min(comma, arrow) - start));
    if (comma == std::string::npos || comma > arrow) break;
  }
  const std::string out = eq.substr(arrow + 2);
  char letter = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].partial()) c.fail(n, "takes a partial sum");
    if (!ps[i].split()) continue;
    char l = specs.at(i).at(static_cast<size_t>(ps[i].dim));
    if (letter && l != letter) c.need_full(n, origins, "contracts operands split along different letters of '" + eq + "'");
    letter = l;
  }
  for (size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].split()) continue;
    auto at = specs.at(i).find(letter);
    if (at != std::string::npos && c.sizes((*items)[i]).at(at) != 1)
      c.need_full(n, origins, "mixes a replicated operand of full extent along the split letter '" + std::string(1, letter) + "' of '" + eq + "'");
  }
  auto pos = out.find(letter);
  c.set(n->output(), pos == std::string::npos ? TensorPlacement::part(origins) : TensorPlacement::shard(static_cast<int>(pos), origins));
}

void sdpa_rule(RuleContext& c, Node* n) {
  TensorPlacement q = c.placement(n->input(0)), k = c.placement(n->input(1)), v = c.placement(n->input(2));
  if (q.replicated() && k.replicated() && v.replicated()) return c.set(n->output(), {});
  std::set<int> origins = merged({q, k, v});
  const int64_t r = c.rank(n->input(0));
  if (!(q.split() && k.split() && v.split()) || q.dim != k.dim || q.dim != v.dim || q.dim >= r - 2)
    c.need_full(n, origins, "attends over q, k, v that are not all split on the same head dim");
  Value* mask = c.arg(n, "attn_mask");
  if (mask && c.is_tensor(mask)) {
    auto sz = c.sizes(mask);
    int d = q.dim - static_cast<int>(r - static_cast<int64_t>(sz.size()));
    if (!c.placement(mask).replicated() || (d >= 0 && sz[d] != 1))
      c.need_full(n, origins, "uses an attention mask with per-head entries");
  }
  c.set(n->output(), TensorPlacement::shard(q.dim, origins));
}

const char* const kElementwise[] = {
    "aten::add", "aten::sub", "aten::mul", "aten::div", "aten::rsub", "aten::neg", "aten::pow", "aten::rsqrt",
    "aten::sqrt", "aten::exp", "aten::log", "aten::log1p", "aten::expm1", "aten::silu", "aten::gelu", "aten::relu",
    "aten::sigmoid", "aten::tanh", "aten::sin", "aten::cos", "aten::dropout", "aten::feature_dropout",
    "aten::masked_fill", "aten::where", "aten::clamp", "aten::clamp_min", "aten::clamp_max", "aten::abs",
    "aten::reciprocal", "aten::square", "aten::maximum", "aten::minimum", "aten::erf", "aten::floor_divide",
    "aten::floordiv", "aten::eq", "aten::ne", "aten::lt", "aten::gt", "aten::le", "aten::ge", "aten::__and__",
    "aten::__or__", "aten::logical_and", "aten::logical_or", "aten::logical_not", "aten::softplus", "aten::mish",
    "aten::remainder", "aten::hardtanh", "aten::leaky_relu", "aten::elu", "aten::zeros_like", "aten::ones_like",
    "aten::full_like", "aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::sign", "aten::floor", "aten::ceil",
    "aten::round", "aten::fill", "aten::atan", "aten::fmod"};

}  // namespace

void register_math_rules(RuleTable& t) {
  for (const char* k : kElementwise) {
    add_rule(t, k, elementwise_rule);
    add_rule(t, std::string(k) + "_", elementwise_rule);  // in-place variant
  }
  for (const char* k : {"aten::to", "aten::type_as", "aten::_to_copy", "aten::float", "aten::half", "aten::bfloat16"})
    add_rule(t, k, cast_rule);
  for (const char* k : {"aten::mean.dim", "aten::sum.dim_IntList", "aten::amax", "aten::amin", "aten::var.dim",
                        "aten::var.correction", "aten::std.dim", "aten::std.correction", "aten::logsumexp",
                        "aten::linalg_vector_norm", "aten::norm.ScalarOpt_dim", "aten::max.dim", "aten::min.dim",
                        "aten::mean", "aten::sum", "aten::var", "aten::std"})
    add_rule(t, k, reduction_rule);
  for (const char* k : {"aten::softmax.int", "aten::log_softmax.int", "aten::_softmax", "aten::_log_softmax"})
    add_rule(t, k, softmax_rule);
  for (const char* k : {"aten::tril", "aten::triu", "aten::tril_", "aten::triu_"}) add_rule(t, k, triangle_rule);
  add_rule(t, "aten::matmul", matmul_rule);
  add_rule(t, "aten::bmm", matmul_rule);
  add_rule(t, "aten::einsum", einsum_rule);
  add_rule(t, "aten::scaled_dot_product_attention", sdpa_rule);
  add_rule(t, "autotp::causal_attention", sdpa_rule);  // passes/sdpa.cpp: SDPA with the model's causal mask checked
}

}  // namespace autotp
