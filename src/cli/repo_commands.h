// The repository subcommands: serve (the master), keygen, and the client commands publish,
// versions, jobs and metadata, which talk to a server over HTTP(S).
#ifndef DELTASTREAM_CLI_REPO_COMMANDS_H_
#define DELTASTREAM_CLI_REPO_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace ds::cli {

struct ServeArgs {
  std::string role = "master";  // "master" or "proxy".
  std::string data_dir = "deltastream-data";
  std::string listen = "127.0.0.1:8440";  // host:port; port 0 = ephemeral.
  std::string tls_cert, tls_key;
  std::string signing_key;  // Default: <data_dir>/keys/signing.key.
  int delta_history = 3;
  int job_workers = 1;
  uint64_t job_memory_mib = 4096;
  double worth_ratio = 0.9;
  uint64_t max_encoder_memory_mib = 0;
  int64_t metadata_ttl_days = 30;
  bool require_read_token = false;
  uint64_t max_artifact_mib = 16384;
  int worker_threads = 8;
  int io_threads = 0;           // Network I/O threads; 0 = one per core.
  int max_connections = 16384;  // Open connections at most (long polls of a fleet included).
  // Proxy role: the upstream (master or proxy) URL, the cache bound and the mutable TTL.
  std::string upstream;
  uint64_t cache_max_mib = 10240;
  int64_t proxy_ttl_ms = 5000;
  // Proxy role: on-demand delta jobs (0 workers = none), waiting jobs at most, memory budget.
  int ondemand_workers = 1;
  int udp_port = -1;  // Proxy: the UDP carrier's port (0 ephemeral); off when negative.
  uint64_t ondemand_queue = 16;
  uint64_t ondemand_memory_mib = 4096;
  uint64_t ondemand_max_mib = 2048;  // Bound of the on-demand store (0 = unbounded).
  // Proxy role: storage policy (both, full, delta) and the keyframe interval of "delta".
  std::string store = "both";
  int keyframe_every = 8;
  // Written once the server listens: "host:port" (tests use it with port 0).
  std::string port_file;
  // Deployment service (docs/DEPLOY.md): on with --role master unless no_deploy; --role deploy
  // runs it alone against --repo. deploy_proxy: where pre-warming asks for deltas (default: this
  // server for master, --repo for deploy). Enrolment token: this file, else
  // <data_dir>/enroll.token (made on first start).
  bool no_deploy = false;
  std::string repo;
  std::string deploy_proxy;
  std::string enroll_token_file;
  int64_t deploy_prewarm_timeout_s = 300;
};
// Runs until SIGINT or SIGTERM. Proxy role: a read-only pull-through cache of --upstream under
// <data_dir>/cache (no catalog, no keys, no tokens). Master role: on first start (no tokens in the
// catalog) creates an admin token and writes it to <data_dir>/admin.token (0600).
Status RunServe(const ServeArgs& args);

struct KeygenArgs {
  std::string prefix = "deltastream";  // Writes PREFIX.key (secret, 0600) and PREFIX.pub.
};
Status RunKeygen(const KeygenArgs& args);

struct ClientArgs {
  std::string server = "http://127.0.0.1:8440";
  std::string token;  // Bearer token; else DELTASTREAM_TOKEN; else token_file.
  std::string token_file;
  std::string ca_file;  // Trust anchor for an HTTPS server with a private CA.
};

struct PublishArgs : ClientArgs {
  std::string artifact, version, file;
  std::vector<std::string> labels;   // k=v
  std::vector<std::string> depends;  // free-form constraints
  bool wait = false;                 // Wait until the queued deltas are done; print them.
  int64_t wait_seconds = 3600;
  bool quiet = false;
};
Status RunPublish(const PublishArgs& args);

struct VersionsArgs : ClientArgs {
  std::string artifact;  // Empty: list artifacts.
  bool json = false;
};
Status RunVersions(const VersionsArgs& args);

struct JobsArgs : ClientArgs {
  int64_t limit = 50;
  bool json = false;
};
Status RunJobs(const JobsArgs& args);

struct MetadataArgs : ClientArgs {
  std::string artifact;
  std::string public_key_file;  // Verify against this pinned key (hex); required.
  uint64_t min_counter = 0;     // Refuse older metadata (rollback).
};
// Fetches, verifies and prints the signed release metadata.
Status RunMetadata(const MetadataArgs& args);

}  // namespace ds::cli

#endif  // DELTASTREAM_CLI_REPO_COMMANDS_H_
