//! Redis glob patterns (KEYS, SCAN MATCH): `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\x`,
//! matched on bytes as Redis's `stringmatchlen` does.

/// The literal bytes every match starts with: the range a KEYS or SCAN has to read.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' | b'?' | b'[' => break,
            b'\\' if i + 1 < pattern.len() => {
                prefix.push(pattern[i + 1]);
                i += 2;
            }
            // A trailing backslash matches itself.
            byte => {
                prefix.push(byte);
                i += 1;
            }
        }
    }
    prefix
}

/// True if `text` matches `pattern`. Iterative with one backtrack point per `*`, so the
/// cost is bounded by `pattern.len() * text.len()` (no exponential blow-up).
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: (pattern index after it, text index it took to).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    let (hit, next) = class(pattern, p, text[t]);
                    if hit {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                byte => {
                    if byte == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last `*` take one more byte, or fail.
        match star {
            Some((after_star, taken)) => {
                p = after_star;
                t = taken + 1;
                star = Some((after_star, taken + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The class starting at `pattern[open] == b'['`: whether `byte` is in it and the index
/// after its `]`. An unclosed class runs to the end of the pattern, as in Redis.
fn class(pattern: &[u8], open: usize, byte: u8) -> (bool, usize) {
    let mut i = open + 1;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == byte;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (low, high) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            hit |= (low..=high).contains(&byte);
            i += 3;
        } else {
            hit |= pattern[i] == byte;
            i += 1;
        }
    }
    // Past the `]` (or the end of an unclosed class).
    let next = (i + 1).min(pattern.len());
    (hit != negated, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pattern of up to 4 bytes from the special characters, against every text of up
    /// to 3 bytes: no panic on any client pattern, and every match starts with the literal
    /// prefix (KEYS and SCAN read only that range, so a match outside it would be lost).
    #[test]
    fn every_short_pattern_is_safe_and_matches_only_under_its_prefix() {
        const PATTERN_BYTES: &[u8] = b"a*?[]^-\\";
        const TEXT_BYTES: &[u8] = b"a-]";
        let mut patterns: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = patterns
                .iter()
                .filter(|p| p.len() == patterns.last().map_or(0, |l| l.len()))
                .flat_map(|p| {
                    PATTERN_BYTES.iter().map(move |&b| {
                        let mut q = p.clone();
                        q.push(b);
                        q
                    })
                })
                .collect();
            patterns.extend(longer);
        }
        let mut texts: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..3 {
            let longer: Vec<Vec<u8>> = texts
                .iter()
                .filter(|t| t.len() == texts.last().map_or(0, |l| l.len()))
                .flat_map(|t| {
                    TEXT_BYTES.iter().map(move |&b| {
                        let mut u = t.clone();
                        u.push(b);
                        u
                    })
                })
                .collect();
            texts.extend(longer);
        }
        let mut matched = 0;
        for pattern in &patterns {
            let prefix = literal_prefix(pattern);
            for text in &texts {
                if matches(pattern, text) {
                    matched += 1;
                    assert!(
                        text.starts_with(&prefix),
                        "{pattern:?} matched {text:?} outside its prefix {prefix:?}"
                    );
                }
            }
        }
        assert!(matched > 0);
    }

    fn m(pattern: &str, text: &str) -> bool {
        matches(pattern.as_bytes(), text.as_bytes())
    }

    #[test]
    fn globs_match_as_redis_does() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("user:*", "user:1"));
        assert!(m("user:*", "user:"));
        assert!(!m("user:*", "use"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exactly"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
    }

    #[test]
    fn the_literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"exact"), b"exact");
        assert_eq!(literal_prefix(b"*"), b"");
        assert_eq!(literal_prefix(b"a\\*b*"), b"a*b");
        assert_eq!(literal_prefix(b"ab[cd]"), b"ab");
        assert_eq!(literal_prefix(b"a?"), b"a");
    }
}
