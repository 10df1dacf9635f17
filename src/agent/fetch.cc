#include "agent/fetch.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <thread>

#include "agent/controller.h"
#include "common/fs.h"
#include "common/hash.h"
#include "fec/fec.h"
#include "net/http.h"

namespace ds::agent {
namespace {

using nlohmann::json;

// The consumer reads what has arrived in pieces of up to this much: a DSPF applier rebuilds later
// segments ahead (on other threads) when a piece holds them whole.
constexpr uint64_t kConsumePiece = 4 << 20;

double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// A file descriptor closed on scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

Status PwriteAll(int fd, ByteView data, uint64_t offset, const std::string& path) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n =
        ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write " + path, errno);
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status PreadAll(int fd, std::span<uint8_t> out, uint64_t offset, const std::string& path) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read " + path, errno);
    }
    if (n == 0) return Error(ErrorCode::kIoError, "short read of " + path);
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

std::string BitmapHex(const std::vector<uint8_t>& bits) {
  Bytes packed((bits.size() + 7) / 8, 0);
  for (size_t i = 0; i < bits.size(); ++i) {
    if (bits[i]) packed[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
  }
  return ToHex(packed);
}

// For `status` only: resuming re-verifies the staging file itself.
Status SaveProgress(const FetchSpec& spec, const std::vector<uint8_t>& bits) {
  const json doc = {{"object", spec.object_sha256},
                    {"route", spec.route},
                    {"leaves", bits.size()},
                    {"verified", BitmapHex(bits)}};
  const std::string text = doc.dump();
  return WriteFileAtomic(spec.progress_path, AsBytes(text), 0600);
}

// The journal of the one leaf a request is receiving: "<staging>.leaf<N>", appended as bytes
// arrive (no fsync: it survives a killed process; after a power cut a damaged journal only fails
// verification and is fetched again).
class PartialLeaf {
 public:
  PartialLeaf(std::string staging, uint64_t first) : staging_(std::move(staging)), leaf_(first) {}
  ~PartialLeaf() {
    if (fd_ >= 0) ::close(fd_);
  }
  // Reads an earlier journal of the first leaf into |pending|; returns its size (0: none).
  uint64_t Load(uint64_t leaf_length, Bytes* pending) {
    Result<Bytes> b = ReadFile(Path(leaf_), leaf_length);
    if (!b.ok() || b->empty() || b->size() >= leaf_length) {
      ::unlink(Path(leaf_).c_str());
      return 0;
    }
    *pending = std::move(*b);
    return pending->size();
  }
  Status Append(uint64_t leaf, ByteView data) {
    if (fd_ < 0 || leaf != leaf_) {
      if (fd_ >= 0) ::close(fd_);
      leaf_ = leaf;
      fd_ = ::open(Path(leaf).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
      if (fd_ < 0) return ErrnoStatus("open " + Path(leaf), errno);
    }
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("write " + Path(leaf), errno);
      }
      done += static_cast<size_t>(n);
    }
    return Status::Ok();
  }
  // Drops the journal of the current leaf (complete, or not to be trusted).
  void Discard() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(Path(leaf_).c_str());
  }
  Status Reset(uint64_t leaf) {
    leaf_ = leaf;
    Discard();
    return Status::Ok();
  }

 private:
  std::string Path(uint64_t leaf) const { return staging_ + ".leaf" + std::to_string(leaf); }
  std::string staging_;
  uint64_t leaf_;
  int fd_ = -1;
};

struct Task {
  uint64_t first = 0, last = 0;  // Leaves, inclusive.
  size_t proxy = 0;
  double start = 0;
};

// A worker's report: one verified leaf (is_leaf), or the end of a request.
struct Completion {
  bool is_leaf = false;
  uint64_t leaf = 0;
  Task task;
  Status status;
  uint64_t bytes = 0;  // Body bytes received.
  int http_status = 0;
  double first_byte = 0, end = 0;
  bool udp = false;        // The end of the UDP carrier's session (task: the leaves it covered).
  uint64_t delivered = 0;  // UDP: object bytes it delivered.
};

// Feeds the consumer the verified prefix on its own thread.
class ConsumerThread {
 public:
  ConsumerThread(ObjectConsumer* consumer, const std::string& path, uint64_t total, uint64_t start)
      : consumer_(consumer), path_(path), total_(total), start_(start), applied_(start) {}
  ~ConsumerThread() { Stop(); }

  Status Start() {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return ErrnoStatus("open " + path_, errno);
    thread_ = std::thread([this] { Run(); });
    return Status::Ok();
  }
  void SetAvailable(uint64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    available_ = bytes;
    cv_.notify_all();
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  // Applied bytes, and whether the consumer finished (or failed: status()).
  uint64_t applied() const {
    std::lock_guard<std::mutex> lock(mu_);
    return applied_;
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return done_;
  }
  Status status() const {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  // Wakes |waiter| whenever progress is made.
  void set_notify(std::function<void()> f) { notify_ = std::move(f); }

 private:
  void Run() {
    Bytes buf(kConsumePiece);
    uint64_t pos = start_;
    Status s;
    while (true) {
      uint64_t avail;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || available_ > pos || pos == total_; });
        if (stop_ && pos < total_) break;
        avail = available_;
      }
      if (pos == total_) {
        s = consumer_->Finish();
        break;
      }
      const uint64_t n = std::min<uint64_t>(avail - pos, kConsumePiece);
      s = PreadAll(fd_, std::span<uint8_t>(buf.data(), n), pos, path_);
      if (s.ok()) s = consumer_->Consume(ByteView(buf.data(), n));
      if (!s.ok()) break;
      pos += n;
      {
        std::lock_guard<std::mutex> lock(mu_);
        applied_ = pos;
      }
      if (notify_) notify_();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_ = s;
      done_ = s.ok() && pos == total_;
      failed_ = !s.ok();
    }
    if (notify_) notify_();
  }

  ObjectConsumer* consumer_;
  std::string path_;
  uint64_t total_;
  uint64_t start_;
  int fd_ = -1;
  std::thread thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t available_ = 0, applied_;
  bool stop_ = false, done_ = false, failed_ = false;
  Status status_;
  std::function<void()> notify_;
};

bool IsLocal(const Status& s) {
  return s.code() == ErrorCode::kIoError || s.code() == ErrorCode::kNoSpace;
}

// ---- The UDP carrier (docs/PROTOCOL.md, "UDP carrier"), receiving side ----

fec::Micros NowMicros() {
  return static_cast<fec::Micros>(std::chrono::duration_cast<std::chrono::microseconds>(
                                      std::chrono::steady_clock::now().time_since_epoch())
                                      .count());
}

// "http://host:port/..." -> host ("[::1]" unbracketed).
std::string HostOfUrl(const std::string& url) {
  size_t start = url.find("://");
  start = start == std::string::npos ? 0 : start + 3;
  const size_t end = url.find('/', start);
  std::string authority = url.substr(start, end == std::string::npos ? end : end - start);
  if (const size_t at = authority.rfind('@'); at != std::string::npos) {
    authority = authority.substr(at + 1);
  }
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    return authority.substr(1, close == std::string::npos ? close : close - 1);
  }
  return authority.substr(0, authority.find(':'));
}

struct UdpOutcome {
  Status status;
  uint64_t bytes_received = 0, bytes_sent = 0, delivered = 0;
};

class UdpFd {
 public:
  explicit UdpFd(int fd) : fd_(fd) {}
  ~UdpFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Receives leaves [first, leaves) of the object over a UDP session with the proxy at |base_url|:
// each verified leaf is written to the staging file and reported through |on_leaf|. Ends when
// every leaf arrived, the session failed (UDP blocked, stalled, refused), or |stop| is set.
// How long the UDP session request may take before a hedged second request goes out.
constexpr std::chrono::milliseconds kSessionHedge{150};

UdpOutcome ReceiveOverUdp(const AgentConfig& config, const FetchSpec& spec,
                          const std::string& base_url, uint64_t first, int staging_fd,
                          const std::function<void(uint64_t)>& on_leaf,
                          const std::atomic<bool>& stop, std::atomic<uint64_t>* received_bytes) {
  UdpOutcome out;
  const stream::ChunkMap& map = *spec.map;
  const uint64_t leaves = map.leaf_count();
  // Open the session over HTTP(S): its id, key and token travel with the request's protection.
  net::ClientOptions copts;
  copts.bearer_token = config.token;
  copts.ca_file = config.ca_file;
  copts.connect_timeout_ms = config.connect_timeout_ms;
  copts.low_speed_timeout_ms = config.stall_timeout_ms;
  copts.max_body_bytes = 64 << 10;
  const nlohmann::json ask{{"object", spec.object_sha256},
                           {"chunk_map", ToHex(map.root())},
                           {"first", first},
                           {"last", leaves - 1}};
  // The request is hedged: on a lossy link one lost TCP segment costs a retransmission timeout
  // (a lost SYN a whole second), so when no answer came within kSessionHedge a second request
  // goes out on a fresh connection and the first good answer wins (the other session, if any,
  // is never validated and idles out on the server). Both requests are joined before returning:
  // the first one may use the caller's client.
  struct PostState {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Result<net::ClientResponse>> answer[2];
    std::chrono::steady_clock::time_point start[2], end[2];
  };
  PostState ps;
  const std::string url = base_url + "/v1/udp/sessions", body = ask.dump();
  auto post = [&](int i, net::Client* c) {
    const auto t0 = std::chrono::steady_clock::now();
    Result<net::ClientResponse> res =
        c->Send("POST", url, body, {{"Content-Type", "application/json"}});
    std::lock_guard<std::mutex> lock(ps.mu);
    ps.start[i] = t0;
    ps.end[i] = std::chrono::steady_clock::now();
    ps.answer[i] = std::move(res);
    ps.cv.notify_all();
  };
  std::optional<net::Client> own_client, hedge_client;
  net::Client* client = spec.session_client;
  if (client == nullptr) client = &own_client.emplace(copts);
  std::thread primary, hedge;
  struct Joiner {
    std::thread *a, *b;
    ~Joiner() {
      if (a->joinable()) a->join();
      if (b->joinable()) b->join();
    }
  } joiner{&primary, &hedge};
  primary = std::thread(post, 0, client);
  auto good = [&](int i) {
    return ps.answer[i] && ps.answer[i]->ok() && (*ps.answer[i])->status == 201;
  };
  int winner = 0;
  {
    std::unique_lock<std::mutex> lock(ps.mu);
    if (!ps.cv.wait_for(lock, kSessionHedge, [&] { return ps.answer[0].has_value(); })) {
      lock.unlock();
      hedge = std::thread(post, 1, &hedge_client.emplace(copts));
      lock.lock();
    }
    ps.cv.wait(lock, [&] {
      return good(0) || good(1) || (ps.answer[0] && (!hedge.joinable() || ps.answer[1]));
    });
    winner = good(0) || !good(1) ? 0 : 1;
  }
  Result<net::ClientResponse> r = std::move(*ps.answer[winner]);
  // The POST took one exchange on a kept-alive connection, else also a TCP handshake (plus TLS,
  // if any): about 1 or 2 round trips.
  const bool reused = winner == 0 && spec.session_client != nullptr;
  const double open_rtt_us =
      std::chrono::duration<double, std::micro>(ps.end[winner] - ps.start[winner]).count() /
      (reused ? 1 : 2);
  if (!r.ok()) {
    out.status = r.status().WithContext("opening a UDP session");
    return out;
  }
  if (r->status != 201) {
    out.status = net::StatusFromResponse(*r).WithContext("opening a UDP session");
    return out;
  }
  const nlohmann::json a = nlohmann::json::parse(r->body, nullptr, false);
  fec::SessionParams params;
  uint16_t port = 0;
  try {
    params.session_id = std::stoull(a.at("session_id").get<std::string>());
    const std::string key = a.at("key").get<std::string>();
    if (key.size() != 2 * params.key.size() ||
        !DecodeHex(key, std::span<uint8_t>(params.key.data(), params.key.size()))) {
      throw std::invalid_argument("key");
    }
    params.token = a.at("token").get<std::string>();
    port = a.at("port").get<uint16_t>();
    if (a.at("first").get<uint64_t>() != first || a.at("last").get<uint64_t>() != leaves - 1) {
      throw std::invalid_argument("range");
    }
  } catch (const std::exception& e) {
    out.status = Error(ErrorCode::kProtocol, std::string("bad UDP session answer: ") + e.what());
    return out;
  }

  // A connected UDP socket: the kernel drops datagrams from any other address.
  addrinfo hints{};
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const std::string host = HostOfUrl(base_url);
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0 ||
      found == nullptr) {
    out.status = Error(ErrorCode::kUnavailable, "cannot resolve " + host + " for UDP");
    return out;
  }
  UdpFd sock(::socket(found->ai_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  const bool connected =
      sock.get() >= 0 && ::connect(sock.get(), found->ai_addr, found->ai_addrlen) == 0;
  ::freeaddrinfo(found);
  if (!connected) {
    out.status = ErrnoStatus("UDP socket to " + host, errno);
    return out;
  }
  const int rcvbuf = 4 << 20;
  ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));

  std::vector<fec::ChunkSpec> chunks;
  chunks.reserve(leaves - first);
  for (uint64_t i = first; i < leaves; ++i) {
    chunks.push_back(
        {map.LeafOffset(i), static_cast<uint32_t>(map.LeafLength(i)), map.leaves()[i]});
  }
  auto deliver = [&](uint64_t first_chunk, uint64_t count, ByteView bytes) -> Status {
    uint64_t at = 0;
    for (uint64_t j = 0; j < count; ++j) {
      const uint64_t leaf = first + first_chunk + j;
      const uint64_t len = map.LeafLength(leaf);
      if (at + len > bytes.size()) return Error(ErrorCode::kInternal, "short UDP delivery");
      DS_RETURN_IF_ERROR(
          PwriteAll(staging_fd, bytes.subspan(at, len), map.LeafOffset(leaf), spec.staging_path));
      at += len;
      out.delivered += len;
      on_leaf(leaf);
    }
    return Status::Ok();
  };
  // A lost HELLO or ECHO (the handshake crosses the same lossy path) is sent again after about
  // two round trips as the session's POST measured them, not after a fixed 250 ms: at 10 % loss a
  // third of the handshakes lose a packet.
  fec::ReceiverConfig rconfig;
  rconfig.hello_interval_us = static_cast<fec::Micros>(
      std::clamp(2.5 * open_rtt_us, 20'000.0, static_cast<double>(rconfig.hello_interval_us)));
  Result<std::unique_ptr<fec::UdpReceiver>> made =
      fec::UdpReceiver::Create(params, std::move(chunks), deliver, rconfig);
  if (!made.ok()) {
    out.status = made.status();
    return out;
  }
  fec::UdpReceiver& rx = **made;
  std::vector<uint8_t> buf(65536);
  fec::Micros done_at = 0;
  while (!stop.load()) {
    fec::Micros now = NowMicros();
    while (std::optional<Bytes> d = rx.Poll(now)) {
      if (::send(sock.get(), d->data(), d->size(), 0) > 0) out.bytes_sent += d->size();
    }
    if (rx.state() == fec::UdpReceiver::State::kFailed) break;
    if (rx.done()) {
      // Answer late DATA with acks for a moment so the sender finishes promptly.
      if (done_at == 0) done_at = now;
      if (now - done_at > 100'000) break;
    }
    const fec::Micros next = rx.NextTimeout(now);
    const int64_t wait_ms =
        next == fec::kNever ? 20 : std::clamp<int64_t>((next - std::min(next, now)) / 1000, 0, 20);
    pollfd p{sock.get(), POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(wait_ms));
    for (;;) {
      const ssize_t n = ::recv(sock.get(), buf.data(), buf.size(), 0);
      if (n < 0) break;  // EAGAIN, or an ICMP error (port unreachable: the handshake times out).
      out.bytes_received += static_cast<uint64_t>(n);
      received_bytes->fetch_add(static_cast<uint64_t>(n));
      static_cast<void>(rx.OnDatagram(NowMicros(), ByteView(buf.data(), static_cast<size_t>(n))));
    }
  }
  if (rx.done()) {
    out.status = Status::Ok();
  } else if (stop.load()) {
    out.status = Error(ErrorCode::kUnavailable, "stopped");
  } else {
    out.status =
        rx.error().ok() ? Error(ErrorCode::kUnavailable, "UDP session ended early") : rx.error();
  }
  return out;
}

}  // namespace

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Status FetchObject(const AgentConfig& config, const FetchSpec& spec, ObjectConsumer* consumer,
                   const EventSink& events, double start_time, FetchStats* stats) {
  const stream::ChunkMap& map = *spec.map;
  const uint64_t leaves = map.leaf_count();
  const uint64_t total = map.total_size();
  const uint64_t leaf = map.leaf_size();

  // Staging file: created at full size (sparse) once; kept across runs for resume.
  Fd out(::open(spec.staging_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (out.get() < 0) return ErrnoStatus("open " + spec.staging_path, errno);
  if (::ftruncate(out.get(), static_cast<off_t>(total)) != 0) {
    return ErrnoStatus("size " + spec.staging_path, errno);
  }

  // Resume: the staging file itself is the record of progress. Every leaf it holds data for is
  // checked against the chunk map; holes (never written) are skipped with SEEK_DATA. A kill or a
  // power cut can therefore lose at most the leaves that had not reached the disk yet, and a
  // damaged leaf is simply fetched again.
  std::vector<uint8_t> verified(leaves, 0);
  {
    Bytes buf(leaf);
    for (uint64_t i = 0; i < leaves; ++i) {
      const uint64_t off = map.LeafOffset(i), len = map.LeafLength(i);
      const off_t data = ::lseek(out.get(), static_cast<off_t>(off), SEEK_DATA);
      if (data < 0) break;  // ENXIO: no data after |off|.
      if (static_cast<uint64_t>(data) >= off + len) {
        i = static_cast<uint64_t>(data) / leaf - 1;  // Skip the hole.
        continue;
      }
      std::span<uint8_t> piece(buf.data(), len);
      if (PreadAll(out.get(), piece, off, spec.staging_path).ok() &&
          map.VerifyChunk(i, ByteView(piece.data(), piece.size())).ok()) {
        verified[i] = 1;
        ++stats->leaves_resumed;
      }
    }
  }

  if (stats->leaves_resumed > 0 && events) {
    Event e;
    e.type = "resume";
    e.artifact = spec.artifact;
    e.message = std::to_string(stats->leaves_resumed) + " of " + std::to_string(leaves) +
                " leaves already verified on disk";
    e.elapsed = NowSeconds() - start_time;
    events(e);
  }

  ControllerConfig ctl_config = config.controller;
  ctl_config.leaf_size = leaf;
  StreamController ctl(ctl_config);

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Task> tasks;
  std::deque<Completion> done;
  const int fd = out.get();
  bool stop = false;

  // The consumer may continue from its own checkpoint inside the verified prefix.
  uint64_t verified_prefix = 0;
  while (verified_prefix < leaves && verified[verified_prefix]) ++verified_prefix;
  const uint64_t prefix_bytes = verified_prefix == leaves ? total : verified_prefix * leaf;
  const int staging_fd = out.get();
  DS_ASSIGN_OR_RETURN(const uint64_t consume_from,
                      consumer->Start(
                          [&](uint64_t offset, std::span<uint8_t> buf) -> Status {
                            if (offset + buf.size() > prefix_bytes) {
                              return Error(ErrorCode::kInternal, "read past the verified prefix");
                            }
                            return PreadAll(staging_fd, buf, offset, spec.staging_path);
                          },
                          prefix_bytes));
  if (consume_from > prefix_bytes) {
    return Error(ErrorCode::kInternal, "the consumer resumes past the verified prefix");
  }
  if (consume_from > 0 && events) {
    Event e;
    e.type = "resume_apply";
    e.artifact = spec.artifact;
    e.message = "applying from byte " + std::to_string(consume_from) + " of the " + spec.route;
    e.elapsed = NowSeconds() - start_time;
    events(e);
  }
  ConsumerThread applier(consumer, spec.staging_path, total, consume_from);
  applier.set_notify([&] {
    std::lock_guard<std::mutex> lock(mu);
    cv.notify_all();
  });
  DS_RETURN_IF_ERROR(applier.Start());

  // Fetch workers, each with its own keep-alive connection.
  net::ClientOptions copts;
  copts.bearer_token = config.token;
  copts.ca_file = config.ca_file;
  copts.connect_timeout_ms = config.connect_timeout_ms;
  copts.low_speed_timeout_ms = config.stall_timeout_ms;
  copts.max_body_bytes = std::max<uint64_t>(ctl_config.max_chunk, leaf) + leaf;
  const int workers = std::max(1, ctl_config.max_in_flight);
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      net::Client client(copts);
      while (true) {
        Task t;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return stop || !tasks.empty(); });
          if (stop) return;
          t = tasks.front();
          tasks.pop_front();
        }
        const std::string url =
            spec.base_urls[t.proxy] + spec.chunks_path + stream::ChunkRangeName(t.first, t.last);
        // Leaves are verified and written as they complete, so a dropped connection or a kill
        // loses less than one leaf per request.
        Completion c;
        c.task = t;
        uint64_t cur = t.first;
        Bytes pending;
        pending.reserve(leaf);
        // The bytes of the leaf being received also go to a small journal, so that a dropped
        // connection or a killed agent resumes inside the leaf with a Range request.
        PartialLeaf part(spec.staging_path, t.first);
        std::vector<std::pair<std::string, std::string>> headers;
        const uint64_t resume_at = part.Load(map.LeafLength(t.first), &pending);
        if (resume_at > 0)
          headers.emplace_back("Range", "bytes=" + std::to_string(resume_at) + "-");
        bool started = false;
        auto on_data = [&](int status, ByteView data) -> Status {
          if (!started) {
            started = true;
            if (status != 206 && resume_at > 0) {  // The Range was not honoured: start over.
              pending.clear();
              DS_RETURN_IF_ERROR(part.Reset(cur));
            }
          }
          c.bytes += data.size();
          while (!data.empty()) {
            if (cur > t.last) {
              return Error(ErrorCode::kProtocol, "more bytes than the chunk holds");
            }
            const uint64_t len = map.LeafLength(cur);
            const size_t take = std::min<size_t>(data.size(), len - pending.size());
            const ByteView piece = data.first(take);
            pending.insert(pending.end(), piece.begin(), piece.end());
            data = data.subspan(take);
            if (pending.size() < len) {
              DS_RETURN_IF_ERROR(part.Append(cur, piece));
              break;
            }
            Status verified = map.VerifyChunk(cur, pending);
            if (!verified.ok()) {
              part.Discard();
              return verified;
            }
            DS_RETURN_IF_ERROR(PwriteAll(fd, pending, map.LeafOffset(cur), spec.staging_path));
            part.Discard();
            Completion leaf_done;
            leaf_done.is_leaf = true;
            leaf_done.leaf = cur;
            {
              std::lock_guard<std::mutex> lock(mu);
              done.push_back(std::move(leaf_done));
              cv.notify_all();
            }
            pending.clear();
            ++cur;
          }
          return Status::Ok();
        };
        Result<net::ClientResponse> r = client.GetStream(url, on_data, headers);
        c.end = NowSeconds();
        if (!r.ok()) {
          c.status = r.status();
        } else {
          c.http_status = r->status;
          c.first_byte = std::min(c.end, t.start + r->first_byte_seconds);
          if (r->status != 200 && r->status != 206) {
            c.bytes += r->body.size();
            c.status = net::StatusFromResponse(*r);
            if (c.status.ok()) {
              c.status = Error(ErrorCode::kProtocol, "HTTP " + std::to_string(r->status));
            }
            if (r->status == 416) part.Discard();  // A journal the server disagrees with.
          } else if (cur <= t.last) {
            c.status = Error(ErrorCode::kPatchTruncated, "the chunk ended early");
          }
        }
        std::lock_guard<std::mutex> lock(mu);
        done.push_back(std::move(c));
        cv.notify_all();
      }
    });
  }
  std::atomic<bool> udp_stop{false};
  std::atomic<uint64_t> udp_bytes{0};
  std::thread udp_thread;
  auto shutdown = [&] {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
      cv.notify_all();
    }
    udp_stop = true;
    for (std::thread& t : pool) t.join();
    if (udp_thread.joinable()) udp_thread.join();
    applier.Stop();
  };

  std::vector<uint8_t> in_flight(leaves, 0);
  int outstanding = 0;
  uint64_t prefix = 0;  // Leaves verified from the start.
  auto advance_prefix = [&] {
    while (prefix < leaves && verified[prefix]) ++prefix;
    applier.SetAvailable(prefix == leaves ? total : prefix * leaf);
  };
  advance_prefix();

  // The UDP carrier takes every leaf from the first missing one; HTTP requests then fetch only
  // what it did not deliver (UDP blocked, the session stalled or failed).
  bool udp_active = false;
  double udp_started = 0;
  uint64_t udp_delivered = 0;
  if (config.carrier == "udp" && prefix < leaves && !spec.base_urls.empty()) {
    udp_active = true;
    udp_started = NowSeconds();
    Task t{prefix, leaves - 1, 0, udp_started};
    for (uint64_t i = t.first; i <= t.last; ++i) in_flight[i] = 1;
    ++outstanding;
    udp_thread = std::thread([&, t] {
      UdpOutcome o = ReceiveOverUdp(
          config, spec, spec.base_urls[0], t.first, fd,
          [&](uint64_t leaf) {
            Completion leaf_done;
            leaf_done.is_leaf = true;
            leaf_done.leaf = leaf;
            std::lock_guard<std::mutex> lock(mu);
            done.push_back(std::move(leaf_done));
            cv.notify_all();
          },
          udp_stop, &udp_bytes);
      Completion c;
      c.udp = true;
      c.task = t;
      c.status = o.status;
      c.bytes = o.bytes_received;
      c.end = NowSeconds();
      c.delivered = o.delivered;
      std::lock_guard<std::mutex> lock(mu);
      done.push_back(std::move(c));
      cv.notify_all();
    });
  }

  std::mt19937_64 rng(static_cast<uint64_t>(NowSeconds() * 1e6) ^ reinterpret_cast<uintptr_t>(&mu));
  int consecutive_failures = 0;
  size_t proxy = 0;
  double not_before = 0;  // Backoff: no new request before this time.
  double last_event = 0;
  double last_save = 0;
  Status last_error;
  uint64_t verified_bytes = 0;
  for (uint64_t i = 0; i < leaves; ++i) {
    if (verified[i]) verified_bytes += map.LeafLength(i);
  }

  auto emit = [&](double now, bool force) {
    if (!events || (!force && now - last_event < 0.25)) return;
    last_event = now;
    Event e;
    e.type = "progress";
    e.artifact = spec.artifact;
    e.message = spec.route;
    e.done = verified_bytes;
    e.total = total;
    e.applied = applier.applied();
    e.rate = ctl.throughput();
    e.chunk_size = ctl.chunk_size();
    e.in_flight = outstanding;
    e.rtt = ctl.rtt();
    e.elapsed = now - start_time;
    e.carrier = udp_active ? "udp" : "http";
    if (udp_active) {
      const uint64_t got = udp_bytes.load();
      e.rate = now > udp_started ? static_cast<double>(got) / (now - udp_started) : 0;
      const uint64_t useful = verified_bytes;
      e.repair_overhead =
          useful > 0 && got > useful ? static_cast<double>(got - useful) / useful : 0;
    }
    events(e);
  };

  // The UDP session's end: an event saying what it delivered, or why HTTP takes over.
  auto udp_finished = [&](const Completion& c) {
    udp_active = false;
    udp_delivered = c.delivered;
    if (!events) return;
    Event e;
    e.type = c.status.ok() ? "carrier" : "fallback";
    e.artifact = spec.artifact;
    e.carrier = "udp";
    e.message = c.status.ok() ? "UDP carrier delivered " + std::to_string(udp_delivered) +
                                    " bytes in " + std::to_string(c.bytes) + " datagram bytes"
                              : "UDP carrier: " + c.status.ToString() + "; HTTP for the rest";
    e.done = udp_delivered;
    e.total = total;
    e.elapsed = c.end - start_time;
    events(e);
  };

  Status result;
  while (true) {
    const double now = NowSeconds();
    if (applier.done()) break;
    if (Status s = applier.status(); !s.ok()) {
      result = s;
      break;
    }
    const uint64_t applied = applier.applied();
    ctl.OnApplyProgress(now, applied, verified_bytes - std::min(verified_bytes, applied));
    ctl.OnCpuSample(now, CpuSeconds());
    emit(now, false);

    // Dispatch while the controller allows and no backoff is pending.
    if (now >= not_before) {
      const int limit = std::max(ctl.InFlightLimit(), outstanding == 0 ? 1 : 0);
      uint64_t cursor = prefix;
      while (outstanding < limit) {
        while (cursor < leaves && (verified[cursor] || in_flight[cursor])) ++cursor;
        if (cursor >= leaves) break;
        uint64_t run_end = cursor;
        while (run_end < leaves && !verified[run_end] && !in_flight[run_end]) ++run_end;
        const uint64_t run_bytes = (run_end == leaves ? total : run_end * leaf) - cursor * leaf;
        const uint64_t want = ctl.NextChunkSize(run_bytes);
        const uint64_t count = std::clamp<uint64_t>((want + leaf - 1) / leaf, 1, run_end - cursor);
        Task t{cursor, cursor + count - 1, proxy, now};
        for (uint64_t i = t.first; i <= t.last; ++i) in_flight[i] = 1;
        ++outstanding;
        ++stats->requests;
        {
          std::lock_guard<std::mutex> lock(mu);
          tasks.push_back(t);
          cv.notify_all();
        }
        cursor = t.last + 1;
      }
    }

    std::optional<Completion> c;
    {
      std::unique_lock<std::mutex> lock(mu);
      const double wait = std::clamp(not_before - now, 0.02, 0.2);
      cv.wait_for(lock, std::chrono::duration<double>(wait),
                  [&] { return !done.empty() || applier.done() || !applier.status().ok(); });
      if (!done.empty()) {
        c = std::move(done.front());
        done.pop_front();
      }
    }
    if (!c) continue;
    if (c->is_leaf) {
      if (!verified[c->leaf]) {
        verified[c->leaf] = 1;
        verified_bytes += map.LeafLength(c->leaf);
        advance_prefix();
      }
      if (now - last_save >= 1.0) {
        last_save = now;
        if (Status s = SaveProgress(spec, verified); !s.ok()) {
          result = s;
          break;
        }
      }
      continue;
    }
    --outstanding;
    for (uint64_t i = c->task.first; i <= c->task.last; ++i) in_flight[i] = 0;
    stats->bytes_fetched += c->bytes;
    if (c->udp) {
      udp_finished(*c);
      continue;  // Not a failed request: the HTTP workers take the rest.
    }
    const std::string range = stream::ChunkRangeName(c->task.first, c->task.last);
    Status s = c->status;
    if (s.ok()) {
      consecutive_failures = 0;
      ChunkSample sample;
      sample.bytes = c->bytes;
      sample.start = c->task.start;
      sample.end = c->end;
      sample.first_byte = c->first_byte;
      ctl.OnChunkDone(sample);
      continue;
    }
    if (IsLocal(s)) {  // Local disk trouble is not worth retrying.
      result = s;
      break;
    }
    // A failed request: back off, try the next proxy, give up after the retry budget.
    ++stats->failures;
    last_error = s.WithContext("chunk " + range);
    ctl.OnChunkFailed(c->end);
    ++consecutive_failures;
    if (events) {
      Event e;
      e.type = "retry";
      e.artifact = spec.artifact;
      e.message = last_error.ToString();
      e.elapsed = c->end - start_time;
      events(e);
    }
    if (consecutive_failures > config.retry_budget) {
      result = last_error.WithContext("retry budget of " + std::to_string(config.retry_budget) +
                                      " spent");
      break;
    }
    if (spec.base_urls.size() > 1) proxy = (proxy + 1) % spec.base_urls.size();
    const double base = std::min<double>(
        static_cast<double>(config.backoff_max_ms),
        static_cast<double>(config.backoff_initial_ms) * std::pow(2.0, consecutive_failures - 1));
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    not_before = c->end + base * jitter(rng) / 1000.0;
  }
  shutdown();
  // Requests whose completion was still queued when the last leaf made the object whole still
  // count (the workers are joined: nothing is added any more).
  for (const Completion& c : done) {
    if (!c.is_leaf) stats->bytes_fetched += c.bytes;
    if (c.udp) udp_finished(c);  // It lingered for the sender's last acks.
  }
  if (Status s = SaveProgress(spec, verified); result.ok() && !s.ok()) result = s;
  if (result.ok()) {
    result = applier.status();
    if (result.ok() && !applier.done()) result = Error(ErrorCode::kInternal, "download stopped");
  }
  emit(NowSeconds(), true);
  return result;
}

}  // namespace ds::agent
