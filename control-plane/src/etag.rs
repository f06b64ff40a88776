//! The ETag of a served table, and `If-None-Match` evaluation (RFC 9110, section 13.1.2).
//!
//! The ETag is strong: `"<version>-<FNV-1a 64 of the JSON body, 16 hex digits>"`. The version
//! makes it readable in logs; the hash makes it change even when an operator edits a table and
//! forgets to bump `version`.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits: tiny, stable across releases and platforms, and enough to tell tables apart
/// (this is a cache validator, not a defence against someone forging collisions).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The strong ETag of a table body, quotes included: `"7-0123456789abcdef"`.
pub fn etag(version: u64, body: &[u8]) -> String {
    format!("\"{version}-{:016x}\"", fnv1a64(body))
}

/// Whether a request's `If-None-Match` field values match `current` (a quoted ETag), i.e.
/// whether a GET or HEAD should be answered `304 Not Modified`.
///
/// Per RFC 9110: `*` matches any current representation; otherwise the values are lists of
/// entity tags compared with the *weak* comparison (`W/"x"` matches `"x"`). Several field lines
/// are one list. A line that does not parse is ignored rather than guessed at: answering `200`
/// is always safe, a wrong `304` is not.
pub fn if_none_match<'a>(values: impl IntoIterator<Item = &'a [u8]>, current: &str) -> bool {
    let current = opaque(current.as_bytes());
    values.into_iter().any(|line| {
        if line.trim_ascii() == b"*" {
            return true;
        }
        parse_list(line).is_some_and(|tags| tags.contains(&current))
    })
}

/// Drops a leading `W/`: the weak comparison looks only at the opaque tags.
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// Parses `#entity-tag` into the opaque tags (quotes included), or `None` if malformed.
/// Empty list elements (`, ,`) are allowed, as RFC 9110 section 5.6.1 asks of recipients.
fn parse_list(line: &[u8]) -> Option<Vec<&[u8]>> {
    let is_ows = |b: u8| b == b' ' || b == b'\t';
    let mut tags = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && (is_ows(line[i]) || line[i] == b',') {
            i += 1;
        }
        if i == line.len() {
            return Some(tags);
        }
        if line[i..].starts_with(b"W/") {
            i += 2;
        }
        if line.get(i) != Some(&b'"') {
            return None;
        }
        let start = i;
        i += 1;
        // etagc = %x21 / %x23-7E / obs-text: any visible byte but DQUOTE.
        while i < line.len() && line[i] != b'"' {
            if line[i] < 0x21 || line[i] == 0x7f {
                return None;
            }
            i += 1;
        }
        if i == line.len() {
            return None;
        }
        i += 1;
        tags.push(&line[start..i]);
        while i < line.len() && is_ows(line[i]) {
            i += 1;
        }
        if i < line.len() && line[i] != b',' {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUR: &str = "\"7-00000000000000ff\"";

    fn matches(lines: &[&str]) -> bool {
        if_none_match(lines.iter().map(|l| l.as_bytes()), CUR)
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(
            fnv1a64(b""),
            0xcbf29ce484222325,
            "empty input is the offset"
        );
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c, "\"a\"");
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8, "\"foobar\"");
    }

    #[test]
    fn etag_is_quoted_version_and_16_hex_digits() {
        let t = etag(7, b"a");
        assert_eq!(t, "\"7-af63dc4c8601ec8c\"", "format of the ETag");
        assert_ne!(
            etag(7, b"a"),
            etag(7, b"b"),
            "same version, other body: other ETag"
        );
        assert_eq!(
            etag(0, b"").len(),
            2 + 2 + 16,
            "16 hex digits even when small"
        );
    }

    #[test]
    fn exact_and_weak_tags_match() {
        assert!(matches(&[CUR]), "the same strong tag matches");
        assert!(
            matches(&["W/\"7-00000000000000ff\""]),
            "weak comparison: W/ on the request side still matches"
        );
        assert!(
            matches(&[" \"7-00000000000000ff\"\t"]),
            "surrounding whitespace is fine"
        );
    }

    #[test]
    fn other_tags_do_not_match() {
        assert!(!matches(&[]), "no header: no match");
        assert!(!matches(&["\"6-00000000000000ff\""]), "older version");
        assert!(!matches(&["\"7-00000000000000fe\""]), "other hash");
        assert!(!matches(&["7-00000000000000ff"]), "unquoted is malformed");
        assert!(
            !matches(&["w/\"7-00000000000000ff\""]),
            "the W/ prefix is case-sensitive"
        );
        assert!(!matches(&[""]), "empty value");
    }

    #[test]
    fn star_matches_any_current_table() {
        assert!(matches(&["*"]), "* alone");
        assert!(matches(&[" * "]), "* with whitespace");
        assert!(!matches(&["\"x\", *"]), "* inside a list is malformed");
    }

    #[test]
    fn lists_and_several_lines_are_one_list() {
        assert!(
            matches(&["\"a\", \"7-00000000000000ff\""]),
            "match in the second element"
        );
        assert!(
            matches(&["\"a\",W/\"7-00000000000000ff\" , \"b\""]),
            "weak, no space before it"
        );
        assert!(
            matches(&["\"a\"", "\"7-00000000000000ff\""]),
            "match on the second field line"
        );
        assert!(
            matches(&[", ,\"7-00000000000000ff\",,"]),
            "empty list elements are allowed"
        );
        assert!(!matches(&["\"a\", \"b\""]), "no element matches");
    }

    #[test]
    fn malformed_lines_are_ignored_not_guessed() {
        assert!(
            !matches(&["\"7-00000000000000ff\" junk"]),
            "junk after a tag spoils the line"
        );
        assert!(
            !matches(&["\"7-00000000000000ff"]),
            "an unterminated tag spoils the line"
        );
        assert!(
            !matches(&["\"a b\", \"7-00000000000000ff\""]),
            "a space inside a tag is not etagc"
        );
        assert!(
            matches(&["garbage", CUR]),
            "a bad line does not spoil a good one"
        );
        assert!(
            if_none_match([&b"\"a,b\""[..]], "\"a,b\""),
            "a comma inside a tag is part of it"
        );
    }
}
