// ModelGraph — a TorchScript model seen as one flat graph with its parameters resolved.
//
// Preconditions: the archive loads with torch::jit::load and has a `forward` method.
// What it gives: a private, inlined copy of forward's graph (the module's own graphs are never
// touched: scripted submodules of one class share a graph), and for every value that reads a tensor
// parameter, buffer or frozen tensor constant, which tensor it is (tied weights resolve to one entry,
// by storage identity, whatever names point at them). Scalar module attributes read by the graph are
// named too, so a size that must shrink can be reported by the attribute that carries it.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

namespace autotp {

struct TensorEntry {
  std::string name;                  // dotted path without the root, e.g. model.layers.0.mlp.up_proj.weight
  std::vector<std::string> aliases;  // further names of the same storage
  at::Tensor tensor;
  bool trainable = false;            // nn.Parameter (or a frozen constant that was one)
};

// How the archive was made, as far as its graph shows: sizes read from module attributes (scripted),
// sizes baked into constants (traced), parameters folded into constants (frozen).
enum class GraphKind { Traced, Scripted, Frozen };
const char* graph_kind_name(GraphKind k);

struct ModelGraph {
  std::string path;
  torch::jit::Module module;
  std::shared_ptr<torch::jit::Graph> graph;  // inlined private copy of forward
  GraphKind kind = GraphKind::Scripted;
  std::vector<TensorEntry> tensors;          // parameters first (module order), then buffers/constants
  std::unordered_map<const torch::jit::Value*, int> tensor_of;         // value -> index into tensors
  std::unordered_map<const torch::jit::Value*, std::string> attribute_of;  // scalar attribute reads
};

// Loads and flattens. Throws autotp::Error naming the file for a missing or unreadable archive.
ModelGraph load_model_graph(const std::string& path);
ModelGraph model_graph_from(const torch::jit::Module& module, const std::string& label);

// The graph's nodes in order, nested blocks depth first: a node's position is its number in a plan.
std::vector<torch::jit::Node*> numbered_nodes(const torch::jit::Graph& graph);
// A digest of the graph's structure (node kinds and how values connect), to match a plan to it.
std::string graph_fingerprint(const torch::jit::Graph& graph);

// "[2, 8, 64]": a shape as the messages of passes/ print it.
std::string join_shape(const std::vector<int64_t>& shape);

// "file.py:123" as the graph records it, or "<unknown>".
std::string source_of(const torch::jit::Node* node);
// The module the node came from ("model.layers.0.self_attn"), from the trace scope or the inlined
// call stack; empty when the graph does not record it (a reloaded frozen graph).
std::string module_of(const ModelGraph& mg, const torch::jit::Node* node);

}  // namespace autotp
