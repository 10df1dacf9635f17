// UDP on the server's event loop: datagrams in and out, peers, timers on the socket's strand,
// closing, and the server's stop closing its sockets.
#include "net/udp.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "net/http.h"

namespace ds::net {
namespace {

using Ms = std::chrono::milliseconds;

// A plain POSIX UDP client on 127.0.0.1.
class Client {
 public:
  Client() {
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  ~Client() { ::close(fd_); }
  uint16_t port() const {
    sockaddr_in a{};
    socklen_t len = sizeof(a);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
  }
  void SendTo(uint16_t port, const std::string& data) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::sendto(fd_, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  }
  // One datagram, or "" after |timeout|.
  std::string Receive(Ms timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return "";
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }

 private:
  int fd_ = -1;
};

bool WaitFor(const std::function<bool()>& pred, Ms timeout = Ms(5000)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(Ms(2));
  }
  return pred();
}

class UdpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o;
    o.port = 0;
    o.io_threads = 2;  // Handlers and timers of one socket still never overlap.
    server_ = std::make_unique<Server>(o);
    ASSERT_TRUE(server_->Start().ok());
  }
  std::unique_ptr<Server> server_;
};

TEST_F(UdpTest, EchoesDatagramsToTheirSender) {
  std::shared_ptr<UdpSocket> sock;
  std::mutex mu;
  std::vector<std::string> peers;
  auto opened = server_->OpenUdp(UdpOptions{}, [&](const UdpPeer& from, ByteView d) {
    {
      std::lock_guard<std::mutex> lock(mu);
      peers.push_back(from.ToString());
    }
    std::string reply = "echo:" + std::string(reinterpret_cast<const char*>(d.data()), d.size());
    EXPECT_TRUE(
        sock->SendTo(from, ByteView(reinterpret_cast<const uint8_t*>(reply.data()), reply.size()))
            .ok());
  });
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  sock = *opened;
  ASSERT_NE(sock->port(), 0);
  Client c;
  c.SendTo(sock->port(), "hello");
  EXPECT_EQ(c.Receive(Ms(3000)), "echo:hello");
  const std::string big(1400, 'x');
  c.SendTo(sock->port(), big);
  EXPECT_EQ(c.Receive(Ms(3000)), "echo:" + big);
  EXPECT_EQ(sock->received(), 2u);
  EXPECT_TRUE(WaitFor([&] { return sock->sent() == 2u; }));  // Counted after the send returns.
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(peers.size(), 2u);
    EXPECT_EQ(peers[0], "127.0.0.1:" + std::to_string(c.port()));
  }
  // Closed: nothing is handled any more.
  sock->Close();
  ASSERT_TRUE(WaitFor([&] {
    c.SendTo(sock->port(), "late");
    return c.Receive(Ms(50)).empty();
  }));
  EXPECT_EQ(sock->received(), 2u);
  sock.reset();
}

TEST_F(UdpTest, TimersRunOnTheSocketsStrandUntilTheyStop) {
  std::atomic<int> inside{0}, overlaps{0}, ticks{0}, datagrams{0};
  auto guard = [&] {
    if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    inside.fetch_sub(1);
  };
  auto opened = server_->OpenUdp(UdpOptions{}, [&](const UdpPeer&, ByteView) {
    guard();
    datagrams.fetch_add(1);
  });
  ASSERT_TRUE(opened.ok());
  std::shared_ptr<UdpSocket> sock = *opened;
  std::atomic<int> forever{0};
  sock->Every(1000, [&] {
    guard();
    return ticks.fetch_add(1) + 1 < 20;  // Stops itself after 20 runs.
  });
  sock->Every(500, [&] {
    guard();
    forever.fetch_add(1);
    return true;
  });
  Client c;
  for (int i = 0; i < 200; ++i) c.SendTo(sock->port(), "x");
  ASSERT_TRUE(WaitFor([&] { return ticks.load() == 20 && datagrams.load() == 200; }));
  std::this_thread::sleep_for(Ms(30));
  EXPECT_EQ(ticks.load(), 20);  // No run after it said stop.
  EXPECT_EQ(overlaps.load(), 0);
  // Close cancels the timer that would run forever.
  sock->Close();
  std::this_thread::sleep_for(Ms(20));
  const int after_close = forever.load();
  std::this_thread::sleep_for(Ms(30));
  EXPECT_EQ(forever.load(), after_close);
}

TEST_F(UdpTest, PeersParseAndPrint) {
  Result<UdpPeer> a = ParseUdpPeer("127.0.0.1:4242");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->ToString(), "127.0.0.1:4242");
  Result<UdpPeer> b = ParseUdpPeer("[::1]:80");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->ToString(), "[::1]:80");
  EXPECT_FALSE(*a == *b);
  EXPECT_TRUE(*a == *ParseUdpPeer("127.0.0.1:4242"));
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "host:80", "[::1:80",
                          "1.2.3.4:-1", "1.2.3.4:8a"}) {
    EXPECT_EQ(ParseUdpPeer(bad).status().code(), ErrorCode::kInvalidArgument) << bad;
  }
}

TEST_F(UdpTest, ErrorsAndServerStop) {
  UdpOptions taken;
  auto first = server_->OpenUdp(taken, [](const UdpPeer&, ByteView) {});
  ASSERT_TRUE(first.ok());
  taken.port = (*first)->port();
  EXPECT_EQ(server_->OpenUdp(taken, [](const UdpPeer&, ByteView) {}).status().code(),
            ErrorCode::kIoError);  // Port in use.
  UdpOptions bad_host;
  bad_host.host = "not-an-ip";
  EXPECT_EQ(server_->OpenUdp(bad_host, [](const UdpPeer&, ByteView) {}).status().code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ((*first)->SendTo(UdpPeer{}, ByteView()).code(), ErrorCode::kInvalidArgument);
  std::atomic<int> ticks{0};
  (*first)->Every(1000, [&] {
    ticks.fetch_add(1);
    return true;
  });
  ASSERT_TRUE(WaitFor([&] { return ticks.load() > 2; }));
  server_->Stop();  // Closes the socket and its timers.
  const int stopped_at = ticks.load();
  std::this_thread::sleep_for(Ms(20));
  EXPECT_EQ(ticks.load(), stopped_at);
  first->reset();
  EXPECT_EQ(server_->OpenUdp(UdpOptions{}, [](const UdpPeer&, ByteView) {}).status().code(),
            ErrorCode::kInvalidArgument);  // Stopped.
  // A socket kept past its server's life is harmless.
  std::shared_ptr<UdpSocket> kept;
  {
    Server other(ServerOptions{});
    auto early = other.OpenUdp(UdpOptions{}, [](const UdpPeer&, ByteView) {});
    ASSERT_TRUE(early.ok());  // Before Start() too.
    kept = *early;
    ASSERT_TRUE(other.Start().ok());
  }
  EXPECT_EQ(kept->SendTo(*ParseUdpPeer("127.0.0.1:9"), ByteView()).code(), ErrorCode::kUnavailable);
  kept->Every(1000, [] { return true; });
  kept->Close();
  kept.reset();
}

}  // namespace
}  // namespace ds::net
