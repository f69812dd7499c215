// Tensor-parallel analysis: sharding propagation over a ModelGraph, read off as a TpPlan.
//
// Preconditions: a ModelGraph (inlined forward) and its probe values (concrete sizes of every value).
// Method: every linear whose input is replicated is tried column-parallel (output split on its
// feature dim); the split is propagated through views/reshapes (DESIGN.md's three reshape rules),
// transposes, expands, element-wise ops, matmuls, softmax, scaled_dot_product_attention and rotary
// embeddings. A linear whose input arrives split on its contraction dim is row-parallel (output
// all-reduced). Embeddings are vocab-parallel; a column-parallel output that leaves the graph is a
// vocab-split lm-head. A known op that needs the full split dim (a norm over it, a softmax over it)
// sends the linears the split came from back to replicated, and propagation restarts. An op the
// rules do not know, on a split value, is an error naming the op, its source location and shape.
// Parameter names are never consulted.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "autotp/plan.h"
#include "model_graph.h"
#include "shape_probe.h"

namespace autotp {

// The plan's structure, independent of tp; node pointers refer to ModelGraph::graph.
struct ShardingStructure {
  enum class Mode { Column, Row, Replicated };
  struct Linear {
    torch::jit::Node* node = nullptr;
    int weight = -1;  // index into ModelGraph::tensors
    int bias = -1;
    Mode mode = Mode::Replicated;
    std::string reason;
    bool logits = false;           // column-parallel output leaves the graph (vocab-split lm-head)
    int64_t heads = 0;             // pieces its output is split into by a view (attention heads)
    std::vector<int> feeds;        // row linears its split output reaches (for column)
    std::vector<int> fed_by;       // column linears whose split reaches it (for row)
  };
  struct Embedding {
    torch::jit::Node* node = nullptr;
    int weight = -1;
  };
  struct Rescale {
    torch::jit::Node* node = nullptr;  // the op that takes the size list
    size_t list_input = 1;             // which input of node is the list (a prim::ListConstruct)
    size_t list_index = 0;             // position in the size list
    int64_t from = 0;
    std::string value;                 // constant / attribute / expression it reads
    std::vector<int> origins;          // column linears the split comes from
  };
  struct Constraint {
    int64_t extent = 0;
    std::string kind;  // heads | features | vocabulary | size
    int linear = -1;
    int tensor = -1;
    torch::jit::Node* node = nullptr;
  };
  std::vector<Linear> linears;
  std::vector<Embedding> embeddings;
  std::vector<Rescale> rescales;
  std::vector<Constraint> constraints;
  std::map<int, std::string> tensor_use;  // tensors read outside linear/embedding: first such op
};

// Throws autotp::Error for graphs the rules do not cover.
ShardingStructure propagate(const ModelGraph& mg, const ProbeValues& values);

// Turns the structure into a plan for one tp; throws autotp::Error when tp does not divide a split
// dimension (naming each one and listing the valid tp values) or when no transformer block exists.
TpPlan make_plan(const ModelGraph& mg, const ShardingStructure& s, int tp);

// load-free convenience: probe + propagate + make_plan.
TpPlan analyze(const ModelGraph& mg, int tp);

}  // namespace autotp
