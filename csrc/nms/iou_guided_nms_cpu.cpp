// IoU-guided NMS (IoU-Net, Algorithm 1) on CPU.
#include <torch/library.h>

#include "nms/nms.h"
#include "nms/nms_host_utils.h"
#include "nms/nms_utils.h"

namespace d2align {

namespace {

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> iou_guided_nms_cpu_kernel(const at::Tensor& boxes,
                                                             const at::Tensor& cls_scores,
                                                             const at::Tensor& loc_scores,
                                                             const at::Tensor& idxs,
                                                             double iou_threshold) {
  using namespace nms_utils;
  const int64_t n = boxes.size(0);
  const scalar_t* cls = cls_scores.data_ptr<scalar_t>();
  const scalar_t* loc = loc_scores.data_ptr<scalar_t>();
  std::vector<int64_t> starts;
  const std::vector<int64_t> order = class_major_order(idxs.data_ptr<int64_t>(), loc, n, &starts);
  std::vector<scalar_t> sorted_boxes, areas;
  gather_boxes(boxes.data_ptr<scalar_t>(), order, &sorted_boxes, &areas);
  const scalar_t* b = sorted_boxes.data();

  std::vector<uint8_t> removed(n, 0);
  std::vector<Kept<scalar_t>> kept;
  for (size_t c = 0; c + 1 < starts.size(); ++c) {
    const int64_t end = starts[c + 1];
    for (int64_t i = starts[c]; i < end; ++i) {
      if (removed[i]) {
        continue;
      }
      scalar_t s = cls[order[i]];
      for (int64_t j = i + 1; j < end; ++j) {
        if (removed[j]) {
          continue;
        }
        if (box_iou(b + 4 * i, b + 4 * j, areas[i], areas[j]) > iou_threshold) {
          removed[j] = 1;
          const scalar_t sj = cls[order[j]];
          s = sj > s ? sj : s;
        }
      }
      kept.push_back({order[i], loc[order[i]], s});
    }
  }
  return assemble_result(&kept, cls_scores.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> iou_guided_nms_cpu(const at::Tensor& boxes,
                                                      const at::Tensor& cls_scores,
                                                      const at::Tensor& loc_scores,
                                                      const at::Tensor& idxs,
                                                      double iou_threshold) {
  nms_utils::check_inputs("iou_guided_nms", boxes,
                          {{"cls_scores", &cls_scores}, {"loc_scores", &loc_scores}}, idxs);
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "iou_guided_nms_cpu", [&] {
    result = iou_guided_nms_cpu_kernel<scalar_t>(boxes.contiguous(), cls_scores.contiguous(),
                                                 loc_scores.contiguous(), idxs.contiguous(),
                                                 iou_threshold);
  });
  return result;
}

TORCH_LIBRARY_IMPL(d2align, CPU, m) { m.impl("iou_guided_nms", &iou_guided_nms_cpu); }

}  // namespace d2align
