// On-demand deltas made by a proxy repository (docs/API.md, "Proxy role"; docs/SECURITY.md,
// "On-demand deltas made by a proxy"): when the upstream has no delta from a device's base to
// the version it wants but both full artifacts exist upstream, the proxy makes one itself with
// the real generator, verifies it by applying it, and serves it as a delta stream of its own.
//
// Jobs run on a bounded queue (|workers| threads, at most |queue_capacity| jobs waiting, and the
// master's memory budget rule: a job runs when its estimate fits beside the running ones, or
// alone). Results are stored under |dir| and survive restarts:
//   objects/<sha256>                 patches and their chunk maps, named by their SHA-256
//   pairs/<base sha256>-<result sha256>.json   the outcome for one pair (ready or not_worth)
//   tmp/                             job outputs in progress; emptied at Open()
// These objects are the proxy's own: never fetched from or checked against the upstream, and
// bounded by |max_stored_bytes| on their own (least recently used ready pairs go first; a pair
// used in the last |evict_grace_ms| stays, so a device streaming it is not cut). An evicted pair
// is made again on its next request. On-demand deltas are not signed: a device checks the
// rebuilt file against the master-signed result hash.
//
// Thread-safety: OnDemandDeltas is thread-safe.
#ifndef DELTASTREAM_REPO_PROXY_DELTAS_H_
#define DELTASTREAM_REPO_PROXY_DELTAS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "net/http.h"

namespace ds::repo {

struct OnDemandOptions {
  std::string dir;
  int workers = 1;
  size_t queue_capacity = 16;  // Jobs waiting (not running); a request beyond it is refused.
  uint64_t memory_budget = 4ull << 30;
  // A failed pair is answered "full" for this long, then tried again on the next request.
  int64_t failure_retry_ms = 30000;
  // Bound of objects/ (patches and chunk maps); 0 = unbounded.
  uint64_t max_stored_bytes = 0;
  int64_t evict_grace_ms = 60000;
  uint64_t max_encoder_memory = 0;  // As RepoOptions::max_encoder_memory.
};

enum class OnDemandState { kQueued, kRunning, kReady, kNotWorth, kFailed };
const char* OnDemandStateName(OnDemandState s);

// One (base, result) pair and what became of it.
struct OnDemandDelta {
  OnDemandState state = OnDemandState::kQueued;
  std::string base_sha256, result_sha256;
  uint64_t base_size = 0, result_size = 0;
  // Ready: the patch (format dspf) and its chunk map. Not worth: size only.
  std::string sha256;
  uint64_t size = 0;
  std::string chunk_map_sha256;
  uint64_t leaf_size = 0;
  double gen_seconds = 0;
  std::string error;  // Failed.
};

struct OnDemandStats {
  uint64_t queued = 0, running = 0;                           // Now.
  uint64_t done = 0, not_worth = 0, failed = 0, refused = 0;  // Since Open().
  uint64_t stored_bytes = 0;                                  // Patches and chunk maps in objects/.
  uint64_t evicted = 0;                                       // Ready pairs removed by the bound.
};

// Makes the full artifact |sha256| available as a local file whose bytes have that SHA-256, and
// returns its path. The file must stay readable for a few seconds (the job maps it at once).
using ArtifactFetcher = std::function<Result<std::string>(const std::string& sha256)>;

class OnDemandDeltas {
 public:
  // Creates |dir|, empties its tmp/, loads the stored outcomes and starts the workers.
  static Result<std::unique_ptr<OnDemandDeltas>> Open(const OnDemandOptions& options,
                                                      ArtifactFetcher fetch);
  // Stops the workers: a running job finishes first, waiting jobs are dropped.
  ~OnDemandDeltas();
  OnDemandDeltas(const OnDemandDeltas&) = delete;
  OnDemandDeltas& operator=(const OnDemandDeltas&) = delete;

  // The pair's current state, if it was ever requested (a failure older than failure_retry_ms
  // is forgotten).
  std::optional<OnDemandDelta> Find(const std::string& base_sha256,
                                    const std::string& result_sha256);
  // Find(), or else queues a job for the pair: kUnavailable when queue_capacity jobs are
  // already waiting.
  Result<OnDemandDelta> Request(const std::string& base_sha256, uint64_t base_size,
                                const std::string& result_sha256, uint64_t result_size);
  // Jobs ahead of the pair in the queue (0 when it runs or is not queued).
  size_t QueuePosition(const std::string& base_sha256, const std::string& result_sha256);

  // GET /v1/chunkmaps/{sha} and /v1/blobs/{sha} of a stored object, and GET
  // /v1/chunks/{sha}/{first}-{last} of a stored patch, with the master's headers
  // (src/repo/stream_api.cc). nullopt when |sha256| is not a stored object (or patch).
  std::optional<net::Response> ServeObject(const std::string& sha256);
  std::optional<net::Response> ServeChunk(const std::string& sha256, const std::string& range);

  OnDemandStats stats();

 private:
  class Impl;
  explicit OnDemandDeltas(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_PROXY_DELTAS_H_
