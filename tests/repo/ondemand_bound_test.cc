// The proxy's on-demand delta store under its size bound (repo/proxy_deltas.h): real jobs (the
// generator, the verifying applier) over artifacts in local files. When a new pair pushes the
// store over max_stored_bytes, the least recently used ready pair goes, files and record; a pair
// used within the grace stays; an evicted pair is made again when asked; the bound holds across
// a reopen with a lower bound.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "common/hash.h"
#include "repo/proxy_deltas.h"
#include "support/test_util.h"

namespace ds::repo {
namespace {

using ds::testing::RandomBytes;
using ds::testing::TempDir;

class OnDemandBoundTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A base and three results, each the base with a different 300 KB of new data: every patch
    // is about 300 KB.
    base_ = RandomBytes(1 << 20, 5);
    Add(base_);
    for (int k = 0; k < 3; ++k) {
      Bytes v = base_;
      const Bytes extra = RandomBytes(300000, 60 + k);
      v.insert(v.begin() + 200000 * (k + 1), extra.begin(), extra.end());
      results_.push_back(Add(v));
    }
  }

  std::string Add(const Bytes& data) {
    const std::string sha = ToHex(Sha256::Of(data));
    const std::string path = dir_.Join("art-" + sha.substr(0, 12));
    ds::testing::WriteFileOrDie(path, data);
    files_[sha] = {path, data.size()};
    return sha;
  }

  std::unique_ptr<OnDemandDeltas> Open(uint64_t max_bytes, int64_t grace_ms) {
    OnDemandOptions o;
    o.dir = dir_.Join("ondemand");
    o.max_stored_bytes = max_bytes;
    o.evict_grace_ms = grace_ms;
    Result<std::unique_ptr<OnDemandDeltas>> r =
        OnDemandDeltas::Open(o, [this](const std::string& sha) -> Result<std::string> {
          auto it = files_.find(sha);
          if (it == files_.end()) return Error(ErrorCode::kNotFound, "no artifact " + sha);
          return it->second.first;
        });
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(*r) : nullptr;
  }

  // Requests the pair base -> results_[k] and waits until it is made.
  OnDemandDelta Make(OnDemandDeltas* od, int k) {
    const std::string base = ToHex(Sha256::Of(base_));
    Result<OnDemandDelta> r =
        od->Request(base, base_.size(), results_[k], files_[results_[k]].second);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    for (int i = 0; i < 600; ++i) {
      std::optional<OnDemandDelta> p = od->Find(base, results_[k]);
      if (p && p->state != OnDemandState::kQueued && p->state != OnDemandState::kRunning) {
        return *p;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "pair " << k << " not made within 30 s";
    return {};
  }

  bool Ready(OnDemandDeltas* od, int k) {
    std::optional<OnDemandDelta> p = od->Find(ToHex(Sha256::Of(base_)), results_[k]);
    return p && p->state == OnDemandState::kReady;
  }

  TempDir dir_;
  Bytes base_;
  std::vector<std::string> results_;
  std::map<std::string, std::pair<std::string, uint64_t>> files_;  // sha -> path, size
};

TEST_F(OnDemandBoundTest, LeastRecentlyUsedPairGoesWhenTheBoundIsPassed) {
  // Room for two patches (about 300 KB each, plus their chunk maps), not three.
  auto od = Open(800000, /*grace_ms=*/0);
  ASSERT_NE(od, nullptr);
  const OnDemandDelta p0 = Make(od.get(), 0);
  ASSERT_EQ(p0.state, OnDemandState::kReady) << p0.error;
  ASSERT_GT(p0.size, 200000u);
  ASSERT_EQ(Make(od.get(), 1).state, OnDemandState::kReady);
  EXPECT_EQ(od->stats().evicted, 0u);
  // Pair 0 is used again (a device streams it): pair 1 is now the least recently used.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(od->ServeChunk(p0.sha256, "0-0").has_value());
  ASSERT_EQ(Make(od.get(), 2).state, OnDemandState::kReady);
  EXPECT_EQ(od->stats().evicted, 1u);
  EXPECT_LE(od->stats().stored_bytes, 800000u);
  EXPECT_TRUE(Ready(od.get(), 0));
  EXPECT_FALSE(Ready(od.get(), 1)) << "the least recently used pair stayed";
  EXPECT_TRUE(Ready(od.get(), 2));
  // Its files are gone with it; the others still serve.
  const OnDemandDelta p2 = *od->Find(ToHex(Sha256::Of(base_)), results_[2]);
  EXPECT_TRUE(od->ServeObject(p2.sha256).has_value());
  EXPECT_TRUE(od->ServeObject(p0.chunk_map_sha256).has_value());
  // Asked again, the evicted pair is made again (and another one goes).
  EXPECT_EQ(Make(od.get(), 1).state, OnDemandState::kReady);
  EXPECT_EQ(od->stats().evicted, 2u);
  EXPECT_LE(od->stats().stored_bytes, 800000u);

  // Reopened with room for one patch: the bound holds at once.
  od.reset();
  od = Open(400000, 0);
  ASSERT_NE(od, nullptr);
  EXPECT_LE(od->stats().stored_bytes, 400000u);
  int ready = 0;
  for (int k = 0; k < 3; ++k) ready += Ready(od.get(), k) ? 1 : 0;
  EXPECT_EQ(ready, 1);
}

TEST_F(OnDemandBoundTest, PairsInUseWithinTheGraceStayOverTheBound) {
  auto od = Open(400000, /*grace_ms=*/600000);
  ASSERT_NE(od, nullptr);
  ASSERT_EQ(Make(od.get(), 0).state, OnDemandState::kReady);
  ASSERT_EQ(Make(od.get(), 1).state, OnDemandState::kReady);
  // Both were used moments ago: over the bound for a while rather than cut a device's stream.
  EXPECT_EQ(od->stats().evicted, 0u);
  EXPECT_TRUE(Ready(od.get(), 0));
  EXPECT_TRUE(Ready(od.get(), 1));
  EXPECT_GT(od->stats().stored_bytes, 400000u);
}

}  // namespace
}  // namespace ds::repo
