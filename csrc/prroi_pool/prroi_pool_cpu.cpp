// Precise RoI Pooling on CPU: forward, backward to the features, backward to the RoIs.
//
// Each bin's integral is the separable weighted sum of prroi_pool_utils.h. Per RoI, the weights
// of the pixels touched by every bin are tabulated once per axis; per channel, the x-weighted
// row sums of every x bin are computed once per row and shared by the (overlapping) y bins.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "prroi_pool/prroi_pool.h"
#include "prroi_pool/prroi_pool_checks.h"
#include "prroi_pool/prroi_pool_utils.h"

namespace d2align {

namespace {

using prroi_pool::BinAxis;
using prroi_pool::RoIGeometry;

// Per-bin pixel ranges and kernel integrals (and optionally their edge derivatives) along one
// axis of one RoI. Bin k touches pixels first[k] .. first[k] + (offset[k+1] - offset[k]) - 1,
// whose mean weights are w[offset[k] ..].
template <typename T>
struct AxisTable {
  int union_first = 0;  // pixels touched by any bin: union_first .. union_last
  int union_last = -1;
  std::vector<int> first;
  std::vector<int> offset;
  std::vector<T> inv_len;  // per bin: 1 / (hi - lo)
  std::vector<T> w;        // mean_weight
  std::vector<T> dlo;      // dweight_dlo
  std::vector<T> dhi;      // dweight_dhi
  // dweight_dlo of bin k is 0 but at (at most) the two pixels around lo: entries
  // lo_skip[k] .. lo_skip[k] + lo_count[k] - 1 of the bin's range; likewise for hi.
  std::vector<int> lo_skip, lo_count, hi_skip, hi_count;

  void build(T start, T length, int bins, int size, bool with_derivatives) {
    const BinAxis<T> all = prroi_pool::make_bin_axis(start, length, 0, 1, size);
    union_first = all.first;
    union_last = all.last;
    first.resize(bins);
    offset.resize(bins + 1);
    inv_len.resize(bins);
    lo_skip.resize(bins);
    lo_count.resize(bins);
    hi_skip.resize(bins);
    hi_count.resize(bins);
    w.clear();
    dlo.clear();
    dhi.clear();
    for (int k = 0; k < bins; ++k) {
      const BinAxis<T> axis = prroi_pool::make_bin_axis(start, length, k, bins, size);
      // Rounding in start + (k + 1) * (length / bins) must not reach past the union's pixels.
      const int last = std::min(axis.last, union_last);
      first[k] = std::max(axis.first, union_first);
      inv_len[k] = axis.inv_len;
      offset[k] = static_cast<int>(w.size());
      for (int i = first[k]; i <= last; ++i) {
        w.push_back(axis.mean_weight(i));
        if (with_derivatives) {
          dlo.push_back(axis.dweight_dlo(i));
          dhi.push_back(axis.dweight_dhi(i));
        }
      }
      edge_pixels(axis.lo, size, first[k], last, &lo_skip[k], &lo_count[k]);
      edge_pixels(axis.hi, size, first[k], last, &hi_skip[k], &hi_count[k]);
    }
    offset[bins] = static_cast<int>(w.size());
  }
  // The pixels floor(edge), floor(edge) + 1 (where hat(edge - i) may be nonzero) within
  // [first, last], as an offset from first and a count.
  static void edge_pixels(T edge, int size, int first, int last, int* skip, int* count) {
    const T clamped = edge < T(-1) ? T(-1) : (edge > T(size) ? T(size) : edge);
    const int pixel = prroi_pool::floor_to_int(clamped);
    const int begin = std::max(pixel, first);
    const int end = std::min(pixel + 1, last);
    *skip = begin - first;
    *count = std::max(end - begin + 1, 0);
  }
  int count(int k) const { return offset[k + 1] - offset[k]; }
  int rows() const { return std::max(union_last - union_first + 1, 0); }
};

// sums[(j - ty.union_first) * pw + k] = sum_i mean_x_k(i) * plane[j][i] for every row j touched
// by the RoI and every x bin k. With `lo_sums` and `hi_sums` (RoI gradient), the same sums with
// dweight_dlo and dweight_dhi, over the two pixels where these are nonzero.
template <typename T>
void x_row_sums(const T* plane, int width, const AxisTable<T>& tx, const AxisTable<T>& ty, int pw,
                std::vector<T>& sums, std::vector<T>* lo_sums = nullptr,
                std::vector<T>* hi_sums = nullptr) {
  const size_t n_sums = static_cast<size_t>(ty.rows()) * pw;
  sums.assign(n_sums, T(0));
  if (lo_sums != nullptr) {
    lo_sums->assign(n_sums, T(0));
    hi_sums->assign(n_sums, T(0));
  }
  for (int j = ty.union_first; j <= ty.union_last; ++j) {
    const T* row = plane + static_cast<int64_t>(j) * width;
    const int64_t base = static_cast<int64_t>(j - ty.union_first) * pw;
    for (int k = 0; k < pw; ++k) {
      const T* px = row + tx.first[k];
      const T* wk = tx.w.data() + tx.offset[k];
      const int n = tx.count(k);
      T s = T(0);
      for (int i = 0; i < n; ++i) {
        s += wk[i] * px[i];
      }
      sums[base + k] = s;
      if (lo_sums != nullptr) {
        T s_lo = T(0), s_hi = T(0);
        for (int i = tx.lo_skip[k]; i < tx.lo_skip[k] + tx.lo_count[k]; ++i) {
          s_lo += tx.dlo[tx.offset[k] + i] * px[i];
        }
        for (int i = tx.hi_skip[k]; i < tx.hi_skip[k] + tx.hi_count[k]; ++i) {
          s_hi += tx.dhi[tx.offset[k] + i] * px[i];
        }
        (*lo_sums)[base + k] = s_lo;
        (*hi_sums)[base + k] = s_hi;
      }
    }
  }
}

template <typename T>
void forward_kernel(const T* input, const T* rois, T spatial_scale, int64_t num_rois,
                    int num_images, int channels, int height, int width, int ph, int pw,
                    T* output) {
  const int64_t bins = static_cast<int64_t>(ph) * pw;
  const int64_t grain = std::max<int64_t>(1, 4096 / bins);
  at::parallel_for(0, num_rois * channels, grain, [&](int64_t begin, int64_t end) {
    AxisTable<T> tx, ty;
    std::vector<T> sums;
    int64_t cached = -1;
    RoIGeometry<T> g{};
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t r = idx / channels;
      const int c = static_cast<int>(idx % channels);
      if (r != cached) {
        cached = r;
        g = prroi_pool::make_roi(rois + r * 5, spatial_scale, num_images);
        if (g.valid) {
          tx.build(g.x0, g.width, pw, width, false);
          ty.build(g.y0, g.height, ph, height, false);
        }
      }
      T* out = output + idx * bins;
      if (!g.valid) {
        std::fill(out, out + bins, T(0));
        continue;
      }
      const T* plane = input + (static_cast<int64_t>(g.batch) * channels + c) * height * width;
      x_row_sums(plane, width, tx, ty, pw, sums);
      for (int l = 0; l < ph; ++l) {
        const T* wy = ty.w.data() + ty.offset[l];
        const T* rs = sums.data() + static_cast<int64_t>(ty.first[l] - ty.union_first) * pw;
        const int n = ty.count(l);
        for (int k = 0; k < pw; ++k) {
          T s = T(0);
          for (int j = 0; j < n; ++j) {
            s += wy[j] * rs[j * pw + k];
          }
          out[l * pw + k] = s;
        }
      }
    }
  });
}

// Channels are split between threads; every thread visits all RoIs for its channels, so no two
// threads write the same grad_input element.
template <typename T>
void backward_input_kernel(const T* grad_output, const T* rois, T spatial_scale, int64_t num_rois,
                           int num_images, int channels, int height, int width, int ph, int pw,
                           T* grad_input) {
  const int64_t bins = static_cast<int64_t>(ph) * pw;
  at::parallel_for(0, channels, 1, [&](int64_t c_begin, int64_t c_end) {
    AxisTable<T> tx, ty;
    std::vector<T> col;  // col[(j - union_first) * pw + k] = sum_l wy_l(j) * grad[l][k]
    for (int64_t r = 0; r < num_rois; ++r) {
      const RoIGeometry<T> g = prroi_pool::make_roi(rois + r * 5, spatial_scale, num_images);
      if (!g.valid) {
        continue;
      }
      tx.build(g.x0, g.width, pw, width, false);
      ty.build(g.y0, g.height, ph, height, false);
      if (tx.rows() == 0 || ty.rows() == 0) {
        continue;
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        const T* go = grad_output + (r * channels + c) * bins;
        T* plane = grad_input + (static_cast<int64_t>(g.batch) * channels + c) * height * width;
        col.assign(static_cast<size_t>(ty.rows()) * pw, T(0));
        for (int l = 0; l < ph; ++l) {
          const T* wy = ty.w.data() + ty.offset[l];
          T* cl = col.data() + static_cast<int64_t>(ty.first[l] - ty.union_first) * pw;
          for (int j = 0; j < ty.count(l); ++j) {
            for (int k = 0; k < pw; ++k) {
              cl[j * pw + k] += wy[j] * go[l * pw + k];
            }
          }
        }
        for (int j = ty.union_first; j <= ty.union_last; ++j) {
          T* row = plane + static_cast<int64_t>(j) * width;
          const T* cl = col.data() + static_cast<int64_t>(j - ty.union_first) * pw;
          for (int k = 0; k < pw; ++k) {
            const T a = cl[k];
            T* px = row + tx.first[k];
            const T* wk = tx.w.data() + tx.offset[k];
            const int n = tx.count(k);
            for (int i = 0; i < n; ++i) {
              px[i] += a * wk[i];
            }
          }
        }
      }
    }
  });
}

template <typename T>
void backward_rois_kernel(const T* grad_output, const T* input, const T* rois, T spatial_scale,
                          int64_t num_rois, int num_images, int channels, int height, int width,
                          int ph, int pw, T* grad_rois) {
  const int64_t bins = static_cast<int64_t>(ph) * pw;
  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    AxisTable<T> tx, ty;
    std::vector<T> s0, slo, shi;
    for (int64_t r = begin; r < end; ++r) {
      T* gr = grad_rois + r * 5;
      std::fill(gr, gr + 5, T(0));
      const RoIGeometry<T> g = prroi_pool::make_roi(rois + r * 5, spatial_scale, num_images);
      if (!g.valid) {
        continue;
      }
      tx.build(g.x0, g.width, pw, width, true);
      ty.build(g.y0, g.height, ph, height, true);
      T dx1 = T(0), dx2 = T(0), dy1 = T(0), dy2 = T(0);
      for (int c = 0; c < channels; ++c) {
        const T* plane = input + (static_cast<int64_t>(g.batch) * channels + c) * height * width;
        const T* go = grad_output + (r * channels + c) * bins;
        x_row_sums(plane, width, tx, ty, pw, s0, &slo, &shi);
        for (int l = 0; l < ph; ++l) {
          const int64_t base = static_cast<int64_t>(ty.first[l] - ty.union_first) * pw;
          const int n = ty.count(l);
          const T* wy = ty.w.data() + ty.offset[l];
          const T* wy_lo = ty.dlo.data() + ty.offset[l];
          const T* wy_hi = ty.dhi.data() + ty.offset[l];
          T d_ylo = T(0), d_yhi = T(0);
          for (int k = 0; k < pw; ++k) {
            const T grad = go[l * pw + k];
            if (grad == T(0)) {
              continue;
            }
            T s = T(0), sx_lo = T(0), sx_hi = T(0), sy_lo = T(0), sy_hi = T(0);
            for (int j = 0; j < n; ++j) {
              const int64_t e = base + j * pw + k;
              s += wy[j] * s0[e];
              sx_lo += wy[j] * slo[e];
              sx_hi += wy[j] * shi[e];
              sy_lo += wy_lo[j] * s0[e];
              sy_hi += wy_hi[j] * s0[e];
            }
            prroi_pool::add_bin_edge_grad(grad * (sx_lo + s * tx.inv_len[k]),
                                          grad * (sx_hi - s * tx.inv_len[k]), k, pw, &dx1, &dx2);
            d_ylo += grad * (sy_lo + s * ty.inv_len[l]);
            d_yhi += grad * (sy_hi - s * ty.inv_len[l]);
          }
          prroi_pool::add_bin_edge_grad(d_ylo, d_yhi, l, ph, &dy1, &dy2);
        }
      }
      gr[1] = dx1 * spatial_scale;
      gr[2] = dy1 * spatial_scale;
      gr[3] = dx2 * spatial_scale;
      gr[4] = dy2 * spatial_scale;
    }
  });
}

}  // namespace

at::Tensor prroi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width) {
  TORCH_CHECK(input.device().is_cpu() && rois.device().is_cpu(),
              "prroi_pool: expected CPU tensors");
  prroi_pool::check_input_and_rois(input, rois);
  prroi_pool::check_output_size(pooled_height, pooled_width);
  const auto x = input.contiguous();
  const auto b = rois.contiguous();
  auto output = at::empty({b.size(0), x.size(1), pooled_height, pooled_width}, x.options());
  if (output.numel() == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prroi_pool_forward_cpu", [&] {
    forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                             static_cast<scalar_t>(spatial_scale), b.size(0), x.size(0), x.size(1),
                             x.size(2), x.size(3), pooled_height, pooled_width,
                             output.data_ptr<scalar_t>());
  });
  return output;
}

at::Tensor prroi_pool_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& rois,
                                         double spatial_scale, at::IntArrayRef input_shape) {
  TORCH_CHECK(grad_output.device().is_cpu() && rois.device().is_cpu(),
              "prroi_pool: expected CPU tensors");
  prroi_pool::check_grad_output(grad_output, rois, input_shape);
  const auto go = grad_output.contiguous();
  const auto b = rois.contiguous();
  auto grad_input = at::zeros(input_shape, go.options());
  if (go.numel() == 0 || grad_input.numel() == 0) {
    return grad_input;
  }
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "prroi_pool_backward_input_cpu", [&] {
    backward_input_kernel<scalar_t>(go.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                                    static_cast<scalar_t>(spatial_scale), b.size(0), input_shape[0],
                                    input_shape[1], input_shape[2], input_shape[3], go.size(2),
                                    go.size(3), grad_input.data_ptr<scalar_t>());
  });
  return grad_input;
}

at::Tensor prroi_pool_backward_rois_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                        const at::Tensor& rois, double spatial_scale) {
  TORCH_CHECK(grad_output.device().is_cpu() && input.device().is_cpu() && rois.device().is_cpu(),
              "prroi_pool: expected CPU tensors");
  prroi_pool::check_input_and_rois(input, rois);
  prroi_pool::check_grad_output(grad_output, rois, input.sizes());
  const auto go = grad_output.contiguous();
  const auto x = input.contiguous();
  const auto b = rois.contiguous();
  auto grad_rois = at::zeros_like(b);
  if (go.numel() == 0 || x.numel() == 0) {
    return grad_rois;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "prroi_pool_backward_rois_cpu", [&] {
    backward_rois_kernel<scalar_t>(go.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                   b.data_ptr<scalar_t>(), static_cast<scalar_t>(spatial_scale),
                                   b.size(0), x.size(0), x.size(1), x.size(2), x.size(3),
                                   go.size(2), go.size(3), grad_rois.data_ptr<scalar_t>());
  });
  return grad_rois;
}

TORCH_LIBRARY_IMPL(d2align, CPU, m) {
  m.impl("prroi_pool_forward", &prroi_pool_forward_cpu);
  m.impl("prroi_pool_backward_input", &prroi_pool_backward_input_cpu);
  m.impl("prroi_pool_backward_rois", &prroi_pool_backward_rois_cpu);
}

}  // namespace d2align
