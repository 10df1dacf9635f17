#include "repo/proxy_udp.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "fec/fec.h"
#include "net/http.h"
#include "net/udp.h"
#include "stream/stream.h"

namespace ds::repo {
namespace {

using json = nlohmann::json;

constexpr int64_t kTickMicros = 250;  // Pacing granularity of the sessions' timer.

fec::Micros NowMicros() {
  return static_cast<fec::Micros>(std::chrono::duration_cast<std::chrono::microseconds>(
                                      std::chrono::steady_clock::now().time_since_epoch())
                                      .count());
}

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string PeerBytes(const net::UdpPeer& p) {
  return std::string(reinterpret_cast<const char*>(&p.addr), p.len);
}

net::UdpPeer PeerFrom(const std::string& bytes) {
  net::UdpPeer p;
  p.len = static_cast<socklen_t>(std::min(bytes.size(), sizeof(p.addr)));
  std::memcpy(&p.addr, bytes.data(), p.len);
  return p;
}

}  // namespace

class UdpCarrier::Impl : public std::enable_shared_from_this<UdpCarrier::Impl> {
 public:
  Impl(UdpCarrierOptions options, ObjectFileFn object_file)
      : options_(std::move(options)), object_file_(std::move(object_file)) {}

  ~Impl() {
    if (socket_) socket_->Close();
  }

  Status Open(net::Server* server) {
    if (sodium_init() < 0) return Error(ErrorCode::kInternal, "libsodium failed to initialize");
    net::UdpOptions o;
    o.host = options_.host;
    o.port = options_.port;
    std::weak_ptr<Impl> weak = weak_from_this();
    DS_ASSIGN_OR_RETURN(socket_, server->OpenUdp(o, [weak](const net::UdpPeer& from, ByteView d) {
      if (auto self = weak.lock()) self->OnDatagram(from, d);
    }));
    return Status::Ok();
  }

  // The pacing timer runs only while sessions exist (an idle proxy does not wake up).
  void StartTickingLocked() {
    if (ticking_) return;
    ticking_ = true;
    std::weak_ptr<Impl> weak = weak_from_this();
    socket_->Every(kTickMicros, [weak] {
      auto self = weak.lock();
      return self && self->Tick();
    });
  }

  // POST /v1/udp/sessions {"object": sha, "chunk_map": sha, "first": n, "last": n}
  net::Response OpenSession(const net::Request& req) {
    const json body = json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("object") || !body["object"].is_string() ||
        !body.contains("chunk_map") || !body["chunk_map"].is_string()) {
      return net::Response::FromStatus(Error(
          ErrorCode::kInvalidArgument, "a session names an \"object\" and its \"chunk_map\""));
    }
    const std::string object = body["object"], chunk_map = body["chunk_map"];
    if (!IsHex64(object) || !IsHex64(chunk_map)) {
      return net::Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "object and chunk_map are 64 lower-case hex digits"));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (sessions_.size() >= options_.max_sessions) {
        return net::Response::FromStatus(
                   Error(ErrorCode::kUnavailable, "too many UDP sessions; use HTTP or retry"))
            .With("Retry-After", "5");
      }
    }
    // The chunk map: its root must be its name, its total the object's size.
    Result<std::string> map_path = object_file_("/v1/chunkmaps/" + chunk_map);
    if (!map_path.ok()) return net::Response::FromStatus(map_path.status());
    Result<Bytes> map_bytes = ReadFile(*map_path, 64u << 20);
    if (!map_bytes.ok()) return net::Response::FromStatus(map_bytes.status());
    Result<stream::ChunkMap> map = stream::ParseChunkMap(*map_bytes);
    if (!map.ok()) return net::Response::FromStatus(map.status());
    if (ToHex(map->root()) != chunk_map) {
      return net::Response::FromStatus(
          Error(ErrorCode::kDigestMismatch, "chunk map does not match its name"));
    }
    Result<std::string> object_path = object_file_("/v1/blobs/" + object);
    if (!object_path.ok()) return net::Response::FromStatus(object_path.status());
    const int fd = ::open(object_path->c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return net::Response::FromStatus(ErrnoStatus("open " + *object_path, errno));
    auto file = std::shared_ptr<int>(new int(fd), [](int* p) {
      ::close(*p);
      delete p;
    });
    struct stat st;
    if (::fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != map->total_size()) {
      return net::Response::FromStatus(
          Error(ErrorCode::kDigestMismatch, "the object's size does not match its chunk map"));
    }
    const uint64_t leaves = map->leaf_count();
    uint64_t first = 0, last = leaves == 0 ? 0 : leaves - 1;
    if (body.contains("first") && body["first"].is_number_unsigned()) first = body["first"];
    if (body.contains("last") && body["last"].is_number_unsigned()) last = body["last"];
    if (leaves == 0 || first > last || last >= leaves) {
      return net::Response::FromStatus(
          Error(ErrorCode::kInvalidArgument, "leaf range outside the object"));
    }
    std::vector<fec::ChunkSpec> chunks;
    chunks.reserve(last - first + 1);
    for (uint64_t i = first; i <= last; ++i) {
      fec::ChunkSpec c;
      c.offset = map->LeafOffset(i);
      c.length = static_cast<uint32_t>(map->LeafLength(i));
      c.sha256 = map->leaves()[i];
      chunks.push_back(c);
    }
    fec::SessionParams params;
    randombytes_buf(&params.session_id, sizeof(params.session_id));
    randombytes_buf(params.key.data(), params.key.size());
    Bytes token(16);
    randombytes_buf(token.data(), token.size());
    params.token = ToHex(Sha256::Of(token)).substr(0, 32);
    auto read = [file](uint64_t offset, std::span<uint8_t> out) -> Status {
      size_t done = 0;
      while (done < out.size()) {
        const ssize_t n =
            ::pread(*file, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Error(ErrorCode::kIoError, "short read of the object");
        done += static_cast<size_t>(n);
      }
      return Status::Ok();
    };
    Result<std::unique_ptr<fec::UdpSender>> sender =
        fec::UdpSender::Create(params, std::move(chunks), read);
    if (!sender.ok()) return net::Response::FromStatus(sender.status());
    {
      std::lock_guard<std::mutex> lock(mu_);
      sessions_[params.session_id] = std::move(sender).value();
      ++stats_.sessions_opened;
      StartTickingLocked();
    }
    const json answer{{"session_id", std::to_string(params.session_id)},
                      {"key", ToHex(ByteView(params.key.data(), params.key.size()))},
                      {"token", params.token},
                      {"port", socket_->port()},
                      {"first", first},
                      {"last", last}};
    return net::Response::Json(201, answer.dump()).With("Cache-Control", "no-store");
  }

  uint16_t port() const { return socket_ ? socket_->port() : 0; }

  UdpCarrierStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    UdpCarrierStats s = stats_;
    s.sessions_active = sessions_.size();
    return s;
  }

 private:
  // On the socket's strand (as Tick): sessions are touched under |mu_| only.
  void OnDatagram(const net::UdpPeer& from, ByteView d) {
    Result<fec::Header> h = fec::PeekHeader(d);
    std::lock_guard<std::mutex> lock(mu_);
    if (!h.ok()) {
      ++stats_.datagrams_dropped;
      return;
    }
    auto it = sessions_.find(h->session_id);
    if (it == sessions_.end()) {
      ++stats_.datagrams_dropped;
      return;
    }
    const fec::Micros now = NowMicros();
    if (!it->second->OnDatagram(now, d, PeerBytes(from)).ok()) ++stats_.datagrams_dropped;
    FlushLocked(now, *it->second);
  }

  // False (the timer stops) once no session is left.
  bool Tick() {
    std::lock_guard<std::mutex> lock(mu_);
    const fec::Micros now = NowMicros();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      fec::UdpSender& s = *it->second;
      if (s.NextTimeout(now) <= now) FlushLocked(now, s);
      if (s.done() || s.state() == fec::UdpSender::State::kFailed) {
        const fec::SenderStats& st = s.stats();
        ++(s.done() ? stats_.sessions_done : stats_.sessions_failed);
        stats_.source_bytes += st.source_bytes_sent;
        stats_.repair_bytes += st.repair_bytes_sent;
        it = sessions_.erase(it);
        continue;
      }
      ++it;
    }
    if (sessions_.empty()) ticking_ = false;
    return ticking_;
  }

  void FlushLocked(fec::Micros now, fec::UdpSender& s) {
    while (std::optional<fec::OutDatagram> out = s.Poll(now)) {
      if (socket_->SendTo(PeerFrom(out->to), out->bytes).ok()) {
        ++stats_.datagrams_sent;
        stats_.bytes_sent += out->bytes.size();
      } else {
        break;  // Send buffer full: the rate controller sees the loss.
      }
    }
  }

  UdpCarrierOptions options_;
  ObjectFileFn object_file_;
  std::shared_ptr<net::UdpSocket> socket_;
  mutable std::mutex mu_;
  std::map<uint64_t, std::unique_ptr<fec::UdpSender>> sessions_;
  bool ticking_ = false;  // The pacing timer is armed.
  UdpCarrierStats stats_;
};

UdpCarrier::UdpCarrier(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
UdpCarrier::~UdpCarrier() = default;

Result<std::shared_ptr<UdpCarrier>> UdpCarrier::Register(net::Server* server,
                                                         UdpCarrierOptions options,
                                                         ObjectFileFn object_file) {
  auto impl = std::make_shared<Impl>(std::move(options), std::move(object_file));
  DS_RETURN_IF_ERROR(impl->Open(server));
  std::shared_ptr<UdpCarrier> carrier(new UdpCarrier(impl));
  std::weak_ptr<Impl> weak = impl;
  server->Route("POST", "/v1/udp/sessions", [weak](net::Request& req) {
    auto self = weak.lock();
    if (!self) {
      return net::Response::FromStatus(Error(ErrorCode::kUnavailable, "UDP carrier stopped"));
    }
    return self->OpenSession(req);
  });
  return carrier;
}

uint16_t UdpCarrier::port() const { return impl_->port(); }
UdpCarrierStats UdpCarrier::stats() const { return impl_->stats(); }

std::string UdpCarrier::MetricsText() const {
  const UdpCarrierStats s = stats();
  std::string out;
  auto metric = [&](const char* name, const char* help, const char* type, uint64_t v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n" +
           name + " " + std::to_string(v) + "\n";
  };
  metric("ds_proxy_udp_sessions_opened_total", "UDP carrier sessions opened.", "counter",
         s.sessions_opened);
  metric("ds_proxy_udp_sessions_done_total", "UDP sessions that delivered everything.", "counter",
         s.sessions_done);
  metric("ds_proxy_udp_sessions_failed_total", "UDP sessions that failed or went idle.", "counter",
         s.sessions_failed);
  metric("ds_proxy_udp_sessions_active", "UDP sessions in progress.", "gauge", s.sessions_active);
  metric("ds_proxy_udp_datagrams_sent_total", "UDP datagrams sent.", "counter", s.datagrams_sent);
  metric("ds_proxy_udp_bytes_sent_total", "UDP datagram bytes sent.", "counter", s.bytes_sent);
  metric("ds_proxy_udp_source_bytes_total", "Source symbol bytes of finished sessions.", "counter",
         s.source_bytes);
  metric("ds_proxy_udp_repair_bytes_total", "Repair symbol bytes of finished sessions.", "counter",
         s.repair_bytes);
  metric("ds_proxy_udp_datagrams_dropped_total", "UDP datagrams refused.", "counter",
         s.datagrams_dropped);
  return out;
}

}  // namespace ds::repo
