// Training checkpoints (see checkpoint.h for the folder layout and the commit protocol).
#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "autotp/passes.h"
#include "runtime/safetensors.h"

namespace autotp {
namespace fs = std::filesystem;
namespace {

void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw Error(p.string() + ": cannot open to sync it to disk");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw Error(p.string() + ": fsync failed");
}

// A file written under `tmp`: synced to disk, then renamed to `path`, so no reader sees half of it.
void publish(const fs::path& tmp, const fs::path& path) {
  fsync_path(tmp, false);
  fs::rename(tmp, path);
}

void write_file_atomically(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!(f << text) || !f.flush()) throw Error(path.string() + ": cannot write");
  }
  publish(tmp, path);
}

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path.string() + ": cannot read");
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

std::string zero_file(int64_t tp_rank, int64_t dp_rank) {
  return "zero-tp" + std::to_string(tp_rank) + "-dp" + std::to_string(dp_rank) + ".safetensors";
}
std::string rank_file(int64_t tp_rank) { return "rank" + std::to_string(tp_rank) + ".pt"; }
std::string rng_file(int64_t rank) { return "rng-rank" + std::to_string(rank) + ".safetensors"; }

// Which DP ranks wrote a partition: all of them at stage 1, DP rank 0 (the whole state) at stage 0.
int64_t partition_writers(int zero_stage, int64_t dp) { return zero_stage == 1 ? dp : 1; }

// Every rank learns whether every rank succeeded (outside a step: not counted as training traffic).
bool all_ok(Group& world, bool ok) {
  at::Tensor flag = at::tensor({ok ? 1.0 : 0.0}, at::kDouble);
  world.all_reduce(flag, c10d::ReduceOp::MIN, "train.checkpoint");
  return flag.item<double>() == 1.0;
}

// The flat layout a partition was cut from: parameter names and sizes in order.
std::string layout_json(const ZeroOneOptimizer& opt) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& p : opt.params()) j.push_back({{"name", p.name}, {"numel", p.param.numel()}, {"shape", p.param.sizes().vec()}});
  return j.dump();
}

}  // namespace

std::string CheckpointState::json() const {
  nlohmann::json j{{"format", "autotp-checkpoint-1"}, {"step", step}, {"tp", tp}, {"dp", dp}, {"world", world},
                   {"zero_stage", zero_stage}, {"global_batch", global_batch}, {"micro_batch", micro_batch},
                   {"grad_accum", grad_accum}, {"seq", seq}, {"samples_seen", samples_seen}, {"epoch", epoch},
                   {"seed", seed}, {"bf16", bf16}, {"data", data}, {"data_tokens", data_tokens}, {"loss", loss}};
  return j.dump(2) + "\n";
}

CheckpointState CheckpointState::parse(const std::string& text, const std::string& label) {
  CheckpointState s;
  try {
    const auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != "autotp-checkpoint-1")
      throw Error(label + ": format is '" + j.value("format", "") + "', expected autotp-checkpoint-1");
    s.step = j.at("step");
    s.tp = j.at("tp");
    s.dp = j.at("dp");
    s.world = j.at("world");
    s.zero_stage = j.at("zero_stage");
    s.global_batch = j.at("global_batch");
    s.micro_batch = j.at("micro_batch");
    s.grad_accum = j.at("grad_accum");
    s.seq = j.at("seq");
    s.samples_seen = j.at("samples_seen");
    s.epoch = j.at("epoch");
    s.seed = j.at("seed");
    s.bf16 = j.at("bf16");
    s.data = j.at("data");
    s.data_tokens = j.at("data_tokens");
    s.loss = j.at("loss");
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(label + ": not a readable autotp checkpoint state (" + std::string(e.what()) + ")");
  }
  return s;
}

void save_checkpoint(const SaveRequest& req, torch::jit::Module& model, const ZeroOneOptimizer& opt, Mesh& mesh) {
  const fs::path folder = fs::path(req.folder).lexically_normal();
  const fs::path parent = folder.has_parent_path() ? folder.parent_path() : fs::path(".");
  const fs::path tmp = parent / ("." + folder.filename().string() + ".partial");
  Group& world = mesh.world_group();
  const bool root = mesh.rank() == 0;
  std::string err;
  auto attempt = [&](auto&& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      err = user_message(e);
    }
  };
  auto agree = [&](const std::string& what) {
    if (!all_ok(world, err.empty()))
      throw Error(folder.string() + ": checkpoint not written: " +
                  (err.empty() ? "another rank failed to " + what : err) + "; the previous checkpoint is untouched");
  };

  if (root) attempt([&] {
      fs::create_directories(parent);
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    });
  agree("prepare the folder");

  attempt([&] {
    const OptimizerState st = opt.state();
    if (mesh.dp_rank() == 0) {
      const fs::path f = tmp / rank_file(mesh.tp_rank());
      model.save(f.string() + ".tmp");
      publish(f.string() + ".tmp", f);
    }
    if (mesh.dp_rank() < partition_writers(req.state.zero_stage, mesh.dp())) {
      std::map<std::string, std::string> meta{{"step", std::to_string(st.step)},   {"begin", std::to_string(st.begin)},
                                              {"flat", std::to_string(st.flat)},   {"padded", std::to_string(st.padded)},
                                              {"tp_rank", std::to_string(mesh.tp_rank())},
                                              {"dp_rank", std::to_string(mesh.dp_rank())}, {"layout", layout_json(opt)}};
      write_safetensors((tmp / zero_file(mesh.tp_rank(), mesh.dp_rank())).string(),
                        {{"master", st.master}, {"exp_avg", st.exp_avg}, {"exp_avg_sq", st.exp_avg_sq}}, meta);
    }
    at::Tensor rng;
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      rng = gen.get_state();
    }
    write_safetensors((tmp / rng_file(mesh.rank())).string(), {{"cpu", rng}});
  });
  agree("write its part");

  if (root) attempt([&] {
      std::vector<std::string> expected;
      for (int64_t t = 0; t < mesh.tp(); ++t) {
        expected.push_back(rank_file(t));
        for (int64_t d = 0; d < partition_writers(req.state.zero_stage, mesh.dp()); ++d) expected.push_back(zero_file(t, d));
      }
      for (int64_t r = 0; r < mesh.world(); ++r) expected.push_back(rng_file(r));
      for (const auto& f : expected)
        if (!fs::exists(tmp / f))
          throw Error((tmp / f).string() + " is missing after every rank wrote its part; --save-dir must be one folder "
                      "every rank sees (a shared file system on several nodes)");
      write_file_atomically(tmp / "config.resolved.json", req.config_json);
      if (!req.plan_json.empty()) write_file_atomically(tmp / "plan.json", req.plan_json);
      write_file_atomically(tmp / "trainer_state.json", req.state.json());
      fsync_path(tmp, true);
      // A folder of this name (an earlier run's) is replaced whole.
      const fs::path old = parent / ("." + folder.filename().string() + ".old");
      const bool replacing = fs::exists(folder);
      if (replacing) {
        fs::remove_all(old);
        fs::rename(folder, old);
      }
      fs::rename(tmp, folder);
      if (replacing) fs::remove_all(old);
      fsync_path(parent, true);
    });
  agree("commit the checkpoint");
}

void commit_latest(const std::string& dir, const std::string& step_folder, int64_t keep) {
  const fs::path root(dir);
  write_file_atomically(root / "latest", fs::path(step_folder).filename().string() + "\n");
  fsync_path(root, true);
  if (keep <= 0) return;
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step-", 0) != 0) continue;
    try {
      steps.emplace_back(std::stoll(name.substr(5)), e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(steps.rbegin(), steps.rend());
  const std::string current = fs::path(step_folder).filename().string();
  for (size_t i = static_cast<size_t>(keep); i < steps.size(); ++i)
    if (steps[i].second.filename() != current) fs::remove_all(steps[i].second);
}

std::optional<std::string> latest_of(const std::string& root) {
  const fs::path f = fs::path(root) / "latest";
  if (!fs::exists(f)) return std::nullopt;
  std::string name = read_text(f);
  name.erase(name.find_last_not_of(" \n\r\t") + 1);
  return name;
}

std::string resolve_checkpoint(const std::string& path) {
  const fs::path p(path);
  if (fs::exists(p / "trainer_state.json")) return p.string();
  if (const std::optional<std::string> latest = latest_of(path)) {
    const std::string& name = *latest;
    if (!fs::exists(p / name / "trainer_state.json"))
      throw Error(path + "/latest names '" + name + "', which holds no trainer_state.json; the checkpoint is gone or incomplete");
    return (p / name).string();
  }
  if (!fs::exists(p)) throw Error(path + ": no such checkpoint folder");
  throw Error(path + ": not a checkpoint: neither trainer_state.json nor a latest file (autotp train --save-dir DIR writes them)");
}

CheckpointState read_checkpoint_state(const std::string& folder) {
  const fs::path f = fs::path(folder) / "trainer_state.json";
  return CheckpointState::parse(read_text(f), f.string());
}

namespace {

struct Partition {
  int64_t begin = 0, flat = 0;
  nlohmann::json layout;
  at::Tensor master, exp_avg, exp_avg_sq;  // without the padding past `flat`
};

Partition read_partition(const fs::path& file) {
  SafetensorsFile sf = read_safetensors(file.string());
  Partition p;
  std::map<std::string, at::Tensor> t(sf.tensors.begin(), sf.tensors.end());
  try {
    p.begin = std::stoll(sf.metadata.at("begin"));
    p.flat = std::stoll(sf.metadata.at("flat"));
    p.layout = nlohmann::json::parse(sf.metadata.at("layout"));
    for (const char* k : {"master", "exp_avg", "exp_avg_sq"})
      if (!t.count(k)) throw Error(std::string("no tensor '") + k + "'");
  } catch (const std::exception& e) {
    throw Error(file.string() + ": not an autotp ZeRO partition (" + user_message(e) + ")");
  }
  const int64_t n = std::max<int64_t>(0, std::min(t["master"].numel(), p.flat - p.begin));
  p.master = t["master"].narrow(0, 0, n);
  p.exp_avg = t["exp_avg"].narrow(0, 0, n);
  p.exp_avg_sq = t["exp_avg_sq"].narrow(0, 0, n);
  return p;
}

// Same names and sizes in the same order, or a one-line error naming the first difference.
void check_layout(const nlohmann::json& layout, const ZeroOneOptimizer& opt, const fs::path& file) {
  const auto& params = opt.params();
  for (size_t i = 0; i < std::max(layout.size(), params.size()); ++i) {
    const std::string theirs = i < layout.size() ? layout[i].at("name").get<std::string>() + " (" +
                                                       std::to_string(layout[i].at("numel").get<int64_t>()) + " elements)"
                                                 : "nothing";
    const std::string ours = i < params.size() ? params[i].name + " (" + std::to_string(params[i].param.numel()) + " elements)"
                                               : "nothing";
    if (theirs != ours)
      throw Error(file.string() + ": parameter " + std::to_string(i) + " is " + theirs + " in the checkpoint but " + ours +
                  " in this run's model; resume with the model the checkpoint was trained from");
  }
}

const ParamPlan& param_plan(const std::vector<ParamPlan>& layout, const std::string& name, const std::string& label) {
  for (const auto& p : layout) {
    if (p.name == name) return p;
    for (const auto& a : p.aliases)
      if (a == name) return p;
  }
  throw Error(label + ": the plan has no parameter " + name);
}

}  // namespace

void load_checkpoint(const std::string& folder, const CheckpointState& st, const std::vector<ParamPlan>& layout, ZeroOneOptimizer& opt,
                     Mesh& mesh) {
  const fs::path dir(folder);
  const int64_t writers = partition_writers(st.zero_stage, st.dp);
  std::vector<FlatPiece> pieces;
  if (st.tp == mesh.tp()) {
    for (int64_t d = 0; d < writers; ++d) {
      const fs::path f = dir / zero_file(mesh.tp_rank(), d);
      Partition p = read_partition(f);
      if (d == 0) check_layout(p.layout, opt, f);
      pieces.push_back({p.begin, p.master, p.exp_avg, p.exp_avg_sq});
    }
  } else {
    // Another tp: every parameter whole from the old ranks' partitions, then this rank's cut of it.
    // The old cut: the checkpoint's plan.json, or the layout its rank archives record.
    const fs::path plan_file = dir / "plan.json";
    std::vector<ParamPlan> old_layout;
    std::string old_label = plan_file.string();
    if (fs::exists(plan_file)) {
      old_layout = plan_from_json(read_text(plan_file), plan_file.string()).parameters;
    } else {
      old_label = (dir / rank_file(0)).string();
      old_layout = rewrite_info(load_model(old_label)).params;
    }
    if (old_layout.empty() || layout.empty())
      throw Error(folder + ": resuming at tp=" + std::to_string(mesh.tp()) + " from a checkpoint of tp=" + std::to_string(st.tp) +
                  " needs how both cut the parameters: " +
                  (old_layout.empty() ? old_label + " records no layout (written by an older autotp)" : "this run's model records none") +
                  "; resume at tp=" + std::to_string(st.tp));
    // name -> per old tp rank: [master, exp_avg, exp_avg_sq]
    std::map<std::string, std::vector<std::array<at::Tensor, 3>>> parts;
    for (int64_t t = 0; t < st.tp; ++t) {
      std::vector<Partition> ps;
      for (int64_t d = 0; d < writers; ++d) ps.push_back(read_partition(dir / zero_file(t, d)));
      std::array<at::Tensor, 3> whole;
      for (int k = 0; k < 3; ++k) {
        std::vector<at::Tensor> runs;
        for (const auto& p : ps) runs.push_back(k == 0 ? p.master : k == 1 ? p.exp_avg : p.exp_avg_sq);
        whole[k] = at::cat(runs);
      }
      int64_t offset = 0;
      for (const auto& entry : ps.at(0).layout) {
        const std::vector<int64_t> shape = entry.at("shape");
        const int64_t n = entry.at("numel");
        std::array<at::Tensor, 3> one;
        for (int k = 0; k < 3; ++k) one[k] = whole[k].narrow(0, offset, n).view(shape);
        parts[entry.at("name")].push_back(one);
        offset += n;
      }
    }
    at::Tensor master = at::zeros({opt.flat()}, at::kFloat), m = at::zeros_like(master), v = at::zeros_like(master);
    for (size_t i = 0; i < opt.params().size(); ++i) {
      const TrainableParam& tp = opt.params()[i];
      auto it = parts.find(tp.name);
      if (it == parts.end())
        throw Error(folder + ": holds no optimizer state for " + tp.name + "; resume with the model the checkpoint was trained from");
      const ParamPlan& was = param_plan(old_layout, tp.name, old_label);
      const ParamPlan& now = param_plan(layout, tp.name, "this run's model");
      at::Tensor* dst[3] = {&master, &m, &v};
      for (int k = 0; k < 3; ++k) {
        std::vector<at::Tensor> ranks;
        for (const auto& r : it->second) ranks.push_back(r[k]);
        at::Tensor full = was.split_dim < 0 ? ranks.at(0) : assemble(ranks, was);
        at::Tensor mine = now.split_dim < 0 ? full : shard_of(full, now, mesh.tp(), mesh.tp_rank());
        if (mine.numel() != tp.param.numel())
          throw Error(folder + ": " + tp.name + " re-cut for tp=" + std::to_string(mesh.tp()) + " has " +
                      std::to_string(mine.numel()) + " elements, this rank holds " + std::to_string(tp.param.numel()));
        dst[k]->narrow(0, opt.offsets()[i], mine.numel()).copy_(mine.reshape({-1}));
      }
    }
    pieces.push_back({0, master, m, v});
  }
  opt.load_state(st.step, pieces);

  const fs::path rng = dir / rng_file(mesh.rank());
  if (st.world == mesh.world() && st.tp == mesh.tp() && fs::exists(rng)) {
    SafetensorsFile sf = read_safetensors(rng.string());
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(sf.tensors.at(0).second.clone());
  }
}

}  // namespace autotp
