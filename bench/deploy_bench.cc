// Deployment service under a simulated fleet: N devices (default 10,000) enrol, then every one
// keeps a long poll parked on its own keep-alive connection; one deployment over all of them is
// created and each device, when its instruction arrives, reports like an agent does (started,
// progress, applying, installing, installed; one event per POST, in seq order).
//
// Measures: instruction latency (deployment created -> the device's parked poll answered) p50,
// p99 and max; events ingested per second (events acknowledged / span of the event phase);
// enrolments per second; the server's peak RSS (VmHWM of the serve process) and RSS at rest with
// every poll parked. Prints a table.
//
//   deploy_bench --deltastream build/src/cli/deltastream [--devices 10000] [--threads 2]
//   deploy_bench --connect http://127.0.0.1:8440 --data-dir DIR --server-pid PID   (a running one)
//
// The simulated devices do not download anything: the artifact traffic is the proxies' job
// (bench/agent_bench.sh, bench/proxy_bench.sh); this measures the control plane.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/hash.h"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// kB from /proc/<pid>/status ("VmHWM", "VmRSS").
long ProcStatusKb(int pid, const std::string& field) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::atol(line.c_str() + field.size() + 1);
  }
  return -1;
}

struct Url {
  std::string host, port;
};
Url ParseUrl(const std::string& url) {
  std::string rest = url.substr(url.find("://") + 3);
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) rest = rest.substr(0, slash);
  const size_t colon = rest.rfind(':');
  return {rest.substr(0, colon), rest.substr(colon + 1)};
}

// One keep-alive HTTP/1.1 connection doing one request at a time.
class Conn : public std::enable_shared_from_this<Conn> {
 public:
  using Done = std::function<void(int status, std::string body)>;  // status 0: transport error
  Conn(asio::io_context& io, tcp::endpoint ep) : sock_(io), ep_(ep) {}

  void Request(http::verb verb, std::string target, std::string token, std::string body, Done done,
               int attempts = 2) {
    req_ = {};
    req_.method(verb);
    req_.target(target);
    req_.version(11);
    req_.set(http::field::host, "127.0.0.1");
    req_.keep_alive(true);
    if (!token.empty()) req_.set(http::field::authorization, "Bearer " + token);
    if (verb != http::verb::get) {
      req_.set(http::field::content_type, "application/json");
      req_.body() = std::move(body);
    }
    req_.prepare_payload();
    done_ = std::move(done);
    attempts_ = attempts;
    if (sock_.is_open()) {
      Write();
    } else {
      Connect();
    }
  }

 private:
  void Connect() {
    auto self = shared_from_this();
    sock_.async_connect(ep_, [self](beast::error_code ec) {
      if (ec) return self->Fail();
      self->sock_.set_option(tcp::no_delay(true));
      self->Write();
    });
  }
  void Write() {
    auto self = shared_from_this();
    http::async_write(sock_, req_, [self](beast::error_code ec, size_t) {
      if (ec) return self->Fail();
      self->parser_.emplace();
      self->parser_->body_limit(8 << 20);
      http::async_read(self->sock_, self->buf_, *self->parser_,
                       [self](beast::error_code ec, size_t) {
                         if (ec) return self->Fail();
                         auto res = self->parser_->release();
                         if (!res.keep_alive()) {
                           beast::error_code ignored;
                           self->sock_.close(ignored);
                         }
                         Done d = std::move(self->done_);
                         d(res.result_int(), std::move(res.body()));
                       });
    });
  }
  // A keep-alive connection the server closed meanwhile: reconnect and send again, once.
  void Fail() {
    beast::error_code ignored;
    sock_.close(ignored);
    buf_.clear();
    if (--attempts_ > 0) return Connect();
    Done d = std::move(done_);
    d(0, "");
  }

  tcp::socket sock_;
  tcp::endpoint ep_;
  beast::flat_buffer buf_;
  http::request<http::string_body> req_;
  std::optional<http::response_parser<http::string_body>> parser_;
  Done done_;
  int attempts_ = 0;
};

struct Device {
  std::string id, token;
  std::shared_ptr<Conn> conn;
  uint64_t seq = 0;
  double instructed = 0;  // When the instruction arrived (0: not yet).
  bool done = false;
  int errors = 0;
};

struct Stats {
  std::mutex mu;
  std::atomic<int> enrolled{0}, enrol_failed{0}, parked{0}, finished{0}, failed{0};
  std::atomic<uint64_t> events_acked{0}, event_posts{0}, empty_polls{0}, poll_errors{0};
  double first_event = 0, last_ack = 0;
  std::vector<double> latencies;
};

class Fleet {
 public:
  Fleet(asio::io_context& io, tcp::endpoint ep, std::string enroll_token, int n,
        int events_per_device, std::string base_sha)
      : io_(io),
        ep_(ep),
        enroll_token_(std::move(enroll_token)),
        events_(events_per_device),
        base_sha_(std::move(base_sha)) {
    devices_.resize(n);
    for (int i = 0; i < n; ++i) {
      char id[32];
      std::snprintf(id, sizeof(id), "sim-%05d", i);
      devices_[i].id = id;
      devices_[i].conn = std::make_shared<Conn>(io_, ep_);
    }
  }

  // Enrols every device with at most |window| requests in flight.
  void Enrol(int window) {
    next_ = 0;
    for (int i = 0; i < window && i < static_cast<int>(devices_.size()); ++i) EnrolNext();
  }
  void PollAll() {
    for (size_t i = 0; i < devices_.size(); ++i) {
      asio::post(io_, [this, i] { Poll(i); });
    }
  }
  void set_deploy_time(double t) { deploy_time_ = t; }
  Stats& stats() { return stats_; }
  size_t size() const { return devices_.size(); }

 private:
  void EnrolNext() {
    const size_t i = next_++;
    if (i >= devices_.size()) return;
    Device& d = devices_[i];
    const json body = {
        {"enrollment_token", enroll_token_},
        {"device_id", d.id},
        {"labels", {{"fleet", "bench"}}},
        {"hardware", "sim"},
        {"agent_version", "bench"},
        {"inventory", {{{"artifact", "app"}, {"version", "1.0.0"}, {"sha256", base_sha_}}}}};
    d.conn->Request(http::verb::post, "/v1/devices/enroll", "", body.dump(),
                    [this, i](int status, std::string resp) {
                      Device& d = devices_[i];
                      if (status == 200) {
                        try {
                          d.token = json::parse(resp).at("device_token").get<std::string>();
                          ++stats_.enrolled;
                        } catch (const json::exception&) {
                          ++stats_.enrol_failed;
                        }
                      } else {
                        ++stats_.enrol_failed;
                      }
                      EnrolNext();
                    });
  }

  void Poll(size_t i) {
    Device& d = devices_[i];
    if (d.done || d.token.empty()) return;
    ++stats_.parked;
    d.conn->Request(http::verb::get, "/v1/devices/" + d.id + "/instructions?wait=60", d.token, "",
                    [this, i](int status, std::string resp) {
                      Device& d = devices_[i];
                      --stats_.parked;
                      const double now = Now();
                      if (status != 200) {
                        ++stats_.poll_errors;
                        if (++d.errors > 20) {
                          d.done = true;
                          ++stats_.failed;
                          return;
                        }
                        // Back off a little and park again.
                        auto t = std::make_shared<asio::steady_timer>(
                            io_, std::chrono::milliseconds(200));
                        t->async_wait([this, i, t](beast::error_code) { Poll(i); });
                        return;
                      }
                      std::string deployment;
                      try {
                        const json j = json::parse(resp);
                        if (!j.at("instructions").empty()) {
                          deployment = j["instructions"][0].at("deployment_id").get<std::string>();
                        }
                      } catch (const json::exception&) {
                      }
                      if (deployment.empty()) {
                        ++stats_.empty_polls;
                        return Poll(i);
                      }
                      if (d.instructed == 0) {
                        d.instructed = now;
                        std::lock_guard<std::mutex> lock(stats_.mu);
                        stats_.latencies.push_back(now - deploy_time_);
                        if (stats_.first_event == 0 || now < stats_.first_event)
                          stats_.first_event = now;
                      }
                      PostEvent(i, deployment, 0);
                    });
  }

  // Event k of the device's report: started, downloading xN, applying, installing, installed.
  void PostEvent(size_t i, std::string deployment, int k) {
    Device& d = devices_[i];
    const uint64_t full = 4 << 20, delta = 400 << 10;
    json e = {{"seq", ++d.seq},
              {"deployment_id", deployment},
              {"artifact", "app"},
              {"carrier", "http"},
              {"rate_bps", 1.25e6},
              {"chunk_size", 262144},
              {"repair_overhead", 0.0},
              {"error_code", 0},
              {"result", ""},
              {"from_version", "1.0.0"},
              {"to_version", "2.0.0"},
              {"total_bytes", delta},
              {"time", 0.0}};
    const int last = events_ - 1;
    if (k == 0) {
      e["state"] = "started";
      e["bytes"] = 0;
    } else if (k < last - 2) {
      e["state"] = "downloading";
      e["bytes"] = delta * static_cast<uint64_t>(k) / static_cast<uint64_t>(last - 2);
    } else if (k == last - 2) {
      e["state"] = "applying";
      e["bytes"] = delta;
    } else if (k == last - 1) {
      e["state"] = "installing";
      e["bytes"] = delta;
    } else {
      e["state"] = "installed";
      e["result"] = "delta";
      e["bytes"] = delta;
      e["full_bytes"] = full;
      e["bytes_saved"] = full - delta;
    }
    const uint64_t seq = d.seq;
    ++stats_.event_posts;
    d.conn->Request(
        http::verb::post, "/v1/devices/" + d.id + "/events", d.token,
        json{{"events", json::array({e})}}.dump(),
        [this, i, deployment, k, last, seq](int status, std::string resp) {
          Device& d = devices_[i];
          uint64_t acked = 0;
          if (status == 200) {
            try {
              acked = json::parse(resp).at("acked_seq").get<uint64_t>();
            } catch (const json::exception&) {
            }
          }
          if (acked < seq) {
            if (++d.errors > 20) {
              d.done = true;
              ++stats_.failed;
              return;
            }
            --d.seq;  // Send the same event again.
            auto t = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(100));
            t->async_wait(
                [this, i, deployment, k, t](beast::error_code) { PostEvent(i, deployment, k); });
            return;
          }
          ++stats_.events_acked;
          if (k < last) return PostEvent(i, deployment, k + 1);
          {
            std::lock_guard<std::mutex> lock(stats_.mu);
            stats_.last_ack = std::max(stats_.last_ack, Now());
          }
          d.done = true;
          ++stats_.finished;
        });
  }

  asio::io_context& io_;
  tcp::endpoint ep_;
  std::string enroll_token_;
  int events_;
  std::string base_sha_;
  std::vector<Device> devices_;
  std::atomic<size_t> next_{0};
  double deploy_time_ = 0;
  Stats stats_;
};

// A blocking request (operator calls) on the operator's connection.
std::pair<int, std::string> Blocking(const std::shared_ptr<Conn>& c, http::verb verb,
                                     const std::string& target, const std::string& token,
                                     const std::string& body) {
  std::promise<std::pair<int, std::string>> p;
  c->Request(verb, target, token, body, [&p](int status, std::string b) {
    p.set_value({status, std::move(b)});
  });
  return p.get_future().get();
}

// Runs |argv| to completion; its exit code (-1 when it did not exit normally).
int RunProgram(std::vector<std::string> argv) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> av;
    for (std::string& s : argv) av.push_back(s.data());
    av.push_back(nullptr);
    ::execv(av[0], av.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Publishes app 1.0.0 and 2.0.0 (1 MiB, a few edits; the delta made before returning) and
// returns 1.0.0's SHA-256, which every simulated device reports as installed.
std::string PublishVersions(const std::string& binary, const std::string& url,
                            const std::string& data_dir, const std::string& work) {
  std::vector<uint8_t> v1(1 << 20);
  uint64_t x = 88172645463325252ull;
  for (uint8_t& b : v1) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    b = static_cast<uint8_t>(x);
  }
  std::vector<uint8_t> v2 = v1;
  for (size_t i = 0; i < v2.size(); i += 65536) v2[i] ^= 0xff;
  for (const auto& [name, data] : {std::pair{"v1", &v1}, std::pair{"v2", &v2}}) {
    std::ofstream(work + "/" + name, std::ios::binary)
        .write(reinterpret_cast<const char*>(data->data()),
               static_cast<std::streamsize>(data->size()));
  }
  for (const auto& [version, file] : {std::pair{"1.0.0", "v1"}, std::pair{"2.0.0", "v2"}}) {
    const int rc =
        RunProgram({binary, "publish", "--server", url, "--token-file", data_dir + "/admin.token",
                    "--artifact", "app", "--version", version, work + "/" + file, "--wait"});
    if (rc != 0 && rc != 50) {  // 50: already published (a reused server).
      std::fprintf(stderr, "publishing %s failed (exit %d)\n", version, rc);
      return "";
    }
  }
  return ds::ToHex(ds::Sha256::Of(ds::ByteView(v1.data(), v1.size())));
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t idx = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return v[idx];
}

void Usage() {
  std::fprintf(stderr,
               "usage: deploy_bench (--deltastream BIN | --connect URL --data-dir DIR "
               "--server-pid PID [--base-sha SHA])\n"
               "       [--devices N] [--threads T] [--events K] [--timeout S] "
               "[--server-arg ARG]...\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string binary, connect, data_dir, base_sha_arg;
  int devices = 10000, threads = 2, events = 6, timeout = 600, server_pid = -1;
  std::vector<std::string> server_args;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--deltastream") {
      binary = val();
    } else if (a == "--connect") {
      connect = val();
    } else if (a == "--data-dir") {
      data_dir = val();
    } else if (a == "--server-pid") {
      server_pid = std::atoi(val().c_str());
    } else if (a == "--devices") {
      devices = std::atoi(val().c_str());
    } else if (a == "--threads") {
      threads = std::atoi(val().c_str());
    } else if (a == "--events") {
      events = std::max(4, std::atoi(val().c_str()));
    } else if (a == "--timeout") {
      timeout = std::atoi(val().c_str());
    } else if (a == "--base-sha") {
      base_sha_arg = val();
    } else if (a == "--server-arg") {
      server_args.push_back(val());
    } else {
      Usage();
      return 2;
    }
  }
  if (binary.empty() && (connect.empty() || data_dir.empty())) {
    Usage();
    return 2;
  }

  // Every simulated device holds a socket, and so does the server for each: raise the limit for
  // this process and (inherited) for the server we start.
  struct rlimit rl;
  ::getrlimit(RLIMIT_NOFILE, &rl);
  const rlim_t want = static_cast<rlim_t>(devices) * 2 + 4096;
  rlimit raised = {std::max(rl.rlim_cur, want), std::max(rl.rlim_max, want)};
  if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) {
    raised.rlim_max = rl.rlim_max;
    raised.rlim_cur = std::min(want, rl.rlim_max);
    ::setrlimit(RLIMIT_NOFILE, &raised);
  }
  ::getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < want) {
    std::fprintf(stderr, "note: RLIMIT_NOFILE is %lu, below the %lu wanted for %d devices\n",
                 static_cast<unsigned long>(rl.rlim_cur), static_cast<unsigned long>(want),
                 devices);
  }
  ::signal(SIGPIPE, SIG_IGN);

  pid_t child = -1;
  std::string url = connect;
  char tmpl[] = "/tmp/deploy_bench.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  if (!binary.empty() && connect.empty()) {
    data_dir = std::string(tmpl) + "/data";
    const std::string port_file = std::string(tmpl) + "/port", log = std::string(tmpl) + "/log";
    std::vector<std::string> args = {binary,     "serve",       "--data-dir",  data_dir,
                                     "--listen", "127.0.0.1:0", "--port-file", port_file};
    args.insert(args.end(), server_args.begin(), server_args.end());
    child = ::fork();
    if (child == 0) {
      std::vector<char*> av;
      for (std::string& s : args) av.push_back(s.data());
      av.push_back(nullptr);
      std::FILE* f = std::freopen(log.c_str(), "a", stdout);
      if (f != nullptr) ::dup2(::fileno(stdout), 2);
      ::execv(av[0], av.data());
      ::_exit(127);
    }
    for (int i = 0; i < 200 && url.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      const std::string p = ReadText(port_file);
      if (!p.empty()) url = "http://" + p;
    }
    if (url.empty()) {
      std::fprintf(stderr, "the server did not start; see %s\n", log.c_str());
      ::kill(child, SIGKILL);
      return 1;
    }
    server_pid = child;
  }
  const std::string admin = ReadText(data_dir + "/admin.token");
  const std::string enroll = ReadText(data_dir + "/enroll.token");
  if (admin.empty() || enroll.empty()) {
    std::fprintf(stderr, "no admin.token / enroll.token in %s\n", data_dir.c_str());
    if (child > 0) ::kill(child, SIGKILL);
    return 1;
  }
  std::string base_sha = base_sha_arg;
  if (base_sha.empty()) {
    if (binary.empty()) {
      std::fprintf(stderr, "--connect needs --base-sha (or --deltastream to publish)\n");
      return 1;
    }
    base_sha = PublishVersions(binary, url, data_dir, tmpl);
    if (base_sha.empty()) {
      if (child > 0) ::kill(child, SIGKILL);
      return 1;
    }
  }
  const Url u = ParseUrl(url);
  asio::io_context io;
  auto guard = asio::make_work_guard(io);
  const tcp::endpoint ep(asio::ip::make_address(u.host == "localhost" ? "127.0.0.1" : u.host),
                         static_cast<uint16_t>(std::atoi(u.port.c_str())));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&io] { io.run(); });
  auto finish = [&](int rc) {
    guard.reset();
    io.stop();
    for (std::thread& t : pool) t.join();
    if (child > 0) {
      ::kill(child, SIGTERM);
      int status = 0;
      ::waitpid(child, &status, 0);
    }
    std::error_code ignored;
    std::filesystem::remove_all(tmpl, ignored);
    return rc;
  };

  const long rss_start = server_pid > 0 ? ProcStatusKb(server_pid, "VmRSS") : -1;
  // The operator's keep-alive connection is opened first: a server whose connection slots are
  // all held by parked polls would refuse a new one.
  auto operator_conn = std::make_shared<Conn>(io, ep);
  if (Blocking(operator_conn, http::verb::get, "/v1/deployments", admin, "").first != 200) {
    std::fprintf(stderr, "GET /v1/deployments failed: is the deployment service enabled?\n");
    return finish(1);
  }
  Fleet fleet(io, ep, enroll, devices, events, base_sha);
  Stats& st = fleet.stats();
  const double deadline = Now() + timeout;

  // 1. Enrol.
  const double t_enrol = Now();
  fleet.Enrol(128);
  while (st.enrolled + st.enrol_failed < devices && Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double enrol_s = Now() - t_enrol;
  std::fprintf(stderr, "enrolled %d (%d failed) in %.1f s\n", st.enrolled.load(),
               st.enrol_failed.load(), enrol_s);
  if (st.enrol_failed > 0) {
    std::fprintf(stderr,
                 "note: %d enrolments failed; a connection limit (the server's max_connections, "
                 "RLIMIT_NOFILE) is the usual cause: each parked device holds a connection\n",
                 st.enrol_failed.load());
  }

  // 2. Park a long poll per device; wait until they have all been sent and are waiting.
  fleet.PollAll();
  double settle_until = Now() + 600;
  while (Now() < deadline && Now() < settle_until) {
    if (st.parked >= st.enrolled && settle_until > Now() + 3) settle_until = Now() + 3;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const long rss_parked = server_pid > 0 ? ProcStatusKb(server_pid, "VmRSS") : -1;
  std::fprintf(stderr, "%d polls parked; server RSS %ld kB\n", st.parked.load(), rss_parked);

  // 3. One deployment over the whole fleet, one wave.
  const json dep = {
      {"artifact", "app"},
      {"version", "2.0.0"},
      {"selector", {{"labels", {{"fleet", "bench"}}}}},
      {"waves", json::array({"100%"})},
      {"success_threshold", 0.5},
      {"failure_threshold", 0.5},
      {"policy", {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "full"}}}};
  const double t_deploy = Now();
  fleet.set_deploy_time(t_deploy);
  auto [dstatus, dbody] =
      Blocking(operator_conn, http::verb::post, "/v1/deployments", admin, dep.dump());
  const double create_s = Now() - t_deploy;
  std::string dep_id;
  try {
    dep_id = json::parse(dbody).at("id").get<std::string>();
  } catch (const json::exception&) {
  }
  if (dstatus != 201 || dep_id.empty()) {
    std::fprintf(stderr, "creating the deployment failed: HTTP %d %s\n", dstatus, dbody.c_str());
    return finish(1);
  }

  // 4. Every device gets its instruction and reports.
  while (st.finished + st.failed < st.enrolled && Now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const long hwm = server_pid > 0 ? ProcStatusKb(server_pid, "VmHWM") : -1;
  auto [gstatus, gbody] =
      Blocking(operator_conn, http::verb::get, "/v1/deployments/" + dep_id, admin, "");
  std::string dep_state = "?";
  long installed = -1;
  try {
    const json j = json::parse(gbody);
    dep_state = j.value("state", "?");
    installed = 0;
    for (const json& w : j.at("waves")) installed += w.value("installed", 0L);
  } catch (const json::exception&) {
  }

  std::vector<double> lat;
  double first_event = 0, last_ack = 0;
  {
    std::lock_guard<std::mutex> lock(st.mu);
    lat = st.latencies;
    first_event = st.first_event;
    last_ack = st.last_ack;
  }
  const double span = last_ack > first_event ? last_ack - first_event : 0;
  std::printf("\n| metric | value |\n| --- | --- |\n");
  std::printf("| devices enrolled / wanted | %d / %d |\n", st.enrolled.load(), devices);
  std::printf("| enrolments per second | %.0f |\n", st.enrolled / std::max(enrol_s, 1e-9));
  std::printf("| long polls parked at once | %d |\n", static_cast<int>(st.enrolled));
  std::printf("| POST /v1/deployments | %.1f ms |\n", create_s * 1e3);
  std::printf("| instructions received | %zu |\n", lat.size());
  std::printf("| instruction latency p50 | %.1f ms |\n", Percentile(lat, 0.50) * 1e3);
  std::printf("| instruction latency p99 | %.1f ms |\n", Percentile(lat, 0.99) * 1e3);
  std::printf("| instruction latency max | %.1f ms |\n", Percentile(lat, 1.0) * 1e3);
  std::printf("| events acknowledged | %lu (%d per device, 1 per POST) |\n",
              static_cast<unsigned long>(st.events_acked.load()), events);
  std::printf("| events ingested per second | %.0f |\n",
              span > 0 ? static_cast<double>(st.events_acked) / span : 0.0);
  std::printf("| event phase | %.2f s |\n", span);
  std::printf("| devices finished / failed | %d / %d |\n", st.finished.load(), st.failed.load());
  std::printf("| poll errors / empty polls | %lu / %lu |\n",
              static_cast<unsigned long>(st.poll_errors.load()),
              static_cast<unsigned long>(st.empty_polls.load()));
  std::printf("| deployment state, installed (server) | %s, %ld |\n", dep_state.c_str(), installed);
  std::printf("| server RSS at start | %.1f MiB |\n", rss_start / 1024.0);
  std::printf("| server RSS, all polls parked | %.1f MiB |\n", rss_parked / 1024.0);
  std::printf("| server peak RSS (VmHWM) | %.1f MiB |\n", hwm / 1024.0);
  std::printf("| bench io threads | %d (same %u-core machine as the server) |\n", threads,
              std::thread::hardware_concurrency());
  const bool ok =
      st.enrolled == devices && st.finished == devices && installed == static_cast<long>(devices);
  return finish(ok ? 0 : 1);
}
