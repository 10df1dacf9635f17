// The deployment service (docs/DEPLOY.md): a fleet of devices (enrolment, per-device tokens,
// inventory, heartbeats), deployments rolled out in waves with success and failure thresholds,
// delta pre-warming against the repository the devices use, device long polls for instructions,
// events, live Server-Sent Events and the web dashboard.
//
// All state lives in one SQLite file (<data_dir>/deploy.db, WAL): a restarted service resumes
// every rollout where it was. Waves advance when an event arrives and on a timer.
//
// Thread-safety: Deploy is thread-safe. Stop() must run before the net::Server it registered on
// is destroyed (it answers every parked long poll and closes every event stream).
#ifndef DELTASTREAM_DEPLOY_DEPLOY_H_
#define DELTASTREAM_DEPLOY_DEPLOY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace ds::net {
class Server;
}

namespace ds::deploy {

struct DeployOptions {
  // deploy.db lives here.
  std::string data_dir;
  // The shared enrolment token devices exchange for their own token (compared in constant time).
  // REQUIRES: non-empty.
  std::string enrollment_token;
  // Checks an operator's bearer token: Ok, kUnauthenticated or kPermissionDenied.
  std::function<Status(std::string_view token)> check_admin;
  // The repository (master or proxy) whose delta routes pre-warming asks, and whose version
  // routes give artifact sizes: "http://host:port". May be set later with SetRepoUrl (a server
  // that names itself once it listens).
  std::string repo_url;
  // Trust anchor for an https repo_url with a private CA.
  std::string repo_ca_file;
  // The engine's timer: waves are evaluated, long polls expire, events flush at this period.
  int64_t tick_ms = 500;
  // A wave waits at most this long for its missing deltas before it starts anyway.
  int64_t prewarm_timeout_ms = 300000;
  // Start the engine thread and the pre-warm worker (false: tests call Tick()/RunPrewarmOnce()).
  bool start_threads = true;
  // Seconds between the comment lines that keep an event stream open.
  int64_t sse_heartbeat_ms = 15000;
  // An event stream whose unsent bytes exceed this is dropped (a slow dashboard).
  size_t sse_max_pending = 1 << 20;
};

// Request and answer bodies below are the JSON of docs/DEPLOY.md. Errors: kInvalidArgument (bad
// body), kNotFound, kUnauthenticated (bad token), kPermissionDenied (another device's id),
// kUnavailable (the repository cannot be reached).
class Deploy {
 public:
  static Result<std::unique_ptr<Deploy>> Open(DeployOptions options);
  virtual ~Deploy() = default;

  // Adds the /v1/devices, /v1/deployments, /v1/events and /dashboard routes. Before Start().
  virtual void Register(net::Server& server) = 0;
  virtual void SetRepoUrl(std::string url) = 0;
  // Answers every parked long poll, closes every event stream, stops the threads. Idempotent.
  virtual void Stop() = 0;

  // Devices.
  virtual Result<std::string> Enroll(std::string_view body) = 0;
  // The device a token belongs to, checked against the path's |device_id|.
  virtual Status AuthorizeDevice(std::string_view token, std::string_view device_id) = 0;
  virtual Status Heartbeat(std::string_view device_id, std::string_view body) = 0;
  // {"instructions":[...]} pending for the device now.
  virtual Result<std::string> Instructions(std::string_view device_id) = 0;
  // Stores and applies the events; returns {"acked_seq":N}.
  virtual Result<std::string> PostEvents(std::string_view device_id, std::string_view body) = 0;
  virtual Result<std::string> ListDevices() = 0;

  // Deployments.
  virtual Result<std::string> CreateDeployment(std::string_view body) = 0;
  virtual Result<std::string> ListDeployments() = 0;
  virtual Result<std::string> GetDeployment(std::string_view id) = 0;
  // |action|: pause, resume, cancel, retry. Returns the deployment.
  virtual Result<std::string> Act(std::string_view id, std::string_view action) = 0;

  // One engine step: evaluates every active deployment (the timer calls it).
  virtual void Tick() = 0;
  // Runs the queued pre-warm jobs on the calling thread (start_threads=false).
  virtual void RunPrewarmOnce() = 0;
};

}  // namespace ds::deploy

#endif  // DELTASTREAM_DEPLOY_DEPLOY_H_
