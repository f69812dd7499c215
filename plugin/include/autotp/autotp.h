// autotp public C++ API (links libautotp.so). No LibTorch headers: cheap to include.
#pragma once

#include <exception>
#include <string>

#include "autotp/error.h"
#include "autotp/plan.h"

namespace autotp {

// Loads a TorchScript archive and plans tensor parallelism for it. tp = 0 picks the largest valid
// tp that is at most 8 (one node). Throws autotp::Error with a one-line message on bad input.
TpPlan inspect(const std::string& model_path, int tp = 0);

// The plan as one JSON document (keys: model, graph_kind, tp, valid_tp, blocks, parameters,
// rescaled, collectives, constraints, bytes, sites: the graph nodes the rewrite edits).
std::string plan_to_json(const TpPlan& plan, int indent = 2);

// A plan written by plan_to_json (perhaps edited by a user), read back. Throws autotp::Error
// naming `label` and the key for malformed input; whether it fits a model is checked by
// autotp::check_plan (autotp/passes.h).
TpPlan plan_from_json(const std::string& text, const std::string& label);

// The one line of an exception meant for the user: an autotp message raised inside a TorchScript
// op arrives wrapped in the interpreter's traceback; this finds it again.
std::string user_message(const std::exception& e);

// The plan as a human table and summary.
std::string plan_to_table(const TpPlan& plan);

}  // namespace autotp
