#include "runtime/token_data.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "autotp/error.h"

namespace autotp {
namespace {
constexpr char kMagic1[8] = {'A', 'T', 'P', 'T', 'O', 'K', 'S', '1'};
constexpr char kMagic2[8] = {'A', 'T', 'P', 'T', 'O', 'K', 'S', '2'};
constexpr uint32_t kHasMask = 1, kHasExamples = 2;

template <typename T>
void put(std::ofstream& out, T x) {
  out.write(reinterpret_cast<const char*>(&x), sizeof(T));
}
template <typename T>
T get(const unsigned char* p) {
  T x;
  std::memcpy(&x, p, sizeof(T));
  return x;
}

void write_ids(std::ofstream& out, const std::string& path, const std::vector<int64_t>& tokens, int64_t vocab, uint32_t width) {
  for (int64_t t : tokens) {
    if (t < 0 || t >= vocab) throw Error(path + ": token id " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(vocab));
    if (width == 2) put(out, static_cast<uint16_t>(t));
    else put(out, static_cast<uint32_t>(t));
  }
}

uint64_t splitmix64(uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Largest id of a width-byte id array: a loop the compiler vectorises, run in parallel chunks. Measured
// 0.2-0.3 s for 2·10^8 tokens (400 MB, page cache, 2 cores), paid once at open, not per batch.
template <typename T>
uint32_t max_id(const unsigned char* ids, int64_t n) {
  std::atomic<uint32_t> result{0};
  at::parallel_for(0, n, int64_t{1} << 22, [&](int64_t b, int64_t e) {
    const T* p = reinterpret_cast<const T*>(ids);  // the body starts at byte 32 or 48: aligned for T
    T m = 0;
    for (int64_t i = b; i < e; ++i) m = p[i] > m ? p[i] : m;
    uint32_t seen = result.load();
    while (m > seen && !result.compare_exchange_weak(seen, m)) {
    }
  });
  return result.load();
}
}  // namespace

void write_token_file(const std::string& path, const std::vector<int64_t>& tokens, int64_t vocab) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path + ": cannot write the token file");
  const uint32_t width = vocab <= 65536 ? 2 : 4;
  out.write(kMagic1, 8);
  put<uint32_t>(out, width);
  put<uint32_t>(out, 0);
  put<uint64_t>(out, tokens.size());
  put<uint64_t>(out, static_cast<uint64_t>(vocab));
  write_ids(out, path, tokens, vocab, width);
}

void write_token_file(const std::string& path, const TokenFileV2& f) {
  const int64_t n = static_cast<int64_t>(f.tokens.size());
  if (!f.mask.empty() && static_cast<int64_t>(f.mask.size()) != n)
    throw Error(path + ": " + std::to_string(f.mask.size()) + " mask bytes for " + std::to_string(n) + " tokens");
  if (!f.example_offsets.empty()) {
    if (f.example_offsets.front() != 0 || f.example_offsets.back() != n ||
        !std::is_sorted(f.example_offsets.begin(), f.example_offsets.end()))
      throw Error(path + ": example offsets must rise from 0 to the token count " + std::to_string(n));
  }
  if (f.pad_id < 0 || f.pad_id >= f.vocab) throw Error(path + ": pad id " + std::to_string(f.pad_id) + " is outside the vocabulary");
  std::ofstream out(path, std::ios::binary);
  if (!out) throw Error(path + ": cannot write the token file");
  const uint32_t width = f.vocab <= 65536 ? 2 : 4;
  const uint32_t flags = (f.mask.empty() ? 0 : kHasMask) | (f.example_offsets.empty() ? 0 : kHasExamples);
  out.write(kMagic2, 8);
  put<uint32_t>(out, width);
  put<uint32_t>(out, flags);
  put<uint64_t>(out, static_cast<uint64_t>(n));
  put<uint64_t>(out, static_cast<uint64_t>(f.vocab));
  put<uint64_t>(out, static_cast<uint64_t>(f.pad_id));
  put<uint64_t>(out, f.example_offsets.empty() ? 0 : f.example_offsets.size() - 1);
  write_ids(out, path, f.tokens, f.vocab, width);
  for (uint8_t m : f.mask) put<uint8_t>(out, m ? 1 : 0);
  for (int64_t o : f.example_offsets) put<uint64_t>(out, static_cast<uint64_t>(o));
}

// The whole file, mapped read-only; pages come in as batches touch them, so memory stays what the
// OS caches, whatever the file's size.
struct TokenData::Mapping {
  void* base = MAP_FAILED;
  size_t size = 0;
  ~Mapping() {
    if (base != MAP_FAILED) munmap(base, size);
  }
};

TokenData::TokenData(const std::string& path) : path_(path) {
  const int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(path + ": no such token file; write one with scripts/tokenize_data.py");
  struct stat st {};
  fstat(fd, &st);
  auto map = std::make_shared<Mapping>();
  map->size = static_cast<size_t>(st.st_size);
  if (map->size > 0) map->base = mmap(nullptr, map->size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (map->size > 0 && map->base == MAP_FAILED) throw Error(path + ": cannot map the token file into memory");
  map_ = map;
  const auto* p = static_cast<const unsigned char*>(map->base);
  const uint64_t size = map->size;

  const bool v1 = size >= 8 && std::memcmp(p, kMagic1, 8) == 0, v2 = size >= 8 && std::memcmp(p, kMagic2, 8) == 0;
  if (!v1 && !v2)
    throw Error(path + ": not an autotp token file (magic ATPTOKS1 or ATPTOKS2 expected); write one with scripts/tokenize_data.py");
  const uint64_t header = v1 ? 32 : 48;
  if (size < header)
    throw Error(path + ": the header is cut short (" + std::to_string(size) + " bytes of " + std::to_string(header) + ")");
  const uint32_t width = get<uint32_t>(p + 8), flags = v2 ? get<uint32_t>(p + 12) : 0;
  if (width != 2 && width != 4)
    throw Error(path + ": header says " + std::to_string(width) + " bytes per token; 2 or 4 expected");
  if (flags & ~(kHasMask | kHasExamples)) throw Error(path + ": unknown flags " + std::to_string(flags) + " in the header");
  const uint64_t n = get<uint64_t>(p + 16), vocab = get<uint64_t>(p + 24);
  const uint64_t pad = v2 ? get<uint64_t>(p + 32) : 0, e = v2 ? get<uint64_t>(p + 40) : 0;
  if (!(flags & kHasExamples) && e != 0)
    throw Error(path + ": header counts " + std::to_string(e) + " examples but has no example offsets (flag bit 1)");
  // Sizes in 128 bits: a corrupt count must not wrap around and pass.
  const unsigned __int128 need = static_cast<unsigned __int128>(header) + static_cast<unsigned __int128>(n) * width +
                                 ((flags & kHasMask) ? n : 0) +
                                 ((flags & kHasExamples) ? (static_cast<unsigned __int128>(e) + 1) * 8 : 0);
  if (need > size) {
    const uint64_t held = (size - header) / width;
    throw Error(path + ": header promises " + std::to_string(n) + " tokens" + ((flags & kHasMask) ? ", their mask" : "") +
                ((flags & kHasExamples) ? " and " + std::to_string(e + 1) + " example offsets" : "") + " (" +
                std::to_string(static_cast<uint64_t>(need)) + " bytes) but the file holds " + std::to_string(size) +
                " bytes" + (flags ? "" : " (" + std::to_string(std::min(held, n)) + " tokens)"));
  }
  n_ = static_cast<int64_t>(n);
  vocab_ = static_cast<int64_t>(vocab);
  pad_ = static_cast<int64_t>(pad);
  width_ = static_cast<int>(width);
  ids_ = p + header;
  if (flags & kHasMask) mask_ = ids_ + n * width;
  if (flags & kHasExamples) {
    offsets_ = ids_ + n * width + ((flags & kHasMask) ? n : 0);
    examples_ = static_cast<int64_t>(e);
  }
  if (v2 && pad >= vocab)
    throw Error(path + ": pad id " + std::to_string(pad) + " is outside the vocabulary of " + std::to_string(vocab));

  if (has_examples()) {
    // E + 1 reads of 8 bytes: cheap next to the tokens, and a bad offset would read out of bounds.
    if (offset(0) != 0) throw Error(path + ": the first example offset is " + std::to_string(offset(0)) + ", not 0");
    for (int64_t i = 0; i < examples_; ++i)
      if (offset(i + 1) < offset(i))
        throw Error(path + ": example offsets out of order: example " + std::to_string(i + 1) + " starts at token " +
                    std::to_string(offset(i + 1)) + ", before example " + std::to_string(i) + " at " + std::to_string(offset(i)));
    if (offset(examples_) != n_)
      throw Error(path + ": the last example offset is " + std::to_string(offset(examples_)) + ", not the token count " +
                  std::to_string(n_));
  }
  // Every id once, here: a bad id (data tokenized for another model) stops the run before step 1
  // on every rank, instead of at whatever step first reads it, and batch() stays a plain copy.
  const uint64_t top = width == 2 ? max_id<uint16_t>(ids_, n_) : max_id<uint32_t>(ids_, n_);
  if (n_ > 0 && top >= vocab) {
    int64_t at = 0;
    while (static_cast<uint64_t>(token(at)) < vocab) ++at;
    throw Error(path + ": token " + std::to_string(at) + " is id " + std::to_string(token(at)) +
                ", outside the vocabulary of " + std::to_string(vocab) + " the header declares");
  }
}

int64_t TokenData::token(int64_t i) const {
  return width_ == 2 ? get<uint16_t>(ids_ + 2 * i) : get<uint32_t>(ids_ + 4 * i);
}

int64_t TokenData::offset(int64_t e) const { return static_cast<int64_t>(get<uint64_t>(offsets_ + 8 * e)); }

int64_t TokenData::samples(int64_t seq) const {
  if (seq < 1) throw Error(path_ + ": sequence length " + std::to_string(seq) + " asked; it must be at least 1");
  if (has_examples()) return examples_;
  return n_ > 0 ? (n_ - 1) / seq : 0;
}

int64_t TokenData::checked_samples(int64_t seq) const {
  const int64_t count = samples(seq);
  if (count >= 1) return count;
  if (has_examples()) throw Error(path_ + ": the file holds no examples");
  throw Error(path_ + ": " + std::to_string(tokens()) + " tokens do not make one sample of " + std::to_string(seq + 1) +
              " tokens; use a shorter --seq or more data");
}

int64_t TokenData::truncated(int64_t seq) const {
  if (!has_examples()) return 0;
  int64_t count = 0;
  for (int64_t i = 0; i < examples_; ++i) count += offset(i + 1) - offset(i) > seq + 1;
  return count;
}

void TokenData::shuffle(uint64_t seed) {
  std::lock_guard<std::mutex> lock(perm_mutex_);
  shuffled_ = true;
  seed_ = seed;
  perms_.clear();
}

std::shared_ptr<const std::vector<int64_t>> TokenData::permutation(int64_t epoch, int64_t n) const {
  std::lock_guard<std::mutex> lock(perm_mutex_);
  for (const CachedPerm& c : perms_)
    if (c.epoch == epoch && c.n == n) return c.perm;
  auto perm = std::make_shared<std::vector<int64_t>>(n);
  for (int64_t i = 0; i < n; ++i) (*perm)[i] = i;
  uint64_t state = seed_ ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(epoch + 1));
  for (int64_t i = n - 1; i >= 1; --i) {
    const int64_t j = static_cast<int64_t>(splitmix64(state) % static_cast<uint64_t>(i + 1));
    std::swap((*perm)[i], (*perm)[j]);
  }
  if (perms_.size() == 2) perms_.erase(perms_.begin());
  perms_.push_back({epoch, n, perm});
  return perm;
}

int64_t TokenData::sample_at_position(int64_t g, int64_t seq) const {
  const int64_t n = checked_samples(seq);
  if (g < 0) throw Error(path_ + ": negative sample position " + std::to_string(g));
  const int64_t r = g % n;
  return shuffled_ ? (*permutation(g / n, n))[r] : r;
}

std::pair<int64_t, int64_t> TokenData::span(int64_t sample, int64_t seq) const {
  if (!has_examples()) return {sample * seq, sample * seq + seq + 1};
  const int64_t b = offset(sample);
  return {b, std::min(offset(sample + 1), b + seq + 1)};
}

void TokenData::fill(int64_t sample, int64_t seq, int64_t* input, int64_t* labels) const {
  const auto [b, e] = span(sample, seq);
  const int64_t len = e - b;
  for (int64_t j = 0; j < seq; ++j) {
    input[j] = j < len ? token(b + j) : pad_;
    const bool counts = j + 1 < len && (!mask_ || mask_[b + j + 1]);
    labels[j] = counts ? token(b + j + 1) : kIgnoreLabel;
  }
}

int64_t TokenData::count_labels(int64_t sample, int64_t seq) const {
  const auto [b, e] = span(sample, seq);
  if (e - b < 2) return 0;
  if (!mask_) return e - b - 1;
  int64_t count = 0;
  for (int64_t t = b + 1; t < e; ++t) count += mask_[t] != 0;
  return count;
}

Batch TokenData::batch(int64_t step, int64_t accum, int64_t grad_accum, int64_t dp_rank, int64_t dp, int64_t micro,
                       int64_t seq) const {
  checked_samples(seq);
  const auto opts = at::TensorOptions().dtype(at::kLong);
  Batch out{at::empty({micro, seq}, opts), at::empty({micro, seq}, opts)};
  const int64_t first = ((step * grad_accum + accum) * dp + dp_rank) * micro;
  for (int64_t i = 0; i < micro; ++i)
    fill(sample_at_position(first + i, seq), seq, out.input.data_ptr<int64_t>() + i * seq,
         out.labels.data_ptr<int64_t>() + i * seq);
  return out;
}

int64_t TokenData::loss_tokens(int64_t step, int64_t grad_accum, int64_t dp, int64_t micro, int64_t seq) const {
  checked_samples(seq);
  const int64_t global = grad_accum * dp * micro;
  int64_t count = 0;
  for (int64_t g = step * global; g < (step + 1) * global; ++g) count += count_labels(sample_at_position(g, seq), seq);
  return count;
}

int64_t TokenData::epoch_at(int64_t step, int64_t grad_accum, int64_t dp, int64_t micro, int64_t seq) const {
  return step * grad_accum * dp * micro / checked_samples(seq);
}

Batch TokenData::samples_at(int64_t first, int64_t count, int64_t seq) const {
  const int64_t n = samples(seq);
  if (first < 0 || count < 0 || first + count > n)
    throw Error(path_ + ": samples [" + std::to_string(first) + ", " + std::to_string(first + count) + ") asked; the file has " +
                std::to_string(n) + " at sequence length " + std::to_string(seq));
  const auto opts = at::TensorOptions().dtype(at::kLong);
  Batch out{at::empty({count, seq}, opts), at::empty({count, seq}, opts)};
  for (int64_t i = 0; i < count; ++i)
    fill(first + i, seq, out.input.data_ptr<int64_t>() + i * seq, out.labels.data_ptr<int64_t>() + i * seq);
  return out;
}

}  // namespace autotp
