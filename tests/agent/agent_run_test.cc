// `deltastream-agent run` pieces that stand alone: the event journal (order, acknowledgement,
// restarts, torn appends, thinning), the "deploy" configuration, and the runner's refusals.
// The run loop against the real deployment service: tests/deploy/rollout_e2e_test.cc.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "agent/agent.h"
#include "agent/run.h"
#include "common/fs.h"
#include "support/test_util.h"

namespace ds::testing {
namespace {

using agent::DeployEvent;
using agent::EventJournal;

DeployEvent Ev(const std::string& deployment, const std::string& state, uint64_t bytes = 0) {
  DeployEvent e;
  e.deployment_id = deployment;
  e.artifact = "app";
  e.state = state;
  e.bytes = bytes;
  e.carrier = "http";
  e.time = 1.8e9;
  return e;
}

std::string Text(const std::string& path) {
  Result<Bytes> b = ReadFile(path);
  return b.ok() ? std::string(b->begin(), b->end()) : std::string();
}

TEST(DeployEventTest, JsonRoundTripAndRefusals) {
  DeployEvent e = Ev("d-1", "installed", 1234);
  e.seq = 9;
  e.result = "delta";
  e.full_bytes = 10000;
  e.bytes_saved = 8766;
  e.error_code = 0;
  e.from_version = "1.0.0";
  e.to_version = "2.0.0";
  e.rate_bps = 1.5e6;
  e.message = "ok";
  Result<DeployEvent> back = DeployEvent::Parse(e.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->ToJson(), e.ToJson());
  EXPECT_TRUE(back->is_final());
  EXPECT_FALSE(Ev("d", "downloading").is_final());
  EXPECT_EQ(CodeOf(DeployEvent::Parse("{\"seq\":1}")), ErrorCode::kProtocol);
  EXPECT_EQ(CodeOf(DeployEvent::Parse("{\"seq\":-1,\"deployment_id\":\"d\",\"state\":\"x\"}")),
            ErrorCode::kProtocol);
  EXPECT_EQ(CodeOf(DeployEvent::Parse("not json")), ErrorCode::kProtocol);
}

TEST(EventJournalTest, SequenceAckAndRestart) {
  TempDir dir;
  const std::string path = dir.Join("events.jsonl");
  {
    auto j = EventJournal::Open(path);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ(*(*j)->Append(Ev("d-1", "started")), 1u);
    EXPECT_EQ(*(*j)->Append(Ev("d-1", "downloading", 10), false), 2u);
    EXPECT_EQ(*(*j)->Append(Ev("d-1", "installed", 20)), 3u);
    EXPECT_TRUE((*j)->HasPendingFinal("d-1"));
    EXPECT_FALSE((*j)->HasPendingFinal("d-2"));
    EXPECT_EQ(*FileMode(path) & 0777, 0600u);
  }
  {
    // Reopened (a restart): the same three, in order, and the numbering continues.
    auto j = EventJournal::Open(path);
    ASSERT_TRUE(j.ok());
    std::vector<DeployEvent> p = (*j)->Pending(100);
    ASSERT_EQ(p.size(), 3u);
    EXPECT_EQ(p[0].seq, 1u);
    EXPECT_EQ(p[1].state, "downloading");
    EXPECT_EQ(p[1].bytes, 10u);
    EXPECT_EQ(p[2].seq, 3u);
    EXPECT_EQ((*j)->Pending(2).size(), 2u);
    ASSERT_TRUE((*j)->Ack(2).ok());
    EXPECT_EQ((*j)->acked_seq(), 2u);
    ASSERT_EQ((*j)->Pending(100).size(), 1u);
    EXPECT_EQ((*j)->Pending(100)[0].seq, 3u);
    // An older or repeated acknowledgement changes nothing; one beyond what exists is clamped.
    ASSERT_TRUE((*j)->Ack(1).ok());
    EXPECT_EQ((*j)->pending_count(), 1u);
    EXPECT_EQ(*(*j)->Append(Ev("d-2", "started")), 4u);
  }
  {
    auto j = EventJournal::Open(path);
    ASSERT_TRUE(j.ok());
    EXPECT_EQ((*j)->acked_seq(), 2u);
    ASSERT_EQ((*j)->pending_count(), 2u);
    ASSERT_TRUE((*j)->Ack(1000).ok());
    EXPECT_EQ((*j)->acked_seq(), 4u);
    EXPECT_EQ((*j)->pending_count(), 0u);
    EXPECT_TRUE((*j)->WaitEmpty(10));
  }
  {
    // Everything acknowledged: the file keeps only its header, and numbers are not reused.
    auto j = EventJournal::Open(path);
    ASSERT_TRUE(j.ok());
    EXPECT_EQ((*j)->pending_count(), 0u);
    EXPECT_EQ((*j)->next_seq(), 5u);
    EXPECT_EQ(*(*j)->Append(Ev("d-3", "started")), 5u);
  }
}

TEST(EventJournalTest, TornLastLineIsDropped) {
  TempDir dir;
  const std::string path = dir.Join("events.jsonl");
  {
    auto j = EventJournal::Open(path);
    ASSERT_TRUE(j.ok());
    ASSERT_TRUE((*j)->Append(Ev("d-1", "started")).ok());
    ASSERT_TRUE((*j)->Append(Ev("d-1", "installed")).ok());
  }
  // A crash in the middle of the next append.
  std::string text = Text(path);
  text += "{\"seq\":3,\"deployment_id\":\"d-1\",\"sta";
  WriteFileOrDie(path, AsBytes(text));
  auto j = EventJournal::Open(path);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)->pending_count(), 2u);
  EXPECT_EQ(*(*j)->Append(Ev("d-2", "started")), 3u);
  // The rewritten file parses whole.
  auto again = EventJournal::Open(path);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->pending_count(), 3u);
}

TEST(EventJournalTest, OfflineThinningDropsOldestProgressOnly) {
  TempDir dir;
  const std::string path = dir.Join("events.jsonl");
  auto j = EventJournal::Open(path, /*max_pending=*/4);
  ASSERT_TRUE(j.ok());
  ASSERT_TRUE((*j)->Append(Ev("d-1", "started")).ok());                // 1
  ASSERT_TRUE((*j)->Append(Ev("d-1", "downloading", 1), false).ok());  // 2
  ASSERT_TRUE((*j)->Append(Ev("d-1", "downloading", 2), false).ok());  // 3
  ASSERT_TRUE((*j)->Append(Ev("d-1", "applying", 3)).ok());            // 4
  ASSERT_TRUE((*j)->Append(Ev("d-1", "installed", 4)).ok());           // 5: drops 2
  ASSERT_TRUE((*j)->Append(Ev("d-2", "started")).ok());                // 6: drops 3
  ASSERT_TRUE((*j)->Append(Ev("d-2", "failed")).ok());                 // 7: nothing to drop
  std::vector<uint64_t> seqs;
  for (const DeployEvent& e : (*j)->Pending(100)) seqs.push_back(e.seq);
  EXPECT_EQ(seqs, (std::vector<uint64_t>{1, 4, 5, 6, 7}));
  j->reset();
  auto again = EventJournal::Open(path, 4);
  ASSERT_TRUE(again.ok());
  seqs.clear();
  for (const DeployEvent& e : (*again)->Pending(100)) seqs.push_back(e.seq);
  EXPECT_EQ(seqs, (std::vector<uint64_t>{1, 4, 5, 6, 7}));
}

std::string WriteConfig(const TempDir& dir, const std::string& deploy_json) {
  const std::string path = dir.Join("agent.json");
  const std::string text =
      R"({"proxies":["http://127.0.0.1:1"],"public_key":")" + std::string(64, 'a') +
      R"(","state_dir":")" + dir.Join("state") + R"(","artifacts":{"app":{"install_path":")" +
      dir.Join("app") + R"("}})" + (deploy_json.empty() ? "" : ",\"deploy\":" + deploy_json) + "}";
  WriteFileOrDie(path, AsBytes(text));
  return path;
}

TEST(DeployConfigTest, ParsesAndRefuses) {
  TempDir dir;
  auto c = agent::LoadConfig(WriteConfig(
      dir, R"({"url":"http://127.0.0.1:8440","enrollment_token":"t","device_id":"dev-001",
              "labels":{"site":"lab","ring":"1"},"poll_wait_seconds":5,
              "progress_interval_seconds":0.5,"backoff_initial_ms":100,"backoff_max_ms":900})"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->deploy.url, "http://127.0.0.1:8440");
  EXPECT_EQ(c->deploy.enrollment_token, "t");
  EXPECT_EQ(c->deploy.device_id, "dev-001");
  EXPECT_EQ(c->deploy.labels.at("site"), "lab");
  EXPECT_EQ(c->deploy.labels.size(), 2u);
  EXPECT_EQ(c->deploy.poll_wait_seconds, 5);
  EXPECT_EQ(c->deploy.progress_interval_seconds, 0.5);
  EXPECT_EQ(c->deploy.backoff_max_ms, 900);

  auto none = agent::LoadConfig(WriteConfig(dir, ""));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->deploy.url.empty());

  for (const char* bad : {R"({"enrollment_token":"t"})", R"({"url":"ftp://x"})",
                          R"({"url":"http://x","poll_wait_seconds":61})",
                          R"({"url":"http://x","labels":{"a":1}})", R"({"url":"http://x",
                          "backoff_initial_ms":10,"backoff_max_ms":5})",
                          R"("http://x")"}) {
    auto r = agent::LoadConfig(WriteConfig(dir, bad));
    EXPECT_EQ(CodeOf(r), ErrorCode::kInvalidArgument) << bad;
  }
}

agent::AgentConfig MinimalConfig(const TempDir& dir) {
  agent::AgentConfig c;
  c.proxies = {"http://127.0.0.1:1"};
  c.public_key_hex = std::string(64, 'a');
  c.state_dir = dir.Join("state");
  agent::ManagedArtifact a;
  a.name = "app";
  a.install_path = dir.Join("app");
  c.artifacts.push_back(a);
  c.deploy.backoff_initial_ms = 20;
  c.deploy.backoff_max_ms = 50;
  return c;
}

TEST(DeployRunnerTest, RefusesWithoutServiceAndSecondRunner) {
  TempDir dir;
  agent::AgentConfig c = MinimalConfig(dir);
  EXPECT_EQ(CodeOf(agent::DeployRunner::Create(c, {})), ErrorCode::kInvalidArgument);
  c.deploy.url = "http://127.0.0.1:1";
  auto first = agent::DeployRunner::Create(c, {});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(CodeOf(agent::DeployRunner::Create(c, {})), ErrorCode::kBusy);
  first->reset();
  EXPECT_TRUE(agent::DeployRunner::Create(c, {}).ok());
}

TEST(DeployRunnerTest, OnceGivesUpWhenTheServiceIsUnreachable) {
  TempDir dir;
  agent::AgentConfig c = MinimalConfig(dir);
  c.deploy.url = "http://127.0.0.1:1";  // Nothing listens there.
  agent::RunOptions o;
  o.once = true;
  o.once_timeout_ms = 300;
  // No enrolment token and no stored device token: refused at once.
  auto r = agent::DeployRunner::Create(c, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(CodeOf((*r)->Run()), ErrorCode::kUnauthenticated);
  r->reset();
  c.deploy.enrollment_token = "t";
  std::vector<std::string> log;
  o.log = [&log](const std::string& line) { log.push_back(line); };
  r = agent::DeployRunner::Create(c, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(CodeOf((*r)->Run()), ErrorCode::kUnavailable);
  EXPECT_FALSE(log.empty());
  EXPECT_NE(log.back().find("\"note\":\"retry\""), std::string::npos) << log.back();
}

}  // namespace
}  // namespace ds::testing
