// `deltastream-agent run`: the agent as a member of a fleet managed by the deployment service
// (docs/PROTOCOL.md, "Agent run mode"; wire spec in docs/DEPLOY.md). It enrols once, long-polls
// the service for instructions (outbound requests only, so it works behind NAT), runs
// Agent::Update for each with the instruction's policy, and reports what happens as events.
//
// Events are journalled on disk (<state-dir>/events.jsonl) before they are sent and dropped only
// once the service has acknowledged them, so they survive restarts and offline periods and are
// delivered in order of their per-device sequence number. The device token is kept in
// <state-dir>/deploy.json (0600).
//
// Thread-safety: EventJournal is thread-safe. A DeployRunner is run by one thread; Stop() may be
// called from any thread.
#ifndef DELTASTREAM_AGENT_RUN_H_
#define DELTASTREAM_AGENT_RUN_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "common/status.h"

namespace ds::agent {

// One event of the wire spec (POST /v1/devices/{id}/events).
struct DeployEvent {
  uint64_t seq = 0;  // Assigned by EventJournal::Append.
  std::string deployment_id;
  std::string artifact;
  // "started", "downloading", "applying", "installing", "installed", "failed", "deferred".
  std::string state;
  uint64_t bytes = 0;        // Wire bytes so far (final: of the whole update).
  uint64_t total_bytes = 0;  // Size of the object being fetched.
  double rate_bps = 0;       // Measured delivery rate, bytes per second.
  uint64_t chunk_size = 0;
  std::string carrier;
  double repair_overhead = 0;  // FEC repair bytes / data bytes (0 over HTTP).
  int error_code = 0;          // ds::ErrorCode; 0 = ok.
  std::string result;          // Final events: "delta", "full", "failed", "deferred".
  uint64_t full_bytes = 0;     // Final events: size of the full artifact.
  uint64_t bytes_saved = 0;    // Final events: full_bytes - bytes when positive.
  std::string from_version, to_version;
  std::string message;  // Human-readable detail (an error's text, a fallback's reason).
  double time = 0;      // Unix seconds.

  bool is_final() const { return state == "installed" || state == "failed" || state == "deferred"; }
  // One JSON object (no newline); Parse accepts what ToJson wrote (kProtocol otherwise).
  std::string ToJson() const;
  static Result<DeployEvent> Parse(std::string_view json);
};

// The on-disk queue of events not yet acknowledged. File format: a header line
// {"journal":1,"acked_seq":A,"next_seq":N} then one event per line. Appends are fsync'ed; an
// acknowledgement rewrites the file atomically with the events still pending. A torn last line
// (a crash mid-append) is ignored on open.
class EventJournal {
 public:
  // Opens (or creates) |path|. At most |max_pending| events are kept: beyond that the oldest
  // plain progress event (not a state change) is dropped.
  static Result<std::unique_ptr<EventJournal>> Open(const std::string& path,
                                                    size_t max_pending = 20000);
  ~EventJournal();

  // Stamps |event| with the next sequence number, appends it durably and returns the number.
  Result<uint64_t> Append(DeployEvent event, bool state_change = true);
  // Up to |max| pending events, lowest sequence first.
  std::vector<DeployEvent> Pending(size_t max) const;
  // Drops events up to |acked_seq| (later ones stay); a no-op for an older acknowledgement.
  Status Ack(uint64_t acked_seq);
  // True when a final event for |deployment_id| is still waiting to be acknowledged.
  bool HasPendingFinal(const std::string& deployment_id) const;
  size_t pending_count() const;
  uint64_t acked_seq() const;
  uint64_t next_seq() const;
  // Waits until nothing is pending, |timeout_ms| passes or Wake() is called; true when empty.
  bool WaitEmpty(int64_t timeout_ms) const;
  // Waits until something is pending (or |timeout_ms|, or Wake()).
  void WaitPending(int64_t timeout_ms) const;
  void Wake();
  // Holds the journal's lock for the rest of the process (an abrupt exit must not cut a write).
  void Freeze();

 private:
  struct Entry {
    DeployEvent event;
    bool state_change = true;
  };
  EventJournal(std::string path, int fd, size_t max_pending);
  Status RewriteLocked();
  std::string HeaderLocked() const;

  std::string path_;
  int fd_;
  size_t max_pending_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Entry> pending_;
  uint64_t acked_seq_ = 0;
  uint64_t next_seq_ = 1;
  uint64_t wake_ = 0;
};

struct RunOptions {
  // Process instructions until none is pending and every event is acknowledged, then return.
  bool once = false;
  // --once: give up (kUnavailable) after this long without reaching the service.
  int64_t once_timeout_ms = 120000;
  // Gets one JSON object per line: every event sent, and notes ("enrolled", "error", ...).
  std::function<void(const std::string&)> log;
};

class DeployRunner {
 public:
  // |config.deploy.url| must be set (kInvalidArgument otherwise). Takes <state-dir>/deploy.lock
  // (kBusy when another `run` holds it).
  static Result<std::unique_ptr<DeployRunner>> Create(AgentConfig config, RunOptions options);
  ~DeployRunner();
  DeployRunner(const DeployRunner&) = delete;
  DeployRunner& operator=(const DeployRunner&) = delete;

  // Runs until Stop() (Ok) or, with |once|, until done. In --once mode the result is the first
  // failed update's error, or kUnavailable when the service could not be reached or did not
  // acknowledge the events. A rejected enrolment (bad token) is returned at once in both modes.
  Status Run();
  // Asks Run() to return; thread-safe, async-signal-unsafe (call from a signal-handling thread).
  void Stop();
  // For an abrupt exit after Stop() when Run() is stuck in a long request: every file is
  // consistent once this returns (see EventJournal::Freeze).
  void Freeze();
  // True while an update runs (a stop then deserves a grace period).
  bool updating() const;

 private:
  class Impl;
  explicit DeployRunner(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::agent

#endif  // DELTASTREAM_AGENT_RUN_H_
