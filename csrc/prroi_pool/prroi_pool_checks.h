// Argument checks of the Precise RoI Pooling ops, shared by the CPU and CUDA implementations
// (each adds its own device checks). Errors name the argument and the shape it must have.
#pragma once

#include <ATen/ATen.h>

namespace d2align {
namespace prroi_pool {

// input (N, C, H, W) and rois (R, 5) of the same dtype.
inline void check_input_and_rois(const at::Tensor& input, const at::Tensor& rois) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "prroi_pool: rois must have shape (R, 5), got ",
              rois.sizes());
  TORCH_CHECK(input.dim() == 4, "prroi_pool: input must have shape (N, C, H, W), got ",
              input.sizes());
  TORCH_CHECK(rois.scalar_type() == input.scalar_type(), "prroi_pool: rois dtype ",
              rois.scalar_type(), " differs from input dtype ", input.scalar_type());
}

inline void check_output_size(int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0,
              "prroi_pool: output size must be positive, got ", pooled_height, " x ", pooled_width);
}

// grad_output (R, C, ph, pw) for rois (R, 5) and an input of shape (N, C, H, W).
inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& rois,
                              at::IntArrayRef input_shape) {
  TORCH_CHECK(input_shape.size() == 4, "prroi_pool: input_shape must be (N, C, H, W)");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == rois.size(0) &&
                  grad_output.size(1) == input_shape[1],
              "prroi_pool: grad_output shape ", grad_output.sizes(), " does not match rois ",
              rois.sizes(), " and input shape ", input_shape);
}

}  // namespace prroi_pool
}  // namespace d2align
