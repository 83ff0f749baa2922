// The attnlab command line.
//
//   attnlab demo [RECIPE.ini] [--section.key=value ...]   train and sample the core demo model
//   attnlab gradcheck [OP ...]                              float64 gradcheck of registered ops
//   attnlab ops                                             list the registered ops
//
// Exit codes: 0 success; 2 a user error (bad recipe key or value, missing or malformed file,
// unknown name) with one line on stderr; 1 any other failure.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/registry.h"
#include "lib/error.h"
#include "train/demo.h"

namespace {

constexpr const char* kUsage =
    "usage: attnlab <command> [args]\n"
    "\n"
    "commands:\n"
    "  demo [RECIPE.ini] [--section.key=value ...]\n"
    "                      train a byte-level MLP language model on a text file and sample it\n"
    "                      (defaults: recipes/demo.ini keys; see README.md)\n"
    "  gradcheck [OP ...]  float64 central-difference gradcheck of the named (default: all) ops\n"
    "  ops                 list the registered differentiable ops\n"
    "  help                this text\n";

struct UsageError : attnlab::ConfigError {
  using ConfigError::ConfigError;
};

int cmd_demo(const std::vector<std::string>& args) {
  std::string path;
  std::vector<std::string> overrides;
  for (const std::string& a : args) {
    if (a.rfind("--", 0) == 0) overrides.push_back(a);
    else if (path.empty()) path = a;
    else throw UsageError("demo: more than one recipe given ('" + path + "' and '" + a + "')");
  }
  attnlab::Recipe recipe = path.empty() ? attnlab::Recipe::parse("", "<defaults>", overrides)
                                        : attnlab::Recipe::load(path, overrides);
  attnlab::run_demo(recipe, std::cout);
  return 0;
}

int cmd_gradcheck(const std::vector<std::string>& args) {
  const attnlab::OpRegistry& registry = attnlab::op_registry();
  std::vector<const attnlab::OpInfo*> ops;
  if (args.empty())
    for (const attnlab::OpInfo& o : registry.ops()) ops.push_back(&o);
  for (const std::string& name : args) ops.push_back(&registry.get(name));
  int failed = 0;
  for (const attnlab::OpInfo* o : ops) {
    const attnlab::OpGradcheckSummary s = attnlab::gradcheck_op(*o);
    std::cout << s.line() << "\n";
    for (const std::string& f : s.failures) std::cout << "    " << f << "\n";
    failed += s.ok ? 0 : 1;
  }
  std::cout << ops.size() - static_cast<size_t>(failed) << " passed, " << failed << " failed\n";
  return failed ? 1 : 0;
}

int cmd_ops() {
  for (const attnlab::OpInfo& o : attnlab::op_registry().ops()) std::cout << o.name << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty()) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = all[0];
  const std::vector<std::string> args(all.begin() + 1, all.end());
  try {
    if (cmd == "demo") return cmd_demo(args);
    if (cmd == "gradcheck") return cmd_gradcheck(args);
    if (cmd == "ops") return cmd_ops();
    if (cmd == "help" || cmd == "--help" || cmd == "-h") {
      std::cout << kUsage;
      return 0;
    }
    throw UsageError("unknown command '" + cmd + "'; commands: demo, gradcheck, ops, help");
  } catch (const attnlab::ConfigError& e) {
    std::cerr << "attnlab: " << e.what() << "\n";
    return 2;
  } catch (const attnlab::IoError& e) {
    std::cerr << "attnlab: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "attnlab: error: " << e.what() << "\n";
    return 1;
  }
}
