// `autotp train --llamafactory sft.yaml`: the YAML's keys classified (runtime/llamafactory.cpp), the
// LLaMA-Factory data path (scripts/llamafactory_data.py) against token ids written here by hand from
// LLaMA-Factory 0.9.3's template strings, and a run end to end against the equivalent
// `autotp train --hf-args` run. The tiny model folder (tests/data/make_tiny_hf.py) has a byte-level
// tokenizer: every byte is its own id, the template's special tokens are ids 256..262, so the
// expected ids of any text are its bytes (ids() below); nothing of the script's is used for them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "fixtures.h"
#include "runtime/hf_args.h"
#include "runtime/llamafactory.h"

namespace fs = std::filesystem;

namespace {

std::string temp_dir(const std::string& name) {
  const std::string d = testing::TempDir() + "autotp_lf_" + name + "_" + std::to_string(getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string python() { return std::string(AUTOTP_VENV_BIN) + "/python "; }

// The tiny Hugging Face folder, made once per test process and removed at its exit.
struct TinyHf {
  std::string root, dir;
  ~TinyHf() { fs::remove_all(root); }
};
const std::string& tiny_hf() {
  static const TinyHf made = [] {
    TinyHf t{temp_dir("hf"), ""};
    t.dir = t.root + "/model";
    auto r = autotp_test::run_command(python() + AUTOTP_SOURCE_DIR + "/tests/data/make_tiny_hf.py " + t.dir);
    EXPECT_EQ(r.status, 0) << r.out << r.err;
    return t;
  }();
  return made.dir;
}

autotp::LlamaFactoryResult classify(const std::string& yaml) {
  autotp::HfArgsResult r = autotp::read_hf_args_text(yaml, "t.yaml");
  EXPECT_TRUE(r.ok()) << r.message();
  return autotp::read_llamafactory(r.args);
}

// ---- ids by hand: bytes, and the special tokens of make_tiny_hf.py at their ids -------------------------

const std::vector<std::string> kSpecials{"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>",
                                         "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};

std::vector<int64_t> ids(const std::string& text) {
  std::vector<int64_t> out;
  for (size_t i = 0; i < text.size();) {
    bool special = false;
    for (size_t s = 0; s < kSpecials.size() && !special; ++s)
      if (text.compare(i, kSpecials[s].size(), kSpecials[s]) == 0) {
        out.push_back(256 + static_cast<int64_t>(s));
        i += kSpecials[s].size();
        special = true;
      }
    if (!special) out.push_back(static_cast<unsigned char>(text[i++]));
  }
  return out;
}

struct Example {
  std::vector<int64_t> tokens;
  std::vector<uint8_t> mask;
};

// Segments of an example: the text and whether its tokens are labels.
Example example(const std::vector<std::pair<std::string, bool>>& segments) {
  Example e;
  for (const auto& [text, trained] : segments)
    for (int64_t id : ids(text)) {
      e.tokens.push_back(id);
      e.mask.push_back(trained ? 1 : 0);
    }
  return e;
}

// A version-2 token file read by its documented layout (runtime/token_data.h), not through TokenData.
struct TokenFile {
  uint64_t vocab = 0, pad = 0;
  std::vector<Example> examples;
};
TokenFile read_tokens(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto u = [&](size_t at, size_t bytes) {
    uint64_t v = 0;
    std::memcpy(&v, b.data() + at, bytes);  // little-endian host
    return v;
  };
  TokenFile f;
  EXPECT_EQ(std::string(b.data(), 8), "ATPTOKS2");
  const uint64_t width = u(8, 4), flags = u(12, 4), n = u(16, 8), e = u(40, 8);
  EXPECT_EQ(flags, 3u) << "mask and examples";
  f.vocab = u(24, 8);
  f.pad = u(32, 8);
  const size_t tokens_at = 48, mask_at = tokens_at + n * width, offsets_at = mask_at + n;
  EXPECT_EQ(b.size(), offsets_at + 8 * (e + 1));
  for (uint64_t k = 0; k < e; ++k) {
    Example x;
    for (uint64_t i = u(offsets_at + 8 * k, 8); i < u(offsets_at + 8 * (k + 1), 8); ++i) {
      x.tokens.push_back(static_cast<int64_t>(u(tokens_at + i * width, width)));
      x.mask.push_back(static_cast<uint8_t>(b[mask_at + i]));
    }
    f.examples.push_back(x);
  }
  return f;
}

void expect_examples(const TokenFile& got, const std::vector<Example>& want) {
  ASSERT_EQ(got.examples.size(), want.size());
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_EQ(got.examples[k].tokens, want[k].tokens) << "example " << k;
    EXPECT_EQ(got.examples[k].mask, want[k].mask) << "example " << k;
  }
}

// alp: alpaca with the default columns (system not mapped); alp_sys: columns without query, with system;
// chat: sharegpt with OpenAI-style tags. Record 3 of alp.json has no string output, record 2 of
// chat.jsonl two user turns: LLaMA-Factory drops both.
std::string write_datasets(const std::string& dir) {
  const std::string d = dir + "/data";
  fs::create_directories(d);
  std::ofstream(d + "/dataset_info.json") << R"({
    "alp": {"file_name": "alp.json"},
    "alp_sys": {"file_name": "alp.json", "columns": {"prompt": "instruction", "response": "output", "system": "system"}},
    "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                      "system_tag": "system"}},
    "conv": {"file_name": "conv.json", "formatting": "sharegpt"}})";
  std::ofstream(d + "/alp.json") << R"([{"instruction": "Add.", "input": "2+3", "output": "5", "system": "Be brief."},
    {"instruction": "Hi", "input": "", "output": "Hello"}, {"instruction": "x", "output": 7}])";
  std::ofstream(d + "/chat.jsonl")
      << R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})"
      << "\n" << R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})" << "\n";
  std::ofstream(d + "/conv.json") << "[";
  for (int i = 0; i < 6; ++i)
    std::ofstream(d + "/conv.json", std::ios::app)
        << (i ? "," : "") << R"({"conversations": [{"from": "human", "value": "Count to )" << i
        << R"(."}, {"from": "gpt", "value": ")" << std::string(static_cast<size_t>(i + 2), static_cast<char>('a' + i)) << R"("}]})";
  std::ofstream(d + "/conv.json", std::ios::app) << "]";
  return d;
}

autotp_test::CliRun tokenize(const std::string& dir, const std::string& args, const std::string& out) {
  return autotp_test::run_command(python() + AUTOTP_SOURCE_DIR + "/scripts/tokenize_data.py --dataset-dir " + dir +
                                  "/data --tokenizer " + tiny_hf() + " --out " + out + " " + args);
}

const std::string kQwenSystem = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n";
std::string chatml_user(const std::string& s) { return "<|im_start|>user\n" + s + "<|im_end|>\n<|im_start|>assistant\n"; }

}  // namespace

// ---- the keys ---------------------------------------------------------------------------------------

TEST(LlamaFactory, EveryRefusedKeyIsOneLineNamingItsValueAndWhatToWrite) {
  auto r = classify(
      "model_name_or_path: /nonexistent/llama\nstage: pt\nfinetuning_type: lora\nlora_rank: 8\npacking: true\n"
      "report_to: none\nlearning_rat: 1.0e-5\nquantization_bit: 4\ndataset: alp\ntemplate: vicuna\noutput_dir: out\n"
      "deepspeed: ds.json\ndataset_dir: /nonexistent/data\nfreeze_trainable_layers: 2\nval_size: 0.1\n");
  const std::vector<std::string> want{
      "t.yaml:1: model_name_or_path: /nonexistent/llama is not a local Hugging Face folder (no /nonexistent/llama/config.json); "
      "autotp does not download: fetch it first (huggingface-cli download /nonexistent/llama --local-dir DIR) and write that folder",
      "t.yaml:2: stage: pt: autotp's --llamafactory runs supervised fine-tuning (pt, rm, ppo, dpo and kto are not "
      "implemented): write stage: sft",
      "t.yaml:3: finetuning_type: lora: autotp trains every weight; LoRA, OFT and freeze tuning are not implemented: write "
      "finetuning_type: full",
      "t.yaml:4: lora_rank: 8: a LoRA key; autotp trains every weight (finetuning_type: full), with no adapters or frozen "
      "layers: remove it",
      "t.yaml:5: packing: true: autotp trains one example per sample, padded, as LLaMA-Factory's sft does without packing: "
      "write packing: false",
      "t.yaml:7: learning_rat: not a key autotp's --llamafactory knows (did you mean learning_rate?); autotp refuses what it "
      "cannot tell the effect of on training: remove or correct it",
      "t.yaml:8: quantization_bit: 4: autotp trains fp32 weights (or bf16 with fp32 masters); quantized (QLoRA) training is "
      "not implemented: remove it",
      "t.yaml:10: template: vicuna: autotp renders LLaMA-Factory's templates empty, default, chatml, qwen, smollm, smollm2, "
      "llama3 (scripts/llamafactory_data.py); write your model's one of these",
      "t.yaml:13: dataset_dir: /nonexistent/data: no /nonexistent/data/dataset_info.json, which names the datasets' files and "
      "formats",
      "t.yaml:14: freeze_trainable_layers: 2: a freeze-tuning key; autotp trains every weight (finetuning_type: full), with no "
      "adapters or frozen layers: remove it",
      "t.yaml:15: val_size: 0.1: holding out part of the training data is not implemented for --llamafactory runs "
      "(tokenize_data.py --eval-split and autotp train --eval-data do it): remove it"};
  EXPECT_EQ(r.problems, want) << r.message();
  // Missing keys autotp needs are named after the file's own lines.
  auto empty = classify("stage: sft\n");
  ASSERT_EQ(empty.problems.size(), 5u) << empty.message();
  EXPECT_EQ(empty.problems[0], "t.yaml: model_name_or_path: not set; write the local Hugging Face folder to train");
  EXPECT_EQ(empty.problems[4], "t.yaml: deepspeed: not set; autotp takes tensor_parallel.autotp_size and the ZeRO stage "
                               "from the DeepSpeed config: write its path, e.g. configs/llamafactory/ds_zero1_tp2_auto.json");
}

TEST(LlamaFactory, ReadsTheRunKeysAndListsHarmlessOnesAsIgnored) {
  const std::string dir = temp_dir("keys");
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/config.json") << "{}";
  write_datasets(dir);
  auto r = classify("model_name_or_path: " + dir + "/m\ntrust_remote_code: true\nstage: sft\ndo_train: true\n"
                    "finetuning_type: full\ndeepspeed: ds.json\ndataset: alp, chat\ndataset_dir: " + dir + "/data\n"
                    "template: llama3\ncutoff_len: 1024\nmax_samples: 100\noverwrite_cache: true\n"
                    "preprocessing_num_workers: 16\noutput_dir: saves/x\nlogging_steps: 10\nsave_steps: 500\nplot_loss: true\n"
                    "overwrite_output_dir: true\nsave_only_model: false\nreport_to: none\npacking: false\nval_size: 0.0\n"
                    "per_device_train_batch_size: 1\nlearning_rate: 1.0e-5\nbf16: true\nddp_timeout: 180000000\n"
                    "save_total_limit: 2\nsave_strategy: steps\ntrain_on_prompt: true\nlora_target: null\n"
                    "disable_shuffling: true\n");
  ASSERT_TRUE(r.ok()) << r.message();
  const autotp::LlamaFactoryRun& run = r.run;
  EXPECT_EQ(run.model_dir, dir + "/m");
  EXPECT_EQ(run.datasets, (std::vector<std::string>{"alp", "chat"}));
  EXPECT_EQ(run.template_name, "llama3");
  EXPECT_EQ(run.cutoff_len, 1024);
  EXPECT_EQ(run.max_samples, 100);
  EXPECT_TRUE(run.train_on_prompt);
  EXPECT_TRUE(run.disable_shuffling);  // the Trainer's SequentialSampler: autotp train --no-shuffle
  EXPECT_EQ(run.output_dir, "saves/x");
  EXPECT_EQ(run.logging_steps, 10);
  EXPECT_EQ(run.save_steps, 500);
  EXPECT_EQ(run.save_total_limit, 2);
  EXPECT_TRUE(run.save_every_steps);
  EXPECT_TRUE(run.overwrite_output_dir);
  EXPECT_EQ(run.ignored, (std::vector<std::string>{"trust_remote_code", "overwrite_cache", "preprocessing_num_workers",
                                                   "plot_loss", "save_only_model", "report_to", "packing", "val_size",
                                                   "ddp_timeout", "lora_target"}));
  // TrainingArguments' defaults where the YAML is silent.
  auto d = classify("model_name_or_path: " + dir + "/m\ndeepspeed: ds.json\ndataset: alp\ndataset_dir: " + dir +
                    "/data\ntemplate: qwen\noutput_dir: o\nsave_strategy: 'no'\n");
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d.run.logging_steps, 500);
  EXPECT_EQ(d.run.cutoff_len, 2048);
  EXPECT_FALSE(d.run.save_every_steps);
  EXPECT_FALSE(d.run.disable_shuffling);
  fs::remove_all(dir);
}

TEST(LlamaFactory, TrainRefusesLoraInOneLineBeforePreparingAnything) {
  const std::string dir = temp_dir("lora");
  fs::create_directories(dir + "/m");
  std::ofstream(dir + "/m/config.json") << "{}";
  write_datasets(dir);
  std::ofstream(dir + "/lora.yaml") << "model_name_or_path: " << dir << "/m\nstage: sft\nfinetuning_type: lora\n"
                                    << "dataset: alp\ndataset_dir: " << dir << "/data\ntemplate: qwen\noutput_dir: " << dir
                                    << "/out\ndeepspeed: ds.json\n";
  auto r = autotp_test::run_command("AUTOTP_CACHE_DIR=" + dir + "/cache " + AUTOTP_CLI + " train --llamafactory " + dir +
                                    "/lora.yaml");
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, dir + "/lora.yaml:3: finetuning_type: lora: autotp trains every weight; LoRA, OFT and freeze tuning are "
                         "not implemented: write finetuning_type: full\n");
  EXPECT_EQ(r.out, "");
  EXPECT_FALSE(fs::exists(dir + "/cache"));
  auto both = autotp_test::run_command(std::string(AUTOTP_CLI) + " train --llamafactory " + dir + "/lora.yaml --model m.pt");
  EXPECT_EQ(both.err, "autotp: error: train: --model cannot be combined with --llamafactory, which takes it from " + dir +
                          "/lora.yaml; drop it (options the YAML does not set, such as --steps, --metrics and --no-verify, combine "
                          "with it)\n");
  fs::remove_all(dir);
}

// ---- the data: LLaMA-Factory's converters and templates, by hand ------------------------------------

TEST(LlamaFactory, DataIsTheTemplateTextWithTheReplyTrainedAndCutAsLlamaFactoryCuts) {
  const std::string dir = temp_dir("data");
  write_datasets(dir);
  // qwen: its default system when the record has none; alpaca's instruction + "\n" + input; the
  // assistant message as the template writes it ("reply<|im_end|>\n") trained, everything else not.
  auto q = tokenize(dir, "--llamafactory-dataset alp,alp_sys,chat --template qwen --cutoff-len 1024", dir + "/q.tokens");
  ASSERT_EQ(q.status, 0) << q.out << q.err;
  EXPECT_NE(q.out.find(": 5 examples (alp 2, alp_sys 2, chat 1), "), std::string::npos) << q.out;
  EXPECT_NE(q.out.find("; 0 cut to cutoff_len 1024; 3 dropped as LLaMA-Factory drops them"), std::string::npos) << q.out;
  TokenFile f = read_tokens(dir + "/q.tokens");
  EXPECT_EQ(f.vocab, 263u);
  EXPECT_EQ(f.pad, 258u) << "no pad token: LLaMA-Factory pads with EOS, which qwen replaced by <|im_end|>";
  expect_examples(f, {example({{kQwenSystem + chatml_user("Add.\n2+3"), false}, {"5<|im_end|>\n", true}}),
                      example({{kQwenSystem + chatml_user("Hi"), false}, {"Hello<|im_end|>\n", true}}),
                      example({{"<|im_start|>system\nBe brief.<|im_end|>\n" + chatml_user("Add."), false},
                               {"5<|im_end|>\n", true}}),
                      example({{kQwenSystem + chatml_user("Hi"), false}, {"Hello<|im_end|>\n", true}}),
                      example({{"<|im_start|>system\nS<|im_end|>\n" + chatml_user("a"), false}, {"b<|im_end|>\n", true},
                               {chatml_user("c"), false}, {"d<|im_end|>\n", true}})});

  // llama3: the BOS prefix, no default system; max_samples reads the first records of each dataset.
  auto l = tokenize(dir, "--llamafactory-dataset alp --template llama3 --cutoff-len 1024 --max-samples 2", dir + "/l.tokens");
  ASSERT_EQ(l.status, 0) << l.out << l.err;
  const std::string user = "<|start_header_id|>user<|end_header_id|>\n\n";
  const std::string assistant = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
  TokenFile lf = read_tokens(dir + "/l.tokens");
  EXPECT_EQ(lf.pad, 262u) << "EOS replaced by <|eot_id|>";
  expect_examples(lf, {example({{"<|begin_of_text|>" + user + "Add.\n2+3" + assistant, false}, {"5<|eot_id|>", true}}),
                       example({{"<|begin_of_text|>" + user + "Hi" + assistant, false}, {"Hello<|eot_id|>", true}})});

  // cutoff_len 20 on the two-turn chat: turn 1 is 31 prompt + 3 reply tokens; infer_seqlen keeps the
  // whole reply (3 * 2 < 20) and the first 17 prompt tokens, and turn 2 finds no room. A plain cut would
  // keep 20 prompt tokens. With train_on_prompt every kept token is a label.
  auto c = tokenize(dir, "--llamafactory-dataset chat --template qwen --cutoff-len 20 --train-on-prompt", dir + "/c.tokens");
  ASSERT_EQ(c.status, 0) << c.out << c.err;
  EXPECT_NE(c.out.find("; 1 cut to cutoff_len 20;"), std::string::npos) << c.out;
  const std::string prompt = "<|im_start|>system\nS<|im_end|>\n" + chatml_user("a");
  ASSERT_EQ(ids(prompt).size(), 31u);
  Example cut = example({{prompt, true}});
  cut.tokens.resize(17);
  cut.mask.resize(17);
  Example reply = example({{"b<|im_end|>\n", true}});
  cut.tokens.insert(cut.tokens.end(), reply.tokens.begin(), reply.tokens.end());
  cut.mask.insert(cut.mask.end(), reply.mask.begin(), reply.mask.end());
  expect_examples(read_tokens(dir + "/c.tokens"), {cut});

  // One list of templates: what the CLI accepts is what the script renders.
  auto t = autotp_test::run_command(python() + "-c \"import sys; sys.path.insert(0, '" + AUTOTP_SOURCE_DIR +
                                    "/scripts'); import llamafactory_data as d; print(' '.join(d.TEMPLATES))\"");
  std::string cpp;
  for (const auto& n : autotp::llamafactory_templates()) cpp += (cpp.empty() ? "" : " ") + n;
  EXPECT_EQ(t.out, cpp + "\n") << t.err;
  // A tool turn is refused with the record named, not dropped.
  std::ofstream(dir + "/data/chat.jsonl", std::ios::app)
      << R"({"messages": [{"role": "user", "content": "a"}, {"role": "function_call", "content": "call f"}]})" << "\n";
  std::ofstream(dir + "/data/dataset_info.json") << R"({"chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
      "columns": {"messages": "messages"}, "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
      "assistant_tag": "assistant", "function_tag": "function_call"}}})";
  auto tool = tokenize(dir, "--llamafactory-dataset chat --template qwen", dir + "/t.tokens");
  EXPECT_EQ(tool.status, 1);
  EXPECT_EQ(tool.err, "tokenize_data: " + dir + "/data/chat.jsonl: record 3: a \"function_call\" turn; autotp's templates "
                      "render system, user and assistant turns only\n");
  fs::remove_all(dir);
}

// ---- end to end ------------------------------------------------------------------------------------

namespace {

std::vector<nlohmann::json> metrics(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (line.find("\"loss\"") != std::string::npos) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

std::string one_file(const std::string& dir, const std::string& ext) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ext) found.push_back(e.path().string());
  EXPECT_EQ(found.size(), 1u) << dir << " " << ext;
  return found.empty() ? "" : found[0];
}

}  // namespace

TEST(LlamaFactory, TrainRunsTheYamlAsHfArgsWithItsDeepSpeedFileAndWritesCheckpointsAndTheHfFolder) {
  const std::string dir = temp_dir("e2e");
  write_datasets(dir);
  const std::string ds = std::string(AUTOTP_SOURCE_DIR) + "/configs/llamafactory/ds_zero1_tp2_auto.json";
  const std::string yaml = dir + "/sft.yaml";
  std::ofstream(yaml) << "### model\nmodel_name_or_path: " << tiny_hf() << "\ntrust_remote_code: true\n\n### method\n"
                      << "stage: sft\ndo_train: true\nfinetuning_type: full\ndeepspeed: " << ds << "\n\n### dataset\n"
                      << "dataset: alp,conv\ndataset_dir: " << dir << "/data\ntemplate: qwen\ncutoff_len: 200\n"
                      << "overwrite_cache: true\n\n### output\noutput_dir: " << dir << "/out\nlogging_steps: 1\n"
                      << "save_steps: 2\nplot_loss: true\nreport_to: none\n\n### train\nper_device_train_batch_size: 2\n"
                      << "gradient_accumulation_steps: 1\nlearning_rate: 1.0e-3\nmax_steps: 4\nlr_scheduler_type: cosine\n"
                      << "warmup_steps: 1\nbf16: false\n";
  const std::string torchrun = std::string(AUTOTP_VENV_BIN) + "/torchrun --standalone --nproc_per_node 2 --no-python ";
  const std::string cache = dir + "/cache";
  auto a = autotp_test::run_command("AUTOTP_CACHE_DIR=" + cache + " " + torchrun + AUTOTP_CLI + " train --llamafactory " +
                                    yaml + " --metrics " + dir + "/a.jsonl");
  ASSERT_EQ(a.status, 0) << a.out << a.err;
  const std::string ignored = "llamafactory: " + yaml + ": ignored (no effect on autotp's training): trust_remote_code, "
                              "overwrite_cache, plot_loss, report_to\n";
  EXPECT_NE(a.out.find(ignored), std::string::npos) << a.out;
  EXPECT_EQ(a.out.find(ignored), a.out.rfind(ignored)) << "listed once, by rank 0";
  const std::string model = one_file(cache + "/llamafactory", ".pt"), data = one_file(cache + "/llamafactory", ".tokens");
  EXPECT_NE(a.out.find("llamafactory: model traced from " + tiny_hf() + " into " + model + " ("), std::string::npos) << a.out;
  EXPECT_NE(a.out.find("; data tokenized into " + data + " ("), std::string::npos) << a.out;
  EXPECT_NE(a.out.find(": 8 examples (alp 2, conv 6), "), std::string::npos) << a.out;

  // The sequence length: the longest example, whole (read from the file here): LLaMA-Factory pads each
  // batch to its longest example, so the loss is the same.
  TokenFile f = read_tokens(data);
  size_t longest = 0;
  for (const auto& e : f.examples) longest = std::max(longest, e.tokens.size());
  ASSERT_GT(longest, 100u) << "the qwen default system prompt alone is 78 tokens";
  ASSERT_LT(longest, 200u) << "none cut";
  EXPECT_NE(a.out.find("global batch 2 x " + std::to_string(longest - 1) + " tokens"), std::string::npos) << a.out;
  auto b = autotp_test::run_command(torchrun + AUTOTP_CLI + " train --hf-args " + yaml + " --config " + ds + " --model " +
                                    model + " --data " + data + " --seq " + std::to_string(longest - 1) + " --metrics " + dir +
                                    "/b.jsonl");
  ASSERT_EQ(b.status, 0) << b.out << b.err;
  auto ma = metrics(dir + "/a.jsonl"), mb = metrics(dir + "/b.jsonl");
  ASSERT_EQ(ma.size(), 4u);
  ASSERT_EQ(mb.size(), 4u);
  EXPECT_GT(ma[3].at("lr").get<double>(), 0) << "DeepSpeed's warmup gives lr 0 to the first two updates";
  for (size_t s = 0; s < 4; ++s) {
    EXPECT_NEAR(ma[s].at("loss").get<double>(), mb[s].at("loss").get<double>(), 1e-6) << "step " << s + 1;
    EXPECT_NEAR(ma[s].at("grad_norm").get<double>(), mb[s].at("grad_norm").get<double>(), 1e-6) << "step " << s + 1;
    EXPECT_EQ(ma[s].at("lr").get<double>(), mb[s].at("lr").get<double>());
    EXPECT_EQ(ma[s].at("loss_tokens").get<int64_t>(), mb[s].at("loss_tokens").get<int64_t>());
  }
  // logging_steps 1: every step printed (the --hf-args run prints steps 1 and 4 at steps_per_print 10).
  EXPECT_NE(a.out.find("step 2/4 "), std::string::npos) << a.out;
  EXPECT_EQ(b.out.find("step 2/4 "), std::string::npos) << b.out;

  // output_dir: save_steps 2 and the last step, and the merged Hugging Face folder.
  const std::string out = dir + "/out";
  EXPECT_TRUE(fs::exists(out + "/step-2/rank1.pt"));
  EXPECT_TRUE(fs::exists(out + "/step-4/rank0.pt"));
  EXPECT_FALSE(fs::exists(out + "/step-3"));
  std::ifstream latest(out + "/latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-4");
  for (const char* file : {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(out + "/" + file)) << file;
  EXPECT_FALSE(fs::exists(out + "/.hf.partial"));
  EXPECT_NE(a.out.find("llamafactory: wrote the trained model to " + out + " as a Hugging Face folder (model.safetensors"),
            std::string::npos) << a.out;
  std::ifstream config(out + "/config.json");
  EXPECT_EQ(nlohmann::json::parse(config).at("vocab_size"), 263);

  // A second run reuses both cached files; with overwrite_output_dir it would start over, which autotp
  // refuses while output_dir holds checkpoints (it does not delete them).
  std::ofstream(yaml, std::ios::app) << "overwrite_output_dir: true\n";
  auto c = autotp_test::run_command("AUTOTP_CACHE_DIR=" + cache + " " + AUTOTP_CLI + " train --llamafactory " + yaml);
  EXPECT_EQ(c.status, 1);
  EXPECT_NE(c.out.find("llamafactory: model reused: " + model + " (" + tiny_hf() + " unchanged); data reused: " + data + "\n"),
            std::string::npos) << c.out;
  EXPECT_EQ(c.err, "autotp: error: llamafactory: output_dir " + out + " holds the checkpoints of an earlier run (see its "
                   "latest); overwrite_output_dir: true would start over, and autotp does not delete checkpoints: remove them "
                   "or write another output_dir\n");
  fs::remove_all(dir);
}
