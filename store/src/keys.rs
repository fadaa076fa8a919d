//! Order-preserving key encoding. Integers are big-endian so byte order is numeric
//! order; strings are length-free but joined with a 0 byte, which no validated name
//! contains, so `("a", 1)` sorts before `("ab", 0)`.
//!
//! Tables own their key layouts; once a layout is used on disk it is never reused for
//! something else.

/// Encodes a u64 so that byte order equals numeric order.
pub fn u64_key(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

/// Decodes a key made by [`u64_key`] (or its first 8 bytes).
pub fn u64_of(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Joins string parts with a 0 separator: a key for `(environment, name)` pairs whose
/// prefix `(environment,)` is [`prefix`].
pub fn parts_key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part.as_bytes());
    }
    key
}

/// The prefix of every [`parts_key`] that starts with `parts` (separator included).
pub fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut key = parts_key(parts);
    key.push(0);
    key
}

/// Splits a [`parts_key`] back into its parts, so that readers of a table decode its
/// keys with the same rule that wrote them. Fails only on bytes that are not UTF-8 (a
/// damaged key). `parts_key(p)` decodes to `p` for every non-empty `p` whose parts hold
/// no 0 byte (every validated name); the empty list and `[""]` both encode to the empty
/// key, which decodes to `[""]`.
pub fn parts_of(key: &[u8]) -> Result<Vec<&str>, std::str::Utf8Error> {
    Ok(std::str::from_utf8(key)?.split('\0').collect())
}

/// `(parts, n)`: strings then a big-endian u64, e.g. `(environment, revision)`.
pub fn parts_u64_key(parts: &[&str], n: u64) -> Vec<u8> {
    let mut key = prefix(parts);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// Splits a [`parts_u64_key`] back into its parts and number, the inverse used by
/// readers of `(environment, revision)`-style keys. The number is the last 8 bytes (they
/// may hold 0 bytes themselves), preceded by the 0 separator. `None` for a key that is
/// too short, lacks that separator, or is not UTF-8; the same caveat as [`parts_of`]
/// applies to an empty `parts`.
pub fn parts_u64_of(key: &[u8]) -> Option<(Vec<&str>, u64)> {
    let (head, tail) = key.split_at(key.len().checked_sub(9)?);
    let (&separator, number) = tail.split_first()?;
    if separator != 0 {
        return None;
    }
    Some((parts_of(head).ok()?, u64_of(number)?))
}

/// The smallest key greater than every key starting with `prefix`, for scan bounds.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift64 generator: property-style loops without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// A name of 0 to 8 characters: ASCII, multi-byte, 0x01 and 0x7f, never NUL.
        fn name(&mut self) -> String {
            const CHARS: &[char] = &[
                'a',
                'b',
                'z',
                'A',
                '0',
                '-',
                '_',
                '.',
                '+',
                '\u{1}',
                '\u{7f}',
                'é',
                '€',
                '\u{10ffff}',
            ];
            (0..self.below(9))
                .map(|_| CHARS[self.below(CHARS.len())])
                .collect()
        }

        fn names(&mut self, max: usize) -> Vec<String> {
            (0..1 + self.below(max)).map(|_| self.name()).collect()
        }

        /// A number biased to edges and to bytes that are 0 or 0xFF.
        fn number(&mut self) -> u64 {
            match self.below(4) {
                0 => [0, 1, 255, 256, u64::MAX - 1, u64::MAX][self.below(6)],
                1 => self.next() & 0xff00_ff00_ff00_ff00,
                _ => self.next(),
            }
        }
    }

    const ROUNDS: usize = 2000;

    fn strs(names: &[String]) -> Vec<&str> {
        names.iter().map(String::as_str).collect()
    }

    #[test]
    fn u64_keys_sort_numerically_and_round_trip() {
        let mut keys: Vec<_> = [300u64, 2, 1 << 40, 0]
            .iter()
            .map(|n| u64_key(*n))
            .collect();
        keys.sort();
        let back: Vec<_> = keys.iter().map(|k| u64_of(k).unwrap()).collect();
        assert_eq!(back, vec![0, 2, 300, 1 << 40]);
    }

    #[test]
    fn u64_keys_round_trip_and_keep_order_for_many_numbers() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..ROUNDS {
            let (a, b) = (rng.number(), rng.number());
            assert_eq!(u64_of(&u64_key(a)), Some(a));
            assert_eq!(u64_key(a).cmp(&u64_key(b)), a.cmp(&b), "{a} vs {b}");
        }
        assert_eq!(u64_of(&[1, 2, 3]), None, "short key");
    }

    #[test]
    fn part_keys_do_not_mix_neighbouring_names() {
        assert!(parts_key(&["a", "z"]) < parts_key(&["ab", ""]));
        let p = prefix(&["prod"]);
        assert!(parts_key(&["prod", "A"]).starts_with(&p));
        assert!(!parts_key(&["production", "A"]).starts_with(&p));
    }

    #[test]
    fn part_keys_round_trip() {
        assert_eq!(
            parts_of(&parts_key(&["prod", "web"])).unwrap(),
            ["prod", "web"]
        );
        assert_eq!(parts_of(&parts_key(&["", "a", ""])).unwrap(), ["", "a", ""]);
        assert_eq!(parts_of(&parts_key(&["é€"])).unwrap(), ["é€"]);
        assert_eq!(
            parts_of(b"").unwrap(),
            [""],
            "the empty key is one empty part"
        );
        assert!(parts_of(b"a\0\xff").is_err(), "not UTF-8");
    }

    #[test]
    fn part_keys_round_trip_for_many_names() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..ROUNDS {
            let names = rng.names(4);
            let key = parts_key(&strs(&names));
            assert_eq!(parts_of(&key).unwrap(), strs(&names), "{key:?}");
        }
    }

    /// For the same number of parts, key order is the tuples' order: a name that is a
    /// prefix of another sorts first, whatever follows it.
    #[test]
    fn part_keys_sort_like_their_tuples() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..ROUNDS {
            let len = 1 + rng.below(3);
            let a: Vec<String> = (0..len).map(|_| rng.name()).collect();
            let b: Vec<String> = (0..len).map(|_| rng.name()).collect();
            let (ka, kb) = (parts_key(&strs(&a)), parts_key(&strs(&b)));
            assert_eq!(ka.cmp(&kb), a.cmp(&b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn revision_keys_sort_within_an_environment() {
        let a = parts_u64_key(&["default"], 2);
        let b = parts_u64_key(&["default"], 10);
        assert!(a < b);
        assert_eq!(u64_of(&b[prefix(&["default"]).len()..]), Some(10));
        assert!(b < prefix_end(&prefix(&["default"])));
    }

    #[test]
    fn part_number_keys_round_trip() {
        let key = parts_u64_key(&["prod", "web"], 7);
        assert_eq!(parts_u64_of(&key), Some((vec!["prod", "web"], 7)));
        let zeros = parts_u64_key(&["a"], 0);
        assert_eq!(
            parts_u64_of(&zeros),
            Some((vec!["a"], 0)),
            "0 bytes in the number"
        );
        assert_eq!(parts_u64_of(&parts_u64_key(&[], 5)), Some((vec![""], 5)));
        assert_eq!(parts_u64_of(&u64_key(5)), None, "too short");
        assert_eq!(
            parts_u64_of(b"a\x01\0\0\0\0\0\0\0\x05"),
            None,
            "no separator"
        );
        assert_eq!(parts_u64_of(b"\xff\0\0\0\0\0\0\0\0\x05"), None, "not UTF-8");
    }

    #[test]
    fn part_number_keys_round_trip_and_sort_for_many_names() {
        let mut rng = Rng(0x0bad_cafe_f00d_d00d);
        for _ in 0..ROUNDS {
            let (a, b) = (rng.names(3), rng.names(3));
            let (na, nb) = (rng.number(), rng.number());
            let ka = parts_u64_key(&strs(&a), na);
            assert_eq!(parts_u64_of(&ka), Some((strs(&a), na)), "{ka:?}");
            if a.len() == b.len() {
                let kb = parts_u64_key(&strs(&b), nb);
                assert_eq!(
                    ka.cmp(&kb),
                    (&a, na).cmp(&(&b, nb)),
                    "{a:?},{na} vs {b:?},{nb}"
                );
            }
        }
    }

    /// A prefix range holds exactly the keys whose leading parts are the prefix's:
    /// never a neighbour such as `prod` inside `production`'s range, or back.
    #[test]
    fn prefix_ranges_hold_exactly_their_names_keys() {
        let mut rng = Rng(0x5eed_0000_0000_0001);
        for _ in 0..ROUNDS {
            let e1 = rng.name();
            let e2 = match rng.below(4) {
                0 => e1.clone(),
                1 => format!("{e1}{}", rng.name()),
                2 => e1
                    .chars()
                    .take(e1.chars().count().saturating_sub(1))
                    .collect(),
                _ => rng.name(),
            };
            let start = prefix(&[&e1]);
            let end = prefix_end(&start);
            let key = parts_u64_key(&[&e2], rng.number());
            let inside = start <= key && key < end;
            assert_eq!(inside, e1 == e2, "{e2:?}'s key in {e1:?}'s range");
            let key = parts_key(&[&e2, &rng.name()]);
            assert_eq!(start <= key && key < end, e1 == e2, "{e2:?} in {e1:?}");
        }
    }

    #[test]
    fn prefix_end_is_above_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"a\0"), b"a\x01".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0xff; 3]);
    }
}
