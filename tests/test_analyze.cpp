// The plan for every fixture at every tp in {1, 2, 3, 4}: exact placement of every parameter, the
// exact rescaled sites with their values, collectives, bytes per rank and valid tp sizes; invalid tp
// values fail with the documented message. Expectations are computed from each fixture's config
// (manifest.json), never from autotp's own output.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <regex>

#include "autotp/autotp.h"
#include "fixtures.h"

using autotp::Placement;
using autotp_test::config_of;
using autotp_test::fixture;
using autotp_test::FixtureConfig;

namespace {

struct Expected {
  Placement placement;
  int split_dim;
};

// What a Llama-family parameter must be, by its (Hugging Face / reference) name. The test may
// use names; the analysis may not.
Expected expected_for(const std::string& name) {
  auto ends = [&](const std::string& s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
  if (ends("embed_tokens.weight") || ends("lm_head.weight")) return {Placement::Vocab, 0};
  for (const char* col : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "k_proj.bias",
                          "v_proj.bias", "gate_proj.weight", "up_proj.weight"})
    if (ends(col)) return {Placement::Column, 0};
  if (ends("o_proj.weight") || ends("down_proj.weight")) return {Placement::Row, 1};
  if (name.find("norm") != std::string::npos) return {Placement::Replicated, -1};
  ADD_FAILURE() << "unexpected parameter " << name;
  return {Placement::Replicated, -1};
}

// The frozen reference Llama has lost its names: its tensors come in the order forward reads them.
std::vector<Expected> frozen_order(const FixtureConfig& c) {
  std::vector<Expected> out{{Placement::Vocab, 0}, {Placement::Replicated, -1} /* rotary inv_freq */};
  for (int64_t l = 0; l < c.layers; ++l) {
    out.push_back({Placement::Replicated, -1});  // input norm
    for (int i = 0; i < 3; ++i) out.push_back({Placement::Column, 0});  // q k v
    out.push_back({Placement::Row, 1});  // o
    out.push_back({Placement::Replicated, -1});  // post-attention norm
    out.push_back({Placement::Column, 0});  // gate
    out.push_back({Placement::Column, 0});  // up
    out.push_back({Placement::Row, 1});  // down
  }
  out.push_back({Placement::Replicated, -1});  // final norm
  out.push_back({Placement::Vocab, 0});  // lm_head
  return out;
}

struct Bytes {
  int64_t total = 0, split = 0, replicated = 0;
};

Bytes expected_bytes(const FixtureConfig& c) {
  const int64_t h = c.hidden, kv = c.kv_heads * c.head_dim(), f = 4;  // fp32
  Bytes b;
  int64_t per_layer_split = h * h /*q*/ + 2 * kv * h /*k v*/ + h * h /*o*/ + 3 * c.intermediate * h;
  if (c.qkv_bias) per_layer_split += h + 2 * kv;
  b.split = f * (c.layers * per_layer_split + c.vocab * h * (c.tied ? 1 : 2));
  b.replicated = f * (c.layers * 2 * h + h);
  if (c.export_kind == "freeze") b.replicated += f * (c.head_dim() / 2);  // inv_freq became a constant
  b.total = b.split + b.replicated;
  return b;
}

std::vector<int> divisors(int64_t g) {
  std::vector<int> d;
  for (int64_t i = 1; i <= g; ++i)
    if (g % i == 0) d.push_back(static_cast<int>(i));
  return d;
}

std::vector<int> expected_valid_tp(const FixtureConfig& c) {
  return divisors(std::gcd(std::gcd(c.heads, c.kv_heads), std::gcd(c.intermediate, c.vocab)));
}

using autotp_test::case_name;
using Case = autotp_test::FixtureCase;

// Plans are cached: SmolLM2 is 540 MB to load.
const autotp::TpPlan& plan_for(const std::string& name, int tp) {
  static std::map<std::pair<std::string, int>, autotp::TpPlan> cache;
  auto key = std::make_pair(name, tp);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, autotp::inspect(fixture(name), tp)).first;
  return it->second;
}

class PlanTest : public testing::TestWithParam<Case> {};

TEST_P(PlanTest, MatchesTheModelConfig) {
  const auto [name, tp] = GetParam();
  const FixtureConfig c = config_of(name);
  const auto valid = expected_valid_tp(c);
  const bool is_valid = std::find(valid.begin(), valid.end(), tp) != valid.end();

  if (!is_valid) {
    try {
      autotp::inspect(fixture(name), tp);
      FAIL() << "tp=" << tp << " should be rejected for " << name;
    } catch (const autotp::Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
      EXPECT_NE(msg.find(fixture(name) + ": tp=" + std::to_string(tp) + " does not divide the "), std::string::npos) << msg;
      std::string valid_list;
      for (size_t i = 0; i < valid.size(); ++i) valid_list += (i ? ", " : "") + std::to_string(valid[i]);
      EXPECT_NE(msg.find("; valid tp for this model: " + valid_list), std::string::npos) << msg;
      // Each failing dimension is named with its extent.
      if (c.heads % tp) EXPECT_NE(msg.find("attention heads (" + std::to_string(c.heads) + ","), std::string::npos) << msg;
      if (c.kv_heads % tp && c.kv_heads != c.heads)
        EXPECT_NE(msg.find("kv heads (" + std::to_string(c.kv_heads) + ","), std::string::npos) << msg;
      if (c.intermediate % tp) EXPECT_NE(msg.find("intermediate size (" + std::to_string(c.intermediate)), std::string::npos) << msg;
    }
    return;
  }

  const autotp::TpPlan& plan = plan_for(name, tp);
  EXPECT_EQ(plan.tp, tp);
  EXPECT_EQ(plan.valid_tp, valid);
  EXPECT_EQ(plan.blocks, 2 * c.layers);

  // Placement of every parameter.
  const bool frozen = c.export_kind == "freeze";
  EXPECT_EQ(plan.graph_kind, frozen ? "frozen" : (c.export_kind == "script" ? "scripted" : "traced"));
  const int64_t per_layer = 9 + (c.qkv_bias ? 3 : 0);
  const int64_t expected_count = c.layers * per_layer + 2 /*embed, norm*/ + (c.tied ? 0 : 1) + (frozen ? 1 : 0);
  ASSERT_EQ(static_cast<int64_t>(plan.parameters.size()), expected_count);
  const auto order = frozen ? frozen_order(c) : std::vector<Expected>{};
  for (size_t i = 0; i < plan.parameters.size(); ++i) {
    const auto& p = plan.parameters[i];
    const Expected e = frozen ? order[i] : expected_for(p.name);
    EXPECT_EQ(p.placement, e.placement) << p.name << ": " << p.reason;
    EXPECT_EQ(p.split_dim, e.split_dim) << p.name;
    EXPECT_FALSE(p.reason.empty()) << p.name;
    EXPECT_EQ(p.bytes_per_rank, p.split_dim >= 0 ? p.bytes / tp : p.bytes) << p.name;
  }
  // Tied embeddings stay one parameter, named twice.
  if (c.tied) {
    auto it = std::find_if(plan.parameters.begin(), plan.parameters.end(),
                           [](const autotp::ParamPlan& p) { return p.name == "model.embed_tokens.weight"; });
    ASSERT_NE(it, plan.parameters.end());
    EXPECT_EQ(it->aliases, std::vector<std::string>{"lm_head.weight"});
    EXPECT_EQ(it->placement, Placement::Vocab);
  }

  // Bytes.
  const Bytes b = expected_bytes(c);
  EXPECT_EQ(plan.bytes.total, b.total);
  EXPECT_EQ(plan.bytes.replicated, b.replicated);
  EXPECT_EQ(plan.bytes.per_rank, b.replicated + b.split / tp);

  // Rescaled sites: traced HF graphs infer heads with -1 and read kv heads from the tensor, so
  // nothing is baked; the scripted reference reads module attributes, the frozen one constants.
  if (c.export_kind == "trace") {
    EXPECT_TRUE(plan.rescaled.empty());
  } else {
    ASSERT_EQ(static_cast<int64_t>(plan.rescaled.size()), 8 * c.layers);
    for (int64_t l = 0; l < c.layers; ++l) {
      const std::string attn = "layers." + std::to_string(l) + ".self_attn";
      struct Site {
        std::string op;
        int index;
        int64_t from;
        std::string value;
        std::string line;
      };
      const std::string heads = "attribute " + attn + ".num_heads", kv = "attribute " + attn + ".num_kv_heads";
      const std::string kvrep = "aten::mul(" + kv + ", attribute " + attn + ".n_rep)";
      // Both attention variants share Attention.project_heads / repeat_kv / merge_heads.
      const std::vector<Site> sites = {
          {"aten::view", 2, c.heads, heads, "ref_llama.py:66"},      {"aten::view", 2, c.kv_heads, kv, "ref_llama.py:67"},
          {"aten::view", 2, c.kv_heads, kv, "ref_llama.py:68"},      {"aten::expand", 1, c.kv_heads, kv, "ref_llama.py:60"},
          {"aten::reshape", 1, c.heads, kvrep, "ref_llama.py:61"},   {"aten::expand", 1, c.kv_heads, kv, "ref_llama.py:60"},
          {"aten::reshape", 1, c.heads, kvrep, "ref_llama.py:61"},
          {"aten::reshape", 2, c.hidden, "attribute " + attn + ".hidden_size", "ref_llama.py:75"}};
      for (size_t i = 0; i < sites.size(); ++i) {
        const auto& got = plan.rescaled[l * 8 + i];
        const auto& want = sites[i];
        std::string where = want.op + " size[" + std::to_string(want.index) + "]";
        if (!frozen) where += " in " + attn;  // a reloaded frozen graph keeps no call stack
        EXPECT_EQ(got.where, where);
        EXPECT_EQ(got.value, frozen ? "constant" : want.value);
        EXPECT_EQ(got.from, want.from);
        EXPECT_EQ(got.to, want.from / tp);
        EXPECT_EQ(got.source, want.line);
      }
    }
  }

  // Collectives: per layer one copy_to_tp before q/k/v (shared input) and one before gate/up, one
  // reduce after o_proj and one after down_proj; the embedding's reduce; the lm-head's copy and logits.
  // A frozen archive has no gradients, so nothing needs copy_to_tp (its backward all-reduce).
  std::map<std::string, int64_t> kinds;
  for (const auto& col : plan.collectives) ++kinds[col.kind];
  EXPECT_EQ(kinds["copy_to_tp"], c.export_kind == "freeze" ? 0 : 2 * c.layers + 1);
  EXPECT_EQ(kinds["reduce_from_tp"], 2 * c.layers);
  EXPECT_EQ(kinds["vocab_embedding_reduce"], 1);
  EXPECT_EQ(kinds["vocab_parallel_logits"], 1);
  EXPECT_EQ(kinds.size(), 4u);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* f : {"llama_mha", "llama_gqa", "llama_tied", "qwen2", "mistral", "ref_script", "ref_frozen", "ref_sdpa"})
    for (int tp : {1, 2, 3, 4}) cases.push_back({f, tp});
  for (int tp : {1, 2, 3, 4}) cases.push_back({"smollm2", tp});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PlanTest, testing::ValuesIn(all_cases()), case_name);

TEST(PlanTest, SmolLM2AdmitsExactlyOneAndThree) {
  EXPECT_EQ(plan_for("smollm2", 3).valid_tp, (std::vector<int>{1, 3}));
  // tp defaults to the largest valid tp <= 8.
  EXPECT_EQ(autotp::inspect(fixture("smollm2")).tp, 3);
  EXPECT_EQ(autotp::inspect(fixture("llama_mha")).tp, 8);
}

TEST(PlanTest, SmolLM2HeadsAndDimensionsComeFromTheGraph) {
  const auto& plan = plan_for("smollm2", 3);
  // 30 layers, hidden 576, intermediate 1536, 9 heads of 64, 3 kv heads, vocab 49152, tied.
  std::map<std::string, int64_t> extent_by_dim;
  for (const auto& c : plan.constraints) extent_by_dim[c.dimension] = c.extent;
  EXPECT_EQ(extent_by_dim["attention heads"], 9);
  EXPECT_EQ(extent_by_dim["kv heads"], 3);
  EXPECT_EQ(extent_by_dim["intermediate size"], 1536);
  EXPECT_EQ(extent_by_dim["vocabulary"], 49152);
}

TEST(PlanTest, NormAfterLinearKeepsThatLinearReplicated) {
  const auto plan = autotp::inspect(fixture("tiny_norm_after_linear"), 2);
  std::map<std::string, autotp::ParamPlan> by;
  for (const auto& p : plan.parameters) by[p.name] = p;
  EXPECT_EQ(by["proj.weight"].placement, Placement::Replicated);
  EXPECT_NE(by["proj.weight"].reason.find("aten::var at ref_llama.py:169"), std::string::npos) << by["proj.weight"].reason;
  EXPECT_EQ(by["up.weight"].placement, Placement::Column);
  EXPECT_EQ(by["down.weight"].placement, Placement::Row);
  EXPECT_EQ(by["embed.weight"].placement, Placement::Vocab);
  EXPECT_EQ(plan.blocks, 1);
}

}  // namespace
