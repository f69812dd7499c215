// The library face of the analysis: load -> probe -> propagate -> plan.
#include "autotp/autotp.h"

#include "passes/analyze.h"

namespace autotp {

TpPlan inspect(const std::string& model_path, int tp) {
  ModelGraph mg = load_model_graph(model_path);
  auto values = probe(mg, example_inputs(mg));
  ShardingStructure s = propagate(mg, values);
  if (tp == 0) {
    TpPlan any = make_plan(mg, s, 1);
    tp = 1;
    for (int v : any.valid_tp)
      if (v <= 8) tp = v;
  }
  return make_plan(mg, s, tp);
}

}  // namespace autotp
