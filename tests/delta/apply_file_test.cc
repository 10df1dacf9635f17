// Tests ApplyPatchFile: atomic output, untouched on errors, no temp files, in-place, file mode.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "common/fs.h"
#include "delta/delta.h"
#include "delta/delta_gen.h"
#include "support/test_util.h"

namespace ds::delta {
namespace {

using testing::CodeOf;
using testing::ReadFileOrDie;
using testing::TempDir;
using testing::WriteFileOrDie;

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

class ApplyFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    old_ = testing::RandomBytes(300 << 10, 1);
    new_ = old_;
    for (size_t i = 0; i < new_.size(); i += 1000) new_[i] ^= 0x33;
    const Bytes tail = testing::RandomBytes(5000, 2);
    new_.insert(new_.end(), tail.begin(), tail.end());
    GenerateOptions o;
    o.segment_size = 64 << 10;
    o.whole_file_limit = 0;
    o.stream_level = 3;
    Result<Bytes> p = GeneratePatch(old_, new_, o);
    ASSERT_TRUE(p.ok());
    patch_ = std::move(p).value();
    WriteFileOrDie(old_path_, old_);
    WriteFileOrDie(patch_path_, patch_);
  }

  // Entries of the directory other than the ones the test made.
  std::vector<std::string> StrayFiles(const std::vector<std::string>& expected) {
    std::vector<std::string> stray;
    for (const std::string& name : dir_.List()) {
      if (std::find(expected.begin(), expected.end(), name) == expected.end()) {
        stray.push_back(name);
      }
    }
    return stray;
  }

  TempDir dir_;
  std::string old_path_ = dir_.Join("old.bin");
  std::string patch_path_ = dir_.Join("update.dspf");
  std::string out_path_ = dir_.Join("new.bin");
  Bytes old_, new_, patch_;
};

TEST_F(ApplyFileTest, WritesNewFile) {
  Status s = ApplyPatchFile(old_path_, patch_path_, out_path_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(ReadFileOrDie(out_path_) == new_);
  EXPECT_TRUE(ReadFileOrDie(old_path_) == old_) << "old file is not modified";
  EXPECT_TRUE(StrayFiles({"old.bin", "update.dspf", "new.bin"}).empty());
}

TEST_F(ApplyFileTest, ReplacesExistingOutput) {
  WriteFileOrDie(out_path_, testing::ToBytes("previous version"));
  ASSERT_TRUE(ApplyPatchFile(old_path_, patch_path_, out_path_).ok());
  EXPECT_TRUE(ReadFileOrDie(out_path_) == new_);
}

TEST_F(ApplyFileTest, CorruptedPatchLeavesOutputUntouchedAndNoTempFiles) {
  const Bytes previous = testing::ToBytes("previous version");
  WriteFileOrDie(out_path_, previous);
  // Damage the last segment, so that earlier segments were already written to the temp file.
  Bytes bad = patch_;
  bad[bad.size() - 10] ^= 1;
  WriteFileOrDie(patch_path_, bad);
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, patch_path_, out_path_)), ErrorCode::kPatchChecksum);
  EXPECT_TRUE(ReadFileOrDie(out_path_) == previous);
  EXPECT_EQ(StrayFiles({"old.bin", "update.dspf", "new.bin"}), std::vector<std::string>());
}

TEST_F(ApplyFileTest, TruncatedPatchCreatesNoOutput) {
  WriteFileOrDie(patch_path_, ByteView(patch_).first(patch_.size() / 2));
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, patch_path_, out_path_)), ErrorCode::kPatchTruncated);
  EXPECT_EQ(StrayFiles({"old.bin", "update.dspf"}), std::vector<std::string>());
}

TEST_F(ApplyFileTest, WrongBaseLeavesOutputUntouched) {
  const Bytes previous = testing::ToBytes("previous version");
  WriteFileOrDie(out_path_, previous);
  Bytes other = old_;
  other[12345] ^= 1;
  WriteFileOrDie(old_path_, other);
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, patch_path_, out_path_)), ErrorCode::kPatchWrongBase);
  EXPECT_TRUE(ReadFileOrDie(out_path_) == previous);
  EXPECT_EQ(StrayFiles({"old.bin", "update.dspf", "new.bin"}), std::vector<std::string>());
}

TEST_F(ApplyFileTest, InPlaceUpdate) {
  Status s = ApplyPatchFile(old_path_, patch_path_, old_path_);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(ReadFileOrDie(old_path_) == new_);
  EXPECT_EQ(StrayFiles({"old.bin", "update.dspf"}), std::vector<std::string>());
  // Applying again now fails: the file is no longer the base, and it stays as it is.
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, patch_path_, old_path_)), ErrorCode::kPatchWrongBase);
  EXPECT_TRUE(ReadFileOrDie(old_path_) == new_);
}

TEST_F(ApplyFileTest, InPlaceUpdateWithCorruptedPatchKeepsOld) {
  Bytes bad = patch_;
  bad[bad.size() - 1] ^= 1;
  WriteFileOrDie(patch_path_, bad);
  EXPECT_FALSE(ApplyPatchFile(old_path_, patch_path_, old_path_).ok());
  EXPECT_TRUE(ReadFileOrDie(old_path_) == old_);
  EXPECT_EQ(StrayFiles({"old.bin", "update.dspf"}), std::vector<std::string>());
}

TEST_F(ApplyFileTest, KeepsOldPermissionBits) {
  for (mode_t mode : {0755, 0700, 0640, 0600}) {
    ASSERT_EQ(::chmod(old_path_.c_str(), mode), 0);
    ASSERT_TRUE(ApplyPatchFile(old_path_, patch_path_, out_path_).ok());
    EXPECT_EQ(ModeOf(out_path_), mode) << std::oct << mode;
  }
}

TEST_F(ApplyFileTest, InPlaceUpdateKeepsPermissionBits) {
  ASSERT_EQ(::chmod(old_path_.c_str(), 0751), 0);
  ASSERT_TRUE(ApplyPatchFile(old_path_, patch_path_, old_path_).ok());
  EXPECT_EQ(ModeOf(old_path_), 0751u);
}

TEST_F(ApplyFileTest, MissingOldFile) {
  EXPECT_EQ(CodeOf(ApplyPatchFile(dir_.Join("nope"), patch_path_, out_path_)),
            ErrorCode::kNotFound);
  EXPECT_EQ(StrayFiles({"old.bin", "update.dspf"}), std::vector<std::string>());
}

TEST_F(ApplyFileTest, MissingPatchFile) {
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, dir_.Join("nope"), out_path_)), ErrorCode::kNotFound);
}

TEST_F(ApplyFileTest, MissingOutputDirectory) {
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, patch_path_, dir_.Join("no/dir/out"))),
            ErrorCode::kNotFound);
}

TEST_F(ApplyFileTest, DirectoryAsPatchIsInvalidArgument) {
  EXPECT_EQ(CodeOf(ApplyPatchFile(old_path_, dir_.path(), out_path_)), ErrorCode::kInvalidArgument);
}

TEST_F(ApplyFileTest, EmptyOldAndEmptyNew) {
  WriteFileOrDie(old_path_, Bytes());
  Result<Bytes> p = GeneratePatch(Bytes(), Bytes());
  ASSERT_TRUE(p.ok());
  WriteFileOrDie(patch_path_, *p);
  WriteFileOrDie(out_path_, testing::ToBytes("will be emptied"));
  ASSERT_TRUE(ApplyPatchFile(old_path_, patch_path_, out_path_).ok());
  EXPECT_TRUE(ReadFileOrDie(out_path_).empty());
}

TEST_F(ApplyFileTest, PatchLargerThanReadBuffer) {
  // A patch above the 1 MiB read chunk: mostly stored data.
  const Bytes neu = testing::RandomBytes(3 << 19, 3);
  GenerateOptions o;
  o.stream_level = 1;
  o.ref_level = 1;
  o.try_zstd_ref = false;
  Result<Bytes> p = GeneratePatch(old_, neu, o);
  ASSERT_TRUE(p.ok());
  ASSERT_GT(p->size(), 1u << 20);
  WriteFileOrDie(patch_path_, *p);
  ASSERT_TRUE(ApplyPatchFile(old_path_, patch_path_, out_path_).ok());
  EXPECT_TRUE(ReadFileOrDie(out_path_) == neu);
}

}  // namespace
}  // namespace ds::delta
