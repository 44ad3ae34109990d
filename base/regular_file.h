// Reading the files loom is given without trusting what they are: a FIFO, a device, a directory
// or a socket where a file was expected would hang a read or never end one, so each is opened
// without blocking, checked to be a regular file and read up to a bound. Errors name the file,
// what loom took it for and what is wrong.
//
//   const std::string text = loom::read_regular_file(path, size_t{1} << 20, "hostfile");
//   const int fd = loom::open_regular_file(shard, "shard");   // the caller closes it
#pragma once
#include <cstddef>
#include <string>

namespace loom {

// A read-only descriptor of `path`, a regular file (symlinks followed); throws loom::Error
// naming `what` otherwise. The caller closes it.
int open_regular_file(const std::string& path, const std::string& what);

// The whole of `path`, a regular file of at most max_bytes; throws loom::Error naming `what`
// when it is missing, not a regular file, larger, or unreadable.
std::string read_regular_file(const std::string& path, size_t max_bytes, const std::string& what);

}  // namespace loom
