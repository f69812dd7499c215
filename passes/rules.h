// Sharding rules: what one operator does to the placement of its operands.
//
// A rule is a small function over one node, found by the operator's schema ("aten::mean.dim", or
// "aten::add" for every overload of an element-wise family); registries live in rules_*.cpp, one
// per op family. The propagation (propagate.cpp) walks the graph, looks each node up, and gives
// the rule a RuleContext: the placements of its operands (DTensor's three: Replicate, Shard(d),
// Partial; lists carry one per element), their probed sizes, the schema's named arguments, and
// the ways to answer: set the outputs' placements, record a linear / embedding / size to rescale,
// or say that the op needs the full extent of a split dim (need_full: the linears the split came
// from go back to replicated and propagation restarts).
//
// After a rule has run, the propagation applies one rule for every op (passes/README.md, "the
// shared rule"): a replicated operand that carries a gradient and meets a split or partial output
// has a partial gradient, so it is routed through copy_to_tp at that use (identity forward,
// all-reduce of the gradient backward). Rules exempt the operands their rewrite shards
// (a linear's weight and bias) or that carry no data (type_as's dtype source).
#pragma once

#include <set>
#include <unordered_map>
#include <string>
#include <vector>

#include "passes/analyze.h"

namespace autotp {

struct TensorPlacement {
  enum Kind { Replicate, Shard, Partial } kind = Replicate;
  int dim = -1;           // Shard only
  std::set<int> origins;  // column-parallel linears the split comes from (to back off, to label dims)
  bool split() const { return kind == Shard; }
  bool partial() const { return kind == Partial; }
  bool replicated() const { return kind == Replicate; }
  static TensorPlacement shard(int dim, std::set<int> origins) { return {Shard, dim, std::move(origins)}; }
  static TensorPlacement part(std::set<int> origins) { return {Partial, -1, std::move(origins)}; }
};

// What an int (or 0-dim tensor holding an int) means after the rewrite:
//  Static — known from constants/attributes only: on a split position it must be rescaled;
//  Local  — read from the size of a split dim at run time: already per-rank;
//  Full   — read from an unsplit extent at run time.
struct IntTag {
  enum Kind { Static, Local, Full } kind = Full;
  std::string what;
};

// A parameter seen through views: which tensor, and for each dim of the view which dim of the
// parameter it is (empty when a view regrouped dims, so no dim maps).
struct ParamView {
  int tensor = -1;
  std::vector<int> dims;
};

// What a rule sees and says. The state of every value (placements, list elements, size tags,
// parameter views) lives here (rule_context.cpp); the engine (propagate.cpp) derives from it, walks
// the graph and decides what a back-off means.
class RuleContext {
 public:
  using Node = torch::jit::Node;
  using Value = torch::jit::Value;
  RuleContext(const ModelGraph& mg, const ProbeValues& values) : mg_(mg), values_(values) {}
  virtual ~RuleContext() = default;

  const ModelGraph& graph() const { return mg_; }
  // Operands.
  TensorPlacement placement(const Value* v) const;
  std::vector<TensorPlacement> elements(const Value* v) const;  // a list's elements ({} if unknown)
  const std::vector<Value*>* list_items(const Value* v) const;  // a list built in the graph
  bool any_split(const Value* v) const;  // the value or one of its elements is split/partial
  std::vector<int64_t> sizes(const Value* v) const;
  int64_t rank(const Value* v) const { return static_cast<int64_t>(sizes(v).size()); }
  bool is_tensor(const Value* v) const;
  const c10::IValue* probed(const Value* v) const;
  int64_t int_of(const Value* v) const;
  std::vector<int64_t> ints_of(const Value* v) const;
  IntTag tag(const Value* v) const;
  const ParamView* param_view(const Value* v) const;
  // The schema's argument by name (nullptr when the op has no such argument).
  Value* arg(Node* n, const char* name) const;
  int arg_index(Node* n, const char* name) const;
  std::string describe(const Value* v) const;

  // Answers.
  void set(const Value* v, TensorPlacement p) { place_[v] = std::move(p); }
  void set_elements(const Value* v, std::vector<TensorPlacement> p) { elem_place_[v] = std::move(p); }
  void set_tag(const Value* v, IntTag t) { tag_[v] = std::move(t); }
  void set_element_tags(const Value* v, std::vector<IntTag> t) { elem_tags_[v] = std::move(t); }  // x.shape
  void set_param_view(const Value* v, ParamView pv) { view_[v] = std::move(pv); }
  void exempt(Node* n, size_t input) { exempt_.insert({n, input}); }  // this operand gets no copy_to_tp
  void reads(Node* n);                                                  // parameters read in full by n
  [[noreturn]] void fail(const Node* n, const std::string& what) const;
  [[noreturn]] virtual void need_full(const Node* n, const std::set<int>& origins, const std::string& why) = 0;
  // The size list at input `list_input` of n, whose output is split at position split_pos.
  void check_size_list(Node* n, size_t list_input, int split_pos, const std::set<int>& origins);
  // An int on the split dim (a slice bound, a split size; list_index -1 for the input itself, else
  // an entry of the list there): static ones are replaced by value/tp, run-time ones divided by tp.
  void rescale_int(Node* n, size_t input, int64_t list_index, const std::set<int>& origins);
  ShardingStructure& structure() { return s_; }
  // Why linear n was sent back to replicated by an earlier round, or nullptr.
  virtual const std::string* forced_reason(Node* n) const = 0;
  // A tuple/list element: the element's state (prim::TupleIndex, aten::__getitem__).
  void index_into(Node* n);
  // The values that differ per rank, into structure().per_rank (after the walk).
  void snapshot_per_rank();

 protected:
  std::string at(const Node* n) const;  // "aten::mul at file.py:12 (module)"
  // `to` takes `from`'s state, or one element's placement / size tag.
  void copy_state(const Value* from, const Value* to, const TensorPlacement* elem, const IntTag* elem_tag = nullptr);
  const std::vector<IntTag>* element_tags(const Value* v) const;
  void set_items(const Value* v, std::vector<Value*> items) { items_[v] = std::move(items); }  // a list built in the graph
  bool is_exempt(Node* n, size_t input) const { return exempt_.count({n, input}) > 0; }

  const ModelGraph& mg_;
  const ProbeValues& values_;
  ShardingStructure s_;

 private:
  void note_read(const Value* v, Node* reader);

  std::unordered_map<const Value*, TensorPlacement> place_;
  std::unordered_map<const Value*, std::vector<TensorPlacement>> elem_place_;  // lists made by ops (chunk, split)
  std::unordered_map<const Value*, std::vector<Value*>> items_;          // lists/tuples built in the graph
  std::unordered_map<const Value*, IntTag> tag_;
  std::unordered_map<const Value*, std::vector<IntTag>> elem_tags_;      // int lists made by ops (x.shape)
  std::unordered_map<const Value*, ParamView> view_;
  std::set<std::pair<Node*, size_t>> exempt_;
};

using Rule = void (*)(RuleContext&, torch::jit::Node*);

// The rule for n's schema: an exact "name.overload" entry first, then one for every overload.
Rule find_rule(const torch::jit::Node* n);

// Registration, one function per family file.
struct RuleTable;
void add_rule(RuleTable& t, const std::string& key, Rule r);
void register_view_rules(RuleTable& t);     // rules_view.cpp
void register_list_rules(RuleTable& t);     // rules_list.cpp
void register_math_rules(RuleTable& t);     // rules_math.cpp
void register_param_rules(RuleTable& t);    // rules_param.cpp

// Shared by rules of different families.
bool matmul_with_parameter(RuleContext& ctx, torch::jit::Node* n);  // x @ W, x @ W.t() (rules_param.cpp)
// The split dim of `p` (extent `extent`) cut at `bounds` (each in [0, extent]): a fused projection
// when it is the output features of column linears; records the cuts on them (rules_param.cpp).
bool cut_fused_projection(RuleContext& ctx, torch::jit::Node* n, const TensorPlacement& p, int64_t extent,
                          const std::vector<int64_t>& bounds);
void pass_through(RuleContext& ctx, torch::jit::Node* n);     // output placed as input 0 (rules_view.cpp)

int norm_dim(int64_t d, int64_t rank);
std::set<int> merged(const std::vector<TensorPlacement>& ps);

}  // namespace autotp
