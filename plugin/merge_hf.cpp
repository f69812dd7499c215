// `autotp merge`: rank archives -> a Hugging Face folder (autotp/autotp.h, merge_to_hf).
//
// The tensors come from merge_ranks (the layout each rank archive carries); the side files
// (config.json, tokenizer, ...) from the string attribute autotp_hf_files that
// scripts/export_hf.py puts on the traced model, which rewrite() and training carry along.
// Sharding follows transformers' save_pretrained: tensors in order, a new file when the next one
// would overflow max_shard_bytes, names model-0000k-of-0000n.safetensors and an index.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "autotp/autotp.h"
#include "autotp/passes.h"
#include "runtime/checkpoint.h"
#include "runtime/safetensors.h"

namespace autotp {
namespace fs = std::filesystem;
namespace {

std::string rank_file(const fs::path& dir, int r) { return (dir / ("rank" + std::to_string(r) + ".pt")).string(); }

// SRC itself when it holds rank0.pt, else the subfolder its `latest` file names (a checkpoint root).
fs::path ranks_dir_of(const std::string& source) {
  if (!fs::exists(source)) throw Error(source + ": no such directory");
  if (!fs::is_directory(source)) throw Error(source + ": not a directory; give the folder that holds rank0.pt, rank1.pt, ...");
  const fs::path dir(source);
  if (fs::exists(rank_file(dir, 0))) return dir;
  if (const std::optional<std::string> latest = latest_of(source)) {
    const std::string& name = *latest;
    const fs::path sub = dir / name;
    if (name.empty() || !fs::is_directory(sub))
      throw Error((dir / "latest").string() + " names '" + name + "', which is not a folder in " + source);
    if (!fs::exists(rank_file(sub, 0))) throw Error(sub.string() + " (named by " + (dir / "latest").string() + ") holds no rank0.pt");
    return sub;
  }
  throw Error(source + ": no rank0.pt and no `latest` file; give the folder autotp rewrite --out or autotp train --out wrote");
}

std::string torch_dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    default: return std::string(c10::toString(t));
  }
}

std::string base64_decode(const std::string& in, const std::string& label) {
  auto value = [&](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    throw Error(label + ": invalid base64 character");
  };
  std::string out;
  int bits = 0, acc = 0;
  for (char c : in) {
    if (c == '=' || c == '\n' || c == '\r') continue;
    acc = (acc << 6) | value(c);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) throw Error(path.string() + ": cannot write");
}

// Files a previous merge into the same folder may have left that from_pretrained would pick up
// instead of (or beside) the new ones.
void remove_stale_weights(const fs::path& out) {
  static const std::regex shard(R"(model-\d{5}-of-\d{5}\.safetensors)");
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (name == "model.safetensors" || name == "model.safetensors.index.json" || std::regex_match(name, shard)) fs::remove(e.path());
  }
}

}  // namespace

int64_t parse_size(const std::string& text) {
  static const std::regex re(R"(\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?i?B)?\s*)", std::regex::icase);
  std::smatch m;
  if (!std::regex_match(text, m, re))
    throw Error("--max-shard-size expects a size such as 5GB, 500MB, 2GiB or a number of bytes, got '" + text + "'");
  std::string unit = m[2].str();
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const bool binary = unit.size() == 3;  // KiB, MiB, GiB, TiB
  const double base = binary ? 1024.0 : 1000.0;
  double mult = 1;
  if (!unit.empty() && unit != "B") mult = std::pow(base, std::string("KMGT").find(unit[0]) + 1);
  const double bytes = std::stod(m[1].str()) * mult;
  if (bytes < 1) throw Error("--max-shard-size must be at least one byte, got '" + text + "'");
  return static_cast<int64_t>(bytes);
}

MergeReport merge_to_hf(const MergeOptions& o) {
  at::ScalarType cast = at::kFloat;
  const bool do_cast = !o.dtype.empty();
  if (o.dtype == "bf16") cast = at::kBFloat16;
  else if (do_cast && o.dtype != "fp32") throw Error("--dtype must be fp32 or bf16, got '" + o.dtype + "'");
  if (o.out.empty()) throw Error("merge: --out HF_DIR is required");
  if (fs::exists(o.out) && !fs::is_directory(o.out)) throw Error(o.out + ": exists and is not a directory; give a folder for the Hugging Face files");

  MergeReport rep;
  const fs::path dir = ranks_dir_of(o.source);
  rep.ranks_dir = dir.string();
  std::vector<torch::jit::Module> ranks{load_model(rank_file(dir, 0))};
  const RewriteInfo info0 = rewrite_info(ranks[0]);
  if (info0.tp == 0) throw Error(rank_file(dir, 0) + ": not a rank archive written by autotp rewrite or autotp train");
  rep.tp = info0.tp;
  if (fs::exists(rank_file(dir, rep.tp)))
    throw Error(rep.ranks_dir + ": mixed tps: rank0.pt is from a tp=" + std::to_string(rep.tp) + " rewrite but rank" +
                std::to_string(rep.tp) + ".pt is there too; keep one run's archives per folder");
  for (int r = 1; r < rep.tp; ++r) {
    if (!fs::exists(rank_file(dir, r)))
      throw Error(rank_file(dir, r) + " is missing: rank0.pt is from a tp=" + std::to_string(rep.tp) + " rewrite, which needs rank0.pt..rank" +
                  std::to_string(rep.tp - 1) + ".pt");
    ranks.push_back(load_model(rank_file(dir, r)));
    const RewriteInfo info = rewrite_info(ranks.back());
    if (info.tp != rep.tp)
      throw Error(rep.ranks_dir + ": mixed tps: rank0.pt is from a tp=" + std::to_string(rep.tp) + " rewrite but rank" + std::to_string(r) +
                  ".pt from a tp=" + std::to_string(info.tp) + " one");
    if (info.tp_rank != r) throw Error(rank_file(dir, r) + " holds tp rank " + std::to_string(info.tp_rank) + ", not " + std::to_string(r));
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  try {
    tensors = merge_ranks(ranks);
  } catch (const Error& e) {
    throw Error(rep.ranks_dir + ": " + e.what());
  }
  ranks.resize(1);  // rank 0 stays for its side files; the others' memory goes
  std::string written_dtype;
  for (auto& [name, t] : tensors) {
    if (do_cast && t.is_floating_point()) t = t.to(cast);
    if (written_dtype.empty() && t.is_floating_point()) written_dtype = torch_dtype_name(t.scalar_type());
    rep.bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  rep.tensors = static_cast<int64_t>(tensors.size());

  fs::create_directories(o.out);
  remove_stale_weights(o.out);
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> shards(1);
  int64_t in_shard = 0;
  for (auto& e : tensors) {
    const int64_t b = e.second.numel() * static_cast<int64_t>(e.second.element_size());
    if (in_shard > 0 && in_shard + b > o.max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(std::move(e));
    in_shard += b;
  }
  const std::map<std::string, std::string> meta{{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors((fs::path(o.out) / "model.safetensors").string(), shards[0], meta);
    rep.files.push_back("model.safetensors");
  } else {
    nlohmann::json index{{"metadata", {{"total_size", rep.bytes}}}, {"weight_map", nlohmann::json::object()}};
    char name[64];
    for (size_t k = 0; k < shards.size(); ++k) {
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k + 1, shards.size());
      write_safetensors((fs::path(o.out) / name).string(), shards[k], meta);
      for (const auto& e : shards[k]) index["weight_map"][e.first] = name;
      rep.files.push_back(name);
      shards[k].clear();
    }
    write_text(fs::path(o.out) / "model.safetensors.index.json", index.dump(2) + "\n");
    rep.files.push_back("model.safetensors.index.json");
  }

  if (!ranks[0].hasattr("autotp_hf_files")) return rep;  // an archive exported without them: weights only
  const std::string label = rank_file(dir, 0) + ": autotp_hf_files";
  nlohmann::json files;
  try {
    files = nlohmann::json::parse(ranks[0].attr("autotp_hf_files").toStringRef());
  } catch (const nlohmann::json::exception&) {
    throw Error(label + " is not JSON; export the model again with scripts/export_hf.py");
  }
  for (const auto& [fname, content] : files.items()) {
    if (fname.find('/') != std::string::npos || fname.empty() || fname[0] == '.')
      throw Error(label + ": refusing the file name '" + fname + "' (a plain name inside the folder expected)");
    std::string text = content.get<std::string>();
    if (text.rfind("base64:", 0) == 0) text = base64_decode(text.substr(7), label + " " + fname);
    if (fname == "config.json" && !written_dtype.empty()) {  // says what the weights now are
      auto cfg = nlohmann::ordered_json::parse(text);
      cfg["torch_dtype"] = written_dtype;
      text = cfg.dump(2) + "\n";
    }
    write_text(fs::path(o.out) / fname, text);
    rep.files.push_back(fname);
  }
  return rep;
}

}  // namespace autotp
