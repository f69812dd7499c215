// Ranks as threads for the tests: each thread gets its own gloo mesh over one HashStore.
#pragma once

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/autotp.h"
#include "autotp/mesh.h"

namespace autotp_test {

// Runs fn(rank, mesh) on `world` threads (tp ranks per TP group), each with its mesh installed;
// returns each rank's error line, "" where fn returned.
template <typename Fn>
std::vector<std::string> run_ranks(int world, int tp, Fn fn) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::string> errors(world);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      try {
        autotp::MeshOptions o;
        o.tp = tp;
        o.timeout = std::chrono::seconds(60);
        auto mesh = autotp::Mesh::create(store, r, world, o);
        autotp::MeshScope scope(mesh);
        fn(r, *mesh);
      } catch (const std::exception& e) {
        errors[r] = autotp::user_message(e);
      }
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace autotp_test
