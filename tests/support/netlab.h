// A network lab for tests: two network namespaces joined by a veth pair, with optional bandwidth
// shaping (tc tbf) and random packet loss (nftables) between them. The agent runs in the client
// namespace, the proxy in the server namespace.
//
// Needs root and the `ip`, `tc` and `nft` binaries (Debian: iproute2, nftables); Create() says why
// when it cannot build a lab, and tests skip then. Namespaces are named "dslab<pid>n<k>s" and
// "dslab<pid>n<k>c" (k counts labs within the process), so parallel test processes never collide;
// Create() deletes leftovers of this scheme whose process is gone.
//
// Running code inside a namespace: a process with the InNs() argv prefix (see process_util.h), or
// a thread after EnterNamespace() (setns affects the calling thread only, so a thread that entered
// the server namespace can listen while another in the client namespace connects).
//
// Thread-safety: a NetLab's methods must not be called concurrently; EnterNamespace is thread-safe.
#ifndef DELTASTREAM_TESTS_SUPPORT_NETLAB_H_
#define DELTASTREAM_TESTS_SUPPORT_NETLAB_H_

#include <memory>
#include <string>
#include <vector>

#include "common/status.h"

namespace ds::testing {

class NetLab {
 public:
  // Builds a lab: two namespaces, a veth pair between them with addresses on a /30 of
  // 10.200.0.0/16 (derived from the pid; the namespaces are private so it never clashes), links
  // up (lo too). The veth ends send one packet per skb (gso_max_segs 1), so loss and shaping act
  // on MTU-sized packets as on a real link. Returns nullptr with a reason in *why (may be null)
  // when not root, a tool is missing or a setup step fails; nothing is left behind then.
  static std::unique_ptr<NetLab> Create(std::string* why);
  // Kills every process still running in the namespaces (SIGKILL) and deletes them.
  ~NetLab();
  NetLab(const NetLab&) = delete;
  NetLab& operator=(const NetLab&) = delete;

  const std::string& server_ns() const { return server_ns_; }
  const std::string& client_ns() const { return client_ns_; }
  const std::string& server_ip() const { return server_ip_; }
  const std::string& client_ip() const { return client_ip_; }
  // The veth ends, "veth-srv" in the server namespace and "veth-cli" in the client namespace.
  const std::string& server_dev() const { return server_dev_; }
  const std::string& client_dev() const { return client_dev_; }

  // Shapes both directions to |mbit| Mbit/s (10^6 bit/s) with a tc tbf qdisc on each veth end;
  // callable again to change the rate mid-test (qdisc replace, connections survive). 0 removes
  // the shaping. The bucket holds 5 ms of traffic (at least 4 full frames) and the queue 50 ms
  // (at least 10 frames): smooth at the scale of a throughput sample, no long bursts.
  Status SetBandwidth(double mbit);
  // Drops |percent| (0..100, resolution 0.01) of the packets in each direction at random, on
  // ingress of the receiving namespace (an nftables prerouting rule with `numgen random`), so
  // the sender sees real loss (a drop in its own output hook would be a local error instead:
  // EPERM for UDP, a silent retry for TCP). Replaces the previous setting; 0 removes it.
  Status SetLoss(double percent);
  // Drops every UDP datagram arriving in the server namespace (a firewall that lets only TCP
  // through), or stops doing so.
  Status BlockUdp(bool block);

  // argv prefix that runs a command in |ns|: {"/usr/sbin/ip", "netns", "exec", ns} (the absolute
  // path of ip, so it works with execv and the prefix parameters of process_util.h).
  std::vector<std::string> InNs(const std::string& ns) const;

 private:
  NetLab() = default;
  Status Setup();
  void Teardown();

  std::string ip_, tc_, nft_;  // Absolute paths of the tools.
  std::string server_ns_, client_ns_, server_ip_, client_ip_;
  std::string server_dev_ = "veth-srv", client_dev_ = "veth-cli";
  bool shaped_ = false;
  std::vector<std::string> created_;  // Namespaces to delete.
};

// Moves the calling thread (only) into the network namespace |ns| (/var/run/netns/NS). Sockets
// created afterwards by this thread live in |ns|.
Status EnterNamespace(const std::string& ns);

// Enters |ns| for the calling thread and returns to the thread's previous namespace on
// destruction. ok() says whether the entry succeeded (status() has the reason otherwise).
class ScopedNamespace {
 public:
  explicit ScopedNamespace(const std::string& ns);
  ~ScopedNamespace();
  ScopedNamespace(const ScopedNamespace&) = delete;
  ScopedNamespace& operator=(const ScopedNamespace&) = delete;
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

 private:
  int saved_fd_ = -1;
  Status status_;
};

}  // namespace ds::testing

#endif  // DELTASTREAM_TESTS_SUPPORT_NETLAB_H_
