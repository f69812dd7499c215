// Split families: which column linears are cut together, in which whole units, at a given tp.
//
// Preconditions: a ShardingStructure from propagate() (tp-independent).
// Method: union the column linears whose splits meet — the ones a row linear contracts, the
// origins of a size rescaled on a split dim, of a norm weight split with features, of a partial
// sum — and collect every extent each family splits. Rank r's slice of any of them is
// extent / units × units[r]: proportional, so a view [b, s, H·D] -> [b, s, H, D] still agrees on
// every rank, and a fused projection's segments each keep their own proportional slice. The unit
// is the gcd of the family's extents: for attention that is the head (MHA) or the kv group (GQA:
// a rank's q heads stay with the kv head they read, as DeepSpeed's AutoTP cuts them); for a family
// of plain features (the MLP) a block of features, as large as 64 while tp ranks still get one.
// Vocab-split linears and embeddings are left out: the vocabulary is padded to a multiple of tp.
#include <algorithm>
#include <numeric>

#include "autotp/error.h"
#include "passes/analyze.h"

namespace autotp {
namespace {

using Mode = ShardingStructure::Mode;

struct UnionFind {
  std::vector<int> up;
  explicit UnionFind(size_t n) : up(n) { std::iota(up.begin(), up.end(), 0); }
  int find(int x) { return up[x] == x ? x : up[x] = find(up[x]); }
  void join(int a, int b) { up[find(a)] = find(b); }
  void join(const std::vector<int>& xs) {
    for (size_t i = 1; i < xs.size(); ++i) join(xs[0], xs[i]);
  }
};

// Plain features: every extent equals the gcd (no heads, no sizes that group them).
bool plain_features(const Family& f) {
  return std::all_of(f.extents.begin(), f.extents.end(), [&](int64_t e) { return e == f.gcd; });
}

bool even(const Family& f, int tp) {
  return std::all_of(f.extents.begin(), f.extents.end(), [&](int64_t e) { return e % tp == 0; });
}

// The feature block of a plain-feature family cut unevenly: the largest power of two up to 64
// (DeepSpeed's grain; GEMM-friendly) that divides the features and leaves at least 4 blocks per
// rank, so ranks differ by at most a quarter; failing that, at least one block per rank.
int64_t feature_block(const Family& f, int tp) {
  for (int64_t per_rank : {4, 1})
    for (int64_t b = 64; b > 1; b /= 2)
      if (f.gcd % b == 0 && f.gcd / b >= per_rank * tp) return b;
  return 1;
}

}  // namespace

int64_t Family::units(int tp) const { return plain_features(*this) && !even(*this, tp) ? gcd / feature_block(*this, tp) : gcd; }

bool Family::fits(int tp) const { return even(*this, tp) || units(tp) >= tp || replicas(tp) > 1; }

// Fewer kv heads than tp, tp a multiple of them and dividing every q-side extent: each kv head is
// held by tp / kv ranks (kv_replication.cpp).
// The q side is cut in tp even parts, or, where tp does not divide it, in whole q heads: each kv
// head's n_rep q heads over its m holders, the first n_rep % m taking one more (Qwen2.5-7B at tp 8:
// 7 q heads per kv head, 4 + 3).
int64_t Family::replicas(int tp) const {
  if (!kv || even(*this, tp) || units(tp) >= tp || tp % gcd != 0 || heads < tp) return 1;
  for (int64_t e : kv->q_extents)
    if (e % tp != 0 && e % heads != 0) return 1;
  return tp / gcd;
}

std::vector<int64_t> Family::q_per_rank(int tp) const {
  const int64_t m = replicas(tp);
  if (m == 1 || heads % tp == 0) return {};
  const int64_t n_rep = heads / gcd;
  std::vector<int64_t> out;
  for (int64_t r = 0; r < tp; ++r) out.push_back(n_rep / m + (r % m < n_rep % m ? 1 : 0));
  return out;
}

std::vector<int64_t> Family::per_rank(int tp) const {
  if (replicas(tp) > 1) return q_per_rank(tp);
  if (even(*this, tp)) return {};
  const int64_t n = units(tp);
  if (n < tp) return {};
  std::vector<int64_t> out(static_cast<size_t>(tp), n / tp);
  for (int64_t r = 0; r < n % tp; ++r) ++out[static_cast<size_t>(r)];
  return out;
}

std::string Family::unit_name(int tp) const {
  if (plain_features(*this)) {
    const int64_t block = even(*this, tp) ? 1 : feature_block(*this, tp);
    return block == 1 ? "feature" : std::to_string(block) + " features";
  }
  if (heads > 0 && gcd > 0 && heads % gcd == 0 && kv_heads % gcd == 0) {
    const int64_t q = heads / gcd, kv = kv_heads / gcd;
    if (kv_heads == heads) return q == 1 ? "head" : std::to_string(q) + " heads";
    return "kv group: " + std::to_string(q) + " q heads, " + std::to_string(kv) + " kv head" + (kv == 1 ? "" : "s");
  }
  return std::to_string(extents.empty() ? 0 : *std::max_element(extents.begin(), extents.end()) / std::max<int64_t>(gcd, 1)) +
         " features";
}

const Family* Families::of(const std::vector<int>& origins) const {
  for (int o : origins) {
    auto it = of_linear.find(o);
    if (it != of_linear.end()) return &list[static_cast<size_t>(it->second)];
  }
  return nullptr;
}

Families split_families(const ModelGraph& mg, const ShardingStructure& s) {
  const auto& L = s.linears;
  UnionFind uf(L.size());
  auto columns = [&](const std::vector<int>& xs) {
    std::vector<int> out;
    for (int x : xs)
      if (L[x].mode == Mode::Column && !L[x].logits) out.push_back(x);
    return out;
  };
  for (const auto& l : L)
    if (l.mode == Mode::Row) uf.join(columns(l.fed_by));
  for (const auto& r : s.rescales) uf.join(columns(r.origins));
  for (const auto& p : s.param_splits) uf.join(columns(p.origins));
  for (const auto& r : s.reduces) uf.join(columns(r.origins));

  Families out;
  std::map<int, int> root_to_family;
  auto family_of = [&](int linear) -> Family* {
    if (linear < 0 || L[linear].mode != Mode::Column || L[linear].logits) return nullptr;
    const int root = uf.find(linear);
    auto [it, fresh] = root_to_family.emplace(root, static_cast<int>(out.list.size()));
    if (fresh) out.list.emplace_back();
    out.of_linear[linear] = it->second;
    return &out.list[static_cast<size_t>(it->second)];
  };
  auto first_family = [&](const std::vector<int>& origins) -> Family* {
    for (int o : origins)
      if (Family* f = family_of(o)) return f;
    return nullptr;
  };
  auto extent = [&](int tensor, int dim) { return mg.tensors[static_cast<size_t>(tensor)].tensor.size(dim); };

  for (size_t i = 0; i < L.size(); ++i) {
    const auto& l = L[i];
    Family* f = family_of(static_cast<int>(i));
    if (!f) continue;
    f->columns.push_back(static_cast<int>(i));
    if (l.cuts.size() > 2) {
      for (auto it = std::next(l.cuts.begin()); it != l.cuts.end(); ++it) f->extents.push_back(*it - *std::prev(it));
    } else {
      f->extents.push_back(extent(l.weight, l.column_dim));
    }
  }
  for (size_t i = 0; i < L.size(); ++i) {
    const auto& l = L[i];
    if (l.mode != Mode::Row) continue;
    if (Family* f = first_family(l.fed_by)) {
      f->rows.push_back(static_cast<int>(i));
      f->extents.push_back(extent(l.weight, l.row_dim));
    }
  }
  for (const auto& c : s.constraints) {
    if (c.linear >= 0 && L[c.linear].logits) continue;
    if (Family* f = family_of(c.linear)) f->extents.push_back(c.extent);
    else if (c.linear < 0) out.loose.push_back(c.extent);
  }
  for (const auto& r : s.rescales) {
    if (Family* f = first_family(r.origins)) f->extents.push_back(std::abs(r.from));
    else if (r.origins.empty()) out.loose.push_back(std::abs(r.from));
  }
  for (const auto& p : s.param_splits)
    if (Family* f = first_family(p.origins)) f->extents.push_back(extent(p.tensor, p.dim));

  for (auto& f : out.list) {
    for (int64_t e : f.extents) f.gcd = std::gcd(f.gcd, e);
    for (int c : f.columns) {
      if (L[c].heads == 0) continue;
      f.heads = std::max(f.heads, L[c].heads);
      f.kv_heads = f.kv_heads ? std::min(f.kv_heads, L[c].heads) : L[c].heads;
    }
    f.label = f.heads > 0 ? "attention heads" : "intermediate size";
    analyze_kv_replication(mg, s, f);
  }
  return out;
}

ShardingStructure structure_for_tp(const ModelGraph& mg, const ProbeValues& values, int tp, ForcedReplicated forced) {
  ShardingStructure s = propagate(mg, values, forced);
  std::vector<Family> kept_whole;
  for (;;) {
    const Families fams = split_families(mg, s);
    bool more = false;
    for (const auto& f : fams.list) {
      if (f.fits(tp)) continue;
      kept_whole.push_back(f);
      std::string why = "replicated: tp=" + std::to_string(tp) + " is more than the " + std::to_string(f.units(tp)) +
                        " whole units its " + f.label + " split into (each " + f.unit_name(tp) + ")";
      if (!f.kv_refused.empty()) why += "; its kv heads cannot be held by several ranks: " + f.kv_refused;
      else if (f.kv) why += "; kv heads on several ranks need tp a multiple of " + std::to_string(f.gcd) + " that divides the q heads";
      for (int c : f.columns) more |= forced.emplace(s.linears[c].node, why).second;
      for (int r : f.rows) more |= forced.emplace(s.linears[r].node, why).second;  // else tried column-parallel, then backed off
    }
    if (!more) {
      s.kept_whole = std::move(kept_whole);
      return s;
    }
    s = propagate(mg, values, forced);
  }
}

}  // namespace autotp
