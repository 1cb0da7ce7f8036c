// Classification-Localization-balanced NMS (DC Loss paper, eq. 6-7) on CPU. The definitions
// (cluster, weighted center, dis) are documented in shared/ops/nms.py, and mirrored operation
// for operation by `cl_balanced_nms_reference` in shared/ops/nms_reference.py.
#include <torch/library.h>

#include <cmath>

#include "nms/nms.h"
#include "nms/nms_host_utils.h"
#include "nms/nms_utils.h"

namespace d2align {

namespace {

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> cl_balanced_nms_cpu_kernel(
    const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& center_logits,
    const at::Tensor& idxs, double iou_threshold, scalar_t temperature, scalar_t dis_scale) {
  using namespace nms_utils;
  const int64_t n = boxes.size(0);
  const scalar_t* p = scores.data_ptr<scalar_t>();
  const scalar_t* f = center_logits.data_ptr<scalar_t>();
  std::vector<int64_t> starts;
  const std::vector<int64_t> order = class_major_order(idxs.data_ptr<int64_t>(), p, n, &starts);
  std::vector<scalar_t> sorted_boxes, areas;
  gather_boxes(boxes.data_ptr<scalar_t>(), order, &sorted_boxes, &areas);
  const scalar_t* b = sorted_boxes.data();

  std::vector<uint8_t> removed(n, 0);
  std::vector<int64_t> cluster;
  std::vector<scalar_t> weight;
  std::vector<Kept<scalar_t>> kept;
  for (size_t c = 0; c + 1 < starts.size(); ++c) {
    const int64_t end = starts[c + 1];
    for (int64_t i = starts[c]; i < end; ++i) {
      if (removed[i]) {
        continue;
      }
      // the cluster: the seed i and the remaining boxes it overlaps by more than the threshold
      cluster.assign(1, i);
      for (int64_t j = i + 1; j < end; ++j) {
        if (!removed[j] && box_iou(b + 4 * i, b + 4 * j, areas[i], areas[j]) > iou_threshold) {
          removed[j] = 1;
          cluster.push_back(j);
        }
      }
      // softmax(f / temperature)-weighted center (eq. 6), shifted by the seed's f (the seed
      // has the largest p, so the largest f, f being monotone in p)
      const scalar_t f_seed = f[order[i]];
      scalar_t z = 0, cx = 0, cy = 0;
      scalar_t ex0 = b[4 * i], ey0 = b[4 * i + 1], ex1 = b[4 * i + 2], ey1 = b[4 * i + 3];
      weight.resize(cluster.size());
      for (size_t k = 0; k < cluster.size(); ++k) {
        const scalar_t* bk = b + 4 * cluster[k];
        weight[k] = std::exp((f[order[cluster[k]]] - f_seed) / temperature);
        z = z + weight[k];
        cx = cx + weight[k] * ((bk[0] + bk[2]) * scalar_t(0.5));
        cy = cy + weight[k] * ((bk[1] + bk[3]) * scalar_t(0.5));
        ex0 = std::min(ex0, bk[0]);
        ey0 = std::min(ey0, bk[1]);
        ex1 = std::max(ex1, bk[2]);
        ey1 = std::max(ey1, bk[3]);
      }
      cx = cx / z;
      cy = cy / z;
      const scalar_t diag = std::sqrt((ex1 - ex0) * (ex1 - ex0) + (ey1 - ey0) * (ey1 - ey0));
      // representative: argmax of p + dis (eq. 7), the first in cluster order among equals
      int64_t best = -1;
      scalar_t best_score = 0;
      for (size_t k = 0; k < cluster.size(); ++k) {
        const scalar_t* bk = b + 4 * cluster[k];
        const scalar_t dx = (bk[0] + bk[2]) * scalar_t(0.5) - cx;
        const scalar_t dy = (bk[1] + bk[3]) * scalar_t(0.5) - cy;
        scalar_t ratio = diag > scalar_t(0) ? std::sqrt(dx * dx + dy * dy) / diag : scalar_t(0);
        ratio = std::min(ratio, scalar_t(1));
        const scalar_t s = p[order[cluster[k]]] + dis_scale * (scalar_t(1) - ratio);
        if (best < 0 || s > best_score) {
          best = cluster[k];
          best_score = s;
        }
      }
      kept.push_back({order[best], best_score, best_score});
    }
  }
  return assemble_result(&kept, scores.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> cl_balanced_nms_cpu(const at::Tensor& boxes,
                                                       const at::Tensor& scores,
                                                       const at::Tensor& center_logits,
                                                       const at::Tensor& idxs, double iou_threshold,
                                                       double temperature, double dis_scale) {
  nms_utils::check_inputs("cl_balanced_nms", boxes,
                          {{"scores", &scores}, {"center_logits", &center_logits}}, idxs);
  TORCH_CHECK_VALUE(temperature > 0, "cl_balanced_nms: temperature must be positive, got ",
                    temperature);
  TORCH_CHECK_VALUE(dis_scale >= 0, "cl_balanced_nms: dis_scale must be >= 0, got ", dis_scale);
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "cl_balanced_nms_cpu", [&] {
    result = cl_balanced_nms_cpu_kernel<scalar_t>(
        boxes.contiguous(), scores.contiguous(), center_logits.contiguous(), idxs.contiguous(),
        iou_threshold, static_cast<scalar_t>(temperature), static_cast<scalar_t>(dis_scale));
  });
  return result;
}

TORCH_LIBRARY_IMPL(d2align, CPU, m) { m.impl("cl_balanced_nms", &cl_balanced_nms_cpu); }

}  // namespace d2align
