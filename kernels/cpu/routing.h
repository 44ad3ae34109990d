// Row routing for Mixture-of-Recursions: the rows a router sends on to the next recursion are
// gathered out of an (·, C) tensor (scaled by their router weights), their results added back
// in place, and each row's dot product with its gradient gives the router weight's gradient.
// Every row is one thread's: the results do not depend on the thread count.
//
//   gather_rows(selected, hidden, rows, weights, n, C);              // (n, C) ← hidden[rows]·w
//   scatter_add_rows(hidden, update, rows, weights, 1.0f, n, C);     // hidden[rows] += w·update
//   row_dots(dweights, hidden, dselected, rows, n, C);               // Σ_c hidden[rows]·dsel
#pragma once

namespace loom::kernels::cpu {

// dst (n, C) — overwritten — row i = scale_i · src row rows[i], scale_i = scale ? scale[i] : 1.
// dst and src do not overlap.
void gather_rows(float* dst, const float* src, const int* rows, const float* scale, int n, int C);

// dst row rows[i] += factor · scale_i · src row i (scale_i as above), for i < n. The rows are
// distinct.
void scatter_add_rows(float* dst, const float* src, const int* rows, const float* scale,
                      float factor, int n, int C);

// out[i] = Σ_c a[rows[i], c] · b[i, c] — overwritten — summed in double.
void row_dots(float* out, const float* a, const float* b, const int* rows, int n, int C);

}  // namespace loom::kernels::cpu
