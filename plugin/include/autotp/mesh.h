// autotp device mesh — the c10d process groups the tensor-parallel ops and the ZeRO optimizer use.
//
// A mesh of W ranks with tensor-parallel size tp has W/tp TP groups of consecutive ranks
// ({0,1}, {2,3} for W=4, tp=2: they share a node and its fast links) and tp DP groups of strided
// ranks ({0,2}, {1,3}). Groups are real c10d backends: ProcessGroupGloo for CPU tensors,
// ProcessGroupNCCL for CUDA tensors in CUDA builds of LibTorch.
//
// Who sees which mesh: a process has one mesh (set_process_mesh, or init_mesh_from_env under
// torchrun). Tests and `autotp verify` run several ranks as threads of one process; each thread
// then installs its own mesh with MeshScope, which takes precedence over the process mesh.
// Every collective is counted per group: calls and payload bytes (numel × element size of what a
// rank submits), by collective kind and by the autotp op that issued it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

namespace autotp {

struct CollectiveCount {
  int64_t calls = 0;
  int64_t bytes = 0;  // payload submitted by this rank: numel × element size
  bool operator==(const CollectiveCount& o) const { return calls == o.calls && bytes == o.bytes; }
};

// One communicator: this rank's view of a c10d process group, with counters.
class Group {
 public:
  // `device`: the tensors the backend takes (CUDA: NCCL, on GPU `device_index`, -1 the current one).
  Group(std::string name, std::vector<int> ranks, int rank, c10::intrusive_ptr<c10d::Backend> backend,
        c10::DeviceType device = c10::DeviceType::CPU, int device_index = -1);

  const std::string& name() const { return name_; }
  int rank() const { return rank_; }  // rank inside the group
  int size() const { return static_cast<int>(ranks_.size()); }
  const std::vector<int>& ranks() const { return ranks_; }  // global ranks of the members
  int64_t id() const { return id_; }                         // process-unique handle (group_by_id)

  // In place; a group of one issues nothing and counts nothing. `site` names the issuing op, e.g.
  // "reduce_from_tp.forward".
  void all_reduce(at::Tensor& t, c10d::ReduceOp op, const std::string& site);
  // Concatenates every member's `t` (same shape) along `dim`.
  at::Tensor all_gather(const at::Tensor& t, int64_t dim, const std::string& site);
  // Flat buffers: out (size × in.numel()) gathers in from every member, in member order.
  void all_gather_flat(at::Tensor& out, const at::Tensor& in, const std::string& site);
  // Flat buffers: in (size × out.numel()) is summed over members; member r keeps chunk r in out.
  void reduce_scatter_flat(at::Tensor& out, const at::Tensor& in, const std::string& site);
  void broadcast(at::Tensor& t, int root, const std::string& site);
  // Asynchronous, for overlap with backward: the sum over members lands in `t` of member `root`
  // (reduce; the others' `t` is unspecified afterwards) or of every member (all_reduce). `t` must
  // stay alive and untouched until wait() on the returned work; nullptr for a group of one.
  // Counted at launch. Tensors on the group's device only (no staging).
  c10::intrusive_ptr<c10d::Work> reduce_async(at::Tensor& t, int root, const std::string& site);
  c10::intrusive_ptr<c10d::Work> all_reduce_async(at::Tensor& t, const std::string& site);
  void barrier();

  std::map<std::string, CollectiveCount> by_kind() const;  // all_reduce | all_gather | ...
  std::map<std::string, CollectiveCount> by_site() const;  // copy_to_tp.backward | ...
  CollectiveCount total() const;
  void reset_counts();

 private:
  void count(const std::string& kind, const std::string& site, int64_t bytes);
  // NCCL takes tensors on its GPU only: a CPU tensor (the scalars ranks agree on: a batch checksum,
  // the loss, a flag) goes through a copy there and back. Everything else is `t` itself.
  at::Tensor staged(const at::Tensor& t) const;

  std::string name_;
  std::vector<int> ranks_;
  int rank_;
  int64_t id_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  c10::DeviceType device_;
  int device_index_;
  mutable std::mutex mu_;
  std::map<std::string, CollectiveCount> by_kind_, by_site_;
};

struct MeshOptions {
  int tp = 1;
  c10::DeviceType device = c10::DeviceType::CPU;  // CUDA selects NCCL (CUDA builds only)
  // CUDA: this rank's GPU, to which the NCCL groups are bound and connected at creation (eagerly);
  // -1: LOCAL_RANK under torchrun (init_mesh_from_env), else the current device.
  int device_index = -1;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

class Mesh {
 public:
  // All `world` ranks call this with the same store and options; returns when every group this
  // rank belongs to is connected. Throws autotp::Error when tp does not divide world.
  static std::shared_ptr<Mesh> create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                      const MeshOptions& options);

  int rank() const { return rank_; }
  int world() const { return world_; }
  int tp() const { return tp_->size(); }
  int dp() const { return dp_->size(); }
  int tp_rank() const { return tp_->rank(); }
  int dp_rank() const { return dp_->rank(); }
  c10::DeviceType device() const { return device_; }
  // Where this rank's model, batches and optimizer state live: cpu, or cuda:<its GPU>.
  c10::Device rank_device() const { return {device_, static_cast<c10::DeviceIndex>(device_index_)}; }
  Group& tp_group() { return *tp_; }
  Group& dp_group() { return *dp_; }
  Group& world_group() { return *world_group_; }
  // "tp", "dp" or "world"; nullptr for another name.
  std::shared_ptr<Group> find(const std::string& name) const;
  // This rank's `replicas` consecutive ranks of its TP group (kv heads held by several ranks), made
  // on first use: every member reaches it in the same forward. Named "tp/<replicas>".
  std::shared_ptr<Group> replica_group(int replicas);
  std::vector<std::shared_ptr<Group>> replica_groups() const;  // those made so far
  // One line per group and site: "tp all_reduce copy_to_tp.backward calls=4 bytes=8192".
  std::string stats_table() const;
  std::string stats_json() const;
  void reset_counts();
  // The store the groups rendezvoused on (for liveness keys: runtime/liveness.h).
  const c10::intrusive_ptr<c10d::Store>& store() const { return store_; }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  int rank_ = 0, world_ = 1;
  c10::DeviceType device_ = c10::DeviceType::CPU;
  int device_index_ = -1;
  std::shared_ptr<Group> world_group_, tp_, dp_;
  MeshOptions options_;
  mutable std::mutex replicas_mu_;
  std::map<int, std::shared_ptr<Group>> replica_groups_;
  std::vector<std::shared_ptr<Group>> groups() const;  // world, tp, dp, then the replica groups
};

// Whether this libautotp was built against a CUDA LibTorch (with the NCCL mesh: make cuda-build).
bool cuda_build();

// The device a rank runs on. flag: "cpu", "cuda", or "auto" (CUDA when this LibTorch has it and a GPU
// is visible, else CPU). CUDA is cuda:<local_rank>: one GPU per rank of a node, as torchrun starts
// them. Throws autotp::Error (one line) for another flag, "cuda" without CUDA or GPUs, or a local
// rank beyond the visible GPUs. Pure: the machine's facts are arguments (tests give any).
c10::Device choose_rank_device(const std::string& flag, bool cuda_available, int64_t cuda_devices, int64_t local_rank);
// Mesh options for this process: choose_rank_device with this LibTorch's CUDA, the visible GPUs and
// LOCAL_RANK (0 when unset); a CUDA device becomes this thread's current device.
MeshOptions mesh_options_for(const std::string& device_flag, int tp);

// torchrun: RANK, WORLD_SIZE (and MASTER_ADDR, MASTER_PORT) from the environment. Under torchrun's
// agent the store already exists and this rank connects as a client; otherwise rank 0 hosts a
// TCPStore. The mesh becomes the process mesh. Throws autotp::Error naming a missing variable.
std::shared_ptr<Mesh> init_mesh_from_env(const MeshOptions& options);

void set_process_mesh(std::shared_ptr<Mesh> mesh);
std::shared_ptr<Mesh> current_mesh();  // thread's MeshScope, else the process mesh, else nullptr

// Installs a mesh for the current thread (ranks as threads).
class MeshScope {
 public:
  explicit MeshScope(std::shared_ptr<Mesh> mesh);
  ~MeshScope();
  MeshScope(const MeshScope&) = delete;
  MeshScope& operator=(const MeshScope&) = delete;

 private:
  std::shared_ptr<Mesh> previous_;
};

// The group behind a handle saved in an autograd node; throws if it has been destroyed.
std::shared_ptr<Group> group_by_id(int64_t id);

}  // namespace autotp
