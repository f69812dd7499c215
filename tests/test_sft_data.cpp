// Version-2 token files (loss mask, examples) and the shuffled order, against
// tests/data/token_reference.py: a numpy reader written from runtime/token_data.h's documentation
// alone (raw bytes, its own Fisher–Yates/splitmix64), so the C++ reader and the documented contract
// are checked against each other. The SFT masks that scripts/tokenize_data.py writes are checked by
// tests/data/check_sft_masks.py with SmolLM2's tokenizer; the error messages against hand-made files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "autotp/error.h"
#include "fixtures.h"
#include "runtime/token_data.h"

namespace {

using Rows = std::vector<std::vector<int64_t>>;

std::string temp(const std::string& name) {
  return testing::TempDir() + "autotp_sft_" + std::to_string(getpid()) + "_" + name;
}

Rows rows(const at::Tensor& t) {
  Rows out(t.size(0));
  for (int64_t i = 0; i < t.size(0); ++i) {
    at::Tensor r = t[i].contiguous();
    out[i].assign(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
  }
  return out;
}

nlohmann::json reference(const nlohmann::json& spec) {
  const std::string path = temp("spec.json");
  std::ofstream(path) << spec.dump();
  auto r = autotp_test::run_command(std::string(AUTOTP_VENV_BIN) + "/python " + AUTOTP_SOURCE_DIR +
                                    "/tests/data/token_reference.py " + path);
  std::filesystem::remove(path);
  EXPECT_EQ(r.status, 0) << r.err;
  return nlohmann::json::parse(r.out);
}

// Deterministic ids and mask bits (a small LCG): no structure a wrong offset could hide behind.
uint64_t lcg(uint64_t& s) { return (s = s * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; }

// A masked stream of 103 tokens over vocabulary 1000 (2-byte ids).
std::string masked_stream() {
  autotp::TokenFileV2 f;
  f.vocab = 1000;
  uint64_t s = 1;
  for (int i = 0; i < 103; ++i) {
    f.tokens.push_back(static_cast<int64_t>(lcg(s) % 1000));
    f.mask.push_back(lcg(s) % 3 != 0);
  }
  const std::string path = temp("stream.tokens");
  autotp::write_token_file(path, f);
  return path;
}

// 8 examples of lengths 1..25 over vocabulary 70000 (4-byte ids), pad id 5; at seq 8, the three
// longer than 9 tokens are cut. with_mask false: every next token counts.
std::string example_file(bool with_mask) {
  autotp::TokenFileV2 f;
  f.vocab = 70000;
  f.pad_id = 5;
  f.example_offsets = {0};
  uint64_t s = 2;
  for (int len : {1, 3, 9, 10, 12, 25, 2, 7}) {
    for (int j = 0; j < len; ++j) {
      f.tokens.push_back(static_cast<int64_t>(65000 + lcg(s) % 5000));
      if (with_mask) f.mask.push_back(j >= len / 2);  // the second half is the "reply"
    }
    f.example_offsets.push_back(static_cast<int64_t>(f.tokens.size()));
  }
  const std::string path = temp(with_mask ? "examples_mask.tokens" : "examples.tokens");
  autotp::write_token_file(path, f);
  return path;
}

// Every sample, batches across epoch boundaries and loss_tokens, with and without shuffling, equal
// the reference's, for a masked stream, examples with and without a mask, and a version-1 stream.
TEST(SftData, BatchesEqualTheIndependentReader) {
  std::vector<int64_t> v1_ids(50);
  for (int i = 0; i < 50; ++i) v1_ids[i] = (i * 37) % 300;
  const std::string v1 = temp("v1.tokens");
  autotp::write_token_file(v1, v1_ids, 300);
  // queries: [step, accum, ga, rank, dp, micro]; several cross an epoch boundary.
  const nlohmann::json queries = {{0, 0, 1, 0, 1, 4}, {1, 1, 2, 1, 2, 3}, {3, 0, 2, 0, 2, 3}, {5, 1, 1, 0, 2, 5}};
  const nlohmann::json loss_steps = {{0, 1, 1, 4}, {1, 2, 2, 3}, {4, 1, 3, 2}};
  for (const std::string& path : {masked_stream(), example_file(true), example_file(false), v1}) {
    for (const nlohmann::json& seed : {nlohmann::json(), nlohmann::json(99)}) {
      SCOPED_TRACE(path + " seed " + seed.dump());
      const int64_t seq = 8;
      autotp::TokenData data(path);
      if (!seed.is_null()) data.shuffle(seed.get<uint64_t>());
      nlohmann::json want = reference({{"file", path}, {"seq", seq}, {"seed", seed}, {"queries", queries}, {"loss_steps", loss_steps}});
      const int64_t n = want["samples"];
      ASSERT_EQ(data.samples(seq), n);
      EXPECT_EQ(data.truncated(seq), want["truncated"].get<int64_t>());
      autotp::Batch all = data.samples_at(0, n, seq);
      EXPECT_EQ(rows(all.input), want["all"]["input"].get<Rows>());
      EXPECT_EQ(rows(all.labels), want["all"]["labels"].get<Rows>());
      for (size_t q = 0; q < queries.size(); ++q) {
        const auto& a = queries[q];
        autotp::Batch b = data.batch(a[0], a[1], a[2], a[3], a[4], a[5], seq);
        EXPECT_EQ(rows(b.input), want["batches"][q]["input"].get<Rows>()) << "query " << a.dump();
        EXPECT_EQ(rows(b.labels), want["batches"][q]["labels"].get<Rows>()) << "query " << a.dump();
      }
      for (size_t q = 0; q < loss_steps.size(); ++q) {
        const auto& a = loss_steps[q];
        EXPECT_EQ(data.loss_tokens(a[0], a[1], a[2], a[3], seq), want["loss_tokens"][q].get<int64_t>()) << a.dump();
      }
    }
  }
  EXPECT_EQ(autotp::TokenData(example_file(true)).truncated(8), 3);  // lengths 10, 12, 25 > 9
}

// Padding and truncation of one example by hand: example 1 (3 tokens) at seq 8 is its 3 ids then
// pad 5; labels its last 2 ids where the mask (second half: j >= 1) allows, then -100.
TEST(SftData, ShortExampleIsPaddedLongOneCut) {
  autotp::TokenData data(example_file(true));
  EXPECT_TRUE(data.has_examples());
  EXPECT_TRUE(data.has_mask());
  autotp::Batch b = data.samples_at(1, 1, 8);
  const auto in = rows(b.input)[0], lab = rows(b.labels)[0];
  EXPECT_EQ(std::vector<int64_t>(in.begin() + 3, in.end()), std::vector<int64_t>(5, 5));
  EXPECT_EQ(lab, (std::vector<int64_t>{in[1], in[2], -100, -100, -100, -100, -100, -100}));
  // Example 5 (25 tokens, mask from token 12 on): input its first 8 tokens, labels tokens 1..8, all
  // before the reply: nothing to learn in the window.
  autotp::Batch cut = data.samples_at(5, 1, 8);
  EXPECT_EQ(rows(cut.labels)[0], std::vector<int64_t>(8, -100));
  EXPECT_EQ(data.samples_at(5, 1, 30).labels.ne(-100).sum().item<int64_t>(), 13);  // tokens 12..24
}

// The permutation of 2 seeds × 2 epochs equals the reference's reimplementation; each epoch holds
// every sample once; dp ranks of one step read disjoint samples that together make the step's slice.
TEST(SftData, ShuffleIsTheDocumentedPermutation) {
  std::vector<int64_t> ids(301);
  for (int i = 0; i < 301; ++i) ids[i] = i;
  const std::string path = temp("positions.tokens");
  autotp::write_token_file(path, ids, 400);
  const int64_t seq = 3, n = 100;  // 300 / 3
  nlohmann::json perms = {{1, 0, n}, {1, 1, n}, {12345678901234ULL, 0, n}, {12345678901234ULL, 1, n}};
  nlohmann::json want = reference({{"file", path}, {"seq", seq}, {"perms", perms}});
  std::set<std::vector<int64_t>> distinct;
  for (size_t k = 0; k < perms.size(); ++k) {
    autotp::TokenData data(path);
    data.shuffle(perms[k][0].get<uint64_t>());
    const int64_t epoch = perms[k][1];
    std::vector<int64_t> got;
    for (int64_t r = 0; r < n; ++r) got.push_back(data.sample_at_position(epoch * n + r, seq));
    EXPECT_EQ(got, want["perms"][k].get<std::vector<int64_t>>()) << perms[k].dump();
    distinct.insert(got);
    std::sort(got.begin(), got.end());
    for (int64_t r = 0; r < n; ++r) ASSERT_EQ(got[r], r) << "epoch is not a permutation";
  }
  EXPECT_EQ(distinct.size(), 4u);
  autotp::TokenData data(path);
  data.shuffle(7);
  const int64_t dp = 4, micro = 3, ga = 2;
  for (int64_t step : {0, 3}) {
    std::vector<int64_t> seen;
    for (int64_t k = 0; k < ga; ++k)
      for (int64_t j = 0; j < dp; ++j) {
        autotp::Batch b = data.batch(step, k, ga, j, dp, micro, seq);
        for (int64_t i = 0; i < micro; ++i) seen.push_back(b.input[i][0].item<int64_t>() / seq);
      }
    std::vector<int64_t> slice;
    for (int64_t g = step * 24; g < step * 24 + 24; ++g) slice.push_back(data.sample_at_position(g, seq));
    EXPECT_EQ(seen, slice);
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end()) << "two ranks read one sample at step " << step;
  }
  std::filesystem::remove(path);
}

// loss_tokens equals the labels that count in the batches of every rank and accumulation step;
// epoch_at moves on exactly when the step's first sample is past the end. 8 examples, global batch
// dp 2 · ga 1 · micro 3 = 6: step 1 starts at 6 (epoch 0, straddles), step 2 at 12 (epoch 1), step 3 at 18 (2).
TEST(SftData, LossTokensAndEpochAcrossTheBoundary) {
  autotp::TokenData data(example_file(true));
  data.shuffle(3);
  const int64_t dp = 2, ga = 1, micro = 3, seq = 8;
  for (int64_t step = 0; step < 4; ++step) {
    int64_t count = 0;
    for (int64_t k = 0; k < ga; ++k)
      for (int64_t j = 0; j < dp; ++j) count += data.batch(step, k, ga, j, dp, micro, seq).labels.ne(-100).sum().item<int64_t>();
    EXPECT_EQ(data.loss_tokens(step, ga, dp, micro, seq), count) << "step " << step;
  }
  EXPECT_EQ(data.epoch_at(0, ga, dp, micro, seq), 0);
  EXPECT_EQ(data.epoch_at(1, ga, dp, micro, seq), 0);
  EXPECT_EQ(data.epoch_at(2, ga, dp, micro, seq), 1);
  EXPECT_EQ(data.epoch_at(3, ga, dp, micro, seq), 2);
  autotp::TokenData plain(example_file(true));  // no shuffle: step 1 reads 6, 7 | 0, 1, 2, 3
  std::vector<int64_t> order;
  for (int64_t g = 6; g < 12; ++g) order.push_back(plain.sample_at_position(g, seq));
  EXPECT_EQ(order, (std::vector<int64_t>{6, 7, 0, 1, 2, 3}));
}

// scripts/tokenize_data.py's masks for a 2-turn sharegpt conversation and an alpaca example are
// exactly the assistant replies + <|im_end|>, computed in check_sft_masks.py by tokenizing the replies
// alone (plus --cutoff-len and --eval-split); the files it leaves open here as SFT data.
TEST(SftData, TokenizerMasksAreTheAssistantReplies) {
  const std::string dir = temp("masks");
  auto r = autotp_test::run_command(std::string(AUTOTP_VENV_BIN) + "/python " + AUTOTP_SOURCE_DIR +
                                    "/tests/data/check_sft_masks.py " + dir);
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("FAIL"), std::string::npos) << r.out;
  autotp::TokenData conv(dir + "/sharegpt.tokens");
  EXPECT_TRUE(conv.has_examples());
  EXPECT_EQ(conv.samples(64), 1);
  EXPECT_EQ(conv.vocab(), 49152);
  // 12 trained tokens ("Rome." + <|im_end|>: 3, the second reply + <|im_end|>: 9), all inside 64.
  EXPECT_EQ(conv.loss_tokens(0, 1, 1, 1, 64), 12);
  EXPECT_EQ(conv.truncated(16), 1);
  autotp::TokenData split(dir + "/messages.eval.tokens");
  EXPECT_EQ(split.samples(32), 2);
  std::filesystem::remove_all(dir);
}

}  // namespace
