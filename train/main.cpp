// The attnlab command line.
//
//   attnlab train RECIPE.ini [--section.key=value ...] [--resume]
//   mpirun -np N attnlab train RECIPE.ini ...                 data parallel (train/data_parallel.h)
//   attnlab finetune RECIPE.ini [--section.key=value ...] [--resume]
//   attnlab ablate RECIPE.ini [--section.key=value ...] [--dry-run]
//   attnlab sample RUN_OR_CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top_k K] [--seed S]
//                  [--ttt [--ttt.steps N] [--ttt.lr LR] [--ttt.span K] [--ttt.params wq|lora]]
//   attnlab eval RUN_OR_CHECKPOINT [--batches N] [--ttt [--ttt.steps N] ... [--ttt.examples N]]
//   attnlab ttt RECIPE.ini [--section.key=value ...]        query-only test-time training vs plain
//   attnlab op NAME --in CASE.safetensors --out RESULT.safetensors [--opt k=v ...] [--device D]
//   attnlab op --list                                       the attention ops and their inputs
//   attnlab gradcheck [OP ...]                              float64 gradcheck of registered ops
//   attnlab ops                                             list the registered ops
//   attnlab report RUN_OR_ABLATION... [--out PATH]          the HTML report of runs or an ablation
//
// Exit codes: 0 success; 2 a user error (bad recipe key or value, missing or malformed file,
// unknown name) with one line on stderr; 1 any other failure (and for `ablate`, any failed cell);
// 130 when `ablate` was interrupted.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "autograd/gradcheck.h"
#include "autograd/registry.h"
#include "layers/all_ops.h"
#include "lib/error.h"
#include "train/ablate.h"
#include "train/distributed.h"
#include "train/finetune.h"
#include "train/op_command.h"
#include "train/report.h"
#include "train/trainer.h"
#include "train/ttt.h"

namespace {

constexpr const char* kUsage =
    "usage: attnlab <command> [args]\n"
    "\n"
    "commands:\n"
    "  train RECIPE.ini [--section.key=value ...] [--resume]\n"
    "                      train a language model; writes runs/<run.name>/ (metrics, checkpoints);\n"
    "                      data parallel under `mpirun -np N` (train.batch is the global batch)\n"
    "  finetune RECIPE.ini [--section.key=value ...] [--resume]\n"
    "                      fine-tune a trained model on answers (finetune.method = sft | focusft);\n"
    "                      writes runs/<run.name>/ like train (base weights only in checkpoints)\n"
    "  ablate RECIPE.ini [--section.key=value ...] [--dry-run]\n"
    "                      run the recipe's [ablate] grid, one train run per cell (finetune\n"
    "                      runs for a recipe with a [finetune] section), under\n"
    "                      <run.dir>/<name>/ with results.csv, results.md and report.html; rerun\n"
    "                      to continue (finished cells are skipped); --dry-run lists the cells\n"
    "  sample RUN_OR_CHECKPOINT [--prompt TEXT] [--tokens N] [--temperature T] [--top_k K] [--seed S]\n"
    "                      generate text from a checkpoint (a run directory means its latest);\n"
    "                      --ttt first adapts the query projections to the prompt (test-time\n"
    "                      training: --ttt.steps, --ttt.lr, --ttt.span, --ttt.params wq|lora)\n"
    "  eval RUN_OR_CHECKPOINT [--batches N]\n"
    "                      validation loss and perplexity of a checkpoint; --ttt (task runs):\n"
    "                      answer accuracy plain and after test-time training (--ttt.* as sample,\n"
    "                      --ttt.examples N rows, --ttt.spans context|answers)\n"
    "  ttt RECIPE.ini [--section.key=value ...]\n"
    "                      query-only test-time training of a task checkpoint at each length,\n"
    "                      against plain answers; writes <run.dir>/<run.name>/ (ttt.jsonl, results.md)\n"
    "  compare-devices RECIPE.ini --run.device=cuda [--steps N] [--section.key=value ...]\n"
    "                      train N steps (default 1) on the CPU and on the device from the same\n"
    "                      weights and batches; compare losses, gradients and weights (exit 1 if\n"
    "                      they disagree beyond f32 tolerance)\n"
    "  op NAME --in CASE.safetensors --out RESULT.safetensors [--opt key=value ...] [--device cpu|cuda]\n"
    "                      run an attention variant's fused op (forward and backward) on tensors\n"
    "                      read by name; writes out and the gradients (`op --list`: names, inputs)\n"
    "  gradcheck [OP ...]  float64 central-difference gradcheck of the named (default: all) ops\n"
    "  ops                 list the registered differentiable ops\n"
    "  report RUN_OR_ABLATION... [--out PATH]\n"
    "                      a self-contained HTML report (curves, results table, diagnostics): one\n"
    "                      ablation directory rebuilds its report.html, results.csv and results.md;\n"
    "                      several runs or ablations are compared in PATH (default ./report.html)\n"
    "  help                this text\n";

struct UsageError : attnlab::ConfigError {
  using ConfigError::ConfigError;
};

// Parses `args` against `desc`, whose "checkpoint" option also takes the first positional
// argument; a parse error becomes a UsageError naming `command`.
void parse_with_checkpoint(const char* command, const boost::program_options::options_description& desc,
                           const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::positional_options_description pos;
  pos.add("checkpoint", 1);
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(std::string(command) + ": " + e.what());
  }
}

// A recipe command's arguments: one RECIPE.ini, --section.key=value overrides and, where the
// command takes it (`takes_resume`), --resume (else it is left to the overrides, which refuse it).
struct RecipeArgs {
  attnlab::Recipe recipe;
  bool resume = false;
};
RecipeArgs read_recipe_args(const std::string& command, const std::vector<std::string>& args, bool takes_resume) {
  std::string path;
  std::vector<std::string> overrides;
  bool resume = false;
  for (const std::string& a : args) {
    if (takes_resume && a == "--resume")
      resume = true;
    else if (a.rfind("--", 0) == 0)
      overrides.push_back(a);
    else if (path.empty())
      path = a;
    else
      throw UsageError(command + ": more than one recipe given ('" + path + "' and '" + a + "')");
  }
  if (path.empty())
    throw UsageError(command + ": no recipe given; usage: attnlab " + command +
                     " RECIPE.ini [--section.key=value ...]");
  return {attnlab::Recipe::load(path, overrides), resume};
}

int cmd_train(const std::vector<std::string>& args) {
  RecipeArgs a = read_recipe_args("train", args, /*takes_resume=*/true);
  attnlab::TrainOptions options;
  options.resume = a.resume;
  // mpirun gives every rank a pseudo-terminal even when its own output goes to a file: ranks
  // print log lines, not a redrawn progress line.
  options.interactive = ::isatty(::fileno(stdout)) != 0 && !attnlab::dist::launch_info().several();
  attnlab::run_train(a.recipe, options, std::cout);
  return 0;
}

int cmd_finetune(const std::vector<std::string>& args) {
  RecipeArgs a = read_recipe_args("finetune", args, /*takes_resume=*/true);
  attnlab::TrainOptions options;
  options.resume = a.resume;
  attnlab::run_finetune(a.recipe, options, std::cout);
  return 0;
}

int cmd_ablate(const std::vector<std::string>& args) {
  attnlab::AblateOptions options;
  options.interactive = ::isatty(::fileno(stdout)) != 0;
  for (const std::string& a : args) {
    if (a == "--resume")
      throw UsageError("ablate: --resume is not needed; rerunning the same command continues the ablation");
    else if (a == "--dry-run")
      options.dry_run = true;
    else if (a.rfind("--", 0) == 0)
      options.overrides.push_back(a);
    else if (options.recipe.empty())
      options.recipe = a;
    else
      throw UsageError("ablate: more than one recipe given ('" + options.recipe + "' and '" + a + "')");
  }
  if (options.recipe.empty())
    throw UsageError("ablate: no recipe given; usage: attnlab ablate RECIPE.ini [--section.key=value ...]");
  // Cells run this same executable.
  std::vector<char> exe(4096);
  const ssize_t len = ::readlink("/proc/self/exe", exe.data(), exe.size() - 1);
  if (len <= 0) throw std::runtime_error("ablate: cannot find the attnlab executable (/proc/self/exe)");
  options.attnlab_binary.assign(exe.data(), static_cast<size_t>(len));
  try {
    return attnlab::run_ablate(options, std::cout) > 0 ? 1 : 0;
  } catch (const attnlab::AblateInterrupted& e) {
    std::cout << std::flush;
    std::cerr << "attnlab: " << e.what() << "\n";
    return 130;
  }
}

int cmd_compare_devices(const std::vector<std::string>& args) {
  std::string path;
  std::vector<std::string> overrides;
  int64_t steps = 1;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--steps" || a.rfind("--steps=", 0) == 0) {
      const std::string v = a == "--steps" ? (i + 1 < args.size() ? args[++i] : "") : a.substr(8);
      try {
        steps = std::stoll(v);
      } catch (const std::exception&) {
        throw UsageError("compare-devices: --steps needs a whole number; got '" + v + "'");
      }
    } else if (a.rfind("--", 0) == 0) {
      overrides.push_back(a);
    } else if (path.empty()) {
      path = a;
    } else {
      throw UsageError("compare-devices: more than one recipe given ('" + path + "' and '" + a + "')");
    }
  }
  if (path.empty())
    throw UsageError("compare-devices: no recipe given; usage: attnlab compare-devices RECIPE.ini --run.device=cuda");
  attnlab::Recipe recipe = attnlab::Recipe::load(path, overrides);
  return attnlab::run_compare_devices(recipe, steps, std::cout) ? 0 : 1;
}

// The --ttt flags of eval and sample: --ttt switches test-time training on, --ttt.<key> sets one
// of its settings (an error without --ttt).
struct TttFlags {
  bool on = false;
  attnlab::TttConfig config;
  int64_t examples = 64;
  void add_to(boost::program_options::options_description& desc, bool with_examples) {
    namespace po = boost::program_options;
    desc.add_options()("ttt", po::bool_switch(&on), "query-only test-time training")(
        "ttt.steps", po::value(&config.steps), "adaptation steps")("ttt.lr", po::value(&config.lr),
                                                                   "AdamW learning rate")(
        "ttt.span", po::value(&config.span), "context tokens per step")("ttt.params", po::value(&config.params),
                                                                        "wq | lora");
    if (with_examples)
      desc.add_options()("ttt.examples", po::value(&examples), "validation rows")(
          "ttt.spans", po::value(&config.spans), "context | answers (the context's answered questions)");
  }
  void check(const char* command, const std::vector<std::string>& args) const {
    if (on) return;
    for (const std::string& a : args)
      if (a.rfind("--ttt.", 0) == 0)
        throw UsageError(std::string(command) + ": " + a.substr(0, a.find('=')) + " needs --ttt");
  }
};

int cmd_sample(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  attnlab::SampleCommand cmd;
  TttFlags ttt;
  po::options_description desc("sample options");
  desc.add_options()("checkpoint", po::value(&cmd.checkpoint)->required(), "run directory or checkpoint")(
      "prompt", po::value(&cmd.prompt), "text to continue")("tokens", po::value(&cmd.tokens), "tokens to generate")(
      "temperature", po::value(&cmd.temperature), "softmax temperature")(
      "top_k", po::value(&cmd.top_k), "sample from the k most likely (0: all)")("seed", po::value(&cmd.seed),
                                                                                "random seed");
  ttt.add_to(desc, false);
  parse_with_checkpoint("sample", desc, args);
  ttt.check("sample", args);
  if (ttt.on)
    attnlab::run_sample_ttt(cmd, ttt.config, std::cout);
  else
    attnlab::run_sample(cmd, std::cout);
  return 0;
}

int cmd_eval(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  std::string checkpoint;
  int64_t batches = -1;
  uint64_t seed = 1;
  TttFlags ttt;
  po::options_description desc("eval options");
  desc.add_options()("checkpoint", po::value(&checkpoint)->required(), "run directory or checkpoint")(
      "batches", po::value(&batches), "evaluate only the first N validation batches");
  ttt.add_to(desc, true);
  desc.add_options()("ttt.seed", po::value(&seed), "seed of the span draws");
  parse_with_checkpoint("eval", desc, args);
  ttt.check("eval", args);
  if (ttt.on) {
    if (batches != -1) throw UsageError("eval: --batches is for plain eval; with --ttt the rows are --ttt.examples");
    attnlab::run_eval_ttt(checkpoint, ttt.config, ttt.examples, seed, std::cout);
  } else {
    attnlab::run_eval(checkpoint, batches, std::cout);
  }
  return 0;
}

int cmd_ttt(const std::vector<std::string>& args) {
  RecipeArgs a = read_recipe_args("ttt", args, /*takes_resume=*/false);
  attnlab::run_ttt(a.recipe, std::cout);
  return 0;
}

int cmd_gradcheck(const std::vector<std::string>& args) {
  const attnlab::OpRegistry& registry = attnlab::all_ops();
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

int cmd_op(const std::vector<std::string>& args) {
  attnlab::OpCommand cmd;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--list") {
      attnlab::list_attention_ops(std::cout);
      return 0;
    }
    auto value = [&](const char* flag) -> std::string {
      const std::string f = std::string("--") + flag;
      if (a.rfind(f + "=", 0) == 0) return a.substr(f.size() + 1);
      if (i + 1 >= args.size()) throw UsageError("op: " + f + " needs a value");
      return args[++i];
    };
    auto is = [&](const char* flag) {
      const std::string f = std::string("--") + flag;
      return a == f || a.rfind(f + "=", 0) == 0;
    };
    if (is("in"))
      cmd.in = value("in");
    else if (is("out"))
      cmd.out = value("out");
    else if (is("opt"))
      cmd.options.push_back(value("opt"));
    else if (is("device"))
      cmd.device = value("device");
    else if (a.rfind("--", 0) == 0)
      throw UsageError("op: unknown flag '" + a + "'; flags: --in --out --opt --device --list");
    else if (cmd.name.empty())
      cmd.name = a;
    else
      throw UsageError("op: more than one op name given ('" + cmd.name + "' and '" + a + "')");
  }
  if (cmd.name.empty())
    throw UsageError(
        "op: no op named; usage: attnlab op NAME --in CASE.safetensors --out RESULT.safetensors (names: attnlab op "
        "--list)");
  attnlab::run_op_command(cmd, std::cout);
  return 0;
}

int cmd_report(const std::vector<std::string>& args) {
  constexpr const char* usage = "usage: attnlab report RUN_OR_ABLATION... [--out PATH]";
  std::vector<std::string> paths;
  std::string out;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--out" || a.rfind("--out=", 0) == 0) {
      if (a == "--out" && i + 1 < args.size())
        out = args[++i];
      else if (a != "--out")
        out = a.substr(6);
      if (out.empty()) throw UsageError(std::string("report: --out needs a path; ") + usage);
    } else if (a.rfind("--", 0) == 0) {
      throw UsageError("report: unknown flag '" + a + "'; " + usage);
    } else {
      paths.push_back(a);
    }
  }
  if (paths.empty()) throw UsageError(std::string("report: no run or ablation directory given; ") + usage);
  attnlab::run_report(paths, out, std::cout);
  return 0;
}

int cmd_ops() {
  for (const attnlab::OpInfo& o : attnlab::all_ops().ops()) std::cout << o.name << "\n";
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
  const attnlab::dist::LaunchInfo launch = attnlab::dist::launch_info();
  const bool several_ranks = launch.several();
  try {
    if (cmd == "train") return cmd_train(args);
    // Only train is data parallel: N copies of any other command would write the same files.
    AL_CHECK_CONFIG(!several_ranks, "`attnlab ", cmd, "` runs in one process, and this is rank ", launch.rank,
                    " of ", launch.world_size, " started by an MPI launcher; only `attnlab train` is data parallel "
                    "(run `attnlab ", cmd, "` without mpirun)");
    if (cmd == "finetune") return cmd_finetune(args);
    if (cmd == "ablate") return cmd_ablate(args);
    if (cmd == "sample") return cmd_sample(args);
    if (cmd == "eval") return cmd_eval(args);
    if (cmd == "ttt") return cmd_ttt(args);
    if (cmd == "compare-devices") return cmd_compare_devices(args);
    if (cmd == "gradcheck") return cmd_gradcheck(args);
    if (cmd == "ops") return cmd_ops();
    if (cmd == "op") return cmd_op(args);
    if (cmd == "report") return cmd_report(args);
    if (cmd == "help" || cmd == "--help" || cmd == "-h") {
      std::cout << kUsage;
      return 0;
    }
    throw UsageError(
        "unknown command '" + cmd +
        "'; commands: train, finetune, ablate, sample, eval, ttt, compare-devices, op, gradcheck, ops, report, help");
  } catch (const std::exception& e) {
    // A user error (recipe, file, checkpoint, name) is one line and exit code 2; anything else 1.
    const bool user_error = dynamic_cast<const attnlab::ConfigError*>(&e) || dynamic_cast<const attnlab::IoError*>(&e);
    const int code = user_error ? 2 : 1;
    if (several_ranks && launch.rank != 0) {
      // Bad input, a diverged run, ranks out of sync: most errors stop every rank alike. Rank 0
      // says it, and the launcher ends this rank when rank 0 exits (Open MPI takes about a
      // second). Speak only if that has not happened within five (a margin for a loaded
      // machine): then the error was this rank's own.
      ::sleep(5);
      std::cerr << "attnlab (rank " << launch.rank << "): " << (user_error ? "" : "error: ") << e.what() << "\n";
    } else {
      std::cerr << (user_error ? "attnlab: " : "attnlab: error: ") << e.what() << "\n";
    }
    // Peers may be blocked in a collective: end this process now, and the launcher the job.
    attnlab::dist::exit_job_on_error(code);
    return code;
  }
}
