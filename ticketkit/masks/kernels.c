/* Fused CPU kernels for the hot path of score-based masks (see kernels.py and
 * docs/architecture.md): the exact top-k mask of |s| with its count and sum(|w| m) in two
 * passes (ties broken by index, as the eager path), and the straight-through score gradient
 * in one, where eager PyTorch makes about a dozen. Results do not depend on the thread
 * count: work is split into fixed blocks or ranges and partial results are combined in order
 * after the parallel loop.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* With -DTK_CLONES (kernels.py tries it first), the streaming loops are compiled twice, for
 * AVX2 and for the baseline, and the loader picks one per machine (GNU ifunc): the wide
 * vectors without -march=native. Results are the same either way, up to the rounding of
 * sum(|w| m). */
#if defined(TK_CLONES) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define BLOCK 4096
#define PARALLEL 8192 /* below this, waking the OpenMP threads costs more than it saves */

/* m[i] = |s[i]| >= t (1.0 or 0.0). Returns the number of ones and stores in *ties how many of
 * them equal t, and, when w is not NULL, sum(|w[i]| * m[i]) in *total. Returns -1 if out of
 * memory. */
CLONES
static int64_t topk_mask(const float *restrict s, const float *restrict w, float *restrict m,
                         int64_t n, float t, double *total, int64_t *ties) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
    float *sums = w ? malloc(sizeof(float) * (size_t)(blocks ? blocks : 1)) : NULL;
    if (w && !sums) return -1;
    const float *mag = w ? w : s; /* without w, acc sums |s| m, dropped */
    int64_t count = 0, equal = 0;
#pragma omp parallel for reduction(+ : count, equal) schedule(static) if (n >= PARALLEL)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        float ones = 0.f, same = 0.f, acc = 0.f;
#pragma omp simd reduction(+ : ones, same, acc)
        for (int64_t i = lo; i < hi; i++) {
            float a = fabsf(s[i]);
            float k = a >= t ? 1.f : 0.f;
            m[i] = k;
            ones += k;
            same += a == t ? 1.f : 0.f;
            acc += k * fabsf(mag[i]);
        }
        if (w) sums[b] = acc;
        count += (int64_t)ones; /* exact: a block holds at most 4096 ones */
        equal += (int64_t)same;
    }
    if (w) {
        double sum = 0.0;
        for (int64_t b = 0; b < blocks; b++) sum += sums[b];
        *total = sum;
        free(sums);
    }
    *ties = equal;
    return count;
}

/* The mask of the `keep` largest |s| given a candidate threshold t: one mask pass, then, if
 * t is exact (count(|s| > t) < keep <= count(|s| >= t)) and values tie at t, the ties of
 * highest index are dropped (lowest index first, as the eager path). Returns keep when t was
 * exact, else count(|s| >= t); -1 if out of memory. When t was exact and w and alpha are not
 * NULL, *alpha = sum(|w| m) / keep: the binary scale, written here so that the caller makes
 * no tensor call for it. */
static int64_t topk_finish(const float *restrict s, const float *restrict w, float *restrict m,
                           int64_t n, int64_t keep, float t, double *total, float *alpha) {
    int64_t ties = 0, count = topk_mask(s, w, m, n, t, total, &ties);
    if (count < keep || (count > keep && count - ties >= keep)) return count;
    for (int64_t i = n - 1, excess = count - keep; i >= 0 && excess > 0; i--) {
        if (fabsf(s[i]) == t) {
            m[i] = 0.f;
            excess--;
            if (w) *total -= fabsf(w[i]);
        }
    }
    if (w && alpha) *alpha = (float)(*total / (double)keep);
    return keep;
}

/* out[i] = g[i] * w[i] * sign(s[i]) + decay * s[i]: the straight-through gradient of a top-k
 * mask on |s|, plus the L2 weight decay an optimizer would otherwise add in a pass of its own
 * over s (this one reads s anyway; decay 0: none, and inf scores stay out of it).
 * Called by every thread of a parallel region (tk_score_grad_rows), each taking its share;
 * `nowait`: the layers are independent, so threads go on to the next without a barrier. */
CLONES
static void score_grad(const float *restrict g, const float *restrict w,
                       const float *restrict s, float *restrict out, int64_t n, float decay) {
    if (decay != 0.f) {
#pragma omp for simd schedule(static) nowait
        for (int64_t i = 0; i < n; i++) {
            float sign = (float)((s[i] > 0.f) - (s[i] < 0.f));
            out[i] = sign * w[i] * g[i] + decay * s[i];
        }
    } else {
#pragma omp for simd schedule(static) nowait
        for (int64_t i = 0; i < n; i++) {
            float sign = (float)((s[i] > 0.f) - (s[i] < 0.f));
            out[i] = sign * w[i] * g[i];
        }
    }
}

/* out[i] = *alpha * sign(w[i]) * m[i]: a binary layer's effective weight, with the sign taken
 * from w on the way (a cached sign tensor would be one more weight-sized buffer in the cache).
 * "+ 0.f" turns -0 into +0, as torch.addcmul(0, sign(w), m, value=alpha) gives. */
CLONES
static void binary_weight(const float *restrict w, const float *restrict m,
                          float *restrict out, int64_t n, const float *alpha_at) {
    float alpha = *alpha_at;
#pragma omp for simd schedule(static) nowait /* as score_grad */
    for (int64_t i = 0; i < n; i++) {
        float sign = (float)((w[i] > 0.f) - (w[i] < 0.f));
        out[i] = sign * m[i] * alpha + 0.f;
    }
}

/* The element of rank j (0-based, ascending) of v[0..n), by quickselect; reorders v. */
static float select_rank(float *v, int64_t n, int64_t j) {
    int64_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = v[lo + (hi - lo) / 2];
        int64_t i = lo, k = hi;
        while (i <= k) {
            while (v[i] < pivot) i++;
            while (v[k] > pivot) k--;
            if (i <= k) {
                float tmp = v[i];
                v[i++] = v[k];
                v[k--] = tmp;
            }
        }
        if (j <= k)
            hi = k;
        else if (j >= i)
            lo = i;
        else
            return v[j];
    }
    return v[j];
}

/* The mask of the `keep` largest |s| when the threshold is the `need`-th largest of
 * |s[idx[i]]|, i < count (all of s if idx is NULL; count = n and need = keep then): a
 * partition of those values in buf (count floats of scratch) gives t, then topk_finish. For
 * small layers, and for the candidates kept from the last step's band. *t receives the
 * threshold; the return value and *total are topk_finish's: `keep` proves the mask exact,
 * whatever else moved. */
static int64_t topk_among(const float *restrict s, const float *restrict w,
                          float *restrict m, int64_t n, const int64_t *restrict idx,
                          int64_t count, int64_t need, int64_t keep, float *restrict buf,
                          float *t, double *total, float *alpha) {
    if (idx)
        for (int64_t i = 0; i < count; i++) buf[i] = fabsf(s[idx[i]]);
    else
        for (int64_t i = 0; i < count; i++) buf[i] = fabsf(s[i]);
    *t = select_rank(buf, count, count - need);
    return topk_finish(s, w, m, n, keep, *t, total, alpha);
}

/* One range of the bracket scan: values of |s[i]|, i in [begin, end), that lie in [lo, hi]
 * go to band and their indices to where (at most cap; returns -1 beyond), and *above counts
 * those > hi. Vectorised over groups of 32, looking one by one only into the few groups that
 * hold a band value. */
CLONES
static int64_t bracket_range(const float *restrict s, int64_t begin, int64_t end, float lo,
                             float hi, float *restrict band, int64_t *restrict where,
                             int64_t cap, int64_t *above) {
    int64_t up = 0, found = 0, i = begin;
    for (; i + 32 <= end; i += 32) {
        int over = 0, in = 0;
#pragma omp simd reduction(+ : over, in)
        for (int64_t j = i; j < i + 32; j++) {
            float a = fabsf(s[j]);
            over += a > hi;
            in += (a >= lo) & (a <= hi);
        }
        up += over;
        if (in) {
            if (found + in > cap) return -1;
            for (int64_t j = i; j < i + 32; j++) {
                float a = fabsf(s[j]);
                if (a >= lo && a <= hi) {
                    where[found] = j;
                    band[found++] = a;
                }
            }
        }
    }
    for (; i < end; i++) {
        float a = fabsf(s[i]);
        up += a > hi;
        if (a >= lo && a <= hi) {
            if (found == cap) return -1;
            where[found] = i;
            band[found++] = a;
        }
    }
    *above = up;
    return found;
}

/* The bracket scan over all of s, split in contiguous ranges over the threads, each with its
 * own part of band; the parts are then moved together. Returns the band's size or -1. */
static int64_t bracket(const float *restrict s, int64_t n, float lo, float hi,
                       float *restrict band, int64_t *restrict where, int64_t cap,
                       int64_t *above) {
    int parts = 1;
#ifdef _OPENMP
    if (n >= PARALLEL) parts = omp_get_max_threads();
#endif
    if (parts > 64) parts = 64;
    int64_t found[64], ups[64], size = cap / parts;
#pragma omp parallel for schedule(static, 1) num_threads(parts) if (parts > 1)
    for (int p = 0; p < parts; p++) {
        int64_t begin = n * p / parts, end = n * (p + 1) / parts;
        found[p] = bracket_range(s, begin, end, lo, hi, band + p * size, where + p * size, size,
                                 &ups[p]);
    }
    int64_t total = 0, up = 0;
    for (int p = 0; p < parts; p++) {
        if (found[p] < 0) return -1;
        if (p > 0) {
            memmove(band + total, band + p * size, sizeof(float) * (size_t)found[p]);
            memmove(where + total, where + p * size, sizeof(int64_t) * (size_t)found[p]);
        }
        total += found[p];
        up += ups[p];
    }
    *above = up;
    return total;
}

/* The exact top-`keep` mask of |s| when its threshold lies in [lo, hi]: one bracket scan,
 * a partition of the band, one mask pass (topk_finish). Returns keep, or -2 if the
 * threshold is outside the bracket or the band holds more than cap values.
 * The band's indices are left in where[0 .. *band_size) (memory order) and the number of
 * values above it in *above: the next step's candidates. */
int64_t tk_topk_bracket(const float *restrict s, const float *restrict w, float *restrict m,
                        int64_t n, int64_t keep, float lo, float hi, float *restrict buf,
                        int64_t *restrict where, int64_t cap, float *t, int64_t *band_size,
                        int64_t *above, double *total, float *alpha) {
    int64_t found = bracket(s, n, lo, hi, buf, where, cap, above);
    *band_size = found;
    if (found < 0 || *above >= keep || *above + found < keep) return -2;
    *t = select_rank(buf, found, found - (keep - *above));
    return topk_finish(s, w, m, n, keep, *t, total, alpha);
}

/* Several layers in one call: a training step makes one call from Python per pass instead of
 * one per layer (on a small model the Python and ctypes work around a per-layer call costs
 * about what the pass itself does). `rows` holds `layers` rows of arguments, pointers and
 * counts alike as unsigned 64-bit integers, in the order of the single-layer function. */
#define PTR(type, x) ((type *)(uintptr_t)(x))

#ifdef _OPENMP
/* The number of elements in all rows (n at position `at` of rows `width` wide). */
static int64_t rows_total(const uint64_t *rows, int64_t layers, int width, int at) {
    int64_t total = 0;
    for (int64_t l = 0; l < layers; l++) total += (int64_t)rows[width * l + at];
    return total;
}
#endif

/* Rows of (g, w, s, out, n, decay): out = g * w * sign(s) + decay * s per layer (decay: the
 * bits of a float32), all layers in one parallel region (one fork and join a step, however
 * many layers). */
void tk_score_grad_rows(int64_t layers, const uint64_t *rows) {
#pragma omp parallel if (rows_total(rows, layers, 6, 4) >= PARALLEL)
    for (int64_t l = 0; l < layers; l++) {
        const uint64_t *r = rows + 6 * l;
        uint32_t bits = (uint32_t)r[5];
        float decay;
        memcpy(&decay, &bits, sizeof decay);
        score_grad(PTR(const float, r[0]), PTR(const float, r[1]), PTR(const float, r[2]),
                   PTR(float, r[3]), (int64_t)r[4], decay);
    }
}

/* Rows of (w, m, out, n, alpha): out = *alpha * sign(w) * m per layer, as score_grad_rows. */
void tk_binary_weight_rows(int64_t layers, const uint64_t *rows) {
#pragma omp parallel if (rows_total(rows, layers, 5, 3) >= PARALLEL)
    for (int64_t l = 0; l < layers; l++) {
        const uint64_t *r = rows + 5 * l;
        binary_weight(PTR(const float, r[0]), PTR(const float, r[1]), PTR(float, r[2]),
                      (int64_t)r[3], PTR(const float, r[4]));
    }
}

/* Rows of topk_among's arguments (s, w, m, n, idx, count, need, keep, buf, alpha; w, idx
 * and alpha may be 0): counts[l] and ts[l] receive each layer's return value and threshold.
 * Returns -1 if any layer ran out of memory, else 0. */
int64_t tk_topk_among_rows(int64_t layers, const uint64_t *rows, int64_t *counts, float *ts) {
    int64_t failed = 0;
    for (int64_t l = 0; l < layers; l++) {
        const uint64_t *r = rows + 10 * l;
        double total;
        counts[l] = topk_among(PTR(const float, r[0]), PTR(const float, r[1]), PTR(float, r[2]),
                               (int64_t)r[3], PTR(const int64_t, r[4]), (int64_t)r[5],
                               (int64_t)r[6], (int64_t)r[7], PTR(float, r[8]), &ts[l], &total,
                               PTR(float, r[9]));
        failed |= counts[l] < 0;
    }
    return failed ? -1 : 0;
}
