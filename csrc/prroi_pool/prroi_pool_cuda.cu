// Precise RoI Pooling on CUDA: forward, backward to the features, backward to the RoIs.
//
// The math is that of prroi_pool_utils.h, as on CPU. One thread per output element for the
// forward and the feature gradient (scattered with atomicAdd); one block per RoI for the box
// gradient, reduced over channels and bins in shared memory (no atomics, deterministic).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <ATen/cuda/Atomic.cuh>
#include <algorithm>

#include "prroi_pool/prroi_pool.h"
#include "prroi_pool/prroi_pool_checks.h"
#include "prroi_pool/prroi_pool_utils.h"

namespace d2align {

namespace {

using prroi_pool::BinAxis;
using prroi_pool::RoIGeometry;

constexpr int kThreads = 256;

inline int num_blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

template <typename T>
__global__ void forward_kernel(const int64_t n, const T* __restrict__ input,
                               const T* __restrict__ rois, const T spatial_scale,
                               const int num_images, const int channels, const int height,
                               const int width, const int ph, const int pw,
                               T* __restrict__ output) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < n;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int k = index % pw;
    const int l = (index / pw) % ph;
    const int c = (index / pw / ph) % channels;
    const int64_t r = index / pw / ph / channels;
    const RoIGeometry<T> g = prroi_pool::make_roi(rois + r * 5, spatial_scale, num_images);
    if (!g.valid) {
      output[index] = T(0);
      continue;
    }
    const BinAxis<T> ax = prroi_pool::make_bin_axis(g.x0, g.width, k, pw, width);
    const BinAxis<T> ay = prroi_pool::make_bin_axis(g.y0, g.height, l, ph, height);
    const T* plane = input + (static_cast<int64_t>(g.batch) * channels + c) * height * width;
    T sum = T(0);
    for (int j = ay.first; j <= ay.last; ++j) {
      const T* row = plane + static_cast<int64_t>(j) * width;
      T row_sum = T(0);
      for (int i = ax.first; i <= ax.last; ++i) {
        row_sum += ax.mean_weight(i) * row[i];
      }
      sum += ay.mean_weight(j) * row_sum;
    }
    output[index] = sum;
  }
}

template <typename T>
__global__ void backward_input_kernel(const int64_t n, const T* __restrict__ grad_output,
                                      const T* __restrict__ rois, const T spatial_scale,
                                      const int num_images, const int channels, const int height,
                                      const int width, const int ph, const int pw,
                                      T* __restrict__ grad_input) {
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < n;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int k = index % pw;
    const int l = (index / pw) % ph;
    const int c = (index / pw / ph) % channels;
    const int64_t r = index / pw / ph / channels;
    const RoIGeometry<T> g = prroi_pool::make_roi(rois + r * 5, spatial_scale, num_images);
    const T grad = grad_output[index];
    if (!g.valid || grad == T(0)) {
      continue;
    }
    const BinAxis<T> ax = prroi_pool::make_bin_axis(g.x0, g.width, k, pw, width);
    const BinAxis<T> ay = prroi_pool::make_bin_axis(g.y0, g.height, l, ph, height);
    T* plane = grad_input + (static_cast<int64_t>(g.batch) * channels + c) * height * width;
    for (int j = ay.first; j <= ay.last; ++j) {
      const T wy = grad * ay.mean_weight(j);
      T* row = plane + static_cast<int64_t>(j) * width;
      for (int i = ax.first; i <= ax.last; ++i) {
        gpuAtomicAdd(row + i, wy * ax.mean_weight(i));
      }
    }
  }
}

// One block per RoI; its threads share the (channel, bin) pairs and reduce the four edge
// gradients (x1, y1, x2, y2) in shared memory.
template <typename T>
__global__ void backward_rois_kernel(const T* __restrict__ grad_output, const T* __restrict__ input,
                                     const T* __restrict__ rois, const T spatial_scale,
                                     const int num_images, const int channels, const int height,
                                     const int width, const int ph, const int pw,
                                     T* __restrict__ grad_rois) {
  __shared__ T partial[4][kThreads];
  const int64_t r = blockIdx.x;
  const RoIGeometry<T> g = prroi_pool::make_roi(rois + r * 5, spatial_scale, num_images);
  T dx1 = T(0), dy1 = T(0), dx2 = T(0), dy2 = T(0);
  if (g.valid) {
    const int bins = ph * pw;
    for (int e = threadIdx.x; e < channels * bins; e += blockDim.x) {
      const T grad = grad_output[r * channels * bins + e];
      if (grad == T(0)) {
        continue;
      }
      const int c = e / bins;
      const int l = (e % bins) / pw;
      const int k = e % pw;
      const BinAxis<T> ax = prroi_pool::make_bin_axis(g.x0, g.width, k, pw, width);
      const BinAxis<T> ay = prroi_pool::make_bin_axis(g.y0, g.height, l, ph, height);
      const T* plane = input + (static_cast<int64_t>(g.batch) * channels + c) * height * width;
      T s = T(0), sx_lo = T(0), sx_hi = T(0), sy_lo = T(0), sy_hi = T(0);
      for (int j = ay.first; j <= ay.last; ++j) {
        const T* row = plane + static_cast<int64_t>(j) * width;
        T r0 = T(0), r_lo = T(0), r_hi = T(0);
        for (int i = ax.first; i <= ax.last; ++i) {
          const T v = row[i];
          r0 += ax.mean_weight(i) * v;
          r_lo += ax.dweight_dlo(i) * v;
          r_hi += ax.dweight_dhi(i) * v;
        }
        const T wy = ay.mean_weight(j);
        s += wy * r0;
        sx_lo += wy * r_lo;
        sx_hi += wy * r_hi;
        sy_lo += ay.dweight_dlo(j) * r0;
        sy_hi += ay.dweight_dhi(j) * r0;
      }
      prroi_pool::add_bin_edge_grad(grad * (sx_lo + s * ax.inv_len),
                                    grad * (sx_hi - s * ax.inv_len), k, pw, &dx1, &dx2);
      prroi_pool::add_bin_edge_grad(grad * (sy_lo + s * ay.inv_len),
                                    grad * (sy_hi - s * ay.inv_len), l, ph, &dy1, &dy2);
    }
  }
  partial[0][threadIdx.x] = dx1;
  partial[1][threadIdx.x] = dy1;
  partial[2][threadIdx.x] = dx2;
  partial[3][threadIdx.x] = dy2;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      for (int q = 0; q < 4; ++q) {
        partial[q][threadIdx.x] += partial[q][threadIdx.x + stride];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    T* out = grad_rois + r * 5;
    out[0] = T(0);
    for (int q = 0; q < 4; ++q) {
      out[q + 1] = partial[q][0] * spatial_scale;
    }
  }
}

void check_cuda_inputs(const at::Tensor& input, const at::Tensor& rois, const char* name) {
  TORCH_CHECK(input.is_cuda() && rois.is_cuda(), name, ": expected CUDA tensors");
  at::checkAllSameGPU(name, {{input, "input", 1}, {rois, "rois", 2}});
  prroi_pool::check_input_and_rois(input, rois);
}

}  // namespace

at::Tensor prroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width) {
  check_cuda_inputs(input, rois, "prroi_pool_forward_cuda");
  prroi_pool::check_output_size(pooled_height, pooled_width);
  at::cuda::CUDAGuard device_guard(input.device());
  const auto x = input.contiguous();
  const auto b = rois.contiguous();
  auto output = at::empty({b.size(0), x.size(1), pooled_height, pooled_width}, x.options());
  const int64_t n = output.numel();
  if (n == 0) {
    return output;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prroi_pool_forward_cuda", [&] {
    forward_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        n, x.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), static_cast<scalar_t>(spatial_scale),
        x.size(0), x.size(1), x.size(2), x.size(3), pooled_height, pooled_width,
        output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor prroi_pool_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& rois,
                                          double spatial_scale, at::IntArrayRef input_shape) {
  TORCH_CHECK(grad_output.is_cuda() && rois.is_cuda(), "prroi_pool: expected CUDA tensors");
  at::checkAllSameGPU("prroi_pool_backward_input_cuda",
                      {{grad_output, "grad_output", 1}, {rois, "rois", 2}});
  prroi_pool::check_grad_output(grad_output, rois, input_shape);
  at::cuda::CUDAGuard device_guard(grad_output.device());
  const auto go = grad_output.contiguous();
  const auto b = rois.contiguous();
  auto grad_input = at::zeros(input_shape, go.options());
  const int64_t n = go.numel();
  if (n == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "prroi_pool_backward_input_cuda", [&] {
    backward_input_kernel<scalar_t><<<num_blocks(n), kThreads, 0, stream>>>(
        n, go.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), static_cast<scalar_t>(spatial_scale),
        input_shape[0], input_shape[1], input_shape[2], input_shape[3], go.size(2), go.size(3),
        grad_input.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_input;
}

at::Tensor prroi_pool_backward_rois_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& rois, double spatial_scale) {
  check_cuda_inputs(input, rois, "prroi_pool_backward_rois_cuda");
  at::checkAllSameGPU("prroi_pool_backward_rois_cuda",
                      {{grad_output, "grad_output", 1}, {input, "input", 2}});
  prroi_pool::check_grad_output(grad_output, rois, input.sizes());
  at::cuda::CUDAGuard device_guard(input.device());
  const auto go = grad_output.contiguous();
  const auto x = input.contiguous();
  const auto b = rois.contiguous();
  auto grad_rois = at::zeros_like(b);
  if (b.size(0) == 0 || go.numel() == 0 || x.numel() == 0) {
    return grad_rois;
  }
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prroi_pool_backward_rois_cuda", [&] {
    backward_rois_kernel<scalar_t><<<b.size(0), kThreads, 0, stream>>>(
        go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
        static_cast<scalar_t>(spatial_scale), x.size(0), x.size(1), x.size(2), x.size(3),
        go.size(2), go.size(3), grad_rois.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_rois;
}

TORCH_LIBRARY_IMPL(d2align, CUDA, m) {
  m.impl("prroi_pool_forward", &prroi_pool_forward_cuda);
  m.impl("prroi_pool_backward_input", &prroi_pool_backward_input_cuda);
  m.impl("prroi_pool_backward_rois", &prroi_pool_backward_rois_cuda);
}

}  // namespace d2align
