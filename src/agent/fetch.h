// Internal to src/agent: the resumable, verified, adaptive chunk download of one object (a patch
// or a full artifact) into a staging file, with a consumer (the applier) fed the verified prefix
// on its own thread while the download goes on.
#ifndef DELTASTREAM_AGENT_FETCH_H_
#define DELTASTREAM_AGENT_FETCH_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "common/bytes.h"
#include "common/status.h"
#include "stream/stream.h"

namespace ds::net {
class Client;
}  // namespace ds::net

namespace ds::agent {

// Consumes the object's bytes in order; runs on the fetch's consumer thread.
class ObjectConsumer {
 public:
  using ReadFn = std::function<Status(uint64_t offset, std::span<uint8_t> out)>;
  virtual ~ObjectConsumer() = default;
  // Called once before any Consume, after the staging file's verified leaves are known: the
  // first |verified_prefix| bytes of the object can be read with |read|. Returns the offset from
  // which Consume wants the object (0, or where an earlier run's consumer checkpointed).
  virtual Result<uint64_t> Start(const ReadFn& read, uint64_t verified_prefix) { return 0; }
  virtual Status Consume(ByteView data) = 0;
  virtual Status Finish() = 0;
};

struct FetchSpec {
  std::vector<std::string> base_urls;  // Proxies, tried in rotation after failures.
  std::string chunks_path;             // "/v1/chunks/<sha256>/"
  const stream::ChunkMap* map = nullptr;
  std::string object_sha256;
  std::string staging_path;   // The object is written here (sparse, positional writes).
  std::string progress_path;  // Verified leaves, rewritten atomically after each chunk.
  std::string artifact;       // For events.
  std::string route;          // "delta" or "full", for events and the progress file.
  // Optional: an idle client already connected (keep-alive) to base_urls[0], used for the UDP
  // carrier's session request so that it needs no new TCP handshake: on a lossy link a lost SYN
  // costs a 1 s retransmission timeout. Nothing else may use it while FetchObject runs.
  net::Client* session_client = nullptr;
};

struct FetchStats {
  uint64_t bytes_fetched = 0;   // Response bytes received, failed and tampered ones included.
  uint64_t leaves_resumed = 0;  // Leaves already verified on disk at the start.
  int requests = 0, failures = 0;
};

// Downloads |spec|'s object, verifying every chunk against the chunk map, persisting progress
// (fsync) so a later call continues where this one stopped, and feeding |consumer| the verified
// prefix. Fails after config.retry_budget consecutive failed requests (the last error), or with
// the consumer's error.
Status FetchObject(const AgentConfig& config, const FetchSpec& spec, ObjectConsumer* consumer,
                   const EventSink& events, double start_time, FetchStats* stats);

// Monotonic seconds.
double NowSeconds();

}  // namespace ds::agent

#endif  // DELTASTREAM_AGENT_FETCH_H_
