#include "support/netlab.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

namespace ds::testing {
namespace {

constexpr char kNetnsDir[] = "/var/run/netns";
constexpr char kPrefix[] = "dslab";
constexpr char kNftTable[] = "dslab";

// Namespaces of live labs in this process (never treated as stale).
std::mutex g_mu;
std::set<std::string>& LiveNamespaces() {
  static auto* live = new std::set<std::string>;
  return *live;
}
std::atomic<int> g_next_lab{0};

std::string Join(const std::vector<std::string>& argv) {
  std::string s;
  for (const std::string& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

void CloseFd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Runs argv (argv[0] an absolute path) with |input| on stdin; stdout goes to *out (if not null).
// Fails with the command's stderr unless it exits with status 0.
Status Run(const std::vector<std::string>& argv, const std::string& input = "",
           std::string* out = nullptr) {
  std::vector<std::string> storage = argv;
  std::vector<char*> cargv;
  for (std::string& a : storage) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  // stdin is a socket so that a child exiting early gives EPIPE, not SIGPIPE (MSG_NOSIGNAL).
  int in[2] = {-1, -1}, o[2] = {-1, -1}, e[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0) {
    return ErrnoStatus("socketpair", errno);
  }
  if (::pipe2(o, O_CLOEXEC) != 0 || ::pipe2(e, O_CLOEXEC) != 0) {
    const int err = errno;
    for (int* fd : {&in[0], &in[1], &o[0], &o[1], &e[0], &e[1]}) CloseFd(*fd);
    return ErrnoStatus("pipe2", err);
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls here: the test process may have other threads.
    ::dup2(in[0], 0);
    ::dup2(o[1], 1);
    ::dup2(e[1], 2);
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  const int fork_err = errno;
  CloseFd(in[0]);
  CloseFd(o[1]);
  CloseFd(e[1]);
  if (pid < 0) {
    for (int* fd : {&in[1], &o[0], &e[0]}) CloseFd(*fd);
    return ErrnoStatus("fork", fork_err);
  }
  // The inputs used here are small (an nft ruleset); a failed write shows up as the child's error.
  size_t done = 0;
  while (done < input.size()) {
    const ssize_t n = ::send(in[1], input.data() + done, input.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  CloseFd(in[1]);

  std::string stdout_text, stderr_text;
  pollfd fds[2] = {{o[0], POLLIN, 0}, {e[0], POLLIN, 0}};
  std::string* sinks[2] = {&stdout_text, &stderr_text};
  int open_fds = 2;
  while (open_fds > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (out != nullptr) *out = stdout_text;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return Status::Ok();
  while (!stderr_text.empty() && stderr_text.back() == '\n') stderr_text.pop_back();
  const std::string how = WIFEXITED(status) ? "exited with " + std::to_string(WEXITSTATUS(status))
                                            : "died by signal " + std::to_string(WTERMSIG(status));
  return Error(ErrorCode::kIoError,
               "`" + Join(argv) + "` " + how + (stderr_text.empty() ? "" : ": " + stderr_text));
}

// The absolute path of |tool| in PATH or the usual sbin directories; empty if none.
std::string FindTool(const std::string& tool) {
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (!dir.empty()) dirs.push_back(dir);
    }
  }
  for (const char* d : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) dirs.push_back(d);
  for (const std::string& dir : dirs) {
    const std::string p = dir + "/" + tool;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

// SIGKILLs every process in |ns| (never this one) until none is left, for at most ~3 s.
void KillAll(const std::string& ip, const std::string& ns) {
  for (int round = 0; round < 150; ++round) {
    std::string out;
    if (!Run({ip, "netns", "pids", ns}, "", &out).ok()) return;
    std::stringstream ss(out);
    long pid = 0;
    bool any = false;
    while (ss >> pid) {
      if (pid <= 1 || pid == ::getpid()) continue;
      any = true;
      ::kill(static_cast<pid_t>(pid), SIGKILL);
    }
    if (!any) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Parses "dslab<pid>n<k>s" / "dslab<pid>n<k>c"; returns the pid or -1 for other names.
long PidOfLabName(const std::string& name) {
  const size_t plen = sizeof(kPrefix) - 1;
  if (name.size() < plen + 4 || name.compare(0, plen, kPrefix) != 0) return -1;
  size_t i = plen;
  long pid = 0;
  const size_t pid_start = i;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])) &&
         i - pid_start < 9) {
    pid = pid * 10 + (name[i++] - '0');
  }
  if (i == pid_start || i >= name.size() || name[i++] != 'n') return -1;
  const size_t k_start = i;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) ++i;
  if (i == k_start || i + 1 != name.size() || (name[i] != 's' && name[i] != 'c')) return -1;
  return pid;
}

// Whether |pid| is a running process (a zombie has released everything it held).
bool ProcessAlive(long pid) {
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(in, stat);
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return in.is_open();
  return stat[paren + 2] != 'Z' && stat[paren + 2] != 'X';
}

// Deletes namespaces of this naming scheme left by processes that no longer exist (or by an
// earlier process with this pid: this process knows all of its own).
void RemoveStale(const std::string& ip) {
  std::vector<std::string> stale;
  if (DIR* dir = ::opendir(kNetnsDir)) {
    std::lock_guard<std::mutex> lock(g_mu);
    while (dirent* ent = ::readdir(dir)) {
      const std::string name = ent->d_name;
      const long pid = PidOfLabName(name);
      if (pid <= 0) continue;
      const bool gone = pid == ::getpid() ? LiveNamespaces().count(name) == 0 : !ProcessAlive(pid);
      if (gone) stale.push_back(name);
    }
    ::closedir(dir);
  }
  for (const std::string& ns : stale) {
    KillAll(ip, ns);
    (void)Run({ip, "netns", "del", ns});  // Another process may be removing it too.
  }
}

bool ValidNsName(const std::string& ns) {
  return !ns.empty() && ns.find('/') == std::string::npos && ns != "." && ns != "..";
}

}  // namespace

std::unique_ptr<NetLab> NetLab::Create(std::string* why) {
  auto fail = [why](std::string reason) -> std::unique_ptr<NetLab> {
    if (why != nullptr) *why = std::move(reason);
    return nullptr;
  };
  if (::geteuid() != 0) return fail("NetLab needs root (network namespaces, tc, nft)");
  std::unique_ptr<NetLab> lab(new NetLab);
  lab->ip_ = FindTool("ip");
  lab->tc_ = FindTool("tc");
  lab->nft_ = FindTool("nft");
  if (lab->ip_.empty() || lab->tc_.empty()) return fail("NetLab needs `ip` and `tc` (iproute2)");
  if (lab->nft_.empty()) return fail("NetLab needs `nft` (nftables)");

  RemoveStale(lab->ip_);

  const long pid = ::getpid();
  const int k = g_next_lab.fetch_add(1);
  const std::string base = kPrefix + std::to_string(pid) + "n" + std::to_string(k);
  lab->server_ns_ = base + "s";
  lab->client_ns_ = base + "c";
  // A /30 in 10.200.0.0/16; the namespaces are private, so this only helps reading logs.
  const uint32_t net = (0x0AC80000u) + ((static_cast<uint32_t>(pid) * 8u + k) % 16384u) * 4u;
  auto dotted = [](uint32_t a) {
    return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." +
           std::to_string((a >> 8) & 255) + "." + std::to_string(a & 255);
  };
  lab->server_ip_ = dotted(net + 1);
  lab->client_ip_ = dotted(net + 2);

  {
    std::lock_guard<std::mutex> lock(g_mu);
    LiveNamespaces().insert(lab->server_ns_);
    LiveNamespaces().insert(lab->client_ns_);
  }
  const Status s = lab->Setup();
  if (!s.ok()) return fail("NetLab setup failed: " + s.ToString());  // ~NetLab cleans up.
  return lab;
}

Status NetLab::Setup() {
  for (const std::string& ns : {server_ns_, client_ns_}) {
    // A namespace of this name can only be a leftover of an earlier process with this pid.
    if (::access((std::string(kNetnsDir) + "/" + ns).c_str(), F_OK) == 0) {
      KillAll(ip_, ns);
      (void)Run({ip_, "netns", "del", ns});
    }
    DS_RETURN_IF_ERROR(Run({ip_, "netns", "add", ns}));
    created_.push_back(ns);
  }
  // Created directly inside the namespaces: the fixed device names never meet in the root one.
  DS_RETURN_IF_ERROR(Run({ip_, "link", "add", server_dev_, "netns", server_ns_, "type", "veth",
                          "peer", "name", client_dev_, "netns", client_ns_}));
  const struct {
    const std::string& ns;
    const std::string& dev;
    const std::string& addr;
  } ends[] = {{server_ns_, server_dev_, server_ip_}, {client_ns_, client_dev_, client_ip_}};
  for (const auto& end : ends) {
    DS_RETURN_IF_ERROR(Run({ip_, "-n", end.ns, "addr", "add", end.addr + "/30", "dev", end.dev}));
    // One wire packet per skb: veth passes 64 KiB TSO/GSO super-packets through whole, which
    // would make the loss rule drop (and tbf meter) 40 packets at a time.
    DS_RETURN_IF_ERROR(
        Run({ip_, "-n", end.ns, "link", "set", "dev", end.dev, "gso_max_segs", "1"}));
    DS_RETURN_IF_ERROR(Run({ip_, "-n", end.ns, "link", "set", "lo", "up"}));
    DS_RETURN_IF_ERROR(Run({ip_, "-n", end.ns, "link", "set", end.dev, "up"}));
  }
  return Status::Ok();
}

NetLab::~NetLab() { Teardown(); }

void NetLab::Teardown() {
  for (const std::string& ns : created_) {
    KillAll(ip_, ns);
    const Status s = Run({ip_, "netns", "del", ns});
    if (!s.ok()) std::fprintf(stderr, "NetLab: %s\n", s.ToString().c_str());
  }
  created_.clear();
  std::lock_guard<std::mutex> lock(g_mu);
  LiveNamespaces().erase(server_ns_);
  LiveNamespaces().erase(client_ns_);
}

Status NetLab::SetBandwidth(double mbit) {
  if (!std::isfinite(mbit) || mbit < 0) {
    return Error(ErrorCode::kInvalidArgument, "bandwidth must be >= 0 Mbit/s");
  }
  const std::pair<const std::string&, const std::string&> ends[] = {{server_ns_, server_dev_},
                                                                    {client_ns_, client_dev_}};
  if (mbit == 0) {
    if (!shaped_) return Status::Ok();
    for (const auto& [ns, dev] : ends) {
      DS_RETURN_IF_ERROR(Run({tc_, "-n", ns, "qdisc", "del", "dev", dev, "root"}));
    }
    shaped_ = false;
    return Status::Ok();
  }
  constexpr double kFrame = 1514;  // Ethernet frame at MTU 1500.
  const double bytes_per_s = mbit * 1e6 / 8;
  const auto rate_bit = static_cast<uint64_t>(std::llround(std::max(mbit * 1e6, 8.0)));
  const auto burst = static_cast<uint64_t>(std::max(bytes_per_s * 0.005, 4 * kFrame));
  const auto limit = burst + static_cast<uint64_t>(std::max(bytes_per_s * 0.050, 10 * kFrame));
  for (const auto& [ns, dev] : ends) {
    DS_RETURN_IF_ERROR(Run({tc_, "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                            std::to_string(rate_bit) + "bit", "burst", std::to_string(burst),
                            "limit", std::to_string(limit)}));
  }
  shaped_ = true;
  return Status::Ok();
}

Status NetLab::SetLoss(double percent) {
  if (!std::isfinite(percent) || percent < 0 || percent > 100) {
    return Error(ErrorCode::kInvalidArgument, "loss must be within 0..100 percent");
  }
  const long per_10000 = std::lround(percent * 100);
  const std::pair<const std::string&, const std::string&> ends[] = {{server_ns_, server_dev_},
                                                                    {client_ns_, client_dev_}};
  for (const auto& [ns, dev] : ends) {
    // One atomic transaction: (re)create the table empty, then fill it if loss is wanted.
    std::string rules =
        std::string("table inet ") + kNftTable + "\ndelete table inet " + kNftTable + "\n";
    if (per_10000 > 0) {
      rules += std::string("table inet ") + kNftTable +
               " {\n"
               "  chain loss {\n"
               "    type filter hook prerouting priority -300; policy accept;\n"
               "    iifname \"" +
               dev + "\" numgen random mod 10000 < " + std::to_string(per_10000) +
               " counter drop\n"
               "  }\n"
               "}\n";
    }
    std::vector<std::string> argv = InNs(ns);
    argv.insert(argv.end(), {nft_, "-f", "-"});
    DS_RETURN_IF_ERROR(Run(argv, rules));
  }
  return Status::Ok();
}

Status NetLab::BlockUdp(bool block) {
  const std::string table = std::string(kNftTable) + "_udp";
  std::string rules = "table inet " + table + "\ndelete table inet " + table + "\n";
  if (block) {
    rules += "table inet " + table +
             " {\n"
             "  chain block {\n"
             "    type filter hook prerouting priority -300; policy accept;\n"
             "    iifname \"" +
             server_dev_ +
             "\" meta l4proto udp counter drop\n"
             "  }\n"
             "}\n";
  }
  std::vector<std::string> argv = InNs(server_ns_);
  argv.insert(argv.end(), {nft_, "-f", "-"});
  return Run(argv, rules);
}

std::vector<std::string> NetLab::InNs(const std::string& ns) const {
  return {ip_, "netns", "exec", ns};
}

Status EnterNamespace(const std::string& ns) {
  if (!ValidNsName(ns))
    return Error(ErrorCode::kInvalidArgument, "bad namespace name '" + ns + "'");
  const std::string path = std::string(kNetnsDir) + "/" + ns;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open " + path, errno);
  const int rc = ::setns(fd, CLONE_NEWNET);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoStatus("setns " + path, err);
  return Status::Ok();
}

ScopedNamespace::ScopedNamespace(const std::string& ns) {
  saved_fd_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (saved_fd_ < 0) {
    status_ = ErrnoStatus("open /proc/thread-self/ns/net", errno);
    return;
  }
  status_ = EnterNamespace(ns);
}

ScopedNamespace::~ScopedNamespace() {
  if (saved_fd_ < 0) return;
  if (status_.ok() && ::setns(saved_fd_, CLONE_NEWNET) != 0) {
    std::perror("ScopedNamespace: setns back");
    std::abort();  // The thread would stay in a namespace that is about to disappear.
  }
  ::close(saved_fd_);
}

}  // namespace ds::testing
