// deltastream-agent against a real master on 127.0.0.1 (the master serves the same stream API as
// a proxy), directly or through an in-process HTTP relay that can tamper with chunks or go down.
// Network shaping, loss and kill -9 trials are in agent_netlab_test.cc.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "agent/agent_fixture.h"
#include "delta/xz_rebuild.h"
#include "net/http.h"

namespace ds::testing {
namespace {

using nlohmann::json;

// Relays the agent's requests to |upstream|; |tamper| may alter chunk bodies, |down| answers
// every request with 503.
class Relay {
 public:
  using Tamper =
      std::function<void(const std::string& sha, const std::string& range, std::string* body)>;

  Relay(std::string upstream, Tamper tamper)
      : upstream_(std::move(upstream)), tamper_(std::move(tamper)) {
    net::ServerOptions o;
    o.port = 0;
    server_ = std::make_unique<net::Server>(o);
    for (const char* pattern : {"/v1/artifacts/{a}/metadata", "/v1/artifacts/{a}/stream",
                                "/v1/chunkmaps/{sha}", "/v1/chunks/{sha}/{range}"}) {
      server_->Route("GET", pattern, [this](net::Request& req) { return Forward(req); });
    }
    EXPECT_TRUE(server_->Start().ok());
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  std::atomic<bool> down{false};
  std::atomic<uint64_t> chunk_requests{0}, tampered{0}, chunk_bytes{0};

 private:
  net::Response Forward(net::Request& req) {
    if (down) return net::Response::Text(503, "relay down\n");
    const std::string target = upstream_ + req.path + (req.query.empty() ? "" : "?" + req.query);
    Result<net::ClientResponse> r = client_.Get(target);
    if (!r.ok()) return net::Response::FromStatus(r.status());
    net::Response out;
    out.status = r->status;
    out.body = std::move(r->body);
    for (const auto& [name, value] : r->headers) {
      if (name == "content-type" || name == "retry-after" || name == "etag") {
        out.With(name, value);
      }
    }
    if (req.params.count("range") && out.status == 200) {
      ++chunk_requests;
      chunk_bytes += out.body.size();
      const std::string before = out.body;
      tamper_(req.params["sha"], req.params["range"], &out.body);
      if (out.body != before) ++tampered;
    }
    return out;
  }

  std::string upstream_;
  Tamper tamper_;
  net::Client client_;
  std::unique_ptr<net::Server> server_;
};

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // 4 MiB versions, 24 edits of 16 KiB: a delta of ~400 KB, several leaves.
    std::tie(v1_, v2_) = MakeVersions(4 << 20, 24, 16 << 10);
    master_ = std::make_unique<PublishedMaster>(dir_, v1_, v2_);
    ASSERT_FALSE(master_->url().empty());
    install_ = dir_.Join("installed-app");
    WriteExecutable(install_, v1_);
  }

  RunResult Agent(const std::vector<std::string>& args) {
    std::vector<std::string> all = {"--config", dir_.Join("agent.json"), "--json"};
    all.insert(all.end(), args.begin(), args.end());
    return RunProgram(kAgent, dir_, all);
  }

  // The signed delta 1.0.0 -> 2.0.0.
  json SignedDelta() {
    const json metadata = master_->Metadata();
    for (const json& d : metadata["deltas"]) {
      if (d["from"] == "1.0.0" && d["to"] == "2.0.0") return d;
    }
    ADD_FAILURE() << "no signed delta in " << metadata.dump();
    return json();
  }

  TempDir dir_;
  Bytes v1_, v2_;
  std::unique_ptr<PublishedMaster> master_;
  std::string install_;
};

TEST_F(AgentTest, DeltaUpdateStatusRollbackAndOnlyUpwards) {
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_);
  const json delta = SignedDelta();

  RunResult check = Agent({"check"});
  ASSERT_EQ(check.exit_code, 0) << check.err;
  json c = Last(JsonLines(check.out), "check");
  EXPECT_EQ(c["installed_version"], "1.0.0");
  EXPECT_EQ(c["latest"], "2.0.0");
  EXPECT_EQ(c["route"], "delta");
  EXPECT_EQ(c["delta_bytes"], delta["length"]);
  EXPECT_EQ(c["full_bytes"], v2_.size());

  RunResult up = Agent({"update"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  json r = Last(JsonLines(up.out), "result");
  EXPECT_EQ(r["route"], "delta");
  EXPECT_EQ(r["from"], "1.0.0");
  EXPECT_EQ(r["to"], "2.0.0");
  EXPECT_EQ(r["bytes_fetched"], delta["length"]);  // Every byte once, nothing more.
  EXPECT_EQ(FileSha(install_), Sha(v2_));
  EXPECT_EQ(*FileMode(install_) & 0777, 0755u);
  EXPECT_FALSE(Last(JsonLines(up.out), "progress").is_null());
  // No temporary file is left beside the installed one.
  for (const std::string& name : dir_.List()) EXPECT_EQ(name.find(".tmp."), std::string::npos);

  RunResult st = Agent({"status", "app"});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  json s = json::parse(st.out);
  EXPECT_EQ(s["installed_version"], "2.0.0");
  EXPECT_EQ(s["previous_version"], "1.0.0");
  EXPECT_EQ(s["pending"], "");

  // Already current: nothing fetched.
  RunResult again = Agent({"update"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(Last(JsonLines(again.out), "result")["route"], "none");

  // Going down is refused; rollback is the way back.
  RunResult down = Agent({"update", "--to", "1.0.0"});
  EXPECT_EQ(down.exit_code, static_cast<int>(ErrorCode::kRollback)) << down.err;
  EXPECT_EQ(FileSha(install_), Sha(v2_));
  RunResult rb = Agent({"rollback", "app"});
  ASSERT_EQ(rb.exit_code, 0) << rb.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));
  EXPECT_EQ(json::parse(Agent({"status", "app"}).out)["installed_version"], "1.0.0");
}

TEST_F(AgentTest, FirstInstallDownloadsTheFullArtifact) {
  ::unlink(install_.c_str());
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_);
  RunResult up = Agent({"update"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  json r = Last(JsonLines(up.out), "result");
  EXPECT_EQ(r["route"], "full");
  EXPECT_EQ(r["bytes_fetched"], v2_.size());
  EXPECT_EQ(FileSha(install_), Sha(v2_));
}

TEST_F(AgentTest, WrongPinnedKeyIsRefusedAndNothingChanges) {
  std::string other(64, 'a');
  WriteAgentConfig(dir_, {master_->url()}, other, install_);
  RunResult up = Agent({"update"});
  EXPECT_EQ(up.exit_code, static_cast<int>(ErrorCode::kBadSignature)) << up.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));
}

TEST_F(AgentTest, FailedHealthCheckRollsBackAndIsNotRetried) {
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_,
                   R"({"health_check": "test \"$DS_VERSION\" != 2.0.0"})");
  RunResult up = Agent({"update"});
  EXPECT_EQ(up.exit_code, static_cast<int>(ErrorCode::kHealthCheck)) << up.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));
  const auto lines = JsonLines(up.out);
  EXPECT_FALSE(Last(lines, "health_failed").is_null());
  EXPECT_FALSE(Last(lines, "rolled_back").is_null());
  json s = json::parse(Agent({"status", "app"}).out);
  EXPECT_EQ(s["installed_version"], "1.0.0");
  // The failed version is not installed again by a plain update...
  RunResult again = Agent({"update"});
  EXPECT_EQ(again.exit_code, static_cast<int>(ErrorCode::kHealthCheck)) << again.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));
  // ...and a passing health check installs it.
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_,
                   R"({"health_check": "test -x \"$DS_INSTALL_PATH\""})");
  RunResult named = Agent({"update", "--to", "2.0.0"});
  ASSERT_EQ(named.exit_code, 0) << named.err;
  EXPECT_EQ(FileSha(install_), Sha(v2_));
}

TEST_F(AgentTest, TamperedChunksAreDetectedAndRefetched) {
  std::mutex mu;
  std::set<std::string> flipped;  // Each range is damaged once.
  Relay relay(master_->url(), [&](const std::string&, const std::string& range, std::string* b) {
    std::lock_guard<std::mutex> lock(mu);
    if (flipped.insert(range).second && !b->empty()) (*b)[b->size() / 2] ^= 0x20;
  });
  WriteAgentConfig(dir_, {relay.url()}, master_->public_key(), install_);
  RunResult up = Agent({"update"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_GT(relay.tampered.load(), 0u);
  EXPECT_EQ(FileSha(install_), Sha(v2_));
  const auto lines = JsonLines(up.out);
  EXPECT_EQ(Last(lines, "result")["route"], "delta");
  EXPECT_FALSE(Last(lines, "retry").is_null());
}

// The delta on the server is corrupt (every copy of it): policy full falls back, fail fails,
// defer stops; the installed version is intact in every case.
TEST_F(AgentTest, CorruptDeltaFallsBackPerPolicy) {
  const std::string delta_sha = SignedDelta()["sha256"];
  Relay relay(master_->url(), [&](const std::string& sha, const std::string&, std::string* b) {
    if (sha == delta_sha && !b->empty()) (*b)[0] ^= 0x01;
  });
  WriteAgentConfig(dir_, {relay.url()}, master_->public_key(), install_, R"({"fallback": "fail"})",
                   R"({"retry_budget": 2})");
  RunResult fail = Agent({"update"});
  EXPECT_EQ(fail.exit_code, static_cast<int>(ErrorCode::kDigestMismatch)) << fail.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));

  WriteAgentConfig(dir_, {relay.url()}, master_->public_key(), install_, R"({"fallback": "defer"})",
                   R"({"retry_budget": 2})");
  RunResult defer = Agent({"update"});
  EXPECT_EQ(defer.exit_code, static_cast<int>(ErrorCode::kDeferred)) << defer.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));

  WriteAgentConfig(dir_, {relay.url()}, master_->public_key(), install_, "",
                   R"({"retry_budget": 2})");
  RunResult full = Agent({"update"});
  ASSERT_EQ(full.exit_code, 0) << full.err;
  const auto lines = JsonLines(full.out);
  EXPECT_EQ(Last(lines, "result")["route"], "full");
  EXPECT_NE(Last(lines, "result")["fallback_reason"], "");
  EXPECT_FALSE(Last(lines, "fallback").is_null());
  EXPECT_EQ(FileSha(install_), Sha(v2_));
}

// The relay goes down in the middle of the download and comes back: the agent backs off,
// resumes the same download, and fetches each leaf about once.
TEST_F(AgentTest, SurvivesAnOutageMidStream) {
  std::atomic<int> served{0};
  Relay* relay_ptr = nullptr;
  Relay relay(master_->url(), [&](const std::string&, const std::string&, std::string*) {
    if (++served == 2) {
      relay_ptr->down = true;
      std::thread([relay_ptr] {
        std::this_thread::sleep_for(std::chrono::milliseconds(600));
        relay_ptr->down = false;
      }).detach();
    }
  });
  relay_ptr = &relay;
  WriteAgentConfig(dir_, {relay.url()}, master_->public_key(), install_, "",
                   R"({"max_chunk_kib": 64, "max_in_flight": 1})");
  RunResult up = Agent({"update"});
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(FileSha(install_), Sha(v2_));
  const auto lines = JsonLines(up.out);
  EXPECT_EQ(Last(lines, "result")["route"], "delta");
  EXPECT_FALSE(Last(lines, "retry").is_null());
  EXPECT_LE(relay.chunk_bytes.load(), SignedDelta()["length"].get<uint64_t>() * 12 / 10);
}

TEST_F(AgentTest, ASecondAgentOnTheSameStateIsRefused) {
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_);
  // Hold the lock the way a running agent does.
  ASSERT_EQ(::mkdir(dir_.Join("state").c_str(), 0700), 0);
  const int fd = ::open(dir_.Join("state/lock").c_str(), O_RDWR | O_CREAT, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  RunResult up = Agent({"update"});
  EXPECT_EQ(up.exit_code, static_cast<int>(ErrorCode::kBusy)) << up.err;
  ::close(fd);
  EXPECT_EQ(FileSha(install_), Sha(v1_));
}

// Three versions of "app" on a master that makes deltas only between neighbours
// (--delta-history 1): no 1.0.0 -> 3.0.0 delta exists. v3 carries more edits on top of v2's.
class ThreeVersionsTest : public ::testing::Test {
 protected:
  void Publish(uint64_t seed12, uint64_t seed3) {
    std::tie(v1_, v2_) = MakeVersions(4 << 20, 24, 16 << 10, seed12);
    v3_ = v2_;
    std::mt19937_64 rng(seed3);
    for (int e = 0; e < 16; ++e) {
      const size_t at = rng() % (v3_.size() - (8 << 10));
      for (size_t k = 0; k < (8u << 10); ++k) v3_[at + k] = static_cast<uint8_t>(rng());
    }
    master_ = std::make_unique<ServerProcess>(kDs, dir_.Join("master"), dir_.Join("master.log"),
                                              std::vector<std::string>{"--delta-history", "1"});
    ASSERT_FALSE(master_->url().empty());
    int n = 0;
    for (const Bytes* v : {&v1_, &v2_, &v3_}) {
      const std::string file = dir_.Join("v" + std::to_string(++n));
      WriteExecutable(file, *v);
      RunResult r = RunProgram(
          kDs, dir_,
          {"publish", "--server", master_->url(), "--token-file", dir_.Join("master/admin.token"),
           "--artifact", "app", "--version", std::to_string(n) + ".0.0", file, "--wait"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    Result<Bytes> key = ReadFile(dir_.Join("master/keys/signing.pub"));
    ASSERT_TRUE(key.ok());
    public_key_.assign(key->begin(), key->end());
    while (!public_key_.empty() && public_key_.back() == '\n') public_key_.pop_back();
    install_ = dir_.Join("installed-app");
    WriteExecutable(install_, v1_);
  }

  TempDir dir_;
  Bytes v1_, v2_, v3_;
  std::unique_ptr<ServerProcess> master_;
  std::string public_key_, install_;
};

// The whole chain: a master that keeps deltas from the previous version only, a proxy in front
// of it, and a device two versions behind. The proxy makes the missing delta on demand (the agent
// waits out its Retry-After), the agent takes it as an unsigned delta and installs the result
// only because it matches the signed hash.
TEST_F(ThreeVersionsTest, TakesAProxysOnDemandDelta) {
  Publish(11, 99);
  ServerProcess proxy(kDs, dir_.Join("proxy"), dir_.Join("proxy.log"),
                      {"--role", "proxy", "--upstream", master_->url()});
  ASSERT_FALSE(proxy.url().empty());
  WriteAgentConfig(dir_, {proxy.url()}, public_key_, install_);
  RunResult up =
      RunProgram(kAgent, dir_, {"--config", dir_.Join("agent.json"), "--json", "update"});
  ASSERT_EQ(up.exit_code, 0) << up.err << up.out;
  EXPECT_EQ(FileSha(install_), Sha(v3_));
  const auto lines = JsonLines(up.out);
  const json result = Last(lines, "result");
  EXPECT_EQ(result["route"], "delta");
  EXPECT_EQ(result["from"], "1.0.0");
  EXPECT_EQ(result["to"], "3.0.0");
  EXPECT_LT(result["bytes_fetched"].get<uint64_t>(), v3_.size() / 2);
  const std::string route = Last(lines, "route")["message"];
  EXPECT_NE(route.find("unsigned delta (on-demand)"), std::string::npos) << route;
}

// Three versions, deltas only between neighbours, no on-demand deltas at the proxy: a device two
// versions behind gets a chain of the two signed deltas instead of the full artifact, applies
// them in turn (each intermediate verified against its signed hash) and installs the last.
TEST_F(ThreeVersionsTest, TakesAChainOfSignedDeltas) {
  Publish(21, 98);
  ServerProcess proxy(kDs, dir_.Join("proxy"), dir_.Join("proxy.log"),
                      {"--role", "proxy", "--upstream", master_->url(), "--ondemand-workers", "0"});
  ASSERT_FALSE(proxy.url().empty());
  // Without chain=1 (an older client) the answer stays the full artifact.
  net::Client client;
  Result<net::ClientResponse> plain =
      client.Get(proxy.url() + "/v1/artifacts/app/stream?from=" + Sha(v1_) + "&to=3.0.0");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(json::parse(plain->body)["kind"], "full");

  WriteAgentConfig(dir_, {proxy.url()}, public_key_, install_);
  RunResult up =
      RunProgram(kAgent, dir_, {"--config", dir_.Join("agent.json"), "--json", "update"});
  ASSERT_EQ(up.exit_code, 0) << up.err << up.out;
  EXPECT_EQ(FileSha(install_), Sha(v3_));
  const auto lines = JsonLines(up.out);
  const json result = Last(lines, "result");
  EXPECT_EQ(result["route"], "chain");
  EXPECT_EQ(result["to"], "3.0.0");
  EXPECT_LT(result["bytes_fetched"].get<uint64_t>(), v3_.size() / 2);
  const std::string route = Last(lines, "route")["message"];
  EXPECT_NE(route.find("2 deltas in a chain"), std::string::npos) << route;
  // Nothing of the chain is left behind; the previous version is kept for rollback.
  EXPECT_FALSE(std::filesystem::exists(dir_.Join("state/app/chain")));
  RunResult back =
      RunProgram(kAgent, dir_, {"--config", dir_.Join("agent.json"), "rollback", "app"});
  EXPECT_EQ(back.exit_code, 0) << back.err;
  EXPECT_EQ(FileSha(install_), Sha(v1_));
}

// The installed file lives on a filesystem without room for the new version: the agent says so
// before downloading anything and leaves the installed version alone.
TEST_F(AgentTest, RefusesToStartWithoutDiskSpace) {
  const std::string mnt = dir_.Join("small");
  ASSERT_EQ(::mkdir(mnt.c_str(), 0755), 0);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=6m") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs (needs root): " << std::strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string install = mnt + "/app";
  WriteExecutable(install, v1_);  // 4 MiB of 6: no room for another 4 MiB.
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install);
  RunResult up = Agent({"update"});
  EXPECT_EQ(up.exit_code, static_cast<int>(ErrorCode::kNoSpace)) << up.err;
  EXPECT_EQ(FileSha(install), Sha(v1_));
  const auto lines = JsonLines(up.out);
  EXPECT_TRUE(Last(lines, "progress").is_null()) << "a download started";
}

// An .xz artifact. A master allowed to (--max-encoder-memory-mib 128) makes the delta that
// rebuilds the .xz bytes with liblzma's xz -6 encoder (~95 MiB on the device): an agent allowed
// less (max_encoder_memory_mib) does not apply it and takes the full artifact per its policy;
// allowed enough, it applies it. A master with the default makes a replay delta, which needs no
// encoder: the 64 MiB agent applies that one.
TEST(AgentXzTest, DeltaNeedingMoreEncoderMemoryThanAllowedTakesTheFallback) {
  Bytes c1 = TextBytes(2 << 20, 11);
  Bytes c2 = c1;
  for (size_t at = 4096; at + 8 < c2.size(); at += 97 << 10) c2[at] ^= 0x20;
  Result<Bytes> x1 = delta::XzEncode(c1, delta::XzParams{});
  Result<Bytes> x2 = delta::XzEncode(c2, delta::XzParams{});
  ASSERT_TRUE(x1.ok() && x2.ok());
  ASSERT_GT(delta::XzEncoderMemory(delta::XzParams{}, c2.size()), 64ull << 20);
  for (const bool reencode : {true, false}) {
    SCOPED_TRACE(reencode ? "master re-encodes with liblzma" : "master replays");
    TempDir dir;
    PublishedMaster master(dir, *x1, *x2, {},
                           reencode ? std::vector<std::string>{"--max-encoder-memory-mib", "128"}
                                    : std::vector<std::string>{});
    ASSERT_FALSE(master.url().empty());
    const std::string install = dir.Join("installed-app");
    WriteExecutable(install, *x1);
    auto agent = [&](const std::vector<std::string>& args) {
      std::vector<std::string> all = {"--config", dir.Join("agent.json"), "--json"};
      all.insert(all.end(), args.begin(), args.end());
      return RunProgram(kAgent, dir, all);
    };

    WriteAgentConfig(dir, {master.url()}, master.public_key(), install, "",
                     R"({"max_encoder_memory_mib": 64})");
    RunResult up = agent({"update"});
    ASSERT_EQ(up.exit_code, 0) << up.err;
    auto lines = JsonLines(up.out);
    EXPECT_EQ(FileSha(install), Sha(*x2));
    if (!reencode) {
      EXPECT_EQ(Last(lines, "result")["route"], "delta");
      continue;
    }
    EXPECT_EQ(Last(lines, "result")["route"], "full");
    const std::string reason = Last(lines, "result")["fallback_reason"];
    EXPECT_NE(reason.find("memory"), std::string::npos) << reason;

    // Back to 1.0.0; with the default allowance the same delta applies.
    ASSERT_EQ(agent({"rollback", "app"}).exit_code, 0);
    ASSERT_EQ(FileSha(install), Sha(*x1));
    WriteAgentConfig(dir, {master.url()}, master.public_key(), install);
    up = agent({"update"});
    ASSERT_EQ(up.exit_code, 0) << up.err;
    lines = JsonLines(up.out);
    EXPECT_EQ(Last(lines, "result")["route"], "delta");
    EXPECT_EQ(FileSha(install), Sha(*x2));
  }
}

}  // namespace
}  // namespace ds::testing
