// Heartbeats on the store (see liveness.h).
#include "runtime/liveness.h"

#include <vector>

namespace autotp {
namespace {
std::string key_of(int rank) { return "autotp/alive/" + std::to_string(rank); }
}  // namespace

Heartbeat::Heartbeat(const Mesh& mesh, std::chrono::milliseconds interval)
    : store_(mesh.store()), rank_(mesh.rank()), world_(mesh.world()), interval_(interval) {
  if (!store_) return;
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      try {
        store_->add(key_of(rank_), 1);
      } catch (const std::exception&) {
        return;  // the store is gone: nothing left to tell
      }
      for (auto waited = std::chrono::milliseconds(0); waited < interval_ && !stop_.load(); waited += std::chrono::milliseconds(50))
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

Heartbeat::~Heartbeat() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::string Heartbeat::lost_ranks() const {
  if (!store_) return "";
  try {
    auto read = [&] {
      std::vector<int64_t> beats;
      for (int r = 0; r < world_; ++r) beats.push_back(store_->add(key_of(r), 0));
      return beats;
    };
    const std::vector<int64_t> before = read();
    std::this_thread::sleep_for(3 * interval_);
    const std::vector<int64_t> after = read();
    std::string lost;
    int n = 0;
    for (int r = 0; r < world_; ++r)
      if (r != rank_ && after[r] == before[r]) {
        lost += (n++ ? ", " : "") + std::to_string(r);
      }
    return n == 0 ? "" : (n == 1 ? "rank " : "ranks ") + lost;
  } catch (const std::exception&) {
    return "rank 0 (it hosts the store, which is unreachable)";
  }
}

}  // namespace autotp
