// The master repository's HTTP API (/v1, documented in docs/API.md): routes that serve a
// Repository through a net::Server. Beast-free; the server does the HTTP.
//
// Thread-safety: handlers run concurrently on the server's worker pool; Repository is
// thread-safe.
#ifndef DELTASTREAM_REPO_MASTER_API_H_
#define DELTASTREAM_REPO_MASTER_API_H_

#include <cstdint>
#include <string>

#include "net/http.h"
#include "repo/repo.h"

namespace ds::repo {

struct MasterApiOptions {
  // Reads (lists, metadata, blobs) need a read token when true; open otherwise.
  bool require_read_token = false;
  // Largest artifact a publish may upload.
  uint64_t max_artifact_bytes = 16ull << 30;
  // Reported by /v1/health.
  std::string server_version = "deltastream";
};

// Registers every /v1 route and /metrics. |server| and |repo| must outlive the server's run.
void RegisterMasterApi(net::Server* server, Repository* repo, const MasterApiOptions& options);

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_MASTER_API_H_
