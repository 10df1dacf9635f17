// Fleet rollouts end to end on 127.0.0.1, every part a real process: `deltastream serve` (master
// with the deployment service), `deltastream serve --role proxy` in front of it, and one
// `deltastream-agent run` per device, each with its own state directory and installed file.
//
// - RolloutThroughWaves: 20 devices, waves [2, "50%", "100%"]: every device ends with the
//   byte-identical new version by delta, and no device of a wave started before the wave before
//   it had met its success threshold (checked on the agents' own event times).
// - FailuresBeyondThresholdHalt: the second wave's devices have a damaged installed file and the
//   policy says fallback "fail": the deployment halts and the third wave never starts.
// - OfflineAgentCatchesUpInOrder: the service goes down in the middle of an update; the agent
//   journals its events, is itself restarted while offline, and delivers everything, in sequence
//   order, once the service is back (same data directory, same port).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/agent_fixture.h"
#include "net/http.h"

namespace ds::testing {
namespace {

using nlohmann::json;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string ReadText(const std::string& path) {
  Result<Bytes> b = ReadFile(path);
  std::string s = b.ok() ? std::string(b->begin(), b->end()) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A `deltastream-agent --config CONFIG run EXTRA...` child, output appended to |log|. The
// destructor kills it if it is still running.
class AgentProcess {
 public:
  AgentProcess(const std::string& config, const std::string& log,
               const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {kAgent, "--config", config, "run"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      const int fd = ::open(log.c_str(), O_CREAT | O_APPEND | O_WRONLY, 0644);
      const int null_in = ::open("/dev/null", O_RDONLY);
      if (fd < 0 || null_in < 0) ::_exit(125);
      ::dup2(null_in, 0);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    EXPECT_GT(pid_, 0);
  }
  ~AgentProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  // Waits at most |seconds| for the exit: its exit code, -1 for a signal, -2 still running.
  int Wait(double seconds) {
    if (pid_ <= 0) return code_;
    const double until = Now() + seconds;
    while (true) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        return code_;
      }
      if (Now() > until) return -2;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  // SIGTERM, then the exit code (within 10 s; after that SIGKILL and -1).
  int Stop() {
    if (pid_ > 0) ::kill(pid_, SIGTERM);
    const int rc = Wait(10);
    if (rc == -2) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
      return -1;
    }
    return rc;
  }

 private:
  pid_t pid_ = -1;
  int code_ = -1;
};

// One simulated device: its own directory (state, installed file, config, log).
struct Device {
  std::string id;
  std::unique_ptr<TempDir> dir;
  std::string install, config, log;
  std::unique_ptr<AgentProcess> process;

  std::vector<json> Lines() const { return JsonLines(ReadText(log) + "\n"); }
  // The spec events this agent journalled (and logged), in the order it made them.
  std::vector<json> Events() const {
    std::vector<json> out;
    for (const json& l : Lines()) {
      if (l.value("event", "") == "deploy_event") out.push_back(l);
    }
    return out;
  }
  double EventTime(const std::string& state) const {
    for (const json& e : Events()) {
      if (e["state"] == state) return e["time"].get<double>();
    }
    return -1;
  }
};

class RolloutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // 2 MiB versions, 12 edits of 8 KiB: a delta of about 100 KB.
    std::tie(v1_, v2_) = MakeVersions(2 << 20, 12, 8 << 10);
    master_ = std::make_unique<PublishedMaster>(dir_, v1_, v2_);
    ASSERT_FALSE(master_->url().empty());
    proxy_ = std::make_unique<ServerProcess>(
        kDs, dir_.Join("proxy"), dir_.Join("proxy.log"),
        std::vector<std::string>{"--role", "proxy", "--upstream", master_->url()});
    ASSERT_FALSE(proxy_->url().empty());
    admin_ = ReadText(dir_.Join("master/admin.token"));
    enroll_ = ReadText(dir_.Join("master/enroll.token"));
    ASSERT_FALSE(admin_.empty());
    ASSERT_FALSE(enroll_.empty()) << "the master writes enroll.token when the deployment "
                                     "service is enabled";
    net::ClientOptions o;
    o.bearer_token = admin_;
    operator_ = std::make_unique<net::Client>(o);
  }

  void TearDown() override {
    for (Device& d : devices_) {
      if (d.process) {
        EXPECT_EQ(d.process->Stop(), 0) << d.id << " shuts down cleanly";
      }
    }
  }

  // |n| devices with v1 installed, labelled site=lab.
  void MakeDevices(int n, const std::string& artifact_extra = "") {
    for (int i = 0; i < n; ++i) {
      Device d;
      char id[16];
      std::snprintf(id, sizeof(id), "dev-%03d", i);
      d.id = id;
      d.dir = std::make_unique<TempDir>();
      d.install = d.dir->Join("app");
      WriteExecutable(d.install, v1_);
      const json deploy = {{"url", master_->url()},
                           {"enrollment_token", enroll_},
                           {"device_id", d.id},
                           {"labels", {{"site", "lab"}}},
                           {"poll_wait_seconds", 5},
                           {"progress_interval_seconds", 0.2},
                           {"heartbeat_interval_ms", 2000},
                           {"backoff_initial_ms", 100},
                           {"backoff_max_ms", 1000}};
      d.config = WriteAgentConfig(*d.dir, {proxy_->url()}, master_->public_key(), d.install,
                                  artifact_extra, json{{"deploy", deploy}}.dump());
      d.log = d.dir->Join("run.log");
      devices_.push_back(std::move(d));
    }
  }
  void StartAll() {
    for (Device& d : devices_) d.process = std::make_unique<AgentProcess>(d.config, d.log);
  }
  // Every device enrols (and reports its inventory) through `run --once`, then exits.
  void EnrolAllOnce() {
    std::vector<std::unique_ptr<AgentProcess>> runs;
    for (Device& d : devices_) {
      runs.push_back(
          std::make_unique<AgentProcess>(d.config, d.log, std::vector<std::string>{"--once"}));
    }
    for (size_t i = 0; i < runs.size(); ++i) {
      EXPECT_EQ(runs[i]->Wait(60), 0) << devices_[i].id << ": " << ReadText(devices_[i].log);
    }
  }

  json Get(const std::string& path) {
    Result<net::ClientResponse> r = operator_->Get(master_->url() + path);
    if (!r.ok() || r->status != 200) {
      ADD_FAILURE() << "GET " << path << ": "
                    << (r.ok() ? std::to_string(r->status) + " " + r->body : r.status().ToString());
      return json();
    }
    return json::parse(r->body);
  }
  json Post(const std::string& path, const json& body, int want_status) {
    Result<net::ClientResponse> r = operator_->Send("POST", master_->url() + path, body.dump(),
                                                    {{"Content-Type", "application/json"}});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return json();
    EXPECT_EQ(r->status, want_status) << r->body;
    return json::parse(r->body, nullptr, false);
  }

  void WaitForDevices(size_t n, double seconds) {
    const double until = Now() + seconds;
    size_t seen = 0;
    while (Now() < until) {
      json d = Get("/v1/devices");
      seen = d.is_object() ? d["devices"].size() : 0;
      if (seen >= n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FAIL() << "only " << seen << " of " << n << " devices enrolled";
  }

  // Polls the deployment until |done| says so or |seconds| pass; every snapshot goes to |seen|.
  json WaitDeployment(const std::string& id, double seconds,
                      const std::function<bool(const json&)>& done,
                      std::vector<json>* seen = nullptr) {
    const double until = Now() + seconds;
    json d;
    while (Now() < until) {
      d = Get("/v1/deployments/" + id);
      if (seen) seen->push_back(d);
      if (d.is_object() && done(d)) return d;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "deployment " << id << " did not get there in " << seconds
                  << " s: " << d.dump();
    return d;
  }

  Device& ById(const std::string& id) {
    for (Device& d : devices_) {
      if (d.id == id) return d;
    }
    ADD_FAILURE() << "no device " << id;
    return devices_.front();
  }

  // Device ids of each wave, from the deployment's device list.
  static std::vector<std::vector<std::string>> Waves(const json& dep) {
    std::vector<std::vector<std::string>> waves(dep["waves"].size());
    for (const json& d : dep["devices"]) {
      const size_t w = d["wave"].get<size_t>();
      if (w < waves.size()) waves[w].push_back(d["device_id"].get<std::string>());
    }
    return waves;
  }

  // The agent's events are strictly increasing in seq and go through the states in order.
  void CheckEventOrder(const Device& d) {
    const std::vector<std::string> order = {"started", "downloading", "applying", "installing",
                                            "installed"};
    uint64_t last_seq = 0;
    size_t last_state = 0;
    for (const json& e : d.Events()) {
      EXPECT_GT(e["seq"].get<uint64_t>(), last_seq) << d.id;
      last_seq = e["seq"].get<uint64_t>();
      const auto it = std::find(order.begin(), order.end(), e["state"].get<std::string>());
      if (it == order.end()) continue;
      const size_t idx = static_cast<size_t>(it - order.begin());
      EXPECT_GE(idx, last_state) << d.id << ": " << e.dump();
      last_state = idx;
    }
  }

  TempDir dir_;
  Bytes v1_, v2_;
  std::unique_ptr<PublishedMaster> master_;
  std::unique_ptr<ServerProcess> proxy_;
  std::string admin_, enroll_;
  std::unique_ptr<net::Client> operator_;
  std::vector<Device> devices_;
};

TEST_F(RolloutTest, RolloutThroughWaves) {
  constexpr int kDevices = 20;
  constexpr double kSuccess = 0.9;
  MakeDevices(kDevices);
  StartAll();
  WaitForDevices(kDevices, 60);
  const json created =
      Post("/v1/deployments",
           {{"artifact", "app"},
            {"version", "2.0.0"},
            {"selector", {{"labels", {{"site", "lab"}}}}},
            {"waves", json::array({2, "50%", "100%"})},
            {"success_threshold", kSuccess},
            {"failure_threshold", 0.2},
            {"policy", {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "full"}}}},
           201);
  ASSERT_TRUE(created.contains("id")) << created.dump();
  const std::string id = created["id"];

  std::vector<json> snapshots;
  const json dep = WaitDeployment(
      id, 180, [](const json& d) { return d["state"] == "finished"; }, &snapshots);
  ASSERT_EQ(dep["state"], "finished") << dep.dump();
  const auto waves = Waves(dep);
  ASSERT_EQ(waves.size(), 3u);
  EXPECT_EQ(waves[0].size(), 2u);
  EXPECT_EQ(waves[0].size() + waves[1].size(), 10u);
  EXPECT_EQ(waves[0].size() + waves[1].size() + waves[2].size(), 20u);

  // Every device: the byte-identical new version, by delta, reported as such.
  const json metadata = master_->Metadata();
  const json delta = [&] {
    for (const json& d : metadata["deltas"]) {
      if (d["from"] == "1.0.0" && d["to"] == "2.0.0") return d;
    }
    return json();
  }();
  ASSERT_FALSE(delta.is_null());
  ASSERT_EQ(dep["devices"].size(), static_cast<size_t>(kDevices));
  for (const json& d : dep["devices"]) {
    Device& dev = ById(d["device_id"]);
    EXPECT_EQ(d["state"], "installed") << d.dump();
    EXPECT_EQ(d["result"], "delta") << d.dump();
    EXPECT_EQ(d["error_code"], 0) << d.dump();
    EXPECT_EQ(FileSha(dev.install), Sha(v2_)) << dev.id;
    // The agent's final event: bytes on the wire, the full size, what the delta saved.
    const std::vector<json> events = dev.Events();
    ASSERT_FALSE(events.empty()) << dev.id;
    const json& last = events.back();
    EXPECT_EQ(last["state"], "installed");
    EXPECT_EQ(last["result"], "delta");
    EXPECT_EQ(last["bytes"], delta["length"]) << dev.id;
    EXPECT_EQ(last["full_bytes"], v2_.size());
    EXPECT_EQ(last["bytes_saved"], v2_.size() - delta["length"].get<uint64_t>());
    EXPECT_EQ(last["from_version"], "1.0.0");
    EXPECT_EQ(last["to_version"], "2.0.0");
    EXPECT_EQ(d["bytes_saved"], last["bytes_saved"]) << d.dump();
    CheckEventOrder(dev);
  }
  EXPECT_GT(dep["bytes_saved_total"].get<uint64_t>(), 0u);

  // Wave order, on the agents' own clocks (one machine): no device of wave n+1 started before
  // the installed event that brought wave n to its success threshold.
  for (size_t w = 0; w + 1 < waves.size(); ++w) {
    std::vector<double> installed;
    for (const std::string& id : waves[w]) installed.push_back(ById(id).EventTime("installed"));
    std::sort(installed.begin(), installed.end());
    const size_t need = static_cast<size_t>(std::ceil(kSuccess * installed.size()));
    ASSERT_GE(need, 1u);
    const double threshold_met = installed[need - 1];
    for (const std::string& id : waves[w + 1]) {
      const double started = ById(id).EventTime("started");
      EXPECT_GT(started, threshold_met)
          << id << " (wave " << w + 1 << ") started before wave " << w << " met its threshold";
    }
  }
  // And in the service's own view, sampled while it ran: a later wave has nothing going on while
  // an earlier one is below its threshold.
  for (const json& s : snapshots) {
    if (!s.is_object() || !s.contains("waves")) continue;
    for (size_t w = 0; w + 1 < s["waves"].size(); ++w) {
      const json& cur = s["waves"][w];
      const json& next = s["waves"][w + 1];
      const int active =
          next["installed"].get<int>() + next["failed"].get<int>() + next["in_progress"].get<int>();
      if (active > 0) {
        EXPECT_GE(cur["installed"].get<double>(), std::ceil(kSuccess * cur["devices"].get<int>()))
            << s.dump();
      }
    }
  }
}

TEST_F(RolloutTest, FailuresBeyondThresholdHalt) {
  constexpr int kDevices = 10;  // Waves of 2, 3 and 5.
  MakeDevices(kDevices);
  EnrolAllOnce();
  WaitForDevices(kDevices, 30);
  const json created =
      Post("/v1/deployments",
           {{"artifact", "app"},
            {"version", "2.0.0"},
            {"selector", {{"labels", {{"site", "lab"}}}}},
            {"waves", json::array({2, "50%", "100%"})},
            {"success_threshold", 1.0},
            {"failure_threshold", 0.2},
            {"policy", {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "fail"}}}},
           201);
  ASSERT_TRUE(created.contains("id")) << created.dump();
  const std::string id = created["id"];
  const auto waves = Waves(Get("/v1/deployments/" + id));
  ASSERT_EQ(waves.size(), 3u);
  ASSERT_EQ(waves[1].size(), 3u);
  // The second wave's installed files are damaged: no delta applies to them, and "fail" forbids
  // the full download.
  Bytes damaged = v1_;
  for (size_t i = 0; i < damaged.size(); i += 4096) damaged[i] ^= 0x5a;
  for (const std::string& id : waves[1]) WriteExecutable(ById(id).install, damaged);

  StartAll();
  const json dep = WaitDeployment(id, 120, [](const json& d) { return d["state"] == "halted"; });
  ASSERT_EQ(dep["state"], "halted") << dep.dump();
  // Long enough for a wrongly started third wave to show (agents poll every <= 5 s).
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const json later = Get("/v1/deployments/" + id);
  EXPECT_EQ(later["state"], "halted");
  EXPECT_EQ(later["waves"][2]["installed"], 0);
  EXPECT_EQ(later["waves"][2]["failed"], 0);
  EXPECT_EQ(later["waves"][2]["in_progress"], 0);
  EXPECT_NE(later["waves"][2]["state"], "running");
  EXPECT_NE(later["waves"][2]["state"], "done");

  for (const std::string& id : waves[0]) {
    EXPECT_EQ(FileSha(ById(id).install), Sha(v2_)) << id;
    EXPECT_EQ(ById(id).Events().back()["result"], "delta") << id;
  }
  // The second wave: whoever took the instruction (the halt may withdraw it from a device that
  // had not asked yet) failed, installed nothing, and said so with a stable error code.
  int failed = 0;
  for (const std::string& id : waves[1]) {
    const Device& d = ById(id);
    EXPECT_EQ(FileSha(d.install), Sha(damaged)) << id << ": nothing was installed";
    const std::vector<json> events = d.Events();
    if (events.empty()) continue;
    ++failed;
    EXPECT_EQ(events.back()["state"], "failed") << events.back().dump();
    EXPECT_EQ(events.back()["result"], "failed");
    EXPECT_NE(events.back()["error_code"], 0);
  }
  EXPECT_GE(failed, 1);
  EXPECT_GT(later["waves"][1]["failed"].get<double>(),
            0.2 * later["waves"][1]["devices"].get<double>());
  EXPECT_EQ(later["waves"][1]["installed"], 0);
  for (const json& d : later["devices"]) {
    if (d["wave"] == 1 && d["state"] == "failed") {
      EXPECT_EQ(d["result"], "failed") << d.dump();
      EXPECT_NE(d["error_code"], 0) << d.dump();
    }
  }
  for (const std::string& id : waves[2]) {
    const Device& d = ById(id);
    EXPECT_TRUE(d.Events().empty())
        << id << " of the third wave started: " << d.Events().front().dump();
    EXPECT_EQ(FileSha(d.install), Sha(v1_)) << id;
  }
}

TEST_F(RolloutTest, OfflineAgentCatchesUpInOrder) {
  // The health check holds the update in "installing" long enough to take the service down.
  MakeDevices(1, R"({"health_check": "sleep 3", "health_timeout_ms": 30000})");
  Device& d = devices_[0];
  StartAll();
  WaitForDevices(1, 30);
  const json created =
      Post("/v1/deployments",
           {{"artifact", "app"},
            {"version", "2.0.0"},
            {"selector", {{"devices", {d.id}}}},
            {"waves", json::array({"100%"})},
            {"success_threshold", 1.0},
            {"failure_threshold", 0.5},
            {"policy", {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "full"}}}},
           201);
  ASSERT_TRUE(created.contains("id")) << created.dump();
  const std::string id = created["id"];

  auto wait_for = [&](const std::function<bool()>& cond, double seconds, const char* what) {
    const double until = Now() + seconds;
    while (Now() < until) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "timed out waiting for " << what << "; log: " << ReadText(d.log);
    return false;
  };
  ASSERT_TRUE(wait_for([&] { return d.EventTime("installing") > 0; }, 60, "installing"));

  // The service goes away (same data directory and port when it comes back).
  const std::string port = master_->url().substr(master_->url().rfind(':') + 1);
  master_->server().Stop(SIGTERM);
  // The agent finishes, cannot deliver, keeps its events; then it is itself restarted.
  ASSERT_TRUE(wait_for(
      [&] {
        bool final_seen = false;
        for (const json& l : d.Lines()) {
          if (l.value("event", "") == "deploy_event" && l["state"] == "installed") {
            final_seen = true;
          }
          if (final_seen && l.value("note", "") == "events_not_delivered") return true;
        }
        return false;
      },
      30, "the final event to be refused while offline"));
  EXPECT_EQ(d.process->Stop(), 0);
  d.process.reset();
  EXPECT_EQ(FileSha(d.install), Sha(v2_));
  const std::string journal = ReadText(d.dir->Join("state/events.jsonl"));
  EXPECT_NE(journal.find("\"state\":\"installed\""), std::string::npos)
      << "the final event is journalled: " << journal;
  Result<mode_t> mode = FileMode(d.dir->Join("state/deploy.json"));
  ASSERT_TRUE(mode.ok());
  EXPECT_EQ(*mode & 0777, 0600u);

  // Back: the agent (once) delivers what it kept, finds nothing more to do, and exits.
  ServerLaunch same_port;
  same_port.listen = "127.0.0.1:" + port;
  ServerProcess restarted(kDs, dir_.Join("master"), dir_.Join("master2.log"), {}, same_port);
  ASSERT_EQ(restarted.url(), master_->url());
  AgentProcess once(d.config, d.log, {"--once"});
  EXPECT_EQ(once.Wait(60), 0) << ReadText(d.log);

  const json dep = WaitDeployment(id, 30, [](const json& x) { return x["state"] == "finished"; });
  ASSERT_EQ(dep["devices"].size(), 1u);
  EXPECT_EQ(dep["devices"][0]["state"], "installed");
  EXPECT_EQ(dep["devices"][0]["result"], "delta");
  EXPECT_EQ(dep["devices"][0]["from_version"], "1.0.0");
  // Delivery in order, across both agent processes: acknowledged ranges follow one another
  // from seq 1 to the last event, and nothing is left in the journal.
  uint64_t next = 1;
  int deliveries = 0;
  for (const json& l : d.Lines()) {
    if (l.value("note", "") != "delivered") continue;
    EXPECT_EQ(l["from_seq"].get<uint64_t>(), next) << l.dump();
    next = l["acked_seq"].get<uint64_t>() + 1;
    ++deliveries;
  }
  EXPECT_GE(deliveries, 2);
  const std::vector<json> events = d.Events();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(next, events.back()["seq"].get<uint64_t>() + 1);
  EXPECT_EQ(events.back()["state"], "installed");
  CheckEventOrder(d);
  const std::vector<json> left = JsonLines(ReadText(d.dir->Join("state/events.jsonl")) + "\n");
  ASSERT_EQ(left.size(), 1u) << "only the journal header remains";
  EXPECT_EQ(left[0]["acked_seq"], events.back()["seq"]);
}

}  // namespace
}  // namespace ds::testing
