#include "shape_probe.h"

#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/jit/runtime/operator.h>

#include "autotp/error.h"

namespace autotp {
namespace {

using torch::jit::Block;
using torch::jit::Node;
using torch::jit::Stack;
using torch::jit::Value;

struct Prober {
  const ModelGraph& mg;
  ProbeValues& env;

  c10::IValue get(const Value* v) {
    auto it = env.find(v);
    if (it != env.end()) return it->second;
    if (auto c = torch::jit::toIValue(v)) return *c;
    throw Error(mg.path + ": shape probe found no value for %" + v->debugName());
  }

  std::vector<c10::IValue> run_block(Block* b, const std::vector<c10::IValue>& inputs) {
    for (size_t i = 0; i < inputs.size(); ++i) env[b->inputs()[i]] = inputs[i];
    for (Node* n : b->nodes()) run_node(n);
    std::vector<c10::IValue> out;
    for (Value* v : b->outputs()) out.push_back(get(v));
    return out;
  }

  void run_node(Node* n) {
    const auto kind = n->kind();
    if (kind == c10::prim::Constant) {
      if (n->output()->type()->kind() != c10::TypeKind::FunctionType) env[n->output()] = get(n->output());
      return;
    }
    if (kind == c10::prim::GetAttr) {
      env[n->output()] = get(n->input(0)).toObject()->getAttr(n->s(c10::attr::name));
      return;
    }
    if (kind == c10::prim::If) {
      const bool cond = get(n->input(0)).toBool();
      auto outs = run_block(n->blocks()[cond ? 0 : 1], {});
      for (size_t i = 0; i < outs.size(); ++i) env[n->outputs()[i]] = outs[i];
      return;
    }
    if (kind == c10::prim::Loop) {
      const int64_t trips = get(n->input(0)).toInt();
      bool cond = get(n->input(1)).toBool();
      std::vector<c10::IValue> carried;
      for (size_t i = 2; i < n->inputs().size(); ++i) carried.push_back(get(n->input(i)));
      Block* body = n->blocks()[0];
      for (int64_t i = 0; i < trips && cond; ++i) {
        std::vector<c10::IValue> in{c10::IValue(i)};
        in.insert(in.end(), carried.begin(), carried.end());
        auto out = run_block(body, in);
        cond = out[0].toBool();
        carried.assign(out.begin() + 1, out.end());
      }
      for (size_t i = 0; i < carried.size(); ++i) env[n->outputs()[i]] = carried[i];
      return;
    }
    if (kind == c10::prim::ListConstruct) {
      c10::impl::GenericList list(n->output()->type()->expectRef<c10::ListType>().getElementType());
      list.reserve(n->inputs().size());
      for (Value* in : n->inputs()) list.push_back(get(in));
      env[n->output()] = c10::IValue(std::move(list));
      return;
    }
    if (kind == c10::prim::TupleConstruct) {
      std::vector<c10::IValue> elems;
      for (Value* in : n->inputs()) elems.push_back(get(in));
      env[n->output()] = c10::ivalue::Tuple::create(std::move(elems));
      return;
    }
    if (kind == c10::prim::TupleUnpack || kind == c10::prim::ListUnpack) {
      auto v = get(n->input(0));
      auto elems = v.isTuple() ? v.toTupleRef().elements().vec() : v.toList().vec();
      for (size_t i = 0; i < n->outputs().size(); ++i) env[n->outputs()[i]] = elems.at(i);
      return;
    }
    Stack stack;
    for (Value* in : n->inputs()) stack.push_back(get(in));
    try {
      auto op = n->getOperation();
      op(stack);
    } catch (const std::exception& e) {
      std::string what = e.what();
      auto nl = what.find('\n');
      throw Error(mg.path + ": shape probe could not run " + n->kind().toQualString() + " at " +
                  source_of(n) + " (" + what.substr(0, nl) + ")");
    }
    if (stack.size() != n->outputs().size())
      throw Error(mg.path + ": shape probe: " + std::string(n->kind().toQualString()) + " returned " +
                  std::to_string(stack.size()) + " values, expected " + std::to_string(n->outputs().size()));
    for (size_t i = 0; i < stack.size(); ++i) env[n->outputs()[i]] = std::move(stack[i]);
  }
};

}  // namespace

std::vector<c10::IValue> example_inputs(const ModelGraph& mg) {
  std::vector<c10::IValue> out;
  const auto& inputs = mg.graph->inputs();
  for (size_t i = 1; i < inputs.size(); ++i) {
    std::vector<int64_t> shape{2, 8};
    if (auto tt = inputs[i]->type()->cast<c10::TensorType>()) {
      if (auto sizes = tt->sizes().concrete_sizes()) shape = *sizes;
    } else {
      throw Error(mg.path + ": forward input '" + inputs[i]->debugName() + "' has type " +
                  inputs[i]->type()->str() + "; autotp expects token-id tensors only");
    }
    // Id 0 is valid for every vocabulary; an attention mask of zeros/ones is valid too.
    out.emplace_back(at::zeros(shape, at::kLong));
  }
  return out;
}

ProbeValues probe(const ModelGraph& mg, const std::vector<c10::IValue>& inputs) {
  // Gradients on: whether a value carries one decides where copy_to_tp goes (see passes/rules.h).
  c10::AutoGradMode grad(true);
  ProbeValues env;
  Prober p{mg, env};
  std::vector<c10::IValue> all{mg.module._ivalue()};
  all.insert(all.end(), inputs.begin(), inputs.end());
  p.run_block(mg.graph->block(), all);
  return env;
}

}  // namespace autotp
