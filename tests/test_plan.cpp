// `autotp plan`: memory and communication per strategy, checked against the formulas written out
// here independently (README.md "`autotp plan`"), the recommendation's cases, the HF-config count
// against the TorchScript analysis, and the emitted configs read by autotp check, DeepSpeed's own
// DeepSpeedConfig and PyYAML.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "autotp/autotp.h"
#include "fixtures.h"
#include "runtime/config.h"

namespace {

using autotp_test::run_command;

// A 2-layer Llama: hidden 64, 4 heads of 16, 2 kv heads, intermediate 128, vocabulary 102 (even: no
// padding at tp 2), untied.
const char* kTiny = R"({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "vocab_size": 102, "tie_word_embeddings": false})";
// SmolLM2-135M's config.json (the fields the count reads).
const char* kSmolLM2 = R"({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
  "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": true})";

autotp::ClusterSpec cluster(int gpus, int nodes, int64_t memory) {
  autotp::ClusterSpec c;
  c.name = "test";
  c.gpus_per_node = gpus;
  c.nodes = nodes;
  c.gpu_memory = memory;
  c.intra_node_bw = 100e9;
  c.inter_node_bw = 10e9;
  return c;
}
autotp::TrainingSpec training() {
  autotp::TrainingSpec t;
  t.seq = 32;
  t.micro_batch = 2;
  t.global_batch = 16;
  return t;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string temp_dir(const std::string& name) {
  const std::string d = "/tmp/autotp_plan_test." + std::to_string(getpid()) + "." + name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

TEST(Plan, TinyModelCountsByHand) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  // per layer: q 64·64, k and v 64·32 each, o 64·64, MLP 3·64·128; norms 2·64 per layer + 64; embed + lm_head 2·102·64.
  const int64_t layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128;
  EXPECT_EQ(layer, 36864);
  EXPECT_EQ(m.parameters, 2 * layer + 2 * 2 * 64 + 64 + 2 * 102 * 64);
  EXPECT_EQ(m.parameters, 87104);
  // 3 would keep the 2 kv heads whole; 4 holds each on 2 ranks (1 q head of 16 per rank).
  EXPECT_EQ(m.valid_tp, (std::vector<int>{1, 2, 4}));
  EXPECT_EQ(m.parameters_per_rank(2), 2 * layer / 2 + 5 * 64 + 2 * 51 * 64);
  // tp 4: q and o 64·16 each, k and v one kv head (16 rows of 64) each, MLP 3·64·32; norms; vocab 26 rows (102 padded to 104).
  EXPECT_EQ(m.parameters_per_rank(4), 2 * (2 * 64 * 16 + 2 * 16 * 64 + 3 * 64 * 32) + 5 * 64 + 2 * 26 * 64);
}

// Every memory component and byte count of every row at G=4, N=2 (8 GPUs), from the formulas.
TEST(Plan, TwoLayerModelOnTwoNodesOfFourGpusExactly) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  auto p = autotp::plan_cluster(m, cluster(4, 2, 1'000'000), training());
  ASSERT_EQ(p.strategies.size(), 8u);  // DDP, ZeRO-1/2/3, AutoTP(2) and AutoTP(4) (2 kv heads on 2 ranks each) + ZeRO-1/2
  const int64_t s = 32, b = 2, h = 64, a = 4, L = 2, B = 2;
  const int64_t sbh = s * b * h;
  const int64_t unit = std::max<int64_t>(36864 + 2 * h, 102 * h);  // ZeRO-3 gathers a layer or the embedding
  for (const auto& row : p.strategies) {
    SCOPED_TRACE(row.name);
    const int64_t t = row.tp, dp = 8 / t, ga = 16 / (b * dp), z = row.zero_stage;
    EXPECT_EQ(row.dp, dp);
    EXPECT_EQ(row.grad_accum, ga);
    // Ψ per rank: t 2 halves every layer; t 4 cuts q, o and the MLP in 4 and holds one kv head of k and v.
    const int64_t psi = t == 1 ? 87104 : t == 2 ? 43712 : 2 * (2 * 64 * 16 + 2 * 16 * 64 + 3 * 64 * 32) + 5 * 64 + 2 * 26 * 64;
    const int64_t part = ceil_div(psi, dp);
    EXPECT_EQ(row.params, B * (z == 3 ? part : psi));
    EXPECT_EQ(row.grads, B * (z >= 2 ? part : psi));
    EXPECT_EQ(row.optimizer, 12 * (z >= 1 ? part : psi));
    EXPECT_EQ(row.buffers, 4 * (z >= 2 ? part : psi) + (z == 3 ? 2 * B * unit : 0));
    // What a bf16 Llama saves (plugin/planner.cpp): per RMSNorm its fp32 input, normalized x and
    // output, 8sbh + 4sb; per layer two norms, q, k, v and the attention output 4·2·sb·a·d/t, fp32
    // probabilities and their bf16 copy 6·a·s²·b/t, MLP 4·2·sb·i/t; the final norm; the logits
    // 2·sb·V/t and the cross-entropy's fp32 softmax, gradient and its bf16 copy 10·sb·V/t (V = 102).
    const int64_t sb = s * b, d = 16, i = 128, V = ceil_div(102, t), norm = 8 * sbh + 4 * sb;  // rows padded to a multiple of t
    const int64_t per_layer = 2 * norm + (8 * sb * a * d + 6 * a * s * s * b + 8 * sb * i) / t;
    EXPECT_EQ(row.activations, L * per_layer + norm + 2 * sb * V + 10 * sb * V);
    EXPECT_EQ(row.total, row.params + row.grads + row.optimizer + row.buffers + row.activations);
    EXPECT_EQ(row.fits, row.total <= 1'000'000);
    // TP (intra-node): GA × 2(t-1)/t × ((4L + 2)·b·s·h·B + 3 fp32 per token); DP (inter-node: the ring crosses nodes).
    const int64_t tp_bytes = t == 1 ? 0 : ga * (2 * (t - 1) * ((4 * L + 2) * b * s * h * B + 12 * b * s) / t);
    const int64_t one_way = (dp - 1) * part * B;
    const int64_t dp_bytes = z <= 1 ? 2 * one_way : z == 2 ? (ga + 1) * one_way : 3 * ga * one_way;
    EXPECT_EQ(row.intra_node_bytes, tp_bytes);
    EXPECT_EQ(row.inter_node_bytes, dp_bytes);
    EXPECT_DOUBLE_EQ(row.comm_seconds, tp_bytes / 100e9 + dp_bytes / 10e9);
  }
  // The same numbers, spelled out once (python, independently): DDP, AutoTP(2)+ZeRO-1.
  EXPECT_EQ(p.strategy("DDP").total, 2280448);
  EXPECT_EQ(p.strategy("DDP").inter_node_bytes, 304864);
  EXPECT_EQ(p.strategy("autotp(2)+zero-1").total, 832576);
  EXPECT_EQ(p.strategy("AutoTP(2)+ZeRO-1").intra_node_bytes, 165376);
  EXPECT_EQ(p.strategy("ZeRO-3").total, 904096);
  // Fits: ZeRO-2, ZeRO-3 and the four AutoTP rows; least inter-node traffic: AutoTP(4)+ZeRO-1, whose
  // dp of 2 moves its 24128-parameter partition twice (reduce-scatter and all-gather, bf16).
  EXPECT_EQ(p.strategy("AutoTP(4)+ZeRO-1").inter_node_bytes, 2 * 24128);
  EXPECT_EQ(p.recommended, "AutoTP(4)+ZeRO-1");
  EXPECT_NE(p.reason.find("sends the least over the network"), std::string::npos) << p.reason;
}

TEST(Plan, ActivationCheckpointingKeepsLayerInputsAndRecomputesForwardAllReduces) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  auto tr = training();
  tr.activation_checkpointing = true;
  const auto& row = autotp::plan_cluster(m, cluster(4, 2, 800'000), tr).strategy("AutoTP(2)+ZeRO-1");
  const int64_t s = 32, b = 2, h = 64, a = 4, L = 2, sbh = s * b * h;
  // Each layer's bf16 input, the final norm, the logits, and the larger of the cross-entropy's terms
  // and one layer recomputed in the backward (here the layer).
  const int64_t sb = s * b, norm = 8 * sbh + 4 * sb, layer = 2 * norm + (8 * sb * a * 16 + 6 * a * s * s * b + 8 * sb * 128) / 2;
  EXPECT_EQ(row.activations, L * 2 * sbh + norm + 2 * sb * 51 + std::max<int64_t>(10 * sb * 51, layer));
  EXPECT_EQ(row.activations, 195712);
  EXPECT_EQ(row.intra_node_bytes, 2 * (2 * 1 * ((6 * L + 2) * b * s * h * 2 + 12 * b * s) / 2));
}

// --flash-attention keeps q, k, v (kv heads), the output and the fp32 log-sum-exp instead of the s×s
// probabilities; fp32 keeps single fp32 copies; a tied lm-head's weight gradient waits in autograd
// for the embedding's, beside the logits' gradient (it decides when s·b is small against h), and so
// does an fp32 one accumulating into .grad.
TEST(Plan, FlashAttentionFp32AndTiedActivations) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  const int64_t s = 32, b = 2, sb = s * b, h = 64, a = 4, kv = 2, d = 16, i = 128, L = 2;
  auto tr = training();
  tr.flash_attention = true;
  const int64_t norm16 = 8 * sb * h + 4 * sb;
  const int64_t flash_layer = 2 * norm16 + (2 * sb * (2 * a + 2 * kv) * d + 4 * a * sb) / 2 + 8 * sb * i / 2;
  EXPECT_EQ(autotp::plan_cluster(m, cluster(2, 1, 80ll << 30), tr).strategy("AutoTP(2)+ZeRO-1").activations,
            L * flash_layer + norm16 + 2 * sb * 51 + 10 * sb * 51);
  tr = training();
  tr.bf16 = false;
  tr.global_batch = 4;  // dp 2 x micro-batch 2: no gradient accumulation
  const int64_t norm32 = 12 * sb * h + 4 * sb, layer32 = 2 * norm32 + 16 * sb * a * d + 4 * a * s * s * b + 16 * sb * i;
  const auto fp32 = autotp::plan_cluster(m, cluster(2, 1, 80ll << 30), tr).strategy("DDP").activations;
  EXPECT_EQ(fp32, L * layer32 + norm32 + 4 * sb * 102 + 8 * sb * 102);
  EXPECT_EQ(fp32, 784128);  // python, independently
  // Accumulating fp32 gradients in .grad, the lm-head's new gradient (4·102·64) waits beside the
  // logits' (4·sb·102) and its input's (4·sb·h) instead of the cross-entropy's 8·sb·102.
  tr.global_batch = 16;
  EXPECT_EQ(autotp::plan_cluster(m, cluster(2, 1, 80ll << 30), tr).strategy("DDP").activations - fp32,
            4 * sb * 102 + 4 * 102 * h + 4 * sb * h - 8 * sb * 102);
  auto tied = autotp::shape_from_hf_config_text(std::string(kTiny).replace(std::string(kTiny).find("false"), 5, "true"), "tied");
  tr = training();
  tr.seq = 4;
  tr.micro_batch = 1;
  tr.global_batch = 2;
  const auto untied_small = autotp::plan_cluster(m, cluster(2, 1, 80ll << 30), tr).strategy("DDP").activations;
  const auto tied_small = autotp::plan_cluster(tied, cluster(2, 1, 80ll << 30), tr).strategy("DDP").activations;
  EXPECT_EQ(untied_small, 28272);
  // logits' gradient 2·4·102 + the lm-head's gradient 2·102·64 + its input's 2·4·64, not 10·4·102.
  EXPECT_EQ(tied_small - untied_small, (2 * 4 * 102 + 2 * 102 * h + 2 * 4 * h) - 10 * 4 * 102);
}

TEST(Plan, SmallModelOnBigGpusGetsTheCheapestCommunication) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  auto p = autotp::plan_cluster(m, cluster(4, 1, 80ll << 30), training());
  for (const auto& row : p.strategies) EXPECT_TRUE(row.fits) << row.name;
  for (const auto& row : p.strategies) EXPECT_EQ(row.inter_node_bytes, 0) << row.name;  // one node
  // DDP and ZeRO-1 send the same 2(dp-1)·ceil(Ψ/dp)·2 bytes; ZeRO-1 holds less. TP's activations cost more here.
  EXPECT_EQ(p.strategy("ZeRO-1").intra_node_bytes, 2 * 3 * ceil_div(87104, 4) * 2);
  EXPECT_GT(p.strategy("AutoTP(2)+ZeRO-1").intra_node_bytes, p.strategy("ZeRO-1").intra_node_bytes);
  EXPECT_EQ(p.recommended, "ZeRO-1");
  EXPECT_NE(p.reason.find("spends the least time communicating"), std::string::npos) << p.reason;
}

TEST(Plan, OnlyZeroThreeFits) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  auto p = autotp::plan_cluster(m, cluster(1, 8, 906'000), training());  // one GPU per node: no TP
  ASSERT_EQ(p.strategies.size(), 4u);
  EXPECT_EQ(p.recommended, "ZeRO-3");
  EXPECT_EQ(p.reason.rfind("ZeRO-3: only ZeRO-3 fits", 0), 0u) << p.reason;
}

TEST(Plan, NothingFitsSaysWhatToChange) {
  auto m = autotp::shape_from_hf_config_text(kTiny, "tiny");
  auto p = autotp::plan_cluster(m, cluster(4, 2, 500'000), training());
  EXPECT_TRUE(p.recommended.empty());
  EXPECT_NE(p.reason.find("nothing fits in 0.0 GiB per GPU: the smallest is AutoTP(4)+ZeRO-2"), std::string::npos) << p.reason;
  EXPECT_NE(p.reason.find("--activation-checkpointing"), std::string::npos) << p.reason;
  EXPECT_EQ(autotp::cluster_plan_json(p).find("\"recommended\": null") != std::string::npos, true);
}

TEST(Plan, HfConfigCountEqualsTheAnalysisOfSmolLM2) {
  auto archive = autotp::shape_from_archive(autotp_test::fixture("smollm2"), 9);
  auto config = autotp::shape_from_hf_config_text(kSmolLM2, "smollm2 config.json");
  EXPECT_EQ(config.parameters, 134515008);  // SmolLM2-135M
  EXPECT_EQ(archive.parameters, config.parameters);
  EXPECT_EQ(archive.valid_tp, config.valid_tp);
  // 9 heads, 3 kv heads, 1536: 2 cuts the kv groups 2+1; 6 holds each kv head on 2 ranks (q heads
  // 2+1 of each group); 4, 5, 7 and 8 would keep attention whole.
  EXPECT_EQ(config.valid_tp, (std::vector<int>{1, 2, 3, 6}));
  for (int t : {1, 2, 3, 6}) EXPECT_EQ(archive.parameters_per_rank(t), config.parameters_per_rank(t)) << "tp " << t;
  EXPECT_EQ(archive.hidden, 576);
  EXPECT_EQ(archive.layers, 30);
  EXPECT_EQ(archive.heads, 9);
  EXPECT_EQ(archive.kv_heads, 3);
  EXPECT_EQ(archive.intermediate, 1536);
  EXPECT_EQ(archive.vocab, 49152);
  EXPECT_TRUE(archive.tied);
}

TEST(Plan, OnlyTpThatDivideTheNodeAndTheModel) {
  auto m = autotp::shape_from_hf_config_text(kSmolLM2, "smollm2");
  auto tps = [&](int gpus) {
    std::set<int> out;
    auto tr = training();
    tr.micro_batch = 1;
    tr.global_batch = 72;
    for (const auto& s : autotp::plan_cluster(m, cluster(gpus, 1, 80ll << 30), tr).strategies) out.insert(s.tp);
    return out;
  };
  EXPECT_EQ(tps(8), (std::set<int>{1, 2}));     // 3 does not divide 8: a TP group would straddle nodes
  EXPECT_EQ(tps(6), (std::set<int>{1, 2, 3, 6}));  // 2 cuts the 3 kv groups 2+1; 6 holds each kv head on 2 ranks
  EXPECT_EQ(tps(9), (std::set<int>{1, 3}));     // 9 is more than the 3 kv groups
}

TEST(Plan, SizesAndBandwidths) {
  EXPECT_EQ(autotp::parse_memory_flag("--gpu-memory", "80GiB"), 80ll << 30);
  EXPECT_EQ(autotp::parse_memory_flag("--gpu-memory", "24GB"), 24'000'000'000);
  EXPECT_DOUBLE_EQ(autotp::parse_bandwidth_flag("--inter-node-bw", "400Gb/s"), 50e9);
  EXPECT_DOUBLE_EQ(autotp::parse_bandwidth_flag("--intra-node-bw", "450GB/s"), 450e9);
  EXPECT_DOUBLE_EQ(autotp::parse_bandwidth_flag("--intra-node-bw", "2GiB/s"), 2.0 * (1 << 30));
  auto h100 = autotp::cluster_preset("h100-nvlink-ib400");
  EXPECT_EQ(h100.gpu_memory, 80ll << 30);
  EXPECT_DOUBLE_EQ(h100.inter_node_bw, autotp::parse_bandwidth_flag("x", "400Gb/s"));
}

TEST(Plan, BadFlagsAreOneLine) {
  const std::string dir = temp_dir("flags"), cfg = dir + "/config.json";
  std::ofstream(cfg) << kTiny;
  const std::string base = std::string(AUTOTP_CLI) + " plan --hf-config " + cfg + " --seq 32 --global-batch 16 ";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--cluster h100-nvlink-ib400 --gpu-memory 80XB", "--gpu-memory expects a size such as 80GiB, 24GB or a number of bytes, got '80XB'"},
      {"--cluster h100-nvlink-ib400 --inter-node-bw 50GBs", "--inter-node-bw expects a bandwidth such as 450GB/s (bytes) or 400Gb/s (bits), got '50GBs'"},
      {"--cluster h200", "--cluster: unknown preset 'h200'; presets: h100-nvlink-ib400, a100-nvlink-ib200, rtx4090-pcie-eth"},
      {"--cluster h100-nvlink-ib400 --nodes two", "--nodes expects an integer, got 'two'"},
      {"--gpus-per-node 8 --intra-node-bw 100GB/s", "--gpu-memory is required (e.g. --gpu-memory 80GiB) unless --cluster gives it"},
      {"--cluster h100-nvlink-ib400 --strategy DDP --emit-llamafactory x.yaml", "plan: --emit-llamafactory needs --emit-deepspeed ds.json too (the YAML points at it)"},
      {"--cluster h100-nvlink-ib400 --gpu-memory 1KB --emit-deepspeed " + dir + "/ds.json",
       "plan: nothing fits, so there is no recommended strategy to emit; name one with --strategy NAME"},
      {"--cluster h100-nvlink-ib400 --frob", "plan: unknown option '--frob'; see autotp --help for plan's options"},
  };
  for (const auto& [flags, message] : cases) {
    auto r = run_command(base + flags + " >/dev/null");
    EXPECT_EQ(r.status, 1) << flags;
    EXPECT_EQ(r.err, "autotp: error: " + message + "\n") << flags;
  }
  std::filesystem::remove_all(dir);
}

// The configs written for the recommended row and for --strategy rows: autotp check accepts the
// stage 0/1 ones and refuses ZeRO-2/3 (DeepSpeed only); DeepSpeed's DeepSpeedConfig reads all of
// them with the plan's batch arithmetic; the YAML has only LLaMA-Factory keys.
TEST(Plan, EmittedConfigsReadByAutotpDeepSpeedAndLlamaFactory) {
  const std::string dir = temp_dir("emit"), cfg = dir + "/config.json";
  std::ofstream(cfg) << kTiny;
  const std::string base = std::string(AUTOTP_CLI) + " plan --hf-config " + cfg +
                           " --gpus-per-node 4 --nodes 2 --gpu-memory 1000000 --intra-node-bw 100GB/s --inter-node-bw 10GB/s"
                           " --seq 32 --micro-batch 2 --global-batch 16 --json";
  auto r = run_command(base + " --emit-deepspeed " + dir + "/rec.json --emit-llamafactory " + dir + "/sft.yaml");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);  // the notes go to stderr with --json
  EXPECT_EQ(j.at("recommended"), "AutoTP(4)+ZeRO-1");  // 2 kv heads on 2 ranks each (Plan.TwoLayerModel...)
  EXPECT_EQ(j.at("model").at("parameters"), 87104);
  for (const auto& s : j.at("strategies")) {
    for (const char* k : {"params", "grads", "optimizer", "activations", "total"}) EXPECT_TRUE(s.at("memory_bytes").at(k).is_number_integer());
    for (const char* k : {"intra_node", "inter_node"}) EXPECT_TRUE(s.at("comm_bytes_per_step").at(k).is_number_integer());
    for (const char* k : {"name", "tp", "dp", "zero_stage", "comm_seconds", "fits"}) EXPECT_TRUE(s.contains(k)) << k;
  }
  EXPECT_NE(r.err.find("rec.json for AutoTP(4)+ZeRO-1 (autotp train --config reads it"), std::string::npos) << r.err;
  for (const std::string name : {"DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3", "AutoTP(2)+ZeRO-2"}) {
    std::string file = name;
    for (auto& c : file) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    auto w = run_command(base + " --strategy '" + name + "' --emit-deepspeed " + dir + "/" + file + ".json >/dev/null");
    ASSERT_EQ(w.status, 0) << w.err;
    autotp::ConfigOverrides world;
    world.world_size = 8;
    auto checked = autotp::validate_config_file(dir + "/" + file + ".json", world);
    const int stage = name == "ZeRO-2" || name == "AutoTP(2)+ZeRO-2" ? 2 : name == "ZeRO-3" ? 3 : name == "DDP" ? 0 : 1;
    if (stage <= 1) {
      EXPECT_TRUE(checked.ok()) << name << ": " << checked.message();
      EXPECT_EQ(checked.config.train_batch, 16) << name;
    } else {
      EXPECT_FALSE(checked.ok()) << name;
      EXPECT_NE(checked.message().find("zero_optimization.stage"), std::string::npos) << checked.message();
      EXPECT_NE(w.err.find("for DeepSpeed only"), std::string::npos) << w.err;
    }
  }
  auto rec = autotp::validate_config_file(dir + "/rec.json", {std::nullopt, std::nullopt, std::nullopt, 8});
  EXPECT_TRUE(rec.ok()) << rec.message();
  EXPECT_EQ(rec.config.tp, 4);
  auto ds = run_command(std::string(AUTOTP_VENV_BIN) + "/python " + AUTOTP_SOURCE_DIR + "/tests/deepspeed/check_plan_configs.py " +
                        dir + "/rec.json:2 " + dir + "/DDP.json:8 " + dir + "/ZeRO_1.json:8 " + dir + "/ZeRO_2.json:8 " + dir +
                        "/ZeRO_3.json:8 " + dir + "/AutoTP_2__ZeRO_2.json:4 --yaml " + dir + "/sft.yaml");
  EXPECT_EQ(ds.status, 0) << ds.out << ds.err;
  for (const std::string line : {"rec.json: stage 1 autotp_size 4 micro 2 ga 4 train_batch_size 16 bf16 True",
                                 "DDP.json: stage 0 autotp_size 0 micro 2 ga 1 train_batch_size 16",
                                 "ZeRO_2.json: stage 2 autotp_size 0 micro 2 ga 1 train_batch_size 16",
                                 "ZeRO_3.json: stage 3 autotp_size 0 micro 2 ga 1 train_batch_size 16",
                                 "AutoTP_2__ZeRO_2.json: stage 2 autotp_size 2 micro 2 ga 2 train_batch_size 16",
                                 "sft.yaml: 16 LLaMA-Factory keys"})
    EXPECT_NE(ds.out.find(line), std::string::npos) << line << "\n" << ds.out << ds.err;
  EXPECT_NE(ds.out.find("deepspeed=" + dir + "/rec.json"), std::string::npos) << ds.out;
  EXPECT_NE(ds.out.find("gradient_accumulation_steps=4"), std::string::npos) << ds.out;
  EXPECT_NE(ds.out.find("disable_gradient_checkpointing=True"), std::string::npos) << ds.out;
  if (!HasFailure()) std::filesystem::remove_all(dir);
}

}  // namespace
