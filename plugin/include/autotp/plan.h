// TpPlan — the declarative tensor-parallel plan for one model at one tp size. Produced by the
// analysis (passes/analyze), printed by `autotp inspect`, consumed by the rewrite. Plain data only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace autotp {

enum class Placement { Column, Row, Vocab, Replicated };
const char* placement_name(Placement p);

struct ParamPlan {
  std::string name;                  // first name the module gives the tensor
  std::vector<std::string> aliases;  // other names of the same tensor (tied weights)
  std::vector<int64_t> shape;        // full (unsharded) shape
  std::string dtype;
  Placement placement = Placement::Replicated;
  int split_dim = -1;                // 0 for column/vocab, 1 for row, -1 when replicated
  std::string reason;
  int64_t bytes = 0;                 // full size
  int64_t bytes_per_rank = 0;        // this rank's share at the plan's tp
};

// A size that sits on a split dim and must shrink by tp: a constant or a module attribute read at
// one use (op argument) in the graph.
struct RescaleSite {
  std::string where;   // e.g. "aten::view size[2] in model.layers.0.self_attn"
  std::string value;   // what the graph reads there: "constant", "attribute layers.0.self_attn.num_heads"
  int64_t from = 0;
  int64_t to = 0;
  std::string source;  // file:line the graph records, or "<unknown>"
};

// A place a collective goes.
struct CollectiveSite {
  std::string kind;    // copy_to_tp | reduce_from_tp | vocab_embedding_reduce | vocab_parallel_logits
  std::string where;   // the parameter(s) it belongs to
  std::string source;
};

// A dimension the plan splits; tp must divide its extent.
struct SplitConstraint {
  std::string dimension;  // "attention heads", "kv heads", "intermediate size", "vocabulary", ...
  int64_t extent = 0;
  std::string where;
  std::string source;
};

struct PlanBytes {
  int64_t total = 0;       // all parameters, full size, tied tensors once
  int64_t per_rank = 0;    // replicated + split / tp
  int64_t replicated = 0;  // parameters every rank holds in full
};

struct TpPlan {
  std::string model;  // the archive the plan was made from
  std::string graph_kind;  // traced | scripted | frozen
  int tp = 1;
  std::vector<int> valid_tp;  // every tp the model admits (divisors of the split extents)
  int blocks = 0;             // row-parallel linears found (2 per Llama layer)
  std::vector<ParamPlan> parameters;
  std::vector<RescaleSite> rescaled;
  std::vector<CollectiveSite> collectives;
  std::vector<SplitConstraint> constraints;
  PlanBytes bytes;
};

}  // namespace autotp
