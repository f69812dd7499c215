// safetensors read/write (see runtime/safetensors.h). The format has no alignment rule beyond the
// header being padded to 8 bytes; the Python writer orders tensors so that each is aligned to its
// element size, and a tensor read at a misaligned offset is copied rather than viewed.
#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include <nlohmann/json.hpp>

#include "autotp/error.h"

namespace autotp {
namespace {

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {{"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble},
                                 {"I64", at::kLong},  {"I32", at::kInt},   {"I16", at::kShort},     {"I8", at::kChar},
                                 {"U8", at::kByte},   {"BOOL", at::kBool}};

const char* dtype_name(at::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  return nullptr;
}

std::string errno_text() { return std::strerror(errno); }

// Closes the descriptor however the writer leaves.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw Error(path + ": cannot write (" + errno_text() + ")");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// A read-only mapping of a whole file, shared by every tensor that views it.
struct Mapping {
  void* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data && size) ::munmap(data, size);
  }
};

}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") throw Error(path + ": a tensor cannot be named __metadata__ (the format reserves it)");
    if (header.contains(name)) throw Error(path + ": tensor " + name + " is given twice");
    const char* dt = dtype_name(tensor.scalar_type());
    if (!dt)
      throw Error(path + ": tensor " + name + " has dtype " + std::string(c10::toString(tensor.scalar_type())) +
                  ", which safetensors here does not write (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
    at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dt}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // as the Python package pads: data starts 8-aligned

  const std::string tmp = path + ".tmp";
  {
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f.fd < 0) throw Error(tmp + ": cannot create (" + errno_text() + ")");
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
    write_all(f.fd, len, 8, tmp);
    write_all(f.fd, text.data(), text.size(), tmp);
    for (const auto& t : data) write_all(f.fd, t.data_ptr(), static_cast<size_t>(t.numel()) * t.element_size(), tmp);
    // Durable before it takes the real name: a crash leaves the old file or the new one, never half.
    if (::fsync(f.fd) != 0) throw Error(tmp + ": fsync failed (" + errno_text() + ")");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    std::remove(tmp.c_str());
    throw Error(path + ": cannot rename " + tmp + " to it (" + why + ")");
  }
}

SafetensorsFile read_safetensors(const std::string& path) {
  Fd f;
  f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd < 0) throw Error(path + ": cannot open (" + errno_text() + ")");
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw Error(path + ": cannot stat (" + errno_text() + ")");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) throw Error(path + ": not a safetensors file (" + std::to_string(size) + " bytes, shorter than the 8-byte header length)");
  auto map = std::make_shared<Mapping>();
  map->size = size;
  // Copy-on-write: a caller that writes into a tensor changes its private pages, never the file.
  map->data = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, f.fd, 0);
  if (map->data == MAP_FAILED) {
    map->data = nullptr;
    throw Error(path + ": cannot mmap (" + errno_text() + ")");
  }
  const auto* base = static_cast<const uint8_t*>(map->data);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(base[i]) << (8 * i);
  if (n > size - 8)
    throw Error(path + ": safetensors header length " + std::to_string(n) + " runs past the end of the file (" +
                std::to_string(size) + " bytes); the file is truncated or not safetensors");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + n));
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    throw Error(path + ": the safetensors header is not JSON (" + what.substr(0, what.find('\n')) + ")");
  }
  if (!header.is_object()) throw Error(path + ": the safetensors header is not a JSON object");
  const uint64_t data_start = 8 + n, data_size = size - data_start;

  SafetensorsFile out;
  std::vector<std::pair<uint64_t, std::pair<std::string, at::Tensor>>> by_offset;
  for (const auto& [key, v] : header.items()) {
    const std::string where = path + ": key " + key;
    try {
      if (key == "__metadata__") {
        for (const auto& [mk, mv] : v.items()) {
          if (!mv.is_string()) throw Error(where + ": metadata value of " + mk + " is not a string");
          out.metadata[mk] = mv.get<std::string>();
        }
        continue;
      }
      const std::string dt = v.at("dtype").get<std::string>();
      at::ScalarType type = at::kFloat;
      bool known = false;
      for (const auto& d : kDtypes)
        if (dt == d.name) type = d.type, known = true;
      if (!known) throw Error(where + ": unknown dtype '" + dt + "' (known: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");
      std::vector<int64_t> shape = v.at("shape").get<std::vector<int64_t>>();
      const auto offsets = v.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2) throw Error(where + ": data_offsets must be [begin, end]");
      uint64_t numel = 1;
      for (int64_t s : shape) {
        if (s < 0) throw Error(where + ": negative size in shape");
        numel *= static_cast<uint64_t>(s);
      }
      const uint64_t bytes = numel * c10::elementSize(type);
      if (offsets[0] > offsets[1] || offsets[1] > data_size)
        throw Error(where + ": data_offsets [" + std::to_string(offsets[0]) + ", " + std::to_string(offsets[1]) +
                    ") out of range of the " + std::to_string(data_size) + " data bytes; the file is truncated or corrupt");
      if (offsets[1] - offsets[0] != bytes)
        throw Error(where + ": data_offsets span " + std::to_string(offsets[1] - offsets[0]) + " bytes but " + dt + " of shape " +
                    v.at("shape").dump() + " needs " + std::to_string(bytes));
      void* ptr = const_cast<uint8_t*>(base + data_start + offsets[0]);
      at::Tensor t;
      if (reinterpret_cast<uintptr_t>(ptr) % c10::elementSize(type) == 0) {
        t = at::from_blob(ptr, shape, [map](void*) {}, at::TensorOptions().dtype(type));  // the deleter keeps the mapping
      } else {
        t = at::empty(shape, at::TensorOptions().dtype(type));
        std::memcpy(t.data_ptr(), ptr, bytes);
      }
      by_offset.push_back({offsets[0], {key, t}});
    } catch (const nlohmann::json::exception& e) {
      std::string what = e.what();
      throw Error(where + ": " + what.substr(what.find(']') + 2));
    }
  }
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& e : by_offset) out.tensors.push_back(std::move(e.second));
  return out;
}

}  // namespace autotp
