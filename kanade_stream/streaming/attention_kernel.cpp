// The kernel of kanade_stream::attention (kernels.py) in C++: softmax(q k^T * scale, masked) v for the few
// queries of a streaming step (1-8 frames) over its KV cache (<= ~100 keys).
//
// PyTorch's CPU flash attention is built for long sequences: for a step's shapes it spends 20-80 us a call on
// blocking and bookkeeping (one thread), where the arithmetic takes a few; a default-size converter step
// makes 11 such calls. This loops over (batch, head, query): scores four keys at a time, max, exp, then the
// weighted sum of the values, and writes the result already as (B, Tq, H * D), the output projection's input.
// Same results as scaled_dot_product_attention within float rounding (~1e-7); a query that sees no key gets
// zeros. AVX2 + FMA where the CPU has them and D is a multiple of 8, else plain loops.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

void scores_plain(const float* q, const float* k, int64_t keys, int64_t dim, float scale, float* s) {
  for (int64_t j = 0; j < keys; ++j) {
    float sum = 0.f;
    for (int64_t d = 0; d < dim; ++d) sum += q[d] * k[j * dim + d];
    s[j] = sum * scale;
  }
}

__attribute__((target("avx2,fma"))) void scores_avx2(const float* q, const float* k, int64_t keys, int64_t dim,
                                                     float scale, float* s) {
  int64_t j = 0;
  for (; j + 4 <= keys; j += 4) {  // four keys at once: one query load serves four FMAs
    const float* k0 = k + j * dim;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < dim; d += 8) {
      const __m256 qv = _mm256_loadu_ps(q + d);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + dim + d), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * dim + d), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * dim + d), a3);
    }
    const __m256 pairs = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m128 four = _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1));
    _mm_storeu_ps(s + j, _mm_mul_ps(four, _mm_set1_ps(scale)));
  }
  for (; j < keys; ++j) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < dim; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + j * dim + d), a);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    x = _mm_hadd_ps(x, x);
    x = _mm_hadd_ps(x, x);
    s[j] = _mm_cvtss_f32(x) * scale;
  }
}

// out = (sum_j p[j] v[j]) * inverse, skipping zero weights (masked keys)
void weighted_sum_plain(const float* p, const float* v, int64_t keys, int64_t dim, float inverse, float* out) {
  std::fill(out, out + dim, 0.f);
  for (int64_t j = 0; j < keys; ++j)
    if (p[j] != 0.f)
      for (int64_t d = 0; d < dim; ++d) out[d] += p[j] * v[j * dim + d];
  for (int64_t d = 0; d < dim; ++d) out[d] *= inverse;
}

__attribute__((target("avx2,fma"))) void weighted_sum_avx2(const float* p, const float* v, int64_t keys,
                                                           int64_t dim, float inverse, float* out) {
  constexpr int64_t BLOCK = 64;  // 8 accumulators of 8 floats
  for (int64_t d0 = 0; d0 < dim; d0 += BLOCK) {
    const int64_t vectors = std::min(BLOCK, dim - d0) / 8;
    __m256 acc[8];
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t j = 0; j < keys; ++j) {
      if (p[j] == 0.f) continue;
      const __m256 weight = _mm256_set1_ps(p[j]);
      const float* row = v + j * dim + d0;
      for (int64_t r = 0; r < vectors; ++r) acc[r] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(row + 8 * r), acc[r]);
    }
    const __m256 scale = _mm256_set1_ps(inverse);
    for (int64_t r = 0; r < vectors; ++r) _mm256_storeu_ps(out + d0 + 8 * r, _mm256_mul_ps(acc[r], scale));
  }
}

at::Tensor attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                     const c10::optional<at::Tensor>& mask_in, double scale) {
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, "attention: q, k, v must be (B, H, T, D)");
  TORCH_CHECK(q_in.scalar_type() == at::kFloat && k_in.scalar_type() == at::kFloat && v_in.scalar_type() == at::kFloat,
              "attention: the C++ kernel takes float32");
  // a step's queries are a transposed view (B, T, H, D) -> (B, H, T, D): read them through their strides
  // rather than copy them; the KV rings are contiguous already
  const auto q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  const auto k = k_in.contiguous(), v = v_in.contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), queries = q.size(2), dim = q.size(3), keys = k.size(2);
  TORCH_CHECK(k.size(0) == batch && v.size(0) == batch && k.size(1) == heads && v.size(1) == heads &&
              k.size(3) == dim && v.size(3) == dim && v.size(2) == keys, "attention: q, k, v shapes do not match");
  at::Tensor mask;
  const bool* allowed = nullptr;
  if (mask_in.has_value()) {
    TORCH_CHECK(mask_in->scalar_type() == at::kBool, "attention: the mask must be boolean (True = attend)");
    mask = mask_in->expand({queries, keys}).contiguous();
    allowed = mask.data_ptr<bool>();
  }
  auto out = at::empty({batch, queries, heads * dim}, q.options());
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool vectorised = avx2 && dim % 8 == 0;
  const float* qs = q.data_ptr<float>();
  const int64_t q_batch = q.stride(0), q_head = q.stride(1), q_time = q.stride(2);
  const float* ks = k.data_ptr<float>();
  const float* vs = v.data_ptr<float>();
  float* os = out.data_ptr<float>();
  const float factor = static_cast<float>(scale);
  thread_local std::vector<float> s;
  s.resize(keys);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h) {
      const float* kh = ks + (b * heads + h) * keys * dim;
      const float* vh = vs + (b * heads + h) * keys * dim;
      for (int64_t i = 0; i < queries; ++i) {
        const float* qi = qs + b * q_batch + h * q_head + i * q_time;
        (vectorised ? scores_avx2 : scores_plain)(qi, kh, keys, dim, factor, s.data());
        float top = NEG_INF;
        for (int64_t j = 0; j < keys; ++j) {
          if (allowed && !allowed[i * keys + j]) s[j] = NEG_INF;
          top = std::max(top, s[j]);
        }
        float total = 0.f;
        for (int64_t j = 0; j < keys; ++j) {
          s[j] = s[j] == NEG_INF ? 0.f : std::exp(s[j] - top);
          total += s[j];
        }
        const float inverse = total > 0.f ? 1.f / total : 0.f;
        (vectorised ? weighted_sum_avx2 : weighted_sum_plain)(s.data(), vh, keys, dim, inverse,
                                                               os + (b * queries + i) * heads * dim + h * dim);
      }
    }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kanade_stream, CPU, m) {
  m.impl("attention", &attention);
}
