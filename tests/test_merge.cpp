// The trained model back out as a Hugging Face checkpoint: safetensors against the Python package
// in both directions and its one-line errors; merge_ranks bit-exact against the original parameters
// for every fixture; `autotp merge` loaded by transformers (tied, untied, sharded, padded vocabulary,
// a checkpoint root, bf16, the SmolLM2 tokenizer); scripts/export_hf.py round trip; CLI errors.
// The Python side is tests/merge/hf_check.py, run with the venv's python.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <ATen/ATen.h>

#include "autotp/autotp.h"
#include "autotp/passes.h"
#include "fixtures.h"
#include "passes/analyze.h"
#include "passes/model_graph.h"
#include "passes/shape_probe.h"
#include "ranks.h"
#include "runtime/safetensors.h"
#include "runtime/token_data.h"

using autotp_test::fixture;
using autotp_test::run_command;
namespace fs = std::filesystem;

namespace {

const std::string kPython = std::string(AUTOTP_VENV_BIN) + "/python ";
const std::string kCheck = kPython + AUTOTP_SOURCE_DIR + "/tests/merge/hf_check.py ";
const std::string kCli = std::string(AUTOTP_CLI) + " ";

// A fresh folder private to this test process.
std::string temp_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "autotp_merge_" + name + "_" + std::to_string(getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// The tensors hf_check.py's expected_tensors() makes, by the same formulas.
std::vector<std::pair<std::string, at::Tensor>> expected_tensors() {
  const at::Tensor base = at::arange(24, at::kDouble).reshape({2, 3, 4});
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto [name, type] : std::vector<std::pair<const char*, at::ScalarType>>{
           {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"F64", at::kDouble}})
    out.emplace_back(name, (base * 0.37 - 4.1).to(type));
  for (auto [name, type] : std::vector<std::pair<const char*, at::ScalarType>>{
           {"I64", at::kLong}, {"I32", at::kInt}, {"I16", at::kShort}, {"I8", at::kChar}})
    out.emplace_back(name, (base * 5 - 60).to(type));
  out.emplace_back("U8", (base * 10).to(at::kByte));
  out.emplace_back("BOOL", base.remainder(3).eq(0));
  out.emplace_back("empty", at::zeros({0, 3}));
  out.emplace_back("scalar", at::scalar_tensor(2.5));
  return out;
}

void expect_same(const std::vector<std::pair<std::string, at::Tensor>>& got, const std::string& file) {
  std::map<std::string, at::Tensor> by_name(got.begin(), got.end());
  for (const auto& [name, want] : expected_tensors()) {
    ASSERT_TRUE(by_name.count(name)) << file << " lacks " << name;
    EXPECT_EQ(by_name[name].scalar_type(), want.scalar_type()) << name;
    EXPECT_TRUE(at::equal(by_name[name], want)) << name << " in " << file;
  }
  EXPECT_EQ(got.size(), expected_tensors().size());
}

TEST(Safetensors, CppWritesPythonReadsAndBack) {
  const std::string dir = temp_dir("st");
  autotp::write_safetensors(dir + "/cpp.safetensors", expected_tensors(), {{"format", "pt"}, {"writer", "autotp"}});
  EXPECT_FALSE(fs::exists(dir + "/cpp.safetensors.tmp"));
  auto r = run_command(kCheck + "safetensors " + dir + "/cpp.safetensors " + dir + "/py.safetensors");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  auto mine = autotp::read_safetensors(dir + "/cpp.safetensors");
  expect_same(mine.tensors, "cpp.safetensors");
  auto theirs = autotp::read_safetensors(dir + "/py.safetensors");
  expect_same(theirs.tensors, "py.safetensors");
  EXPECT_EQ(theirs.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"writer", "python"}}));
  // Read in the order written: merge's shards keep the archive's parameter order.
  for (size_t i = 0; i < mine.tensors.size(); ++i) EXPECT_EQ(mine.tensors[i].first, expected_tensors()[i].first);
  fs::remove_all(dir);
}

TEST(Safetensors, DamagedFilesAreOneLineNamingFileAndKey) {
  const std::string dir = temp_dir("st_bad"), good = dir + "/good.safetensors";
  autotp::write_safetensors(good, expected_tensors());
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir + "/" + name, std::ios::binary) << content;
    return dir + "/" + name;
  };
  auto error_of = [](const std::string& path) -> std::string {
    try {
      autotp::read_safetensors(path);
    } catch (const autotp::Error& e) {
      return e.what();
    }
    return "no error";
  };
  auto one_line_with = [&](const std::string& path, std::vector<std::string> parts) {
    const std::string e = error_of(path);
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    EXPECT_NE(e.find(path), std::string::npos) << e;
    for (const auto& p : parts) EXPECT_NE(e.find(p), std::string::npos) << "'" << p << "' not in: " << e;
  };
  // Truncated: the last tensors' data is gone.
  one_line_with(write("truncated.safetensors", bytes.substr(0, bytes.size() - 40)), {"out of range", "truncated"});
  // Cut inside the header.
  one_line_with(write("short.safetensors", bytes.substr(0, 30)), {"runs past the end"});
  // A header that is not JSON.
  std::string bad_json = bytes;
  bad_json[8] = '[';
  bad_json[9] = '}';
  one_line_with(write("json.safetensors", bad_json), {"not JSON"});
  // An unknown dtype, named with its key.
  std::string bad_dtype = bytes;
  bad_dtype.replace(bad_dtype.find("\"dtype\":\"F16\""), 13, "\"dtype\":\"Q16\"");
  one_line_with(write("dtype.safetensors", bad_dtype), {"key F16", "unknown dtype 'Q16'"});
  // Offsets that do not match the shape.
  std::string bad_shape = bytes;
  bad_shape.replace(bad_shape.find("[2,3,4]"), 7, "[2,3,5]");
  one_line_with(write("shape.safetensors", bad_shape), {"needs"});
  one_line_with(write("tiny.safetensors", "abc"), {"not a safetensors file"});
  one_line_with(dir + "/absent.safetensors", {"cannot open"});
  fs::remove_all(dir);
}

// Every fixture the build generates that plans (but smollm2, see below), at tp=2 (where valid) and one other valid tp:
// rewrite -> merge_ranks gives back every parameter of the original bit for bit, tied ones once.
// The analysis (probe + propagation) runs once per fixture and the plans per tp come from it, as in
// autotp::inspect: the test's time goes to the rewrites and merges it is about.
TEST(MergeRanks, BitExactForEveryFixture) {
  int merged = 0;
  std::vector<std::string> skipped;
  for (const auto& entry : fs::directory_iterator(AUTOTP_FIXTURES_DIR)) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".pt" || file.find(".eager.") != std::string::npos || file == "llama7b_shape.pt") continue;
    if (file == "smollm2.pt") continue;  // 135M parameters: MergeCli checks it bit-exact, through autotp rewrite/merge's files
    const std::string name = file.substr(0, file.size() - 3);
    auto module = autotp::load_model(entry.path().string());
    autotp::ModelGraph mg = autotp::model_graph_from(module, name);
    autotp::ProbeValues values;
    autotp::TpPlan one;
    try {
      values = autotp::probe(mg, autotp::example_inputs(mg));
      one = autotp::make_plan(mg, autotp::structure_for_tp(mg, values, 1), 1);
    } catch (const autotp::Error&) {  // the error-path fixtures (tiny_*): nothing to merge
      skipped.push_back(name);
      continue;
    }
    std::vector<int> tps;
    for (int tp : one.valid_tp) if (tp == 2) tps.push_back(tp);
    for (int tp : one.valid_tp) if (tp > 1 && tp != 2 && tp <= 4) { tps.push_back(tp); break; }
    for (const auto& note : one.tp_notes)  // kv heads on several ranks (the smallest such tp): the first holder of each
      if (note.find("each kv head on") != std::string::npos) {
        const int tp = std::stoi(note.substr(3));
        if (std::find(tps.begin(), tps.end(), tp) == tps.end()) tps.push_back(tp);
        break;
      }
    ASSERT_FALSE(tps.empty()) << name;
    // The reference: the original's tensors by the names the plan uses (frozen.N for a frozen archive).
    std::map<std::string, at::Tensor> original;
    for (const auto& e : mg.tensors) original[e.name] = e.tensor;
    for (int tp : tps) {
      SCOPED_TRACE(name + " tp=" + std::to_string(tp));
      autotp::TpPlan plan = autotp::make_plan(mg, autotp::structure_for_tp(mg, values, tp), tp);
      plan.model = name;
      std::vector<torch::jit::Module> ranks;
      for (int r = 0; r < tp; ++r) ranks.push_back(autotp::rewrite(module, plan, r));
      EXPECT_EQ(autotp::rewrite_info(ranks[0]).params.size(), plan.parameters.size());
      auto got = autotp::merge_ranks(ranks);
      ASSERT_EQ(got.size(), plan.parameters.size());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(got[i].first, plan.parameters[i].name);
        const at::Tensor& want = original.at(got[i].first);
        EXPECT_TRUE(got[i].second.sizes() == want.sizes() && at::equal(got[i].second, want)) << got[i].first;
      }
      if (mg.kind != autotp::GraphKind::Frozen) {  // every parameter of the module, tied ones once
        std::set<const void*> storages;
        for (const auto& p : module.named_parameters(true)) storages.insert(p.value.storage().data());
        EXPECT_EQ(got.size(), storages.size());
      }
      ++merged;
    }
  }
  std::string s;
  for (const auto& n : skipped) s += n + " ";
  std::cout << "merged " << merged << " fixture/tp pairs; not plannable (error-path fixtures): " << s << "\n";
  EXPECT_GE(merged, 80);
  for (const auto& n : skipped) EXPECT_EQ(n.rfind("tiny_", 0), 0u) << n;
}

TEST(MergeRanks, MissingDuplicatedOrForeignRanksAreErrors) {
  auto gqa = autotp::load_model(fixture("llama_gqa")), mha = autotp::load_model(fixture("llama_mha"));
  auto plan_gqa = autotp::plan_model(gqa, 2, "llama_gqa"), plan_mha = autotp::plan_model(mha, 2, "llama_mha");
  auto r0 = autotp::rewrite(gqa, plan_gqa, 0), r1 = autotp::rewrite(gqa, plan_gqa, 1), other1 = autotp::rewrite(mha, plan_mha, 1);
  auto error_of = [](const std::vector<torch::jit::Module>& ranks) -> std::string {
    try {
      autotp::merge_ranks(ranks);
    } catch (const autotp::Error& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(error_of({r0}).find("tp ranks 1 of tp=2 are missing"), std::string::npos) << error_of({r0});
  EXPECT_NE(error_of({r0, r0}).find("tp rank 0 is given twice"), std::string::npos) << error_of({r0, r0});
  EXPECT_NE(error_of({r0, other1}).find("different plans"), std::string::npos) << error_of({r0, other1});
  EXPECT_NE(error_of({gqa}).find("not a rank module"), std::string::npos) << error_of({gqa});
  EXPECT_EQ(autotp::merge_ranks({r1, r0}).size(), plan_gqa.parameters.size());  // any order of the ranks
}

// Every tensor of the merged folder (one file or shards) is the original archive's parameter of that
// name, bit for bit; every parameter is there, tied ones once.
void expect_bit_exact(const std::string& hf_dir, const std::string& fixture_name) {
  std::map<std::string, at::Tensor> merged;
  for (const auto& e : fs::directory_iterator(hf_dir))
    if (e.path().extension() == ".safetensors")
      for (auto& [name, t] : autotp::read_safetensors(e.path().string()).tensors) merged[name] = t;
  std::set<const void*> seen;
  size_t params = 0;
  for (const auto& p : autotp::load_model(fixture(fixture_name)).named_parameters(true)) {
    if (!seen.insert(p.value.storage().data()).second) continue;  // a tied name: written once, under the first
    ++params;
    auto it = merged.find(p.name);
    ASSERT_NE(it, merged.end()) << fixture_name << ": " << p.name << " not in " << hf_dir;
    EXPECT_TRUE(it->second.sizes() == p.value.sizes() && at::equal(it->second, p.value)) << fixture_name << ": " << p.name;
  }
  EXPECT_EQ(merged.size(), params) << hf_dir;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void cli_ok(const std::string& args) {
  auto r = run_command(kCli + args);
  ASSERT_EQ(r.status, 0) << "autotp " << args << "\n" << r.out << r.err;
}

// rewrite -> merge -> transformers: SmolLM2 (tied, tp=3, tokenizer), llama_gqa (untied, sharded),
// llama_vocab251 (tied, padded vocabulary, through a checkpoint root's `latest`).
TEST(MergeCli, TransformersLoadsWhatMergeWrites) {
  const std::string dir = temp_dir("cli");
  cli_ok("rewrite " + fixture("smollm2") + " --tp 3 --out " + dir + "/smol_tp3");
  cli_ok("merge " + dir + "/smol_tp3 --out " + dir + "/smol_hf");
  cli_ok("rewrite " + fixture("llama_gqa") + " --tp 2 --out " + dir + "/gqa_tp2");
  cli_ok("merge " + dir + "/gqa_tp2 --out " + dir + "/gqa_hf --max-shard-size 100KB");
  fs::create_directories(dir + "/root");
  std::ofstream(dir + "/root/latest") << "step5\n";
  cli_ok("rewrite " + fixture("llama_vocab251") + " --tp 2 --out " + dir + "/root/step5");
  cli_ok("merge " + dir + "/root --out " + dir + "/v251_hf");

  expect_bit_exact(dir + "/smol_hf", "smollm2");
  expect_bit_exact(dir + "/gqa_hf", "llama_gqa");
  expect_bit_exact(dir + "/v251_hf", "llama_vocab251");
  // Tied: the embedding once, no lm_head.weight (transformers ties it again from the config).
  auto smol = autotp::read_safetensors(dir + "/smol_hf/model.safetensors");
  EXPECT_EQ(smol.metadata.at("format"), "pt");
  for (const auto& t : smol.tensors) EXPECT_NE(t.first, "lm_head.weight");
  EXPECT_EQ(smol.tensors.front().first, "model.embed_tokens.weight");
  EXPECT_EQ(smol.tensors.front().second.size(0), autotp_test::config_of("smollm2").vocab);
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(dir + "/smol_hf/" + f)) << f;
  EXPECT_EQ(nlohmann::json::parse(read_text(dir + "/smol_hf/config.json")).at("torch_dtype"), "float32");
  // Sharded as transformers writes it: an index naming every tensor's file, total_size their bytes.
  auto index = nlohmann::json::parse(read_text(dir + "/gqa_hf/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/gqa_hf/model.safetensors"));
  std::set<std::string> shards;
  int64_t total = 0, count = 0;
  for (const auto& [name, file] : index.at("weight_map").items()) shards.insert(file.get<std::string>());
  for (const auto& file : shards)
    for (const auto& [name, t] : autotp::read_safetensors(dir + "/gqa_hf/" + file).tensors) {
      EXPECT_EQ(index["weight_map"].at(name), file);
      total += t.numel() * static_cast<int64_t>(t.element_size());
      ++count;
    }
  EXPECT_GT(shards.size(), 2u);
  char first[64];
  std::snprintf(first, sizeof first, "model-00001-of-%05zu.safetensors", shards.size());
  EXPECT_EQ(*shards.begin(), first);
  EXPECT_EQ(index.at("metadata").at("total_size").get<int64_t>(), total);
  EXPECT_EQ(count, static_cast<int64_t>(index["weight_map"].size()));
  // Padding stripped.
  auto v251 = autotp::read_safetensors(dir + "/v251_hf/model.safetensors");
  EXPECT_EQ(v251.tensors.front().second.size(0), 251);

  auto r = run_command(kCheck + "compare " + dir + "/smol_hf=" + fixture("smollm2") + " " + dir + "/gqa_hf=" +
                       fixture("llama_gqa") + " " + dir + "/v251_hf=" + fixture("llama_vocab251") + " --tokenizer " + dir + "/smol_hf");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  std::cout << r.out;
  fs::remove_all(dir);
}

// What a user does after training: `autotp train --out` (3 steps at tp 2, weights far from the
// fixture's), `autotp merge`, transformers. from_pretrained gives the logits the trained rank modules
// themselves compute (ranks as threads, vocab slices side by side) on the same ids, within 1e-5.
TEST(MergeCli, TrainedRankModulesAndTransformersAgree) {
  const std::string dir = temp_dir("trained");
  const int64_t vocab = autotp_test::config_of("llama_gqa").vocab;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  at::Tensor stream = at::randint(vocab, {1025}, gen, at::kLong);
  autotp::write_token_file(dir + "/d.tokens", std::vector<int64_t>(stream.data_ptr<int64_t>(), stream.data_ptr<int64_t>() + 1025), vocab);
  std::ofstream(dir + "/c.json") << R"({"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
                                       "tensor_parallel": {"autotp_size": 2}, "zero_optimization": {"stage": 1}})";
  auto r = run_command(std::string(AUTOTP_VENV_BIN) + "/torchrun --standalone --nproc_per_node 2 --no-python " + AUTOTP_CLI +
                       " train --config " + dir + "/c.json --model " + fixture("llama_gqa") + " --data " + dir +
                       "/d.tokens --steps 3 --seq 16 --no-verify --out " + dir + "/out");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  cli_ok("merge " + dir + "/out --out " + dir + "/hf");

  const at::Tensor ids = at::randint(vocab, {2, 12}, gen, at::kLong);
  std::vector<at::Tensor> slices(2);
  auto errors = autotp_test::run_ranks(2, 2, [&](int rank, autotp::Mesh&) {
    torch::jit::Module m = autotp::load_model(dir + "/out/rank" + std::to_string(rank) + ".pt");
    m.eval();
    c10::NoGradGuard no_grad;
    slices[rank] = autotp::logits_of(m.forward({ids})).clone();
  });
  for (const auto& e : errors) ASSERT_EQ(e, "");
  const at::Tensor logits = at::cat(slices, -1);
  ASSERT_EQ(logits.size(-1), vocab);
  // Training moved the model: the fixture's own logits are far from these.
  auto original = autotp::load_model(fixture("llama_gqa"));
  const at::Tensor before = autotp::logits_of(original.forward({ids}));
  EXPECT_GT((before - logits).abs().max().item<double>() / logits.abs().max().item<double>(), 1e-2);
  autotp::write_safetensors(dir + "/logits.safetensors", {{"ids", ids}, {"logits", logits}});
  auto check = run_command(kCheck + "logits " + dir + "/hf " + dir + "/logits.safetensors");
  EXPECT_EQ(check.status, 0) << check.out << check.err;
  std::cout << check.out;
  fs::remove_all(dir);
}

// --dtype bf16: every tensor bf16, the config says so, values the fp32 merge's rounded.
TEST(MergeCli, Bf16) {
  const std::string dir = temp_dir("bf16");
  cli_ok("rewrite " + fixture("qwen3_tied") + " --tp 2 --out " + dir + "/tp2");
  cli_ok("merge " + dir + "/tp2 --out " + dir + "/fp32");
  cli_ok("merge " + dir + "/tp2 --out " + dir + "/bf16 --dtype bf16");
  auto fp32 = autotp::read_safetensors(dir + "/fp32/model.safetensors"), bf16 = autotp::read_safetensors(dir + "/bf16/model.safetensors");
  ASSERT_EQ(fp32.tensors.size(), bf16.tensors.size());
  for (size_t i = 0; i < bf16.tensors.size(); ++i) {
    EXPECT_EQ(bf16.tensors[i].second.scalar_type(), at::kBFloat16) << bf16.tensors[i].first;
    EXPECT_TRUE(at::equal(bf16.tensors[i].second, fp32.tensors[i].second.to(at::kBFloat16))) << bf16.tensors[i].first;
  }
  EXPECT_EQ(nlohmann::json::parse(read_text(dir + "/bf16/config.json")).at("torch_dtype"), "bfloat16");
  fs::remove_all(dir);
}

TEST(MergeCli, ErrorsAreOneLine) {
  const std::string dir = temp_dir("errors");
  cli_ok("rewrite " + fixture("llama_gqa") + " --tp 2 --out " + dir + "/tp2");
  cli_ok("rewrite " + fixture("llama_gqa") + " --tp 4 --out " + dir + "/tp4");
  fs::create_directories(dir + "/missing");
  fs::copy(dir + "/tp4/rank0.pt", dir + "/missing/rank0.pt");
  fs::copy(dir + "/tp4/rank1.pt", dir + "/missing/rank1.pt");
  fs::create_directories(dir + "/mixed");
  fs::copy(dir + "/tp2/rank0.pt", dir + "/mixed/rank0.pt");
  fs::copy(dir + "/tp4/rank1.pt", dir + "/mixed/rank1.pt");
  std::ofstream(dir + "/afile") << "x";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"merge " + dir + "/afile --out " + dir + "/hf", "not a directory"},
      {"merge " + dir + "/nowhere --out " + dir + "/hf", "no such directory"},
      {"merge " + dir + " --out " + dir + "/hf", "no rank0.pt and no `latest` file"},
      {"merge " + dir + "/missing --out " + dir + "/hf", "rank2.pt is missing"},
      {"merge " + dir + "/mixed --out " + dir + "/hf", "mixed tps"},
      {"merge " + dir + "/tp2 --out " + dir + "/hf --dtype fp8", "--dtype must be fp32 or bf16"},
      {"merge " + dir + "/tp2 --out " + dir + "/afile", "exists and is not a directory"},
      {"merge " + dir + "/tp2 --out " + dir + "/hf --max-shard-size lots", "--max-shard-size expects a size"},
      {"merge " + dir + "/tp2", "usage"},
  };
  for (const auto& [args, text] : cases) {
    auto r = run_command(kCli + args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("autotp: error: ", 0), 0u) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_NE(r.err.find(text), std::string::npos) << args << "\n" << r.err;
  }
  fs::remove_all(dir);
}

// A Hugging Face folder (save_pretrained of a tiny random Llama) -> export_hf.py -> rewrite tp=2 ->
// merge -> from_pretrained: the same logits as the original folder's model.
TEST(ExportHf, TinyLlamaRoundTrip) {
  const std::string dir = temp_dir("export");
  auto r = run_command(kCheck + "tiny-llama " + dir + "/orig && " + kPython + AUTOTP_SOURCE_DIR + "/scripts/export_hf.py " + dir +
                       "/orig --out " + dir + "/model.pt");
  ASSERT_EQ(r.status, 0) << r.out << r.err;
  cli_ok("rewrite " + dir + "/model.pt --tp 2 --out " + dir + "/tp2");
  cli_ok("merge " + dir + "/tp2 --out " + dir + "/hf");
  EXPECT_TRUE(fs::exists(dir + "/hf/config.json"));
  EXPECT_TRUE(fs::exists(dir + "/hf/generation_config.json"));
  r = run_command(kCheck + "compare " + dir + "/hf=" + dir + "/orig");
  EXPECT_EQ(r.status, 0) << r.out << r.err;
  std::cout << r.out;
  fs::remove_all(dir);
}

}  // namespace
