// The proxy repository: a read-only pull-through cache in front of an upstream (the master or
// another proxy, so proxies form tiers) that serves the master's read API (docs/API.md, "Proxy
// role").
//
// What it keeps, under <cache_dir>/ (files named by the SHA-256 of the request path):
//  - immutable objects (blobs, delta data, chunk maps, chunk ranges), cached until LRU eviction;
//    blobs and chunk maps are checked against the SHA-256 in their name and delta data against
//    the digest the upstream declares before they are cached or served;
//  - mutable answers (version lists, latest, signed metadata, delta lists, jobs, streams), kept
//    for a TTL and relayed byte for byte (the proxy holds no signing key); when the upstream is
//    down an expired answer is served marked stale (Warning: 110, X-Deltastream-Stale: 1);
//  - 404 answers, remembered in memory for a short TTL.
// Every object is streamed to disk and served from its file: memory does not grow with sizes.
//
// Storage policy (--store): "both" keeps whatever passes through; "full" relays delta patches
// without keeping them; "delta" keeps full artifacts only of keyframe versions and rebuilds the
// others from the nearest keyframe through the signed deltas, checked against the signed hash.
//
// Delta streams (GET /v1/artifacts/{a}/stream) are answered by the proxy itself: the upstream's
// delta when it offers one (source "upstream"), else a delta the proxy makes on demand from the
// two full artifacts (source "on-demand"; repo/proxy_deltas.h), else the full artifact (source
// "full"). While an on-demand job runs the answer is 202 + Retry-After (or the full artifact with
// fallback=full).
//
// Concurrent misses for one object make one upstream fetch (single flight); the other requests
// wait for it to complete. Upstream calls have connect and low-speed timeouts, and a circuit
// breaker stops calling an upstream that failed N times in a row for a cool-down, then lets one
// trial request through (half-open).
//
// Thread-safety: Proxy is thread-safe; handlers call it from the server's worker pool.
#ifndef DELTASTREAM_REPO_PROXY_H_
#define DELTASTREAM_REPO_PROXY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"
#include "net/http.h"
#include "repo/proxy_store.h"

namespace ds::repo {

struct ProxyOptions {
  std::string upstream;  // Base URL, e.g. "http://master:8440" (no trailing path).
  // The UDP carrier (docs/PROTOCOL.md, "UDP carrier"): off when udp_port < 0; 0 = ephemeral.
  int udp_port = -1;
  std::string udp_host = "127.0.0.1";
  std::string cache_dir;  // Created if missing.
  uint64_t cache_max_bytes = 10ull << 30;
  int64_t mutable_ttl_ms = 5000;
  int64_t negative_ttl_ms = 2000;
  int64_t connect_timeout_ms = 2000;
  int64_t low_speed_timeout_ms = 10000;  // Abort an upstream transfer stalled this long.
  int breaker_failures = 3;              // Consecutive upstream failures that open the breaker.
  int64_t breaker_cooldown_ms = 5000;
  // An evicted file is unlinked only after this grace, so a response that was just handed its
  // path can still open it.
  int64_t evict_grace_ms = 10000;
  std::string upstream_token;    // Bearer token for an upstream that requires read tokens.
  std::string upstream_ca_file;  // Trust anchor for an HTTPS upstream.
  std::string server_version = "deltastream";
  // On-demand deltas (<cache_dir>/ondemand/): job workers (0 = never make deltas; streams are
  // then the upstream's answer), jobs waiting at most, and the jobs' memory budget.
  int ondemand_workers = 1;
  size_t ondemand_queue = 16;
  uint64_t ondemand_memory_budget = 4ull << 30;
  // Deltas made on demand: as RepoOptions::max_encoder_memory.
  uint64_t max_encoder_memory = 0;
  uint64_t ondemand_max_bytes = 0;  // Bound of the on-demand store (0 = unbounded).
  // What is kept of artifacts and deltas (repo/proxy_store.h). kDelta keeps full artifacts only
  // of every |keyframe_every|-th version (and of versions no chain of deltas reaches) under
  // <cache_dir>/store/full/, the deltas of the chains under <cache_dir>/store/deltas/, and
  // rebuilds other versions on request; kFull relays delta patches without keeping them.
  StorePolicy store = StorePolicy::kBoth;
  int keyframe_every = 8;
};

// How a cached object is checked before it is cached.
enum class ObjectKind {
  kBlob,      // Immutable; its SHA-256 is in the path.
  kDeclared,  // Immutable; its SHA-256 is what the upstream declares (X-Content-SHA256 / ETag).
  kOpaque,    // Immutable; not checked here (chunk ranges: devices check them via chunk maps).
  kMutable,   // Cached for the mutable TTL; relayed as received.
};

struct ProxyStats {
  uint64_t hits = 0, misses = 0, stale_served = 0, negative_hits = 0, coalesced = 0;
  uint64_t streamed_while_arriving = 0, stream_readers_dropped = 0;
  uint64_t upstream_fetches = 0, upstream_failures = 0, verify_failures = 0;
  uint64_t bytes_served = 0, bytes_fetched = 0;
  uint64_t cache_bytes = 0, cache_entries = 0, evictions = 0;
  int breaker_state = 0;  // 0 closed, 1 open, 2 half-open.
  uint64_t breaker_opens = 0;
  // Stream descriptors answered, by source; bytes saved by the delta ones (full - delta size).
  uint64_t streams_upstream = 0, streams_ondemand = 0, streams_full = 0, streams_pending = 0;
  uint64_t streams_chain = 0;
  uint64_t delta_bytes_saved = 0;
  // On-demand delta jobs: waiting and running now; since start: ready, not worth, failed,
  // refused (queue full).
  uint64_t ondemand_queued = 0, ondemand_running = 0, ondemand_done = 0, ondemand_not_worth = 0;
  uint64_t ondemand_failed = 0, ondemand_refused = 0, ondemand_stored_bytes = 0;
  uint64_t ondemand_evicted = 0;
  // Storage policy: bytes under store/, full artifacts rebuilt from deltas (and failures),
  // versions kept in full because no chain reached them, objects relayed without being kept.
  uint64_t store_bytes = 0, rebuilds = 0, rebuild_failures = 0, chain_breaks = 0;
  uint64_t transient_relays = 0;
};

class Proxy {
 public:
  // Creates the cache directory, empties its tmp/, and rebuilds the index from the files there
  // (LRU order by file time), evicting down to cache_max_bytes.
  static Result<std::unique_ptr<Proxy>> Open(const ProxyOptions& options);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Answers a GET/HEAD for |req| (its raw path and query are relayed) from the cache or the
  // upstream. For kBlob, |expected_sha256| is the name's digest. A blob or delta patch still
  // arriving from the upstream is answered with a streamed body (docs/API.md, "Single flight").
  // Handlers call it; it returns as soon as the upstream's header is in.
  net::Response Serve(const net::Request& req, ObjectKind kind,
                      const std::string& expected_sha256 = "");

  // GET /v1/artifacts/{artifact}/stream[?from=SHA][&to=V][&fallback=full] (docs/API.md).
  net::Response Stream(const net::Request& req);
  // GET /v1/chunkmaps/{sha}, /v1/blobs/{sha} and /v1/chunks/{sha}/{range}: the proxy's own
  // on-demand objects first, else the cache / upstream as Serve().
  net::Response ServeObject(const net::Request& req, const std::string& sha256);
  // A verified file holding the object "/v1/blobs/<sha>" or "/v1/chunkmaps/<sha>" names
  // (fetched, rebuilt or made as for ServeObject); the path stays valid for the eviction grace.
  Result<std::string> ObjectFile(const std::string& path);
  net::Response ServeChunk(const net::Request& req, const std::string& sha256,
                           const std::string& range);
  // The answer when |req| (an object of |kind|) is a fresh cache hit or a remembered 404, from
  // memory and without blocking (the routes' fast path on the I/O threads); nullopt otherwise,
  // and always under a storage policy other than "both" (Serve() then decides).
  std::optional<net::Response> ServeCached(const net::Request& req, ObjectKind kind);

  // GET /v1/health of the upstream (when the breaker allows): its JSON body, or the failure.
  Result<std::string> UpstreamHealth();

  ProxyStats stats() const;
  // Prometheus text of stats() (ds_proxy_*).
  std::string MetricsText() const;
  const ProxyOptions& options() const;

 private:
  class Impl;
  explicit Proxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Streams |path| through SHA-256 and compares with |expected_hex| (64 lower-case hex digits):
// kDigestMismatch when they differ, kInvalidArgument for a malformed digest, kNotFound/kIoError
// when the file cannot be read. The check run on every verified object before it is cached.
Status VerifyFileSha256(const std::string& path, std::string_view expected_hex);

// Opens a Proxy and registers the read routes, /v1/health, /metrics, and 405 answers for the
// write routes (a proxy is read-only). The returned proxy must outlive the server's run.
Result<std::shared_ptr<Proxy>> RegisterProxyApi(net::Server* server, const ProxyOptions& options);

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_PROXY_H_
