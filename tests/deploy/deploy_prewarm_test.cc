// Delta pre-warming against real processes: a master that keeps deltas from the previous version
// only (--delta-history 1), a proxy in front of it that makes missing deltas on demand, and the
// deployment service alone (`serve --role deploy --repo PROXY`), driven by the real
// `deltastream deploy` CLI. A fleet at 1.0.0, 2.0.0 and 3.0.0 is sent to 3.0.0: the service has
// the proxy make the missing 1.0.0 -> 3.0.0 delta before the wave starts, and reports the
// expected bytes (deltas) against full downloads.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "common/fs.h"
#include "common/hash.h"
#include "net/http.h"
#include "support/process_util.h"
#include "support/test_util.h"

namespace ds::testing {
namespace {

using nlohmann::json;
const std::string kDs = DS_CLI_PATH;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string ReadText(const std::string& path) {
  Result<Bytes> b = ReadFile(path);
  std::string s = b.ok() ? std::string(b->begin(), b->end()) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Three versions: v2 = v1 with some blocks changed, v3 = v2 with others.
std::vector<Bytes> Versions() {
  std::mt19937_64 rng(11);
  Bytes v1(1 << 20);
  for (auto& b : v1) b = static_cast<uint8_t>(rng());
  std::vector<Bytes> out = {v1};
  for (int k = 0; k < 2; ++k) {
    Bytes next = out.back();
    for (int e = 0; e < 8; ++e) {
      const size_t at = (rng() % (next.size() - 8192));
      for (size_t i = 0; i < 4096; ++i) next[at + i] = static_cast<uint8_t>(rng());
    }
    out.push_back(next);
  }
  return out;
}

TEST(DeployPrewarmTest, MissingDeltaIsMadeBeforeTheWaveAndBytesAreReported) {
  TempDir dir;
  const std::vector<Bytes> v = Versions();
  std::vector<std::string> sha;
  for (const Bytes& b : v) sha.push_back(ToHex(Sha256::Of(b)));

  ServerProcess master(kDs, dir.Join("master"), dir.Join("master.log"),
                       {"--delta-history", "1", "--no-deploy"});
  ASSERT_FALSE(master.url().empty());
  const std::vector<std::string> versions = {"1.0.0", "2.0.0", "3.0.0"};
  for (size_t i = 0; i < v.size(); ++i) {
    WriteFileOrDie(dir.Join("v" + std::to_string(i)), v[i]);
    RunResult r = RunProgram(kDs, dir,
                             {"publish", "--server", master.url(), "--token-file",
                              dir.Join("master/admin.token"), "--artifact", "app", "--version",
                              versions[i], "--wait", "-q", dir.Join("v" + std::to_string(i))});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  net::Client plain;
  // The master has 1->2 and 2->3, not 1->3.
  Result<net::ClientResponse> listed =
      plain.Get(master.url() + "/v1/artifacts/app/deltas?from=1.0.0&to=3.0.0");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(json::parse(listed->body)["deltas"].size(), 0u) << listed->body;

  ServerProcess proxy(kDs, dir.Join("proxy"), dir.Join("proxy.log"),
                      {"--role", "proxy", "--upstream", master.url()});
  ASSERT_FALSE(proxy.url().empty());
  ServerProcess service(kDs, dir.Join("deploy"), dir.Join("deploy.log"),
                        {"--role", "deploy", "--repo", proxy.url()});
  ASSERT_FALSE(service.url().empty());
  const std::string admin = ReadText(dir.Join("deploy/admin.token"));
  const std::string enroll = ReadText(dir.Join("deploy/enroll.token"));
  ASSERT_EQ(admin.size(), 64u);
  ASSERT_EQ(enroll.size(), 64u);

  // Two devices at 1.0.0, one at 2.0.0, one already at 3.0.0.
  const std::vector<std::pair<std::string, int>> fleet = {
      {"dev-1", 0}, {"dev-2", 0}, {"dev-3", 1}, {"dev-4", 2}};
  for (const auto& [id, at] : fleet) {
    const json body = {
        {"enrollment_token", enroll},
        {"device_id", id},
        {"labels", {{"site", "lab"}}},
        {"inventory", {{{"artifact", "app"}, {"version", versions[at]}, {"sha256", sha[at]}}}}};
    Result<net::ClientResponse> r =
        plain.Send("POST", service.url() + "/v1/devices/enroll", body.dump());
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->status, 200) << r->body;
  }

  const std::vector<std::string> client = {"--server", service.url(), "--token-file",
                                           dir.Join("deploy/admin.token")};
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.end(), client.begin(), client.end());
    return RunProgram(kDs, dir, args);
  };
  RunResult created =
      cli({"deploy", "create", "--artifact", "app", "--version", "3.0.0", "--label", "site=lab",
           "--waves", "100%", "--success-threshold", "1", "--failure-threshold", "0.5", "--json"});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  const std::string id = json::parse(created.out)["id"];
  EXPECT_EQ(id, "d-1");

  json dep;
  const double until = Now() + 180;
  while (Now() < until) {
    RunResult shown = cli({"deploy", "show", id, "--json"});
    ASSERT_EQ(shown.exit_code, 0) << shown.err;
    dep = json::parse(shown.out);
    if (dep["waves"][0]["state"] == "running") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(dep["waves"][0]["state"], "running") << dep.dump(2) << ReadText(dir.Join("deploy.log"));
  const json& wave = dep["waves"][0];
  std::map<std::string, json> groups;
  for (const json& g : wave["prewarm"]) groups[g["from_version"]] = g;
  ASSERT_EQ(groups.size(), 3u) << wave.dump(2);
  // 1.0.0: made by the proxy on demand; 2.0.0: the master's signed delta; 3.0.0: nothing to do.
  EXPECT_EQ(groups["1.0.0"]["kind"], "delta") << wave.dump(2);
  EXPECT_EQ(groups["1.0.0"]["source"], "on-demand");
  EXPECT_EQ(groups["1.0.0"]["state"], "ready");
  EXPECT_EQ(groups["1.0.0"]["devices"], 2);
  EXPECT_EQ(groups["2.0.0"]["kind"], "delta");
  EXPECT_EQ(groups["2.0.0"]["source"], "upstream");
  EXPECT_EQ(groups["3.0.0"]["kind"], "current");
  const int64_t d13 = groups["1.0.0"]["delta_bytes"], d23 = groups["2.0.0"]["delta_bytes"];
  EXPECT_GT(d13, 0);
  EXPECT_LT(d13, static_cast<int64_t>(v[2].size()) / 4);
  EXPECT_EQ(wave["expected_full_bytes"], 3 * v[2].size());
  EXPECT_EQ(wave["expected_delta_bytes"], 2 * d13 + d23);

  // The delta exists on the proxy now: a device asking gets it at once (no 202).
  Result<net::ClientResponse> s =
      plain.Get(proxy.url() + "/v1/artifacts/app/stream?from=" + sha[0] + "&to=3.0.0");
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->status, 200) << s->body;
  const json desc = json::parse(s->body);
  EXPECT_EQ(desc["kind"], "delta");
  EXPECT_EQ(desc["source"], "on-demand");
  EXPECT_EQ(desc["size"], d13);

  // The CLI's other actions.
  RunResult listed_cli = cli({"deploy", "list"});
  ASSERT_EQ(listed_cli.exit_code, 0) << listed_cli.err;
  EXPECT_NE(listed_cli.out.find("d-1"), std::string::npos) << listed_cli.out;
  RunResult paused = cli({"deploy", "pause", id, "--json"});
  ASSERT_EQ(paused.exit_code, 0) << paused.err;
  EXPECT_EQ(json::parse(paused.out)["state"], "paused");
  RunResult resumed = cli({"deploy", "resume", id});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("running"), std::string::npos) << resumed.out;
  RunResult bad = cli({"deploy", "show", "d-404"});
  EXPECT_EQ(bad.exit_code, static_cast<int>(ErrorCode::kNotFound)) << bad.err;
  RunResult cancelled = cli({"deploy", "cancel", id, "--json"});
  ASSERT_EQ(cancelled.exit_code, 0) << cancelled.err;
  EXPECT_EQ(json::parse(cancelled.out)["state"], "cancelled");
  RunResult noauth =
      RunProgram(kDs, dir, {"deploy", "list", "--server", service.url(), "--token", "wrong"});
  EXPECT_EQ(noauth.exit_code, static_cast<int>(ErrorCode::kUnauthenticated));
}

}  // namespace
}  // namespace ds::testing
