#include "repo/proxy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"

namespace ds::repo {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kImmutableCacheControl = "public, max-age=31536000, immutable";
constexpr size_t kMaxNegativeEntries = 10000;
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
  bool immutable() const { return expires_ms == 0; }
};

json MetaJson(const EntryInfo& e) {
  return json{{"target", e.target}, {"size", e.size},
              {"etag", e.etag},     {"content_type", e.content_type},
              {"sha256", e.sha256}, {"expires_ms", e.expires_ms}};
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
    std::lock_guard<std::mutex> lock(mu_);
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
      f.time = fs::last_write_time(DataPath(key), ec);
      found.push_back(std::move(f));
    }
    std::sort(found.begin(), found.end(),
              [](const Found& a, const Found& b) { return a.time < b.time; });
    std::lock_guard<std::mutex> lock(mu_);
    for (Found& f : found) InsertLocked(std::move(f.info));
    EvictLocked("");
    return Status::Ok();
  }

  net::Response Serve(const net::Request& req, ObjectKind kind, const std::string& expected) {
    std::string target = req.path;
    if (kind == ObjectKind::kMutable && !req.query.empty()) target += "?" + req.query;
    const std::string key =
        ToHex(Sha256::Of(ByteView(reinterpret_cast<const uint8_t*>(target.data()), target.size())));
    std::shared_ptr<Flight> flight;
    bool leader = false;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (auto n = negative_.find(target); n != negative_.end()) {
        if (MonoMs() < n->second.expires) {
          ++stats_.negative_hits;
          return net::Response::FromStatus(n->second.status).With("X-Deltastream-Cache", "hit");
        }
        negative_.erase(n);
      }
      if (auto it = index_.find(key); it != index_.end()) {
        const EntryInfo& e = it->second.info;
        if (e.immutable() || NowMs() < e.expires_ms) {
          lru_.splice(lru_.begin(), lru_, it->second.lru);
          ++stats_.hits;
          stats_.bytes_served += e.size;
          return FileResponse(e, "hit");
        }
      }
      ++stats_.misses;
      if (auto f = flights_.find(key); f != flights_.end()) {
        flight = f->second;
        ++stats_.coalesced;
      } else {
        flight = std::make_shared<Flight>();
        flights_[key] = flight;
        leader = true;
      }
    }
    if (leader) {
      Result<EntryInfo> r = Fetch(key, target, kind, expected);
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
    } else {
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
    std::lock_guard<std::mutex> lock(mu_);
    ProxyStats s = stats_;
    s.cache_bytes = cache_bytes_;
    s.cache_entries = index_.size();
    s.breaker_state = breaker_.state();
    s.breaker_opens = breaker_.opens();
    return s;
  }

  const ProxyOptions& options() const { return options_; }

 private:
  struct Flight {
    bool done = false;
    Result<EntryInfo> result = Status(ErrorCode::kInternal, "flight not finished");
  };
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

  net::Response FileResponse(const EntryInfo& e, const char* cache) const {
    net::Response r;
    r.status = 200;
    r.file = net::FileBody{DataPath(e.key), 0, e.size};
    r.With("Content-Type", e.content_type.empty() ? "application/octet-stream" : e.content_type);
    if (!e.etag.empty()) r.With("ETag", e.etag);
    if (!e.sha256.empty()) r.With("X-Content-SHA256", e.sha256);
    r.With("Cache-Control", e.immutable() ? kImmutableCacheControl : "no-cache");
    r.With("X-Deltastream-Cache", cache);
    return r;
  }

  net::Response StaleResponse(const EntryInfo& e) const {
    return FileResponse(e, "stale")
        .With("Warning", "110 - \"Response is Stale\"")
        .With("X-Deltastream-Stale", "1");
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
      if (IsUpstreamFailure(r.status().code())) {
        breaker_.Failure();
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.upstream_failures;
      } else {
        breaker_.Success();  // The upstream answered.
      }
      return r.status();
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
  return impl_->Serve(req, kind, expected_sha256);
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
  server->Route("GET", "/metrics", [proxy, server](Request&) {
    return Response::Text(200, proxy->MetricsText() + server->MetricsText(),
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
  route("/v1/blobs/{sha256}", ObjectKind::kBlob);
  route("/v1/chunkmaps/{sha}", ObjectKind::kBlob);
  route("/v1/deltas/{id}/data", ObjectKind::kDeclared);
  route("/v1/chunks/{sha}/{range}", ObjectKind::kOpaque);
  for (const char* p :
       {"/v1/artifacts", "/v1/artifacts/{artifact}/versions", "/v1/artifacts/{artifact}/latest",
        "/v1/artifacts/{artifact}/versions/{version}", "/v1/artifacts/{artifact}/metadata",
        "/v1/artifacts/{artifact}/deltas", "/v1/artifacts/{artifact}/stream", "/v1/deltas/{id}",
        "/v1/jobs", "/v1/jobs/{id}"}) {
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
