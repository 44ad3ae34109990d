// Vocabulary-parallel LM head + cross-entropy over each test group against the full fused kernel
// on the same x and global weight (vocab_parallel_check.h): vocabularies the group size does not
// divide (padded; V = 5 leaves the last ranks of 4 and 8 only padding), several chunks and one
// chunk larger than N, with and without gradients.
#include <gtest/gtest.h>

#include "parallel/vocab_parallel.h"
#include "tests/parallel/parallel_test_env.h"
#include "tests/parallel/vocab_parallel_check.h"

namespace loom::test {
namespace {

TEST(VocabParallel, ShardsCoverThePaddedVocabulary) {
  const VocabShard last = vocab_shard(37, 4, 3);
  EXPECT_EQ(last.rows, 10);
  EXPECT_EQ(last.vocab_begin, 30);
  EXPECT_EQ(last.valid, 7);
  EXPECT_EQ(vocab_shard(5, 4, 3).valid, 0);  // 2 rows each: rank 3 holds only padding
  EXPECT_EQ(vocab_shard(64, 4, 2).valid, 16);
}

TEST(VocabParallel, MatchesTheFullCrossEntropy) {
  for (Communicator* comm : communicators())
    for (const VocabParallelCase& k :
         {VocabParallelCase{13, 8, 37, 5}, VocabParallelCase{13, 8, 64, 5},
          VocabParallelCase{13, 8, 5, 5}, VocabParallelCase{7, 8, 37, 16}})
      expect_vocab_parallel_matches_full(*comm, vocab_shard(k.V, comm->size(), comm->rank()), k);
}

}  // namespace
}  // namespace loom::test
