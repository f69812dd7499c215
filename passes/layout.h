// The layout a rank archive carries (string attribute autotp_layout, written by rewrite()): what
// putting the ranks back together needs — tp, the vocabulary and its padding, and per parameter
// of the plan its names, full shape, dtype, placement, split dim, fused segments and padding.
// JSON, so that an archive can be assembled with no plan file beside it.
#pragma once

#include <string>
#include <vector>

#include "autotp/plan.h"

namespace autotp {

std::string layout_to_json(const TpPlan& plan);
// The parameters of a layout written by layout_to_json; `label` names the archive in errors.
std::vector<ParamPlan> layout_params(const std::string& json, const std::string& label);

}  // namespace autotp
