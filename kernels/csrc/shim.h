// Shared plumbing for the C ABI between Rust (tch) and the C++ ops.
#pragma once
#include <ATen/ATen.h>

#include <string>

// tch's C_tensor* is a heap-allocated at::Tensor* (torch-sys: typedef torch::Tensor *tensor).
typedef at::Tensor* tensor_ptr;

inline std::string& shim_last_error() {
  static thread_local std::string msg;
  return msg;
}

// A C++ exception must never cross extern "C": it becomes -1 plus a message for Rust to read.
#define SHIM_TRY(body)                       \
  try {                                      \
    body                                     \
  } catch (const c10::Error& e) {            \
    shim_last_error() = e.what_without_backtrace(); \
    return -1;                               \
  } catch (const std::exception& e) {        \
    shim_last_error() = e.what();            \
    return -1;                               \
  }
