// The UDP carrier's server side on a proxy (docs/PROTOCOL.md, "UDP carrier"): an HTTP route
// that opens a session for a range of an object's leaves, and one UDP socket on the server's
// event loop that drives every session's fec::UdpSender (datagrams in, paced datagrams out).
#ifndef DELTASTREAM_REPO_PROXY_UDP_H_
#define DELTASTREAM_REPO_PROXY_UDP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"

namespace ds::net {
class Server;
}

namespace ds::repo {

struct UdpCarrierOptions {
  std::string host = "127.0.0.1";  // Where the UDP socket binds (the server's host).
  uint16_t port = 0;               // 0: ephemeral (told to clients with each session).
  size_t max_sessions = 256;
};

struct UdpCarrierStats {
  uint64_t sessions_opened = 0, sessions_done = 0, sessions_failed = 0, sessions_active = 0;
  uint64_t datagrams_sent = 0, bytes_sent = 0, source_bytes = 0, repair_bytes = 0;
  uint64_t datagrams_dropped = 0;  // Received and refused (forged, replayed, unknown session).
};

// Returns the path of a verified file holding the object |path| names (e.g. "/v1/blobs/<sha>"
// or "/v1/chunkmaps/<sha>"), fetching it if needed.
using ObjectFileFn = std::function<Result<std::string>(const std::string& path)>;

class UdpCarrier {
 public:
  // Opens the UDP socket on |server| and adds POST /v1/udp/sessions.
  static Result<std::shared_ptr<UdpCarrier>> Register(net::Server* server,
                                                      UdpCarrierOptions options,
                                                      ObjectFileFn object_file);
  ~UdpCarrier();
  uint16_t port() const;
  UdpCarrierStats stats() const;
  // Prometheus lines (ds_proxy_udp_*).
  std::string MetricsText() const;

  class Impl;

 private:
  explicit UdpCarrier(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace ds::repo

#endif  // DELTASTREAM_REPO_PROXY_UDP_H_
