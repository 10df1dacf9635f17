// The proxy's storage policy end to end (--store): a real master with four versions and their
// deltas, and real `deltastream serve --role proxy` processes.
//  - delta: only keyframes (every 2nd version here) are kept in full; GET /v1/blobs/<sha> of
//    another version is rebuilt from the nearest keyframe through the signed deltas and is byte
//    identical; the cache directory holds no full copy of a non-keyframe version; a restarted
//    proxy rebuilds from its store without downloading an artifact again.
//  - full: delta patches are relayed, verified, and not kept.
#include "repo/proxy_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"
#include "support/process_util.h"
#include "support/test_util.h"

#ifndef DS_CLI_PATH
#error "DS_CLI_PATH must name the deltastream binary"
#endif

namespace ds {
namespace {

using json = nlohmann::json;
using testing::ReadFileOrDie;
using testing::RunResult;
using testing::TempDir;
using testing::WriteFileOrDie;

class ServerProcess : public testing::ServerProcess {
 public:
  ServerProcess(const std::string& data_dir, const std::string& log_path,
                std::vector<std::string> extra = {})
      : testing::ServerProcess(DS_CLI_PATH, data_dir, log_path, std::move(extra)) {}
};

net::ClientResponse GetUrl(const std::string& url) {
  net::Client client;
  Result<net::ClientResponse> r = client.Get(url);
  EXPECT_TRUE(r.ok()) << url << ": " << r.status().ToString();
  return r.ok() ? *r : net::ClientResponse{};
}

double Metric(const std::string& base_url, const std::string& name) {
  const std::string text = GetUrl(base_url + "/metrics").body;
  const std::string needle = "\n" + name + " ";
  const size_t at = text.find(needle);
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + needle.size(), nullptr);
}

std::string Sha(const Bytes& b) { return ToHex(Sha256::Of(b)); }
std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }

// SHA-256 of every file under |dir|, without its tmp/ directories (scratch files that are
// unlinked after a grace period) unless |with_tmp|.
std::vector<std::string> KeptFileHashes(const std::string& dir, bool with_tmp = false) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    if (!with_tmp && e.path().string().find("/tmp/") != std::string::npos) continue;
    out.push_back(Sha(ReadFileOrDie(e.path().string())));
  }
  return out;
}

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

class ProxyStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    master_ = std::make_unique<ServerProcess>(dir_.Join("master"), dir_.Join("master.log"));
    ASSERT_FALSE(master_->url().empty());
    Bytes v = testing::RandomBytes(2 << 20, 51);
    for (int k = 0; k < 4; ++k) {
      if (k > 0) {
        for (size_t i = 500 + 31 * k; i < v.size(); i += 70000) v[i] ^= 0x44;
        const Bytes extra = testing::RandomBytes(100000, 60 + k);
        v.insert(v.begin() + 250000 * k, extra.begin(), extra.end());
      }
      versions_.push_back(v);
      const std::string file = dir_.Join("app-" + std::to_string(k));
      WriteFileOrDie(file, v);
      RunResult r = testing::RunProgram(
          DS_CLI_PATH, dir_,
          {"publish", "-q", "--artifact", "app", "--version", "1." + std::to_string(k) + ".0", file,
           "--wait", "--server", master_->url(), "--token-file", dir_.Join("master/admin.token")});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
  }

  std::unique_ptr<ServerProcess> StartProxy(const std::string& name,
                                            std::vector<std::string> extra) {
    std::vector<std::string> args = {
        "--role", "proxy", "--upstream", master_->url(), "--ondemand-workers", "0"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto p = std::make_unique<ServerProcess>(dir_.Join(name), dir_.Join(name + ".log"), args);
    EXPECT_FALSE(p->url().empty());
    return p;
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> master_;
  std::vector<Bytes> versions_;
};

TEST_F(ProxyStoreTest, DeltaPolicyRebuildsNonKeyframesByteIdentical) {
  auto proxy = StartProxy("proxy", {"--store", "delta", "--keyframe-every", "2"});
  // Versions 0 and 2 are keyframes; 1 and 3 are rebuilt (0 + delta, 2 + delta).
  for (size_t k : {3u, 1u, 2u, 0u}) {
    SCOPED_TRACE(k);
    const net::ClientResponse b = GetUrl(proxy->url() + "/v1/blobs/" + Sha(versions_[k]));
    ASSERT_EQ(b.status, 200) << b.body;
    EXPECT_TRUE(b.body == Str(versions_[k]));
    EXPECT_EQ(b.Header("etag"), "\"" + Sha(versions_[k]) + "\"");
    EXPECT_EQ(b.Header("x-deltastream-cache"), k % 2 == 0 ? "store" : "rebuilt");
  }
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_rebuilds_total"), 2);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_rebuild_failures_total"), 0);
  const double stored = Metric(proxy->url(), "ds_proxy_store_bytes");
  EXPECT_GT(stored, 2 * (2 << 20));
  uint64_t all_versions = 0;
  for (const Bytes& v : versions_) all_versions += v.size();
  std::printf("--store delta: %.0f bytes kept for %llu bytes of versions\n", stored,
              static_cast<unsigned long long>(all_versions));
  // Range and a second request work on a rebuilt artifact as well.
  net::Client client;
  Result<net::ClientResponse> range =
      client.Get(proxy->url() + "/v1/blobs/" + Sha(versions_[3]), {{"Range", "bytes=100-199"}});
  ASSERT_TRUE(range.ok());
  EXPECT_EQ(range->status, 206);
  EXPECT_EQ(range->body, Str(versions_[3]).substr(100, 100));

  // On disk: the keyframes and deltas, never a full copy of versions 1 or 3.
  const std::vector<std::string> kept = KeptFileHashes(dir_.Join("proxy"));
  EXPECT_TRUE(Contains(kept, Sha(versions_[0])));
  EXPECT_TRUE(Contains(kept, Sha(versions_[2])));
  EXPECT_FALSE(Contains(kept, Sha(versions_[1])));
  EXPECT_FALSE(Contains(kept, Sha(versions_[3])));

  // A restarted proxy rebuilds from its store: no artifact is downloaded again.
  proxy.reset();
  proxy = StartProxy("proxy", {"--store", "delta", "--keyframe-every", "2"});
  const net::ClientResponse again = GetUrl(proxy->url() + "/v1/blobs/" + Sha(versions_[3]));
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_TRUE(again.body == Str(versions_[3]));
  EXPECT_EQ(again.Header("x-deltastream-cache"), "rebuilt");
  EXPECT_LT(Metric(proxy->url(), "ds_proxy_bytes_fetched_total"), 64 << 10);  // Metadata only.
  const std::vector<std::string> kept2 = KeptFileHashes(dir_.Join("proxy"));
  EXPECT_FALSE(Contains(kept2, Sha(versions_[3])));
  // The rebuilt scratch copy itself is gone once the grace period (10 s) has passed.
  std::this_thread::sleep_for(std::chrono::milliseconds(10500));
  EXPECT_EQ(GetUrl(proxy->url() + "/v1/artifacts/app/versions").status, 200);  // Sweeps.
  const std::vector<std::string> all = KeptFileHashes(dir_.Join("proxy"), /*with_tmp=*/true);
  EXPECT_FALSE(Contains(all, Sha(versions_[1])));
  EXPECT_FALSE(Contains(all, Sha(versions_[3])));
}

TEST_F(ProxyStoreTest, FullPolicyRelaysDeltasWithoutKeepingThem) {
  auto proxy = StartProxy("proxy", {"--store", "full"});
  const json deltas = json::parse(GetUrl(master_->url() + "/v1/artifacts/app/deltas").body);
  ASSERT_GE(deltas["deltas"].size(), 3u);
  std::vector<std::string> patch_hashes;
  for (const json& d : deltas["deltas"]) {
    if (d["status"] != "ready") continue;
    const std::string sha = d["sha256"];
    const net::ClientResponse data =
        GetUrl(proxy->url() + "/v1/deltas/" + std::to_string(d["id"].get<int64_t>()) + "/data");
    ASSERT_EQ(data.status, 200) << data.body;
    EXPECT_EQ(ToHex(Sha256::Of(AsBytes(data.body))), sha);
    EXPECT_EQ(data.Header("x-deltastream-cache"), "relayed");
    const net::ClientResponse blob = GetUrl(proxy->url() + "/v1/blobs/" + sha);
    ASSERT_EQ(blob.status, 200);
    EXPECT_EQ(blob.body, data.body);
    EXPECT_EQ(blob.Header("x-deltastream-cache"), "relayed");
    patch_hashes.push_back(sha);
  }
  // Artifacts are cached as usual.
  for (int i = 0; i < 2; ++i) {
    const net::ClientResponse b = GetUrl(proxy->url() + "/v1/blobs/" + Sha(versions_[1]));
    ASSERT_EQ(b.status, 200);
    // The first answer streams from the upstream fetch as it arrives.
    EXPECT_EQ(b.Header("x-deltastream-cache"), i == 0 ? "miss-arriving" : "hit");
  }
  const std::vector<std::string> kept = KeptFileHashes(dir_.Join("proxy"));
  EXPECT_TRUE(Contains(kept, Sha(versions_[1])));
  for (const std::string& sha : patch_hashes) EXPECT_FALSE(Contains(kept, sha));
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_transient_relays_total"),
            2.0 * static_cast<double>(patch_hashes.size()));
}

// The device-facing chain: fewest patch bytes, not fewest steps, within the step bound.
TEST(ProxyStorePlan, CheapestDeltaPathByBytes) {
  repo::SignedRelease r;
  for (int i = 0; i < 5; ++i) {
    r.versions.push_back({"1." + std::to_string(i), std::string(64, 'a' + i), 100});
  }
  auto delta = [&](int from, int to, char c, uint64_t length) {
    r.deltas.push_back({from * 10 + to, r.versions[from].sha256, r.versions[to].sha256,
                        std::string(64, c), length});
  };
  delta(0, 1, '0', 10);
  delta(1, 2, '1', 10);
  delta(2, 3, '2', 10);
  delta(0, 3, '3', 50);  // One step, but more bytes than 0->1->2->3.
  delta(3, 4, '4', 10);
  delta(4, 0, '5', 1);  // A cycle back to the start changes nothing.
  const std::string& v0 = r.versions[0].sha256;
  std::optional<std::vector<repo::SignedRelease::Delta>> p =
      repo::CheapestDeltaPath(r, v0, r.versions[3].sha256, 16);
  ASSERT_TRUE(p);
  ASSERT_EQ(p->size(), 3u);
  EXPECT_EQ((*p)[0].sha256, std::string(64, '0'));
  EXPECT_EQ((*p)[2].sha256, std::string(64, '2'));
  // With at most 2 steps the direct (dearer) delta is the way.
  p = repo::CheapestDeltaPath(r, v0, r.versions[3].sha256, 2);
  ASSERT_TRUE(p);
  ASSERT_EQ(p->size(), 1u);
  EXPECT_EQ((*p)[0].sha256, std::string(64, '3'));
  p = repo::CheapestDeltaPath(r, v0, r.versions[4].sha256, 16);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->size(), 4u);
  // Unreachable (nothing leads to an unknown version), or too far for the bound.
  EXPECT_FALSE(repo::CheapestDeltaPath(r, v0, std::string(64, 'z'), 16));
  EXPECT_FALSE(repo::CheapestDeltaPath(r, r.versions[1].sha256, v0, 1));
  EXPECT_TRUE(repo::CheapestDeltaPath(r, r.versions[1].sha256, v0, 16));
}

TEST(ProxyStorePlan, ChainsFromTheNearestKeyframe) {
  repo::SignedRelease r;
  for (int i = 0; i < 6; ++i)
    r.versions.push_back({"1." + std::to_string(i), std::string(64, 'a' + i), 10});
  auto delta = [&](int from, int to, char c) {
    r.deltas.push_back(
        {from * 10 + to, r.versions[from].sha256, r.versions[to].sha256, std::string(64, c), 5});
  };
  delta(0, 1, '0');
  delta(1, 2, '1');
  delta(2, 3, '2');
  delta(1, 3, '3');
  delta(3, 4, '4');
  auto none = [](const std::string&) { return false; };
  // Every 4th version is a keyframe: 0 and 4.
  EXPECT_TRUE(repo::IsKeyframe(0, 4));
  EXPECT_TRUE(repo::IsKeyframe(4, 4));
  EXPECT_FALSE(repo::IsKeyframe(3, 4));
  std::optional<repo::RebuildPlan> p = repo::PlanRebuild(r, 3, 4, none);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->source, 0u);
  ASSERT_EQ(p->deltas.size(), 2u);  // 0->1->3, not 0->1->2->3.
  EXPECT_EQ(p->deltas[0].sha256, std::string(64, '0'));
  EXPECT_EQ(p->deltas[1].sha256, std::string(64, '3'));
  p = repo::PlanRebuild(r, 4, 4, none);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->source, 4u);
  EXPECT_TRUE(p->deltas.empty());
  // A stored full copy shortens the chain.
  p = repo::PlanRebuild(r, 3, 4, [&](const std::string& s) { return s == r.versions[2].sha256; });
  ASSERT_TRUE(p);
  EXPECT_EQ(p->source, 2u);
  EXPECT_EQ(p->deltas.size(), 1u);
  // Version 5 has no delta into it: no plan.
  EXPECT_FALSE(repo::PlanRebuild(r, 5, 4, none));
  EXPECT_FALSE(repo::PlanRebuild(r, 9, 4, none));
  EXPECT_EQ(repo::ParseStorePolicy("delta").value(), repo::StorePolicy::kDelta);
  EXPECT_FALSE(repo::ParseStorePolicy("half").ok());
  EXPECT_FALSE(repo::ParseSignedRelease("{}").ok());
}

}  // namespace
}  // namespace ds
