// C++ entry points of the torch.ops.autotp.* tensor-parallel ops (runtime/tp_ops.cpp has the
// semantics). They call through the dispatcher, so autograd applies exactly as in a graph.
#pragma once

#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

namespace autotp {

class Group;

at::Tensor copy_to_tp(const at::Tensor& x, const std::string& group, int64_t tp);
at::Tensor reduce_from_tp(const at::Tensor& x, const std::string& group, int64_t tp);
at::Tensor gather_from_tp(const at::Tensor& x, const std::string& group, int64_t tp);
// Per-token loss [tokens] (fp32) from logits [..., vocab/tp]; targets equal to ignore_index give 0.
at::Tensor vocab_parallel_cross_entropy(const at::Tensor& logits, const at::Tensor& target, int64_t ignore_index,
                                        const std::string& group, int64_t tp);

// The current mesh's group `name`, checked to have `tp` members; throws autotp::Error naming `op`.
std::shared_ptr<Group> resolve_group(const std::string& op, const std::string& name, int64_t tp);
// The ranks of this rank's TP group that hold its kv head: `replicas` consecutive ones.
std::shared_ptr<Group> replica_group(const std::string& op, const std::string& name, int64_t tp, int64_t replicas);

}  // namespace autotp
