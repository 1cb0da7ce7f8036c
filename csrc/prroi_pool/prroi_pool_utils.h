// Host/device math of Precise RoI Pooling (IoU-Net, Jiang et al. 2018, Sec. 3.3), shared by the
// CPU and CUDA kernels.
//
// The feature map is the bilinear surface of eq. (2):
//   f(x, y) = sum_{i,j} hat(x - i) * hat(y - j) * w[j][i],   hat(t) = max(0, 1 - |t|),
// with pixel (i, j) at integer coordinates; pixels outside the map contribute 0, so the surface
// fades to 0 within one cell outside the map. Because the interpolation kernel is a product, the
// integral of eq. (3) over a bin [xa, xb] x [ya, yb] separates exactly:
//   int_ya^yb int_xa^xb f = sum_{i,j} w[j][i] * Kx(i) * Ky(j),
//   Kx(i) = int_xa^xb hat(x - i) dx,
// a closed form (hat is linear on [i - 1, i] and on [i, i + 1], so Kx is the sum of at most two
// trapezoids), and each bin is an exact weighted sum of the pixels it touches. Its derivatives
// w.r.t. the bin edges (eq. 4) need dKx(i)/dxb = hat(xb - i) and dKx(i)/dxa = -hat(xa - i).
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define PRROI_HOST_DEVICE __host__ __device__
#else
#define PRROI_HOST_DEVICE
#endif

namespace d2align {
namespace prroi_pool {

template <typename T>
PRROI_HOST_DEVICE inline bool is_finite(T v) {
#ifdef __CUDA_ARCH__
  return ::isfinite(v);
#else
  return std::isfinite(v);
#endif
}

template <typename T>
PRROI_HOST_DEVICE inline int floor_to_int(T v) {
#ifdef __CUDA_ARCH__
  return static_cast<int>(::floor(v));
#else
  return static_cast<int>(std::floor(v));
#endif
}

template <typename T>
PRROI_HOST_DEVICE inline int ceil_to_int(T v) {
#ifdef __CUDA_ARCH__
  return static_cast<int>(::ceil(v));
#else
  return static_cast<int>(std::ceil(v));
#endif
}

// hat(t) = max(0, 1 - |t|): the 1D bilinear interpolation coefficient of eq. (2).
template <typename T>
PRROI_HOST_DEVICE inline T hat(T t) {
  const T a = t < T(0) ? -t : t;
  return a < T(1) ? T(1) - a : T(0);
}

// One axis of one bin: the edges [lo, hi] on the feature grid and the range [first, last] of
// in-map pixel indices whose interpolation kernel overlaps it (empty when first > last: the bin
// lies wholly outside the map along this axis, or has no extent in floating point).
//
// The kernels work with bin means rather than integrals: mean(i) = Kx(i) / (hi - lo), so that
// a bin's output is sum_{i,j} mean_x(i) * mean_y(j) * w[j][i]. mean(i) is summed piece by piece
// (left and right of pixel i, where hat is linear and its mean is its value at the piece's
// midpoint) from lengths relative to hi - lo as computed: it stays accurate in float32 for tiny
// bins far from the origin, where H(hi - i) - H(lo - i) would cancel catastrophically.
template <typename T>
struct BinAxis {
  T lo;
  T hi;
  T inv_len;  // 1 / (hi - lo), 0 for an empty bin
  int first;
  int last;

  // Mean of pixel i's kernel over the bin: Kx(i) / (hi - lo).
  PRROI_HOST_DEVICE inline T mean_weight(int i) const {
    const T c = T(i);
    const T a = lo > c - T(1) ? lo : c - T(1);
    const T b = hi < c + T(1) ? hi : c + T(1);
    T s = T(0);
    const T left_end = b < c ? b : c;  // piece [a, min(b, i)], where hat(x - i) = 1 + x - i
    if (left_end > a) {
      s += (left_end - a) * (T(1) + T(0.5) * (a + left_end) - c);
    }
    const T right_start = a > c ? a : c;  // piece [max(a, i), b], where hat(x - i) = 1 - x + i
    if (b > right_start) {
      s += (b - right_start) * (T(1) - T(0.5) * (right_start + b) + c);
    }
    return s * inv_len;
  }
  // d Kx(i) / d lo / (hi - lo) = -hat(lo - i) / (hi - lo).
  PRROI_HOST_DEVICE inline T dweight_dlo(int i) const { return -hat(lo - T(i)) * inv_len; }
  // d Kx(i) / d hi / (hi - lo) = hat(hi - i) / (hi - lo).
  PRROI_HOST_DEVICE inline T dweight_dhi(int i) const { return hat(hi - T(i)) * inv_len; }
};

// Bin `k` of `bins` equal bins splitting [start, start + length] on an axis of `size` pixels.
// Pixel i's kernel covers (i - 1, i + 1), so the pixels touching [lo, hi] are floor(lo) ..
// ceil(hi), clipped to [0, size - 1]; the edges are clamped to [-1, size] first (the surface is
// 0 beyond) so that the integer conversion cannot overflow for far-away boxes.
template <typename T>
PRROI_HOST_DEVICE inline BinAxis<T> make_bin_axis(T start, T length, int k, int bins, int size) {
  BinAxis<T> axis;
  const T bin = length / T(bins);
  axis.lo = start + T(k) * bin;
  axis.hi = start + T(k + 1) * bin;
  if (!(axis.hi > axis.lo)) {
    axis.inv_len = T(0);
    axis.first = 0;
    axis.last = -1;
    return axis;
  }
  axis.inv_len = T(1) / (axis.hi - axis.lo);
  const T lo_c = axis.lo < T(-1) ? T(-1) : (axis.lo > T(size) ? T(size) : axis.lo);
  const T hi_c = axis.hi < T(-1) ? T(-1) : (axis.hi > T(size) ? T(size) : axis.hi);
  const int first = floor_to_int(lo_c);
  const int last = ceil_to_int(hi_c);
  axis.first = first < 0 ? 0 : first;
  axis.last = last > size - 1 ? size - 1 : last;
  return axis;
}

// A RoI row (batch_idx, x1, y1, x2, y2) in image pixels, on the feature grid. The continuous
// coordinate u of detectron2's ROIAlign(aligned=True) maps to u * spatial_scale - 0.5, so that a
// pixel's center (integer + 0.5 in image-scaled coordinates) sits at the integer where its value
// is defined. `valid` is false for a box of zero (or negative) width or height, or with
// non-finite coordinates, or a batch index outside [0, num_images): such a box pools to 0 with
// zero gradients (the Python wrapper rejects the last two with an error before calling).
template <typename T>
struct RoIGeometry {
  int batch;
  T x0;
  T y0;
  T width;
  T height;
  bool valid;
};

template <typename T>
PRROI_HOST_DEVICE inline RoIGeometry<T> make_roi(const T* roi, T spatial_scale, int num_images) {
  RoIGeometry<T> g;
  const bool batch_ok = roi[0] >= T(0) && roi[0] < T(num_images);
  g.batch = batch_ok ? static_cast<int>(roi[0]) : 0;
  g.x0 = roi[1] * spatial_scale - T(0.5);
  g.y0 = roi[2] * spatial_scale - T(0.5);
  g.width = (roi[3] - roi[1]) * spatial_scale;
  g.height = (roi[4] - roi[2]) * spatial_scale;
  // Comparisons are false for NaN; the two isfinite checks reject +-inf edges.
  g.valid = g.width > T(0) && g.height > T(0) && is_finite(g.x0) && is_finite(g.y0) &&
            is_finite(g.x0 + g.width) && is_finite(g.y0 + g.height) && batch_ok;
  return g;
}

// Chain rule from a bin's edges to its box. With avg the bin mean, the derivative w.r.t. a
// lower edge is (eq. 4) d avg / d lo = sum mean_y * dweight_dlo * w + avg / (hi - lo), and w.r.t.
// an upper edge d avg / d hi = sum mean_y * dweight_dhi * w - avg / (hi - lo). Bin k of `bins`
// has lo = start + k * (end - start) / bins and hi = start + (k + 1) * (end - start) / bins, so
// (1 - k / bins, k / bins) * d_lo + (1 - (k+1) / bins, (k+1) / bins) * d_hi is added to the
// box's (d_start, d_end).
template <typename T>
PRROI_HOST_DEVICE inline void add_bin_edge_grad(T d_lo, T d_hi, int k, int bins, T* d_start,
                                                T* d_end) {
  const T a = T(k) / T(bins);
  const T b = T(k + 1) / T(bins);
  *d_start += d_lo * (T(1) - a) + d_hi * (T(1) - b);
  *d_end += d_lo * a + d_hi * b;
}

}  // namespace prroi_pool
}  // namespace d2align
