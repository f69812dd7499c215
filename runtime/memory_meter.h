// MemoryMeter — the bytes one thread's tensors hold, and their high-water mark: an exact CPU
// counterpart of torch.cuda.max_memory_allocated, for calibrating `autotp plan`'s activation
// estimate (tests/test_plan_calibration.cpp) and for `autotp train --metrics`' peak_activation_bytes.
//
// Why not the process RSS: on CPU it is dominated by the model load, the analysis and the
// self-checks, and the C allocator returns memory to the OS when it pleases. Instead the meter
// subscribes to c10's allocator reports: a c10::MemoryReportingInfoBase installed for this thread
// with c10::DebugInfoGuard(PROFILER_STATE) makes memoryProfilingEnabled() true, and then every
// allocation and free of c10's CPU allocator (and of the CUDA caching allocator, which reports the
// same way) calls reportMemoryUsage(ptr, ±bytes, ...). Autograd carries the thread's debug info into
// its backward (GraphTask's ThreadLocalState), so the backward's tensors count too, wherever they
// run. Counted: the tensors allocated since the meter started and not yet freed (blocks allocated
// before it started are not counted, nor their frees). Not counted: allocations outside c10's
// allocators (oneDNN scratch, gloo's buffers) and intra-op worker threads' own temporaries. Not
// heard: frees on other threads — so runtime/mesh.cpp's collectives, while a meter watches, wait for
// gloo's worker to drop its references to their tensors before returning.
//
// While a meter is installed it replaces the thread's PROFILER_STATE (a running torch.profiler loses
// that thread's memory events for the time).
//
// GPUs (the hook for them): constructed with DeviceType::CUDA the meter hears the caching
// allocator's (rounded) blocks the same way, but NCCL's watchdog thread frees the tensors of finished
// collectives, which a thread-local observer does not hear. With one rank per process and device,
// max_memory_allocated is the measure there: c10::cuda::CUDACachingAllocator::resetPeakStats(dev)
// before the forward, getDeviceStats(dev).allocated_bytes[0].peak after the backward, minus the bytes
// allocated before the forward and the gradients the backward made.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/ThreadLocalDebugInfo.h>

namespace autotp {

class MemoryMeter {
 public:
  // Starts counting this thread's allocations on devices of `device`'s type (and those of work that
  // carries this thread's state: autograd's backward, gloo's collectives while they run).
  explicit MemoryMeter(c10::DeviceType device = c10::DeviceType::CPU);
  ~MemoryMeter();
  MemoryMeter(const MemoryMeter&) = delete;
  MemoryMeter& operator=(const MemoryMeter&) = delete;

  int64_t live() const;  // bytes allocated since the start and not freed yet
  int64_t peak() const;  // the most live() has been
  // The peak live() would have had without the blocks at `kept` (data pointers of storages that are
  // still alive and belong to another account, e.g. the gradients the backward allocated: the
  // planner counts those as model states, not activations). Replays the recorded events.
  int64_t peak_without(const std::vector<const void*>& kept) const;
  // peak_without(the storages of these parameters' gradients): what one forward and backward held
  // besides the model states — the planner's activation memory.
  int64_t peak_without_grads(const std::vector<at::Tensor>& params) const;

 private:
  struct Observer;
  std::shared_ptr<Observer> observer_;
  c10::DebugInfoGuard guard_;
};

}  // namespace autotp
