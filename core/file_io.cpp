#include "core/file_io.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "base/error.h"

namespace loom {

FileWriter::FileWriter(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error("cannot write " + path_ + ": " + std::strerror(errno));
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
}

void FileWriter::append(const void* data, size_t bytes) {
  const char* at = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd_, at, std::min<size_t>(bytes, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error("cannot write " + path_ + ": " + std::strerror(n < 0 ? errno : EIO));
    at += n;
    bytes -= static_cast<size_t>(n);
  }
}

void FileWriter::sync_and_close() {
  const int fd = std::exchange(fd_, -1);
  const bool synced = ::fsync(fd) == 0;
  const int error = errno;
  if (::close(fd) != 0 || !synced)
    throw Error("cannot write " + path_ + ": " + std::strerror(synced ? errno : error));
}

uint32_t crc32_of(const void* data, size_t bytes, uint32_t crc) {
  uLong out = crc;
  const Bytef* at = static_cast<const Bytef*>(data);
  while (bytes > 0) {  // zlib takes a 32-bit length
    const uInt len = static_cast<uInt>(std::min<size_t>(bytes, 1u << 30));
    out = crc32(out, at, len);
    at += len;
    bytes -= len;
  }
  return static_cast<uint32_t>(out);
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  FileWriter out(path);
  out.append(data, bytes);
  out.sync_and_close();
}

void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error("cannot open " + path + " to sync it: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) throw Error("cannot sync " + path + ": " + std::strerror(error));
}

void read_at(int fd, void* dst, size_t bytes, int64_t offset, const std::string& path,
             const std::string& what) {
  char* at = static_cast<char*>(dst);
  while (bytes > 0) {
    const ssize_t n = ::pread(fd, at, std::min<size_t>(bytes, size_t{1} << 30), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error("cannot read " + path + " (" + what + "): " + std::strerror(errno));
    if (n == 0) throw Error("checkpoint file " + path + " is truncated at " + what);
    at += n;
    offset += n;
    bytes -= static_cast<size_t>(n);
  }
}

}  // namespace loom
