// deltastream-agent across a shaped network (tests/support/netlab.h): the master or a proxy in
// one namespace, the agent in another, tc tbf for bandwidth and nft random drops for loss.
// Skipped when the lab cannot be made (not root).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>

#include "agent/agent_fixture.h"
#include "net/http.h"
#include "support/netlab.h"

namespace ds::testing {
namespace {

using nlohmann::json;

// Bytes received on the client's end of the link (frames: payload plus TCP/IP/Ethernet
// headers): what the device really fetched.
uint64_t ClientRxBytes(const NetLab& lab, const TempDir& dir) {
  RunResult r =
      RunProgram("/usr/sbin/ip", dir,
                 {"-n", lab.client_ns(), "-s", "-j", "link", "show", "dev", lab.client_dev()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const json j = json::parse(r.out, nullptr, false);
  if (!j.is_array() || j.empty()) return 0;
  return j[0]["stats64"]["rx"]["bytes"].get<uint64_t>();
}

std::string ReadLog(const std::string& path) {
  Result<Bytes> b = ReadFile(path);
  return b.ok() ? std::string(b->begin(), b->end()) : std::string();
}

// Starts the agent in the client namespace without waiting for it.
pid_t SpawnAgent(const NetLab& lab, const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> argv = lab.InNs(lab.client_ns());
  argv.push_back(kAgent);
  argv.insert(argv.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::vector<char*> c;
    for (std::string& a : argv) c.push_back(a.data());
    c.push_back(nullptr);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execv(c[0], c.data());
    ::_exit(127);
  }
  return pid;
}

class AgentNetLabTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    lab_ = NetLab::Create(&why);
    if (!lab_) GTEST_SKIP() << "network lab unavailable: " << why;
  }

  // Versions of |size| bytes whose delta is roughly edits * edit_size, published on a master in
  // the server namespace; v1 installed for the agent.
  void Publish(size_t size, int edits, size_t edit_size) {
    std::tie(v1_, v2_) = MakeVersions(size, edits, edit_size);
    master_ = std::make_unique<PublishedMaster>(
        dir_, v1_, v2_, ServerLaunch{lab_->InNs(lab_->server_ns()), lab_->server_ip() + ":0"});
    ASSERT_FALSE(master_->url().empty());
    install_ = dir_.Join("installed-app");
    WriteExecutable(install_, v1_);
    const json metadata = master_->Metadata();
    for (const json& d : metadata["deltas"]) {
      if (d["to"] == "2.0.0") delta_size_ = d["length"];
    }
    ASSERT_GT(delta_size_, 0u);
  }

  RunResult Agent(const std::vector<std::string>& args) {
    std::vector<std::string> all = {"--config", dir_.Join("agent.json"), "--json"};
    all.insert(all.end(), args.begin(), args.end());
    return RunProgram(kAgent, dir_, all, lab_->InNs(lab_->client_ns()));
  }

  std::unique_ptr<NetLab> lab_;  // Declared first: servers stop before the lab is torn down.
  TempDir dir_;
  Bytes v1_, v2_;
  std::unique_ptr<PublishedMaster> master_;
  std::string install_;
  uint64_t delta_size_ = 0;
};

// Byte-identical updates at 2, 10 and 50 Mbit/s, without and with 5 % random loss.
TEST_F(AgentNetLabTest, UpdatesAcrossBandwidthsAndLoss) {
  Publish(4 << 20, 24, 16 << 10);  // ~400 KB delta.
  for (double mbit : {2.0, 10.0, 50.0}) {
    for (double loss : {0.0, 5.0}) {
      SCOPED_TRACE(::testing::Message() << mbit << " Mbit/s, " << loss << " % loss");
      ASSERT_TRUE(lab_->SetBandwidth(mbit).ok());
      ASSERT_TRUE(lab_->SetLoss(loss).ok());
      WriteExecutable(install_, v1_);
      std::filesystem::remove_all(dir_.Join("state"));
      WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_);
      RunResult up = Agent({"update"});
      ASSERT_EQ(up.exit_code, 0) << up.err;
      const json r = Last(JsonLines(up.out), "result");
      EXPECT_EQ(r["route"], "delta");
      EXPECT_EQ(FileSha(install_), Sha(v2_));
      EXPECT_LE(r["bytes_fetched"].get<uint64_t>(), delta_size_ * 12 / 10);
    }
  }
}

// The UDP carrier (FEC over UDP) through a proxy across a 20 Mbit/s link with 0, 5, 10 and 20 %
// random loss: a first install (the whole 8 MiB artifact) arrives byte-identical, delivered by
// UDP; then with UDP blocked by a firewall the agent falls back to HTTP and still finishes.
TEST_F(AgentNetLabTest, UdpCarrierUnderLossAndWhenBlocked) {
  Publish(8 << 20, 24, 16 << 10);
  ServerProcess proxy(kDs, dir_.Join("proxy"), dir_.Join("proxy.log"),
                      {"--role", "proxy", "--upstream", master_->url(), "--udp-port", "0"},
                      ServerLaunch{lab_->InNs(lab_->server_ns()), lab_->server_ip() + ":0"});
  ASSERT_FALSE(proxy.url().empty());
  ASSERT_TRUE(lab_->SetBandwidth(20).ok());
  auto fresh_install = [&](double loss) {
    SCOPED_TRACE(::testing::Message() << loss << " % loss");
    ASSERT_TRUE(lab_->SetLoss(loss).ok());
    std::filesystem::remove(install_);
    std::filesystem::remove_all(dir_.Join("state"));
    WriteAgentConfig(dir_, {proxy.url()}, master_->public_key(), install_, "",
                     R"({"carrier": "udp"})");
  };
  for (double loss : {0.0, 5.0, 10.0, 20.0}) {
    fresh_install(loss);
    RunResult up = Agent({"update"});
    ASSERT_EQ(up.exit_code, 0) << up.err << up.out;
    EXPECT_EQ(FileSha(install_), Sha(v2_)) << loss;
    const auto lines = JsonLines(up.out);
    const json carrier = Last(lines, "carrier");
    ASSERT_FALSE(carrier.is_null()) << "no UDP session completed at " << loss << " % loss";
    EXPECT_EQ(carrier["done"], v2_.size());  // Everything came over UDP.
    const json r = Last(lines, "result");
    EXPECT_EQ(r["route"], "full");
    // Datagram bytes: the object, the repair the loss called for, and the headers.
    EXPECT_LE(r["bytes_fetched"].get<uint64_t>(),
              static_cast<uint64_t>(v2_.size() * (1.15 + 1.5 * loss / 100)))
        << loss;
  }
  // A firewall that drops UDP: the handshake times out, HTTP fetches everything.
  ASSERT_TRUE(lab_->BlockUdp(true).ok());
  fresh_install(0);
  RunResult up = Agent({"update"});
  ASSERT_TRUE(lab_->BlockUdp(false).ok());
  ASSERT_EQ(up.exit_code, 0) << up.err << up.out;
  EXPECT_EQ(FileSha(install_), Sha(v2_));
  const json fallback = Last(JsonLines(up.out), "fallback");
  ASSERT_FALSE(fallback.is_null());
  EXPECT_NE(fallback["message"].get<std::string>().find("HTTP for the rest"), std::string::npos)
      << fallback.dump();
}

// kill -9 at random points of an update, 20 times, then let it finish: the installed file is
// always the complete old or the complete new version, and the network carried at most 1.2x
// the delta in total.
TEST_F(AgentNetLabTest, KilledRepeatedlyMidUpdateStillConverges) {
  // ~9.4 MB delta: ~15 s at 5 Mbit/s, so that the 20 kills land inside the download. Each kill
  // costs what is in flight on the wire (tbf queue, socket buffers) plus a restart's requests.
  Publish(32 << 20, 96, 96 << 10);
  ASSERT_TRUE(lab_->SetBandwidth(5).ok());
  WriteAgentConfig(dir_, {master_->url()}, master_->public_key(), install_);
  const std::string old_sha = Sha(v1_), new_sha = Sha(v2_);
  const uint64_t rx_before = ClientRxBytes(*lab_, dir_);
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> delay_ms(100, 400);
  int killed_mid_update = 0;
  const std::vector<std::string> args = {"--config", dir_.Join("agent.json"), "--json", "update"};
  for (int trial = 0; trial < 20; ++trial) {
    const pid_t pid = SpawnAgent(*lab_, args, dir_.Join("agent.log"));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ++killed_mid_update;
    }
    const std::string sha = FileSha(install_);
    ASSERT_TRUE(sha == old_sha || sha == new_sha) << "trial " << trial << ": torn install";
    if (sha == new_sha) break;
  }
  EXPECT_GE(killed_mid_update, 20) << "the update finished before 20 kills; make it longer";
  const std::string log = ReadLog(dir_.Join("agent.log"));
  // Restarts continued the download from disk and the apply from a segment checkpoint.
  EXPECT_NE(log.find("\"resume\""), std::string::npos);
  EXPECT_NE(log.find("\"resume_apply\""), std::string::npos);
  RunResult final_run = Agent({"update"});
  ASSERT_EQ(final_run.exit_code, 0) << final_run.err;
  EXPECT_EQ(FileSha(install_), new_sha);
  // What the master wrote to its sockets counts data that never left a killed connection's send
  // buffer; the client's interface counts what arrived (headers included).
  const uint64_t sent = ClientRxBytes(*lab_, dir_) - rx_before;
  std::printf("delta %llu bytes; the device received %llu bytes over %d kills (%.3fx)\n",
              static_cast<unsigned long long>(delta_size_), static_cast<unsigned long long>(sent),
              killed_mid_update, static_cast<double>(sent) / static_cast<double>(delta_size_));
  EXPECT_LE(sent, delta_size_ * 12 / 10) << ReadLog(dir_.Join("agent.log"));
}

// A proxy in front of the master dies in the middle of the stream and comes back on the same
// address: the agent waits it out and finishes the same download.
TEST_F(AgentNetLabTest, ProxyDiesMidStreamAndReturns) {
  Publish(8 << 20, 48, 48 << 10);  // ~2.3 MB delta: ~2 s at 10 Mbit/s.
  ASSERT_TRUE(lab_->SetBandwidth(10).ok());
  const std::string upstream = master_->url();
  const ServerLaunch any_port{lab_->InNs(lab_->server_ns()), lab_->server_ip() + ":0"};
  auto proxy = std::make_unique<ServerProcess>(
      kDs, dir_.Join("proxy"), dir_.Join("proxy.log"),
      std::vector<std::string>{"--role", "proxy", "--upstream", upstream}, any_port);
  ASSERT_FALSE(proxy->url().empty());
  const std::string proxy_url = proxy->url();
  const std::string port = proxy_url.substr(proxy_url.rfind(':') + 1);
  WriteAgentConfig(dir_, {proxy_url}, master_->public_key(), install_, "",
                   R"({"retry_budget": 10, "backoff_initial_ms": 200, "backoff_max_ms": 1000})");
  const pid_t agent = SpawnAgent(*lab_, {"--config", dir_.Join("agent.json"), "--json", "update"},
                                 dir_.Join("agent.log"));
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  proxy->Stop(SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  proxy = std::make_unique<ServerProcess>(
      kDs, dir_.Join("proxy"), dir_.Join("proxy.log"),
      std::vector<std::string>{"--role", "proxy", "--upstream", upstream},
      ServerLaunch{lab_->InNs(lab_->server_ns()), lab_->server_ip() + ":" + port});
  ASSERT_EQ(proxy->url(), proxy_url);
  int status = 0;
  ASSERT_EQ(::waitpid(agent, &status, 0), agent);
  Result<Bytes> log = ReadFile(dir_.Join("agent.log"));
  const std::string text = log.ok() ? std::string(log->begin(), log->end()) : "";
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << text;
  EXPECT_EQ(FileSha(install_), Sha(v2_));
  const json r = Last(JsonLines(text), "result");
  EXPECT_EQ(r["route"], "delta");
  EXPECT_NE(text.find("\"retry\""), std::string::npos) << "the outage was not noticed";
  EXPECT_LE(r["bytes_fetched"].get<uint64_t>(), delta_size_ * 12 / 10);
}

}  // namespace
}  // namespace ds::testing
