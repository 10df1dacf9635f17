// Tests AtomicFileWriter (commit/abort/mode), ReadFile limits, RandomAccessFile and MappedFile.
#include "common/fs.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "support/test_util.h"

namespace ds {
namespace {

using testing::CodeOf;
using testing::ReadFileOrDie;
using testing::TempDir;
using testing::ToBytes;
using testing::WriteFileOrDie;

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

class AtomicFileWriterTest : public ::testing::Test {
 protected:
  TempDir dir_;
  std::string dest_ = dir_.Join("dest");
};

TEST_F(AtomicFileWriterTest, CommitCreatesFile) {
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_TRUE((*w)->Append(ToBytes("hello ")).ok());
  ASSERT_TRUE((*w)->Append(ToBytes("world")).ok());
  EXPECT_EQ((*w)->bytes_written(), 11u);
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("hello world"));
  EXPECT_EQ(dir_.List(), std::vector<std::string>{"dest"});
}

TEST_F(AtomicFileWriterTest, CommitReplacesExistingFile) {
  WriteFileOrDie(dest_, ToBytes("old contents that are longer than the new ones"));
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append(ToBytes("new")).ok());
  // Until the commit, readers see the old file.
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("old contents that are longer than the new ones"));
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("new"));
  EXPECT_EQ(dir_.List(), std::vector<std::string>{"dest"});
}

TEST_F(AtomicFileWriterTest, TempFileLivesBesideDestinationUntilCommit) {
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok());
  const std::vector<std::string> names = dir_.List();
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0].rfind("dest.tmp.", 0), 0u) << names[0];
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(dir_.List(), std::vector<std::string>{"dest"});
}

TEST_F(AtomicFileWriterTest, AbortLeavesDestinationAndRemovesTemp) {
  WriteFileOrDie(dest_, ToBytes("keep me"));
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Append(ToBytes("discard me")).ok());
  (*w)->Abort();
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("keep me"));
  EXPECT_EQ(dir_.List(), std::vector<std::string>{"dest"});
  // Abort is final.
  EXPECT_EQ(CodeOf((*w)->Append(ToBytes("x"))), ErrorCode::kInternal);
  EXPECT_EQ(CodeOf((*w)->Commit()), ErrorCode::kInternal);
  (*w)->Abort();  // Idempotent.
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("keep me"));
}

TEST_F(AtomicFileWriterTest, DestructorWithoutCommitLeavesDestinationAndRemovesTemp) {
  WriteFileOrDie(dest_, ToBytes("keep me"));
  {
    auto w = AtomicFileWriter::Create(dest_);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append(testing::RandomBytes(3 << 20, 1)).ok());
  }
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("keep me"));
  EXPECT_EQ(dir_.List(), std::vector<std::string>{"dest"});
}

TEST_F(AtomicFileWriterTest, DestructorWithoutCommitCreatesNothing) {
  { auto w = AtomicFileWriter::Create(dest_); }
  EXPECT_TRUE(dir_.List().empty());
}

TEST_F(AtomicFileWriterTest, AppendAfterCommitFails) {
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(CodeOf((*w)->Append(ToBytes("late"))), ErrorCode::kInternal);
  EXPECT_EQ(CodeOf((*w)->Commit()), ErrorCode::kInternal);
  EXPECT_TRUE(ReadFileOrDie(dest_).empty());
}

TEST_F(AtomicFileWriterTest, ModeAppliedOnCommit) {
  for (mode_t mode : {0755, 0600, 0640, 0444}) {
    auto w = AtomicFileWriter::Create(dest_, mode);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Append(ToBytes("x")).ok());
    ASSERT_TRUE((*w)->Commit().ok());
    EXPECT_EQ(ModeOf(dest_), mode) << std::oct << mode;
  }
}

TEST_F(AtomicFileWriterTest, DefaultModeIs0644) {
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(ModeOf(dest_), 0644u);
}

TEST_F(AtomicFileWriterTest, LargeAndMixedAppendsKeepOrder) {
  // Pieces below, at and above the 1 MiB write buffer.
  const Bytes data = testing::RandomBytes(5 << 20, 2);
  const size_t pieces[] = {1, 1000, (1 << 20) - 1001, 1 << 20, 7, (2 << 20) + 3, 100};
  auto w = AtomicFileWriter::Create(dest_);
  ASSERT_TRUE(w.ok());
  size_t pos = 0;
  for (size_t n : pieces) {
    ASSERT_TRUE((*w)->Append(ByteView(data).subspan(pos, n)).ok());
    pos += n;
  }
  ASSERT_TRUE((*w)->Append(ByteView(data).subspan(pos)).ok());
  EXPECT_EQ((*w)->bytes_written(), data.size());
  ASSERT_TRUE((*w)->Commit().ok());
  EXPECT_EQ(ReadFileOrDie(dest_), data);
}

TEST_F(AtomicFileWriterTest, MissingDirectoryIsNotFound) {
  auto w = AtomicFileWriter::Create(dir_.Join("no/such/dir/file"));
  EXPECT_EQ(CodeOf(w), ErrorCode::kNotFound);
}

TEST_F(AtomicFileWriterTest, RelativePathInCurrentDirectory) {
  const std::string cwd = std::filesystem::current_path();
  ASSERT_EQ(::chdir(dir_.path().c_str()), 0);
  Status s = WriteFileAtomic("relative", ToBytes("here"));
  ASSERT_EQ(::chdir(cwd.c_str()), 0);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ReadFileOrDie(dir_.Join("relative")), ToBytes("here"));
}

TEST_F(AtomicFileWriterTest, WriteFileAtomicReplaces) {
  WriteFileOrDie(dest_, ToBytes("one"));
  ASSERT_TRUE(WriteFileAtomic(dest_, ToBytes("two"), 0700).ok());
  EXPECT_EQ(ReadFileOrDie(dest_), ToBytes("two"));
  EXPECT_EQ(ModeOf(dest_), 0700u);
}

class FileReadTest : public ::testing::Test {
 protected:
  TempDir dir_;
};

TEST_F(FileReadTest, ReadFileWholeFile) {
  const Bytes data = testing::RandomBytes(100000, 3);
  WriteFileOrDie(dir_.Join("f"), data);
  auto r = ReadFile(dir_.Join("f"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, data);
}

TEST_F(FileReadTest, ReadFileAtLimitSucceeds) {
  WriteFileOrDie(dir_.Join("f"), Bytes(100, 1));
  EXPECT_TRUE(ReadFile(dir_.Join("f"), 100).ok());
}

TEST_F(FileReadTest, ReadFileOverLimitIsResourceLimit) {
  WriteFileOrDie(dir_.Join("f"), Bytes(101, 1));
  EXPECT_EQ(CodeOf(ReadFile(dir_.Join("f"), 100)), ErrorCode::kResourceLimit);
  EXPECT_EQ(CodeOf(ReadFile(dir_.Join("f"), 0)), ErrorCode::kResourceLimit);
}

TEST_F(FileReadTest, ReadFileEmpty) {
  WriteFileOrDie(dir_.Join("f"), Bytes());
  auto r = ReadFile(dir_.Join("f"), 0);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

TEST_F(FileReadTest, ReadFileMissingIsNotFound) {
  EXPECT_EQ(CodeOf(ReadFile(dir_.Join("missing"))), ErrorCode::kNotFound);
}

TEST_F(FileReadTest, ReadFileDirectoryIsInvalidArgument) {
  EXPECT_EQ(CodeOf(ReadFile(dir_.path())), ErrorCode::kInvalidArgument);
}

TEST_F(FileReadTest, FileSizeAndMode) {
  WriteFileOrDie(dir_.Join("f"), Bytes(1234, 0));
  ASSERT_EQ(::chmod(dir_.Join("f").c_str(), 0751), 0);
  auto size = FileSize(dir_.Join("f"));
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 1234u);
  auto mode = FileMode(dir_.Join("f"));
  ASSERT_TRUE(mode.ok());
  EXPECT_EQ(*mode, 0751u);
  EXPECT_EQ(CodeOf(FileSize(dir_.Join("missing"))), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(FileMode(dir_.Join("missing"))), ErrorCode::kNotFound);
}

TEST_F(FileReadTest, RandomAccessReadAt) {
  const Bytes data = testing::RandomBytes(10000, 4);
  WriteFileOrDie(dir_.Join("f"), data);
  auto f = RandomAccessFile::Open(dir_.Join("f"));
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->size(), data.size());
  EXPECT_EQ((*f)->path(), dir_.Join("f"));
  Bytes buf(100);
  ASSERT_TRUE((*f)->ReadAt(5000, buf).ok());
  EXPECT_EQ(buf, Bytes(data.begin() + 5000, data.begin() + 5100));
  ASSERT_TRUE((*f)->ReadAt(9900, buf).ok()) << "read ending exactly at EOF";
  EXPECT_EQ(buf, Bytes(data.end() - 100, data.end()));
  EXPECT_TRUE((*f)->ReadAt(10000, std::span<uint8_t>()).ok()) << "empty read at EOF";
}

TEST_F(FileReadTest, RandomAccessShortReadIsIoError) {
  WriteFileOrDie(dir_.Join("f"), Bytes(100, 7));
  auto f = RandomAccessFile::Open(dir_.Join("f"));
  ASSERT_TRUE(f.ok());
  Bytes buf(10, 0xAA);
  EXPECT_EQ(CodeOf((*f)->ReadAt(95, buf)), ErrorCode::kIoError);
  EXPECT_EQ(CodeOf((*f)->ReadAt(101, std::span<uint8_t>())), ErrorCode::kIoError);
  EXPECT_EQ(CodeOf((*f)->ReadAt(UINT64_MAX - 5, buf)), ErrorCode::kIoError)
      << "offset + length overflow";
}

TEST_F(FileReadTest, RandomAccessFileShrunkAfterOpenIsIoError) {
  WriteFileOrDie(dir_.Join("f"), Bytes(100, 7));
  auto f = RandomAccessFile::Open(dir_.Join("f"));
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(::truncate(dir_.Join("f").c_str(), 50), 0);
  Bytes buf(20);
  EXPECT_EQ(CodeOf((*f)->ReadAt(40, buf)), ErrorCode::kIoError);
}

TEST_F(FileReadTest, RandomAccessOpenErrors) {
  EXPECT_EQ(CodeOf(RandomAccessFile::Open(dir_.Join("missing"))), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(RandomAccessFile::Open(dir_.path())), ErrorCode::kInvalidArgument);
}

TEST_F(FileReadTest, MappedFileMatchesContents) {
  const Bytes data = testing::RandomBytes(70000, 5);
  WriteFileOrDie(dir_.Join("f"), data);
  auto m = MappedFile::Open(dir_.Join("f"));
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const ByteView v = (*m)->bytes();
  EXPECT_EQ(Bytes(v.begin(), v.end()), data);
}

TEST_F(FileReadTest, MappedFileEmptyIsEmptyView) {
  WriteFileOrDie(dir_.Join("f"), Bytes());
  auto m = MappedFile::Open(dir_.Join("f"));
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE((*m)->bytes().empty());
}

TEST_F(FileReadTest, MappedFileErrors) {
  EXPECT_EQ(CodeOf(MappedFile::Open(dir_.Join("missing"))), ErrorCode::kNotFound);
  EXPECT_EQ(CodeOf(MappedFile::Open(dir_.path())), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace ds
