// Pre-tokenized training data: token ids in one flat binary file, memory-mapped. Two layouts:
// a *stream* (documents concatenated, cut into fixed windows at read time: pre-training) and
// *examples* (one sample per example with a loss mask: supervised fine-tuning, SFT).
//
// File format, little-endian. Version 1 (a stream, what every older file is):
//   offset 0   8 bytes  magic "ATPTOKS1"
//   offset 8   u32      bytes per token W: 2 (uint16) or 4 (uint32)
//   offset 12  u32      reserved, 0
//   offset 16  u64      number of tokens N
//   offset 24  u64      vocabulary size the ids were made for (every id is below it)
//   offset 32  N tokens of W bytes
// Version 2:
//   offset 0   8 bytes  magic "ATPTOKS2"
//   offset 8   u32      bytes per token W: 2 or 4
//   offset 12  u32      flags: bit 0 a loss mask follows the tokens, bit 1 example offsets follow
//   offset 16  u64      number of tokens N
//   offset 24  u64      vocabulary size
//   offset 32  u64      pad id (below the vocabulary): fills the input of an example shorter than a sample
//   offset 40  u64      number of examples E (0 unless bit 1)
//   offset 48  N tokens of W bytes
//   then, if bit 0: N bytes, 1 where the token is a label that counts in the loss (assistant
//            replies), 0 where it does not (prompt, template); read as "nonzero"
//   then, if bit 1: E + 1 u64 offsets, 0 = o_0 ≤ o_1 ≤ ... ≤ o_E = N; example e is tokens [o_e, o_e+1)
//            (not 8-byte aligned: read by copy)
// Written by scripts/tokenize_data.py (text, JSONL, or SFT conversations through the model's chat
// template) or write_token_file.
//
// Samples at sequence length S, each S inputs and S labels (label = the next token, -100 = no loss):
//   - stream (no examples): sample i is tokens [i·S, i·S + S + 1); input = the first S, labels = the
//     last S; samples(S) = (N - 1) / S, a shorter tail is never read.
//   - examples: sample i is example i of L tokens; input = its first min(L, S) tokens then pad ids,
//     labels = tokens 1..min(L - 1, S) then -100; an example of more than S + 1 tokens is cut to
//     S + 1 (counted by truncated(S)).
//   - with a mask, a label whose token has mask 0 is -100 (the model reads the prompt but is not
//     trained to write it).
//
// Order: global sample position g (below) runs through epochs, epoch e = g / samples(S), sample =
// perm_e[g mod samples(S)]. perm_e is the identity unless shuffle(seed) was called; then it is
// Fisher–Yates driven by splitmix64 (a documented contract, reimplemented in tests/data/token_reference.py):
//   state = seed XOR (0x9E3779B97F4A7C15 · (e + 1)) mod 2^64
//   next(): state += 0x9E3779B97F4A7C15; z = state; z = (z ^ z>>30)·0xBF58476D1CE4E5B9;
//           z = (z ^ z>>27)·0x94D049BB133111EB; return z ^ z>>31          (all mod 2^64)
//   perm = [0, 1, ..., n-1]; for i = n-1 down to 1: j = next() mod (i + 1); swap perm[i], perm[j]
// (at::randperm is not used: its algorithm is no stable contract.) Memory: the mapping (page cache,
// shared by the ranks of a node) plus, when shuffled, 8 bytes per sample for each of the last two
// epochs' permutations; nothing grows with the token count.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace autotp {

// Label value of a position that does not count in the loss (prompt, padding); the cross-entropy's
// ignore_index.
constexpr int64_t kIgnoreLabel = -100;

// Version 1 stream file; ids must be below vocab.
void write_token_file(const std::string& path, const std::vector<int64_t>& tokens, int64_t vocab);

// Version 2 file. mask: empty (no mask) or one 0/1 per token. example_offsets: empty (a stream) or
// E + 1 offsets starting at 0 and ending at tokens.size().
struct TokenFileV2 {
  std::vector<int64_t> tokens;
  int64_t vocab = 0;
  int64_t pad_id = 0;
  std::vector<uint8_t> mask;
  std::vector<int64_t> example_offsets;
};
void write_token_file(const std::string& path, const TokenFileV2& file);

struct Batch {
  at::Tensor input, labels;  // [rows, seq] int64; labels kIgnoreLabel where no loss (prompt, padding)
};

class TokenData {
 public:
  // Throws autotp::Error naming the file for a missing file, a bad header, a short body, example
  // offsets out of order, or an id at or above the vocabulary (all ids are checked here, once).
  explicit TokenData(const std::string& path);
  int64_t tokens() const { return n_; }
  int64_t vocab() const { return vocab_; }
  int64_t pad_id() const { return pad_; }
  bool has_mask() const { return mask_ != nullptr; }
  bool has_examples() const { return examples_ >= 0; }
  int64_t examples() const { return has_examples() ? examples_ : 0; }
  // Samples per epoch at sequence length seq.
  int64_t samples(int64_t seq) const;
  // Examples longer than seq + 1 tokens, cut at read time (0 for a stream).
  int64_t truncated(int64_t seq) const;
  // Turns on per-epoch shuffling of the sample order (off by default); see the top of this file.
  void shuffle(uint64_t seed);
  // The micro-batch that DP rank dp_rank of dp trains on at optimizer step `step`, accumulation
  // step accum of grad_accum: global sample positions g = ((step·grad_accum + accum)·dp + dp_rank)·micro + i.
  // TP peers (same dp rank) read the same batch.
  Batch batch(int64_t step, int64_t accum, int64_t grad_accum, int64_t dp_rank, int64_t dp, int64_t micro,
              int64_t seq) const;
  // Labels that count (!= -100) in the whole global batch of `step` (every dp rank and accumulation
  // step): the denominator of the token-weighted loss, computed from the file without a collective.
  int64_t loss_tokens(int64_t step, int64_t grad_accum, int64_t dp, int64_t micro, int64_t seq) const;
  // Epoch (0-based) of the first sample of `step`.
  int64_t epoch_at(int64_t step, int64_t grad_accum, int64_t dp, int64_t micro, int64_t seq) const;
  // Samples [first, first + count) in file order, no shuffle, no wrap (evaluation).
  Batch samples_at(int64_t first, int64_t count, int64_t seq) const;
  // The sample at global position g (epoch and permutation applied).
  int64_t sample_at_position(int64_t g, int64_t seq) const;

 private:
  struct Mapping;
  int64_t token(int64_t i) const;
  std::pair<int64_t, int64_t> span(int64_t sample, int64_t seq) const;  // [begin, end) of its tokens
  void fill(int64_t sample, int64_t seq, int64_t* input, int64_t* labels) const;
  int64_t count_labels(int64_t sample, int64_t seq) const;
  int64_t checked_samples(int64_t seq) const;  // samples(seq), or an error when there are none
  int64_t offset(int64_t e) const;

  std::string path_;
  std::shared_ptr<const Mapping> map_;
  const unsigned char* ids_ = nullptr;  // N tokens of width_ bytes, inside the mapping
  const unsigned char* mask_ = nullptr;
  const unsigned char* offsets_ = nullptr;  // E + 1 unaligned u64
  int64_t n_ = 0, vocab_ = 0, pad_ = 0, examples_ = -1;
  int width_ = 2;
  bool shuffled_ = false;
  uint64_t seed_ = 0;
  // The last two epochs' permutations: a step that straddles an epoch boundary reads both.
  mutable std::mutex perm_mutex_;
  struct CachedPerm {
    int64_t epoch, n;
    std::shared_ptr<const std::vector<int64_t>> perm;
  };
  mutable std::vector<CachedPerm> perms_;
  std::shared_ptr<const std::vector<int64_t>> permutation(int64_t epoch, int64_t n) const;
};

}  // namespace autotp
