// Mesh set-up and counters as torch.ops.autotp.* so that Python, which only sees the library
// through torch.ops.load_library, can run rewritten archives under torchrun:
//   torch.ops.load_library("build/libautotp.so")
//   rank, world, tp_rank, dp_rank = torch.ops.autotp.init_mesh_from_env(2)  # device="auto": cuda:LOCAL_RANK or cpu
//   logits = torch.jit.load(f"rank{tp_rank}.pt")(ids)
//   print(torch.ops.autotp.collective_stats())   # JSON, per group: by kind, by site, total
#include <torch/library.h>

#include "autotp/mesh.h"

namespace autotp {
namespace {

// device: "auto" (this rank's GPU, cuda:LOCAL_RANK, when CUDA is there; else CPU), "cpu" or "cuda".
std::vector<int64_t> init_mesh_op(int64_t tp, std::string device) {
  auto m = init_mesh_from_env(mesh_options_for(device, static_cast<int>(tp)));
  return {m->rank(), m->world(), m->tp_rank(), m->dp_rank()};
}

std::string stats_op() {
  auto m = current_mesh();
  return m ? m->stats_json() : std::string("{}");
}

void reset_op() {
  if (auto m = current_mesh()) m->reset_counts();
}

}  // namespace
}  // namespace autotp

TORCH_LIBRARY_FRAGMENT(autotp, m) {
  m.def("init_mesh_from_env(int tp, str device=\"auto\") -> int[]", &autotp::init_mesh_op);
  m.def("collective_stats() -> str", &autotp::stats_op);
  m.def("reset_collective_stats() -> ()", &autotp::reset_op);
}
