#include "analyze.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>
#include <unordered_set>

#include "autotp/error.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;
using Mode = ShardingStructure::Mode;

// Sharding state of a tensor value: replicated, or split on one dim. `origins` are the
// column-parallel linears the split comes from (used to back off and to label dimensions).
struct Shard {
  int dim = -1;  // -1: replicated
  std::set<int> origins;
  bool split() const { return dim >= 0; }
};

// What an int (or 0-dim tensor holding an int) means after the rewrite:
//  Static — known from constants/attributes only: on a split position it must be rescaled;
//  Local  — read from the size of a split dim at run time: already per-rank;
//  Full   — read from an unsplit extent at run time.
struct IntTag {
  enum Kind { Static, Local, Full } kind = Full;
  std::string what;
};

// Thrown inside propagation when a known op needs the full extent of a split dim: the linears the
// split came from, and why.
struct NeedsFull {
  std::vector<Node*> linears;
  std::string reason;
};

std::string join_shape(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

int norm_dim(int64_t d, int64_t rank) { return static_cast<int>(d < 0 ? d + rank : d); }

const std::unordered_set<std::string>& elementwise_ops() {
  static const std::unordered_set<std::string> ops = {
      "aten::add", "aten::sub", "aten::mul", "aten::div", "aten::rsub", "aten::neg", "aten::pow",
      "aten::rsqrt", "aten::sqrt", "aten::exp", "aten::log", "aten::silu", "aten::gelu", "aten::relu",
      "aten::sigmoid", "aten::tanh", "aten::sin", "aten::cos", "aten::to", "aten::type_as",
      "aten::contiguous", "aten::dropout", "aten::feature_dropout", "aten::clone", "aten::detach",
      "aten::float", "aten::half", "aten::bfloat16", "aten::masked_fill", "aten::where", "aten::clamp",
      "aten::abs", "aten::reciprocal", "aten::square", "aten::maximum", "aten::minimum", "aten::erf",
      "aten::_to_copy", "aten::floor_divide", "aten::floordiv", "aten::eq", "aten::ne", "aten::lt",
      "aten::gt", "aten::le", "aten::ge", "aten::__and__", "aten::__or__", "aten::logical_and",
      "aten::logical_or", "aten::logical_not", "aten::softplus", "aten::mish", "aten::tril", "aten::triu",
      "aten::remainder", "aten::gelu_", "aten::alias"};
  return ops;
}

class Propagator {
 public:
  Propagator(const ModelGraph& mg, const ProbeValues& values, const std::map<Node*, std::string>& forced)
      : mg_(mg), values_(values), forced_(forced) {}

  ShardingStructure run() {
    for (Node* n : mg_.graph->nodes()) visit(n);
    finish_outputs();
    return std::move(s_);
  }

 private:
  const ModelGraph& mg_;
  const ProbeValues& values_;
  const std::map<Node*, std::string>& forced_;
  ShardingStructure s_;
  std::unordered_map<const Value*, Shard> shard_;
  std::unordered_map<const Value*, IntTag> tag_;
  std::unordered_map<const Value*, std::vector<Value*>> elems_;  // tuples and lists built in the graph

  // ---- helpers -------------------------------------------------------------------------------
  static std::string op(const Node* n) { return n->kind().toQualString(); }

  std::string at(const Node* n) const {
    std::string where = op(n) + " at " + source_of(n);
    std::string m = module_of(mg_, n);
    if (!m.empty()) where += " (" + m + ")";
    return where;
  }

  [[noreturn]] void fail(const Node* n, const std::string& what) const {
    throw Error(mg_.path + ": " + at(n) + ": " + what);
  }

  const c10::IValue* value(const Value* v) const {
    auto it = values_.find(v);
    return it == values_.end() ? nullptr : &it->second;
  }
  bool is_tensor(const Value* v) const {
    auto* iv = value(v);
    return iv && iv->isTensor();
  }
  std::vector<int64_t> sizes(const Value* v) const {
    auto* iv = value(v);
    if (!iv || !iv->isTensor()) return {};
    return iv->toTensor().sizes().vec();
  }
  int64_t rank(const Value* v) const { return static_cast<int64_t>(sizes(v).size()); }
  int64_t int_of(const Value* v) const {
    auto* iv = value(v);
    if (iv && iv->isInt()) return iv->toInt();
    if (auto c = torch::jit::toIValue(v)) {
      if (c->isInt()) return c->toInt();
    }
    throw Error(mg_.path + ": expected an int for %" + v->debugName() + " at " + at(v->node()));
  }
  std::vector<int64_t> ints_of(const Value* v) const {
    auto* iv = value(v);
    if (iv && iv->isIntList()) return iv->toIntVector();
    if (auto c = torch::jit::toIValue(v)) {
      if (c->isIntList()) return c->toIntVector();
    }
    throw Error(mg_.path + ": expected an int list at " + at(v->node()));
  }

  Shard shard(const Value* v) const {
    auto it = shard_.find(v);
    return it == shard_.end() ? Shard{} : it->second;
  }
  void set(const Value* v, Shard s) { shard_[v] = std::move(s); }

  std::string describe(const Value* v) const {
    Shard s = shard(v);
    std::string d = "shape " + join_shape(sizes(v));
    if (s.split()) d += " split on dim " + std::to_string(s.dim);
    return d;
  }

  IntTag tag(const Value* v) const {
    auto it = tag_.find(v);
    if (it != tag_.end()) return it->second;
    if (v->node()->kind() == c10::prim::Constant) {
      const auto& name = v->debugName();
      if (name.rfind("self.", 0) == 0) return {IntTag::Static, "constant " + name.substr(5)};
      return {IntTag::Static, "constant"};
    }
    return {IntTag::Full, ""};
  }

  static IntTag combine(const std::vector<IntTag>& ins, const std::string& what, bool divides) {
    IntTag out{IntTag::Static, what};
    for (size_t i = 0; i < ins.size(); ++i) {
      if (ins[i].kind == IntTag::Full) return {IntTag::Full, ""};
      if (ins[i].kind == IntTag::Local) {
        // A per-rank size in a divisor does not scale like a size: treat it as unknown.
        if (divides && i == 1) return {IntTag::Full, ""};
        out.kind = IntTag::Local;
      }
    }
    return out;
  }

  [[noreturn]] void need_full(const Node* n, const std::set<int>& origins, const std::string& why) {
    if (origins.empty()) fail(n, why);
    NeedsFull nf{{}, at(n) + " " + why};
    for (int o : origins) nf.linears.push_back(s_.linears[o].node);
    throw nf;
  }

  static std::set<int> merged(const std::vector<Shard>& shards) {
    std::set<int> o;
    for (auto& s : shards) o.insert(s.origins.begin(), s.origins.end());
    return o;
  }

  // ---- the walk ------------------------------------------------------------------------------
  void visit(Node* n) {
    const std::string k = op(n);
    const auto kind = n->kind();
    if (kind == c10::prim::Constant) return;
    if (kind == c10::prim::GetAttr) return visit_getattr(n);
    if (kind == c10::prim::TupleConstruct || kind == c10::prim::ListConstruct) {
      elems_[n->output()] = std::vector<Value*>(n->inputs().begin(), n->inputs().end());
      return;
    }
    if (kind == c10::prim::TupleUnpack || kind == c10::prim::ListUnpack) return visit_unpack(n);
    if (kind == c10::prim::TupleIndex || k == "aten::__getitem__") return visit_index(n);
    if (kind == c10::prim::NumToTensor || k == "aten::Int" || k == "aten::ScalarImplicit" ||
        k == "aten::IntImplicit" || k == "aten::item") {
      tag_[n->output()] = tag(n->input(0));
      return;
    }
    if (k == "aten::size" || k == "aten::sym_size") return visit_size(n);
    if (k == "aten::linear") return visit_linear(n);
    if (k == "aten::embedding") return visit_embedding(n);
    if (k == "aten::view" || k == "aten::reshape" || k == "aten::_unsafe_view") return visit_reshape(n, 1);
    if (k == "aten::flatten") return visit_reshape(n, -1);
    if (k == "aten::expand") return visit_expand(n);
    if (k == "aten::transpose") return visit_transpose(n);
    if (k == "aten::t") return visit_t(n);
    if (k == "aten::permute") return visit_permute(n);
    if (k == "aten::unsqueeze") return visit_unsqueeze(n);
    if (k == "aten::squeeze") return visit_squeeze(n);
    if (k == "aten::slice" || k == "aten::narrow") return visit_slice(n);
    if (k == "aten::select") return visit_select(n);
    if (k == "aten::cat") return visit_cat(n);
    if (k == "aten::matmul" || k == "aten::bmm") return visit_matmul(n);
    if (k == "aten::softmax" || k == "aten::log_softmax" || k == "aten::_softmax") return visit_softmax(n);
    if (k == "aten::mean" || k == "aten::sum" || k == "aten::amax" || k == "aten::var") return visit_reduce(n);
    if (k == "aten::scaled_dot_product_attention") return visit_sdpa(n);
    std::string base = k;
    if (base.size() > 1 && base.back() == '_' && base.substr(base.size() - 2) != "__") base.pop_back();
    if (elementwise_ops().count(base)) return visit_elementwise(n);
    if (!n->blocks().empty()) return visit_control_flow(n);
    visit_other(n);
  }

  void visit_getattr(Node* n) {
    auto a = mg_.attribute_of.find(n->output());
    if (a != mg_.attribute_of.end()) tag_[n->output()] = {IntTag::Static, "attribute " + a->second};
  }

  void propagate_elem(const Value* from, const Value* to) {
    auto sh = shard_.find(from);
    if (sh != shard_.end()) shard_[to] = sh->second;
    auto tg = tag_.find(from);
    if (tg != tag_.end()) tag_[to] = tg->second;
    auto el = elems_.find(from);
    if (el != elems_.end()) elems_[to] = el->second;
  }

  void visit_unpack(Node* n) {
    auto it = elems_.find(n->input(0));
    if (it != elems_.end() && it->second.size() == n->outputs().size()) {
      for (size_t i = 0; i < n->outputs().size(); ++i) propagate_elem(it->second[i], n->outputs()[i]);
      return;
    }
    if (shard(n->input(0)).split()) fail(n, "unpacks a container holding split tensors it cannot follow");
  }

  void visit_index(Node* n) {
    auto it = elems_.find(n->input(0));
    if (it != elems_.end()) {
      int64_t i = int_of(n->input(1));
      i = norm_dim(i, static_cast<int64_t>(it->second.size()));
      if (i >= 0 && i < static_cast<int64_t>(it->second.size())) {
        propagate_elem(it->second[i], n->output());
        return;
      }
    }
    visit_other(n);
  }

  void visit_size(Node* n) {
    if (n->inputs().size() < 2) {  // aten::size(x) -> int[]
      Shard s = shard(n->input(0));
      if (s.split()) fail(n, "reads the whole size list of a split tensor (" + describe(n->input(0)) +
                                 "); read single dims instead");
      return;
    }
    Shard s = shard(n->input(0));
    int d = norm_dim(int_of(n->input(1)), rank(n->input(0)));
    tag_[n->output()] = s.split() && s.dim == d ? IntTag{IntTag::Local, ""} : IntTag{IntTag::Full, ""};
  }

  // A parameter read by anything but a linear/embedding stays replicated; remember the first reader.
  void note_tensor_reads(Node* n) {
    for (Value* in : n->inputs()) {
      auto t = mg_.tensor_of.find(in);
      if (t != mg_.tensor_of.end() && !s_.tensor_use.count(t->second)) s_.tensor_use[t->second] = at(n);
    }
  }

  int tensor_index(const Value* v) const {
    auto t = mg_.tensor_of.find(v);
    return t == mg_.tensor_of.end() ? -1 : t->second;
  }

  void visit_linear(Node* n) {
    const Value* x = n->input(0);
    int w = tensor_index(n->input(1));
    int b = n->inputs().size() > 2 ? tensor_index(n->input(2)) : -1;
    Shard sx = shard(x);
    if (w < 0) {  // weight computed in the graph: not a parameter we can slice
      note_tensor_reads(n);
      if (sx.split()) fail(n, "input is split (" + describe(x) + ") but the weight is not a model parameter");
      set(n->output(), {});
      return;
    }
    ShardingStructure::Linear lin;
    lin.node = n;
    lin.weight = w;
    lin.bias = b;
    const int idx = static_cast<int>(s_.linears.size());
    const int64_t r = rank(x);
    if (!sx.split()) {
      auto f = forced_.find(n);
      if (f != forced_.end()) {
        lin.mode = Mode::Replicated;
        lin.reason = f->second;
        set(n->output(), {});
      } else {
        lin.mode = Mode::Column;
        set(n->output(), Shard{static_cast<int>(rank(n->output())) - 1, {idx}});
      }
    } else if (sx.dim == r - 1) {
      lin.mode = Mode::Row;
      lin.fed_by.assign(sx.origins.begin(), sx.origins.end());
      for (int c : sx.origins) s_.linears[c].feeds.push_back(idx);
      set(n->output(), {});  // all-reduced (reduce_from_tp), bias added once after
    } else {
      fail(n, "input is split on dim " + std::to_string(sx.dim) + " of " + describe(x) +
                  ", not on the features a linear contracts");
    }
    s_.linears.push_back(std::move(lin));
  }

  void visit_embedding(Node* n) {
    int w = tensor_index(n->input(0));
    if (shard(n->input(1)).split()) fail(n, "token ids are split (" + describe(n->input(1)) + ")");
    if (w < 0) {
      set(n->output(), {});
      return;
    }
    s_.embeddings.push_back({n, w});
    set(n->output(), {});  // vocab-parallel: masked lookup, then all-reduce
  }

  // Checks the size list `list` (a prim::ListConstruct) of op n whose output is split at `split_pos`:
  // the entry there must be -1, a per-rank size, or a static size (recorded for rescaling).
  void check_size_list(Node* n, size_t list_input, int split_pos, const std::set<int>& origins) {
    const Value* list = n->input(list_input);
    auto el = elems_.find(list);
    if (el == elems_.end()) {
      fail(n, "takes a size list computed at run time; autotp needs it built from single sizes");
    }
    const auto& items = el->second;
    for (size_t i = 0; i < items.size(); ++i) {
      IntTag t = tag(items[i]);
      if (static_cast<int>(i) == split_pos) {
        if (t.kind == IntTag::Full)
          fail(n, "size[" + std::to_string(i) + "] sits on the split dim but is read from an unsplit extent");
        if (t.kind == IntTag::Static) {
          int64_t v = int_of(items[i]);
          if (v != -1) {
            s_.rescales.push_back({n, list_input, i, v, t.what, std::vector<int>(origins.begin(), origins.end())});
          }
        }
      } else if (t.kind == IntTag::Local) {
        fail(n, "size[" + std::to_string(i) + "] is read from a split dim but sits on an unsplit one");
      }
    }
  }

  // Reshape rules (DESIGN.md): passes straight through; on merge only the leftmost may be split; on a
  // split only the first piece may be, and tp must divide it.
  void visit_reshape(Node* n, int list_arg) {
    const Value* x = n->input(0);
    Shard sx = shard(x);
    if (!sx.split()) {
      if (list_arg >= 0) {
        auto el = elems_.find(n->input(list_arg));
        if (el != elems_.end())
          for (size_t i = 0; i < el->second.size(); ++i)
            if (tag(el->second[i]).kind == IntTag::Local)
              fail(n, "reshapes a replicated tensor with a size read from a split dim");
      }
      set(n->output(), {});
      return;
    }
    auto in = sizes(x), out = sizes(n->output());
    size_t i = 0, j = 0;
    int out_dim = -1;
    while (i < in.size() || j < out.size()) {
      size_t i0 = i, j0 = j;
      int64_t pin = 1, pout = 1;
      if (i < in.size()) pin *= in[i++];
      if (j < out.size()) pout *= out[j++];
      while (pin != pout) {
        if (pin < pout && i < in.size()) pin *= in[i++];
        else if (pout < pin && j < out.size()) pout *= out[j++];
        else fail(n, "cannot match " + join_shape(in) + " to " + join_shape(out));
      }
      if (static_cast<size_t>(sx.dim) < i0 || static_cast<size_t>(sx.dim) >= i) continue;
      // The split dim is in group [i0, i) -> [j0, j).
      size_t first_in = i0, first_out = j0;
      while (first_in < i && in[first_in] == 1) ++first_in;
      while (first_out < j && out[first_out] == 1) ++first_out;
      if (static_cast<size_t>(sx.dim) != first_in)
        fail(n, "merges dims " + join_shape(in) + " -> " + join_shape(out) + " with the split dim " +
                    std::to_string(sx.dim) + " not leftmost");
      int in_pieces = 0, out_pieces = 0;
      for (size_t a = i0; a < i; ++a) in_pieces += in[a] > 1;
      for (size_t a = j0; a < j; ++a) out_pieces += out[a] > 1;
      if (in_pieces > 1 && out_pieces > 1)
        fail(n, "regroups dims " + join_shape(in) + " -> " + join_shape(out) + " across the split dim " +
                    std::to_string(sx.dim));
      out_dim = static_cast<int>(first_out);
      if (out_pieces > 1) {
        // A split dim divided into pieces: only the first piece carries the split (e.g. heads).
        for (int c : sx.origins) {
          auto& lin = s_.linears[c];
          if (lin.heads == 0) lin.heads = out[first_out];
          s_.constraints.push_back({out[first_out], "heads", c, -1, n});
        }
        if (sx.origins.empty()) s_.constraints.push_back({out[first_out], "size", -1, -1, n});
      }
      break;
    }
    if (out_dim < 0) fail(n, "lost the split dim " + std::to_string(sx.dim) + " of " + describe(x));
    if (list_arg >= 0) check_size_list(n, static_cast<size_t>(list_arg), out_dim, sx.origins);
    set(n->output(), Shard{out_dim, sx.origins});
  }

  void visit_expand(Node* n) {
    const Value* x = n->input(0);
    Shard sx = shard(x);
    const int64_t r_out = rank(n->output());
    if (!sx.split()) {
      set(n->output(), {});
      auto el = elems_.find(n->input(1));
      if (el != elems_.end())
        for (auto* v : el->second)
          if (tag(v).kind == IntTag::Local) fail(n, "expands a replicated tensor with a size read from a split dim");
      return;
    }
    int od = static_cast<int>(sx.dim + (r_out - rank(x)));
    check_size_list(n, 1, od, sx.origins);
    set(n->output(), Shard{od, sx.origins});
  }

  void visit_transpose(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split()) {
      int64_t r = rank(n->input(0));
      int a = norm_dim(int_of(n->input(1)), r), b = norm_dim(int_of(n->input(2)), r);
      if (sx.dim == a) sx.dim = b;
      else if (sx.dim == b) sx.dim = a;
    }
    set(n->output(), sx);
  }

  void visit_t(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split() && rank(n->input(0)) == 2) sx.dim = 1 - sx.dim;
    set(n->output(), sx);
  }

  void visit_permute(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split()) {
      auto perm = ints_of(n->input(1));
      int64_t r = rank(n->input(0));
      for (size_t i = 0; i < perm.size(); ++i)
        if (norm_dim(perm[i], r) == sx.dim) {
          sx.dim = static_cast<int>(i);
          break;
        }
    }
    set(n->output(), sx);
  }

  void visit_unsqueeze(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split()) {
      int k = norm_dim(int_of(n->input(1)), rank(n->input(0)) + 1);
      if (sx.dim >= k) ++sx.dim;
    }
    set(n->output(), sx);
  }

  void visit_squeeze(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split()) {
      auto in = sizes(n->input(0));
      std::vector<int> removed;
      if (n->inputs().size() > 1) {
        auto* iv = value(n->input(1));
        std::vector<int64_t> dims = iv && iv->isIntList() ? iv->toIntVector() : std::vector<int64_t>{int_of(n->input(1))};
        for (auto d : dims) {
          int nd = norm_dim(d, static_cast<int64_t>(in.size()));
          if (in[nd] == 1) removed.push_back(nd);
        }
      } else {
        for (size_t d = 0; d < in.size(); ++d)
          if (in[d] == 1) removed.push_back(static_cast<int>(d));
      }
      int shift = 0;
      for (int d : removed) shift += d < sx.dim;
      sx.dim -= shift;
    }
    set(n->output(), sx);
  }

  void visit_slice(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split()) {
      int d = norm_dim(int_of(n->input(1)), rank(n->input(0)));
      auto in = sizes(n->input(0)), out = sizes(n->output());
      if (d == sx.dim && in[d] != out[d])
        fail(n, "slices the split dim " + std::to_string(d) + " of " + describe(n->input(0)) +
                    "; slicing across ranks is not supported");
    }
    set(n->output(), sx);
  }

  void visit_select(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split()) {
      int d = norm_dim(int_of(n->input(1)), rank(n->input(0)));
      if (d == sx.dim) fail(n, "selects an index of the split dim of " + describe(n->input(0)));
      if (d < sx.dim) --sx.dim;
    }
    set(n->output(), sx);
  }

  void visit_cat(Node* n) {
    auto el = elems_.find(n->input(0));
    if (el == elems_.end()) return visit_other(n);
    std::vector<Shard> shards;
    for (auto* v : el->second) shards.push_back(shard(v));
    bool any = std::any_of(shards.begin(), shards.end(), [](const Shard& s) { return s.split(); });
    if (!any) return set(n->output(), {});
    int d = norm_dim(int_of(n->input(1)), rank(n->output()));
    for (size_t i = 0; i < shards.size(); ++i) {
      if (shards[i].dim != shards[0].dim)
        need_full(n, merged(shards), "concatenates tensors split differently");
    }
    if (d == shards[0].dim) need_full(n, merged(shards), "concatenates along the split dim");
    set(n->output(), Shard{shards[0].dim, merged(shards)});
  }

  // Element-wise with broadcasting: splits must line up; a replicated operand must broadcast (size 1)
  // over the split dim.
  void visit_elementwise(Node* n) {
    const Value* out = n->outputs().at(0);
    std::vector<IntTag> tags;
    for (Value* in : n->inputs()) tags.push_back(tag(in));
    const std::string k = op(n);
    const bool divides = k.find("div") != std::string::npos || k == "aten::remainder";
    if (!is_tensor(out) || rank(out) == 0) {
      // Arithmetic on sizes (0-dim tensors or ints): tags propagate.
      std::vector<IntTag> ints;
      for (Value* in : n->inputs()) {
        if (is_tensor(in) && rank(in) > 0) continue;
        auto* iv = value(in);
        if (iv && (iv->isInt() || iv->isTensor())) ints.push_back(tag(in));
      }
      std::string what = k + "(";
      for (size_t i = 0; i < ints.size(); ++i) what += (i ? ", " : "") + (ints[i].what.empty() ? "?" : ints[i].what);
      tag_[out] = combine(ints, what + ")", divides);
      set(out, {});
      note_tensor_reads(n);
      return;
    }
    note_tensor_reads(n);
    const int64_t ro = rank(out);
    std::vector<Shard> shards;
    int od = -1;
    for (Value* in : n->inputs()) {
      if (!is_tensor(in)) continue;
      Shard s = shard(in);
      if (!s.split()) continue;
      int aligned = static_cast<int>(s.dim + (ro - rank(in)));
      if (od >= 0 && aligned != od)
        need_full(n, merged({s, shard(n->input(0))}), "combines tensors split on different dims");
      od = aligned;
      shards.push_back(s);
    }
    if (od < 0) return set(out, {});
    for (Value* in : n->inputs()) {
      if (!is_tensor(in) || shard(in).split()) continue;
      auto sz = sizes(in);
      int d = od - static_cast<int>(ro - static_cast<int64_t>(sz.size()));
      if (d >= 0 && sz[d] != 1)
        need_full(n, merged(shards), "combines a split tensor with a replicated one of full extent " +
                                         std::to_string(sz[d]) + " on the split dim");
    }
    Shard res{od, merged(shards)};
    set(out, res);
    if (k.back() == '_' && is_tensor(n->input(0))) set(n->input(0), res);
  }

  void visit_matmul(Node* n) {
    const Value* a = n->input(0);
    const Value* b = n->input(1);
    Shard sa = shard(a), sb = shard(b);
    if (!sa.split() && !sb.split()) {
      note_tensor_reads(n);
      return set(n->output(), {});
    }
    const int64_t ra = rank(a), rb = rank(b), ro = rank(n->output());
    if (ra < 2 || rb < 2) fail(n, "multiplies split 1-D operands (" + describe(a) + ", " + describe(b) + ")");
    std::set<int> origins = merged({sa, sb});
    auto batch_dim = [&](const Shard& s, int64_t r) { return static_cast<int>(s.dim + (ro - r)); };
    auto broadcasts = [&](const Value* v, int od) {
      auto sz = sizes(v);
      int d = od - static_cast<int>(ro - static_cast<int64_t>(sz.size()));
      return d < 0 || sz[d] == 1;
    };
    const bool a_batch = sa.split() && sa.dim < ra - 2, b_batch = sb.split() && sb.dim < rb - 2;
    if (a_batch && b_batch && batch_dim(sa, ra) == batch_dim(sb, rb)) return set(n->output(), Shard{batch_dim(sa, ra), origins});
    if (a_batch && !sb.split()) {
      if (!broadcasts(b, batch_dim(sa, ra))) need_full(n, origins, "multiplies a head-split tensor by a replicated one");
      return set(n->output(), Shard{batch_dim(sa, ra), origins});
    }
    if (b_batch && !sa.split()) {
      if (!broadcasts(a, batch_dim(sb, rb))) need_full(n, origins, "multiplies a replicated tensor by a head-split one");
      return set(n->output(), Shard{batch_dim(sb, rb), origins});
    }
    if (sa.split() && sa.dim == ra - 2 && !sb.split()) return set(n->output(), Shard{static_cast<int>(ro - 2), origins});
    if (sb.split() && sb.dim == rb - 1 && !sa.split()) return set(n->output(), Shard{static_cast<int>(ro - 1), origins});
    need_full(n, origins, "contracts or mixes split dims (" + describe(a) + " @ " + describe(b) + ")");
  }

  void visit_softmax(Node* n) {
    Shard sx = shard(n->input(0));
    if (sx.split() && norm_dim(int_of(n->input(1)), rank(n->input(0))) == sx.dim)
      need_full(n, sx.origins, "normalizes over the split dim of " + describe(n->input(0)));
    set(n->output(), sx);
  }

  void visit_reduce(Node* n) {
    Shard sx = shard(n->input(0));
    note_tensor_reads(n);
    if (!sx.split()) return set(n->output(), {});
    const int64_t r = rank(n->input(0));
    std::vector<int> dims;
    bool keepdim = false;
    if (n->inputs().size() >= 3) {
      auto* iv = value(n->input(1));
      if (iv && iv->isIntList()) {
        for (auto d : iv->toIntVector()) dims.push_back(norm_dim(d, r));
        auto* kd = value(n->input(2));
        keepdim = kd && kd->isBool() && kd->toBool();
      }
    }
    if (dims.empty() || std::count(dims.begin(), dims.end(), sx.dim))
      need_full(n, sx.origins, "reduces over the split dim of " + describe(n->input(0)));
    if (!keepdim) sx.dim -= static_cast<int>(std::count_if(dims.begin(), dims.end(), [&](int d) { return d < sx.dim; }));
    set(n->output(), sx);
  }

  void visit_sdpa(Node* n) {
    Shard q = shard(n->input(0)), k = shard(n->input(1)), v = shard(n->input(2));
    if (!q.split() && !k.split() && !v.split()) return set(n->output(), {});
    std::set<int> origins = merged({q, k, v});
    const int64_t r = rank(n->input(0));
    if (!(q.split() && k.split() && v.split()) || q.dim != k.dim || q.dim != v.dim || q.dim >= r - 2)
      need_full(n, origins, "attends over q, k, v that are not all split on the same head dim");
    if (n->inputs().size() > 3 && is_tensor(n->input(3))) {
      auto sz = sizes(n->input(3));
      int d = q.dim - static_cast<int>(r - static_cast<int64_t>(sz.size()));
      if (shard(n->input(3)).split() || (d >= 0 && sz[d] != 1))
        need_full(n, origins, "uses an attention mask with per-head entries");
    }
    set(n->output(), Shard{q.dim, origins});
  }

  void visit_control_flow(Node* n) {
    for (Value* in : n->inputs())
      if (shard(in).split()) fail(n, "carries a split tensor (" + describe(in) + ") into control flow");
    // Blocks also read values from outside without declaring them as inputs.
    std::vector<torch::jit::Block*> blocks(n->blocks().begin(), n->blocks().end());
    while (!blocks.empty()) {
      auto* b = blocks.back();
      blocks.pop_back();
      for (Node* inner : b->nodes()) {
        for (Value* in : inner->inputs())
          if (shard(in).split()) fail(n, "reads a split tensor (" + describe(in) + ") inside control flow");
        blocks.insert(blocks.end(), inner->blocks().begin(), inner->blocks().end());
      }
    }
    for (Value* out : n->outputs()) set(out, {});
  }

  void visit_other(Node* n) {
    note_tensor_reads(n);
    for (Value* in : n->inputs()) {
      if (shard(in).split())
        fail(n, "has no sharding rule and its input %" + in->debugName() + " is split (" + describe(in) +
                    "); supported on split values: linear, view/reshape/flatten, expand, transpose/permute/"
                    "unsqueeze/squeeze, slice/select off the split dim, cat, element-wise, matmul/bmm, "
                    "softmax, mean/sum, scaled_dot_product_attention");
    }
    for (Value* out : n->outputs()) set(out, {});
  }

  void finish_outputs() {
    std::vector<const Value*> todo(mg_.graph->outputs().begin(), mg_.graph->outputs().end());
    while (!todo.empty()) {
      const Value* v = todo.back();
      todo.pop_back();
      auto el = elems_.find(v);
      if (el != elems_.end()) {
        todo.insert(todo.end(), el->second.begin(), el->second.end());
        continue;
      }
      Shard s = shard(v);
      if (!s.split()) continue;
      if (s.dim != rank(v) - 1 || s.origins.empty())
        fail(v->node(), "returns a tensor split on dim " + std::to_string(s.dim) + " (" + describe(v) +
                            "); only logits split over the vocabulary may leave the graph");
      for (int c : s.origins) s_.linears[c].logits = true;
    }
  }
};

int64_t gcd_all(const std::vector<int64_t>& xs) {
  int64_t g = 0;
  for (auto x : xs) g = std::gcd(g, x);
  return g;
}

std::string dtype_name(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return std::string(c10::toString(t.scalar_type()));
  }
}

}  // namespace

ShardingStructure propagate(const ModelGraph& mg, const ProbeValues& values) {
  std::map<Node*, std::string> forced;
  for (;;) {
    try {
      return Propagator(mg, values, forced).run();
    } catch (const NeedsFull& nf) {
      // Send the linears the split came from back to replicated and start again.
      bool progressed = false;
      for (Node* n : nf.linears)
        progressed |= forced.emplace(n, "replicated: its split output would reach " + nf.reason).second;
      if (!progressed) throw Error(mg.path + ": " + nf.reason);
    }
  }
}

TpPlan make_plan(const ModelGraph& mg, const ShardingStructure& s, int tp) {
  TpPlan plan;
  plan.model = mg.path;
  plan.graph_kind = graph_kind_name(mg.kind);
  plan.tp = tp;
  if (tp < 1) throw Error(mg.path + ": tp must be a positive integer, got " + std::to_string(tp));

  const auto& T = mg.tensors;
  auto name = [&](int t) { return T[t].name; };

  // Roles for labelling dimensions: attention heads vs kv heads inside the group a row linear joins.
  std::vector<std::string> role(s.linears.size());
  int rows = 0;
  for (size_t i = 0; i < s.linears.size(); ++i) {
    const auto& l = s.linears[i];
    if (l.mode == Mode::Row) {
      ++rows;
      int64_t max_heads = 0;
      for (int c : l.fed_by) max_heads = std::max(max_heads, s.linears[c].heads);
      for (int c : l.fed_by) {
        const auto& cl = s.linears[c];
        role[c] = cl.heads == 0 ? "intermediate size" : (cl.heads < max_heads ? "kv heads" : "attention heads");
      }
    }
  }
  for (size_t i = 0; i < s.linears.size(); ++i)
    if (s.linears[i].logits) role[i] = "vocabulary";
  plan.blocks = rows;
  if (rows == 0) {
    throw Error(mg.path + ": no transformer block found: searched " + std::to_string(s.linears.size()) +
                " linear layer(s) for a column-parallel linear whose split output reaches the contraction "
                "dim of another linear (attention q/k/v -> o_proj, MLP gate/up -> down) and found none");
  }

  // Constraints: every split extent, labelled.
  auto add_constraint = [&](const std::string& dim, int64_t extent, const std::string& where, const Node* n) {
    plan.constraints.push_back({dim, extent, where, n ? source_of(n) : "<unknown>"});
  };
  for (const auto& c : s.constraints) {
    std::string label = c.linear >= 0 && !role[c.linear].empty() ? role[c.linear] : "split size";
    add_constraint(label, c.extent, c.linear >= 0 ? name(s.linears[c.linear].weight) : module_of(mg, c.node), c.node);
  }
  for (size_t i = 0; i < s.linears.size(); ++i) {
    const auto& l = s.linears[i];
    if (l.mode == Mode::Column && l.heads == 0)
      add_constraint(role[i].empty() ? "output features" : role[i], T[l.weight].tensor.size(0), name(l.weight), l.node);
  }
  for (const auto& e : s.embeddings) add_constraint("vocabulary", T[e.weight].tensor.size(0), name(e.weight), e.node);
  for (const auto& r : s.rescales) add_constraint("split size", r.from, r.value, r.node);

  std::vector<int64_t> extents;
  for (const auto& c : plan.constraints) extents.push_back(c.extent);
  const int64_t g = gcd_all(extents);
  for (int64_t d = 1; d <= g; ++d)
    if (g % d == 0) plan.valid_tp.push_back(static_cast<int>(d));

  if (g % tp != 0) {
    std::vector<std::string> seen;
    std::ostringstream msg;
    msg << mg.path << ": tp=" << tp << " does not divide ";
    bool first = true;
    for (const auto& c : plan.constraints) {
      if (c.extent % tp == 0) continue;
      if (std::find(seen.begin(), seen.end(), c.dimension) != seen.end()) continue;
      seen.push_back(c.dimension);
      msg << (first ? "" : ", nor ") << "the " << c.dimension << " (" << c.extent << ", " << c.where << " at "
          << c.source << ")";
      first = false;
    }
    msg << "; valid tp for this model: ";
    for (size_t i = 0; i < plan.valid_tp.size(); ++i) msg << (i ? ", " : "") << plan.valid_tp[i];
    throw Error(msg.str());
  }

  // Per-tensor placement.
  struct Decision {
    Placement p = Placement::Replicated;
    int dim = -1;
    std::string reason;
  };
  std::map<int, Decision> decided;
  auto decide = [&](int t, Placement p, int dim, const std::string& reason, const Node* n) {
    auto it = decided.find(t);
    if (it == decided.end()) {
      decided[t] = {p, dim, reason};
      return;
    }
    if (it->second.dim != dim)
      throw Error(mg.path + ": " + name(t) + " is used split on dim " + std::to_string(it->second.dim) +
                  " (" + it->second.reason + ") and on dim " + std::to_string(dim) + " by " +
                  n->kind().toQualString() + " at " + source_of(n) + "; a tensor has one placement");
    if (p == Placement::Vocab) it->second.p = Placement::Vocab;
    it->second.reason += "; also " + reason;
  };
  auto names_of = [&](const std::vector<int>& idx) {
    std::string out;
    for (size_t i = 0; i < idx.size(); ++i) out += (i ? ", " : "") + name(s.linears[idx[i]].weight);
    return out;
  };
  for (size_t i = 0; i < s.linears.size(); ++i) {
    const auto& l = s.linears[i];
    switch (l.mode) {
      case Mode::Column:
        if (l.logits) {
          decide(l.weight, Placement::Vocab, 0, "vocab-parallel lm-head: logits leave the graph split over the vocabulary", l.node);
        } else {
          std::string why = "column-parallel: replicated input, output split on features";
          if (l.heads) why += " into " + std::to_string(l.heads) + " heads";
          if (!l.feeds.empty()) why += ", reaching row-parallel " + names_of(l.feeds);
          decide(l.weight, Placement::Column, 0, why, l.node);
        }
        if (l.bias >= 0) decide(l.bias, l.logits ? Placement::Vocab : Placement::Column, 0, "bias of column-parallel " + name(l.weight), l.node);
        break;
      case Mode::Row:
        decide(l.weight, Placement::Row, 1, "row-parallel: input arrives split on its contraction dim from " + names_of(l.fed_by) + "; output all-reduced", l.node);
        if (l.bias >= 0) decide(l.bias, Placement::Replicated, -1, "bias of row-parallel " + name(l.weight) + ", added once after the all-reduce", l.node);
        break;
      case Mode::Replicated:
        decide(l.weight, Placement::Replicated, -1, l.reason, l.node);
        if (l.bias >= 0) decide(l.bias, Placement::Replicated, -1, l.reason, l.node);
        break;
    }
  }
  for (const auto& e : s.embeddings)
    decide(e.weight, Placement::Vocab, 0, "vocab-parallel embedding: rows split over the vocabulary, masked lookup then all-reduce", e.node);
  for (const auto& [t, where] : s.tensor_use) {
    if (decided.count(t)) {
      if (decided[t].dim >= 0)
        throw Error(mg.path + ": " + name(t) + " is split (" + decided[t].reason + ") but also read in full by " + where);
      continue;
    }
    decided[t] = {Placement::Replicated, -1, "replicated: read by " + where};
  }

  for (size_t t = 0; t < T.size(); ++t) {
    const auto& e = T[t];
    if (!e.trainable && !decided.count(static_cast<int>(t))) continue;  // unused buffers
    if (!e.trainable && mg.kind != GraphKind::Frozen) continue;         // buffers are not parameters
    ParamPlan p;
    p.name = e.name;
    p.aliases = e.aliases;
    p.shape = e.tensor.sizes().vec();
    p.dtype = dtype_name(e.tensor);
    p.bytes = static_cast<int64_t>(e.tensor.numel()) * static_cast<int64_t>(e.tensor.element_size());
    auto it = decided.find(static_cast<int>(t));
    if (it == decided.end()) {
      p.reason = "replicated: not read by forward";
    } else {
      p.placement = it->second.p;
      p.split_dim = it->second.dim;
      p.reason = it->second.reason;
      if (!e.aliases.empty()) {
        std::string tied;
        for (const auto& a : e.aliases) tied += (tied.empty() ? "" : ", ") + a;
        p.reason += " (tied: one tensor, also named " + tied + ")";
      }
    }
    p.bytes_per_rank = p.split_dim >= 0 ? p.bytes / tp : p.bytes;
    plan.bytes.total += p.bytes;
    plan.bytes.per_rank += p.bytes_per_rank;
    if (p.split_dim < 0) plan.bytes.replicated += p.bytes;
    plan.parameters.push_back(std::move(p));
  }

  for (const auto& r : s.rescales) {
    std::string where = std::string(r.node->kind().toQualString()) + " size[" + std::to_string(r.list_index) + "]";
    std::string m = module_of(mg, r.node);
    if (!m.empty()) where += " in " + m;
    plan.rescaled.push_back({where, r.value, r.from, r.from / tp, source_of(r.node)});
  }

  // Collectives: one copy_to_tp per distinct input of column-parallel linears, one all-reduce after
  // each row-parallel linear, one after each vocab-parallel embedding, and the vocab-split logits.
  std::map<const Value*, std::vector<int>> copy_groups;
  std::vector<const Value*> copy_order;
  for (size_t i = 0; i < s.linears.size(); ++i) {
    const auto& l = s.linears[i];
    if (l.mode != Mode::Column) continue;
    const Value* x = l.node->input(0);
    if (!copy_groups.count(x)) copy_order.push_back(x);
    copy_groups[x].push_back(static_cast<int>(i));
  }
  for (const auto* x : copy_order) {
    const auto& group = copy_groups[x];
    plan.collectives.push_back({"copy_to_tp", "before " + names_of(group), source_of(s.linears[group[0]].node)});
  }
  for (const auto& l : s.linears)
    if (l.mode == Mode::Row) plan.collectives.push_back({"reduce_from_tp", "after " + name(l.weight), source_of(l.node)});
  for (const auto& e : s.embeddings)
    plan.collectives.push_back({"vocab_embedding_reduce", "after " + name(e.weight), source_of(e.node)});
  for (const auto& l : s.linears)
    if (l.logits)
      plan.collectives.push_back({"vocab_parallel_logits", "after " + name(l.weight) +
                                      " (vocab-parallel cross-entropy: 3 all-reduces of [tokens]; gather_from_tp for full logits)",
                                  source_of(l.node)});
  return plan;
}

TpPlan analyze(const ModelGraph& mg, int tp) {
  auto values = probe(mg, example_inputs(mg));
  return make_plan(mg, propagate(mg, values), tp);
}

}  // namespace autotp
