// Host-side helpers of the NMS family (CPU kernels and CUDA launchers): input checks, the
// class-major processing order, and the deterministic ordering of the result.
#pragma once
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <tuple>
#include <utility>
#include <vector>

#include "nms/nms_utils.h"

namespace d2align {
namespace nms_utils {

// Raises a ValueError naming `name` if tensor `t` holds a nan or inf. On CPU a serial pass (a
// parallel reduction can stall for a scheduler time slice on a busy machine).
inline void check_finite(const char* op, const char* name, const at::Tensor& t) {
  bool finite = true;
  if (t.is_cpu()) {
    const at::Tensor c = t.contiguous();
    AT_DISPATCH_FLOATING_TYPES(c.scalar_type(), "check_finite", [&] {
      const scalar_t* p = c.data_ptr<scalar_t>();
      for (int64_t i = 0; i < c.numel(); ++i) {
        finite = finite && std::isfinite(p[i]);
      }
    });
  } else {
    finite = at::isfinite(t).all().item<bool>();
  }
  TORCH_CHECK_VALUE(finite, op, ": ", name, " contain non-finite values (nan or inf)");
}

// Checks boxes [N, 4] float32/float64 and finite; each of `scores` (name, tensor) [N] finite,
// of the boxes' dtype and device; idxs [N] int64 on the same device.
inline void check_inputs(const char* op, const at::Tensor& boxes,
                         std::initializer_list<std::pair<const char*, const at::Tensor*>> scores,
                         const at::Tensor& idxs) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op,
                    ": boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK_TYPE(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, op,
                   ": boxes must be float32 or float64, got ", boxes.scalar_type());
  const int64_t n = boxes.size(0);
  for (const auto& named : scores) {
    const char* name = named.first;
    const at::Tensor& s = *named.second;
    TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == n, op, ": ", name, " must have shape [", n,
                      "], got ", s.sizes());
    TORCH_CHECK_TYPE(s.scalar_type() == boxes.scalar_type(), op, ": ", name,
                     " must have the dtype of boxes (", boxes.scalar_type(), "), got ",
                     s.scalar_type());
    TORCH_CHECK_VALUE(s.device() == boxes.device(), op, ": ", name,
                      " and boxes are on different devices");
  }
  TORCH_CHECK_VALUE(idxs.dim() == 1 && idxs.size(0) == n, op, ": idxs must have shape [", n,
                    "], got ", idxs.sizes());
  TORCH_CHECK_TYPE(idxs.scalar_type() == at::kLong, op, ": idxs must be int64, got ",
                   idxs.scalar_type());
  TORCH_CHECK_VALUE(idxs.device() == boxes.device(), op,
                    ": idxs and boxes are on different devices");
  check_finite(op, "boxes", boxes);
  for (const auto& named : scores) {
    check_finite(op, named.first, *named.second);
  }
}

// Box indices sorted by (class asc, key desc, index asc); `key` may be null (index asc within a
// class). Fills `starts` with the offsets of each class's run in the order, plus the end.
template <typename scalar_t>
std::vector<int64_t> class_major_order(const int64_t* idxs, const scalar_t* key, int64_t n,
                                       std::vector<int64_t>* starts) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (idxs[a] != idxs[b]) {
      return idxs[a] < idxs[b];
    }
    if (key != nullptr && key[a] != key[b]) {
      return key[a] > key[b];
    }
    return a < b;
  });
  starts->clear();
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || idxs[order[i]] != idxs[order[i - 1]]) {
      starts->push_back(i);
    }
  }
  starts->push_back(n);
  return order;
}

// One kept box: its index, the key the result is sorted by, and the score returned with it.
template <typename scalar_t>
struct Kept {
  int64_t index;
  scalar_t rank;
  scalar_t score;
};

// (keep int64[K], scores[K]) sorted by (rank desc, index asc).
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> assemble_result(std::vector<Kept<scalar_t>>* kept,
                                                   const at::TensorOptions& score_options) {
  std::sort(kept->begin(), kept->end(), [](const Kept<scalar_t>& a, const Kept<scalar_t>& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.index < b.index;
  });
  const int64_t k = static_cast<int64_t>(kept->size());
  at::Tensor keep = at::empty({k}, score_options.dtype(at::kLong));
  at::Tensor scores = at::empty({k}, score_options);
  int64_t* keep_ptr = keep.data_ptr<int64_t>();
  scalar_t* scores_ptr = scores.data_ptr<scalar_t>();
  for (int64_t i = 0; i < k; ++i) {
    keep_ptr[i] = (*kept)[i].index;
    scores_ptr[i] = (*kept)[i].score;
  }
  return std::make_tuple(keep, scores);
}

// Copies the boxes in `order` into a contiguous [N, 4] array and computes their areas.
template <typename scalar_t>
void gather_boxes(const scalar_t* boxes, const std::vector<int64_t>& order,
                  std::vector<scalar_t>* sorted_boxes, std::vector<scalar_t>* areas) {
  const size_t n = order.size();
  sorted_boxes->resize(4 * n);
  areas->resize(n);
  for (size_t i = 0; i < n; ++i) {
    std::copy(boxes + 4 * order[i], boxes + 4 * order[i] + 4, sorted_boxes->data() + 4 * i);
    (*areas)[i] = box_area(sorted_boxes->data() + 4 * i);
  }
}

}  // namespace nms_utils
}  // namespace d2align
