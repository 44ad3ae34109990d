#include <cub/device/device_radix_sort.cuh>

#include "kernels/cuda/check.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/embedding.h"

namespace loom::kernels::cuda {
namespace {

constexpr int kBlockSize = 256;
// Rows of the token-sorted list one block of the dwte scatter sums: small enough that the many
// distinct tokens of a batch spread over many blocks, large enough that a frequent token's run
// spans few chunks.
constexpr int kChunk = 32;
// Columns per block in the dwte and dwpe kernels (one column per thread).
constexpr int kColumns = 128;
constexpr size_t kScratchAlignment = 256;

size_t align_up(size_t bytes) { return ceil_div(bytes, kScratchAlignment) * kScratchAlignment; }

// Where each part of the scratch buffer lives.
struct ScratchLayout {
  int* sorted_tokens;     // (N) tokens in ascending order
  int* positions;         // (N) 0..N−1, the sort's input values
  int* sorted_positions;  // (N) row index (b·T + t) of each sorted token, ascending within a token
  float* partials;        // (chunks, 2, C) per-chunk sums of runs that cross a chunk edge
  void* sort_storage;     // CUB's temporary storage
  size_t sort_bytes;
  size_t total_bytes;
};

size_t sort_storage_bytes(int N) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const int*>(nullptr), static_cast<int*>(nullptr),
      static_cast<const int*>(nullptr), static_cast<int*>(nullptr), N));
  return bytes;
}

// base may be null to ask only for the size.
ScratchLayout scratch_layout(void* base, int N, int C) {
  const size_t chunks = ceil_div(static_cast<size_t>(N), kChunk);
  const size_t ints = align_up(static_cast<size_t>(N) * sizeof(int));
  const size_t partials = align_up(chunks * 2 * static_cast<size_t>(C) * sizeof(float));
  auto* p = static_cast<char*>(base);
  auto at = [p](size_t offset) { return p == nullptr ? nullptr : p + offset; };
  ScratchLayout layout{};
  layout.sorted_tokens = reinterpret_cast<int*>(at(0));
  layout.positions = reinterpret_cast<int*>(at(ints));
  layout.sorted_positions = reinterpret_cast<int*>(at(2 * ints));
  layout.partials = reinterpret_cast<float*>(at(3 * ints));
  layout.sort_storage = at(3 * ints + partials);
  layout.sort_bytes = sort_storage_bytes(N);
  layout.total_bytes = 3 * ints + partials + align_up(layout.sort_bytes);
  return layout;
}

// Row of wte holding `token`, or −1 when another tensor-parallel rank holds it.
__device__ __forceinline__ int vocab_row(int token, int vocab_begin, int vocab_rows) {
  const int row = token - vocab_begin;
  return row >= 0 && row < vocab_rows ? row : -1;
}

template <typename Act>
__global__ void embedding_forward_scalar(Act* __restrict__ out, const int* __restrict__ tokens,
                                         const Act* __restrict__ wte, const Act* __restrict__ wpe,
                                         int T, int C, size_t total, int vocab_begin,
                                         int vocab_rows) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < total;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t row = i / C;
    const int c = static_cast<int>(i % C);
    const int token_row = vocab_row(tokens[row], vocab_begin, vocab_rows);
    float x = token_row < 0 ? 0.0f : to_float(wte[static_cast<size_t>(token_row) * C + c]);
    if (wpe != nullptr) x += to_float(wpe[(row % T) * C + c]);
    out[i] = from_float<Act>(x);
  }
}

template <typename Act>
__global__ void embedding_forward_packed(Act* __restrict__ out, const int* __restrict__ tokens,
                                         const Act* __restrict__ wte, const Act* __restrict__ wpe,
                                         int T, int C, size_t total_packs, int vocab_begin,
                                         int vocab_rows) {
  using P = Pack<Act>;
  const int row_packs = C / P::kSize;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < total_packs;
       i += size_t{gridDim.x} * blockDim.x) {
    const size_t row = i / row_packs;
    const int c = static_cast<int>(i % row_packs) * P::kSize;
    const int token_row = vocab_row(tokens[row], vocab_begin, vocab_rows);
    P x;
    if (token_row < 0) {
#pragma unroll
      for (int k = 0; k < P::kSize; k++) x.v[k] = from_float<Act>(0.0f);
    } else {
      x = load_pack_readonly(wte + static_cast<size_t>(token_row) * C + c);
    }
    if (wpe != nullptr) {
      const P position = load_pack_readonly(wpe + (row % T) * C + c);
#pragma unroll
      for (int k = 0; k < P::kSize; k++) {
        x.v[k] = from_float<Act>(to_float(x.v[k]) + to_float(position.v[k]));
      }
    }
    store_pack(out + i * P::kSize, x);
  }
}

__global__ void fill_iota(int* __restrict__ out, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    out[i] = i;
}

// Block (chunk, column tile): walks the chunk's sorted rows in order, one column per thread.
// A run of equal tokens that lies wholly inside the chunk is added to dwte here (this block is
// its only writer); a run that crosses the chunk's start goes to the chunk's head slot, one that
// crosses only its end to the tail slot, for dwte_combine_runs.
template <typename Act>
__global__ void dwte_chunk_sums(float* __restrict__ dwte, float* __restrict__ partials,
                                const Act* __restrict__ dout, const int* __restrict__ sorted_tokens,
                                const int* __restrict__ sorted_positions, int N, int C,
                                int vocab_begin, int vocab_rows) {
  __shared__ int keys[kChunk];
  __shared__ int rows[kChunk];
  const int chunk = blockIdx.x;
  const int begin = chunk * kChunk;
  const int count = min(kChunk, N - begin);
  if (threadIdx.x < count) {
    keys[threadIdx.x] = sorted_tokens[begin + threadIdx.x];
    rows[threadIdx.x] = sorted_positions[begin + threadIdx.x];
  }
  __syncthreads();
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const bool continues_from_before = begin > 0 && sorted_tokens[begin - 1] == keys[0];
  const bool continues_after = begin + count < N && sorted_tokens[begin + count] == keys[count - 1];
  float* head = partials + (static_cast<size_t>(chunk) * 2) * C;
  float* tail = head + C;
  float sum = 0.0f;
  int segment_start = 0;
  for (int i = 0; i < count; i++) {
    sum += to_float(dout[static_cast<size_t>(rows[i]) * C + c]);
    if (i + 1 < count && keys[i + 1] == keys[i]) continue;
    const bool at_chunk_start = segment_start == 0;
    const bool crosses_before = at_chunk_start && continues_from_before;
    const bool crosses_after = i + 1 == count && continues_after;
    if (!crosses_before && !crosses_after) {
      const int token_row = vocab_row(keys[i], vocab_begin, vocab_rows);
      if (token_row >= 0) dwte[static_cast<size_t>(token_row) * C + c] += sum;
    } else if (at_chunk_start) {
      head[c] = sum;
    } else {
      tail[c] = sum;
    }
    sum = 0.0f;
    segment_start = i + 1;
  }
}

// Block (chunk, column tile): when the chunk's last run starts in this chunk and continues into
// the next, sums its partials in chunk order and adds the total to dwte (sole writer: the run's
// rows, and so its token, belong to no other run).
__global__ void dwte_combine_runs(float* __restrict__ dwte, const float* __restrict__ partials,
                                  const int* __restrict__ sorted_tokens, int N, int C,
                                  int vocab_begin, int vocab_rows) {
  const int chunk = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const int begin = chunk * kChunk;
  const int end = min(N, begin + kChunk);
  const int token = sorted_tokens[end - 1];
  if (end >= N || sorted_tokens[end] != token) return;         // the last run ends in this chunk
  const int token_row = vocab_row(token, vocab_begin, vocab_rows);
  if (token_row < 0) return;                                   // another rank's token
  if (begin > 0 && sorted_tokens[begin - 1] == token) return;  // it started in an earlier chunk
  // The run fills the whole chunk (head slot) or starts inside it (tail slot).
  const bool whole_chunk = sorted_tokens[begin] == token;
  float total = partials[(static_cast<size_t>(chunk) * 2 + (whole_chunk ? 0 : 1)) * C + c];
  for (int next = chunk + 1;; next++) {
    total += partials[(static_cast<size_t>(next) * 2) * C + c];  // its head slot: this run
    const int next_end = min(N, (next + 1) * kChunk);
    if (next_end >= N || sorted_tokens[next_end] != token) break;
  }
  dwte[static_cast<size_t>(token_row) * C + c] += total;
}

// dwpe[t, c] += dout[0, t, c], then dout[1, t, c], ... — the CPU kernel's order.
template <typename Act>
__global__ void dwpe_accumulate(float* __restrict__ dwpe, const Act* __restrict__ dout, int B,
                                int T, int C) {
  const int t = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const size_t at = static_cast<size_t>(t) * C + c;
  float acc = dwpe[at];
  for (int b = 0; b < B; b++) acc += to_float(dout[static_cast<size_t>(b) * T * C + at]);
  dwpe[at] = acc;
}

}  // namespace

template <typename Act>
void embedding_forward(const Context& ctx, Act* out, const int* tokens, const Act* wte,
                       const Act* wpe, int B, int T, int C, int vocab_begin, int vocab_rows) {
  const size_t total = static_cast<size_t>(B) * T * C;
  if (total == 0) return;
  const bool packed =
      wpe == nullptr ? can_vectorize<Act>(C, out, wte) : can_vectorize<Act>(C, out, wte, wpe);
  if (packed) {
    const size_t packs = total / Pack<Act>::kSize;
    embedding_forward_packed<<<grid_stride_blocks(packs, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        out, tokens, wte, wpe, T, C, packs, vocab_begin, vocab_rows);
  } else {
    embedding_forward_scalar<<<grid_stride_blocks(total, kBlockSize), kBlockSize, 0, ctx.stream>>>(
        out, tokens, wte, wpe, T, C, total, vocab_begin, vocab_rows);
  }
  CUDA_CHECK_LAUNCH();
}

size_t embedding_backward_scratch_bytes(int B, int T, int C) {
  return scratch_layout(nullptr, B * T, C).total_bytes;
}

template <typename Act>
void embedding_backward(const Context& ctx, float* dwte, float* dwpe, const Act* dout,
                        const int* tokens, int B, int T, int C, int vocab_begin, int vocab_rows,
                        void* scratch) {
  const int N = B * T;
  if (N == 0 || C == 0) return;
  const ScratchLayout s = scratch_layout(scratch, N, C);
  fill_iota<<<grid_stride_blocks(N, kBlockSize), kBlockSize, 0, ctx.stream>>>(s.positions, N);
  CUDA_CHECK_LAUNCH();
  // LSD radix sort is stable: equal tokens keep ascending row order.
  size_t sort_bytes = s.sort_bytes;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s.sort_storage, sort_bytes, tokens, s.sorted_tokens,
                                             s.positions, s.sorted_positions, N, 0,
                                             static_cast<int>(sizeof(int) * 8), ctx.stream));
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kChunk)),
                  static_cast<unsigned>(ceil_div(C, kColumns)));
  dwte_chunk_sums<<<grid, kColumns, 0, ctx.stream>>>(dwte, s.partials, dout, s.sorted_tokens,
                                                     s.sorted_positions, N, C, vocab_begin,
                                                     vocab_rows);
  CUDA_CHECK_LAUNCH();
  dwte_combine_runs<<<grid, kColumns, 0, ctx.stream>>>(dwte, s.partials, s.sorted_tokens, N, C,
                                                       vocab_begin, vocab_rows);
  CUDA_CHECK_LAUNCH();
  if (dwpe != nullptr) {
    const dim3 position_grid(static_cast<unsigned>(T),
                             static_cast<unsigned>(ceil_div(C, kColumns)));
    dwpe_accumulate<<<position_grid, kColumns, 0, ctx.stream>>>(dwpe, dout, B, T, C);
    CUDA_CHECK_LAUNCH();
  }
}

template void embedding_forward<float>(const Context&, float*, const int*, const float*,
                                       const float*, int, int, int, int, int);
template void embedding_forward<__nv_bfloat16>(const Context&, __nv_bfloat16*, const int*,
                                               const __nv_bfloat16*, const __nv_bfloat16*, int, int,
                                               int, int, int);
template void embedding_backward<float>(const Context&, float*, float*, const float*, const int*,
                                        int, int, int, int, int, void*);
template void embedding_backward<__nv_bfloat16>(const Context&, float*, float*,
                                                const __nv_bfloat16*, const int*, int, int, int,
                                                int, int, void*);

}  // namespace loom::kernels::cuda
