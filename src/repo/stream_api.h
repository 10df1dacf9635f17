// The delta stream endpoints of the master (docs/PROTOCOL.md): stream descriptors, chunk maps and
// chunks, as routes on a net::Server. Beast-free.
//
// Thread-safety: handlers run concurrently on the server's worker pool; Repository is
// thread-safe.
#ifndef DELTASTREAM_REPO_STREAM_API_H_
#define DELTASTREAM_REPO_STREAM_API_H_

#include "net/http.h"
#include "repo/master_api.h"
#include "repo/repo.h"

namespace ds::repo {

// Most leaves one chunk request may ask for (4096 x 64 KiB = 256 MiB).
inline constexpr uint64_t kMaxLeavesPerChunk = 4096;
// Cache-Control of immutable objects (chunk maps, chunks): any HTTP cache may keep them.
inline constexpr const char* kImmutable = "public, max-age=31536000, immutable";

// Registers GET /v1/artifacts/{artifact}/stream, /v1/chunkmaps/{sha256} and
// /v1/chunks/{sha256}/{first}-{last}. |server| and |repo| must outlive the server's run.
// options.require_read_token applies as for the other reads.
void RegisterStreamApi(net::Server* server, Repository* repo, const MasterApiOptions& options);

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_STREAM_API_H_
