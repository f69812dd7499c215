#include "model_graph.h"

#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <tuple>

#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/serialization/import.h>

#include "autotp/error.h"
#include "autotp/passes.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// Storage identity: two names for one tensor (tied embedding / lm-head) share storage, offset and shape.
using TensorKey = std::tuple<const void*, int64_t, std::vector<int64_t>>;
TensorKey key_of(const at::Tensor& t) {
  return {t.storage().data(), t.storage_offset(), t.sizes().vec()};
}

std::string strip_self(const std::string& name) {
  return name.rfind("self.", 0) == 0 ? name.substr(5) : name;
}

struct Resolver {
  ModelGraph& mg;
  std::map<TensorKey, int> by_key;

  int add(const std::string& name, const at::Tensor& t, bool trainable) {
    auto key = key_of(t);
    auto it = by_key.find(key);
    if (it != by_key.end()) {
      auto& e = mg.tensors[it->second];
      if (e.name != name && std::find(e.aliases.begin(), e.aliases.end(), name) == e.aliases.end())
        e.aliases.push_back(name);
      e.trainable = e.trainable || trainable;
      return it->second;
    }
    mg.tensors.push_back(TensorEntry{name, {}, t, trainable});
    by_key.emplace(key, static_cast<int>(mg.tensors.size()) - 1);
    return static_cast<int>(mg.tensors.size()) - 1;
  }

  void resolve() {
    // Parameters and buffers in module order, so the plan lists them as the model declares them.
    for (const auto& p : mg.module.named_parameters(/*recurse=*/true)) add(p.name, p.value, true);
    for (const auto& b : mg.module.named_buffers(/*recurse=*/true)) add(b.name, b.value, false);

    std::unordered_map<const Value*, c10::intrusive_ptr<c10::ivalue::Object>> objects;
    std::unordered_map<const Value*, std::string> paths;
    auto* self = mg.graph->inputs().at(0);
    objects[self] = mg.module._ivalue();
    paths[self] = "";
    for (Node* n : numbered_nodes(*mg.graph)) {  // nested blocks too: attributes read inside an if
      if (n->kind() == c10::prim::GetAttr) {
        auto it = objects.find(n->input(0));
        if (it == objects.end()) continue;
        const std::string& field = n->s(c10::attr::name);
        const std::string path = paths[n->input(0)].empty() ? field : paths[n->input(0)] + "." + field;
        auto obj = it->second;
        auto slot = obj->type()->findAttributeSlot(field);
        if (!slot) continue;
        c10::IValue v = obj->getSlot(*slot);
        if (v.isObject()) {
          objects[n->output()] = v.toObject();
          paths[n->output()] = path;
        } else if (v.isTensor()) {
          mg.tensor_of[n->output()] = add(path, v.toTensor(), obj->type()->is_parameter(*slot));
        } else if (v.isInt() || v.isDouble() || v.isBool()) {
          mg.attribute_of[n->output()] = path;
        }
      }
    }
    if (!mg.module.named_parameters(true).size()) resolve_frozen_constants();
  }

  // Frozen graphs hold weights as tensor constants. Freshly frozen graphs name them after the
  // attribute path ("self.layers.0.mlp.up_proj.weight"); a saved and reloaded one has lost every
  // name, so those are named frozen.N in the order the graph first reads them.
  void resolve_frozen_constants() {
    int counter = 0;
    for (Node* n : numbered_nodes(*mg.graph)) {
      for (Value* in : n->inputs()) {
        Node* c = in->node();
        if (c->kind() != c10::prim::Constant || in->type()->kind() != c10::TypeKind::TensorType) continue;
        if (mg.tensor_of.count(in)) continue;
        at::Tensor t = c->t(c10::attr::value);
        if (t.dim() == 0) continue;
        const auto& debug = in->debugName();
        std::string name = debug.rfind("self.", 0) == 0 ? strip_self(debug) : "frozen." + std::to_string(counter++);
        mg.tensor_of[in] = add(name, t, true);
      }
    }
  }
};

}  // namespace

const char* graph_kind_name(GraphKind k) {
  switch (k) {
    case GraphKind::Traced: return "traced";
    case GraphKind::Scripted: return "scripted";
    case GraphKind::Frozen: return "frozen";
  }
  return "?";
}

std::vector<Node*> numbered_nodes(const torch::jit::Graph& graph) {
  std::vector<Node*> out;
  // Depth first, in program order: a block's nodes, each followed by its own nested blocks.
  std::function<void(torch::jit::Block*)> visit = [&](torch::jit::Block* b) {
    for (Node* n : b->nodes()) {
      out.push_back(n);
      for (auto* inner : n->blocks()) visit(const_cast<torch::jit::Block*>(inner));
    }
  };
  visit(const_cast<torch::jit::Block*>(graph.block()));
  return out;
}

std::string graph_fingerprint(const torch::jit::Graph& graph) {
  // FNV-1a over each node's kind and, for each input, the number of the node that made it.
  std::unordered_map<const Value*, int64_t> made_by;
  for (size_t i = 0; i < graph.inputs().size(); ++i) made_by[graph.inputs()[i]] = -1 - static_cast<int64_t>(i);
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t x) {
    for (int b = 0; b < 8; ++b) {
      h ^= (x >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  };
  int64_t k = 0;
  auto nodes = numbered_nodes(graph);
  for (Node* n : nodes) {
    for (auto* out : n->outputs()) made_by[out] = k;
    for (auto* b : n->blocks())
      for (auto* in : b->inputs()) made_by[in] = k;
    mix(std::hash<std::string>{}(n->kind().toQualString()));
    for (auto* in : n->inputs()) {
      auto it = made_by.find(in);
      mix(static_cast<uint64_t>(it == made_by.end() ? 1 << 30 : it->second));
    }
    ++k;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "%zu-%016llx", nodes.size(), static_cast<unsigned long long>(h));
  return buf;
}

std::string join_shape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string source_of(const Node* node) {
  auto range = node->sourceRange();
  if (auto generated = range.findSourceRangeThatGenerated()) range = *generated;
  if (auto flc = range.file_line_col()) {
    std::string file = std::get<0>(*flc);
    file = std::filesystem::path(file).filename().string();
    return file + ":" + std::to_string(std::get<1>(*flc));
  }
  return "<unknown>";
}

namespace {
// Instance names on the call stack skip containers (a ModuleList is iterated, never called):
// find `name` as a child, or as a grandchild through one container, and return its dotted path.
std::string descend(torch::jit::Module& at_module, const std::string& name) {
  for (const auto& child : at_module.named_children()) {
    if (child.name == name) {
      at_module = child.value;
      return name;
    }
  }
  for (const auto& child : at_module.named_children()) {
    for (const auto& grand : child.value.named_children()) {
      if (grand.name == name) {
        at_module = grand.value;
        return child.name + "." + name;
      }
    }
  }
  return name;
}
}  // namespace

std::string module_of(const ModelGraph& mg, const Node* cnode) {
  auto* node = const_cast<Node*>(cnode);  // scope() is not const-qualified in LibTorch
  // Traced graphs: scope "__module.model/__module.model.layers.0/__module.model.layers.0.self_attn".
  if (node->scope() && !node->scope()->isBlank()) {
    std::string names = node->scope()->namesFromRoot();
    auto slash = names.rfind('/');
    std::string last = slash == std::string::npos ? names : names.substr(slash + 1);
    const std::string prefix = "__module.";
    if (last.rfind(prefix, 0) == 0) return last.substr(prefix.size());
    if (last == "__module") return "";
    return last;
  }
  // Scripted graphs after inlining: the call stack remembers each module instance.
  if (auto cs = node->callstack()) {
    std::string path;
    torch::jit::Module at_module = mg.module;
    for (auto& entry : (*cs)->vec()) {
      const auto& info = std::get<2>(entry);
      if (!info) continue;
      const std::string name = info->instance_name();
      if (name.empty() || name == "__module" || name == "self" || name == "SELF") continue;
      const std::string step = descend(at_module, name);
      path = path.empty() ? step : path + "." + step;
    }
    return path;
  }
  return "";
}

ModelGraph model_graph_from(const torch::jit::Module& module, const std::string& label) {
  ModelGraph mg;
  mg.path = label;
  mg.module = module;
  auto method = module.find_method("forward");
  if (!method)
    throw Error(label + ": the TorchScript module has no forward method; export the model with "
                "torch.jit.trace or torch.jit.script");
  mg.graph = method->graph()->copy();
  torch::jit::Inline(*mg.graph);
  // Branches on constants (F.relu's `inplace`, dropout's `training`) disappear here, so the
  // propagation sees straight-line code where the model has no real control flow.
  torch::jit::ConstantPropagation(mg.graph);

  Resolver{mg, {}}.resolve();
  // A saved archive does not say how it was made. Scripted code reads its sizes from module
  // attributes; a trace has baked them into constants; freezing turned the parameters into constants.
  const bool traced = mg.attribute_of.empty();
  // Freezing folds every parameter into a graph constant: a module without parameters whose graph
  // reads named tensor constants is a frozen one.
  if (module.named_parameters(true).size() == 0 && !mg.tensor_of.empty())
    mg.kind = GraphKind::Frozen;
  else
    mg.kind = traced ? GraphKind::Traced : GraphKind::Scripted;
  return mg;
}

torch::jit::Module load_model(const std::string& path) {
  if (!std::filesystem::exists(path))
    throw Error(path + ": no such file; pass a TorchScript archive (.pt) saved with torch.jit.save");
  if (std::filesystem::is_directory(path))
    throw Error(path + ": is a directory; pass a TorchScript archive (.pt) saved with torch.jit.save");
  torch::jit::Module m;
  try {
    m = torch::jit::load(path, c10::kCPU);
  } catch (const std::exception& e) {
    std::string what = e.what();
    auto nl = what.find('\n');
    if (nl != std::string::npos) what = what.substr(0, nl);
    std::string hint = what.find("autotp") != std::string::npos || what.find("Unknown builtin op") != std::string::npos
                           ? "; a rewritten archive needs libautotp loaded (link it, or torch.ops.load_library)"
                           : "; save the model with torch.jit.save";
    throw Error(path + ": not a readable TorchScript archive (" + what + ")" + hint);
  }
  follow_parameter_dtype(m);
  return m;
}

ModelGraph load_model_graph(const std::string& path) { return model_graph_from(load_model(path), path); }

}  // namespace autotp
