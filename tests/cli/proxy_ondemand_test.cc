// On-demand deltas made by a proxy, end to end: a real master that makes deltas only from the
// previous version (--delta-history 1) and a real `deltastream serve --role proxy` in front of
// it. A device asking for v1 -> v4 (a pair the master never made) gets 202 + Retry-After while
// the proxy makes the delta, then a delta descriptor with source "on-demand"; its chunk map and
// chunks come from the proxy's own store and verify; `deltastream apply` rebuilds v4 byte for
// byte, whose hash is the master-signed one. Also: upstream deltas are relayed with source
// "upstream", fallback=full answers the full artifact at once, a full queue is 503 + Retry-After,
// and on-demand deltas survive a proxy restart.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"
#include "repo/repo.h"
#include "stream/stream.h"
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

class ProxyOnDemandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    master_ = std::make_unique<ServerProcess>(dir_.Join("master"), dir_.Join("master.log"),
                                              std::vector<std::string>{"--delta-history", "1"});
    ASSERT_FALSE(master_->url().empty());
    // Each version: the previous one with scattered flips and 200 KB of new data, so a patch
    // spans several 64 KiB leaves and stays far below the artifact.
    Bytes v = testing::RandomBytes(2 << 20, 31);
    for (int k = 0; k < 4; ++k) {
      if (k > 0) {
        for (size_t i = 1000 + 77 * k; i < v.size(); i += 60000) v[i] ^= 0x21;
        const Bytes extra = testing::RandomBytes(200000, 40 + k);
        v.insert(v.begin() + 300000 * k, extra.begin(), extra.end());
      }
      versions_.push_back(v);
      WriteFileOrDie(File(k), v);
      RunResult r = testing::RunProgram(
          DS_CLI_PATH, dir_,
          {"publish", "-q", "--artifact", "app", "--version", Version(k), File(k), "--wait",
           "--server", master_->url(), "--token-file", dir_.Join("master/admin.token")});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    // The master made 1->2, 2->3, 3->4 only.
    const json d = json::parse(GetUrl(master_->url() + "/v1/artifacts/app/deltas").body);
    ASSERT_EQ(d["deltas"].size(), 3u);
    for (const json& x : d["deltas"]) ASSERT_EQ(x["status"], "ready");
  }

  std::unique_ptr<ServerProcess> StartProxy(const std::string& name,
                                            std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--role", "proxy", "--upstream", master_->url()};
    args.insert(args.end(), extra.begin(), extra.end());
    auto p = std::make_unique<ServerProcess>(dir_.Join(name), dir_.Join(name + ".log"), args);
    EXPECT_FALSE(p->url().empty());
    return p;
  }

  std::string File(size_t k) const { return dir_.Join("app-" + std::to_string(k + 1)); }
  static std::string Version(size_t k) { return "1." + std::to_string(k) + ".0"; }
  std::string StreamPath(size_t from, size_t to, const std::string& more = "") const {
    return "/v1/artifacts/app/stream?from=" + Sha(versions_[from]) + "&to=" + Version(to) + more;
  }

  // Polls the stream until it is no longer 202 (at most 60 s); returns the last answer.
  net::ClientResponse WaitReady(const std::string& url) {
    net::ClientResponse r;
    for (int i = 0; i < 300; ++i) {
      r = GetUrl(url);
      if (r.status != 202) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return r;
  }

  // The verified "signed" object of the artifact's metadata.
  json SignedMetadata() {
    const std::string pub = json::parse(GetUrl(master_->url() + "/v1/health").body)["public_key"];
    const net::ClientResponse m = GetUrl(master_->url() + "/v1/artifacts/app/metadata");
    Result<std::string> canonical = repo::VerifyMetadata(m.body, pub, std::time(nullptr), 0);
    EXPECT_TRUE(canonical.ok()) << canonical.status().ToString();
    return canonical.ok() ? json::parse(*canonical) : json::object();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> master_;
  std::vector<Bytes> versions_;
};

TEST_F(ProxyOnDemandTest, MakesServesAndKeepsADeltaTheMasterNeverMade) {
  auto proxy = StartProxy("proxy");
  const std::string url = proxy->url() + StreamPath(0, 3);

  // First ask: the job is queued; come back later.
  const net::ClientResponse first = GetUrl(url);
  ASSERT_EQ(first.status, 202) << first.body;
  const int retry = std::atoi(std::string(first.Header("retry-after")).c_str());
  EXPECT_GE(retry, 1);
  EXPECT_EQ(first.Header("cache-control"), "no-cache");
  const json pending = json::parse(first.body);
  EXPECT_EQ(pending["status"], "in_progress");
  EXPECT_EQ(pending["retry_after_s"], retry);

  const auto t0 = std::chrono::steady_clock::now();
  const net::ClientResponse ready = WaitReady(url);
  ASSERT_EQ(ready.status, 200) << ready.body;
  Result<stream::StreamDescriptor> d = stream::ParseDescriptor(ready.body);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  std::printf("on-demand delta v1->v4: %llu bytes for a %llu-byte artifact, ready in %.2f s\n",
              static_cast<unsigned long long>(d->size),
              static_cast<unsigned long long>(d->result_size),
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  EXPECT_EQ(d->kind, "delta");
  EXPECT_EQ(d->source, "on-demand");
  EXPECT_EQ(d->format, "dspf");
  EXPECT_EQ(d->base_sha256, Sha(versions_[0]));
  EXPECT_EQ(d->to, Version(3));
  // The result is the master-signed version.
  const json signed_md = SignedMetadata();
  bool found = false;
  for (const json& v : signed_md["versions"]) {
    if (v["version"] == Version(3)) {
      EXPECT_EQ(v["sha256"], d->result_sha256);
      EXPECT_EQ(v["length"], d->result_size);
      found = true;
    }
  }
  EXPECT_TRUE(found);
  for (const json& x : signed_md["deltas"]) EXPECT_NE(x["sha256"], d->sha256);  // Unsigned.
  EXPECT_EQ(d->result_sha256, Sha(versions_[3]));
  EXPECT_LT(d->size, d->result_size / 2);

  // The chunk map and every chunk come from the proxy's own store, with the master's headers.
  const net::ClientResponse m = GetUrl(proxy->url() + d->chunk_map_url);
  ASSERT_EQ(m.status, 200) << m.body;
  EXPECT_EQ(ToHex(Sha256::Of(AsBytes(m.body))), d->chunk_map_sha256);
  EXPECT_EQ(m.Header("etag"), "\"" + d->chunk_map_sha256 + "\"");
  EXPECT_EQ(m.Header("cache-control"), "public, max-age=31536000, immutable");
  Result<stream::ChunkMap> map = stream::ParseChunkMap(AsBytes(m.body));
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  ASSERT_EQ(map->total_size(), d->size);
  ASSERT_GE(map->leaf_count(), 3u);
  Bytes patch;
  for (uint64_t first = 0; first < map->leaf_count(); first += 2) {
    const uint64_t last = std::min(map->leaf_count() - 1, first + 1);
    const net::ClientResponse c =
        GetUrl(proxy->url() + d->chunks_url + stream::ChunkRangeName(first, last));
    ASSERT_EQ(c.status, 200) << c.body;
    EXPECT_EQ(c.Header("etag"),
              "\"" + d->sha256 + ":" + stream::ChunkRangeName(first, last) + "\"");
    EXPECT_EQ(c.Header("cache-control"), "public, max-age=31536000, immutable");
    EXPECT_EQ(c.Header("x-leaf-size"), std::to_string(d->leaf_size));
    EXPECT_EQ(c.Header("x-chunk-map-sha256"), d->chunk_map_sha256);
    ASSERT_TRUE(map->VerifyChunk(first, AsBytes(c.body)).ok());
    patch.insert(patch.end(), c.body.begin(), c.body.end());
  }
  EXPECT_EQ(Sha(patch), d->sha256);
  const std::string past = stream::ChunkRangeName(map->leaf_count(), map->leaf_count());
  EXPECT_EQ(GetUrl(proxy->url() + d->chunks_url + past).status, 416);
  EXPECT_EQ(GetUrl(proxy->url() + d->chunks_url + "3-1").status, 400);
  // The whole patch is also a blob of the proxy.
  EXPECT_TRUE(GetUrl(proxy->url() + "/v1/blobs/" + d->sha256).body ==
              std::string(patch.begin(), patch.end()));

  // The real applier rebuilds v4 from v1, byte for byte.
  WriteFileOrDie(dir_.Join("ondemand.patch"), patch);
  RunResult a = testing::RunProgram(
      DS_CLI_PATH, dir_, {"apply", File(0), dir_.Join("ondemand.patch"), "-o", dir_.Join("out")});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_TRUE(ReadFileOrDie(dir_.Join("out")) == versions_[3]);

  // An upstream delta is relayed and says so; no base: the full artifact.
  Result<stream::StreamDescriptor> up =
      stream::ParseDescriptor(GetUrl(proxy->url() + StreamPath(2, 3)).body);
  ASSERT_TRUE(up.ok());
  EXPECT_EQ(up->kind, "delta");
  EXPECT_EQ(up->source, "upstream");
  EXPECT_GT(up->delta_id, 0);
  Result<stream::StreamDescriptor> full =
      stream::ParseDescriptor(GetUrl(proxy->url() + "/v1/artifacts/app/stream").body);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->kind, "full");
  EXPECT_EQ(full->source, "full");

  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_ondemand_jobs_done_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_ondemand_jobs_failed_total"), 0);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_ondemand_jobs_queued"), 0);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_ondemand_jobs_running"), 0);
  EXPECT_GE(Metric(proxy->url(), "ds_proxy_streams_pending_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_streams_ondemand_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_streams_upstream_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_delta_bytes_saved_total"),
            static_cast<double>((d->result_size - d->size) + (up->result_size - up->size)));

  // A second proxy tier (making no deltas itself) relays the first tier's on-demand delta.
  {
    std::vector<std::string> args = {
        "--role", "proxy", "--upstream", proxy->url(), "--ondemand-workers", "0"};
    ServerProcess tier2(dir_.Join("tier2"), dir_.Join("tier2.log"), args);
    ASSERT_FALSE(tier2.url().empty());
    const net::ClientResponse t = GetUrl(tier2.url() + StreamPath(0, 3));
    ASSERT_EQ(t.status, 200) << t.body;
    Result<stream::StreamDescriptor> td = stream::ParseDescriptor(t.body);
    ASSERT_TRUE(td.ok());
    EXPECT_EQ(td->source, "on-demand");
    EXPECT_EQ(td->sha256, d->sha256);
    EXPECT_EQ(GetUrl(tier2.url() + td->chunk_map_url).body, m.body);
    const net::ClientResponse c0 = GetUrl(tier2.url() + td->chunks_url + "0-0");
    ASSERT_EQ(c0.status, 200);
    EXPECT_TRUE(map->VerifyChunk(0, AsBytes(c0.body)).ok());
  }

  // A restarted proxy still has it: a delta at once.
  proxy.reset();
  proxy = StartProxy("proxy");
  const net::ClientResponse again = GetUrl(proxy->url() + StreamPath(0, 3));
  ASSERT_EQ(again.status, 200) << again.body;
  Result<stream::StreamDescriptor> d2 = stream::ParseDescriptor(again.body);
  ASSERT_TRUE(d2.ok());
  EXPECT_EQ(d2->source, "on-demand");
  EXPECT_EQ(d2->sha256, d->sha256);
  EXPECT_EQ(GetUrl(proxy->url() + d2->chunks_url + "0-0").status, 200);
}

TEST_F(ProxyOnDemandTest, FallbackFullAnswersAtOnceWhileTheJobRuns) {
  auto proxy = StartProxy("proxy");
  const net::ClientResponse r = GetUrl(proxy->url() + StreamPath(0, 2, "&fallback=full"));
  ASSERT_EQ(r.status, 200) << r.body;
  Result<stream::StreamDescriptor> d = stream::ParseDescriptor(r.body);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->kind, "full");
  EXPECT_EQ(d->source, "full");
  EXPECT_EQ(d->sha256, Sha(versions_[2]));
  EXPECT_EQ(d->size, versions_[2].size());
  // The job was queued all the same: later the delta is there.
  const net::ClientResponse later = WaitReady(proxy->url() + StreamPath(0, 2));
  ASSERT_EQ(later.status, 200) << later.body;
  Result<stream::StreamDescriptor> d2 = stream::ParseDescriptor(later.body);
  ASSERT_TRUE(d2.ok());
  EXPECT_EQ(d2->source, "on-demand");
  EXPECT_EQ(GetUrl(proxy->url() + StreamPath(0, 2, "&fallback=nope")).status, 400);
}

TEST_F(ProxyOnDemandTest, FullQueueIs503WithRetryAfter) {
  // One worker, one waiting job: the first pair runs, the second waits, the third is refused.
  auto proxy = StartProxy("proxy", {"--ondemand-workers", "1", "--ondemand-queue", "1"});
  EXPECT_EQ(GetUrl(proxy->url() + StreamPath(0, 3)).status, 202);
  // The worker has taken the first job off the queue (on a loaded machine that takes a moment;
  // until then the second job would find the queue full).
  for (int i = 0; i < 200 && Metric(proxy->url(), "ds_proxy_ondemand_jobs_queued") > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(GetUrl(proxy->url() + StreamPath(1, 3)).status, 202);
  const net::ClientResponse refused = GetUrl(proxy->url() + StreamPath(0, 2));
  ASSERT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(net::StatusFromResponse(refused).code(), ErrorCode::kUnavailable);
  EXPECT_GE(std::atoi(std::string(refused.Header("retry-after")).c_str()), 1);
  // With fallback=full the device is not refused: it gets the artifact.
  const net::ClientResponse full = GetUrl(proxy->url() + StreamPath(0, 2, "&fallback=full"));
  ASSERT_EQ(full.status, 200);
  EXPECT_EQ(json::parse(full.body)["source"], "full");
  EXPECT_GE(Metric(proxy->url(), "ds_proxy_ondemand_jobs_refused_total"), 1);
  // Both accepted jobs finish.
  EXPECT_EQ(WaitReady(proxy->url() + StreamPath(0, 3)).status, 200);
  EXPECT_EQ(WaitReady(proxy->url() + StreamPath(1, 3)).status, 200);
}

TEST_F(ProxyOnDemandTest, DisabledOrUnknownBaseGivesTheFullArtifact) {
  auto proxy = StartProxy("proxy", {"--ondemand-workers", "0"});
  Result<stream::StreamDescriptor> d =
      stream::ParseDescriptor(GetUrl(proxy->url() + StreamPath(0, 3)).body);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->kind, "full");
  auto proxy2 = StartProxy("proxy2");
  const std::string unknown = "/v1/artifacts/app/stream?from=" + std::string(64, 'a');
  const net::ClientResponse r = GetUrl(proxy2->url() + unknown);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["kind"], "full");
  EXPECT_EQ(Metric(proxy2->url(), "ds_proxy_ondemand_jobs_queued") +
                Metric(proxy2->url(), "ds_proxy_ondemand_jobs_running") +
                Metric(proxy2->url(), "ds_proxy_ondemand_jobs_done_total"),
            0);
  EXPECT_EQ(GetUrl(proxy2->url() + "/v1/artifacts/app/stream?from=xyz").status, 400);
}

}  // namespace
}  // namespace ds
