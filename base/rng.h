// A small, portable random generator whose whole state is one integer, so checkpoints can carry
// it and a resumed run draws the same numbers. SplitMix64 (Steele, Lea, Flood 2014).
//
//   loom::Rng rng{seed};
//   float x = rng.normal();     // N(0, 1)
#pragma once
#include <cmath>
#include <cstdint>

namespace loom {

struct Rng {
  uint64_t state = 0;

  uint64_t next_u64() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return next_u64() % n; }
  // Standard normal by Box–Muller (one value per call; the second is discarded so the state
  // stays a single integer).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }
};

}  // namespace loom
