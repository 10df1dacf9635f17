// deltastream's HTTP layer: a small async HTTP/1.1 server (Boost.Beast; HTTPS when given a
// certificate) and a blocking client (libcurl). This header is Beast- and curl-free: src/net is
// the only place that includes them.
//
// Server model: Asio I/O threads parse requests and write responses; handlers run on a separate
// worker pool (they may block on disk or SQLite), and their Response is written back
// asynchronously. Routes match "/v1/artifacts/{name}/versions/{version}"-style patterns; a
// parameter matches one path segment (percent-decoded; a decoded "/" or NUL is refused).
//
// Hardening: limits on header size, buffered body size, streamed body size and connections;
// a request's header must arrive within header_timeout (slow-loris), a body must keep moving
// (body_idle_timeout), idle keep-alive connections close after idle_timeout.
//
// Thread-safety: Server methods are thread-safe after Start(); routes are added before Start().
#ifndef DELTASTREAM_NET_HTTP_H_
#define DELTASTREAM_NET_HTTP_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::net {

struct Request {
  std::string method;                                        // "GET", "HEAD", "POST", "PUT", ...
  std::string path;                                          // Raw path (no query).
  std::string query;                                         // Raw query string, without '?'.
  std::vector<std::pair<std::string, std::string>> headers;  // Names lower-case.
  std::map<std::string, std::string> params;                 // From the route pattern, decoded.
  std::string body;                                          // Buffered body (plain routes only).
  std::string remote;                                        // Peer "ip:port".

  // First header with this (case-insensitive) name, or empty.
  std::string_view Header(std::string_view name) const;
  // A percent-decoded query parameter, if present.
  std::optional<std::string> QueryParam(std::string_view name) const;
};

// A response body taken from a file range (streamed, never loaded whole).
struct FileBody {
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
};

class BodyStream;
class UdpSocket;  // net/udp.h
struct UdpOptions;
struct UdpPeer;

struct Response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // When set, the body is this file range instead of |body|. The server then honours Range
  // (single range: 206 + Content-Range, unsatisfiable: 416) and If-None-Match against an ETag
  // header the handler set (304), and advertises Accept-Ranges: bytes.
  std::optional<FileBody> file;
  // When set, the body is produced over time by whoever holds the BodyStream (Server-Sent
  // Events, an object still arriving). Sent with Content-Length when |stream_length| is set,
  // otherwise chunked (HTTP/1.1) or until close (HTTP/1.0). Make both with Response::Streamed.
  std::shared_ptr<BodyStream> stream;
  std::optional<uint64_t> stream_length;

  static Response Json(int status, std::string json);
  static Response Text(int status, std::string text, std::string content_type = "text/plain");
  // {"error":{"code":N,"name":"...","message":"..."}} with the HTTP status for the code.
  static Response FromStatus(const Status& s);
  // A response whose body the caller writes into |*out| from any thread, after returning (or
  // sending) the response. For text/event-stream the server also sends Cache-Control: no-cache.
  static Response Streamed(int status, std::string content_type, std::shared_ptr<BodyStream>* out,
                           std::optional<uint64_t> length = std::nullopt);
  Response& With(std::string name, std::string value) {
    headers.emplace_back(std::move(name), std::move(value));
    return *this;
  }
};

// The producer's end of a streamed response body. Thread-safe. Writes are queued and sent in
// order; the producer keeps the queue short (pending() / WaitBelow) — a slow client must not
// make the server buffer without bound. Destroying the last reference without Close() ends the
// body too (a chunked body ends cleanly; a body shorter than its Content-Length closes the
// connection so that the client sees the truncation).
class BodyStream {
 public:
  BodyStream();
  ~BodyStream();
  BodyStream(const BodyStream&) = delete;
  BodyStream& operator=(const BodyStream&) = delete;

  // Queues |data|. False when the client is gone or the stream was closed: stop producing.
  bool Write(std::string data);
  // Ends the body once what was written has been sent. Idempotent.
  void Close();
  // Bytes queued but not yet handed to the socket.
  size_t pending() const;
  // Blocks until pending() <= |bytes|; false when the client went away, the stream was closed or
  // |timeout_ms| passed first.
  bool WaitBelow(size_t bytes, int64_t timeout_ms);
  // True once the client has gone (a write failed, the connection closed, the server stopped).
  bool gone() const;
  // Arranges for |fn| to be called once, on a connection thread, when pending() drops to |bytes|
  // or below, or when the client goes. Returns false, and does not keep |fn|, when that holds
  // already (or the stream is closed): then the caller goes on producing itself. A later call
  // replaces a |fn| not yet called. |fn| runs without any of the stream's locks held and may
  // Write(); it must not block.
  bool OnBelow(size_t bytes, std::function<void()> fn);

  struct State;  // Shared with the connection that sends the body.
  std::shared_ptr<State> state() const { return state_; }

 private:
  std::shared_ptr<State> state_;
};

// The handle an AsyncHandler answers through, from any thread, once: later calls are ignored.
// If every copy is dropped without an answer, the request gets a 500. Copies hold the connection:
// drop them (answer) before destroying the Server.
class Responder {
 public:
  Responder() = default;
  void Send(Response response) const;
  explicit operator bool() const { return static_cast<bool>(impl_); }

  struct Impl;
  explicit Responder(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<Impl> impl_;
};

// HTTP status for an ErrorCode: 400 invalid argument, 401, 403, 404, 409 already exists,
// 413 too large, 422 digest mismatch, 503 unavailable, 507 no space, 500 otherwise.
int HttpStatusFor(ErrorCode code);

// Receives a streamed request body.
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual Status Write(ByteView data) = 0;
};

using Handler = std::function<Response(Request&)>;
// A route's fast path: runs on the connection's I/O thread before anything is queued for the
// worker pool, and answers at once when it can (a cache hit); nullopt hands the request to the
// route's Handler on the worker pool. It must not block: no network, no waiting on a lock held
// across I/O.
using FastHandler = std::function<std::optional<Response>(Request&)>;
// Runs on the worker pool like a Handler, but answers through the Responder whenever it likes
// (long polls park it without holding a worker thread). Copy what you need from the Request:
// it is only valid during the call.
using AsyncHandler = std::function<void(Request&, Responder)>;
// Streamed-body routes: |begin| runs when the header has arrived (it may refuse: its error is
// the response, the body is not read); the body is then fed to the sink as it arrives; |finish|
// gets the sink back with the body's outcome (Ok, or why reading it failed: kTooLarge,
// kUnavailable for a timeout or a dropped peer — then the response is not sent).
struct StreamHandler {
  std::function<Result<std::unique_ptr<BodySink>>(Request&)> begin;
  std::function<Response(Request&, std::unique_ptr<BodySink>, Status)> finish;
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8440;  // 0 = ephemeral (see Server::port()).
  int io_threads = 1;
  int worker_threads = 4;
  uint64_t max_header_bytes = 16 << 10;
  uint64_t max_body_bytes = 1 << 20;             // Buffered bodies.
  uint64_t max_stream_body_bytes = 64ull << 30;  // Streamed bodies.
  size_t max_connections = 4096;
  int64_t header_timeout_ms = 10000;
  int64_t body_idle_timeout_ms = 30000;
  int64_t idle_timeout_ms = 60000;
  // HTTPS when both are set (PEM files).
  std::string tls_cert_path, tls_key_path;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();  // Stops.
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  void Route(std::string method, std::string pattern, Handler handler);
  // A route whose requests |fast| may answer on the I/O thread (FastHandler), else |handler|.
  void Route(std::string method, std::string pattern, Handler handler, FastHandler fast);
  void StreamRoute(std::string method, std::string pattern, StreamHandler handler);
  void AsyncRoute(std::string method, std::string pattern, AsyncHandler handler);
  // A GET route is also served for HEAD (body omitted). Unknown path: 404; known path with
  // another method: 405 with Allow.

  Status Start();  // Binds (kIoError/kInvalidArgument), starts the threads.
  uint16_t port() const;
  void Stop();  // Closes the listener and connections, joins threads. Idempotent.

  // A UDP socket on this server's event loop (net/udp.h), bound to |options|' host and port.
  // Before or after Start() (datagrams are handled once it runs); closed by Close() or Stop().
  Result<std::shared_ptr<UdpSocket>> OpenUdp(
      const UdpOptions& options, std::function<void(const UdpPeer&, ByteView)> on_datagram);

  // Server metrics in Prometheus text format (requests by method/status class, in flight,
  // connections, bytes in/out, request latency histogram).
  std::string MetricsText() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- Client (libcurl) ----

struct ClientOptions {
  std::string bearer_token;  // Sent as Authorization: Bearer.
  std::string ca_file;       // Extra trust anchor for HTTPS (e.g. a self-signed server).
  int64_t connect_timeout_ms = 10000;
  int64_t low_speed_timeout_ms = 60000;  // Abort when < 1 byte/s for this long.
  // Largest body Get/Send keep in memory; a longer answer fails with kTooLarge (0: no limit).
  uint64_t max_body_bytes = 0;
};

struct ClientResponse {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // Names lower-case.
  std::string body;
  // Seconds from the start of the request to the first response byte, and to the last.
  double first_byte_seconds = 0;
  double total_seconds = 0;
  std::string_view Header(std::string_view name) const;
};

// Progress callback: (bytes done, bytes total or 0).
using Progress = std::function<void(uint64_t, uint64_t)>;

// Thread-safe: concurrent calls each use their own connection; sequential calls reuse
// connections (keep-alive).
class Client {
 public:
  explicit Client(ClientOptions options = {});
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Transport failures are kUnavailable; any HTTP status is a successful ClientResponse.
  Result<ClientResponse> Get(const std::string& url,
                             const std::vector<std::pair<std::string, std::string>>& headers = {});
  Result<ClientResponse> Send(const std::string& method, const std::string& url, std::string body,
                              const std::vector<std::pair<std::string, std::string>>& headers = {});
  // A GET whose 2xx body goes to |on_data| (with the HTTP status, e.g. 200 or 206) piece by
  // piece as it arrives (the body is not kept); an error from |on_data| aborts the transfer and
  // is returned. A non-2xx body is kept in the response (its first MiB).
  Result<ClientResponse> GetStream(
      const std::string& url, const std::function<Status(int, ByteView)>& on_data,
      const std::vector<std::pair<std::string, std::string>>& headers = {});
  // The same, and |on_head| (when set) sees the status and headers of a 2xx answer before its
  // first body byte; an error from it aborts the transfer. (Not called for an empty body.)
  Result<ClientResponse> GetStream(
      const std::string& url, const std::function<Status(const ClientResponse&)>& on_head,
      const std::function<Status(int, ByteView)>& on_data,
      const std::vector<std::pair<std::string, std::string>>& headers = {});
  // Uploads a file as the request body, streamed from disk.
  Result<ClientResponse> UploadFile(const std::string& method, const std::string& url,
                                    const std::string& path,
                                    const std::vector<std::pair<std::string, std::string>>& headers,
                                    const Progress& progress = nullptr);
  // Downloads into |out_path| (written atomically). Unlike the other calls, a non-2xx answer is
  // an error (StatusFromResponse of the answer, e.g. kNotFound for 404); on any error |out_path|
  // is left untouched and no temporary file remains.
  Result<ClientResponse> DownloadFile(const std::string& url, const std::string& out_path,
                                      const Progress& progress = nullptr);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Maps an error response's JSON body ({"error":{"code":N,...}}) back to a Status; for other
// bodies, a Status from the HTTP status.
Status StatusFromResponse(const ClientResponse& r);

// Percent-encodes one path segment or query value.
std::string UrlEncode(std::string_view s);

}  // namespace ds::net

#endif  // DELTASTREAM_NET_HTTP_H_
