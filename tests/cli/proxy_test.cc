// The proxy repository end to end: a real master and real `deltastream serve --role proxy`
// processes on 127.0.0.1 (ephemeral ports): relayed lists and byte-identical signed metadata,
// verified blobs and deltas cached and served, two proxy tiers, the master killed (cached
// objects and stale lists still served, uncached ones 503 quickly), single flight, eviction,
// writes refused; and the verify-before-cache check on its own.
#include "repo/proxy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"
#include "repo/repo.h"
#include "support/process_util.h"
#include "support/test_util.h"

#ifndef DS_CLI_PATH
#error "DS_CLI_PATH must name the deltastream binary"
#endif

namespace ds {
namespace {

using json = nlohmann::json;
using testing::ReadFileOrDie;
using testing::TempDir;
using testing::WriteFileOrDie;

using testing::RunResult;

RunResult RunCli(const TempDir& dir, const std::vector<std::string>& args) {
  return testing::RunProgram(DS_CLI_PATH, dir, args);
}

// `deltastream serve` on an ephemeral port (support/process_util.h).
class ServerProcess : public testing::ServerProcess {
 public:
  ServerProcess(const std::string& data_dir, const std::string& log_path,
                std::vector<std::string> extra = {})
      : testing::ServerProcess(DS_CLI_PATH, data_dir, log_path, std::move(extra)) {}
};

net::ClientResponse GetUrl(const std::string& url,
                           const std::vector<std::pair<std::string, std::string>>& h = {}) {
  net::Client client;
  Result<net::ClientResponse> r = client.Get(url, h);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : net::ClientResponse{};
}

// The value of an unlabelled Prometheus sample, or -1.
double Metric(const std::string& base_url, const std::string& name) {
  const std::string text = GetUrl(base_url + "/metrics").body;
  const std::string needle = "\n" + name + " ";
  const size_t at = text.find(needle);
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + needle.size(), nullptr);
}

std::string Str(const Bytes& b) { return std::string(b.begin(), b.end()); }

class ProxyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    master_ = std::make_unique<ServerProcess>(dir_.Join("master"), dir_.Join("master.log"));
    ASSERT_FALSE(master_->url().empty());
    Bytes v1 = testing::RandomBytes(2 << 20, 1);
    Bytes v2 = v1;
    for (size_t i = 997; i < v2.size(); i += 65536) v2[i] ^= 0x5A;
    versions_ = {v1, v2};
    for (size_t k = 0; k < versions_.size(); ++k) {
      WriteFileOrDie(File(k), versions_[k]);
      RunResult r = RunCli(
          dir_, {"publish", "-q", "--artifact", "app", "--version", Version(k), File(k), "--wait",
                 "--server", master_->url(), "--token-file", dir_.Join("master/admin.token")});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    const json d = json::parse(GetUrl(master_->url() + "/v1/artifacts/app/deltas").body);
    ASSERT_EQ(d["deltas"].size(), 1u);
    ASSERT_EQ(d["deltas"][0]["status"], "ready");
    delta_id_ = d["deltas"][0]["id"].get<int64_t>();
    delta_ = GetUrl(master_->url() + "/v1/deltas/" + std::to_string(delta_id_) + "/data").body;
    ASSERT_FALSE(delta_.empty());
  }

  std::unique_ptr<ServerProcess> StartProxy(const std::string& name, const std::string& upstream,
                                            std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--role", "proxy", "--upstream", upstream};
    args.insert(args.end(), extra.begin(), extra.end());
    auto p = std::make_unique<ServerProcess>(dir_.Join(name), dir_.Join(name + ".log"), args);
    EXPECT_FALSE(p->url().empty());
    return p;
  }

  // Publishes |size| random bytes as artifact "big" 1.0.0 on the master; empty on failure.
  Bytes PublishBig(size_t size, uint64_t seed) {
    const Bytes big = testing::RandomBytes(size, seed);
    WriteFileOrDie(dir_.Join("big"), big);
    RunResult r =
        RunCli(dir_, {"publish", "-q", "--artifact", "big", "--version", "1.0.0", dir_.Join("big"),
                      "--server", master_->url(), "--token-file", dir_.Join("master/admin.token")});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code == 0 ? big : Bytes();
  }

  std::string File(size_t k) const { return dir_.Join("app-" + std::to_string(k + 1)); }
  std::string Version(size_t k) const { return "1." + std::to_string(k) + ".0"; }
  std::string BlobPath(size_t k) const { return "/v1/blobs/" + ToHex(Sha256::Of(versions_[k])); }
  std::string DeltaPath() const { return "/v1/deltas/" + std::to_string(delta_id_) + "/data"; }

  TempDir dir_;
  std::unique_ptr<ServerProcess> master_;
  std::vector<Bytes> versions_;
  int64_t delta_id_ = 0;
  std::string delta_;
};

TEST_F(ProxyTest, RelaysVerifiesCachesAndTiers) {
  auto proxy = StartProxy("proxy1", master_->url(), {"--proxy-ttl-ms", "300"});
  auto tier2 = StartProxy("proxy2", proxy->url());
  const std::string pub = json::parse(GetUrl(master_->url() + "/v1/health").body)["public_key"];

  for (const ServerProcess* p : {proxy.get(), tier2.get()}) {
    SCOPED_TRACE(p->url());
    // Lists: the master's JSON.
    EXPECT_EQ(GetUrl(p->url() + "/v1/artifacts/app/versions").body,
              GetUrl(master_->url() + "/v1/artifacts/app/versions").body);
    EXPECT_EQ(json::parse(GetUrl(p->url() + "/v1/artifacts/app/latest").body)["version"],
              Version(1));
    // Signed metadata: byte for byte, and it verifies with the master's key.
    const net::ClientResponse md = GetUrl(p->url() + "/v1/artifacts/app/metadata");
    ASSERT_EQ(md.status, 200);
    EXPECT_EQ(md.body, GetUrl(master_->url() + "/v1/artifacts/app/metadata").body);
    EXPECT_TRUE(repo::VerifyMetadata(md.body, pub, std::time(nullptr), 0).ok());
    // Blobs and delta data: identical, immutable, with the master's ETag.
    for (size_t k = 0; k < 2; ++k) {
      const net::ClientResponse b = GetUrl(p->url() + BlobPath(k));
      ASSERT_EQ(b.status, 200);
      EXPECT_TRUE(b.body == Str(versions_[k]));
      EXPECT_EQ(b.Header("etag"), "\"" + ToHex(Sha256::Of(versions_[k])) + "\"");
      EXPECT_NE(b.Header("cache-control").find("immutable"), std::string_view::npos);
    }
    const net::ClientResponse d = GetUrl(p->url() + DeltaPath());
    ASSERT_EQ(d.status, 200);
    EXPECT_TRUE(d.body == delta_);
    // The CLI works against a proxy.
    RunResult v = RunCli(dir_, {"versions", "app", "--json", "--server", p->url()});
    ASSERT_EQ(v.exit_code, 0) << v.err;
    EXPECT_EQ(json::parse(v.out)["versions"].size(), 2u);
    // Health reports the upstream.
    const json h = json::parse(GetUrl(p->url() + "/v1/health").body);
    EXPECT_EQ(h["role"], "proxy");
    EXPECT_EQ(h["upstream_reachable"], true);
  }

  // A second fetch is a hit, served from the cache file (Range works).
  const double hits = Metric(proxy->url(), "ds_proxy_hits_total");
  const double fetches = Metric(proxy->url(), "ds_proxy_upstream_fetches_total");
  const net::ClientResponse again = GetUrl(proxy->url() + BlobPath(0));
  EXPECT_TRUE(again.body == Str(versions_[0]));
  EXPECT_EQ(again.Header("x-deltastream-cache"), "hit");
  const net::ClientResponse range = GetUrl(proxy->url() + BlobPath(0), {{"Range", "bytes=10-19"}});
  EXPECT_EQ(range.status, 206);
  EXPECT_EQ(range.body, Str(versions_[0]).substr(10, 10));
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_hits_total"), hits + 2);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_upstream_fetches_total"), fetches);
  EXPECT_GT(Metric(proxy->url(), "ds_proxy_bytes_served_total"), 4 << 20);

  // 404s are relayed and negatively cached.
  const std::string missing = "/v1/blobs/" + std::string(64, 'e');
  EXPECT_EQ(GetUrl(proxy->url() + missing).status, 404);
  EXPECT_EQ(GetUrl(proxy->url() + missing).status, 404);
  EXPECT_GE(Metric(proxy->url(), "ds_proxy_negative_hits_total"), 1);
  EXPECT_EQ(GetUrl(proxy->url() + "/v1/blobs/nothex").status, 400);

  // Writes are refused: the proxy is read-only.
  net::Client client;
  Result<net::ClientResponse> put =
      client.Send("PUT", proxy->url() + "/v1/artifacts/app/versions/9.9.9", "bytes");
  ASSERT_TRUE(put.ok()) << put.status().ToString();
  EXPECT_EQ(put->status, 405);
  EXPECT_NE(put->body.find("read-only"), std::string::npos);
  Result<net::ClientResponse> tok =
      client.Send("POST", proxy->url() + "/v1/tokens", R"({"name":"x"})");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(tok->status, 405);
  RunResult pub_cli = RunCli(dir_, {"publish", "-q", "--artifact", "app", "--version", "9.9.9",
                                    File(0), "--server", proxy->url(), "--token", "x"});
  EXPECT_NE(pub_cli.exit_code, 0);
}

TEST_F(ProxyTest, MasterDownServesCachedAndStaleFailsFastOtherwise) {
  auto proxy = StartProxy("proxy1", master_->url(), {"--proxy-ttl-ms", "200"});
  auto tier2 = StartProxy("proxy2", proxy->url(), {"--proxy-ttl-ms", "200"});
  const std::string versions = GetUrl(master_->url() + "/v1/artifacts/app/versions").body;
  for (const ServerProcess* p : {proxy.get(), tier2.get()}) {
    ASSERT_EQ(GetUrl(p->url() + BlobPath(0)).status, 200);
    ASSERT_EQ(GetUrl(p->url() + "/v1/artifacts/app/versions").body, versions);
  }
  master_->Stop(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));  // Past the mutable TTL.

  for (const ServerProcess* p : {proxy.get(), tier2.get()}) {
    SCOPED_TRACE(p->url());
    const net::ClientResponse b = GetUrl(p->url() + BlobPath(0));
    EXPECT_EQ(b.status, 200);
    EXPECT_TRUE(b.body == Str(versions_[0]));
    const net::ClientResponse v = GetUrl(p->url() + "/v1/artifacts/app/versions");
    EXPECT_EQ(v.status, 200);
    EXPECT_EQ(v.body, versions);
    EXPECT_EQ(v.Header("x-deltastream-stale"), "1");
    EXPECT_NE(v.Header("warning").find("110"), std::string_view::npos);
    // Uncached: 503 unavailable, quickly, every time.
    for (int i = 0; i < 5; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const net::ClientResponse u = GetUrl(p->url() + BlobPath(1));
      EXPECT_EQ(u.status, 503);
      EXPECT_EQ(net::StatusFromResponse(u).code(), ErrorCode::kUnavailable) << u.body;
      EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
    }
  }
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_breaker_state"), 1);
  EXPECT_EQ(json::parse(GetUrl(proxy->url() + "/v1/health").body)["upstream_reachable"], false);

  // A restarted proxy rebuilds its index from the cache directory.
  proxy.reset();
  proxy = StartProxy("proxy1", master_->url());
  const net::ClientResponse b = GetUrl(proxy->url() + BlobPath(0));
  EXPECT_EQ(b.status, 200);
  EXPECT_TRUE(b.body == Str(versions_[0]));
  EXPECT_EQ(b.Header("x-deltastream-cache"), "hit");
}

TEST_F(ProxyTest, ConcurrentMissesMakeOneUpstreamFetch) {
  const Bytes big = PublishBig(8 << 20, 99);
  ASSERT_FALSE(big.empty());
  auto proxy = StartProxy("proxy1", master_->url());
  const std::string path = "/v1/blobs/" + ToHex(Sha256::Of(big));
  const double sent0 = Metric(master_->url(), "ds_http_bytes_sent_total");
  std::vector<std::thread> threads;
  std::vector<std::string> bodies(16);
  for (size_t i = 0; i < bodies.size(); ++i) {
    threads.emplace_back([&, i] { bodies[i] = GetUrl(proxy->url() + path).body; });
  }
  for (std::thread& t : threads) t.join();
  for (const std::string& b : bodies) EXPECT_TRUE(b == Str(big));
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_upstream_fetches_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_misses_total"),
            1 + Metric(proxy->url(), "ds_proxy_coalesced_total"));
  // The master's own count: one 8 MiB body went out, not sixteen.
  const double sent = Metric(master_->url(), "ds_http_bytes_sent_total") - sent0;
  EXPECT_GT(sent, 8 << 20);
  EXPECT_LT(sent, 2 * (8 << 20));
}

// An HTTP relay in front of the master that holds the body of one blob at its middle until
// released (and may corrupt its second half): a slow upstream made deterministic.
class GateRelay {
 public:
  explicit GateRelay(std::string upstream) : upstream_(std::move(upstream)) {
    net::ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.worker_threads = 8;
    server_ = std::make_unique<net::Server>(o);
    for (const char* p : {"/v1/health", "/v1/artifacts", "/v1/artifacts/{a}/{b}"}) {
      server_->Route("GET", p, [this](net::Request& req) { return Forward(req.path); });
    }
    server_->Route("GET", "/v1/blobs/{sha}", [this](net::Request& req) { return Blob(req); });
    EXPECT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }
  ~GateRelay() {
    Release();
    server_->Stop();
    for (std::thread& t : producers_) t.join();
  }
  const std::string& url() const { return url_; }
  void Gate(const std::string& sha, bool corrupt) {
    std::lock_guard<std::mutex> lock(mu_);
    gated_ = sha;
    corrupt_ = corrupt;
    released_ = false;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      released_ = true;
    }
    cv_.notify_all();
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    gated_.clear();
  }
  int held_bodies() const { return held_.load(); }

 private:
  net::Response Forward(const std::string& path) {
    Result<net::ClientResponse> r = net::Client().Get(upstream_ + path);
    if (!r.ok()) return net::Response::FromStatus(r.status());
    net::Response out = net::Response::Text(r->status, r->body, "application/json");
    return out;
  }
  net::Response Blob(net::Request& req) {
    const std::string sha = req.params["sha"];
    Result<net::ClientResponse> r = net::Client().Get(upstream_ + req.path);
    if (!r.ok()) return net::Response::FromStatus(r.status());
    bool corrupt = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (r->status != 200 || sha != gated_) {
        return net::Response::Text(r->status, r->body, "application/octet-stream");
      }
      corrupt = corrupt_;
    }
    std::shared_ptr<net::BodyStream> stream;
    net::Response out =
        net::Response::Streamed(200, "application/octet-stream", &stream, r->body.size());
    std::string body = std::move(r->body);
    if (corrupt) body[body.size() * 3 / 4] ^= 0x01;
    std::lock_guard<std::mutex> lock(mu_);
    producers_.emplace_back([this, stream, body = std::move(body)] {
      const size_t half = body.size() / 2;
      for (size_t at = 0; at < body.size(); at += 65536) {
        if (at >= half && at < half + 65536) {
          ++held_;
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait_for(lock, std::chrono::seconds(60), [&] { return released_; });
        }
        if (!stream->Write(body.substr(at, 65536))) return;
      }
      stream->Close();
    });
    return out;
  }

  std::string upstream_;
  std::unique_ptr<net::Server> server_;
  std::string url_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string gated_;
  bool corrupt_ = false;
  bool released_ = false;
  std::atomic<int> held_{0};
  std::vector<std::thread> producers_;
};

// Concurrent readers of an object the proxy is still fetching: each gets bytes as they arrive.
struct Reader {
  std::atomic<uint64_t> bytes{0};
  std::string body;
  Result<net::ClientResponse> result = Status(ErrorCode::kInternal, "not run");
  std::thread thread;
  // |pause_us|: the reader sleeps this long after every piece (a client on a slow link).
  void Start(const std::string& url, int pause_us = 0) {
    thread = std::thread([this, url, pause_us] {
      result = net::Client().GetStream(url, [this, pause_us](int, ByteView piece) {
        body.append(reinterpret_cast<const char*>(piece.data()), piece.size());
        bytes += piece.size();
        if (pause_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(pause_us));
        return Status::Ok();
      });
    });
  }
};

bool WaitUntil(const std::function<bool()>& pred, int seconds = 30) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (!pred() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

TEST_F(ProxyTest, ClientsAreServedWhileTheObjectIsStillArriving) {
  const Bytes big = PublishBig(6 << 20, 77);
  ASSERT_FALSE(big.empty());
  const std::string sha = ToHex(Sha256::Of(big));
  GateRelay relay(master_->url());
  relay.Gate(sha, /*corrupt=*/false);
  auto proxy = StartProxy("proxy1", relay.url());
  const std::string url = proxy->url() + "/v1/blobs/" + sha;

  std::vector<Reader> readers(3);
  for (Reader& r : readers) r.Start(url);
  // The relay holds the second half back; every reader already has most of the first.
  ASSERT_TRUE(WaitUntil([&] {
    for (Reader& r : readers) {
      if (r.bytes < (2u << 20)) return false;
    }
    return true;
  }));
  EXPECT_EQ(relay.held_bodies(), 1);
  for (Reader& r : readers) EXPECT_LT(r.bytes.load(), big.size() / 2 + 1);
  relay.Release();
  for (Reader& r : readers) {
    r.thread.join();
    ASSERT_TRUE(r.result.ok()) << r.result.status().ToString();
    EXPECT_EQ(r.result->status, 200);
    EXPECT_TRUE(r.body == Str(big));
  }
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_upstream_fetches_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_streamed_while_arriving_total"), 3);
  // Then from the cache, verified, with Range support.
  const net::ClientResponse again = GetUrl(url);
  EXPECT_TRUE(again.body == Str(big));
  EXPECT_EQ(again.Header("x-deltastream-cache"), "hit");
}

// A device on a slow link fetching an object the proxy gets much faster from its upstream: the
// reader falls tens of MiB behind the arrival. It is fed from the arriving file as its connection
// drains (nothing piles up in memory) and gets the whole object; a fast reader of the same flight
// is not held back by it.
TEST_F(ProxyTest, ASlowReaderFarBehindTheArrivalGetsTheWholeObject) {
  const Bytes big = PublishBig(40 << 20, 81);
  ASSERT_FALSE(big.empty());
  const std::string sha = ToHex(Sha256::Of(big));
  auto proxy = StartProxy("proxy1", master_->url());
  const std::string url = proxy->url() + "/v1/blobs/" + sha;
  Reader slow, fast;
  slow.Start(url, /*pause_us=*/1500);
  ASSERT_TRUE(WaitUntil([&] { return slow.bytes > 0; }));
  fast.Start(url);
  fast.thread.join();
  ASSERT_TRUE(fast.result.ok()) << fast.result.status().ToString();
  EXPECT_TRUE(fast.body == Str(big));
  EXPECT_LT(slow.bytes.load(), big.size() / 2) << "the slow reader was not slow: no test";
  slow.thread.join();
  ASSERT_TRUE(slow.result.ok()) << slow.result.status().ToString();
  EXPECT_EQ(slow.result->status, 200);
  EXPECT_EQ(slow.body.size(), big.size());
  EXPECT_TRUE(slow.body == Str(big));
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_upstream_fetches_total"), 1);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_stream_readers_dropped_total"), 0);
}

TEST_F(ProxyTest, AnArrivingObjectThatFailsVerificationIsNeverDeliveredWhole) {
  const Bytes big = PublishBig(4 << 20, 78);
  ASSERT_FALSE(big.empty());
  const std::string sha = ToHex(Sha256::Of(big));
  GateRelay relay(master_->url());
  relay.Gate(sha, /*corrupt=*/true);
  auto proxy = StartProxy("proxy1", relay.url());
  const std::string url = proxy->url() + "/v1/blobs/" + sha;
  std::vector<Reader> readers(2);
  for (Reader& r : readers) r.Start(url);
  ASSERT_TRUE(WaitUntil([&] { return readers[0].bytes > (1u << 20) && readers[1].bytes > 0; }));
  relay.Release();
  for (Reader& r : readers) {
    r.thread.join();
    EXPECT_FALSE(r.result.ok());  // The connection closes before Content-Length is reached.
    EXPECT_LT(r.body.size(), big.size());
    EXPECT_TRUE(Str(big).compare(0, r.body.size(), r.body) != 0 ||
                r.body.size() <= big.size() * 3 / 4);
  }
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_verify_failures_total"), 1);
  // Nothing corrupt was cached: with the upstream healthy again the object arrives intact.
  relay.Clear();
  const net::ClientResponse fixed = GetUrl(url);
  EXPECT_EQ(fixed.status, 200);
  EXPECT_TRUE(fixed.body == Str(big));
}

TEST_F(ProxyTest, TinyCacheEvictsAndStillServes) {
  auto proxy = StartProxy("proxy1", master_->url(), {"--cache-max-mib", "1"});
  for (int round = 0; round < 2; ++round) {
    for (size_t k = 0; k < 2; ++k) {
      const net::ClientResponse b = GetUrl(proxy->url() + BlobPath(k));
      ASSERT_EQ(b.status, 200);
      EXPECT_TRUE(b.body == Str(versions_[k]));
    }
    EXPECT_TRUE(GetUrl(proxy->url() + DeltaPath()).body == delta_);
  }
  EXPECT_GE(Metric(proxy->url(), "ds_proxy_evictions_total"), 4);
  EXPECT_EQ(Metric(proxy->url(), "ds_proxy_hits_total"), 0);
  // At most the newest object stays when it alone exceeds the bound.
  EXPECT_LE(Metric(proxy->url(), "ds_proxy_cache_bytes"), (2 << 20) + 4096);
}

TEST(ProxyVerify, VerifyBeforeCache) {
  TempDir dir;
  const Bytes data = testing::RandomBytes(3 << 20, 5);
  WriteFileOrDie(dir.Join("obj"), data);
  const std::string sha = ToHex(Sha256::Of(data));
  EXPECT_TRUE(repo::VerifyFileSha256(dir.Join("obj"), sha).ok());
  Bytes corrupt = data;
  corrupt[12345] ^= 1;
  WriteFileOrDie(dir.Join("bad"), corrupt);
  EXPECT_EQ(repo::VerifyFileSha256(dir.Join("bad"), sha).code(), ErrorCode::kDigestMismatch);
  EXPECT_EQ(repo::VerifyFileSha256(dir.Join("obj"), "xyz").code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(repo::VerifyFileSha256(dir.Join("obj"), std::string(64, 'A')).code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(repo::VerifyFileSha256(dir.Join("none"), sha).code(), ErrorCode::kNotFound);
  WriteFileOrDie(dir.Join("empty"), Bytes());
  EXPECT_TRUE(repo::VerifyFileSha256(dir.Join("empty"), ToHex(Sha256::Of(Bytes()))).ok());
}

// A proxy pointed at nothing: every uncached read is 503 and the breaker opens.
TEST(ProxyUnit, DeadUpstreamOpensBreaker) {
  TempDir dir;
  repo::ProxyOptions o;
  o.upstream = "http://127.0.0.1:1";
  o.cache_dir = dir.Join("cache");
  o.breaker_failures = 2;
  Result<std::unique_ptr<repo::Proxy>> p = repo::Proxy::Open(o);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  net::Request req;
  req.method = "GET";
  req.path = "/v1/artifacts";
  for (int i = 0; i < 4; ++i) EXPECT_EQ((*p)->Serve(req, repo::ObjectKind::kMutable).status, 503);
  EXPECT_EQ((*p)->stats().upstream_fetches, 2u);
  EXPECT_EQ((*p)->stats().breaker_state, 1);
  EXPECT_FALSE(repo::Proxy::Open(repo::ProxyOptions{}).ok());
}

}  // namespace
}  // namespace ds
