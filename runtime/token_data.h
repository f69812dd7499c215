// Pre-tokenized training data: token ids in one flat binary file, the usual LLM pre-training layout
// (documents concatenated, cut into fixed windows at read time).
//
// File format (little-endian):
//   offset 0   8 bytes  magic "ATPTOKS1"
//   offset 8   u32      bytes per token: 2 (uint16) or 4 (uint32)
//   offset 12  u32      reserved, 0
//   offset 16  u64      number of tokens N
//   offset 24  u64      vocabulary size the ids were made for (every id is below it)
//   offset 32  N tokens
// Written by scripts/tokenize_data.py (text or JSONL through the model's tokenizer) or
// write_token_file. Sample i is tokens [i·S, i·S + S + 1): S inputs and the S next tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace autotp {

void write_token_file(const std::string& path, const std::vector<int64_t>& tokens, int64_t vocab);

class TokenData {
 public:
  // Throws autotp::Error naming the file for a missing file, a bad header or a short body.
  explicit TokenData(const std::string& path);
  int64_t tokens() const { return static_cast<int64_t>(ids_.size()); }
  int64_t vocab() const { return vocab_; }
  int64_t samples(int64_t seq) const { return (tokens() - 1) / seq; }
  // The micro-batch [micro, seq + 1] that data-parallel rank `dp_rank` of `dp` trains on at
  // optimizer step `step`, accumulation step `accum` of `grad_accum`. Global sample index
  // ((step·grad_accum + accum)·dp + dp_rank)·micro + i, wrapping around the file; TP peers (same
  // dp rank) read the same batch.
  at::Tensor batch(int64_t step, int64_t accum, int64_t grad_accum, int64_t dp_rank, int64_t dp, int64_t micro,
                   int64_t seq) const;

 private:
  std::string path_;
  std::vector<int64_t> ids_;
  int64_t vocab_ = 0;
};

}  // namespace autotp
