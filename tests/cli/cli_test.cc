// Tests the deltastream binary end to end: diff/apply/inspect and exit codes = error codes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/hash.h"
#include "delta/delta.h"
#include "support/process_util.h"
#include "support/test_util.h"

#ifndef DS_CLI_PATH
#error "DS_CLI_PATH must name the deltastream binary"
#endif

namespace ds {
namespace {

using testing::ReadFileOrDie;
using testing::TempDir;
using testing::WriteFileOrDie;

using testing::RunResult;

RunResult RunCli(const TempDir& dir, const std::vector<std::string>& args) {
  return testing::RunProgram(DS_CLI_PATH, dir, args);
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    old_ = testing::TextBytes(200 << 10, 1);
    new_ = old_;
    const Bytes ins = testing::RandomBytes(3000, 2);
    new_.insert(new_.begin() + 50000, ins.begin(), ins.end());
    for (size_t i = 0; i < new_.size(); i += 9973) new_[i] ^= 0x20;
    WriteFileOrDie(old_path_, old_);
    WriteFileOrDie(new_path_, new_);
  }

  RunResult Run(const std::vector<std::string>& args) { return RunCli(dir_, args); }

  RunResult Diff(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"diff",    old_path_, new_path_,     "-o", patch_path_,
                                     "--level", "3",       "--ref-level", "3"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  }

  TempDir dir_;
  std::string old_path_ = dir_.Join("old.bin");
  std::string new_path_ = dir_.Join("new.bin");
  std::string patch_path_ = dir_.Join("p.dspf");
  std::string out_path_ = dir_.Join("out.bin");
  Bytes old_, new_;
};

TEST_F(CliTest, DiffApplyRoundTrip) {
  RunResult d = Diff();
  ASSERT_EQ(d.exit_code, 0) << d.err;
  RunResult a = Run({"apply", old_path_, patch_path_, "-o", out_path_});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_TRUE(ReadFileOrDie(out_path_) == new_);
  EXPECT_TRUE(a.err.empty()) << a.err;
}

TEST_F(CliTest, DiffOptionsAndVerboseOutput) {
  RunResult d = Diff({"--segment-size", "16384", "--threads", "1", "--no-zstd-ref", "-v"});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  Result<Bytes> patch = ReadFile(patch_path_);
  ASSERT_TRUE(patch.ok());
  EXPECT_NE(d.out.find(std::to_string(patch->size())), std::string::npos)
      << "verbose output names the patch size: " << d.out;
  Result<delta::PatchInfo> info = delta::InspectPatch(*patch);
  ASSERT_TRUE(info.ok());
  EXPECT_LE(info->header.max_segment_output, 16384u);
  EXPECT_GE(info->segments.size(), new_.size() / 16384);
  EXPECT_EQ(testing::CountMethods(*patch).ref, 0u) << "--no-zstd-ref";
  RunResult a = Run({"apply", "-v", old_path_, patch_path_, "-o", out_path_});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_NE(a.out.find("SHA-256 verified"), std::string::npos) << a.out;
  EXPECT_TRUE(ReadFileOrDie(out_path_) == new_);
}

TEST_F(CliTest, InspectDescribesPatch) {
  ASSERT_EQ(Diff({"--segment-size", "65536"}).exit_code, 0);
  RunResult i = Run({"inspect", patch_path_});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  Result<Bytes> patch = ReadFile(patch_path_);
  ASSERT_TRUE(patch.ok());
  Result<delta::PatchInfo> info = delta::InspectPatch(*patch);
  ASSERT_TRUE(info.ok());
  // The text agrees with the library's view of the patch.
  const bool zero_run = delta::UsesZeroRunStreams(*info);
  EXPECT_NE(i.out.find(zero_run ? "DSPF 1.3" : "DSPF 1.0"), std::string::npos) << i.out;
  EXPECT_EQ(i.out.find("zero-run") != std::string::npos, zero_run) << i.out;
  EXPECT_NE(i.out.find(std::to_string(new_.size())), std::string::npos) << i.out;
  EXPECT_NE(i.out.find(ToHex(info->header.new_sha256)), std::string::npos) << i.out;
  EXPECT_NE(i.out.find(ToHex(info->header.old_sha256)), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("segments    " + std::to_string(info->segments.size())), std::string::npos)
      << i.out;
  for (const delta::SegmentInfo& s : info->segments) {
    EXPECT_NE(i.out.find(delta::MethodName(s.header.method)), std::string::npos) << i.out;
  }
}

TEST_F(CliTest, VcdiffDiffApplyInspectAndXdelta3) {
  const std::string vcd = dir_.Join("p.vcdiff");
  RunResult d = Run({"diff", "--format", "vcdiff", "-v", old_path_, new_path_, "-o", vcd});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_NE(d.out.find("VCDIFF patch"), std::string::npos) << d.out;
  const Bytes patch = ReadFileOrDie(vcd);
  ASSERT_GE(patch.size(), 4u);
  EXPECT_EQ(patch[0], 0xD6);
  // Our apply recognises the format by its magic.
  RunResult a = Run({"apply", old_path_, vcd, "-o", out_path_});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_TRUE(ReadFileOrDie(out_path_) == new_);
  RunResult i = Run({"inspect", vcd});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_NE(i.out.find("VCDIFF"), std::string::npos) << i.out;
  // And so does xdelta3.
  const std::string x3 = dir_.Join("x3.out");
  const std::string cmd =
      "/usr/bin/xdelta3 -d -f -s '" + old_path_ + "' '" + vcd + "' '" + x3 + "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_TRUE(ReadFileOrDie(x3) == new_);

  // Options reach the encoder: lzma sections and 64 KiB windows, still decoded by xdelta3.
  const std::string lz = dir_.Join("p.lzma.vcdiff");
  ASSERT_EQ(Run({"diff", "--format", "vcdiff", "--vcdiff-lzma", "--vcdiff-window", "65536",
                 old_path_, new_path_, "-o", lz})
                .exit_code,
            0);
  RunResult li = Run({"inspect", lz});
  ASSERT_EQ(li.exit_code, 0) << li.err;
  EXPECT_NE(li.out.find("lzma"), std::string::npos) << li.out;
  ASSERT_EQ(Run({"apply", old_path_, lz, "-o", out_path_}).exit_code, 0);
  EXPECT_TRUE(ReadFileOrDie(out_path_) == new_);
  const std::string cmd2 =
      "/usr/bin/xdelta3 -d -f -s '" + old_path_ + "' '" + lz + "' '" + x3 + "' 2>&1";
  ASSERT_EQ(std::system(cmd2.c_str()), 0) << cmd2;
  EXPECT_TRUE(ReadFileOrDie(x3) == new_);
}

TEST_F(CliTest, VcdiffBadOptionsExit1) {
  EXPECT_EQ(Diff({"--format", "zip"}).exit_code, 1);
  EXPECT_EQ(Diff({"--format", "vcdiff", "--vcdiff-window", "0"}).exit_code, 1);
  EXPECT_EQ(Diff({"--format", "vcdiff", "--vcdiff-window", "99999999"}).exit_code, 1);
}

TEST_F(CliTest, VcdiffCorruptedPatchLeavesOutputAlone) {
  const std::string vcd = dir_.Join("p.vcdiff");
  ASSERT_EQ(Run({"diff", "--format", "vcdiff", old_path_, new_path_, "-o", vcd}).exit_code, 0);
  Bytes patch = ReadFileOrDie(vcd);
  patch[patch.size() / 2] ^= 0x5A;  // Somewhere in the sections: checksum or format error.
  WriteFileOrDie(vcd, patch);
  WriteFileOrDie(out_path_, testing::ToBytes("keep me"));
  RunResult a = Run({"apply", old_path_, vcd, "-o", out_path_});
  EXPECT_NE(a.exit_code, 0);
  EXPECT_FALSE(a.err.empty());
  EXPECT_TRUE(ReadFileOrDie(out_path_) == testing::ToBytes("keep me"));
}

TEST_F(CliTest, ApplyWrongBaseExits26) {
  ASSERT_EQ(Diff().exit_code, 0);
  WriteFileOrDie(out_path_, testing::ToBytes("keep"));
  RunResult a = Run({"apply", new_path_, patch_path_, "-o", out_path_});
  EXPECT_EQ(a.exit_code, 26) << a.err;
  EXPECT_NE(a.err.find("patch_wrong_base (26)"), std::string::npos) << a.err;
  EXPECT_TRUE(ReadFileOrDie(out_path_) == testing::ToBytes("keep"));
}

TEST_F(CliTest, ApplyMissingOldExits3) {
  ASSERT_EQ(Diff().exit_code, 0);
  RunResult a = Run({"apply", dir_.Join("missing"), patch_path_, "-o", out_path_});
  EXPECT_EQ(a.exit_code, 3) << a.err;
  EXPECT_NE(a.err.find("not_found"), std::string::npos) << a.err;
}

TEST_F(CliTest, ApplyMissingPatchExits3) {
  EXPECT_EQ(Run({"apply", old_path_, dir_.Join("missing"), "-o", out_path_}).exit_code, 3);
}

TEST_F(CliTest, DiffMissingInputExits3) {
  EXPECT_EQ(Run({"diff", dir_.Join("missing"), new_path_, "-o", patch_path_}).exit_code, 3);
  EXPECT_EQ(Run({"diff", old_path_, dir_.Join("missing"), "-o", patch_path_}).exit_code, 3);
}

TEST_F(CliTest, GzipDiffUsesDeflateUnlessNoTransforms) {
  // The real gzip(1) on both sides; inspect names the transform, --no-transforms turns it off.
  if (std::system("command -v gzip >/dev/null 2>&1") != 0) GTEST_SKIP() << "no gzip binary";
  const std::string old_gz = dir_.Join("old.gz"), new_gz = dir_.Join("new.gz");
  ASSERT_EQ(std::system(("gzip -n -c " + old_path_ + " > " + old_gz).c_str()), 0);
  WriteFileOrDie(dir_.Join("new.txt"), new_);
  ASSERT_EQ(std::system(("gzip -n -c " + dir_.Join("new.txt") + " > " + new_gz).c_str()), 0);
  RunResult d = Run({"diff", "-v", old_gz, new_gz, "-o", patch_path_});
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_NE(d.out.find("recompression (deflate, xz): 1 segments"), std::string::npos) << d.out;
  RunResult i = Run({"inspect", patch_path_});
  ASSERT_EQ(i.exit_code, 0) << i.err;
  EXPECT_TRUE(
      i.out.find("DSPF 1.2") != std::string::npos ||
      (i.out.find("DSPF 1.3") != std::string::npos && i.out.find("zero-run") != std::string::npos))
      << i.out;
  EXPECT_NE(i.out.find("transform deflate"), std::string::npos) << i.out;
  EXPECT_NE(i.out.find("recompress  saved"), std::string::npos) << i.out;
  ASSERT_EQ(Run({"apply", old_gz, patch_path_, "-o", out_path_}).exit_code, 0);
  EXPECT_TRUE(ReadFileOrDie(out_path_) == ReadFileOrDie(new_gz));
  const uint64_t with = ReadFileOrDie(patch_path_).size();
  ASSERT_EQ(Run({"diff", "--no-transforms", old_gz, new_gz, "-o", patch_path_}).exit_code, 0);
  RunResult plain = Run({"inspect", patch_path_});
  EXPECT_EQ(plain.out.find("deflate"), std::string::npos) << plain.out;
  EXPECT_LT(with * 4, ReadFileOrDie(patch_path_).size());
}

TEST_F(CliTest, XzDiffReplaysUnlessAllowedAnEncoder) {
  // The real xz(1) on both sides: by default the stream is rebuilt from its replay form (no
  // encoder on the device); --max-encoder-memory-mib 128 lets liblzma's xz -6 encoder rebuild it.
  if (std::system("command -v xz >/dev/null 2>&1") != 0) GTEST_SKIP() << "no xz binary";
  const std::string old_xz = dir_.Join("old.xz"), new_xz = dir_.Join("new.xz");
  ASSERT_EQ(std::system(("xz -6 -c " + old_path_ + " > " + old_xz).c_str()), 0);
  WriteFileOrDie(dir_.Join("new.txt"), new_);
  ASSERT_EQ(std::system(("xz -6 -c " + dir_.Join("new.txt") + " > " + new_xz).c_str()), 0);
  for (const bool encoder : {false, true}) {
    std::vector<std::string> args = {"diff", old_xz, new_xz, "-o", patch_path_};
    if (encoder) args.insert(args.begin() + 1, {"--max-encoder-memory-mib", "128"});
    RunResult d = Run(args);
    ASSERT_EQ(d.exit_code, 0) << d.err;
    RunResult i = Run({"inspect", patch_path_});
    ASSERT_EQ(i.exit_code, 0) << i.err;
    EXPECT_NE(i.out.find(encoder ? "transform xz (preset 6" : "transform xz-replay"),
              std::string::npos)
        << i.out;
    EXPECT_NE(i.out.find(encoder ? "DSPF 1." : "DSPF 1.4"), std::string::npos) << i.out;
    ASSERT_EQ(Run({"apply", old_xz, patch_path_, "-o", out_path_}).exit_code, 0);
    EXPECT_TRUE(ReadFileOrDie(out_path_) == ReadFileOrDie(new_xz));
  }
  EXPECT_NE(
      Run({"diff", "--max-encoder-memory-mib", "-1", old_xz, new_xz, "-o", patch_path_}).exit_code,
      0);
}

TEST_F(CliTest, InspectMissingPatchExits3) {
  EXPECT_EQ(Run({"inspect", dir_.Join("missing")}).exit_code, 3);
}

TEST_F(CliTest, ApplyCorruptedPatchExits23) {
  ASSERT_EQ(Diff().exit_code, 0);
  Bytes patch = ReadFileOrDie(patch_path_);
  patch[patch.size() - 2] ^= 1;
  WriteFileOrDie(patch_path_, patch);
  EXPECT_EQ(Run({"apply", old_path_, patch_path_, "-o", out_path_}).exit_code, 23);
  EXPECT_EQ(Run({"inspect", patch_path_}).exit_code, 23);
}

TEST_F(CliTest, ApplyTruncatedPatchExits22) {
  ASSERT_EQ(Diff().exit_code, 0);
  Bytes patch = ReadFileOrDie(patch_path_);
  patch.resize(patch.size() - 1);
  WriteFileOrDie(patch_path_, patch);
  EXPECT_EQ(Run({"apply", old_path_, patch_path_, "-o", out_path_}).exit_code, 22);
  EXPECT_EQ(Run({"inspect", patch_path_}).exit_code, 22);
}

TEST_F(CliTest, ApplyNotAPatchExits20) {
  EXPECT_EQ(Run({"apply", old_path_, new_path_, "-o", out_path_}).exit_code, 20);
  EXPECT_EQ(Run({"inspect", old_path_}).exit_code, 20);
}

TEST_F(CliTest, ApplyPatchWithTrailingDataExits30) {
  ASSERT_EQ(Diff().exit_code, 0);
  Bytes patch = ReadFileOrDie(patch_path_);
  patch.push_back(0);
  WriteFileOrDie(patch_path_, patch);
  EXPECT_EQ(Run({"apply", old_path_, patch_path_, "-o", out_path_}).exit_code, 30);
}

TEST_F(CliTest, NoSubcommandExits1) {
  RunResult r = Run({});
  EXPECT_EQ(r.exit_code, 1);
}

TEST_F(CliTest, UnknownSubcommandExits1) { EXPECT_EQ(Run({"frobnicate"}).exit_code, 1); }

TEST_F(CliTest, MissingRequiredArgumentExits1) {
  EXPECT_EQ(Run({"diff", old_path_, new_path_}).exit_code, 1) << "no -o";
  EXPECT_EQ(Run({"apply", old_path_}).exit_code, 1);
  EXPECT_EQ(Run({"inspect"}).exit_code, 1);
}

TEST_F(CliTest, UnknownOptionExits1) {
  EXPECT_EQ(Run({"apply", old_path_, patch_path_, "-o", out_path_, "--bogus"}).exit_code, 1);
}

TEST_F(CliTest, NonNumericOptionExits1) { EXPECT_EQ(Diff({"--level", "high"}).exit_code, 1); }

TEST_F(CliTest, OutOfRangeLevelExits1) {
  EXPECT_EQ(Diff({"--level", "23"}).exit_code, 1);
  EXPECT_EQ(Diff({"--segment-size", "0"}).exit_code, 1);
}

TEST_F(CliTest, HelpExits0) {
  RunResult r = Run({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE((r.out + r.err).find("diff"), std::string::npos);
}

TEST_F(CliTest, InPlaceApplyKeepsMode) {
  ASSERT_EQ(Diff().exit_code, 0);
  ASSERT_EQ(::chmod(old_path_.c_str(), 0755), 0);
  RunResult a = Run({"apply", old_path_, patch_path_, "-o", old_path_});
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_TRUE(ReadFileOrDie(old_path_) == new_);
  struct stat st;
  ASSERT_EQ(::stat(old_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

}  // namespace
}  // namespace ds
