// Shape probe — runs a ModelGraph's flat graph once, node by node, on example inputs and records the
// concrete value of every value it computes (tensors, ints, lists).
//
// Why: scripted and frozen graphs carry no shapes, and the reshape rules need the concrete sizes on
// both sides of a view. Executing the real ops is exact where symbolic shape inference is partial.
// Preconditions: the graph is inlined (no CallMethod); control flow (If/Loop) is followed as taken.
#pragma once

#include <unordered_map>
#include <vector>

#include <ATen/core/ivalue.h>

#include "model_graph.h"

namespace autotp {

using ProbeValues = std::unordered_map<const torch::jit::Value*, c10::IValue>;

// Token ids shaped like the trace recorded them (or [2, 8] for scripted graphs), all valid ids.
std::vector<c10::IValue> example_inputs(const ModelGraph& mg);

// Throws autotp::Error naming the op and its source location if a node cannot run.
ProbeValues probe(const ModelGraph& mg, const std::vector<c10::IValue>& inputs);

}  // namespace autotp
