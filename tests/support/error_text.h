// The message a call throws, for tests that check what an error says.
#pragma once

#include <exception>
#include <string>

namespace attnlab::test {

// fn()'s exception message, or "(no error)" when it returns.
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace attnlab::test
