// TpPlan -> JSON (nlohmann) and -> a human table.
#include <algorithm>
#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/passes.h"

namespace autotp {

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::Column: return "column";
    case Placement::Row: return "row";
    case Placement::Vocab: return "vocab";
    case Placement::Replicated: return "replicated";
  }
  return "?";
}

std::string plan_to_json(const TpPlan& plan, int indent) {
  using nlohmann::json;
  json j;
  j["model"] = plan.model;
  j["graph_kind"] = plan.graph_kind;
  j["tp"] = plan.tp;
  j["valid_tp"] = plan.valid_tp;
  j["tp_notes"] = plan.tp_notes;
  j["families"] = json::array();
  for (const auto& f : plan.families)
    j["families"].push_back({{"name", f.name}, {"linears", f.linears}, {"units", f.units}, {"unit", f.unit},
                             {"per_rank", f.per_rank}, {"whole", f.whole}, {"replicas", f.replicas}});
  j["rank_bytes"] = rank_bytes(plan);
  j["blocks"] = plan.blocks;
  j["parameters"] = json::array();
  for (const auto& p : plan.parameters) {
    j["parameters"].push_back({{"name", p.name}, {"aliases", p.aliases}, {"shape", p.shape}, {"dtype", p.dtype},
                               {"placement", placement_name(p.placement)}, {"split_dim", p.split_dim},
                               {"reason", p.reason}, {"bytes", p.bytes}, {"bytes_per_rank", p.bytes_per_rank},
                               {"grad", p.grad}, {"segments", p.segments}, {"padded", p.padded}, {"units", p.units},
                               {"replicas", p.replicas}});
  }
  j["rescaled"] = json::array();
  for (const auto& r : plan.rescaled)
    j["rescaled"].push_back({{"where", r.where}, {"value", r.value}, {"from", r.from}, {"to", r.to}, {"to_per_rank", r.to_per_rank},
                             {"source", r.source}});
  j["collectives"] = json::array();
  for (const auto& c : plan.collectives)
    j["collectives"].push_back({{"kind", c.kind}, {"where", c.where}, {"source", c.source}, {"bytes", c.bytes}});
  j["constraints"] = json::array();
  for (const auto& c : plan.constraints)
    j["constraints"].push_back({{"dimension", c.dimension}, {"extent", c.extent}, {"where", c.where}, {"source", c.source}});
  j["bytes"] = {{"total", plan.bytes.total}, {"per_rank", plan.bytes.per_rank}, {"replicated", plan.bytes.replicated}};
  const auto& g = plan.sites;
  json sites{{"fingerprint", g.fingerprint}, {"vocab", g.vocab}, {"vocab_padded", g.vocab_padded}, {"embeddings", g.embeddings}};
  sites["logits"] = json::array();
  for (const auto& o : g.logits) sites["logits"].push_back({o.node, o.output});
  sites["copies"] = json::array();
  for (const auto& c : g.copies) {
    json uses = json::array();
    for (const auto& u : c.uses) uses.push_back({u.node, u.input});
    sites["copies"].push_back({{"node", c.node}, {"output", c.output}, {"uses", uses}, {"replicas", c.replicas}});
  }
  sites["reduces"] = json::array();
  for (const auto& r : g.reduces)
    sites["reduces"].push_back({{"node", r.node}, {"bias_input", r.bias_input}, {"mean", r.mean}, {"units", r.units}});
  sites["rescales"] = json::array();
  for (const auto& r : g.rescales)
    sites["rescales"].push_back({{"node", r.node}, {"list_input", r.list_input}, {"list_index", r.list_index}, {"from", r.from}, {"to", r.to}, {"runtime", r.runtime},
                                 {"units", r.units}, {"replicas", r.replicas}});
  sites["kv_slices"] = json::array();
  for (const auto& k : g.kv_slices)
    sites["kv_slices"].push_back({{"node", k.node}, {"output", k.output}, {"dim", k.dim}, {"extent", k.extent}, {"replicas", k.replicas},
                                   {"units", k.units}});
  j["sites"] = sites;
  return j.dump(indent);
}

namespace {
Placement placement_from(const std::string& s, const std::string& where) {
  for (Placement p : {Placement::Column, Placement::Row, Placement::Vocab, Placement::Replicated})
    if (s == placement_name(p)) return p;
  throw Error(where + ": placement '" + s + "' is not one of column, row, vocab, replicated");
}
}  // namespace

TpPlan plan_from_json(const std::string& text, const std::string& label) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    std::string what = e.what();
    throw Error(label + ": not a JSON plan (" + what.substr(0, what.find('\n')) + ")");
  }
  std::string key;
  try {
    TpPlan plan;
    key = "model";
    plan.model = j.at("model").get<std::string>();
    key = "graph_kind";
    plan.graph_kind = j.value("graph_kind", "");
    key = "tp";
    plan.tp = j.at("tp").get<int>();
    key = "valid_tp";
    plan.valid_tp = j.value("valid_tp", std::vector<int>{});
    key = "blocks";
    plan.blocks = j.value("blocks", 0);
    key = "parameters";
    for (const auto& p : j.at("parameters")) {
      ParamPlan pp;
      pp.name = p.at("name").get<std::string>();
      key = "parameters[" + pp.name + "]";
      pp.aliases = p.value("aliases", std::vector<std::string>{});
      pp.shape = p.at("shape").get<std::vector<int64_t>>();
      pp.dtype = p.value("dtype", "");
      pp.placement = placement_from(p.at("placement").get<std::string>(), label + ": " + key);
      pp.split_dim = p.value("split_dim", -1);
      pp.reason = p.value("reason", "");
      pp.bytes = p.value("bytes", int64_t{0});
      pp.bytes_per_rank = p.value("bytes_per_rank", int64_t{0});
      pp.grad = p.value("grad", "");
      pp.segments = p.value("segments", std::vector<int64_t>{});
      pp.padded = p.value("padded", int64_t{0});
      pp.units = p.value("units", std::vector<int64_t>{});
      pp.replicas = p.value("replicas", int64_t{1});
      plan.parameters.push_back(std::move(pp));
    }
    key = "sites";
    if (j.contains("sites")) {
      const auto& s = j.at("sites");
      auto& g = plan.sites;
      g.fingerprint = s.at("fingerprint").get<std::string>();
      g.vocab = s.value("vocab", int64_t{0});
      g.vocab_padded = s.value("vocab_padded", g.vocab);
      for (const auto& o : s.value("logits", json::array())) g.logits.push_back({o.at(0).get<int64_t>(), o.at(1).get<int64_t>()});
      g.embeddings = s.value("embeddings", std::vector<int64_t>{});
      for (const auto& c : s.at("copies")) {
        GraphSites::Copy cc{c.at("node").get<int64_t>(), c.at("output").get<int64_t>(), {}, c.value("replicas", int64_t{1})};
        for (const auto& u : c.at("uses")) cc.uses.push_back({u.at(0).get<int64_t>(), u.at(1).get<int64_t>()});
        g.copies.push_back(std::move(cc));
      }
      for (const auto& r : s.at("reduces"))
        g.reduces.push_back({r.at("node").get<int64_t>(), r.at("bias_input").get<int64_t>(), r.value("mean", false),
                             r.value("units", std::vector<int64_t>{})});
      for (const auto& r : s.at("rescales"))
        g.rescales.push_back({r.at("node").get<int64_t>(), r.at("list_input").get<int64_t>(), r.at("list_index").get<int64_t>(),
                              r.at("from").get<int64_t>(), r.at("to").get<int64_t>(), r.value("runtime", false),
                              r.value("units", std::vector<int64_t>{}), r.value("replicas", int64_t{1})});
      for (const auto& k : s.value("kv_slices", json::array()))
        g.kv_slices.push_back({k.at("node").get<int64_t>(), k.at("output").get<int64_t>(), k.at("dim").get<int64_t>(),
                               k.at("extent").get<int64_t>(), k.at("replicas").get<int64_t>(),
                               k.value("units", std::vector<int64_t>{})});
    }
    return plan;
  } catch (const Error&) {
    throw;
  } catch (const json::exception& e) {
    std::string what = e.what();
    throw Error(label + ": key " + key + ": " + what.substr(what.find(']') + 2));
  }
}

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}
std::string human_bytes(int64_t b) {
  std::ostringstream o;
  const double kib = 1024.0, mib = kib * 1024, gib = mib * 1024;
  o << std::fixed << std::setprecision(2);
  if (b >= gib) o << b / gib << " GiB";
  else if (b >= mib) o << b / mib << " MiB";
  else if (b >= kib) o << b / kib << " KiB";
  else o << b << " B";
  return o.str();
}
}  // namespace

std::vector<int64_t> rank_bytes(const TpPlan& plan) {
  std::vector<int64_t> out(static_cast<size_t>(std::max(plan.tp, 1)), 0);
  for (const auto& p : plan.parameters) {
    int64_t numel = 1;
    for (int64_t d : p.shape) numel *= d;
    const int64_t element = numel ? p.bytes / numel : 0;
    for (int r = 0; r < plan.tp; ++r) {
      int64_t local = 1;
      for (int64_t d : local_shape(p, plan.tp, r)) local *= d;
      out[static_cast<size_t>(r)] += local * element;
    }
  }
  return out;
}

std::string plan_to_table(const TpPlan& plan) {
  size_t wname = 9, wshape = 5;
  for (const auto& p : plan.parameters) {
    wname = std::max(wname, p.name.size());
    wshape = std::max(wshape, shape_str(p.shape).size());
  }
  std::ostringstream o;
  o << "model " << plan.model << " (" << plan.graph_kind << "), tp=" << plan.tp << "\n\n";
  o << std::left << std::setw(static_cast<int>(wname)) << "parameter" << "  " << std::setw(static_cast<int>(wshape))
    << "shape" << "  " << std::setw(10) << "placement" << "  reason\n";
  for (const auto& p : plan.parameters) {
    o << std::left << std::setw(static_cast<int>(wname)) << p.name << "  " << std::setw(static_cast<int>(wshape))
      << shape_str(p.shape) << "  " << std::setw(10) << placement_name(p.placement) << "  " << p.reason
      << (p.grad.empty() ? "" : "; gradient: " + p.grad) << "\n";
  }
  const auto per_rank = rank_bytes(plan);
  if (plan.tp > 1) {
    // Families cut alike (every layer's attention, every layer's MLP) are one line.
    std::vector<std::pair<const SplitFamily*, int>> kinds;
    for (const auto& f : plan.families) {
      auto same = [&](const std::pair<const SplitFamily*, int>& k) {
        return k.first->name == f.name && k.first->unit == f.unit && k.first->units == f.units && k.first->per_rank == f.per_rank &&
               k.first->whole == f.whole && k.first->replicas == f.replicas;
      };
      auto it = std::find_if(kinds.begin(), kinds.end(), same);
      if (it == kinds.end()) kinds.push_back({&f, 1});
      else ++it->second;
    }
    o << "\nper rank (" << plan.tp << " ranks):\n";
    for (int r = 0; r < plan.tp; ++r) {
      o << "  rank " << r << ": " << human_bytes(per_rank[static_cast<size_t>(r)]) << " of parameters";
      for (const auto& [f, count] : kinds) {
        o << "; " << f->name << " (" << count << " block" << (count == 1 ? "" : "s") << "): ";
        if (f->whole) {
          o << "whole (" << f->units << " units for " << plan.tp << " ranks; unit: " << f->unit << ")";
          continue;
        }
        if (f->replicas > 1) {
          o << "kv head " << r / f->replicas << " of " << f->units << ", shared with " << f->replicas - 1 << " other rank"
            << (f->replicas == 2 ? "" : "s") << "; its q heads, part " << r % f->replicas + 1 << "/" << f->replicas;
          if (!f->per_rank.empty()) o << " (" << f->per_rank[static_cast<size_t>(r)] << " q heads)";
          continue;
        }
        const int64_t mine = f->per_rank.empty() ? f->units / plan.tp : f->per_rank[static_cast<size_t>(r)];
        o << mine << " of " << f->units
          << " units (unit: " << f->unit << ")";
      }
      o << "\n";
    }
    const auto [lo, hi] = std::minmax_element(per_rank.begin(), per_rank.end());
    o << "  unevenness: max/min bytes per rank " << std::fixed << std::setprecision(3)
      << static_cast<double>(*hi) / static_cast<double>(std::max<int64_t>(*lo, 1)) << "\n";
    o.unsetf(std::ios::fixed);
  }
  o << "\nrescaled sizes (" << plan.rescaled.size() << "):\n";
  if (plan.rescaled.empty()) o << "  none: every size on a split dim is inferred (-1) or read from the tensor\n";
  for (const auto& r : plan.rescaled)
  {
    o << "  " << r.where << ": " << r.value << " " << r.from << " -> ";
    if (r.to_per_rank.empty()) o << r.to;
    for (size_t i = 0; i < r.to_per_rank.size(); ++i) o << (i ? " | " : "") << r.to_per_rank[i];
    o << "  (" << r.source << ")\n";
  }
  o << "\ncollectives (" << plan.collectives.size() << "):\n";
  for (const auto& c : plan.collectives) {
    o << "  " << c.kind << " " << c.where << "  (" << c.source << ")";
    if (c.bytes) o << "  " << c.bytes << " bytes on the example input";
    o << "\n";
  }
  o << "\nsummary\n";
  o << "  transformer blocks:  " << plan.blocks << " row-parallel linears\n";
  o << "  parameter bytes:     " << plan.bytes.total << " (" << human_bytes(plan.bytes.total) << ")\n";
  o << "  bytes per rank:      " << plan.bytes.per_rank << " (" << human_bytes(plan.bytes.per_rank) << ")\n";
  o << "  replicated bytes:    " << plan.bytes.replicated << " (" << human_bytes(plan.bytes.replicated) << ")\n";
  o << "  valid tp sizes:      ";
  for (size_t i = 0; i < plan.valid_tp.size(); ++i) o << (i ? ", " : "") << plan.valid_tp[i];
  o << "\n";
  for (const auto& n : plan.tp_notes) o << "    " << n << "\n";
  return o.str();
}

}  // namespace autotp
