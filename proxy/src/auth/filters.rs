//! Relations between MQTT topic filters that authorization needs: whether one filter
//! covers another (every topic the second matches, the first matches too) and whether two
//! filters overlap (some topic matches both). Filters are assumed valid
//! (`broker::topic::validate_topic_filter`).

/// Whether every topic that `inner` matches is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    // A filter starting with a wildcard does not match `$` topics (MQTT 5 4.7.2).
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let outer: Vec<&str> = outer.split('/').collect();
    let inner: Vec<&str> = inner.split('/').collect();
    covers_levels(&outer, &inner)
}

fn covers_levels(outer: &[&str], inner: &[&str]) -> bool {
    match (outer.split_first(), inner.split_first()) {
        // `#` matches what is left, however many levels (none included).
        (Some((&"#", _)), _) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((o, outer_rest)), Some((i, inner_rest))) => {
            let level = match *i {
                // Any depth below: only `#`, handled above, covers it.
                "#" => false,
                "+" => *o == "+",
                _ => *o == "+" || o == i,
            };
            level && covers_levels(outer_rest, inner_rest)
        }
    }
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlap(a: &str, b: &str) -> bool {
    let dollar = |f: &str| f.starts_with('$');
    let wild = |f: &str| f.starts_with(['+', '#']);
    if (dollar(a) && wild(b)) || (dollar(b) && wild(a)) {
        return false;
    }
    let a: Vec<&str> = a.split('/').collect();
    let b: Vec<&str> = b.split('/').collect();
    overlap_levels(&a, &b)
}

fn overlap_levels(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (Some((&"#", _)), _) | (_, Some((&"#", _))) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((x, a_rest)), Some((y, b_rest))) => (*x == "+" || *y == "+" || x == y) && overlap_levels(a_rest, b_rest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_covers_what_it_matches_and_nothing_wider() {
        for (outer, inner) in [
            ("#", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/+/c"),
            ("a/+", "a/b"),
            ("a/+", "a/+"),
            ("+/+", "x/y"),
            ("a/b", "a/b"),
            ("a/#", "a/#"),
            ("$SYS/#", "$SYS/x"),
        ] {
            assert!(covers(outer, inner), "{outer} covers {inner}");
        }
        for (outer, inner) in [
            ("a/+", "a/#"),
            ("a/b", "a/+"),
            ("a/+", "a/b/c"),
            ("a/b/c", "a/b"),
            ("a", "a/#"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/+/c", "a/b"),
        ] {
            assert!(!covers(outer, inner), "{outer} does not cover {inner}");
        }
    }

    #[test]
    fn filters_overlap_when_some_topic_matches_both() {
        for (a, b) in [
            ("#", "a/b"),
            ("a/#", "a"),
            ("a/+", "+/b"),
            ("a/b/#", "a/+/c"),
            ("devices/#", "devices/+/telemetry"),
            ("a/b", "a/b"),
        ] {
            assert!(overlap(a, b) && overlap(b, a), "{a} and {b} overlap");
        }
        for (a, b) in [
            ("a/b", "a/c"),
            ("a/+", "a/b/c"),
            ("a", "a/b"),
            ("#", "$SYS/x"),
            ("x/+", "y/#"),
        ] {
            assert!(!overlap(a, b) && !overlap(b, a), "{a} and {b} do not overlap");
        }
    }
}
