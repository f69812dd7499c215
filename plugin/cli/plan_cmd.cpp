// `autotp plan`: flags to a ModelShape, ClusterSpec and TrainingSpec; the table or JSON; the
// emitted DeepSpeed and LLaMA-Factory configs (README.md "`autotp plan`").
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "autotp/autotp.h"
#include "plugin/cli/cli.h"

namespace autotp_cli {

// autotp plan (MODEL.pt | --hf-config config.json) --gpus-per-node G --gpu-memory 80GiB ... (README "autotp plan")
int cmd_plan(const std::vector<std::string>& args) {
  std::string model, hf_config, cluster_name, strategy, emit_ds, emit_lf, dtype = "bf16";
  std::optional<int> gpus, nodes;
  std::optional<int64_t> memory;
  std::optional<double> intra_bw, inter_bw;
  autotp::TrainingSpec tr;
  autotp::LlamaFactoryOptions lf;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--hf-config") hf_config = value_of(args, i, "config.json");
    else if (a == "--cluster") cluster_name = value_of(args, i, "h100-nvlink-ib400");
    else if (a == "--gpus-per-node") gpus = parse_int(a, value_of(args, i, "8"));
    else if (a == "--nodes") nodes = parse_int(a, value_of(args, i, "2"));
    else if (a == "--gpu-memory") memory = autotp::parse_memory_flag(a, value_of(args, i, "80GiB"));
    else if (a == "--intra-node-bw") intra_bw = autotp::parse_bandwidth_flag(a, value_of(args, i, "450GB/s"));
    else if (a == "--inter-node-bw") inter_bw = autotp::parse_bandwidth_flag(a, value_of(args, i, "50GB/s"));
    else if (a == "--seq") tr.seq = parse_int(a, value_of(args, i, "4096"));
    else if (a == "--micro-batch") tr.micro_batch = parse_int(a, value_of(args, i, "1"));
    else if (a == "--global-batch") tr.global_batch = parse_int(a, value_of(args, i, "64"));
    else if (a == "--dtype") dtype = value_of(args, i, "bf16");
    else if (a == "--activation-checkpointing") tr.activation_checkpointing = true;
    else if (a == "--flash-attention") tr.flash_attention = true;
    else if (a == "--json") json = true;
    else if (a == "--strategy") strategy = value_of(args, i, "'AutoTP(2)+ZeRO-1'");
    else if (a == "--emit-deepspeed") emit_ds = value_of(args, i, "ds.json");
    else if (a == "--emit-llamafactory") emit_lf = value_of(args, i, "sft.yaml");
    else if (a == "--lr") lf.lr = parse_double(a, value_of(args, i, "1e-5"));
    else if (a == "--dataset") lf.dataset = value_of(args, i, "alpaca_en_demo");
    else if (a == "--template") lf.templ = value_of(args, i, "llama2");
    else if (a.rfind("--", 0) == 0)
      throw autotp::Error("plan: unknown option '" + a + "'; see autotp --help for plan's options");
    else if (model.empty()) model = a;
    else throw autotp::Error("plan: one model expected, got '" + model + "' and '" + a + "'");
  }
  if (model.empty() == hf_config.empty())
    throw autotp::Error("plan: give one model: MODEL.pt or --hf-config config.json");
  if (dtype != "bf16" && dtype != "fp32") throw autotp::Error("plan: --dtype must be bf16 or fp32, got '" + dtype + "'");
  tr.bf16 = dtype == "bf16";
  if (tr.seq < 1) throw autotp::Error("plan: --seq S is required (tokens per sample), e.g. --seq 4096");
  if (tr.global_batch < 1) throw autotp::Error("plan: --global-batch B is required (samples per optimizer step), e.g. --global-batch 64");
  if (!emit_lf.empty() && emit_ds.empty())
    throw autotp::Error("plan: --emit-llamafactory needs --emit-deepspeed ds.json too (the YAML points at it)");
  autotp::ClusterSpec c;
  c.name = "custom";
  if (!cluster_name.empty()) c = autotp::cluster_preset(cluster_name);
  if (gpus) c.gpus_per_node = *gpus;
  if (nodes) c.nodes = *nodes;
  if (memory) c.gpu_memory = *memory;
  if (intra_bw) c.intra_node_bw = *intra_bw;
  if (inter_bw) c.inter_node_bw = *inter_bw;
  if (c.gpus_per_node < 1) throw autotp::Error("plan: --gpus-per-node G (or --cluster NAME) is required");
  const autotp::ModelShape shape = hf_config.empty() ? autotp::shape_from_archive(model, c.gpus_per_node)
                                                     : autotp::shape_from_hf_config(hf_config);
  const autotp::ClusterPlan plan = autotp::plan_cluster(shape, c, tr);
  std::cout << (json ? autotp::cluster_plan_json(plan) + "\n" : autotp::cluster_plan_table(plan));
  if (emit_ds.empty()) return 0;
  if (strategy.empty() && plan.recommended.empty())
    throw autotp::Error("plan: nothing fits, so there is no recommended strategy to emit; name one with --strategy NAME");
  const autotp::StrategyPlan& s = plan.strategy(strategy.empty() ? plan.recommended : strategy);
  std::ostream& note = json ? std::cerr : std::cout;
  std::ofstream(emit_ds) << autotp::deepspeed_config_for(plan, s, lf.lr);
  note << "wrote " << emit_ds << " for " << s.name
       << (s.autotp_runs() ? " (autotp train --config reads it, and DeepSpeed)"
                           : " (for DeepSpeed only: autotp train runs ZeRO stages 0 and 1, and autotp check refuses it)")
       << "\n";
  if (!emit_lf.empty()) {
    lf.deepspeed_path = emit_ds;
    lf.model_name_or_path = hf_config.empty() ? model : std::filesystem::path(hf_config).parent_path().string();
    if (lf.model_name_or_path.empty()) lf.model_name_or_path = ".";
    std::ofstream(emit_lf) << autotp::llamafactory_yaml_for(plan, s, lf);
    note << "wrote " << emit_lf << " (LLaMA-Factory full SFT with " << emit_ds << ")\n";
  }
  return 0;
}


}  // namespace autotp_cli
