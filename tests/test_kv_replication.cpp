// kv heads held by several ranks (issue 13 item 2; passes/kv_replication.cpp): when tp is a
// multiple of a GQA model's kv heads, the q side is cut tp ways and each kv head is held by the
// tp / kv ranks whose q heads read it, its gradient summed over them. Checked here: the plan's
// numbers by hand (shapes, bytes, sites, collectives), the cut of one tensor by hand, the exact
// bytes the holders' gradient sum moves, the plan read back from JSON, and two models whose kv side
// may not be replicated (a sum over the kv heads; q grouped by kv head without a repeat): kept whole,
// with the op named, and still equal to the unsharded model. verify at tp 8 on every fixture and zoo
// architecture, training, merge and resume are in test_rewrite, test_soundness, test_train,
// test_merge and test_resume.
#include <gtest/gtest.h>

#include <map>

#include <ATen/ATen.h>

#include "autotp/autotp.h"
#include "autotp/passes.h"
#include "autotp/verify.h"
#include "fixtures.h"

using autotp::Placement;
using autotp_test::fixture;

namespace {

using autotp_test::by_name;

autotp::VerifyReport verified(const std::string& name, int tp) {
  autotp::VerifyOptions o;
  o.tp = tp;
  auto rep = autotp::verify_threads(fixture(name), o);
  EXPECT_LE(rep.logits_rel, 1e-5) << name << " tp=" << tp;
  EXPECT_LE(rep.loss_rel, 1e-5) << name << " tp=" << tp;
  EXPECT_LE(rep.grads_rel, 1e-5) << name << " tp=" << tp << " worst: " << rep.worst_grad;
  return rep;
}

}  // namespace

// Mistral (8 heads, 2 kv heads, head_dim 8, hidden 64) at tp 4: 2 q heads per rank, kv head r / 2
// on rank r. k_proj/v_proj [16, 64] are cut in 2 parts of [8, 64] (2048 bytes), each held by 2
// ranks; q_proj in 4 parts of [16, 64]; o_proj [64, 64] in 4 of [64, 16].
TEST(KvReplication, MistralAtTp4HoldsEachKvHeadOnTwoRanks) {
  const auto plan = autotp::inspect(fixture("mistral"), 4);
  const auto p = by_name(plan);
  for (int layer : {0, 1}) {
    const std::string attn = "model.layers." + std::to_string(layer) + ".self_attn.";
    for (const char* kv : {"k_proj.weight", "v_proj.weight"}) {
      const auto& w = p.at(attn + kv);
      EXPECT_EQ(w.placement, Placement::Column) << w.name;
      EXPECT_EQ(w.split_dim, 0);
      EXPECT_EQ(w.replicas, 2);
      EXPECT_EQ(w.bytes_per_rank, 8 * 64 * 4);
      for (int r = 0; r < 4; ++r) EXPECT_EQ(autotp::local_shape(w, 4, r), (std::vector<int64_t>{8, 64}));
      EXPECT_NE(w.reason.find("kv heads held by 2 ranks each"), std::string::npos) << w.reason;
    }
    EXPECT_EQ(p.at(attn + "q_proj.weight").replicas, 1);
    EXPECT_EQ(autotp::local_shape(p.at(attn + "q_proj.weight"), 4, 3), (std::vector<int64_t>{16, 64}));
    EXPECT_EQ(autotp::local_shape(p.at(attn + "o_proj.weight"), 4, 3), (std::vector<int64_t>{64, 16}));
  }
  // Every rank: q, o 4096 bytes each; k, v 2048; MLP 3 x 48 x 64 x 4; norms 2 x 64 x 4; per layer.
  // Plus embedding and lm-head 64 rows each, and the final norm.
  const int64_t layer = 2 * 4096 + 2 * 2048 + 3 * 48 * 64 * 4 + 2 * 64 * 4;
  EXPECT_EQ(autotp::rank_bytes(plan), (std::vector<int64_t>(4, 2 * layer + 2 * 64 * 64 * 4 + 64 * 4)));

  // The rewrite's sites: a slice after each of the 4 repeats (k and v of 2 layers), and a
  // copy_to_replicas at each k/v weight.
  ASSERT_EQ(plan.sites.kv_slices.size(), 4u);
  for (const auto& s : plan.sites.kv_slices) {
    EXPECT_EQ(s.extent, 8);  // the 8 heads repeat_kv makes of 2
    EXPECT_EQ(s.replicas, 2);
    EXPECT_EQ(s.dim, 1);
  }
  int64_t replica_copies = 0;
  for (const auto& c : plan.sites.copies) replica_copies += c.replicas == 2;
  EXPECT_EQ(replica_copies, 4);
  int64_t listed = 0;
  for (const auto& c : plan.collectives)
    if (c.kind == "copy_to_replicas") {
      ++listed;
      EXPECT_EQ(c.bytes, 2048) << c.where;
    }
  EXPECT_EQ(listed, 4);

  bool attention = false;
  for (const auto& f : plan.families)
    if (f.name == "attention heads") {
      attention = true;
      EXPECT_FALSE(f.whole);
      EXPECT_EQ(f.replicas, 2);
    }
  EXPECT_TRUE(attention);
  EXPECT_EQ(plan.valid_tp, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}));
  std::vector<std::string> replicated_notes;
  for (const auto& n : plan.tp_notes)
    if (n.find("each kv head on") != std::string::npos) replicated_notes.push_back(n);
  EXPECT_EQ(replicated_notes, (std::vector<std::string>{
                                  "tp=4: attention heads with each kv head on 2 ranks (2 kv heads, 8 q heads: 2 per rank)",
                                  // 4 q heads per kv head over 3 holders: 2 + 1 + 1
                                  "tp=6: attention heads with each kv head on 3 ranks (2 kv heads, 8 q heads: 2+1+1+2+1+1 per rank)",
                                  "tp=8: attention heads with each kv head on 4 ranks (2 kv heads, 8 q heads: 1 per rank)"}));
}

// The cut of one tensor, by hand: [4, 3] in 2 parts held by 2 ranks each at tp 4.
TEST(KvReplication, ShardAndAssembleByHand) {
  autotp::ParamPlan p;
  p.name = "k";
  p.shape = {4, 3};
  p.placement = Placement::Column;
  p.split_dim = 0;
  p.replicas = 2;
  const at::Tensor full = at::arange(12, at::kFloat).view({4, 3});
  for (int r = 0; r < 4; ++r) {
    const at::Tensor mine = autotp::shard_of(full, p, 4, r);
    EXPECT_TRUE(at::equal(mine, full.narrow(0, r / 2 * 2, 2))) << "rank " << r << ": " << mine;
    EXPECT_EQ(autotp::local_shape(p, 4, r), (std::vector<int64_t>{2, 3}));
  }
  std::vector<at::Tensor> parts;
  for (int r = 0; r < 4; ++r) parts.push_back(autotp::shard_of(full, p, 4, r) + (r % 2 ? 100 : 0));  // second holders differ
  EXPECT_TRUE(at::equal(autotp::assemble(parts, p), full)) << "assemble reads the first holder of each part";
}

// One forward + backward: every rank sums the gradient of its 2 k/v weights per layer with the
// other holder of its kv head: 4 all-reduces of [8, 64] fp32 (2048 bytes) at tp 4, over groups of
// 2; at tp 8 the kv heads have 4 holders and each rank's part is the same size.
TEST(KvReplication, VerifyCountsTheHoldersGradientSumExactly) {
  for (auto [tp, group] : {std::pair<int, std::string>{4, "tp/2"}, {8, "tp/4"}}) {
    auto rep = verified("mistral", tp);
    const auto it = rep.tp_by_site.find("copy_to_replicas.backward (" + group + ")");
    ASSERT_NE(it, rep.tp_by_site.end()) << "tp=" << tp;
    EXPECT_EQ(it->second.calls, 4);
    EXPECT_EQ(it->second.bytes, 4 * 2048);
    // The q/k/v input's copy_to_tp and the reduces are those of any tp: 5 and 4 all-reduces.
    EXPECT_EQ(rep.tp_by_site.at("copy_to_tp.backward").calls, 5);
    EXPECT_EQ(rep.tp_by_site.at("reduce_from_tp.forward").calls, 4);
  }
}

// A plan at tp 8 written as JSON and read back rewrites every rank to the same parameters and the
// same replicas and slices.
TEST(KvReplication, JsonRoundTripKeepsReplicasAndSlices) {
  const auto plan = autotp::inspect(fixture("llama_gqa"), 8);
  const auto back = autotp::plan_from_json(autotp::plan_to_json(plan), "plan.json");
  EXPECT_EQ(autotp::plan_to_json(back), autotp::plan_to_json(autotp::plan_from_json(autotp::plan_to_json(back), "x")));
  ASSERT_EQ(back.sites.kv_slices.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(back.sites.kv_slices[i].node, plan.sites.kv_slices[i].node);
    EXPECT_EQ(back.sites.kv_slices[i].extent, 8);
    EXPECT_EQ(back.sites.kv_slices[i].replicas, 2);
  }
  ASSERT_EQ(back.sites.copies.size(), plan.sites.copies.size());
  for (size_t i = 0; i < back.sites.copies.size(); ++i) EXPECT_EQ(back.sites.copies[i].replicas, plan.sites.copies[i].replicas);
  for (size_t i = 0; i < back.parameters.size(); ++i) EXPECT_EQ(back.parameters[i].replicas, plan.parameters[i].replicas);
  auto model = autotp::load_model(fixture("llama_gqa"));
  for (int r : {0, 5}) {
    auto a = autotp::rewrite(model, plan, r), b = autotp::rewrite(model, back, r);
    auto pa = a.named_parameters(true), pb = b.named_parameters(true);
    auto ia = pa.begin();
    for (auto ib = pb.begin(); ib != pb.end(); ++ia, ++ib) EXPECT_TRUE(at::equal((*ia).value, (*ib).value)) << (*ia).name;
    EXPECT_EQ(autotp::rewrite_info(a).params.at(1).replicas, autotp::rewrite_info(b).params.at(1).replicas);
  }
}

// k centred by its sum over the kv heads: with kv heads on several ranks each would be counted once
// per holder, so at tp 8 (4 kv heads) attention is kept whole, the reason naming the sum; at tp 4
// it is split evenly. Both equal the unsharded model.
TEST(KvReplication, ASumOverTheKvHeadsKeepsAttentionWhole) {
  const auto plan = autotp::inspect(fixture("hole_kv_head_sum"), 8);
  const auto k = by_name(plan).at("layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(k.placement, Placement::Replicated);
  EXPECT_NE(k.reason.find("its kv heads cannot be held by several ranks: aten::sum at foreign_models.py"), std::string::npos)
      << k.reason;
  EXPECT_NE(k.reason.find("sums over the kv heads"), std::string::npos) << k.reason;
  EXPECT_EQ(by_name(plan).at("layers.0.mlp.up_proj.weight").placement, Placement::Column);
  verified("hole_kv_head_sum", 8);
  EXPECT_EQ(by_name(autotp::inspect(fixture("hole_kv_head_sum"), 4)).at("layers.0.self_attn.k_proj.weight").replicas, 1);
  verified("hole_kv_head_sum", 4);
}

// q viewed per kv group and contracted with k/v by einsum, without a repeat: at tp 8 the q side would
// be cut finer than its groups, so attention stays whole; at tp 4 it is split and exact.
TEST(KvReplication, GroupedEinsumWithoutARepeatKeepsAttentionWhole) {
  const auto plan = autotp::inspect(fixture("hole_grouped_einsum"), 8);
  for (const char* w : {"q_proj", "k_proj", "v_proj", "o_proj"})
    EXPECT_EQ(by_name(plan).at(std::string("layers.1.self_attn.") + w + ".weight").placement, Placement::Replicated) << w;
  verified("hole_grouped_einsum", 8);
  EXPECT_EQ(by_name(autotp::inspect(fixture("hole_grouped_einsum"), 4)).at("layers.1.self_attn.q_proj.weight").placement,
            Placement::Column);
  verified("hole_grouped_einsum", 4);
}

// 3 q heads per kv head (Qwen2.5-7B has 7) at tp 4: each kv head on 2 ranks, which take 2 and 1 of
// its q heads. hidden 48, head_dim 8: q_proj [48, 48] is cut 16+8+16+8 rows, with its bias; k/v
// [16, 48] in 2 parts of 8 rows; o_proj [48, 48] 16+8+16+8 columns; each repeat's slice keeps
// heads 0-1 or 2 of its kv head's 3.
TEST(KvReplication, QHeadsAHolderCountDoesNotDivideAreCutInWholeHeads) {
  const auto plan = autotp::inspect(fixture("qwen2_kv2x3"), 4);
  const auto p = by_name(plan);
  const auto& q = p.at("model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q.units, (std::vector<int64_t>{2, 1, 2, 1}));
  EXPECT_EQ(q.replicas, 1);
  const std::vector<int64_t> rows{16, 8, 16, 8};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(autotp::local_shape(q, 4, r), (std::vector<int64_t>{rows[r], 48}));
    EXPECT_EQ(autotp::local_shape(p.at("model.layers.0.self_attn.q_proj.bias"), 4, r), (std::vector<int64_t>{rows[r]}));
    EXPECT_EQ(autotp::local_shape(p.at("model.layers.0.self_attn.o_proj.weight"), 4, r), (std::vector<int64_t>{48, rows[r]}));
    EXPECT_EQ(autotp::local_shape(p.at("model.layers.0.self_attn.k_proj.weight"), 4, r), (std::vector<int64_t>{8, 48}));
    EXPECT_EQ(autotp::local_shape(p.at("model.layers.0.self_attn.v_proj.bias"), 4, r), (std::vector<int64_t>{8}));
  }
  // Rank 1 holds q rows 16..23 (kv head 0's third q head), rank 2 rows 24..39.
  const at::Tensor full = at::arange(48, at::kFloat).unsqueeze(1).expand({48, 48}).contiguous();
  EXPECT_EQ(autotp::shard_of(full, q, 4, 1)[0][0].item<float>(), 16);
  EXPECT_EQ(autotp::shard_of(full, q, 4, 2)[0][0].item<float>(), 24);
  EXPECT_TRUE(at::equal(autotp::assemble({autotp::shard_of(full, q, 4, 0), autotp::shard_of(full, q, 4, 1),
                                          autotp::shard_of(full, q, 4, 2), autotp::shard_of(full, q, 4, 3)}, q), full));
  ASSERT_EQ(plan.sites.kv_slices.size(), 4u);
  for (const auto& s : plan.sites.kv_slices) {
    EXPECT_EQ(s.extent, 6);
    EXPECT_EQ(s.units, (std::vector<int64_t>{2, 1, 2, 1}));
  }
  verified("qwen2_kv2x3", 4);
}

// The same cuts with the traced attention as scaled_dot_product_attention (--sdpa): the repeat
// stays before it, the slice after the repeat; equal to the model as traced.
TEST(KvReplication, SdpaAttentionWithKvHeadsOnSeveralRanks) {
  for (auto [name, tp] : {std::pair<std::string, int>{"mistral", 8}, {"qwen2_kv2x3", 4}}) {
    autotp::VerifyOptions o;
    o.tp = tp;
    o.sdpa = true;
    auto rep = autotp::verify_threads(fixture(name), o);
    EXPECT_EQ(rep.sdpa_sites, 2) << name;
    EXPECT_LE(rep.logits_rel, 1e-5) << name;
    EXPECT_LE(rep.loss_rel, 1e-5) << name;
    EXPECT_LE(rep.grads_rel, 1e-5) << name << " worst: " << rep.worst_grad;
  }
}
