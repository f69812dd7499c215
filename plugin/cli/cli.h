// What the CLI's translation units share: flag parsing with one-line errors, and the commands
// that live outside main.cpp.
#pragma once

#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "autotp/error.h"

namespace autotp_cli {

// "--flag 12": the whole text must be the number.
template <typename T>
inline T parse_number(const std::string& flag, const std::string& text, const char* what) {
  try {
    size_t used = 0;
    T v;
    if constexpr (std::is_same_v<T, int>) v = std::stoi(text, &used);  // out of int range throws
    else v = static_cast<T>(std::stod(text, &used));
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw autotp::Error(flag + " expects " + what + ", got '" + text + "'");
}
inline int parse_int(const std::string& flag, const std::string& text) { return parse_number<int>(flag, text, "an integer"); }
inline double parse_double(const std::string& flag, const std::string& text) { return parse_number<double>(flag, text, "a number"); }

// "--flag value" parsing shared by the commands: returns the value, advancing i.
inline std::string value_of(const std::vector<std::string>& args, size_t& i, const std::string& example) {
  if (i + 1 >= args.size()) throw autotp::Error(args[i] + " needs a value, e.g. " + args[i] + " " + example);
  return args[++i];
}

// autotp plan (plan_cmd.cpp).
int cmd_plan(const std::vector<std::string>& args);

}  // namespace autotp_cli
