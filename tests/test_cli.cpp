// The CLI end to end: `autotp inspect --json` as a user runs it, parsed and checked.
#include <gtest/gtest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "fixtures.h"

using autotp_test::CliRun;
using autotp_test::fixture;

namespace {

CliRun run_cli(const std::string& args) { return autotp_test::run_command(std::string(AUTOTP_CLI) + " " + args); }

TEST(Cli, InspectJsonForGqaLlamaAtTp2) {
  CliRun r = run_cli("inspect " + fixture("llama_gqa") + " --tp 2 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("tp"), 2);
  EXPECT_EQ(j.at("valid_tp"), (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(j.at("tp_notes").at(0), "tp=3: attention heads uneven (2+1+1 units; unit: kv group: 2 q heads, 1 kv head); "
                                    "intermediate size uneven (6+5+5 units; unit: 8 features)");
  EXPECT_EQ(j.at("rank_bytes"), (std::vector<int64_t>{214272, 214272}));  // (106816 - 320 norms) / 2 + 320, fp32
  EXPECT_EQ(j.at("graph_kind"), "traced");
  ASSERT_EQ(j.at("parameters").size(), 21u);  // 2 layers x 9 + embed + norm + lm_head
  std::map<std::string, nlohmann::json> by;
  for (const auto& p : j.at("parameters")) by[p.at("name")] = p;
  EXPECT_EQ(by["model.layers.1.self_attn.k_proj.weight"].at("placement"), "column");
  EXPECT_EQ(by["model.layers.1.self_attn.k_proj.weight"].at("shape"), (std::vector<int>{32, 64}));
  EXPECT_EQ(by["model.layers.0.mlp.down_proj.weight"].at("placement"), "row");
  EXPECT_EQ(by["model.layers.0.mlp.down_proj.weight"].at("split_dim"), 1);
  EXPECT_EQ(by["lm_head.weight"].at("placement"), "vocab");
  EXPECT_EQ(by["model.norm.weight"].at("placement"), "replicated");
  for (const auto& p : j.at("parameters")) {
    const std::string reason = p.at("reason");
    EXPECT_FALSE(reason.empty());
  }
  EXPECT_TRUE(j.at("rescaled").empty());
  // 4 bytes x (2 x (64*64*2 + 32*64*2 + 128*64*3) + 256*64*2) split, 4 x (2*2*64 + 64) replicated.
  const int64_t split = 4 * (2 * (64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3) + 256 * 64 * 2), rep = 4 * (5 * 64);
  EXPECT_EQ(j.at("bytes").at("total"), split + rep);
  EXPECT_EQ(j.at("bytes").at("replicated"), rep);
  EXPECT_EQ(j.at("bytes").at("per_rank"), rep + split / 2);
}

TEST(Cli, InspectJsonListsRescaledSitesOfTheScriptedModel) {
  CliRun r = run_cli("inspect " + fixture("ref_script") + " --tp 4 --json");
  ASSERT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.at("rescaled").size(), 16u);
  const auto& first = j.at("rescaled").at(0);
  EXPECT_EQ(first.at("where"), "aten::view size[2] in layers.0.self_attn");
  EXPECT_EQ(first.at("value"), "attribute layers.0.self_attn.num_heads");
  EXPECT_EQ(first.at("from"), 8);
  EXPECT_EQ(first.at("to"), 2);
  EXPECT_EQ(first.at("source"), "ref_llama.py:66");
}

TEST(Cli, HumanTableHasSummary) {
  CliRun r = run_cli("inspect " + fixture("llama_tied") + " --tp 4");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("valid tp sizes:      1, 2, 3, 4, 5, 6, 7, 8\n    tp=3: attention heads uneven"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  rank 3: 89.25 KiB of parameters; attention heads (2 blocks): 1 of 4 units (unit: kv group: 2 q heads, 1 kv head); "
                       "intermediate size (2 blocks): 32 of 128 units (unit: feature)\n  unevenness: max/min bytes per rank 1.000"),
            std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.embed_tokens.weight"), std::string::npos);
  EXPECT_NE(r.out.find("tied: one tensor, also named lm_head.weight"), std::string::npos);
}

TEST(Cli, ErrorsAreOneLineAndExitNonZero) {
  for (const auto& [args, expected] : std::vector<std::pair<std::string, std::string>>{
           {"inspect /nope.pt", "autotp: error: /nope.pt: no such file; pass a TorchScript archive (.pt) saved with torch.jit.save\n"},
           {"inspect " + fixture("llama_gqa") + " --tp two", "autotp: error: --tp expects an integer, got 'two'\n"},
           {"inspect " + fixture("llama_gqa") + " --tp 0", "autotp: error: --tp must be a positive integer, got 0\n"},
           {"inspect " + fixture("llama_gqa") + " --tpp 2", "autotp: error: inspect: unknown option '--tpp'; options are --tp N and --json\n"},
           {"frobnicate", "autotp: error: unknown command 'frobnicate'; commands: inspect, rewrite, verify, check, train, merge, plan\n"},
           {"inspect " + fixture("mistral") + " --tp 300 --json",
            "autotp: error: " + fixture("mistral") +
                ": tp=300 is more than every split family can be cut into (attention heads: 2 units, each a kv group: 4 q heads, "
                "1 kv head; intermediate size: 192 units, each a feature), so nothing would be split; valid tp for this model: "
                "1, 2, 3, 4, 5, 6, 7, 8\n"}}) {
    CliRun r = run_cli(args);
    EXPECT_EQ(r.status, 1) << args;
    EXPECT_EQ(r.err, expected) << args;
    EXPECT_TRUE(r.out.empty()) << args;
  }
}

}  // namespace

namespace {

TEST(Cli, CheckShippedConfigAndABadOne) {
  CliRun ok = run_cli("check " + std::string(AUTOTP_SOURCE_DIR) + "/configs/zero1_tp2.json --world-size 4");
  EXPECT_EQ(ok.status, 0) << ok.err;
  EXPECT_NE(ok.out.find("16 samples per optimizer step"), std::string::npos) << ok.out;
  CliRun bad = run_cli("check " + std::string(AUTOTP_SOURCE_DIR) + "/tests/configs_bad/tp_size_misplaced.json");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("tensor_parallel.tp_size: unknown key; did you mean autotp_size?"), std::string::npos) << bad.err;
}

TEST(Cli, VerifyPrintsErrorsAndCountsAndRewriteWritesRanks) {
  CliRun v = run_cli("verify " + fixture("qwen2") + " --tp 2");
  EXPECT_EQ(v.status, 0) << v.err;
  EXPECT_NE(v.out.find("OK"), std::string::npos);
  EXPECT_NE(v.out.find("27 parameters"), std::string::npos) << v.out;
  CliRun bad = run_cli("verify " + fixture("mistral") + " --tp 300");
  EXPECT_EQ(bad.status, 1);
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
  EXPECT_NE(bad.err.find("tp=300 is more than every split family can be cut into"), std::string::npos) << bad.err;
  CliRun dtype = run_cli("verify " + fixture("qwen2") + " --tp 2 --dtype fp16");
  EXPECT_EQ(dtype.err, "autotp: error: verify: --dtype fp16 is not supported; use fp32 or bf16\n");
}

}  // namespace

namespace {

// The shipped configs mean the same in DeepSpeed: its own DeepSpeedConfig reads every value autotp
// implements as autotp resolves it (tests/deepspeed/check_configs.py).
TEST(Cli, ShippedConfigsReadTheSameInDeepSpeed) {
  const std::string src = AUTOTP_SOURCE_DIR;
  auto r = autotp_test::run_command(std::string(AUTOTP_VENV_BIN) + "/python " + src + "/tests/deepspeed/check_configs.py " +
                                    AUTOTP_CLI + " " + src + "/configs/zero1_tp2.json:4 " + src + "/configs/zero1_tp4.json:8 " +
                                    src + "/configs/zero1_dp.json:4 " + src + "/configs/smollm2_tp3.json:3 " + src +
                                    "/configs/smollm2_sft_tp3.json:3");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("zero1_tp2.json world 4: 18 values agree with DeepSpeed 0.19.8"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("zero1_dp.json world 4: 17 values agree with DeepSpeed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("smollm2_tp3.json world 3: 17 values agree with DeepSpeed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("smollm2_sft_tp3.json world 3: 18 values agree with DeepSpeed"), std::string::npos) << r.out;
}

}  // namespace
