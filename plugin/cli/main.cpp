// autotp — command line face of libautotp.
//   autotp inspect MODEL.pt [--tp N] [--json]
//   autotp rewrite MODEL.pt --tp N --out DIR
//   autotp verify  MODEL.pt --tp N [--dtype fp32|bf16] [--seq S] [--batch B] [--seed X]
//   autotp check   CONFIG.json [--world-size W] [--hf-args sft.yaml [--data D.tokens [--seq S]]]
//   autotp train   --config C.json --model M.pt --data D.tokens [--hf-args sft.yaml] [--steps N] [--no-verify] ...
//   autotp train   --llamafactory sft.yaml [--steps N] [--metrics F] [--no-verify] ...
//   autotp merge   SRC --out HF_DIR [--dtype fp32|bf16] [--max-shard-size 5GB]
//   autotp plan    (MODEL.pt | --hf-config config.json) --gpus-per-node G ... (memory and traffic per strategy)
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <iostream>
#include <string>
#include <type_traits>
#include <vector>

#include "autotp/autotp.h"
#include "autotp/mesh.h"
#include "autotp/passes.h"
#include "autotp/verify.h"
#include "plugin/cli/cli.h"
#include "plugin/cli/llamafactory_cmd.h"
#include "runtime/config.h"
#include "runtime/hf_args.h"
#include "runtime/token_data.h"
#include "runtime/trainer.h"

#include <torch/csrc/distributed/c10d/HashStore.hpp>

using autotp_cli::parse_double;
using autotp_cli::parse_int;
using autotp_cli::value_of;

namespace {

const char* kUsage =
    "usage: autotp inspect MODEL.pt [--tp N] [--json]\n"
    "       autotp rewrite MODEL.pt (--tp N [--sdpa] | --plan PLAN.json) --out DIR\n"
    "       autotp check   CONFIG.json [--world-size W] [--micro-batch N] [--grad-accum N] [--lr X] [--json]\n"
    "                      [--hf-args sft.yaml [--data D.tokens [--seq S]]]\n"
    "       autotp train   --config C.json --model M.pt --data D.tokens [--hf-args sft.yaml] [--steps N] [--seq S] [--out DIR]\n"
    "                      [--metrics FILE.jsonl] [--micro-batch N] [--grad-accum N] [--lr X] [--no-verify] [--sdpa] [--device cpu|cuda|auto]\n"
    "                      [--save-dir DIR [--save-every N] [--keep K]] [--resume DIR] [--no-shuffle]\n"
    "                      [--eval-data F.tokens [--eval-every N] [--eval-samples N]] [--timeout SECONDS]\n"
    "       autotp train   --llamafactory sft.yaml [--steps N] [--metrics F] [--no-verify] [--no-shuffle] [--timeout S]\n"
    "       autotp verify  MODEL.pt --tp N [--dtype fp32|bf16] [--seq S] [--batch B] [--seed X] [--per-param] [--sdpa] [--device cpu|cuda]\n"
    "       autotp merge   SRC --out HF_DIR [--dtype fp32|bf16] [--max-shard-size 5GB]\n"
    "       autotp plan    (MODEL.pt | --hf-config config.json) (--cluster NAME | --gpus-per-node G --gpu-memory 80GiB\n"
    "                      --intra-node-bw 450GB/s [--inter-node-bw 50GB/s]) [--nodes N] --seq S [--micro-batch M]\n"
    "                      --global-batch B [--dtype bf16|fp32] [--activation-checkpointing] [--flash-attention] [--json]\n"
    "                      [--strategy NAME] [--emit-deepspeed ds.json] [--emit-llamafactory sft.yaml] [--lr X]\n"
    "                      [--dataset NAME] [--template NAME]\n"
    "  inspect  plan tensor parallelism for a TorchScript model: placement of every parameter,\n"
    "           sizes to rescale, collectives to insert, bytes per rank, valid tp sizes.\n"
    "           --tp defaults to the largest valid tp <= 8.\n"
    "  rewrite  write one TorchScript archive per tp rank (DIR/rank<r>.pt) and DIR/plan.json;\n"
    "           the archives load wherever libautotp.so is loaded.\n"
    "  verify   run forward+backward of the tp rank modules on a random batch and compare logits,\n"
    "           loss and every gradient with the unsharded model (fp32 tolerance 1e-5 relative).\n"
    "           Ranks are threads; under torchrun (WORLD_SIZE set) each process is one rank.\n"
    "  check    validate a DeepSpeed-style training config (configs/README.md): every problem, one per\n"
    "           line; or a summary of mesh, batch arithmetic, optimizer, schedule and ZeRO stage.\n"
    "           --world-size W resolves dp = W / autotp_size and checks train_batch_size.\n"
    "           --hf-args sft.yaml (a LLaMA-Factory / TrainingArguments YAML) fills every \"auto\" as the\n"
    "           Hugging Face Trainer does and checks the other values against it; CONFIG defaults to its\n"
    "           deepspeed: key. With num_train_epochs (no max_steps), --data counts the steps per epoch.\n"
    "  train    AutoTP + ZeRO-1 training; launch with torchrun (torchrun --nproc_per_node N --no-python\n"
    "           build/autotp train ...); without torchrun it runs as one rank. Before step 1 each rank\n"
    "           checks its sharded model against the unsharded one on one small batch (--no-verify\n"
    "           skips it); replicated parameters are compared across TP every steps_per_print steps.\n"
    "           --save-dir DIR writes DIR/step-<N>/ (weights, ZeRO partitions, schedule and data position,\n"
    "           RNG) atomically every --save-every steps and after the last; --resume DIR continues bit\n"
    "           for bit (another dp or tp: re-partitioned). --eval-data reports held-out loss.\n"
    "           --llamafactory sft.yaml runs a LLaMA-Factory YAML: its local model folder traced and its\n"
    "           dataset_info.json datasets tokenized with its template (both cached), its deepspeed: file, checkpoints\n"
    "           and the merged Hugging Face model in output_dir; keys autotp does not implement are refused.\n"
    "  merge    the rank archives in SRC (rank0.pt.., or a checkpoint root whose file `latest` names them)\n"
    "           back as one Hugging Face folder: model.safetensors (sharded above --max-shard-size),\n"
    "           tied weights once, vocab padding stripped; config and tokenizer files when the model was\n"
    "           exported with scripts/export_hf.py. --dtype defaults to the archive's.\n"
    "  plan     per-GPU memory (params, grads, optimizer, activations, buffers) and communication per step\n"
    "           (intra- and inter-node) of DDP, ZeRO-1/2/3 and AutoTP(t)+ZeRO-1/2 on a cluster, and one\n"
    "           recommendation. Presets: h100-nvlink-ib400, a100-nvlink-ib200, rtx4090-pcie-eth (flags override\n"
    "           them). --emit-deepspeed/--emit-llamafactory write configs for the recommended or --strategy row.\n";

int cmd_inspect(const std::vector<std::string>& args) {
  std::string model;
  int tp = 0;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--tp") {
      if (i + 1 >= args.size()) throw autotp::Error("--tp needs a value, e.g. --tp 2");
      tp = parse_int("--tp", args[++i]);
      if (tp < 1) throw autotp::Error("--tp must be a positive integer, got " + std::to_string(tp));
    } else if (a.rfind("--", 0) == 0) {
      throw autotp::Error("inspect: unknown option '" + a + "'; options are --tp N and --json");
    } else if (model.empty()) {
      model = a;
    } else {
      throw autotp::Error("inspect: one model expected, got '" + model + "' and '" + a + "'");
    }
  }
  if (model.empty()) throw autotp::Error("inspect: which model? usage: autotp inspect MODEL.pt [--tp N] [--json]");
  autotp::TpPlan plan = autotp::inspect(model, tp);
  std::cout << (json ? autotp::plan_to_json(plan) + "\n" : autotp::plan_to_table(plan));
  return 0;
}

struct ModelAndTp {
  std::string model;
  int tp = 0;
};

int cmd_rewrite(const std::vector<std::string>& args) {
  ModelAndTp m;
  std::string out, plan_path;
  bool sdpa = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--tp") {
      m.tp = parse_int("--tp", value_of(args, i, "2"));
    } else if (a == "--sdpa") {
      sdpa = true;
    } else if (a == "--out") {
      out = value_of(args, i, "DIR");
    } else if (a == "--plan") {
      plan_path = value_of(args, i, "PLAN.json");
    } else if (a.rfind("--", 0) == 0) {
      throw autotp::Error("rewrite: unknown option '" + a + "'; options are --tp N, --plan PLAN.json, --sdpa and --out DIR");
    } else if (m.model.empty()) {
      m.model = a;
    } else {
      throw autotp::Error("rewrite: one model expected, got '" + m.model + "' and '" + a + "'");
    }
  }
  if (m.model.empty() || (m.tp < 1 && plan_path.empty()) || out.empty())
    throw autotp::Error("rewrite: usage: autotp rewrite MODEL.pt (--tp N | --plan PLAN.json) --out DIR");
  auto module = autotp::load_model(m.model);
  if (sdpa && !plan_path.empty())
    throw autotp::Error("rewrite: --sdpa changes the graph a plan file was made for; use --sdpa with --tp N");
  if (sdpa)
    std::cout << "sdpa: " << autotp::use_sdpa(module) << " attention sites now scaled_dot_product_attention(is_causal=True)\n";
  autotp::TpPlan plan;
  if (plan_path.empty()) {
    plan = autotp::plan_model(module, m.tp, m.model);
  } else {  // a plan the user may have edited: checked against the analysis with the edits
    std::ifstream in(plan_path);
    if (!in) throw autotp::Error(plan_path + ": cannot read the plan");
    std::stringstream text;
    text << in.rdbuf();
    autotp::TpPlan edited = autotp::plan_from_json(text.str(), plan_path);
    if (m.tp > 0 && m.tp != edited.tp)
      throw autotp::Error("rewrite: --tp " + std::to_string(m.tp) + " but " + plan_path + " is a plan for tp=" + std::to_string(edited.tp));
    plan = autotp::check_plan(module, edited, plan_path);
    m.tp = plan.tp;
  }
  std::filesystem::create_directories(out);
  std::ofstream(out + "/plan.json") << autotp::plan_to_json(plan) << "\n";
  for (int r = 0; r < m.tp; ++r) {
    const std::string path = out + "/rank" + std::to_string(r) + ".pt";
    autotp::rewrite(module, plan, r).save(path);
    std::cout << "wrote " << path << "\n";
  }
  std::cout << "wrote " << out << "/plan.json (" << plan.bytes.per_rank << " parameter bytes per rank of "
            << plan.bytes.total << ")\n";
  return 0;
}

int cmd_verify(const std::vector<std::string>& args) {
  autotp::VerifyOptions o;
  o.tp = 0;
  std::string model;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--tp") {
      o.tp = parse_int("--tp", value_of(args, i, "2"));
    } else if (a == "--dtype") {
      o.dtype = value_of(args, i, "fp32");
    } else if (a == "--seq") {
      o.seq = parse_int("--seq", value_of(args, i, "16"));
    } else if (a == "--batch") {
      o.batch = parse_int("--batch", value_of(args, i, "2"));
    } else if (a == "--per-param") {
      o.per_parameter = true;
    } else if (a == "--sdpa") {
      o.sdpa = true;
    } else if (a == "--device") {
      o.device = value_of(args, i, "cuda");
    } else if (a == "--seed") {
      o.seed = static_cast<uint64_t>(parse_int("--seed", value_of(args, i, "1")));
    } else if (a.rfind("--", 0) == 0) {
      throw autotp::Error("verify: unknown option '" + a + "'; options are --tp, --dtype, --seq, --batch, --seed, --per-param, --sdpa, --device");
    } else if (model.empty()) {
      model = a;
    } else {
      throw autotp::Error("verify: one model expected, got '" + model + "' and '" + a + "'");
    }
  }
  if (model.empty() || o.tp < 1) throw autotp::Error("verify: usage: autotp verify MODEL.pt --tp N");
  autotp::VerifyReport rep;
  if (std::getenv("WORLD_SIZE")) {  // under torchrun: this process is one rank
    autotp::MeshOptions mo;
    mo.tp = o.tp;
    auto mesh = autotp::init_mesh_from_env(mo);
    rep = autotp::verify_on_mesh(model, o, *mesh);
    if (mesh->rank() != 0) return rep.ok() ? 0 : 4;
  } else {
    rep = autotp::verify_threads(model, o);
  }
  std::cout << rep.text();
  return rep.ok() ? 0 : 4;
}


// --hf-args sft.yaml into the overrides; an empty config path becomes the YAML's deepspeed: key.
// Returns false after printing the YAML's problems, one per line, as config problems are.
bool read_hf_args(const std::string& yaml, std::string& config_path, autotp::ConfigOverrides& overrides) {
  if (yaml.empty()) return true;
  autotp::HfArgsResult r = autotp::read_hf_args_file(yaml);
  if (!r.ok()) {
    std::cerr << r.message() << "\n";
    return false;
  }
  // The Trainer opens the deepspeed: path as written, from the working directory.
  if (config_path.empty()) config_path = r.args.deepspeed;
  overrides.hf_args = std::make_shared<autotp::HfArgs>(std::move(r.args));
  return true;
}

// autotp check CONFIG.json [--world-size W] [--micro-batch N] [--grad-accum N] [--lr X] [--json]
//              [--hf-args sft.yaml [--data D.tokens [--seq S]]]
int cmd_check(const std::vector<std::string>& args) {
  std::string file, hf_yaml, data;
  int seq = 64;
  bool json = false;
  autotp::ConfigOverrides flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw autotp::Error(a + " needs a value, e.g. " + a + " 4");
      return args[++i];
    };
    if (a == "--world-size") flags.world_size = parse_int(a, value());
    else if (a == "--micro-batch") flags.micro_batch = parse_int(a, value());
    else if (a == "--grad-accum") flags.grad_accum = parse_int(a, value());
    else if (a == "--lr") flags.lr = parse_double(a, value());
    else if (a == "--json") json = true;
    else if (a == "--hf-args") hf_yaml = value();
    else if (a == "--data") data = value();
    else if (a == "--seq") seq = parse_int(a, value());
    else if (a.rfind("--", 0) == 0 && a != "--config")
      throw autotp::Error("check: unknown option '" + a + "'; options are --config, --world-size, --micro-batch, --grad-accum, "
                          "--lr, --json, --hf-args, --data, --seq");
    else if (!file.empty()) throw autotp::Error("check: one config expected, got '" + file + "' and '" + (a == "--config" ? value() : a) + "'");
    else file = a == "--config" ? value() : a;
  }
  if (!data.empty() && hf_yaml.empty())
    throw autotp::Error("check: --data counts training steps for --hf-args (num_train_epochs); pass --hf-args sft.yaml too");
  if (seq < 1) throw autotp::Error("check: --seq must be at least 1");
  if (!read_hf_args(hf_yaml, file, flags)) return 1;
  if (file.empty())
    throw autotp::Error("check: which config? usage: autotp check CONFIG.json [--world-size W]" +
                        std::string(hf_yaml.empty() ? "" : " (" + hf_yaml + " has no deepspeed: key)"));
  if (!data.empty()) flags.dataset_samples = autotp::TokenData(data).samples(seq);
  autotp::ConfigResult r = autotp::validate_config_file(file, flags);
  if (!r.ok()) {
    std::cerr << r.message() << "\n";
    return 1;
  }
  std::cout << (json ? r.config.to_json() + "\n" : autotp::check_report(r.config));
  return 0;
}

// autotp train --config C.json --model M.pt --data D.tokens [--steps N] [--seq S] [--out DIR]
//              [--metrics FILE.jsonl] [--micro-batch N] [--grad-accum N] [--lr X] [--no-verify]
int cmd_train(const std::vector<std::string>& args) {
  autotp::TrainOptions o;
  int64_t timeout_s = 600;
  std::string hf_yaml, lf_yaml;
  std::vector<std::string> given;  // options seen, for --llamafactory
  bool steps_given = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    given.push_back(a);
    if (a == "--config") o.config_path = value_of(args, i, "configs/zero1_tp2.json");
    else if (a == "--model") o.model_path = value_of(args, i, "MODEL.pt");
    else if (a == "--data") o.data_path = value_of(args, i, "DATA.tokens");
    else if (a == "--steps") o.steps = parse_int(a, value_of(args, i, "20")), steps_given = true;
    else if (a == "--hf-args") hf_yaml = value_of(args, i, "sft.yaml");
    else if (a == "--llamafactory") lf_yaml = value_of(args, i, "sft.yaml");
    else if (a == "--seq") o.seq = parse_int(a, value_of(args, i, "64"));
    else if (a == "--out") o.out_dir = value_of(args, i, "DIR");
    else if (a == "--metrics") o.metrics_path = value_of(args, i, "metrics.jsonl");
    else if (a == "--micro-batch") o.overrides.micro_batch = parse_int(a, value_of(args, i, "4"));
    else if (a == "--grad-accum") o.overrides.grad_accum = parse_int(a, value_of(args, i, "2"));
    else if (a == "--lr") o.overrides.lr = parse_double(a, value_of(args, i, "3e-4"));
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--no-verify") o.verify = false;
    else if (a == "--sdpa") o.sdpa = true;
    else if (a == "--device") o.device = value_of(args, i, "cuda");
    else if (a == "--save-dir") o.save_dir = value_of(args, i, "DIR");
    else if (a == "--save-every") o.save_every = parse_int(a, value_of(args, i, "100"));
    else if (a == "--keep") o.keep = parse_int(a, value_of(args, i, "3"));
    else if (a == "--resume") o.resume = value_of(args, i, "DIR");
    else if (a == "--eval-data") o.eval_data = value_of(args, i, "EVAL.tokens");
    else if (a == "--eval-every") o.eval_every = parse_int(a, value_of(args, i, "50"));
    else if (a == "--eval-samples") o.eval_samples = parse_int(a, value_of(args, i, "256"));
    else if (a == "--no-shuffle") o.shuffle = false;
    else if (a == "--timeout") timeout_s = parse_int(a, value_of(args, i, "600"));
    else
      throw autotp::Error("train: unknown argument '" + a + "'; usage: autotp train --config C.json --model M.pt --data D.tokens "
                          "[--steps N] [--seq S] [--out DIR] [--metrics FILE] [--micro-batch N] [--grad-accum N] [--lr X] [--no-verify] "
                          "[--save-dir DIR --save-every N --keep K] [--resume DIR] [--eval-data F --eval-every N --eval-samples N] "
                          "[--no-shuffle] [--timeout SECONDS] [--hf-args sft.yaml], or autotp train --llamafactory sft.yaml");
  }
  if (timeout_s < 1) throw autotp::Error("train: --timeout must be at least 1 second");
  autotp_cli::LlamaFactoryTrain lf;
  if (!lf_yaml.empty() && !autotp_cli::llamafactory_train_options(lf_yaml, given, o, lf)) return 1;
  if (!read_hf_args(hf_yaml, o.config_path, o.overrides)) return 1;
  if (o.config_path.empty() || o.model_path.empty() || o.data_path.empty())
    throw autotp::Error("train: --config, --model and --data are required; usage: autotp train --config C.json --model M.pt --data D.tokens");
  if (o.seq < 1) throw autotp::Error("train: --seq must be at least 1");
  const char* ws = std::getenv("WORLD_SIZE");
  const int64_t world = ws ? parse_int("WORLD_SIZE", ws) : 1;
  if (o.overrides.hf_args && o.overrides.hf_args->max_steps < 0)  // counted once, not again by every load
    o.overrides.dataset_samples = autotp::TokenData(o.data_path).samples(o.seq);
  autotp::TrainConfig cfg = autotp::load_train_config(o, world);
  // With --hf-args the run is as long as the Trainer's would be: max_steps, or epochs x steps per epoch.
  if (o.overrides.hf_args && !steps_given) {
    if (cfg.hf_training_steps < 1)
      throw autotp::Error("train: " + o.overrides.hf_args->describe("max_steps") + " gives no training steps; set max_steps or pass --steps N");
    o.steps = cfg.hf_training_steps;
  }
  autotp::MeshOptions mo = autotp::mesh_options_for(o.device, static_cast<int>(cfg.tp));  // cuda:LOCAL_RANK or cpu
  mo.timeout = std::chrono::seconds(timeout_s);  // every collective and the store
  std::shared_ptr<autotp::Mesh> mesh;
  if (ws) {
    mesh = autotp::init_mesh_from_env(mo);
  } else {
    mesh = autotp::Mesh::create(c10::make_intrusive<c10d::HashStore>(), 0, 1, mo);
    autotp::set_process_mesh(mesh);
  }
  autotp::train(o, *mesh);
  if (!lf_yaml.empty() && mesh->rank() == 0) autotp_cli::llamafactory_merge(lf);
  return 0;
}

// autotp merge SRC --out HF_DIR [--dtype fp32|bf16] [--max-shard-size 5GB]
int cmd_merge(const std::vector<std::string>& args) {
  autotp::MergeOptions o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--out") o.out = value_of(args, i, "HF_DIR");
    else if (a == "--dtype") o.dtype = value_of(args, i, "bf16");
    else if (a == "--max-shard-size") o.max_shard_bytes = autotp::parse_size(value_of(args, i, "5GB"));
    else if (a.rfind("--", 0) == 0)
      throw autotp::Error("merge: unknown option '" + a + "'; options are --out HF_DIR, --dtype fp32|bf16, --max-shard-size SIZE");
    else if (o.source.empty()) o.source = a;
    else throw autotp::Error("merge: one source folder expected, got '" + o.source + "' and '" + a + "'");
  }
  if (o.source.empty() || o.out.empty())
    throw autotp::Error("merge: usage: autotp merge SRC --out HF_DIR [--dtype fp32|bf16] [--max-shard-size 5GB]");
  autotp::MergeReport rep = autotp::merge_to_hf(o);
  std::cout << "merged " << rep.tp << " ranks from " << rep.ranks_dir << ": " << rep.tensors << " tensors, " << rep.bytes
            << " bytes\n";
  for (const auto& f : rep.files) std::cout << "wrote " << o.out << "/" << f << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  try {
    const std::string cmd = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    if (cmd == "inspect") return cmd_inspect(rest);
    if (cmd == "rewrite") return cmd_rewrite(rest);
    if (cmd == "verify") return cmd_verify(rest);
    if (cmd == "check") return cmd_check(rest);
    if (cmd == "train") return cmd_train(rest);
    if (cmd == "merge") return cmd_merge(rest);
    if (cmd == "plan") return autotp_cli::cmd_plan(rest);
    throw autotp::Error("unknown command '" + cmd + "'; commands: inspect, rewrite, verify, check, train, merge, plan");
  } catch (const autotp::Error& e) {
    std::cerr << "autotp: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    // Anything else is a bug in autotp, not a user mistake; still one line, never a stack dump.
    const std::string line = autotp::user_message(e);
    if (line.rfind("autotp", 0) == 0) {  // an autotp error raised inside a TorchScript op
      std::cerr << "autotp: error: " << line << "\n";
      return 1;
    }
    std::cerr << "autotp: internal error: " << line << "\n";
    return 3;
  }
}
