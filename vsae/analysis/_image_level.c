/* Image-level activations in one pass over a store's rows (SPEC 8), for vsae.analysis.stats.
 *
 * Rows are image-aligned: image i owns rows i*k .. i*k+k-1 of an [n*k, s] row-major array
 * (float16 as stored, or float32). For each image and column this computes, while the image's
 * k rows are in L1 cache:
 *   mean[i, c]  = sum_j w[i, j] * x[i*k + j, c]      (float32, summed in order j = 0..k-1)
 *   max[i, c]   = max_j x[i*k + j, c]                (NaN where any of its rows is NaN)
 *   positive[c] += #{j : x[i*k + j, c] > 0}          (int32, added to what the caller passes)
 *   fired[c]    += (max[i, c] > 0)                   (int32, added to what the caller passes)
 *
 * Two paths with the same operations in the same order, so identical results: portable C that
 * compilers vectorise (float16 widened with integer operations, exact in any floating-point
 * mode), and on x86-64 CPUs with AVX2 and F16C the same eight columns at a time with intrinsics
 * (2.5-4x faster than the portable loops there; bench/RESULTS.md, "Class means: the image-level
 * pass in C"). The build passes -ffp-contract=off: no fused multiply-add on any path. Loaded
 * through ctypes (vsae/analysis/kernels.py), which releases the GIL for the call.
 */
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define VSAE_X86 1
#endif

static inline float half_to_float(uint16_t h) {
    /* exact for every half, also with denormals-are-zero or flush-to-zero set: normal halves are
       rebiased with integer operations, subnormal ones are em * 2^-24 (a normal float, so no
       denormal enters the multiply), infinities and NaNs get the float's all-ones exponent */
    const int32_t em = (int32_t)(h & 0x7fff);
    const float small = (float)em * 5.9604644775390625e-08f; /* 2^-24; int32 converts in vectors */
    uint32_t bits, small_bits;
    memcpy(&small_bits, &small, 4);
    /* exponent rebiased by 112; infinities and NaNs by 224, to the all-ones exponent (masks, not
       branches, so that compilers vectorise it) */
    const uint32_t inf_nan = -(uint32_t)(em >= 0x7c00), subnormal = -(uint32_t)(em < 0x0400);
    bits = ((uint32_t)em << 13) + (112u << 23) + (inf_nan & (112u << 23));
    bits = (bits & ~subnormal) | (small_bits & subnormal);
    bits |= (uint32_t)(h & 0x8000u) << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#define TILE 16 /* columns whose sums, maxima and counts stay in registers over an image's rows */

static inline __attribute__((always_inline)) float load(const void *x, int64_t at, int half) {
    return half ? half_to_float(((const uint16_t *)x)[at]) : ((const float *)x)[at];
}

/* columns [c0, c0 + TILE) of image i (the full tile: the compiler keeps it in registers) */
static inline __attribute__((always_inline)) void tile(const void *restrict x, int half, int64_t i, int64_t c0,
                                                        int64_t k, int64_t s, const float *restrict w,
                                                        float *restrict mean, float *restrict mx,
                                                        int32_t *restrict positive, int32_t *restrict fired) {
    float acc[TILE], top[TILE];
    int32_t pos[TILE], nan[TILE];
    for (int t = 0; t < TILE; t++) {
        acc[t] = 0.0f;
        top[t] = -__builtin_inff();
        pos[t] = 0;
        nan[t] = 0;
    }
    for (int64_t j = 0; j < k; j++) {
        const int64_t at = (i * k + j) * s + c0;
        const float wj = w[i * k + j];
        for (int t = 0; t < TILE; t++) {
            const float v = load(x, at + t, half);
            acc[t] += wj * v;
            top[t] = v > top[t] ? v : top[t];
            nan[t] |= v != v;
            pos[t] += v > 0.0f;
        }
    }
    for (int t = 0; t < TILE; t++) {
        const float m = nan[t] ? __builtin_nanf("") : top[t];
        mean[i * s + c0 + t] = acc[t];
        mx[i * s + c0 + t] = m;
        positive[c0 + t] += pos[t];
        fired[c0 + t] += m > 0.0f;
    }
}

/* the last s % TILE columns of image i, one at a time */
static inline __attribute__((always_inline)) void tail(const void *restrict x, int half, int64_t i, int64_t c0,
                                                        int64_t k, int64_t s, const float *restrict w,
                                                        float *restrict mean, float *restrict mx,
                                                        int32_t *restrict positive, int32_t *restrict fired) {
    for (int64_t c = c0; c < s; c++) {
        float acc = 0.0f, top = -__builtin_inff();
        int nan = 0;
        for (int64_t j = 0; j < k; j++) {
            const float v = load(x, (i * k + j) * s + c, half);
            acc += w[i * k + j] * v;
            top = v > top ? v : top;
            nan |= v != v;
            positive[c] += v > 0.0f;
        }
        const float m = nan ? __builtin_nanf("") : top;
        mean[i * s + c] = acc;
        mx[i * s + c] = m;
        fired[c] += m > 0.0f;
    }
}

static inline __attribute__((always_inline)) void image_level(const void *restrict x, int half, int64_t n, int64_t k,
                                                               int64_t s, const float *restrict w,
                                                               float *restrict mean, float *restrict mx,
                                                               int32_t *restrict positive, int32_t *restrict fired) {
    const int64_t full = s - s % TILE;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t c0 = 0; c0 < full; c0 += TILE)
            tile(x, half, i, c0, k, s, w, mean, mx, positive, fired);
        tail(x, half, i, full, k, s, w, mean, mx, positive, fired);
    }
}

#ifdef VSAE_X86
/* The same computation eight columns at a time with AVX2 and F16C (the widening instruction):
   the same operations in the same order (multiply, then add: no fused multiply-add), so the
   results are identical to the portable loops above. */
__attribute__((target("avx2,f16c"))) static void image_level_avx2(const void *restrict x, int half, int64_t n,
                                                                   int64_t k, int64_t s, const float *restrict w,
                                                                   float *restrict mean, float *restrict mx,
                                                                   int32_t *restrict positive,
                                                                   int32_t *restrict fired) {
    const int64_t full = s - s % 8;
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i++) {
        for (int64_t c = 0; c < full; c += 8) {
            __m256 acc = zero, top = _mm256_set1_ps(-__builtin_inff()), nan = zero;
            __m256i pos = _mm256_setzero_si256();
            for (int64_t j = 0; j < k; j++) {
                const int64_t at = (i * k + j) * s + c;
                const __m256 v = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + at)))
                                      : _mm256_loadu_ps((const float *)x + at);
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(w[i * k + j]), v));
                top = _mm256_max_ps(v, top); /* v > top ? v : top, as the portable loop */
                nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                pos = _mm256_sub_epi32(pos, _mm256_castps_si256(_mm256_cmp_ps(v, zero, _CMP_GT_OQ)));
            }
            top = _mm256_blendv_ps(top, _mm256_set1_ps(__builtin_nanf("")), nan);
            _mm256_storeu_ps(mean + i * s + c, acc);
            _mm256_storeu_ps(mx + i * s + c, top);
            const __m256i up = _mm256_castps_si256(_mm256_cmp_ps(top, zero, _CMP_GT_OQ));
            _mm256_storeu_si256((__m256i *)(positive + c),
                                _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(positive + c)), pos));
            _mm256_storeu_si256((__m256i *)(fired + c),
                                _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(fired + c)), up));
        }
        tail(x, half, i, full, k, s, w, mean, mx, positive, fired);
    }
}
#endif

/* 1 where this CPU takes the AVX2 path */
int vsae_image_level_simd(void) {
#ifdef VSAE_X86
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* x: [n*k, s] float16 bits (half = 1) or float32 (half = 0); w: [n, k]; mean, mx: [n, s];
   positive, fired: [s], added to. simd = 0 forces the portable loops. */
void vsae_image_level(const void *x, int half, int64_t n, int64_t k, int64_t s, const float *w, float *mean,
                      float *mx, int32_t *positive, int32_t *fired, int simd) {
#ifdef VSAE_X86
    if (simd && vsae_image_level_simd()) {
        image_level_avx2(x, half, n, k, s, w, mean, mx, positive, fired);
        return;
    }
#endif
    image_level(x, half, n, k, s, w, mean, mx, positive, fired);
}
