// A delay stage for the network lab, where `tc netem` is not available: bridges two interfaces
// at layer 2 and holds every frame for a fixed time before passing it on, in both directions.
// Run it in a namespace between the two ends (bench/udp_bench.sh DELAY_MS=...):
//
//   [server ns] vA ==veth== mA [bridge ns] mB ==veth== vB [client ns]
//   delay_bridge mA mB 25      -> 25 ms each way, 50 ms round trip added
//
// Frames are read from packet sockets (ETH_P_ALL, our own transmissions ignored), queued with
// their due time and written to the other interface when due; the order within a direction is
// kept. Rate limits (tbf) and loss (nft) stay on the ends. At most kMaxQueued frames wait per
// direction (a frame beyond that is dropped and counted). Stops on SIGINT/SIGTERM and prints
// what it forwarded.
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace {

constexpr size_t kMaxQueued = 200000;
constexpr size_t kMaxFrame = 65536;

volatile sig_atomic_t g_stop = 0;
void OnSignal(int) { g_stop = 1; }

int64_t NowUs() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A packet socket bound to |iface| that sees every frame arriving there (not ours).
int OpenPacketSocket(const char* iface) {
  const int fd = ::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, htons(ETH_P_ALL));
  if (fd < 0) {
    std::perror("delay_bridge: socket(AF_PACKET)");
    return -1;
  }
  const unsigned index = ::if_nametoindex(iface);
  if (index == 0) {
    std::fprintf(stderr, "delay_bridge: no interface %s\n", iface);
    ::close(fd);
    return -1;
  }
  int one = 1;
  if (::setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one)) != 0) {
    std::perror("delay_bridge: PACKET_IGNORE_OUTGOING");
    ::close(fd);
    return -1;
  }
  int buf = 8 << 20;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
  sockaddr_ll addr{};
  addr.sll_family = AF_PACKET;
  addr.sll_protocol = htons(ETH_P_ALL);
  addr.sll_ifindex = static_cast<int>(index);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("delay_bridge: bind");
    ::close(fd);
    return -1;
  }
  packet_mreq mreq{};
  mreq.mr_ifindex = static_cast<int>(index);
  mreq.mr_type = PACKET_MR_PROMISC;
  ::setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq, sizeof(mreq));
  return fd;
}

struct Frame {
  int64_t due_us;
  std::string bytes;
};

struct Direction {
  int in = -1, out = -1;
  std::deque<Frame> queue;
  uint64_t forwarded = 0, dropped = 0, send_errors = 0;
};

// veth leaves TCP and UDP checksums of locally sent packets to the "hardware" (CHECKSUM_PARTIAL):
// a frame captured on the way holds a partial sum, which the other end would drop once the frame
// is sent again from a packet socket. So every IPv4 TCP/UDP checksum is computed here (a correct
// one comes out unchanged).
uint32_t SumWords(const uint8_t* p, size_t n, uint32_t sum) {
  for (; n > 1; p += 2, n -= 2) sum += static_cast<uint32_t>(p[0] << 8 | p[1]);
  if (n == 1) sum += static_cast<uint32_t>(p[0] << 8);
  return sum;
}

void FixChecksum(std::string& frame) {
  auto* f = reinterpret_cast<uint8_t*>(frame.data());
  const size_t n = frame.size();
  if (n < 14 + 20 || f[12] != 0x08 || f[13] != 0x00) return;  // Not IPv4.
  uint8_t* ip = f + 14;
  const size_t ihl = static_cast<size_t>(ip[0] & 0x0f) * 4;
  const size_t total = static_cast<size_t>(ip[2] << 8 | ip[3]);
  if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl || 14 + total > n) return;
  if ((ip[6] & 0x3f) != 0 || ip[7] != 0) return;  // A fragment: leave it.
  const uint8_t proto = ip[9];
  size_t at;
  if (proto == 6) {
    at = 16;
  } else if (proto == 17) {
    at = 6;
  } else {
    return;
  }
  uint8_t* l4 = ip + ihl;
  const size_t len = total - ihl;
  if (len < at + 2) return;
  l4[at] = l4[at + 1] = 0;
  uint32_t sum = SumWords(ip + 12, 8, 0);  // Source and destination addresses.
  sum += proto;
  sum += static_cast<uint32_t>(len);
  sum = SumWords(l4, len, sum);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t c = static_cast<uint16_t>(~sum);
  if (proto == 17 && c == 0) c = 0xffff;
  l4[at] = static_cast<uint8_t>(c >> 8);
  l4[at + 1] = static_cast<uint8_t>(c);
}

// Reads every frame waiting on d.in into the queue, due |delay_us| from now.
void Drain(Direction& d, int64_t delay_us, std::vector<char>& buf) {
  for (;;) {
    const ssize_t n = ::recv(d.in, buf.data(), buf.size(), 0);
    if (n < 0) return;  // EAGAIN (nothing more) or an error: poll again.
    if (d.queue.size() >= kMaxQueued) {
      ++d.dropped;
      continue;
    }
    d.queue.push_back({NowUs() + delay_us, std::string(buf.data(), static_cast<size_t>(n))});
    FixChecksum(d.queue.back().bytes);
  }
}

// Sends the frames that are due.
void Flush(Direction& d, int64_t now) {
  while (!d.queue.empty() && d.queue.front().due_us <= now) {
    const std::string& f = d.queue.front().bytes;
    if (::send(d.out, f.data(), f.size(), 0) < 0) {
      if (errno == EAGAIN || errno == ENOBUFS) return;  // Try again on the next turn.
      ++d.send_errors;
    } else {
      ++d.forwarded;
    }
    d.queue.pop_front();
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: delay_bridge IFACE_A IFACE_B ONE_WAY_DELAY_MS\n");
    return 2;
  }
  const double delay_ms = std::atof(argv[3]);
  if (!(delay_ms >= 0 && delay_ms <= 10000)) {
    std::fprintf(stderr, "delay_bridge: delay %s ms out of range (0..10000)\n", argv[3]);
    return 2;
  }
  const int64_t delay_us = static_cast<int64_t>(delay_ms * 1000);
  const int a = OpenPacketSocket(argv[1]);
  const int b = OpenPacketSocket(argv[2]);
  if (a < 0 || b < 0) return 1;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  Direction dirs[2];
  dirs[0].in = a;
  dirs[0].out = b;
  dirs[1].in = b;
  dirs[1].out = a;
  std::vector<char> buf(kMaxFrame);
  std::fprintf(stderr, "delay_bridge: %s <-> %s, %.1f ms each way\n", argv[1], argv[2], delay_ms);
  while (!g_stop) {
    const int64_t now = NowUs();
    int64_t next = now + 100000;
    for (Direction& d : dirs) {
      Flush(d, now);
      if (!d.queue.empty()) next = std::min(next, d.queue.front().due_us);
    }
    pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
    const int64_t wait_us = std::max<int64_t>(0, next - NowUs());
    const timespec timeout{static_cast<time_t>(wait_us / 1000000),
                           static_cast<long>(wait_us % 1000000) * 1000};
    if (::ppoll(fds, 2, &timeout, nullptr) < 0 && errno != EINTR) {
      std::perror("delay_bridge: poll");
      return 1;
    }
    if (fds[0].revents & POLLIN) Drain(dirs[0], delay_us, buf);
    if (fds[1].revents & POLLIN) Drain(dirs[1], delay_us, buf);
  }
  for (int i = 0; i < 2; ++i) {
    std::fprintf(stderr,
                 "delay_bridge: %s -> %s: %llu frames forwarded, %llu dropped (queue full), %llu "
                 "send errors\n",
                 argv[1 + i], argv[2 - i], static_cast<unsigned long long>(dirs[i].forwarded),
                 static_cast<unsigned long long>(dirs[i].dropped),
                 static_cast<unsigned long long>(dirs[i].send_errors));
  }
  ::close(a);
  ::close(b);
  return 0;
}
