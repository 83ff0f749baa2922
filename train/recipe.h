// Recipes: INI files with sections ([run] [data] [model] [optim] [train] ...), read with
// Boost.Program_options' config-file parser. Keys are "section.key"; any key can be overridden
// from the command line as --section.key=value. Values are typed when read; a key that is read
// with the wrong type, or never read at all (a typo), is a ConfigError naming the file and key.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace attnlab {

// `s` without the spaces, tabs and line breaks at either end (keys and values as INI gives them).
std::string trim(const std::string& s);

class Recipe {
 public:
  // Reads `path` and applies overrides of the form "section.key=value" (a leading "--" is fine).
  static Recipe load(const std::string& path, const std::vector<std::string>& overrides = {});
  // Parses INI text; `source` names it in messages.
  static Recipe parse(const std::string& text, const std::string& source,
                      const std::vector<std::string>& overrides = {});

  bool has(const std::string& key) const { return values_.count(key) != 0; }
  // Typed reads; the default is used (and recorded) when the key is absent.
  std::string get_string(const std::string& key, const std::string& fallback);
  int64_t get_int(const std::string& key, int64_t fallback);
  double get_double(const std::string& key, double fallback);
  bool get_bool(const std::string& key, bool fallback);
  // Required keys: a missing one is a ConfigError.
  std::string require_string(const std::string& key);

  // Throws ConfigError for every key that nothing read, listing the keys that were read.
  void check_all_used() const;
  // The recipe as it ran: every key read, with the value used, as INI text.
  std::string resolved() const;
  const std::string& source() const { return source_; }
  // Every key given (file and overrides) with its text value.
  const std::map<std::string, std::string>& values() const { return values_; }

 private:
  const std::string* find(const std::string& key);
  std::string source_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> used_;  // key -> value actually used (given or default)
};

// One "key = value" line of an INI section: the key and the value as written (trimmed, a
// trailing # comment outside double quotes removed), in file order.
struct RecipeEntry {
  std::string key;
  std::string value;
};

// INI text split around one section: its entries (in file order, which Boost's parser does not
// keep for us) and the text with that section's header and lines removed, everything else as it
// was. `found` says whether the section was there at all.
struct RecipeSplit {
  std::vector<RecipeEntry> section;
  std::string rest;
  bool found = false;
};
RecipeSplit split_recipe_section(const std::string& text, const std::string& section);

// The text with each override ("section.key=value", a leading "--" is fine) applied: the key's
// line is rewritten in place, or the key is added at the end of its section, or a new section
// is added at the end. Comments and the other lines stay as they were.
std::string apply_overrides_to_text(const std::string& text, const std::vector<std::string>& overrides);

}  // namespace attnlab
