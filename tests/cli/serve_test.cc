// End to end: the real `deltastream serve` on 127.0.0.1 (ephemeral port), driven by the real CLI
// (publish, versions, jobs, metadata) and by the HTTP client for what the CLI does not expose:
// three versions published, deltas made and served, signatures verified, tampering detected,
// bad requests answered with the right status, and a kill -9 during an upload survived.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
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
using testing::ToBytes;
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

class ServeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(data_, dir_.Join("server.log"));
    ASSERT_FALSE(server_->url().empty());
    token_file_ = data_ + "/admin.token";
    Bytes v1 = testing::RandomBytes(2 << 20, 1);
    versions_.push_back(v1);
    for (int k = 2; k <= 3; ++k) {
      Bytes v = versions_.back();
      for (size_t i = static_cast<size_t>(k) * 997; i < v.size(); i += 65536) v[i] ^= 0x5A;
      const Bytes extra = testing::RandomBytes(10000, static_cast<uint64_t>(k));
      v.insert(v.begin() + 100000, extra.begin(), extra.end());
      versions_.push_back(v);
    }
    for (size_t k = 0; k < versions_.size(); ++k) {
      WriteFileOrDie(File(k), versions_[k]);
    }
  }

  std::string File(size_t k) const { return dir_.Join("app-" + std::to_string(k + 1)); }
  std::string Version(size_t k) const { return "1." + std::to_string(k) + ".0"; }

  RunResult Cli(std::vector<std::string> args, bool with_token = true) {
    args.push_back("--server");
    args.push_back(server_->url());
    if (with_token) {
      args.push_back("--token-file");
      args.push_back(token_file_);
    }
    return RunCli(dir_, args);
  }

  RunResult Publish(size_t k, bool wait = true) {
    std::vector<std::string> args = {"publish", "-q",        "--artifact",
                                     "app",     "--version", Version(k),
                                     File(k),   "--label",   "channel=stable"};
    if (wait) args.push_back("--wait");
    return Cli(args);
  }

  net::ClientResponse Get(const std::string& path,
                          const std::vector<std::pair<std::string, std::string>>& h = {}) {
    net::Client client;
    Result<net::ClientResponse> r = client.Get(server_->url() + path, h);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : net::ClientResponse{};
  }

  TempDir dir_;
  std::string data_ = dir_.Join("data");
  std::string token_file_;
  std::unique_ptr<ServerProcess> server_;
  std::vector<Bytes> versions_;
};

TEST_F(ServeTest, PublishThreeVersionsDeltasAppearSignaturesVerify) {
  for (size_t k = 0; k < 3; ++k) {
    RunResult r = Publish(k);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  // versions, in semver order.
  RunResult v = Cli({"versions", "app", "--json"}, false);
  ASSERT_EQ(v.exit_code, 0) << v.err;
  const json vj = json::parse(v.out);
  ASSERT_EQ(vj["versions"].size(), 3u);
  for (size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(vj["versions"][k]["version"], Version(k));
    EXPECT_EQ(vj["versions"][k]["sha256"], ToHex(Sha256::Of(versions_[k])));
    EXPECT_EQ(vj["versions"][k]["labels"]["channel"], "stable");
  }
  // jobs: 1.0->1.1, 1.0->1.2, 1.1->1.2, all ready.
  RunResult j = Cli({"jobs", "--json"}, false);
  ASSERT_EQ(j.exit_code, 0) << j.err;
  const json jj = json::parse(j.out);
  ASSERT_EQ(jj["jobs"].size(), 3u) << j.out;
  for (const json& d : jj["jobs"]) EXPECT_EQ(d["status"], "ready") << d.dump();

  // A delta served by the master rebuilds the new version from the old one.
  const json deltas = json::parse(Get("/v1/artifacts/app/deltas?from=1.1.0&to=1.2.0").body);
  ASSERT_EQ(deltas["deltas"].size(), 1u);
  const std::string data_url = deltas["deltas"][0]["url"];
  net::ClientResponse patch = Get(data_url);
  ASSERT_EQ(patch.status, 200);
  Result<Bytes> rebuilt = delta::ApplyPatch(versions_[1], ToBytes(patch.body));
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(*rebuilt == versions_[2]);
  EXPECT_LT(patch.body.size(), versions_[2].size() / 10);

  // Signed metadata verifies with the pinned key, through the CLI and the library.
  const std::string pub = data_ + "/keys/signing.pub";
  RunResult m = Cli({"metadata", "app", "--public-key", pub}, false);
  ASSERT_EQ(m.exit_code, 0) << m.err;
  const json signed_json = json::parse(m.out);
  EXPECT_EQ(signed_json["latest"], "1.2.0");
  EXPECT_EQ(signed_json["deltas"].size(), 3u);
  EXPECT_EQ(signed_json["versions"][2]["sha256"], ToHex(Sha256::Of(versions_[2])));

  // Tampering: any change to the signed part fails verification.
  const std::string envelope = Get("/v1/artifacts/app/metadata").body;
  const Bytes key_bytes = ReadFileOrDie(pub);
  const std::string key(key_bytes.begin(), key_bytes.end());
  const int64_t now = std::time(nullptr);
  ASSERT_TRUE(repo::VerifyMetadata(envelope, key.substr(0, 64), now, 0).ok());
  json tampered = json::parse(envelope);
  tampered["signed"]["versions"][2]["sha256"] = std::string(64, 'a');
  EXPECT_EQ(repo::VerifyMetadata(tampered.dump(), key.substr(0, 64), now, 0).status().code(),
            ErrorCode::kBadSignature);
  json later = json::parse(envelope);
  EXPECT_EQ(repo::VerifyMetadata(envelope, key.substr(0, 64),
                                 later["signed"]["expires"].get<int64_t>() + 1, 0)
                .status()
                .code(),
            ErrorCode::kExpired);
  EXPECT_EQ(repo::VerifyMetadata(envelope, key.substr(0, 64), now,
                                 later["signed"]["counter"].get<uint64_t>() + 1)
                .status()
                .code(),
            ErrorCode::kRollback);
}

TEST_F(ServeTest, BadRequestsGetTheRightStatus) {
  ASSERT_EQ(Publish(0, false).exit_code, 0);
  // No token: 401, exit code 51.
  RunResult no_token = Cli({"publish", "-q", "--artifact", "app", "--version", "9.9.9", File(1),
                            "--token", "not-a-token"},
                           false);
  EXPECT_EQ(no_token.exit_code, static_cast<int>(ErrorCode::kUnauthenticated)) << no_token.err;
  // Same version, other bytes: 409 / exit 50.
  RunResult conflict =
      Cli({"publish", "-q", "--artifact", "app", "--version", Version(0), File(1)});
  EXPECT_EQ(conflict.exit_code, static_cast<int>(ErrorCode::kAlreadyExists)) << conflict.err;
  // Same version, same bytes: fine.
  EXPECT_EQ(Publish(0, false).exit_code, 0);

  const std::string token = [&] {
    const Bytes b = ReadFileOrDie(token_file_);
    return std::string(b.begin(), b.end());
  }();
  net::ClientOptions co;
  co.bearer_token = token;
  net::Client client(co);
  const std::string base = server_->url();
  // Declared SHA-256 that does not match the body: 422, nothing stored.
  Result<net::ClientResponse> r =
      client.Send("PUT", base + "/v1/artifacts/app/versions/2.0.0", "hello",
                  {{"X-Content-SHA256", std::string(64, '0')}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 422);
  EXPECT_EQ(net::StatusFromResponse(*r).code(), ErrorCode::kDigestMismatch);
  EXPECT_EQ(Get("/v1/artifacts/app/versions/2.0.0").status, 404);
  // Path tricks in names: 400 (or 404 when the router never matches them).
  r = client.Send("PUT", base + "/v1/artifacts/..%2Fetc/versions/1.0", "x");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->status == 400 || r->status == 404) << r->status;
  r = client.Send("PUT", base + "/v1/artifacts/.hidden/versions/1.0", "x");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400);
  // Unknown things: 404; wrong method: 405; bad blob name: 400.
  EXPECT_EQ(Get("/v1/artifacts/nope/versions").status, 404);
  EXPECT_EQ(Get("/v1/nothing-here").status, 404);
  EXPECT_EQ(Get("/v1/blobs/xyz").status, 400);
  r = client.Send("DELETE", base + "/v1/artifacts", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 405);
  // Creating tokens needs admin; a publish token cannot.
  r = client.Send("POST", base + "/v1/tokens", R"({"name":"ci","scope":"publish"})");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 201) << r->body;
  net::ClientOptions ci_opts;
  ci_opts.bearer_token = json::parse(r->body)["token"];
  net::Client ci(ci_opts);
  r = ci.Send("POST", base + "/v1/tokens", R"({"name":"x","scope":"admin"})");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 403);
}

TEST_F(ServeTest, BlobsAreImmutableWithRangeAndEtag) {
  ASSERT_EQ(Publish(0, false).exit_code, 0);
  const std::string sha = ToHex(Sha256::Of(versions_[0]));
  net::ClientResponse full = Get("/v1/blobs/" + sha);
  ASSERT_EQ(full.status, 200);
  EXPECT_TRUE(ToBytes(full.body) == versions_[0]);
  EXPECT_NE(full.Header("cache-control").find("immutable"), std::string::npos);
  EXPECT_EQ(full.Header("etag"), "\"" + sha + "\"");
  net::ClientResponse part = Get("/v1/blobs/" + sha, {{"Range", "bytes=100-199"}});
  EXPECT_EQ(part.status, 206);
  EXPECT_TRUE(ToBytes(part.body) == Bytes(versions_[0].begin() + 100, versions_[0].begin() + 200));
  EXPECT_EQ(Get("/v1/blobs/" + sha, {{"If-None-Match", "\"" + sha + "\""}}).status, 304);
  // Health and metrics.
  EXPECT_EQ(Get("/v1/health").status, 200);
  const std::string metrics = Get("/metrics").body;
  EXPECT_NE(metrics.find("ds_repo_versions 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("ds_http_requests_total"), std::string::npos) << metrics;
}

TEST_F(ServeTest, KillDuringUploadThenRestartIsConsistent) {
  ASSERT_EQ(Publish(0, false).exit_code, 0);
  // Start an upload by hand: the header promises 24 MiB, 1 MiB of it is sent, then the server
  // is killed with SIGKILL while it holds the partial upload.
  const std::string token = [&] {
    const Bytes b = ReadFileOrDie(token_file_);
    return std::string(b.begin(), b.end());
  }();
  const std::string hostport = server_->url().substr(std::string("http://").size());
  const uint16_t port = static_cast<uint16_t>(std::stoi(hostport.substr(hostport.rfind(':') + 1)));
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string head =
      "PUT /v1/artifacts/app/versions/5.0.0 HTTP/1.1\r\nHost: x\r\n"
      "Authorization: Bearer " +
      token + "\r\nContent-Length: " + std::to_string(24 << 20) + "\r\n\r\n";
  ASSERT_EQ(::send(fd, head.data(), head.size(), MSG_NOSIGNAL), static_cast<ssize_t>(head.size()));
  const Bytes part = testing::RandomBytes(1 << 20, 9);
  size_t sent = 0;
  while (sent < part.size()) {
    const ssize_t n = ::send(fd, part.data() + sent, part.size() - sent, MSG_NOSIGNAL);
    ASSERT_GT(n, 0);
    sent += static_cast<size_t>(n);
  }
  // Wait (bounded) until part of the upload is on the server's disk.
  bool started = false;
  for (int i = 0; i < 400 && !started; ++i) {
    for (const auto& e : std::filesystem::directory_iterator(data_ + "/tmp")) {
      started |= std::filesystem::file_size(e.path()) > 0;
    }
    if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(started) << "the partial upload never reached tmp/";
  server_->Stop(SIGKILL);
  ::close(fd);
  // Restart on the same data: the old version is intact, the interrupted one is not visible,
  // tmp/ is empty, and publishing it again works.
  server_ = std::make_unique<ServerProcess>(data_, dir_.Join("server2.log"));
  ASSERT_FALSE(server_->url().empty());
  EXPECT_EQ(Get("/v1/artifacts/app/versions/5.0.0").status, 404);
  const json v = json::parse(Get("/v1/artifacts/app/versions/" + Version(0)).body);
  EXPECT_EQ(v["sha256"], ToHex(Sha256::Of(versions_[0])));
  EXPECT_TRUE(ToBytes(Get("/v1/blobs/" + ToHex(Sha256::Of(versions_[0]))).body) == versions_[0]);
  size_t tmp_files = 0;
  for (const auto& e : std::filesystem::directory_iterator(data_ + "/tmp")) {
    (void)e;
    ++tmp_files;
  }
  EXPECT_EQ(tmp_files, 0u);
  RunResult again =
      Cli({"publish", "-q", "--artifact", "app", "--version", "5.0.0", File(1), "--wait"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  const json jobs = json::parse(Get("/v1/jobs").body);
  ASSERT_FALSE(jobs["jobs"].empty());
  EXPECT_NE(jobs["jobs"][0]["status"], "running");
}

TEST_F(ServeTest, KillDuringDeltaJobThenRestartRequeuesIt) {
  // Versions big enough that the delta job runs for a while.
  const Bytes a = testing::RandomBytes(12 << 20, 21);
  Bytes b = a;
  for (size_t i = 0; i < b.size(); i += 4099) b[i] ^= 0x33;
  WriteFileOrDie(dir_.Join("a"), a);
  WriteFileOrDie(dir_.Join("b"), b);
  ASSERT_EQ(
      Cli({"publish", "-q", "--artifact", "big", "--version", "1.0.0", dir_.Join("a")}).exit_code,
      0);
  ASSERT_EQ(
      Cli({"publish", "-q", "--artifact", "big", "--version", "1.0.1", dir_.Join("b")}).exit_code,
      0);
  bool running = false;
  for (int i = 0; i < 1000 && !running; ++i) {
    const json jobs = json::parse(Get("/v1/jobs").body);
    running = !jobs["jobs"].empty() && jobs["jobs"][0]["status"] == "running";
    if (!running) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(running) << "the delta job never started";
  server_->Stop(SIGKILL);
  server_ = std::make_unique<ServerProcess>(data_, dir_.Join("server2.log"));
  ASSERT_FALSE(server_->url().empty());
  // The interrupted job is queued again and completes; the delta it makes is correct.
  json job;
  for (int i = 0; i < 1200; ++i) {
    job = json::parse(Get("/v1/jobs").body)["jobs"][0];
    if (job["status"] != "queued" && job["status"] != "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(job["status"], "ready") << job.dump();
  EXPECT_EQ(job["attempts"], 2) << job.dump();
  net::ClientResponse patch = Get(job["url"].get<std::string>());
  Result<Bytes> rebuilt = delta::ApplyPatch(a, ToBytes(patch.body));
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.status().ToString();
  EXPECT_TRUE(*rebuilt == b);
}

// HTTPS from a config file: `deltastream --config FILE serve` with a [serve] section naming the
// data directory, listen address and a self-signed certificate; the CLI trusts it with --ca-file.
TEST(ServeConfigTest, HttpsFromConfigFile) {
  TempDir dir;
  const std::string gen =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
      "-nodes -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 "
      "-days 1 -keyout '" +
      dir.Join("k.pem") + "' -out '" + dir.Join("c.pem") + "' >/dev/null 2>&1";
  ASSERT_EQ(std::system(gen.c_str()), 0) << gen;
  const std::string data = dir.Join("data");
  const std::string config = "[serve]\ndata-dir = \"" + data +
                             "\"\nlisten = \"127.0.0.1:0\"\ntls-cert = \"" + dir.Join("c.pem") +
                             "\"\ntls-key = \"" + dir.Join("k.pem") + "\"\nport-file = \"" +
                             dir.Join("port") + "\"\ndelta-history = 1\n";
  WriteFileOrDie(dir.Join("ds.toml"), testing::ToBytes(config));
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int log = ::open(dir.Join("server.log").c_str(), O_CREAT | O_WRONLY, 0644);
    if (log >= 0) ::dup2(log, 2);
    ::execl(DS_CLI_PATH, DS_CLI_PATH, "--config", dir.Join("ds.toml").c_str(), "serve",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  struct Reaper {  // Stops the server however the test ends.
    pid_t pid;
    ~Reaper() {
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } reaper{pid};
  std::string hostport;
  for (int i = 0; i < 200 && hostport.empty(); ++i) {
    Result<Bytes> b = ReadFile(dir.Join("port"));
    if (b.ok()) hostport.assign(b->begin(), b->end());
    if (hostport.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(hostport.empty()) << "server did not start";
  const std::string url = "https://" + hostport;
  WriteFileOrDie(dir.Join("a1"), testing::RandomBytes(100000, 1));
  RunResult p = RunCli(dir, {"publish", "-q", "--artifact", "tls-app", "--version", "1.0.0",
                             dir.Join("a1"), "--server", url, "--token-file", data + "/admin.token",
                             "--ca-file", dir.Join("c.pem")});
  EXPECT_EQ(p.exit_code, 0) << p.err;
  RunResult v =
      RunCli(dir, {"versions", "tls-app", "--server", url, "--ca-file", dir.Join("c.pem")});
  EXPECT_EQ(v.exit_code, 0) << v.err;
  EXPECT_NE(v.out.find("1.0.0"), std::string::npos) << v.out;
  // Without the CA the client refuses the certificate: a transport error (exit 58).
  RunResult untrusted = RunCli(dir, {"versions", "tls-app", "--server", url});
  EXPECT_EQ(untrusted.exit_code, static_cast<int>(ErrorCode::kUnavailable)) << untrusted.err;
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  reaper.pid = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

}  // namespace
}  // namespace ds
