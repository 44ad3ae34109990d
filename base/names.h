// Words in messages: the closest known name to one a user mistyped, for "did you mean ..." about
// an unknown config field, option or command; and a count with its noun ("2 micro-batches").
// Header-only, like json_text.h.
//
//   const std::string guess = loom::closest_name("d_mpl", {"d_model", "d_mlp"});  // "d_mlp"
//   if (!guess.empty()) message += " (did you mean " + guess + "?)";
//   log.line("trained on " + loom::counted(ranks, "rank"));
#pragma once
#include <algorithm>
#include <cctype>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

// Edit distance (insertions, deletions, substitutions, and swaps of neighbours), ignoring case.
inline size_t name_distance(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return std::tolower(static_cast<unsigned char>(c)); };
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t change = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + change});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
          lower(a[i - 2]) == lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The candidate nearest to `name`, when it is near enough to be a typo of it (at most a third of
// its letters wrong, and at least one right); "" otherwise.
inline std::string closest_name(std::string_view name, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(1, name.size() / 3) + 1;
  for (const std::string& c : candidates) {
    const size_t distance = name_distance(name, c);
    if (distance < best_distance && distance < std::max(name.size(), c.size())) {
      best = c;
      best_distance = distance;
    }
  }
  return best;
}

// "1 thread", "2 threads", "2 micro-batches": a count and its noun, the noun plural unless n is
// 1 (-es after ch, sh, s and x).
inline std::string counted(long n, const std::string& noun) {
  const bool es =
      noun.ends_with("ch") || noun.ends_with("sh") || noun.ends_with("s") || noun.ends_with("x");
  return std::to_string(n) + " " + noun + (n == 1 ? "" : es ? "es" : "s");
}

}  // namespace loom
