// UDP on the HTTP server's event loop (the UDP carrier, docs/PROTOCOL.md): a socket whose
// datagrams and timers are handled on one strand of the Server's I/O threads, so the code
// behind it (a sans-I/O session) needs no locks of its own. Asio-free header.
//
// Thread-safety: SendTo, Every and Close may be called from any thread; the datagram handler
// and every timer callback of one socket run one at a time, never concurrently.
// Lifetime: a socket may outlive its Server; Server::Stop() closes it and releases what it held
// of the server's event loop (later calls do nothing or fail with kUnavailable).
#ifndef DELTASTREAM_NET_UDP_H_
#define DELTASTREAM_NET_UDP_H_

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/bytes.h"
#include "common/status.h"

namespace ds::net {

// A UDP peer address (IPv4 or IPv6), comparable and printable.
struct UdpPeer {
  sockaddr_storage addr{};
  socklen_t len = 0;

  std::string ToString() const;  // "ip:port" or "[ip6]:port".
  bool operator==(const UdpPeer& o) const;
};

// Parses "ip:port" / "[ip6]:port" (numeric only). kInvalidArgument otherwise.
Result<UdpPeer> ParseUdpPeer(const std::string& text);

struct UdpOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 0;  // 0 = ephemeral (see port()).
  int receive_buffer_bytes = 4 << 20;
  int send_buffer_bytes = 4 << 20;
};

using DatagramHandler = std::function<void(const UdpPeer& from, ByteView datagram)>;

class UdpSocket {
 public:
  virtual ~UdpSocket() = default;
  virtual uint16_t port() const = 0;
  // Sends one datagram now (never blocks). kUnavailable when the socket's send buffer is full
  // (the datagram is dropped, as the network would), kIoError for other failures.
  virtual Status SendTo(const UdpPeer& to, ByteView datagram) = 0;
  // Runs |fn| on the socket's strand every |interval_us| (at least 100 µs) until it returns
  // false, the socket closes or the server stops.
  virtual void Every(int64_t interval_us, std::function<bool()> fn) = 0;
  // Stops receiving and cancels the timers. Idempotent.
  virtual void Close() = 0;
  // Datagrams received and sent, and sends dropped for a full buffer.
  virtual uint64_t received() const = 0;
  virtual uint64_t sent() const = 0;
  virtual uint64_t send_drops() const = 0;
};

}  // namespace ds::net

#endif  // DELTASTREAM_NET_UDP_H_
