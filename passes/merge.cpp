// merge_ranks: the full parameters back from the rank modules of one rewrite (autotp/passes.h),
// by the layout each rank archive carries (passes/layout.h), so that no plan file is needed.
//
// The layout is the same JSON string on every rank of one rewrite; comparing those strings is how
// ranks of different plans (another model, another tp, an edited plan) are told apart.
#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

#include "autotp/error.h"
#include "autotp/passes.h"
#include "passes/layout.h"
#include "passes/model_graph.h"

namespace autotp {

std::string layout_to_json(const TpPlan& plan) {
  nlohmann::json j{{"version", 1},
                   {"model", plan.model},
                   {"graph_kind", plan.graph_kind},
                   {"fingerprint", plan.sites.fingerprint},
                   {"tp", plan.tp},
                   {"vocab", plan.sites.vocab},
                   {"vocab_padded", plan.sites.vocab_padded}};
  j["params"] = nlohmann::json::array();
  for (const auto& p : plan.parameters) {
    j["params"].push_back({{"name", p.name}, {"aliases", p.aliases}, {"shape", p.shape}, {"dtype", p.dtype},
                           {"placement", placement_name(p.placement)}, {"split_dim", p.split_dim},
                           {"segments", p.segments}, {"padded", p.padded}});
    if (!p.units.empty()) j["params"].back()["units"] = p.units;  // absent when even: older layouts read the same
    if (p.replicas > 1) j["params"].back()["replicas"] = p.replicas;
  }
  return j.dump();
}

std::vector<ParamPlan> layout_params(const std::string& text, const std::string& label) {
  std::vector<ParamPlan> params;
  std::string key = "params";
  try {
    const auto j = nlohmann::json::parse(text);
    for (const auto& p : j.at("params")) {
      ParamPlan pp;
      pp.name = p.at("name").get<std::string>();
      key = "params[" + pp.name + "]";
      pp.aliases = p.at("aliases").get<std::vector<std::string>>();
      pp.shape = p.at("shape").get<std::vector<int64_t>>();
      pp.dtype = p.at("dtype").get<std::string>();
      const auto placement = p.at("placement").get<std::string>();
      bool known = false;
      for (Placement pl : {Placement::Column, Placement::Row, Placement::Vocab, Placement::Replicated})
        if (placement == placement_name(pl)) pp.placement = pl, known = true;
      if (!known) throw Error(label + ": autotp_layout " + key + ": unknown placement '" + placement + "'");
      pp.split_dim = p.at("split_dim").get<int>();
      pp.segments = p.at("segments").get<std::vector<int64_t>>();
      pp.padded = p.at("padded").get<int64_t>();
      pp.units = p.value("units", std::vector<int64_t>{});
      pp.replicas = p.value("replicas", int64_t{1});
      params.push_back(std::move(pp));
    }
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    throw Error(label + ": autotp_layout " + key + ": " + what.substr(what.find(']') + 2));
  }
  return params;
}

namespace {

// Every tensor of a rank module by the names the plan uses: attribute paths, or for a frozen
// module (no parameters left, weights are graph constants) the names the model graph gives them,
// which follow the order the graph reads them and so agree with the original's.
std::map<std::string, at::Tensor> tensors_by_name(const torch::jit::Module& rank, const std::string& label) {
  std::map<std::string, at::Tensor> out;
  if (rank.named_parameters(true).size() > 0) {
    for (const auto& p : rank.named_parameters(true)) out[p.name] = p.value;
    for (const auto& b : rank.named_buffers(true)) out.emplace(b.name, b.value);
    return out;
  }
  ModelGraph mg = model_graph_from(rank, label);
  for (const auto& e : mg.tensors) {
    out.emplace(e.name, e.tensor);
    for (const auto& a : e.aliases) out.emplace(a, e.tensor);
  }
  return out;
}

}  // namespace

std::vector<std::pair<std::string, at::Tensor>> merge_ranks(const std::vector<torch::jit::Module>& ranks) {
  if (ranks.empty()) throw Error("merge_ranks: no rank modules given");
  const RewriteInfo first = rewrite_info(ranks[0]);
  const int tp = first.tp;
  std::vector<const torch::jit::Module*> by_rank(static_cast<size_t>(std::max(tp, 0)), nullptr);
  std::string layout;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const RewriteInfo info = rewrite_info(ranks[i]);
    const std::string which = "rank module " + std::to_string(i);
    if (info.tp == 0) throw Error(which + " is not a rank module written by autotp rewrite (no autotp_tp attribute)");
    if (!ranks[i].hasattr("autotp_layout"))
      throw Error(which + " (tp rank " + std::to_string(info.tp_rank) +
                  ") was written before rank archives recorded their layout; rewrite the original model again");
    if (info.tp != tp)
      throw Error("the ranks come from different plans: rank module 0 is for tp=" + std::to_string(tp) + ", " + which +
                  " for tp=" + std::to_string(info.tp));
    const std::string mine = ranks[i].attr("autotp_layout").toStringRef();
    if (i == 0) layout = mine;
    else if (mine != layout)
      throw Error("the ranks come from different plans: the layout of " + which + " (tp rank " + std::to_string(info.tp_rank) +
                  ") differs from rank module 0's (another model, or another plan of it)");
    if (info.tp_rank < 0 || info.tp_rank >= tp) throw Error(which + " says tp rank " + std::to_string(info.tp_rank) + " of tp=" + std::to_string(tp));
    auto& slot = by_rank[static_cast<size_t>(info.tp_rank)];
    if (slot) throw Error("tp rank " + std::to_string(info.tp_rank) + " is given twice (" + which + " again)");
    slot = &ranks[i];
  }
  std::string missing;
  for (int r = 0; r < tp; ++r)
    if (!by_rank[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
  if (!missing.empty())
    throw Error("tp ranks " + missing + " of tp=" + std::to_string(tp) + " are missing; " + std::to_string(ranks.size()) +
                " rank module(s) given");

  const std::vector<ParamPlan> params = first.params;
  std::vector<std::map<std::string, at::Tensor>> tensors;
  for (int r = 0; r < tp; ++r) tensors.push_back(tensors_by_name(*by_rank[static_cast<size_t>(r)], "tp rank " + std::to_string(r)));
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& p : params) {
    std::vector<at::Tensor> parts;
    for (int r = 0; r < tp; ++r) {
      const std::vector<int64_t> expect = local_shape(p, tp, r);
      auto it = tensors[static_cast<size_t>(r)].find(p.name);
      if (it == tensors[static_cast<size_t>(r)].end())
        throw Error("tp rank " + std::to_string(r) + " has no tensor " + p.name + ", which its layout lists");
      if (it->second.sizes().vec() != expect)
        throw Error("tp rank " + std::to_string(r) + " holds " + p.name + " of shape " + join_shape(it->second.sizes().vec()) +
                    " but its layout says " + join_shape(expect) + " (full " + join_shape(p.shape) + ")");
      parts.push_back(it->second.detach());
      if (p.split_dim < 0) break;  // replicated: every rank holds the same, rank 0's is the one
    }
    // Never aliasing a rank module's parameter: a split one is assembled into a new tensor (cat), a
    // replicated one copied.
    out.emplace_back(p.name, p.split_dim < 0 ? parts[0].clone() : assemble(parts, p).contiguous());
  }
  return out;
}

}  // namespace autotp
