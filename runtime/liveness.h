// Which rank was lost, when a collective fails.
//
// A collective that fails (a peer's socket closed, or nothing arrived within --timeout) says which
// connection broke, not which rank. Every rank therefore beats: a thread bumps the key
// autotp/alive/<rank> on the mesh's store every `interval`. When a step fails, the surviving ranks
// read every counter, wait three intervals, read again: ranks whose counter stood still are lost.
// The store is torchrun's agent store (it outlives the workers) or rank 0's TCPStore; when that is
// gone too, rank 0 is named as unreachable.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "autotp/mesh.h"

namespace autotp {

class Heartbeat {
 public:
  Heartbeat(const Mesh& mesh, std::chrono::milliseconds interval = std::chrono::milliseconds(1000));
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  // "rank 1" / "ranks 1, 3" / "rank 0 (it hosts the store, which is unreachable)", or empty when
  // every rank is still beating. Blocks for about three intervals.
  std::string lost_ranks() const;

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  int rank_, world_;
  std::chrono::milliseconds interval_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace autotp
