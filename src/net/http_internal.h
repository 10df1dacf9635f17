// Internals of src/net shared by its translation units (Beast-free, so that they stay out of the
// one translation unit that compiles Beast): percent-decoding, route matching, Range parsing and
// the server's metrics.
#ifndef DELTASTREAM_NET_HTTP_INTERNAL_H_
#define DELTASTREAM_NET_HTTP_INTERNAL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "net/http.h"

namespace ds::net {

// What a streamed response's producer (BodyStream) and the connection sending it share.
struct BodyStream::State {
  enum class Take { kData, kWait, kEnd };
  // Connection side: moves the next queued piece into |out| (kData); or, when nothing is queued,
  // kEnd once the producer closed, else remembers |wake| to be called (once, on some thread) when
  // there is something to do (kWait).
  Take TakeOrWait(std::string* out, std::function<void()> wake);
  // Connection side: the client is gone; producers see Write() fail. Drops a pending |wake|.
  void MarkGone();

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> queue;
  size_t pending = 0;
  bool closed = false;
  bool gone = false;
  std::function<void()> wake;
  // BodyStream::OnBelow: called once pending <= below_at, or when the client goes.
  size_t below_at = 0;
  std::function<void()> below;
};

}  // namespace ds::net

namespace ds::net::internal {

// Decodes %XX escapes (and '+' as a space when |plus_is_space|); nullopt on a malformed escape.
std::optional<std::string> PercentDecode(std::string_view s, bool plus_is_space);
std::string ToLower(std::string_view s);

struct RouteEntry {
  std::string method;
  std::vector<std::string> segments;  // A "{name}" segment is a parameter.
  bool streamed = false;
  Handler handler;
  StreamHandler stream;
  AsyncHandler async;  // Set for AsyncRoute routes (then |handler| is empty).
  FastHandler fast;    // Optional, with |handler|.
};

struct RouteMatch {
  enum class Kind { kFound, kNotFound, kMethodNotAllowed, kBadRequest };
  Kind kind = Kind::kNotFound;
  const RouteEntry* route = nullptr;
  std::map<std::string, std::string> params;
  std::string allow;    // kMethodNotAllowed: the methods the path has, e.g. "GET, HEAD".
  std::string message;  // kBadRequest: why.
};

// Routes are added before the server starts and only read afterwards.
class Router {
 public:
  void Add(std::string method, std::string_view pattern, bool streamed, Handler handler,
           StreamHandler stream, AsyncHandler async = nullptr, FastHandler fast = nullptr);
  // |path| is the raw (still percent-encoded) path. HEAD matches GET routes. Among routes that
  // match, the one with the most literal segments wins (then the first added).
  RouteMatch Match(std::string_view method, std::string_view path) const;

 private:
  std::vector<RouteEntry> routes_;
};

// A single "bytes=" range resolved against a body of |size| bytes: kNone when the header is
// absent, malformed or asks for several ranges (answer with the whole body).
enum class RangeKind { kNone, kSatisfiable, kUnsatisfiable };
struct ByteRange {
  RangeKind kind = RangeKind::kNone;
  uint64_t first = 0;
  uint64_t last = 0;  // Inclusive.
};
ByteRange ParseRange(std::string_view header, uint64_t size);

// True when an If-None-Match header value matches |etag| (weak comparison, or "*").
bool EtagMatches(std::string_view if_none_match, std::string_view etag);

// Server counters; every member is updated atomically from any thread.
class Metrics {
 public:
  Metrics();
  void RequestDone(std::string_view method, int status, double seconds);
  std::string Text() const;

  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> connections_open{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> bytes_sent{0};

 private:
  static constexpr int kMethods = 6;  // GET HEAD POST PUT DELETE other.
  static constexpr int kClasses = 5;  // 1xx .. 5xx.
  static constexpr int kBuckets = 7;  // Upper bounds below, then +Inf.
  std::atomic<uint64_t> requests_[kMethods][kClasses];
  std::atomic<uint64_t> buckets_[kBuckets];  // Not cumulative; summed when printed.
  std::atomic<uint64_t> duration_sum_us_{0};
  std::atomic<uint64_t> duration_count_{0};
};

}  // namespace ds::net::internal

#endif  // DELTASTREAM_NET_HTTP_INTERNAL_H_
