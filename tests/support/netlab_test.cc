// The network lab itself: connectivity between the namespaces, shaping, loss and cleanup. Threads
// enter the namespaces with EnterNamespace (per thread), so no helper binaries are needed.
#include "support/netlab.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <future>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "support/process_util.h"
#include "support/test_util.h"

namespace ds::testing {
namespace {

using Clock = std::chrono::steady_clock;

#define NETLAB_OR_SKIP(lab)                           \
  std::string why;                                    \
  std::unique_ptr<NetLab> lab = NetLab::Create(&why); \
  if (lab == nullptr) GTEST_SKIP() << why

// An owned socket descriptor.
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

sockaddr_in Addr(const std::string& ip, uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  return a;
}

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

// A socket of |type| bound to ip:0 (in the calling thread's namespace); *port gets the port.
int BoundSocket(int type, const std::string& ip, uint16_t* port, std::string* err) {
  const int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = Errno("socket");
    return -1;
  }
  sockaddr_in a = Addr(ip, 0);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    *err = Errno("bind " + ip);
    ::close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

void SetTimeouts(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// One TCP connection from the client namespace to a listener in the server namespace: the server
// sends |bytes| bytes and closes. Returns the seconds from connect to EOF at the client; fails
// the test (and returns -1) on error. *peer gets the client address the server saw.
double TcpTransfer(const NetLab& lab, size_t bytes, std::string* peer = nullptr) {
  std::promise<uint16_t> port_promise;
  std::future<uint16_t> port_future = port_promise.get_future();
  std::string server_err, client_err, seen_peer;
  size_t received = 0;
  double seconds = -1;

  std::thread server([&] {
    uint16_t port = 0;
    const Status s = EnterNamespace(lab.server_ns());
    Fd listener(s.ok() ? BoundSocket(SOCK_STREAM, lab.server_ip(), &port, &server_err) : -1);
    if (!s.ok()) server_err = s.ToString();
    if (listener.get() < 0 || ::listen(listener.get(), 4) != 0) {
      if (server_err.empty()) server_err = Errno("listen");
      port_promise.set_value(0);
      return;
    }
    port_promise.set_value(port);
    pollfd p{listener.get(), POLLIN, 0};
    if (::poll(&p, 1, 20000) != 1) {
      server_err = "no connection within 20 s";
      return;
    }
    sockaddr_in from{};
    socklen_t len = sizeof(from);
    Fd conn(::accept4(listener.get(), reinterpret_cast<sockaddr*>(&from), &len, SOCK_CLOEXEC));
    if (conn.get() < 0) {
      server_err = Errno("accept");
      return;
    }
    char buf[INET_ADDRSTRLEN] = {};
    ::inet_ntop(AF_INET, &from.sin_addr, buf, sizeof(buf));
    seen_peer = buf;
    SetTimeouts(conn.get(), 20);
    const std::vector<char> chunk(64 * 1024, 'x');
    for (size_t sent = 0; sent < bytes;) {
      const ssize_t n =
          ::send(conn.get(), chunk.data(), std::min(chunk.size(), bytes - sent), MSG_NOSIGNAL);
      if (n <= 0) {
        server_err = Errno("send");
        return;
      }
      sent += static_cast<size_t>(n);
    }
  });

  std::thread client([&] {
    const Status s = EnterNamespace(lab.client_ns());
    if (!s.ok()) {
      client_err = s.ToString();
      return;
    }
    if (port_future.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      client_err = "no listener";
      return;
    }
    const uint16_t port = port_future.get();
    if (port == 0) return;
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    SetTimeouts(fd.get(), 20);
    const sockaddr_in to = Addr(lab.server_ip(), port);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&to), sizeof(to)) != 0) {
      client_err = Errno("connect " + lab.server_ip());
      return;
    }
    const Clock::time_point start = Clock::now();
    std::vector<char> buf(256 * 1024);
    for (;;) {
      const ssize_t n = ::recv(fd.get(), buf.data(), buf.size(), 0);
      if (n < 0) {
        client_err = Errno("recv");
        return;
      }
      if (n == 0) break;
      received += static_cast<size_t>(n);
    }
    seconds = std::chrono::duration<double>(Clock::now() - start).count();
  });
  server.join();
  client.join();
  EXPECT_EQ(server_err, "");
  EXPECT_EQ(client_err, "");
  EXPECT_EQ(received, bytes);
  if (peer != nullptr) *peer = seen_peer;
  return server_err.empty() && client_err.empty() ? seconds : -1;
}

// Sends |count| small UDP datagrams from namespace |from_ns| to a socket on |to_ip| in |to_ns|;
// returns how many arrived.
int UdpDelivered(const std::string& from_ns, const std::string& to_ns, const std::string& to_ip,
                 int count) {
  std::promise<uint16_t> port_promise;
  std::future<uint16_t> port_future = port_promise.get_future();
  std::atomic<bool> sender_done{false};
  std::string receiver_err, sender_err;
  int received = 0;

  std::thread receiver([&] {
    uint16_t port = 0;
    const Status s = EnterNamespace(to_ns);
    Fd fd(s.ok() ? BoundSocket(SOCK_DGRAM, to_ip, &port, &receiver_err) : -1);
    if (!s.ok()) receiver_err = s.ToString();
    if (fd.get() < 0) {
      port_promise.set_value(0);
      return;
    }
    // Room for every datagram, so that only the lab's loss counts (root may exceed rmem_max).
    const int rcvbuf = 16 << 20;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
    port_promise.set_value(port);
    char buf[2048];
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(10);
    while (received < count && Clock::now() < deadline) {
      const bool done = sender_done.load();
      pollfd p{fd.get(), POLLIN, 0};
      const int ready = ::poll(&p, 1, 300);
      if (ready == 0 && done) break;  // 300 ms quiet after the last send.
      if (ready == 1 && ::recv(fd.get(), buf, sizeof(buf), 0) > 0) ++received;
    }
  });

  std::thread sender([&] {
    const Status s = EnterNamespace(from_ns);
    const uint16_t port = port_future.get();
    if (!s.ok()) sender_err = s.ToString();
    if (!s.ok() || port == 0) {
      sender_done = true;
      return;
    }
    Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    const sockaddr_in to = Addr(to_ip, port);
    char payload[64] = {};
    for (int i = 0; i < count; ++i) {
      std::memcpy(payload, &i, sizeof(i));
      if (::sendto(fd.get(), payload, sizeof(payload), 0, reinterpret_cast<const sockaddr*>(&to),
                   sizeof(to)) != sizeof(payload)) {
        sender_err = Errno("sendto");  // Loss on the wire must not show up at the sender.
        break;
      }
      if (i % 100 == 99) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    sender_done = true;
  });
  sender.join();
  receiver.join();
  EXPECT_EQ(receiver_err, "");
  EXPECT_EQ(sender_err, "");
  return received;
}

TEST(NetLabTest, TcpConnectsFromClientToServerNamespace) {
  NETLAB_OR_SKIP(lab);
  EXPECT_NE(lab->server_ns(), lab->client_ns());
  EXPECT_NE(lab->server_ip(), lab->client_ip());
  std::string peer;
  EXPECT_GE(TcpTransfer(*lab, 1000, &peer), 0);
  EXPECT_EQ(peer, lab->client_ip()) << "the connection must come over the veth pair";

  // The argv prefix runs a program in a namespace (here through RunProgram's prefix).
  const std::vector<std::string> in_client = lab->InNs(lab->client_ns());
  ASSERT_EQ(in_client.size(), 4u);
  TempDir dir;
  const RunResult r = RunProgram(in_client[0], dir, {"-o", "-4", "addr", "show"}, in_client);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(lab->client_ip() + "/30"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(lab->server_ip()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("127.0.0.1"), std::string::npos) << "lo is up: " << r.out;
}

TEST(NetLabTest, BandwidthShapesBothWaysAndCanBeChangedOrRemoved) {
  NETLAB_OR_SKIP(lab);
  constexpr size_t kBytes = 2 << 20;  // 2 MiB: ~2.1 s at 8 Mbit/s.
  ASSERT_TRUE(lab->SetBandwidth(50).ok());
  const Status s = lab->SetBandwidth(8);  // Replaces the first setting.
  ASSERT_TRUE(s.ok()) << s.ToString();
  const double shaped = TcpTransfer(*lab, kBytes);
  EXPECT_GE(shaped, 1.5) << "2 MiB at 8 Mbit/s";

  ASSERT_TRUE(lab->SetBandwidth(0).ok());
  ASSERT_TRUE(lab->SetBandwidth(0).ok()) << "removing twice is fine";
  const double free = TcpTransfer(*lab, kBytes);
  EXPECT_GE(free, 0);
  EXPECT_LT(free * 4, shaped) << "unshaped " << free << " s, shaped " << shaped << " s";
  std::cout << "[   INFO   ] 2 MiB: " << shaped << " s at 8 Mbit/s, " << free << " s unshaped\n";

  EXPECT_EQ(lab->SetBandwidth(-1).code(), ErrorCode::kInvalidArgument);
}

TEST(NetLabTest, LossDropsDatagramsInBothDirections) {
  NETLAB_OR_SKIP(lab);
  constexpr int kCount = 2000;
  const Status s = lab->SetLoss(30);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(lab->SetLoss(30).ok()) << "replaceable";
  const int up = UdpDelivered(lab->client_ns(), lab->server_ns(), lab->server_ip(), kCount);
  const int down = UdpDelivered(lab->server_ns(), lab->client_ns(), lab->client_ip(), kCount);
  std::cout << "[   INFO   ] 30% loss: " << up << " and " << down << " of " << kCount
            << " datagrams arrived\n";
  for (int got : {up, down}) {
    EXPECT_GE(got, kCount * 50 / 100);
    EXPECT_LE(got, kCount * 90 / 100);
  }

  ASSERT_TRUE(lab->SetLoss(0).ok());
  EXPECT_GE(UdpDelivered(lab->client_ns(), lab->server_ns(), lab->server_ip(), kCount),
            kCount * 99 / 100);
  EXPECT_GE(UdpDelivered(lab->server_ns(), lab->client_ns(), lab->client_ip(), kCount),
            kCount * 99 / 100);

  // TCP recovers from (real, on-the-wire) loss.
  ASSERT_TRUE(lab->SetLoss(10).ok());
  const double lossy = TcpTransfer(*lab, 256 << 10);
  std::cout << "[   INFO   ] 256 KiB over TCP with 10% loss: " << lossy << " s\n";
  EXPECT_GE(lossy, 0);
  ASSERT_TRUE(lab->SetLoss(0).ok());

  EXPECT_EQ(lab->SetLoss(101).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(lab->SetLoss(-1).code(), ErrorCode::kInvalidArgument);
}

std::string ReadProcFile(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

TEST(NetLabTest, DestructorKillsLeftoversAndDeletesNamespaces) {
  NETLAB_OR_SKIP(lab);
  const std::string server_ns = lab->server_ns(), client_ns = lab->client_ns();
  const std::string ip = lab->InNs(server_ns)[0];
  const std::string sleep_bin = ::access("/bin/sleep", X_OK) == 0 ? "/bin/sleep" : "/usr/bin/sleep";

  std::vector<pid_t> sleepers;
  for (const std::string& ns : {server_ns, client_ns}) {
    std::vector<std::string> storage = lab->InNs(ns);
    storage.insert(storage.end(), {sleep_bin, "100"});
    std::vector<char*> argv;
    for (std::string& a : storage) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ASSERT_GT(pid, 0);
    sleepers.push_back(pid);
    // `ip netns exec` becomes sleep once it has entered the namespace.
    const std::string comm = "/proc/" + std::to_string(pid) + "/comm";
    for (int i = 0; i < 250 && ReadProcFile(comm) != "sleep"; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_EQ(ReadProcFile(comm), "sleep");
  }

  lab.reset();

  for (pid_t pid : sleepers) {
    int status = 0;
    pid_t r = 0;
    for (int i = 0; i < 250 && (r = ::waitpid(pid, &status, WNOHANG)) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (r == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
    }
    EXPECT_EQ(r, pid) << "the process in the namespace must be gone";
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  }
  TempDir dir;
  const RunResult list = RunProgram(ip, dir, {"netns", "list"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(list.out.find(server_ns), std::string::npos) << list.out;
  EXPECT_EQ(list.out.find(client_ns), std::string::npos) << list.out;
  EXPECT_NE(::access(("/var/run/netns/" + server_ns).c_str(), F_OK), 0);
}

TEST(NetLabTest, CreateRemovesStaleNamespacesOfDeadProcesses) {
  // A pid above pid_max (or otherwise unused) stands for a crashed earlier run.
  const int pid_max = std::stoi(ReadProcFile("/proc/sys/kernel/pid_max").empty()
                                    ? "32768"
                                    : ReadProcFile("/proc/sys/kernel/pid_max"));
  pid_t dead = pid_max + 1;
  while (::kill(dead, 0) == 0 || errno != ESRCH) ++dead;
  const std::string stale = "dslab" + std::to_string(dead) + "n0s";
  {
    NETLAB_OR_SKIP(probe);  // Root and tools present.
    const std::string ip = probe->InNs(probe->server_ns())[0];
    TempDir dir;
    const RunResult add = RunProgram(ip, dir, {"netns", "add", stale});
    ASSERT_EQ(add.exit_code, 0) << add.err;
    ASSERT_EQ(::access(("/var/run/netns/" + stale).c_str(), F_OK), 0);
  }
  std::string why;
  std::unique_ptr<NetLab> lab = NetLab::Create(&why);
  ASSERT_NE(lab, nullptr) << why;
  EXPECT_NE(::access(("/var/run/netns/" + stale).c_str(), F_OK), 0) << stale << " is left over";
}

TEST(NetLabTest, EnterNamespaceRejectsBadNames) {
  EXPECT_FALSE(EnterNamespace("").ok());
  EXPECT_FALSE(EnterNamespace("../x").ok());
  std::thread t([] { EXPECT_FALSE(EnterNamespace("dslab-no-such-namespace").ok()); });
  t.join();
}

}  // namespace
}  // namespace ds::testing
