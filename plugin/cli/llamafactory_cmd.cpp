// `autotp train --llamafactory sft.yaml`: from a LLaMA-Factory YAML to the TrainOptions of an ordinary
// `autotp train --hf-args` run (plugin/cli/llamafactory_cmd.h).
//
// Cache: the traced model and the token file live in $AUTOTP_CACHE_DIR (default $XDG_CACHE_HOME/autotp,
// else ~/.cache/autotp) under llamafactory/, named by a hash of what made them: the model folder's path
// and every file's size and mtime, the datasets folder likewise, the data keys of the YAML, and the
// scripts' own size and mtime. Local rank 0 makes a missing file (under an flock, written aside and
// renamed); the other ranks of the node wait for it.
#include "plugin/cli/llamafactory_cmd.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <thread>

#include "autotp/autotp.h"
#include "autotp/error.h"
#include "runtime/hf_args.h"
#include "runtime/llamafactory.h"
#include "runtime/token_data.h"

#ifndef AUTOTP_DEFAULT_PYTHON
#define AUTOTP_DEFAULT_PYTHON "python3"
#endif
#ifndef AUTOTP_DEFAULT_SCRIPTS
#define AUTOTP_DEFAULT_SCRIPTS "scripts"
#endif

namespace autotp_cli {
namespace {

namespace fs = std::filesystem;
using autotp::Error;

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

bool env_is_zero_or_unset(const char* name) {
  const char* v = std::getenv(name);
  return !v || std::string(v) == "0";
}

fs::path cache_root() {
  if (const char* d = std::getenv("AUTOTP_CACHE_DIR"); d && *d) return fs::path(d) / "llamafactory";
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "autotp" / "llamafactory";
  return fs::path(env_or("HOME", ".")) / ".cache" / "autotp" / "llamafactory";
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// "name size mtime;" of a file, or of every regular file directly in a folder (sorted).
std::string stamp(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  const auto mtime = fs::last_write_time(p, ec).time_since_epoch().count();
  return p.filename().string() + " " + std::to_string(size) + " " + std::to_string(mtime) + ";";
}
std::string stamp_folder(const fs::path& dir) {
  std::vector<std::string> parts;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) parts.push_back(stamp(e.path()));
  std::sort(parts.begin(), parts.end());
  std::string out = fs::weakly_canonical(dir, ec).string() + ":";
  for (const auto& p : parts) out += p;
  return out;
}

std::string hash_hex(const std::string& key) {  // FNV-1a, 64 bits
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

struct Captured {
  int status = 0;
  std::string output;
};
Captured run_captured(const std::string& command) {
  Captured r;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) throw Error("llamafactory: cannot run " + command);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int st = pclose(pipe);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
  return r;
}

std::string last_line(const std::string& text) {
  size_t end = text.find_last_not_of("\n\r ");
  if (end == std::string::npos) return "(no output)";
  size_t start = text.rfind('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
}

// `target` made once: local rank 0 runs `make(tmp)` under an flock unless the file exists; the other
// ranks wait until it does. Returns true when it was there already (reused).
bool make_once(const fs::path& target, const std::function<void(const std::string& tmp)>& make) {
  fs::create_directories(target.parent_path());
  const bool producer = env_is_zero_or_unset("LOCAL_RANK");
  const std::string lock_path = target.string() + ".lock";
  for (;;) {
    const int fd = ::open(lock_path.c_str(), O_CREAT | O_RDWR, 0644);
    if (fd < 0) throw Error("llamafactory: cannot open " + lock_path);
    ::flock(fd, LOCK_EX);
    std::error_code ec;
    const bool there = fs::exists(target, ec);
    if (there || producer) {
      if (!there) {
        const std::string tmp = target.string() + ".tmp" + std::to_string(::getpid()) + target.extension().string();
        try {
          make(tmp);
          fs::rename(tmp, target);
        } catch (...) {
          fs::remove(tmp, ec);
          ::close(fd);
          throw;
        }
      }
      ::close(fd);
      return there;
    }
    ::close(fd);  // local rank 0 makes it
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string one_decimal(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", s);
  return buf;
}

// The sequence length that holds every example whole: the shortest S with no example longer than S + 1
// tokens (a sample's labels are its next tokens, so an example of L tokens needs L - 1 inputs).
int64_t seq_for(const autotp::TokenData& data, int64_t cutoff_len) {
  int64_t lo = 1, hi = std::max<int64_t>(1, cutoff_len);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (data.truncated(mid) == 0) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

const std::vector<std::string> kOwnedByYaml{"--config", "--model", "--data", "--hf-args", "--seq", "--out",
                                           "--save-dir", "--save-every", "--keep", "--resume", "--micro-batch",
                                           "--grad-accum", "--lr", "--eval-data", "--eval-every", "--eval-samples"};

}  // namespace

bool llamafactory_train_options(const std::string& yaml, const std::vector<std::string>& flags_given,
                                autotp::TrainOptions& o, LlamaFactoryTrain& lf) {
  for (const auto& f : flags_given)
    if (std::find(kOwnedByYaml.begin(), kOwnedByYaml.end(), f) != kOwnedByYaml.end())
      throw Error("train: " + f + " cannot be combined with --llamafactory, which takes it from " + yaml +
                  "; drop it (options the YAML does not set, such as --steps, --metrics and --no-verify, combine with it)");
  autotp::HfArgsResult hf = autotp::read_hf_args_file(yaml);
  if (!hf.ok()) {
    std::cerr << hf.message() << "\n";
    return false;
  }
  autotp::LlamaFactoryResult lfr = autotp::read_llamafactory(hf.args);
  if (!lfr.ok()) {
    std::cerr << lfr.message() << "\n";
    return false;
  }
  const autotp::LlamaFactoryRun& run = lfr.run;
  lf.output_dir = run.output_dir;
  lf.chatty = !o.quiet && env_is_zero_or_unset("RANK");
  if (lf.chatty && !run.ignored.empty()) {
    std::string keys;
    for (const auto& k : run.ignored) keys += (keys.empty() ? "" : ", ") + k;
    std::cout << "llamafactory: " << yaml << ": ignored (no effect on autotp's training): " << keys << "\n";
  }

  // The model, traced once per folder state.
  const std::string python = env_or("AUTOTP_PYTHON", AUTOTP_DEFAULT_PYTHON);
  const fs::path scripts = env_or("AUTOTP_SCRIPTS_DIR", AUTOTP_DEFAULT_SCRIPTS);
  const fs::path cache = cache_root();
  const std::string model_stamp = stamp_folder(run.model_dir);
  // bf16 training needs a trace made in bf16 (its casts name the compute dtype: passes/compute_dtype.cpp).
  const std::string dtype = hf.args.bf16 || hf.args.bf16_full_eval ? "bf16" : "fp32";
  const fs::path model_pt =
      cache / ("model-" + hash_hex("export_hf|" + dtype + "|" + model_stamp + stamp(scripts / "export_hf.py")) + ".pt");
  auto t0 = std::chrono::steady_clock::now();
  const bool model_reused = make_once(model_pt, [&](const std::string& tmp) {
    Captured r = run_captured(quote(python) + " " + quote((scripts / "export_hf.py").string()) + " " + quote(run.model_dir) +
                              " --dtype " + dtype + " --out " + quote(tmp));
    if (r.status != 0) throw Error("llamafactory: scripts/export_hf.py could not trace " + run.model_dir + ": " + last_line(r.output));
  });
  const double model_s = seconds_since(t0);

  // The data, tokenized once per dataset folder state, model (tokenizer) and data keys.
  std::string names;
  for (const auto& n : run.datasets) names += (names.empty() ? "" : ",") + n;
  const std::string data_key = "tokenize|" + stamp_folder(run.dataset_dir) + "|" + names + "|" + run.template_name + "|" +
                               std::to_string(run.cutoff_len) + "|" + std::to_string(run.max_samples) + "|" +
                               (run.train_on_prompt ? "prompt" : "masked") + "|" + model_stamp +
                               stamp(scripts / "tokenize_data.py") + stamp(scripts / "llamafactory_data.py");
  const fs::path tokens = cache / ("data-" + hash_hex(data_key) + ".tokens");
  std::string summary;
  t0 = std::chrono::steady_clock::now();
  const bool data_reused = make_once(tokens, [&](const std::string& tmp) {
    std::string cmd = quote(python) + " " + quote((scripts / "tokenize_data.py").string()) + " --llamafactory-dataset " +
                      quote(names) + " --dataset-dir " + quote(run.dataset_dir) + " --template " + quote(run.template_name) +
                      " --cutoff-len " + std::to_string(run.cutoff_len) + " --tokenizer " + quote(run.model_dir) + " --out " +
                      quote(tmp);
    if (run.max_samples > 0) cmd += " --max-samples " + std::to_string(run.max_samples);
    if (run.train_on_prompt) cmd += " --train-on-prompt";
    Captured r = run_captured(cmd);
    if (r.status != 0) throw Error("llamafactory: " + last_line(r.output));
    summary = last_line(r.output);
    if (size_t at = summary.find(tmp); at != std::string::npos) summary.replace(at, tmp.size(), tokens.string());
  });
  const double data_s = seconds_since(t0);
  if (lf.chatty) {
    std::cout << "llamafactory: model " << (model_reused ? "reused: " : "traced from " + run.model_dir + " into ")
              << model_pt.string() << (model_reused ? " (" + run.model_dir + " unchanged)" : " (" + one_decimal(model_s) + " s)")
              << "; data " << (data_reused ? "reused: " : "tokenized into ") << tokens.string()
              << (data_reused ? "" : " (" + one_decimal(data_s) + " s)") << "\n";
    if (!summary.empty()) std::cout << "llamafactory: " << summary << "\n";
  }

  o.config_path = hf.args.deepspeed;
  o.model_path = model_pt.string();
  o.data_path = tokens.string();
  o.seq = seq_for(autotp::TokenData(o.data_path), run.cutoff_len);
  // LLaMA-Factory's disable_shuffling: the Trainer's SequentialSampler, the token file's order (--no-shuffle).
  if (run.disable_shuffling) o.shuffle = false;
  o.save_dir = run.output_dir;
  o.save_every = run.save_every_steps ? run.save_steps : 0;
  o.keep = run.save_total_limit;
  o.overrides.steps_per_print = run.logging_steps;
  o.overrides.hf_args = std::make_shared<autotp::HfArgs>(std::move(hf.args));
  // LLaMA-Factory continues from output_dir's last checkpoint unless overwrite_output_dir is set.
  std::error_code ec;
  const bool has_checkpoints = fs::exists(fs::path(run.output_dir) / "latest", ec);
  if (!run.resume_from_checkpoint.empty()) {
    o.resume = run.resume_from_checkpoint;
  } else if (has_checkpoints && run.overwrite_output_dir) {
    throw Error("llamafactory: output_dir " + run.output_dir + " holds the checkpoints of an earlier run (see its latest); "
                "overwrite_output_dir: true would start over, and autotp does not delete checkpoints: remove them or write "
                "another output_dir");
  } else if (has_checkpoints) {
    o.resume = run.output_dir;
    if (lf.chatty)
      std::cout << "llamafactory: resuming from " << run.output_dir << "/latest, as LLaMA-Factory resumes from the last "
                << "checkpoint in output_dir (another output_dir starts over)\n";
  }
  return true;
}

void llamafactory_merge(const LlamaFactoryTrain& lf) {
  const fs::path out = lf.output_dir, partial = out / ".hf.partial";
  std::error_code ec;
  fs::remove_all(partial, ec);
  autotp::MergeOptions m;
  m.source = lf.output_dir;
  m.out = partial.string();
  autotp::MergeReport rep = autotp::merge_to_hf(m);
  // A previous merge's weights go first: a smaller model leaves no stale shard behind.
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.rfind("model", 0) == 0 &&
        (name.size() > 12 && (name.substr(name.size() - 12) == ".safetensors" || name.find(".safetensors.index.json") != std::string::npos)))
      fs::remove(e.path());
  }
  std::string files;
  for (const auto& f : rep.files) {
    fs::rename(partial / f, out / f);
    files += (files.empty() ? "" : ", ") + f;
  }
  fs::remove_all(partial, ec);
  if (lf.chatty)
    std::cout << "llamafactory: wrote the trained model to " << out.string() << " as a Hugging Face folder (" << files
              << ") from " << rep.ranks_dir << "\n";
}

}  // namespace autotp_cli
