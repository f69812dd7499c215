// The allocator observer behind MemoryMeter (see memory_meter.h).
#include "runtime/memory_meter.h"

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <c10/core/Allocator.h>

namespace autotp {

struct MemoryMeter::Observer : c10::MemoryReportingInfoBase {
  explicit Observer(c10::DeviceType type) : type(type) {}

  // Called by the allocator on the allocating (or freeing) thread: this one, or one that runs work
  // for it (a CUDA backward runs on the device's autograd thread; gloo's worker), hence the lock.
  void reportMemoryUsage(void* ptr, int64_t bytes, size_t, size_t, c10::Device device) override {
    if (device.type() != type || bytes == 0) return;
    std::lock_guard<std::mutex> lock(mutex);
    if (bytes > 0) {
      blocks[ptr] = {bytes, events.size()};
      events.push_back(bytes);
      live += bytes;
      peak = std::max(peak, live);
      return;
    }
    auto it = blocks.find(ptr);
    if (it == blocks.end()) return;  // allocated before the meter started: not ours
    events.push_back(-it->second.bytes);
    live -= it->second.bytes;
    blocks.erase(it);
  }
  bool memoryProfilingEnabled() const override { return true; }

  struct Block {
    int64_t bytes;
    size_t event;  // where its allocation is in `events`
  };
  const c10::DeviceType type;
  mutable std::mutex mutex;
  std::unordered_map<void*, Block> blocks;  // live blocks allocated since the start
  std::vector<int64_t> events;  // + bytes allocated, - bytes freed, in order
  int64_t live = 0, peak = 0;
};

MemoryMeter::MemoryMeter(c10::DeviceType device)
    : observer_(std::make_shared<Observer>(device)), guard_(c10::DebugInfoKind::PROFILER_STATE, observer_) {}

MemoryMeter::~MemoryMeter() = default;

int64_t MemoryMeter::live() const {
  std::lock_guard<std::mutex> lock(observer_->mutex);
  return observer_->live;
}

int64_t MemoryMeter::peak() const {
  std::lock_guard<std::mutex> lock(observer_->mutex);
  return observer_->peak;
}

int64_t MemoryMeter::peak_without(const std::vector<const void*>& kept) const {
  std::lock_guard<std::mutex> lock(observer_->mutex);
  std::unordered_set<size_t> skip;  // the allocation events of the kept blocks (live now, so never freed)
  for (const void* p : kept) {
    auto it = observer_->blocks.find(const_cast<void*>(p));
    if (it != observer_->blocks.end()) skip.insert(it->second.event);
  }
  int64_t live = 0, peak = 0;
  for (size_t i = 0; i < observer_->events.size(); ++i) {
    if (skip.count(i)) continue;
    live += observer_->events[i];
    peak = std::max(peak, live);
  }
  return peak;
}

int64_t MemoryMeter::peak_without_grads(const std::vector<at::Tensor>& params) const {
  std::vector<const void*> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad().storage().data());
  return peak_without(grads);
}

}  // namespace autotp
