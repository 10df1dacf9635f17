// The update agent (deltastream-agent), device side: asks a proxy for the newest signed release,
// streams the delta (or the full artifact) in verified chunks, applies it beside the installed
// file, verifies the result against the signed hash, swaps it in atomically, runs a health check
// and rolls back when it fails. docs/PROTOCOL.md ("Agent") describes the flow and the state
// kept on disk.
//
// Links device-side code only: ds_delta_apply, ds_stream, ds_net_client, never the generator.
//
// Thread-safety: an Agent is used by one thread at a time; it runs its own fetch threads while
// Update() runs. Two agents must not share a state directory (a lock file refuses the second).
#ifndef DELTASTREAM_AGENT_AGENT_H_
#define DELTASTREAM_AGENT_AGENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/controller.h"
#include "common/status.h"

namespace ds::agent {

// What to do when the delta path fails (retry budget spent, a corrupt or unusable delta).
enum class FallbackPolicy {
  kFull,   // Download the full artifact (chunked, resumable, verified). The default.
  kFail,   // Stop with the delta path's error.
  kDefer,  // Stop without downloading more; a later run tries again (metered links).
};
const char* FallbackPolicyName(FallbackPolicy p);
Result<FallbackPolicy> ParseFallbackPolicy(std::string_view s);

struct ManagedArtifact {
  std::string name;          // Artifact name in the repository.
  std::string install_path;  // The installed file, replaced atomically.
  // Run after an install (through /bin/sh -c); a non-zero exit rolls back. Empty: none.
  std::string health_check;
  int64_t health_timeout_ms = 60000;
  FallbackPolicy fallback = FallbackPolicy::kFull;
};

// `deltastream-agent run`: where the deployment service is and who this device is
// (docs/PROTOCOL.md, "Agent run mode"). Unused by check/update/status/rollback.
struct DeployConfig {
  std::string url;               // Base URL of the deployment service; empty: not configured.
  std::string enrollment_token;  // Exchanged once for a device token (kept in deploy.json).
  std::string device_id;         // Empty: the host name.
  std::map<std::string, std::string> labels;
  int poll_wait_seconds = 25;  // Long-poll duration asked of the server (0..60).
  int64_t heartbeat_interval_ms = 60000;
  double progress_interval_seconds = 1;  // At most one progress event this often per update.
  // Waits after a failed call to the service: exponential with jitter, in [initial, max].
  int64_t backoff_initial_ms = 1000;
  int64_t backoff_max_ms = 60000;
};

struct AgentConfig {
  std::vector<std::string> proxies;  // Base URLs, tried in order.
  std::string public_key_hex;        // Pinned Ed25519 key of the master.
  std::string state_dir;
  std::vector<ManagedArtifact> artifacts;
  std::string token;    // Bearer token for proxies that require one.
  std::string ca_file;  // Trust anchor for HTTPS proxies.
  int64_t connect_timeout_ms = 5000;
  int64_t stall_timeout_ms = 15000;  // A transfer making no progress this long fails.
  // Consecutive failed requests before a path (delta, then full) is abandoned; the waits between
  // them grow exponentially from backoff_initial_ms to backoff_max_ms, with jitter.
  int retry_budget = 8;
  int64_t backoff_initial_ms = 250;
  int64_t backoff_max_ms = 8000;
  // "http" (default) or "udp": fetch objects over the proxy's UDP carrier with FEC
  // (docs/PROTOCOL.md, "UDP carrier"), falling back to HTTP for whatever it did not deliver.
  std::string carrier = "http";
  // Most memory the re-encoding of an .xz member (a Debian package's data.tar.xz) may take when a
  // delta is applied, in bytes; 0: the applier's default (128 MiB). A delta that declares more
  // (liblzma needs ~95 MiB at xz -6) is not applied: the artifact's fallback policy decides.
  uint64_t max_encoder_memory = 0;
  ControllerConfig controller;
  DeployConfig deploy;

  const ManagedArtifact* Find(std::string_view name) const;
};

// Reads a JSON configuration file (docs/PROTOCOL.md, "Agent configuration"). kInvalidArgument
// naming the field when something is missing or mistyped.
Result<AgentConfig> LoadConfig(const std::string& path);
// Checks a DeployConfig (URL scheme, ranges); kInvalidArgument naming the field.
Status ValidateDeployConfig(const DeployConfig& deploy);

// One progress or state event; the CLI renders them as a progress bar or JSON lines.
struct Event {
  std::string type;  // "check", "plan", "progress", "fallback", "verified", "installed", ...
  std::string artifact;
  std::string message;
  uint64_t done = 0, total = 0;  // Bytes of the object being fetched.
  uint64_t applied = 0;          // Bytes of the object the applier has consumed.
  double rate = 0;               // Bytes/s, measured.
  uint64_t chunk_size = 0;
  int in_flight = 0;
  double rtt = 0;
  double elapsed = 0;          // Seconds since the update started.
  std::string carrier;         // "http" or "udp" (progress events).
  double repair_overhead = 0;  // UDP: repair bytes / source bytes received so far.
};
using EventSink = std::function<void(const Event&)>;

struct CheckResult {
  std::string artifact;
  std::string installed_version;  // Empty when the installed file matches no signed version.
  std::string installed_sha256;   // Empty when nothing is installed.
  std::string latest;
  bool update_available = false;
  std::string route;         // "delta", "chain" or "full" (what the proxy offers now).
  std::string source;        // The proxy's word for where the delta comes from, when it says.
  uint64_t delta_bytes = 0;  // 0 when no delta is offered.
  uint64_t full_bytes = 0;
};

struct UpdateResult {
  std::string artifact;
  std::string from_version, to_version;
  std::string
      route;  // "none" (already current), "delta", "chain" (deltas in turn), "full", or "deferred".
  uint64_t bytes_fetched = 0;   // Over the network in this run (retries included).
  uint64_t object_size = 0;     // The delta or full artifact's size.
  bool resumed = false;         // Continued an earlier interrupted download.
  bool rolled_back = false;     // The health check failed and the old version is back.
  std::string fallback_reason;  // Why the delta path was abandoned, when it was.
};

struct ArtifactStatus {
  std::string artifact, install_path;
  std::string installed_version, installed_sha256;
  std::string previous_version;  // What `rollback` would restore; empty when nothing.
  uint64_t trusted_counter = 0;  // Highest metadata counter seen (rollback protection).
  std::string pending;           // A download in progress: "<route> <done>/<total>", or empty.
  std::string last_result;
};

class Agent {
 public:
  // Creates the state directory (0700) and takes its lock (kUnavailable when another agent
  // holds it).
  static Result<std::unique_ptr<Agent>> Open(AgentConfig config, EventSink events = nullptr);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  Result<CheckResult> Check(const std::string& artifact);
  // Updates to |to| (default: the signed latest). Refuses to go to a version that is not newer
  // than the installed one (kRollback). On success the new version is installed and healthy, or
  // the health check failed and the old one is back (rolled_back, kHealthCheck error).
  Result<UpdateResult> Update(const std::string& artifact,
                              std::optional<std::string> to = std::nullopt);
  // Restores the previous version kept by the last update.
  Status Rollback(const std::string& artifact);
  Result<ArtifactStatus> GetStatus(const std::string& artifact);

 private:
  class Impl;
  explicit Agent(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::agent

#endif  // DELTASTREAM_AGENT_AGENT_H_
