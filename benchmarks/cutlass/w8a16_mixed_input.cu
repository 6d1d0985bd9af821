// CUTLASS's own Hopper mixed-input GEMM (int8 weights, bf16 activations) on ugsep's W8A16 batched product
// y[t] = x[t] @ (s[t] * q[t]) + b[t], for benchmarks/cutlass_w8a16.py to time against our Triton kernel.
// Built once per config (TILE_*, CLUSTER_M, SCHED, NAME) by that script with nvcc for sm_90a.
// CUTLASS's view, swapped so the narrow type is A and goes through registers: A = q as stored, (N, K, T)
// K-major; B = x (M, K, T) K-major; D = y^T (N, M, T) N-contiguous; the per-channel scale and the bias are
// per-row (N) broadcasts in the epilogue.
#include <cuda_runtime.h>
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"

using namespace cute;

// SCHED: 0 cooperative persistent, 1 pingpong persistent, 2 cooperative stream-K
#if !defined(TILE_M) || !defined(TILE_N) || !defined(TILE_K) || !defined(CLUSTER_M) || !defined(SCHED) || !defined(NAME)
#error "define TILE_M, TILE_N, TILE_K, CLUSTER_M, SCHED and NAME"
#endif

using TileShape = Shape<Int<TILE_M>, Int<TILE_N>, Int<TILE_K>>;
using ClusterShape = Shape<Int<CLUSTER_M>, _1, _1>;
#if SCHED == 1
using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using EpiSchedule = cutlass::epilogue::TmaWarpSpecialized;
#else
using KernelSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using EpiSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
#endif
#if SCHED == 2
using Scheduler = cutlass::gemm::StreamKScheduler;
#else
using Scheduler = cutlass::gemm::PersistentScheduler;
#endif

using Fusion = cutlass::epilogue::fusion::PerRowLinCombPerRowBiasEltAct<
    cutlass::epilogue::thread::Identity, cutlass::bfloat16_t, float, cutlass::bfloat16_t, cutlass::bfloat16_t, float>;

using Epi = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float,
    void, cutlass::layout::ColumnMajor, 8,
    cutlass::bfloat16_t, cutlass::layout::ColumnMajor, 8,
    EpiSchedule, Fusion>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
    int8_t, cutlass::layout::RowMajor, 16,
    cutlass::bfloat16_t, cutlass::layout::ColumnMajor, 8,
    float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epi::SharedStorage))>,
    KernelSchedule>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epi, Scheduler>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

static void* g_ws = nullptr;
static size_t g_ws_size = 0;

// Returns 0, or the step that failed: 1 can_implement, 2 workspace, 3 initialize, 4 run, 5 launch error.
extern "C" int NAME(const int8_t* q, const void* x, const float* scale, const void* bias, void* y,
                    int N, int M, int K, int T, long long sxm, long long sxt, int sms, cudaStream_t stream) {
  typename Kernel::StrideA dA = make_stride(int64_t(K), _1{}, int64_t(N) * K);
  typename Kernel::StrideB dB = make_stride(int64_t(sxm), _1{}, int64_t(sxt));
  typename Kernel::StrideD dD = make_stride(_1{}, int64_t(N), int64_t(M) * N);
  typename Kernel::StrideC dC = dD;
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {N, M, K, T},
      {q, dA, reinterpret_cast<const cutlass::bfloat16_t*>(x), dB},
      {{}, nullptr, dC, reinterpret_cast<cutlass::bfloat16_t*>(y), dD}};
  args.epilogue.thread.alpha_ptr = scale;
  args.epilogue.thread.dAlpha = {true, _0{}, int64_t(N)};
  args.epilogue.thread.bias_ptr = reinterpret_cast<const cutlass::bfloat16_t*>(bias);
  args.epilogue.thread.dBias = {_1{}, _0{}, int64_t(N)};
  args.hw_info.sm_count = sms;
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return 1;
  size_t ws = Gemm::get_workspace_size(args);
  if (ws > g_ws_size) {
    if (g_ws) cudaFree(g_ws);
    if (cudaMalloc(&g_ws, ws) != cudaSuccess) return 2;
    g_ws_size = ws;
  }
  if (gemm.initialize(args, g_ws, stream) != cutlass::Status::kSuccess) return 3;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return 4;
  return int(cudaGetLastError()) ? 5 : 0;
}
