// The model shapes `autotp plan` needs, from a Hugging Face config.json or from a TorchScript archive.
//
// config.json, Llama-style count (LlamaConfig's keys; head_dim when given, else hidden/heads):
//   embedding V·h; per layer q h·(a·d), k and v h·(kv·d) each, o (a·d)·h, MLP 3·h·i (gate, up,
//   down), 2 norms h; final norm h; lm_head V·h unless tie_word_embeddings (LlamaConfig's default:
//   false). No biases. Under TP t the attention and MLP weights split by t, the embedding and lm-head
//   by vocabulary rows padded to a multiple of t (as autotp pads), the norms stay whole; a t that
//   does not divide the kv groups or the MLP features cuts them unevenly in whole units
//   (passes/families.cpp); Ψ_t is rank 0's, the largest. A t that is a multiple of the kv heads and
//   divides the q heads holds each kv head on t / kv ranks; another t larger than the kv groups, at
//   which autotp keeps attention whole, is not offered: the estimates assume every layer split.
// A TorchScript archive: the analysis (passes/) plans it once per valid tp; its bytes per rank are
// exact for what autotp would run, vocabulary padding included. The shapes the activation formula
// needs are read off the plan: heads, kv heads, intermediate size and vocabulary from its split
// constraints, head_dim from the projection the heads constraint names, hidden from the embedding's
// columns, layers from its row-parallel linears (two per layer: o_proj and down_proj).
#include <algorithm>
#include <fstream>
#include <numeric>
#include <sstream>

#include <nlohmann/json.hpp>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "passes/analyze.h"

namespace autotp {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t positive(const nlohmann::json& j, const std::string& key, const std::string& label) {
  if (!j.contains(key)) throw Error(label + ": " + key + " is missing; autotp plan needs a Llama-style config.json");
  const auto& v = j.at(key);
  if (!v.is_number_integer() || v.get<int64_t>() < 1)
    throw Error(label + ": " + key + " must be a positive integer, got " + v.dump());
  return v.get<int64_t>();
}

}  // namespace

ModelShape shape_from_hf_config_text(const std::string& text, const std::string& label) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(label + ": not JSON (" + std::string(e.what()) + ")");
  }
  if (!j.is_object()) throw Error(label + ": expected a JSON object (a Hugging Face config.json)");
  ModelShape m;
  m.name = label;
  m.source = "hf-config";
  m.hidden = positive(j, "hidden_size", label);
  m.intermediate = positive(j, "intermediate_size", label);
  m.layers = positive(j, "num_hidden_layers", label);
  m.heads = positive(j, "num_attention_heads", label);
  m.kv_heads = j.contains("num_key_value_heads") && !j.at("num_key_value_heads").is_null()
                   ? positive(j, "num_key_value_heads", label) : m.heads;
  m.vocab = positive(j, "vocab_size", label);
  m.tied = j.value("tie_word_embeddings", false);
  const int64_t head_dim = j.contains("head_dim") && !j.at("head_dim").is_null() ? positive(j, "head_dim", label)
                                                                                  : m.hidden / m.heads;
  if (!j.contains("head_dim") && m.hidden % m.heads != 0)
    throw Error(label + ": hidden_size " + std::to_string(m.hidden) + " is not a multiple of num_attention_heads " +
                std::to_string(m.heads) + " and there is no head_dim");
  m.head_dim = head_dim;
  if (m.heads % m.kv_heads != 0)
    throw Error(label + ": num_attention_heads " + std::to_string(m.heads) + " is not a multiple of num_key_value_heads " +
                std::to_string(m.kv_heads));
  const int64_t h = m.hidden, split_layer = 2 * h * m.heads * head_dim + 2 * h * m.kv_heads * head_dim + 3 * h * m.intermediate;
  const int64_t norms = 2 * h * m.layers + h, vocab_tensors = m.tied ? 1 : 2;
  m.parameters = m.layers * split_layer + norms + vocab_tensors * m.vocab * h;
  m.largest_unit = std::max(split_layer + 2 * h, m.vocab * h);
  // The families the analysis finds in a traced Llama (passes/families.cpp): attention cut in kv
  // groups, the MLP in blocks of features; each uneven when tp does not divide it, kept whole when
  // tp exceeds its units. Rank 0 holds the most; Ψ_tp is its count.
  Family attention, mlp;
  attention.extents = {m.heads * head_dim, m.kv_heads * head_dim, m.heads, m.kv_heads};
  mlp.extents = {m.intermediate};
  for (Family* f : {&attention, &mlp})
    for (int64_t e : f->extents) f->gcd = std::gcd(f->gcd, e);
  // A Llama repeats its kv heads (repeat_kv), so at a tp that is a multiple of them and divides the q
  // heads each kv head is held by tp / kv ranks (passes/kv_replication.cpp).
  if (m.kv_heads < m.heads && attention.gcd == m.kv_heads) {
    attention.heads = m.heads;
    attention.kv_heads = m.kv_heads;
    attention.kv = KvReplication{};
    attention.kv->q_extents = {m.heads * head_dim, m.heads};
  }
  auto rank0 = [&](const Family& f, int t, int64_t params) {
    if (f.replicas(t) > 1) {  // q and o cut t ways (rank 0's q heads), k and v in kv-head parts
      const auto q = f.q_per_rank(t);
      return 2 * h * head_dim * (q.empty() ? m.heads / t : q[0]) + 2 * h * m.kv_heads * head_dim / f.gcd;
    }
    if (!f.fits(t)) return params;
    const auto cut = f.per_rank(t);
    return cut.empty() ? params / t : params / f.units(t) * cut[0];
  };
  const int64_t even = std::gcd(attention.gcd, mlp.gcd);
  for (int t = 1; t <= 8 || t <= even; ++t) {
    if (t > 8 && even % t) continue;
    if (!attention.fits(t) || !mlp.fits(t)) continue;  // the estimates assume every layer split (see shape_from_archive)
    m.valid_tp.push_back(t);
    const int64_t attn = 2 * h * m.heads * head_dim + 2 * h * m.kv_heads * head_dim, ffn = 3 * h * m.intermediate;
    m.per_rank.push_back({t, m.layers * (rank0(attention, t, attn) + rank0(mlp, t, ffn)) + norms + vocab_tensors * ceil_div(m.vocab, t) * h});
  }
  return m;
}

ModelShape shape_from_hf_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot read the config (--hf-config expects a Hugging Face config.json)");
  std::stringstream text;
  text << in.rdbuf();
  return shape_from_hf_config_text(text.str(), path);
}

ModelShape shape_from_archive(const std::string& path, int max_tp) {
  ModelGraph mg = load_model_graph(path);
  auto values = probe(mg, example_inputs(mg));
  const TpPlan one = make_plan(mg, structure_for_tp(mg, values, 1), 1);
  ModelShape m;
  m.name = path;
  m.source = "torchscript";
  m.layers = one.blocks / 2;
  for (const auto& c : one.constraints) {
    int64_t* field = c.dimension == "attention heads"     ? &m.heads
                     : c.dimension == "kv heads"          ? &m.kv_heads
                     : c.dimension == "intermediate size" ? &m.intermediate
                     : c.dimension == "vocabulary"        ? &m.vocab
                                                          : nullptr;
    if (field) *field = std::max(*field, c.extent);
  }
  int64_t vocab_tensors = 0;
  for (const auto& p : one.parameters) {
    int64_t numel = 1;
    for (int64_t d : p.shape) numel *= d;
    m.parameters += numel;
    if (p.placement == Placement::Vocab) {
      ++vocab_tensors;
      m.vocab = std::max(m.vocab, p.shape.at(0));
      if (p.shape.size() == 2) m.hidden = p.shape[1];
    }
  }
  m.tied = vocab_tensors == 1;
  if (m.kv_heads == 0) m.kv_heads = m.heads;
  // head_dim: the width of the projection the "attention heads" constraint names (its q segment when
  // fused) over the heads; hidden / heads when there is none.
  for (const auto& c : one.constraints)
    for (const auto& p : one.parameters)
      if (c.dimension == "attention heads" && p.name == c.where && p.split_dim >= 0 && m.heads > 0 && m.head_dim == 0)
        m.head_dim = (p.segments.empty() ? p.shape.at(p.split_dim) : p.segments[0]) / m.heads;
  if (m.heads == 0 || m.hidden == 0 || m.layers == 0 || m.vocab == 0)
    throw Error(path + ": the analysis splits no attention heads or vocabulary here, so the shapes the activation estimate "
                       "needs are unknown; give the model's config instead: autotp plan --hf-config config.json ...");
  const int64_t embedding = m.vocab * m.hidden;
  m.largest_unit = std::max((m.parameters - vocab_tensors * embedding) / m.layers, embedding);
  for (int t : one.valid_tp) {
    if (t > max_tp) continue;
    const TpPlan plan = t == 1 ? one : make_plan(mg, structure_for_tp(mg, values, t), t);
    // A tp that keeps a family whole is left out: the activation and TP-traffic estimates assume
    // attention and MLP split in every layer (autotp still runs it; inspect lists it with a note).
    if (std::any_of(plan.families.begin(), plan.families.end(), [](const SplitFamily& f) { return f.whole; })) continue;
    m.valid_tp.push_back(t);
    int64_t per_rank = 0;
    for (const auto& p : plan.parameters) {
      int64_t numel = 1;
      for (int64_t d : p.shape) numel *= d;
      if (numel > 0) per_rank += p.bytes_per_rank / (p.bytes / numel);  // elements, whatever the archive's dtype
    }
    m.per_rank.push_back({t, per_rank});
  }
  return m;
}

}  // namespace autotp
