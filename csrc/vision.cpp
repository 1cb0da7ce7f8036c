// The one binding file of d2align._C.
//
// Operators are registered with the PyTorch dispatcher under the namespace `d2align`
// (callable as torch.ops.d2align.<op>); each op's schema is declared here, and its CPU and
// CUDA implementations register themselves in their own files with TORCH_LIBRARY_IMPL.
#include <torch/extension.h>

namespace d2align {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace d2align

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("compiled_with_cuda", &d2align::compiled_with_cuda,
        "Whether d2align._C was built with its CUDA kernels");
}

TORCH_LIBRARY(d2align, m) {
  // Schemas of the ops; implementations live beside each op (csrc/<op>/).
  // Precise RoI Pooling (csrc/prroi_pool/): rois (R, 5) rows (batch_idx, x1, y1, x2, y2).
  m.def(
      "prroi_pool_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, "
      "int pooled_width) -> Tensor");
  m.def(
      "prroi_pool_backward_input(Tensor grad_output, Tensor rois, float spatial_scale, "
      "int[] input_shape) -> Tensor");
  m.def(
      "prroi_pool_backward_rois(Tensor grad_output, Tensor input, Tensor rois, "
      "float spatial_scale) -> Tensor");
  // NMS family (csrc/nms/): each returns (keep, scores), batched over classes by `idxs`.
  m.def(
      "iou_guided_nms(Tensor boxes, Tensor cls_scores, Tensor loc_scores, Tensor idxs, "
      "float iou_threshold) -> (Tensor, Tensor)");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, Tensor idxs, str method, float iou_threshold, "
      "float sigma, float score_threshold) -> (Tensor, Tensor)");
  m.def(
      "cl_balanced_nms(Tensor boxes, Tensor scores, Tensor center_logits, Tensor idxs, "
      "float iou_threshold, "
      "float temperature, float dis_scale) -> (Tensor, Tensor)");
}
