// The mesh: c10d process groups over one store, with counted collectives (see autotp/mesh.h).
#include "autotp/mesh.h"

#include <atomic>
#include <cstdlib>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/cuda.h>
#ifdef AUTOTP_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "autotp/error.h"

namespace autotp {
namespace {

std::mutex g_registry_mu;
std::map<int64_t, std::weak_ptr<Group>> g_registry;
std::atomic<int64_t> g_next_id{1};

std::mutex g_process_mu;
std::shared_ptr<Mesh> g_process_mesh;
thread_local std::shared_ptr<Mesh> t_thread_mesh;

int64_t payload_bytes(const at::Tensor& t) { return static_cast<int64_t>(t.numel()) * t.element_size(); }

// Waits for a collective. On CPU, while a MemoryMeter (runtime/memory_meter.h) watches this thread,
// also waits (briefly, bounded) for gloo's worker to drop its reference to the work, so that the
// tensors the work holds are let go here: a tensor whose last reference died on the worker would be
// freed there, where the meter, which hears only this thread, never sees it. (NCCL's watchdog keeps
// works much longer; on GPUs max_memory_allocated is per device and needs none of this.)
void finish(const c10::intrusive_ptr<c10d::Work>& work, c10::DeviceType device) {
  work->wait();
  if (device != c10::DeviceType::CPU || !c10::memoryProfilingEnabled()) return;
  for (int i = 0; i < 100000 && work.use_count() > 1; ++i) std::this_thread::yield();
}

std::shared_ptr<::gloo::transport::Device> gloo_device() {
  // Same rule as torch.distributed: GLOO_SOCKET_IFNAME picks the interface; otherwise bind to the
  // address the hostname resolves to, falling back to loopback on a single machine.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

c10::intrusive_ptr<c10d::Backend> make_backend(const c10::intrusive_ptr<c10d::Store>& store, const std::string& prefix,
                                               int rank, int size, const MeshOptions& options) {
  auto scoped = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  if (options.device == c10::DeviceType::CUDA) {
#ifdef AUTOTP_WITH_NCCL
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = options.timeout;
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(scoped, rank, size, o);
    if (options.device_index >= 0) {  // bound to this rank's GPU and connected now, not at the first collective
      const at::Device gpu(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(options.device_index));
      pg->setBoundDeviceId(gpu);
      pg->eagerConnectSingleDevice(gpu);
    }
    return pg;
#else
    throw Error("mesh on CUDA: this libautotp was built against a CPU LibTorch, so it has no NCCL backend; "
                "build autotp against a CUDA torch or use the CPU mesh");
#endif
  }
  auto o = c10d::ProcessGroupGloo::Options::create(options.timeout);
  o->devices.push_back(gloo_device());
  return c10::make_intrusive<c10d::ProcessGroupGloo>(scoped, rank, size, o);
}

std::shared_ptr<Group> make_group(const c10::intrusive_ptr<c10d::Store>& store, const std::string& name,
                                  const std::string& prefix, const std::vector<int>& ranks, int global_rank,
                                  const MeshOptions& options) {
  int me = -1;
  for (size_t i = 0; i < ranks.size(); ++i)
    if (ranks[i] == global_rank) me = static_cast<int>(i);
  // A group of one needs no backend: its collectives are identities.
  c10::intrusive_ptr<c10d::Backend> backend;
  if (ranks.size() > 1) backend = make_backend(store, prefix, me, static_cast<int>(ranks.size()), options);
  auto g = std::make_shared<Group>(name, ranks, me, backend, options.device, options.device_index);
  std::lock_guard<std::mutex> lock(g_registry_mu);
  g_registry[g->id()] = g;
  return g;
}

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v)
    throw Error(std::string("mesh: environment variable ") + name +
                " is not set; launch with torchrun (torchrun --nproc_per_node N ...)");
  try {
    return std::stoi(v);
  } catch (const std::exception&) {
    throw Error(std::string("mesh: environment variable ") + name + "='" + v + "' is not an integer");
  }
}

std::string env_str(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

}  // namespace

// ---- Group -----------------------------------------------------------------------------------------

Group::Group(std::string name, std::vector<int> ranks, int rank, c10::intrusive_ptr<c10d::Backend> backend,
             c10::DeviceType device, int device_index)
    : name_(std::move(name)), ranks_(std::move(ranks)), rank_(rank), id_(g_next_id++), backend_(std::move(backend)),
      device_(device), device_index_(device_index) {}

at::Tensor Group::staged(const at::Tensor& t) const {
  if (device_ == c10::DeviceType::CPU || t.device().type() == device_) return t;
  return t.to(c10::Device(device_, static_cast<c10::DeviceIndex>(device_index_)));
}

void Group::count(const std::string& kind, const std::string& site, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& k = by_kind_[kind];
  k.calls += 1;
  k.bytes += bytes;
  auto& s = by_site_[site];
  s.calls += 1;
  s.bytes += bytes;
}

void Group::all_reduce(at::Tensor& t, c10d::ReduceOp op, const std::string& site) {
  if (size() == 1) return;
  TORCH_CHECK(t.is_contiguous(), "autotp: all_reduce needs a contiguous tensor");
  at::Tensor work = staged(t);
  std::vector<at::Tensor> ts{work};
  c10d::AllreduceOptions o;
  o.reduceOp = op;
  finish(backend_->allreduce(ts, o), device_);
  if (!work.is_same(t)) t.copy_(work);
  count("all_reduce", site, payload_bytes(t));
}

at::Tensor Group::all_gather(const at::Tensor& t, int64_t dim, const std::string& site) {
  if (size() == 1) return t;
  at::Tensor in = staged(t.contiguous());
  std::vector<at::Tensor> inputs{in};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int i = 0; i < size(); ++i) outputs[0].push_back(at::empty_like(in));
  finish(backend_->allgather(outputs, inputs), device_);
  count("all_gather", site, payload_bytes(in));
  return at::cat(outputs[0], dim).to(t.device());
}

void Group::all_gather_flat(at::Tensor& out, const at::Tensor& in, const std::string& site) {
  TORCH_CHECK(out.numel() == in.numel() * size(), "autotp: all_gather_flat sizes");
  if (size() == 1) {
    out.copy_(in.view_as(out));
    return;
  }
  at::Tensor src = staged(in.contiguous()), dst = staged(out);
  finish(backend_->_allgather_base(dst, src), device_);
  if (!dst.is_same(out)) out.copy_(dst);
  count("all_gather", site, payload_bytes(src));
}

void Group::reduce_scatter_flat(at::Tensor& out, const at::Tensor& in, const std::string& site) {
  TORCH_CHECK(in.numel() == out.numel() * size(), "autotp: reduce_scatter_flat sizes");
  if (size() == 1) {
    out.copy_(in.view_as(out));
    return;
  }
  at::Tensor src = staged(in.contiguous()), dst = staged(out);
  finish(backend_->_reduce_scatter_base(dst, src), device_);
  if (!dst.is_same(out)) out.copy_(dst);
  count("reduce_scatter", site, payload_bytes(src));
}

c10::intrusive_ptr<c10d::Work> Group::reduce_async(at::Tensor& t, int root, const std::string& site) {
  if (size() == 1) return {};
  TORCH_CHECK(t.is_contiguous(), "autotp: reduce_async needs a contiguous tensor");
  std::vector<at::Tensor> ts{t};
  c10d::ReduceOptions o;
  o.rootRank = root;
  auto work = backend_->reduce(ts, o);
  count("reduce", site, payload_bytes(t));
  return work;
}

c10::intrusive_ptr<c10d::Work> Group::all_reduce_async(at::Tensor& t, const std::string& site) {
  if (size() == 1) return {};
  TORCH_CHECK(t.is_contiguous(), "autotp: all_reduce_async needs a contiguous tensor");
  std::vector<at::Tensor> ts{t};
  auto work = backend_->allreduce(ts, c10d::AllreduceOptions{});
  count("all_reduce", site, payload_bytes(t));
  return work;
}

void Group::broadcast(at::Tensor& t, int root, const std::string& site) {
  if (size() == 1) return;
  at::Tensor work = staged(t);
  std::vector<at::Tensor> ts{work};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  finish(backend_->broadcast(ts, o), device_);
  if (!work.is_same(t)) t.copy_(work);
  count("broadcast", site, payload_bytes(t));
}

void Group::barrier() {
  if (size() == 1) return;
  // A one-element all-reduce on the group's device rather than Backend::barrier (NCCL's guesses a
  // device from the rank); not counted as traffic.
  auto t = at::zeros({1}, at::TensorOptions().device(c10::Device(device_, static_cast<c10::DeviceIndex>(device_index_))));
  std::vector<at::Tensor> ts{t};
  finish(backend_->allreduce(ts), device_);
}

std::map<std::string, CollectiveCount> Group::by_kind() const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_kind_;
}

std::map<std::string, CollectiveCount> Group::by_site() const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_site_;
}

CollectiveCount Group::total() const {
  std::lock_guard<std::mutex> lock(mu_);
  CollectiveCount c;
  for (const auto& [k, v] : by_kind_) {
    c.calls += v.calls;
    c.bytes += v.bytes;
  }
  return c;
}

void Group::reset_counts() {
  std::lock_guard<std::mutex> lock(mu_);
  by_kind_.clear();
  by_site_.clear();
}

// ---- Mesh ------------------------------------------------------------------------------------------

std::shared_ptr<Mesh> Mesh::create(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                   const MeshOptions& options) {
  if (options.tp < 1 || world < 1 || world % options.tp != 0)
    throw Error("mesh: tp=" + std::to_string(options.tp) + " does not divide the world size " +
                std::to_string(world) + "; pick a tp that divides it (tp groups are consecutive ranks)");
  if (rank < 0 || rank >= world)
    throw Error("mesh: rank " + std::to_string(rank) + " is outside the world of " + std::to_string(world));
  auto m = std::shared_ptr<Mesh>(new Mesh());
  m->store_ = store;
  m->rank_ = rank;
  m->world_ = world;
  m->device_ = options.device;
  m->device_index_ = options.device == c10::DeviceType::CPU ? -1 : options.device_index;
  const int tp = options.tp;
  const int dp = world / tp;
  std::vector<int> all(world), tp_ranks, dp_ranks;
  for (int r = 0; r < world; ++r) all[r] = r;
  const int tp_index = rank / tp, dp_index = rank % tp;
  for (int i = 0; i < tp; ++i) tp_ranks.push_back(tp_index * tp + i);
  for (int j = 0; j < dp; ++j) dp_ranks.push_back(dp_index + j * tp);
  // Every rank builds its groups in the same order (world, tp, dp); each rendezvous only waits for
  // the members of that group, under a prefix of its own.
  m->world_group_ = make_group(store, "world", "autotp/world", all, rank, options);
  m->tp_ = make_group(store, "tp", "autotp/tp/" + std::to_string(tp_index), tp_ranks, rank, options);
  m->dp_ = make_group(store, "dp", "autotp/dp/" + std::to_string(dp_index), dp_ranks, rank, options);
  m->options_ = options;
  return m;
}

std::shared_ptr<Group> Mesh::replica_group(int replicas) {
  std::lock_guard<std::mutex> lock(replicas_mu_);
  auto& g = replica_groups_[replicas];
  if (g) return g;
  const int first_tp_rank = tp_->ranks().front();
  const int part = tp_->rank() / replicas;
  std::vector<int> ranks;
  for (int i = 0; i < replicas; ++i) ranks.push_back(first_tp_rank + part * replicas + i);
  g = make_group(store_, "tp/" + std::to_string(replicas),
                 "autotp/tp/" + std::to_string(first_tp_rank) + "/replicas" + std::to_string(replicas) + "/" + std::to_string(part), ranks,
                 rank_, options_);
  return g;
}

std::vector<std::shared_ptr<Group>> Mesh::replica_groups() const {
  std::lock_guard<std::mutex> lock(replicas_mu_);
  std::vector<std::shared_ptr<Group>> out;
  for (const auto& [m, g] : replica_groups_) out.push_back(g);
  return out;
}

std::vector<std::shared_ptr<Group>> Mesh::groups() const {
  std::vector<std::shared_ptr<Group>> out{world_group_, tp_, dp_};
  for (auto& g : replica_groups()) out.push_back(std::move(g));
  return out;
}

std::shared_ptr<Group> Mesh::find(const std::string& name) const {
  if (name == "tp") return tp_;
  if (name == "dp") return dp_;
  if (name == "world") return world_group_;
  return nullptr;
}

std::string Mesh::stats_table() const {
  std::ostringstream out;
  for (const auto& g : groups())
    for (const auto& [site, c] : g->by_site())
      out << g->name() << " " << site << " calls=" << c.calls << " bytes=" << c.bytes << "\n";
  return out.str();
}

std::string Mesh::stats_json() const {
  nlohmann::json j;
  for (const auto& g : groups()) {
    nlohmann::json gj;
    gj["size"] = g->size();
    for (const auto& [kind, c] : g->by_kind()) gj["by_kind"][kind] = {{"calls", c.calls}, {"bytes", c.bytes}};
    for (const auto& [site, c] : g->by_site()) gj["by_site"][site] = {{"calls", c.calls}, {"bytes", c.bytes}};
    auto t = g->total();
    gj["total"] = {{"calls", t.calls}, {"bytes", t.bytes}};
    j[g->name()] = gj;
  }
  return j.dump();
}

void Mesh::reset_counts() {
  for (const auto& g : groups()) g->reset_counts();
}

bool cuda_build() {
#ifdef AUTOTP_WITH_NCCL
  return true;
#else
  return false;
#endif
}

c10::Device choose_rank_device(const std::string& flag, bool cuda_available, int64_t cuda_devices, int64_t local_rank) {
  if (flag != "auto" && flag != "cpu" && flag != "cuda")
    throw Error("--device " + flag + ": expected cpu, cuda or auto (cuda when a GPU is visible, else cpu)");
  const bool gpus = cuda_available && cuda_devices > 0;
  if (flag == "cpu" || (flag == "auto" && !gpus)) return c10::Device(c10::DeviceType::CPU);
  if (!cuda_available)
    throw Error(cuda_build() ? "--device cuda: CUDA is not usable in this process (no driver or no GPU); use --device cpu"
                             : "--device cuda: this autotp is built against a CPU LibTorch (make cuda-build builds one "
                               "against CUDA); use --device cpu");
  if (cuda_devices < 1) throw Error("--device cuda: no GPU is visible to this process (CUDA_VISIBLE_DEVICES?); use --device cpu");
  if (local_rank < 0 || local_rank >= cuda_devices)
    throw Error("--device cuda: LOCAL_RANK " + std::to_string(local_rank) + " but " + std::to_string(cuda_devices) + " GPU" +
                (cuda_devices == 1 ? " is" : "s are") + " visible; one rank per GPU: --nproc_per_node " +
                std::to_string(cuda_devices) + " at most");
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(local_rank));
}

namespace {

// torchrun's LOCAL_RANK (0 when unset: one process on its own).
int local_rank_from_env() {
  const std::string local = env_str("LOCAL_RANK", "0");
  try {
    return std::stoi(local);
  } catch (const std::exception&) {
    throw Error("mesh: environment variable LOCAL_RANK='" + local + "' is not an integer");
  }
}

void make_current(int gpu) {  // this thread's current GPU
  c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(gpu)));
}

}  // namespace

MeshOptions mesh_options_for(const std::string& device_flag, int tp) {
  const bool cuda = torch::cuda::is_available();
  const c10::Device d =
      choose_rank_device(device_flag, cuda, cuda ? static_cast<int64_t>(torch::cuda::device_count()) : 0, local_rank_from_env());
  MeshOptions o;
  o.tp = tp;
  o.device = d.type();
  if (d.is_cuda()) {
    o.device_index = d.index();
    make_current(o.device_index);
  }
  return o;
}

std::shared_ptr<Mesh> init_mesh_from_env(const MeshOptions& given) {
  MeshOptions options = given;
  if (options.device == c10::DeviceType::CUDA && options.device_index < 0) {
    options.device_index = local_rank_from_env();
    make_current(options.device_index);
  }
  const int rank = env_int("RANK");
  const int world = env_int("WORLD_SIZE");
  const std::string host = env_str("MASTER_ADDR", "127.0.0.1");
  const int port = env_int("MASTER_PORT");
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(port);
  so.numWorkers = world;
  so.timeout = options.timeout;
  std::string prefix;
  // torchrun's agent hosts the store its workers rendezvous on (TORCHELASTIC_USE_AGENT_STORE);
  // workers join as clients under the same per-attempt prefix torch.distributed uses.
  if (env_str("TORCHELASTIC_USE_AGENT_STORE", "") == "True") {
    so.isServer = false;
    so.waitWorkers = false;
    prefix = "/worker/attempt_" + env_str("TORCHELASTIC_RESTART_COUNT", "0");
  } else {
    so.isServer = rank == 0;
    // Restarted workers (torchrun --max-restarts) on a store that outlives an attempt would read the
    // previous attempt's keys and hang or mismatch: each attempt gets a prefix of its own.
    if (const std::string attempt = env_str("TORCHELASTIC_RESTART_COUNT", ""); !attempt.empty())
      prefix = "/autotp/attempt_" + attempt;
  }
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(host, so);
  } catch (const std::exception& e) {
    std::string what = e.what();
    throw Error("mesh: cannot reach the TCPStore at " + host + ":" + std::to_string(port) + " (" +
                what.substr(0, what.find('\n')) + "); check MASTER_ADDR/MASTER_PORT");
  }
  if (!prefix.empty()) store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
  auto mesh = Mesh::create(store, rank, world, options);
  set_process_mesh(mesh);
  return mesh;
}

void set_process_mesh(std::shared_ptr<Mesh> mesh) {
  std::lock_guard<std::mutex> lock(g_process_mu);
  g_process_mesh = std::move(mesh);
}

std::shared_ptr<Mesh> current_mesh() {
  if (t_thread_mesh) return t_thread_mesh;
  std::lock_guard<std::mutex> lock(g_process_mu);
  return g_process_mesh;
}

MeshScope::MeshScope(std::shared_ptr<Mesh> mesh) : previous_(std::move(t_thread_mesh)) { t_thread_mesh = std::move(mesh); }
MeshScope::~MeshScope() { t_thread_mesh = std::move(previous_); }

std::shared_ptr<Group> group_by_id(int64_t id) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  auto it = g_registry.find(id);
  std::shared_ptr<Group> g = it == g_registry.end() ? nullptr : it->second.lock();
  if (!g) throw Error("autotp: the process group this autograd graph was built on no longer exists; keep the mesh alive until backward() returns");
  return g;
}

}  // namespace autotp
