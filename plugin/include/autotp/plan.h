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
  // A fused projection's parameter: the lengths of the segments split_dim is cut into (q, k, v or
  // gate, up); each rank holds its slice of every segment. Empty: one segment.
  std::vector<int64_t> segments;
  // A vocab-split tensor tp does not divide: split_dim's extent after zero padding (0: none).
  int64_t padded = 0;
  // An uneven split (tp does not divide the dim): how many whole units (heads, kv groups, blocks of
  // features) each rank holds, in rank order; every segment is cut in sum(units) equal units and
  // rank r takes units[r] of them after the ranks before it. Empty: an even split, extent / tp each.
  std::vector<int64_t> units;
  // kv heads held by several ranks: split_dim is cut in tp / replicas parts and rank r holds part
  // r / replicas (the k/v projections when tp exceeds the kv heads). 1: every rank its own part.
  int64_t replicas = 1;
  // "tp all-reduce" for a replicated parameter used on split values: each rank's gradient covers
  // only its own heads or features, so it is summed over the TP group (copy_to_tp at that use).
  std::string grad;
};

// A size that sits on a split dim and must shrink by tp: a constant or a module attribute read at
// one use (op argument) in the graph.
struct RescaleSite {
  std::string where;   // e.g. "aten::view size[2] in model.layers.0.self_attn"
  std::string value;   // what the graph reads there: "constant", "attribute layers.0.self_attn.num_heads"
  int64_t from = 0;
  int64_t to = 0;      // on tp rank 0
  std::vector<int64_t> to_per_rank;  // an uneven split: the value on each rank (empty: `to` on all)
  std::string source;  // file:line the graph records, or "<unknown>"
};

// A place a collective goes.
struct CollectiveSite {
  std::string kind;    // copy_to_tp | reduce_from_tp | vocab_embedding_reduce | vocab_parallel_logits
  std::string where;   // the parameter(s) it belongs to
  std::string source;
  int64_t bytes = 0;   // bytes one all-reduce moves on the analysis's example input (0: per-token ops)
};

// Where the rewrite edits the graph, by position in the model's flat forward graph (nodes numbered
// in order, nested blocks depth first). Derived by the analysis; `fingerprint` names the graph the
// numbers refer to, so a plan is never applied to another model.
struct GraphSites {
  struct Use {
    int64_t node = 0, input = 0;
  };
  struct Copy {  // copy_to_tp of output `output` of node `node` (-1: graph input `output`) at `uses`
    int64_t node = 0, output = 0;
    std::vector<Use> uses;
    // > 1: copy_to_replicas instead — the gradient is summed over the `replicas` consecutive ranks
    // that hold the same kv head (a k/v weight or bias at its linear).
    int64_t replicas = 1;
  };
  struct Reduce {  // reduce_from_tp after node; its bias input (or -1) is added once after
    int64_t node = 0, bias_input = -1;
    bool mean = false;  // a mean over the split dim: divided by tp after the reduce
    std::vector<int64_t> units;  // an uneven split: each rank's mean is weighted units[r]/sum before the reduce
  };
  struct Rescale {  // entry list_index of the size list at input list_input of node (-1: that int input): from -> to
    int64_t node = 0, list_input = 0, list_index = 0, from = 0, to = 0;
    bool runtime = false;  // a size read at run time: the rewrite divides it by tp in the graph
    // An uneven split: rank r's value is from * units[r] / sum(units) (a run-time size likewise);
    // empty: from / tp on every rank.
    std::vector<int64_t> units;
    int64_t replicas = 1;  // a size on the kv side with kv heads on several ranks: from / (tp / replicas)
  };
  // Where kv heads held by `replicas` ranks become q heads by repetition: this rank keeps its share
  // of output `output` of node on dim: extent / tp entries from (rank % replicas) × extent / tp (or by units).
  struct KvSlice {
    int64_t node = 0, output = 0, dim = 0, extent = 0, replicas = 1;
    // q heads per rank where tp does not divide them (sum: the q heads); rank r keeps its own after
    // those of the holders before it. Empty: extent / tp each.
    std::vector<int64_t> units;
  };
  std::string fingerprint;
  std::vector<Copy> copies;
  std::vector<Reduce> reduces;
  std::vector<int64_t> embeddings;
  std::vector<Rescale> rescales;
  std::vector<KvSlice> kv_slices;
  int64_t vocab = 0;  // full vocabulary when the logits leave the graph vocab-split, else 0
  int64_t vocab_padded = 0;  // the vocabulary padded to a multiple of tp
  struct Output {  // output `output` of node `node`
    int64_t node = 0, output = 0;
  };
  std::vector<Output> logits;  // the vocab-split logits leaving the graph (padded columns are masked)
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

// How one split family (the linears whose split outputs meet: q/k/v and o_proj; gate/up and down)
// is cut at the plan's tp: evenly or unevenly in whole units, or kept whole when it has fewer units
// than tp (its linears replicated; their reason says so).
struct SplitFamily {
  std::string name;             // "attention heads", "intermediate size", ...
  std::vector<std::string> linears;  // weights of the column linears, then the row linears
  int64_t units = 0;            // whole units its dims are cut in (heads, kv groups, feature blocks)
  std::string unit;             // what one unit is: "kv group of 3 heads", "64 features"
  std::vector<int64_t> per_rank;  // units each rank holds (empty: even, units / tp each)
  bool whole = false;             // fewer units than tp: kept whole, its linears replicated
  int64_t replicas = 1;           // > 1: each kv head held by this many ranks, the q heads cut tp ways
};

struct TpPlan {
  std::string model;  // the archive the plan was made from
  std::string graph_kind;  // traced | scripted | frozen
  int tp = 1;
  std::vector<int> valid_tp;  // every tp the model admits (evenly, unevenly in whole units, or with a family kept whole)
  std::vector<std::string> tp_notes;  // "tp=2: attention heads uneven (2+1 kv groups)", one per valid tp that is not even
  std::vector<SplitFamily> families;
  int blocks = 0;             // row-parallel linears found (2 per Llama layer)
  std::vector<ParamPlan> parameters;
  std::vector<RescaleSite> rescaled;
  std::vector<CollectiveSite> collectives;
  std::vector<SplitConstraint> constraints;
  PlanBytes bytes;
  GraphSites sites;
};

}  // namespace autotp
