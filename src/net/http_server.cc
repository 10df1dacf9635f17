// The HTTP/1.1 server on Boost.Beast. This is the only translation unit of deltastream that
// includes Beast or Asio (they are heavy to compile); everything Beast-free lives in
// http_common.cc.
//
// Threads: io_threads run the io_context; every connection's I/O runs on its own strand (the
// socket's executor). Handlers, stream begin/finish and BodySink::Write run on the worker pool
// and post their results back to the connection's strand. At most one operation of a connection
// is in progress at a time (read, handler, sink write or response write), so a session's state
// is only touched by one thread at a time without locks.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "net/http.h"
#include "net/http_internal.h"
#include "net/udp.h"

namespace ds::net {

struct Responder::Impl {
  ~Impl();
  std::atomic<bool> sent{false};
  std::function<void(Response)> deliver;  // Posts the response to the connection's strand.
};

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

constexpr size_t kPieceBytes = 64 << 10;  // Streamed request and file response pieces.
constexpr size_t kIdleReadBytes = 4096;
// After answering a request whose body was left unread, the server stops sending and discards
// what the client still sends for a while before closing, so that the client reads the answer
// instead of a connection reset.
constexpr int64_t kLingerMs = 1000;
constexpr uint64_t kLingerBytes = 32ull << 20;
constexpr int64_t kTlsShutdownMs = 500;
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

std::string Lower(std::string_view s) { return internal::ToLower(s); }

// Registered with the server so that Stop() can close every connection.
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Only called when no I/O thread runs.
  virtual void ForceClose() = 0;
};

// The server's shared state. Members are declared so that the io_context is destroyed first:
// destroying it destroys pending handlers and with them sessions, which use the members above.
struct ServerCore {
  ServerOptions options;
  internal::Router router;
  internal::Metrics metrics;

  std::mutex sessions_mu;
  std::unordered_map<uint64_t, std::weak_ptr<SessionBase>> sessions;
  uint64_t next_session_id = 1;

  std::optional<asio::ssl::context> ssl_ctx;
  std::unique_ptr<asio::thread_pool> workers;

  std::mutex lifecycle_mu;
  bool started = false;
  bool stopped = false;
  std::atomic<uint16_t> bound_port{0};

  asio::io_context ioc;
  std::optional<tcp::acceptor> acceptor;
  std::optional<asio::steady_timer> accept_retry;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> io_threads;

  uint64_t Register(std::weak_ptr<SessionBase> s) {
    std::lock_guard<std::mutex> lock(sessions_mu);
    const uint64_t id = next_session_id++;
    sessions.emplace(id, std::move(s));
    return id;
  }
  void Unregister(uint64_t id) {
    std::lock_guard<std::mutex> lock(sessions_mu);
    sessions.erase(id);
  }

  void DoAccept();
  void OnAccept(tcp::socket socket);
};

Response ErrorResponse(ErrorCode code, std::string message) {
  return Response::FromStatus(Status(code, std::move(message)));
}

std::string ExceptionMessage(std::exception_ptr e) {
  try {
    std::rethrow_exception(std::move(e));
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "unknown exception";
  }
}

bool IsBodylessStatus(int status) { return status < 200 || status == 204 || status == 304; }

template <class Stream>
class Session : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

  template <class... Args>
  explicit Session(ServerCore* core, Args&&... args)
      : core_(core), stream_(std::forward<Args>(args)...), piece_(new char[kPieceBytes]) {
    core_->metrics.connections_open.fetch_add(1);
  }

  ~Session() override {
    if (stream_state_) stream_state_->MarkGone();
    if (fd_ >= 0) ::close(fd_);
    if (request_open_) core_->metrics.in_flight.fetch_sub(1);
    core_->Unregister(id_);
    core_->metrics.connections_open.fetch_sub(1);
  }

  void Run() {
    id_ = core_->Register(this->weak_from_this());
    beast::error_code ec;
    const tcp::endpoint ep = Lowest().socket().remote_endpoint(ec);
    if (!ec) {
      remote_ =
          ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string();
      remote_ += ":" + std::to_string(ep.port());
    }
    asio::dispatch(stream_.get_executor(), [self = this->shared_from_this()] { self->Begin(); });
  }

  void ForceClose() override {
    if (stream_state_) stream_state_->MarkGone();
    beast::error_code ec;
    Lowest().socket().close(ec);
  }

 private:
  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }
  std::shared_ptr<Session> Self() { return this->shared_from_this(); }
  const ServerOptions& Opts() const { return core_->options; }
  static std::chrono::milliseconds Ms(int64_t ms) { return std::chrono::milliseconds(ms); }

  template <class F>
  void OnWorker(F&& f) {
    asio::post(*core_->workers, std::forward<F>(f));
  }
  template <class F>
  void OnStrand(F&& f) {
    asio::post(stream_.get_executor(), std::forward<F>(f));
  }

  void Begin() {
    if constexpr (kTls) {
      Lowest().expires_after(Ms(Opts().header_timeout_ms));
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = Self()](const beast::error_code& ec) {
                                if (ec) return self->Close(false);
                                self->ReadRequest(true);
                              });
    } else {
      ReadRequest(true);
    }
  }

  // ---- Reading a request ----

  void ReadRequest(bool first) {
    header_parser_.emplace();
    header_parser_->header_limit(static_cast<uint32_t>(
        std::min<uint64_t>(Opts().max_header_bytes, std::numeric_limits<uint32_t>::max())));
    // Body limits are checked per route once the header is known.
    header_parser_->body_limit(std::numeric_limits<uint64_t>::max());
    if (buffer_.size() == 0 && buffer_.capacity() > kIdleReadBytes) buffer_.shrink_to_fit();
    if (!first && buffer_.size() == 0) {
      // Between requests: wait up to idle_timeout for the next one to start.
      Lowest().expires_after(Ms(Opts().idle_timeout_ms));
      stream_.async_read_some(buffer_.prepare(kIdleReadBytes),
                              [self = Self()](const beast::error_code& ec, size_t n) {
                                if (ec) return self->Close(false);
                                self->buffer_.commit(n);
                                self->ReadHeader();
                              });
      return;
    }
    ReadHeader();
  }

  // Beast reads at most the buffer's free capacity (at least 512 bytes) at a time: give bodies
  // room for large reads. Released again between requests.
  void ReserveBodyBuffer() {
    if (buffer_.capacity() < kPieceBytes) buffer_.reserve(kPieceBytes);
  }

  void ReadHeader() {
    // One deadline for the whole header: a client trickling bytes cannot hold the connection.
    Lowest().expires_after(Ms(Opts().header_timeout_ms));
    http::async_read_header(
        stream_, buffer_, *header_parser_,
        [self = Self()](const beast::error_code& ec, size_t n) { self->OnHeader(ec, n); });
  }

  void StartRequest(std::string method) {
    req_ = Request{};
    req_.method = std::move(method);
    req_.remote = remote_;
    start_ = Clock::now();
    request_open_ = true;
    core_->metrics.in_flight.fetch_add(1);
    route_ = nullptr;
    sink_.reset();
    body_complete_ = true;
    keep_alive_ = false;
    version_ = 11;
  }

  void OnHeader(const beast::error_code& ec, size_t n) {
    core_->metrics.bytes_received.fetch_add(n);
    if (ec == http::error::header_limit) {
      StartRequest("other");
      body_complete_ = false;
      return Respond(ErrorResponse(ErrorCode::kTooLarge, "request header too large"), true);
    }
    if (ec) {
      if (ec.category() == http::make_error_code(http::error::bad_target).category() &&
          ec != http::error::end_of_stream && ec != http::error::partial_message) {
        StartRequest("other");
        body_complete_ = false;
        return Respond(
            ErrorResponse(ErrorCode::kInvalidArgument, "malformed request: " + ec.message()), true);
      }
      return Close(false);  // Timeout, peer gone.
    }
    auto& h = header_parser_->get();
    StartRequest(std::string(h.method_string()));
    version_ = h.version();
    keep_alive_ = h.keep_alive();
    body_complete_ = header_parser_->is_done();
    const std::string_view target = h.target();
    const size_t q = target.find('?');
    req_.path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) req_.query = std::string(target.substr(q + 1));
    for (const auto& field : h) {
      req_.headers.emplace_back(Lower(field.name_string()), std::string(field.value()));
    }
    expect_continue_ = Lower(req_.Header("expect")) == "100-continue";
    if (req_.path.empty() || req_.path.front() != '/') {
      return Respond(ErrorResponse(ErrorCode::kInvalidArgument, "bad request target"), false);
    }

    internal::RouteMatch match = core_->router.Match(req_.method, req_.path);
    switch (match.kind) {
      case internal::RouteMatch::Kind::kNotFound:
        return Respond(ErrorResponse(ErrorCode::kNotFound, "no route for " + req_.path), false);
      case internal::RouteMatch::Kind::kMethodNotAllowed: {
        Response r = Response::FromStatus(
            Status(ErrorCode::kInvalidArgument, "method " + req_.method + " not allowed"));
        r.status = 405;
        r.With("Allow", match.allow);
        return Respond(std::move(r), false);
      }
      case internal::RouteMatch::Kind::kBadRequest:
        return Respond(ErrorResponse(ErrorCode::kInvalidArgument, match.message), false);
      case internal::RouteMatch::Kind::kFound:
        break;
    }
    route_ = match.route;
    req_.params = std::move(match.params);
    const boost::optional<uint64_t> declared = header_parser_->content_length();
    if (!route_->streamed) {
      if (declared && *declared > Opts().max_body_bytes) {
        return Respond(ErrorResponse(ErrorCode::kTooLarge, "request body too large"), true);
      }
      body_parser_.emplace(std::move(*header_parser_));
      header_parser_.reset();
      body_parser_->body_limit(Opts().max_body_bytes);
      ReserveBodyBuffer();
      return SendContinueThen([self = Self()] { self->ReadPlainBody(); });
    }
    if (declared && *declared > Opts().max_stream_body_bytes) {
      return Respond(ErrorResponse(ErrorCode::kTooLarge, "request body too large"), true);
    }
    OnWorker([self = Self()] {
      Result<std::unique_ptr<BodySink>> sink = Status(ErrorCode::kInternal, "begin threw");
      try {
        sink = self->route_->stream.begin(self->req_);
      } catch (...) {
        sink = Status(ErrorCode::kInternal,
                      "handler threw: " + ExceptionMessage(std::current_exception()));
      }
      self->OnStrand([self, sink = std::move(sink)]() mutable { self->OnBegun(std::move(sink)); });
    });
  }

  void SendContinueThen(std::function<void()> next) {
    const bool done = body_parser_ ? body_parser_->is_done()
                                   : (stream_parser_ ? stream_parser_->is_done() : true);
    if (!expect_continue_ || done) return next();
    Lowest().expires_after(Ms(Opts().body_idle_timeout_ms));
    asio::async_write(
        stream_, asio::buffer(kContinue.data(), kContinue.size()),
        [self = Self(), next = std::move(next)](const beast::error_code& ec, size_t n) {
          self->core_->metrics.bytes_sent.fetch_add(n);
          if (ec) return self->Close(false);
          next();
        });
  }

  void ReadPlainBody() {
    if (body_parser_->is_done()) {
      body_complete_ = true;
      return RunHandler();
    }
    Lowest().expires_after(Ms(Opts().body_idle_timeout_ms));
    http::async_read_some(
        stream_, buffer_, *body_parser_, [self = Self()](const beast::error_code& ec, size_t n) {
          self->core_->metrics.bytes_received.fetch_add(n);
          if (ec == http::error::body_limit) {
            return self->Respond(ErrorResponse(ErrorCode::kTooLarge, "request body too large"),
                                 true);
          }
          if (ec) return self->Close(false);
          self->ReadPlainBody();
        });
  }

  void RunHandler() {
    req_.body = std::move(body_parser_->get().body());
    body_parser_.reset();
    if (route_->async) return RunAsyncHandler();
    if (route_->fast) {
      std::optional<Response> fast;
      try {
        fast = route_->fast(req_);
      } catch (...) {
        fast.reset();  // The worker's handler gets the request (and reports its own errors).
      }
      if (fast) return Respond(std::move(*fast), false);
    }
    OnWorker([self = Self()] {
      Response res;
      try {
        res = self->route_->handler(self->req_);
      } catch (...) {
        res = ErrorResponse(ErrorCode::kInternal,
                            "handler threw: " + ExceptionMessage(std::current_exception()));
      }
      self->OnStrand(
          [self, res = std::move(res)]() mutable { self->Respond(std::move(res), false); });
    });
  }

  void RunAsyncHandler() {
    auto impl = std::make_shared<Responder::Impl>();
    impl->deliver = [self = Self()](Response res) {
      self->OnStrand(
          [self, res = std::move(res)]() mutable { self->Respond(std::move(res), false); });
    };
    OnWorker([self = Self(), responder = Responder(std::move(impl))] {
      try {
        self->route_->async(self->req_, responder);
      } catch (...) {
        responder.Send(ErrorResponse(
            ErrorCode::kInternal, "handler threw: " + ExceptionMessage(std::current_exception())));
      }
    });
  }

  // ---- Streamed bodies ----

  void OnBegun(Result<std::unique_ptr<BodySink>> sink) {
    if (sink.ok() && sink.value() == nullptr) {
      sink = Status(ErrorCode::kInternal, "begin returned no sink");
    }
    if (!sink.ok()) return Respond(Response::FromStatus(sink.status()), false);
    sink_ = std::move(sink).value();
    stream_parser_.emplace(std::move(*header_parser_));
    header_parser_.reset();
    stream_parser_->body_limit(Opts().max_stream_body_bytes);
    ReserveBodyBuffer();
    SendContinueThen([self = Self()] { self->ReadStreamPiece(); });
  }

  void ReadStreamPiece() {
    if (stream_parser_->is_done()) {
      body_complete_ = true;
      return FinishStream(Status::Ok(), true);
    }
    auto& body = stream_parser_->get().body();
    body.data = piece_.get();
    body.size = kPieceBytes;
    Lowest().expires_after(Ms(Opts().body_idle_timeout_ms));
    http::async_read_some(
        stream_, buffer_, *stream_parser_,
        [self = Self()](beast::error_code ec, size_t) { self->OnStreamRead(ec); });
  }

  void OnStreamRead(beast::error_code ec) {
    if (ec == http::error::need_buffer) ec = {};
    const size_t got = kPieceBytes - stream_parser_->get().body().size;
    core_->metrics.bytes_received.fetch_add(got);
    if (ec == http::error::body_limit) {
      return FinishStream(Status(ErrorCode::kTooLarge, "request body too large"), true);
    }
    if (ec) {
      return FinishStream(
          Status(ErrorCode::kUnavailable, "reading the request body: " + ec.message()), false);
    }
    if (got == 0) return ReadStreamPiece();
    // Backpressure: the next piece is read only once the sink has taken this one.
    OnWorker([self = Self(), got] {
      Status s;
      try {
        s = self->sink_->Write(ByteView(reinterpret_cast<const uint8_t*>(self->piece_.get()), got));
      } catch (...) {
        s = Status(ErrorCode::kInternal,
                   "sink threw: " + ExceptionMessage(std::current_exception()));
      }
      self->OnStrand([self, s = std::move(s)]() mutable {
        if (!s.ok()) return self->FinishStream(std::move(s), true);
        self->ReadStreamPiece();
      });
    });
  }

  // Hands the sink and the body's outcome to finish; sends its response when |send|.
  void FinishStream(Status outcome, bool send) {
    stream_parser_.reset();
    OnWorker([self = Self(), outcome = std::move(outcome), send] {
      Response res;
      try {
        res = self->route_->stream.finish(self->req_, std::move(self->sink_), outcome);
      } catch (...) {
        res = ErrorResponse(ErrorCode::kInternal,
                            "handler threw: " + ExceptionMessage(std::current_exception()));
      }
      self->OnStrand([self, res = std::move(res), send]() mutable {
        if (!send) return self->Close(false);
        self->Respond(std::move(res), false);
      });
    });
  }

  // ---- Writing the response ----

  // Sends |res|; the connection closes afterwards when |close|, when the request body was not
  // read to its end, or when the client did not ask for keep-alive.
  void Respond(Response res, bool close) {
    if (!body_complete_) {
      close = true;
      linger_ = true;
    }
    close_after_ = close || !keep_alive_;
    try {
      BuildResponse(std::move(res));
    } catch (...) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
      BuildResponse(ErrorResponse(ErrorCode::kInternal,
                                  "bad response: " + ExceptionMessage(std::current_exception())));
    }
    serializer_.emplace(msg_);
    WriteNext();
  }

  void BuildResponse(Response res) {
    const bool head = req_.method == "HEAD";
    int status = res.status;
    uint64_t length = 0;
    std::vector<std::pair<std::string, std::string>> extra;
    send_string_ = false;
    file_remaining_ = 0;
    if (stream_state_) stream_state_->MarkGone();
    stream_state_.reset();
    stream_remaining_.reset();
    bool chunked = false;
    if (res.stream) {
      std::shared_ptr<BodyStream::State> state = res.stream->state();
      res.stream.reset();  // The producer's references alone decide when the body ends.
      if (head || IsBodylessStatus(status)) {
        state->MarkGone();
        length = res.stream_length.value_or(0);
      } else {
        stream_state_ = std::move(state);
        stream_remaining_ = res.stream_length;
        if (res.stream_length) {
          length = *res.stream_length;
        } else if (version_ >= 11) {
          chunked = true;
        } else {
          close_after_ = true;  // HTTP/1.0: the body ends when the connection closes.
        }
      }
    } else if (res.file) {
      const FileBody& file = *res.file;
      const std::string etag = [&] {
        for (const auto& [k, v] : res.headers) {
          if (Lower(k) == "etag") return v;
        }
        return std::string();
      }();
      uint64_t first = 0;
      length = file.length;
      extra.emplace_back("Accept-Ranges", "bytes");
      const std::string_view inm = req_.Header("if-none-match");
      const std::string_view range = req_.Header("range");
      const std::string_view if_range = req_.Header("if-range");
      if (status == 200 && !etag.empty() && !inm.empty() && internal::EtagMatches(inm, etag)) {
        status = 304;
      } else if (status == 200 && !range.empty() &&
                 (if_range.empty() || (!etag.empty() && if_range == etag))) {
        const internal::ByteRange r = internal::ParseRange(range, file.length);
        if (r.kind == internal::RangeKind::kSatisfiable) {
          status = 206;
          first = r.first;
          length = r.last - r.first + 1;
          extra.emplace_back("Content-Range", "bytes " + std::to_string(r.first) + "-" +
                                                  std::to_string(r.last) + "/" +
                                                  std::to_string(file.length));
        } else if (r.kind == internal::RangeKind::kUnsatisfiable) {
          status = 416;
          length = 0;
          extra.emplace_back("Content-Range", "bytes */" + std::to_string(file.length));
        }
      }
      if (!IsBodylessStatus(status) && status != 416 && !head && length > 0) {
        fd_ = ::open(file.path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd_ < 0) {
          const Status err = ErrnoStatus("open " + file.path, errno);
          return BuildResponse(Response::FromStatus(err));
        }
        file_offset_ = file.offset + first;
        file_remaining_ = length;
      }
      if (status == 416) length = 0;
    } else {
      body_ = std::move(res.body);
      length = body_.size();
      send_string_ = !head && !IsBodylessStatus(status) && !body_.empty();
    }

    msg_ = {};
    msg_.version(version_);
    msg_.result(static_cast<unsigned>(status));
    for (const auto& [name, value] : res.headers) {
      const std::string lower = Lower(name);
      if (lower == "content-length" || lower == "transfer-encoding" || lower == "connection") {
        continue;
      }
      msg_.insert(name, value);
    }
    for (const auto& [name, value] : extra) msg_.set(name, value);
    if (chunked) {
      msg_.chunked(true);
    } else if (!IsBodylessStatus(status) && !(stream_state_ && !stream_remaining_)) {
      msg_.content_length(length);
    }
    msg_.keep_alive(!close_after_);
    status_ = status;
  }

  void WriteNext() {
    auto& body = msg_.body();
    if (send_string_) {
      send_string_ = false;
      body.data = body_.data();
      body.size = body_.size();
      body.more = false;
    } else if (file_remaining_ > 0) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(kPieceBytes, file_remaining_));
      ssize_t got;
      do {
        got = ::pread(fd_, piece_.get(), want, static_cast<off_t>(file_offset_));
      } while (got < 0 && errno == EINTR);
      if (got <= 0) return Close(false);  // The file shrank or failed mid-response.
      file_offset_ += static_cast<uint64_t>(got);
      file_remaining_ -= static_cast<uint64_t>(got);
      body.data = piece_.get();
      body.size = static_cast<size_t>(got);
      body.more = file_remaining_ > 0;
    } else if (stream_state_ && stream_remaining_ && *stream_remaining_ == 0 &&
               serializer_->is_header_done()) {
      stream_state_->MarkGone();  // All of Content-Length sent: the producer may stop.
      stream_state_.reset();
      body.data = nullptr;
      body.size = 0;
      body.more = false;
    } else if (stream_state_) {
      stream_piece_.clear();
      // No wake-up while the header is still to be written (that write comes first).
      std::function<void()> wake;
      if (serializer_->is_header_done()) {
        wake = [self = Self()] {
          self->OnStrand([self] {
            if (!self->closed_ && self->serializer_) self->WriteNext();
          });
        };
      }
      const BodyStream::State::Take take =
          stream_state_->TakeOrWait(&stream_piece_, std::move(wake));
      if (take == BodyStream::State::Take::kWait) {
        if (serializer_->is_header_done()) {
          Lowest().expires_never();  // Waiting for the producer, not for the client.
          return;
        }
        // Send the header now; the body follows as it is produced.
        Lowest().expires_after(Ms(Opts().body_idle_timeout_ms));
        http::async_write_header(stream_, *serializer_,
                                 [self = Self()](beast::error_code ec, size_t n) {
                                   self->core_->metrics.bytes_sent.fetch_add(n);
                                   if (ec) return self->Close(false);
                                   self->WriteNext();
                                 });
        return;
      } else if (take == BodyStream::State::Take::kEnd) {
        stream_state_.reset();
        if (stream_remaining_ && *stream_remaining_ > 0) return Close(false);  // Short body.
        body.data = nullptr;
        body.size = 0;
        body.more = false;
      } else {
        if (stream_remaining_) {
          if (stream_piece_.size() > *stream_remaining_) stream_piece_.resize(*stream_remaining_);
          *stream_remaining_ -= stream_piece_.size();
        }
        body.data = stream_piece_.data();
        body.size = stream_piece_.size();
        body.more = true;
      }
    } else {
      body.data = nullptr;
      body.size = 0;
      body.more = false;
    }
    Lowest().expires_after(Ms(Opts().body_idle_timeout_ms));
    http::async_write(stream_, *serializer_, [self = Self()](beast::error_code ec, size_t n) {
      self->core_->metrics.bytes_sent.fetch_add(n);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) return self->Close(false);
      if (!self->serializer_->is_done()) return self->WriteNext();
      self->OnResponseSent();
    });
  }

  void OnResponseSent() {
    if (stream_state_) stream_state_->MarkGone();
    stream_state_.reset();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    serializer_.reset();
    body_.clear();
    EndRequest(true);
    if (close_after_) return linger_ ? LingerClose() : Close(true);
    ReadRequest(false);
  }

  void EndRequest(bool answered) {
    if (!request_open_) return;
    request_open_ = false;
    core_->metrics.in_flight.fetch_sub(1);
    if (answered) {
      const double secs = std::chrono::duration<double>(Clock::now() - start_).count();
      core_->metrics.RequestDone(req_.method, status_, secs);
    }
  }

  // ---- Closing ----

  void Close(bool graceful) {
    EndRequest(false);
    if (stream_state_) stream_state_->MarkGone();
    stream_state_.reset();
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    if constexpr (kTls) {
      if (graceful) {
        Lowest().expires_after(Ms(kTlsShutdownMs));
        stream_.async_shutdown([self = Self()](const beast::error_code&) {
          beast::error_code ignored;
          self->Lowest().socket().close(ignored);
        });
        return;
      }
    }
    Lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
    Lowest().socket().close(ec);
  }

  void LingerClose() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    Lowest().socket().shutdown(tcp::socket::shutdown_send, ec);
    Lowest().expires_after(Ms(kLingerMs));
    linger_left_ = kLingerBytes;
    Drain();
  }

  void Drain() {
    Lowest().async_read_some(asio::buffer(piece_.get(), kPieceBytes),
                             [self = Self()](const beast::error_code& ec, size_t n) {
                               if (ec || n >= self->linger_left_) {
                                 beast::error_code ignored;
                                 self->Lowest().socket().close(ignored);
                                 return;
                               }
                               self->linger_left_ -= n;
                               self->Drain();
                             });
  }

  ServerCore* core_;
  Stream stream_;
  std::unique_ptr<char[]> piece_;
  beast::flat_buffer buffer_;
  uint64_t id_ = 0;
  std::string remote_;

  // The request in progress.
  std::optional<http::request_parser<http::empty_body>> header_parser_;
  std::optional<http::request_parser<http::string_body>> body_parser_;
  std::optional<http::request_parser<http::buffer_body>> stream_parser_;
  Request req_;
  const internal::RouteEntry* route_ = nullptr;
  std::unique_ptr<BodySink> sink_;
  Clock::time_point start_;
  bool request_open_ = false;
  bool body_complete_ = true;  // False while part of the request body is unread.
  bool keep_alive_ = false;
  bool expect_continue_ = false;
  unsigned version_ = 11;

  // The response in progress.
  http::response<http::buffer_body> msg_;
  std::optional<http::response_serializer<http::buffer_body>> serializer_;
  std::string body_;
  bool send_string_ = false;
  int fd_ = -1;
  uint64_t file_offset_ = 0;
  uint64_t file_remaining_ = 0;
  std::shared_ptr<BodyStream::State> stream_state_;  // A streamed body in progress.
  std::optional<uint64_t> stream_remaining_;         // Of its Content-Length, when it has one.
  std::string stream_piece_;                         // The piece being written.
  int status_ = 0;
  bool close_after_ = false;
  bool linger_ = false;
  uint64_t linger_left_ = 0;
  bool closed_ = false;
};

void ServerCore::DoAccept() {
  acceptor->async_accept(asio::make_strand(ioc),
                         [this](const beast::error_code& ec, tcp::socket socket) {
                           if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
                           if (ec) {
                             // E.g. out of file descriptors: retry shortly rather than spin.
                             accept_retry->expires_after(std::chrono::milliseconds(50));
                             accept_retry->async_wait([this](const beast::error_code& wait_ec) {
                               if (!wait_ec) DoAccept();
                             });
                             return;
                           }
                           OnAccept(std::move(socket));
                           DoAccept();
                         });
}

void ServerCore::OnAccept(tcp::socket socket) {
  if (static_cast<size_t>(metrics.connections_open.load()) >= options.max_connections) {
    beast::error_code ec;
    socket.close(ec);
    return;
  }
  try {
    beast::error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    if (ssl_ctx) {
      using TlsStream = beast::ssl_stream<beast::tcp_stream>;
      auto s = std::make_shared<Session<TlsStream>>(this, std::move(socket), *ssl_ctx);
      s->Run();
    } else {
      auto s = std::make_shared<Session<beast::tcp_stream>>(this, std::move(socket));
      s->Run();
    }
  } catch (...) {
    // A session could not be set up (e.g. out of memory): drop the connection.
  }
}

// ---- UDP ----

using udp = asio::ip::udp;

class UdpSocketImpl : public UdpSocket, public std::enable_shared_from_this<UdpSocketImpl> {
 public:
  UdpSocketImpl(asio::io_context& ioc, DatagramHandler handler)
      : strand_(asio::make_strand(ioc)),
        handler_(std::move(handler)),
        buffer_(new uint8_t[kMaxDatagram]) {
    socket_.emplace(*strand_);
  }

  Status Open(const UdpOptions& o) {
    beast::error_code ec;
    const asio::ip::address address = asio::ip::make_address(o.host, ec);
    if (ec) return Status(ErrorCode::kInvalidArgument, "UDP host " + o.host + ": " + ec.message());
    const udp::endpoint endpoint(address, o.port);
    socket_->open(endpoint.protocol(), ec);
    if (!ec) socket_->bind(endpoint, ec);
    if (!ec) socket_->non_blocking(true, ec);
    if (ec) {
      return Status(ErrorCode::kIoError,
                    "UDP bind " + o.host + ":" + std::to_string(o.port) + ": " + ec.message());
    }
    beast::error_code ignored;  // Buffer sizes are a wish: the kernel may cap them.
    socket_->set_option(asio::socket_base::receive_buffer_size(o.receive_buffer_bytes), ignored);
    socket_->set_option(asio::socket_base::send_buffer_size(o.send_buffer_bytes), ignored);
    port_ = socket_->local_endpoint(ec).port();
    asio::dispatch(*strand_, [self = shared_from_this()] { self->Receive(); });
    return Status::Ok();
  }

  uint16_t port() const override { return port_; }

  Status SendTo(const UdpPeer& to, ByteView datagram) override {
    udp::endpoint endpoint;
    if (to.len == 0 || to.len > endpoint.capacity()) {
      return Status(ErrorCode::kInvalidArgument, "bad UDP peer address");
    }
    std::memcpy(endpoint.data(), &to.addr, to.len);
    endpoint.resize(to.len);
    beast::error_code ec;
    std::lock_guard<std::mutex> lock(mu_);  // Sync sends from any thread: one at a time.
    if (!socket_ || closed_.load()) return Status(ErrorCode::kUnavailable, "UDP socket closed");
    socket_->send_to(asio::buffer(datagram.data(), datagram.size()), endpoint, 0, ec);
    if (ec == asio::error::would_block || ec == asio::error::no_buffer_space) {
      send_drops_.fetch_add(1);
      return Status(ErrorCode::kUnavailable, "UDP send buffer full");
    }
    if (ec)
      return Status(ErrorCode::kIoError, "UDP send to " + to.ToString() + ": " + ec.message());
    sent_.fetch_add(1);
    return Status::Ok();
  }

  void Every(int64_t interval_us, std::function<bool()> fn) override {
    interval_us = std::max<int64_t>(interval_us, 100);
    std::lock_guard<std::mutex> lock(mu_);
    if (!strand_ || closed_.load()) return;
    auto timer = std::make_shared<asio::steady_timer>(*strand_);
    asio::dispatch(*strand_, [self = shared_from_this(), timer, interval_us, fn = std::move(fn)] {
      if (self->closed_.load()) return;
      self->timers_.push_back(timer);
      self->Arm(timer, interval_us, fn);
    });
  }

  void Close() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!strand_) return;
    asio::dispatch(*strand_, [self = shared_from_this()] { self->CloseOnStrand(); });
  }

  uint64_t received() const override { return received_.load(); }
  uint64_t sent() const override { return sent_.load(); }
  uint64_t send_drops() const override { return send_drops_.load(); }

  // Only when no I/O thread runs (Server::Stop): closes and releases every Asio object, so that
  // a socket kept by its user past the Server's lifetime holds nothing of the io_context.
  void ForceClose() {
    std::lock_guard<std::mutex> lock(mu_);
    CloseOnStrand();
    timers_.clear();
    socket_.reset();
    strand_.reset();
  }

 private:
  static constexpr size_t kMaxDatagram = 65536;

  void Receive() {
    if (closed_.load()) return;
    socket_->async_receive_from(asio::buffer(buffer_.get(), kMaxDatagram), from_,
                                [self = shared_from_this()](const beast::error_code& ec, size_t n) {
                                  if (self->closed_.load() || ec == asio::error::operation_aborted)
                                    return;
                                  if (!ec) {
                                    self->received_.fetch_add(1);
                                    UdpPeer peer;
                                    peer.len = static_cast<socklen_t>(self->from_.size());
                                    std::memcpy(&peer.addr, self->from_.data(), peer.len);
                                    try {
                                      self->handler_(peer, ByteView(self->buffer_.get(), n));
                                    } catch (...) {
                                      // A handler must not throw; one that does loses this datagram
                                      // only.
                                    }
                                  }
                                  // ICMP errors (e.g. port unreachable after a send) surface here:
                                  // keep receiving.
                                  self->Receive();
                                });
  }

  void Arm(const std::shared_ptr<asio::steady_timer>& timer, int64_t interval_us,
           std::function<bool()> fn) {
    timer->expires_after(std::chrono::microseconds(interval_us));
    timer->async_wait([self = shared_from_this(), timer, interval_us,
                       fn = std::move(fn)](const beast::error_code& ec) mutable {
      if (ec || self->closed_.load()) return;
      bool again = false;
      try {
        again = fn();
      } catch (...) {
        again = false;
      }
      if (again) self->Arm(timer, interval_us, std::move(fn));
    });
  }

  void CloseOnStrand() {
    if (closed_.exchange(true)) return;
    beast::error_code ec;
    if (socket_) socket_->close(ec);
    for (auto& t : timers_) t->cancel();
  }

  std::mutex mu_;  // Guards the presence of strand_ and socket_ (ForceClose) and sends.
  std::optional<asio::strand<asio::io_context::executor_type>> strand_;
  std::optional<udp::socket> socket_;
  DatagramHandler handler_;
  std::unique_ptr<uint8_t[]> buffer_;
  udp::endpoint from_;
  uint16_t port_ = 0;
  std::atomic<bool> closed_{false};
  std::vector<std::shared_ptr<asio::steady_timer>> timers_;  // On the strand.
  std::atomic<uint64_t> received_{0}, sent_{0}, send_drops_{0};
};

}  // namespace

std::string UdpPeer::ToString() const {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
    return std::string(host) + ":" + std::to_string(port);
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
    return "[" + std::string(host) + "]:" + std::to_string(port);
  }
  return "?";
}

bool UdpPeer::operator==(const UdpPeer& o) const {
  return len == o.len && std::memcmp(&addr, &o.addr, len) == 0;
}

Result<UdpPeer> ParseUdpPeer(const std::string& text) {
  std::string host, port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find("]:");
    if (close == std::string::npos) return Status(ErrorCode::kInvalidArgument, "bad address");
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string::npos) return Status(ErrorCode::kInvalidArgument, "bad address");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoul(port) > 65535) {
    return Status(ErrorCode::kInvalidArgument, "bad port in " + text);
  }
  UdpPeer p;
  const uint16_t n = static_cast<uint16_t>(std::stoul(port));
  auto* a4 = reinterpret_cast<sockaddr_in*>(&p.addr);
  auto* a6 = reinterpret_cast<sockaddr_in6*>(&p.addr);
  if (::inet_pton(AF_INET, host.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(n);
    p.len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, host.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(n);
    p.len = sizeof(sockaddr_in6);
  } else {
    return Status(ErrorCode::kInvalidArgument, "bad host in " + text);
  }
  return p;
}

class Server::Impl : public ServerCore {
 public:
  std::mutex udp_mu;
  std::vector<std::weak_ptr<UdpSocketImpl>> udp_sockets;
};

Result<std::shared_ptr<UdpSocket>> Server::OpenUdp(
    const UdpOptions& options, std::function<void(const UdpPeer&, ByteView)> on_datagram) {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.lifecycle_mu);
    if (s.stopped) return Status(ErrorCode::kInvalidArgument, "the server has stopped");
  }
  std::shared_ptr<UdpSocketImpl> sock;
  try {
    sock = std::make_shared<UdpSocketImpl>(s.ioc, std::move(on_datagram));
    DS_RETURN_IF_ERROR(sock->Open(options));
  } catch (...) {
    return Status(ErrorCode::kInternal,
                  "opening a UDP socket: " + ExceptionMessage(std::current_exception()));
  }
  std::lock_guard<std::mutex> lock(s.udp_mu);
  s.udp_sockets.push_back(sock);
  return std::shared_ptr<UdpSocket>(sock);
}

void Responder::Send(Response response) const {
  if (impl_ == nullptr || impl_->sent.exchange(true)) return;
  impl_->deliver(std::move(response));
}

Responder::Impl::~Impl() {
  if (!sent.exchange(true) && deliver) {
    deliver(ErrorResponse(ErrorCode::kInternal, "the handler dropped the request unanswered"));
  }
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
}

Server::~Server() { Stop(); }

void Server::Route(std::string method, std::string pattern, Handler handler) {
  impl_->router.Add(std::move(method), pattern, false, std::move(handler), {});
}

void Server::Route(std::string method, std::string pattern, Handler handler, FastHandler fast) {
  impl_->router.Add(std::move(method), pattern, false, std::move(handler), {}, nullptr,
                    std::move(fast));
}

void Server::StreamRoute(std::string method, std::string pattern, StreamHandler handler) {
  impl_->router.Add(std::move(method), pattern, true, {}, std::move(handler));
}

void Server::AsyncRoute(std::string method, std::string pattern, AsyncHandler handler) {
  impl_->router.Add(std::move(method), pattern, false, {}, {}, std::move(handler));
}

Status Server::Start() {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.lifecycle_mu);
  if (s.started) return Status(ErrorCode::kInvalidArgument, "server already started");
  const ServerOptions& o = s.options;
  if (o.io_threads < 1 || o.worker_threads < 1) {
    return Status(ErrorCode::kInvalidArgument, "io_threads and worker_threads must be >= 1");
  }
  try {
    if (!o.tls_cert_path.empty() || !o.tls_key_path.empty()) {
      if (o.tls_cert_path.empty() || o.tls_key_path.empty()) {
        return Status(ErrorCode::kInvalidArgument, "TLS needs both a certificate and a key");
      }
      s.ssl_ctx.emplace(asio::ssl::context::tls_server);
      s.ssl_ctx->set_options(asio::ssl::context::default_workarounds |
                             asio::ssl::context::no_sslv2 | asio::ssl::context::no_sslv3 |
                             asio::ssl::context::no_tlsv1 | asio::ssl::context::no_tlsv1_1 |
                             asio::ssl::context::single_dh_use);
      SSL_CTX_set_min_proto_version(s.ssl_ctx->native_handle(), TLS1_2_VERSION);
      beast::error_code ec;
      s.ssl_ctx->use_certificate_chain_file(o.tls_cert_path, ec);
      if (ec) {
        return Status(ErrorCode::kInvalidArgument,
                      "TLS certificate " + o.tls_cert_path + ": " + ec.message());
      }
      s.ssl_ctx->use_private_key_file(o.tls_key_path, asio::ssl::context::pem, ec);
      if (ec) {
        return Status(ErrorCode::kInvalidArgument,
                      "TLS key " + o.tls_key_path + ": " + ec.message());
      }
    }

    beast::error_code ec;
    tcp::resolver resolver(s.ioc);
    const auto endpoints =
        resolver.resolve(o.host, std::to_string(o.port),
                         tcp::resolver::passive | tcp::resolver::numeric_service, ec);
    if (ec || endpoints.empty()) {
      return Status(ErrorCode::kInvalidArgument, "cannot resolve listen address " + o.host + ": " +
                                                     (ec ? ec.message() : "no address"));
    }
    const tcp::endpoint endpoint = endpoints.begin()->endpoint();
    const std::string where = o.host + ":" + std::to_string(o.port);
    s.acceptor.emplace(s.ioc);
    s.acceptor->open(endpoint.protocol(), ec);
    if (!ec) s.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) s.acceptor->bind(endpoint, ec);
    if (!ec) s.acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      s.acceptor.reset();
      return Status(ErrorCode::kIoError, "listen on " + where + ": " + ec.message());
    }
    s.bound_port = s.acceptor->local_endpoint().port();
    s.accept_retry.emplace(s.ioc);
    s.workers = std::make_unique<asio::thread_pool>(static_cast<size_t>(o.worker_threads));
    s.work.emplace(s.ioc.get_executor());
    s.DoAccept();
    for (int i = 0; i < o.io_threads; ++i) {
      s.io_threads.emplace_back([&s] {
        for (;;) {
          try {
            s.ioc.run();
            return;
          } catch (...) {
            // A handler threw: keep serving the other connections.
          }
        }
      });
    }
  } catch (...) {
    return Status(ErrorCode::kInternal,
                  "starting the server: " + ExceptionMessage(std::current_exception()));
  }
  s.started = true;
  return Status::Ok();
}

uint16_t Server::port() const { return impl_->bound_port.load(); }

void Server::Stop() {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.lifecycle_mu);
  if (!s.started || s.stopped) return;
  s.stopped = true;
  s.work.reset();
  s.ioc.stop();
  for (std::thread& t : s.io_threads) t.join();
  s.io_threads.clear();
  beast::error_code ec;
  s.acceptor->close(ec);
  // Handlers in progress finish; what they post back to the stopped io_context is dropped.
  s.workers->join();
  std::vector<std::shared_ptr<SessionBase>> open;
  {
    std::lock_guard<std::mutex> sessions_lock(s.sessions_mu);
    for (auto& [id, weak] : s.sessions) {
      if (auto session = weak.lock()) open.push_back(std::move(session));
    }
  }
  for (auto& session : open) session->ForceClose();
  std::lock_guard<std::mutex> udp_lock(s.udp_mu);
  for (auto& weak : s.udp_sockets) {
    if (auto sock = weak.lock()) sock->ForceClose();
  }
  s.udp_sockets.clear();
}

std::string Server::MetricsText() const { return impl_->metrics.Text(); }

}  // namespace ds::net
