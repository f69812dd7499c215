// The safetensors file format (https://github.com/huggingface/safetensors), in C++: what Hugging Face
// checkpoints are made of. Layout: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end)}, "__metadata__": {string: string}} padded with
// spaces to a multiple of 8, then the raw little-endian data the offsets index.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace autotp {

// Writes tensors (contiguous CPU copies, in the given order) as one safetensors file with the
// optional "__metadata__". Written to PATH.tmp, fsync'd and renamed, so a reader never sees half a
// file. Dtypes: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL. Throws autotp::Error naming the
// file (and the tensor) on failure.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  std::vector<std::pair<std::string, at::Tensor>> tensors;  // in the order of their data in the file
  std::map<std::string, std::string> metadata;
};

// Reads a safetensors file through mmap; the tensors keep the mapping alive. A bad header, offsets
// out of range, an unknown dtype etc. give one autotp::Error line naming the file and the key.
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace autotp
