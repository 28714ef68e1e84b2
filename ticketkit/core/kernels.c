/* Fused CPU kernels for the hot path of score-based masks (see kernels.py).
 *
 * Each replaces several eager PyTorch passes over a layer's weights with one. Results are
 * deterministic: work is split into fixed blocks whatever the thread count, and the block sums
 * are added in block order after the parallel loop.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 4096
#define PARALLEL 8192 /* below this, waking the OpenMP threads costs more than it saves */

/* m[i] = |s[i]| >= t (1.0 or 0.0). Returns the number of ones, and, when w is not NULL,
 * stores sum(|w[i]| * m[i]) in *total. Returns -1 if out of memory. */
int64_t tk_topk_mask(const float *restrict s, const float *restrict w, float *restrict m,
                     int64_t n, float t, double *total) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
    float *sums = w ? malloc(sizeof(float) * (size_t)(blocks ? blocks : 1)) : NULL;
    if (w && !sums) return -1;
    int64_t count = 0;
#pragma omp parallel for reduction(+ : count) schedule(static) if (n >= PARALLEL)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        float ones = 0.f, acc = 0.f;
        if (w) {
#pragma omp simd reduction(+ : ones, acc)
            for (int64_t i = lo; i < hi; i++) {
                float k = fabsf(s[i]) >= t ? 1.f : 0.f;
                m[i] = k;
                ones += k;
                acc += k * fabsf(w[i]);
            }
            sums[b] = acc;
        } else {
#pragma omp simd reduction(+ : ones)
            for (int64_t i = lo; i < hi; i++) {
                float k = fabsf(s[i]) >= t ? 1.f : 0.f;
                m[i] = k;
                ones += k;
            }
        }
        count += (int64_t)ones; /* exact: a block holds at most 4096 ones */
    }
    if (w) {
        double sum = 0.0;
        for (int64_t b = 0; b < blocks; b++) sum += sums[b];
        *total = sum;
        free(sums);
    }
    return count;
}

/* out[i] = g[i] * w[i] * sign(s[i]): the straight-through gradient of a top-k mask on |s|. */
void tk_score_grad(const float *restrict g, const float *restrict w, const float *restrict s,
                   float *restrict out, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= PARALLEL)
    for (int64_t i = 0; i < n; i++) {
        float sign = (float)((s[i] > 0.f) - (s[i] < 0.f));
        out[i] = sign * w[i] * g[i];
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

/* The need-th largest of |s[idx[i]]| for i < n (of |s[i]| if idx is NULL), 1 <= need <= n.
 * buf holds n floats of scratch. */
static float nth_largest_abs(const float *restrict s, const int64_t *restrict idx, int64_t n,
                         int64_t need, float *restrict buf) {
    if (idx)
        for (int64_t i = 0; i < n; i++) buf[i] = fabsf(s[idx[i]]);
    else
        for (int64_t i = 0; i < n; i++) buf[i] = fabsf(s[i]);
    return select_rank(buf, n, n - need);
}

/* The mask of the largest |s| at t = the need-th largest of |s[idx[i]]|, i < candidates (of
 * all |s| if idx is NULL): one call per layer and step. *t receives the threshold; the return
 * value and *total are tk_topk_mask's. buf holds `candidates` floats of scratch. */
int64_t tk_topk_from(const float *restrict s, const float *restrict w, float *restrict m,
                     int64_t n, const int64_t *restrict idx, int64_t candidates, int64_t need,
                     float *restrict buf, float *t, double *total) {
    *t = nth_largest_abs(s, idx, candidates, need, buf);
    return tk_topk_mask(s, w, m, n, *t, total);
}
