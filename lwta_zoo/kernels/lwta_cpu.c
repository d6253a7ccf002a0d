/* Fused CPU kernels for stochastic LWTA with U competing units (float32, contiguous).
 *
 * A tensor of shape (N, C, *S) is R = N*C/U rows of U units, each unit a contiguous run
 * of S values: block j = r*S + p holds units h_k = x[r*U*S + k*S + p], k < U.
 *
 * U=2 has its own path: with d = a - b, unit a wins with probability sigmoid(d) (softmax
 * over the pair); the difference of two Gumbel draws is logistic, so one uniform u per
 * block decides it: exact sample: a wins iff u < sigmoid(d), i.e. d - logit(u) > 0;
 * relaxed: s = sigmoid((d + logit(u)) / tau).
 * General U (up to MAX_U) draws a Gumbel g_k per unit: the exact sample is
 * argmax_k (h_k + g_k), the relaxed one softmax_k((h_k + g_k) / tau). Its kernels gather a
 * chunk of blocks into unit-major local arrays (see gather()) so that every step is a
 * plain loop over blocks.
 *
 * Noise: counter-based Philox4x32-10 (Salmon et al. 2011), keyed by a 64-bit seed drawn
 * from torch's generator for each call. Block j's uniform for unit k (k = 0 for U=2) is a
 * pure function of (seed, j, k), independent of threads, so a backward pass regenerates
 * it instead of storing it. Blocks are processed in chunks of CHUNK (see fill()), chunks
 * spread over OpenMP threads.
 *
 * The relaxed kernels save d_k = h_k - h_{U-1} (k < U-1; for U=2, d = a - b) and the output
 * y: softmax is shift-invariant, so the weights w come back from d and the noise alone, and
 * the input from sum_k y_k = h_{U-1} + sum_k w_k d_k. With `hard`, the forward weights are
 * the one-hot argmax of the relaxed sample and the backward differentiates the relaxed
 * sample (straight-through).
 */
#include <math.h>
#include <stdint.h>

#define CHUNK 256
#define GROUPS (CHUNK / 4)
#define MAX_U 16 /* general-U kernels keep four U x CHUNK float arrays on the stack (64 KiB) */

/* Uniforms in (0, 1) for the CHUNK blocks of chunk c and unit k: offset o = lane*GROUPS + g
 * takes word `lane` of Philox4x32-10(counter = (g, c_lo, c_hi, k), key = seed), as
 * ((word >> 8) + 0.5) / 2^24 in float arithmetic, at most U_MAX (a uniform of 1 would give
 * an infinite Gumbel and a block of NaN). The GROUPS generators run side by side, one round
 * at a time: with AVX2 in hand-written vectors (eight generators a register, four registers
 * interleaved), elsewhere in plain arrays that the compiler may vectorise; both give the
 * same words. */
#define U_MAX 0x1.fffffep-1f /* the largest float below 1: (2^24 - 1) + 0.5 would round up to 1 */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#if defined(__AVX2__)
#include <immintrin.h>
#define VECTORS 4 /* registers of eight generators interleaved, for instruction-level parallelism */

/* High and low 32 bits of the eight 32x32-bit products a_i * m_i. */
static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

static void fill(float *u, uint64_t seed, uint64_t c, uint32_t k) {
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    const __m256 scale = _mm256_set1_ps(1.0f / 16777216.0f), half = _mm256_set1_ps(0.5f), top = _mm256_set1_ps(U_MAX);
    for (int g = 0; g < GROUPS; g += 8 * VECTORS) {
        __m256i w[4][VECTORS];
        for (int v = 0; v < VECTORS; v++) {
            w[0][v] = _mm256_add_epi32(_mm256_set1_epi32(g + 8 * v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            w[1][v] = _mm256_set1_epi32((int)(uint32_t)c);
            w[2][v] = _mm256_set1_epi32((int)(uint32_t)(c >> 32));
            w[3][v] = _mm256_set1_epi32((int)k);
        }
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            const __m256i key0 = _mm256_set1_epi32((int)k0), key1 = _mm256_set1_epi32((int)k1);
            for (int v = 0; v < VECTORS; v++) {
                __m256i hi0, lo0, hi1, lo1;
                mulhilo8(w[0][v], m0, &hi0, &lo0);
                mulhilo8(w[2][v], m1, &hi1, &lo1);
                w[0][v] = _mm256_xor_si256(_mm256_xor_si256(hi1, w[1][v]), key0);
                w[2][v] = _mm256_xor_si256(_mm256_xor_si256(hi0, w[3][v]), key1);
                w[1][v] = lo1;
                w[3][v] = lo0;
            }
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        for (int lane = 0; lane < 4; lane++)
            for (int v = 0; v < VECTORS; v++) {
                const __m256 f = _mm256_cvtepi32_ps(_mm256_srli_epi32(w[lane][v], 8));
                const __m256 uniform = _mm256_min_ps(_mm256_mul_ps(_mm256_add_ps(f, half), scale), top);
                _mm256_storeu_ps(u + lane * GROUPS + g + 8 * v, uniform);
            }
    }
}
#else
static void fill(float *u, uint64_t seed, uint64_t c, uint32_t k) {
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    uint32_t w0[GROUPS], w1[GROUPS], w2[GROUPS], w3[GROUPS];
    for (int g = 0; g < GROUPS; g++) w0[g] = (uint32_t)g, w1[g] = (uint32_t)c, w2[g] = (uint32_t)(c >> 32), w3[g] = k;
    for (int round = 0; round < 10; round++) {
        for (int g = 0; g < GROUPS; g++) {
            const uint64_t p0 = (uint64_t)PHILOX_M0 * w0[g], p1 = (uint64_t)PHILOX_M1 * w2[g];
            const uint32_t n0 = (uint32_t)(p1 >> 32) ^ w1[g] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ w3[g] ^ k1;
            w1[g] = (uint32_t)p1, w3[g] = (uint32_t)p0, w0[g] = n0, w2[g] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    const uint32_t *words[4] = {w0, w1, w2, w3};
    for (int lane = 0; lane < 4; lane++)
        for (int g = 0; g < GROUPS; g++)
            u[lane * GROUPS + g] = fminf(((float)(words[lane][g] >> 8) + 0.5f) * (1.0f / 16777216.0f), U_MAX);
}
#endif

/* Visit blocks [j0, j1) of one chunk of a tensor with K units per block as runs that are
 * contiguous within a row: calls BODY(off, n, q) for n blocks whose first unit starts at
 * offset `off` and whose chunk-local index starts at q. */
#define FOR_RUNS(K, S, j0, j1, BODY)                                \
    for (int64_t j = (j0); j < (j1);) {                             \
        const int64_t r = j / (S), p = j % (S);                     \
        const int64_t n = ((S) - p) < ((j1) - j) ? ((S) - p) : ((j1) - j); \
        BODY(r * (K) * (S) + p, n, j - (j0));                       \
        j += n;                                                     \
    }

/* expf's argument is kept below 80: under -ffast-math the division may be a reciprocal
 * estimate refined by a Newton step, which turns 1/inf into NaN. */
static inline float exp_(float z) { return expf(fminf(z, 80.0f)); }
static inline float sigmoidf_(float z) { return 1.0f / (1.0f + exp_(-z)); }

/* ---- U = 2 ------------------------------------------------------------------------ */

/* Exact one-hot sample of pairs. y gets the winner's response; idx (may be NULL) the
 * winner's index (0: the first unit). */
static void sample2(const float *x, float *y, uint8_t *idx, int64_t R, int64_t S, uint64_t seed, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        float u[CHUNK];
        fill(u, seed, (uint64_t)c, 0);
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B;
#define SAMPLE_RUN(off, n, q)                                                   \
        {                                                                       \
            const float *a = x + (off), *b = a + S;                             \
            float *ya = y + (off), *yb = ya + S;                                \
            const float *uu = u + (q);                                          \
            uint8_t *m = idx ? idx + j : 0;                                     \
            _Pragma("GCC ivdep") /* y may be x: each block is read before it is written */ \
            for (int64_t i = 0; i < (n); i++) {                                 \
                const int win = uu[i] * (1.0f + exp_(b[i] - a[i])) < 1.0f;      \
                ya[i] = win ? a[i] : 0.0f;                                      \
                yb[i] = win ? 0.0f : b[i];                                      \
                if (m) m[i] = (uint8_t)!win;                                    \
            }                                                                   \
        }
        FOR_RUNS(2, S, j0, j1, SAMPLE_RUN)
    }
}

/* Concrete relaxation of pairs at temperature tau: y = (a*w, b*(1-w)) with w = s, or with
 * `hard` w = [s > 1/2]. Writes d = a - b (may be NULL: no backward) and returns the KL of
 * q = softmax(a, b) to the uniform prior summed over all blocks (0 unless want_kl). */
static double relaxed2(const float *x, float *y, float *d, int64_t R, int64_t S, uint64_t seed, float tau, int hard,
                       int want_kl, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
    const float inv_tau = 1.0f / tau, log2 = 0.69314718f;
    double kl = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) reduction(+ : kl)
    for (int64_t c = 0; c < chunks; c++) {
        float u[CHUNK];
        fill(u, seed, (uint64_t)c, 0);
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B;
        float acc = 0.0f;
#define RELAXED_RUN(off, n, q)                                                  \
        {                                                                       \
            const float *restrict a = x + (off), *restrict b = a + S;                             \
            float *restrict ya = y + (off), *restrict yb = ya + S;                                \
            const float *restrict uu = u + (q);                                          \
            float *restrict dd = d ? d + j : 0;                                          \
            for (int64_t i = 0; i < (n); i++) {                                 \
                const float di = a[i] - b[i];                                   \
                const float v = di + logf(uu[i] / (1.0f - uu[i]));              \
                const float w = hard ? (float)(v > 0.0f) : sigmoidf_(v * inv_tau); \
                ya[i] = a[i] * w;                                               \
                yb[i] = b[i] * (1.0f - w);                                      \
                if (dd) dd[i] = di;                                             \
            }                                                                   \
            if (want_kl)                                                        \
                for (int64_t i = 0; i < (n); i++) {                             \
                    const float di = a[i] - b[i];                               \
                    /* KL = log 2 + s0*d - softplus(d), s0 = sigmoid(d), written    \
                     * with e = exp(-|d|) to avoid cancellation at large |d|; log(1 + e) \
                     * rather than log1p(e) (a quarter faster here): they differ only   \
                     * for e < 2^-24, below float resolution of a block's KL (~log 2) */ \
                    const float e = expf(-fabsf(di));                           \
                    acc += log2 - e / (1.0f + e) * fabsf(di) - logf(1.0f + e);  \
                }                                                               \
        }
        FOR_RUNS(2, S, j0, j1, RELAXED_RUN)
        kl += acc;
    }
    return kl;
}

/* One run of n blocks of relaxed2_backward (below). */
static inline void relaxed2_backward_run(const float *restrict ga, const float *restrict gb, const float *restrict ya,
                                         const float *restrict yb, const float *restrict d, const float *restrict u,
                                         float *restrict xa, float *restrict xb, int64_t n, float inv_tau, int hard,
                                         float kl_scale) {
    for (int64_t i = 0; i < n; i++) {
        const float v = d[i] + logf(u[i] / (1.0f - u[i])); /* as in the forward */
        const float s = sigmoidf_(v * inv_tau), w = hard ? (float)(v > 0.0f) : s;
        const float b = ya[i] + yb[i] - d[i] * w, a = b + d[i];
        const float s0 = sigmoidf_(d[i]);
        const float t = (ga[i] * a - gb[i] * b) * s * (1.0f - s) * inv_tau + kl_scale * d[i] * s0 * (1.0f - s0);
        xa[i] = ga[i] * w + t;
        xb[i] = gb[i] * (1.0f - w) - t;
    }
}

/* Backward of relaxed2 from its output y and the saved d (see the header). */
static void relaxed2_backward(const float *gy, const float *y, const float *d, float *gx, int64_t R, int64_t S,
                              uint64_t seed, float tau, int hard, float kl_scale, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
    const float inv_tau = 1.0f / tau;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        float u[CHUNK];
        fill(u, seed, (uint64_t)c, 0);
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B;
/* `hard` as a literal at each inlined call: gcc vectorises the loop only then */
#define RELAXED_BACKWARD_RUN(off, n, q, HARD) \
        relaxed2_backward_run(gy + (off), gy + (off) + S, y + (off), y + (off) + S, d + j, u + (q), \
                              gx + (off), gx + (off) + S, n, inv_tau, HARD, kl_scale);
#define SOFT_BACKWARD_RUN(off, n, q) RELAXED_BACKWARD_RUN(off, n, q, 0)
#define HARD_BACKWARD_RUN(off, n, q) RELAXED_BACKWARD_RUN(off, n, q, 1)
        if (hard) {
            FOR_RUNS(2, S, j0, j1, HARD_BACKWARD_RUN)
        } else {
            FOR_RUNS(2, S, j0, j1, SOFT_BACKWARD_RUN)
        }
    }
}

/* ---- general U ---------------------------------------------------------------------- */

/* Copy the K units of blocks [j0, j1) of t (K units per block) to buf, unit k of block
 * j0 + o at buf[k*CHUNK + o]. */
static void gather(const float *restrict t, float *restrict buf, int64_t K, int64_t S, int64_t j0, int64_t j1) {
#define GATHER_RUN(off, n, q)                                                   \
    for (int64_t k = 0; k < K; k++)                                             \
        for (int64_t i = 0; i < (n); i++) buf[k * CHUNK + (q) + i] = t[(off) + k * S + i];
    FOR_RUNS(K, S, j0, j1, GATHER_RUN)
}

/* The inverse of gather(). */
static void scatter(const float *restrict buf, float *restrict t, int64_t K, int64_t S, int64_t j0, int64_t j1) {
#define SCATTER_RUN(off, n, q)                                                  \
    for (int64_t k = 0; k < K; k++)                                             \
        for (int64_t i = 0; i < (n); i++) t[(off) + k * S + i] = buf[k * CHUNK + (q) + i];
    FOR_RUNS(K, S, j0, j1, SCATTER_RUN)
}

/* Gumbel noise -log(-log u) for the U units of chunk c, laid out as gather()'s. */
static void gumbel(float *g, int64_t U, uint64_t seed, uint64_t c) {
    for (int64_t k = 0; k < U; k++) {
        float *gk = g + k * CHUNK;
        fill(gk, seed, c, (uint32_t)k);
        for (int o = 0; o < CHUNK; o++) gk[o] = -logf(-logf(gk[o]));
    }
}

/* In place scores z_k = (a_k + z_k) * scale for n blocks (arrays as gather()'s); m and arg
 * get each block's largest score and its unit (branch-free, so that it vectorises). */
static void scores(const float *restrict a, float *restrict z, float *restrict m, uint8_t *restrict arg, int64_t U,
                   int64_t n, float scale) {
    for (int64_t o = 0; o < n; o++) m[o] = z[o] = (a[o] + z[o]) * scale, arg[o] = 0;
    for (int64_t k = 1; k < U; k++)
        for (int64_t o = 0; o < n; o++) {
            const float v = (a[k * CHUNK + o] + z[k * CHUNK + o]) * scale;
            const int better = v > m[o];
            z[k * CHUNK + o] = v;
            m[o] = better ? v : m[o];
            arg[o] = better ? (uint8_t)k : arg[o];
        }
}

/* In place z_k = (d_k + g_k) / tau -> relaxed weights s_k = softmax_k(z) for n blocks
 * (arrays as gather()'s); arg gets argmax_k z_k. */
static void relaxed_weights(const float *restrict d, float *restrict z, uint8_t *restrict arg, int64_t U, int64_t n,
                            float inv_tau) {
    float m[CHUNK], sum[CHUNK];
    scores(d, z, m, arg, U, n, inv_tau);
    for (int64_t o = 0; o < n; o++) sum[o] = 0.0f;
    for (int64_t k = 0; k < U; k++)
        for (int64_t o = 0; o < n; o++) sum[o] += z[k * CHUNK + o] = expf(z[k * CHUNK + o] - m[o]);
    for (int64_t o = 0; o < n; o++) sum[o] = 1.0f / sum[o];
    for (int64_t k = 0; k < U; k++)
        for (int64_t o = 0; o < n; o++) z[k * CHUNK + o] *= sum[o];
}

/* In place h_k = 0 unless k = arg for n blocks (arrays as gather()'s): the winner keeps its response. */
static void keep_winner(float *restrict h, const uint8_t *restrict arg, int64_t U, int64_t n) {
    for (int64_t k = 0; k < U; k++) {
        const uint8_t unit = (uint8_t)k;
        for (int64_t o = 0; o < n; o++) h[k * CHUNK + o] = arg[o] == unit ? h[k * CHUNK + o] : 0.0f;
    }
}

/* Sum over n blocks of KL[softmax(h) || uniform] = sum_k q_k (h_k - m) - log sum_k e^(h_k - m) + log U. */
static float kl_sum(const float *restrict h, int64_t U, int64_t n) {
    float m[CHUNK], se[CHUNK], sh[CHUNK], acc = 0.0f;
    for (int64_t o = 0; o < n; o++) m[o] = h[o], se[o] = sh[o] = 0.0f;
    for (int64_t k = 1; k < U; k++)
        for (int64_t o = 0; o < n; o++) m[o] = fmaxf(m[o], h[k * CHUNK + o]);
    for (int64_t k = 0; k < U; k++)
        for (int64_t o = 0; o < n; o++) {
            const float v = h[k * CHUNK + o] - m[o], e = expf(v);
            se[o] += e;
            sh[o] += e * v;
        }
    const float logU = logf((float)U);
    for (int64_t o = 0; o < n; o++) acc += sh[o] / se[o] - logf(se[o]) + logU;
    return acc;
}

/* lwta_sample for U > 2. */
static void sample_u(const float *x, float *y, uint8_t *idx, int64_t R, int64_t U, int64_t S, uint64_t seed,
                     int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        float h[MAX_U * CHUNK], g[MAX_U * CHUNK], m[CHUNK];
        uint8_t arg[CHUNK];
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B, n = j1 - j0;
        gather(x, h, U, S, j0, j1);
        gumbel(g, U, seed, (uint64_t)c);
        scores(h, g, m, arg, U, n, 1.0f);
        keep_winner(h, arg, U, n);
        scatter(h, y, U, S, j0, j1);
        if (idx)
            for (int64_t o = 0; o < n; o++) idx[j0 + o] = arg[o];
    }
}

/* lwta_relaxed for U > 2: y from the weights, d_k = h_k - h_{U-1}, the KL from h. */
static double relaxed_u(const float *x, float *y, float *d, int64_t R, int64_t U, int64_t S, uint64_t seed,
                        float tau, int hard, int want_kl, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
    const float inv_tau = 1.0f / tau;
    double kl = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) reduction(+ : kl)
    for (int64_t c = 0; c < chunks; c++) {
        float h[MAX_U * CHUNK], dv[MAX_U * CHUNK], w[MAX_U * CHUNK];
        uint8_t arg[CHUNK];
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B, n = j1 - j0;
        const float *last = h + (U - 1) * CHUNK;
        gather(x, h, U, S, j0, j1);
        for (int64_t k = 0; k < U; k++)
            for (int64_t o = 0; o < n; o++) dv[k * CHUNK + o] = h[k * CHUNK + o] - last[o];
        gumbel(w, U, seed, (uint64_t)c);
        relaxed_weights(dv, w, arg, U, n, inv_tau);
        if (want_kl) kl += kl_sum(h, U, n);
        if (d) scatter(dv, d, U - 1, S, j0, j1);
        if (hard) keep_winner(h, arg, U, n);
        else
            for (int64_t k = 0; k < U; k++)
                for (int64_t o = 0; o < n; o++) h[k * CHUNK + o] *= w[k * CHUNK + o];
        scatter(h, y, U, S, j0, j1);
    }
    return kl;
}

/* lwta_relaxed_backward for U > 2 (see the header for how the input comes back). */
static void relaxed_u_backward(const float *gy, const float *y, const float *d, float *gx, int64_t R, int64_t U,
                               int64_t S, uint64_t seed, float tau, int hard, float kl_scale, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
    const float inv_tau = 1.0f / tau;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        float g[MAX_U * CHUNK], h[MAX_U * CHUNK], dv[MAX_U * CHUNK], s[MAX_U * CHUNK];
        float ref[CHUNK], a[CHUNK], md[CHUNK], qs[CHUNK], qd[CHUNK];
        uint8_t arg[CHUNK];
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B, n = j1 - j0;
        gather(gy, g, U, S, j0, j1);
        gather(y, h, U, S, j0, j1);
        gather(d, dv, U - 1, S, j0, j1);
        for (int64_t o = 0; o < n; o++) dv[(U - 1) * CHUNK + o] = 0.0f;
        gumbel(s, U, seed, (uint64_t)c);
        relaxed_weights(dv, s, arg, U, n, inv_tau); /* as in the forward */
        /* the input: h_{U-1} = sum_k y_k - sum_k w_k d_k, h_k = h_{U-1} + d_k */
        for (int64_t o = 0; o < n; o++) ref[o] = a[o] = 0.0f;
        for (int64_t k = 0; k < U; k++)
            for (int64_t o = 0; o < n; o++)
                ref[o] += h[k * CHUNK + o] - dv[k * CHUNK + o] * (hard ? (float)(arg[o] == k) : s[k * CHUNK + o]);
        for (int64_t k = 0; k < U; k++)
            for (int64_t o = 0; o < n; o++) {
                h[k * CHUNK + o] = ref[o] + dv[k * CHUNK + o];
                a[o] += g[k * CHUNK + o] * h[k * CHUNK + o] * s[k * CHUNK + o];
            }
        /* d/dh_k of sum_l g_l h_l w_l: g_k w_k + s_k (g_k h_k - sum_l g_l h_l s_l) / tau */
        for (int64_t k = 0; k < U; k++)
            for (int64_t o = 0; o < n; o++) {
                const float gk = g[k * CHUNK + o], sk = s[k * CHUNK + o], wk = hard ? (float)(arg[o] == k) : sk;
                h[k * CHUNK + o] = gk * wk + sk * (gk * h[k * CHUNK + o] - a[o]) * inv_tau;
            }
        if (kl_scale != 0.0f) { /* d KL / dh_k = q_k (d_k - sum_l q_l d_l), q = softmax(d) */
            for (int64_t o = 0; o < n; o++) md[o] = 0.0f, qs[o] = qd[o] = 0.0f;
            for (int64_t k = 0; k < U; k++)
                for (int64_t o = 0; o < n; o++) md[o] = fmaxf(md[o], dv[k * CHUNK + o]);
            for (int64_t k = 0; k < U; k++)
                for (int64_t o = 0; o < n; o++) {
                    const float q = expf(dv[k * CHUNK + o] - md[o]);
                    g[k * CHUNK + o] = q;
                    qs[o] += q;
                    qd[o] += q * dv[k * CHUNK + o];
                }
            for (int64_t o = 0; o < n; o++) qs[o] = 1.0f / qs[o], qd[o] *= qs[o];
            for (int64_t k = 0; k < U; k++)
                for (int64_t o = 0; o < n; o++)
                    h[k * CHUNK + o] += kl_scale * g[k * CHUNK + o] * qs[o] * (dv[k * CHUNK + o] - qd[o]);
        }
        scatter(h, gx, U, S, j0, j1);
    }
}

/* ---- entry points: U=2 takes its own path ------------------------------------------- */

/* Exact one-hot sample. y gets the winner's response; idx (may be NULL) its index in the block. */
void lwta_sample(const float *x, float *y, uint8_t *idx, int64_t R, int64_t U, int64_t S, uint64_t seed,
                 int threads) {
    if (U == 2) sample2(x, y, idx, R, S, seed, threads);
    else sample_u(x, y, idx, R, U, S, seed, threads);
}

/* Backward of the exact sample: the gradient goes to the winner. */
void lwta_sample_backward(const float *gy, const uint8_t *idx, float *gx, int64_t R, int64_t U, int64_t S,
                          int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < U; k++) {
            const float *restrict g = gy + (r * U + k) * S;
            float *restrict out = gx + (r * U + k) * S;
            const uint8_t *restrict m = idx + r * S, unit = (uint8_t)k;
            for (int64_t i = 0; i < S; i++) out[i] = m[i] == unit ? g[i] : 0.0f;
        }
}

/* Concrete relaxation at temperature tau (one-hot forward with `hard`). Writes d (may be
 * NULL: no backward; U-1 units per block) and returns the KL of q = softmax(h) to the
 * uniform prior summed over all blocks (0 unless want_kl). */
double lwta_relaxed(const float *x, float *y, float *d, int64_t R, int64_t U, int64_t S, uint64_t seed, float tau,
                    int hard, int want_kl, int threads) {
    return U == 2 ? relaxed2(x, y, d, R, S, seed, tau, hard, want_kl, threads)
                  : relaxed_u(x, y, d, R, U, S, seed, tau, hard, want_kl, threads);
}

/* Backward of lwta_relaxed from its output y and the saved d, the noise regenerated from
 * (seed, block, unit). kl_scale is the gradient of the loss w.r.t. the summed KL (0: none). */
void lwta_relaxed_backward(const float *gy, const float *y, const float *d, float *gx, int64_t R, int64_t U,
                           int64_t S, uint64_t seed, float tau, int hard, float kl_scale, int threads) {
    if (U == 2) relaxed2_backward(gy, y, d, gx, R, S, seed, tau, hard, kl_scale, threads);
    else relaxed_u_backward(gy, y, d, gx, R, U, S, seed, tau, hard, kl_scale, threads);
}

/* The uniforms the kernels draw for unit k of blocks [0, B): for tests and references. */
void lwta_uniforms(float *out, int64_t B, uint64_t seed, int64_t k) {
    float u[CHUNK];
    for (int64_t c = 0; c * CHUNK < B; c++) {
        fill(u, seed, (uint64_t)c, (uint32_t)k);
        for (int64_t o = 0; o < CHUNK && c * CHUNK + o < B; o++) out[c * CHUNK + o] = u[o];
    }
}

/* The largest U the kernels take (callers fall back to eager code above it). */
int lwta_max_units(void) { return MAX_U; }
