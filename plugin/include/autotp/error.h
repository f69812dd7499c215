// autotp::Error — the one exception type autotp throws at a boundary where user input is understood.
// Its what() is a single line that names the file, key, op or value, says what is wrong and what
// would be right. No LibTorch headers here: every includer stays cheap to compile.
#pragma once

#include <stdexcept>
#include <string>

namespace autotp {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace autotp
