// ONNX Runtime custom operators of the shift (docs/spec.md sections 1-3), domain `shiftnas`:
//
//   Shift(X, theta) -> Y                      the shift alone
//   ShiftConv1x1(X, W, B, theta) -> Y         act(conv1x1(shift(X)) + B)
//   ShiftConv1x1Add(X, W, B, theta, Z) -> Y   act(conv1x1(shift(X)) + B) + Z, or act(... + Z)
//
// theta is (C, 2) float, rows (dy, dx) per input channel; attributes `stride` (>= 1),
// `bilinear` (0: theta holds integers, an integer shift; 1: the active shift's bilinear
// sampling), `relu` (0 | 1) and, for the Add op, `add_after_relu` (1: csc's branch + shortcut,
// 0: bottleneck3's ReLU(conv + residual)). X is NCHW float; Y is (N, C_out, ceil(H/s), ceil(W/s)).
//
// Why fused: in ORT a shift is a node of its own between two 1x1 convolutions that ORT runs in
// its blocked NCHWc layout, so a separate shift costs the node and two layout reorders. The
// fused op reads the shifted input while packing the GEMM's B panel, which the GEMM packs
// anyway: the shift itself moves no extra bytes (benchmarks/RESULTS.md, "Shift in ONNX Runtime").
//
// Written against ONNX Runtime's C ABI only, so it builds without ORT's headers (the Python
// wheel ships none): the few declarations below are the C API's stable parts. `OrtApi` is a
// table of function pointers that ORT only ever appends to (its ABI promise), so a function is
// reached by its slot number, fixed since API version 1. The op table (`OrtCustomOp`) says
// version 17 (ONNX Runtime >= 1.17, the `onnx` extra's floor), and fills every field up to it:
// ORT 1.32 calls the optional-input callbacks even for a table that claims version 1.
// Built on first use by shiftnas/kernels/ort_ops.py with the system C++ compiler.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

extern "C" {
struct OrtApi;
struct OrtStatus;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtSessionOptions;
struct OrtCustomOpDomain;

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)();
};

struct OrtCustomOp {  // the layout of API version 17; later versions only append
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  int (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  int (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index);   // 0: required
  int (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index);  // 0: required
  int (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);       // 0: the default
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  void* CreateKernelV2;       // unused (null): the version-1 kernel callbacks above serve
  void* KernelComputeV2;
  void* InferOutputShapeFn;   // null: ORT infers nothing; the output shape is set at run time
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
  void* later[8];             // fields of later versions, null (ORT reads them only for those)
};
}

namespace {

constexpr int kFloat = 1;  // ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT

// Slots of OrtApi (function-pointer table, append-only since API version 1).
enum Slot {
  kCreateCustomOpDomain = 26,
  kCustomOpDomainAdd = 27,
  kAddCustomOpDomain = 28,
  kGetTensorMutableData = 51,
  kGetDimensionsCount = 61,
  kGetDimensions = 62,
  kGetTensorTypeAndShape = 65,
  kKernelInfoGetAttributeInt64 = 86,
  kKernelContextGetInput = 90,
  kKernelContextGetOutput = 91,
  kReleaseStatus = 93,
  kReleaseTensorTypeAndShapeInfo = 99,
};

const OrtApi* g_api = nullptr;

template <typename F>
F fn(Slot s) {
  return reinterpret_cast<F const*>(g_api)[s];
}

int64_t attr_int(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t v = fallback;
  OrtStatus* st = fn<OrtStatus* (*)(const OrtKernelInfo*, const char*, int64_t*)>(
      kKernelInfoGetAttributeInt64)(info, name, &v);
  if (st == nullptr) return v;
  fn<void (*)(OrtStatus*)>(kReleaseStatus)(st);  // a missing attribute keeps its default
  return fallback;
}

struct Tensor {
  const float* data = nullptr;
  std::vector<int64_t> shape;
};

Tensor input(OrtKernelContext* ctx, size_t i) {
  const OrtValue* v = nullptr;
  fn<OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**)>(kKernelContextGetInput)(
      ctx, i, &v);
  Tensor t;
  void* p = nullptr;
  fn<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(const_cast<OrtValue*>(v), &p);
  t.data = static_cast<const float*>(p);
  OrtTensorTypeAndShapeInfo* info = nullptr;
  fn<OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**)>(kGetTensorTypeAndShape)(v, &info);
  size_t n = 0;
  fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*)>(kGetDimensionsCount)(info, &n);
  t.shape.resize(n);
  fn<OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t)>(kGetDimensions)(
      info, t.shape.data(), n);
  fn<void (*)(OrtTensorTypeAndShapeInfo*)>(kReleaseTensorTypeAndShapeInfo)(info);
  return t;
}

float* output(OrtKernelContext* ctx, const std::vector<int64_t>& shape) {
  OrtValue* v = nullptr;
  fn<OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**)>(
      kKernelContextGetOutput)(ctx, 0, shape.data(), shape.size(), &v);
  void* p = nullptr;
  fn<OrtStatus* (*)(OrtValue*, void**)>(kGetTensorMutableData)(v, &p);
  return static_cast<float*>(p);
}

// ----------------------------------------------------------------------------
// Sampling: one output row of one channel
// ----------------------------------------------------------------------------

// dst[j] = plane[r, c0 + j*s] for j in [0, n): zero where the row or the column is outside.
inline void sample_row(float* dst, const float* plane, int64_t h, int64_t w, int64_t r, int64_t c0,
                       int64_t s, int64_t n) {
  if (r < 0 || r >= h) {
    std::memset(dst, 0, n * sizeof(float));
    return;
  }
  const int64_t lo = std::min(n, c0 < 0 ? (-c0 + s - 1) / s : int64_t{0});
  const int64_t hi = c0 > w - 1 ? lo : std::max(lo, std::min(n, (w - 1 - c0) / s + 1));
  std::memset(dst, 0, lo * sizeof(float));
  const float* row = plane + r * w + c0;
  if (s == 1) {
    std::memcpy(dst + lo, row + lo, (hi - lo) * sizeof(float));
  } else {
    for (int64_t j = lo; j < hi; ++j) dst[j] = row[j * s];
  }
  std::memset(dst + hi, 0, (n - hi) * sizeof(float));
}

// The sampling of one channel: integer offsets, or the bilinear weights of spec section 2.
struct Sampler {
  int64_t a, b;          // floor(dy), floor(dx)
  float w00, w01, w10, w11;  // (1-u)(1-v), (1-u)v, u(1-v), uv
  bool rows2, cols2;     // u > 0, v > 0: the second row / column of taps is used

  Sampler(float dy, float dx, bool bilinear) {
    if (!bilinear) {  // theta holds integers (a fixed or a rounded sparse shift)
      a = static_cast<int64_t>(std::lround(dy));
      b = static_cast<int64_t>(std::lround(dx));
      w00 = 1.f, w01 = w10 = w11 = 0.f, rows2 = cols2 = false;
      return;
    }
    const float fa = std::floor(dy), fb = std::floor(dx), u = dy - fa, v = dx - fb;
    a = static_cast<int64_t>(fa), b = static_cast<int64_t>(fb);
    w00 = (1 - u) * (1 - v), w01 = (1 - u) * v, w10 = u * (1 - v), w11 = u * v;
    rows2 = u > 0.f, cols2 = v > 0.f;
  }

  // Rows [i0, i0 + nr) of one channel into dst (nr * wo floats); `tmp` holds 3 * nr * wo
  // floats. At stride 1 an integer shift is one flat copy (a plane shifted by (a, b) is the flat
  // array shifted by a*w + b), then the rows and columns that wrapped around are zeroed, as in
  // _cpu_shift.cpp: 5.0 -> 1.9 us for a (32, 16, 16) tensor against one call per row. A
  // bilinear shift is up to four such copies, then one weighted sum over the tile.
  void rows(float* dst, float* tmp, const float* plane, int64_t h, int64_t w, int64_t i0,
            int64_t nr, int64_t s, int64_t wo) const {
    if (s != 1) {
      for (int64_t i = 0; i < nr; ++i) row(dst + i * wo, tmp, plane, h, w, i0 + i, s, wo);
      return;
    }
    flat_shift(dst, plane, h, w, i0, nr, a, b);
    if (!rows2 && !cols2) return;
    const int64_t n = nr * w;
    float* t1 = tmp;
    float* t2 = tmp + n;
    float* t3 = tmp + 2 * n;
    if (cols2) flat_shift(t1, plane, h, w, i0, nr, a, b + 1);
    if (rows2) flat_shift(t2, plane, h, w, i0, nr, a + 1, b);
    if (rows2 && cols2) flat_shift(t3, plane, h, w, i0, nr, a + 1, b + 1);
    if (rows2 && cols2) {
      for (int64_t j = 0; j < n; ++j) dst[j] = w00 * dst[j] + w01 * t1[j] + w10 * t2[j] + w11 * t3[j];
    } else if (cols2) {
      for (int64_t j = 0; j < n; ++j) dst[j] = w00 * dst[j] + w01 * t1[j];
    } else {
      for (int64_t j = 0; j < n; ++j) dst[j] = w00 * dst[j] + w10 * t2[j];
    }
  }

  // Rows [i0, i0 + nr) of a plane shifted by the integers (dy, dx), stride 1, into dst.
  static void flat_shift(float* dst, const float* plane, int64_t h, int64_t w, int64_t i0,
                         int64_t nr, int64_t dy, int64_t dx) {
    // Valid output rows [r0, r1) and columns [q0, q1) within the tile.
    const int64_t r0 = std::max(i0, -dy), r1 = std::min(i0 + nr, h - dy);
    const int64_t q0 = std::min(w, std::max<int64_t>(0, -dx)), q1 = std::max(q0, std::min(w, w - dx));
    if (r1 <= r0 || q1 <= q0) {
      std::memset(dst, 0, nr * w * sizeof(float));
      return;
    }
    std::memset(dst, 0, (r0 - i0) * w * sizeof(float));
    const int64_t lo = (r0 - i0) * w + q0, hi = (r1 - 1 - i0) * w + q1;
    std::memcpy(dst + lo, plane + (i0 * w + lo) + dy * w + dx, (hi - lo) * sizeof(float));
    std::memset(dst + (r1 - i0) * w, 0, (i0 + nr - r1) * w * sizeof(float));
    if (q0 > 0 || q1 < w)
      for (int64_t i = r0 - i0; i < r1 - i0; ++i) {
        for (int64_t j = 0; j < q0; ++j) dst[i * w + j] = 0.f;
        for (int64_t j = q1; j < w; ++j) dst[i * w + j] = 0.f;
      }
  }

  // dst[j] = y[i, j] for j in [0, wo) of one channel; `tmp` holds 3 * wo floats.
  void row(float* dst, float* tmp, const float* plane, int64_t h, int64_t w, int64_t i, int64_t s,
           int64_t wo) const {
    const int64_t r = i * s + a;
    sample_row(dst, plane, h, w, r, b, s, wo);
    if (!rows2 && !cols2) return;
    float* t1 = tmp;
    float* t2 = tmp + wo;
    float* t3 = tmp + 2 * wo;
    const bool c2 = cols2, r2 = rows2;
    if (c2) sample_row(t1, plane, h, w, r, b + 1, s, wo);
    if (r2) sample_row(t2, plane, h, w, r + 1, b, s, wo);
    if (r2 && c2) sample_row(t3, plane, h, w, r + 1, b + 1, s, wo);
    for (int64_t j = 0; j < wo; ++j) {
      float y = w00 * dst[j];
      if (c2) y += w01 * t1[j];
      if (r2) y += w10 * t2[j];
      if (r2 && c2) y += w11 * t3[j];
      dst[j] = y;
    }
  }
};

std::vector<Sampler> samplers(const Tensor& theta, int64_t c, bool bilinear) {
  std::vector<Sampler> out;
  out.reserve(c);
  for (int64_t ch = 0; ch < c; ++ch) out.emplace_back(theta.data[2 * ch], theta.data[2 * ch + 1], bilinear);
  return out;
}

// ----------------------------------------------------------------------------
// GEMM: Y[co, t] = sum_k W[co, k] * P[k, t] over a tile of T pixels
// ----------------------------------------------------------------------------

constexpr int64_t kMR = 4;   // output channels per micro-tile
constexpr int64_t kNV = 3;   // 8-float vectors of pixels per micro-tile
constexpr int64_t kNR = 8 * kNV;
typedef float v8 __attribute__((vector_size(32)));

// What follows the GEMM, applied in registers before the one store of each output.
struct Epilogue {
  const float* bias;     // (Cout)
  const float* z;        // residual, laid out like the output (null: none)
  bool relu, add_after_relu;
};

// out[co, t] = epilogue(sum_k W[co, k] * P[k, t]) for the `valid` pixels of a tile.
// `wp`: W packed as [ceil(Cout / MR)][K][MR], zero rows past Cout; `p`: [K][tp], tp a multiple
// of NR, zero columns past `valid`; `out` / `z`: channel planes `plane` floats apart.
// MR x NR = 4 x 24: 12 accumulators, 3 vector loads and 4 broadcasts per 12 FMAs (against
// 6 x 16, no rows wasted at C_out = 16 or 32: 11.5 -> 8.9 us for 32 -> 16 channels, 16 x 16).
#define SHIFTNAS_GEMM_BODY                                                             \
  for (int64_t cb = 0; cb * kMR < co; ++cb) {                                          \
    const float* a = wp + cb * k * kMR;                                                \
    const int64_t rows = std::min(kMR, co - cb * kMR);                                 \
    for (int64_t t = 0; t < tp; t += kNR) {                                            \
      v8 acc[kMR][kNV];                                                                \
      {                                                                                \
        /* Twelve named accumulators: as an indexed array GCC kept them in memory */   \
        v8 c00 = {}, c01 = {}, c02 = {}, c10 = {}, c11 = {}, c12 = {};                 \
        v8 c20 = {}, c21 = {}, c22 = {}, c30 = {}, c31 = {}, c32 = {};                 \
        const float* b = p + t;                                                        \
        for (int64_t kk = 0; kk < k; ++kk) {                                           \
          v8 b0, b1, b2;                                                               \
          std::memcpy(&b0, b + kk * tp, sizeof(v8));                                   \
          std::memcpy(&b1, b + kk * tp + 8, sizeof(v8));                               \
          std::memcpy(&b2, b + kk * tp + 16, sizeof(v8));                              \
          const float* ak = a + kk * kMR;                                              \
          v8 av = {ak[0], ak[0], ak[0], ak[0], ak[0], ak[0], ak[0], ak[0]};              \
          c00 += av * b0, c01 += av * b1, c02 += av * b2;                              \
          av = (v8){ak[1], ak[1], ak[1], ak[1], ak[1], ak[1], ak[1], ak[1]};             \
          c10 += av * b0, c11 += av * b1, c12 += av * b2;                              \
          av = (v8){ak[2], ak[2], ak[2], ak[2], ak[2], ak[2], ak[2], ak[2]};             \
          c20 += av * b0, c21 += av * b1, c22 += av * b2;                              \
          av = (v8){ak[3], ak[3], ak[3], ak[3], ak[3], ak[3], ak[3], ak[3]};             \
          c30 += av * b0, c31 += av * b1, c32 += av * b2;                              \
        }                                                                              \
        acc[0][0] = c00, acc[0][1] = c01, acc[0][2] = c02;                             \
        acc[1][0] = c10, acc[1][1] = c11, acc[1][2] = c12;                             \
        acc[2][0] = c20, acc[2][1] = c21, acc[2][2] = c22;                             \
        acc[3][0] = c30, acc[3][1] = c31, acc[3][2] = c32;                             \
      }                                                                                \
      const int64_t n = std::min(kNR, valid - t);                                      \
      for (int64_t r = 0; r < rows; ++r) {                                             \
        const int64_t o = cb * kMR + r;                                                \
        const float bo = ep.bias[o];                                                   \
        const v8 bias = {bo, bo, bo, bo, bo, bo, bo, bo};                              \
        float res[kNR];                                                                \
        if (ep.z) std::memcpy(res, ep.z + o * plane + t, n * sizeof(float));           \
        v8 zv[kNV];                                                                    \
        std::memcpy(zv, res, sizeof(zv));                                              \
        float buf[kNR];                                                                \
        for (int64_t v = 0; v < kNV; ++v) {                                            \
          v8 y = acc[r][v] + bias;                                                     \
          if (ep.z && !ep.add_after_relu) y += zv[v];                                  \
          if (ep.relu) y = y > 0 ? y : 0;                                              \
          if (ep.z && ep.add_after_relu) y += zv[v];                                   \
          std::memcpy(buf + 8 * v, &y, sizeof(v8));                                    \
        }                                                                              \
        std::memcpy(out + o * plane + t, buf, n * sizeof(float));                      \
      }                                                                                \
    }                                                                                  \
  }

#define SHIFTNAS_GEMM_ARGS                                                                  \
  const float *wp, const float *p, float *out, int64_t plane, int64_t co, int64_t k,        \
      int64_t tp, int64_t valid, const Epilogue &ep

void gemm_tile_base(SHIFTNAS_GEMM_ARGS) { SHIFTNAS_GEMM_BODY }

#if defined(__x86_64__) && defined(__GNUC__)
// The same loop compiled for AVX2 + FMA, picked at run time: one build serves any x86-64
// machine (the baseline build ran the fused op 3-10x slower here).
__attribute__((target("avx2,fma"))) void gemm_tile_avx2(SHIFTNAS_GEMM_ARGS) { SHIFTNAS_GEMM_BODY }
const bool g_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

void gemm_tile(SHIFTNAS_GEMM_ARGS) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (g_avx2) return gemm_tile_avx2(wp, p, out, plane, co, k, tp, valid, ep);
#endif
  gemm_tile_base(wp, p, out, plane, co, k, tp, valid, ep);
}

// ----------------------------------------------------------------------------
// Kernels
// ----------------------------------------------------------------------------

struct Kernel {
  int64_t stride, bilinear, relu, add_after_relu, fused, residual;
};

void shift_compute(const Kernel& k, OrtKernelContext* ctx) {
  const Tensor x = input(ctx, 0), theta = input(ctx, 1);
  const int64_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3], s = k.stride;
  const int64_t ho = (h + s - 1) / s, wo = (w + s - 1) / s;
  float* y = output(ctx, {n, c, ho, wo});
  const std::vector<Sampler> smp = samplers(theta, c, k.bilinear != 0);
  std::vector<float> tmp(3 * ho * wo);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* plane = x.data + (b * c + ch) * h * w;
      float* out = y + (b * c + ch) * ho * wo;
      smp[ch].rows(out, tmp.data(), plane, h, w, 0, ho, s, wo);
    }
}

// Pixels per tile: the packed panel (C_in x T floats) stays within ~32 KiB (L1).
constexpr int64_t kPanelFloats = 8192;

void shift_conv_compute(const Kernel& k, OrtKernelContext* ctx) {
  const Tensor x = input(ctx, 0), wt = input(ctx, 1), bias = input(ctx, 2), theta = input(ctx, 3);
  const int64_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3], s = k.stride;
  const int64_t co = wt.shape[0], ho = (h + s - 1) / s, wo = (w + s - 1) / s, hw = ho * wo;
  const float* z = k.residual ? input(ctx, 4).data : nullptr;
  float* y = output(ctx, {n, co, ho, wo});
  const std::vector<Sampler> smp = samplers(theta, c, k.bilinear != 0);

  const int64_t co_blocks = (co + kMR - 1) / kMR;
  std::vector<float> wp(co_blocks * c * kMR, 0.f);
  for (int64_t o = 0; o < co; ++o)
    for (int64_t kk = 0; kk < c; ++kk) wp[(o / kMR) * c * kMR + kk * kMR + o % kMR] = wt.data[o * c + kk];

  // Whole output rows per tile, T = rows * wo pixels padded to a multiple of NR: the number of
  // rows that fits the panel and pads least (at 16 wide, 3 rows: 48 pixels, none padded; 4 rows
  // padded 64 to 72, and the fused op ran 1.2x ORT's 1x1 Conv at 128 -> 64 channels).
  const int64_t most = std::max<int64_t>(1, std::min(ho, kPanelFloats / std::max<int64_t>(1, c) / wo));
  int64_t rows = most;
  double least = 1.0;
  for (int64_t r = most; r >= std::max<int64_t>(1, most / 2); --r) {
    const int64_t t = r * wo, pad = (t + kNR - 1) / kNR * kNR;
    const double waste = double(pad - t) / pad;
    if (waste < least - 1e-9) least = waste, rows = r;
  }
  const int64_t tmax = (rows * wo + kNR - 1) / kNR * kNR;
  std::vector<float> panel(c * tmax), tmp(3 * tmax);
  for (int64_t b = 0; b < n; ++b) {
    const float* xb = x.data + b * c * h * w;
    for (int64_t i0 = 0; i0 < ho; i0 += rows) {
      const int64_t nr = std::min(rows, ho - i0), t = nr * wo, tp = (t + kNR - 1) / kNR * kNR;
      for (int64_t ch = 0; ch < c; ++ch) {
        float* dst = panel.data() + ch * tp;
        smp[ch].rows(dst, tmp.data(), xb + ch * h * w, h, w, i0, nr, s, wo);
        std::memset(dst + t, 0, (tp - t) * sizeof(float));
      }
      const int64_t at = b * co * hw + i0 * wo;
      const Epilogue ep{bias.data, z ? z + at : nullptr, k.relu != 0, k.add_after_relu != 0};
      gemm_tile(wp.data(), panel.data(), y + at, hw, co, c, tp, t, ep);
    }
  }
}

// ----------------------------------------------------------------------------
// The op table
// ----------------------------------------------------------------------------

struct Op {
  OrtCustomOp table;  // first: ORT sees only this part
  const char* name;
  size_t inputs;
  bool fused, residual;
};

void* create_kernel(const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info) {
  const Op* o = reinterpret_cast<const Op*>(op);
  return new Kernel{std::max<int64_t>(1, attr_int(info, "stride", 1)), attr_int(info, "bilinear", 0),
                    attr_int(info, "relu", 0), attr_int(info, "add_after_relu", 1), o->fused,
                    o->residual};
}

void compute(void* kernel, OrtKernelContext* ctx) {
  const Kernel& k = *static_cast<Kernel*>(kernel);
  if (k.fused)
    shift_conv_compute(k, ctx);
  else
    shift_compute(k, ctx);
}

Op make_op(const char* name, size_t inputs, bool fused, bool residual) {
  Op op{};
  OrtCustomOp& t = op.table;
  t.version = 17;
  t.CreateKernel = create_kernel;
  t.GetName = [](const OrtCustomOp* o) { return reinterpret_cast<const Op*>(o)->name; };
  t.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };
  t.GetInputType = [](const OrtCustomOp*, size_t) { return kFloat; };
  t.GetInputTypeCount = [](const OrtCustomOp* o) { return reinterpret_cast<const Op*>(o)->inputs; };
  t.GetOutputType = [](const OrtCustomOp*, size_t) { return kFloat; };
  t.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  t.KernelCompute = compute;
  t.KernelDestroy = [](void* k) { delete static_cast<Kernel*>(k); };
  t.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return 0; };
  t.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return 0; };
  t.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return 0; };
  t.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  t.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  t.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  t.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  t.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  t.GetEndVersion = [](const OrtCustomOp*) { return 1 << 30; };
  op.name = name, op.inputs = inputs, op.fused = fused, op.residual = residual;
  return op;
}

Op g_shift = make_op("Shift", 2, false, false);
Op g_shift_conv = make_op("ShiftConv1x1", 4, true, false);
Op g_shift_conv_add = make_op("ShiftConv1x1Add", 5, true, true);

}  // namespace

// The entry point ORT looks up in a custom-op library
// (SessionOptions.register_custom_ops_library in Python, RegisterCustomOpsLibrary in C).
extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(
    OrtSessionOptions* options, const OrtApiBase* base) {
  g_api = base->GetApi(1);
  if (g_api == nullptr) return nullptr;  // cannot happen: every ORT serves API version 1
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = fn<OrtStatus* (*)(const char*, OrtCustomOpDomain**)>(kCreateCustomOpDomain)(
          "shiftnas", &domain))
    return st;
  for (Op* op : {&g_shift, &g_shift_conv, &g_shift_conv_add})
    if (OrtStatus* st = fn<OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*)>(kCustomOpDomainAdd)(
            domain, &op->table))
      return st;
  // The domain must outlive every session that uses it: it is kept for the process's life.
  return fn<OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*)>(kAddCustomOpDomain)(options, domain);
}
