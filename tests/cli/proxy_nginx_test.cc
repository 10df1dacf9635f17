// A real nginx (the Debian package, started by the test) with proxy_cache in front of a real
// `deltastream serve --role proxy`, itself in front of a real master: the immutable delta stream
// objects (chunk maps and chunks) are cached by nginx from our headers alone (no
// proxy_cache_valid), so the second request for each is a HIT that never reaches the proxy, with
// the same bytes, which verify against the chunk map. Stream descriptors (no-cache) are not
// cached. Skipped only when no nginx binary is installed (scripts/install-deps.sh installs it).
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"
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

std::string FindNginx() {
  for (const char* p :
       {"/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx", "/usr/local/bin/nginx"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return "";
}

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

// nginx in the foreground (daemon off) with everything it writes under |prefix|; stopped
// gracefully (SIGQUIT, then SIGKILL after 10 s) and reaped by the destructor in every case.
class NginxProcess {
 public:
  NginxProcess(const std::string& binary, const std::string& prefix, const std::string& upstream) {
    for (const char* d : {"cache", "tmp", "logs"}) {
      ::mkdir((prefix + "/" + d).c_str(), 0755);
    }
    for (int attempt = 0; attempt < 3 && url_.empty(); ++attempt) {
      const int port = FreePort();
      std::string conf;
      if (::geteuid() == 0) conf += "user root;\n";  // Workers read the prefix as we do.
      conf += "worker_processes 1;\ndaemon off;\npid " + prefix + "/nginx.pid;\n";
      conf += "error_log " + prefix + "/logs/error.log info;\n";
      conf += "events { worker_connections 64; }\n";
      conf += "http {\n";
      conf += "  access_log " + prefix + "/logs/access.log;\n";
      for (const char* t : {"client_body", "proxy", "fastcgi", "uwsgi", "scgi"}) {
        conf += "  " + std::string(t) + "_temp_path " + prefix + "/tmp/" + t + ";\n";
      }
      // No proxy_cache_valid: what is cached and for how long comes from our Cache-Control.
      conf += "  proxy_cache_path " + prefix +
              "/cache levels=1:2 keys_zone=ds:1m max_size=256m inactive=1h use_temp_path=off;\n";
      conf += "  server {\n    listen 127.0.0.1:" + std::to_string(port) + ";\n";
      conf += "    location / {\n      proxy_pass " + upstream + ";\n";
      conf += "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n";
      conf += "      proxy_cache ds;\n";
      conf += "      add_header X-Cache-Status $upstream_cache_status always;\n    }\n  }\n}\n";
      conf_path_ = prefix + "/nginx.conf";
      WriteFileOrDie(conf_path_, AsBytes(conf));
      log_path_ = prefix + "/logs/stderr.log";
      pid_ = ::fork();
      if (pid_ == 0) {
        const int log = ::open(log_path_.c_str(), O_CREAT | O_APPEND | O_WRONLY, 0644);
        const int null_in = ::open("/dev/null", O_RDONLY);
        if (log >= 0) {
          ::dup2(log, 1);
          ::dup2(log, 2);
        }
        if (null_in >= 0) ::dup2(null_in, 0);
        const std::string p = prefix + "/";
        ::execl(binary.c_str(), binary.c_str(), "-p", p.c_str(), "-c", conf_path_.c_str(), "-e",
                (prefix + "/logs/error.log").c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
      }
      // Ready when it answers; gone (e.g. the port was taken meanwhile) means try another port.
      const std::string url = "http://127.0.0.1:" + std::to_string(port);
      for (int i = 0; i < 200; ++i) {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
          pid_ = -1;
          break;
        }
        net::Client client;
        Result<net::ClientResponse> r = client.Get(url + "/v1/health");
        if (r.ok() && r->status == 200) {
          url_ = url;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (url_.empty()) Stop();
    }
    if (url_.empty()) {
      const Bytes err = ReadFileOrDie(prefix + "/logs/error.log");
      ADD_FAILURE() << "nginx did not start: " << std::string(err.begin(), err.end());
    }
  }
  ~NginxProcess() { Stop(); }
  NginxProcess(const NginxProcess&) = delete;
  NginxProcess& operator=(const NginxProcess&) = delete;

  const std::string& url() const { return url_; }

  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGQUIT);  // Graceful: workers finish their requests, the master exits.
    int status = 0;
    for (int i = 0; i < 200; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "nginx did not stop on SIGQUIT";
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  std::string url_, conf_path_, log_path_;
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

TEST(ProxyNginx, NginxCachesImmutableChunksFromTheProxy) {
  const std::string nginx = FindNginx();
  if (nginx.empty()) GTEST_SKIP() << "no nginx binary (scripts/install-deps.sh installs it)";
  TempDir dir;
  ServerProcess master(dir.Join("master"), dir.Join("master.log"));
  ASSERT_FALSE(master.url().empty());
  const Bytes v1 = testing::RandomBytes(3 << 20, 21);
  Bytes v2 = v1;
  for (size_t i = 777; i < v2.size(); i += 40000) v2[i] ^= 0x33;
  const Bytes extra = testing::RandomBytes(300000, 22);
  v2.insert(v2.begin() + 500000, extra.begin(), extra.end());
  const std::vector<Bytes> versions = {v1, v2};
  for (size_t k = 0; k < versions.size(); ++k) {
    const std::string file = dir.Join("app-" + std::to_string(k));
    WriteFileOrDie(file, versions[k]);
    RunResult r = testing::RunProgram(
        DS_CLI_PATH, dir,
        {"publish", "-q", "--artifact", "app", "--version", "1." + std::to_string(k) + ".0", file,
         "--wait", "--server", master.url(), "--token-file", dir.Join("master/admin.token")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  ServerProcess proxy(dir.Join("proxy"), dir.Join("proxy.log"),
                      {"--role", "proxy", "--upstream", master.url()});
  ASSERT_FALSE(proxy.url().empty());
  ::mkdir(dir.Join("nginx").c_str(), 0755);
  NginxProcess front(nginx, dir.Join("nginx"), proxy.url());
  ASSERT_FALSE(front.url().empty());

  // The descriptor through nginx: no-cache, so never a HIT.
  const std::string open = "/v1/artifacts/app/stream?from=" + ToHex(Sha256::Of(v1));
  for (int i = 0; i < 2; ++i) {
    const net::ClientResponse r = GetUrl(front.url() + open);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_NE(r.Header("x-cache-status"), "HIT");
  }
  Result<stream::StreamDescriptor> d = stream::ParseDescriptor(GetUrl(front.url() + open).body);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_EQ(d->kind, "delta");

  // The chunk map: MISS, then HIT with the same bytes, named by their SHA-256.
  const net::ClientResponse m1 = GetUrl(front.url() + d->chunk_map_url);
  ASSERT_EQ(m1.status, 200);
  EXPECT_EQ(m1.Header("x-cache-status"), "MISS");
  const net::ClientResponse m2 = GetUrl(front.url() + d->chunk_map_url);
  ASSERT_EQ(m2.status, 200);
  EXPECT_EQ(m2.Header("x-cache-status"), "HIT");
  EXPECT_EQ(m1.body, m2.body);
  EXPECT_EQ(ToHex(Sha256::Of(AsBytes(m2.body))), d->chunk_map_sha256);
  EXPECT_EQ(m2.Header("etag"), "\"" + d->chunk_map_sha256 + "\"");
  Result<stream::ChunkMap> map = stream::ParseChunkMap(AsBytes(m2.body));
  ASSERT_TRUE(map.ok()) << map.status().ToString();
  ASSERT_EQ(map->total_size(), d->size);

  // Every chunk (two leaves each): MISS, then HIT without reaching the proxy; both verify.
  const double proxy_requests =
      Metric(proxy.url(), "ds_proxy_hits_total") + Metric(proxy.url(), "ds_proxy_misses_total");
  Bytes patch;
  uint64_t chunks = 0;
  for (uint64_t first = 0; first < map->leaf_count(); first += 2, ++chunks) {
    const uint64_t last = std::min(map->leaf_count() - 1, first + 1);
    const std::string url = front.url() + d->chunks_url + stream::ChunkRangeName(first, last);
    const net::ClientResponse c1 = GetUrl(url);
    ASSERT_EQ(c1.status, 200) << c1.body;
    EXPECT_EQ(c1.Header("x-cache-status"), "MISS");
    EXPECT_EQ(c1.Header("cache-control"), "public, max-age=31536000, immutable");
    const net::ClientResponse c2 = GetUrl(url);
    ASSERT_EQ(c2.status, 200);
    EXPECT_EQ(c2.Header("x-cache-status"), "HIT");
    EXPECT_TRUE(c1.body == c2.body);
    EXPECT_EQ(c2.Header("etag"),
              "\"" + d->sha256 + ":" + stream::ChunkRangeName(first, last) + "\"");
    EXPECT_EQ(c2.Header("x-leaf-size"), std::to_string(d->leaf_size));
    EXPECT_EQ(c2.Header("x-chunk-map-sha256"), d->chunk_map_sha256);
    EXPECT_TRUE(map->VerifyChunk(first, AsBytes(c2.body)).ok());
    patch.insert(patch.end(), c2.body.begin(), c2.body.end());
  }
  EXPECT_GE(chunks, 2u);
  // The proxy saw each chunk once (the MISS): no HIT reached it.
  const double after =
      Metric(proxy.url(), "ds_proxy_hits_total") + Metric(proxy.url(), "ds_proxy_misses_total");
  EXPECT_EQ(after - proxy_requests, static_cast<double>(chunks));
  EXPECT_EQ(ToHex(Sha256::Of(patch)), d->sha256);
  front.Stop();
}

}  // namespace
}  // namespace ds
