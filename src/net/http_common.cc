// The Beast- and curl-free parts of the HTTP layer: Request and Response helpers, the mapping
// between ErrorCodes and HTTP statuses (and back from an error body), percent-encoding.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "net/http.h"
#include "net/http_internal.h"

namespace ds::net {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view FindHeader(const std::vector<std::pair<std::string, std::string>>& headers,
                            std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (EqualsIgnoreCase(key, name)) return value;
  }
  return {};
}

}  // namespace

namespace internal {

std::optional<std::string> PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      const int hi = HexValue(s[i + 1]);
      const int lo = HexValue(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace internal

std::string_view Request::Header(std::string_view name) const { return FindHeader(headers, name); }

std::optional<std::string> Request::QueryParam(std::string_view name) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    const std::optional<std::string> key = internal::PercentDecode(pair.substr(0, eq), true);
    if (!key || *key != name) continue;
    if (eq == std::string_view::npos) return std::string();
    // A malformed escape in the value is taken literally rather than hiding the parameter.
    std::optional<std::string> value = internal::PercentDecode(pair.substr(eq + 1), true);
    return value ? std::move(*value) : std::string(pair.substr(eq + 1));
  }
  return std::nullopt;
}

std::string_view ClientResponse::Header(std::string_view name) const {
  return FindHeader(headers, name);
}

Response Response::Json(int status, std::string json) {
  Response r;
  r.status = status;
  r.body = std::move(json);
  r.headers.emplace_back("Content-Type", "application/json");
  return r;
}

Response Response::Text(int status, std::string text, std::string content_type) {
  Response r;
  r.status = status;
  r.body = std::move(text);
  r.headers.emplace_back("Content-Type", std::move(content_type));
  return r;
}

Response Response::FromStatus(const Status& s) {
  nlohmann::json error = {{"code", static_cast<int>(s.code())},
                          {"name", std::string(ErrorCodeName(s.code()))},
                          {"message", s.message()}};
  nlohmann::json doc = {{"error", std::move(error)}};
  // Replace invalid UTF-8 (a message may quote raw bytes) instead of throwing.
  return Json(HttpStatusFor(s.code()),
              doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

Response Response::Streamed(int status, std::string content_type, std::shared_ptr<BodyStream>* out,
                            std::optional<uint64_t> length) {
  Response r;
  r.status = status;
  if (content_type == "text/event-stream") r.headers.emplace_back("Cache-Control", "no-cache");
  r.headers.emplace_back("Content-Type", std::move(content_type));
  r.stream = std::make_shared<BodyStream>();
  r.stream_length = length;
  *out = r.stream;
  return r;
}

// ---- BodyStream ----

BodyStream::BodyStream() : state_(std::make_shared<State>()) {}

BodyStream::~BodyStream() { Close(); }

bool BodyStream::Write(std::string data) {
  std::function<void()> wake;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed || state_->gone) return false;
    if (data.empty()) return true;
    state_->pending += data.size();
    state_->queue.push_back(std::move(data));
    wake = std::move(state_->wake);
    state_->wake = nullptr;
  }
  if (wake) wake();
  return true;
}

void BodyStream::Close() {
  std::function<void()> wake, below;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->closed) return;
    state_->closed = true;
    wake = std::move(state_->wake);
    state_->wake = nullptr;
    below = std::move(state_->below);  // Dropped, not called: the producer is done.
    state_->below = nullptr;
  }
  state_->cv.notify_all();
  if (wake) wake();
}

size_t BodyStream::pending() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->pending;
}

bool BodyStream::gone() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->gone;
}

bool BodyStream::WaitBelow(size_t bytes, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [&] { return state_->pending <= bytes || state_->gone || state_->closed; });
  return state_->pending <= bytes && !state_->gone && !state_->closed;
}

bool BodyStream::OnBelow(size_t bytes, std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->pending <= bytes || state_->gone || state_->closed) return false;
  state_->below_at = bytes;
  state_->below = std::move(fn);
  return true;
}

BodyStream::State::Take BodyStream::State::TakeOrWait(std::string* out,
                                                      std::function<void()> wake_fn) {
  std::function<void()> drained;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (queue.empty()) {
      if (closed || gone) return Take::kEnd;
      wake = std::move(wake_fn);
      return Take::kWait;
    }
    *out = std::move(queue.front());
    queue.pop_front();
    pending -= out->size();
    if (below && pending <= below_at) {
      drained = std::move(below);
      below = nullptr;
    }
  }
  cv.notify_all();
  if (drained) drained();  // May Write(): the lock is not held.
  return Take::kData;
}

void BodyStream::State::MarkGone() {
  std::function<void()> dropped, drained;
  {
    std::lock_guard<std::mutex> lock(mu);
    gone = true;
    queue.clear();
    pending = 0;
    dropped = std::move(wake);
    wake = nullptr;
    drained = std::move(below);
    below = nullptr;
  }
  cv.notify_all();
  if (drained) drained();  // The producer learns the client left (its Write fails).
  // |dropped| (which may hold the connection) is destroyed here, outside the lock.
}

int HttpStatusFor(ErrorCode code) {
  switch (code) {
    case ErrorCode::kOk:
      return 200;
    case ErrorCode::kInvalidArgument:
      return 400;
    case ErrorCode::kUnauthenticated:
      return 401;
    case ErrorCode::kPermissionDenied:
      return 403;
    case ErrorCode::kNotFound:
      return 404;
    case ErrorCode::kAlreadyExists:
      return 409;
    case ErrorCode::kTooLarge:
      return 413;
    case ErrorCode::kDigestMismatch:
      return 422;
    case ErrorCode::kUnavailable:
      return 503;
    case ErrorCode::kNoSpace:
      return 507;
    default:
      return 500;
  }
}

Status StatusFromResponse(const ClientResponse& r) {
  if ((r.status >= 200 && r.status < 300) || r.status == 304) return Status::Ok();
  std::string message = "HTTP " + std::to_string(r.status);
  const nlohmann::json doc = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_object()) {
    const auto error = doc.find("error");
    if (error != doc.end() && error->is_object()) {
      const auto msg = error->find("message");
      if (msg != error->end() && msg->is_string()) {
        message += ": " + msg->get<std::string>();
      }
      const auto code = error->find("code");
      if (code != error->end() && code->is_number_integer()) {
        const int64_t n = code->get<int64_t>();
        if (n > 0 && n < 256 && ErrorCodeName(static_cast<ErrorCode>(n)) != "unknown") {
          return Status(static_cast<ErrorCode>(n), std::move(message));
        }
      }
    }
  }
  ErrorCode code;
  switch (r.status) {
    case 400:
    case 416:
      code = ErrorCode::kInvalidArgument;
      break;
    case 401:
      code = ErrorCode::kUnauthenticated;
      break;
    case 403:
      code = ErrorCode::kPermissionDenied;
      break;
    case 404:
    case 410:
      code = ErrorCode::kNotFound;
      break;
    case 409:
      code = ErrorCode::kAlreadyExists;
      break;
    case 413:
    case 431:
      code = ErrorCode::kTooLarge;
      break;
    case 422:
      code = ErrorCode::kDigestMismatch;
      break;
    case 408:
    case 429:
    case 502:
    case 503:
    case 504:
      code = ErrorCode::kUnavailable;
      break;
    case 507:
      code = ErrorCode::kNoSpace;
      break;
    default:
      code = r.status >= 500 && r.status < 600 ? ErrorCode::kInternal : ErrorCode::kProtocol;
      break;
  }
  return Status(code, std::move(message));
}

namespace {

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  while (true) {
    const size_t slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

bool IsParam(std::string_view segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Parses a non-empty run of decimal digits; nullopt on anything else or overflow.
std::optional<uint64_t> ParseDecimal(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

}  // namespace

namespace internal {

void Router::Add(std::string method, std::string_view pattern, bool streamed, Handler handler,
                 StreamHandler stream, AsyncHandler async, FastHandler fast) {
  RouteEntry entry;
  entry.method = std::move(method);
  for (const std::string_view segment : SplitPath(pattern)) entry.segments.emplace_back(segment);
  entry.streamed = streamed;
  entry.handler = std::move(handler);
  entry.stream = std::move(stream);
  entry.async = std::move(async);
  entry.fast = std::move(fast);
  routes_.push_back(std::move(entry));
}

RouteMatch Router::Match(std::string_view method, std::string_view path) const {
  RouteMatch result;
  const std::vector<std::string_view> raw = SplitPath(path);
  std::vector<std::string> decoded;
  decoded.reserve(raw.size());
  for (const std::string_view segment : raw) {
    std::optional<std::string> d = PercentDecode(segment, false);
    if (!d) {
      result.kind = RouteMatch::Kind::kBadRequest;
      result.message = "malformed percent-encoding in the path";
      return result;
    }
    decoded.push_back(std::move(*d));
  }
  std::vector<std::string> allowed;
  int best_score = -1;
  for (const RouteEntry& route : routes_) {
    if (route.segments.size() != decoded.size()) continue;
    int score = 0;
    bool match = true;
    bool bad_param = false;
    for (size_t i = 0; i < decoded.size() && match; ++i) {
      if (IsParam(route.segments[i])) {
        if (decoded[i].find('/') != std::string::npos ||
            decoded[i].find('\0') != std::string::npos) {
          bad_param = true;
        }
      } else if (route.segments[i] == decoded[i]) {
        ++score;
      } else {
        match = false;
      }
    }
    if (!match) continue;
    const bool method_ok = route.method == method || (method == "HEAD" && route.method == "GET");
    auto add_allowed = [&allowed](const std::string& m) {
      for (const std::string& a : allowed) {
        if (a == m) return;
      }
      allowed.push_back(m);
    };
    add_allowed(route.method);
    if (route.method == "GET") add_allowed("HEAD");
    if (!method_ok || score <= best_score) continue;
    best_score = score;
    if (bad_param) {
      result.kind = RouteMatch::Kind::kBadRequest;
      result.route = nullptr;
      result.message = "a path parameter contains '/' or NUL";
      continue;
    }
    result.kind = RouteMatch::Kind::kFound;
    result.route = &route;
    result.params.clear();
    for (size_t i = 0; i < decoded.size(); ++i) {
      const std::string& seg = route.segments[i];
      if (IsParam(seg)) result.params[seg.substr(1, seg.size() - 2)] = decoded[i];
    }
  }
  if (best_score >= 0) return result;
  if (!allowed.empty()) {
    result.kind = RouteMatch::Kind::kMethodNotAllowed;
    for (const std::string& m : allowed) {
      if (!result.allow.empty()) result.allow += ", ";
      result.allow += m;
    }
  }
  return result;
}

ByteRange ParseRange(std::string_view header, uint64_t size) {
  ByteRange none;
  header = Trim(header);
  constexpr std::string_view kUnit = "bytes=";
  if (header.size() < kUnit.size() || ToLower(header.substr(0, kUnit.size())) != kUnit) {
    return none;
  }
  std::string_view spec = Trim(header.substr(kUnit.size()));
  if (spec.find(',') != std::string_view::npos) return none;  // Several ranges: send it all.
  const size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return none;
  const std::string_view a = Trim(spec.substr(0, dash));
  const std::string_view b = Trim(spec.substr(dash + 1));
  ByteRange r;
  if (a.empty()) {  // "-n": the last n bytes.
    const std::optional<uint64_t> n = ParseDecimal(b);
    if (!n) return none;
    if (*n == 0 || size == 0) {
      r.kind = RangeKind::kUnsatisfiable;
      return r;
    }
    r.kind = RangeKind::kSatisfiable;
    r.first = size - std::min(*n, size);
    r.last = size - 1;
    return r;
  }
  const std::optional<uint64_t> first = ParseDecimal(a);
  if (!first) return none;
  uint64_t last = UINT64_MAX;
  if (!b.empty()) {
    const std::optional<uint64_t> l = ParseDecimal(b);
    if (!l || *l < *first) return none;
    last = *l;
  }
  if (*first >= size) {
    r.kind = RangeKind::kUnsatisfiable;
    return r;
  }
  r.kind = RangeKind::kSatisfiable;
  r.first = *first;
  r.last = std::min(last, size - 1);
  return r;
}

bool EtagMatches(std::string_view if_none_match, std::string_view etag) {
  auto strip_weak = [](std::string_view t) {
    t = Trim(t);
    if (t.size() >= 2 && (t[0] == 'W' || t[0] == 'w') && t[1] == '/') t.remove_prefix(2);
    return t;
  };
  etag = strip_weak(etag);
  if (etag.empty()) return false;
  while (!if_none_match.empty()) {
    const size_t comma = if_none_match.find(',');
    const std::string_view item = strip_weak(if_none_match.substr(0, comma));
    if (item == "*" || item == etag) return true;
    if (comma == std::string_view::npos) break;
    if_none_match.remove_prefix(comma + 1);
  }
  return false;
}

namespace {
constexpr std::string_view kMethodNames[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "other"};
constexpr double kBucketBounds[] = {0.005, 0.025, 0.1, 0.5, 1, 5};
}  // namespace

Metrics::Metrics() {
  for (auto& row : requests_) {
    for (auto& cell : row) cell.store(0);
  }
  for (auto& b : buckets_) b.store(0);
}

void Metrics::RequestDone(std::string_view method, int status, double seconds) {
  int m = kMethods - 1;
  for (int i = 0; i < kMethods - 1; ++i) {
    if (kMethodNames[i] == method) m = i;
  }
  const int c = std::clamp(status / 100, 1, 5) - 1;
  requests_[m][c].fetch_add(1, std::memory_order_relaxed);
  int b = kBuckets - 1;
  for (int i = 0; i < kBuckets - 1; ++i) {
    if (seconds <= kBucketBounds[i]) {
      b = i;
      break;
    }
  }
  buckets_[b].fetch_add(1, std::memory_order_relaxed);
  duration_sum_us_.fetch_add(static_cast<uint64_t>(seconds * 1e6), std::memory_order_relaxed);
  duration_count_.fetch_add(1, std::memory_order_relaxed);
}

std::string Metrics::Text() const {
  std::string out;
  out += "# HELP ds_http_requests_total HTTP requests answered, by method and status class.\n";
  out += "# TYPE ds_http_requests_total counter\n";
  for (int m = 0; m < kMethods; ++m) {
    for (int c = 0; c < kClasses; ++c) {
      const uint64_t n = requests_[m][c].load(std::memory_order_relaxed);
      if (n == 0) continue;
      out += "ds_http_requests_total{method=\"" + std::string(kMethodNames[m]) + "\",code=\"" +
             std::to_string(c + 1) + "xx\"} " + std::to_string(n) + "\n";
    }
  }
  out += "# HELP ds_http_requests_in_flight Requests being served.\n";
  out += "# TYPE ds_http_requests_in_flight gauge\n";
  out += "ds_http_requests_in_flight " + std::to_string(in_flight.load()) + "\n";
  out += "# HELP ds_http_connections_open Open client connections.\n";
  out += "# TYPE ds_http_connections_open gauge\n";
  out += "ds_http_connections_open " + std::to_string(connections_open.load()) + "\n";
  out += "# HELP ds_http_bytes_received_total Request bytes received (headers and bodies).\n";
  out += "# TYPE ds_http_bytes_received_total counter\n";
  out += "ds_http_bytes_received_total " + std::to_string(bytes_received.load()) + "\n";
  out += "# HELP ds_http_bytes_sent_total Response bytes sent (headers and bodies).\n";
  out += "# TYPE ds_http_bytes_sent_total counter\n";
  out += "ds_http_bytes_sent_total " + std::to_string(bytes_sent.load()) + "\n";
  out += "# HELP ds_http_request_duration_seconds Time from request header to response sent.\n";
  out += "# TYPE ds_http_request_duration_seconds histogram\n";
  uint64_t cumulative = 0;
  for (int i = 0; i < kBuckets; ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    std::string le = "+Inf";
    if (i < kBuckets - 1) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%g", kBucketBounds[i]);
      le = buf;
    }
    out += "ds_http_request_duration_seconds_bucket{le=\"" + le + "\"} " +
           std::to_string(cumulative) + "\n";
  }
  char sum[64];
  std::snprintf(sum, sizeof(sum), "%.6f",
                static_cast<double>(duration_sum_us_.load(std::memory_order_relaxed)) / 1e6);
  out += "ds_http_request_duration_seconds_sum " + std::string(sum) + "\n";
  out += "ds_http_request_duration_seconds_count " +
         std::to_string(duration_count_.load(std::memory_order_relaxed)) + "\n";
  return out;
}

}  // namespace internal

std::string UrlEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

}  // namespace ds::net
