// Files written so that a crash or a full disk never leaves something that looks complete, and
// read with every short read reported. Errors name the path and say what errno says.
//
//   loom::FileWriter out(dir + "/rank_00000.bin");
//   out.append(data, bytes);
//   out.sync_and_close();                      // on the device before anything refers to it
//   loom::sync_path(dir);                       // the folder's entries too
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace loom {

// A new file (replacing one of the same name), written front to back.
class FileWriter {
 public:
  explicit FileWriter(std::string path);
  FileWriter(const FileWriter&) = delete;
  FileWriter& operator=(const FileWriter&) = delete;
  ~FileWriter();  // closes a file not yet synced (after an error)
  void append(const void* data, size_t bytes);
  void sync_and_close();

 private:
  std::string path_;
  int fd_ = -1;
};

// CRC-32 (zlib's) of `bytes` bytes, continuing from `crc` (0: a new one); any length.
uint32_t crc32_of(const void* data, size_t bytes, uint32_t crc = 0);

// Writes a whole file at once and syncs it.
void write_file(const std::string& path, const void* data, size_t bytes);

// Flushes a file's or a folder's contents to the device, so a rename that follows cannot be seen
// before the data it names.
void sync_path(const std::string& path);

// dst ← `bytes` bytes of fd at `offset`; a short read is an error naming `path` and `what`.
void read_at(int fd, void* dst, size_t bytes, int64_t offset, const std::string& path,
             const std::string& what);

}  // namespace loom
