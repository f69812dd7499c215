// autotp — command line face of libautotp.
//   autotp inspect MODEL.pt [--tp N] [--json]
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "autotp/autotp.h"

namespace {

const char* kUsage =
    "usage: autotp inspect MODEL.pt [--tp N] [--json]\n"
    "  inspect  plan tensor parallelism for a TorchScript model: placement of every parameter,\n"
    "           sizes to rescale, collectives to insert, bytes per rank, valid tp sizes.\n"
    "           --tp defaults to the largest valid tp <= 8.\n";

int parse_int(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    int v = std::stoi(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw autotp::Error(flag + " expects an integer, got '" + text + "'");
}

int cmd_inspect(const std::vector<std::string>& args) {
  std::string model;
  int tp = 0;
  bool json = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const auto& a = args[i];
    if (a == "--json") {
      json = true;
    } else if (a == "--tp") {
      if (i + 1 >= args.size()) throw autotp::Error("--tp needs a value, e.g. --tp 2");
      tp = parse_int("--tp", args[++i]);
      if (tp < 1) throw autotp::Error("--tp must be a positive integer, got " + std::to_string(tp));
    } else if (a.rfind("--", 0) == 0) {
      throw autotp::Error("inspect: unknown option '" + a + "'; options are --tp N and --json");
    } else if (model.empty()) {
      model = a;
    } else {
      throw autotp::Error("inspect: one model expected, got '" + model + "' and '" + a + "'");
    }
  }
  if (model.empty()) throw autotp::Error("inspect: which model? usage: autotp inspect MODEL.pt [--tp N] [--json]");
  autotp::TpPlan plan = autotp::inspect(model, tp);
  std::cout << (json ? autotp::plan_to_json(plan) + "\n" : autotp::plan_to_table(plan));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  try {
    const std::string cmd = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    if (cmd == "inspect") return cmd_inspect(rest);
    throw autotp::Error("unknown command '" + cmd + "'; commands: inspect");
  } catch (const autotp::Error& e) {
    std::cerr << "autotp: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    // Anything else is a bug in autotp, not a user mistake; still one line, never a stack dump.
    std::string what = e.what();
    std::cerr << "autotp: internal error: " << what.substr(0, what.find('\n')) << "\n";
    return 3;
  }
}
