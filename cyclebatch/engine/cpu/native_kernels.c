/* CPU kernels that torch has no fast path for (native.py builds and loads this file).

   1. Winograd tile transforms for winograd.py, fused with the gather and the scatter, and for a whole
      residual block with its padding, InstanceNorms, ReLU and residual sum (below).

   The torch path gathers every (m+2)^2 input tile into a copy, transforms it with a dense Kronecker
   matmul and scatters the output tiles with a permuted copy: three passes over memory and 36 (F2: 16)
   multiplies per value where the transform needs a few adds. Here one pass reads each tile from the
   NHWC input and writes its transform; one pass reads the products and writes output pixels.
   Arithmetic is fp32 whatever the storage (bf16 is rounded to nearest even once, on store), as
   oneDNN's matmul does, so results match the torch path to rounding.

   2. A direct convolution with few output channels (narrow_conv.py): the generator's last layer, 64 -> 3
   channels 7x7, which oneDNN runs at a fifth of the matmul peak (an output of 3 channels leaves its
   GEMM kernels nothing to vectorize). Here each output pixel is a dot product over taps and channels,
   vectorized over channels, two pixels at a time so every weight vector loaded serves both.

   3. InstanceNorm + ReLU outside the residual blocks (norm_relu.py): the per-channel sums in one pass,
   then scale, shift and ReLU in a second, where torch took a statistics-and-normalise pass and a ReLU pass
   of its own (4.0 of the small distilled student's 40 ms at 384x512 went to the first full-size pair).

   Threads: OpenMP, linked against the libgomp.so.1 torch has already loaded, so these loops run on
   torch's own thread pool; the caller passes torch's thread count (it changes under load). Channels are processed VL at a time (C % VL == 0). */

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* One vector register of fp32 lanes: 16 with AVX-512, else 8 (AVX2; two ymm per value would double the
   registers a transform needs and spill). Callers keep channel counts a multiple of 16 for both. */
#ifdef __AVX512F__
#define VL 16
#else
#define VL 8
#endif
typedef float vf __attribute__((vector_size(VL * 4)));   /* GCC vector extensions */
typedef uint32_t vu __attribute__((vector_size(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2)));

/* VL lanes in and out of fp32: bf16 is the top half of an fp32, rounded to nearest even on the way down. */
static inline vf load_f32(const float *p) { vf x; memcpy(&x, p, sizeof x); return x; }

static inline void store_f32(float *p, vf x) { memcpy(p, &x, sizeof x); }

static inline vf load_bf16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vu) << 16);
}

static inline void store_bf16(uint16_t *p, vf x) {
    vu u = (vu)x;
    vh h = __builtin_convertvector((u + 0x7fffu + ((u >> 16) & 1u)) >> 16, vh);
    memcpy(p, &h, sizeof h);
}

/* One-dimensional transforms: B^T d (input) and A^T p (output), the matrices of winograd._SPECS written
   out with their zeros skipped. */
static inline void bt2(vf o[4], const vf d[4]) {
    o[0] = d[0] - d[2];
    o[1] = d[1] + d[2];
    o[2] = d[2] - d[1];
    o[3] = d[1] - d[3];
}

static inline void bt4(vf o[6], const vf d[6]) {
    o[0] = 4 * d[0] - 5 * d[2] + d[4];
    o[1] = -4 * d[1] - 4 * d[2] + d[3] + d[4];
    o[2] = 4 * d[1] - 4 * d[2] - d[3] + d[4];
    o[3] = -2 * d[1] - d[2] + 2 * d[3] + d[4];
    o[4] = 2 * d[1] - d[2] - 2 * d[3] + d[4];
    o[5] = 4 * d[1] - 5 * d[3] + d[5];
}

static inline void at2(vf o[2], const vf p[4]) {
    o[0] = p[0] + p[1] + p[2];
    o[1] = p[1] - p[2] - p[3];
}

static inline void at4(vf o[4], const vf p[6]) {
    o[0] = p[0] + p[1] + p[2] + p[3] + p[4];
    o[1] = p[1] - p[2] + 2 * p[3] - 2 * p[4];
    o[2] = p[1] + p[2] + 4 * p[3] + 4 * p[4];
    o[3] = p[1] - p[2] + 8 * p[3] - 8 * p[4] + p[5];
}


static inline float hsum(vf x) {
    float s = 0;
    for (int l = 0; l < VL; l++) s += x[l];
    return s;
}

/* x: padded input NHWC (element strides sn, sh, sw; channels contiguous, c % VL == 0); w: [kh][kw][O][c]
   fp32; out: [n][h][wd][O] at element strides on, oh, ow, oc. */
#define NARROW(NAME, T, S, O)                                                                        \
    void NAME(const T *x, T *out, const float *w, const float *bias, int n, int h, int wd, int c,   \
              int kh, int kw, long sn, long sh, long sw, long on, long oh, long ow, long oc,        \
              int threads) {                                                                        \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                           \
        for (long row = 0; row < (long)n * h; row++) {                                              \
            long img = row / h, y = row % h;                                                        \
            for (int px = 0; px < wd; px += 2) {                                                    \
                int two = px + 1 < wd;                                                              \
                vf acc0[O], acc1[O];                                                                \
                for (int o = 0; o < O; o++) acc0[o] = acc1[o] = (vf){0};                            \
                for (int dy = 0; dy < kh; dy++)                                                     \
                    for (int dx = 0; dx < kw; dx++) {                                               \
                        const T *p0 = x + img * sn + (y + dy) * sh + (px + dx) * sw;                \
                        const T *p1 = two ? p0 + sw : p0;                                           \
                        const float *wt = w + (long)(dy * kw + dx) * O * c;                         \
                        for (int cb = 0; cb < c; cb += VL) {                                        \
                            vf a = load_##S(p0 + cb), b = load_##S(p1 + cb);                        \
                            for (int o = 0; o < O; o++) {                                           \
                                vf wv = load_f32(wt + o * c + cb);                                  \
                                acc0[o] += a * wv;                                                  \
                                acc1[o] += b * wv;                                                  \
                            }                                                                       \
                        }                                                                           \
                    }                                                                               \
                for (int o = 0; o < O; o++) {                                                       \
                    float bo = bias ? bias[o] : 0.0f;                                               \
                    store1_##S(out + img * on + y * oh + px * ow + o * oc, hsum(acc0[o]) + bo);     \
                    if (two) store1_##S(out + img * on + y * oh + (px + 1) * ow + o * oc,           \
                                        hsum(acc1[o]) + bo);                                        \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

static inline void store1_f32(float *p, float v) { *p = v; }

static inline void store1_bf16(uint16_t *p, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    *p = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

NARROW(narrow_conv1_f32, float, f32, 1)
NARROW(narrow_conv3_f32, float, f32, 3)
NARROW(narrow_conv1_bf16, uint16_t, bf16, 1)
NARROW(narrow_conv3_bf16, uint16_t, bf16, 3)

/* The Winograd transforms. For a whole residual block (winograd.py WinogradResnetBlock: pad, conv, norm,
   ReLU, pad, conv, norm, add) the input transform reads the unpadded activation through reflected
   coordinates (pad 1: ReflectionPad2d(1)) and, for the second convolution, applies the first InstanceNorm
   as a per-image, per-channel scale and shift and the ReLU as it loads; the output transform sums each
   channel's values and squares (fp32 within a tile, double across tiles, per thread) for the InstanceNorm
   after it, over the image's own pixels only. A lone convolution (pad 0, no norm, no sums) reads an
   already padded input. Rows and columns past the padded image (whole tiles) read as zeros: their outputs
   are cropped, and zeros keep the rounding of the valid ones as small as the torch path's. */

static inline long reflect(long q, long len) {
    if (q < 0) q = -q;
    if (q >= len) q = 2 * len - 2 - q;
    return q < 0 ? 0 : (q >= len ? len - 1 : q);
}

/* x: NHWC (n, h, w, c) at element strides sn, sh, sw, padded by `pad` as it is read; the band's tiles
   start at padded row row0. v is [A*A][tiles][C], tiles ordered (image, tile row, tile column) as
   winograd.py's bmm expects; scale and shift (per image and channel) and relu are optional. */
#define INPUT(NAME, T, S, M, A, BT)                                                                  \
    void NAME(const T *x, T *v, int n, int rows, int tw, int c, int h, int w, int row0, long sn,   \
              long sh, long sw, const float *scale, const float *shift, int relu, int pad,          \
              int threads) {                                                                        \
        long tiles = (long)n * rows * tw;                                                           \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                           \
        for (long t = 0; t < tiles; t++) {                                                          \
            long img = t / ((long)rows * tw), r = (t / tw) % rows, col = t % tw;                    \
            long ys[A], xs[A];                                                                      \
            for (int i = 0; i < A; i++) {                                                           \
                long y = row0 + r * M + i, u = col * M + i; /* past the padded image: zeros */      \
                ys[i] = y < h + 2 * pad ? reflect(y - pad, h) * sh : -1;                            \
                xs[i] = u < w + 2 * pad ? reflect(u - pad, w) * sw : -1;                            \
            }                                                                                       \
            const T *base = x + img * sn;                                                           \
            for (int cb = 0; cb < c; cb += VL) {                                                    \
                vf d[A], e[A][A], o[A], sc = {0}, sf = {0};                                         \
                if (scale) {                                                                        \
                    sc = load_f32(scale + img * c + cb);                                            \
                    sf = load_f32(shift + img * c + cb);                                            \
                }                                                                                   \
                for (int j = 0; j < A; j++) {                                                       \
                    for (int i = 0; i < A; i++) {                                                   \
                        vf q = {0};                                                                 \
                        if (ys[i] >= 0 && xs[j] >= 0) {                                             \
                            q = load_##S(base + ys[i] + xs[j] + cb);                                \
                            if (scale) q = q * sc + sf;                                             \
                            if (relu) q = (vf)((vu)q & ~(vu)(q < (vf){0})); /* NaN stays NaN */      \
                        }                                                                           \
                        d[i] = q;                                                                   \
                    }                                                                               \
                    BT(o, d);                                                                       \
                    for (int i = 0; i < A; i++) e[i][j] = o[i];                                     \
                }                                                                                   \
                for (int i = 0; i < A; i++) {                                                       \
                    BT(o, e[i]);                                                                    \
                    for (int j = 0; j < A; j++)                                                     \
                        store_##S(v + ((long)(i * A + j) * tiles + t) * c + cb, o[j]);              \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

/* p: [A*A][tiles][K]; out: the band's first output row (absolute row row0 of an image h x w), NHWC at
   element strides on, oh, ow; bias (fp32) and stats ([threads][n][2][k] doubles) are optional. */
#define OUTPUT(NAME, T, S, M, A, AT)                                                                 \
    void NAME(const T *p, T *out, const float *bias, int n, int rows, int tw, int k, int h, int w,  \
              int row0, long on, long oh, long ow, double *stats, int threads) {                    \
        long tiles = (long)n * rows * tw;                                                           \
        _Pragma("omp parallel num_threads(threads)")                                                \
        {                                                                                           \
            double *mine = stats ? stats + (long)omp_get_thread_num() * n * 2 * k : 0;             \
            _Pragma("omp for schedule(static)")                                                     \
            for (long t = 0; t < tiles; t++) {                                                      \
                long img = t / ((long)rows * tw), r = (t / tw) % rows, col = t % tw;                \
                T *base = out + img * on + r * M * oh + col * M * ow;                               \
                int hm = h - (row0 + r * M), wm = w - col * M;                                      \
                hm = hm < M ? hm : M;                                                               \
                wm = wm < M ? wm : M;                                                               \
                for (int kb = 0; kb < k; kb += VL) {                                                \
                    vf q[A], e[M][A], o[A], s = {0}, ss = {0}, b = {0};                             \
                    if (bias) b = load_f32(bias + kb);                                              \
                    for (int j = 0; j < A; j++) {                                                   \
                        for (int i = 0; i < A; i++)                                                 \
                            q[i] = load_##S(p + ((long)(i * A + j) * tiles + t) * k + kb);          \
                        AT(o, q);                                                                   \
                        for (int i = 0; i < M; i++) e[i][j] = o[i];                                 \
                    }                                                                               \
                    for (int i = 0; i < M; i++) {                                                   \
                        AT(o, e[i]);                                                                \
                        for (int j = 0; j < M; j++) {                                               \
                            store_##S(base + i * oh + j * ow + kb, o[j] + b);                       \
                            if (i < hm && j < wm) {                                                 \
                                s += o[j];                                                          \
                                ss += o[j] * o[j];                                                  \
                            }                                                                       \
                        }                                                                           \
                    }                                                                               \
                    if (mine) {                                                                     \
                        double *acc = mine + (img * 2) * k + kb;                                    \
                        for (int l = 0; l < VL; l++) {                                              \
                            acc[l] += s[l];                                                         \
                            acc[k + l] += ss[l];                                                    \
                        }                                                                           \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    }

/* out = x + y * scale + shift (per image and channel): the block's last norm and its residual sum, in one
   pass with one rounding. All three NHWC (n, h, w, c); strides per tensor. */
#define NORM_ADD(NAME, T, S)                                                                         \
    void NAME(const T *x, const T *y, T *out, const float *scale, const float *shift, int n, int h, \
              int w, int c, const long *xs, const long *ys, const long *os, int threads) {          \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                           \
        for (long row = 0; row < (long)n * h; row++) {                                              \
            long img = row / h, yy = row % h;                                                       \
            for (int xx = 0; xx < w; xx++)                                                          \
                for (int cb = 0; cb < c; cb += VL) {                                                \
                    vf a = load_##S(x + img * xs[0] + yy * xs[1] + xx * xs[2] + cb);                \
                    vf b = load_##S(y + img * ys[0] + yy * ys[1] + xx * ys[2] + cb);                \
                    vf r = a + b * load_f32(scale + img * c + cb) + load_f32(shift + img * c + cb); \
                    store_##S(out + img * os[0] + yy * os[1] + xx * os[2] + cb, r);                 \
                }                                                                                   \
        }                                                                                           \
    }

INPUT(winograd_in2_f32, float, f32, 2, 4, bt2)
INPUT(winograd_in4_f32, float, f32, 4, 6, bt4)
INPUT(winograd_in2_bf16, uint16_t, bf16, 2, 4, bt2)
INPUT(winograd_in4_bf16, uint16_t, bf16, 4, 6, bt4)
OUTPUT(winograd_out2_f32, float, f32, 2, 4, at2)
OUTPUT(winograd_out4_f32, float, f32, 4, 6, at4)
OUTPUT(winograd_out2_bf16, uint16_t, bf16, 2, 4, at2)
OUTPUT(winograd_out4_bf16, uint16_t, bf16, 4, 6, at4)
NORM_ADD(norm_add_f32, float, f32)
NORM_ADD(norm_add_bf16, uint16_t, bf16)

/* Per-image, per-channel sums and sums of squares of contiguous NHWC x (n, hw, c) into sums (n, 2, c),
   float64. Partial sums run in fp32 over SUM_RUN pixels (short: the error of an fp32 sum grows with its
   length), one per run whatever the thread count, then add up in float64 in run order: the result is the
   same bits with any number of threads (video and `run` must agree bit for bit at fp32). */
#define SUM_RUN 256
#define CHANNEL_SUMS(NAME, T, S)                                                                     \
    void NAME(const T *x, double *sums, int n, long hw, int c, int threads) {                       \
        long runs = (hw + SUM_RUN - 1) / SUM_RUN;                                                   \
        float *part = malloc(sizeof(float) * runs * 2 * c);                                         \
        for (int img = 0; img < n; img++) {                                                         \
            const T *xi = x + (long)img * hw * c;                                                   \
            _Pragma("omp parallel for schedule(static) num_threads(threads)")                       \
            for (long r = 0; r < runs; r++) {                                                       \
                vf s1[c / VL], s2[c / VL];                                                          \
                long p1 = (r + 1) * SUM_RUN < hw ? (r + 1) * SUM_RUN : hw;                          \
                for (int v = 0; v < c / VL; v++) s1[v] = s2[v] = (vf){0};                           \
                for (long p = r * SUM_RUN; p < p1; p++)                                             \
                    for (int v = 0; v < c / VL; v++) {                                              \
                        vf a = load_##S(xi + p * c + v * VL);                                       \
                        s1[v] += a;                                                                 \
                        s2[v] += a * a;                                                             \
                    }                                                                               \
                for (int v = 0; v < c / VL; v++) {                                                  \
                    store_f32(part + (r * 2) * c + v * VL, s1[v]);                                  \
                    store_f32(part + (r * 2 + 1) * c + v * VL, s2[v]);                              \
                }                                                                                   \
            }                                                                                       \
            double *si = sums + (long)img * 2 * c;                                                  \
            for (int k = 0; k < 2 * c; k++) si[k] = 0;                                              \
            for (long r = 0; r < runs; r++)                                                         \
                for (int k = 0; k < 2 * c; k++) si[k] += part[r * 2 * c + k];                       \
        }                                                                                           \
        free(part);                                                                                 \
    }

/* out = max(x * scale + shift, 0) per image and channel, contiguous NHWC; out may be x. */
#define NORM_RELU(NAME, T, S)                                                                        \
    void NAME(const T *x, T *out, const float *scale, const float *shift, int n, long hw, int c,    \
              int threads) {                                                                         \
        _Pragma("omp parallel for schedule(static) num_threads(threads)")                           \
        for (long q = 0; q < (long)n * hw; q++) {                                                   \
            long img = q / hw;                                                                      \
            for (int cb = 0; cb < c; cb += VL) {                                                    \
                vf r = load_##S(x + q * c + cb) * load_f32(scale + img * c + cb)                    \
                       + load_f32(shift + img * c + cb);                                            \
                r = (vf)((vu)r & ~(vu)(r < (vf){0})); /* ReLU; NaN stays NaN */                     \
                store_##S(out + q * c + cb, r);                                                     \
            }                                                                                       \
        }                                                                                           \
    }

CHANNEL_SUMS(channel_sums_f32, float, f32)
CHANNEL_SUMS(channel_sums_bf16, uint16_t, bf16)
NORM_RELU(norm_relu_f32, float, f32)
NORM_RELU(norm_relu_bf16, uint16_t, bf16)
