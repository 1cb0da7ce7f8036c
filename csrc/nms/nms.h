// The NMS family of d2align: IoU-guided NMS (IoU-Net), Soft-NMS (Bodla et al.) and
// Classification-Localization-balanced NMS (DC Loss). All are batched over classes: boxes of
// different `idxs` never interact, and the result equals independent per-class NMS.
//
// Common arguments: boxes Tensor[N, 4] (XYXY absolute, float32/float64), per-box scores
// Tensor[N] of the same dtype, idxs int64 Tensor[N] (class of each box). Ties are broken
// deterministically by the lower box index. Each op returns (keep int64[K], scores[K]).
// The schemas are in csrc/vision.cpp; each implementation registers itself with
// TORCH_LIBRARY_IMPL in its own file. The Python API and the slow references are in
// shared/ops/nms.py and shared/ops/nms_reference.py.
#pragma once
#include <torch/types.h>

#include <string>
#include <tuple>

namespace d2align {

// Ranks by loc_scores; a kept box's score becomes the max of cls_scores over the boxes it
// suppresses (itself included). keep is sorted by (loc_scores desc, index asc).
std::tuple<at::Tensor, at::Tensor> iou_guided_nms_cpu(const at::Tensor& boxes,
                                                      const at::Tensor& cls_scores,
                                                      const at::Tensor& loc_scores,
                                                      const at::Tensor& idxs, double iou_threshold);
#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor> iou_guided_nms_cuda(const at::Tensor& boxes,
                                                       const at::Tensor& cls_scores,
                                                       const at::Tensor& loc_scores,
                                                       const at::Tensor& idxs,
                                                       double iou_threshold);
#endif

// method is "linear" or "gaussian"; returns the kept boxes and their decayed scores, sorted by
// (new score desc, index asc).
std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                const at::Tensor& idxs, c10::string_view method,
                                                double iou_threshold, double sigma,
                                                double score_threshold);

// Clusters and selects by `scores` (p); the cluster's center is weighted by
// softmax(center_logits / temperature) (f of eq. 6, a monotone function of p). Returns one
// representative per cluster and its selection score p + dis, sorted by (selection score desc,
// index asc).
std::tuple<at::Tensor, at::Tensor> cl_balanced_nms_cpu(const at::Tensor& boxes,
                                                       const at::Tensor& scores,
                                                       const at::Tensor& center_logits,
                                                       const at::Tensor& idxs, double iou_threshold,
                                                       double temperature, double dis_scale);

}  // namespace d2align
