// CompareSemver: Semantic Versioning 2.0.0 precedence (section 11) and what is not semver.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "repo/repo.h"

namespace ds::repo {
namespace {

TEST(SemverTest, SpecPrecedenceChain) {
  // The chain from the specification, plus core-number cases.
  const std::vector<std::string> ascending = {
      "0.0.0",      "0.0.1",        "0.1.0",         "0.9.0",
      "0.10.0",     "1.0.0-0",      "1.0.0-1",       "1.0.0-2",
      "1.0.0-10",   "1.0.0-alpha",  "1.0.0-alpha.1", "1.0.0-alpha.beta",
      "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1",
      "1.0.0",      "1.0.1",        "1.2.0",         "1.10.0",
      "2.0.0-rc.1", "2.0.0",        "10.0.0",        "99999999999999999999.0.0"};
  for (size_t i = 0; i < ascending.size(); ++i) {
    for (size_t j = 0; j < ascending.size(); ++j) {
      const std::optional<int> c = CompareSemver(ascending[i], ascending[j]);
      ASSERT_TRUE(c.has_value()) << ascending[i] << " vs " << ascending[j];
      const int want = i < j ? -1 : (i > j ? 1 : 0);
      EXPECT_EQ(*c, want) << ascending[i] << " vs " << ascending[j];
    }
  }
}

TEST(SemverTest, PreReleaseIdentifierRules) {
  struct Case {
    const char *a, *b;
    int want;
  };
  const Case cases[] = {
      {"1.0.0-alpha", "1.0.0", -1},         // A pre-release precedes its release.
      {"1.0.0-1", "1.0.0-a", -1},           // Numeric identifiers sort before alphanumeric.
      {"1.0.0-9", "1.0.0-10", -1},          // Numeric identifiers compare as numbers.
      {"1.0.0-a9", "1.0.0-a10", 1},         // Alphanumeric ones compare in ASCII order.
      {"1.0.0-Beta", "1.0.0-alpha", -1},    // ASCII: upper case first.
      {"1.0.0-alpha-1", "1.0.0-alpha", 1},  // Hyphens belong to the identifier.
      {"1.0.0-a.b.c", "1.0.0-a.b", 1},      // More fields win when the rest is equal.
      {"1.0.0-x.7.z.92", "1.0.0-x.7.z.92", 0},
      {"1.0.0-rc.1+build.5", "1.0.0-rc.1", 0},  // Build metadata is ignored.
      {"1.0.0+20130313144700", "1.0.0+exp.sha.5114f85", 0},
      {"1.0.0+001", "1.0.0", 0},  // Leading zeros are fine in build metadata.
      {"1.0.0-0.3.7", "1.0.0-0.3.8", -1},
      {"18446744073709551616.0.0", "18446744073709551615.0.0", 1},  // Beyond uint64.
  };
  for (const Case& c : cases) {
    EXPECT_EQ(CompareSemver(c.a, c.b), c.want) << c.a << " vs " << c.b;
    EXPECT_EQ(CompareSemver(c.b, c.a), -c.want) << c.b << " vs " << c.a;
  }
}

TEST(SemverTest, NotSemver) {
  const char* bad[] = {"",          "1",         "1.2",      "1.2.3.4",   "v1.2.3",  "01.2.3",
                       "1.02.3",    "1.2.03",    "1.2.3-01", "1.2.3-",    "1.2.3+",  "1.2.3-a..b",
                       "1.2.3-a_b", "1.2.3+a_b", "1.2.3-+b", " 1.2.3",    "1.2.3 ",  "-1.2.3",
                       "1..3",      "1.2.x",     "latest",   "1.2.3+b+c", "1.2.3-é", "1.2.3\n"};
  for (const char* v : bad) {
    EXPECT_FALSE(CompareSemver(v, "1.0.0").has_value()) << v;
    EXPECT_FALSE(CompareSemver("1.0.0", v).has_value()) << v;
  }
  EXPECT_TRUE(CompareSemver("0.0.0", "0.0.0").has_value());
  EXPECT_TRUE(CompareSemver("1.2.3-0a", "1.2.3").has_value());  // Alphanumeric, not numeric.
}

TEST(SemverTest, DeltaStatusNames) {
  EXPECT_STREQ(DeltaStatusName(DeltaStatus::kQueued), "queued");
  EXPECT_STREQ(DeltaStatusName(DeltaStatus::kRunning), "running");
  EXPECT_STREQ(DeltaStatusName(DeltaStatus::kReady), "ready");
  EXPECT_STREQ(DeltaStatusName(DeltaStatus::kNotWorth), "not_worth");
  EXPECT_STREQ(DeltaStatusName(DeltaStatus::kFailed), "failed");
}

}  // namespace
}  // namespace ds::repo
