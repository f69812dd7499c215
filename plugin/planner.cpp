// `autotp plan`: per-GPU memory and per-step communication of every parallel strategy for a model
// on a cluster, and one recommendation. Shapes come from plugin/planner_shape.cpp; the table, JSON
// and emitted configs from plugin/planner_format.cpp. README.md "`autotp plan`" has the same
// formulas with worked numbers.
//
// Symbols: Ψ parameters; Ψ_t the parameters one TP rank holds (split ones / t, vocabulary padded to a
// multiple of t, plus the replicated norms); B bytes per weight / gradient / activation element
// (bf16 2, fp32 4); s sequence, b micro-batch, h hidden, a heads, L layers, V vocabulary (padded);
// dp = nodes·G / t; GA = global batch / (b·dp); part(x) = ceil(x / dp) (a flat vector padded to a
// multiple of dp, as autotp's ZeRO-1 and DeepSpeed both pad).
//
// Memory per GPU — model states as the ZeRO paper counts mixed-precision Adam (Rajbhandari et al.
// 2020, §3.1: 2Ψ fp16/bf16 weights + 2Ψ gradients + KΨ optimizer states with K = 12: fp32 master
// weights, momentum and variance). fp32 training is counted 4 + 4 + 12: autotp's ZeRO-1 optimizer
// and DeepSpeed's ZeRO optimizers keep a separate fp32 master copy even when the weights are fp32.
//   stage 0 (DDP):  params BΨ_t        grads BΨ_t        optimizer 12Ψ_t
//   stage 1:        params BΨ_t        grads BΨ_t        optimizer 12·part(Ψ_t)
//   stage 2:        params BΨ_t        grads B·part(Ψ_t) optimizer 12·part(Ψ_t)
//   stage 3:        params B·part(Ψ_t) grads B·part(Ψ_t) optimizer 12·part(Ψ_t)
// Buffers: the flat fp32 gradient vector the reduction works on — 4Ψ_t at stages 0/1 (autotp's
// optimizer accumulates and reduce-scatters one fp32 vector of Ψ_t; runtime/zero_optimizer.h),
// 4·part(Ψ_t) at stages 2/3 (DeepSpeed's fp32 gradient partition); ZeRO-3 adds the parameters it
// gathers for compute: the unit in use and the one prefetched, 2·B·(largest of a layer and the
// embedding). Not counted: the CUDA context, the allocator's fragmentation, NCCL's buffers (pass a
// smaller --gpu-memory to keep a margin).
//
// Activations per GPU, one micro-batch in flight: what autograd saves for the backward of a Hugging
// Face Llama (4.51, eager attention, the graph autotp trains), counted tensor by tensor from the ops'
// derivative formulas (a mul saves the other factor only for an input that needs a gradient, so
// rotary's x·cos saves only cos; softmax saves its output; linear its input; silu its input), and
// checked against the measured peak (tests/test_plan_calibration.cpp, runtime/memory_meter.h). d = head_dim,
// i intermediate, B bytes per activation element; every split term / t (no sequence parallelism):
//   each RMSNorm (2 per layer, + the final one): its input in fp32 (the pow and the x·rsqrt save it),
//     the normalized x (the weight's mul saves it) and its output (the next linears' input):
//     (4 + 2B)·sbh (+ 4·sb of 1/rms)
//   attention, eager: q after rotary, k and v after repeat_kv (a heads each: the matmuls save them),
//     the output before o_proj: 4B·sb·a·d/t; the softmax probabilities, fp32 (softmax(dtype=float32))
//     plus their cast back to B when B is 16-bit (the PV matmul saves it): (4 + B)·a·s²·b/t (4 in fp32)
//   attention, --flash-attention: q, k, v (kv heads), the output and the fp32 log-sum-exp
//     (FlashAttention-2's saved tensors): B·sb·(2a + 2kv)·d/t + 4·a·s·b/t
//   SwiGLU MLP: gate output (silu's input), silu's output, up output (the product saves both) and
//     the product (down_proj's input): 4B·sb·i/t
// No dropout masks: Llama has none. (Korthikanti et al.'s 34·sbh + 5·a·s²·b counts GPT's tensors:
// LayerNorm, GeLU, dropout masks, 16-bit scores, no vocabulary; on the test's Llamas in fp32 it was
// 59% under to 27% over the measured peak, SmolLM2-135M 33-59% under; this count is within 6%.)
// Output, at the peak (everything above still held): the logits [s·b, V/t] in B (the caller holds
// them through the backward), plus the larger of
//   - the vocab-parallel cross-entropy: its shifted logits and exp in its forward, its saved fp32
//     softmax and the fp32 gradient its backward makes (and that gradient's cast to B when 16-bit):
//     (8 + B)·s·b·V/t (8 in fp32; 12·s·b·V/t in all with the logits). Hugging Face's own loss
//     upcasts the logits and keeps log_softmax and its gradient: about 4 bytes per logit more.
//   - the lm-head's backward: the logits' gradient B·s·b·V/t, its input's B·sbh, and the lm-head's
//     weight gradient w = B·(V/t)·h when it is not (yet) the parameter's .grad: with a tied
//     embedding autograd holds it until the embedding's is added to it at the end of the backward,
//     and in fp32 with gradient accumulation autotp's micro-batches after the first add each new
//     gradient into .grad (bf16 ones start from no .grad: runtime/zero_optimizer.h).
// At the end of the backward, with the activations freed, the logits and the vocabulary gradients
// still pending can be the peak instead: 2w for a tied embedding (its two parts before they are
// summed), + w when accumulating in fp32 (the sum, or the embedding's, before it is added in place).
// Full activation checkpointing: each layer's input (B·sbh) per layer, and the larger of the output
// terms and one layer recomputed in the backward (beside a pending lm-head gradient).
// Not counted: token ids and masks, rotary's cos/sin (s·d), gradients flowing through the backward
// (a few [s·b, i] or [b, a/t, s, s] at a time, after the logits' are freed: they decide only when V
// is small against s, up to 5% in the test), and, accumulating in fp32, a layer weight's new
// gradient before it is added (one [i, h] at a time). Uneven splits count as even ones (/t).
//
// Communication bytes one GPU sends per optimizer step (ring collectives over n ranks: an
// all-reduce sends 2(n-1)/n of the payload, a reduce-scatter or all-gather (n-1)/n; with a flat
// vector of x elements padded to n equal chunks: (n-1)·ceil(x/n) chunks of B bytes each way):
//   DP, over Ψ_t (the TP shard; dp ranks):
//     stage 0: all-reduce of gradients                          2(dp-1)·part(Ψ_t)·B
//     stage 1: reduce-scatter of gradients + all-gather params  2(dp-1)·part(Ψ_t)·B (once per step)
//     stage 2: the reduce-scatter runs in every micro-batch's backward (only the partition is kept;
//              DeepSpeed reduces each micro-step at stage 2): (GA + 1)(dp-1)·part(Ψ_t)·B
//     stage 3: forward all-gather + backward all-gather + reduce-scatter, every micro-batch:
//              3·GA·(dp-1)·part(Ψ)·B
//   TP (t ranks), per micro-batch (Megatron's f/g, what autotp's rewrite inserts; README "Collectives
//   per micro-batch"): per layer 2 forward all-reduces (after o_proj, down_proj) and 2 backward
//   (copy_to_tp before q/k/v and gate/up) of b·s·h·B each — 6 with activation checkpointing, whose
//   recomputed forward all-reduces again; plus the vocab-parallel embedding's forward all-reduce and
//   the lm-head input's backward all-reduce (b·s·h·B each) and the cross-entropy's 3 all-reduces of
//   one fp32 per token (12·b·s). Per GPU: 2(t-1)·payload/t; times GA per step.
// Where bytes go: TP groups are t consecutive ranks inside one node, so TP traffic is intra-node.
// DP groups are strided ranks; with more than one node every DP ring crosses nodes and runs at the
// pace of its inter-node hop (a ring moves one chunk per link per step, so the slowest link sets the
// time), so all DP bytes are counted inter-node then; on one node they are intra-node.
// comm_seconds = intra / intra_bw + inter / inter_bw: no overlap with compute or with each other.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "autotp/autotp.h"
#include "autotp/error.h"

namespace autotp {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string gib(int64_t bytes) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(1);
  o << static_cast<double>(bytes) / (1ull << 30) << " GiB";
  return o.str();
}

std::string gb(double bytes) {
  std::ostringstream o;
  o.setf(std::ios::fixed);
  o.precision(bytes < 1e9 ? 3 : 1);
  o << bytes / 1e9 << " GB";
  return o.str();
}

// Activation bytes of one GPU for one micro-batch, `ga` micro-batches per step (see the header comment).
int64_t activation_bytes(const ModelShape& m, const TrainingSpec& tr, int tp, int64_t ga) {
  const int64_t s = tr.seq, b = tr.micro_batch, t = tp, B = tr.bf16 ? 2 : 4, cast = tr.bf16 ? B : 0;
  const int64_t sb = s * b, h = m.hidden, a = m.heads, kv = m.kv_heads, i = m.intermediate;
  const int64_t d = m.head_dim > 0 ? m.head_dim : h / a, rows = ceil_div(m.vocab, t);  // vocabulary rows per rank
  const int64_t norm = (4 + 2 * B) * sb * h + 4 * sb;
  const int64_t attention = tr.flash_attention ? ceil_div(B * sb * (2 * a + 2 * kv) * d + 4 * a * sb, t)
                                               : ceil_div(4 * B * sb * a * d + (4 + cast) * a * s * s * b, t);
  const int64_t layer = 2 * norm + attention + ceil_div(4 * B * sb * i, t);
  const int64_t logits = B * sb * rows, w = B * rows * h;  // w: one vocabulary weight's gradient
  const bool accumulating = !tr.bf16 && ga > 1;  // later micro-batches add each new gradient into .grad
  const int64_t head_grad = m.tied || accumulating ? w : 0;
  const int64_t output = std::max((8 + cast) * sb * rows, B * sb * rows + head_grad + B * sb * h);
  const int64_t end = logits + (m.tied ? 2 * w : 0) + (accumulating ? w : 0) + B * sb * h;
  if (!tr.activation_checkpointing) return std::max(m.layers * layer + norm + logits + output, end);
  return std::max(m.layers * B * sb * h + norm + logits + std::max(output, head_grad + layer), end);
}

// Bytes one GPU sends in its TP group per micro-batch (ring all-reduce: 2(t-1)/t of the payload).
int64_t tp_bytes_per_micro_batch(const ModelShape& m, const TrainingSpec& tr, int tp) {
  if (tp == 1) return 0;
  const int64_t B = tr.bf16 ? 2 : 4, bsh = tr.micro_batch * tr.seq * m.hidden;
  const int64_t per_layer = tr.activation_checkpointing ? 6 : 4;
  const int64_t payload = (per_layer * m.layers + 2) * bsh * B + 3 * 4 * tr.micro_batch * tr.seq;
  return 2 * (tp - 1) * payload / tp;
}

// Bytes one GPU sends in its DP group per optimizer step for ZeRO `stage` over `shard` parameters.
int64_t dp_bytes_per_step(int64_t shard, int dp, int stage, int64_t ga, int64_t B) {
  if (dp == 1) return 0;
  const int64_t one_way = (dp - 1) * ceil_div(shard, dp) * B;  // one reduce-scatter or all-gather
  switch (stage) {
    case 0:
    case 1: return 2 * one_way;
    case 2: return (ga + 1) * one_way;
    default: return 3 * ga * one_way;
  }
}

StrategyPlan estimate(const ModelShape& m, const ClusterSpec& c, const TrainingSpec& tr, int tp, int stage, int64_t ga) {
  StrategyPlan s;
  s.tp = tp;
  s.dp = c.nodes * c.gpus_per_node / tp;
  s.zero_stage = stage;
  s.grad_accum = ga;
  s.name = tp > 1 ? "AutoTP(" + std::to_string(tp) + ")+ZeRO-" + std::to_string(stage)
                  : (stage == 0 ? "DDP" : "ZeRO-" + std::to_string(stage));
  const int64_t B = tr.bf16 ? 2 : 4, psi = m.parameters_per_rank(tp), part = ceil_div(psi, s.dp);
  s.params = B * (stage >= 3 ? part : psi);
  s.grads = B * (stage >= 2 ? part : psi);
  s.optimizer = 12 * (stage >= 1 ? part : psi);
  s.buffers = 4 * (stage >= 2 ? part : psi) + (stage >= 3 ? 2 * B * m.largest_unit : 0);
  s.activations = activation_bytes(m, tr, tp, ga);
  s.total = s.params + s.grads + s.optimizer + s.buffers + s.activations;
  s.fits = s.total <= c.gpu_memory;
  const int64_t tp_bytes = ga * tp_bytes_per_micro_batch(m, tr, tp);
  const int64_t dp_bytes = dp_bytes_per_step(psi, s.dp, stage, ga, B);
  s.intra_node_bytes = tp_bytes + (c.nodes > 1 ? 0 : dp_bytes);
  s.inter_node_bytes = c.nodes > 1 ? dp_bytes : 0;
  s.comm_seconds = s.intra_node_bytes / c.intra_node_bw + (s.inter_node_bytes > 0 ? s.inter_node_bytes / c.inter_node_bw : 0.0);
  return s;
}

// Fits first; ZeRO-3 only when nothing else fits (its gathers sit in every layer's forward and
// backward, and autotp does not run it); then the least inter-node traffic, the least communication
// time, the least memory.
void recommend(ClusterPlan& p) {
  const StrategyPlan* best = nullptr;
  int fitting = 0;
  auto better = [](const StrategyPlan& x, const StrategyPlan& y) {
    if (x.inter_node_bytes != y.inter_node_bytes) return x.inter_node_bytes < y.inter_node_bytes;
    if (x.comm_seconds != y.comm_seconds) return x.comm_seconds < y.comm_seconds;
    return x.total < y.total;
  };
  for (const auto& s : p.strategies) {
    if (!s.fits || s.zero_stage == 3) continue;
    ++fitting;
    if (!best || better(s, *best)) best = &s;
  }
  const double mem = static_cast<double>(p.cluster.gpu_memory);
  if (best) {
    p.recommended = best->name;
    std::ostringstream r;
    r << best->name << ": fits (" << gib(best->total) << " of " << gib(p.cluster.gpu_memory) << ", "
      << std::lround(100.0 * best->total / mem) << "%) and of the " << fitting << " strategies that fit (ZeRO-3 aside) ";
    if (p.cluster.nodes > 1)
      r << "sends the least over the network: " << gb(best->inter_node_bytes) << " inter-node per GPU per step";
    else
      r << "spends the least time communicating: " << gb(best->intra_node_bytes) << " per GPU per step inside the node";
    r << ", about " << std::setprecision(3) << best->comm_seconds << " s at the given bandwidths";
    if (best->total > 0.9 * mem) r << "; it leaves under 10% for the CUDA context and fragmentation";
    if (!best->autotp_runs()) r << " (DeepSpeed runs it; autotp runs stages 0 and 1)";
    p.reason = r.str();
    return;
  }
  for (const auto& s : p.strategies)
    if (s.fits && (!best || s.total < best->total)) best = &s;
  if (best) {
    p.recommended = best->name;
    p.reason = best->name + ": only ZeRO-3 fits (" + gib(best->total) + " of " + gib(p.cluster.gpu_memory) +
               "): it partitions the parameters too, at the price of gathering them in every micro-batch's forward and "
               "backward (" + gb(static_cast<double>(best->inter_node_bytes + best->intra_node_bytes)) +
               " per GPU per step); DeepSpeed runs it, autotp does not";
    return;
  }
  const StrategyPlan* least = nullptr;
  for (const auto& s : p.strategies)
    if (!least || s.total < least->total) least = &s;
  std::ostringstream r;
  r << "nothing fits in " << gib(p.cluster.gpu_memory) << " per GPU";
  if (least) r << ": the smallest is " << least->name << " at " << gib(least->total);
  r << "; try " << (p.training.activation_checkpointing ? "" : "--activation-checkpointing, ")
    << "a smaller --micro-batch or --seq, more GPUs (--nodes) or GPUs with more memory";
  p.reason = r.str();
}

}  // namespace

int64_t ModelShape::parameters_per_rank(int tp) const {
  for (const auto& [t, n] : per_rank)
    if (t == tp) return n;
  throw Error(name + ": no parameter count for tp=" + std::to_string(tp));
}

const StrategyPlan& ClusterPlan::strategy(const std::string& want) const {
  std::string names;
  for (const auto& s : strategies) {
    if (lower(s.name) == lower(want)) return s;
    names += (names.empty() ? "" : ", ") + s.name;
  }
  throw Error("--strategy: no strategy '" + want + "' in this plan; strategies: " + names);
}

ClusterPlan plan_cluster(const ModelShape& m, const ClusterSpec& c, const TrainingSpec& tr) {
  if (c.gpus_per_node < 1) throw Error("--gpus-per-node must be at least 1");
  if (c.nodes < 1) throw Error("--nodes must be at least 1");
  if (c.gpu_memory < 1) throw Error("--gpu-memory is required (e.g. --gpu-memory 80GiB) unless --cluster gives it");
  if (c.intra_node_bw <= 0 || (c.nodes > 1 && c.inter_node_bw <= 0))
    throw Error("--intra-node-bw and --inter-node-bw (or --cluster) are required, e.g. --intra-node-bw 450GB/s --inter-node-bw 50GB/s");
  if (tr.seq < 1) throw Error("--seq must be at least 1");
  if (tr.micro_batch < 1) throw Error("--micro-batch must be at least 1");
  if (tr.global_batch < 1) throw Error("--global-batch must be at least 1");
  ClusterPlan p{m, c, tr, {}, {}, {}, {}};
  std::vector<int> tps{1};
  for (int t : m.valid_tp)
    if (t > 1 && c.gpus_per_node % t == 0) tps.push_back(t);
  for (int t : tps) {
    const int64_t dp = static_cast<int64_t>(c.nodes) * c.gpus_per_node / t;
    const bool divides = tr.global_batch % (tr.micro_batch * dp) == 0;
    const int64_t ga = divides ? tr.global_batch / (tr.micro_batch * dp) : 0;
    for (int stage : t == 1 ? std::vector<int>{0, 1, 2, 3} : std::vector<int>{1, 2}) {
      if (!divides) {
        const std::string name = t > 1 ? "AutoTP(" + std::to_string(t) + ")+ZeRO-" + std::to_string(stage)
                                       : (stage == 0 ? "DDP" : "ZeRO-" + std::to_string(stage));
        p.skipped.push_back(name + ": global batch " + std::to_string(tr.global_batch) + " is not a multiple of micro-batch " +
                            std::to_string(tr.micro_batch) + " x dp " + std::to_string(dp));
        continue;
      }
      p.strategies.push_back(estimate(m, c, tr, t, stage, ga));
    }
  }
  if (p.strategies.empty())
    throw Error("--global-batch " + std::to_string(tr.global_batch) + " is not a multiple of --micro-batch " +
                std::to_string(tr.micro_batch) + " x dp for any strategy (dp = nodes x GPUs / tp)");
  recommend(p);
  return p;
}

std::vector<ClusterSpec> cluster_presets() {
  const double GB = 1e9;
  return {
      {"h100-nvlink-ib400", 8, 1, 80ll << 30, 450 * GB, 50 * GB,
       "NVIDIA DGX H100 datasheet: 8x H100 SXM5 80 GB, NVLink 4 at 900 GB/s bidirectional per GPU (450 GB/s each way), "
       "8x ConnectX-7 400 Gb/s InfiniBand, one per GPU (50 GB/s per GPU)"},
      {"a100-nvlink-ib200", 8, 1, 80ll << 30, 300 * GB, 25 * GB,
       "NVIDIA DGX A100 datasheet: 8x A100 SXM4 80 GB, NVLink 3 at 600 GB/s bidirectional per GPU (300 GB/s each way), "
       "8x ConnectX-6 200 Gb/s HDR InfiniBand, one per GPU (25 GB/s per GPU)"},
      {"rtx4090-pcie-eth", 8, 1, 24ll << 30, 25 * GB, 25 * GB / 8 / 8,
       "8x GeForce RTX 4090 24 GB on PCIe 4.0 x16 (32 GB/s theoretical, ~25 GB/s achieved; no NVLink, and GeForce has no "
       "peer-to-peer, so traffic goes through host memory), one 25 GbE port per node shared by 8 GPUs (0.39 GB/s per GPU)"},
  };
}

ClusterSpec cluster_preset(const std::string& name) {
  std::string names;
  for (const auto& c : cluster_presets()) {
    if (c.name == lower(name)) return c;
    names += (names.empty() ? "" : ", ") + c.name;
  }
  throw Error("--cluster: unknown preset '" + name + "'; presets: " + names);
}

int64_t parse_memory_flag(const std::string& flag, const std::string& text) {
  try {
    const int64_t v = parse_size(text);
    if (v >= 1) return v;
  } catch (const Error&) {
  }
  throw Error(flag + " expects a size such as 80GiB, 24GB or a number of bytes, got '" + text + "'");
}

double parse_bandwidth_flag(const std::string& flag, const std::string& text) {
  // <number><K|M|G|T>[i](B|b)/s: B bytes, b bits; decimal prefixes are 10^3, binary ones 2^10.
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  std::string unit = text.substr(used);
  double mult = 0;
  if (used > 0 && unit.size() >= 3 && unit.compare(unit.size() - 2, 2, "/s") == 0) {
    unit = unit.substr(0, unit.size() - 2);
    const char last = unit.back();
    std::string prefix = unit.substr(0, unit.size() - 1);
    const bool binary = prefix.size() == 2 && prefix[1] == 'i';
    const size_t k = prefix.empty() ? std::string::npos : std::string("KMGT").find(prefix[0]);
    const bool known = prefix.empty() || k != std::string::npos;
    const double power = prefix.empty() ? 0.0 : static_cast<double>(k + 1);
    if ((last == 'B' || last == 'b') && (prefix.size() <= 1 || binary) && known)
      mult = std::pow(binary ? 1024.0 : 1000.0, power) / (last == 'b' ? 8.0 : 1.0);
  }
  if (mult == 0 || !(v > 0))
    throw Error(flag + " expects a bandwidth such as 450GB/s (bytes) or 400Gb/s (bits), got '" + text + "'");
  return v * mult;
}

}  // namespace autotp
