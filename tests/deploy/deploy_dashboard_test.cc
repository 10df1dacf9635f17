// The dashboard in a real headless Chromium: `deltastream serve` (master with the deployment
// service), four devices and a two-wave deployment made over HTTP; then web/tests/dashboard.mjs
// (playwright-core driving Debian's /usr/bin/chromium) opens /dashboard once, feeds device
// events over HTTP and checks that the page shows the rollout progressing live, without a
// reload: progress counts, the second wave starting, a failure with its error code, the halt.
// Screenshots go to <build>/test_artifacts/. Skipped only when chromium, node or playwright-core
// (scripts/install-deps.sh installs them) is absent.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
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

std::string Which(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    const std::string cand = p.substr(start, end - start) + "/" + name;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return "";
}

std::string ReadText(const std::string& path) {
  Result<Bytes> b = ReadFile(path);
  std::string s = b.ok() ? std::string(b->begin(), b->end()) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

TEST(DeployDashboardTest, ShowsARolloutProgressingLive) {
  const std::string web = DS_WEB_DIR;
  const std::string node = Which("node");
  std::string chromium = "/usr/bin/chromium";
  if (::access(chromium.c_str(), X_OK) != 0) chromium = Which("chromium");
  if (node.empty() || chromium.empty() ||
      !std::filesystem::exists(web + "/node_modules/playwright-core/package.json")) {
    GTEST_SKIP() << "needs node, chromium and web/node_modules/playwright-core "
                    "(scripts/install-deps.sh installs them)";
  }
  TempDir dir;
  ServerProcess server(kDs, dir.Join("data"), dir.Join("server.log"), {});
  ASSERT_FALSE(server.url().empty());
  const std::string admin = ReadText(dir.Join("data/admin.token"));
  const std::string enroll = ReadText(dir.Join("data/enroll.token"));
  std::mt19937_64 rng(3);
  Bytes v1(512 << 10);
  for (auto& b : v1) b = static_cast<uint8_t>(rng());
  Bytes v2 = v1;
  for (size_t i = 0; i < 16384; ++i) v2[(i * 31) % v2.size()] ^= 0x5a;
  WriteFileOrDie(dir.Join("v1"), v1);
  WriteFileOrDie(dir.Join("v2"), v2);
  for (const auto& [version, file] : {std::pair{"1.0.0", "v1"}, std::pair{"2.0.0", "v2"}}) {
    RunResult r = RunProgram(kDs, dir,
                             {"publish", "--server", server.url(), "--token", admin, "--artifact",
                              "app", "--version", version, "--wait", "-q", dir.Join(file)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  const std::string sha1 = ToHex(Sha256::Of(v1));
  net::Client plain;
  json devices = json::array();
  for (const char* id : {"dev-a", "dev-b", "dev-c", "dev-d"}) {
    const json body = {
        {"enrollment_token", enroll},
        {"device_id", id},
        {"labels", {{"site", "lab"}}},
        {"inventory", {{{"artifact", "app"}, {"version", "1.0.0"}, {"sha256", sha1}}}}};
    Result<net::ClientResponse> r =
        plain.Send("POST", server.url() + "/v1/devices/enroll", body.dump());
    ASSERT_TRUE(r.ok() && r->status == 200);
    devices.push_back({{"id", id}, {"token", json::parse(r->body)["device_token"]}});
  }
  net::ClientOptions o;
  o.bearer_token = admin;
  net::Client op(o);
  const json spec = {
      {"artifact", "app"},
      {"version", "2.0.0"},
      {"selector", {{"labels", {{"site", "lab"}}}}},
      {"waves", {2, "100%"}},
      {"success_threshold", 1.0},
      {"failure_threshold", 0.5},
      {"policy", {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "fail"}}}};
  Result<net::ClientResponse> c = op.Send("POST", server.url() + "/v1/deployments", spec.dump());
  ASSERT_TRUE(c.ok() && c->status == 201) << (c.ok() ? c->body : c.status().ToString());
  const json dep = json::parse(c->body);
  // Each device's wave, from the service.
  for (json& d : devices) {
    for (const json& t : dep["devices"]) {
      if (t["device_id"] == d["id"]) d["wave"] = t["wave"];
    }
  }
  const std::string artifacts = DS_ARTIFACT_DIR;
  std::filesystem::create_directories(artifacts);
  const std::string shot = artifacts + "/dashboard.png";
  const std::string shot_progress = artifacts + "/dashboard-progress.png";
  std::filesystem::remove(shot);
  const json config = {{"url", server.url()},
                       {"admin", admin},
                       {"deployment", dep["id"]},
                       {"devices", devices},
                       {"chromium", chromium},
                       {"screenshot", shot},
                       {"screenshot_progress", shot_progress},
                       {"full_bytes", v2.size()}};
  WriteFileOrDie(dir.Join("dashboard.json"), AsBytes(config.dump(2)));
  RunResult r = RunProgram(node, dir, {web + "/tests/dashboard.mjs", dir.Join("dashboard.json")});
  EXPECT_EQ(r.exit_code, 0) << "stdout:\n"
                            << r.out << "\nstderr:\n"
                            << r.err << "\nserver log:\n"
                            << ReadText(dir.Join("server.log"));
  Result<uint64_t> size = FileSize(shot);
  ASSERT_TRUE(size.ok()) << "no screenshot at " << shot;
  EXPECT_GT(*size, 10000u);
  std::printf("dashboard screenshots: %s, %s\n", shot_progress.c_str(), shot.c_str());
}

}  // namespace
}  // namespace ds::testing
