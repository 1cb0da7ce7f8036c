// Box math shared by the CPU and CUDA kernels of the NMS family.
//
// Boxes are XYXY absolute, stored as 4 consecutive values (x0, y0, x1, y1). The IoU follows
// detectron2's `pairwise_iou` exactly (no +1; 0 when the boxes do not intersect), in the same
// order of floating-point operations, so that CPU, CUDA and the Python references agree bit for
// bit in float64. On the device, products use round-to-nearest intrinsics so that nvcc cannot
// fuse them into FMAs (which would round differently from the CPU).
#pragma once

#ifdef __CUDACC__
#define D2ALIGN_HOST_DEVICE __host__ __device__
#else
#define D2ALIGN_HOST_DEVICE
#endif

namespace d2align {
namespace nms_utils {

template <typename T>
D2ALIGN_HOST_DEVICE inline T mul_rn(T a, T b) {
  return a * b;
}

#ifdef __CUDA_ARCH__
template <>
__device__ inline float mul_rn<float>(float a, float b) {
  return __fmul_rn(a, b);
}
template <>
__device__ inline double mul_rn<double>(double a, double b) {
  return __dmul_rn(a, b);
}
#endif

template <typename T>
D2ALIGN_HOST_DEVICE inline T box_area(const T* b) {
  return mul_rn(b[2] - b[0], b[3] - b[1]);
}

// IoU of boxes `a` and `b` given their areas (as computed by box_area).
template <typename T>
D2ALIGN_HOST_DEVICE inline T box_iou(const T* a, const T* b, T area_a, T area_b) {
  T w = (a[2] < b[2] ? a[2] : b[2]) - (a[0] > b[0] ? a[0] : b[0]);
  T h = (a[3] < b[3] ? a[3] : b[3]) - (a[1] > b[1] ? a[1] : b[1]);
  w = w > T(0) ? w : T(0);
  h = h > T(0) ? h : T(0);
  const T inter = mul_rn(w, h);
  if (!(inter > T(0))) {
    return T(0);
  }
  return inter / (area_a + area_b - inter);
}

}  // namespace nms_utils
}  // namespace d2align
