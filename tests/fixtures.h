// Test helpers: where the generated fixtures are and what each was built from (manifest.json,
// written by tests/fixtures/make_fixtures.py from the model configs, not by autotp).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

namespace autotp_test {

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

}  // namespace autotp_test
