// Loading or making this rank's module (see rank_model.h).
#include "runtime/rank_model.h"

#include <filesystem>

#include "autotp/error.h"
#include "autotp/passes.h"

namespace autotp {


RankModel load_rank_model(const std::string& path, int64_t tp, int tp_rank, bool sdpa) {
  if (std::filesystem::is_directory(path)) {
    const std::string mine = path + "/rank" + std::to_string(tp_rank) + ".pt";
    if (!std::filesystem::exists(mine))
      throw Error(path + ": no rank" + std::to_string(tp_rank) + ".pt; write the rank archives with autotp rewrite MODEL.pt --tp " +
                  std::to_string(tp) + " --out " + path);
    torch::jit::Module m = load_model(mine);
    const RewriteInfo info = rewrite_info(m);
    if (info.tp != tp || info.tp_rank != tp_rank)
      throw Error(mine + ": rewritten for tp=" + std::to_string(info.tp) + " rank " + std::to_string(info.tp_rank) +
                  ", but this is rank " + std::to_string(tp_rank) + " of tensor_parallel.autotp_size " + std::to_string(tp) +
                  "; rewrite the model with --tp " + std::to_string(tp));
    if (sdpa)
      throw Error("--sdpa: " + path + " holds rank archives, already rewritten; use --sdpa with the full model's archive");
    return {m, std::nullopt, {}};
  }
  torch::jit::Module original = load_model(path);
  if (rewrite_info(original).tp != 0)
    throw Error(path + ": is one rank of a rewritten model; pass the directory that holds all rank<r>.pt files");
  const int sites = sdpa ? use_sdpa(original) : -1;
  TpPlan plan = plan_model(original, static_cast<int>(tp), path);
  torch::jit::Module mine = rewrite(original, plan, tp_rank);
  return {mine, original, plan, sites};
}

}  // namespace autotp
