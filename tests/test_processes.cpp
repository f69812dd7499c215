// Real processes: torchrun launches the ranks, they rendezvous on torchrun's TCPStore and talk
// over gloo. `autotp verify` as one rank per process, and the Python example that loads
// libautotp.so with torch.ops.load_library and runs rewritten archives.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>

#include "fixtures.h"

using autotp_test::fixture;
using autotp_test::run_command;

namespace {

const std::string kTorchrun = std::string(AUTOTP_VENV_BIN) + "/torchrun --standalone --nproc_per_node 2 ";

TEST(Processes, VerifyUnderTorchrunTwoRanks) {
  auto r = run_command(kTorchrun + "--no-python " + AUTOTP_CLI + " verify " + fixture("llama_gqa") + " --tp 2");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("OK"), std::string::npos) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(grads\s+max rel error (\S+)\s+ok\s+\((\d+) parameters)"))) << r.out;
  EXPECT_LE(std::stod(m[1]), 1e-5);
  EXPECT_EQ(m[2], "21");
  // The same collectives as with threads: 2 layers, batch 2 x 8 tokens x hidden 64 x 4 bytes.
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(copy_to_tp\.backward\s+calls 5\s+bytes 20480)"))) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(reduce_from_tp\.forward\s+calls 4\s+bytes 16384)"))) << r.out;
}

TEST(Processes, PythonExampleRunsRewrittenArchives) {
  const std::string dir = testing::TempDir() + "autotp_py_" + std::to_string(getpid());
  auto w = run_command(std::string(AUTOTP_CLI) + " rewrite " + fixture("llama_tied") + " --tp 2 --out " + dir);
  ASSERT_EQ(w.status, 0) << w.err;
  EXPECT_TRUE(std::filesystem::exists(dir + "/rank1.pt"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/plan.json"));
  auto r = run_command(kTorchrun + std::string(AUTOTP_SOURCE_DIR) + "/plugin/python/tp_example.py --lib " + AUTOTP_LIB +
                       " --ranks " + dir + " --original " + fixture("llama_tied"));
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  std::string out = r.out;
  int ranks = 0;
  const std::regex line(R"(logits slice \(2, 8, 128\) of \(2, 8, 256\), max rel error (\S+), tp all-reduces (\d+))");
  for (std::sregex_iterator it(out.begin(), out.end(), line), end;
       it != end; ++it) {
    EXPECT_LE(std::stod((*it)[1]), 1e-5);
    EXPECT_EQ((*it)[2], "5");  // forward only: embedding + 2 per layer x 2 layers
    ++ranks;
  }
  EXPECT_EQ(ranks, 2) << out;
  std::filesystem::remove_all(dir);
}

}  // namespace
