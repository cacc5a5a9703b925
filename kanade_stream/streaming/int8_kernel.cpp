// The kernel of kanade_stream::linear_int8 (int8.py) in C++: exactly what torch.ao's dynamic int8 Linear
// computes on x86 (fbgemm, input quantized to 7 bits over its [min, max] range, per-row weight scales).
//
// A streaming step multiplies 1-8 frames by each weight matrix (32 in the SSL front end's second conv).
// There fbgemm's general GEMM costs 45-55 us a call even for a 64x64 matrix (packing, blocking; measured on
// one thread), against ~5 us here; so up to MAX_SMALL_ROWS rows this file computes the same integers itself
// (AVX2 u8 x s8 dot products, 8 rows at a time) and dequantizes them with the same fused multiply-add, bit
// for bit. Larger inputs go to fbgemm.
// Built on first use by kernels.py (torch's cpp_extension); a CPU without AVX2 takes a plain C++ loop.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace {

constexpr int64_t MAX_SMALL_ROWS = 32;
constexpr int64_t LANES = 32;  // int8 values in an AVX2 register; rows are padded to a multiple of this
constexpr int64_t PREFETCH_BYTES = 2048;  // 1-4 KB measured alike

struct PackedWeights {
  std::once_flag fbgemm_once;          // fbgemm's packed form, made when the first large input comes
  c10::IValue fbgemm;
  std::vector<int8_t> weight;          // (out, in_padded), zero padded
  std::vector<int32_t> column_sums;    // sum over the input of each output row's weights
  std::vector<float> scales, bias;
  int64_t out = 0, in = 0, in_padded = 0;
  bool symmetric = true;               // all weight zero points 0 (per_channel_symmetric): the own kernel applies
};

std::mutex cache_mutex;
std::unordered_map<int64_t, std::shared_ptr<PackedWeights>>& packed_cache() {
  static std::unordered_map<int64_t, std::shared_ptr<PackedWeights>> cache;
  return cache;
}

std::shared_ptr<PackedWeights> pack(const at::Tensor& weight, const at::Tensor& scales,
                                    const at::Tensor& zero_points, const at::Tensor& bias) {
  auto packed = std::make_shared<PackedWeights>();
  auto w = weight.contiguous();
  packed->out = w.size(0);
  packed->in = w.size(1);
  packed->in_padded = (packed->in + LANES - 1) / LANES * LANES;
  packed->weight.assign(packed->out * packed->in_padded, 0);
  packed->column_sums.assign(packed->out, 0);
  const int8_t* src = w.data_ptr<int8_t>();
  for (int64_t n = 0; n < packed->out; ++n) {
    std::memcpy(&packed->weight[n * packed->in_padded], src + n * packed->in, packed->in);
    int32_t sum = 0;
    for (int64_t k = 0; k < packed->in; ++k) sum += src[n * packed->in + k];
    packed->column_sums[n] = sum;
  }
  auto s = scales.to(at::kFloat).contiguous();
  auto b = bias.to(at::kFloat).contiguous();
  packed->scales.assign(s.data_ptr<float>(), s.data_ptr<float>() + packed->out);
  packed->bias.assign(b.data_ptr<float>(), b.data_ptr<float>() + packed->out);
  packed->symmetric = zero_points.eq(0).all().item<bool>();
  return packed;
}

// The input's quantization, as PyTorch's dynamic Linear chooses it (range 0..127, zero point nudged).
void choose_input_params(float lo, float hi, float& scale, int32_t& zero_point) {
  const int32_t qmin = 0, qmax = 127;
  lo = std::min(lo, 0.f);
  hi = std::max(hi, 0.f);
  double wide = (static_cast<double>(hi) - lo) / (qmax - qmin);
  if (static_cast<float>(wide) == 0.0f || std::isinf(1.0f / static_cast<float>(wide))) wide = 0.1;
  const float smallest = 6.1e-5f;  // scales below it are raised to it, the range stretched to match
  if (wide < smallest) {
    const float original = static_cast<float>(wide);
    wide = smallest;
    if (lo == 0.0f) {
      hi = smallest * (qmax - qmin);
    } else if (hi == 0.0f) {
      lo = -smallest * (qmax - qmin);
    } else {
      const float amplifier = smallest / original;
      lo *= amplifier;
      hi *= amplifier;
    }
  }
  const double from_min = qmin - lo / wide, from_max = qmax - hi / wide;
  const double error_min = std::abs(qmin) - std::abs(lo / wide), error_max = std::abs(qmax) - std::abs(hi / wide);
  const double initial = error_min < error_max ? from_min : from_max;
  zero_point = initial < qmin ? qmin : initial > qmax ? qmax : static_cast<int32_t>(std::nearbyint(initial));
  scale = static_cast<float>(wide);
}

int32_t dot_plain(const uint8_t* a, const int8_t* b, int64_t n) {
  int32_t sum = 0;
  for (int64_t k = 0; k < n; ++k) sum += static_cast<int32_t>(a[k]) * b[k];
  return sum;
}

// The four sums of a, b, c, d, as one vector.
__attribute__((target("avx2"))) inline __m128i horizontal_sums4(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i ab = _mm256_hadd_epi32(a, b), cd = _mm256_hadd_epi32(c, d);
  const __m256i abcd = _mm256_hadd_epi32(ab, cd);  // lanes: a0 b0 c0 d0 | a1 b1 c1 d1 (halves of each sum)
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

// acc[m][n] for ROWS input rows against every weight row, BLOCK weight rows at a time: each weight vector is
// loaded once for all input rows, each input vector once for BLOCK weight rows (ROWS x BLOCK accumulators
// stay within the 16 registers). Inputs are at most 127 and weights at least -128, so maddubs's 16-bit pair
// sums cannot saturate.
template <int ROWS, int BLOCK>
__attribute__((target("avx2"))) void dots_avx2(const uint8_t* x, const PackedWeights& p, int32_t* acc) {
  static_assert(BLOCK == 1 || BLOCK == 2 || BLOCK == 4, "blocks of 1, 2 or 4 weight rows");
  const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
  const char* weight_bytes = reinterpret_cast<const char*>(p.weight.data());
  const int64_t weight_size = static_cast<int64_t>(p.weight.size());
  int64_t n = 0;
  for (; n + BLOCK <= p.out; n += BLOCK) {
    const int8_t* w = &p.weight[n * p.in_padded];
    // A step reads each weight once, from L3 or memory, in rows too short for the hardware prefetcher to
    // keep up: fetch PREFETCH_BYTES ahead (a default-size step's int8 layers ~25 % faster than without,
    // alternated in one process).
    const int64_t ahead = n * p.in_padded + PREFETCH_BYTES;
    for (int64_t i = ahead; i < std::min(ahead + BLOCK * p.in_padded, weight_size); i += 64)
      _mm_prefetch(weight_bytes + i, _MM_HINT_T0);
    __m256i sums[ROWS][4];  // of which BLOCK are used; the others stay zero for the horizontal sums
    for (int m = 0; m < ROWS; ++m)
      for (int j = 0; j < 4; ++j) sums[m][j] = zero;
    for (int64_t k = 0; k < p.in_padded; k += LANES) {
      __m256i wv[BLOCK];
      for (int j = 0; j < BLOCK; ++j)
        wv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * p.in_padded + k));
      for (int m = 0; m < ROWS; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * p.in_padded + k));
        for (int j = 0; j < BLOCK; ++j)
          sums[m][j] = _mm256_add_epi32(sums[m][j], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv[j]), ones));
      }
    }
    for (int m = 0; m < ROWS; ++m) {
      alignas(16) int32_t four[4];
      _mm_store_si128(reinterpret_cast<__m128i*>(four),
                      horizontal_sums4(sums[m][0], sums[m][1], sums[m][2], sums[m][3]));
      for (int j = 0; j < BLOCK; ++j) acc[m * p.out + n + j] = four[j];
    }
  }
  for (; n < p.out; ++n) {  // the last out % BLOCK weight rows
    const int8_t* w = &p.weight[n * p.in_padded];
    for (int m = 0; m < ROWS; ++m) {
      __m256i sum = zero;
      for (int64_t k = 0; k < p.in_padded; k += LANES) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + m * p.in_padded + k));
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv), ones));
      }
      acc[m * p.out + n] = _mm_cvtsi128_si32(horizontal_sums4(sum, zero, zero, zero));
    }
  }
}

void dots(const uint8_t* x, int64_t rows, const PackedWeights& p, int32_t* acc) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && rows > 8) {  // blocks of 8 rows: their accumulators fit the registers
    for (int64_t m = 0; m < rows; m += 8)
      dots(x + m * p.in_padded, std::min<int64_t>(8, rows - m), p, acc + m * p.out);
    return;
  }
  if (avx2) {
    switch (rows) {
      case 1: return dots_avx2<1, 4>(x, p, acc);
      case 2: return dots_avx2<2, 4>(x, p, acc);
      case 3: return dots_avx2<3, 2>(x, p, acc);
      case 4: return dots_avx2<4, 2>(x, p, acc);
      case 5: return dots_avx2<5, 2>(x, p, acc);
      case 6: return dots_avx2<6, 1>(x, p, acc);
      case 7: return dots_avx2<7, 1>(x, p, acc);
      case 8: return dots_avx2<8, 1>(x, p, acc);
    }
  }
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = 0; n < p.out; ++n)
      acc[m * p.out + n] = dot_plain(x + m * p.in_padded, &p.weight[n * p.in_padded], p.in_padded);
}

// Range of the input, then its quantization: round(x / scale) + zero point (ties to even), clamped to 0..127.
void input_range_plain(const float* x, int64_t count, float& lo, float& hi) {
  lo = hi = x[0];
  for (int64_t i = 1; i < count; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
}

__attribute__((target("avx2"))) void input_range_avx2(const float* x, int64_t count, float& lo, float& hi) {
  __m256 low = _mm256_set1_ps(x[0]), high = low;
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    low = _mm256_min_ps(low, v);
    high = _mm256_max_ps(high, v);
  }
  float lows[8], highs[8];
  _mm256_storeu_ps(lows, low);
  _mm256_storeu_ps(highs, high);
  lo = *std::min_element(lows, lows + 8);
  hi = *std::max_element(highs, highs + 8);
  for (; i < count; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
}

void quantize_plain(const float* x, int64_t count, float inverse, int32_t zero_point, uint8_t* out) {
  for (int64_t k = 0; k < count; ++k) {
    const float q = std::nearbyint(x[k] * inverse) + zero_point;
    out[k] = static_cast<uint8_t>(std::min(std::max(q, 0.f), 127.f));
  }
}

__attribute__((target("avx2"))) void quantize_avx2(const float* x, int64_t count, float inverse,
                                                    int32_t zero_point, uint8_t* out) {
  const __m256 scale = _mm256_set1_ps(inverse);
  const __m256i zero = _mm256_set1_epi32(zero_point), low = _mm256_setzero_si256(), high = _mm256_set1_epi32(127);
  int64_t k = 0;
  for (; k + 8 <= count; k += 8) {
    const __m256 rounded = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + k), scale),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256i q = _mm256_add_epi32(_mm256_cvtps_epi32(rounded), zero);
    q = _mm256_min_epi32(_mm256_max_epi32(q, low), high);
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), q);
    for (int j = 0; j < 8; ++j) out[k + j] = static_cast<uint8_t>(lanes[j]);
  }
  quantize_plain(x + k, count - k, inverse, zero_point, out + k);
}

at::Tensor small_rows(const at::Tensor& x, const PackedWeights& p) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  const int64_t rows = x.numel() / p.in;
  const float* src = x.data_ptr<float>();
  float lo, hi;
  (avx2 ? input_range_avx2 : input_range_plain)(src, x.numel(), lo, hi);
  float scale;
  int32_t zero_point;
  choose_input_params(lo, hi, scale, zero_point);
  const float inverse = 1.0f / scale;

  thread_local std::vector<uint8_t> quantized;
  thread_local std::vector<int32_t> acc;
  quantized.assign(rows * p.in_padded, 0);
  acc.resize(rows * p.out);
  for (int64_t m = 0; m < rows; ++m)
    (avx2 ? quantize_avx2 : quantize_plain)(src + m * p.in, p.in, inverse, zero_point, &quantized[m * p.in_padded]);
  dots(quantized.data(), rows, p, acc.data());

  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = p.out;
  auto out = at::empty(shape, x.options());
  float* dst = out.data_ptr<float>();
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = 0; n < p.out; ++n) {
      const int32_t corrected = acc[m * p.out + n] - zero_point * p.column_sums[n];
      dst[m * p.out + n] = std::fma(static_cast<float>(corrected), scale * p.scales[n], p.bias[n]);
    }
  return out;
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                       const at::Tensor& zero_points, const at::Tensor& bias, int64_t key) {
  std::shared_ptr<PackedWeights> packed;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto found = packed_cache().find(key);
    if (found != packed_cache().end()) packed = found->second;
  }
  if (!packed) {
    packed = pack(weight, scales, zero_points, bias);
    std::lock_guard<std::mutex> lock(cache_mutex);
    packed_cache()[key] = packed;
  }
  const int64_t rows = x.numel() / std::max<int64_t>(x.size(-1), 1);
  if (packed->symmetric && x.scalar_type() == at::kFloat && x.numel() > 0 && rows <= MAX_SMALL_ROWS &&
      x.size(-1) == packed->in) {
    return small_rows(x.contiguous(), *packed);
  }
  std::call_once(packed->fbgemm_once, [&] {
    static auto prepack = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_prepack", "");
    auto qweight = at::_make_per_channel_quantized_tensor(weight, scales, zero_points, 0);
    torch::jit::Stack packing{qweight, c10::optional<at::Tensor>(bias)};
    prepack.callBoxed(&packing);
    packed->fbgemm = packing[0];
  });
  static auto linear = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_dynamic", "");
  torch::jit::Stack stack{x, packed->fbgemm, true};
  linear.callBoxed(&stack);
  return stack[0].toTensor();
}
}  // namespace

TORCH_LIBRARY_IMPL(kanade_stream, CPU, m) {
  m.impl("linear_int8", &linear_int8);
}
