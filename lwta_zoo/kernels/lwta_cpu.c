/* Fused CPU kernels for stochastic LWTA with U=2 competing units (float32, contiguous).
 *
 * A tensor of shape (N, C, *S) is R = N*C/2 rows of two units, each unit a contiguous run
 * of S values: block j = r*S + p pairs a = x[r*2S + p] with b = x[r*2S + S + p].
 * With d = a - b, unit a wins with probability sigmoid(d) (softmax over the pair); the
 * difference of two Gumbel draws is logistic, so one uniform u per block decides it:
 * exact sample: a wins iff u < sigmoid(d); relaxed: s = sigmoid((d + logit(u)) / tau).
 *
 * Noise: counter-based Philox4x32-10 (Salmon et al. 2011), keyed by a 64-bit seed drawn
 * from torch's generator for each call. Block j's uniform is a pure function of (seed, j),
 * independent of threads, so a backward pass regenerates it instead of storing it.
 * Blocks are processed in chunks of CHUNK (see fill()), chunks spread over OpenMP threads.
 */
#include <math.h>
#include <stdint.h>

#define CHUNK 256
#define GROUPS (CHUNK / 4)

static inline void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int i = 0; i < 10; i++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[1] = (uint32_t)p1;
        c[3] = (uint32_t)p0;
        c[0] = n0;
        c[2] = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

/* Uniforms in (0, 1) for the CHUNK blocks of chunk c: offset o = lane*GROUPS + g takes
 * word `lane` of Philox(counter = (g, c_lo, c_hi, 0), key = seed). */
static void fill(float *u, uint64_t seed, uint64_t c) {
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int g = 0; g < GROUPS; g++) {
        uint32_t w[4] = {(uint32_t)g, (uint32_t)c, (uint32_t)(c >> 32), 0u};
        philox4x32_10(w, k0, k1);
        for (int lane = 0; lane < 4; lane++)
            u[lane * GROUPS + g] = ((float)(w[lane] >> 8) + 0.5f) * (1.0f / 16777216.0f);
    }
}

/* Visit blocks [j0, j1) of one chunk as runs that are contiguous within a row: calls
 * BODY(off, n, q) for n blocks whose first unit starts at x offset `off` and whose
 * uniforms start at u[q]. */
#define FOR_RUNS(S, j0, j1, BODY)                                   \
    for (int64_t j = (j0); j < (j1);) {                             \
        const int64_t r = j / (S), p = j % (S);                     \
        const int64_t n = ((S) - p) < ((j1) - j) ? ((S) - p) : ((j1) - j); \
        BODY(r * 2 * (S) + p, n, j - (j0));                         \
        j += n;                                                     \
    }

/* expf's argument is kept below 80: under -ffast-math the division may be a reciprocal
 * estimate refined by a Newton step, which turns 1/inf into NaN. */
static inline float exp_(float z) { return expf(fminf(z, 80.0f)); }
static inline float sigmoidf_(float z) { return 1.0f / (1.0f + exp_(-z)); }

/* Exact one-hot sample. y gets the winner's response; mask (may be NULL) gets 1 where
 * the first unit won. */
void lwta2_sample(const float *x, float *y, uint8_t *mask, int64_t R, int64_t S, uint64_t seed, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        float u[CHUNK];
        fill(u, seed, (uint64_t)c);
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B;
#define SAMPLE_RUN(off, n, q)                                                   \
        {                                                                       \
            const float *restrict a = x + (off), *restrict b = a + S;                             \
            float *restrict ya = y + (off), *restrict yb = ya + S;                                \
            const float *restrict uu = u + (q);                                          \
            uint8_t *m = mask ? mask + j : 0;                       \
            for (int64_t i = 0; i < (n); i++) {                                 \
                const int win = uu[i] * (1.0f + exp_(b[i] - a[i])) < 1.0f;      \
                ya[i] = win ? a[i] : 0.0f;                                      \
                yb[i] = win ? 0.0f : b[i];                                      \
                if (m) m[i] = (uint8_t)win;                                     \
            }                                                                   \
        }
        FOR_RUNS(S, j0, j1, SAMPLE_RUN)
    }
}

/* Backward of the exact sample: the gradient goes to the winner. */
void lwta2_sample_backward(const float *gy, const uint8_t *mask, float *gx, int64_t R, int64_t S, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t r = 0; r < R; r++) {
        const float *ga = gy + r * 2 * S, *gb = ga + S;
        float *xa = gx + r * 2 * S, *xb = xa + S;
        const uint8_t *m = mask + r * S;
        for (int64_t i = 0; i < S; i++) {
            xa[i] = m[i] ? ga[i] : 0.0f;
            xb[i] = m[i] ? 0.0f : gb[i];
        }
    }
}

/* Concrete relaxation at temperature tau: y = (a*s, b*(1-s)). Writes d = a - b (may be
 * NULL: no backward) and returns the KL of q = softmax(a, b) to the uniform prior summed
 * over all blocks (0 unless want_kl). */
double lwta2_relaxed(const float *x, float *y, float *d, int64_t R, int64_t S, uint64_t seed, float tau,
                     int want_kl, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
    const float inv_tau = 1.0f / tau, log2 = 0.69314718f;
    double kl = 0.0;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) reduction(+ : kl)
    for (int64_t c = 0; c < chunks; c++) {
        float u[CHUNK];
        fill(u, seed, (uint64_t)c);
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
                const float s = sigmoidf_((di + logf(uu[i] / (1.0f - uu[i]))) * inv_tau); \
                ya[i] = a[i] * s;                                               \
                yb[i] = b[i] * (1.0f - s);                                      \
                if (dd) dd[i] = di;                                             \
            }                                                                   \
            if (want_kl)                                                        \
                for (int64_t i = 0; i < (n); i++) {                             \
                    const float di = a[i] - b[i];                               \
                    /* KL = log 2 + s0*d - softplus(d), s0 = sigmoid(d), written    \
                     * with e = exp(-|d|) to avoid cancellation at large |d| */      \
                    const float e = expf(-fabsf(di));                           \
                    acc += log2 - e / (1.0f + e) * fabsf(di) - log1pf(e);      \
                }                                                               \
        }
        FOR_RUNS(S, j0, j1, RELAXED_RUN)
        kl += acc;
    }
    return kl;
}

/* One run of n blocks of lwta2_relaxed_backward (below). */
static inline void relaxed_backward_run(const float *restrict ga, const float *restrict gb, const float *restrict ya,
                                        const float *restrict yb, const float *restrict d, const float *restrict u,
                                        float *restrict xa, float *restrict xb, int64_t n, float inv_tau,
                                        float kl_scale) {
    for (int64_t i = 0; i < n; i++) {
        const float s = sigmoidf_((d[i] + logf(u[i] / (1.0f - u[i]))) * inv_tau); /* as in the forward */
        const float b = ya[i] + yb[i] - d[i] * s, a = b + d[i];
        const float s0 = sigmoidf_(d[i]);
        const float t = (ga[i] * a - gb[i] * b) * s * (1.0f - s) * inv_tau + kl_scale * d[i] * s0 * (1.0f - s0);
        xa[i] = ga[i] * s + t;
        xb[i] = gb[i] * (1.0f - s) - t;
    }
}

/* Backward of lwta2_relaxed from its output y and the saved d: s is regenerated from
 * (seed, block), the inputs recovered as b = y_a + y_b - d*s, a = b + d. kl_scale is the
 * gradient of the loss w.r.t. the summed KL (0: no KL term). */
void lwta2_relaxed_backward(const float *gy, const float *y, const float *d, float *gx, int64_t R, int64_t S,
                            uint64_t seed, float tau, float kl_scale, int threads) {
    const int64_t B = R * S, chunks = (B + CHUNK - 1) / CHUNK;
    const float inv_tau = 1.0f / tau;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int64_t c = 0; c < chunks; c++) {
        float u[CHUNK];
        fill(u, seed, (uint64_t)c);
        const int64_t j0 = c * CHUNK, j1 = j0 + CHUNK < B ? j0 + CHUNK : B;
#define RELAXED_BACKWARD_RUN(off, n, q) \
        relaxed_backward_run(gy + (off), gy + (off) + S, y + (off), y + (off) + S, d + j, u + (q), \
                             gx + (off), gx + (off) + S, n, inv_tau, kl_scale);
        FOR_RUNS(S, j0, j1, RELAXED_BACKWARD_RUN)
    }
}

/* The uniforms the kernels above draw for blocks [0, B): for tests and references. */
void lwta2_uniforms(float *out, int64_t B, uint64_t seed) {
    float u[CHUNK];
    for (int64_t c = 0; c * CHUNK < B; c++) {
        fill(u, seed, (uint64_t)c);
        for (int64_t o = 0; o < CHUNK && c * CHUNK + o < B; o++) out[c * CHUNK + o] = u[o];
    }
}
