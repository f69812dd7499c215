// Bad input gets one clear line naming the file, op or value — never a crash or a raw c10::Error.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "autotp/autotp.h"
#include "fixtures.h"

using autotp_test::fixture;

namespace {

std::string error_of(const std::string& path, int tp = 2) {
  try {
    autotp::inspect(path, tp);
  } catch (const autotp::Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
    return msg;
  }
  ADD_FAILURE() << "no error for " << path;
  return "";
}

std::string temp_file(const std::string& name, const std::string& content) {
  auto path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

TEST(Errors, MissingArchiveNamesTheFile) {
  EXPECT_EQ(error_of("/nonexistent/model.pt"),
            "/nonexistent/model.pt: no such file; pass a TorchScript archive (.pt) saved with torch.jit.save");
}

TEST(Errors, DirectoryIsNotAnArchive) {
  auto dir = std::filesystem::temp_directory_path().string();
  EXPECT_EQ(error_of(dir), dir + ": is a directory; pass a TorchScript archive (.pt) saved with torch.jit.save");
}

TEST(Errors, CorruptArchiveNamesTheFile) {
  auto path = temp_file("autotp_corrupt.pt", "this is not a zip archive");
  std::string msg = error_of(path);
  EXPECT_EQ(msg.rfind(path + ": not a readable TorchScript archive (", 0), 0u) << msg;
  EXPECT_NE(msg.find("save the model with torch.jit.save"), std::string::npos) << msg;
}

TEST(Errors, TruncatedArchiveNamesTheFile) {
  std::ifstream in(fixture("llama_gqa"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto path = temp_file("autotp_truncated.pt", bytes.substr(0, bytes.size() / 2));
  std::string msg = error_of(path);
  EXPECT_EQ(msg.rfind(path + ": not a readable TorchScript archive (", 0), 0u) << msg;
}

TEST(Errors, NoTransformerBlockSaysWhatWasSearched) {
  EXPECT_EQ(error_of(fixture("tiny_no_block")),
            fixture("tiny_no_block") +
                ": no transformer block found: searched 1 linear layer(s) for a column-parallel linear whose split "
                "output reaches the contraction dim of another linear (attention q/k/v -> o_proj, MLP gate/up -> "
                "down) and found none");
}

// The line of `torch.cumsum(` in the fixture source, so the test follows edits of ref_llama.py.
int cumsum_line() {
  std::ifstream in(std::string(AUTOTP_SOURCE_DIR) + "/tests/fixtures/ref_llama.py");
  std::string line;
  for (int n = 1; std::getline(in, line); ++n)
    if (line.find("torch.cumsum(") != std::string::npos) return n;
  return -1;
}

TEST(Errors, UnknownOpOnASplitPathNamesOpSourceAndShape) {
  std::string msg = error_of(fixture("tiny_unknown_op"));
  const std::string where = "ref_llama.py:" + std::to_string(cumsum_line());
  EXPECT_EQ(msg.rfind(fixture("tiny_unknown_op") + ": aten::cumsum at " + where + ": has no sharding rule", 0), 0u) << msg;
  EXPECT_NE(msg.find("(shape [2, 8, 32] split on dim 2)"), std::string::npos) << msg;
}

TEST(Errors, NonPositiveTp) {
  EXPECT_EQ(error_of(fixture("llama_gqa"), -2), fixture("llama_gqa") + ": tp must be a positive integer, got -2");
}

// A tp that divides nothing is met by uneven cuts or by keeping a family whole (passes/families.cpp);
// only a tp larger than every family's units is refused, naming each family and the valid sizes.
TEST(Errors, TpLargerThanEveryFamilyNamesThemAndTheValidSizes) {
  EXPECT_EQ(error_of(fixture("llama_gqa"), 200),
            fixture("llama_gqa") +
                ": tp=200 is more than every split family can be cut into (attention heads: 4 units, each a kv group: 2 q heads, "
                "1 kv head; intermediate size: 128 units, each a feature), so nothing would be split; valid tp for this model: "
                "1, 2, 3, 4, 5, 6, 7, 8");
}

}  // namespace
