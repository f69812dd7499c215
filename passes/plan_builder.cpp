// The plan builder: a ShardingStructure read off as a TpPlan for one tp (placements, reasons,
// constraints and valid tp, bytes, collectives, and the graph sites the rewrite edits), and
// replan(): a plan a user edited, checked against the analysis.
#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>
#include <unordered_map>

#include "autotp/error.h"
#include "autotp/passes.h"
#include "passes/analyze.h"

namespace autotp {
namespace {

using torch::jit::Node;
using torch::jit::Value;
using Mode = ShardingStructure::Mode;

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


// A fused projection's segment lengths (empty: not cut).
std::vector<int64_t> segments_of(const ShardingStructure::Linear& l) {
  std::vector<int64_t> out;
  if (l.cuts.size() <= 2) return out;  // only {0, extent}: one segment
  for (auto it = std::next(l.cuts.begin()); it != l.cuts.end(); ++it) out.push_back(*it - *std::prev(it));
  return out;
}

std::string names_of(const ModelGraph& mg, const ShardingStructure& s, const std::vector<int>& idx) {
  std::string out;
  for (size_t i = 0; i < idx.size(); ++i) out += (i ? ", " : "") + mg.tensors[s.linears[idx[i]].weight].name;
  return out;
}

// kv heads on several ranks: the replica count at node n (a reader of the kv side) of the family of
// `origins`, else 1; and of column linear `linear` (a k or v projection), else 1.
int64_t kv_replicas_at(const Families& fams, const std::vector<int>& origins, const Node* n, int tp) {
  const Family* f = fams.of(origins);
  return f && f->replicas(tp) > 1 && f->kv->kv_nodes.count(n) ? f->replicas(tp) : 1;
}
int64_t kv_replicas_of_linear(const Families& fams, int linear, int tp) {
  const Family* f = fams.of({linear});
  if (!f || f->replicas(tp) == 1) return 1;
  return std::count(f->kv->kv_columns.begin(), f->kv->kv_columns.end(), linear) ? f->replicas(tp) : 1;
}

// One copy_to_tp per replicated value entering split work (the shared input of q/k/v, a norm
// weight used on heads), one reduce_from_tp per partial result, one all-reduce per vocab-parallel
// embedding, and the vocab-parallel cross-entropy of split logits.
void add_collectives(TpPlan& plan, const ModelGraph& mg, const ShardingStructure& s, const Families& fams) {
  for (const auto& c : s.copies) {
    std::vector<int> users;
    for (const auto& [n, i] : c.uses)
      for (size_t l = 0; l < s.linears.size(); ++l)
        if (s.linears[l].node == n) users.push_back(static_cast<int>(l));
    std::string where = c.for_linear ? "before " + names_of(mg, s, users)
                                     : "gradient of " + (c.params.empty() ? "%" + c.value->debugName() : mg.tensors[c.params[0]].name) +
                                           ", used on split values by " + c.reason;
    plan.collectives.push_back({"copy_to_tp", where, source_of(c.uses.front().first), c.bytes});
  }
  for (const auto& r : s.reduces) {
    std::string what = r.linear >= 0 ? mg.tensors[s.linears[r.linear].weight].name : r.node->kind().toQualString();
    plan.collectives.push_back({"reduce_from_tp", "after " + what, source_of(r.node), r.bytes});
  }
  for (const auto& f : fams.list) {
    const int64_t m = f.replicas(plan.tp);
    if (m == 1) continue;
    for (size_t k = 0; k < f.kv->params.size(); ++k) {
      const auto& t = mg.tensors[static_cast<size_t>(f.kv->params[k])].tensor;
      plan.collectives.push_back({"copy_to_replicas",
                                  "gradient of " + mg.tensors[static_cast<size_t>(f.kv->params[k])].name + ", summed over the " +
                                      std::to_string(m) + " ranks holding the same kv head",
                                  source_of(f.kv->param_uses[k].first),
                                  static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size()) / f.gcd});
    }
  }
  for (const auto& e : s.embeddings)
    plan.collectives.push_back({"vocab_embedding_reduce", "after " + mg.tensors[e.weight].name, source_of(e.node), 0});
  for (const auto& l : s.linears)
    if (l.logits)
      plan.collectives.push_back({"vocab_parallel_logits", "after " + mg.tensors[l.weight].name +
                                      " (vocab-parallel cross-entropy: 3 all-reduces of [tokens]; gather_from_tp for full logits)",
                                  source_of(l.node), 0});
}

// The sites, by node number in the flat graph.
GraphSites sites_of(const ModelGraph& mg, const ShardingStructure& s, const Families& fams, int tp) {
  auto units_of = [&](const std::vector<int>& origins) {
    const Family* f = fams.of(origins);
    return f ? f->per_rank(tp) : std::vector<int64_t>{};
  };
  GraphSites g;
  g.fingerprint = graph_fingerprint(*mg.graph);
  std::unordered_map<const Node*, int64_t> number;
  auto nodes = numbered_nodes(*mg.graph);
  for (size_t i = 0; i < nodes.size(); ++i) number[nodes[i]] = static_cast<int64_t>(i);
  for (const auto& c : s.copies) {
    GraphSites::Copy site;
    if (c.value->node()->kind() == c10::prim::Param) {
      site.node = -1;
      site.output = static_cast<int64_t>(c.value->offset());
    } else {
      site.node = number.at(c.value->node());
      site.output = static_cast<int64_t>(c.value->offset());
    }
    for (const auto& [n, i] : c.uses) site.uses.push_back({number.at(n), static_cast<int64_t>(i)});
    g.copies.push_back(std::move(site));
  }
  for (const auto& r : s.reduces)  // a mean on the kv side with kv heads replicated: each holder's share is 1 / tp (README)
    g.reduces.push_back({number.at(r.node), r.bias_input, r.mean,
                         r.mean && kv_replicas_at(fams, r.origins, r.node, tp) == 1 ? units_of(r.origins) : std::vector<int64_t>{}});
  for (const auto& e : s.embeddings) g.embeddings.push_back(number.at(e.node));
  for (const auto& r : s.rescales) {
    const int64_t replicas = kv_replicas_at(fams, r.origins, r.node, tp);
    auto units = replicas > 1 ? std::vector<int64_t>{} : units_of(r.origins);
    const int64_t to = replicas > 1     ? r.from / (tp / replicas)
                       : units.empty() ? r.from / tp
                                       : r.from / std::accumulate(units.begin(), units.end(), int64_t{0}) * units[0];
    g.rescales.push_back({number.at(r.node), static_cast<int64_t>(r.list_input), static_cast<int64_t>(r.list_index), r.from, to,
                          r.runtime, std::move(units), replicas});
  }
  for (const auto& f : fams.list) {
    const int64_t m = f.replicas(tp);
    if (m == 1) continue;
    for (const auto& mg_ : f.kv->merges)
      if (mg_.slice) g.kv_slices.push_back({number.at(mg_.node), 0, mg_.dim, mg_.extent, m, f.q_per_rank(tp)});
    for (const auto& [n, i] : f.kv->param_uses) {
      const Value* v = n->input(i);
      GraphSites::Copy site;
      site.node = v->node()->kind() == c10::prim::Param ? -1 : number.at(v->node());
      site.output = static_cast<int64_t>(v->offset());
      site.uses.push_back({number.at(n), static_cast<int64_t>(i)});
      site.replicas = m;
      g.copies.push_back(std::move(site));
    }
  }
  for (const auto& l : s.linears)
    if (l.logits) g.vocab = mg.tensors[l.weight].tensor.size(l.column_dim);
  g.vocab_padded = (g.vocab + tp - 1) / tp * tp;
  for (const auto* v : s.logits) g.logits.push_back({number.at(v->node()), static_cast<int64_t>(v->offset())});
  return g;
}

// Every tp a node could use (1..8) and every larger one that divides all split extents evenly, for
// which some family is split and the extents outside families divide; a note for each tp at which
// a family is cut unevenly or kept whole.
std::vector<int> valid_tp_of(const std::vector<Family>& families, int64_t loose_gcd, std::vector<std::string>& notes) {
  std::vector<int64_t> all{loose_gcd};
  for (const auto& f : families) all.push_back(f.gcd);
  const int64_t even = gcd_all(all);
  std::vector<int> out;
  for (int t = 1; t <= 8 || (even && t <= even); ++t) {
    if (loose_gcd && loose_gcd % t) continue;
    if (t > 8 && even % t) continue;
    bool any_split = families.empty();
    std::vector<std::string> parts;  // one per kind of family (every layer's attention alike)
    for (const auto& f : families) {
      std::string part;
      if (!f.fits(t)) {
        part = f.label + " kept whole (" + std::to_string(f.units(t)) + " units; unit: " + f.unit_name(t) + ")";
      } else if (f.replicas(t) > 1) {
        any_split = true;
        std::string q = std::to_string(f.heads / t);
        if (const auto cut = f.q_per_rank(t); !cut.empty()) {
          q.clear();
          for (size_t r = 0; r < cut.size(); ++r) q += (r ? "+" : "") + std::to_string(cut[r]);
        }
        part = f.label + " with each kv head on " + std::to_string(f.replicas(t)) + " ranks (" + std::to_string(f.kv_heads) +
               " kv heads, " + std::to_string(f.heads) + " q heads: " + q + " per rank)";
      } else {
        any_split = true;
        const auto cut = f.per_rank(t);
        if (cut.empty()) continue;
        std::string ranks;
        for (size_t r = 0; r < cut.size(); ++r) ranks += (r ? "+" : "") + std::to_string(cut[r]);
        part = f.label + " uneven (" + ranks + " units; unit: " + f.unit_name(t) + ")";
      }
      if (std::find(parts.begin(), parts.end(), part) == parts.end()) parts.push_back(part);
    }
    if (!any_split) continue;
    out.push_back(t);
    std::string note;
    for (const auto& p : parts) note += (note.empty() ? "" : "; ") + p;
    if (!note.empty()) notes.push_back("tp=" + std::to_string(t) + ": " + note);
  }
  return out;
}

}  // namespace

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
  if (rows == 0 && !s.kept_whole.empty()) {  // every family kept whole: tp is larger than any of them admits
    std::vector<std::string> notes;
    const auto valid = valid_tp_of(s.kept_whole, gcd_all(split_families(mg, s).loose), notes);
    std::ostringstream msg;
    msg << mg.path << ": tp=" << tp << " is more than every split family can be cut into (";
    std::vector<std::string> seen;
    for (const auto& f : s.kept_whole) {
      std::string what = f.label + ": " + std::to_string(f.units(tp)) + " units, each a " + f.unit_name(tp);
      if (std::find(seen.begin(), seen.end(), what) == seen.end()) seen.push_back(what);
    }
    for (size_t i = 0; i < seen.size(); ++i) msg << (i ? "; " : "") << seen[i];
    msg << "), so nothing would be split; valid tp for this model: ";
    for (size_t i = 0; i < valid.size(); ++i) msg << (i ? ", " : "") << valid[i];
    throw Error(msg.str());
  }
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
      add_constraint(role[i].empty() ? "output features" : role[i], T[l.weight].tensor.size(l.column_dim), name(l.weight), l.node);
  }
  for (const auto& l : s.linears)
    for (int64_t seg : segments_of(l)) add_constraint("segment of fused " + name(l.weight), seg, name(l.weight), l.node);
  for (const auto& ps : s.param_splits)
    add_constraint("features of " + name(ps.tensor), T[ps.tensor].tensor.size(ps.dim), name(ps.tensor), ps.node);
  for (const auto& e : s.embeddings) add_constraint("vocabulary", T[e.weight].tensor.size(0), name(e.weight), e.node);
  for (const auto& r : s.rescales) add_constraint("split size", r.from, r.value, r.node);

  // A vocabulary tp does not divide is padded (Megatron's make-vocab-size-divisible-by); a family
  // tp does not divide is cut unevenly in whole units, or kept whole when it has fewer units than
  // tp (structure_for_tp); only split extents outside every family must be divisible.
  const Families fams = split_families(mg, s);
  for (const auto& f : fams.list)
    if (!f.fits(tp))
      throw Error(mg.path + ": tp=" + std::to_string(tp) + " is more than the " + std::to_string(f.units(tp)) + " whole units the " +
                  f.label + " of " + names_of(mg, s, f.columns) + " split into; make the structure with structure_for_tp");
  const int64_t g = gcd_all(fams.loose);
  std::vector<Family> every = fams.list;  // the model's families, also those kept whole at this tp
  every.insert(every.end(), s.kept_whole.begin(), s.kept_whole.end());
  plan.valid_tp = valid_tp_of(every, g, plan.tp_notes);
  if (g && g % tp != 0) {
    std::ostringstream msg;
    msg << mg.path << ": tp=" << tp << " does not divide ";
    bool first = true;
    for (const auto& c : s.constraints) {
      if (c.linear >= 0 || c.extent % tp == 0) continue;
      msg << (first ? "" : ", nor ") << "the split size " << c.extent << " (" << module_of(mg, c.node) << " at " << source_of(c.node) << ")";
      first = false;
    }
    for (const auto& r : s.rescales) {
      if (!r.origins.empty() || r.from % tp == 0) continue;
      msg << (first ? "" : ", nor ") << "the split size " << r.from << " (" << r.value << " at " << source_of(r.node) << ")";
      first = false;
    }
    msg << "; valid tp for this model: ";
    for (size_t i = 0; i < plan.valid_tp.size(); ++i) msg << (i ? ", " : "") << plan.valid_tp[i];
    throw Error(msg.str());
  }
  for (const auto* list : {&fams.list, &s.kept_whole})
    for (const auto& f : *list) {
      SplitFamily sf;
      sf.name = f.label;
      for (int c : f.columns) sf.linears.push_back(name(s.linears[c].weight));
      for (int r : f.rows) sf.linears.push_back(name(s.linears[r].weight));
      sf.units = f.units(tp);
      sf.unit = f.unit_name(tp);
      sf.per_rank = f.per_rank(tp);
      sf.whole = list == &s.kept_whole;
      sf.replicas = sf.whole ? 1 : f.replicas(tp);
      if (sf.replicas > 1)
        sf.unit = "kv head, held by " + std::to_string(sf.replicas) + " ranks (" +
                  (sf.per_rank.empty() ? std::to_string(f.heads / tp) + " q heads each" : "its q heads split between them") + ")";
      plan.families.push_back(std::move(sf));
    }
  auto units_of_linear = [&](int linear) {
    const auto& l = s.linears[static_cast<size_t>(linear)];
    if (l.mode == Mode::Column && kv_replicas_of_linear(fams, linear, tp) > 1) return std::vector<int64_t>{};  // kv part r / replicas
    const Family* f = fams.of(l.mode == Mode::Row ? l.fed_by : std::vector<int>{linear});
    return f ? f->per_rank(tp) : std::vector<int64_t>{};
  };

  // Per-tensor placement.
  struct Decision {
    Placement p = Placement::Replicated;
    int dim = -1;
    std::string reason;
    std::vector<int64_t> segments;
    std::vector<int64_t> units;
    int64_t replicas = 1;
  };
  std::map<int, Decision> decided;
  auto decide = [&](int t, Placement p, int dim, const std::string& reason, const Node* n, std::vector<int64_t> segments = {},
                    std::vector<int64_t> units = {}, int64_t replicas = 1) {
    auto it = decided.find(t);
    if (it == decided.end()) {
      decided[t] = {p, dim, reason, std::move(segments), std::move(units), replicas};
      return;
    }
    if (it->second.replicas != replicas)
      throw Error(mg.path + ": " + name(t) + " is held by " + std::to_string(it->second.replicas) + " rank(s) per part one way (" +
                  it->second.reason + ") and by " + std::to_string(replicas) + " another way (" + n->kind().toQualString() + " at " +
                  source_of(n) + "); a tensor has one placement");
    if (it->second.units != units)
      throw Error(mg.path + ": " + name(t) + " is cut unevenly one way (" + it->second.reason + ") and another way by " +
                  n->kind().toQualString() + " at " + source_of(n) + "; a tensor has one placement");
    if (it->second.segments != segments)
      throw Error(mg.path + ": " + name(t) + " is cut into segments one way (" + it->second.reason + ") and another way by " +
                  n->kind().toQualString() + " at " + source_of(n) + "; a tensor has one placement");
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
    const auto segments = segments_of(l);
    switch (l.mode) {
      case Mode::Column:
        if (l.logits) {
          decide(l.weight, Placement::Vocab, l.column_dim, "vocab-parallel lm-head: logits leave the graph split over the vocabulary", l.node);
        } else {
          std::string why = "column-parallel: replicated input, output split on features";
          if (l.heads) why += " into " + std::to_string(l.heads) + " heads";
          if (!l.feeds.empty()) why += ", reaching row-parallel " + names_of(l.feeds);
          if (!segments.empty()) why += "; a fused projection: each rank holds its slice of each of " + std::to_string(segments.size()) + " segments";
          const int64_t m = kv_replicas_of_linear(fams, static_cast<int>(i), tp);
          if (m > 1)
            why += "; kv heads held by " + std::to_string(m) + " ranks each (tp=" + std::to_string(tp) +
                   " is more than the kv heads), their gradient summed over those ranks";
          decide(l.weight, Placement::Column, l.column_dim, why, l.node, segments, units_of_linear(static_cast<int>(i)), m);
        }
        if (l.bias >= 0)
          decide(l.bias, l.logits ? Placement::Vocab : Placement::Column, 0, "bias of column-parallel " + name(l.weight), l.node, segments,
                 l.logits ? std::vector<int64_t>{} : units_of_linear(static_cast<int>(i)),
                 l.logits ? 1 : kv_replicas_of_linear(fams, static_cast<int>(i), tp));
        break;
      case Mode::Row:
        for (int c : l.fed_by)
          if (!s.linears[c].cuts.empty() && T[l.weight].tensor.size(l.row_dim) == T[s.linears[c].weight].tensor.size(s.linears[c].column_dim))
            throw Error(mg.path + ": " + name(l.weight) + " contracts the whole output of the fused projection " + name(s.linears[c].weight) +
                        ", which is also cut into segments; autotp cannot split both ways");
        decide(l.weight, Placement::Row, l.row_dim, "row-parallel: input arrives split on its contraction dim from " + names_of(l.fed_by) + "; output all-reduced", l.node,
               {}, units_of_linear(static_cast<int>(i)));
        if (l.bias >= 0) decide(l.bias, Placement::Replicated, -1, "bias of row-parallel " + name(l.weight) + ", added once after the all-reduce", l.node);
        break;
      case Mode::Replicated:
        decide(l.weight, Placement::Replicated, -1, l.reason, l.node);
        if (l.bias >= 0) decide(l.bias, Placement::Replicated, -1, l.reason, l.node);
        break;
    }
  }
  for (const auto& ps : s.param_splits) {
    const Family* f = fams.of(ps.origins);
    const int64_t m = kv_replicas_at(fams, ps.origins, ps.node, tp);
    decide(ps.tensor, Placement::Column, ps.dim,
           std::string("split with the features it scales: ") + ps.node->kind().toQualString() + " at " + source_of(ps.node), ps.node, {},
           f && m == 1 ? f->per_rank(tp) : std::vector<int64_t>{}, m);
  }
  for (const auto& c : s.copies)
    for (int t : c.params)
      decide(t, Placement::Replicated, -1, "replicated: read by " + c.reason, c.uses.front().first);
  for (const auto& e : s.embeddings)
    decide(e.weight, Placement::Vocab, 0, "vocab-parallel embedding: rows split over the vocabulary, masked lookup then all-reduce", e.node);
  for (const auto& [t, where] : s.tensor_use) {
    if (decided.count(t)) {
      if (decided[t].dim >= 0)
        throw Error(mg.path + ": " + name(t) + " is split (" + decided[t].reason + ") but also read in full by " + where);
      continue;
    }
    decided[t] = {Placement::Replicated, -1, "replicated: read by " + where, {}, {}, 1};
  }

  std::set<int> grad_reduced;  // replicated parameters whose gradient is partial on each rank
  for (const auto& c : s.copies)
    for (int t : c.params)
      if (T[t].trainable) grad_reduced.insert(t);
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
      p.segments = it->second.segments;
      p.units = it->second.units;
      p.replicas = it->second.replicas;
      p.reason = it->second.reason;
      if (!p.units.empty()) {
        std::string cut;
        for (size_t r = 0; r < p.units.size(); ++r) cut += (r ? "+" : "") + std::to_string(p.units[r]);
        p.reason += "; uneven: " + cut + " of " + std::to_string(std::accumulate(p.units.begin(), p.units.end(), int64_t{0})) +
                    " whole units per rank";
      }
      if (!e.aliases.empty()) {
        std::string tied;
        for (const auto& a : e.aliases) tied += (tied.empty() ? "" : ", ") + a;
        p.reason += " (tied: one tensor, also named " + tied + ")";
      }
    }
    if (grad_reduced.count(static_cast<int>(t))) p.grad = "tp all-reduce";
    p.bytes_per_rank = p.split_dim >= 0 ? p.bytes / tp : p.bytes;
    if (!p.units.empty())  // rank 0 holds the most
      p.bytes_per_rank = p.bytes / std::accumulate(p.units.begin(), p.units.end(), int64_t{0}) * p.units[0];
    if (p.replicas > 1) p.bytes_per_rank = p.bytes / (tp / p.replicas);
    if (p.placement == Placement::Vocab && p.shape[static_cast<size_t>(p.split_dim)] % tp) {
      const int64_t rows = p.shape[static_cast<size_t>(p.split_dim)], padded = (rows + tp - 1) / tp * tp;
      p.padded = padded;
      p.bytes_per_rank = p.bytes / rows * (padded / tp);
      p.reason += "; padded with " + std::to_string(padded - rows) + " zero rows to " + std::to_string(padded) +
                  " so tp divides it (their logits are masked out)";
    }
    plan.bytes.total += p.bytes;
    plan.bytes.per_rank += p.bytes_per_rank;
    if (p.split_dim < 0) plan.bytes.replicated += p.bytes;
    plan.parameters.push_back(std::move(p));
  }

  for (const auto& r : s.rescales) {
    std::string arg = r.node->schema().arguments().at(r.list_input).name();
    if (arg == "shape") arg = "size";
    std::string where = std::string(r.node->kind().toQualString()) + " " + arg;
    if (r.list_index >= 0) where += "[" + std::to_string(r.list_index) + "]";
    std::string m = module_of(mg, r.node);
    if (!m.empty()) where += " in " + m;
    RescaleSite site{where, r.value, r.from, r.from / tp, {}, source_of(r.node)};
    if (const int64_t m = kv_replicas_at(fams, r.origins, r.node, tp); m > 1) {
      site.to = r.from / (tp / m);  // the kv side: one kv head's share, the same on every rank
    } else if (const Family* f = fams.of(r.origins); f && !f->per_rank(tp).empty()) {
      const auto units = f->per_rank(tp);
      const int64_t n = std::accumulate(units.begin(), units.end(), int64_t{0});
      for (int64_t u : units) site.to_per_rank.push_back(r.from / n * u);
      site.to = site.to_per_rank[0];
    }
    plan.rescaled.push_back(std::move(site));
  }

  add_collectives(plan, mg, s, fams);
  plan.sites = sites_of(mg, s, fams, tp);
  return plan;
}

TpPlan analyze(const ModelGraph& mg, int tp) {
  auto values = probe(mg, example_inputs(mg));
  return make_plan(mg, structure_for_tp(mg, values, tp), tp);
}

TpPlan replan(const ModelGraph& mg, const TpPlan& edited) {
  std::map<std::string, const ParamPlan*> want;
  for (const auto& p : edited.parameters) {
    want[p.name] = &p;
    for (const auto& a : p.aliases) want[a] = &p;
  }
  auto values = probe(mg, example_inputs(mg));
  ForcedReplicated forced;
  ShardingStructure s = propagate(mg, values);
  // Keep whole every linear whose weight the edit keeps whole; each round may free others.
  for (bool more = true; more;) {
    more = false;
    for (const auto& l : s.linears) {
      auto it = want.find(mg.tensors[l.weight].name);
      if (l.mode != Mode::Replicated && it != want.end() && it->second->placement == Placement::Replicated &&
          forced.emplace(l.node, "replicated: kept whole by the edited plan").second)
        more = true;
    }
    if (more) s = propagate(mg, values, forced);
  }
  s = structure_for_tp(mg, values, edited.tp, forced);
  TpPlan derived = make_plan(mg, s, edited.tp);
  for (const auto& p : derived.parameters) {
    auto it = want.find(p.name);
    if (it == want.end())
      throw Error(mg.path + ": the plan does not list parameter " + p.name + " of " + edited.model + "; make the plan from this model");
    if (it->second->shape != p.shape)
      throw Error(mg.path + ": the plan has " + p.name + " of shape " + join_shape(it->second->shape) + " but the model's is " +
                  join_shape(p.shape) + "; make the plan from this model");
    if (it->second->placement != p.placement)
      throw Error(mg.path + ": the plan makes " + p.name + " " + placement_name(it->second->placement) +
                  ", but with the plan's edits the analysis finds it " + placement_name(p.placement) + " (" + p.reason +
                  "); mark it " + placement_name(p.placement) + " too, or undo the edit");
  }
  if (edited.parameters.size() != derived.parameters.size())
    throw Error(mg.path + ": the plan lists " + std::to_string(edited.parameters.size()) + " parameters, " + edited.model +
                " has " + std::to_string(derived.parameters.size()) + "; make the plan from this model");
  return derived;
}

TpPlan plan_model(const torch::jit::Module& module, int tp, const std::string& label) {
  return analyze(model_graph_from(module, label), tp);
}

TpPlan check_plan(const torch::jit::Module& module, const TpPlan& edited, const std::string& label) {
  return replan(model_graph_from(module, label), edited);
}

}  // namespace autotp
