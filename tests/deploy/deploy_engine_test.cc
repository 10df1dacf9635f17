// The rollout engine against a real SQLite file (deploy.db) and a real in-process master: waves
// by count and percentage, the success threshold advancing a rollout, the failure threshold
// halting it, pause/resume/cancel/retry, and a restart in the middle of a rollout (the store
// reopened). The engine is driven by hand here (Tick, RunPrewarmOnce): no timer races.
#include <SQLiteCpp/SQLiteCpp.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <map>

#include "deploy/deploy_fixture.h"

namespace ds::testing {
namespace {

class DeployEngineTest : public DeployFixture {
 protected:
  void SetUp() override {
    StartMaster(false);
    OpenDeploy(false);
  }
  // Pre-warms and starts whatever wave is due.
  void Step() {
    deploy_->RunPrewarmOnce();
    deploy_->Tick();
    deploy_->RunPrewarmOnce();
  }
  void EnrolN(int n) {
    for (int i = 0; i < n; ++i) {
      char id[16];
      std::snprintf(id, sizeof(id), "dev-%02d", i);
      Enrol(id);
    }
  }
  // Every device of |wave| reports started then |final_state|; seqs continue per device.
  void Finish(const std::string& dep, const std::vector<std::string>& devices,
              const std::string& final_state) {
    for (const std::string& d : devices) {
      uint64_t& seq = seq_[d];
      Report(d, ++seq, dep, "started");
      Report(d, ++seq, dep, final_state, final_state == "failed" ? 26 : 0);
    }
  }
  std::map<std::string, uint64_t> seq_;
};

TEST_F(DeployEngineTest, WavesByCountAndPercentage) {
  EnrolN(10);
  json d = Create(json::array({2, "50%", "100%"}), 1.0, 0.0);
  ASSERT_EQ(d["waves"].size(), 3u);
  EXPECT_EQ(d["waves"][0]["devices"], 2);
  EXPECT_EQ(d["waves"][1]["devices"], 3);
  EXPECT_EQ(d["waves"][2]["devices"], 5);
  EXPECT_EQ(d["devices"].size(), 10u);

  d = Create(json::array({"10%", "100%"}), 1.0, 0.0);
  EXPECT_EQ(d["waves"][0]["devices"], 1);
  EXPECT_EQ(d["waves"][1]["devices"], 9);

  // Counts are wave sizes; devices past the last wave are not part of the deployment.
  d = Create(json::array({3, 3}), 1.0, 0.0);
  EXPECT_EQ(d["waves"][0]["devices"], 3);
  EXPECT_EQ(d["waves"][1]["devices"], 3);
  EXPECT_EQ(d["devices"].size(), 6u);

  // A count beyond the selection is capped; a percentage never goes backwards.
  d = Create(json::array({20, "10%"}), 1.0, 0.0);
  EXPECT_EQ(d["waves"][0]["devices"], 10);
  EXPECT_EQ(d["waves"][1]["devices"], 0);

  // Selection by device ids AND labels.
  Enrol("other", "1.0.0", json{{"site", "home"}});
  d = Create(json::array({"100%"}), 1.0, 0.0,
             json{{"labels", {{"site", "lab"}}}, {"devices", {"dev-01", "dev-02", "other"}}});
  EXPECT_EQ(d["devices"].size(), 2u);

  // Bad requests are refused with a clear error.
  for (const json& bad : {json::array(), json::array({0}), json::array({"0%"}),
                          json::array({"150%"}), json::array({"abc"}), json::array({-1})}) {
    const json body = {{"artifact", "app"},
                       {"version", "2.0.0"},
                       {"selector", {{"labels", json::object()}}},
                       {"waves", bad}};
    EXPECT_EQ(CodeOf(deploy_->CreateDeployment(body.dump())), ErrorCode::kInvalidArgument)
        << bad.dump();
  }
  const json unknown = {{"artifact", "app"},
                        {"version", "9.9.9"},
                        {"selector", {{"labels", json::object()}}},
                        {"waves", {"100%"}}};
  EXPECT_EQ(CodeOf(deploy_->CreateDeployment(unknown.dump())), ErrorCode::kNotFound);
  const json nobody = {{"artifact", "app"},
                       {"version", "2.0.0"},
                       {"selector", {{"labels", {{"site", "mars"}}}}},
                       {"waves", {"100%"}}};
  EXPECT_EQ(CodeOf(deploy_->CreateDeployment(nobody.dump())), ErrorCode::kInvalidArgument);
}

TEST_F(DeployEngineTest, SuccessThresholdAdvancesWavesUntilFinished) {
  EnrolN(6);
  const json created = Create(json::array({2, "100%"}), 0.5, 0.5);
  const std::string id = created["id"];
  EXPECT_EQ(created["state"], "running");
  EXPECT_EQ(created["waves"][0]["state"], "prewarming");
  const auto w0 = WaveDevices(created, 0), w1 = WaveDevices(created, 1);
  ASSERT_EQ(w0.size(), 2u);
  ASSERT_EQ(w1.size(), 4u);
  // Nothing is handed out before the wave's deltas are checked.
  EXPECT_EQ(InstructionCount(w0[0]), 0u);
  Step();
  json d = Get(id);
  EXPECT_EQ(d["waves"][0]["state"], "running");
  EXPECT_EQ(d["waves"][1]["state"], "pending");
  // Pre-warming found the master's delta 1.0.0 -> 2.0.0: expected bytes below full.
  EXPECT_EQ(d["waves"][0]["expected_full_bytes"], 2 * v2_.size());
  EXPECT_GT(d["waves"][0]["expected_delta_bytes"], 0);
  EXPECT_LT(d["waves"][0]["expected_delta_bytes"], d["waves"][0]["expected_full_bytes"]);
  EXPECT_EQ(d["waves"][0]["prewarm"][0]["kind"], "delta");
  EXPECT_EQ(d["waves"][0]["prewarm"][0]["from_version"], "1.0.0");
  EXPECT_EQ(InstructionCount(w0[0]), 1u);
  EXPECT_EQ(InstructionCount(w0[1]), 1u);
  EXPECT_EQ(InstructionCount(w1[0]), 0u);
  const json instr = json::parse(*deploy_->Instructions(w0[0]))["instructions"][0];
  EXPECT_EQ(instr["deployment_id"], id);
  EXPECT_EQ(instr["artifact"], "app");
  EXPECT_EQ(instr["version"], "2.0.0");
  EXPECT_EQ(instr["policy"]["fallback"], "full");

  // One device still downloading keeps its instruction; the other installs: 1 of 2 = 0.5 meets
  // the threshold and the second wave starts.
  Report(w0[0], 1, id, "started");
  Report(w0[0], 2, id, "downloading");
  Report(w0[1], 1, id, "started");
  Report(w0[1], 2, id, "installed");
  EXPECT_EQ(InstructionCount(w0[1]), 0u) << "a final event clears the instruction";
  EXPECT_EQ(InstructionCount(w0[0]), 1u);
  d = Get(id);
  EXPECT_EQ(d["waves"][0]["state"], "done");
  EXPECT_EQ(d["waves"][0]["installed"], 1);
  EXPECT_EQ(d["waves"][0]["in_progress"], 1);
  EXPECT_EQ(d["waves"][1]["state"], "prewarming");
  Step();
  d = Get(id);
  EXPECT_EQ(d["waves"][1]["state"], "running");
  for (const std::string& dev : w1) EXPECT_EQ(InstructionCount(dev), 1u) << dev;

  seq_[w0[0]] = 2;
  seq_[w0[1]] = 2;
  Report(w0[0], ++seq_[w0[0]], id, "installed");
  Finish(id, w1, "installed");
  deploy_->Tick();
  d = Get(id);
  EXPECT_EQ(d["state"], "finished");
  EXPECT_EQ(d["waves"][1]["state"], "done");
  EXPECT_EQ(d["counts"]["installed"], 6);
  EXPECT_EQ(d["bytes_saved_total"], 6 * 4000);
  EXPECT_EQ(d["bytes_total"], 6 * 1000);
  for (const json& dev : d["devices"]) {
    EXPECT_EQ(dev["state"], "installed");
    EXPECT_EQ(dev["result"], "delta");
  }
}

TEST_F(DeployEngineTest, FailureThresholdHaltsTheRollout) {
  EnrolN(8);
  const json created = Create(json::array({3, "100%"}), 1.0, 0.2);
  const std::string id = created["id"];
  const auto w0 = WaveDevices(created, 0), w1 = WaveDevices(created, 1);
  Step();
  Finish(id, {w0[0]}, "installed");
  EXPECT_EQ(Get(id)["state"], "running");
  // 1 of 3 failed = 0.33 > 0.2: halted, and the next wave never starts.
  Finish(id, {w0[1]}, "failed");
  json d = Get(id);
  EXPECT_EQ(d["state"], "halted");
  EXPECT_EQ(d["waves"][0]["state"], "halted");
  EXPECT_NE(d["reason"].get<std::string>().find("failure threshold"), std::string::npos);
  for (const json& dev : d["devices"]) {
    if (dev["device_id"] == w0[1]) {
      EXPECT_EQ(dev["state"], "failed");
      EXPECT_EQ(dev["error_code"], 26);
    }
  }
  // The device that had not started yet gets nothing more; the halted rollout stays halted.
  EXPECT_EQ(InstructionCount(w0[2]), 0u);
  Step();
  d = Get(id);
  EXPECT_EQ(d["state"], "halted");
  EXPECT_EQ(d["waves"][1]["state"], "pending");
  for (const std::string& dev : w1) EXPECT_EQ(InstructionCount(dev), 0u);
}

TEST_F(DeployEngineTest, AllFinalBelowSuccessThresholdHalts) {
  EnrolN(2);
  const json created = Create(json::array({"100%"}), 1.0, 0.5);
  const std::string id = created["id"];
  Step();
  const auto w0 = WaveDevices(created, 0);
  Finish(id, {w0[0]}, "installed");
  Finish(id, {w0[1]}, "deferred");
  const json d = Get(id);
  EXPECT_EQ(d["state"], "halted") << d.dump();
  EXPECT_NE(d["reason"].get<std::string>().find("success threshold"), std::string::npos);
}

TEST_F(DeployEngineTest, PauseResumeCancelRetry) {
  EnrolN(4);
  const json created = Create(json::array({"100%"}), 1.0, 0.5);
  const std::string id = created["id"];
  Step();
  const auto w0 = WaveDevices(created, 0);
  Report(w0[0], 1, id, "started");
  Report(w0[0], 2, id, "downloading");

  ASSERT_TRUE(deploy_->Act(id, "pause").ok());
  EXPECT_EQ(Get(id)["state"], "paused");
  EXPECT_EQ(InstructionCount(w0[0]), 1u) << "a device already at work goes on";
  EXPECT_EQ(InstructionCount(w0[1]), 0u) << "a paused rollout hands out nothing new";
  // Events still count while paused, and nothing advances.
  Report(w0[0], 3, id, "installed");
  deploy_->Tick();
  EXPECT_EQ(Get(id)["state"], "paused");

  ASSERT_TRUE(deploy_->Act(id, "resume").ok());
  EXPECT_EQ(Get(id)["state"], "running");
  EXPECT_EQ(InstructionCount(w0[1]), 1u);

  // One failure (1 of 4 = 0.25, below 0.5): running; the others finish: all final, 3 of 4
  // installed, below the success threshold of 1.0: halted. Retry gives the failed device the
  // instruction again and the rollout runs.
  seq_[w0[0]] = 3;
  Finish(id, {w0[1]}, "failed");
  EXPECT_EQ(Get(id)["state"], "running");
  Finish(id, {w0[2], w0[3]}, "installed");
  EXPECT_EQ(Get(id)["state"], "halted");
  EXPECT_EQ(InstructionCount(w0[1]), 0u);
  Result<std::string> r = deploy_->Act(id, "retry");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  json d = json::parse(*r);
  EXPECT_EQ(d["state"], "running");
  EXPECT_EQ(d["waves"][0]["state"], "running");
  EXPECT_EQ(InstructionCount(w0[1]), 1u);
  for (const json& dev : d["devices"]) {
    if (dev["device_id"] == w0[1]) {
      EXPECT_EQ(dev["state"], "queued");
      EXPECT_EQ(dev["attempts"], 2);
      EXPECT_EQ(dev["error_code"], 0);
    }
  }

  ASSERT_TRUE(deploy_->Act(id, "cancel").ok());
  d = Get(id);
  EXPECT_EQ(d["state"], "cancelled");
  for (const std::string& dev : w0) EXPECT_EQ(InstructionCount(dev), 0u);
  EXPECT_EQ(CodeOf(deploy_->Act(id, "resume")), ErrorCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(deploy_->Act(id, "retry")), ErrorCode::kInvalidArgument);
  EXPECT_EQ(CodeOf(deploy_->Act(id, "explode")), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(deploy_->Act("d-99", "pause")), ErrorCode::kNotFound);
}

// The engine keeps per-wave counts in memory between events (an event costs O(waves)); a retry
// changes many rows at once. The counts after it must be the database's: the retried device's
// "installed" finishes the rollout, and a second failure after the retry halts it again.
TEST_F(DeployEngineTest, CountsFollowEventsAcrossRetries) {
  EnrolN(3);
  const json created = Create(json::array({"100%"}), 1.0, 0.5);
  const std::string id = created["id"];
  Step();
  const auto w0 = WaveDevices(created, 0);
  ASSERT_EQ(w0.size(), 3u);
  Finish(id, {w0[0]}, "failed");
  Finish(id, {w0[1], w0[2]}, "installed");
  EXPECT_EQ(Get(id)["state"], "halted");
  ASSERT_TRUE(deploy_->Act(id, "retry").ok());
  EXPECT_EQ(Get(id)["state"], "running");
  // Failed again: 1 of 3 is below the failure threshold, all final, 2 of 3 installed: halted.
  Finish(id, {w0[0]}, "failed");
  json d = Get(id);
  EXPECT_EQ(d["state"], "halted");
  EXPECT_EQ(d["waves"][0]["failed"], 1);
  EXPECT_EQ(d["waves"][0]["installed"], 2);
  ASSERT_TRUE(deploy_->Act(id, "retry").ok());
  Report(w0[0], ++seq_[w0[0]], id, "started");
  deploy_->Tick();
  EXPECT_EQ(Get(id)["state"], "running");
  Report(w0[0], ++seq_[w0[0]], id, "installed");
  d = Get(id);
  EXPECT_EQ(d["state"], "finished");
  EXPECT_EQ(d["waves"][0]["state"], "done");
  EXPECT_EQ(d["counts"]["installed"], 3);
  EXPECT_EQ(d["counts"]["failed"], 0);
}

TEST_F(DeployEngineTest, RestartMidRolloutLosesNothing) {
  EnrolN(5);
  const json created = Create(json::array({2, "100%"}), 1.0, 0.5);
  const std::string id = created["id"];
  const auto w0 = WaveDevices(created, 0), w1 = WaveDevices(created, 1);
  Step();
  Finish(id, w0, "installed");
  // The second wave is pre-warming when the service goes away.
  EXPECT_EQ(Get(id)["waves"][1]["state"], "prewarming");
  deploy_->Stop();
  deploy_.reset();

  OpenDeploy(false);
  json d = Get(id);
  EXPECT_EQ(d["state"], "running");
  EXPECT_EQ(d["waves"][0]["state"], "done");
  EXPECT_EQ(d["waves"][0]["installed"], 2);
  EXPECT_EQ(d["waves"][1]["state"], "prewarming");
  // The restarted engine runs the pre-warm job again and starts the wave.
  deploy_->Tick();
  deploy_->RunPrewarmOnce();
  d = Get(id);
  EXPECT_EQ(d["waves"][1]["state"], "running");
  for (const std::string& dev : w1) EXPECT_EQ(InstructionCount(dev), 1u);
  // Sequence numbers survive: a replay of an old event is still ignored after the restart.
  EXPECT_EQ(Report(w0[0], 1, id, "failed", 9), 2u);
  EXPECT_EQ(Get(id)["waves"][0]["installed"], 2);

  Finish(id, {w1[0]}, "installed");
  deploy_->Stop();
  deploy_.reset();
  OpenDeploy(false);
  Finish(id, {w1[1], w1[2]}, "installed");
  deploy_->Tick();
  d = Get(id);
  EXPECT_EQ(d["state"], "finished");
  EXPECT_EQ(d["counts"]["installed"], 5);
}

TEST_F(DeployEngineTest, SchemaVersionFromTheFutureIsRefused) {
  deploy_->Stop();
  deploy_.reset();
  {
    SQLite::Database db(dir_.Join("deploy.db"), SQLite::OPEN_READWRITE);
    db.exec("UPDATE meta SET value='99' WHERE key='schema_version'");
  }
  deploy::DeployOptions o;
  o.data_dir = dir_.path();
  o.enrollment_token = kEnroll;
  o.check_admin = [](std::string_view) { return Status::Ok(); };
  o.start_threads = false;
  EXPECT_EQ(CodeOf(deploy::Deploy::Open(o)), ErrorCode::kUnsupported);
}

}  // namespace
}  // namespace ds::testing
