// Semantic Versioning 2.0.0 precedence (section 11), shared by the master (ordering versions) and
// the agent (a version only goes up).
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stream/release.h"

namespace ds::stream {
namespace {

bool IsAlnum(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

struct Semver {
  std::string_view major, minor, patch;
  std::vector<std::string_view> pre;  // Empty: a release.
};

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

bool AllDigits(std::string_view s) {
  for (char c : s) {
    if (!IsDigit(c)) return false;
  }
  return !s.empty();
}

// A numeric identifier: digits without a leading zero (a lone "0" is fine).
bool IsNumericIdentifier(std::string_view s) {
  return AllDigits(s) && (s.size() == 1 || s[0] != '0');
}

bool IsIdentifier(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsAlnum(c) && c != '-') return false;
  }
  return true;
}

std::optional<Semver> ParseSemver(std::string_view s) {
  Semver v;
  const size_t plus = s.find('+');
  if (plus != std::string_view::npos) {
    for (std::string_view id : Split(s.substr(plus + 1), '.')) {
      if (!IsIdentifier(id)) return std::nullopt;  // Build identifiers may have leading zeros.
    }
    s = s.substr(0, plus);
  }
  const size_t dash = s.find('-');
  if (dash != std::string_view::npos) {
    v.pre = Split(s.substr(dash + 1), '.');
    for (std::string_view id : v.pre) {
      if (!IsIdentifier(id)) return std::nullopt;
      if (AllDigits(id) && !IsNumericIdentifier(id)) return std::nullopt;
    }
    s = s.substr(0, dash);
  }
  const std::vector<std::string_view> core = Split(s, '.');
  if (core.size() != 3) return std::nullopt;
  for (std::string_view n : core) {
    if (!IsNumericIdentifier(n)) return std::nullopt;
  }
  v.major = core[0];
  v.minor = core[1];
  v.patch = core[2];
  return v;
}

// Numbers without leading zeros compare by length, then digit by digit: no overflow.
int CompareNumeric(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return a.size() < b.size() ? -1 : 1;
  const int c = a.compare(b);
  return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

int CompareIdentifier(std::string_view a, std::string_view b) {
  const bool na = AllDigits(a), nb = AllDigits(b);
  if (na && nb) return CompareNumeric(a, b);
  if (na != nb) return na ? -1 : 1;  // Numeric identifiers have lower precedence.
  const int c = a.compare(b);        // ASCII order.
  return c < 0 ? -1 : (c > 0 ? 1 : 0);
}

}  // namespace

std::optional<int> CompareSemver(std::string_view a, std::string_view b) {
  const std::optional<Semver> va = ParseSemver(a), vb = ParseSemver(b);
  if (!va || !vb) return std::nullopt;
  if (int c = CompareNumeric(va->major, vb->major)) return c;
  if (int c = CompareNumeric(va->minor, vb->minor)) return c;
  if (int c = CompareNumeric(va->patch, vb->patch)) return c;
  // A release outranks its pre-releases.
  if (va->pre.empty() || vb->pre.empty()) {
    if (va->pre.empty() && vb->pre.empty()) return 0;
    return va->pre.empty() ? 1 : -1;
  }
  const size_t n = std::min(va->pre.size(), vb->pre.size());
  for (size_t i = 0; i < n; ++i) {
    if (int c = CompareIdentifier(va->pre[i], vb->pre[i])) return c;
  }
  if (va->pre.size() == vb->pre.size()) return 0;
  return va->pre.size() < vb->pre.size() ? -1 : 1;
}

}  // namespace ds::stream
