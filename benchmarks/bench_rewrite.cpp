// Overhead of the rewrite at tp=1: forward+backward of SmolLM2-135M-Instruct (the bundled
// pretrained model, batch [2, 8]) as the original TorchScript module and as autotp's rewritten
// module on a one-rank mesh (copy_to_tp / reduce_from_tp / vocab-parallel embedding and
// cross-entropy in the graph, no communication). Target: under 3% slower.
//   BM_StepPair: each iteration runs one original and one rewritten step back to back and the
//                median of their per-iteration ratio (order alternating) is reported (counter `ratio`): both see the
//                same machine state, which matters on a shared 2-core box.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/mesh.h"
#include "autotp/passes.h"
#include "runtime/tp_ops.h"

namespace {

const std::string kModel = std::string(AUTOTP_FIXTURES_DIR) + "/smollm2.pt";

double step(torch::jit::Module& m, const at::Tensor& ids, bool vocab_parallel) {
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor logits = autotp::logits_of(m.forward({ids}));
  at::Tensor shifted = logits.narrow(1, 0, logits.size(1) - 1);
  at::Tensor labels = ids.narrow(1, 1, ids.size(1) - 1);
  at::Tensor loss = vocab_parallel ? autotp::vocab_parallel_cross_entropy(shifted, labels, -100, "tp", 1).mean()
                                   : at::cross_entropy_loss(shifted.reshape({-1, shifted.size(-1)}), labels.reshape({-1}));
  torch::autograd::backward({loss});
  for (const auto& p : m.parameters()) p.mutable_grad() = at::Tensor();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void BM_StepPair(benchmark::State& state) {
  autotp::MeshOptions o;
  o.tp = 1;
  autotp::set_process_mesh(autotp::Mesh::create(c10::make_intrusive<c10d::HashStore>(), 0, 1, o));
  auto original = autotp::load_model(kModel);
  auto rewritten = autotp::rewrite(original, autotp::plan_model(original, 1, kModel), 0);
  at::Tensor ids = at::randint(49152, {2, 8}, at::kLong);
  step(original, ids, false);  // warm-up: the profiling executor specialises on the first runs
  step(rewritten, ids, true);
  step(original, ids, false);
  step(rewritten, ids, true);
  std::vector<double> ratios, a, b;
  bool rewritten_first = false;  // alternate the order so neither side always runs on a warm cache
  for (auto _ : state) {
    double t_orig = 0, t_rw = 0;
    if (rewritten_first) t_rw = step(rewritten, ids, true);
    t_orig = step(original, ids, false);
    if (!rewritten_first) t_rw = step(rewritten, ids, true);
    rewritten_first = !rewritten_first;
    a.push_back(t_orig);
    b.push_back(t_rw);
    ratios.push_back(t_rw / t_orig);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  state.counters["original_ms"] = median(a) * 1e3;
  state.counters["rewritten_ms"] = median(b) * 1e3;
  state.counters["ratio"] = median(ratios);
  autotp::set_process_mesh(nullptr);
}
BENCHMARK(BM_StepPair)->Unit(benchmark::kMillisecond)->Iterations(30)->Repetitions(3);

}  // namespace
