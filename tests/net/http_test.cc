// src/net: a real Server on 127.0.0.1 (ephemeral port) driven by the Client and by raw sockets.
#include "net/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "gtest/gtest.h"
#include "net/http_internal.h"
#include "support/test_util.h"

namespace ds::net {
namespace {

using ::ds::testing::CodeOf;
using ::ds::testing::RandomBytes;
using ::ds::testing::TempDir;
using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

std::string AsString(const Bytes& b) { return std::string(b.begin(), b.end()); }

// ---- Raw sockets ----

class RawSocket {
 public:
  explicit RawSocket(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawSocket() { Close(); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;

  bool connected() const { return connected_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool Send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Reads for up to |timeout|; stops early when the peer closes (closed() then true) or when
  // |until| (if non-empty) returns true for what was read.
  std::string Read(Ms timeout, const std::function<bool(const std::string&)>& until = nullptr) {
    std::string out;
    const auto deadline = SteadyClock::now() + timeout;
    while (true) {
      const auto left = std::chrono::duration_cast<Ms>(deadline - SteadyClock::now()).count();
      if (left <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) break;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      out.append(buf, static_cast<size_t>(n));
      if (until && until(out)) break;
    }
    return out;
  }
  bool closed() const { return closed_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
};

size_t CountOf(const std::string& haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + 1)) {
    ++n;
  }
  return n;
}

// ---- Sinks ----

struct UploadLog {
  std::atomic<int> begins{0};
  std::atomic<int> writes{0};
  std::atomic<int> finishes{0};
  std::atomic<int> last_outcome{-1};  // ErrorCode of the last finish.
  std::atomic<uint64_t> bytes{0};
  std::atomic<int> failed_writes{0};
};

class HashSink : public BodySink {
 public:
  HashSink(UploadLog* log, uint64_t fail_after) : log_(log), fail_after_(fail_after) {}
  Status Write(ByteView data) override {
    log_->writes.fetch_add(1);
    log_->bytes.fetch_add(data.size());
    if (bytes_ + data.size() > fail_after_) {
      log_->failed_writes.fetch_add(1);
      return Error(ErrorCode::kDigestMismatch, "sink refuses after " + std::to_string(bytes_));
    }
    sha_.Update(data);
    bytes_ += data.size();
    return Status::Ok();
  }
  std::string Digest() { return ToHex(sha_.Finish()); }
  uint64_t bytes() const { return bytes_; }

 private:
  UploadLog* log_;
  uint64_t fail_after_;
  Sha256 sha_;
  uint64_t bytes_ = 0;
};

// ---- The fixture: a server with a handful of routes ----

class HttpTest : public ::testing::Test {
 protected:
  void StartServer(ServerOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    server_ = std::make_unique<Server>(options);
    server_->Route("GET", "/hello", [](Request&) { return Response::Text(200, "hello"); });
    server_->Route("GET", "/v1/items/{name}/versions/{version}", [](Request& r) {
      std::string q = r.QueryParam("q").value_or("<none>");
      return Response::Text(200, r.params["name"] + "|" + r.params["version"] + "|" + q);
    });
    server_->Route("GET", "/v1/items/special/versions/{version}", [](Request& r) {
      return Response::Text(200, "special " + r.params["version"]);
    });
    server_->Route("DELETE", "/hello", [](Request&) { return Response::Text(200, "deleted"); });
    server_->Route("POST", "/echo", [](Request& r) {
      return Response::Text(
          200, std::to_string(r.body.size()) + ":" + ToHex(Sha256::Of(ToBytesView(r.body))));
    });
    server_->Route("GET", "/remote", [](Request& r) { return Response::Text(200, r.remote); });
    server_->Route("GET", "/throw", [](Request&) -> Response { throw std::runtime_error("boom"); });
    server_->Route("GET", "/slow", [](Request&) {
      std::this_thread::sleep_for(Ms(2));
      return Response::Text(200, "ok");
    });
    server_->Route("GET", "/file", [this](Request&) {
      Response r;
      r.file = FileBody{file_path_, 0, file_data_.size()};
      r.With("ETag", "\"v1\"").With("Content-Type", "application/octet-stream");
      return r;
    });
    server_->Route("GET", "/file/part", [this](Request&) {
      Response r;
      r.file = FileBody{file_path_, 10, 100};
      return r;
    });
    StreamHandler upload;
    upload.begin = [this](Request& r) -> Result<std::unique_ptr<BodySink>> {
      log_.begins.fetch_add(1);
      if (r.Header("authorization") != "Bearer secret") {
        return Status(ErrorCode::kUnauthenticated, "no token");
      }
      const uint64_t fail_after =
          r.QueryParam("fail_after") ? std::stoull(*r.QueryParam("fail_after")) : UINT64_MAX;
      return std::unique_ptr<BodySink>(std::make_unique<HashSink>(&log_, fail_after));
    };
    upload.finish = [this](Request&, std::unique_ptr<BodySink> sink, Status outcome) {
      log_.last_outcome.store(static_cast<int>(outcome.code()));
      log_.finishes.fetch_add(1);
      if (!outcome.ok()) return Response::FromStatus(outcome);
      auto* hash = static_cast<HashSink*>(sink.get());
      const uint64_t n = hash->bytes();
      return Response::Text(201, std::to_string(n) + ":" + hash->Digest());
    };
    server_->StreamRoute("PUT", "/upload/{name}", upload);
    server_->AsyncRoute("GET", "/park", [this](Request& r, Responder responder) {
      std::lock_guard<std::mutex> lock(mu_);
      parked_.push_back(std::move(responder));
    });
    server_->AsyncRoute("GET", "/async-now", [](Request& r, Responder responder) {
      responder.Send(Response::Text(200, "now " + r.QueryParam("x").value_or("")));
      responder.Send(Response::Text(200, "ignored"));
    });
    server_->AsyncRoute("GET", "/async-drop", [](Request&, Responder) {});
    server_->AsyncRoute("GET", "/async-throw",
                        [](Request&, Responder) { throw std::runtime_error("async boom"); });
    server_->Route("GET", "/events", [this](Request&) {
      std::shared_ptr<BodyStream> stream;
      Response r = Response::Streamed(200, "text/event-stream", &stream);
      std::lock_guard<std::mutex> lock(mu_);
      streams_.push_back(stream);
      return r;
    });
    server_->Route("GET", "/sized", [this](Request&) {
      std::shared_ptr<BodyStream> stream;
      Response r = Response::Streamed(200, "application/octet-stream", &stream, 10);
      std::lock_guard<std::mutex> lock(mu_);
      streams_.push_back(stream);
      return r;
    });
    ASSERT_TRUE(server_->Start().ok());
    base_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }

  static ByteView ToBytesView(const std::string& s) {
    return ByteView(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  }

  void MakeFile(size_t size) {
    file_data_ = RandomBytes(size, 7);
    file_path_ = dir_.Join("served.bin");
    ds::testing::WriteFileOrDie(file_path_, file_data_);
  }

  // Waits until |pred| holds (or |timeout| passes); returns pred().
  static bool WaitFor(const std::function<bool()>& pred, Ms timeout = Ms(5000)) {
    const auto deadline = SteadyClock::now() + timeout;
    while (!pred() && SteadyClock::now() < deadline) std::this_thread::sleep_for(Ms(5));
    return pred();
  }

  size_t Parked() {
    std::lock_guard<std::mutex> lock(mu_);
    return parked_.size();
  }
  // The |i|th streamed response's producer end, once its handler ran (null after 5 s).
  std::shared_ptr<BodyStream> StreamAt(size_t i) {
    WaitFor([&] {
      std::lock_guard<std::mutex> lock(mu_);
      return streams_.size() > i;
    });
    std::lock_guard<std::mutex> lock(mu_);
    return streams_.size() > i ? streams_[i] : nullptr;
  }

  std::mutex mu_;
  std::vector<Responder> parked_;
  std::vector<std::shared_ptr<BodyStream>> streams_;
  TempDir dir_;
  Bytes file_data_;
  std::string file_path_;
  UploadLog log_;
  std::unique_ptr<Server> server_;
  std::string base_;
  Client client_;
};

// ---- Helpers without a server ----

TEST(HttpHelpersTest, UrlEncodeAndQueryDecoding) {
  EXPECT_EQ(UrlEncode("a b/c?d=e&f~g.h-i_j"), "a%20b%2Fc%3Fd%3De%26f~g.h-i_j");
  EXPECT_EQ(UrlEncode("\xff"), "%FF");
  Request r;
  r.query = "a=1&b=x+y%20z&c&d=%2F&bad=%zz&a=2";
  EXPECT_EQ(r.QueryParam("a"), "1");
  EXPECT_EQ(r.QueryParam("b"), "x y z");
  EXPECT_EQ(r.QueryParam("c"), "");
  EXPECT_EQ(r.QueryParam("d"), "/");
  EXPECT_EQ(r.QueryParam("bad"), "%zz");
  EXPECT_EQ(r.QueryParam("missing"), std::nullopt);
}

TEST(HttpHelpersTest, ErrorBodiesRoundTrip) {
  for (const ErrorCode code :
       {ErrorCode::kTooLarge, ErrorCode::kUnauthenticated, ErrorCode::kDigestMismatch,
        ErrorCode::kPatchChecksum, ErrorCode::kRollback, ErrorCode::kNoSpace}) {
    const Response res = Response::FromStatus(Status(code, "why \"quoted\""));
    EXPECT_EQ(res.status, HttpStatusFor(code));
    ClientResponse cr;
    cr.status = res.status;
    cr.body = res.body;
    const Status s = StatusFromResponse(cr);
    EXPECT_EQ(s.code(), code);
    EXPECT_NE(s.message().find("why \"quoted\""), std::string::npos) << s.message();
  }
  EXPECT_EQ(HttpStatusFor(ErrorCode::kAlreadyExists), 409);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kUnavailable), 503);
  EXPECT_EQ(HttpStatusFor(ErrorCode::kInternal), 500);
  ClientResponse plain;
  plain.status = 404;
  plain.body = "<html>not json</html>";
  EXPECT_EQ(CodeOf(StatusFromResponse(plain)), ErrorCode::kNotFound);
  plain.status = 503;
  EXPECT_EQ(CodeOf(StatusFromResponse(plain)), ErrorCode::kUnavailable);
  plain.status = 200;
  EXPECT_TRUE(StatusFromResponse(plain).ok());
  plain.status = 418;
  plain.body = R"({"error":{"code":999,"name":"future","message":"m"}})";
  EXPECT_EQ(CodeOf(StatusFromResponse(plain)), ErrorCode::kProtocol);
}

TEST(HttpHelpersTest, RangeParsing) {
  using internal::ParseRange;
  using internal::RangeKind;
  auto r = ParseRange("bytes=0-99", 1000);
  EXPECT_EQ(r.kind, RangeKind::kSatisfiable);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 99u);
  r = ParseRange("bytes=990-2000", 1000);
  EXPECT_EQ(r.last, 999u);
  r = ParseRange("bytes=-10", 1000);
  EXPECT_EQ(r.first, 990u);
  r = ParseRange("bytes=-5000", 1000);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(ParseRange("bytes=1000-", 1000).kind, RangeKind::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=-0", 1000).kind, RangeKind::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=5-1", 1000).kind, RangeKind::kNone);
  EXPECT_EQ(ParseRange("bytes=0-1,5-6", 1000).kind, RangeKind::kNone);
  EXPECT_EQ(ParseRange("items=0-1", 1000).kind, RangeKind::kNone);
  EXPECT_EQ(ParseRange("bytes=x-1", 1000).kind, RangeKind::kNone);
  EXPECT_TRUE(internal::EtagMatches("\"a\", W/\"b\"", "\"b\""));
  EXPECT_TRUE(internal::EtagMatches("*", "\"b\""));
  EXPECT_FALSE(internal::EtagMatches("\"a\"", "\"b\""));
}

// ---- Routing ----

TEST_F(HttpTest, ParamsAndQueryAreDecoded) {
  StartServer();
  auto r = client_.Get(base_ + "/v1/items/a%20b%C3%A9/versions/1.0?q=x+y%26z&other=1");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "a b\xC3\xA9|1.0|x y&z");
  // The most literal route wins.
  r = client_.Get(base_ + "/v1/items/special/versions/2");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, "special 2");
  // A decoded '/' or NUL in a parameter is refused.
  for (const char* bad :
       {"/v1/items/a%2Fb/versions/1", "/v1/items/a%00b/versions/1", "/v1/items/a%zzb/versions/1"}) {
    r = client_.Get(base_ + bad);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 400) << bad;
    EXPECT_EQ(CodeOf(StatusFromResponse(*r)), ErrorCode::kInvalidArgument);
  }
}

// A route's fast path answers on the I/O thread, even while every worker is busy; what it
// declines goes to the handler on the workers.
TEST_F(HttpTest, FastPathAnswersWhileTheWorkersAreBusy) {
  ServerOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  o.worker_threads = 1;
  server_ = std::make_unique<Server>(o);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  server_->Route("GET", "/block", [&](Request&) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, std::chrono::seconds(20), [&] { return release; });
    return Response::Text(200, "unblocked");
  });
  std::atomic<int> slow_calls{0};
  server_->Route(
      "GET", "/obj/{name}",
      [&](Request& r) {
        ++slow_calls;
        return Response::Text(200, "slow " + r.params["name"]);
      },
      [](Request& r) -> std::optional<Response> {
        if (r.params["name"] != "cached") return std::nullopt;
        return Response::Text(200, "fast cached");
      });
  ASSERT_TRUE(server_->Start().ok());
  const std::string base = "http://127.0.0.1:" + std::to_string(server_->port());
  std::thread blocker([&] {
    Result<ClientResponse> b = Client().Get(base + "/block");
    EXPECT_TRUE(b.ok() && b->body == "unblocked");
  });
  auto unblock = [&] {
    {
      std::lock_guard<std::mutex> lock(mu);
      release = true;
    }
    cv.notify_all();
    if (blocker.joinable()) blocker.join();
  };
  // The only worker is held by /block; the fast path still answers.
  std::this_thread::sleep_for(Ms(100));
  Result<ClientResponse> r = Client().Get(base + "/obj/cached");
  const bool fast_ok = r.ok() && r->body == "fast cached";
  const int slow_before = slow_calls.load();
  unblock();
  ASSERT_TRUE(fast_ok) << (r.ok() ? r->body : r.status().ToString());
  EXPECT_EQ(slow_before, 0);
  r = Client().Get(base + "/obj/other");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, "slow other");
  EXPECT_EQ(slow_calls.load(), 1);
  server_.reset();
}

TEST_F(HttpTest, UnknownPathIs404AndWrongMethodIs405) {
  StartServer();
  auto r = client_.Get(base_ + "/nope");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(r->Header("content-type"), "application/json");
  EXPECT_EQ(CodeOf(StatusFromResponse(*r)), ErrorCode::kNotFound);
  r = client_.Send("POST", base_ + "/hello", "x");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->Header("allow"), "GET, HEAD, DELETE");
  r = client_.Send("DELETE", base_ + "/hello", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, "deleted");
  r = client_.Send("HEAD", base_ + "/hello", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("content-length"), "5");
  EXPECT_EQ(r->body, "");
}

// ---- Bodies ----

TEST_F(HttpTest, BufferedBodyLimit) {
  ServerOptions o;
  o.max_body_bytes = 100000;
  StartServer(o);
  const std::string ok_body = AsString(RandomBytes(100000, 1));
  auto r = client_.Send("POST", base_ + "/echo", ok_body);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "100000:" + ToHex(Sha256::Of(ToBytesView(ok_body))));
  r = client_.Send("POST", base_ + "/echo", ok_body + "x");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(CodeOf(StatusFromResponse(*r)), ErrorCode::kTooLarge);
  // A chunked body (no declared length) is cut off at the limit too.
  RawSocket s(server_->port());
  ASSERT_TRUE(s.connected());
  std::string chunked = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 30; ++i) chunked += "1000\r\n" + std::string(4096, 'a') + "\r\n";
  chunked += "0\r\n\r\n";
  s.Send(chunked);
  const std::string reply = s.Read(
      Ms(5000), [](const std::string& d) { return d.find("\r\n\r\n") != std::string::npos; });
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
  // The server still serves.
  r = client_.Send("POST", base_ + "/echo", "abc");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpTest, StreamedUploadArrivesInOrder) {
  StartServer();
  const Bytes data = RandomBytes(20 << 20, 42);
  const std::string path = dir_.Join("upload.bin");
  ds::testing::WriteFileOrDie(path, data);
  uint64_t last_done = 0, last_total = 0;
  auto r =
      client_.UploadFile("PUT", base_ + "/upload/big", path, {{"Authorization", "Bearer secret"}},
                         [&](uint64_t done, uint64_t total) {
                           last_done = done;
                           last_total = total;
                         });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 201) << r->body;
  EXPECT_EQ(r->body, std::to_string(data.size()) + ":" + ToHex(Sha256::Of(data)));
  EXPECT_EQ(last_done, data.size());
  EXPECT_EQ(last_total, data.size());
  // Pieces, not one buffer, and not tiny ones either.
  EXPECT_GT(log_.writes.load(), 20);
  EXPECT_LT(log_.writes.load(), 20 * 256);
  EXPECT_EQ(log_.last_outcome.load(), 0);
}

TEST_F(HttpTest, StreamedUploadOverRawSocketWithoutExpect) {
  StartServer();
  RawSocket s(server_->port());
  ASSERT_TRUE(s.connected());
  const std::string body = AsString(RandomBytes(300000, 3));
  s.Send("PUT /upload/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body);
  const std::string reply = s.Read(Ms(5000), [](const std::string& d) {
    return d.find("\r\n\r\n") != std::string::npos && d.back() != '\n';
  });
  EXPECT_EQ(reply.rfind("HTTP/1.1 201", 0), 0u) << reply;
  EXPECT_NE(reply.find("300000:" + ToHex(Sha256::Of(ToBytesView(body)))), std::string::npos);
}

TEST_F(HttpTest, StreamBeginRefusalSkipsTheBody) {
  StartServer();
  const std::string path = dir_.Join("upload.bin");
  ds::testing::WriteFileOrDie(path, RandomBytes(4 << 20, 5));
  auto r = client_.UploadFile("PUT", base_ + "/upload/x", path, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(CodeOf(StatusFromResponse(*r)), ErrorCode::kUnauthenticated);
  r = client_.Send("PUT", base_ + "/upload/x", "small body");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(log_.begins.load(), 2);
  EXPECT_EQ(log_.writes.load(), 0);
  EXPECT_EQ(log_.finishes.load(), 0);
  // Raw: the answer comes without the body having been sent at all.
  RawSocket s(server_->port());
  s.Send("PUT /upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n");
  const std::string reply = s.Read(Ms(3000));
  EXPECT_EQ(reply.rfind("HTTP/1.1 401", 0), 0u) << reply;
  EXPECT_TRUE(s.closed());
}

TEST_F(HttpTest, SinkErrorBecomesTheResponse) {
  StartServer();
  const std::string path = dir_.Join("upload.bin");
  ds::testing::WriteFileOrDie(path, RandomBytes(8 << 20, 6));
  auto r = client_.UploadFile("PUT", base_ + "/upload/x?fail_after=1000000", path,
                              {{"Authorization", "Bearer secret"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 422);
  EXPECT_EQ(CodeOf(StatusFromResponse(*r)), ErrorCode::kDigestMismatch);
  EXPECT_EQ(log_.last_outcome.load(), static_cast<int>(ErrorCode::kDigestMismatch));
  EXPECT_EQ(log_.finishes.load(), 1);
  // Reading stopped at the failing piece.
  EXPECT_EQ(log_.failed_writes.load(), 1);
  EXPECT_LT(log_.bytes.load(), 2u << 20);
  r = client_.Get(base_ + "/hello");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
}

TEST_F(HttpTest, StreamBodyLimit) {
  ServerOptions o;
  o.max_stream_body_bytes = 1 << 20;
  StartServer(o);
  const std::string path = dir_.Join("upload.bin");
  ds::testing::WriteFileOrDie(path, RandomBytes((1 << 20) + 1, 8));
  auto r =
      client_.UploadFile("PUT", base_ + "/upload/x", path, {{"Authorization", "Bearer secret"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(log_.begins.load(), 0);  // Refused from the declared length.
  // Chunked: cut off while streaming; finish sees kTooLarge.
  RawSocket s(server_->port());
  s.Send(
      "PUT /upload/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
      "Transfer-Encoding: chunked\r\n\r\n");
  const std::string chunk = "10000\r\n" + std::string(0x10000, 'z') + "\r\n";
  for (int i = 0; i < 17 && s.Send(chunk); ++i) {
  }
  const std::string reply = s.Read(
      Ms(5000), [](const std::string& d) { return d.find("\r\n\r\n") != std::string::npos; });
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply;
  EXPECT_TRUE(WaitFor([&] { return log_.finishes.load() == 1; }));
  EXPECT_EQ(log_.last_outcome.load(), static_cast<int>(ErrorCode::kTooLarge));
}

// ---- File responses ----

TEST_F(HttpTest, FileResponsesRangesAndEtags) {
  MakeFile(300000);
  StartServer();
  const std::string all = AsString(file_data_);
  auto r = client_.Get(base_ + "/file");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, all);
  EXPECT_EQ(r->Header("accept-ranges"), "bytes");
  EXPECT_EQ(r->Header("etag"), "\"v1\"");
  EXPECT_EQ(r->Header("content-type"), "application/octet-stream");

  struct Case {
    const char* range;
    int status;
    std::string body;
    const char* content_range;
  };
  const Case cases[] = {
      {"bytes=0-99", 206, all.substr(0, 100), "bytes 0-99/300000"},
      {"bytes=299990-", 206, all.substr(299990), "bytes 299990-299999/300000"},
      {"bytes=-5", 206, all.substr(299995), "bytes 299995-299999/300000"},
      {"bytes=100000-499999", 206, all.substr(100000), "bytes 100000-299999/300000"},
      {"bytes=300000-", 416, "", "bytes */300000"},
      {"bytes=0-1,5-6", 200, all, ""},
      {"bytes=junk", 200, all, ""},
  };
  for (const Case& c : cases) {
    r = client_.Get(base_ + "/file", {{"Range", c.range}});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, c.status) << c.range;
    EXPECT_EQ(r->body.size(), c.body.size()) << c.range;
    EXPECT_TRUE(r->body == c.body) << c.range;
    EXPECT_EQ(r->Header("content-range"), c.content_range) << c.range;
  }
  // A stale If-Range gets the whole file.
  r = client_.Get(base_ + "/file", {{"Range", "bytes=0-9"}, {"If-Range", "\"v0\""}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  // Conditional requests.
  r = client_.Get(base_ + "/file", {{"If-None-Match", "\"v0\", \"v1\""}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 304);
  EXPECT_EQ(r->body, "");
  EXPECT_EQ(r->Header("etag"), "\"v1\"");
  r = client_.Get(base_ + "/file", {{"If-None-Match", "\"v0\""}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  // HEAD: the same headers, no body.
  r = client_.Send("HEAD", base_ + "/file", "");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("content-length"), "300000");
  EXPECT_EQ(r->body, "");
  // A sub-range of the file is the whole body, and ranges apply within it.
  r = client_.Get(base_ + "/file/part");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, all.substr(10, 100));
  r = client_.Get(base_ + "/file/part", {{"Range", "bytes=90-"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 206);
  EXPECT_EQ(r->body, all.substr(100, 10));
  EXPECT_EQ(r->Header("content-range"), "bytes 90-99/100");
}

TEST_F(HttpTest, DownloadFileIsAtomic) {
  MakeFile(5 << 20);
  StartServer();
  const std::string out = dir_.Join("out.bin");
  ds::testing::WriteFileOrDie(out, ds::testing::ToBytes("old contents"));
  uint64_t last_done = 0;
  // Non-2xx: an error Status, the existing file untouched, no temporary left behind.
  auto r = client_.DownloadFile(base_ + "/nope", out);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(CodeOf(r), ErrorCode::kNotFound);
  EXPECT_EQ(AsString(ds::testing::ReadFileOrDie(out)), "old contents");
  // Transport failure: kUnavailable, untouched.
  r = Client().DownloadFile("http://127.0.0.1:1/x", out);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(CodeOf(r), ErrorCode::kUnavailable);
  EXPECT_EQ(AsString(ds::testing::ReadFileOrDie(out)), "old contents");
  // Success replaces it.
  r = client_.DownloadFile(base_ + "/file", out,
                           [&](uint64_t done, uint64_t) { last_done = done; });
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(ds::testing::ReadFileOrDie(out) == file_data_);
  EXPECT_EQ(last_done, file_data_.size());
  EXPECT_EQ(dir_.List(), (std::vector<std::string>{"out.bin", "served.bin"}));
}

// ---- Async handlers and streamed responses ----

TEST_F(HttpTest, AsyncHandlerAnswersLaterWithoutHoldingAWorker) {
  ServerOptions o;
  o.worker_threads = 1;
  StartServer(o);
  Result<ClientResponse> parked_reply = Status(ErrorCode::kInternal, "unset");
  std::thread waiter([&] { parked_reply = Client().Get(base_ + "/park"); });
  ASSERT_TRUE(WaitFor([&] { return Parked() == 1; }));
  // The only worker is free while the request is parked.
  auto hello = client_.Get(base_ + "/hello");
  ASSERT_TRUE(hello.ok());
  EXPECT_EQ(hello->body, "hello");
  {
    std::lock_guard<std::mutex> lock(mu_);
    parked_[0].Send(Response::Text(202, "later"));
    parked_[0].Send(Response::Text(200, "twice"));  // Ignored: one answer per request.
    parked_.clear();
  }
  waiter.join();
  ASSERT_TRUE(parked_reply.ok()) << parked_reply.status().ToString();
  EXPECT_EQ(parked_reply->status, 202);
  EXPECT_EQ(parked_reply->body, "later");

  auto now = client_.Get(base_ + "/async-now?x=1");
  ASSERT_TRUE(now.ok());
  EXPECT_EQ(now->body, "now 1");
  auto dropped = client_.Get(base_ + "/async-drop");
  ASSERT_TRUE(dropped.ok());
  EXPECT_EQ(dropped->status, 500);
  EXPECT_NE(dropped->body.find("unanswered"), std::string::npos) << dropped->body;
  auto thrown = client_.Get(base_ + "/async-throw");
  ASSERT_TRUE(thrown.ok());
  EXPECT_EQ(thrown->status, 500);
  EXPECT_NE(thrown->body.find("async boom"), std::string::npos) << thrown->body;
}

TEST_F(HttpTest, StreamedResponseIsSentAsItIsWritten) {
  StartServer();
  RawSocket s(server_->port());
  ASSERT_TRUE(s.Send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<BodyStream> stream = StreamAt(0);
  ASSERT_NE(stream, nullptr);
  // The header arrives before any event is written.
  std::string got =
      s.Read(Ms(3000), [](const std::string& d) { return d.find("\r\n\r\n") != d.npos; });
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_NE(internal::ToLower(got).find("transfer-encoding: chunked"), std::string::npos) << got;
  EXPECT_NE(internal::ToLower(got).find("cache-control: no-cache"), std::string::npos);
  EXPECT_TRUE(stream->Write("data: one\n\n"));
  got += s.Read(Ms(3000), [](const std::string& d) { return d.find("data: one") != d.npos; });
  EXPECT_NE(got.find("data: one"), std::string::npos) << got;
  std::thread producer([stream] {
    for (int i = 0; i < 100; ++i) stream->Write("data: " + std::to_string(i) + "\n\n");
    stream->Close();
  });
  got += s.Read(Ms(5000), [](const std::string& d) { return d.find("\r\n0\r\n\r\n") != d.npos; });
  producer.join();
  EXPECT_NE(got.find("data: 99\n\n"), std::string::npos);
  EXPECT_LT(got.find("data: 0\n"), got.find("data: 99\n"));
  EXPECT_FALSE(stream->Write("late"));
  // The connection stays usable (keep-alive after a chunked body).
  ASSERT_TRUE(s.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"));
  const std::string next =
      s.Read(Ms(3000), [](const std::string& d) { return d.find("hello") != d.npos; });
  EXPECT_NE(next.find("HTTP/1.1 200"), std::string::npos) << next;
}

TEST_F(HttpTest, StreamedResponseWithLengthAndAShortBody) {
  StartServer();
  std::thread producer([this] {
    std::shared_ptr<BodyStream> stream = StreamAt(0);
    if (stream == nullptr) return;
    stream->Write("01234");
    stream->Write("56789extra");  // Beyond Content-Length: cut.
    stream->Close();
  });
  auto r = client_.Get(base_ + "/sized");
  producer.join();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->body, "0123456789");
  EXPECT_EQ(r->Header("content-length"), "10");

  // A producer that stops early: the connection closes, the client sees a truncated body.
  std::thread short_producer([this] {
    std::shared_ptr<BodyStream> stream = StreamAt(1);
    if (stream == nullptr) return;
    stream->Write("0123");
    stream.reset();
    std::lock_guard<std::mutex> lock(mu_);
    streams_[1].reset();  // The last reference: the body ends here.
  });
  auto cut = Client().Get(base_ + "/sized");
  short_producer.join();
  EXPECT_FALSE(cut.ok());
}

TEST_F(HttpTest, StreamProducerSeesBackPressureAndDeparture) {
  StartServer();
  {
    RawSocket s(server_->port());
    ASSERT_TRUE(s.Send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
    std::shared_ptr<BodyStream> stream = StreamAt(0);
    ASSERT_NE(stream, nullptr);
    // The client reads nothing: socket buffers fill, then the queue grows and WaitBelow says so.
    const std::string piece(64 << 10, 'x');
    bool blocked = false;
    for (int i = 0; i < 2000 && !blocked; ++i) {
      ASSERT_TRUE(stream->Write(piece));
      blocked = !stream->WaitBelow(1 << 20, 20);
    }
    EXPECT_TRUE(blocked);
    EXPECT_GT(stream->pending(), 1u << 20);
    EXPECT_FALSE(stream->gone());
  }  // The client leaves.
  std::shared_ptr<BodyStream> stream = StreamAt(0);
  EXPECT_TRUE(WaitFor([&] {
    stream->Write(std::string(1024, 'y'));
    return stream->gone();
  }));
  EXPECT_FALSE(stream->Write("more"));
  EXPECT_EQ(stream->pending(), 0u);

  // Server shutdown ends a stream nobody writes to.
  RawSocket idle(server_->port());
  ASSERT_TRUE(idle.Send("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::shared_ptr<BodyStream> idle_stream = StreamAt(1);
  ASSERT_NE(idle_stream, nullptr);
  idle.Read(Ms(3000), [](const std::string& d) { return d.find("\r\n\r\n") != d.npos; });
  server_->Stop();
  EXPECT_TRUE(idle_stream->gone());
  EXPECT_FALSE(idle_stream->Write("after stop"));
}

// ---- Connections ----

TEST_F(HttpTest, KeepAliveReusesTheConnection) {
  StartServer();
  std::string first;
  for (int i = 0; i < 5; ++i) {
    auto r = client_.Get(base_ + "/remote");
    ASSERT_TRUE(r.ok());
    if (i == 0) first = r->body;
    EXPECT_EQ(r->body, first);  // Same peer port: one connection.
  }
  // Pipelined requests on one raw connection.
  RawSocket s(server_->port());
  s.Send(
      "GET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string reply =
      s.Read(Ms(3000), [](const std::string& d) { return CountOf(d, "hello") == 3; });
  EXPECT_EQ(CountOf(reply, "HTTP/1.1 200 OK"), 3u) << reply;
  EXPECT_FALSE(s.closed());
  // Connection: close is honoured.
  s.Send("GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  s.Read(Ms(3000));
  EXPECT_TRUE(s.closed());
}

TEST_F(HttpTest, IdleKeepAliveConnectionIsClosed) {
  ServerOptions o;
  o.idle_timeout_ms = 300;
  StartServer(o);
  RawSocket s(server_->port());
  s.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto start = SteadyClock::now();
  const std::string reply = s.Read(Ms(5000));
  EXPECT_EQ(reply.rfind("HTTP/1.1 200", 0), 0u);
  EXPECT_TRUE(s.closed());
  EXPECT_LT(SteadyClock::now() - start, Ms(3000));
}

TEST_F(HttpTest, SlowLorisHeaderIsCutOff) {
  ServerOptions o;
  o.header_timeout_ms = 300;
  StartServer(o);
  RawSocket s(server_->port());
  ASSERT_TRUE(s.connected());
  const auto start = SteadyClock::now();
  // Trickle a header that never ends: the deadline covers the whole header.
  for (int i = 0; i < 4 && !s.closed(); ++i) {
    s.Send(i == 0 ? "GET /hello HTTP/1.1\r\n" : "X-Slow: 1\r\n");
    s.Read(Ms(100));
  }
  s.Read(Ms(3000));
  EXPECT_TRUE(s.closed());
  const auto took = SteadyClock::now() - start;
  EXPECT_GE(took, Ms(250));
  EXPECT_LT(took, Ms(2000));
  // A header that is too large is refused.
  RawSocket big(server_->port());
  big.Send("GET /hello HTTP/1.1\r\nX-Big: " + std::string(32 << 10, 'a') + "\r\n\r\n");
  const std::string reply = big.Read(Ms(3000));
  EXPECT_EQ(reply.rfind("HTTP/1.1 413", 0), 0u) << reply.substr(0, 100);
}

TEST_F(HttpTest, StalledBodyClosesTheConnection) {
  ServerOptions o;
  o.body_idle_timeout_ms = 300;
  StartServer(o);
  RawSocket s(server_->port());
  s.Send(
      "PUT /upload/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n"
      "Content-Length: 100000\r\n\r\n0123456789");
  const auto start = SteadyClock::now();
  const std::string reply = s.Read(Ms(5000));
  EXPECT_TRUE(s.closed());
  EXPECT_EQ(reply, "");  // No response after a failed body read.
  EXPECT_LT(SteadyClock::now() - start, Ms(3000));
  EXPECT_TRUE(WaitFor([&] { return log_.finishes.load() == 1; }));
  EXPECT_EQ(log_.last_outcome.load(), static_cast<int>(ErrorCode::kUnavailable));
  // Buffered bodies too.
  RawSocket b(server_->port());
  b.Send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc");
  b.Read(Ms(5000));
  EXPECT_TRUE(b.closed());
}

TEST_F(HttpTest, MaxConnections) {
  ServerOptions o;
  o.max_connections = 2;
  StartServer(o);
  auto ask = [](RawSocket& s) {
    s.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    return s.Read(Ms(3000), [](const std::string& d) { return d.find("hello") != d.npos; });
  };
  RawSocket a(server_->port()), b(server_->port());
  EXPECT_NE(ask(a).find("200 OK"), std::string::npos);
  EXPECT_NE(ask(b).find("200 OK"), std::string::npos);
  RawSocket c(server_->port());
  EXPECT_EQ(ask(c), "");
  EXPECT_TRUE(c.closed());
  a.Close();
  ASSERT_TRUE(WaitFor([&] {
    return server_->MetricsText().find("ds_http_connections_open 1\n") != std::string::npos;
  }));
  RawSocket d(server_->port());
  EXPECT_NE(ask(d).find("200 OK"), std::string::npos);
}

TEST_F(HttpTest, ThrowingHandlerIs500) {
  StartServer();
  auto r = client_.Get(base_ + "/throw");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 500);
  EXPECT_EQ(CodeOf(StatusFromResponse(*r)), ErrorCode::kInternal);
  r = client_.Get(base_ + "/hello");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->body, "hello");
}

TEST_F(HttpTest, ManyConcurrentRequests) {
  ServerOptions o;
  o.io_threads = 2;
  StartServer(o);
  constexpr int kThreads = 256;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  Client shared;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      auto r = i % 2 == 0 ? shared.Get(base_ + "/slow") : Client().Get(base_ + "/slow");
      if (r.ok() && r->status == 200 && r->body == "ok") ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads);
}

TEST_F(HttpTest, MetricsCountRequests) {
  StartServer();
  ASSERT_TRUE(client_.Get(base_ + "/hello").ok());
  ASSERT_TRUE(client_.Get(base_ + "/hello").ok());
  ASSERT_TRUE(client_.Get(base_ + "/nope").ok());
  ASSERT_TRUE(client_.Send("POST", base_ + "/echo", "abc").ok());
  // The server books a request once its last byte is written, just after the client has it.
  EXPECT_TRUE(WaitFor([&] {
    return server_->MetricsText().find("ds_http_request_duration_seconds_count 4\n") !=
           std::string::npos;
  }));
  const std::string m = server_->MetricsText();
  EXPECT_NE(m.find("ds_http_requests_total{method=\"GET\",code=\"2xx\"} 2\n"), std::string::npos)
      << m;
  EXPECT_NE(m.find("ds_http_requests_total{method=\"GET\",code=\"4xx\"} 1\n"), std::string::npos);
  EXPECT_NE(m.find("ds_http_requests_total{method=\"POST\",code=\"2xx\"} 1\n"), std::string::npos);
  EXPECT_NE(m.find("ds_http_requests_in_flight 0\n"), std::string::npos);
  EXPECT_NE(m.find("ds_http_connections_open 1\n"), std::string::npos);
  EXPECT_NE(m.find("ds_http_bytes_received_total "), std::string::npos);
  EXPECT_EQ(m.find("ds_http_bytes_sent_total 0\n"), std::string::npos);
  EXPECT_NE(m.find("ds_http_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(m.find("ds_http_request_duration_seconds_count 4\n"), std::string::npos);
}

TEST_F(HttpTest, StopIsIdempotentAndClosesConnections) {
  StartServer();
  RawSocket s(server_->port());
  s.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  s.Read(Ms(2000), [](const std::string& d) { return d.find("hello") != d.npos; });
  server_->Stop();
  server_->Stop();
  s.Read(Ms(2000));
  EXPECT_TRUE(s.closed());
  auto r = client_.Get(base_ + "/hello");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(CodeOf(r), ErrorCode::kUnavailable);
}

TEST(HttpServerTest, BindFailureIsAnError) {
  ServerOptions any_port;
  any_port.port = 0;
  Server first(any_port);
  ASSERT_TRUE(first.Start().ok());
  ServerOptions o;
  o.port = first.port();
  Server second(o);
  EXPECT_EQ(CodeOf(second.Start()), ErrorCode::kIoError);
  ServerOptions bad_tls;
  bad_tls.port = 0;
  bad_tls.tls_cert_path = "/nonexistent/c.pem";
  bad_tls.tls_key_path = "/nonexistent/k.pem";
  EXPECT_EQ(CodeOf(Server(bad_tls).Start()), ErrorCode::kInvalidArgument);
}

// ---- TLS ----

TEST_F(HttpTest, Https) {
  const std::string key = dir_.Join("k.pem"), cert = dir_.Join("c.pem");
  const std::string cmd =
      "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
      "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 -days 1 -keyout " +
      key + " -out " + cert + " >/dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  ServerOptions o;
  o.tls_cert_path = cert;
  o.tls_key_path = key;
  MakeFile(1 << 20);
  StartServer(o);
  const std::string url = "https://127.0.0.1:" + std::to_string(server_->port());
  ClientOptions tls_options;
  tls_options.bearer_token = "secret";
  tls_options.ca_file = cert;
  Client tls_client(tls_options);
  auto r = tls_client.Get(url + "/hello");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello");
  r = tls_client.Get(url + "/file", {{"Range", "bytes=1000-"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 206);
  EXPECT_TRUE(r->body == AsString(file_data_).substr(1000));
  // A streamed upload over TLS (the bearer token comes from the client options).
  const std::string path = dir_.Join("upload.bin");
  const Bytes data = RandomBytes(3 << 20, 9);
  ds::testing::WriteFileOrDie(path, data);
  r = tls_client.UploadFile("PUT", url + "/upload/x", path, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 201);
  EXPECT_EQ(r->body, std::to_string(data.size()) + ":" + ToHex(Sha256::Of(data)));
  // Without the trust anchor the handshake fails: a transport error.
  r = Client().Get(url + "/hello");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(CodeOf(r), ErrorCode::kUnavailable);
  // Plain HTTP to the TLS port does not get an answer.
  RawSocket s(server_->port());
  s.Send("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(s.Read(Ms(3000)).find("HTTP/1.1 200"), std::string::npos);
}

}  // namespace
}  // namespace ds::net
