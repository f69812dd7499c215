// The state every rule reads and writes (see rules.h): placements, list elements, size tags and
// parameter views per value, and the answers that only touch that state.

#include "autotp/error.h"
#include "passes/rules.h"

namespace autotp {

using torch::jit::Node;
using torch::jit::Value;

int norm_dim(int64_t d, int64_t rank) { return static_cast<int>(d < 0 ? d + rank : d); }

std::set<int> merged(const std::vector<TensorPlacement>& ps) {
  std::set<int> o;
  for (const auto& p : ps) o.insert(p.origins.begin(), p.origins.end());
  return o;
}


TensorPlacement RuleContext::placement(const Value* v) const {
  auto it = place_.find(v);
  return it == place_.end() ? TensorPlacement{} : it->second;
}

std::vector<TensorPlacement> RuleContext::elements(const Value* v) const {
  if (auto* items = list_items(v)) {
    std::vector<TensorPlacement> out;
    for (auto* i : *items) out.push_back(placement(i));
    return out;
  }
  auto it = elem_place_.find(v);
  return it == elem_place_.end() ? std::vector<TensorPlacement>{} : it->second;
}

const std::vector<Value*>* RuleContext::list_items(const Value* v) const {
  auto it = items_.find(v);
  return it == items_.end() ? nullptr : &it->second;
}

bool RuleContext::any_split(const Value* v) const {
  if (!placement(v).replicated()) return true;
  if (auto* items = list_items(v)) {
    for (auto* i : *items)
      if (any_split(i)) return true;
    return false;
  }
  for (const auto& p : elements(v))
    if (!p.replicated()) return true;
  return false;
}

const c10::IValue* RuleContext::probed(const Value* v) const {
  auto it = values_.find(v);
  return it == values_.end() ? nullptr : &it->second;
}

bool RuleContext::is_tensor(const Value* v) const {
  auto* iv = probed(v);
  return iv && iv->isTensor();
}

std::vector<int64_t> RuleContext::sizes(const Value* v) const {
  auto* iv = probed(v);
  if (!iv || !iv->isTensor()) return {};
  return iv->toTensor().sizes().vec();
}

int64_t RuleContext::int_of(const Value* v) const {
  auto* iv = probed(v);
  if (iv && iv->isInt()) return iv->toInt();
  if (auto c = torch::jit::toIValue(v))
    if (c->isInt()) return c->toInt();
  throw Error(mg_.path + ": expected an int for %" + v->debugName() + " at " + at(v->node()));
}

std::vector<int64_t> RuleContext::ints_of(const Value* v) const {
  auto* iv = probed(v);
  if (iv && iv->isIntList()) return iv->toIntVector();
  if (iv && iv->isInt()) return {iv->toInt()};
  if (auto c = torch::jit::toIValue(v)) {
    if (c->isIntList()) return c->toIntVector();
    if (c->isInt()) return {c->toInt()};
  }
  throw Error(mg_.path + ": expected an int list at " + at(v->node()));
}

IntTag RuleContext::tag(const Value* v) const {
  auto it = tag_.find(v);
  if (it != tag_.end()) return it->second;
  if (v->node()->kind() == c10::prim::Constant) {
    const auto& name = v->debugName();
    if (name.rfind("self.", 0) == 0) return {IntTag::Static, "constant " + name.substr(5)};
    return {IntTag::Static, "constant"};
  }
  return {IntTag::Full, ""};
}

const ParamView* RuleContext::param_view(const Value* v) const {
  auto it = view_.find(v);
  return it == view_.end() ? nullptr : &it->second;
}

const std::vector<IntTag>* RuleContext::element_tags(const Value* v) const {
  auto it = elem_tags_.find(v);
  return it == elem_tags_.end() ? nullptr : &it->second;
}

Value* RuleContext::arg(Node* n, const char* name) const {
  int i = arg_index(n, name);
  return i < 0 ? nullptr : n->input(static_cast<size_t>(i));
}

int RuleContext::arg_index(Node* n, const char* name) const {
  const auto* schema = n->maybeSchema();
  if (!schema) return -1;
  auto i = schema->argumentIndexWithName(name);
  return i && static_cast<size_t>(*i) < n->inputs().size() ? static_cast<int>(*i) : -1;
}

std::string RuleContext::describe(const Value* v) const {
  TensorPlacement p = placement(v);
  std::string d = "shape " + join_shape(sizes(v));
  if (p.split()) d += " split on dim " + std::to_string(p.dim);
  if (p.partial()) d += " partial";
  return d;
}

std::string RuleContext::at(const Node* n) const {
  std::string where = std::string(n->kind().toQualString()) + " at " + source_of(n);
  std::string m = module_of(mg_, n);
  if (!m.empty()) where += " (" + m + ")";
  return where;
}

void RuleContext::fail(const Node* n, const std::string& what) const { throw Error(mg_.path + ": " + at(n) + ": " + what); }

void RuleContext::note_read(const Value* v, Node* reader) {
  const ParamView* pv = param_view(v);
  if (pv && !s_.tensor_use.count(pv->tensor)) s_.tensor_use[pv->tensor] = at(reader);
}

void RuleContext::reads(Node* n) {
  for (size_t i = 0; i < n->inputs().size(); ++i) {
    if (is_exempt(n, i)) continue;
    note_read(n->input(i), n);
    if (auto* items = list_items(n->input(i)))
      for (auto* e : *items) note_read(e, n);
  }
}

void RuleContext::check_size_list(Node* n, size_t list_input, int split_pos, const std::set<int>& origins) {
  auto* items = list_items(n->input(list_input));
  if (!items) fail(n, "takes a size list computed at run time; autotp needs it built from single sizes");
  for (size_t i = 0; i < items->size(); ++i) {
    IntTag t = tag((*items)[i]);
    if (static_cast<int>(i) == split_pos) {
      // A static size is replaced by v/tp; one read at run time from an unsplit extent (nanoGPT's
      // reshape(B, T, C) with C = x.size(-1)) is divided by tp where it is used. -1 stays -1.
      if (int_of((*items)[i]) != -1) rescale_int(n, list_input, static_cast<int64_t>(i), origins);
    } else if (t.kind == IntTag::Local) {
      fail(n, "size[" + std::to_string(i) + "] is read from a split dim but sits on an unsplit one");
    }
  }
}

void RuleContext::rescale_int(Node* n, size_t input, int64_t list_index, const std::set<int>& origins) {
  const Value* list = n->input(input);
  if (list_index >= 0 && !list_items(list)) {  // a list folded into one constant: static entries
    const int64_t from = probed(list)->toIntVector().at(static_cast<size_t>(list_index));
    if (from != 0) s_.rescales.push_back({n, input, list_index, from, "constant", std::vector<int>(origins.begin(), origins.end()), false});
    return;
  }
  const Value* v = list_index < 0 ? list : list_items(list)->at(static_cast<size_t>(list_index));
  IntTag t = tag(v);
  if (t.kind == IntTag::Local) return;  // read from the split dim: already per-rank
  const int64_t from = int_of(v);
  if (from == 0) return;
  s_.rescales.push_back({n, input, list_index, from, t.kind == IntTag::Full ? "size read at run time" : t.what,
                         std::vector<int>(origins.begin(), origins.end()), t.kind == IntTag::Full});
}

void RuleContext::copy_state(const Value* from, const Value* to, const TensorPlacement* elem, const IntTag* elem_tag) {
  if (elem_tag) tag_[to] = *elem_tag;
  if (elem) place_[to] = *elem;
  else if (place_.count(from)) place_[to] = place_.at(from);
  if (tag_.count(from)) tag_[to] = tag_.at(from);
  if (items_.count(from)) items_[to] = items_.at(from);
  if (elem_place_.count(from)) elem_place_[to] = elem_place_.at(from);
  if (view_.count(from)) view_[to] = view_.at(from);
}

void RuleContext::index_into(Node* n) {
  const Value* c = n->input(0);
  int64_t i = int_of(n->input(1));
  if (auto* items = list_items(c)) {
    i = norm_dim(i, static_cast<int64_t>(items->size()));
    if (i >= 0 && i < static_cast<int64_t>(items->size())) return copy_state((*items)[i], n->output(), nullptr);
  }
  auto el = elements(c);
  auto* tags = element_tags(c);
  if (el.empty() && tags) {
    i = norm_dim(i, static_cast<int64_t>(tags->size()));
    if (i >= 0 && i < static_cast<int64_t>(tags->size())) return copy_state(nullptr, n->output(), nullptr, &(*tags)[i]);
  }
  i = norm_dim(i, static_cast<int64_t>(el.size()));
  if (i >= 0 && i < static_cast<int64_t>(el.size())) return copy_state(nullptr, n->output(), &el[i]);
  if (any_split(c)) fail(n, "indexes a container holding split tensors it cannot follow");
}

void RuleContext::snapshot_per_rank() {
  for (const auto& [v, p] : place_)
    if (!p.replicated()) s_.per_rank.insert(v);
  for (const auto& [v, ps] : elem_place_)
    for (const auto& p : ps)
      if (!p.replicated()) s_.per_rank.insert(v);
  for (const auto& [v, items] : items_)
    if (any_split(v)) s_.per_rank.insert(v);
  for (const auto& [v, t] : tag_)
    if (t.kind == IntTag::Local) s_.per_rank.insert(v);
  for (const auto& [v, ts] : elem_tags_)
    for (const auto& t : ts)
      if (t.kind == IntTag::Local) s_.per_rank.insert(v);
}

}  // namespace autotp
