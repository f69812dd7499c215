// TokenData::batch of version-1 stream files against sample indices worked out by hand from the
// documented layout (runtime/token_data.h): sample i is tokens [i·S, i·S + S + 1); DP rank j of step t,
// accumulation step k reads global samples ((t·GA + k)·dp + j)·micro + i, wrapping around the
// file's (N - 1) / S whole samples. The token files hold base, base + 1, ..., so every id *is* its
// position (plus base): a wrong sample index shows as a wrong first id. TP peers read the same batch
// (batch has no tp argument), so tp plays no part here.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <unistd.h>
#include <vector>

#include <ATen/ATen.h>

#include "autotp/error.h"
#include "runtime/token_data.h"

namespace {

// A token file of n ids base, base + 1, ...; vocab above 65536 makes write_token_file use 4 bytes.
std::string positions_file(int64_t n, int64_t base = 0, int64_t vocab = 65536) {
  const std::string path = testing::TempDir() + "autotp_positions_" + std::to_string(n) + "_" + std::to_string(base) + "_" +
                           std::to_string(getpid()) + ".tokens";
  std::vector<int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), base);
  autotp::write_token_file(path, ids, vocab);
  return path;
}

// One batch call and the first id of each of its rows, worked out by hand.
struct Case {
  const char* why;
  int64_t step, accum, grad_accum, dp_rank, dp, micro, seq;
  std::vector<int64_t> first_ids;
};

// Asserts the batch's shapes, each row's first id, and that each row's input is seq consecutive ids
// and its labels the same shifted by one.
void expect_batch(const autotp::TokenData& data, const Case& c, int64_t base) {
  SCOPED_TRACE(c.why);
  autotp::Batch b = data.batch(c.step, c.accum, c.grad_accum, c.dp_rank, c.dp, c.micro, c.seq);
  ASSERT_EQ(b.input.scalar_type(), at::kLong);
  ASSERT_EQ(b.labels.scalar_type(), at::kLong);
  ASSERT_EQ(b.input.sizes(), (std::vector<int64_t>{c.micro, c.seq}));
  ASSERT_EQ(b.labels.sizes(), (std::vector<int64_t>{c.micro, c.seq}));
  ASSERT_EQ(static_cast<int64_t>(c.first_ids.size()), c.micro);
  for (int64_t i = 0; i < c.micro; ++i) {
    EXPECT_EQ(b.input[i][0].item<int64_t>(), base + c.first_ids[i]) << "row " << i;
    for (int64_t t = 0; t < c.seq; ++t) {
      ASSERT_EQ(b.input[i][t].item<int64_t>(), base + c.first_ids[i] + t) << "row " << i << " position " << t;
      ASSERT_EQ(b.labels[i][t].item<int64_t>(), base + c.first_ids[i] + t + 1) << "row " << i << " position " << t;
    }
  }
}

// 100 tokens; the arithmetic of each case is in its comment. count = whole samples = (N - 1) / S.
const std::vector<Case>& hundred_token_cases() {
  static const std::vector<Case> cases = {
      // S 4: 99 / 4 = 24 samples. dp 1, GA 1, micro 2: step t reads samples 2t, 2t + 1 at ids 4·index.
      {"dp 1, step 0", 0, 0, 1, 0, 1, 2, 4, {0, 4}},
      {"dp 1, step 3: samples 6, 7", 3, 0, 1, 0, 1, 2, 4, {24, 28}},
      // S 4, GA 3, dp 1, micro 1: step 2, accum 1 -> (2·3 + 1)·1 = sample 7 -> id 28.
      {"accumulation inside the step", 2, 1, 3, 0, 1, 1, 4, {28}},
      // S 4, dp 4, GA 1, micro 1: step 1, rank 2 -> (1·1 + 0)·4 + 2 = sample 6 -> id 24.
      {"dp ranks consecutive within a step", 1, 0, 1, 2, 4, 1, 4, {24}},
      // S 5: 99 / 5 = 19 samples. dp 2, GA 2, micro 3, step 1, accum 1, rank 0 ->
      // ((1·2 + 1)·2 + 0)·3 = 18: samples 18, 19 -> 0, 20 -> 1 (wrapped) -> ids 90, 0, 5.
      {"rank 0 wraps in the middle of its micro-batch", 1, 1, 2, 0, 2, 3, 5, {90, 0, 5}},
      // Same step, rank 1 -> ((1·2 + 1)·2 + 1)·3 = 21: samples 21, 22, 23 -> 2, 3, 4 -> ids 10, 15, 20.
      {"rank 1 entirely past the end, wrapped", 1, 1, 2, 1, 2, 3, 5, {10, 15, 20}},
      // S 5, dp 2, GA 2, micro 3, step 0: accum 0 rank 1 -> (0·2 + 1)·3 = 3 -> ids 15, 20, 25.
      {"rank 1 of the first accumulation step", 0, 0, 2, 1, 2, 3, 5, {15, 20, 25}},
      // S 5, same mesh, step 0, accum 1, rank 0 -> ((0·2 + 1)·2 + 0)·3 = 6 -> ids 30, 35, 40.
      {"accumulation step 1 follows both ranks' step 0", 0, 1, 2, 0, 2, 3, 5, {30, 35, 40}},
      // S 16: 99 / 16 = 6 samples. dp 3, GA 2, micro 2, step 4, accum 0, rank 2 ->
      // ((4·2 + 0)·3 + 2)·2 = 52: samples 52 % 6 = 4, 53 % 6 = 5 -> ids 64, 80 (80..96 is the last).
      {"several wraps, last whole sample", 4, 0, 2, 2, 3, 2, 16, {64, 80}},
  };
  return cases;
}

TEST(TokenData, BatchReadsTheDocumentedSamples) {
  const std::string path = positions_file(100);
  autotp::TokenData data(path);
  EXPECT_EQ(data.tokens(), 100);
  EXPECT_EQ(data.vocab(), 65536);
  for (const Case& c : hundred_token_cases()) expect_batch(data, c, 0);
  std::filesystem::remove(path);
}

// Ids above 65535: the file is written 4 bytes per token and read back the same, same samples.
TEST(TokenData, FourByteTokensReadTheSameSamples) {
  const int64_t base = 70000;
  const std::string path = positions_file(100, base, 200000);
  autotp::TokenData data(path);
  EXPECT_EQ(data.vocab(), 200000);
  for (const Case& c : hundred_token_cases()) expect_batch(data, c, base);
  std::filesystem::remove(path);
}

// The last whole sample ends on the file's last token; the next one wraps to sample 0. 21 tokens of
// S 4: (21 - 1) / 4 = 5 samples, sample 4 = tokens 16..20. 20 tokens: 4 samples (16..20 needs a 21st).
TEST(TokenData, WrapsAfterTheLastWholeSample) {
  const std::string exact = positions_file(21), short_by_one = positions_file(20);
  expect_batch(autotp::TokenData(exact), {"21 tokens, micro 6", 0, 0, 1, 0, 1, 6, 4, {0, 4, 8, 12, 16, 0}}, 0);
  expect_batch(autotp::TokenData(short_by_one), {"20 tokens, micro 6", 0, 0, 1, 0, 1, 6, 4, {0, 4, 8, 12, 0, 4}}, 0);
  std::filesystem::remove(exact);
  std::filesystem::remove(short_by_one);
}

// One optimizer step over all dp ranks and accumulation steps reads GA·dp·micro consecutive
// samples exactly once: step t covers [t·B, (t + 1)·B), B = 2·3·2 = 12 (S 2, 99 / 2 = 49 samples).
TEST(TokenData, OneStepReadsEachOfItsSamplesOnce) {
  const std::string path = positions_file(100);
  autotp::TokenData data(path);
  const int64_t ga = 2, dp = 3, micro = 2, seq = 2, step = 3;
  std::vector<int64_t> firsts;
  for (int64_t k = 0; k < ga; ++k)
    for (int64_t j = 0; j < dp; ++j) {
      autotp::Batch b = data.batch(step, k, ga, j, dp, micro, seq);
      for (int64_t i = 0; i < micro; ++i) firsts.push_back(b.input[i][0].item<int64_t>());
    }
  std::vector<int64_t> want;
  for (int64_t s = 36; s < 48; ++s) want.push_back(s * seq);  // samples 36..47, in (k, j, i) order
  EXPECT_EQ(firsts, want);
  std::filesystem::remove(path);
}

TEST(TokenData, TooFewTokensForOneSampleIsOneLine) {
  const std::string path = positions_file(4);
  autotp::TokenData data(path);
  try {
    data.batch(0, 0, 1, 0, 1, 1, 4);
    FAIL() << "expected an error";
  } catch (const autotp::Error& e) {
    EXPECT_EQ(std::string(e.what()), path + ": 4 tokens do not make one sample of 5 tokens; use a shorter --seq or more data");
  }
  std::filesystem::remove(path);
}

// Patches `bytes` at `at` into a written file: how each broken file below is made from a good one.
void patch(const std::string& path, std::streamoff at, const std::string& bytes) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(at);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string open_error(const std::string& path) {
  try {
    autotp::TokenData data(path);
  } catch (const autotp::Error& e) {
    return e.what();
  }
  return "no error";
}

// A version-2 file of 10 tokens (ids 0..9, vocab 100) with a mask and examples [0, 4), [4, 6),
// [6, 10): 48 header + 20 ids + 10 mask + 4·8 offsets = 110 bytes, the offsets from byte 78.
std::string examples_file(const std::string& name) {
  autotp::TokenFileV2 f;
  for (int i = 0; i < 10; ++i) f.tokens.push_back(i);
  f.vocab = 100;
  f.mask.assign(10, 1);
  f.example_offsets = {0, 4, 6, 10};
  const std::string path = testing::TempDir() + "autotp_bad_" + name + "_" + std::to_string(getpid()) + ".tokens";
  autotp::write_token_file(path, f);
  return path;
}

// Each broken file is refused at open with one line that names the file and what is wrong.
TEST(TokenData, BrokenFilesAreOneLineErrorsNamingTheFile) {
  const std::string magic = examples_file("magic");
  patch(magic, 0, "NOTTOKS2");
  EXPECT_EQ(open_error(magic), magic + ": not an autotp token file (magic ATPTOKS1 or ATPTOKS2 expected); write one with "
                                       "scripts/tokenize_data.py");

  const std::string cut = examples_file("cut");
  std::filesystem::resize_file(cut, 107);
  EXPECT_EQ(open_error(cut), cut + ": header promises 10 tokens, their mask and 4 example offsets (110 bytes) but the file holds 107 bytes");
  const std::string cut1 = positions_file(10, 0, 100);
  std::filesystem::resize_file(cut1, 47);  // 32 + 20 bytes written
  EXPECT_EQ(open_error(cut1), cut1 + ": header promises 10 tokens (52 bytes) but the file holds 47 bytes (7 tokens)");

  const std::string id = positions_file(10, 0, 100);
  patch(id, 32 + 2 * 7, std::string("\x96\x00", 2));  // token 7 := 150
  EXPECT_EQ(open_error(id), id + ": token 7 is id 150, outside the vocabulary of 100 the header declares");

  const std::string order = examples_file("order");
  patch(order, 78 + 8 * 2, std::string("\x03\0\0\0\0\0\0\0", 8));  // example 2 starts at 3, before 4
  EXPECT_EQ(open_error(order), order + ": example offsets out of order: example 2 starts at token 3, before example 1 at 4");

  for (const std::string& p : {magic, cut, cut1, id, order}) {
    EXPECT_EQ(open_error(p).find('\n'), std::string::npos);
    std::filesystem::remove(p);
  }
  EXPECT_EQ(open_error(examples_file("good")), "no error");
}

}  // namespace
