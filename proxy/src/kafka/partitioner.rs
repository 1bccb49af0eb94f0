//! Kafka's default key partitioner, bit for bit as the Java client computes it.
//!
//! DESIGN section 2: records are partitioned with the Java client's `Utils.murmur2`
//! (MurmurHash2, seed `0x9747b28c`) and `Utils.toPositive(hash) % numPartitions`, so that
//! Kafka-side tools (Java producers, Kafka Streams, librdkafka's `murmur2_random`) put the
//! same key in the same partition. The proxy applies it to a partitioning key that may
//! differ from the record key (the `{identity}` of a `clients` pattern, or the client id for
//! the sessions topic), which is why it computes partitions itself.

/// Seed of Kafka's murmur2.
const SEED: u32 = 0x9747_b28c;
/// MurmurHash2 multiplier.
const M: u32 = 0x5bd1_e995;
/// MurmurHash2 shift.
const R: u32 = 24;

/// Kafka's `Utils.murmur2(byte[])`: the 32-bit MurmurHash2 of `data` with seed
/// `0x9747b28c`, as the signed `int` Java returns.
pub fn murmur2(data: &[u8]) -> i32 {
    // Java: `int h = seed ^ length` (length is an int; wrapping matches for any length).
    let mut h = SEED ^ (data.len() as u32);

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `MIN`).
pub fn to_positive(hash: i32) -> i32 {
    hash & 0x7fff_ffff
}

/// The partition the Java client's default partitioner picks for `key` among
/// `partitions` partitions: `toPositive(murmur2(key)) % partitions`.
///
/// Never panics: `partitions <= 0` gives partition 0.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    to_positive(murmur2(key)) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka `clients/.../common/utils/UtilsTest.java`, `testMurmur2`.
    const KAFKA_UTILS_TEST: &[(&str, i32)] = &[
        ("21", -973_932_308),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
        ("abc", 479_470_107),
    ];

    /// librdkafka `src/rdmurmur2.c` `unittest_murmur2` (checked there against the Java client).
    const LIBRDKAFKA_TEST: &[(&str, u32)] = &[
        ("kafka", 0xd067_cf64),
        ("giberish123456789", 0x8f55_2b0c),
        ("1234", 0x9fc9_7b14),
        ("234", 0xe7c0_09ca),
        ("34", 0x8739_30da),
        ("4", 0x5a4b_5ca1),
        ("PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
        ("reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
        ("eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
        ("AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
        ("", 0x106e_08d9),
    ];

    #[test]
    fn murmur2_matches_kafka_utils_test() {
        for (input, expected) in KAFKA_UTILS_TEST {
            assert_eq!(murmur2(input.as_bytes()), *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn murmur2_matches_librdkafka_vectors() {
        for (input, expected) in LIBRDKAFKA_TEST {
            assert_eq!(murmur2(input.as_bytes()) as u32, *expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn murmur2_handles_non_ascii_bytes() {
        // Java masks each byte with 0xff; bytes >= 0x80 must not sign-extend.
        let high = [0xffu8, 0x80, 0x81, 0xfe, 0xc3];
        let h = murmur2(&high);
        assert_eq!(h, murmur2(&high), "deterministic");
        assert_ne!(h, murmur2(&[0x7f, 0x00, 0x01, 0x7e, 0x43]));
    }

    #[test]
    fn partition_for_foobar_the_java_way() {
        // toPositive(-790332482) = -790332482 & 0x7fffffff = 1357151166
        assert_eq!(to_positive(-790_332_482), 1_357_151_166);
        assert_eq!(partition_for(b"foobar", 3), 1_357_151_166 % 3);
        assert_eq!(partition_for(b"foobar", 3), 0);
        assert_eq!(partition_for(b"foobar", 10), 6);
        assert_eq!(partition_for(b"foobar", 1), 0);
    }

    #[test]
    fn partition_for_every_vector_is_in_range() {
        for (input, _) in KAFKA_UTILS_TEST {
            for partitions in [1, 2, 3, 7, 10, 64, i32::MAX] {
                let p = partition_for(input.as_bytes(), partitions);
                assert!((0..partitions).contains(&p), "{input:?} over {partitions}: {p}");
                assert_eq!(p, to_positive(murmur2(input.as_bytes())) % partitions);
            }
        }
    }

    #[test]
    fn to_positive_is_not_abs() {
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(5), 5);
    }

    #[test]
    fn partition_for_without_partitions_is_zero() {
        assert_eq!(partition_for(b"foobar", 0), 0);
        assert_eq!(partition_for(b"foobar", -3), 0);
        assert_eq!(partition_for(b"", i32::MIN), 0);
    }
}
