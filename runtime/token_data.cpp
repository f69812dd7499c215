#include "runtime/token_data.h"

#include <cstring>
#include <fstream>

#include <ATen/ATen.h>

#include "autotp/error.h"

namespace autotp {
namespace {
constexpr char kMagic[8] = {'A', 'T', 'P', 'T', 'O', 'K', 'S', '1'};
}

void write_token_file(const std::string& path, const std::vector<int64_t>& tokens, int64_t vocab) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path + ": cannot write the token file");
  const uint32_t width = vocab <= 65536 ? 2 : 4, reserved = 0;
  const uint64_t n = tokens.size(), v = static_cast<uint64_t>(vocab);
  out.write(kMagic, 8);
  out.write(reinterpret_cast<const char*>(&width), 4);
  out.write(reinterpret_cast<const char*>(&reserved), 4);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(reinterpret_cast<const char*>(&v), 8);
  for (int64_t t : tokens) {
    if (t < 0 || t >= vocab) throw Error(path + ": token id " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(vocab));
    if (width == 2) {
      const uint16_t x = static_cast<uint16_t>(t);
      out.write(reinterpret_cast<const char*>(&x), 2);
    } else {
      const uint32_t x = static_cast<uint32_t>(t);
      out.write(reinterpret_cast<const char*>(&x), 4);
    }
  }
}

TokenData::TokenData(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": no such token file; write one with scripts/tokenize_data.py");
  char magic[8];
  uint32_t width = 0, reserved = 0;
  uint64_t n = 0, v = 0;
  in.read(magic, 8);
  in.read(reinterpret_cast<char*>(&width), 4);
  in.read(reinterpret_cast<char*>(&reserved), 4);
  in.read(reinterpret_cast<char*>(&n), 8);
  in.read(reinterpret_cast<char*>(&v), 8);
  if (!in || std::memcmp(magic, kMagic, 8) != 0)
    throw Error(path + ": not an autotp token file (magic ATPTOKS1 expected); write one with scripts/tokenize_data.py");
  if (width != 2 && width != 4)
    throw Error(path + ": header says " + std::to_string(width) + " bytes per token; 2 or 4 expected");
  vocab_ = static_cast<int64_t>(v);
  ids_.resize(n);
  std::vector<char> body(n * width);
  in.read(body.data(), static_cast<std::streamsize>(body.size()));
  if (static_cast<uint64_t>(in.gcount()) != body.size())
    throw Error(path + ": header promises " + std::to_string(n) + " tokens but the file holds " +
                std::to_string(in.gcount() / width));
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t x = 0;
    std::memcpy(&x, body.data() + i * width, width);
    ids_[i] = x;
  }
}

at::Tensor TokenData::batch(int64_t step, int64_t accum, int64_t grad_accum, int64_t dp_rank, int64_t dp,
                            int64_t micro, int64_t seq) const {
  const int64_t count = samples(seq);
  if (count < 1)
    throw Error(path_ + ": " + std::to_string(tokens()) + " tokens do not make one sample of " + std::to_string(seq + 1) +
                " tokens; use a shorter --seq or more data");
  at::Tensor out = at::empty({micro, seq + 1}, at::TensorOptions().dtype(at::kLong));
  auto* dst = out.data_ptr<int64_t>();
  const int64_t first = ((step * grad_accum + accum) * dp + dp_rank) * micro;
  for (int64_t i = 0; i < micro; ++i) {
    const int64_t s = (first + i) % count;
    std::memcpy(dst + i * (seq + 1), ids_.data() + s * seq, sizeof(int64_t) * (seq + 1));
  }
  return out;
}

}  // namespace autotp
