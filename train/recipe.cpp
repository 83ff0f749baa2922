#include "train/recipe.h"

#include <boost/program_options.hpp>
#include <charconv>
#include <fstream>
#include <sstream>

#include "lib/error.h"

namespace attnlab {

namespace po = boost::program_options;

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

Recipe Recipe::parse(const std::string& text, const std::string& source, const std::vector<std::string>& overrides) {
  Recipe r;
  r.source_ = source;
  std::istringstream in(text);
  po::parsed_options parsed(nullptr);
  try {
    parsed = po::parse_config_file(in, po::options_description(), /*allow_unregistered=*/true);
  } catch (const po::error& e) {
    detail::throw_error<ConfigError>("recipe ", source, ": ", e.what());
  }
  for (const po::option& o : parsed.options) {
    AL_CHECK_CONFIG(o.string_key.find('.') != std::string::npos, "recipe ", source, ": key '", o.string_key,
                    "' must sit in a section such as [model]");
    AL_CHECK_CONFIG(!r.values_.count(o.string_key), "recipe ", source, ": key '", o.string_key, "' is set twice");
    r.values_[o.string_key] = o.value.empty() ? "" : trim(o.value.front());
  }
  for (std::string ov : overrides) {
    if (ov.rfind("--", 0) == 0) ov = ov.substr(2);
    const size_t eq = ov.find('=');
    AL_CHECK_CONFIG(eq != std::string::npos && eq > 0 && ov.find('.') < eq, "override '", ov,
                    "': expected section.key=value, e.g. --optim.lr=0.001");
    r.values_[trim(ov.substr(0, eq))] = trim(ov.substr(eq + 1));
  }
  return r;
}

Recipe Recipe::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  AL_CHECK_IO(in.good(), "cannot open recipe '", path, "'");
  std::ostringstream buf;
  buf << in.rdbuf();
  return parse(buf.str(), path, overrides);
}

const std::string* Recipe::find(const std::string& key) {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

std::string Recipe::get_string(const std::string& key, const std::string& fallback) {
  const std::string* v = find(key);
  return used_[key] = v ? *v : fallback;
}

std::string Recipe::require_string(const std::string& key) {
  const std::string* v = find(key);
  AL_CHECK_CONFIG(v, "recipe ", source_, ": missing required key '", key, "'");
  return used_[key] = *v;
}

namespace {
template <typename T>
T parse_number(const std::string& source, const std::string& key, const std::string& text, const char* kind) {
  T value{};
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, value);
  AL_CHECK_CONFIG(ec == std::errc() && p == end && !text.empty(), "recipe ", source, ": ", key, " = '", text,
                  "' is not ", kind);
  return value;
}
}  // namespace

int64_t Recipe::get_int(const std::string& key, int64_t fallback) {
  const std::string* v = find(key);
  if (!v) {
    used_[key] = std::to_string(fallback);
    return fallback;
  }
  used_[key] = *v;
  return parse_number<int64_t>(source_, key, *v, "an integer");
}

double Recipe::get_double(const std::string& key, double fallback) {
  const std::string* v = find(key);
  if (!v) {
    std::ostringstream os;
    os << fallback;
    used_[key] = os.str();
    return fallback;
  }
  used_[key] = *v;
  return parse_number<double>(source_, key, *v, "a number");
}

bool Recipe::get_bool(const std::string& key, bool fallback) {
  const std::string* v = find(key);
  if (!v) {
    used_[key] = fallback ? "true" : "false";
    return fallback;
  }
  used_[key] = *v;
  if (*v == "true" || *v == "1" || *v == "yes" || *v == "on") return true;
  if (*v == "false" || *v == "0" || *v == "no" || *v == "off") return false;
  detail::throw_error<ConfigError>("recipe ", source_, ": ", key, " = '", *v, "' is not a boolean (true or false)");
}

void Recipe::check_all_used() const {
  for (const auto& [key, value] : values_) {
    if (used_.count(key)) continue;
    const std::string section = key.substr(0, key.find('.'));
    std::string known;
    for (const auto& [k, _] : used_)
      if (k.rfind(section + ".", 0) == 0) known += (known.empty() ? "" : ", ") + k;
    detail::throw_error<ConfigError>("recipe ", source_, ": unknown key '", key, "'",
                                     known.empty() ? std::string(" (no keys are read from [") + section + "])"
                                                   : "; known keys in [" + section + "]: " + known);
  }
}

std::string Recipe::resolved() const {
  std::ostringstream os;
  std::string section;
  for (const auto& [key, value] : used_) {
    const size_t dot = key.find('.');
    if (key.substr(0, dot) != section) {
      section = key.substr(0, dot);
      os << (os.tellp() > 0 ? "\n" : "") << "[" << section << "]\n";
    }
    os << key.substr(dot + 1) << " = " << value << "\n";
  }
  return os.str();
}

namespace {

// "[name]" (spaces allowed around) -> name; anything else -> nullopt.
bool section_header(const std::string& line, std::string& name) {
  const std::string t = trim(line);
  if (t.size() < 2 || t.front() != '[') return false;
  const size_t close = t.find(']');
  if (close == std::string::npos) return false;
  name = trim(t.substr(1, close - 1));
  return true;
}

// The text before a '#' that is not inside double quotes.
std::string strip_comment(const std::string& s) {
  bool quoted = false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '"')
      quoted = !quoted;
    else if (s[i] == '#' && !quoted)
      return s.substr(0, i);
  }
  return s;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool comment_or_blank(const std::string& line) {
  const std::string t = trim(line);
  return t.empty() || t[0] == '#' || t[0] == ';';
}

}  // namespace

RecipeSplit split_recipe_section(const std::string& text, const std::string& section) {
  RecipeSplit out;
  std::string current;
  for (const std::string& line : split_lines(text)) {
    std::string name;
    if (section_header(line, name)) current = name;
    if (current != section) {
      out.rest += line + "\n";
      continue;
    }
    out.found = true;
    if (comment_or_blank(line) || section_header(line, name)) continue;
    const size_t eq = line.find('=');
    const std::string body = trim(strip_comment(line));
    if (body.empty()) continue;
    if (eq == std::string::npos) {
      out.section.push_back({body, ""});
    } else {
      out.section.push_back({trim(line.substr(0, eq)), trim(strip_comment(line.substr(eq + 1)))});
    }
  }
  return out;
}

std::string apply_overrides_to_text(const std::string& text, const std::vector<std::string>& overrides) {
  std::vector<std::string> lines = split_lines(text);
  for (std::string ov : overrides) {
    if (ov.rfind("--", 0) == 0) ov = ov.substr(2);
    const size_t eq = ov.find('=');
    AL_CHECK_CONFIG(eq != std::string::npos && eq > 0 && ov.find('.') < eq, "override '", ov,
                    "': expected section.key=value, e.g. --optim.lr=0.001");
    const std::string full = trim(ov.substr(0, eq));
    const std::string value = trim(ov.substr(eq + 1));
    const size_t dot = full.find('.');
    const std::string section = full.substr(0, dot), key = full.substr(dot + 1);
    const std::string entry = key + " = " + value;
    std::string current;
    size_t last_in_section = std::string::npos;  // the section's last non-blank line
    bool done = false;
    for (size_t i = 0; i < lines.size() && !done; ++i) {
      std::string name;
      if (section_header(lines[i], name)) {
        current = name;
        if (current == section) last_in_section = i;
        continue;
      }
      if (current != section || comment_or_blank(lines[i])) continue;
      last_in_section = i;
      const size_t e = lines[i].find('=');
      if (e != std::string::npos && trim(lines[i].substr(0, e)) == key) {
        lines[i] = entry;
        done = true;
      }
    }
    if (done) continue;
    if (last_in_section != std::string::npos) {
      lines.insert(lines.begin() + static_cast<std::ptrdiff_t>(last_in_section) + 1, entry);
    } else {
      if (!lines.empty() && !trim(lines.back()).empty()) lines.push_back("");
      lines.push_back("[" + section + "]");
      lines.push_back(entry);
    }
  }
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

}  // namespace attnlab
