// A trace made in bf16 computes in its parameters' dtype (follow_parameter_dtype, set_compute_dtype).
//
// Preconditions: a module as loaded from an archive (load_model calls this on every one).
// Why: a trace bakes every dtype it saw into a constant. Traced in fp32, the casts back to the
// activations' dtype (RMSNorm's `.to(input_dtype)`, rotary's `.to(x.dtype)`, attention's
// `.to(query.dtype)` after an fp32 softmax) read 6 (float), exactly like the deliberate upcasts to
// fp32, so such a graph cannot be moved to bf16 soundly. Traced in bf16 they read 15 (bfloat16)
// while the upcasts still read 6: every dtype argument that reads 15 names the model's compute
// dtype. Those arguments are made to read the dtype of one 0-dim buffer, `autotp_compute_dtype`,
// and the module goes to fp32 with it. The module then computes the fp32 function the bf16 trace
// stands for (so verify and the trainer's sharding check hold it to fp32 tolerances), and
// set_compute_dtype(bf16) gives back the trace's own bf16 computation, op for op.
#include <ATen/ATen.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/inliner.h>

#include "autotp/error.h"
#include "autotp/passes.h"

namespace autotp {
namespace {

constexpr const char* kBuffer = "autotp_compute_dtype";

bool all_floating_bf16(const torch::jit::Module& m) {
  bool any = false;
  for (const auto& p : m.parameters(/*recurse=*/true)) {
    if (!p.is_floating_point()) continue;
    if (p.scalar_type() != at::kBFloat16) return false;
    any = true;
  }
  return any;
}

// Input i of n is a dtype argument (ScalarType or ScalarType?) by its schema.
bool is_dtype_argument(const torch::jit::Node* n, size_t i) {
  const c10::FunctionSchema* schema = n->maybeSchema();
  if (!schema || i >= schema->arguments().size()) return false;
  c10::TypePtr t = schema->arguments()[i].real_type();
  if (auto opt = t->cast<c10::OptionalType>()) t = opt->getElementType();
  return t->kind() == c10::TypeKind::ScalarTypeType;
}

bool reads_bf16(const torch::jit::Value* v) {
  const torch::jit::Node* c = v->node();
  if (c->kind() != c10::prim::Constant || !v->type()->cast<c10::IntType>()) return false;
  return c->i(c10::attr::value) == static_cast<int64_t>(at::kBFloat16);
}

// Every (node, input) in the graph, nested blocks included, whose dtype argument reads bf16.
void collect(torch::jit::Block* b, std::vector<std::pair<torch::jit::Node*, size_t>>& out) {
  for (torch::jit::Node* n : b->nodes()) {
    for (size_t i = 0; i < n->inputs().size(); ++i)
      if (reads_bf16(n->input(i)) && is_dtype_argument(n, i)) out.emplace_back(n, i);
    for (torch::jit::Block* inner : n->blocks()) collect(inner, out);
  }
}

}  // namespace

bool follow_parameter_dtype(torch::jit::Module& m) {
  if (m.hasattr(kBuffer) || !m.find_method("forward") || !all_floating_bf16(m)) return false;
  auto graph = m.get_method("forward").graph();
  std::vector<std::pair<torch::jit::Node*, size_t>> sites;
  collect(graph->block(), sites);
  if (sites.empty()) {
    // Maybe inside submodules' methods: look in an inlined copy before touching the module.
    auto copy = graph->copy();
    torch::jit::Inline(*copy);
    collect(copy->block(), sites);
    if (sites.empty()) return false;
  }
  torch::jit::Inline(*graph);  // one graph holds every cast (a trace calls each submodule's forward)
  sites.clear();
  collect(graph->block(), sites);
  m.register_buffer(kBuffer, at::zeros({}, at::kBFloat16));
  torch::jit::WithInsertPoint guard(graph->block()->nodes().front());
  torch::jit::Value* buffer = graph->insertGetAttr(graph->inputs().at(0), kBuffer);
  torch::jit::Value* dtype = graph->insert(c10::prim::dtype, {buffer});
  for (auto& [n, i] : sites) n->replaceInput(i, dtype);
  set_compute_dtype(m, at::kFloat);
  return true;
}

bool follows_parameter_dtype(const torch::jit::Module& m) { return m.hasattr(kBuffer); }

void set_compute_dtype(torch::jit::Module& m, at::ScalarType dtype) {
  if (!follows_parameter_dtype(m)) {
    m.to(dtype);
    return;
  }
  // Parameters and the dtype buffer only: other buffers keep the dtype the model gave them (the
  // rotary inv_freq stays fp32 in a bf16 Hugging Face model, and a bf16 copy would move the angles).
  for (const auto& p : m.named_parameters(/*recurse=*/true))
    if (p.value.is_floating_point()) p.value.set_data(p.value.detach().to(dtype));
  m.register_buffer(kBuffer, at::zeros({}, dtype));
}

}  // namespace autotp
