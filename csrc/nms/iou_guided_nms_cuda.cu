// IoU-guided NMS (IoU-Net, Algorithm 1) on CUDA.
//
// Boxes are sorted by (class asc, localization confidence desc, index asc). A first kernel
// computes, for every pair i < j of the same class, whether IoU(i, j) > threshold, as a bitmask
// of 64 columns per word (as torchvision's nms kernel does; blocks holding no common class are
// skipped). A second kernel runs the greedy pass, one warp per class: each kept box i marks the
// not-yet-removed boxes of its row as removed by i. The classification score of each kept box
// is then the max over the boxes it removed (a deterministic scatter-max). The IoU is the same
// host/device function as on CPU, with the products rounded as on CPU, so the results equal the
// CPU kernel's exactly.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "nms/nms.h"
#include "nms/nms_host_utils.h"
#include "nms/nms_utils.h"

namespace d2align {

namespace {

constexpr int kBitsPerWord = 64;
constexpr int kWarpSize = 32;

template <typename T>
__global__ void iou_guided_mask_kernel(int64_t n, double iou_threshold, const T* __restrict__ boxes,
                                       const int64_t* __restrict__ classes, int64_t col_blocks,
                                       unsigned long long* __restrict__ mask) {
  using namespace nms_utils;
  const int64_t row_block = blockIdx.y;
  const int64_t col_block = blockIdx.x;
  if (row_block > col_block) {
    return;  // only pairs i < j are needed
  }
  const int64_t row_start = row_block * kBitsPerWord;
  const int64_t col_start = col_block * kBitsPerWord;
  const int row_size =
      n - row_start < kBitsPerWord ? static_cast<int>(n - row_start) : kBitsPerWord;
  const int col_size =
      n - col_start < kBitsPerWord ? static_cast<int>(n - col_start) : kBitsPerWord;
  if (classes[row_start + row_size - 1] < classes[col_start]) {
    return;  // sorted by class: no row shares a class with any column
  }
  __shared__ T col_boxes[kBitsPerWord * 4];
  __shared__ T col_areas[kBitsPerWord];
  __shared__ int64_t col_classes[kBitsPerWord];
  if (threadIdx.x < col_size) {
    const int64_t j = col_start + threadIdx.x;
    for (int k = 0; k < 4; ++k) {
      col_boxes[threadIdx.x * 4 + k] = boxes[j * 4 + k];
    }
    col_areas[threadIdx.x] = box_area(boxes + j * 4);
    col_classes[threadIdx.x] = classes[j];
  }
  __syncthreads();
  if (threadIdx.x < row_size) {
    const int64_t i = row_start + threadIdx.x;
    const T* box_i = boxes + i * 4;
    const T area_i = box_area(box_i);
    const int64_t class_i = classes[i];
    unsigned long long bits = 0;
    for (int j = row_block == col_block ? threadIdx.x + 1 : 0; j < col_size; ++j) {
      if (col_classes[j] == class_i && static_cast<double>(box_iou(box_i, col_boxes + j * 4, area_i,
                                                                   col_areas[j])) > iou_threshold) {
        bits |= 1ULL << j;
      }
    }
    mask[i * col_blocks + col_block] = bits;
  }
}

// One warp per class: the greedy pass over the class's boxes [start, end) in sorted order.
// remover[j] becomes the kept box that removed j (-1 for kept boxes). The bits of a word of
// `removed` may belong to two classes, hence the atomics; each warp only reads its own bits.
__global__ void iou_guided_scan_kernel(const unsigned long long* __restrict__ mask,
                                       const int64_t* __restrict__ class_starts, int64_t col_blocks,
                                       unsigned long long* removed, int64_t* __restrict__ remover) {
  const int64_t start = class_starts[blockIdx.x];
  const int64_t end = class_starts[blockIdx.x + 1];
  const int64_t last_word = (end - 1) / kBitsPerWord;
  const volatile unsigned long long* removed_now = removed;
  for (int64_t i = start; i < end; ++i) {
    if (removed_now[i / kBitsPerWord] & (1ULL << (i % kBitsPerWord))) {
      continue;
    }
    const unsigned long long* row = mask + i * col_blocks;
    for (int64_t w = i / kBitsPerWord + threadIdx.x; w <= last_word; w += kWarpSize) {
      const unsigned long long bits = row[w];
      if (bits == 0) {
        continue;
      }
      unsigned long long fresh = bits & ~atomicOr(removed + w, bits);
      while (fresh) {
        const int b = __ffsll(static_cast<long long>(fresh)) - 1;
        remover[w * kBitsPerWord + b] = i;
        fresh &= fresh - 1;
      }
    }
    __syncwarp();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> iou_guided_nms_cuda(const at::Tensor& boxes,
                                                       const at::Tensor& cls_scores,
                                                       const at::Tensor& loc_scores,
                                                       const at::Tensor& idxs,
                                                       double iou_threshold) {
  nms_utils::check_inputs("iou_guided_nms", boxes,
                          {{"cls_scores", &cls_scores}, {"loc_scores", &loc_scores}}, idxs);
  TORCH_CHECK(boxes.is_cuda(), "iou_guided_nms_cuda: boxes must be a CUDA tensor");
  at::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) {
    return std::make_tuple(idxs.new_empty({0}), cls_scores.new_empty({0}));
  }
  const int64_t col_blocks = (n + kBitsPerWord - 1) / kBitsPerWord;
  TORCH_CHECK(col_blocks <= 65535, "iou_guided_nms_cuda: at most ", 65535 * kBitsPerWord,
              " boxes, got ", n);

  // (class asc, loc desc, index asc), by two stable sorts
  const at::Tensor by_loc = std::get<1>(loc_scores.sort(/*stable=*/true, 0, /*descending=*/true));
  const at::Tensor order = by_loc.index_select(
      0, std::get<1>(idxs.index_select(0, by_loc).sort(/*stable=*/true, 0, false)));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  const at::Tensor sorted_cls = cls_scores.index_select(0, order);
  const at::Tensor sorted_classes = idxs.index_select(0, order).contiguous();
  const at::Tensor counts = std::get<2>(at::unique_consecutive(sorted_classes, false, true));
  const at::Tensor class_starts = at::cat({counts.new_zeros({1}), counts.cumsum(0)});

  at::Tensor mask = at::zeros({n, col_blocks}, idxs.options());
  at::Tensor removed = at::zeros({col_blocks}, idxs.options());
  at::Tensor remover = at::full({n}, -1, idxs.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(col_blocks, col_blocks);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "iou_guided_nms_cuda", [&] {
    iou_guided_mask_kernel<scalar_t><<<grid, kBitsPerWord, 0, stream>>>(
        n, iou_threshold, sorted_boxes.data_ptr<scalar_t>(), sorted_classes.data_ptr<int64_t>(),
        col_blocks, reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  iou_guided_scan_kernel<<<counts.size(0), kWarpSize, 0, stream>>>(
      reinterpret_cast<const unsigned long long*>(mask.data_ptr<int64_t>()),
      class_starts.data_ptr<int64_t>(), col_blocks,
      reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()),
      remover.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // each kept box takes the max classification score over the boxes it removed
  const at::Tensor removed_pos = at::nonzero(remover >= 0).squeeze(1);
  at::Tensor merged = sorted_cls.clone();
  merged.scatter_reduce_(0, remover.index_select(0, removed_pos),
                         sorted_cls.index_select(0, removed_pos), "amax", /*include_self=*/true);
  // the kept boxes, sorted by (loc desc, index asc): their rank in by_loc
  const at::Tensor kept_pos = at::nonzero(remover < 0).squeeze(1);
  const at::Tensor kept = order.index_select(0, kept_pos);
  at::Tensor rank = at::empty_like(by_loc);
  rank.scatter_(0, by_loc, at::arange(n, by_loc.options()));
  const at::Tensor perm = std::get<1>(rank.index_select(0, kept).sort());
  return std::make_tuple(kept.index_select(0, perm),
                         merged.index_select(0, kept_pos).index_select(0, perm));
}

TORCH_LIBRARY_IMPL(d2align, CUDA, m) { m.impl("iou_guided_nms", &iou_guided_nms_cuda); }

}  // namespace d2align
