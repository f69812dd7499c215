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

class RuleContext {
 public:
  virtual ~RuleContext() = default;
  using Node = torch::jit::Node;
  using Value = torch::jit::Value;

  virtual const ModelGraph& graph() const = 0;
  // Operands.
  virtual TensorPlacement placement(const Value* v) const = 0;
  virtual std::vector<TensorPlacement> elements(const Value* v) const = 0;  // a list's elements ({} if unknown)
  virtual const std::vector<Value*>* list_items(const Value* v) const = 0;  // a list built in the graph
  virtual bool any_split(const Value* v) const = 0;  // the value or one of its elements is split/partial
  virtual std::vector<int64_t> sizes(const Value* v) const = 0;
  virtual int64_t rank(const Value* v) const = 0;
  virtual bool is_tensor(const Value* v) const = 0;
  virtual const c10::IValue* probed(const Value* v) const = 0;
  virtual int64_t int_of(const Value* v) const = 0;
  virtual std::vector<int64_t> ints_of(const Value* v) const = 0;
  virtual IntTag tag(const Value* v) const = 0;
  virtual const ParamView* param_view(const Value* v) const = 0;
  // The schema's argument by name (nullptr when the op has no such argument).
  virtual Value* arg(Node* n, const char* name) const = 0;
  virtual int arg_index(Node* n, const char* name) const = 0;
  virtual std::string describe(const Value* v) const = 0;

  // Answers.
  virtual void set(const Value* v, TensorPlacement p) = 0;
  virtual void set_elements(const Value* v, std::vector<TensorPlacement> p) = 0;
  virtual void set_tag(const Value* v, IntTag t) = 0;
  virtual void set_element_tags(const Value* v, std::vector<IntTag> t) = 0;  // an int list made by an op
  virtual void set_param_view(const Value* v, ParamView pv) = 0;
  virtual void exempt(Node* n, size_t input) = 0;  // this operand gets no copy_to_tp (see above)
  virtual void reads(Node* n) = 0;                 // parameters read in full by n's operands
  [[noreturn]] virtual void fail(const Node* n, const std::string& what) const = 0;
  [[noreturn]] virtual void need_full(const Node* n, const std::set<int>& origins, const std::string& why) = 0;
  // The size list at input `list_input` of n, whose output is split at position split_pos.
  virtual void check_size_list(Node* n, size_t list_input, int split_pos, const std::set<int>& origins) = 0;
  // An int on the split dim (a slice bound, a split size; list_index -1 for the input itself, else
  // an entry of the list there): static ones are replaced by value/tp, run-time ones divided by tp.
  virtual void rescale_int(Node* n, size_t input, int64_t list_index, const std::set<int>& origins) = 0;
  virtual ShardingStructure& structure() = 0;
  // Why linear n was sent back to replicated by an earlier round, or nullptr.
  virtual const std::string* forced_reason(Node* n) const = 0;
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
void index_container(RuleContext& ctx, torch::jit::Node* n);   // a tuple/list element (propagate.cpp)
bool matmul_with_parameter(RuleContext& ctx, torch::jit::Node* n);  // x @ W, x @ W.t() (rules_param.cpp)
// The split dim of `p` (extent `extent`) cut at `bounds` (each in [0, extent]): a fused projection
// when it is the output features of column linears; records the cuts on them (rules_param.cpp).
bool cut_fused_projection(RuleContext& ctx, torch::jit::Node* n, const TensorPlacement& p, int64_t extent,
                          const std::vector<int64_t>& bounds);
void pass_through(RuleContext& ctx, torch::jit::Node* n);     // output placed as input 0 (rules_view.cpp)

int norm_dim(int64_t d, int64_t rank);
std::set<int> merged(const std::vector<TensorPlacement>& ps);
std::string join_shape(const std::vector<int64_t>& s);

}  // namespace autotp
