// Tensor-parallel analysis: sharding propagation over a ModelGraph, read off as a TpPlan.
//
// Preconditions: a ModelGraph (inlined forward) and its probe values (concrete sizes of every
// value, and whether it carries a gradient).
// Method (propagate.cpp, rules in rules_*.cpp): every linear whose input is replicated is tried
// column-parallel (output split on its feature dim); DTensor's placements (Replicate, Shard(d),
// Partial) are propagated through every op by a rule keyed by the op's schema, list elements
// included. A linear whose input arrives split on its contraction dim is row-parallel (its output
// is Partial and is all-reduced where it is made). Embeddings are vocab-parallel; a
// column-parallel output that leaves the graph is a vocab-split lm-head. A replicated operand that
// carries a gradient into a split or partial result gets copy_to_tp at that use (its gradient is
// partial otherwise). A known op that needs the full split dim sends the linears the split came
// from back to replicated, and propagation restarts. An op with no rule, on a split or partial
// value, is an error naming the op, its source location and shape. Parameter names are never
// consulted.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <string>
#include <vector>

#include "autotp/plan.h"
#include "passes/model_graph.h"
#include "passes/shape_probe.h"

namespace autotp {

// Split families (families.cpp): the column linears whose split outputs meet (through a row
// linear, a size, a norm over them) are cut together, in the same whole units. A family's units
// are the gcd of every extent it splits (heads and kv heads: kv groups; features alone: blocks of
// up to 64); tp that does not divide them is met by an uneven cut, the first units % tp ranks
// taking one unit more. The vocabulary (embedding, lm-head) is not a family: it is padded.
// kv heads held by several ranks (passes/kv_replication.cpp; passes/README.md "kv heads held by
// several ranks"): when tp is a multiple of a GQA family's kv groups and divides its q side, the
// q side is cut in tp parts and every kv head is held by the m = tp / kv ranks whose q heads read it.
struct KvReplication {
  std::vector<int> kv_columns;  // the k and v linears (indices into ShardingStructure::linears)
  // Nodes that read a kv-side value (kv heads not yet repeated to q heads): their sizes on the
  // split dim are cut per kv head, not per rank.
  std::unordered_set<const torch::jit::Node*> kv_nodes;
  // Where kv heads become q heads: output 0 of node, split on dim with full extent `extent`. A repeat
  // (repeat_kv's expand + reshape, repeat_interleave) holds one kv head's repeats on each rank: the
  // rewrite keeps this rank's share with a slice. Attention that groups q heads itself (SDPA with
  // enable_gqa) needs no slice (slice = false).
  struct Merge {
    torch::jit::Node* node = nullptr;
    int dim = 0;
    int64_t extent = 0;
    bool slice = true;
  };
  std::vector<Merge> merges;
  std::vector<int64_t> q_extents;  // extents cut in tp parts; the others (kv side) in kv-head parts
  // The kv-side parameters (k/v weights and biases, a norm weight over their features) and the
  // operand where each is read: its gradient is summed over the ranks holding the same kv head.
  std::vector<int> params;
  std::vector<std::pair<torch::jit::Node*, size_t>> param_uses;
};

struct Family {
  std::vector<int> columns, rows;  // indices into ShardingStructure::linears
  std::vector<int64_t> extents;    // every extent the family splits (features, heads, sizes)
  int64_t gcd = 0;                 // of the extents
  std::string label;               // "attention heads", "intermediate size", ...
  int64_t heads = 0, kv_heads = 0; // the most and fewest heads its column outputs are viewed as (0: none)
  // Set when the family's kv heads may be held by several ranks; else why not (GQA families only).
  std::optional<KvReplication> kv;
  std::string kv_refused;
  // At one tp: the cut. Empty per_rank with fits: even (or kv heads replicated); !fits: fewer units than ranks.
  bool fits(int tp) const;
  int64_t replicas(int tp) const;                  // ranks holding each kv head (1: none replicated)
  // With kv heads replicated: q heads per rank when tp does not divide them (empty: even). The kv
  // side is never cut by units: kv part r / replicas on rank r.
  std::vector<int64_t> q_per_rank(int tp) const;
  int64_t units(int tp) const;                     // whole units at this tp (gcd, or feature blocks)
  std::vector<int64_t> per_rank(int tp) const;     // empty when tp divides every extent (replicated kv: q_per_rank)
  std::string unit_name(int tp) const;             // "kv group: 3 q heads, 1 kv head", "64 features"
};

// The plan's structure, independent of tp; node pointers refer to ModelGraph::graph.
struct ShardingStructure {
  enum class Mode { Column, Row, Replicated };
  struct Linear {
    torch::jit::Node* node = nullptr;
    size_t weight_input = 1;       // aten::linear(x, W, b): 1; matmul(x, W.t()): 1
    int weight = -1;               // index into ModelGraph::tensors
    int column_dim = 0;            // dim of the parameter split when column-parallel
    int row_dim = 1;               // ... when row-parallel
    int bias = -1;
    int bias_input = -1;           // input index of the bias, -1 without one
    Mode mode = Mode::Replicated;
    std::string reason;
    bool logits = false;           // column-parallel output leaves the graph (vocab-split lm-head)
    int64_t heads = 0;             // pieces its output is split into by a view (attention heads)
    std::vector<int> feeds;        // row linears its split output reaches (for column)
    std::vector<int> fed_by;       // column linears whose split reaches it (for row)
    // A fused projection (qkv_proj, gate_up_proj): where its output features are cut into
    // segments; each rank holds its slice of every segment. Empty: one segment.
    std::set<int64_t> cuts;
  };
  struct Embedding {
    torch::jit::Node* node = nullptr;
    int weight = -1;
  };
  struct Rescale {
    torch::jit::Node* node = nullptr;  // the op that takes the size list
    size_t list_input = 1;             // which input of node is the list (a prim::ListConstruct)
    int64_t list_index = 0;            // position in the size list; -1: the input is the int itself
    int64_t from = 0;
    std::string value;                 // constant / attribute / expression it reads
    std::vector<int> origins;          // column linears the split comes from
    bool runtime = false;              // read from an unsplit extent at run time: divided by tp there
  };
  struct Constraint {
    int64_t extent = 0;
    std::string kind;  // heads | features | vocabulary | size
    int linear = -1;
    int tensor = -1;
    torch::jit::Node* node = nullptr;
  };
  // A replicated value with a gradient used where the result is split or partial: copy_to_tp goes
  // between it and these uses (node, input offset).
  struct Copy {
    torch::jit::Value* value = nullptr;
    std::vector<std::pair<torch::jit::Node*, size_t>> uses;
    std::vector<int> params;  // parameters the value is a view of (their gradient is all-reduced)
    std::string reason;       // the first use, as "aten::mul at file.py:12"
    bool for_linear = false;  // only column linears use it (the Megatron copy_to_tp)
    int64_t bytes = 0;        // of the value on the example input: what its gradient's all-reduce moves
  };
  // A Partial output: all-reduced where it is made (reduce_from_tp). A row linear's bias is
  // dropped from the op and added once after the reduce.
  struct Reduce {
    torch::jit::Node* node = nullptr;
    int bias_input = -1;
    int linear = -1;
    int64_t bytes = 0;      // of the output on the example input
    bool mean = false;      // a mean over the split dim: the sum of the ranks' means, divided by tp
    std::vector<int> origins;  // column linears the reduced split comes from (its family's cut)
  };
  // A parameter applied element-wise to split features (a norm weight over a whole column-parallel
  // output): split with them.
  struct ParamSplit {
    int tensor = -1;
    int dim = -1;  // of the parameter
    torch::jit::Node* node = nullptr;
    std::vector<int> origins;  // column linears the features come from
  };
  std::vector<Linear> linears;
  std::vector<Embedding> embeddings;
  std::vector<Rescale> rescales;
  std::vector<Constraint> constraints;
  std::vector<Copy> copies;
  std::vector<Reduce> reduces;
  std::vector<ParamSplit> param_splits;
  std::vector<const torch::jit::Value*> logits;  // the vocab-split values that leave the graph
  std::map<int, std::string> tensor_use;  // tensors read in full (outside linear/embedding): first reader
  // Families structure_for_tp kept whole because tp exceeded their units (their linears forced
  // replicated): what a plan reports about them and the valid tp it lists.
  std::vector<Family> kept_whole;
  // Where kv heads become q heads by repetition (repeat_kv's reshape of an expand, repeat_interleave
  // on the split dim): output 0 of node, split on dim of full extent `extent`.
  struct Repeat {
    torch::jit::Node* node = nullptr;
    int dim = 0;
    int64_t extent = 0;
  };
  std::vector<Repeat> repeats;
  // After propagation: the values that differ per rank (split or partial tensors, lists holding one,
  // ints read from a split dim), and which branch a constant `if` took.
  std::unordered_set<const torch::jit::Value*> per_rank;
  std::unordered_map<const torch::jit::Node*, int> taken_branch;
};

// Linears forced to stay replicated, with the reason (a back-off, or a user's edited plan).
using ForcedReplicated = std::map<torch::jit::Node*, std::string>;

// Throws autotp::Error for graphs the rules do not cover.
ShardingStructure propagate(const ModelGraph& mg, const ProbeValues& values, ForcedReplicated forced = {});

// Split families, continued: the column linears whose split outputs meet (through a row
// linear, a size, a norm over them) are cut together, in the same whole units. A family's units
// are the gcd of every extent it splits (heads and kv heads: kv groups; features alone: blocks of
// up to 64); tp that does not divide them is met by an uneven cut, the first units % tp ranks
// taking one unit more. The vocabulary (embedding, lm-head) is not a family: it is padded.
struct Families {
  std::vector<Family> list;
  std::map<int, int> of_linear;  // linear index -> family index
  std::vector<int64_t> loose;    // split extents outside every family: tp must divide them
  const Family* of(const std::vector<int>& origins) const;  // the family of a split's origins (nullptr: none)
};
Families split_families(const ModelGraph& mg, const ShardingStructure& s);

// Whether a GQA family's kv heads can be held by several ranks (kv_replication.cpp): the k/v side
// must stay per kv head (element-wise work, views, norms over the head dim) until a repeat or a
// grouping attention turns it into q heads, and never mix with q-side values before that. Sets
// f.kv or f.kv_refused.
void analyze_kv_replication(const ModelGraph& mg, const ShardingStructure& s, Family& f);

// The structure for one tp: propagation, with every family that has fewer units than tp ranks kept
// whole (its linears forced replicated, with the reason) and propagation run again.
ShardingStructure structure_for_tp(const ModelGraph& mg, const ProbeValues& values, int tp, ForcedReplicated forced = {});

// Turns the structure into a plan for one tp (with the graph sites the rewrite edits); throws
// autotp::Error when tp does not divide a split dimension outside every family (naming each one
// and listing the valid tp values), when a family has fewer units than tp (make the structure with
// structure_for_tp) or when no transformer block exists.
TpPlan make_plan(const ModelGraph& mg, const ShardingStructure& s, int tp);

// probe + structure_for_tp + make_plan.
TpPlan analyze(const ModelGraph& mg, int tp);

// The linears a plan keeps replicated although the analysis would split them (a user's edit):
// analysis with them forced, checked against every placement of the plan. Throws autotp::Error
// naming the first parameter whose placement the edit makes inconsistent.
TpPlan replan(const ModelGraph& mg, const TpPlan& edited);

}  // namespace autotp
