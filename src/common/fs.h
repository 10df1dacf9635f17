// File helpers: whole-file reads, positional reads, and atomic replacement of a file.
//
// The atomic writer guarantees that |dest| is either left untouched or replaced by the complete
// new contents: data goes to a temporary file beside |dest|, which is fsync'ed, renamed over
// |dest|, and then the directory is fsync'ed. An uncommitted writer removes its temporary file.
//
// Thread-safety: objects are single-threaded; RandomAccessFile::ReadAt may be called concurrently.
#ifndef DELTASTREAM_COMMON_FS_H_
#define DELTASTREAM_COMMON_FS_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/bytes.h"
#include "common/status.h"

namespace ds {

// Reads the whole file. Fails with kResourceLimit if it is larger than |max_size|.
Result<Bytes> ReadFile(const std::string& path, uint64_t max_size = UINT64_MAX);

// Size in bytes, or kNotFound / kIoError.
Result<uint64_t> FileSize(const std::string& path);

// Permission bits of an existing file (e.g. to keep an executable executable).
Result<mode_t> FileMode(const std::string& path);

class RandomAccessFile {
 public:
  static Result<std::unique_ptr<RandomAccessFile>> Open(const std::string& path);
  ~RandomAccessFile();

  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Fills |out| from |offset|; a short read (offset + size past the end) is kIoError.
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const;

 private:
  RandomAccessFile(int fd, uint64_t size, std::string path)
      : fd_(fd), size_(size), path_(std::move(path)) {}
  int fd_;
  uint64_t size_;
  std::string path_;
};

// A read-only memory map of a whole file (the generator's inputs; never used on devices, where
// RSS must stay bounded). Empty files map to an empty view.
class MappedFile {
 public:
  static Result<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ByteView bytes() const { return ByteView(static_cast<const uint8_t*>(data_), size_); }

 private:
  MappedFile(void* data, uint64_t size) : data_(data), size_(size) {}
  void* data_;
  uint64_t size_;
};

class AtomicFileWriter {
 public:
  // Creates a temporary file in |dest|'s directory. |mode| is applied on commit.
  static Result<std::unique_ptr<AtomicFileWriter>> Create(const std::string& dest,
                                                          mode_t mode = 0644);
  ~AtomicFileWriter();  // Removes the temporary file unless committed.
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  Status Append(ByteView data);
  uint64_t bytes_written() const { return written_; }
  // Fills |out| with appended bytes from |offset| (from the temporary file and the unflushed
  // buffer). offset + out.size() past bytes_written() is kInternal.
  Status ReadBack(uint64_t offset, std::span<uint8_t> out) const;
  // Flushes, fsyncs, renames over the destination and fsyncs the directory.
  Status Commit();
  // Drops the temporary file; the destination is untouched.
  void Abort();

 private:
  AtomicFileWriter(int fd, std::string temp, std::string dest, mode_t mode);
  Status Flush();
  void StartWriteback();

  int fd_;
  std::string temp_path_;
  std::string dest_path_;
  mode_t mode_;
  Bytes buffer_;
  uint64_t written_ = 0;
  uint64_t synced_ = 0;  // Bytes handed to writeback so far.
  bool done_ = false;
};

// Convenience: atomically replaces |path| with |data|.
Status WriteFileAtomic(const std::string& path, ByteView data, mode_t mode = 0644);

}  // namespace ds

#endif  // DELTASTREAM_COMMON_FS_H_
