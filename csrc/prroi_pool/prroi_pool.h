// Precise RoI Pooling (IoU-Net, Sec. 3.3): declarations of the CPU and CUDA kernels.
//
// Shapes: input (N, C, H, W); rois (R, 5) rows (batch_idx, x1, y1, x2, y2) in image pixels
// (XYXY absolute), mapped to the feature grid by u * spatial_scale - 0.5 (detectron2's
// ROIAlign aligned=True convention); output (R, C, pooled_height, pooled_width).
// The ops are registered under torch.ops.d2align (schemas in csrc/vision.cpp); each of these
// functions is the CPU or CUDA implementation of one of them.
#pragma once

#include <ATen/ATen.h>

namespace d2align {

// Average of the bilinear surface over each bin, as an exact integral. -> (R, C, ph, pw)
at::Tensor prroi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width);

// Gradient w.r.t. the input feature map, of shape `input_shape` (N, C, H, W).
at::Tensor prroi_pool_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& rois,
                                         double spatial_scale, at::IntArrayRef input_shape);

// Gradient w.r.t. the RoIs, (R, 5); column 0 (the batch index) gets 0.
at::Tensor prroi_pool_backward_rois_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& rois, double spatial_scale);

#ifdef WITH_CUDA
at::Tensor prroi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                   double spatial_scale, int64_t pooled_height,
                                   int64_t pooled_width);

at::Tensor prroi_pool_backward_input_cuda(const at::Tensor& grad_output, const at::Tensor& rois,
                                          double spatial_scale, at::IntArrayRef input_shape);

at::Tensor prroi_pool_backward_rois_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& rois, double spatial_scale);
#endif

}  // namespace d2align
