// autotp verify — proves a rewrite equal to the unsharded model on one random batch.
//
// Forward and backward of the tp rank modules (ranks as threads over gloo, or one rank per process
// under torchrun) against the original module on the same batch and the same loss (next-token
// cross-entropy, mean over tokens; the sharded side uses the vocab-parallel cross-entropy).
// Relative error of a quantity = max |sharded − reference| / max |reference|, over the whole
// tensor (re-assembled from the shards) — an elementwise ratio is meaningless where values cross 0.
// A gradient's scale is never taken below a thousandth of the model's largest gradient: some are
// zero analytically and hold only rounding (see gradient_floor in verify.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <torch/csrc/jit/api/module.h>

#include "autotp/mesh.h"
#include "autotp/plan.h"

namespace autotp {

struct VerifyOptions {
  int tp = 2;
  std::string dtype = "fp32";  // fp32 | bf16
  int64_t batch = 0;           // 0: as the model was traced (2 for scripted models)
  int64_t seq = 0;             // 0: as the model was traced (8 for scripted models)
  uint64_t seed = 1234;
  bool per_parameter = false;  // list every parameter's gradient error in text()
  // The ranks run the model with its eager causal attention made scaled_dot_product_attention
  // (use_sdpa); the reference stays the model as it is. Proves the pass and the sharding together.
  bool sdpa = false;
  // cpu | cuda: where the reference and the ranks (threads of this process, over gloo, which takes
  // CUDA tensors: one GPU can host every rank) compute. verify_on_mesh uses the mesh's device.
  std::string device = "cpu";
};

struct VerifyReport {
  std::string model;
  int tp = 0;
  std::string dtype;
  std::vector<int64_t> input_shape;
  double tolerance = 0;
  double logits_rel = 0, loss_rel = 0, grads_rel = 0;
  double loss_reference = 0, loss_sharded = 0;
  std::string worst_grad;   // parameter with the largest gradient error
  int grads_compared = 0;   // 0 for a frozen archive (no trainable parameters)
  std::vector<std::pair<std::string, double>> grad_errors;  // every parameter, in module order
  bool per_parameter = false;
  int sdpa_sites = -1;  // attention sites the ranks run as scaled_dot_product_attention (-1: not asked)
  bool vocab_split = false;
  // Rank 0's tp group over the one forward+backward: by op site and by collective kind.
  std::map<std::string, CollectiveCount> tp_by_site, tp_by_kind;
  bool ok() const { return logits_rel <= tolerance && loss_rel <= tolerance && grads_rel <= tolerance; }
  // The worst quantity above tolerance as one phrase ("gradient of model.norm.weight off by
  // 1.13e+00"; a gradient before logits before loss, since a parameter says where to look);
  // empty when ok().
  std::string failure() const;
  std::string text() const;
};

// Ranks as threads of this process, each with its own gloo mesh over a HashStore.
VerifyReport verify_threads(const std::string& model_path, const VerifyOptions& options);

// This process is one rank of `mesh` (torchrun); mesh.tp() must equal options.tp and dp must be 1.
// Every rank gets the same report (errors are max-reduced over the mesh).
VerifyReport verify_on_mesh(const std::string& model_path, const VerifyOptions& options, Mesh& mesh);

// One rank's comparison, the part every mode shares: `original` (unsharded) and `mine` (this
// rank's rewrite of it by `plan`) do forward + backward on the same random batch of `shape`
// ([B, S], token ids from `seed`); this rank compares its logits (its vocab slice when split),
// the loss and every gradient (its slice of a split parameter's, a replicated one's whole) with
// the reference. Errors are max-reduced over mesh's world group, so every rank of every TP group
// (dp > 1 included) gets the same report. `mesh` must be the thread's current mesh (the rank
// module's ops use it). The modules' gradients are those of this batch afterwards: clear them
// before training. Throws autotp::Error naming the shape when the original cannot run it.
VerifyReport verify_rank(torch::jit::Module& original, const TpPlan& plan, torch::jit::Module& mine,
                         const std::vector<int64_t>& shape, uint64_t seed, Mesh& mesh);

// The input shape the analysis probes: what forward was traced with, [2, 8] for a scripted graph.
std::vector<int64_t> example_shape(const torch::jit::Module& module);

// fp32: 1e-5; bf16: see verify.cpp.
double verify_tolerance(const std::string& dtype);

}  // namespace autotp
