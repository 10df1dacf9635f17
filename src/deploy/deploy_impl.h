// Internal to src/deploy: the Deploy implementation shared by the engine (deploy.cc), the HTTP
// routes with long polls and Server-Sent Events (deploy_api.cc) and pre-warming (prewarm.cc).
//
// Locking: mu_ guards the database and every in-memory table (parked polls, dirty set, pre-warm
// queue); sse_mu_ guards the event streams and is taken after mu_ when both are needed.
#ifndef DELTASTREAM_DEPLOY_DEPLOY_IMPL_H_
#define DELTASTREAM_DEPLOY_DEPLOY_IMPL_H_

#include <SQLiteCpp/SQLiteCpp.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "deploy/deploy.h"
#include "net/http.h"

namespace ds::deploy {

using json = nlohmann::json;

inline constexpr int kSchemaVersion = 1;

// Seconds since the Unix epoch.
double WallNow();

// Device-side states of one device in one deployment (docs/DEPLOY.md). "pending": its wave has
// not started; "queued": instructed, nothing reported yet.
bool IsFinalState(std::string_view s);
bool IsActiveState(std::string_view s);  // started .. installing
bool IsEventState(std::string_view s);   // A state a device may report.

// A pre-warm job: estimate (and have made) the deltas of one wave; |start| = the wave starts
// when it is done (else an estimate at creation).
struct PrewarmJob {
  std::string deployment_id;
  int wave = 0;
  bool start = false;
};

// A statement of DeployImpl's cache, borrowed for one use: reset when the borrow ends, so no read
// transaction stays open behind it.
class CachedStatement {
 public:
  explicit CachedStatement(SQLite::Statement& s) : s_(&s) {}
  CachedStatement(const CachedStatement&) = delete;
  CachedStatement& operator=(const CachedStatement&) = delete;
  ~CachedStatement() { s_->tryReset(); }
  SQLite::Statement& operator*() const { return *s_; }

 private:
  SQLite::Statement* s_;
};

class DeployImpl : public Deploy {
 public:
  explicit DeployImpl(DeployOptions options);
  ~DeployImpl() override;
  Status Init();

  void Register(net::Server& server) override;
  void SetRepoUrl(std::string url) override;
  void Stop() override;

  Result<std::string> Enroll(std::string_view body) override;
  Status AuthorizeDevice(std::string_view token, std::string_view device_id) override;
  Status Heartbeat(std::string_view device_id, std::string_view body) override;
  Result<std::string> Instructions(std::string_view device_id) override;
  Result<std::string> PostEvents(std::string_view device_id, std::string_view body) override;
  Result<std::string> ListDevices() override;
  Result<std::string> CreateDeployment(std::string_view body) override;
  Result<std::string> ListDeployments() override;
  Result<std::string> GetDeployment(std::string_view id) override;
  Result<std::string> Act(std::string_view id, std::string_view action) override;
  void Tick() override;
  void RunPrewarmOnce() override;

 private:
  // A statement of the hot paths (an event, a poll, a device check), prepared once and reused:
  // preparing was a good part of an event's cost. Reset, with its bindings cleared (NULL).
  // REQUIRES: mu_ held; |sql| a string literal (its address is the key); the previous borrow of
  // the same text has ended.
  CachedStatement Stmt(const char* sql);

  // ---- engine (deploy.cc); REQUIRES: mu_ held ----
  json InstructionsLocked(const std::string& device_id);
  json DeploymentJsonLocked(const std::string& id, bool full);
  // Advances, halts or finishes one deployment; true when something changed.
  bool EvaluateLocked(const std::string& id);
  void StartWaveLocked(const std::string& id, int wave);
  void SetDeploymentStateLocked(const std::string& id, const std::string& state,
                                const std::string& reason);
  void QueuePrewarmLocked(const std::string& id, int wave, bool start);
  // Answers the parked polls of these devices that now have instructions.
  void NotifyDevicesLocked(const std::vector<std::string>& device_ids);
  void MarkDirtyLocked(const std::string& deployment_id) { dirty_.insert(deployment_id); }
  std::vector<std::string> WaveDevicesLocked(const std::string& id, int wave);
  // Targets of a deployment per (wave, state). Kept in step with every event so that evaluating
  // a deployment after an event costs O(waves), not a scan of its devices (10,000 devices x 6
  // events each was 60,000 scans of 10,000 rows). Filled from the database on first use; a bulk
  // change (a wave starts, a retry) drops the entry and the next use refills it.
  using StateCounts = std::map<std::pair<int, std::string>, int64_t>;
  const StateCounts& StateCountsLocked(const std::string& id);
  std::string RepoUrl();

  // ---- pre-warm (prewarm.cc) ----
  void RunPrewarm(const PrewarmJob& job);
  void PrewarmLoop();

  // ---- HTTP (deploy_api.cc) ----
  Status CheckAdmin(const net::Request& req);
  Result<std::string> DeviceFromRequest(const net::Request& req);
  void HandleInstructions(net::Request& req, net::Responder responder);
  net::Response HandleEvents(net::Request& req);
  // Parked long polls: answered with an empty list when |deadline| (steady seconds) passes.
  struct Parked {
    net::Responder responder;
    double deadline = 0;
  };
  void ExpireParkedLocked(bool all);
  void Broadcast(const std::string& event, const std::string& data);
  void FlushDirtyLocked();
  void SseHeartbeat();

  void EngineLoop();

  DeployOptions opt_;
  std::mutex mu_;
  std::condition_variable cv_;  // Wakes the engine and pre-warm threads (with mu_).
  std::unique_ptr<SQLite::Database> db_;
  std::map<const char*, std::unique_ptr<SQLite::Statement>> stmts_;  // After db_: freed first.
  std::string repo_url_;
  std::map<std::string, std::vector<Parked>> parked_;
  std::set<std::string> dirty_;
  std::map<std::string, StateCounts> state_counts_;
  std::deque<PrewarmJob> prewarm_queue_;
  std::set<std::pair<std::string, int>> prewarm_busy_;
  bool stopping_ = false;
  bool stopped_ = false;
  double last_heartbeat_ = 0;

  std::mutex sse_mu_;
  std::vector<std::shared_ptr<net::BodyStream>> streams_;

  std::thread engine_, prewarmer_;
};

}  // namespace ds::deploy

#endif  // DELTASTREAM_DEPLOY_DEPLOY_IMPL_H_
