/* Fused CPU kernels for stochastic LWTA with U competing units (float32 or bfloat16).
 *
 * An input of shape (N, G*U, *S) holds N*G*S blocks: block (n, g, p) is the U units
 * g*U + k, k < U, at position p of example n. Two memory layouts (`nhwc`):
 *   0: contiguous NCHW: unit k of block (n, g, p) at ((n*G + g)*U + k)*S + p;
 *   1: units adjacent (channels_last, or dense (N, C)): at (q*G + g)*U + k, q = n*S + p.
 * Elements are float32 or bfloat16 (`bf16`); the kernels compute in float32 and store
 * in the input's type. Saved tensors (the winner index, the differences d) follow the
 * input's layout with 1 and U-1 units a block.
 *
 * U=2 has its own rule: with d = a - b, unit a wins with probability sigmoid(d) (softmax
 * over the pair); the difference of two Gumbel draws is logistic, so one uniform u per
 * block decides it: exact sample: a wins iff u < sigmoid(d); relaxed: s = sigmoid((d +
 * logit(u)) / tau). General U (up to MAX_U) draws a Gumbel g_k per unit: the exact sample
 * is argmax_k (h_k + g_k), the relaxed one softmax_k((h_k + g_k) / tau).
 *
 * Noise (the same whatever the layout): the uniform of unit k of block (n, g, p) is
 * half-word g mod 8 of Philox4x32-10 (Salmon et al. 2011) with counter (q mod 2^32,
 * q >> 32, g div 8, k), q = n*S + p, and key the call's 64-bit seed: half-word 2m + h is
 * bits 16h..16h+15 of word m, as (bits + 0.5) / 2^16. One 128-bit draw serves 8 blocks;
 * winner probabilities are resolved to 2^-16 (U=2: a wins with a multiple of 2^-16
 * nearest sigmoid(d); general U: each Gumbel takes one of 2^16 equiprobable values, from
 * -2.5 to 11.8). A uniform is a pure function of (seed, q, g, k), so a backward
 * pass regenerates it instead of storing it, and the result does not depend on threads.
 *
 * Work is split into tiles of 8 blocks (one draw's) across TQ positions; tiles run on
 * OpenMP threads. U=2 works on the tensors in place, a row (NCHW) or a position (channels_last)
 * at a time; general U gathers a tile into unit-major float arrays (unit k of the tile's block
 * o at [k*TB + o]), computes with plain loops over blocks, and scatters back.
 *
 * The relaxed kernels save d_k = h_k - h_{U-1} (k < U-1; for U=2, d = a - b) and the output
 * y: softmax is shift-invariant, so the weights w come back from d and the noise alone, and
 * the input from sum_k y_k = h_{U-1} + sum_k w_k d_k. With `hard`, the forward weights are
 * the one-hot argmax of the relaxed sample and the backward differentiates the relaxed
 * sample (straight-through).
 *
 * Fused BatchNorm: given per-channel scale and shift, the kernels read z = x*scale + shift in
 * place of x (BatchNorm's output), so that BatchNorm and LWTA make one pass. Their backward
 * then takes the input from x (nothing else saved), writes the gradient z' of z (times
 * grad_scale: BatchNorm in eval) and the channel sums of z' and z' * (x - center) that
 * BatchNorm's backward needs, per tile and added up in tile order (independent of threads).
 * lwta_channel_stats and lwta_channel_axpb are BatchNorm's other two passes in training.
 *
 * NaN: a block with a NaN unit outputs NaN in every unit (tested on the bits: -ffast-math
 * lets the compiler assume there are none).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TQ 64        /* positions a tile */
#define TB (8 * TQ)  /* blocks a tile */
#define MAX_U 16     /* the general-U kernels keep a few MAX_U x TB float arrays on the stack */
#define AI static inline __attribute__((always_inline))

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

typedef struct {
    int64_t N, G, U, S;
} geo_t;

/* Tile t: 8 blocks g = 8*g8 + r (r < rows) at TQ positions q = q0 + i (i < Q); for NCHW the
 * positions lie in one example n, from p0. Its block o = r*Q + i. */
typedef struct {
    int64_t g8, q0, n, p0;
    int rows, Q;
} tile_t;

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t n_tiles(const geo_t *g, int nhwc) {
    const int64_t g8s = (g->G + 7) / 8;
    return g8s * (nhwc ? (g->N * g->S + TQ - 1) / TQ : g->N * ((g->S + TQ - 1) / TQ));
}

AI tile_t tile_of(const geo_t *g, int64_t t, int nhwc) {
    const int64_t g8s = (g->G + 7) / 8;
    tile_t tl;
    if (nhwc) {
        tl.g8 = t % g8s, tl.q0 = (t / g8s) * TQ, tl.n = 0, tl.p0 = 0;
        tl.Q = (int)min64(TQ, g->N * g->S - tl.q0);
    } else {
        const int64_t runs = (g->S + TQ - 1) / TQ;
        tl.p0 = (t % runs) * TQ, tl.g8 = (t / runs) % g8s, tl.n = t / (runs * g8s);
        tl.q0 = tl.n * g->S + tl.p0, tl.Q = (int)min64(TQ, g->S - tl.p0);
    }
    tl.rows = (int)min64(8, g->G - tl.g8 * 8);
    return tl;
}

/* Offset of unit k of the tile's block row r, position 0, in a tensor of K units a block;
 * positions follow at stride pstride(). */
AI int64_t at(const geo_t *g, const tile_t *tl, int64_t K, int r, int64_t k, int nhwc) {
    const int64_t blk = tl->g8 * 8 + r;
    return nhwc ? (tl->q0 * g->G + blk) * K + k : ((tl->n * g->G + blk) * K + k) * g->S + tl->p0;
}

AI int64_t pstride(const geo_t *g, int64_t K, int nhwc) { return nhwc ? g->G * K : 1; }

/* ---- elements: float32 or bfloat16 (round to nearest even; NaN stays NaN) ------------ */

AI float ld(const void *t, int64_t o, int bf16) {
    if (!bf16) return ((const float *)t)[o];
    union { uint32_t u; float f; } c = {(uint32_t)((const uint16_t *)t)[o] << 16};
    return c.f;
}

/* The bfloat16 of v in the low 16 bits (32-bit arithmetic throughout: see ld2). */
AI uint32_t bf16_bits(float v) {
    union { float f; uint32_t u; } c = {v};
    const uint32_t rounded = (c.u + 0x7FFFu + ((c.u >> 16) & 1u)) >> 16;
    return (c.u & 0x7FFFFFFFu) > 0x7F800000u ? (c.u >> 16) | 0x40u : rounded;
}

AI void st(void *t, int64_t o, float v, int bf16) {
    if (bf16) ((uint16_t *)t)[o] = (uint16_t)bf16_bits(v);
    else ((float *)t)[o] = v;
}

/* Units a and b of a pair, at oa and ob. In channels_last bfloat16 they are adjacent (ob = oa + 1):
 * one 32-bit word holds both (a in its low half: little-endian), so the loop over a position's
 * blocks (8 at most) has no 16-bit type: 16-bit lanes would make the vectoriser take 16 blocks a
 * vector, more than the loop has, and leave it to half-width code. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the bfloat16 pair access assumes a little-endian CPU"
#endif
AI void ld2(const void *t, int64_t oa, int64_t ob, int nhwc, int bf16, float *a, float *b) {
    if (nhwc && bf16) {
        uint32_t v;
        __builtin_memcpy(&v, (const uint16_t *)t + oa, sizeof v);
        union { uint32_t u; float f; } ca = {v << 16}, cb = {v & 0xFFFF0000u};
        *a = ca.f, *b = cb.f;
        return;
    }
    *a = ld(t, oa, bf16), *b = ld(t, ob, bf16);
}

AI void st2(void *t, int64_t oa, int64_t ob, float a, float b, int nhwc, int bf16) {
    if (nhwc && bf16) {
        const uint32_t v = bf16_bits(a) | bf16_bits(b) << 16;
        __builtin_memcpy((uint16_t *)t + oa, &v, sizeof v);
        return;
    }
    st(t, oa, a, bf16), st(t, ob, b, bf16);
}

/* buf[k*TB + o] = unit k of the tile's block o, k < K, from t (element type per bf16), times
 * sc[r*K + k] plus sh[r*K + k] for the block's row r (the tile's channel affine; see tile_affine)
 * where sc is not NULL. */
AI void gather(const void *t, float *restrict buf, const geo_t *g, const tile_t *tl, int64_t K, const float *sc,
               const float *sh, int bf16, int nhwc) {
    const int64_t ps = pstride(g, K, nhwc);
    for (int r = 0; r < tl->rows; r++)
        for (int64_t k = 0; k < K; k++) {
            const int64_t o = at(g, tl, K, r, k, nhwc);
            const float s = sc ? sc[r * K + k] : 1.0f, c = sc ? sh[r * K + k] : 0.0f;
            float *restrict b = buf + k * TB + r * tl->Q;
            for (int i = 0; i < tl->Q; i++) b[i] = ld(t, o + i * ps, bf16) * s + c;
        }
}

/* A fused BatchNorm is a per-channel affine z = x*scale + shift applied as the kernels read x
 * (scale, shift: float32, one a channel, or NULL for none). s[r*U + k], t[r*U + k]: the affine of
 * unit k of the tile's block row r (1 and 0 past the last row or without one). */
AI void tile_affine(const float *scale, const float *shift, const geo_t *g, const tile_t *tl, float *s, float *t) {
    for (int j = 0; j < 8 * g->U; j++) {
        const int used = scale && j < tl->rows * g->U;
        s[j] = used ? scale[tl->g8 * 8 * g->U + j] : 1.0f;
        t[j] = used ? shift[tl->g8 * 8 * g->U + j] : 0.0f;
    }
}

/* NaN test on the bits: -ffast-math lets the compiler assume that no float is NaN. A block with
 * a NaN unit outputs NaN in every unit, in every kernel (as the eager softmax does). */
AI int is_nan(float v) {
    union { float f; uint32_t u; } c = {v};
    return (c.u & 0x7FFFFFFFu) > 0x7F800000u;
}

AI float nan_value(void) {
    union { uint32_t u; float f; } c = {0x7FC00000u};
    return c.f;
}

/* The inverse of gather(). */
AI void scatter(const float *restrict buf, void *t, const geo_t *g, const tile_t *tl, int64_t K, int bf16, int nhwc) {
    const int64_t ps = pstride(g, K, nhwc);
    for (int r = 0; r < tl->rows; r++)
        for (int64_t k = 0; k < K; k++) {
            const int64_t o = at(g, tl, K, r, k, nhwc);
            const float *restrict b = buf + k * TB + r * tl->Q;
            for (int i = 0; i < tl->Q; i++) st(t, o + i * ps, b[i], bf16);
        }
}

/* ---- noise --------------------------------------------------------------------------- */

/* Philox4x32-10 of the TQ counters (w[0][i], w[1][i], w[2][i], w[3][i]) with key seed, in
 * place. With AVX-512 in hand-written vectors (sixteen generators a register), elsewhere in
 * plain arrays that the compiler may vectorise; both give the same words. */
#if defined(__AVX512F__)
#include <immintrin.h>

/* High and low 32 bits of the sixteen 32x32-bit products a_i * m_i. */
static inline void mulhilo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
    const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

static void philox(uint32_t w[4][TQ], uint64_t seed) {
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    __m512i v[4][TQ / 16];
    for (int l = 0; l < 4; l++)
        for (int j = 0; j < TQ / 16; j++) v[l][j] = _mm512_loadu_si512(w[l] + 16 * j);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        const __m512i key0 = _mm512_set1_epi32((int)k0), key1 = _mm512_set1_epi32((int)k1);
        for (int j = 0; j < TQ / 16; j++) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(v[0][j], m0, &hi0, &lo0);
            mulhilo16(v[2][j], m1, &hi1, &lo1);
            v[0][j] = _mm512_xor_si512(_mm512_xor_si512(hi1, v[1][j]), key0);
            v[2][j] = _mm512_xor_si512(_mm512_xor_si512(hi0, v[3][j]), key1);
            v[1][j] = lo1;
            v[3][j] = lo0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (int l = 0; l < 4; l++)
        for (int j = 0; j < TQ / 16; j++) _mm512_storeu_si512(w[l] + 16 * j, v[l][j]);
}
#else
static void philox(uint32_t w[4][TQ], uint64_t seed) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < TQ; i++) {
            const uint64_t p0 = (uint64_t)PHILOX_M0 * w[0][i], p1 = (uint64_t)PHILOX_M1 * w[2][i];
            const uint32_t n0 = (uint32_t)(p1 >> 32) ^ w[1][i] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ w[3][i] ^ k1;
            w[1][i] = (uint32_t)p1, w[3][i] = (uint32_t)p0, w[0][i] = n0, w[2][i] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}
#endif

/* The draws of unit k for the tile's TQ positions: w[m][i], word m of position i's draw. */
static void draw(uint32_t w[4][TQ], uint64_t seed, const tile_t *tl, uint32_t k) {
    for (int i = 0; i < TQ; i++) {
        const uint64_t q = (uint64_t)tl->q0 + (uint64_t)i;
        w[0][i] = (uint32_t)q, w[1][i] = (uint32_t)(q >> 32), w[2][i] = (uint32_t)tl->g8, w[3][i] = k;
    }
    philox(w, seed);
}

/* The uniform of block row r at position i from the draws: half-word r (see the header). */
#define UNIFORM(w, r, i) (((float)(((w)[(r) >> 1][i] >> (16 * ((r) & 1))) & 0xFFFFu) + 0.5f) * (1.0f / 65536.0f))

/* The uniforms of the tile's blocks from its draws: block (r, i) at u[r*Q + i], or with
 * `by_position` at u[i*8 + r] (the order of a channels_last tile in memory). */
static void spread(float *restrict u, const uint32_t w[4][TQ], const tile_t *tl, int by_position) {
    if (by_position) {
        for (int i = 0; i < tl->Q; i++)
            for (int r = 0; r < 8; r++) u[i * 8 + r] = UNIFORM(w, r, i);
        return;
    }
    for (int r = 0; r < tl->rows; r++)
        for (int i = 0; i < tl->Q; i++) u[r * tl->Q + i] = UNIFORM(w, r, i);
}

static void fill(float *restrict u, uint64_t seed, const tile_t *tl, uint32_t k, int by_position) {
    uint32_t w[4][TQ];
    draw(w, seed, tl, k);
    spread(u, (const uint32_t(*)[TQ])w, tl, by_position);
}

/* Gumbel noise -log(-log u) for the U units of the tile, laid out as gather()'s. */
static void gumbel(float *g, int64_t U, uint64_t seed, const tile_t *tl, int n) {
    for (int64_t k = 0; k < U; k++) {
        float *restrict gk = g + k * TB;
        fill(gk, seed, tl, (uint32_t)k, 0);
        for (int o = 0; o < n; o++) gk[o] = -logf(-logf(gk[o]));
    }
}

/* expf's argument is kept below 80: under -ffast-math the division may be a reciprocal
 * estimate refined by a Newton step, which turns 1/inf into NaN. */
static inline float exp_(float z) { return expf(fminf(z, 80.0f)); }
static inline float sigmoidf_(float z) { return 1.0f / (1.0f + exp_(-z)); }

/* ---- competition within the tile (arrays as gather()'s, n blocks) --------------------- */

/* In place z_k = (a_k + z_k) * scale; m and arg get each block's largest score and its unit
 * (branch-free, so that it vectorises). */
static void scores(const float *restrict a, float *restrict z, float *restrict m, uint8_t *restrict arg, int64_t U,
                   int n, float scale) {
    for (int o = 0; o < n; o++) m[o] = z[o] = (a[o] + z[o]) * scale, arg[o] = 0;
    for (int64_t k = 1; k < U; k++)
        for (int o = 0; o < n; o++) {
            const float v = (a[k * TB + o] + z[k * TB + o]) * scale;
            const int better = v > m[o];
            z[k * TB + o] = v;
            m[o] = better ? v : m[o];
            arg[o] = better ? (uint8_t)k : arg[o];
        }
}


/* In place h_k = 0 unless k = arg: the winner keeps its response. */
static void keep_winner(float *restrict h, const uint8_t *restrict arg, int64_t U, int n) {
    for (int64_t k = 0; k < U; k++) {
        const uint8_t unit = (uint8_t)k;
        for (int o = 0; o < n; o++) h[k * TB + o] = arg[o] == unit ? h[k * TB + o] : 0.0f;
    }
}

/* Relaxed weights s_k = softmax_k((d_k + g_k) / tau) of each block from d_k = h_k - h_{U-1}
 * (d_{U-1} = 0), and arg = argmax_k s_k. */
static void relaxed_weights(const float *restrict d, float *restrict s, uint8_t *restrict arg, int64_t U,
                            uint64_t seed, const tile_t *tl, int n, float inv_tau) {
    float m[TB], sum[TB];
    gumbel(s, U, seed, tl, n);
    scores(d, s, m, arg, U, n, inv_tau);
    for (int o = 0; o < n; o++) sum[o] = 0.0f;
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) sum[o] += s[k * TB + o] = expf(s[k * TB + o] - m[o]);
    for (int o = 0; o < n; o++) sum[o] = 1.0f / sum[o];
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) s[k * TB + o] *= sum[o];
}

/* Sum over n blocks of KL[softmax(h) || uniform] = sum_k q_k (h_k - m) - log sum_k e^(h_k - m) + log U. */
static float kl_sum(const float *restrict h, int64_t U, int n) {
    float acc = 0.0f, m[TB], se[TB], sh[TB];
    for (int o = 0; o < n; o++) m[o] = h[o], se[o] = sh[o] = 0.0f;
    for (int64_t k = 1; k < U; k++)
        for (int o = 0; o < n; o++) m[o] = fmaxf(m[o], h[k * TB + o]);
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) {
            const float v = h[k * TB + o] - m[o], e = expf(v);
            se[o] += e;
            sh[o] += e * v;
        }
    const float logU = logf((float)U);
    for (int o = 0; o < n; o++) acc += sh[o] / se[o] - logf(se[o]) + logU;
    return acc;
}

/* ---- U = 2: straight from memory, one uniform a block -------------------------------- */

/* Run the body (the macro's last argument) for every block of the tile in memory order, with
 * oa, ob the offsets of its units a and b, oj its offset in a tensor of one unit a block (idx,
 * d), uu its uniform: from the draws w (NCHW: a row's uniforms lie in one word of each draw),
 * or from spread(ub, w, tl, 1) (channels_last). Blocks are visited once each, so the body may
 * read and write them in place (ivdep). */
#define FOR_PAIRS(g, tl, nhwc, w, ub, ...)                                                  \
    if (nhwc) {                                                                             \
        for (int i = 0; i < (tl).Q; i++) {                                                  \
            const int64_t oj0 = ((tl).q0 + i) * (g)->G + (tl).g8 * 8;                       \
            _Pragma("GCC ivdep") for (int r = 0; r < (tl).rows; r++) {                      \
                const int64_t oj = oj0 + r, oa = 2 * oj, ob = oa + 1;                       \
                const float uu = (ub)[i * 8 + r];                                           \
                __VA_ARGS__                                                                 \
            }                                                                               \
        }                                                                                   \
    } else {                                                                                \
        for (int r = 0; r < (tl).rows; r++) {                                               \
            const int64_t row = (tl).n * (g)->G + (tl).g8 * 8 + r;                          \
            const int64_t oj0 = row * (g)->S + (tl).p0, oa0 = 2 * row * (g)->S + (tl).p0;   \
            _Pragma("GCC ivdep") for (int i = 0; i < (tl).Q; i++) {                         \
                const int64_t oj = oj0 + i, oa = oa0 + i, ob = oa + (g)->S;                 \
                const float uu = UNIFORM(w, r, i);                                          \
                __VA_ARGS__                                                                        \
            }                                                                               \
        }                                                                                   \
    }

/* The tile's draws w, and for channels_last its uniforms u in memory order. */
#define DRAW_PAIRS(seed, g, tl, nhwc)                                                       \
    uint32_t w[4][TQ];                                                                      \
    float u[TB];                                                                            \
    draw(w, seed, tl, 0);                                                                   \
    if (nhwc) spread(u, (const uint32_t(*)[TQ])w, tl, 1);

/* tile_affine()'s arrays for pairs, by block row r: units a (sa, ta) and b (sb, tb); the factors
 * of the input gradient (ua, ub) and the centres of the channel sums (ca, cb). */
typedef struct {
    float sa[8], ta[8], sb[8], tb[8], ua[8], ub[8], ca[8], cb[8];
} pair_affine_t;

AI void split_pairs(const float *v, float *a, float *b) {
    for (int r = 0; r < 8; r++) a[r] = v[2 * r], b[r] = v[2 * r + 1];
}

/* The channel values of the tile's units, v[r*U + k] (dflt where values is NULL or past the last row). */
AI void tile_values(const float *values, float dflt, const geo_t *g, const tile_t *tl, float *v) {
    for (int j = 0; j < 8 * g->U; j++)
        v[j] = values && j < tl->rows * g->U ? values[tl->g8 * 8 * g->U + j] : dflt;
}

/* What a call reads and writes, and its settings (pointers NULL where unused). */
typedef struct {
    const void *x, *y, *gy;     /* input; output (the relaxed backward without x); upstream gradient */
    void *out;                  /* forward: y; backward: the input gradient */
    float *d;                   /* the saved differences of the relaxation */
    uint8_t *idx;               /* the winners of the exact sample */
    const float *scale, *shift; /* the fused BatchNorm's channel affine */
    const float *grad_scale;    /* backward: the input gradient is the affine input's times these */
    const float *center;        /* backward: the channel sums take (x - center) */
    double *part;               /* backward: the tiles' channel sums (see reduce_parts) */
    uint64_t seed;
    float inv_tau, kl_scale;
    int hard, want_kl;
} call_t;

AI pair_affine_t pair_affine(const call_t *p, const geo_t *g, const tile_t *tl) {
    pair_affine_t af;
    float v[16];
    tile_values(p->scale, 1.0f, g, tl, v), split_pairs(v, af.sa, af.sb);
    tile_values(p->scale ? p->shift : 0, 0.0f, g, tl, v), split_pairs(v, af.ta, af.tb);
    tile_values(p->grad_scale, 1.0f, g, tl, v), split_pairs(v, af.ua, af.ub);
    tile_values(p->center, 0.0f, g, tl, v), split_pairs(v, af.ca, af.cb);
    return af;
}

/* A tile's channel sums: part[j] = sum of the gradient z, part[8U + j] = sum of z (x - center), j = r*U + k. */
AI void store_pair_sums(double *part, const float acc[4][8], const tile_t *tl) {
    for (int r = 0; r < tl->rows; r++)
        part[2 * r] = acc[0][r], part[2 * r + 1] = acc[1][r], part[16 + 2 * r] = acc[2][r],
        part[16 + 2 * r + 1] = acc[3][r];
}

/* Exact sample of pairs: a wins iff u < sigmoid(a - b), written without a division. */
AI void sample2_run(const call_t *p, const geo_t *g, const tile_t *tl, const uint32_t w[4][TQ], const float *u,
                    const pair_affine_t *af, int save, int nhwc, int bf16) {
    const void *x = p->x;
    void *y = p->out;
    uint8_t *idx = p->idx;
    const float nanv = nan_value();
    FOR_PAIRS(g, *tl, nhwc, w, u, {
        float a, b;
        ld2(x, oa, ob, nhwc, bf16, &a, &b);
        a = a * af->sa[r] + af->ta[r], b = b * af->sb[r] + af->tb[r];
        const int nan = is_nan(a) | is_nan(b), win = uu * (1.0f + exp_(b - a)) < 1.0f;
        st2(y, oa, ob, nan ? nanv : win ? a : 0.0f, nan ? nanv : win ? 0.0f : b, nhwc, bf16);
        if (save) idx[oj] = (uint8_t)!win;
    })
}

AI void sample2_tile(const call_t *p, const geo_t *g, const tile_t *tl, int nhwc, int bf16) {
    DRAW_PAIRS(p->seed, g, tl, nhwc);
    const pair_affine_t af = pair_affine(p, g, tl);
    if (p->idx) sample2_run(p, g, tl, w, u, &af, 1, nhwc, bf16); /* flags as literals: loops without branches */
    else sample2_run(p, g, tl, w, u, &af, 0, nhwc, bf16);
}

/* The gradient goes to the winner, times grad_scale; with `sums` the tile's channel sums (x read). */
AI void sample2_backward_run(const call_t *p, const geo_t *g, const tile_t *tl, const pair_affine_t *af,
                             double *part, int sums, int nhwc, int bf16) {
    const uint32_t(*w)[TQ] = 0;
    const float *u = 0;
    const void *gy = p->gy, *x = p->x;
    const uint8_t *idx = p->idx;
    void *gx = p->out;
    float acc[4][8] = {{0}};
    FOR_PAIRS(g, *tl, nhwc, w, u, {
        float ga, gb;
        ld2(gy, oa, ob, nhwc, bf16, &ga, &gb);
        const uint8_t second = idx[oj];
        const float za = second == 0 ? ga : 0.0f, zb = second == 0 ? 0.0f : gb;
        st2(gx, oa, ob, za * af->ua[r], zb * af->ub[r], nhwc, bf16);
        if (sums) {
            float xa, xb;
            ld2(x, oa, ob, nhwc, bf16, &xa, &xb);
            acc[0][r] += za, acc[1][r] += zb, acc[2][r] += za * (xa - af->ca[r]), acc[3][r] += zb * (xb - af->cb[r]);
        }
        (void)uu;
    })
    if (sums) store_pair_sums(part, (const float(*)[8])acc, tl);
}

/* Concrete relaxation of pairs: y = (a*w, b*(1-w)), w = sigmoid((d + logit u) / tau), d = a - b,
 * or with `hard` w = [d + logit u > 0]; d saved (if not NULL). Returns the tile's summed KL of
 * softmax(a, b) to the uniform prior if want_kl: log 2 + s0*d - softplus(d), s0 = sigmoid(d),
 * written with e = exp(-|d|) against cancellation at large |d|; log(1 + e) rather than
 * log1p(e) (a quarter faster here): they differ only for e < 2^-24, below float resolution of
 * a block's KL (~log 2). */
AI float relaxed2_run(const call_t *p, const geo_t *g, const tile_t *tl, const uint32_t w[4][TQ], const float *u,
                      const pair_affine_t *af, int hard, int want_kl, int save, int nhwc, int bf16) {
    const void *x = p->x;
    void *y = p->out;
    float *d = p->d;
    const float inv_tau = p->inv_tau, nanv = nan_value(), log2 = 0.69314718f;
    float acc = 0.0f;
    FOR_PAIRS(g, *tl, nhwc, w, u, {
        float a, b;
        ld2(x, oa, ob, nhwc, bf16, &a, &b);
        a = a * af->sa[r] + af->ta[r], b = b * af->sb[r] + af->tb[r];
        const float di = a - b, v = di + logf(uu / (1.0f - uu));
        const float wa = hard ? (float)(v > 0.0f) : sigmoidf_(v * inv_tau);
        const int nan = is_nan(a) | is_nan(b);
        st2(y, oa, ob, nan ? nanv : a * wa, nan ? nanv : b * (1.0f - wa), nhwc, bf16);
        if (save) d[oj] = di;
    })
    if (want_kl) { /* a loop of its own, so that y's loop is the same code with and without it */
        FOR_PAIRS(g, *tl, nhwc, w, u, {
            float a, b;
            ld2(x, oa, ob, nhwc, bf16, &a, &b);
            a = a * af->sa[r] + af->ta[r], b = b * af->sb[r] + af->tb[r];
            const float di = fabsf(a - b), e = expf(-di);
            acc += is_nan(a) | is_nan(b) ? nanv : log2 - e / (1.0f + e) * di - logf(1.0f + e);
            (void)oj, (void)uu;
        })
    }
    return acc;
}

AI float relaxed2_tile(const call_t *p, const geo_t *g, const tile_t *tl, int nhwc, int bf16) {
    DRAW_PAIRS(p->seed, g, tl, nhwc);
    const pair_affine_t af = pair_affine(p, g, tl);
    /* the flags as literals: loops without branches */
#define RELAXED2(HARD, KL) (p->d ? relaxed2_run(p, g, tl, w, u, &af, HARD, KL, 1, nhwc, bf16) \
                                 : relaxed2_run(p, g, tl, w, u, &af, HARD, KL, 0, nhwc, bf16))
    return p->hard ? (p->want_kl ? RELAXED2(1, 1) : RELAXED2(1, 0)) : (p->want_kl ? RELAXED2(0, 1) : RELAXED2(0, 0));
#undef RELAXED2
}

/* Backward of relaxed2_tile. The input comes from x and the affine (`from_x`: the fused BatchNorm),
 * or from y and d: b = y_a + y_b - d*w, a = b + d. The gradient is written times grad_scale; with
 * `sums` (from_x only) the tile's channel sums go to part. */
AI void relaxed2_backward_run(const call_t *p, const geo_t *g, const tile_t *tl, const uint32_t w[4][TQ],
                              const float *u, const pair_affine_t *af, int hard, int from_x, int sums, int nhwc,
                              int bf16) {
    const void *gy = p->gy, *y = p->y, *x = p->x;
    const float *d = p->d;
    void *gx = p->out;
    const float inv_tau = p->inv_tau, kl_scale = p->kl_scale;
    float acc[4][8] = {{0}};
    FOR_PAIRS(g, *tl, nhwc, w, u, {
        float xa = 0.0f, xb = 0.0f, a = 0.0f, b = 0.0f, di;
        if (from_x) {
            ld2(x, oa, ob, nhwc, bf16, &xa, &xb);
            a = xa * af->sa[r] + af->ta[r], b = xb * af->sb[r] + af->tb[r], di = a - b;
        } else
            di = d[oj];
        const float v = di + logf(uu / (1.0f - uu)); /* as in the forward */
        const float s = sigmoidf_(v * inv_tau), wa = hard ? (float)(v > 0.0f) : s;
        float ga, gb;
        ld2(gy, oa, ob, nhwc, bf16, &ga, &gb);
        if (!from_x) {
            float ya, yb;
            ld2(y, oa, ob, nhwc, bf16, &ya, &yb);
            b = ya + yb - di * wa, a = b + di;
        }
        const float s0 = sigmoidf_(di);
        const float t = (ga * a - gb * b) * s * (1.0f - s) * inv_tau + kl_scale * di * s0 * (1.0f - s0);
        const float za = ga * wa + t, zb = gb * (1.0f - wa) - t;
        st2(gx, oa, ob, za * af->ua[r], zb * af->ub[r], nhwc, bf16);
        if (sums)
            acc[0][r] += za, acc[1][r] += zb, acc[2][r] += za * (xa - af->ca[r]), acc[3][r] += zb * (xb - af->cb[r]);
    })
    if (sums) store_pair_sums(p->part + 0, (const float(*)[8])acc, tl);
}

AI void relaxed2_backward_tile(const call_t *p, const geo_t *g, const tile_t *tl, double *part, int nhwc, int bf16) {
    DRAW_PAIRS(p->seed, g, tl, nhwc);
    const pair_affine_t af = pair_affine(p, g, tl);
    call_t q = *p;
    q.part = part;
#define RELAXED2_BACKWARD(HARD)                                                                   \
    if (!p->x) relaxed2_backward_run(&q, g, tl, w, u, &af, HARD, 0, 0, nhwc, bf16);              \
    else relaxed2_backward_run(&q, g, tl, w, u, &af, HARD, 1, 1, nhwc, bf16);
    if (p->hard) {
        RELAXED2_BACKWARD(1)
    } else {
        RELAXED2_BACKWARD(0)
    }
#undef RELAXED2_BACKWARD
}

/* ---- general U: a tile at a time in unit-major arrays ---------------------------------- */

/* flag[o]: whether block o has a NaN unit. */
static void nan_blocks(const float *restrict h, uint8_t *restrict flag, int64_t U, int n) {
    for (int o = 0; o < n; o++) flag[o] = 0;
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) flag[o] |= (uint8_t)is_nan(h[k * TB + o]);
}

/* In place h_k = NaN in the flagged blocks. */
static void fill_nan(float *restrict h, const uint8_t *restrict flag, int64_t U, int n) {
    const float nanv = nan_value();
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) h[k * TB + o] = flag[o] ? nanv : h[k * TB + o];
}

/* The tile's channel sums of the gradient z against the raw input xr (see store_pair_sums), and then
 * z times the unit's grad_scale v, in place. */
static void sums_and_scale(float *restrict z, const float *restrict xr, const float *c, const float *v, int64_t U,
                           const tile_t *tl, double *part) {
    for (int r = 0; r < tl->rows; r++)
        for (int64_t k = 0; k < U; k++) {
            float *restrict zk = z + k * TB + r * tl->Q;
            const float *restrict xk = xr + k * TB + r * tl->Q;
            const float ck = c[r * U + k], vk = v[r * U + k];
            if (part) {
                float s1 = 0.0f, s2 = 0.0f;
                for (int i = 0; i < tl->Q; i++) s1 += zk[i], s2 += zk[i] * (xk[i] - ck);
                part[r * U + k] = s1, part[8 * U + r * U + k] = s2;
            }
            for (int i = 0; i < tl->Q; i++) zk[i] *= vk;
        }
}

/* Exact sample: y gets the winners' responses (y may be x), idx (may be NULL) their units. */
AI void sample_tile(const call_t *p, const geo_t *g, int64_t t, int nhwc, int bf16) {
    const tile_t tl = tile_of(g, t, nhwc);
    if (g->U == 2) {
        sample2_tile(p, g, &tl, nhwc, bf16);
        return;
    }
    float h[MAX_U * TB], e[MAX_U * TB], m[TB], sc[8 * MAX_U], sh[8 * MAX_U];
    uint8_t arg[TB], bad[TB];
    const int n = tl.rows * tl.Q;
    tile_values(p->scale, 1.0f, g, &tl, sc), tile_values(p->scale ? p->shift : 0, 0.0f, g, &tl, sh);
    gather(p->x, h, g, &tl, g->U, sc, sh, bf16, nhwc);
    nan_blocks(h, bad, g->U, n);
    gumbel(e, g->U, p->seed, &tl, n);
    scores(h, e, m, arg, g->U, n, 1.0f);
    keep_winner(h, arg, g->U, n);
    fill_nan(h, bad, g->U, n);
    scatter(h, p->out, g, &tl, g->U, bf16, nhwc);
    if (p->idx) {
        const int64_t ps = pstride(g, 1, nhwc);
        for (int r = 0; r < tl.rows; r++) {
            const int64_t o = at(g, &tl, 1, r, 0, nhwc);
            for (int i = 0; i < tl.Q; i++) p->idx[o + i * ps] = arg[r * tl.Q + i];
        }
    }
}

/* Backward of the exact sample: the gradient goes to the winner (times grad_scale; channel sums to part). */
AI void sample_backward_tile(const call_t *p, const geo_t *g, int64_t t, double *part, int nhwc, int bf16) {
    const tile_t tl = tile_of(g, t, nhwc);
    if (g->U == 2) {
        const pair_affine_t af = pair_affine(p, g, &tl);
        if (part) sample2_backward_run(p, g, &tl, &af, part, 1, nhwc, bf16);
        else sample2_backward_run(p, g, &tl, &af, part, 0, nhwc, bf16);
        return;
    }
    float h[MAX_U * TB], xr[MAX_U * TB], c[8 * MAX_U], v[8 * MAX_U];
    uint8_t arg[TB];
    const int64_t ps = pstride(g, 1, nhwc);
    for (int r = 0; r < tl.rows; r++) {
        const int64_t o = at(g, &tl, 1, r, 0, nhwc);
        for (int i = 0; i < tl.Q; i++) arg[r * tl.Q + i] = p->idx[o + i * ps];
    }
    gather(p->gy, h, g, &tl, g->U, 0, 0, bf16, nhwc);
    keep_winner(h, arg, g->U, tl.rows * tl.Q);
    if (part) gather(p->x, xr, g, &tl, g->U, 0, 0, bf16, nhwc);
    tile_values(p->center, 0.0f, g, &tl, c), tile_values(p->grad_scale, 1.0f, g, &tl, v);
    sums_and_scale(h, xr, c, v, g->U, &tl, part);
    scatter(h, p->out, g, &tl, g->U, bf16, nhwc);
}

/* Relaxed sample: y from the weights (one-hot with `hard`), d (may be NULL) gets d_k = h_k - h_{U-1};
 * returns the tile's summed KL (0 unless want_kl). */
AI float relaxed_tile(const call_t *p, const geo_t *g, int64_t t, int nhwc, int bf16) {
    const tile_t tl = tile_of(g, t, nhwc);
    if (g->U == 2) return relaxed2_tile(p, g, &tl, nhwc, bf16);
    float h[MAX_U * TB], dv[MAX_U * TB], w[MAX_U * TB], sc[8 * MAX_U], sh[8 * MAX_U];
    uint8_t arg[TB], bad[TB];
    const int64_t U = g->U;
    const int n = tl.rows * tl.Q;
    const float *last = h + (U - 1) * TB;
    tile_values(p->scale, 1.0f, g, &tl, sc), tile_values(p->scale ? p->shift : 0, 0.0f, g, &tl, sh);
    gather(p->x, h, g, &tl, U, sc, sh, bf16, nhwc);
    nan_blocks(h, bad, U, n);
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) dv[k * TB + o] = h[k * TB + o] - last[o];
    relaxed_weights(dv, w, arg, U, p->seed, &tl, n, p->inv_tau);
    float kl = p->want_kl ? kl_sum(h, U, n) : 0.0f;
    if (p->want_kl)
        for (int o = 0; o < n; o++) kl += bad[o] ? nan_value() : 0.0f;
    if (p->d) scatter(dv, p->d, g, &tl, U - 1, 0, nhwc);
    if (p->hard) keep_winner(h, arg, U, n);
    else
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++) h[k * TB + o] *= w[k * TB + o];
    fill_nan(h, bad, U, n);
    scatter(h, p->out, g, &tl, U, bf16, nhwc);
    return kl;
}

/* Backward of the relaxed sample, the input from x and the affine or from y and d (see the header). */
AI void relaxed_backward_tile(const call_t *p, const geo_t *g, int64_t t, double *part, int nhwc, int bf16) {
    const tile_t tl = tile_of(g, t, nhwc);
    if (g->U == 2) {
        relaxed2_backward_tile(p, g, &tl, part, nhwc, bf16);
        return;
    }
    float gv[MAX_U * TB], h[MAX_U * TB], dv[MAX_U * TB], s[MAX_U * TB], xr[MAX_U * TB];
    float ref[TB], a[TB], sc[8 * MAX_U], sh[8 * MAX_U];
    uint8_t arg[TB];
    const int64_t U = g->U;
    const int n = tl.rows * tl.Q;
    const float inv_tau = p->inv_tau, kl_scale = p->kl_scale;
    gather(p->gy, gv, g, &tl, U, 0, 0, bf16, nhwc);
    if (p->x) {
        tile_values(p->scale, 1.0f, g, &tl, sc), tile_values(p->scale ? p->shift : 0, 0.0f, g, &tl, sh);
        gather(p->x, h, g, &tl, U, sc, sh, bf16, nhwc);
        if (part) gather(p->x, xr, g, &tl, U, 0, 0, bf16, nhwc);
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++) dv[k * TB + o] = h[k * TB + o] - h[(U - 1) * TB + o];
    } else {
        gather(p->y, h, g, &tl, U, 0, 0, bf16, nhwc);
        gather(p->d, dv, g, &tl, U - 1, 0, 0, 0, nhwc);
        for (int o = 0; o < n; o++) dv[(U - 1) * TB + o] = 0.0f;
    }
    relaxed_weights(dv, s, arg, U, p->seed, &tl, n, inv_tau); /* as in the forward */
    if (!p->x) { /* the input: h_{U-1} = sum_k y_k - sum_k w_k d_k, h_k = h_{U-1} + d_k */
        for (int o = 0; o < n; o++) ref[o] = 0.0f;
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++)
                ref[o] += h[k * TB + o] - dv[k * TB + o] * (p->hard ? (float)(arg[o] == k) : s[k * TB + o]);
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++) h[k * TB + o] = ref[o] + dv[k * TB + o];
    }
    for (int o = 0; o < n; o++) a[o] = 0.0f;
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) a[o] += gv[k * TB + o] * h[k * TB + o] * s[k * TB + o];
    /* d/dh_k of sum_l g_l h_l w_l: g_k w_k + s_k (g_k h_k - sum_l g_l h_l s_l) / tau */
    for (int64_t k = 0; k < U; k++)
        for (int o = 0; o < n; o++) {
            const float gk = gv[k * TB + o], sk = s[k * TB + o], wk = p->hard ? (float)(arg[o] == k) : sk;
            h[k * TB + o] = gk * wk + sk * (gk * h[k * TB + o] - a[o]) * inv_tau;
        }
    if (kl_scale != 0.0f) { /* d KL / dh_k = q_k (d_k - sum_l q_l d_l), q = softmax(d) */
        float md[TB], qs[TB], qd[TB];
        for (int o = 0; o < n; o++) md[o] = 0.0f, qs[o] = qd[o] = 0.0f;
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++) md[o] = fmaxf(md[o], dv[k * TB + o]);
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++) {
                const float q = expf(dv[k * TB + o] - md[o]);
                gv[k * TB + o] = q;
                qs[o] += q;
                qd[o] += q * dv[k * TB + o];
            }
        for (int o = 0; o < n; o++) qs[o] = 1.0f / qs[o], qd[o] *= qs[o];
        for (int64_t k = 0; k < U; k++)
            for (int o = 0; o < n; o++)
                h[k * TB + o] += kl_scale * gv[k * TB + o] * qs[o] * (dv[k * TB + o] - qd[o]);
    }
    tile_values(p->center, 0.0f, g, &tl, sc), tile_values(p->grad_scale, 1.0f, g, &tl, sh);
    sums_and_scale(h, xr, sc, sh, U, &tl, part);
    scatter(h, p->out, g, &tl, U, bf16, nhwc);
}

/* ---- entry points ----------------------------------------------------------------------
 * layout = nhwc | 2*bf16; the switch gives each (layout, dtype) its own compiled tile loop. */
#define DISPATCH(layout, F, ...)                        \
    switch (layout) {                                   \
    case 0: F(__VA_ARGS__, 0, 0); break;                \
    case 1: F(__VA_ARGS__, 1, 0); break;                \
    case 2: F(__VA_ARGS__, 0, 1); break;                \
    default: F(__VA_ARGS__, 1, 1); break;               \
    }
#define PARALLEL_TILES _Pragma("omp parallel for num_threads(threads) schedule(static) if (threads > 1)")

/* The tiles' channel sums (16U doubles a tile, see store_pair_sums) added up in tile order, so
 * that they do not depend on the threads: sums[c] = sum of z, sums[C + c] = sum of z (x - center). */
static void reduce_parts(const double *part, double *sums, const geo_t *g, int64_t T, int nhwc) {
    const int64_t C = g->G * g->U, P = 16 * g->U;
    for (int64_t c = 0; c < 2 * C; c++) sums[c] = 0.0;
    for (int64_t t = 0; t < T; t++) {
        const tile_t tl = tile_of(g, t, nhwc);
        const int64_t base = tl.g8 * 8 * g->U;
        for (int64_t j = 0; j < tl.rows * g->U; j++)
            sums[base + j] += part[t * P + j], sums[C + base + j] += part[t * P + 8 * g->U + j];
    }
}

/* Exact one-hot sample of z = x*scale + shift (scale, shift: NULL for z = x). y gets the winner's
 * response; idx (may be NULL) its index in the block. */
void lwta_sample(const void *x, void *y, uint8_t *idx, const float *scale, const float *shift, int64_t N, int64_t G,
                 int64_t U, int64_t S, int layout, uint64_t seed, int threads) {
    const geo_t g = {N, G, U, S};
    const call_t p = {.x = x, .out = y, .idx = idx, .scale = scale, .shift = shift, .seed = seed};
    const int64_t T = n_tiles(&g, layout & 1);
    PARALLEL_TILES
    for (int64_t t = 0; t < T; t++) DISPATCH(layout, sample_tile, &p, &g, t)
}

/* Backward of the exact sample: the gradient goes to the winner, times grad_scale (NULL: 1). With
 * sums (2C doubles, or NULL), x's channel sums of the winner's gradient z and of z * x. */
void lwta_sample_backward(const void *gy, const uint8_t *idx, void *gx, const void *x, const float *grad_scale,
                          double *sums, int64_t N, int64_t G, int64_t U, int64_t S, int layout, int threads) {
    const geo_t g = {N, G, U, S};
    const call_t p = {.gy = gy, .idx = (uint8_t *)idx, .out = gx, .x = x, .grad_scale = grad_scale};
    const int64_t T = n_tiles(&g, layout & 1), P = 16 * U;
    double *part = sums ? (double *)malloc((size_t)(T * P) * sizeof(double)) : 0;
    PARALLEL_TILES
    for (int64_t t = 0; t < T; t++) DISPATCH(layout, sample_backward_tile, &p, &g, t, part ? part + t * P : 0)
    if (sums) reduce_parts(part, sums, &g, T, layout & 1), free(part);
}

/* Concrete relaxation at temperature tau of z = x*scale + shift (one-hot forward with `hard`).
 * Writes d (may be NULL: no backward, or one from x; U-1 units per block) and returns the KL of
 * q = softmax(z) to the uniform prior summed over all blocks (0 unless want_kl). */
double lwta_relaxed(const void *x, void *y, float *d, const float *scale, const float *shift, int64_t N, int64_t G,
                    int64_t U, int64_t S, int layout, uint64_t seed, float tau, int hard, int want_kl, int threads) {
    const geo_t g = {N, G, U, S};
    const call_t p = {.x = x, .out = y, .d = d, .scale = scale, .shift = shift, .seed = seed, .inv_tau = 1.0f / tau,
                      .hard = hard, .want_kl = want_kl};
    const int64_t T = n_tiles(&g, layout & 1);
    double kl = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) reduction(+ : kl)
    for (int64_t t = 0; t < T; t++) {
        float part = 0.0f;
        DISPATCH(layout, part = relaxed_tile, &p, &g, t)
        kl += part;
    }
    return kl;
}

/* Backward of lwta_relaxed, the noise regenerated from (seed, position, block, unit), the input
 * from x (not NULL: z = x*scale + shift) or else from y and the saved d. kl_scale is the gradient of
 * the loss w.r.t. the summed KL (0: none). The gradient is written times grad_scale (NULL: 1); with
 * sums (2C doubles; needed with x, NULL without), the channel sums of the gradient z and of z (x - center). */
void lwta_relaxed_backward(const void *gy, const void *y, const float *d, const void *x, const float *scale,
                           const float *shift, const float *grad_scale, const float *center, double *sums, void *gx,
                           int64_t N, int64_t G, int64_t U, int64_t S, int layout, uint64_t seed, float tau, int hard,
                           float kl_scale, int threads) {
    const geo_t g = {N, G, U, S};
    const call_t p = {.gy = gy, .y = y, .d = (float *)d, .x = x, .scale = scale, .shift = shift,
                      .grad_scale = grad_scale, .center = center, .out = gx, .seed = seed, .inv_tau = 1.0f / tau,
                      .kl_scale = kl_scale, .hard = hard};
    const int64_t T = n_tiles(&g, layout & 1), P = 16 * U;
    double *part = sums ? (double *)malloc((size_t)(T * P) * sizeof(double)) : 0;
    PARALLEL_TILES
    for (int64_t t = 0; t < T; t++) DISPATCH(layout, relaxed_backward_tile, &p, &g, t, part ? part + t * P : 0)
    if (sums) reduce_parts(part, sums, &g, T, layout & 1), free(part);
}

/* ---- BatchNorm's own passes over (N, C, S) tensors ------------------------------------- */

#define STATS_Q 256 /* channels_last positions a chunk */

/* Per-channel sum and sum of squares of x - ref_c (ref_c: the channel's first element, against
 * cancellation) in double: mean = ref + s1/M, var = s2/M - (s1/M)^2 (M = N*S). Written to
 * out[c] = ref, out[C + c] = s1, out[2C + c] = s2, added up in a fixed order (thread-independent). */
void lwta_channel_stats(const void *x, double *out, int64_t N, int64_t C, int64_t S, int layout, int threads) {
    const int nhwc = layout & 1, bf16 = layout >> 1;
    double *ref = out, *s1 = out + C, *s2 = out + 2 * C;
    for (int64_t c = 0; c < C; c++) ref[c] = N * S > 0 ? ld(x, nhwc ? c : c * S, bf16) : 0.0, s1[c] = s2[c] = 0.0;
    if (!nhwc) {
        double *part = (double *)malloc((size_t)(2 * N * C) * sizeof(double));
        PARALLEL_TILES
        for (int64_t row = 0; row < N * C; row++) {
            const int64_t c = row % C;
            const double r = ref[c];
            double a = 0.0, b = 0.0;
            if (bf16)
                for (int64_t i = 0; i < S; i++) { const double v = ld(x, row * S + i, 1) - r; a += v, b += v * v; }
            else
                for (int64_t i = 0; i < S; i++) { const double v = ((const float *)x)[row * S + i] - r; a += v, b += v * v; }
            part[2 * row] = a, part[2 * row + 1] = b;
        }
        for (int64_t row = 0; row < N * C; row++) s1[row % C] += part[2 * row], s2[row % C] += part[2 * row + 1];
        free(part);
        return;
    }
    const int64_t M = N * S, chunks = (M + STATS_Q - 1) / STATS_Q;
    double *part = (double *)calloc((size_t)(2 * chunks * C), sizeof(double));
    PARALLEL_TILES
    for (int64_t k = 0; k < chunks; k++) {
        double *a = part + 2 * k * C, *b = a + C;
        for (int64_t q = k * STATS_Q; q < min64(M, (k + 1) * STATS_Q); q++)
            for (int64_t c = 0; c < C; c++) {
                const double v = ld(x, q * C + c, bf16) - ref[c];
                a[c] += v, b[c] += v * v;
            }
    }
    for (int64_t k = 0; k < chunks; k++)
        for (int64_t c = 0; c < C; c++) s1[c] += part[2 * k * C + c], s2[c] += part[2 * k * C + C + c];
    free(part);
}

/* gx = a_c * gz + b_c * x + e_c over (N, C, S) tensors (gx may be gz): the BatchNorm backward's
 * last pass, once the channel sums are known. */
void lwta_channel_axpb(const void *gz, const void *x, void *gx, const float *a, const float *b, const float *e,
                       int64_t N, int64_t C, int64_t S, int layout, int threads) {
    const int nhwc = layout & 1, bf16 = layout >> 1;
    if (!nhwc) {
        PARALLEL_TILES
        for (int64_t row = 0; row < N * C; row++) {
            const int64_t c = row % C, o = row * S;
            const float ac = a[c], bc = b[c], ec = e[c];
            if (bf16)
                for (int64_t i = 0; i < S; i++) st(gx, o + i, ac * ld(gz, o + i, 1) + bc * ld(x, o + i, 1) + ec, 1);
            else
                for (int64_t i = 0; i < S; i++)
                    ((float *)gx)[o + i] = ac * ((const float *)gz)[o + i] + bc * ((const float *)x)[o + i] + ec;
        }
        return;
    }
    PARALLEL_TILES
    for (int64_t q = 0; q < N * S; q++) {
        if (bf16)
            for (int64_t c = 0; c < C; c++) st(gx, q * C + c, a[c] * ld(gz, q * C + c, 1) + b[c] * ld(x, q * C + c, 1) + e[c], 1);
        else
            for (int64_t c = 0; c < C; c++)
                ((float *)gx)[q * C + c] = a[c] * ((const float *)gz)[q * C + c] + b[c] * ((const float *)x)[q * C + c] + e[c];
    }
}

/* The uniforms the kernels draw for unit k of every block of an (N, G*U, *S) input, written
 * in NCHW block order (n, g, p): for tests and references. */
void lwta_uniforms(float *out, int64_t N, int64_t G, int64_t S, uint64_t seed, int64_t k) {
    const geo_t g = {N, G, 1, S};
    float u[TB];
    for (int64_t t = 0; t < n_tiles(&g, 0); t++) {
        const tile_t tl = tile_of(&g, t, 0);
        fill(u, seed, &tl, (uint32_t)k, 0);
        scatter(u, out, &g, &tl, 1, 0, 0);
    }
}

/* The largest U the kernels take (callers fall back to eager code above it). */
int lwta_max_units(void) { return MAX_U; }
