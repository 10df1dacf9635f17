// Running the real binaries from tests: a command to completion with its output captured, and a
// `deltastream serve` child process on an ephemeral port.
#ifndef DELTASTREAM_TESTS_SUPPORT_PROCESS_UTIL_H_
#define DELTASTREAM_TESTS_SUPPORT_PROCESS_UTIL_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "support/test_util.h"

namespace ds::testing {

struct RunResult {
  int exit_code = -1;
  std::string out, err;
};

// Runs |binary| with |args| to completion (stdin /dev/null); stdout and stderr are captured
// through files in |dir|. A death by signal fails the test and gives exit_code -1. A non-empty
// |prefix| goes before the binary in argv (prefix[0] an absolute path), e.g. NetLab::InNs(ns) to
// run it in a network namespace.
RunResult RunProgram(const std::string& binary, const TempDir& dir,
                     const std::vector<std::string>& args,
                     const std::vector<std::string>& prefix = {});

// How a ServerProcess is started: |prefix| goes before the binary in argv (prefix[0] an absolute
// path; e.g. NetLab::InNs(ns)), |listen| is the --listen address (in a NetLab, the server's
// address with port 0; url() then names that address).
struct ServerLaunch {
  std::vector<std::string> prefix;
  std::string listen = "127.0.0.1:0";
};

// `BINARY serve --data-dir DATA --listen 127.0.0.1:0 --port-file DATA.port EXTRA...` (address
// and argv prefix per |launch|), with its output appended to |log_path|. The constructor waits
// (at most 10 s) for the port file; url() is empty if the server did not start (the test has
// failed then). The destructor stops it with SIGTERM and expects a clean exit (in a NetLab,
// declare the lab first so that the server is stopped before the lab kills what is left).
class ServerProcess {
 public:
  ServerProcess(const std::string& binary, const std::string& data_dir, const std::string& log_path,
                std::vector<std::string> extra = {}, ServerLaunch launch = {});
  ~ServerProcess();
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Sends |sig| and reaps the process; with SIGTERM, expects exit status 0.
  void Stop(int sig);
  const std::string& url() const { return url_; }

 private:
  pid_t pid_ = -1;
  std::string port_file_, url_;
};

}  // namespace ds::testing

#endif  // DELTASTREAM_TESTS_SUPPORT_PROCESS_UTIL_H_
