// The library face of the analysis for a model file (load -> probe -> propagate -> plan), and the
// one user line of an error.
#include <algorithm>

#include "autotp/autotp.h"
#include "autotp/passes.h"

#include "passes/analyze.h"

namespace autotp {

TpPlan inspect(const std::string& model_path, int tp) {
  ModelGraph mg = load_model_graph(model_path);
  auto values = probe(mg, example_inputs(mg));
  if (tp == 0) {  // the largest tp up to a node's 8 that splits every family evenly
    TpPlan any = make_plan(mg, structure_for_tp(mg, values, 1), 1);
    tp = 1;
    for (int v : any.valid_tp) {
      const std::string mark = "tp=" + std::to_string(v) + ":";
      bool noted = std::any_of(any.tp_notes.begin(), any.tp_notes.end(), [&](const std::string& n) { return n.rfind(mark, 0) == 0; });
      if (v <= 8 && !noted) tp = v;
    }
  }
  return make_plan(mg, structure_for_tp(mg, values, tp), tp);
}

std::string user_message(const std::exception& e) {
  // The interpreter wraps an op's exception: "The following operation failed ...\nTraceback ...\n
  // RuntimeError: autotp::copy_to_tp: no device mesh ...". The user's line is the autotp one.
  const std::string what = e.what();
  size_t start = 0;
  while (start < what.size()) {
    size_t end = what.find('\n', start);
    std::string line = what.substr(start, end == std::string::npos ? std::string::npos : end - start);
    for (const char* prefix : {"RuntimeError: ", "Error: "})
      if (line.rfind(prefix, 0) == 0) line = line.substr(std::string(prefix).size());
    if (line.rfind("autotp::", 0) == 0 || line.rfind("autotp: ", 0) == 0) return line;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return what.substr(0, what.find('\n'));
}

}  // namespace autotp
