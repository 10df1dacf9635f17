#include "repo/proxy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <functional>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "repo/proxy_deltas.h"
#include "repo/proxy_udp.h"
#include "stream/stream.h"

namespace ds::repo {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kImmutableCacheControl = "public, max-age=31536000, immutable";
constexpr size_t kMaxNegativeEntries = 10000;
// Serve-while-arriving: each reader is fed from the arriving file, at most this much queued for
// its connection at a time (a slow client parks until half of it has gone, however far behind
// the upstream it falls), in pieces of kReaderPiece. 1,000 readers of one arriving object hold
// at most 512 MiB of queued bytes; the socket buffers keep a fast reader's link busy.
constexpr size_t kReaderWindow = 512u << 10;
constexpr size_t kReaderPiece = 128u << 10;
// Accounted per entry on top of its data: the .meta file and the index.
constexpr uint64_t kEntryOverhead = 512;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t MonoMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string Unquote(std::string_view s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
  return std::string(s);
}

Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + dir, errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  return rc == 0 ? Status::Ok() : ErrnoStatus("fsync " + dir, err);
}

// Upstream trouble (as opposed to an answer such as 404): counts against the breaker and lets a
// stale mutable entry be served.
bool IsUpstreamFailure(ErrorCode code) {
  return code == ErrorCode::kUnavailable || code == ErrorCode::kProtocol ||
         code == ErrorCode::kInternal;
}

// A cached object as recorded in its .meta file.
struct EntryInfo {
  std::string key;  // Hex SHA-256 of the request target; names the files.
  std::string target;
  uint64_t size = 0;
  std::string etag, content_type, sha256;
  int64_t expires_ms = 0;  // Wall clock; 0 = immutable.
  bool stale = false;      // The upstream (a proxy) served it stale: relay that, keep it expired.
  // Upstream headers relayed with the object (kRelayedHeaders).
  std::vector<std::pair<std::string, std::string>> headers;
  bool immutable() const { return expires_ms == 0; }
};

// Headers of a chunk answer (src/repo/stream_api.cc) kept with the cached object and relayed.
constexpr const char* kRelayedHeaders[] = {"X-Leaf-Size", "X-Chunk-Map-SHA256"};

json MetaJson(const EntryInfo& e) {
  json headers = json::object();
  for (const auto& [name, value] : e.headers) headers[name] = value;
  return json{{"target", e.target}, {"size", e.size},
              {"etag", e.etag},     {"content_type", e.content_type},
              {"sha256", e.sha256}, {"expires_ms", e.expires_ms},
              {"headers", headers}};
}

class Breaker {
 public:
  Breaker(int failures, int64_t cooldown_ms) : threshold_(failures), cooldown_ms_(cooldown_ms) {}

  bool Allow() {
    std::lock_guard<std::mutex> lock(mu_);
    switch (state_) {
      case 0:
        return true;
      case 1:
        if (MonoMs() < open_until_) return false;
        state_ = 2;
        trial_ = true;
        return true;
      default:
        if (trial_) return false;
        trial_ = true;
        return true;
    }
  }
  void Success() {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = 0;
    failures_ = 0;
    trial_ = false;
  }
  void Failure() {
    std::lock_guard<std::mutex> lock(mu_);
    ++failures_;
    if (state_ == 2 || (state_ == 0 && failures_ >= threshold_)) {
      state_ = 1;
      open_until_ = MonoMs() + cooldown_ms_;
      trial_ = false;
      ++opens_;
    }
  }
  int state() const {
    std::lock_guard<std::mutex> lock(mu_);
    return state_;
  }
  uint64_t opens() const {
    std::lock_guard<std::mutex> lock(mu_);
    return opens_;
  }

 private:
  mutable std::mutex mu_;
  const int threshold_;
  const int64_t cooldown_ms_;
  int state_ = 0;  // 0 closed, 1 open, 2 half-open.
  int failures_ = 0;
  int64_t open_until_ = 0;
  bool trial_ = false;
  uint64_t opens_ = 0;
};

}  // namespace

Status VerifyFileSha256(const std::string& path, std::string_view expected_hex) {
  if (!IsHex64(expected_hex)) {
    return Error(ErrorCode::kInvalidArgument,
                 "not a SHA-256 hex digest: '" + std::string(expected_hex.substr(0, 80)) + "'");
  }
  DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> file, RandomAccessFile::Open(path));
  Sha256 h;
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < file->size();) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), file->size() - off));
    DS_RETURN_IF_ERROR(file->ReadAt(off, std::span<uint8_t>(buf.data(), n)));
    h.Update(ByteView(buf.data(), n));
    off += n;
  }
  const std::string got = ToHex(h.Finish());
  if (got != expected_hex) {
    return Error(ErrorCode::kDigestMismatch,
                 path + ": SHA-256 is " + got + ", expected " + std::string(expected_hex));
  }
  return Status::Ok();
}

class Proxy::Impl {
 public:
  explicit Impl(const ProxyOptions& o)
      : options_(o),
        client_([&] {
          net::ClientOptions co;
          co.bearer_token = o.upstream_token;
          co.ca_file = o.upstream_ca_file;
          co.connect_timeout_ms = o.connect_timeout_ms;
          co.low_speed_timeout_ms = o.low_speed_timeout_ms;
          return co;
        }()),
        breaker_(o.breaker_failures, o.breaker_cooldown_ms) {
    while (!options_.upstream.empty() && options_.upstream.back() == '/') {
      options_.upstream.pop_back();
    }
  }

  ~Impl() {
    ondemand_.reset();  // Its workers fetch through this object: stop them first.
    stopping_ = true;   // Fetches still running give up at their next piece.
    fetchers_.reset();
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& t : transient_) ::unlink(t.second.c_str());
    for (const auto& [deadline, key] : graveyard_) {
      if (index_.count(key) == 0) RemoveFiles(key);
    }
  }

  Status Init() {
    if (options_.upstream.empty()) {
      return Error(ErrorCode::kInvalidArgument, "a proxy needs an upstream URL");
    }
    if (options_.cache_dir.empty()) {
      return Error(ErrorCode::kInvalidArgument, "a proxy needs a cache directory");
    }
    std::error_code ec;
    fs::create_directories(TmpDir(), ec);
    if (ec) return Error(ErrorCode::kIoError, "create " + TmpDir() + ": " + ec.message());
    for (const auto& d : fs::directory_iterator(TmpDir(), ec)) fs::remove(d.path(), ec);
    // Rebuild the index: an entry is a complete <key>.data with its <key>.meta.
    struct Found {
      EntryInfo info;
      fs::file_time_type time;
    };
    std::vector<Found> found;
    for (const auto& d : fs::directory_iterator(options_.cache_dir, ec)) {
      if (!d.is_regular_file()) continue;
      const std::string name = d.path().filename().string();
      const size_t dot = name.find('.');
      const std::string key = name.substr(0, dot);
      const std::string ext = dot == std::string::npos ? "" : name.substr(dot);
      if (!IsHex64(key) || (ext != ".data" && ext != ".meta")) {
        fs::remove(d.path(), ec);
        continue;
      }
      if (ext == ".data") {
        if (!fs::exists(MetaPath(key))) fs::remove(d.path(), ec);
        continue;
      }
      Result<Bytes> meta = ReadFile(MetaPath(key), 1 << 20);
      const json j = meta.ok() ? json::parse(meta->begin(), meta->end(), nullptr, false) : json();
      Result<uint64_t> size = FileSize(DataPath(key));
      if (!j.is_object() || !size.ok() || !j.contains("target") || !j.contains("size") ||
          j.value("size", uint64_t{0}) != *size) {
        RemoveFiles(key);
        continue;
      }
      Found f;
      f.info.key = key;
      f.info.target = j.value("target", "");
      f.info.size = *size;
      f.info.etag = j.value("etag", "");
      f.info.content_type = j.value("content_type", "");
      f.info.sha256 = j.value("sha256", "");
      f.info.expires_ms = j.value("expires_ms", int64_t{0});
      if (auto h = j.find("headers"); h != j.end() && h->is_object()) {
        for (const char* name : kRelayedHeaders) {
          if (auto v = h->find(name); v != h->end() && v->is_string()) {
            f.info.headers.emplace_back(name, v->get<std::string>());
          }
        }
      }
      f.time = fs::last_write_time(DataPath(key), ec);
      found.push_back(std::move(f));
    }
    std::sort(found.begin(), found.end(),
              [](const Found& a, const Found& b) { return a.time < b.time; });
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (Found& f : found) InsertLocked(std::move(f.info));
      EvictLocked("");
    }
    if (options_.store == StorePolicy::kDelta) {
      for (const char* sub : {"/store/full", "/store/deltas"}) {
        fs::create_directories(options_.cache_dir + sub, ec);
        if (ec) return Error(ErrorCode::kIoError, "create store: " + ec.message());
        for (const auto& d : fs::directory_iterator(options_.cache_dir + sub, ec)) {
          const std::string name = d.path().filename().string();
          if (!d.is_regular_file() || !IsHex64(name)) continue;
          stats_.store_bytes += d.file_size(ec);
        }
      }
    }
    if (options_.keyframe_every < 1) {
      return Error(ErrorCode::kInvalidArgument, "keyframe_every must be at least 1");
    }
    if (options_.ondemand_workers > 0) {
      OnDemandOptions o;
      o.dir = options_.cache_dir + "/ondemand";
      o.workers = options_.ondemand_workers;
      o.queue_capacity = options_.ondemand_queue;
      o.memory_budget = options_.ondemand_memory_budget;
      o.max_encoder_memory = options_.max_encoder_memory;
      o.max_stored_bytes = options_.ondemand_max_bytes;
      o.evict_grace_ms = std::max<int64_t>(options_.evict_grace_ms, 1000);
      DS_ASSIGN_OR_RETURN(ondemand_, OnDemandDeltas::Open(o, [this](const std::string& sha) {
                            return ArtifactPath(sha);
                          }));
    }
    return Status::Ok();
  }

  net::Response ServeObject(const net::Request& req, const std::string& sha,
                            bool stream_ok = false) {
    if (ondemand_) {
      if (std::optional<net::Response> r = ondemand_->ServeObject(sha)) return std::move(*r);
    }
    if (options_.store == StorePolicy::kBoth) return Serve(req, ObjectKind::kBlob, sha, stream_ok);
    SweepTransient();
    if (options_.store == StorePolicy::kDelta) {
      for (const std::string& path : {StoreFullPath(sha), StoreDeltaPath(sha)}) {
        if (Result<uint64_t> size = FileSize(path); size.ok()) {
          std::lock_guard<std::mutex> lock(mu_);
          stats_.bytes_served += *size;
          return ObjectFileResponse(path, *size, sha, "store");
        }
      }
    }
    // What is it? Unknown to the signed metadata (or no answer): the plain cache.
    Result<std::optional<Resolved>> what = ResolveBlob(sha);
    if (!what.ok() || !*what) return Serve(req, ObjectKind::kBlob, sha, stream_ok);
    const Resolved& res = **what;
    if (options_.store == StorePolicy::kFull) {
      if (res.version < 0 && res.delta) return RelayTransient(req.path, ObjectKind::kBlob, sha);
      return Serve(req, ObjectKind::kBlob, sha, stream_ok);
    }
    if (res.version >= 0) return ServeVersion(res.release, static_cast<size_t>(res.version));
    // A delta's patch: kept in the store.
    if (Status s = EnsureStored(StoreDeltaPath(sha), sha, res.delta->length); !s.ok()) {
      return net::Response::FromStatus(s);
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_served += res.delta->length;
    return ObjectFileResponse(StoreDeltaPath(sha), res.delta->length, sha, "store");
  }

  net::Response ServeChunk(const net::Request& req, const std::string& sha,
                           const std::string& range) {
    if (ondemand_) {
      if (std::optional<net::Response> r = ondemand_->ServeChunk(sha, range)) {
        return std::move(*r);
      }
    }
    return Serve(req, ObjectKind::kOpaque, "");
  }

  net::Response Stream(const net::Request& req) {
    const auto a = req.params.find("artifact");
    const std::string artifact = a == req.params.end() ? "" : a->second;
    const std::optional<std::string> from = req.QueryParam("from");
    const std::optional<std::string> to = req.QueryParam("to");
    const std::optional<std::string> fallback = req.QueryParam("fallback");
    if (from && !IsHex64(*from)) {
      return net::Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "from must be 64 lower-case hex digits"));
    }
    if (fallback && *fallback != "full") {
      return net::Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "fallback is 'full' or absent"));
    }
    const bool want_full = fallback.has_value();
    // The upstream's answer. fallback=full: an upstream proxy tier answers at once, never 202.
    net::Request up;
    up.method = "GET";
    up.path = req.path;
    if (from) up.query = "from=" + *from + "&";
    if (to) up.query += "to=" + net::UrlEncode(*to) + "&";
    up.query += "fallback=full";
    net::Response r = Serve(up, ObjectKind::kMutable, "");
    if (r.status != 200 || !r.file) return r;
    Result<std::string> body = ReadResponseFile(r);
    if (!body.ok()) return net::Response::FromStatus(body.status());
    Result<stream::StreamDescriptor> parsed = stream::ParseDescriptor(*body);
    if (!parsed.ok()) {
      return net::Response::FromStatus(
          Error(ErrorCode::kProtocol,
                "upstream sent a bad stream descriptor: " + parsed.status().message()));
    }
    stream::StreamDescriptor d = std::move(parsed).value();
    // Relay the stale mark of an upstream answer served from an expired entry.
    std::vector<std::pair<std::string, std::string>> stale;
    for (const auto& h : r.headers) {
      if (h.first == "Warning" || h.first == "X-Deltastream-Stale") stale.push_back(h);
    }
    if (d.is_delta()) {
      if (d.source.empty()) d.source = "upstream";
      return DescriptorResponse(d, stale);
    }
    d.source = "full";
    if (!from || *from == d.result_sha256) return DescriptorResponse(d, stale);
    // No direct delta upstream: a chain of signed deltas, when the client takes chains and the
    // chain is smaller than the full artifact.
    std::optional<stream::StreamDescriptor> chain;
    if (req.QueryParam("chain") == "1") chain = ChainDescriptor(artifact, *from, d);
    if (!ondemand_) return DescriptorResponse(chain ? *chain : d, stale);
    std::optional<OnDemandDelta> p = ondemand_->Find(*from, d.result_sha256);
    if (!p) {
      // Both full artifacts must be versions in the upstream's signed version list.
      Result<std::pair<uint64_t, uint64_t>> sizes = SignedSizes(artifact, *from, d.result_sha256);
      if (!sizes.ok()) return DescriptorResponse(chain ? *chain : d, stale);
      Result<OnDemandDelta> q =
          ondemand_->Request(*from, sizes->first, d.result_sha256, sizes->second);
      if (!q.ok()) {
        if (want_full || chain) return DescriptorResponse(chain ? *chain : d, stale);
        return net::Response::FromStatus(q.status())
            .With("Retry-After", std::to_string(RetryAfterSeconds(d.result_size, 16)))
            .With("Cache-Control", "no-cache");
      }
      p = *q;
    }
    switch (p->state) {
      case OnDemandState::kReady:
        if (chain && chain->size <= p->size) return DescriptorResponse(*chain, stale);
        d.kind = "delta";
        d.format = "dspf";
        d.delta_id = 0;
        d.base_sha256 = *from;
        d.size = p->size;
        d.sha256 = p->sha256;
        d.leaf_size = p->leaf_size;
        d.chunk_map_sha256 = p->chunk_map_sha256;
        d.chunk_map_url = "/v1/chunkmaps/" + p->chunk_map_sha256;
        d.chunks_url = "/v1/chunks/" + p->sha256 + "/";
        d.source = "on-demand";
        return DescriptorResponse(d, stale);
      case OnDemandState::kQueued:
      case OnDemandState::kRunning:
        // The direct delta is usually the smallest: the client waits for it, unless it would
        // rather not (fallback=full), then a chain beats the full artifact.
        if (want_full) return DescriptorResponse(chain ? *chain : d, stale);
        break;
      default:  // Not worth it, or failed: the chain or the full artifact.
        return DescriptorResponse(chain ? *chain : d, stale);
    }
    const int retry =
        RetryAfterSeconds(d.result_size, ondemand_->QueuePosition(*from, d.result_sha256));
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.streams_pending;
    }
    const json j{{"status", "in_progress"},
                 {"state", OnDemandStateName(p->state)},
                 {"retry_after_s", retry},
                 {"artifact", d.artifact},
                 {"to", d.to},
                 {"base_sha256", *from},
                 {"result_sha256", d.result_sha256}};
    return net::Response::Json(202, j.dump())
        .With("Retry-After", std::to_string(retry))
        .With("Cache-Control", "no-cache");
  }

  // |stream_ok|: the answer goes to an HTTP client, which may get an object while it is still
  // arriving from the upstream (a streamed body); internal callers need the whole file.
  std::optional<net::Response> ServeCached(const net::Request& req, ObjectKind kind) {
    if (options_.store != StorePolicy::kBoth) return std::nullopt;
    const std::string target = CacheTarget(req, kind);
    const std::string key = CacheKey(target);
    std::lock_guard<std::mutex> lock(mu_);
    return CachedLocked(target, key);
  }

  // What the cache keys an answer by: the raw path, plus the query for mutable answers.
  static std::string CacheTarget(const net::Request& req, ObjectKind kind) {
    std::string target = req.path;
    if (kind == ObjectKind::kMutable && !req.query.empty()) target += "?" + req.query;
    return target;
  }
  static std::string CacheKey(const std::string& target) {
    return ToHex(
        Sha256::Of(ByteView(reinterpret_cast<const uint8_t*>(target.data()), target.size())));
  }

  // A remembered 404 of |target| or a fresh cache hit of |key|, counted; nullopt otherwise (an
  // expired 404 is forgotten). REQUIRES: mu_ held.
  std::optional<net::Response> CachedLocked(const std::string& target, const std::string& key) {
    if (auto n = negative_.find(target); n != negative_.end()) {
      if (MonoMs() < n->second.expires) {
        ++stats_.negative_hits;
        return net::Response::FromStatus(n->second.status).With("X-Deltastream-Cache", "hit");
      }
      negative_.erase(n);
    }
    auto it = index_.find(key);
    if (it == index_.end()) return std::nullopt;
    const EntryInfo& e = it->second.info;
    if (!e.immutable() && NowMs() >= e.expires_ms) return std::nullopt;
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    ++stats_.hits;
    stats_.bytes_served += e.size;
    return FileResponse(e, "hit");
  }

  net::Response Serve(const net::Request& req, ObjectKind kind, const std::string& expected,
                      bool stream_ok = false) {
    if (kind == ObjectKind::kDeclared && options_.store == StorePolicy::kFull) {
      SweepTransient();
      return RelayTransient(req.path, kind, expected);
    }
    if (options_.store != StorePolicy::kBoth) SweepTransient();
    const std::string target = CacheTarget(req, kind);
    const std::string key = CacheKey(target);
    std::shared_ptr<Flight> flight;
    bool leader = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (std::optional<net::Response> hit = CachedLocked(target, key)) return std::move(*hit);
      ++stats_.misses;
      if (auto f = flights_.find(key); f != flights_.end()) {
        flight = f->second;
        ++stats_.coalesced;
      } else {
        flight = std::make_shared<Flight>();
        flight->streaming = stream_ok && Streamable(req, kind);
        flight->dropped = readers_dropped_;
        flights_[key] = flight;
        leader = true;
      }
    }
    if (leader && flight->streaming) {
      // The fetch runs on its own thread; this request, like later ones, reads it as it arrives.
      fetchers_->Submit([this, flight, key, target, kind, expected] {
        CompleteFlight(flight, key, target, FetchStreaming(flight, key, target, kind, expected));
      });
      leader = false;
    }
    if (leader) {
      CompleteFlight(flight, key, target, Fetch(key, target, kind, expected));
    } else {
      if (stream_ok && Streamable(req, kind)) {
        if (std::optional<net::Response> r = AttachReader(flight)) return std::move(*r);
      }
      std::unique_lock<std::mutex> lock(mu_);
      flight_done_.wait(lock, [&] { return flight->done; });
    }
    std::lock_guard<std::mutex> lock(mu_);
    const Result<EntryInfo>& r = flight->result;
    if (r.ok()) {
      stats_.bytes_served += r->size;
      if (r->stale) return StaleResponse(*r);
      return FileResponse(*r, "miss");
    }
    if (IsUpstreamFailure(r.status().code())) {
      if (auto it = index_.find(key); it != index_.end()) {
        ++stats_.stale_served;
        stats_.bytes_served += it->second.info.size;
        return StaleResponse(it->second.info);
      }
    }
    return net::Response::FromStatus(r.status());
  }

  Result<std::string> UpstreamHealth() {
    if (!breaker_.Allow()) {
      return Error(ErrorCode::kUnavailable, "upstream circuit breaker is open");
    }
    Result<net::ClientResponse> r = client_.Get(options_.upstream + "/v1/health");
    if (!r.ok()) {
      breaker_.Failure();
      return r.status();
    }
    if (r->status != 200) {
      breaker_.Failure();
      return net::StatusFromResponse(*r);
    }
    breaker_.Success();
    return std::move(r->body);
  }

  ProxyStats stats() const {
    OnDemandStats od;
    if (ondemand_) od = ondemand_->stats();
    std::lock_guard<std::mutex> lock(mu_);
    ProxyStats s = stats_;
    s.stream_readers_dropped = readers_dropped_->load();
    s.ondemand_queued = od.queued;
    s.ondemand_running = od.running;
    s.ondemand_done = od.done;
    s.ondemand_not_worth = od.not_worth;
    s.ondemand_failed = od.failed;
    s.ondemand_refused = od.refused;
    s.ondemand_stored_bytes = od.stored_bytes;
    s.ondemand_evicted = od.evicted;
    s.cache_bytes = cache_bytes_;
    s.cache_entries = index_.size();
    s.breaker_state = breaker_.state();
    s.breaker_opens = breaker_.opens();
    return s;
  }

  const ProxyOptions& options() const { return options_; }

 private:
  // One client of a flight. Its own descriptor of the arriving file stays valid when the file is
  // renamed into the cache (or unlinked after a failed verification).
  struct FlightReader {
    std::shared_ptr<net::BodyStream> stream;
    int fd = -1;
    uint64_t offset = 0;  // Bytes of the file handed to |stream|.
    FlightReader() = default;
    FlightReader(const FlightReader&) = delete;
    FlightReader& operator=(const FlightReader&) = delete;
    ~FlightReader() {
      if (fd >= 0) ::close(fd);
    }
  };

  struct Flight {
    bool done = false;  // Guarded by mu_, like |result|.
    Result<EntryInfo> result = Status(ErrorCode::kInternal, "flight not finished");
    bool streaming = false;  // Set at creation: the fetch serves readers while it arrives.

    // Serve-while-arriving state, guarded by |mu|. The upstream's body goes to |tmp_path|;
    // readers are fed from that file up to |released|: all that arrived but the last piece, so
    // that a body which fails verification at the end is never delivered whole (its readers see
    // a cut body). Once verified, they get the rest.
    std::mutex mu;
    std::condition_variable cv;
    bool head_known = false;  // The upstream answered 200 with a length and a SHA-256.
    bool arrivals_over = false;
    bool verified = false;  // Set with arrivals_over.
    uint64_t length = 0;
    std::string content_type, sha256, tmp_path;
    uint64_t arrived = 0;                                // Bytes written to the file.
    uint64_t released = 0;                               // Bytes readers may have.
    std::vector<std::shared_ptr<FlightReader>> readers;  // Not parked, still going.
    std::shared_ptr<std::atomic<uint64_t>> dropped;      // The proxy's counter.
  };

  // A tiny thread pool for fetches that serve readers while they arrive.
  class FetchPool {
   public:
    explicit FetchPool(int threads) : threads_(threads) {}
    ~FetchPool() {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      for (std::thread& t : workers_) t.join();
    }
    void Submit(std::function<void()> task) {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
      if (workers_.size() < static_cast<size_t>(threads_) && idle_ == 0) {
        workers_.emplace_back([this] { Run(); });
      }
      cv_.notify_one();
    }

   private:
    void Run() {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        ++idle_;
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        --idle_;
        if (queue_.empty()) return;  // Stopping, nothing left.
        std::function<void()> task = std::move(queue_.front());
        queue_.pop_front();
        lock.unlock();
        task();
        lock.lock();
      }
    }
    const int threads_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::function<void()>> queue_;
    std::vector<std::thread> workers_;
    int idle_ = 0;
    bool stop_ = false;
  };

  // Whole-object GETs of verifiable objects can be served while they arrive.
  static bool Streamable(const net::Request& req, ObjectKind kind) {
    return (kind == ObjectKind::kBlob || kind == ObjectKind::kDeclared) && req.method == "GET" &&
           req.Header("range").empty() && req.Header("if-none-match").empty();
  }

  // Publishes a flight's outcome: indexes the entry, remembers a 404, wakes the waiters.
  void CompleteFlight(const std::shared_ptr<Flight>& flight, const std::string& key,
                      const std::string& target, Result<EntryInfo> r) {
    std::lock_guard<std::mutex> lock(mu_);
    if (r.ok()) {
      InsertLocked(*r);
      EvictLocked(key);
    } else if (r.status().code() == ErrorCode::kNotFound) {
      if (negative_.size() >= kMaxNegativeEntries) negative_.clear();
      negative_[target] = Negative{r.status(), MonoMs() + options_.negative_ttl_ms};
    }
    flight->result = std::move(r);
    flight->done = true;
    flights_.erase(key);
    flight_done_.notify_all();
  }

  enum class Pumped { kGoing, kParked, kDone, kDropped };

  // Hands |r| what it may have of the arriving file, until its connection has kReaderWindow
  // queued; then parks it: its connection calls back (on an io thread) once half has been sent
  // or the client has left. REQUIRES: flight->mu held. Static: a parked reader may outlive the
  // proxy's request (it holds the flight, never the proxy).
  static Pumped PumpLocked(const std::shared_ptr<Flight>& flight,
                           const std::shared_ptr<FlightReader>& r) {
    Flight& f = *flight;
    if (f.arrivals_over && !f.verified) return Pumped::kDropped;  // Cut: it ends short.
    const uint64_t limit = f.arrivals_over ? f.length : f.released;
    while (r->offset < limit) {
      if (r->stream->pending() >= kReaderWindow &&
          r->stream->OnBelow(kReaderWindow / 2, [flight, r] { Unpark(flight, r); })) {
        return Pumped::kParked;
      }
      std::string piece(static_cast<size_t>(std::min<uint64_t>(kReaderPiece, limit - r->offset)),
                        '\0');
      size_t got = 0;
      while (got < piece.size()) {
        const ssize_t n = ::pread(r->fd, piece.data() + got, piece.size() - got,
                                  static_cast<off_t>(r->offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Pumped::kDropped;
        got += static_cast<size_t>(n);
      }
      if (!r->stream->Write(std::move(piece))) return Pumped::kDropped;  // The client left.
      r->offset += got;
    }
    if (!f.arrivals_over) return Pumped::kGoing;
    r->stream->Close();  // All of it, verified.
    return Pumped::kDone;
  }

  // PumpLocked, counting a client that left before the end (not one cut by a failed
  // verification); true when |r| is to stay in the flight's list (parked readers are held by
  // their connections). REQUIRES: flight->mu held.
  static bool StaysLocked(const std::shared_ptr<Flight>& flight,
                          const std::shared_ptr<FlightReader>& r) {
    const Pumped p = PumpLocked(flight, r);
    if (p == Pumped::kDropped && (flight->verified || !flight->arrivals_over)) ++*flight->dropped;
    return p == Pumped::kGoing;
  }

  // A parked reader's connection drained (or its client left): feed it again; caught up with the
  // arrival, it is fed as bytes arrive.
  static void Unpark(const std::shared_ptr<Flight>& flight,
                     const std::shared_ptr<FlightReader>& r) {
    std::lock_guard<std::mutex> lock(flight->mu);
    if (StaysLocked(flight, r)) flight->readers.push_back(r);
  }

  // Feeds every reader that is not parked (after more bytes arrived, or at the end).
  static void PumpAllLocked(const std::shared_ptr<Flight>& flight) {
    Flight& f = *flight;
    size_t kept = 0;
    for (size_t i = 0; i < f.readers.size(); ++i) {
      std::shared_ptr<FlightReader> r = std::move(f.readers[i]);
      if (StaysLocked(flight, r)) f.readers[kept++] = std::move(r);
    }
    f.readers.resize(kept);
  }

  // A streamed answer for a reader of |flight|, once the upstream's header is in, fed from the
  // arriving file from its first byte; nullopt when the fetch is not streaming, failed or
  // finished first (then the caller waits for the whole object as before).
  std::optional<net::Response> AttachReader(const std::shared_ptr<Flight>& flight) {
    if (!flight->streaming) return std::nullopt;
    std::unique_lock<std::mutex> lock(flight->mu);
    flight->cv.wait_for(lock, std::chrono::milliseconds(options_.connect_timeout_ms),
                        [&] { return flight->head_known || flight->arrivals_over; });
    if (!flight->head_known || flight->arrivals_over) return std::nullopt;
    auto reader = std::make_shared<FlightReader>();
    reader->fd = ::open(flight->tmp_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (reader->fd < 0) return std::nullopt;
    net::Response r =
        net::Response::Streamed(200, flight->content_type, &reader->stream, flight->length);
    r.With("ETag", "\"" + flight->sha256 + "\"")
        .With("X-Content-SHA256", flight->sha256)
        .With("Cache-Control", kImmutableCacheControl)
        .With("X-Deltastream-Cache", "miss-arriving");
    // What arrived so far goes out now (up to the window); the rest as it arrives.
    switch (PumpLocked(flight, reader)) {
      case Pumped::kGoing:
        flight->readers.push_back(reader);
        break;
      case Pumped::kDropped:
        return std::nullopt;
      case Pumped::kParked:
      case Pumped::kDone:
        break;
    }
    std::lock_guard<std::mutex> stats_lock(mu_);
    ++stats_.streamed_while_arriving;
    return r;
  }

  // Like Fetch(), and while the body arrives it is handed to the flight's readers.
  Result<EntryInfo> FetchStreaming(const std::shared_ptr<Flight>& flight, const std::string& key,
                                   const std::string& target, ObjectKind kind,
                                   const std::string& expected) {
    Flight& f = *flight;
    // However this ends, readers are released: whole only after verification, else cut.
    struct Finish {
      const std::shared_ptr<Flight>& flight;
      bool verified = false;
      ~Finish() {
        Flight& f = *flight;
        std::lock_guard<std::mutex> lock(f.mu);
        f.verified = verified;
        f.released = f.arrived;
        f.arrivals_over = true;
        // Readers that are not parked get the rest now (or are cut); parked ones when their
        // connections drain.
        PumpAllLocked(flight);
        f.readers.clear();
        f.cv.notify_all();
      }
    } finish{flight};
    if (!breaker_.Allow()) {
      return Error(ErrorCode::kUnavailable,
                   "upstream " + options_.upstream + " is failing (circuit breaker open)");
    }
    const std::string tmp = TmpDir() + "/" + key + "." + std::to_string(++tmp_counter_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.upstream_fetches;
    }
    const int fd = ::open(tmp.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("create " + tmp, errno);
    {
      std::lock_guard<std::mutex> lock(f.mu);
      f.tmp_path = tmp;
    }
    auto on_head = [&](const net::ClientResponse& h) -> Status {
      std::string sha = expected;
      if (kind == ObjectKind::kDeclared) {
        sha = std::string(h.Header("x-content-sha256"));
        if (sha.empty()) sha = Unquote(std::string(h.Header("etag")));
      }
      const std::string_view len = h.Header("content-length");
      uint64_t length = 0;
      const bool length_ok =
          !len.empty() && len.size() <= 19 &&
          std::all_of(len.begin(), len.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (length_ok) length = std::stoull(std::string(len));
      if (h.status != 200 || !IsHex64(sha) || !length_ok || length == 0) return Status::Ok();
      std::lock_guard<std::mutex> lock(f.mu);
      f.length = length;
      f.sha256 = sha;
      const std::string_view ct = h.Header("content-type");
      f.content_type = ct.empty() ? "application/octet-stream" : std::string(ct);
      f.head_known = true;
      f.cv.notify_all();
      return Status::Ok();
    };
    auto on_data = [&](int, ByteView piece) -> Status {
      if (stopping_.load()) return Error(ErrorCode::kUnavailable, "the proxy is stopping");
      size_t done = 0;
      while (done < piece.size()) {
        const ssize_t n = ::write(fd, piece.data() + done, piece.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ErrnoStatus("write " + tmp, errno);
        done += static_cast<size_t>(n);
      }
      std::lock_guard<std::mutex> lock(f.mu);
      f.released = f.arrived;  // All but this last piece.
      f.arrived += piece.size();
      PumpAllLocked(flight);
      return Status::Ok();
    };
    Result<net::ClientResponse> r = client_.GetStream(options_.upstream + target, on_head, on_data);
    Status synced = Status::Ok();
    if (::fdatasync(fd) != 0) synced = ErrnoStatus("fdatasync " + tmp, errno);
    ::close(fd);
    if (r.ok() && (r->status < 200 || r->status >= 300)) r = net::StatusFromResponse(*r);
    if (r.ok() && !synced.ok()) r = synced;
    if (!r.ok()) {
      ::unlink(tmp.c_str());
      return UpstreamFailed(r.status());
    }
    breaker_.Success();
    Result<EntryInfo> e = Install(key, target, kind, expected, *r, tmp);
    if (!e.ok()) {
      ::unlink(tmp.c_str());
      return e;
    }
    finish.verified = true;  // Install verified the SHA-256: the held piece may go out.
    return e;
  }
  struct Indexed {
    EntryInfo info;
    std::list<std::string>::iterator lru;
  };
  struct Negative {
    Status status;
    int64_t expires;
  };

  std::string TmpDir() const { return options_.cache_dir + "/tmp"; }
  std::string DataPath(const std::string& key) const {
    return options_.cache_dir + "/" + key + ".data";
  }
  std::string MetaPath(const std::string& key) const {
    return options_.cache_dir + "/" + key + ".meta";
  }
  void RemoveFiles(const std::string& key) const {
    ::unlink(DataPath(key).c_str());
    ::unlink(MetaPath(key).c_str());
  }

  // The bytes of a 200 answer with a file body (small: JSON answers).
  static Result<std::string> ReadResponseFile(const net::Response& r) {
    if (!r.file) return r.body;
    if (r.file->length > (16u << 20)) {
      return Error(ErrorCode::kTooLarge, "upstream answer larger than 16 MiB");
    }
    DS_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, RandomAccessFile::Open(r.file->path));
    std::string out(r.file->length, '\0');
    DS_RETURN_IF_ERROR(f->ReadAt(
        r.file->offset, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size())));
    return out;
  }

  // The full artifact |sha| as a verified file (from the cache, the store, or rebuilt; fetched
  // from the upstream if needed). The file stays for at least the eviction grace.
  Result<std::string> ArtifactPath(const std::string& sha) {
    net::Request req;
    req.method = "GET";
    req.path = "/v1/blobs/" + sha;
    net::Response r = ServeObject(req, sha);
    if (r.status != 200 || !r.file) {
      net::ClientResponse c;
      c.status = r.status;
      c.body = r.body;
      return net::StatusFromResponse(c);
    }
    return r.file->path;
  }

  // The upstream's signed release metadata of |artifact|, parsed (relayed through the cache).
  Result<SignedRelease> Release(const std::string& artifact) {
    net::Request req;
    req.method = "GET";
    req.path = "/v1/artifacts/" + net::UrlEncode(artifact) + "/metadata";
    net::Response r = Serve(req, ObjectKind::kMutable, "");
    if (r.status != 200) {
      net::ClientResponse c;
      c.status = r.status;
      c.body = r.body;
      return net::StatusFromResponse(c);
    }
    DS_ASSIGN_OR_RETURN(std::string body, ReadResponseFile(r));
    return ParseSignedRelease(body);
  }

  // Sizes of the base and the result, both found by SHA-256 among the versions of |artifact|'s
  // signed metadata (as relayed by the upstream). kNotFound when either is not there.
  Result<std::pair<uint64_t, uint64_t>> SignedSizes(const std::string& artifact,
                                                    const std::string& base,
                                                    const std::string& result) {
    DS_ASSIGN_OR_RETURN(SignedRelease release, Release(artifact));
    const int b = release.FindVersion(base), r = release.FindVersion(result);
    if (b < 0 || r < 0) {
      return Error(ErrorCode::kNotFound, "base or result is not a signed version of " + artifact);
    }
    return std::make_pair(release.versions[b].length, release.versions[r].length);
  }

  // What the signed metadata of some artifact says the blob |sha| is: a version (index) or a
  // delta's patch. nullopt when no artifact lists it. One metadata read per artifact (each
  // cached for the mutable TTL).
  struct Resolved {
    SignedRelease release;
    int version = -1;
    std::optional<SignedRelease::Delta> delta;
  };
  Result<std::optional<Resolved>> ResolveBlob(const std::string& sha) {
    net::Request req;
    req.method = "GET";
    req.path = "/v1/artifacts";
    net::Response r = Serve(req, ObjectKind::kMutable, "");
    if (r.status != 200) return Error(ErrorCode::kUnavailable, "cannot list the artifacts");
    DS_ASSIGN_OR_RETURN(std::string body, ReadResponseFile(r));
    const json j = json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("artifacts") || !j["artifacts"].is_array()) {
      return Error(ErrorCode::kProtocol, "upstream sent a bad artifact list");
    }
    for (const json& a : j["artifacts"]) {
      if (!a.is_string()) continue;
      Result<SignedRelease> release = Release(a.get<std::string>());
      if (!release.ok()) continue;
      Resolved res;
      res.version = release->FindVersion(sha);
      if (const SignedRelease::Delta* d = release->FindDelta(sha)) res.delta = *d;
      if (res.version >= 0 || res.delta) {
        res.release = std::move(release).value();
        return std::optional<Resolved>(std::move(res));
      }
    }
    return std::optional<Resolved>();
  }

  std::string StoreFullPath(const std::string& sha) const {
    return options_.cache_dir + "/store/full/" + sha;
  }
  std::string StoreDeltaPath(const std::string& sha) const {
    return options_.cache_dir + "/store/deltas/" + sha;
  }

  // A verified object file that is not a cache entry (store, rebuilt, relayed).
  static net::Response ObjectFileResponse(const std::string& path, uint64_t size,
                                          const std::string& sha, const char* source) {
    net::Response r;
    r.file = net::FileBody{path, 0, size};
    r.With("Content-Type", "application/octet-stream")
        .With("ETag", "\"" + sha + "\"")
        .With("X-Content-SHA256", sha)
        .With("Cache-Control", kImmutableCacheControl)
        .With("X-Deltastream-Cache", source);
    return r;
  }

  // Unlinks |path| after the eviction grace (a response handed its path opens it by then).
  void UnlinkLater(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    transient_.emplace_back(MonoMs() + options_.evict_grace_ms, path);
  }
  void SweepTransient() {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = MonoMs();
    auto end = std::remove_if(transient_.begin(), transient_.end(), [&](const auto& t) {
      if (t.first > now) return false;
      ::unlink(t.second.c_str());
      return true;
    });
    transient_.erase(end, transient_.end());
  }

  // Downloads |target| from the upstream into |dest| (temp file + rename), checked against
  // |sha| (and |length| unless 0). Never indexed: for the store and for relays.
  Result<uint64_t> DownloadVerified(const std::string& target, const std::string& sha,
                                    uint64_t length, const std::string& dest) {
    if (!breaker_.Allow()) {
      return Error(ErrorCode::kUnavailable,
                   "upstream " + options_.upstream + " is failing (circuit breaker open)");
    }
    const std::string tmp = TmpDir() + "/dl-" + sha + "." + std::to_string(++tmp_counter_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.upstream_fetches;
    }
    Result<net::ClientResponse> r = client_.DownloadFile(options_.upstream + target, tmp);
    if (!r.ok()) {
      return UpstreamFailed(r.status());
    }
    breaker_.Success();
    Result<uint64_t> size = FileSize(tmp);
    Status s = size.ok() ? VerifyFileSha256(tmp, sha) : size.status();
    if (s.ok() && length != 0 && *size != length) {
      s = Error(ErrorCode::kDigestMismatch, target + " is not of the signed length");
    }
    if (!s.ok()) {
      ::unlink(tmp.c_str());
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.verify_failures;
      return Error(ErrorCode::kUnavailable,
                   "upstream sent a corrupt object for " + target + ": " + s.message());
    }
    if (::rename(tmp.c_str(), dest.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      return ErrnoStatus("rename " + tmp, err);
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_fetched += *size;
    return *size;
  }

  // Makes sure the store holds |sha| at |dest| (fetched as /v1/blobs/<sha>).
  Status EnsureStored(const std::string& dest, const std::string& sha, uint64_t length) {
    if (FileSize(dest).ok()) return Status::Ok();
    DS_ASSIGN_OR_RETURN(uint64_t size, DownloadVerified("/v1/blobs/" + sha, sha, length, dest));
    DS_RETURN_IF_ERROR(FsyncDir(dest.substr(0, dest.rfind('/'))));
    std::lock_guard<std::mutex> lock(mu_);
    stats_.store_bytes += size;
    return Status::Ok();
  }

  // --store full: an upstream delta patch relayed without being kept.
  net::Response RelayTransient(const std::string& target, ObjectKind kind,
                               const std::string& expected) {
    std::string sha = expected;
    if (kind == ObjectKind::kDeclared) {
      // The declared digest comes with the answer: learn it from the delta's JSON first.
      net::Request meta;
      meta.method = "GET";
      meta.path = target.substr(0, target.rfind('/'));
      net::Response m = Serve(meta, ObjectKind::kMutable, "");
      if (m.status != 200) return m;
      Result<std::string> body = ReadResponseFile(m);
      const json j = body.ok() ? json::parse(*body, nullptr, false) : json();
      if (!j.is_object() || !j.contains("sha256") || !j["sha256"].is_string() ||
          !IsHex64(j["sha256"].get<std::string>())) {
        return net::Response::FromStatus(
            Error(ErrorCode::kNotFound, "no ready delta at " + meta.path));
      }
      sha = j["sha256"].get<std::string>();
    }
    const std::string path = TmpDir() + "/relay-" + sha + "." + std::to_string(++tmp_counter_);
    Result<uint64_t> size = DownloadVerified(target, sha, 0, path);
    if (!size.ok()) return net::Response::FromStatus(size.status());
    UnlinkLater(path);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.transient_relays;
      stats_.bytes_served += *size;
    }
    return ObjectFileResponse(path, *size, sha, "relayed");
  }

  // --store delta: version |index| of |release| from the store (a keyframe) or rebuilt.
  net::Response ServeVersion(const SignedRelease& release, size_t index) {
    const SignedRelease::Version& v = release.versions[index];
    std::shared_ptr<std::mutex> key_lock;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::shared_ptr<std::mutex>& m = version_locks_[v.sha256];
      if (!m) m = std::make_shared<std::mutex>();
      key_lock = m;
    }
    std::lock_guard<std::mutex> version_lock(*key_lock);  // One rebuild per version at a time.
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = recent_rebuilds_.find(v.sha256);
      if (it != recent_rebuilds_.end() && MonoMs() + 1000 < it->second.first) {
        stats_.bytes_served += v.length;
        return ObjectFileResponse(it->second.second, v.length, v.sha256, "rebuilt");
      }
    }
    std::optional<RebuildPlan> plan =
        PlanRebuild(release, index, options_.keyframe_every,
                    [this](const std::string& sha) { return FileSize(StoreFullPath(sha)).ok(); });
    if (!plan) {
      // No chain of signed deltas reaches it: keep this version in full.
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.chain_breaks;
      plan = RebuildPlan{index, {}};
    }
    const SignedRelease::Version& source = release.versions[plan->source];
    Status s = EnsureStored(StoreFullPath(source.sha256), source.sha256, source.length);
    for (size_t i = 0; s.ok() && i < plan->deltas.size(); ++i) {
      s = EnsureStored(StoreDeltaPath(plan->deltas[i].sha256), plan->deltas[i].sha256,
                       plan->deltas[i].length);
    }
    if (!s.ok()) return net::Response::FromStatus(s);
    if (plan->deltas.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.bytes_served += v.length;
      return ObjectFileResponse(StoreFullPath(v.sha256), v.length, v.sha256, "store");
    }
    // Apply the chain; each step is checked against its patch's result hash, the end against
    // the signed hash and length of the version.
    std::string current = StoreFullPath(source.sha256);
    for (const SignedRelease::Delta& d : plan->deltas) {
      const std::string out =
          TmpDir() + "/rebuild-" + d.result_sha256 + "." + std::to_string(++tmp_counter_);
      s = delta::ApplyPatchFile(current, StoreDeltaPath(d.sha256), out);
      if (current != StoreFullPath(source.sha256)) ::unlink(current.c_str());
      if (!s.ok()) break;
      current = out;
    }
    if (s.ok()) s = VerifyFileSha256(current, v.sha256);
    if (s.ok()) {
      Result<uint64_t> size = FileSize(current);
      if (!size.ok() || *size != v.length) {
        s = Error(ErrorCode::kDigestMismatch, "rebuilt " + v.sha256 + " has the wrong length");
      }
    }
    if (!s.ok()) {
      if (current != StoreFullPath(source.sha256)) ::unlink(current.c_str());
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.rebuild_failures;
      return net::Response::FromStatus(
          Error(ErrorCode::kUnavailable, "cannot rebuild " + v.sha256 + ": " + s.message()));
    }
    UnlinkLater(current);
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.rebuilds;
    stats_.bytes_served += v.length;
    recent_rebuilds_[v.sha256] = {MonoMs() + options_.evict_grace_ms, current};
    return ObjectFileResponse(current, v.length, v.sha256, "rebuilt");
  }

  // Seconds a client should wait before asking again: about 1 s per 16 MiB of result per job
  // ahead of it and its own.
  static int RetryAfterSeconds(uint64_t result_size, size_t jobs_ahead) {
    const uint64_t per_job = 1 + result_size / (16ull << 20);
    return static_cast<int>(std::min<uint64_t>(60, per_job * (1 + jobs_ahead)));
  }

  // A chain of the upstream's signed deltas from |from| to the version |full| rebuilds, when
  // one of at most kMaxChainSteps steps exists and is smaller than the full artifact; each step
  // is the upstream's own descriptor of that delta (so its chunks come through the cache).
  std::optional<stream::StreamDescriptor> ChainDescriptor(const std::string& artifact,
                                                          const std::string& from,
                                                          const stream::StreamDescriptor& full) {
    Result<SignedRelease> release = Release(artifact);
    if (!release.ok()) return std::nullopt;
    std::optional<std::vector<SignedRelease::Delta>> path =
        CheapestDeltaPath(*release, from, full.result_sha256, stream::kMaxChainSteps);
    if (!path || path->size() < 2) return std::nullopt;
    uint64_t total = 0;
    for (const SignedRelease::Delta& step : *path) total += step.length;
    if (total >= full.result_size) return std::nullopt;
    stream::StreamDescriptor chain;
    chain.artifact = full.artifact;
    chain.to = full.to;
    chain.result_sha256 = full.result_sha256;
    chain.result_size = full.result_size;
    chain.kind = "chain";
    chain.base_sha256 = from;
    chain.size = total;
    chain.source = "chain";
    for (const SignedRelease::Delta& step : *path) {
      const int v = release->FindVersion(step.result_sha256);
      if (v < 0) return std::nullopt;
      net::Request up;
      up.method = "GET";
      up.path = "/v1/artifacts/" + net::UrlEncode(artifact) + "/stream";
      up.query = "from=" + step.base_sha256 +
                 "&to=" + net::UrlEncode(release->versions[static_cast<size_t>(v)].version) +
                 "&fallback=full";
      net::Response r = Serve(up, ObjectKind::kMutable, "");
      if (r.status != 200) return std::nullopt;
      Result<std::string> body = ReadResponseFile(r);
      if (!body.ok()) return std::nullopt;
      Result<stream::StreamDescriptor> s = stream::ParseDescriptor(*body);
      // It must be that very signed delta.
      if (!s.ok() || !s->is_delta() || s->sha256 != step.sha256 || s->size != step.length ||
          s->base_sha256 != step.base_sha256 || s->result_sha256 != step.result_sha256) {
        return std::nullopt;
      }
      if (s->source.empty()) s->source = "upstream";
      chain.steps.push_back(std::move(s).value());
    }
    return chain;
  }

  net::Response DescriptorResponse(const stream::StreamDescriptor& d,
                                   const std::vector<std::pair<std::string, std::string>>& extra) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (d.is_chain()) {
        ++stats_.streams_chain;
        if (d.result_size > d.size) stats_.delta_bytes_saved += d.result_size - d.size;
      } else if (d.is_delta()) {
        if (d.source == "on-demand") {
          ++stats_.streams_ondemand;
        } else {
          ++stats_.streams_upstream;
        }
        if (d.result_size > d.size) stats_.delta_bytes_saved += d.result_size - d.size;
      } else {
        ++stats_.streams_full;
      }
    }
    net::Response r = net::Response::Json(200, stream::DescriptorToJson(d));
    r.With("Cache-Control", "no-cache");
    for (const auto& [name, value] : extra) r.With(name, value);
    return r;
  }

  net::Response FileResponse(const EntryInfo& e, const char* cache) const {
    net::Response r;
    r.status = 200;
    r.file = net::FileBody{DataPath(e.key), 0, e.size};
    r.With("Content-Type", e.content_type.empty() ? "application/octet-stream" : e.content_type);
    if (!e.etag.empty()) r.With("ETag", e.etag);
    if (!e.sha256.empty()) r.With("X-Content-SHA256", e.sha256);
    for (const auto& [name, value] : e.headers) r.With(name, value);
    r.With("Cache-Control", e.immutable() ? kImmutableCacheControl : "no-cache");
    r.With("X-Deltastream-Cache", cache);
    return r;
  }

  net::Response StaleResponse(const EntryInfo& e) const {
    return FileResponse(e, "stale")
        .With("Warning", "110 - \"Response is Stale\"")
        .With("X-Deltastream-Stale", "1");
  }

  // Records a failed upstream call with the breaker (an answer that says no, e.g. 404, still
  // shows the upstream alive) and returns |s|.
  Status UpstreamFailed(Status s) {
    if (IsUpstreamFailure(s.code())) {
      breaker_.Failure();
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.upstream_failures;
    } else {
      breaker_.Success();
    }
    return s;
  }

  // Downloads |target| from the upstream into the cache files of |key| (not yet indexed).
  Result<EntryInfo> Fetch(const std::string& key, const std::string& target, ObjectKind kind,
                          const std::string& expected) {
    if (!breaker_.Allow()) {
      return Error(ErrorCode::kUnavailable,
                   "upstream " + options_.upstream + " is failing (circuit breaker open)");
    }
    const std::string tmp = TmpDir() + "/" + key + "." + std::to_string(++tmp_counter_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.upstream_fetches;
    }
    Result<net::ClientResponse> r = client_.DownloadFile(options_.upstream + target, tmp);
    if (!r.ok()) {
      return UpstreamFailed(r.status());
    }
    breaker_.Success();
    Result<EntryInfo> e = Install(key, target, kind, expected, *r, tmp);
    if (!e.ok()) ::unlink(tmp.c_str());
    return e;
  }

  Result<EntryInfo> Install(const std::string& key, const std::string& target, ObjectKind kind,
                            const std::string& expected, const net::ClientResponse& r,
                            const std::string& tmp) {
    EntryInfo e;
    e.key = key;
    e.target = target;
    DS_ASSIGN_OR_RETURN(e.size, FileSize(tmp));
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.bytes_fetched += e.size;
    }
    e.content_type = std::string(r.Header("content-type"));
    e.etag = std::string(r.Header("etag"));
    if (kind == ObjectKind::kOpaque) {
      for (const char* name : kRelayedHeaders) {
        std::string lower(name);
        std::transform(lower.begin(), lower.end(), lower.begin(),
                       [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
        const std::string_view v = r.Header(lower);
        if (!v.empty()) e.headers.emplace_back(name, std::string(v));
      }
    }
    std::string sha;
    if (kind == ObjectKind::kBlob) {
      sha = expected;
    } else if (kind == ObjectKind::kDeclared) {
      sha = std::string(r.Header("x-content-sha256"));
      if (sha.empty()) sha = Unquote(e.etag);
      if (!IsHex64(sha)) {
        return Error(ErrorCode::kProtocol,
                     "upstream declared no SHA-256 (X-Content-SHA256 or ETag) for " + target);
      }
    }
    if (!sha.empty()) {
      if (Status s = VerifyFileSha256(tmp, sha); !s.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.verify_failures;
        return Error(ErrorCode::kUnavailable,
                     "upstream sent a corrupt object for " + target + ": " + s.message());
      }
      e.sha256 = sha;
      e.etag = "\"" + sha + "\"";
    }
    e.expires_ms = kind == ObjectKind::kMutable ? NowMs() + options_.mutable_ttl_ms : 0;
    if (kind == ObjectKind::kMutable) e.etag.clear();  // Upstream sends none for these.
    if (kind == ObjectKind::kMutable && r.Header("x-deltastream-stale") == "1") {
      e.stale = true;
      e.expires_ms = NowMs();
    }
    // The meta file first: a data file without it is discarded at start.
    const std::string meta = MetaJson(e).dump();
    DS_RETURN_IF_ERROR(WriteFileAtomic(
        MetaPath(key), ByteView(reinterpret_cast<const uint8_t*>(meta.data()), meta.size())));
    if (::rename(tmp.c_str(), DataPath(key).c_str()) != 0) {
      return ErrnoStatus("rename " + tmp, errno);
    }
    DS_RETURN_IF_ERROR(FsyncDir(options_.cache_dir));
    return e;
  }

  void InsertLocked(EntryInfo info) {
    if (auto it = index_.find(info.key); it != index_.end()) {
      cache_bytes_ -= it->second.info.size + kEntryOverhead;
      lru_.erase(it->second.lru);
      index_.erase(it);
    }
    lru_.push_front(info.key);
    cache_bytes_ += info.size + kEntryOverhead;
    const std::string key = info.key;
    index_[key] = Indexed{std::move(info), lru_.begin()};
  }

  // Evicts least recently used entries (never |keep|) until the cache fits, and unlinks the
  // files of entries evicted more than the grace period ago.
  void EvictLocked(const std::string& keep) {
    while (cache_bytes_ > options_.cache_max_bytes && !lru_.empty()) {
      std::string victim = lru_.back();
      if (victim == keep) {
        if (lru_.size() == 1) break;
        lru_.splice(lru_.begin(), lru_, std::prev(lru_.end()));
        continue;
      }
      auto it = index_.find(victim);
      cache_bytes_ -= it->second.info.size + kEntryOverhead;
      lru_.pop_back();
      index_.erase(it);
      ++stats_.evictions;
      graveyard_.emplace_back(MonoMs() + options_.evict_grace_ms, std::move(victim));
    }
    const int64_t now = MonoMs();
    auto end = std::remove_if(graveyard_.begin(), graveyard_.end(), [&](const auto& g) {
      if (g.first > now) return false;
      if (index_.count(g.second) == 0 && flights_.count(g.second) == 0) RemoveFiles(g.second);
      return true;
    });
    graveyard_.erase(end, graveyard_.end());
  }

  ProxyOptions options_;
  net::Client client_;
  Breaker breaker_;
  std::atomic<uint64_t> tmp_counter_{0};

  mutable std::mutex mu_;
  std::condition_variable flight_done_;
  std::unordered_map<std::string, Indexed> index_;
  std::list<std::string> lru_;  // Most recently used first.
  uint64_t cache_bytes_ = 0;
  std::unordered_map<std::string, std::shared_ptr<Flight>> flights_;
  std::unordered_map<std::string, Negative> negative_;
  std::vector<std::pair<int64_t, std::string>> graveyard_;  // (unlink after, key)
  ProxyStats stats_;
  // Readers of arriving objects whose clients left before the end (counted from io threads).
  std::shared_ptr<std::atomic<uint64_t>> readers_dropped_ =
      std::make_shared<std::atomic<uint64_t>>(0);
  std::vector<std::pair<int64_t, std::string>> transient_;  // (unlink after, path)
  std::unordered_map<std::string, std::shared_ptr<std::mutex>> version_locks_;
  // Version sha256 -> (usable until, rebuilt file): concurrent and repeated requests share it.
  std::unordered_map<std::string, std::pair<int64_t, std::string>> recent_rebuilds_;
  std::atomic<bool> stopping_{false};
  // Fetches serving readers while they arrive (they call back into this object).
  std::unique_ptr<FetchPool> fetchers_ = std::make_unique<FetchPool>(8);
  // Last: destroyed first (its workers call back into this object).
  std::unique_ptr<OnDemandDeltas> ondemand_;
};

Proxy::Proxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Proxy::~Proxy() = default;

Result<std::unique_ptr<Proxy>> Proxy::Open(const ProxyOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  DS_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Proxy>(new Proxy(std::move(impl)));
}

net::Response Proxy::Serve(const net::Request& req, ObjectKind kind,
                           const std::string& expected_sha256) {
  return impl_->Serve(req, kind, expected_sha256, /*stream_ok=*/true);
}

net::Response Proxy::Stream(const net::Request& req) { return impl_->Stream(req); }
Result<std::string> Proxy::ObjectFile(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string sha = slash == std::string::npos ? path : path.substr(slash + 1);
  if (!IsHex64(sha) || (path.rfind("/v1/blobs/", 0) != 0 && path.rfind("/v1/chunkmaps/", 0) != 0)) {
    return Error(ErrorCode::kInvalidArgument, "not an object path: " + path);
  }
  net::Request req;
  req.method = "GET";
  req.path = path;
  net::Response r = impl_->ServeObject(req, sha);
  if (r.status != 200 || !r.file || r.file->offset != 0) {
    net::ClientResponse c;
    c.status = r.status == 200 ? 500 : r.status;
    c.body = r.body;
    return net::StatusFromResponse(c);
  }
  return r.file->path;
}

net::Response Proxy::ServeObject(const net::Request& req, const std::string& sha256) {
  return impl_->ServeObject(req, sha256, /*stream_ok=*/true);
}
net::Response Proxy::ServeChunk(const net::Request& req, const std::string& sha256,
                                const std::string& range) {
  return impl_->ServeChunk(req, sha256, range);
}
std::optional<net::Response> Proxy::ServeCached(const net::Request& req, ObjectKind kind) {
  return impl_->ServeCached(req, kind);
}
Result<std::string> Proxy::UpstreamHealth() { return impl_->UpstreamHealth(); }
ProxyStats Proxy::stats() const { return impl_->stats(); }
const ProxyOptions& Proxy::options() const { return impl_->options(); }

std::string Proxy::MetricsText() const {
  const ProxyStats s = stats();
  std::string out;
  auto metric = [&](const char* name, const char* help, const char* type, double v) {
    char line[320];
    std::snprintf(line, sizeof(line), "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name,
                  type, name, v);
    out += line;
  };
  metric("ds_proxy_hits_total", "Requests answered from a fresh cache entry.", "counter",
         static_cast<double>(s.hits));
  metric("ds_proxy_misses_total", "Requests that needed the upstream.", "counter",
         static_cast<double>(s.misses));
  metric("ds_proxy_coalesced_total", "Misses that waited for another request's fetch.", "counter",
         static_cast<double>(s.coalesced));
  metric("ds_proxy_streamed_while_arriving_total",
         "Answers streamed from an upstream fetch still in progress.", "counter",
         static_cast<double>(s.streamed_while_arriving));
  metric("ds_proxy_stream_readers_dropped_total",
         "Readers of an arriving object dropped for falling too far behind.", "counter",
         static_cast<double>(s.stream_readers_dropped));
  metric("ds_proxy_negative_hits_total", "Requests answered by a cached 404.", "counter",
         static_cast<double>(s.negative_hits));
  metric("ds_proxy_stale_served_total", "Expired entries served while the upstream failed.",
         "counter", static_cast<double>(s.stale_served));
  metric("ds_proxy_upstream_fetches_total", "Requests made to the upstream.", "counter",
         static_cast<double>(s.upstream_fetches));
  metric("ds_proxy_upstream_failures_total", "Upstream requests that failed (transport, 5xx).",
         "counter", static_cast<double>(s.upstream_failures));
  metric("ds_proxy_verify_failures_total", "Upstream objects refused: SHA-256 mismatch.", "counter",
         static_cast<double>(s.verify_failures));
  metric("ds_proxy_bytes_served_total", "Object bytes answered (whole objects).", "counter",
         static_cast<double>(s.bytes_served));
  metric("ds_proxy_bytes_fetched_total", "Bytes downloaded from the upstream.", "counter",
         static_cast<double>(s.bytes_fetched));
  metric("ds_proxy_cache_bytes", "Bytes in the cache (with per-entry overhead).", "gauge",
         static_cast<double>(s.cache_bytes));
  metric("ds_proxy_cache_entries", "Entries in the cache.", "gauge",
         static_cast<double>(s.cache_entries));
  metric("ds_proxy_evictions_total", "Entries evicted to stay under the size bound.", "counter",
         static_cast<double>(s.evictions));
  metric("ds_proxy_breaker_state", "Upstream circuit breaker: 0 closed, 1 open, 2 half-open.",
         "gauge", s.breaker_state);
  metric("ds_proxy_breaker_opens_total", "Times the circuit breaker opened.", "counter",
         static_cast<double>(s.breaker_opens));
  metric("ds_proxy_streams_upstream_total", "Stream descriptors answered with an upstream delta.",
         "counter", static_cast<double>(s.streams_upstream));
  metric("ds_proxy_streams_ondemand_total", "Stream descriptors answered with an on-demand delta.",
         "counter", static_cast<double>(s.streams_ondemand));
  metric("ds_proxy_streams_chain_total",
         "Stream descriptors answered with a chain of upstream deltas.", "counter",
         static_cast<double>(s.streams_chain));
  metric("ds_proxy_streams_full_total", "Stream descriptors answered with the full artifact.",
         "counter", static_cast<double>(s.streams_full));
  metric("ds_proxy_streams_pending_total", "Stream requests answered 202 (delta being made).",
         "counter", static_cast<double>(s.streams_pending));
  metric("ds_proxy_delta_bytes_saved_total",
         "Full size minus delta size, summed over the delta stream descriptors answered.",
         "counter", static_cast<double>(s.delta_bytes_saved));
  metric("ds_proxy_ondemand_jobs_queued", "On-demand delta jobs waiting.", "gauge",
         static_cast<double>(s.ondemand_queued));
  metric("ds_proxy_ondemand_jobs_running", "On-demand delta jobs running.", "gauge",
         static_cast<double>(s.ondemand_running));
  metric("ds_proxy_ondemand_jobs_done_total", "On-demand delta jobs that made a delta.", "counter",
         static_cast<double>(s.ondemand_done));
  metric("ds_proxy_ondemand_jobs_not_worth_total",
         "On-demand delta jobs whose delta was not smaller than the artifact.", "counter",
         static_cast<double>(s.ondemand_not_worth));
  metric("ds_proxy_ondemand_jobs_failed_total", "On-demand delta jobs that failed.", "counter",
         static_cast<double>(s.ondemand_failed));
  metric("ds_proxy_ondemand_jobs_refused_total", "On-demand delta jobs refused: queue full.",
         "counter", static_cast<double>(s.ondemand_refused));
  metric("ds_proxy_store_bytes", "Bytes of full artifacts and deltas kept under store/.", "gauge",
         static_cast<double>(s.store_bytes));
  metric("ds_proxy_rebuilds_total", "Full artifacts rebuilt from a keyframe and deltas.", "counter",
         static_cast<double>(s.rebuilds));
  metric("ds_proxy_rebuild_failures_total", "Rebuilds that failed (and answered 503).", "counter",
         static_cast<double>(s.rebuild_failures));
  metric("ds_proxy_store_chain_breaks_total",
         "Versions kept in full because no chain of deltas reaches them.", "counter",
         static_cast<double>(s.chain_breaks));
  metric("ds_proxy_transient_relays_total", "Objects relayed without being kept (--store full).",
         "counter", static_cast<double>(s.transient_relays));
  metric("ds_proxy_ondemand_stored_bytes", "Bytes of on-demand patches and chunk maps stored.",
         "gauge", static_cast<double>(s.ondemand_stored_bytes));
  metric("ds_proxy_ondemand_evicted_total",
         "On-demand deltas removed to keep the store within --ondemand-max-mib.", "counter",
         static_cast<double>(s.ondemand_evicted));
  return out;
}

Result<std::shared_ptr<Proxy>> RegisterProxyApi(net::Server* server, const ProxyOptions& options) {
  DS_ASSIGN_OR_RETURN(std::unique_ptr<Proxy> opened, Proxy::Open(options));
  std::shared_ptr<Proxy> proxy = std::move(opened);
  using net::Request;
  using net::Response;

  server->Route("GET", "/v1/health", [proxy, server_version = options.server_version](Request&) {
    Result<std::string> up = proxy->UpstreamHealth();
    json j{{"status", "ok"},
           {"role", "proxy"},
           {"server", server_version},
           {"upstream", proxy->options().upstream},
           {"upstream_reachable", up.ok()}};
    if (up.ok()) {
      json u = json::parse(*up, nullptr, false);
      if (!u.is_discarded()) j["upstream_health"] = u;
    } else {
      j["upstream_error"] = up.status().ToString();
    }
    return Response::Json(200, j.dump()).With("Cache-Control", "no-cache");
  });
  std::shared_ptr<UdpCarrier> udp;
  if (options.udp_port >= 0) {
    UdpCarrierOptions uo;
    uo.host = options.udp_host;
    uo.port = static_cast<uint16_t>(options.udp_port);
    DS_ASSIGN_OR_RETURN(
        udp, UdpCarrier::Register(server, uo,
                                  [weak = std::weak_ptr<Proxy>(proxy)](
                                      const std::string& path) -> Result<std::string> {
                                    auto p = weak.lock();
                                    if (!p) return Error(ErrorCode::kUnavailable, "proxy stopped");
                                    return p->ObjectFile(path);
                                  }));
  }
  // The metrics route keeps the UDP carrier alive as long as the server's routes.
  server->Route("GET", "/metrics", [proxy, server, udp](Request&) {
    return Response::Text(
        200,
        proxy->MetricsText() + (udp ? udp->MetricsText() : std::string()) + server->MetricsText(),
        "text/plain; version=0.0.4");
  });

  auto route = [&](const char* pattern, ObjectKind kind) {
    server->Route("GET", pattern, [proxy, kind](Request& req) -> Response {
      std::string sha;
      if (kind == ObjectKind::kBlob) {
        sha = req.params.count("sha256") ? req.params["sha256"] : req.params["sha"];
        if (!IsHex64(sha)) {
          return Response::FromStatus(
              Error(ErrorCode::kInvalidArgument, "an object is named by 64 lower-case hex digits"));
        }
      }
      return proxy->Serve(req, kind, sha);
    });
  };
  route("/v1/deltas/{id}/data", ObjectKind::kDeclared);
  // Blobs and chunk maps: the proxy's own on-demand objects first, then the cache.
  for (const char* p : {"/v1/blobs/{sha256}", "/v1/chunkmaps/{sha}"}) {
    server->Route("GET", p, [proxy](Request& req) -> Response {
      const std::string sha = req.params.count("sha256") ? req.params["sha256"] : req.params["sha"];
      if (!IsHex64(sha)) {
        return Response::FromStatus(
            Error(ErrorCode::kInvalidArgument, "an object is named by 64 lower-case hex digits"));
      }
      return proxy->ServeObject(req, sha);
    });
  }
  // Chunks, the hot path of every delta stream: a cached chunk is answered on the I/O thread.
  server->Route(
      "GET", "/v1/chunks/{sha}/{range}",
      [proxy](Request& req) -> Response {
        return proxy->ServeChunk(req, req.params["sha"], req.params["range"]);
      },
      [proxy](Request& req) { return proxy->ServeCached(req, ObjectKind::kOpaque); });
  server->Route("GET", "/v1/artifacts/{artifact}/stream",
                [proxy](Request& req) { return proxy->Stream(req); });
  for (const char* p :
       {"/v1/artifacts", "/v1/artifacts/{artifact}/versions", "/v1/artifacts/{artifact}/latest",
        "/v1/artifacts/{artifact}/versions/{version}", "/v1/artifacts/{artifact}/metadata",
        "/v1/artifacts/{artifact}/deltas", "/v1/deltas/{id}", "/v1/jobs", "/v1/jobs/{id}"}) {
    route(p, ObjectKind::kMutable);
  }

  // Writes go to the master: 405. A publish body is refused at its first piece.
  auto read_only = [] {
    return Response::Json(405, json{{"error",
                                     {{"code", static_cast<int>(ErrorCode::kUnsupported)},
                                      {"name", std::string(ErrorCodeName(ErrorCode::kUnsupported))},
                                      {"message",
                                       "this is a read-only proxy repository; publish and "
                                       "manage tokens on the master"}}}}
                                   .dump())
        .With("Allow", "GET, HEAD");
  };
  class RefuseSink : public net::BodySink {
   public:
    Status Write(ByteView) override { return Error(ErrorCode::kUnsupported, "read-only proxy"); }
  };
  net::StreamHandler publish;
  publish.begin = [](Request&) -> Result<std::unique_ptr<net::BodySink>> {
    return std::unique_ptr<net::BodySink>(std::make_unique<RefuseSink>());
  };
  publish.finish = [read_only](Request&, std::unique_ptr<net::BodySink>, Status) {
    return read_only();
  };
  server->StreamRoute("PUT", "/v1/artifacts/{artifact}/versions/{version}", std::move(publish));
  server->Route("POST", "/v1/tokens", [read_only](Request&) { return read_only(); });
  return proxy;
}

}  // namespace ds::repo
