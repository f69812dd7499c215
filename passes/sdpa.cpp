// Eager causal attention -> one fused attention op (use_sdpa).
//
// Preconditions: a module whose forward may be inlined (load_model's modules).
// Pattern, as Hugging Face's eager_attention_forward traces it (Llama, Mistral, Qwen2/3, Phi-3,
// OLMo2, Granite, Cohere, ...):
//   s = matmul(q, transpose(k, -2, -1)) [* c | / c]      c a constant: the scale
//   p = softmax(s + mask, -1 [, dtype]) [.to(dtype)] [dropout(p=0 or train=False)]
//   o = matmul(p, v)
// with every intermediate used once, becomes o = autotp::causal_attention(q, k, v, mask, scale):
// scaled_dot_product_attention(is_causal=True), with no [b, h, s, s] scores kept for backward.
// Only when the mask is built from sizes alone (it reads no input's values: no padding mask) —
// that is what makes it a function of the shape that can be the causal one. Whether it is, for
// this shape, is checked where it is used, on every call (the op's kernel, runtime/tp_ops.cpp: a
// sliding window shorter than the sequence, for one, is not causal): one line names it and says
// to run without --sdpa. Anything else (a learned or per-head bias, soft-capping, a tensor scale,
// attention with dropout) stays eager.
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <optional>
#include <set>

#include "autotp/passes.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;

std::optional<double> constant_number(const Value* v) {
  const Node* n = v->node();
  if (n->kind() != c10::prim::Constant || !n->hasAttribute(c10::attr::value)) return std::nullopt;
  if (v->type()->cast<c10::FloatType>()) return n->f(c10::attr::value);
  if (v->type()->cast<c10::IntType>()) return static_cast<double>(n->i(c10::attr::value));
  if (v->type()->cast<c10::TensorType>() && n->kindOf(c10::attr::value) == torch::jit::AttributeKind::t) {
    const at::Tensor& t = n->t(c10::attr::value);  // a trace's scale: a 0-dim tensor constant
    if (t.numel() == 1 && t.is_floating_point()) return t.item<double>();
  }
  return std::nullopt;
}

bool is(const Node* n, const char* kind) { return n->kind() == c10::Symbol::fromQualString(kind); }
bool used_once(const Value* v) { return v->uses().size() == 1; }
bool constant_is(const Value* v, double want) {
  auto c = constant_number(v);
  return c && *c == want;
}
bool constant_false(const Value* v) {
  const Node* n = v->node();
  return n->kind() == c10::prim::Constant && v->type()->cast<c10::BoolType>() && n->i(c10::attr::value) == 0;
}

// The mask reads graph inputs only through their sizes and metadata (module attributes and
// constants are fine): a function of the input's shape, not of its values.
bool built_from_sizes(const Value* mask, const Value* self) {
  std::set<const Value*> seen;
  std::vector<const Value*> todo{mask};
  while (!todo.empty()) {
    const Value* v = todo.back();
    todo.pop_back();
    if (!seen.insert(v).second || v == self) continue;
    const Node* n = v->node();
    if (n->kind() == c10::prim::Param) return false;  // an input's values
    if (is(n, "aten::size") || is(n, "prim::device") || is(n, "prim::dtype") || is(n, "aten::dim") ||
        is(n, "prim::layout") || is(n, "aten::len"))
      continue;  // metadata of whatever it reads
    if (!n->blocks().empty()) return false;  // control flow: not followed
    for (const Value* in : n->inputs()) todo.push_back(in);
  }
  return true;
}

struct Match {
  Node* pv = nullptr;
  Value *q = nullptr, *k = nullptr, *v = nullptr, *mask = nullptr;
  double scale = 1.0;
};

// The attention that ends in matmul `pv`, if it is the pattern.
std::optional<Match> match_at(Node* pv, const Value* self) {
  if (!is(pv, "aten::matmul")) return std::nullopt;
  Match m;
  m.pv = pv;
  m.v = pv->input(1);
  Value* p = pv->input(0);
  if (!used_once(p)) return std::nullopt;
  if (is(p->node(), "aten::dropout")) {
    Node* d = p->node();
    if (!constant_is(d->input(1), 0.0) && !constant_false(d->input(2))) return std::nullopt;
    p = d->input(0);
    if (!used_once(p)) return std::nullopt;
  }
  if (is(p->node(), "aten::to")) {  // back to the activations' dtype after an fp32 softmax
    p = p->node()->input(0);
    if (!used_once(p)) return std::nullopt;
  }
  Node* sm = p->node();
  if (!is(sm, "aten::softmax") || !constant_is(sm->input(1), -1)) return std::nullopt;
  Value* logits = sm->input(0);
  Node* add = logits->node();
  if (!used_once(logits) || !is(add, "aten::add") || add->inputs().size() != 3 || !constant_is(add->input(2), 1))
    return std::nullopt;
  for (int side = 0; side < 2; ++side) {
    Value* s = add->input(side);
    Value* mask = add->input(1 - side);
    if (!used_once(s)) continue;
    double scale = 1.0;
    Node* sn = s->node();
    if (is(sn, "aten::mul") || is(sn, "aten::div")) {
      auto c = constant_number(sn->input(1));
      if (!c || *c == 0) continue;
      scale = is(sn, "aten::mul") ? *c : 1.0 / *c;
      s = sn->input(0);
      if (!used_once(s)) continue;
      sn = s->node();
    }
    if (!is(sn, "aten::matmul")) continue;
    Value* kt = sn->input(1);
    Node* t = kt->node();
    if (!used_once(kt) || !is(t, "aten::transpose")) continue;
    auto a = constant_number(t->input(1)), b = constant_number(t->input(2));
    if (!a || !b) continue;
    const std::set<double> dims{*a, *b};
    if (dims != std::set<double>{-2, -1} && dims != std::set<double>{2, 3}) continue;
    if (!built_from_sizes(mask, self)) continue;
    m.q = sn->input(0);
    m.k = t->input(0);
    m.mask = mask;
    m.scale = scale;
    return m;
  }
  return std::nullopt;
}

}  // namespace

int use_sdpa(torch::jit::Module& module) {
  auto graph = module.get_method("forward").graph();
  torch::jit::Inline(*graph);
  torch::jit::EliminateDeadCode(graph);  // a trace's unused attention-weights outputs
  const Value* self = graph->inputs().at(0);
  std::vector<Match> found;
  for (Node* n : graph->nodes())
    if (auto m = match_at(n, self)) found.push_back(*m);
  for (const Match& m : found) {
    torch::jit::WithInsertPoint guard(m.pv);
    Value* scale = graph->insertConstant(m.scale);
    Value* out = graph->insert(c10::Symbol::fromQualString("autotp::causal_attention"), {m.q, m.k, m.v, m.mask, scale});
    out->setType(m.pv->output()->type());
    m.pv->output()->replaceAllUsesWith(out);
  }
  torch::jit::EliminateDeadCode(graph);
  return static_cast<int>(found.size());
}

}  // namespace autotp
