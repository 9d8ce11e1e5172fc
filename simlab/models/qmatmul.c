/* Quantized matrix products for simlab's CPU decode: y = x W^T with W kept as a GGUF file's own codes.
 *
 * Built once per machine by simlab.models.native (cc -O3 -march=native -fopenmp) and called through
 * ctypes. Weights are "w = scale * code + offset" per group of weights along the input:
 *   q4: 4-bit codes 0..15, one scale and offset per 32 weights (Q4_K, Q4_0, Q4_1);
 *   q5: 5-bit codes, one scale per 32: with an offset per 32 codes 0..31 (Q5_K, Q5_1), without one
 *       code - 16 (Q5_0);
 *   q6: 6-bit codes, one scale per 16, code - 32 (Q6_K);
 *   q8: signed 8-bit codes, one scale per 16 or 32 weights, offset optional (Q8_0);
 * each in the layout layout.pack gives it (16 weight rows side by side, below), its scales and
 * offsets float32, or float16 where a product's bits say HALF (a file's own float16 ones: the same
 * values, in half the bytes). Activations are
 * rounded per 32 to two levels of signed 8-bit codes (the second rounds what the first left: ~15
 * bits, where llama.cpp keeps 8), or to one where a product's bits say ONE_LEVEL (--weights gguf-a8,
 * llama.cpp's rounding); each output's products are summed in integers per scale group,
 * then scaled and added in floats, one group after another. Every output row is computed alone, in
 * one fixed order, so a row's result does not depend on how many rows are in the batch.
 */
#define _DEFAULT_SOURCE /* (syscall, for AMX's permission) */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SIMLAB_AVX2 1
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define SIMLAB_VNNI 1
#define DPWSSD _mm256_dpwssd_epi32
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define SIMLAB_AVX512 1 /* the integer sums of two blocks at once; the float part stays per block */
#endif
#elif defined(__AVXVNNI__)
#define SIMLAB_VNNI 1
#define DPWSSD _mm256_dpwssd_avx_epi32
#endif
#endif

#if defined(SIMLAB_AVX512) && defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__linux__)
#define SIMLAB_AMX 1 /* (amx_tile) */
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define QK 32
#define ONE_LEVEL 256 /* added to a product's bits: its activations rounded to one level of codes */
#define HALF 512      /* added to a product's bits: its scales and offsets are float16 */

int simlab_qmatmul_version(void) { return 13; } /* (the kept prompt chunks' key: raised when the bits change) */

#ifdef SIMLAB_AMX
/* Linux lends a process AMX's tile state only when asked. */
static int amx_ready = -1; /* -1: not asked yet */
static int amx_granted(void) {
    int ready = __atomic_load_n(&amx_ready, __ATOMIC_RELAXED);
    if (ready < 0) {
        ready = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        __atomic_store_n(&amx_ready, ready, __ATOMIC_RELAXED);
    }
    return ready;
}
#endif

int simlab_qmatmul_simd(void) { /* 0: portable C, 2: AVX2, 3: with VNNI's 16-bit dot products, 4: AVX-512,
                                  * 5: AVX-512 and AMX's tiles for prefills */
#if defined(SIMLAB_AMX)
    return amx_granted() ? 5 : 4;
#elif defined(SIMLAB_AVX512)
    return 4;
#elif defined(SIMLAB_VNNI)
    return 3;
#elif defined(SIMLAB_AVX2)
    return 2;
#else
    return 0;
#endif
}

/* Weight bytes read ahead of the ones being summed: the hardware prefetcher stops at each 4 KiB page,
 * and a weight larger than the cache (the unembedding) then ran at half the memory's rate. */
#define PREFETCH 4096
#define STEPS 8 /* steps of four inputs per block of 32 */
#ifdef SIMLAB_AVX512 /* input rows summed against each step's codes at once */
#define RM 8
#else
#define RM 4
#endif

/* 1 / d for a block's scale, or 0 where that is not a number (a block of zeros, one too small for its
 * inverse to be a float, or a NaN or infinite one): its codes are then all 0. */
static inline float inverse(float d) {
    float inv = d != 0.0f ? 1.0f / d : 0.0f;
    return inv - inv == 0.0f ? inv : 0.0f;
}

#ifndef SIMLAB_AVX512 /* (the AVX-512 build rounds with quantize_row512) */
/* One block of 32 floats as signed 8-bit codes q with scale d = max|v| / 127 (NaN where a value is
 * NaN or infinite: every output it goes into is then NaN, as the float product's would be). */
static float round_block(const float *v, int8_t *q, int *sum) {
    float amax = 0.0f;
    int finite = 1;
    for (int i = 0; i < QK; i++) {
        float a = fabsf(v[i]);
        finite &= a <= 3.402823466e+38f;
        amax = a > amax ? a : amax;
    }
    float d = finite ? amax / 127.0f : NAN;
    float inv = inverse(d);
    *sum = 0;
    for (int i = 0; i < QK; i++) {
        int c = inv != 0.0f ? (int)nearbyintf(v[i] * inv) : 0;
        c = c > 127 ? 127 : (c < -127 ? -127 : c);
        q[i] = (int8_t)c;
        *sum += c;
    }
    return d;
}

/* One row of K floats -> two levels of 8-bit codes per block of 32: x ~ d1 q1 + d2 q2 with
 * d2 = d1 / 256, where q2 rounds what q1 left (so about 15 bits per value, and 256 q1 + q2 is one
 * integer). q1, q2 (K); d1, d2, sx (K/32), sx = d2 sum(256 q1 + q2), for the weights' offsets.
 * `levels` 1: q2's codes are all 0 (x ~ d1 q1, llama.cpp's Q8_0 rounding of its activations). */
static void quantize_row(const float *x, int64_t k, int levels, int8_t *q1, int8_t *q2, float *d1, float *d2,
                         float *sx) {
    for (int64_t b = 0; b < k / QK; b++) {
        int64_t at = b * QK;
        float rest[QK];
        int s1, s2;
        d1[b] = round_block(x + at, q1 + at, &s1);
        for (int i = 0; i < QK; i++) rest[i] = x[at + i] - d1[b] * (float)q1[at + i];
        d2[b] = d1[b] / 256.0f;
        float inv = levels == 2 ? inverse(d2[b]) : 0.0f; /* one level: q2's codes all 0 */
        s2 = 0;
        for (int i = 0; i < QK; i++) {
            int c = inv != 0.0f ? (int)nearbyintf(rest[i] * inv) : 0;
            c = c > 127 ? 127 : (c < -127 ? -127 : c);
            q2[at + i] = (int8_t)c;
            s2 += c;
        }
        sx[b] = d2[b] * (float)(256 * s1 + s2);
    }
}

#else
/* quantize_row's arithmetic 16 values at a time: the same operations on each value (a max is a max
 * in any order, the code sums are integers), so the same bits (tested against the other builds). */
static inline __m512i codes16(__m512 v, float inv) {
    if (inv == 0.0f) return _mm512_setzero_si512();
    __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inv))); /* nearbyintf's rounding */
    return _mm512_min_epi32(_mm512_max_epi32(c, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
}

static void quantize_row512(const float *x, int64_t k, int levels, int8_t *q1, int8_t *q2, float *d1, float *d2,
                            float *sx) {
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < k / QK; b++) {
        int64_t at = b * QK;
        __m512 v0 = _mm512_loadu_ps(x + at), v1 = _mm512_loadu_ps(x + at + 16);
        __m512 big = _mm512_max_ps(_mm512_and_ps(v0, sign), _mm512_setzero_ps()); /* NaN: passed over, */
        big = _mm512_max_ps(_mm512_and_ps(v1, sign), big);
        int odd = _mm512_fpclass_ps_mask(v0, 0x99) | _mm512_fpclass_ps_mask(v1, 0x99); /* and made d */
        float d = odd ? NAN : _mm512_reduce_max_ps(big) / 127.0f;
        float inv = inverse(d);
        __m512i a0 = codes16(v0, inv), a1 = codes16(v1, inv);
        __m512 dd = _mm512_set1_ps(d);
        __m512 r0 = _mm512_sub_ps(v0, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(a0)));
        __m512 r1 = _mm512_sub_ps(v1, _mm512_mul_ps(dd, _mm512_cvtepi32_ps(a1)));
        float e = d / 256.0f;
        float inv2 = inverse(e);
        __m512i b0 = _mm512_setzero_si512(), b1 = b0;
        if (levels == 2) b0 = codes16(r0, inv2), b1 = codes16(r1, inv2);
        int s1 = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1));
        int s2 = _mm512_reduce_add_epi32(_mm512_add_epi32(b0, b1));
        d1[b] = d;
        d2[b] = e;
        sx[b] = e * (float)(256 * s1 + s2);
        _mm_storeu_si128((__m128i *)(q1 + at), _mm512_cvtepi32_epi8(a0));
        _mm_storeu_si128((__m128i *)(q1 + at + 16), _mm512_cvtepi32_epi8(a1));
        _mm_storeu_si128((__m128i *)(q2 + at), _mm512_cvtepi32_epi8(b0));
        _mm_storeu_si128((__m128i *)(q2 + at + 16), _mm512_cvtepi32_epi8(b1));
    }
}
#endif

/* The weights' layout (layout.pack and simlab_pack make it from a file's codes): rows in groups of 16 (the last
 * padded with zero codes and scales), each group's codes block by block, a block's 32 inputs in
 * STEPS steps of four, a step holding the 16 rows' four codes each (position i = 4 row + input):
 *   q4: 32 bytes a step, byte i: low nibble position i, high nibble position 32 + i;
 *   q5, q6: a block's eight steps of q4's low four bits (256 bytes), then each step's higher bits
 *       as bit planes of 8 bytes (q5: bit 4; q6: bit 4, then bit 5), bit i of a plane position i;
 *   q8: 64 bytes a step, byte i: position i (signed).
 * Scales per group, block and scale group (per = 32 / group of them) of the 16 rows side by side;
 * offsets per group and block likewise. Every output (input row r, weight row c) is, in every
 * build and for any batch:
 *   I(g) = sum over scale group g's inputs j of code(c, j) (256 q1(r, j) + q2(r, j)), an int32
 *          (q5 and q6 without offsets: code(c, j) - 2^(bits - 1), the same integers as q8's);
 *   acc = fma(scale(c, g) d2(r, b), (float) I(g), acc) over the scale groups in order, from 0;
 *   off = off + offset(c, b) sx(r, b) over the blocks in order, from 0 (0 without offsets);
 *   out = acc + off.
 * The integers are exact, so each build sums them its own way; the float part is these operations
 * in this order everywhere. */

/* A block's bytes (its 16 rows' codes for 32 inputs): q4 256, q5 320, q6 384, q8 512. */
static inline int64_t block_bytes(int bits) { return bits == 8 ? 512 : 256 + 64 * (bits - 4); }

/* What a q5 or q6 weight without offsets takes from each code (its file's code - 16 or - 32). */
static inline int code_bias(int bits, const void *po) { return bits > 4 && bits < 8 && !po ? 1 << (bits - 1) : 0; }

/* float16 to float32 (exact: every float16 is a float32). */
static inline float half_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 31) bits = sign | 0x7f800000u | (m << 13); /* infinite or NaN */
    else if (e) bits = sign | ((e + 112) << 23) | (m << 13);
    else if (!m) bits = sign;
    else { /* subnormal: m 2^-24, made normal */
        e = 113;
        while (!(m & 1024)) m <<= 1, e--;
        bits = sign | (e << 23) | ((m & 1023) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Scale or offset i of a list of float32 ones, or of float16 ones (`half`). */
static inline float scale_at(const void *p, int64_t i, int half) {
    return half ? half_float(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* Code j (0..31) of weight row c (0..15) in a block of the layout at pb, as the sums take it. */
static inline int code_at(const uint8_t *pb, int bits, int c, int j, int bias) {
    int at = (j / 4) * (bits == 8 ? 64 : 32), i = 4 * c + j % 4;
    if (bits == 8) return (int8_t)pb[at + i];
    int code = c < 8 ? pb[at + i] & 15 : pb[at + i - 32] >> 4;
    for (int plane = 0; plane < bits - 4; plane++) {
        const uint8_t *bitsat = pb + 256 + (j / 4) * 8 * (bits - 4) + 8 * plane;
        code |= ((bitsat[i / 8] >> (i % 8)) & 1) << (4 + plane);
    }
    return code - bias;
}

/* Every build's tile: R input rows (quantized: q1, q2, 256 q1 + q2 as x16, d2 and sx per block, gs the
 * sums of 256 q1 + q2 per 16) against the group of 16 weight rows at p (scales ps, offsets po), into
 * y's first `lanes` columns (rows n apart). A list, not a struct: passing the inputs as one made the
 * AVX-512 Q6_K product 12% slower (its registers allocated otherwise). */
#define TILE_PARAMS                                                                                        \
    int bits, int group, int half, int R, const uint8_t *p, const void *ps, const void *po, const int8_t *q1, \
        const int8_t *q2, const int16_t *x16, const float *d2, const float *sx, const int32_t *gs, int64_t k, \
        float *y, int64_t n, int lanes

#if defined(SIMLAB_AVX512)
/* 16 scales or offsets from i on, float32 or float16 */
static inline __m512 scales16(const void *p, int64_t i, int half) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)))
                : _mm512_loadu_ps((const float *)p + i);
}

/* Step s's codes of a q4, q5 or q6 block at pb, positions 0 to 63 (unsigned). A code's bits above
 * four are added from their planes by masked byte adds. */
static inline __m512i codes64(const uint8_t *pb, int bits, int s) {
    /* (one broadcast load shifted per lane by vpsrlvw instead made q4's one-level prefill 1.75x
     * slower on Zen 4) */
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i v = _mm256_loadu_si256((const __m256i *)(pb + s * 32));
    __m512i c = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, low)),
                                   _mm256_and_si256(_mm256_srli_epi16(v, 4), low), 1);
    if (bits > 4) {
        const uint8_t *planes = pb + 256 + s * 8 * (bits - 4);
        uint64_t m4, m5;
        memcpy(&m4, planes, 8);
        c = _mm512_mask_add_epi8(c, (__mmask64)m4, c, _mm512_set1_epi8(16));
        if (bits == 6) {
            memcpy(&m5, planes + 8, 8);
            c = _mm512_mask_add_epi8(c, (__mmask64)m5, c, _mm512_set1_epi8(32));
        }
    }
    return c;
}

/* Row r's two levels of codes (q1, q2: K each; q2 null for one level) into `packed` as the AVX-512
 * tile reads a whole tile of RM rows: the tile's rows side by side, a step of four inputs at a time,
 * w = 8 bytes a row (q1's four, then q2's; one level: 4, q1's): ((tile K / 4 + block STEPS + step)
 * RM + row) w bytes in. A product of many rows then reads one stream of inputs, not two a row (16
 * streams for eight rows: Q4_0's 8,192-input product of 64 rows ran at half the rate). A last tile
 * of fewer rows, and a decode step's few, read q1 and q2 as they are (packed, four rows' products
 * took 8% longer). */
static void pack_row(const int8_t *q1, const int8_t *q2, int64_t k, int64_t r, int8_t *packed) {
    const int64_t w = q2 ? 8 : 4;
    int8_t *to = packed + w / 4 * (r - r % RM) * k + (r % RM) * w;
    for (int64_t j = 0; j < k / 4; j++) {
        memcpy(to + j * RM * w, q1 + 4 * j, 4);
        if (q2) memcpy(to + j * RM * w + 4, q2 + 4 * j, 4);
    }
}

/* R input rows against a group of 16 weight rows: each lane one weight row. VNNI's byte products
 * take q4's, q5's and q6's codes as they are and q8's plus 128 (less 128 times the inputs' sum,
 * `gs`: per row and 16 inputs, the sum of 256 q1 + q2, the first of a block's two its whole sum
 * where the block has one scale group; q5 and q6 without offsets less 16 or 32 times it). */
static inline __attribute__((always_inline)) void tile(TILE_PARAMS) {
    int64_t blocks = k / QK, bytes = block_bytes(bits);
    const int per = QK / group, steps = group / 4, bias = bits == 8 ? 128 : code_bias(bits, po);
    const int shift = bias == 128 ? 7 : bias == 32 ? 5 : 4;
    const int packed = R == RM; /* (pack_row's rows) */
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    (void)x16;
    __m512 acc[RM], off[RM];
    for (int r = 0; r < R; r++) acc[r] = off[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *pb = p + b * bytes;
        for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch((const char *)pb + PREFETCH + at, _MM_HINT_T0);
        for (int q = 0; q < per; q++) {
            __m512i a1[RM], a2[RM];
            for (int r = 0; r < R; r++) a1[r] = a2[r] = _mm512_setzero_si512();
            for (int s = q * steps; s < (q + 1) * steps; s++) {
                __m512i c = bits == 8 ? _mm512_xor_si512(_mm512_loadu_si512((const void *)(pb + s * 64)), flip)
                                      : codes64(pb, bits, s);
                for (int r = 0; r < R; r++) {
                    int32_t x1, x2;
                    if (q2) { /* (null for one level: its codes are 0) */
                        int64_t at = packed ? ((b * STEPS + s) * R + r) * 8 : r * k + b * QK + 4 * s;
                        memcpy(&x1, q1 + at, 4);
                        memcpy(&x2, q2 + at, 4);
                        a1[r] = _mm512_dpbusd_epi32(a1[r], c, _mm512_set1_epi32(x1));
                        a2[r] = _mm512_dpbusd_epi32(a2[r], c, _mm512_set1_epi32(x2));
                    } else {
                        int64_t at = packed ? ((b * STEPS + s) * R + r) * 4 : r * k + b * QK + 4 * s;
                        memcpy(&x1, q1 + at, 4);
                        a1[r] = _mm512_dpbusd_epi32(a1[r], c, _mm512_set1_epi32(x1));
                    }
                }
            }
            __m512 sc = scales16(ps, (b * per + q) * 16, half);
            for (int r = 0; r < R; r++) {
                __m512i t = _mm512_add_epi32(_mm512_slli_epi32(a1[r], 8), a2[r]);
                if (bias) { /* bias times the scale group's sum: a power of two, shifted (a product made
                             * in a general register and moved over took Q8_0's prefill 1.6x as long) */
                    const int32_t *g = gs + (r * blocks + b) * 2;
                    t = _mm512_sub_epi32(t, _mm512_slli_epi32(_mm512_set1_epi32(g[per == 1 ? 0 : q]), shift));
                }
                __m512 sd = _mm512_mul_ps(sc, _mm512_set1_ps(d2[r * blocks + b]));
                acc[r] = _mm512_fmadd_ps(sd, _mm512_cvtepi32_ps(t), acc[r]);
            }
        }
        if (po) {
            __m512 o = scales16(po, b * 16, half);
            for (int r = 0; r < R; r++) off[r] = _mm512_add_ps(off[r], _mm512_mul_ps(o, _mm512_set1_ps(sx[r * blocks + b])));
        }
    }
    __mmask16 keep = (__mmask16)((1u << lanes) - 1);
    for (int r = 0; r < R; r++) _mm512_mask_storeu_ps(y + r * n, keep, _mm512_add_ps(acc[r], off[r]));
}

#elif defined(SIMLAB_AVX2)
/* 8 scales or offsets from i on, float32 or float16 (with F16C's conversion where the CPU has it) */
static inline __m256 scales8(const void *p, int64_t i, int half) {
    if (!half) return _mm256_loadu_ps((const float *)p + i);
#ifdef __F16C__
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
#else
    float f[8];
    for (int j = 0; j < 8; j++) f[j] = half_float(((const uint16_t *)p)[i + j]);
    return _mm256_loadu_ps(f);
#endif
}

/* The 32 bits at p as 32 bytes, all ones where a bit is set (bit i: byte i). */
static inline __m256i bytes_of_bits(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), spread);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

/* Step s's codes of a group's rows 8h to 8h + 7 as signed bytes, as the sums take them (code_at). */
static inline __m256i codes8(const uint8_t *pb, int bits, int s, int h, int bias) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i *)(pb + s * 64 + h * 32));
    __m256i v = _mm256_loadu_si256((const __m256i *)(pb + s * 32));
    __m256i c = _mm256_and_si256(h == 0 ? v : _mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
    if (bits > 4) {
        const uint8_t *planes = pb + 256 + s * 8 * (bits - 4) + 4 * h;
        c = _mm256_or_si256(c, _mm256_and_si256(bytes_of_bits(planes), _mm256_set1_epi8(16)));
        if (bits == 6) c = _mm256_or_si256(c, _mm256_and_si256(bytes_of_bits(planes + 8), _mm256_set1_epi8(32)));
        if (bias) c = _mm256_sub_epi8(c, _mm256_set1_epi8((char)bias));
    }
    return c;
}

/* The same for 8 weight rows per vector (a group's rows 0-7 and 8-15 in two), on 16-bit values: the
 * codes widened, times the inputs' 256 q1 + q2 (`x16`) in pairs (vpmaddwd, or VNNI's vpdpwssd), a
 * row's two pairs of a step in two lanes, added when its scale group is done. One pass over the
 * codes for both halves: a decode step's few rows stream the weight once. */
static inline __attribute__((always_inline)) void tile_both(TILE_PARAMS) {
    int64_t blocks = k / QK, bytes = block_bytes(bits);
    const int per = QK / group, steps = group / 4, bias = code_bias(bits, po);
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    (void)q1, (void)q2, (void)gs;
    __m256 acc[2][RM], off[2][RM];
    for (int h = 0; h < 2; h++)
        for (int r = 0; r < R; r++) acc[h][r] = off[h][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        const uint8_t *pb = p + b * bytes;
        for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch((const char *)pb + PREFETCH + at, _MM_HINT_T0);
        for (int q = 0; q < per; q++) {
            __m256i lo[2][RM], hi[2][RM]; /* of each eight weight rows, rows 0-3 and 4-7: two lanes each */
            for (int h = 0; h < 2; h++)
                for (int r = 0; r < R; r++) lo[h][r] = hi[h][r] = _mm256_setzero_si256();
            for (int s = q * steps; s < (q + 1) * steps; s++) {
                __m256i ca[2], cb[2];
                for (int h = 0; h < 2; h++) {
                    __m256i c = codes8(pb, bits, s, h, bias);
                    ca[h] = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(c));
                    cb[h] = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(c, 1));
                }
                for (int r = 0; r < R; r++) {
                    int64_t four;
                    memcpy(&four, x16 + r * k + b * QK + 4 * s, 8);
                    __m256i x = _mm256_set1_epi64x(four);
                    for (int h = 0; h < 2; h++) {
#ifdef SIMLAB_VNNI
                        lo[h][r] = DPWSSD(lo[h][r], ca[h], x);
                        hi[h][r] = DPWSSD(hi[h][r], cb[h], x);
#else
                        lo[h][r] = _mm256_add_epi32(lo[h][r], _mm256_madd_epi16(ca[h], x));
                        hi[h][r] = _mm256_add_epi32(hi[h][r], _mm256_madd_epi16(cb[h], x));
#endif
                    }
                }
            }
            for (int h = 0; h < 2; h++) {
                __m256 sc = scales8(ps, (b * per + q) * 16 + h * 8, half);
                for (int r = 0; r < R; r++) {
                    __m256i t = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo[h][r], hi[h][r]), order);
                    __m256 sd = _mm256_mul_ps(sc, _mm256_set1_ps(d2[r * blocks + b]));
                    acc[h][r] = _mm256_fmadd_ps(sd, _mm256_cvtepi32_ps(t), acc[h][r]);
                }
            }
        }
        for (int h = 0; po && h < 2; h++) {
            __m256 o = scales8(po, b * 16 + h * 8, half);
            for (int r = 0; r < R; r++)
                off[h][r] = _mm256_add_ps(off[h][r], _mm256_mul_ps(o, _mm256_set1_ps(sx[r * blocks + b])));
        }
    }
    for (int h = 0; h < 2 && 8 * h < lanes; h++) {
        int here = lanes - 8 * h < 8 ? lanes - 8 * h : 8;
        __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(here), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int r = 0; r < R; r++) _mm256_maskstore_ps(y + r * n + 8 * h, keep, _mm256_add_ps(acc[h][r], off[h][r]));
    }
}

/* tile_both's sums with the group's rows 0-7 first, then 8-15: fewer registers a row, for more rows */
static inline __attribute__((always_inline)) void tile_apart(TILE_PARAMS) {
    int64_t blocks = k / QK, bytes = block_bytes(bits);
    const int per = QK / group, steps = group / 4, bias = code_bias(bits, po);
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    (void)q1, (void)q2, (void)gs;
    for (int h = 0; h < 2 && 8 * h < lanes; h++) {
        __m256 acc[RM], off[RM];
        for (int r = 0; r < R; r++) acc[r] = off[r] = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks; b++) {
            const uint8_t *pb = p + b * bytes;
            if (h == 0)
                for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch((const char *)pb + PREFETCH + at, _MM_HINT_T0);
            for (int q = 0; q < per; q++) {
                __m256i lo[RM], hi[RM]; /* rows 0-3 and 4-7 of the eight: two lanes each */
                for (int r = 0; r < R; r++) lo[r] = hi[r] = _mm256_setzero_si256();
                for (int s = q * steps; s < (q + 1) * steps; s++) {
                    __m256i c = codes8(pb, bits, s, h, bias);
                    __m256i c16a = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(c));
                    __m256i c16b = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(c, 1));
                    for (int r = 0; r < R; r++) {
                        int64_t four;
                        memcpy(&four, x16 + r * k + b * QK + 4 * s, 8);
                        __m256i x = _mm256_set1_epi64x(four);
#ifdef SIMLAB_VNNI
                        lo[r] = DPWSSD(lo[r], c16a, x);
                        hi[r] = DPWSSD(hi[r], c16b, x);
#else
                        lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(c16a, x));
                        hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(c16b, x));
#endif
                    }
                }
                __m256 sc = scales8(ps, (b * per + q) * 16 + h * 8, half);
                for (int r = 0; r < R; r++) {
                    __m256i t = _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(lo[r], hi[r]), order);
                    __m256 sd = _mm256_mul_ps(sc, _mm256_set1_ps(d2[r * blocks + b]));
                    acc[r] = _mm256_fmadd_ps(sd, _mm256_cvtepi32_ps(t), acc[r]);
                }
            }
            if (po) {
                __m256 o = scales8(po, b * 16 + h * 8, half);
                for (int r = 0; r < R; r++) off[r] = _mm256_add_ps(off[r], _mm256_mul_ps(o, _mm256_set1_ps(sx[r * blocks + b])));
            }
        }
        int here = lanes - 8 * h < 8 ? lanes - 8 * h : 8;
        __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(here), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int r = 0; r < R; r++) _mm256_maskstore_ps(y + r * n + 8 * h, keep, _mm256_add_ps(acc[r], off[r]));
    }
}

/* Both halves in one pass for one or two rows (a decode step's), one after the other for more. */
static inline __attribute__((always_inline)) void tile(TILE_PARAMS) {
    if (R <= 2) tile_both(bits, group, half, R, p, ps, po, q1, q2, x16, d2, sx, gs, k, y, n, lanes);
    else tile_apart(bits, group, half, R, p, ps, po, q1, q2, x16, d2, sx, gs, k, y, n, lanes);
}

#else
/* The definition written out, one output at a time. */
static void tile(TILE_PARAMS) {
    int64_t blocks = k / QK, bytes = block_bytes(bits);
    const int per = QK / group, bias = code_bias(bits, po);
    (void)x16, (void)gs;
    for (int r = 0; r < R; r++)
        for (int c = 0; c < lanes; c++) {
            float acc = 0.0f, off = 0.0f;
            for (int64_t b = 0; b < blocks; b++) {
                const uint8_t *pb = p + b * bytes;
                for (int q = 0; q < per; q++) {
                    int32_t sum = 0;
                    for (int j = q * group; j < (q + 1) * group; j++)
                        sum += code_at(pb, bits, c, j, bias) * (256 * q1[r * k + b * QK + j] + q2[r * k + b * QK + j]);
                    acc = fmaf(scale_at(ps, (b * per + q) * 16 + c, half) * d2[r * blocks + b], (float)sum, acc);
                }
                if (po) off += scale_at(po, b * 16 + c, half) * sx[r * blocks + b];
            }
            y[r * n + c] = acc + off;
        }
}
#endif

/* A group's q4, q5 or q6 codes (`blocks` blocks at p) in q8's layout, each the signed byte its sums
 * take (code - bias): a prefill's many input rows then meet q8's tile, which sums the same integers
 * with fewer instructions a step than q5's and q6's (their planes' masked adds: 1.3x the time at
 * 512 rows), and the codes are unpacked once instead of once per RM rows. */
static void widen(const uint8_t *p, int bits, int bias, int64_t blocks, int8_t *out) {
    int64_t bytes = block_bytes(bits);
    for (int64_t b = 0; b < blocks; b++)
        for (int s = 0; s < STEPS; s++) {
            const uint8_t *pb = p + b * bytes;
            int8_t *to = out + (b * STEPS + s) * 64;
#if defined(SIMLAB_AVX512)
            _mm512_storeu_si512((void *)to, _mm512_sub_epi8(codes64(pb, bits, s), _mm512_set1_epi8((char)bias)));
#elif defined(SIMLAB_AVX2)
            for (int h = 0; h < 2; h++) /* (codes8 takes the bias from q5's and q6's; q4's is 0) */
                _mm256_storeu_si256((__m256i *)(to + 32 * h), codes8(pb, bits, s, h, bias));
#else
            for (int i = 0; i < 64; i++) to[i] = (int8_t)code_at(pb, bits, i / 4, 4 * s + i % 4, bias);
#endif
        }
}

#ifdef SIMLAB_AMX
/* AMX (Intel's tiles, Sapphire Rapids on), for a prefill's rows 16 at a time: a scale group's integer
 * sums for 16 input rows x 16 weight rows in one instruction per level (signed bytes: the codes widened
 * to q8's layout, code - bias, against q1's or q2's), the same integers as tile()'s, then tile()'s float
 * steps in its order. Each sum tile goes through memory to the vectors that scale it (the tiles have no
 * other way out), and the tiles' instructions do not overlap the vectors' here: measured on a Xeon
 * (Sapphire Rapids, 2 cores) in products of 512 rows, two levels / one, against tile(): Q8_0 1.7x /
 * 1.5x, Q5_K 1.56x / 1.35x, Q6_K 1.33x / 1.23x (its scale groups of 16 halve each instruction's work).
 * Linux lends a process the tiles' state only when asked (arch_prctl); refused, tile() serves. */
/* gcc's _tile_loadd declares no memory read and _tile_loadconfig only the config's first 8 bytes: a
 * compiler fence before them keeps every store they read (the widened codes, the whole config). */
#define FENCE() __asm__ volatile("" ::: "memory")
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* Tiles 0, 1 (even scale groups) and 5, 6 (odd ones): q1's and q2's sums, 16 input rows x 16 weight rows
 * of int32; 2, 3: q1's and q2's codes, 16 rows x a scale group; 4 (even) and 7 (odd): the weights' codes
 * of a scale group, a step of four inputs a row. */
static void amx_configure(int group) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 16;
    for (int t = 2; t < 4; t++) c.colsb[t] = (uint16_t)group;
    c.rows[4] = c.rows[7] = (uint8_t)(group / 4);
    FENCE();
    _tile_loadconfig(&c);
}

/* Scale group i's sums into s (q1's) and s + 256 (q2's), with sum tiles T1, T2 and weight tile TB. */
#define AMX_SUMS(T1, T2, TB, i, s)                                                                          \
    do {                                                                                                    \
        const int64_t at_ = (i) / per * QK + (i) % per * group;                                             \
        FENCE();                                                                                            \
        _tile_zero(T1);                                                                                     \
        _tile_loadd(TB, w + at_ * 16, 64);                                                                  \
        _tile_loadd(2, q1 + at_, k);                                                                        \
        _tile_dpbssd(T1, 2, TB);                                                                            \
        _tile_stored(T1, s, 64);                                                                            \
        if (q2) {                                                                                           \
            _tile_zero(T2);                                                                                 \
            _tile_loadd(3, q2 + at_, k);                                                                    \
            _tile_dpbssd(T2, 3, TB);                                                                        \
            _tile_stored(T2, s + 256, 64);                                                                  \
        }                                                                                                   \
    } while (0)

/* 16 input rows (q1, q2: row-major, K apart; q2 null for one level) against a group of 16 weight rows
 * as signed bytes in q8's layout (w), into y's first `lanes` columns: tile()'s output, bit for bit.
 * The tiles sum the next scale group while the vectors scale this one's sums. */
static void amx_tile(int group, int half, const int8_t *w, const void *ps, const void *po, const int8_t *q1,
                     const int8_t *q2, const float *d2, const float *sx, int64_t k, float *y, int64_t n, int lanes) {
    const int64_t blocks = k / QK;
    const int per = QK / group;
    const int64_t groups = blocks * per;
    int32_t s[2][512] __attribute__((aligned(64)));
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    AMX_SUMS(0, 1, 4, 0, s[0]);
    for (int64_t i = 0; i < groups; i++) {
        if (i + 1 < groups) {
            if (i & 1) AMX_SUMS(0, 1, 4, i + 1, s[0]);
            else AMX_SUMS(5, 6, 7, i + 1, s[1]);
        }
        const int32_t *t1 = s[i & 1];
        const int64_t b = i / per;
        __m512 sc = scales16(ps, i * 16, half);
        for (int r = 0; r < 16; r++) {
            __m512i t = _mm512_slli_epi32(_mm512_load_si512(t1 + 16 * r), 8);
            if (q2) t = _mm512_add_epi32(t, _mm512_load_si512(t1 + 256 + 16 * r));
            __m512 sd = _mm512_mul_ps(sc, _mm512_set1_ps(d2[r * blocks + b]));
            acc[r] = _mm512_fmadd_ps(sd, _mm512_cvtepi32_ps(t), acc[r]);
        }
    }
    __mmask16 keep = (__mmask16)((1u << lanes) - 1);
    for (int r = 0; r < 16; r++) {
        __m512 off = _mm512_setzero_ps();
        if (po)
            for (int64_t b = 0; b < blocks; b++)
                off = _mm512_add_ps(off, _mm512_mul_ps(scales16(po, b * 16, half), _mm512_set1_ps(sx[r * blocks + b])));
        _mm512_mask_storeu_ps(y + r * n, keep, _mm512_add_ps(acc[r], off));
    }
}
#endif

/* R rows (a constant in each case, up to RM) */
#define TILE(BITS, GROUP, RR, A2)                                                                          \
    if (RR <= RM) tile(BITS, GROUP, half, RR, p, ps, po, a1, A2, b16, e2, sr, g2, k, o, n, lanes)
#define ROWS(BITS, GROUP, A2)                                                                              \
    switch (R) {                                                                                           \
    case 8: TILE(BITS, GROUP, 8, A2); break;                                                               \
    case 7: TILE(BITS, GROUP, 7, A2); break;                                                               \
    case 6: TILE(BITS, GROUP, 6, A2); break;                                                               \
    case 5: TILE(BITS, GROUP, 5, A2); break;                                                               \
    case 4: TILE(BITS, GROUP, 4, A2); break;                                                               \
    case 3: TILE(BITS, GROUP, 3, A2); break;                                                               \
    case 2: TILE(BITS, GROUP, 2, A2); break;                                                               \
    default: TILE(BITS, GROUP, 1, A2);                                                                     \
    }
#ifdef SIMLAB_AVX512 /* one level: the tile made without the second level's dot products */
#define LEVELS(BITS, GROUP)                                                                                \
    if (levels == 1) {                                                                                     \
        ROWS(BITS, GROUP, 0)                                                                               \
    } else {                                                                                               \
        ROWS(BITS, GROUP, a2)                                                                              \
    }
#else /* (the other builds sum 256 q1 + q2 as one 16-bit value: q2's zeros cost the same) */
#define LEVELS(BITS, GROUP) ROWS(BITS, GROUP, a2)
#endif

/* y (M, N) = x W^T for a q4, q5, q6 or q8 weight (bits 4, 5, 6, 8) of N rows in the layout above,
 * given as `parts` weights of one layout whose rows follow one another (q/k/v read from where each
 * lies, not copied together: ws, scales, offsets (an offset may be null), ns their row counts). x
 * (M, K) float is first rounded into two levels of codes in `scratch` (2 M K bytes, 256 q1 + q2 as
 * M K 16-bit ints (AVX-512: the whole tiles' codes packed there instead, pack_row), then 3 M K/32
 * floats and 2 M K/32 ints: simlab_qlinear_scratch bytes); into one
 * (q2's codes all 0) where bits has ONE_LEVEL added; scales and offsets float16 where it has HALF
 * added, else float32. Groups of 16 weight rows split over
 * threads; each meets the inputs RM rows at a time (the same arithmetic per input row whatever M
 * is). */
void simlab_qlinear_parts(const float *x, int64_t m, int64_t k, int parts, const void *const *ws,
                          const void *const *scales, const void *const *offsets, const int64_t *ns, int bits,
                          int group, float *y, void *scratch, int threads) {
    const int levels = bits & ONE_LEVEL ? 1 : 2, half = bits & HALF ? 1 : 0, size = half ? 2 : 4;
    bits &= ~(ONE_LEVEL | HALF);
    int64_t blocks = k / QK, blocks_all = m * blocks;
    int8_t *q1 = (int8_t *)scratch, *q2 = q1 + m * k;
    int16_t *x16 = (int16_t *)(q2 + m * k); /* 256 q1 + q2 */
    float *d1 = (float *)(x16 + m * k), *d2 = d1 + blocks_all, *sx = d2 + blocks_all;
    int32_t *gs = (int32_t *)(sx + blocks_all); /* per row and 16 inputs: the sum of 256 q1 + q2 */
#ifdef SIMLAB_AMX /* rows 16 at a time through AMX's tiles, the rest tile() (all packed: a thread */
    const int amx = m >= 16 && amx_granted(); /* that finds no memory to widen codes takes all) */
#endif
#pragma omp parallel for num_threads(threads) schedule(static) if (m * k >= 16384 && threads > 1)
    for (int64_t r = 0; r < m; r++) {
        int8_t *a = q1 + r * k, *c = q2 + r * k;
#ifdef SIMLAB_AVX512
        quantize_row512(x + r * k, k, levels, a, c, d1 + r * blocks, d2 + r * blocks, sx + r * blocks);
        if (r < m - m % RM) pack_row(a, levels == 2 ? c : 0, k, r, (int8_t *)x16);
#else
        quantize_row(x + r * k, k, levels, a, c, d1 + r * blocks, d2 + r * blocks, sx + r * blocks);
#endif
        for (int64_t g = 0; g < k / 16; g++) {
            int32_t sum = 0;
            for (int j = 0; j < 16; j++) {
                int16_t v = (int16_t)(256 * a[g * 16 + j] + c[g * 16 + j]);
#ifndef SIMLAB_AVX512
                x16[r * k + g * 16 + j] = v;
#endif
                sum += v;
            }
            gs[r * (k / 16) + g] = sum;
        }
        if (group == QK) /* a block's one scale group: its first sum made the block's, as the tile takes it */
            for (int64_t b = 0; b < blocks; b++) gs[r * (k / 16) + 2 * b] += gs[r * (k / 16) + 2 * b + 1];
    }
    int64_t n = 0, groups = 0; /* the parts' rows, one after another, make the outputs */
    for (int p = 0; p < parts; p++) n += ns[p], groups += (ns[p] + 15) / 16;
    int64_t bytes = block_bytes(bits), per = QK / group;
    /* groups handed out in runs of about a sixteenth of a thread's share (at least 4): each thread
     * streams longer stretches of the weight, and a thread slowed by others still gets less. Which
     * thread sums a row does not change its sum. */
    int64_t share = groups / ((threads > 1 ? threads : 1) * 16), run = share > 4 ? share : 4;
#pragma omp parallel num_threads(threads) if (n * k >= 65536 && threads > 1)
    {
    /* more input rows than four tiles take: q5's and q6's codes widened once a group (null: not, or
     * no memory); fewer rows pay less for unpacking them in each tile (measured on AVX-512: 16 to 32
     * rows 1.0-1.1x q8's time, widened 1.15x; 64 rows 1.3x, widened 1.1x). q4's own tile is faster
     * than q8's (half the bytes a step, and no bias to take): kept. */
    int8_t *wide = (bits == 5 || bits == 6) && m > 4 * RM ? malloc((size_t)(blocks * STEPS * 64)) : 0;
#ifdef SIMLAB_AMX /* (q4's, q5's and q6's codes widened for the tiles; no memory: tile() serves) */
    int8_t *amx_wide = amx && bits != 8 && !wide ? malloc((size_t)(blocks * STEPS * 64)) : 0;
    const int tiles = amx && (bits == 8 || wide || amx_wide);
    if (tiles) amx_configure(group);
#endif
#pragma omp for schedule(dynamic, run)
    for (int64_t t = 0; t < groups; t++) {
        int part = 0;
        int64_t g = t, first = 0; /* the group within its part, and the part's first output */
        while (g >= (ns[part] + 15) / 16) g -= (ns[part] + 15) / 16, first += ns[part++];
        int lanes = ns[part] - 16 * g < 16 ? (int)(ns[part] - 16 * g) : 16;
        const uint8_t *p = (const uint8_t *)ws[part] + g * blocks * bytes;
        const void *ps = (const char *)scales[part] + g * blocks * per * 16 * size;
        const void *po = offsets[part] ? (const char *)offsets[part] + g * blocks * 16 * size : 0;
        int read = bits;
        if (wide) {
            widen(p, bits, code_bias(bits, po), blocks, wide);
            p = (const uint8_t *)wide, read = 8;
        }
        int64_t from = 0;
#ifdef SIMLAB_AMX
        if (tiles) {
            const int8_t *w8 = (const int8_t *)p;
            if (read != 8) widen(p, bits, code_bias(bits, po), blocks, amx_wide), w8 = amx_wide;
            for (; from + 16 <= m; from += 16)
                amx_tile(group, half, w8, ps, po, q1 + from * k, levels == 2 ? q2 + from * k : 0, d2 + from * blocks,
                         sx + from * blocks, k, y + from * n + first + 16 * g, n, lanes);
        }
#endif
        for (int64_t r = from; r < m; r += RM) {
            int R = m - r < RM ? (int)(m - r) : RM;
            const int8_t *a1 = q1 + r * k, *a2 = q2 + r * k;
            const int16_t *b16 = x16 + r * k;
#ifdef SIMLAB_AVX512 /* (a whole tile's rows' codes side by side, pack_row) */
            if (R == RM) a1 = (const int8_t *)x16 + levels * r * k, a2 = a1 + 4;
#endif
            const float *e2 = d2 + r * blocks, *sr = sx + r * blocks;
            const int32_t *g2 = gs + r * blocks * 2;
            float *o = y + r * n + first + 16 * g;
            if (read == 4) {
                LEVELS(4, QK)
            } else if (read == 5) {
                LEVELS(5, QK)
            } else if (read == 6) {
                LEVELS(6, 16)
            } else if (group == QK) {
                LEVELS(8, QK)
            } else {
                LEVELS(8, 16)
            }
        }
    }
    free(wide);
#ifdef SIMLAB_AMX
    free(amx_wide);
    if (tiles) _tile_release();
#endif
    }
}

/* The working memory simlab_qlinear_parts needs for M rows of K. */
int64_t simlab_qlinear_scratch(int64_t m, int64_t k) { return 4 * m * k + 20 * m * (k / QK); }

/* One weight: simlab_qlinear_parts with one part. */
void simlab_qlinear(const float *x, int64_t m, int64_t k, const void *w, const void *scale,
                    const void *offset, int bits, int group, int64_t n, float *y, void *scratch, int threads) {
    simlab_qlinear_parts(x, m, k, 1, &w, &scale, &offset, &n, bits, group, y, scratch, threads);
}

/* A weight as its file has it (q4: K/2 bytes a row, byte j of each 32 holding code j in its low nibble
 * and code 16 + j in its high one; q5, q6: K bytes a row, a code each, 0..31 or 0..63; q8: K signed
 * bytes a row; scales N x K/group, offsets N x K/32 or none, float32) into the layout above
 * (layout.pack: pc, ps, po hold ceil(N / 16) whole groups). */
void simlab_pack(int bits, int group, const uint8_t *codes, const float *scale, const float *offset, int64_t n,
                 int64_t k, uint8_t *pc, float *ps, float *po) {
    int64_t blocks = k / QK, per = QK / group, groups = (n + 15) / 16, bytes = block_bytes(bits);
    int64_t rowb = bits == 4 ? k / 2 : k;
#pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        uint8_t *slab = pc + g * blocks * bytes;
        memset(slab, 0, (size_t)(blocks * bytes));
        for (int c = 0; c < 16; c++) {
            int64_t row = g * 16 + c;
            for (int64_t b = 0; b < blocks; b++) {
                for (int q = 0; q < per; q++)
                    ps[((g * blocks + b) * per + q) * 16 + c] = row < n ? scale[row * (k / group) + b * per + q] : 0.0f;
                if (po) po[(g * blocks + b) * 16 + c] = row < n ? offset[row * blocks + b] : 0.0f;
                if (row >= n) continue;
                const uint8_t *from = codes + row * rowb + b * (bits == 4 ? 16 : 32);
                uint8_t *block = slab + b * bytes;
                for (int j = 0; j < QK; j++) {
                    int i = 4 * c + j % 4; /* the position in its step */
                    if (bits == 8) {
                        block[(j / 4) * 64 + i] = from[j];
                        continue;
                    }
                    int code = bits == 4 ? (j < 16 ? from[j] & 15 : from[j - 16] >> 4) : from[j];
                    block[(j / 4) * 32 + i % 32] |= (uint8_t)(c < 8 ? code & 15 : (code & 15) << 4);
                    for (int plane = 0; plane < bits - 4; plane++) {
                        uint8_t *at = block + 256 + (j / 4) * 8 * (bits - 4) + 8 * plane;
                        at[i / 8] |= (uint8_t)(((code >> (4 + plane)) & 1) << (i % 8));
                    }
                }
            }
        }
    }
}

/* Rows of a table (an embedding, in the layout above: bits 4, 5, 6 or 8, HALF added for float16
 * scales and offsets) as floats: out (R, K) = scale * code (+ offset) for each id. */
void simlab_rows(const uint8_t *w, const void *scale, const void *offset, int bits, int group, int64_t k,
                 const int64_t *ids, int64_t count, float *out) {
    const int half = bits & HALF ? 1 : 0, size = half ? 2 : 4;
    bits &= ~(ONE_LEVEL | HALF);
    int64_t blocks = k / QK, per = QK / group, bytes = block_bytes(bits);
    const int bias = code_bias(bits, offset);
    for (int64_t i = 0; i < count; i++) {
        int64_t g = ids[i] / 16;
        int c = (int)(ids[i] % 16);
        const uint8_t *p = w + g * blocks * bytes;
        const char *ps = (const char *)scale + g * blocks * per * 16 * size;
        const char *po = offset ? (const char *)offset + g * blocks * 16 * size : 0;
        for (int64_t j = 0; j < k; j++) {
            int64_t b = j / QK, e = j % QK;
            float v = scale_at(ps, (b * per + e / group) * 16 + c, half) * (float)code_at(p + b * bytes, bits, c, (int)e, bias);
            if (po) v += scale_at(po, b * 16 + c, half);
            out[i * k + j] = v;
        }
    }
}

/* RMS norm of each row of x (rows, n) into y: y = x / sqrt(mean(x^2) + eps) * w, where w is the
 * norm's scale (Gemma's 1 + weight, made by the caller). The squares are summed in double in eight
 * running sums, added in one fixed order, so every instruction set gives the same bits; the rest is
 * float32 as torch's rms_norm does it (one call here, where torch's CPU op is ten). */
void simlab_rms_norm(const float *x, int64_t rows, int64_t n, const float *w, float eps, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        double part[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tail = 0.0;
        int64_t j = 0;
        for (; j + 8 <= n; j += 8) /* a square of a float is exact in double */
            for (int l = 0; l < 8; l++) part[l] += (double)row[j + l] * (double)row[j + l];
        for (; j < n; j++) tail += (double)row[j] * (double)row[j];
        double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        float mean = (float)((sum + tail) / (double)n);
        float inv = 1.0f / sqrtf(mean + eps);
        float *out = y + r * n;
        for (j = 0; j < n; j++) out[j] = row[j] * inv * w[j];
    }
}

/* The sampler's selection: the k largest of each row of x (rows, n) into vals, ids (rows, k), in
 * descending order, a tie going to the lower index (so the result is one defined set, where a sort's
 * tie order is not). One pass keeps candidates in a buffer of 2k: a value joins while it can still
 * be among the k best, and a full buffer is cut back to its k best (quickselect), which raises the
 * bar. NaN never joins. k <= n. */
typedef struct {
    float v;
    int64_t i;
} ranked;

static inline int ahead(ranked a, ranked b) { return a.v > b.v || (a.v == b.v && a.i < b.i); }

static void swap_ranked(ranked *a, ranked *b) {
    ranked t = *a;
    *a = *b;
    *b = t;
}

/* Reorder buf (count) so its k best come first, in no order. */
static void keep_best(ranked *buf, int64_t count, int64_t k) {
    int64_t lo = 0, hi = count - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2; /* median of three as the pivot, moved to hi */
        if (ahead(buf[mid], buf[lo])) swap_ranked(&buf[mid], &buf[lo]);
        if (ahead(buf[hi], buf[lo])) swap_ranked(&buf[hi], &buf[lo]);
        if (ahead(buf[mid], buf[hi])) swap_ranked(&buf[mid], &buf[hi]);
        ranked pivot = buf[hi];
        int64_t store = lo;
        for (int64_t j = lo; j < hi; j++)
            if (ahead(buf[j], pivot)) swap_ranked(&buf[j], &buf[store++]);
        swap_ranked(&buf[store], &buf[hi]);
        if (store == k - 1 || store == k) return;
        if (store > k) hi = store - 1;
        else lo = store + 1;
    }
}

static int by_rank(const void *a, const void *b) {
    return ahead(*(const ranked *)a, *(const ranked *)b) ? -1 : (ahead(*(const ranked *)b, *(const ranked *)a) ? 1 : 0);
}

/* A first bar for the k best of row: the k-th largest of the maxima of 2k runs (k of the runs reach
 * it, so k values do), or -inf for a few best or a row too short to split. */
static float first_bar(const float *row, int64_t n, int64_t k, ranked *buf) {
    int64_t runs = 2 * k, len = n / runs;
    if (k < 64 || len < 4) return -INFINITY; /* a few best: the scan raises the bar fast enough */
    for (int64_t r = 0; r < runs; r++) {
        const float *at = row + r * len;
        float lane[16], most = -INFINITY; /* NaN is passed over */
        int64_t j = 0;
        for (int l = 0; l < 16; l++) lane[l] = -INFINITY;
        for (; j + 16 <= len; j += 16) /* lane by lane: vectorized */
            for (int l = 0; l < 16; l++) lane[l] = at[j + l] > lane[l] ? at[j + l] : lane[l];
        for (; j < len; j++) most = at[j] > most ? at[j] : most;
        for (int l = 0; l < 16; l++) most = lane[l] > most ? lane[l] : most;
        buf[r].v = most;
        buf[r].i = r;
    }
    keep_best(buf, runs, k);
    float bar = buf[0].v;
    for (int64_t q = 1; q < k; q++) bar = buf[q].v < bar ? buf[q].v : bar;
    return bar;
}

int simlab_top_k(const float *x, int64_t rows, int64_t n, int64_t k, float *vals, int64_t *ids, int threads) {
    if (k <= 0 || k > n) return -1;
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows > 1 && threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        ranked *buf = (ranked *)malloc(sizeof(ranked) * (size_t)(2 * k));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
            continue;
        }
        const float *row = x + r * n;
        int64_t count = 0, j = 0;
        float bar = first_bar(row, n, k, buf); /* at least k values reach it */
        int cut = 0; /* after the first cut: a value must beat the k-th best so far */
        for (int64_t at = 0; at < n; at = j) {
            int64_t end = at + 16 < n ? at + 16 : n, any = 0;
            for (j = at; j < end; j++) any |= cut ? row[j] > bar : row[j] >= bar;
            if (!any) continue;
            for (j = at; j < end; j++) {
                if (cut ? !(row[j] > bar) : !(row[j] >= bar)) continue;
                buf[count].v = row[j];
                buf[count++].i = j;
                if (count == 2 * k) {
                    keep_best(buf, count, k);
                    count = k;
                    ranked least = buf[0];
                    for (int64_t q = 1; q < k; q++)
                        if (ahead(least, buf[q])) least = buf[q];
                    bar = least.v; /* a later index ties behind it: only a larger value gets in */
                    cut = 1;
                }
            }
        }
        if (count > k) keep_best(buf, count, k);
        if (count > k) count = k;
        qsort(buf, (size_t)count, sizeof(ranked), by_rank);
        for (int64_t q = 0; q < count; q++) {
            vals[r * k + q] = buf[q].v;
            ids[r * k + q] = buf[q].i;
        }
        for (int64_t q = count; q < k; q++) { /* fewer than k values that are not NaN */
            vals[r * k + q] = NAN;
            ids[r * k + q] = -1;
        }
        free(buf);
    }
    return failed ? -1 : 0;
}


/* ---- top-p's nucleus ---- */

static uint64_t rank_item(float value, int64_t i) { /* its key in the high 32 bits, its position low */
    float v = value == 0.0f ? 0.0f : value; /* -0 ranks as 0, its equal */
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u); /* floats' order as unsigned integers */
    return ((uint64_t)~b << 32) | (uint64_t)i;      /* larger values first */
}

/* the items ranked (a stable radix sort of the keys' digits, low first): returns item or spare */
static uint64_t *rank_sort(uint64_t *item, uint64_t *spare, int64_t n, int64_t *count) {
    for (int shift = 32; shift < 64; shift += 11) {
        memset(count, 0, sizeof(int64_t) * 2049);
        for (int64_t i = 0; i < n; i++) count[((item[i] >> shift) & 2047u) + 1]++;
        for (int d = 0; d < 2048; d++) count[d + 1] += count[d];
        for (int64_t i = 0; i < n; i++) spare[count[(item[i] >> shift) & 2047u]++] = item[i];
        uint64_t *t = item;
        item = spare;
        spare = t;
    }
    return item;
}

/* kept for ranked items after `mass`, the mass ranked above them all; `first`: whether the first
 * item is the row's first */
static void rank_keep(const uint64_t *item, int64_t n, const float *probs, double mass, int first, float p,
                      uint8_t *kept) {
    for (int64_t r = 0; r < n; r++) {
        int64_t i = (int64_t)(item[r] & 0xFFFFFFFFu);
        mass += (double)probs[i];
        float above = (float)mass - probs[i];
        kept[i] = (uint8_t)((r == 0 && first) || !(above >= p));
    }
}

/* Probabilities whose sums are exact: each 0 or >= 2^-29 (a multiple of 2^-52) and all of them
 * < 2 together, so every partial sum in double is exact, in any order, and equals the one-after-
 * another sum torch's cumsum makes. Returns the total, or -1 where they are not (or not finite). */
static double exact_total(const float *probs, int64_t n) {
    double total = 0.0;
    float least = INFINITY; /* the least that is not 0 (a NaN makes the total NaN) */
#pragma omp simd reduction(+ : total) reduction(min : least)
    for (int64_t i = 0; i < n; i++) {
        total += (double)probs[i];
        least = probs[i] != 0.0f && probs[i] < least ? probs[i] : least;
    }
    return least < 0x1p-29f || !(total < 2.0) ? -1.0 : total;
}

#define SURE 1e-6 /* far more than the float roundings of a token's mass above it */
#define BINS 4096  /* the value range's slices, for the mass above each */

/* A long row's kept tokens with exact sums (exact_total), ranking only the tokens near the cut. The
 * values go into BINS slices of their range, larger values in lower slices (bin(v) never rises as v
 * does, so a value in a lower slice is larger and ranks above); one pass sums each slice's mass.
 * The slices whose mass above them is SURE below p are kept whole (the mass above each of their
 * tokens is less), those with SURE above p at or above them are dropped whole, and the tokens of the
 * slices between are ranked after the exact mass above them: the same kept tokens as ranking them
 * all. 1: done, 0: not here, -1: no memory. */
static int nucleus_near(const float *values, const float *probs, int64_t n, float p, uint8_t *kept) {
    double total = exact_total(probs, n);
    if (total < (double)p + SURE || (double)p < 2 * SURE) return 0;
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0; /* (a NaN value ranks first in the full ranking: left to it) */
#pragma omp simd reduction(min : lo) reduction(max : hi) reduction(| : nan)
    for (int64_t i = 0; i < n; i++) {
        lo = values[i] < lo ? values[i] : lo;
        hi = values[i] > hi ? values[i] : hi;
        nan |= values[i] != values[i];
    }
    float scale = (float)(BINS - 1) / (hi - lo);
#define SLICE(v) ((int)((hi - (v)) * scale) < BINS - 1 ? (int)((hi - (v)) * scale) : BINS - 1)
    if (nan || !isfinite(hi - lo) || !(hi > lo) || !(scale > 0.0f) || !isfinite(scale)) return 0;
    double *mass = (double *)calloc(BINS + 1, sizeof(double));
    int64_t *tally = (int64_t *)calloc(BINS + 1, sizeof(int64_t));
    if (!mass || !tally) {
        free(mass), free(tally);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) {
        int b = SLICE(values[i]);
        mass[b] += (double)probs[i];
        tally[b]++;
    }
    int ka = 0, kb = 0; /* the slices below ka are kept; those above kb dropped */
    double above_a = 0.0, reach = 0.0;
    int64_t count_a = 0, near = 0;
    while (ka < BINS && above_a + mass[ka] < (double)p - SURE) above_a += mass[ka], count_a += tally[ka++];
    for (reach = above_a, kb = ka; kb < BINS - 1 && reach + mass[kb] < (double)p + SURE; kb++)
        reach += mass[kb];
    for (int k = ka; k <= kb; k++) near += tally[k];
    uint64_t *item = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(2 * near + 2));
    int64_t *count = (int64_t *)malloc(sizeof(int64_t) * 2049);
    if (!item || !count) {
        free(mass), free(tally), free(item), free(count);
        return -1;
    }
    int64_t z = 0;
    for (int64_t i = 0; i < n; i++) { /* 1: kept, 2: to rank, 0: dropped (a pass without branches) */
        int s = SLICE(values[i]);
        kept[i] = (uint8_t)(s < ka ? 1 : s <= kb ? 2 : 0);
    }
    for (uint8_t *c = memchr(kept, 2, (size_t)n); c; c = memchr(c, 2, (size_t)(kept + n - c))) {
        int64_t i = c - kept; /* (memchr: the few tokens to rank found a vector at a time) */
        kept[i] = 0, item[z++] = rank_item(values[i], i);
    }
    rank_keep(rank_sort(item, item + z, z, count), z, probs, above_a, count_a == 0, p, kept);
    free(mass), free(tally), free(item), free(count);
    return 1;
#undef SLICE
}

/* Top-p's nucleus as torch computes it. values (n,): a row's logits (those above a cut, in the
 * order of their ids); probs (n,) their probabilities. Ranks them by value, larger first, equal values in the order given (what
 * torch.sort(descending=True, stable=True) gives), by a stable radix sort of 32-bit keys; then, in
 * that rank order, the cumulative mass summed in double and rounded to float as torch's CPU cumsum
 * does, less the token's own probability in float, and a token is dropped when that mass above it
 * reaches p (the first never is): transformers' top-p rule, the same bits as torch's ops for it.
 * kept[i] is 1 or 0 for values[i]. A long row whose sums are exact ranks only the tokens near the
 * cut (nucleus_near). Returns 1 when it did, 0 when it ranked them all, -1 when it cannot allocate. */
int simlab_nucleus(const float *values, const float *probs, int64_t n, float p, uint8_t *kept) {
    if (n > 8192) { /* (a shorter row is ranked whole as fast) */
        int done = nucleus_near(values, probs, n, p, kept);
        if (done) return done;
    }
    uint64_t *item = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)(n ? 2 * n : 1));
    int64_t *count = (int64_t *)malloc(sizeof(int64_t) * 2049);
    if (!item || !count) {
        free(item), free(count);
        return -1;
    }
    for (int64_t i = 0; i < n; i++) item[i] = rank_item(values[i], i);
    rank_keep(rank_sort(item, item + n, n, count), n, probs, 0.0, 1, p, kept);
    free(item), free(count);
    return 0;
}

/* How a row's values lie below its largest, top[r], in levels of `step`: counts[r * levels + j] =
 * how many values v of row r have floor((top - v) / step) = j (in float arithmetic), for j <
 * levels; values further below, -inf and NaN are not counted. A pass over the row, sixteen values
 * at a time passed over where none is within reach (a peaked row's tail); rows over the threads. */
void simlab_levels(const float *x, int64_t rows, int64_t n, const float *top, float step, int levels,
                   int64_t *counts, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows > 1 && threads > 1)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        int64_t *c = counts + r * levels;
        for (int j = 0; j < levels; j++) c[j] = 0;
        const float least = top[r] - (float)levels * step, inv = 1.0f / step;
        for (int64_t at = 0; at < n; at += 16) {
            int64_t end = at + 16 < n ? at + 16 : n;
            int any = 0;
            for (int64_t i = at; i < end; i++) any |= row[i] > least;
            if (!any) continue;
            for (int64_t i = at; i < end; i++) {
                float d = (top[r] - row[i]) * inv;
                if (!(row[i] > least) || !(d >= 0.0f) || !(d < (float)levels)) continue;
                c[(int64_t)d]++;
            }
        }
    }
}

/* The values of a row at or above a cut, in order (torch's row[row >= cut]): out, their count. */
int64_t simlab_above(const float *row, int64_t n, float cut, float *out) {
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) { /* (without a branch: one that half the values take is slow) */
        out[m] = row[i];
        m += row[i] >= cut;
    }
    return m;
}

/* simlab_nucleus of a row's values at or above a cut (values, probs: m of them, as simlab_above
 * gives them), told for the whole row: out (n,) is the row with -inf for a token below the cut or
 * not kept (torch's row.masked_fill(dropped, -inf)). */
static int nucleus_row(const float *row, int64_t n, float cut, const float *values, const float *probs,
                       int64_t m, float p, float *out) {
    uint8_t *kept = (uint8_t *)malloc((size_t)m + 1);
    if (!kept || simlab_nucleus(values, probs, m, p, kept) < 0) {
        free(kept);
        return -1;
    }
    float last = INFINITY; /* the kept tokens' least value, and the place of the last with it */
    int64_t at = -1, ties = 0;
#pragma omp simd reduction(min : last)
    for (int64_t j = 0; j < m; j++) last = kept[j] & (values[j] < last) ? values[j] : last;
#pragma omp simd reduction(max : at)
    for (int64_t j = 0; j < m; j++) at = kept[j] & (values[j] == last) & (j > at) ? j : at;
    int64_t unlike = at < 0; /* whether kept is not the tokens above last and those at it up to at */
#pragma omp simd reduction(+ : unlike, ties)
    for (int64_t j = 0; j < m; j++) {
        int tie = (values[j] == last) & (j <= at); /* (& and |, not && and ||: no branches) */
        unlike += kept[j] != ((values[j] > last) | tie);
        ties += tie;
    }
    if (unlike) { /* (top-p's masses rounded out of order: each value's place walked) */
        kept[m] = 0; /* (read past the last value, never used) */
        for (int64_t i = 0, j = 0; i < n; i++) {
            int in = row[i] >= cut;
            out[i] = in & kept[j] ? row[i] : -INFINITY;
            j += in;
        }
        free(kept);
        return 0;
    }
    int64_t place = -1; /* the row's place of the ties-th value equal to last (all >= cut) */
    for (int64_t i = 0; i < n && ties > 0; i++)
        if (row[i] == last && --ties == 0) place = i;
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        out[i] = (row[i] > last) | ((row[i] == last) & (i <= place)) ? row[i] : -INFINITY;
    free(kept);
    return 0;
}

/* nucleus_row for b rows of n (row r: its cut, m[r] values and probs) into out (b, n), rows
 * spread over threads: each row's the bits it gets alone. */
int simlab_nucleus_rows(int64_t b, const float *rows, int64_t n, const float *cuts, const float *const *values,
                        const float *const *probs, const int64_t *m, float p, float *out, int threads) {
    int failed = 0;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) reduction(| : failed) if (b > 1 && threads > 1)
    for (int64_t r = 0; r < b; r++)
        failed |= nucleus_row(rows + r * n, n, cuts[r], values[r], probs[r], m[r], p, out + r * n) != 0;
    return failed ? -1 : 0;
}

/* ---- the cdf draw (logits.sample): the kept tokens' (probs != 0) cumulative mass in id order,
 * summed in double one after another as torch's cumsum sums it; the total, then the first token
 * whose cumulative mass passes u (torch.searchsorted(right=True)), or the last kept one */
static double cdf_total(const float *probs, int64_t n) {
    double mass = exact_total(probs, n); /* (where exact: the same sum, vectorized) */
    if (mass >= 0.0) return mass;
    mass = 0.0;
    for (int64_t i = 0; i < n; i++)
        if (probs[i] != 0.0f) mass += (double)probs[i];
    return mass;
}

static int64_t cdf_pick(const float *probs, int64_t n, double u) {
    double mass = 0.0;
    int64_t i = 0, last = -1;
    if (exact_total(probs, n) >= 0.0) /* exact sums: whole blocks passed over by their sums */
        for (; i + 1024 <= n; i += 1024) {
            double block = 0.0;
#pragma omp simd reduction(+ : block)
            for (int64_t j = i; j < i + 1024; j++) block += (double)probs[j];
            if (mass + block > u) break;
            mass += block;
        }
    for (; i < n; i++) {
        if (probs[i] == 0.0f) continue;
        mass += (double)probs[i];
        last = i;
        if (mass > u) return i;
    }
    if (last < 0) /* the blocks passed over hold the last kept token */
        for (int64_t j = n - 1; j >= 0 && last < 0; j--) last = probs[j] != 0.0f ? j : -1;
    return last;
}

/* The cdf draw for b rows of n probabilities at once, rows spread over threads: each row's total
 * (cdf_total), then, with u[r] drawn from it, each row's pick (-1 where u[r] < 0) */
void simlab_cdf_totals(int64_t b, const float *probs, int64_t n, double *totals, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (b > 1 && threads > 1)
    for (int64_t r = 0; r < b; r++) totals[r] = cdf_total(probs + r * n, n);
}

void simlab_cdf_picks(int64_t b, const float *probs, int64_t n, const double *u, int64_t *picks, int threads) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (b > 1 && threads > 1)
    for (int64_t r = 0; r < b; r++) picks[r] = u[r] < 0.0 ? -1 : cdf_pick(probs + r * n, n, u[r]);
}

/* ---- attention: each query's output computed alone, in one fixed order ----
 *
 * out = softmax(scale q K^T (+ mask)) V for every (batch row, head, query), float32. What a query's
 * output is depends only on its own q, keys, values and mask: not on the batch, the number of
 * threads, the instruction set or where the tensors lie (torch's CPU attention sums in an order that
 * changes with all of those, measured: a batch of 3 gave row 0 other bits than that row alone). The
 * keys go in chunks of CHUNK, a fixed size: each chunk's scores, their maximum, the sum of
 * exp(score - max) and those weights times the values; the chunks are then joined in order. Every
 * sum runs over 16 lanes (one 512-bit register, two 256-bit ones, or a loop of 16 floats: the same
 * fused multiply-adds per lane), the lanes added in one fixed tree; exp is simlab's own, not libm's
 * (glibc picks its exp by instruction set at load time). */
#define CHUNK 128
#define QB 8     /* queries of one key head taken together: each key is read once for all of them */
#define MAXQ 512 /* query heads per key head, times QB */

#if defined(SIMLAB_AVX512)
typedef __m512 v16;
static inline v16 v_zero(void) { return _mm512_setzero_ps(); }
static inline v16 v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline v16 v_set1(float x) { return _mm512_set1_ps(x); }
static inline v16 v_fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
static inline void v_store(float *p, v16 a) { _mm512_storeu_ps(p, a); }
#elif defined(SIMLAB_AVX2)
typedef struct {
    __m256 lo, hi;
} v16;
static inline v16 v_zero(void) { return (v16){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline v16 v_load(const float *p) { return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline v16 v_set1(float x) { return (v16){_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
static inline v16 v_fma(v16 a, v16 b, v16 c) {
    return (v16){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
static inline void v_store(float *p, v16 a) {
    _mm256_storeu_ps(p, a.lo);
    _mm256_storeu_ps(p + 8, a.hi);
}
#else
typedef struct {
    float f[16];
} v16;
static inline v16 v_zero(void) { return (v16){{0}}; }
static inline v16 v_load(const float *p) {
    v16 a;
    memcpy(a.f, p, sizeof a.f);
    return a;
}
static inline v16 v_set1(float x) {
    v16 a;
    for (int l = 0; l < 16; l++) a.f[l] = x;
    return a;
}
static inline v16 v_fma(v16 a, v16 b, v16 c) {
    for (int l = 0; l < 16; l++) c.f[l] = fmaf(a.f[l], b.f[l], c.f[l]);
    return c;
}
static inline void v_store(float *p, v16 a) { memcpy(p, a.f, sizeof a.f); }
#endif

/* The 16 lanes added in one fixed tree, then what the lanes left over. */
static inline float lanes_sum(v16 a, float tail) {
    float lane[16];
    v_store(lane, a);
    for (int w = 8; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) lane[l] += lane[l + w];
    return lane[0] + tail;
}

/* exp(x) for x <= 0 (0 below -87), about 1 ulp: x = n ln2 + r, 2^n times a polynomial in r, with
 * fmaf (exactly rounded by C99's rule, one instruction where the CPU has it): the same bits on every
 * CPU and compiler. */
static inline float exp_fixed(float x) {
    if (!(x > -87.0f)) return 0.0f; /* -inf and NaN too */
    float t = fmaf(x, 1.44269504f, 12582912.0f); /* 1.5 * 2^23: n rounded into the low bits */
    float n = t - 12582912.0f;
    float r = fmaf(n, -0.693145752f, x); /* ln2 in two parts */
    r = fmaf(n, -1.42860677e-6f, r);
    float p = 1.98412701e-4f;
    p = fmaf(p, r, 1.38888892e-3f);
    p = fmaf(p, r, 8.33333377e-3f);
    p = fmaf(p, r, 4.16666679e-2f);
    p = fmaf(p, r, 1.66666672e-1f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union {
        float f;
        int32_t i;
    } two = {.i = (int32_t)(127 + (int32_t)n) << 23}; /* 2^n, n >= -126 */
    return p * two.f;
}

/* s[j] = exp_fixed(s[j] - most) for j < n (0 where most is -inf), 16 or 8 at a time where the
 * instruction set has the registers: the very operations exp_fixed makes, lane by lane (each one
 * exactly rounded), so the same bits. */
#if defined(SIMLAB_AVX512)
static inline __m512 exp16(__m512 x) {
    __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GT_OQ); /* false for NaN too */
    __m512 big = _mm512_set1_ps(12582912.0f);
    __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504f), big), big);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693145752f), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.98412701e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888892e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333377e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666679e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666672e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps(ok, _mm512_mul_ps(p, _mm512_castsi512_ps(e)));
}
#elif defined(SIMLAB_AVX2)
static inline __m256 exp8(__m256 x) {
    __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GT_OQ);
    __m256 big = _mm256_set1_ps(12582912.0f);
    __m256 n = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504f), big), big);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693145752f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.98412701e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.38888892e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333377e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666679e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666672e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(ok, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

static inline void exp_less(float *s, int64_t n, float most) {
    int64_t j = 0;
    if (most == -INFINITY) {
        for (; j < n; j++) s[j] = 0.0f;
        return;
    }
#if defined(SIMLAB_AVX512)
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(s + j, exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), _mm512_set1_ps(most))));
#elif defined(SIMLAB_AVX2)
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(s + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), _mm256_set1_ps(most))));
#endif
    for (; j < n; j++) s[j] = exp_fixed(s[j] - most);
}

/* Four queries against one key, each summed as dot_fixed sums it. */
static inline void dot4_fixed(const float *const *a, const float *b, int64_t n, float *out) {
    v16 l0 = v_zero(), l1 = v_zero(), l2 = v_zero(), l3 = v_zero();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        v16 w = v_load(b + j);
        l0 = v_fma(v_load(a[0] + j), w, l0);
        l1 = v_fma(v_load(a[1] + j), w, l1);
        l2 = v_fma(v_load(a[2] + j), w, l2);
        l3 = v_fma(v_load(a[3] + j), w, l3);
    }
    float t[4] = {0, 0, 0, 0};
    for (int u = 0; u < 4; u++)
        for (int64_t i = j; i < n; i++) t[u] = fmaf(a[u][i], b[i], t[u]);
#if defined(SIMLAB_AVX512)
    /* lanes_sum's tree for the four at once: each add is the one it makes, on the same two lanes */
    __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(l0, l1, 0x44), _mm512_shuffle_f32x4(l0, l1, 0xEE));
    __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(l2, l3, 0x44), _mm512_shuffle_f32x4(l2, l3, 0xEE));
    __m512 f = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
    f = _mm512_add_ps(f, _mm512_shuffle_ps(f, f, 0xEE)); /* lane l + lane l + 2 in each 128 bits */
    f = _mm512_add_ps(f, _mm512_shuffle_ps(f, f, 0x55)); /* lane 0 + lane 1 */
    float lane[16];
    _mm512_storeu_ps(lane, f);
    for (int u = 0; u < 4; u++) out[u] = lane[4 * u] + t[u];
#else
    out[0] = lanes_sum(l0, t[0]);
    out[1] = lanes_sum(l1, t[1]);
    out[2] = lanes_sum(l2, t[2]);
    out[3] = lanes_sum(l3, t[3]);
#endif
}

static inline float dot_fixed(const float *a, const float *b, int64_t n) {
    v16 acc = v_zero();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) acc = v_fma(v_load(a + j), v_load(b + j), acc);
    float tail = 0.0f;
    for (; j < n; j++) tail = fmaf(a[j], b[j], tail);
    return lanes_sum(acc, tail);
}

/* q (B, H, T, D), k (B, KH, L, D), v (B, KH, L, Dv): strides in floats for the first three
 * dimensions, the last one contiguous; head h reads key head h / (H / KH). mask: none (kind 0),
 * booleans as bytes (kind 1; nonzero: attend) or floats added to the scores (kind 2), with strides
 * ms for (B, H, T, L) (0 where it broadcasts); causal_offset >= 0: query t sees keys j <= t +
 * causal_offset only. softcap > 0: s = softcap tanh(s / softcap). out (B, T, H, Dv), contiguous;
 * work: simlab_attention_work floats. */
/* Key (or value) row j of batch row b and key head kh: rows j < L0 from the shared prefix p (its
 * strides ps; ps[0] 0 where every batch row reads the one prefix), the others from a at j - L0. */
static inline const float *row_at(const float *a, const int64_t *as, const float *p, const int64_t *ps, int64_t L0,
                                  int64_t b, int64_t kh, int64_t j) {
    return j < L0 ? p + b * ps[0] + kh * ps[1] + j * ps[2] : a + b * as[0] + kh * as[1] + (j - L0) * as[2];
}

/* simlab_attention over keys and values in two parts: the first L0 from k0, v0 (a prefix siblings
 * share), the rest from k, v; L counts both. The same keys in the same order as one tensor holding
 * both gives the very same bits (the chunks fall at the same places). */
static void attention_parts(const float *q, const int64_t *qs, const float *k, const int64_t *ks, const float *v,
                            const int64_t *vs, const float *k0, const int64_t *k0s, const float *v0,
                            const int64_t *v0s, int64_t L0, const void *mask, int kind, const int64_t *ms,
                            int64_t B, int64_t H, int64_t KH, int64_t T, int64_t L, int64_t D, int64_t Dv,
                            float scale, float softcap, int64_t causal_offset, float *out, float *work,
                            int threads) {
    int64_t group = H / KH, chunks = (L + CHUNK - 1) / CHUNK, tblocks = (T + QB - 1) / QB;
    int64_t items = B * KH * tblocks, qb = T < QB ? T : QB;
    /* work: per (item, chunk), for each of its group * qb queries: max, sum, then Dv weighted values */
    int64_t per_query = 2 + Dv, per_task = group * qb * per_query;
    if (group * qb > MAXQ) return;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (items * chunks > 1 && threads > 1)
    for (int64_t task = 0; task < items * chunks; task++) {
        int64_t item = task / chunks, c = task % chunks;
        int64_t b = item / (KH * tblocks), kh = (item / tblocks) % KH, t0 = (item % tblocks) * QB;
        int64_t tq = T - t0 < QB ? T - t0 : QB, j0 = c * CHUNK, j1 = j0 + CHUNK < L ? j0 + CHUNK : L;
        float *part = work + task * per_task;
        int64_t nq = group * tq; /* this key head's queries in the block: (g, i) as g * tq + i */
        if (causal_offset >= 0 && j0 > t0 + tq - 1 + causal_offset) { /* past every query's last key */
            for (int64_t x = 0; x < nq; x++) { /* what the loop below makes of it: nothing seen */
                float *mine = part + ((x / tq) * qb + x % tq) * per_query;
                mine[0] = -INFINITY;
                mine[1] = 0.0f;
            }
            continue;
        }
        const float *qrows[MAXQ];
        for (int64_t x = 0; x < nq; x++)
            qrows[x] = q + b * qs[0] + (kh * group + x / tq) * qs[1] + (t0 + x % tq) * qs[2];
        for (int64_t x0 = 0; x0 < nq; x0 += 4) { /* four queries against each key: it is read once */
            int64_t n4 = nq - x0 < 4 ? nq - x0 : 4;
            float s[4][CHUNK];
            /* each query's last key (causal) and its row of the mask, worked out once for the chunk */
            int64_t last[4] = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX}, mrow[4] = {0, 0, 0, 0};
            for (int64_t u = 0; u < n4; u++) {
                int64_t h = kh * group + (x0 + u) / tq, t = t0 + (x0 + u) % tq;
                if (causal_offset >= 0) last[u] = t + causal_offset;
                mrow[u] = kind ? b * ms[0] + h * ms[1] + t * ms[2] : 0;
            }
            /* the keys all four queries see, where nothing is decided per key (no boolean mask, no
             * softcap): their scores first, then scaled (and the float mask added) a row at a time,
             * the very operations the loop below makes on each */
            int64_t open = j0;
            if (n4 == 4 && kind != 1 && !(softcap > 0.0f)) {
                open = j1;
                for (int u = 0; u < 4; u++) open = last[u] < open - 1 ? last[u] + 1 : open;
                open = open > j0 ? open : j0;
                for (int64_t j = j0; j < open; j++) {
                    float d4[4];
                    dot4_fixed(qrows + x0, row_at(k, ks, k0, k0s, L0, b, kh, j), D, d4);
                    for (int u = 0; u < 4; u++) s[u][j - j0] = d4[u];
                }
                for (int u = 0; u < 4; u++) {
                    float *row = s[u];
                    for (int64_t j = 0; j < open - j0; j++) row[j] *= scale;
                    if (kind == 2)
                        for (int64_t j = j0; j < open; j++) row[j - j0] += ((const float *)mask)[mrow[u] + j * ms[3]];
                }
            }
            for (int64_t j = open; j < j1; j++) {
                const float *kr = row_at(k, ks, k0, k0s, L0, b, kh, j);
                int any = 0, seen[4] = {0, 0, 0, 0};
                for (int64_t u = 0; u < n4; u++) {
                    seen[u] = j <= last[u];
                    if (seen[u] && kind == 1) seen[u] = ((const uint8_t *)mask)[mrow[u] + j * ms[3]] != 0;
                    any |= seen[u];
                }
                float d4[4] = {0, 0, 0, 0};
                if (any && n4 == 4) dot4_fixed(qrows + x0, kr, D, d4);
                else if (any)
                    for (int64_t u = 0; u < n4; u++) d4[u] = seen[u] ? dot_fixed(qrows[x0 + u], kr, D) : 0.0f;
                for (int64_t u = 0; u < 4; u++) {
                    float x = -INFINITY;
                    if (u < n4 && seen[u]) {
                        x = d4[u] * scale;
                        if (softcap > 0.0f) {
                            float e = exp_fixed(-2.0f * fabsf(x / softcap)); /* tanh by exp, sign apart */
                            float th = (1.0f - e) / (1.0f + e);
                            x = softcap * (x < 0 ? -th : th);
                        }
                        if (kind == 2) x += ((const float *)mask)[mrow[u] + j * ms[3]];
                    }
                    s[u][j - j0] = x;
                }
            }
            /* each query's weights exp(s - max), in place, and their sum: the four queries' maxima
             * and sums side by side, each in key order */
            float *acc[4], most[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY}, sum[4] = {0, 0, 0, 0};
            int64_t width = j1 - j0;
            for (int64_t j = 0; j < width; j++)
                for (int u = 0; u < 4; u++) most[u] = s[u][j] > most[u] ? s[u][j] : most[u];
            int live = 0;
            for (int u = 0; u < 4; u++) {
                exp_less(s[u], width, most[u]);
                live |= u < n4 && most[u] != -INFINITY;
            }
            for (int64_t j = 0; j < width; j++)
                for (int u = 0; u < 4; u++) sum[u] += s[u][j];
            for (int64_t u = 0; u < n4; u++) {
                int64_t x = x0 + u;
                float *mine = part + ((x / tq) * qb + x % tq) * per_query;
                mine[0] = most[u];
                mine[1] = sum[u];
                acc[u] = mine + 2;
            }
            if (!live) continue; /* every key masked for these queries: the join skips this chunk */
            /* acc[d] = the keys' p_j v_j[d] summed in order, 16 values of d at a time (64 where
             * there are registers for it: each weight is then broadcast once for four) */
            int64_t d0 = 0;
#if defined(SIMLAB_AVX512)
            for (; d0 + 64 <= Dv; d0 += 64) {
                v16 a[4][4];
                for (int u = 0; u < 4; u++)
                    for (int e = 0; e < 4; e++) a[u][e] = v_zero();
                for (int64_t j = j0; j < j1; j++) {
                    const float *vr = row_at(v, vs, v0, v0s, L0, b, kh, j) + d0;
                    v16 vv[4] = {v_load(vr), v_load(vr + 16), v_load(vr + 32), v_load(vr + 48)};
                    for (int u = 0; u < 4; u++) {
                        v16 p = v_set1(s[u][j - j0]);
                        for (int e = 0; e < 4; e++) a[u][e] = v_fma(p, vv[e], a[u][e]);
                    }
                }
                for (int64_t u = 0; u < n4; u++)
                    for (int e = 0; e < 4; e++) v_store(acc[u] + d0 + 16 * e, a[u][e]);
            }
#endif
            for (; d0 + 16 <= Dv; d0 += 16) {
                v16 a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
                for (int64_t j = j0; j < j1; j++) {
                    v16 vv = v_load(row_at(v, vs, v0, v0s, L0, b, kh, j) + d0);
                    a0 = v_fma(v_set1(s[0][j - j0]), vv, a0);
                    a1 = v_fma(v_set1(s[1][j - j0]), vv, a1);
                    a2 = v_fma(v_set1(s[2][j - j0]), vv, a2);
                    a3 = v_fma(v_set1(s[3][j - j0]), vv, a3);
                }
                v16 rows[4] = {a0, a1, a2, a3};
                for (int64_t u = 0; u < n4; u++) v_store(acc[u] + d0, rows[u]);
            }
            for (; d0 < Dv; d0++) /* a value width that is not a multiple of 16 */
                for (int64_t u = 0; u < n4; u++) {
                    float a = 0.0f;
                    for (int64_t j = j0; j < j1; j++)
                        a = fmaf(s[u][j - j0], row_at(v, vs, v0, v0s, L0, b, kh, j)[d0], a);
                    acc[u][d0] = a;
                }
        }
    }
    /* join each query's chunks in order */
#pragma omp parallel for num_threads(threads) schedule(static) if (items > 1 && threads > 1)
    for (int64_t item = 0; item < items; item++) {
        int64_t b = item / (KH * tblocks), kh = (item / tblocks) % KH, t0 = (item % tblocks) * QB;
        int64_t tq = T - t0 < QB ? T - t0 : QB;
        for (int64_t g = 0; g < group; g++) {
            int64_t h = kh * group + g;
            for (int64_t i = 0; i < tq; i++) {
                float most = -INFINITY, total = 0.0f, *o = out + ((b * T + t0 + i) * H + h) * Dv;
                for (int64_t c = 0; c < chunks; c++) {
                    float m = work[(item * chunks + c) * per_task + (g * qb + i) * per_query];
                    most = m > most ? m : most;
                }
                for (int64_t d = 0; d < Dv; d++) o[d] = 0.0f;
                if (most == -INFINITY) continue; /* nothing to attend to: zeros */
                for (int64_t c = 0; c < chunks; c++) {
                    const float *mine = work + (item * chunks + c) * per_task + (g * qb + i) * per_query;
                    if (mine[0] == -INFINITY) continue;
                    float w = exp_fixed(mine[0] - most);
                    total = fmaf(w, mine[1], total);
                    for (int64_t d = 0; d < Dv; d++) o[d] = fmaf(w, mine[2 + d], o[d]);
                }
                float inv = 1.0f / total;
                for (int64_t d = 0; d < Dv; d++) o[d] *= inv;
            }
        }
    }
}

void simlab_attention(const float *q, const int64_t *qs, const float *k, const int64_t *ks, const float *v,
                      const int64_t *vs, const void *mask, int kind, const int64_t *ms, int64_t B, int64_t H,
                      int64_t KH, int64_t T, int64_t L, int64_t D, int64_t Dv, float scale, float softcap,
                      int64_t causal_offset, float *out, float *work, int threads) {
    attention_parts(q, qs, k, ks, v, vs, 0, 0, 0, 0, 0, mask, kind, ms, B, H, KH, T, L, D, Dv, scale, softcap,
                    causal_offset, out, work, threads);
}

/* The floats of work simlab_attention needs for these sizes. */
int64_t simlab_attention_work(int64_t B, int64_t H, int64_t KH, int64_t T, int64_t L, int64_t Dv) {
    int64_t group = H / KH, chunks = (L + CHUNK - 1) / CHUNK, tblocks = (T + QB - 1) / QB;
    return B * KH * tblocks * chunks * group * (T < QB ? T : QB) * (2 + Dv);
}

/* Rotary position embedding as transformers writes it, q cos + rotate_half(q) sin, with
 * rotate_half(q) = (-q2, q1): each value one product, another and their sum, rounded as torch's
 * three ops round them (no fused multiply-add), so the bits are torch's. x, out (B, H, T, D)
 * contiguous; cos, sin (B or 1, T, D) contiguous (cs_batch: 1 when they have a row per batch row). */
void simlab_rotary(const float *x, int64_t B, int64_t H, int64_t T, int64_t D, const float *cos_,
                   const float *sin_, int cs_batch, float *out) {
    int64_t half = D / 2;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
                const float *v = x + ((b * H + h) * T + t) * D;
                const float *c = cos_ + ((cs_batch ? b : 0) * T + t) * D, *s = sin_ + ((cs_batch ? b : 0) * T + t) * D;
                float *o = out + ((b * H + h) * T + t) * D;
                for (int64_t i = 0; i < half; i++) {
                    float a = v[i] * c[i], r = (-v[i + half]) * s[i];
                    o[i] = a + r;
                }
                for (int64_t i = half; i < D; i++) {
                    float a = v[i] * c[i], r = v[i - half] * s[i];
                    o[i] = a + r;
                }
            }
}

/* ---- a decoder layer's decode step in three calls (models/blocks.py; each returns -1 when its
 * working memory cannot be had, 0 otherwise) ----
 * The same functions the model's modules call one by one (simlab_rms_norm, simlab_qlinear_parts,
 * simlab_rotary, simlab_attention), in the same order on the same values, with the residual adds
 * and biases as single float adds (torch's, bit for bit): one call where the modules make ten, for
 * M rows of one new token each. Gemma's norms around attention and MLP when post_attn and post_mlp
 * are given; Llama's pre-norms alone when they are null. */

/* x = norm(h); q, k, v = the parts of x W^T (+ each part's bias); q, k = their head norms (if
 * given); q, k rotated. q (M, H, hd), k and v (M, KH, hd), contiguous (the (B, H, 1, hd) tensors). */
int simlab_block_qkv(const float *h, int64_t m, int64_t d, const float *norm, float eps, const void *const *ws,
                      const void *const *scales, const void *const *offsets, const int64_t *ns,
                      const float *const *biases, const int *bits, const int *group, const float *qnorm,
                      const float *knorm,
                      float qk_eps, int64_t H, int64_t KH, int64_t hd, const float *cos_, const float *sin_,
                      int cs_batch, float *q, float *k, float *v, void *scratch, int threads) {
    int64_t n = ns[0] + ns[1] + ns[2], sizes[3] = {H * hd, KH * hd, KH * hd};
    float *x = malloc(sizeof(float) * m * (d + n + 2 * H * hd));
    if (!x) return -1;
    float *y = x + m * d, *a = y + m * n, *b = a + m * H * hd;
    float *outs[3] = {a, b, v};
    simlab_rms_norm(h, m, d, norm, eps, x);
    /* one product of the three where they share a layout; else each its own (a Q4_K_M file's Q6_K
     * v beside Q4_K q and k), the very product a layer of that layout makes alone */
    int one = bits[1] == bits[0] && bits[2] == bits[0] && group[1] == group[0] && group[2] == group[0];
    if (one) simlab_qlinear_parts(x, m, d, 3, ws, scales, offsets, ns, bits[0], group[0], y, scratch, threads);
    for (int p = 0, at = 0; !one && p < 3; at += (int)ns[p], p++)
        simlab_qlinear_parts(x, m, d, 1, ws + p, scales + p, offsets + p, ns + p, bits[p], group[p], y + m * at,
                             scratch, threads);
    for (int p = 0, at = 0; p < 3; at += (int)sizes[p], p++) { /* each part out of the rows, plus its bias */
        const float *from = one ? y + at : y + m * at;
        int64_t stride = one ? n : sizes[p];
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < sizes[p]; j++)
                outs[p][r * sizes[p] + j] = biases[p] ? from[r * stride + j] + biases[p][j] : from[r * stride + j];
    }
    if (qnorm) { /* each head's row normed */
        simlab_rms_norm(a, m * H, hd, qnorm, qk_eps, a);
        simlab_rms_norm(b, m * KH, hd, knorm, qk_eps, b);
    }
    simlab_rotary(a, m, H, 1, hd, cos_, sin_, cs_batch, q);
    simlab_rotary(b, m, KH, 1, hd, cos_, sin_, cs_batch, k);
    free(x);
    return 0;
}

/* The attention of q over the cache's k, v (as simlab_attention takes them, mask included; after
 * the L0 keys and values of a prefix the rows share, k0 and v0, when L0 > 0; L counts both), its
 * output's product with o, then h2 = h + o (Gemma: h + post_attn(o)), x = pre_mlp(h2) and
 * gu = x's parts of the gate and up product. */
int simlab_block_mid(const float *q, const int64_t *qs, const float *k, const int64_t *ks, const float *v,
                      const int64_t *vs, const float *k0, const int64_t *k0s, const float *v0,
                      const int64_t *v0s, int64_t L0, const void *mask, int kind, const int64_t *ms, int64_t m, int64_t H,
                      int64_t KH, int64_t L, int64_t hd, float scale, float softcap, const void *wo,
                      const void *so, const void *oo, int obits, int ogroup, const float *post_attn,
                      const float *pre_mlp, float eps, const float *h, int64_t d, const void *const *ws,
                      const void *const *scales, const void *const *offsets, const int64_t *ns, int bits,
                      int group, float *h2, float *gu, void *scratch, int threads) {
    int64_t work = simlab_attention_work(m, H, KH, 1, L, hd);
    float *att = malloc(sizeof(float) * (m * H * hd + 3 * m * d + work));
    if (!att) return -1;
    float *o = att + m * H * hd, *on = o + m * d, *x = on + m * d, *w = x + m * d;
    attention_parts(q, qs, k, ks, v, vs, k0, k0s, v0, v0s, L0, mask, kind, ms, m, H, KH, 1, L, hd, hd, scale,
                    softcap, -1, att, w, threads);
    simlab_qlinear(att, m, H * hd, wo, so, oo, obits, ogroup, d, o, scratch, threads);
    if (post_attn) simlab_rms_norm(o, m, d, post_attn, eps, on);
    const float *add = post_attn ? on : o;
    for (int64_t i = 0; i < m * d; i++) h2[i] = h[i] + add[i];
    simlab_rms_norm(h2, m, d, pre_mlp, eps, x);
    simlab_qlinear_parts(x, m, d, 2, ws, scales, offsets, ns, bits, group, gu, scratch, threads);
    free(att);
    return 0;
}

/* h3 = h2 + x W^T (Gemma: h2 + post_mlp(x W^T)) for the MLP's down product. */
int simlab_block_out(const float *x, int64_t m, int64_t f, const void *wd, const void *sd, const void *od,
                      int bits, int group, const float *post_mlp, float eps, const float *h2, int64_t d,
                      float *h3, void *scratch, int threads) {
    float *y = malloc(sizeof(float) * 2 * m * d), *yn = y + m * d;
    if (!y) return -1;
    simlab_qlinear(x, m, f, wd, sd, od, bits, group, d, y, scratch, threads);
    if (post_mlp) simlab_rms_norm(y, m, d, post_mlp, eps, yn);
    const float *add = post_mlp ? yn : y;
    for (int64_t i = 0; i < m * d; i++) h3[i] = h2[i] + add[i];
    free(y);
    return 0;
}
