// The rule registry: operator schema -> rule (see rules.h).
#include <unordered_map>

#include "passes/rules.h"

namespace autotp {

struct RuleTable {
  std::unordered_map<std::string, Rule> rules;
};

void add_rule(RuleTable& t, const std::string& key, Rule r) { t.rules[key] = r; }

namespace {
const RuleTable& table() {
  static const RuleTable t = [] {
    RuleTable t;
    register_view_rules(t);
    register_list_rules(t);
    register_math_rules(t);
    register_param_rules(t);
    return t;
  }();
  return t;
}
}  // namespace

Rule find_rule(const torch::jit::Node* n) {
  const auto* schema = n->maybeSchema();
  if (!schema) return nullptr;
  const auto& rules = table().rules;
  const auto& op = schema->operator_name();
  if (!op.overload_name.empty()) {
    auto exact = rules.find(op.name + "." + op.overload_name);
    if (exact != rules.end()) return exact->second;
  }
  auto any = rules.find(op.name);
  return any == rules.end() ? nullptr : any->second;
}

}  // namespace autotp
