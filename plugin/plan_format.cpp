// TpPlan -> JSON (nlohmann) and -> a human table.
#include <iomanip>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autotp/autotp.h"

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
  j["blocks"] = plan.blocks;
  j["parameters"] = json::array();
  for (const auto& p : plan.parameters) {
    j["parameters"].push_back({{"name", p.name}, {"aliases", p.aliases}, {"shape", p.shape}, {"dtype", p.dtype},
                               {"placement", placement_name(p.placement)}, {"split_dim", p.split_dim},
                               {"reason", p.reason}, {"bytes", p.bytes}, {"bytes_per_rank", p.bytes_per_rank}});
  }
  j["rescaled"] = json::array();
  for (const auto& r : plan.rescaled)
    j["rescaled"].push_back({{"where", r.where}, {"value", r.value}, {"from", r.from}, {"to", r.to}, {"source", r.source}});
  j["collectives"] = json::array();
  for (const auto& c : plan.collectives)
    j["collectives"].push_back({{"kind", c.kind}, {"where", c.where}, {"source", c.source}});
  j["constraints"] = json::array();
  for (const auto& c : plan.constraints)
    j["constraints"].push_back({{"dimension", c.dimension}, {"extent", c.extent}, {"where", c.where}, {"source", c.source}});
  j["bytes"] = {{"total", plan.bytes.total}, {"per_rank", plan.bytes.per_rank}, {"replicated", plan.bytes.replicated}};
  return j.dump(indent);
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
      << shape_str(p.shape) << "  " << std::setw(10) << placement_name(p.placement) << "  " << p.reason << "\n";
  }
  o << "\nrescaled sizes (" << plan.rescaled.size() << "):\n";
  if (plan.rescaled.empty()) o << "  none: every size on a split dim is inferred (-1) or read from the tensor\n";
  for (const auto& r : plan.rescaled)
    o << "  " << r.where << ": " << r.value << " " << r.from << " -> " << r.to << "  (" << r.source << ")\n";
  o << "\ncollectives (" << plan.collectives.size() << "):\n";
  for (const auto& c : plan.collectives) o << "  " << c.kind << " " << c.where << "  (" << c.source << ")\n";
  o << "\nsummary\n";
  o << "  transformer blocks:  " << plan.blocks << " row-parallel linears\n";
  o << "  parameter bytes:     " << plan.bytes.total << " (" << human_bytes(plan.bytes.total) << ")\n";
  o << "  bytes per rank:      " << plan.bytes.per_rank << " (" << human_bytes(plan.bytes.per_rank) << ")\n";
  o << "  replicated bytes:    " << plan.bytes.replicated << " (" << human_bytes(plan.bytes.replicated) << ")\n";
  o << "  valid tp sizes:      ";
  for (size_t i = 0; i < plan.valid_tp.size(); ++i) o << (i ? ", " : "") << plan.valid_tp[i];
  o << "\n";
  return o.str();
}

}  // namespace autotp
