// Analysis time on a 32-layer Llama-7B-shaped graph (32 heads, 32 layers, vocab 32000; hidden 256 so
// the archive stays small — the graph's structure is the 7B one). Target: under 200 ms.
//   BM_LoadArchive: torch::jit::load + inline (what every `autotp inspect` pays first)
//   BM_Analyze:     probe + propagate + plan, on the loaded graph
#include <benchmark/benchmark.h>

#include "passes/analyze.h"

namespace {

const std::string kModel = std::string(AUTOTP_FIXTURES_DIR) + "/llama7b_shape.pt";

void BM_LoadArchive(benchmark::State& state) {
  for (auto _ : state) {
    auto mg = autotp::load_model_graph(kModel);
    benchmark::DoNotOptimize(mg.graph.get());
  }
}
BENCHMARK(BM_LoadArchive)->Unit(benchmark::kMillisecond)->Iterations(5)->Repetitions(3);

void BM_Analyze(benchmark::State& state) {
  auto mg = autotp::load_model_graph(kModel);
  for (auto _ : state) {
    auto plan = autotp::analyze(mg, 4);
    benchmark::DoNotOptimize(plan.parameters.data());
  }
  state.counters["nodes"] = static_cast<double>(std::distance(mg.graph->nodes().begin(), mg.graph->nodes().end()));
}
BENCHMARK(BM_Analyze)->Unit(benchmark::kMillisecond)->Iterations(10)->Repetitions(5);

void BM_Propagate(benchmark::State& state) {
  auto mg = autotp::load_model_graph(kModel);
  auto values = autotp::probe(mg, autotp::example_inputs(mg));
  for (auto _ : state) {
    auto s = autotp::propagate(mg, values);
    benchmark::DoNotOptimize(s.linears.data());
  }
}
BENCHMARK(BM_Propagate)->Unit(benchmark::kMillisecond)->Iterations(10)->Repetitions(5);

}  // namespace

BENCHMARK_MAIN();
