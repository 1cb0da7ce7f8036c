// Soft-NMS (Bodla et al., ICCV 2017), linear and Gaussian, on CPU.
#include <torch/library.h>

#include <cmath>

#include "nms/nms.h"
#include "nms/nms_host_utils.h"
#include "nms/nms_utils.h"

namespace d2align {

namespace {

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> soft_nms_cpu_kernel(const at::Tensor& boxes,
                                                       const at::Tensor& scores,
                                                       const at::Tensor& idxs, bool gaussian,
                                                       double iou_threshold, scalar_t sigma,
                                                       double score_threshold) {
  using namespace nms_utils;
  const int64_t n = boxes.size(0);
  std::vector<int64_t> starts;
  const std::vector<int64_t> order =
      class_major_order<scalar_t>(idxs.data_ptr<int64_t>(), /*key=*/nullptr, n, &starts);
  std::vector<scalar_t> sorted_boxes, areas;
  gather_boxes(boxes.data_ptr<scalar_t>(), order, &sorted_boxes, &areas);
  const scalar_t* b = sorted_boxes.data();
  const scalar_t* s_in = scores.data_ptr<scalar_t>();
  std::vector<scalar_t> cur(n);
  for (int64_t i = 0; i < n; ++i) {
    cur[i] = s_in[order[i]];
  }

  std::vector<Kept<scalar_t>> kept;
  std::vector<int64_t> alive;  // positions in `order`, index ascending within the class
  for (size_t c = 0; c + 1 < starts.size(); ++c) {
    alive.clear();
    for (int64_t i = starts[c]; i < starts[c + 1]; ++i) {
      if (!(cur[i] < score_threshold)) {
        alive.push_back(i);
      }
    }
    while (!alive.empty()) {
      // the highest current score; the first (lowest index) among equals
      size_t best = 0;
      for (size_t a = 1; a < alive.size(); ++a) {
        if (cur[alive[a]] > cur[alive[best]]) {
          best = a;
        }
      }
      const int64_t m = alive[best];
      kept.push_back({order[m], cur[m], cur[m]});
      size_t n_alive = 0;
      for (size_t a = 0; a < alive.size(); ++a) {
        const int64_t k = alive[a];
        if (k == m) {
          continue;
        }
        const scalar_t iou = box_iou(b + 4 * m, b + 4 * k, areas[m], areas[k]);
        if (gaussian) {
          cur[k] = cur[k] * static_cast<scalar_t>(std::exp(-(iou * iou) / sigma));
        } else if (iou > iou_threshold) {
          cur[k] = cur[k] * (scalar_t(1) - iou);
        }
        if (!(cur[k] < score_threshold)) {
          alive[n_alive++] = k;
        }
      }
      alive.resize(n_alive);
    }
  }
  return assemble_result(&kept, scores.options());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                const at::Tensor& idxs, c10::string_view method,
                                                double iou_threshold, double sigma,
                                                double score_threshold) {
  nms_utils::check_inputs("soft_nms", boxes, {{"scores", &scores}}, idxs);
  TORCH_CHECK_VALUE(method == "linear" || method == "gaussian",
                    "soft_nms: method must be 'linear' or 'gaussian', got '", method, "'");
  TORCH_CHECK_VALUE(sigma > 0, "soft_nms: sigma must be positive, got ", sigma);
  const bool gaussian = method == "gaussian";
  std::tuple<at::Tensor, at::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "soft_nms_cpu", [&] {
    result = soft_nms_cpu_kernel<scalar_t>(boxes.contiguous(), scores.contiguous(),
                                           idxs.contiguous(), gaussian, iou_threshold,
                                           static_cast<scalar_t>(sigma), score_threshold);
  });
  return result;
}

TORCH_LIBRARY_IMPL(d2align, CPU, m) { m.impl("soft_nms", &soft_nms_cpu); }

}  // namespace d2align
