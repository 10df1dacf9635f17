// Shared by the deployment service's tests: an in-process master repository on 127.0.0.1 with
// artifact "app" at 1.0.0 and 2.0.0 (the delta between them made), and the deployment service
// over a real SQLite file, with helpers to enrol devices and report events.
#ifndef DELTASTREAM_TESTS_DEPLOY_DEPLOY_FIXTURE_H_
#define DELTASTREAM_TESTS_DEPLOY_DEPLOY_FIXTURE_H_

#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/hash.h"
#include "deploy/deploy.h"
#include "net/http.h"
#include "repo/master_api.h"
#include "repo/repo.h"
#include "support/test_util.h"

namespace ds::testing {

using nlohmann::json;

inline Result<std::string> PublishBytes(repo::Repository* repo, const std::string& artifact,
                                        const std::string& version, const Bytes& data) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<repo::Upload> up,
                      repo->BeginUpload(std::nullopt, std::nullopt));
  DS_RETURN_IF_ERROR(up->Write(data));
  DS_ASSIGN_OR_RETURN(std::string sha, up->Commit());
  repo::PublishRequest req;
  req.artifact = artifact;
  req.version = version;
  req.publisher = "test";
  DS_ASSIGN_OR_RETURN(repo::PublishResult r, repo->Publish(req, sha));
  return r.version.sha256;
}

class DeployFixture : public ::testing::Test {
 protected:
  // |deploy_routes|: the deployment service is served by the master's server too (as `serve`
  // does) with its threads running; otherwise the test drives the engine (Tick, RunPrewarmOnce).
  void StartMaster(bool deploy_routes) {
    repo::RepoOptions ro;
    ro.data_dir = dir_.Join("master");
    ro.start_workers = false;
    Result<std::unique_ptr<repo::Repository>> r = repo::Repository::Open(ro);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    repo_ = std::move(r).value();
    Result<std::string> admin = repo_->CreateToken("admin", repo::TokenScope::kAdmin);
    ASSERT_TRUE(admin.ok());
    admin_ = *admin;
    v1_ = RandomBytes(200 << 10, 1);
    v2_ = v1_;
    for (size_t i = 0; i < 4096; ++i) v2_[(i * 37) % v2_.size()] ^= 0x33;
    Result<std::string> s1 = PublishBytes(repo_.get(), "app", "1.0.0", v1_);
    Result<std::string> s2 = PublishBytes(repo_.get(), "app", "2.0.0", v2_);
    ASSERT_TRUE(s1.ok() && s2.ok());
    sha1_ = *s1;
    sha2_ = *s2;
    ASSERT_TRUE(repo_->RunJobsOnce().ok());
    net::ServerOptions so;
    so.host = "127.0.0.1";
    so.port = 0;
    so.worker_threads = 4;
    server_ = std::make_unique<net::Server>(so);
    repo::RegisterMasterApi(server_.get(), repo_.get(), {});
    if (deploy_routes) {
      OpenDeploy(true);
      deploy_->Register(*server_);
    }
    ASSERT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
    if (deploy_) deploy_->SetRepoUrl(url_);
  }

  void OpenDeploy(bool threads) {
    deploy::DeployOptions o;
    o.data_dir = dir_.path();
    o.enrollment_token = kEnroll;
    repo::Repository* repo = repo_.get();
    o.check_admin = [repo](std::string_view t) {
      return repo->CheckToken(t, repo::TokenScope::kAdmin).status();
    };
    o.repo_url = url_;
    o.start_threads = threads;
    o.tick_ms = 100;
    o.sse_heartbeat_ms = 500;
    Result<std::unique_ptr<deploy::Deploy>> d = deploy::Deploy::Open(o);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    deploy_ = std::move(d).value();
  }

  void TearDown() override {
    if (deploy_) deploy_->Stop();
    if (server_) server_->Stop();
    deploy_.reset();
    server_.reset();
    if (repo_) repo_->Shutdown();
  }

  // Enrols |id| with app |version| installed (sha256 of that version's bytes); returns its token.
  std::string Enrol(const std::string& id, const std::string& version = "1.0.0",
                    const json& labels = json{{"site", "lab"}}) {
    const json body = {{"enrollment_token", kEnroll},
                       {"device_id", id},
                       {"labels", labels},
                       {"hardware", "x86_64"},
                       {"agent_version", "0.1.0"},
                       {"inventory",
                        {{{"artifact", "app"},
                          {"version", version},
                          {"sha256", version == "1.0.0" ? sha1_ : sha2_}}}}};
    Result<std::string> r = deploy_->Enroll(body.dump());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? json::parse(*r)["device_token"].get<std::string>() : "";
  }

  json Create(const json& waves, double success, double failure,
              const json& selector = json{{"labels", {{"site", "lab"}}}}) {
    const json body = {
        {"artifact", "app"},
        {"version", "2.0.0"},
        {"selector", selector},
        {"waves", waves},
        {"success_threshold", success},
        {"failure_threshold", failure},
        {"policy", {{"prefer_delta", true}, {"carrier", "http"}, {"fallback", "full"}}}};
    Result<std::string> r = deploy_->CreateDeployment(body.dump());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? json::parse(*r) : json();
  }

  json Get(const std::string& id) {
    Result<std::string> r = deploy_->GetDeployment(id);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? json::parse(*r) : json();
  }

  // Reports one event for |device| in deployment |dep|; returns acked_seq.
  uint64_t Report(const std::string& device, uint64_t seq, const std::string& dep,
                  const std::string& state, int error_code = 0) {
    json e = {{"seq", seq}, {"deployment_id", dep}, {"state", state}, {"time", 1.8e9}};
    if (state == "installed") {
      e.update({{"result", "delta"},
                {"bytes", 1000},
                {"full_bytes", 5000},
                {"bytes_saved", 4000},
                {"from_version", "1.0.0"},
                {"to_version", "2.0.0"},
                {"error_code", 0}});
    } else if (state == "failed") {
      e.update({{"result", "failed"}, {"error_code", error_code}, {"bytes", 10}});
    }
    Result<std::string> r = deploy_->PostEvents(device, json{{"events", {e}}}.dump());
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? json::parse(*r)["acked_seq"].get<uint64_t>() : 0;
  }

  size_t InstructionCount(const std::string& device) {
    Result<std::string> r = deploy_->Instructions(device);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? json::parse(*r)["instructions"].size() : 0;
  }

  static std::vector<std::string> WaveDevices(const json& dep, int wave) {
    std::vector<std::string> out;
    for (const json& d : dep["devices"]) {
      if (d["wave"] == wave) out.push_back(d["device_id"]);
    }
    return out;
  }

  static constexpr const char* kEnroll = "enrol-secret-for-tests";
  TempDir dir_;
  std::unique_ptr<repo::Repository> repo_;
  std::unique_ptr<net::Server> server_;
  std::unique_ptr<deploy::Deploy> deploy_;
  std::string url_, admin_, sha1_, sha2_;
  Bytes v1_, v2_;
};

}  // namespace ds::testing

#endif  // DELTASTREAM_TESTS_DEPLOY_DEPLOY_FIXTURE_H_
