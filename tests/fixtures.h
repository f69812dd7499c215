// Test helpers: where the generated fixtures are and what each was built from (manifest.json,
// written by tests/fixtures/make_fixtures.py from the model configs, not by autotp).
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <ostream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "autotp/plan.h"

namespace autotp_test {

// A plan's parameters by name.
inline std::map<std::string, autotp::ParamPlan> by_name(const autotp::TpPlan& plan) {
  std::map<std::string, autotp::ParamPlan> out;
  for (const auto& p : plan.parameters) out[p.name] = p;
  return out;
}

inline std::string fixture(const std::string& name) { return std::string(AUTOTP_FIXTURES_DIR) + "/" + name + ".pt"; }

struct FixtureConfig {
  std::string name, architecture, export_kind;
  int64_t vocab, hidden, intermediate, layers, heads, kv_heads;
  bool tied, qkv_bias;
  int64_t head_dim() const { return hidden / heads; }
};

inline FixtureConfig config_of(const std::string& name) {
  std::ifstream in(std::string(AUTOTP_FIXTURES_DIR) + "/manifest.json");
  auto j = nlohmann::json::parse(in).at(name);
  return {name, j.at("architecture"), j.at("export"), j.at("vocab"), j.at("hidden"), j.at("intermediate"),
          j.at("layers"), j.at("heads"), j.at("kv_heads"), j.at("tied"), j.at("qkv_bias")};
}

// A parameterised test case: one fixture at one tp, named "<fixture>_tp<N>" in test names.
struct FixtureCase {
  std::string fixture;
  int tp;
};
inline void PrintTo(const FixtureCase& c, std::ostream* os) { *os << c.fixture << " tp=" << c.tp; }
inline std::string case_name(const testing::TestParamInfo<FixtureCase>& info) {
  return info.param.fixture + "_tp" + std::to_string(info.param.tp);
}

struct CliRun {
  int status;
  std::string out, err;
};

// Runs a shell command; stdout and stderr apart. The stderr file is private to this process and
// call (ctest runs test processes in parallel).
inline CliRun run_command(const std::string& command) {
  static std::atomic<int> counter{0};
  const std::string err_path = "/tmp/autotp_test_err." + std::to_string(getpid()) + "." + std::to_string(counter++);
  CliRun r{};
  FILE* pipe = popen((command + " 2>" + err_path).c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.out.append(buf.data(), n);
  r.status = WEXITSTATUS(pclose(pipe));
  if (FILE* ef = fopen(err_path.c_str(), "r")) {
    while ((n = fread(buf.data(), 1, buf.size(), ef)) > 0) r.err.append(buf.data(), n);
    fclose(ef);
  }
  std::remove(err_path.c_str());
  return r;
}

}  // namespace autotp_test
