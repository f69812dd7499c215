// Ranks as threads for the tests: each thread gets its own gloo mesh over one HashStore.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include "autotp/autotp.h"
#include "autotp/mesh.h"

namespace autotp_test {

// Runs fn(rank, mesh) on `world` threads (tp ranks per TP group), each with its mesh installed;
// returns each rank's error line, "" where fn returned. No rank tears its mesh down before every
// rank is done: a rank that returned at once would close its gloo pairs while a slower one is
// still connecting its own (seen under load: "connectFullMesh failed ... Connection closed by
// peer", or a hang until the test's timeout).
template <typename Fn>
std::vector<std::string> run_ranks(int world, int tp, Fn fn) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::string> errors(world);
  std::mutex mutex;
  std::condition_variable all_done;
  int done = 0;
  auto wait_for_everyone = [&] {
    std::unique_lock<std::mutex> lock(mutex);
    if (++done == world) all_done.notify_all();
    all_done.wait(lock, [&] { return done == world; });
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      std::shared_ptr<autotp::Mesh> mesh;  // outlives the wait below
      try {
        autotp::MeshOptions o;
        o.tp = tp;
        o.timeout = std::chrono::seconds(60);
        mesh = autotp::Mesh::create(store, r, world, o);
        autotp::MeshScope scope(mesh);
        fn(r, *mesh);
      } catch (const std::exception& e) {
        errors[r] = autotp::user_message(e);
      }
      wait_for_everyone();
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace autotp_test
