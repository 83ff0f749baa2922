// `attnlab ablate`: expands a recipe's [ablate] section into cells, checks every cell's recipe,
// then runs each cell as an `attnlab train` child process (`attnlab finetune` when the recipe has
// a [finetune] section), skipping finished cells, and rewrites
// results.csv / results.md after each one.
#include "train/ablate.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "lib/file_io.h"
#include "train/finetune.h"
#include "train/report.h"
#include "train/results.h"
#include "train/trainer.h"

namespace attnlab {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// "--section.key=value" or "section.key=value" -> {"section.key", "value"}.
std::pair<std::string, std::string> split_override(std::string ov) {
  if (ov.rfind("--", 0) == 0) ov = ov.substr(2);
  const size_t eq = ov.find('=');
  AL_CHECK_CONFIG(eq != std::string::npos && eq > 0 && ov.find('.') < eq, "override '", ov,
                  "': expected --section.key=value, e.g. --optim.lr=0.001");
  return {trim(ov.substr(0, eq)), trim(ov.substr(eq + 1))};
}

bool plain_dir_name(const std::string& s) {
  return !s.empty() && s.find('/') == std::string::npos && s != "." && s != "..";
}

std::string format_seconds(double s) {
  char buf[64];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%d min %02d s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%d h %02d min", static_cast<int>(s) / 3600, static_cast<int>(s) / 60 % 60);
  return buf;
}

}  // namespace

std::vector<std::string> parse_value_list(const std::string& text, const std::string& key) {
  std::vector<std::string> values;
  std::string current;
  bool quoted = false, was_quoted = false;
  auto finish = [&]() {
    const std::string v = was_quoted ? current : trim(current);
    AL_CHECK_CONFIG(!v.empty(), "[ablate] ", key, " = ", text, ": an empty value (values are separated by commas;",
                    " quote a value that holds a comma)");
    AL_CHECK_CONFIG(std::find(values.begin(), values.end(), v) == values.end(), "[ablate] ", key, ": value '", v,
                    "' is given twice");
    values.push_back(v);
    current.clear();
    was_quoted = false;
  };
  AL_CHECK_CONFIG(!trim(text).empty(), "[ablate] ", key, " has no values; expected a comma-separated list, e.g. ", key,
                  " = a, b");
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"')
        quoted = false;
      else
        current += c;
    } else if (c == '"') {
      AL_CHECK_CONFIG(trim(current).empty() && !was_quoted, "[ablate] ", key, " = ", text,
                      ": a quote must start a value (\"a,b\", c)");
      current.clear();
      quoted = was_quoted = true;
    } else if (c == ',') {
      finish();
    } else if (was_quoted) {
      AL_CHECK_CONFIG(c == ' ' || c == '\t', "[ablate] ", key, " = ", text,
                      ": text after a closing quote; expected a comma");
    } else {
      current += c;
    }
  }
  AL_CHECK_CONFIG(!quoted, "[ablate] ", key, " = ", text, ": a quote is not closed");
  finish();
  return values;
}

std::string cell_name(const std::vector<std::pair<std::string, std::string>>& settings,
                      const std::vector<std::string>& keys) {
  std::string name;
  for (const auto& [k, v] : settings) {
    if (!name.empty()) name += '_';
    name += short_key(k, keys) + "-";
    std::string clean;
    for (char c : v) {
      const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '+' || c == '-';
      const char out = ok ? c : '-';
      if (out == '-' && !clean.empty() && clean.back() == '-') continue;  // "a, b" -> "a-b"
      clean += out;
    }
    name += clean;
  }
  if (name.empty()) name = "base";
  if (name[0] == '.') name[0] = '-';  // never a hidden directory
  // Long layer patterns make long names; cut them and keep them apart with a hash of the whole.
  if (name.size() > 100) {
    uint64_t h = 1469598103934665603ull;
    for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    name = name.substr(0, 90) + "-" + std::string(hex, 8);
  }
  return name;
}

AblatePlan plan_ablation(const std::vector<RecipeEntry>& entries, const std::string& default_name,
                         const std::vector<std::string>& overrides, const std::string& source,
                         const std::map<std::string, std::string>& base) {
  AblatePlan plan;
  plan.name = default_name;
  std::set<std::string> overridden;
  for (const std::string& ov : overrides) overridden.insert(split_override(ov).first);
  std::set<std::string> seen;
  for (const RecipeEntry& e : entries) {
    AL_CHECK_CONFIG(seen.insert(e.key).second, "recipe ", source, ": [ablate] ", e.key, " is set twice");
    if (e.key.find('.') == std::string::npos) {
      if (e.key == "design") {
        AL_CHECK_CONFIG(e.value == "grid" || e.value == "axes", "recipe ", source, ": [ablate] design = ", e.value,
                        "; expected grid (every combination) or axes (each key varied alone)");
        plan.design = e.value;
      } else if (e.key == "name") {
        AL_CHECK_CONFIG(plain_dir_name(e.value), "recipe ", source,
                        ": [ablate] name must be a plain directory name; got '", e.value, "'");
        plan.name = e.value;
      } else {
        detail::throw_error<ConfigError>("recipe ", source, ": [ablate] has no option '", e.key,
                                         "'; its options are design and name, and the keys it varies are recipe "
                                         "keys written section.key (e.g. model.attention = softmax, kda)");
      }
      continue;
    }
    AL_CHECK_CONFIG(e.key != "run.name" && e.key != "run.dir", "recipe ", source, ": [ablate] cannot vary ", e.key,
                    ": every cell is its own run directory under <run.dir>/<name>/");
    AL_CHECK_CONFIG(!overridden.count(e.key), "recipe ", source, ": ", e.key,
                    " is both varied in [ablate] and overridden on the command line; drop one of them");
    plan.keys.push_back(e.key);
    plan.values.push_back(parse_value_list(e.value, e.key));
  }
  AL_CHECK_CONFIG(!plan.keys.empty(), "recipe ", source,
                  ": [ablate] varies no recipe key; expected lines such as model.attention = softmax, kda");
  AL_CHECK_CONFIG(plain_dir_name(plan.name), "recipe ", source, ": the ablation's name '", plan.name,
                  "' is not a plain directory name; set [ablate] name");

  using Settings = std::vector<std::pair<std::string, std::string>>;
  std::vector<Settings> cells;
  // Every combination of the listed keys, the last varying fastest.
  auto cross = [&](const std::vector<size_t>& which, std::vector<Settings>& into, const Settings& prefix) {
    std::vector<size_t> idx(which.size(), 0);
    while (true) {
      Settings s = prefix;
      for (size_t i = 0; i < which.size(); ++i) s.emplace_back(plan.keys[which[i]], plan.values[which[i]][idx[i]]);
      into.push_back(std::move(s));
      size_t d = which.size();
      while (d > 0) {
        --d;
        if (++idx[d] < plan.values[which[d]].size()) break;
        idx[d] = 0;
        if (d == 0) return;
      }
      if (which.empty()) return;
    }
  };
  if (plan.design == "grid") {
    std::vector<size_t> all(plan.keys.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    cross(all, cells, {});
  } else {
    const auto seed_it = std::find(plan.keys.begin(), plan.keys.end(), "run.seed");
    const std::vector<size_t> seed =
        seed_it == plan.keys.end() ? std::vector<size_t>{} : std::vector<size_t>{size_t(seed_it - plan.keys.begin())};
    bool any = false, baseline_done = false;
    for (size_t k = 0; k < plan.keys.size(); ++k) {
      if (plan.keys[k] == "run.seed") continue;
      any = true;
      const auto own = base.find(plan.keys[k]);
      for (const std::string& v : plan.values[k]) {
        // The recipe's own value on every axis is one and the same run: the baseline.
        if (own != base.end() && own->second == v) {
          if (baseline_done) continue;
          baseline_done = true;
        }
        cross(seed, cells, {{plan.keys[k], v}});
      }
    }
    if (!any) cross(seed, cells, {});  // only seeds
  }
  std::set<std::string> names;
  for (Settings& s : cells) {
    std::string name = cell_name(s, plan.keys);
    // Values that differ only in characters a directory name cannot hold still get their own cell.
    if (names.count(name)) {
      int n = 2;
      while (names.count(name + "-" + std::to_string(n))) ++n;
      name += "-" + std::to_string(n);
    }
    names.insert(name);
    plan.cells.push_back({name, std::move(s)});
  }
  return plan;
}

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_sigint(int) { g_interrupted = 1; }

// SIGINT sets a flag while the runner is in charge, so it can wait for the running cell (which,
// in the same process group, gets the terminal's Ctrl-C as well) and say how to continue.
class SigintGuard {
 public:
  SigintGuard() {
    g_interrupted = 0;
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a blocked poll or read returns so the flag is seen
    ::sigaction(SIGINT, &sa, &old_);
  }
  ~SigintGuard() { ::sigaction(SIGINT, &old_, nullptr); }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction old_ {};
};

struct ChildOutcome {
  int exit_code = -1;  // the exit status, -1 when killed by a signal
  int signal = 0;
  std::deque<std::string> tail;  // the last lines it printed
};

// Runs argv[0] with argv, its stdout and stderr appended to `log_path`; lines that report an
// evaluation (" val ") are echoed to `out`, indented, at most one every 5 seconds.
ChildOutcome run_child(const std::vector<std::string>& argv, const std::string& log_path, std::ostream& out) {
  const int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  AL_CHECK_IO(log >= 0, "cannot open ", log_path, " for writing: ", std::strerror(errno));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    ::close(log);
    detail::throw_error<IoError>("cannot create a pipe for the cell's output: ", std::strerror(errno));
  }
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  out << std::flush;
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(log), ::close(fds[0]), ::close(fds[1]);
    detail::throw_error<IoError>("cannot start a process for the cell: ", std::strerror(errno));
  }
  if (pid == 0) {
    ::dup2(fds[1], 1);
    ::dup2(fds[1], 2);
    ::signal(SIGINT, SIG_DFL);
    ::execv(args[0], args.data());
    const std::string msg = "attnlab ablate: cannot run " + argv[0] + ": " + std::strerror(errno) + "\n";
    (void)!::write(2, msg.data(), msg.size());
    ::_exit(127);
  }
  ::close(fds[1]);
  ChildOutcome outcome;
  std::string partial;
  bool forwarded = false;
  auto last_shown = std::chrono::steady_clock::now() - std::chrono::hours(1);
  auto line_done = [&](std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // Eval lines, at most one every few seconds so fast cells do not flood the console (the
    // log has them all).
    const auto now = std::chrono::steady_clock::now();
    if (line.find(" val ") != std::string::npos && now - last_shown >= std::chrono::seconds(5)) {
      out << "    " << line << "\n" << std::flush;
      last_shown = now;
    }
    outcome.tail.push_back(line);
    if (outcome.tail.size() > 12) outcome.tail.pop_front();
  };
  char buf[4096];
  while (true) {
    if (g_interrupted && !forwarded) {
      // A SIGINT sent to the runner alone (kill -INT) still stops the cell.
      ::kill(pid, SIGINT);
      forwarded = true;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, 250);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = ::write(log, buf + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;  // a full disk loses log text, not the run
      done += w;
    }
    partial.append(buf, static_cast<size_t>(n));
    for (size_t nl; (nl = partial.find('\n')) != std::string::npos;) {
      line_done(partial.substr(0, nl));
      partial.erase(0, nl + 1);
    }
  }
  if (!partial.empty()) line_done(partial);
  ::close(fds[0]);
  ::close(log);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status))
    outcome.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    outcome.signal = WTERMSIG(status);
  return outcome;
}

json plan_json(const AblatePlan& plan, const std::string& recipe, const std::vector<std::string>& overrides) {
  json cells = json::array();
  for (const AblateCell& c : plan.cells) {
    json s = json::object();
    for (const auto& [k, v] : c.settings) s[k] = v;
    cells.push_back({{"name", c.name}, {"settings", s}});
  }
  return {{"name", plan.name}, {"recipe", recipe}, {"design", plan.design},
          {"keys", plan.keys}, {"cells", cells},   {"overrides", overrides}};
}

void write_results(const std::string& abl) {
  const RunSet set = load_ablation(abl);
  write_results_csv(set, (fs::path(abl) / "results.csv").string());
  write_results_md(set, (fs::path(abl) / "results.md").string());
  write_report(set, (fs::path(abl) / "report.html").string());
}

std::string metric_text(const fs::path& result_file) {
  try {
    const json r = json::parse(read_file(result_file.string()));
    if (r.contains("metric_value") && r["metric_value"].is_number())
      return r.value("metric", std::string("metric")) + " " + format_number(r["metric_value"].get<double>());
  } catch (const std::exception&) {
  }
  return "no metric in result.json";
}

}  // namespace

int run_ablate(const AblateOptions& options, std::ostream& out) {
  const std::string source = options.recipe;
  const RecipeSplit split = split_recipe_section(read_file(options.recipe), "ablate");
  AL_CHECK_CONFIG(split.found, "recipe ", source,
                  " has no [ablate] section; add one naming the keys to vary, e.g.\n  [ablate]\n  model.attention = "
                  "softmax, kda\n  run.seed = 1, 2");

  // The base recipe (for run.dir and run.name) with the command line applied.
  std::vector<std::string> overrides;
  for (const std::string& ov : options.overrides) {
    const auto [k, v] = split_override(ov);
    overrides.push_back("--" + k + "=" + v);
  }
  const Recipe base = Recipe::parse(split.rest, source, overrides);
  const auto value_of = [&](const std::string& key, const std::string& fallback) {
    const auto it = base.values().find(key);
    return it == base.values().end() ? fallback : it->second;
  };
  const AblatePlan plan = plan_ablation(split.section, value_of("run.name", fs::path(source).stem().string()),
                                        overrides, source, base.values());
  const std::string abl = (fs::path(value_of("run.dir", "runs")) / plan.name).string();
  const std::string recipe_copy = (fs::path(abl) / "recipe.ini").string();

  // A recipe with a [finetune] section ablates fine-tuning runs: its cells run `attnlab finetune`.
  bool finetune = false;
  for (const auto& [key, value] : base.values()) finetune = finetune || key.rfind("finetune.", 0) == 0;
  const std::string command = finetune ? "finetune" : "train";

  // Every cell's recipe is checked before anything is written or run.
  for (const AblateCell& cell : plan.cells) {
    std::vector<std::string> args = overrides;
    for (const auto& [k, v] : cell.settings) args.push_back("--" + k + "=" + v);
    args.push_back("--run.dir=" + abl);
    args.push_back("--run.name=" + cell.name);
    try {
      Recipe r = Recipe::parse(split.rest, source, args);
      if (finetune)
        check_finetune_recipe(r);
      else
        check_train_recipe(r);
    } catch (const ConfigError& e) {
      detail::throw_error<ConfigError>("ablation cell ", cell.name, ": ", e.what());
    }
  }
  if (options.dry_run) {
    out << "ablation " << plan.name << ": " << plan.cells.size() << (finetune ? " finetune" : "") << " cells (" << plan.design
        << "), every cell's recipe checked; would run in " << abl << "\n";
    for (size_t i = 0; i < plan.cells.size(); ++i) {
      out << "  cell " << i + 1 << "/" << plan.cells.size() << " " << plan.cells[i].name << ":";
      for (const auto& [k, v] : plan.cells[i].settings) out << " " << k << "=" << v;
      out << (fs::exists(fs::path(abl) / plan.cells[i].name / kResultFile) ? "  (done)" : "") << "\n";
    }
    return 0;
  }

  const std::string text = "# The recipe of the ablation " + plan.name + ": " + source +
                           " without its [ablate] section, with the command line's overrides.\n" +
                           apply_overrides_to_text(split.rest, overrides);
  const json description = plan_json(plan, source, overrides);
  const fs::path json_path = fs::path(abl) / kAblationFile;
  if (fs::exists(json_path)) {
    json old;
    try {
      old = json::parse(read_file(json_path.string()));
    } catch (const json::exception& e) {
      detail::throw_error<IoError>(json_path.string(), " is not valid JSON (", e.what(),
                                   "); delete the directory to start over");
    }
    std::string differs;
    for (const char* k : {"design", "keys", "cells", "overrides"})
      if (!old.contains(k) || old[k] != description[k]) differs += std::string(differs.empty() ? "" : ", ") + k;
    if (differs.empty() && (!fs::exists(recipe_copy) || read_file(recipe_copy) != text)) differs = "the recipe";
    AL_CHECK_CONFIG(differs.empty(), abl, " already holds an ablation that differs from this one (", differs,
                    "); to keep both, give this one another name ([ablate] name = ...); to start over, delete ", abl);
  } else {
    fs::create_directories(abl);
    write_file_atomic(recipe_copy, text);
    write_file_atomic(json_path.string(), description.dump(2) + "\n");
  }

  const size_t n = plan.cells.size();
  std::string over;
  for (size_t i = 0; i < plan.keys.size(); ++i) over += (i ? " x " : "") + plan.keys[i];
  out << "ablation " << plan.name << ": " << n << " cells (" << plan.design << " over " << over << ") in " << abl
      << "\n"
      << std::flush;

  SigintGuard guard;
  int failed = 0, done = 0;
  const auto t_all = std::chrono::steady_clock::now();
  for (size_t i = 0; i < n; ++i) {
    const AblateCell& cell = plan.cells[i];
    const fs::path dir = fs::path(abl) / cell.name;
    const std::string tag = "cell " + std::to_string(i + 1) + "/" + std::to_string(n) + " " + cell.name + ": ";
    if (fs::exists(dir / kResultFile)) {
      out << tag << "done, skipped\n" << std::flush;
      ++done;
      continue;
    }
    const bool resume = fs::exists(dir / "checkpoints" / "latest");
    fs::create_directories(dir);
    fs::remove(dir / kFailedFile);
    std::vector<std::string> argv = {options.attnlab_binary, command, recipe_copy};
    argv.insert(argv.end(), overrides.begin(), overrides.end());
    for (const auto& [k, v] : cell.settings) argv.push_back("--" + k + "=" + v);
    argv.push_back("--run.dir=" + abl);
    argv.push_back("--run.name=" + cell.name);
    if (resume) argv.push_back("--resume");
    const std::string log = (dir / "train.log").string();
    {
      std::string cmd;
      for (const std::string& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
      const std::string header = "==== attnlab ablate: " + cmd + "\n";
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      AL_CHECK_IO(fd >= 0, "cannot open ", log, " for writing: ", std::strerror(errno));
      (void)!::write(fd, header.data(), header.size());
      ::close(fd);
    }
    out << tag << (resume ? "resuming from its checkpoint" : "running") << " (log: " << log << ")\n" << std::flush;
    const auto t0 = std::chrono::steady_clock::now();
    const ChildOutcome child = run_child(argv, log, out);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (g_interrupted) {
      write_results(abl);
      out << tag << "interrupted after " << format_seconds(secs) << "\n" << std::flush;
      throw AblateInterrupted("ablation " + plan.name + " interrupted: " + std::to_string(done) + " of " +
                              std::to_string(n) +
                              " cells done. Run the same command again to continue: finished cells are kept, the "
                              "interrupted one resumes from its last checkpoint (or starts again if it saved none).");
    }
    if (child.exit_code == 0) {
      ++done;
      out << tag << "done in " << format_seconds(secs) << ", "
          << (fs::exists(dir / kResultFile) ? metric_text(dir / kResultFile) : std::string("no result.json written"))
          << "\n";
    } else {
      ++failed;
      const std::string why = child.signal ? "killed by signal " + std::to_string(child.signal)
                                           : "exit status " + std::to_string(child.exit_code);
      std::string tail;
      for (const std::string& l : child.tail) tail += "    " + l + "\n";
      out << tag << "FAILED (" << why << ") after " << format_seconds(secs) << "; the last lines of " << log << ":\n"
          << tail;
      write_file_atomic((dir / kFailedFile).string(), why + "\n" + tail);
    }
    out << std::flush;
    write_results(abl);
  }
  write_results(abl);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();
  out << "ablation " << plan.name << ": " << done << " of " << n << " cells done, " << failed << " failed ("
      << format_seconds(total) << ")\n"
      << "results: " << (fs::path(abl) / "results.md").string() << ", " << (fs::path(abl) / "results.csv").string()
      << "\n"
      << std::flush;
  return failed;
}

}  // namespace attnlab
