// The owner of one allocation of a KernelBackend's memory (kernels/backend.h): n elements of T,
// zeroed, freed through the same backend exactly once. Move-only. On a device backend data() is
// a device pointer the host passes to kernels and transports but never dereferences; upload()
// and download() move whole arrays or ranges of them.
//
//   loom::kernels::DeviceArray<float> grads(backend, n);
//   backend->adamw_update(params.data(), grads.data(), ...);
//   std::vector<float> host = grads.download();
#pragma once
#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "kernels/backend.h"

namespace loom::kernels {

template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  // n elements (none when n is 0) of `backend`'s memory, zeroed.
  DeviceArray(std::shared_ptr<const KernelBackend> backend, size_t n)
      : backend_(std::move(backend)), size_(n) {
    if (n > 0) data_ = static_cast<T*>(backend_->allocate(n * sizeof(T)));
  }
  DeviceArray(DeviceArray&& other) noexcept { *this = std::move(other); }
  DeviceArray& operator=(DeviceArray&& other) noexcept {
    if (this != &other) {
      reset();
      backend_ = std::move(other.backend_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { reset(); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  // The elements as host memory where the backend's memory is the host's (no copy needed);
  // null on a device, where only upload and download reach them.
  T* host_data() { return backend_ && backend_->host_addressable() ? data_ : nullptr; }
  const T* host_data() const { return backend_ && backend_->host_addressable() ? data_ : nullptr; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Elements [offset, offset + n) ← host[0, n).
  void upload(const T* host, size_t n, size_t offset = 0) {
    if (n > 0) backend_->upload(data_ + offset, host, n * sizeof(T));
  }
  void upload(const std::vector<T>& host) { upload(host.data(), host.size()); }
  // host[0, n) ← elements [offset, offset + n), after the work issued before.
  void download(T* host, size_t n, size_t offset = 0) const {
    if (n > 0) backend_->download(host, data_ + offset, n * sizeof(T));
  }
  std::vector<T> download() const {
    std::vector<T> host(size_);
    download(host.data(), size_);
    return host;
  }

 private:
  void reset() {
    if (data_) backend_->deallocate(data_);
    data_ = nullptr;
    size_ = 0;
  }

  std::shared_ptr<const KernelBackend> backend_;
  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace loom::kernels
