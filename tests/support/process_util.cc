#include "support/process_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "common/fs.h"

namespace ds::testing {
namespace {

std::vector<char*> Argv(std::vector<std::string>& storage) {
  std::vector<char*> argv;
  for (std::string& a : storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  return argv;
}

}  // namespace

RunResult RunProgram(const std::string& binary, const TempDir& dir,
                     const std::vector<std::string>& args, const std::vector<std::string>& prefix) {
  const std::string out_path = dir.Join(".stdout"), err_path = dir.Join(".stderr");
  std::vector<std::string> storage = prefix;
  storage.push_back(binary);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv = Argv(storage);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int out = ::open(out_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    const int err = ::open(err_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    const int null_in = ::open("/dev/null", O_RDONLY);
    if (out < 0 || err < 0 || null_in < 0) ::_exit(125);
    ::dup2(null_in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  RunResult r;
  int status = 0;
  EXPECT_GT(pid, 0);
  EXPECT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status)) << "the program must exit, not die by a signal";
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  const Bytes out = ReadFileOrDie(out_path), err = ReadFileOrDie(err_path);
  r.out.assign(out.begin(), out.end());
  r.err.assign(err.begin(), err.end());
  ::unlink(out_path.c_str());
  ::unlink(err_path.c_str());
  return r;
}

ServerProcess::ServerProcess(const std::string& binary, const std::string& data_dir,
                             const std::string& log_path, std::vector<std::string> extra,
                             ServerLaunch launch) {
  port_file_ = data_dir + ".port";
  ::unlink(port_file_.c_str());
  std::vector<std::string> storage = std::move(launch.prefix);
  storage.insert(storage.end(), {binary, "serve", "--data-dir", data_dir, "--listen", launch.listen,
                                 "--port-file", port_file_});
  storage.insert(storage.end(), extra.begin(), extra.end());
  std::vector<char*> argv = Argv(storage);
  pid_ = ::fork();
  if (pid_ == 0) {
    const int log = ::open(log_path.c_str(), O_CREAT | O_APPEND | O_WRONLY, 0644);
    if (log >= 0) {
      ::dup2(log, 1);
      ::dup2(log, 2);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  for (int i = 0; i < 200; ++i) {
    Result<Bytes> b = ReadFile(port_file_);
    if (b.ok() && !b->empty()) {
      url_ = "http://" + std::string(b->begin(), b->end());
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ADD_FAILURE() << "server did not start; log: " << log_path;
}

ServerProcess::~ServerProcess() { Stop(SIGTERM); }

void ServerProcess::Stop(int sig) {
  if (pid_ <= 0) return;
  ::kill(pid_, sig);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  if (sig == SIGTERM) {
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "clean shutdown";
  }
  pid_ = -1;
}

}  // namespace ds::testing
