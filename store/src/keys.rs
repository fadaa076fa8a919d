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

/// `(parts, n)`: strings then a big-endian u64, e.g. `(environment, revision)`.
pub fn parts_u64_key(parts: &[&str], n: u64) -> Vec<u8> {
    let mut key = prefix(parts);
    key.extend_from_slice(&n.to_be_bytes());
    key
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
    fn part_keys_do_not_mix_neighbouring_names() {
        assert!(parts_key(&["a", "z"]) < parts_key(&["ab", ""]));
        let p = prefix(&["prod"]);
        assert!(parts_key(&["prod", "A"]).starts_with(&p));
        assert!(!parts_key(&["production", "A"]).starts_with(&p));
    }

    #[test]
    fn revision_keys_sort_within_an_environment() {
        let a = parts_u64_key(&["default"], 2);
        let b = parts_u64_key(&["default"], 10);
        assert!(a < b);
        assert_eq!(u64_of(&b[prefix(&["default"]).len()..]), Some(10));
        assert!(b < prefix_end(&prefix(&["default"])));
    }
}
