// autotp public C++ API of passes/: load a TorchScript model, plan it, rewrite it into one rank's
// tensor-parallel module. Pair with autotp/mesh.h (runtime/) to run the result.
//
//   auto model = autotp::load_model("llama.pt");
//   autotp::TpPlan plan = autotp::plan_model(model, 2, "llama.pt");
//   torch::jit::Module mine = autotp::rewrite(model, plan, mesh->tp_rank());
//   mine.save("llama.tp2.rank0.pt");   // loads again wherever libautotp.so is loaded
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/csrc/jit/api/module.h>

#include "autotp/error.h"
#include "autotp/plan.h"

namespace autotp {

// torch::jit::load with a one-line autotp::Error for a missing or unreadable file. A trace made in
// bf16 comes back computing in its parameters' dtype, in fp32 (follow_parameter_dtype).
torch::jit::Module load_model(const std::string& path);

// A trace made in bf16 (every floating parameter bf16, dtype arguments that read bf16): those
// arguments are made to read the dtype of the 0-dim buffer `autotp_compute_dtype` (the forward is
// inlined first), and parameters and buffer go to fp32. The module then computes the fp32 function
// the trace stands for; set_compute_dtype(m, bf16) gives back the trace's bf16 computation. Returns
// whether it changed the module (false for fp32 traces, whose casts cannot be told apart from the
// deliberate fp32 upcasts, and for scripted code, which reads dtypes at run time already).
bool follow_parameter_dtype(torch::jit::Module& m);
bool follows_parameter_dtype(const torch::jit::Module& m);
// Hugging Face's eager causal attention (q·kᵀ·scale + mask, softmax, ·v) replaced by
// autotp::causal_attention, scaled_dot_product_attention(is_causal=True), wherever the mask is built
// from sizes alone (passes/sdpa.cpp; the op checks on every call that the mask is the causal one).
// Inlines forward. Returns the number of attention sites replaced (0: none matched, left eager).
int use_sdpa(torch::jit::Module& m);

// The module's floating parameters (and compute dtype) to `dtype`; other buffers keep theirs when the
// module follows its parameters' dtype (a bf16 model's fp32 rotary table). Otherwise module.to(dtype).
void set_compute_dtype(torch::jit::Module& m, at::ScalarType dtype);

// The plan for tp ranks (as `autotp inspect` prints it); `label` names the model in messages.
TpPlan plan_model(const torch::jit::Module& module, int tp, const std::string& label);

// A plan a user edited (e.g. a linear kept replicated), checked against the analysis of `module`
// with those edits: returns the consistent plan (with fresh graph sites), or throws autotp::Error
// naming the first parameter whose placement no longer follows.
TpPlan check_plan(const torch::jit::Module& module, const TpPlan& edited, const std::string& label);

// A new module for tensor-parallel rank `tp_rank` of plan.tp: the input is untouched (its classes
// are cloned, so scripted submodules sharing one graph stay as they were); split parameters are
// replaced by this rank's contiguous slices, replicated ones by private copies; recorded sizes are
// rescaled; copy_to_tp / reduce_from_tp / vocab_parallel_embedding are in its forward graph.
// No analysis runs: the plan's graph sites say where to edit.
// Its logits stay split over the vocabulary (see RewriteInfo). Throws autotp::Error when the plan
// was made for another model.
torch::jit::Module rewrite(const torch::jit::Module& module, const TpPlan& plan, int tp_rank);

// What rewrite() recorded on the module (attributes autotp_tp, autotp_tp_rank, autotp_vocab,
// autotp_split, autotp_layout).
struct RewriteInfo {
  int tp = 0;             // 0: not a rewritten module
  int tp_rank = 0;
  int64_t vocab = 0;      // full vocabulary when the logits are vocab-split, else 0
  std::vector<std::string> split;  // names of the parameters that are TP shards (all names of tied ones)
  // The plan's parameters as autotp_layout records them (name, aliases, full shape, dtype, placement,
  // split_dim, segments, padded, units; no reasons or bytes); empty for archives written before it existed.
  std::vector<ParamPlan> params;
};
RewriteInfo rewrite_info(const torch::jit::Module& module);

// Where rank `rank` of `tp` cuts a split parameter whose split dim is `extent` long (padding
// included): one (start, length) per fused segment (one for an unfused parameter). Even: extent/tp
// each; uneven (p.units): that rank's whole units.
std::vector<std::pair<int64_t, int64_t>> rank_slices(const ParamPlan& p, int64_t extent, int tp, int rank);
// The shape of that rank's part (the full shape when replicated).
std::vector<int64_t> local_shape(const ParamPlan& p, int tp, int rank);
// This rank's part of a parameter as the plan splits it: a contiguous slice of split_dim, or for a
// fused projection its slice of every segment; the tensor itself when replicated.
at::Tensor shard_of(const at::Tensor& full, const ParamPlan& p, int tp, int rank);
// The whole tensor from every rank's part, in rank order (the inverse of shard_of).
at::Tensor assemble(const std::vector<at::Tensor>& parts, const ParamPlan& p);

// The full parameters of a model from all of its rank modules (tp_rank order, as rewrite() made
// them): each split parameter assembled by the recorded layout (vocab padding stripped), replicated
// ones from rank 0, tied tensors once under their first name; in the plan's parameter order.
// Throws autotp::Error when ranks are missing, duplicated or come from different plans.
std::vector<std::pair<std::string, at::Tensor>> merge_ranks(const std::vector<torch::jit::Module>& ranks);

// The logits a model's forward returned: the tensor itself, or the first tensor of a tuple/list
// (Hugging Face models exported with return_dict=False). Throws autotp::Error when there is none.
at::Tensor logits_of(const c10::IValue& output);

}  // namespace autotp
