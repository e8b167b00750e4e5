//! Go's value syntax, as etcd's flags parse it (Go's `flag` and `strconv` packages and
//! etcd's `pkg/flags` and `pkg/types`), with Go's error texts: integers with base
//! prefixes and underscores, `strconv.ParseBool`'s words, `time.ParseDuration`, and
//! etcd's URL lists.

use std::time::Duration;

/// The error Go's `flag` package reports for a value it cannot parse as a number, bool
/// or duration ("parse error"), or a number that does not fit ("value out of range").
pub const PARSE_ERROR: &str = "parse error";
pub const RANGE_ERROR: &str = "value out of range";

/// `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(PARSE_ERROR.into()),
    }
}

/// Go's `underscoreOK`: underscores only between digits (or after a base prefix), and
/// only with a base prefix or in a base-0 decimal.
fn underscores_ok(text: &str) -> bool {
    // 'x' stands for "a digit or a base prefix last", '_' for "an underscore last",
    // '!' for "something else last".
    let mut saw = '^';
    let mut bytes = text.as_bytes();
    if let Some((&first, rest)) = bytes.split_first() {
        if first == b'+' || first == b'-' {
            bytes = rest;
        }
    }
    let mut hex = false;
    if bytes.len() >= 2 && bytes[0] == b'0' {
        match bytes[1].to_ascii_lowercase() {
            b'b' | b'o' | b'x' => {
                hex = bytes[1].eq_ignore_ascii_case(&b'x');
                bytes = &bytes[2..];
                saw = '0';
            }
            _ => {}
        }
    }
    for &c in bytes {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = '0';
            continue;
        }
        if c == b'_' {
            if saw != '0' {
                return false;
            }
            saw = '_';
            continue;
        }
        if saw == '_' {
            return false;
        }
        saw = '!';
    }
    saw != '_'
}

/// `strconv.ParseUint(text, 0, bits)`.
pub fn parse_uint(text: &str, bits: u32) -> Result<u64, String> {
    if text.is_empty() {
        return Err(PARSE_ERROR.into());
    }
    let (base, digits, prefixed) = match text.as_bytes() {
        [b'0', p, rest @ ..] if p.eq_ignore_ascii_case(&b'x') => (16, rest, true),
        [b'0', p, rest @ ..] if p.eq_ignore_ascii_case(&b'o') => (8, rest, true),
        [b'0', p, rest @ ..] if p.eq_ignore_ascii_case(&b'b') => (2, rest, true),
        [b'0', rest @ ..] if !rest.is_empty() => (8, rest, true),
        all => (10, all, false),
    };
    let _ = prefixed;
    if digits.is_empty() {
        return Err(PARSE_ERROR.into());
    }
    let mut value: u64 = 0;
    let mut overflow = false;
    let mut underscores = false;
    for &c in digits {
        if c == b'_' {
            underscores = true;
            continue;
        }
        let digit = match c {
            b'0'..=b'9' => u64::from(c - b'0'),
            b'a'..=b'z' => u64::from(c - b'a') + 10,
            b'A'..=b'Z' => u64::from(c - b'A') + 10,
            _ => return Err(PARSE_ERROR.into()),
        };
        if digit >= base {
            return Err(PARSE_ERROR.into());
        }
        match value.checked_mul(base).and_then(|v| v.checked_add(digit)) {
            Some(v) => value = v,
            None => overflow = true,
        }
    }
    if underscores && !underscores_ok(text) {
        return Err(PARSE_ERROR.into());
    }
    let max = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    if overflow || value > max {
        return Err(RANGE_ERROR.into());
    }
    Ok(value)
}

/// `strconv.ParseInt(text, 0, bits)`.
pub fn parse_int(text: &str, bits: u32) -> Result<i64, String> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => (false, text),
    };
    let magnitude = parse_uint(unsigned, 64).map_err(|e| {
        if e == RANGE_ERROR {
            RANGE_ERROR.to_string()
        } else {
            e
        }
    })?;
    if unsigned.contains('_') && !underscores_ok(text) {
        return Err(PARSE_ERROR.into());
    }
    let limit = 1u64 << (bits - 1);
    if negative {
        if magnitude > limit {
            return Err(RANGE_ERROR.into());
        }
        Ok((magnitude as i128).wrapping_neg() as i64)
    } else {
        if magnitude >= limit {
            return Err(RANGE_ERROR.into());
        }
        Ok(magnitude as i64)
    }
}

/// A Go `time.Duration`: nanoseconds, signed.
pub type GoDuration = i64;

/// `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` with units ns, us (µs, μs),
/// ms, s, m, h; "0" alone needs no unit.
pub fn parse_duration(text: &str) -> Result<GoDuration, String> {
    let original = text;
    let invalid = || format!("time: invalid duration \"{original}\"");
    let mut s = text;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        // The integer part.
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let mut whole: u64 = 0;
        for c in s[..int_len].bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .filter(|v| *v <= 1 << 63)
                .ok_or_else(invalid)?;
        }
        let had_int = int_len > 0;
        s = &s[int_len..];
        // The fraction.
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut had_fraction = false;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            let frac_len = s.bytes().take_while(u8::is_ascii_digit).count();
            let mut overflowed = false;
            for c in s[..frac_len].bytes() {
                if overflowed {
                    continue;
                }
                match fraction
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(c - b'0')))
                    .filter(|v| *v <= 1 << 63)
                {
                    Some(v) => {
                        fraction = v;
                        scale *= 10.0;
                    }
                    None => overflowed = true,
                }
            }
            had_fraction = frac_len > 0;
            s = &s[frac_len..];
        }
        if !had_int && !had_fraction {
            return Err(invalid());
        }
        // The unit.
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration \"{original}\""));
        }
        let unit_text = &s[..unit_len];
        let unit: u64 = match unit_text {
            "ns" => 1,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => {
                return Err(format!(
                    "time: unknown unit \"{unit_text}\" in duration \"{original}\""
                ))
            }
        };
        s = &s[unit_len..];
        let mut value = whole.checked_mul(unit).ok_or_else(invalid)?;
        if fraction > 0 {
            value = value
                .checked_add((fraction as f64 * (unit as f64 / scale)) as u64)
                .ok_or_else(invalid)?;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
        if total > 1 << 63 {
            return Err(invalid());
        }
    }
    if negative {
        Ok((total as i128).wrapping_neg() as i64)
    } else if total > i64::MAX as u64 {
        Err(invalid())
    } else {
        Ok(total as i64)
    }
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "100ms", "0s".
pub fn format_duration(nanos: GoDuration) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let negative = nanos < 0;
    let u = nanos.unsigned_abs();
    let sign = if negative { "-" } else { "" };
    let fraction = |value: u64, digits: u32| -> String {
        let divisor = 10u64.pow(digits);
        let whole = value / divisor;
        let rest = value % divisor;
        if rest == 0 {
            whole.to_string()
        } else {
            let text = format!("{rest:0width$}", width = digits as usize);
            format!("{whole}.{}", text.trim_end_matches('0'))
        }
    };
    if u < 1_000_000_000 {
        let (digits, unit) = if u < 1_000 {
            (0, "ns")
        } else if u < 1_000_000 {
            (3, "µs")
        } else {
            (6, "ms")
        };
        return format!("{sign}{}{unit}", fraction(u, digits));
    }
    let seconds_part = u % 60_000_000_000;
    let minutes = u / 60_000_000_000;
    let mut text = format!("{}s", fraction(seconds_part, 9));
    if minutes > 0 {
        let hours = minutes / 60;
        text = format!("{}m{text}", minutes % 60);
        if hours > 0 {
            text = format!("{hours}h{text}");
        }
    }
    format!("{sign}{text}")
}

/// A Go duration as a `std` one; negative durations count as zero.
pub fn to_std(nanos: GoDuration) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// `net.SplitHostPort`'s check that `host_port` is "host:port" or "[v6]:port".
fn split_host_port(host_port: &str) -> Result<(String, String), ()> {
    if let Some(rest) = host_port.strip_prefix('[') {
        let end = rest.find(']').ok_or(())?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = after.strip_prefix(':').ok_or(())?;
        if port.contains(':') || host.contains('[') {
            return Err(());
        }
        return Ok((host.to_string(), port.to_string()));
    }
    let colon = host_port.rfind(':').ok_or(())?;
    let host = &host_port[..colon];
    if host.contains(':') || host.contains('[') || host.contains(']') {
        return Err(());
    }
    Ok((host.to_string(), host_port[colon + 1..].to_string()))
}

/// The host of a "host:port" (brackets of an IPv6 address removed).
pub fn host_of(host_port: &str) -> Option<String> {
    split_host_port(host_port).ok().map(|(host, _)| host)
}

/// One URL as etcd's `types.NewURLs` accepts it: scheme http, https, unix or unixs,
/// "host:port", no path. Returns the URL as Go's `url.URL.String()` prints it.
pub fn parse_url(input: &str) -> Result<String, String> {
    let text = input.trim();
    let (scheme, rest) = match text.find(':') {
        Some(i)
            if i > 0
                && text.as_bytes()[0].is_ascii_alphabetic()
                && text[..i]
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')) =>
        {
            (text[..i].to_ascii_lowercase(), &text[i + 1..])
        }
        Some(0) => return Err(format!("parse \"{text}\": missing protocol scheme")),
        _ => (String::new(), text),
    };
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return Err(format!(
            "URL scheme must be http, https, unix, or unixs: {text}"
        ));
    }
    let (authority, path) = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            let path_end = after[end..]
                .find(['?', '#'])
                .map_or(after.len(), |i| end + i);
            (&after[..end], &after[end..path_end])
        }
        None => ("", rest),
    };
    let host = authority.rsplit('@').next().unwrap_or("");
    if split_host_port(host).is_err() {
        return Err(format!(
            "URL address does not have the form \"host:port\": {text}"
        ));
    }
    if !path.is_empty() {
        return Err(format!("URL must not contain a path: {text}"));
    }
    Ok(format!("{scheme}://{authority}"))
}

/// `types.NewURLs(strings.Split(value, ","))`: every URL checked, sorted.
pub fn parse_url_list(value: &str) -> Result<Vec<String>, String> {
    let mut urls = value
        .split(',')
        .map(parse_url)
        .collect::<Result<Vec<_>, _>>()?;
    urls.sort();
    urls.dedup();
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_take_go_syntax() {
        assert_eq!(parse_uint("100", 64), Ok(100));
        assert_eq!(parse_uint("0x10", 64), Ok(16));
        assert_eq!(parse_uint("010", 64), Ok(8));
        assert_eq!(parse_uint("0b11", 64), Ok(3));
        assert_eq!(parse_uint("0o17", 64), Ok(15));
        assert_eq!(parse_uint("1_000", 64), Ok(1000));
        assert_eq!(parse_uint("1__0", 64), Err(PARSE_ERROR.into()));
        assert_eq!(parse_uint("_1", 64), Err(PARSE_ERROR.into()));
        assert_eq!(parse_uint("1e3", 64), Err(PARSE_ERROR.into()));
        assert_eq!(parse_uint("-1", 64), Err(PARSE_ERROR.into()));
        assert_eq!(parse_uint("", 64), Err(PARSE_ERROR.into()));
        assert_eq!(parse_uint("4294967296", 32), Err(RANGE_ERROR.into()));
        assert_eq!(parse_uint("4294967295", 32), Ok(4_294_967_295));
        assert_eq!(
            parse_uint("99999999999999999999", 64),
            Err(RANGE_ERROR.into())
        );
        assert_eq!(parse_int("-5", 64), Ok(-5));
        assert_eq!(parse_int("+5", 64), Ok(5));
        assert_eq!(parse_int("-9223372036854775808", 64), Ok(i64::MIN));
        assert_eq!(
            parse_int("9223372036854775808", 64),
            Err(RANGE_ERROR.into())
        );
    }

    #[test]
    fn bools_take_strconv_words() {
        for word in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(word), Ok(true));
        }
        for word in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(word), Ok(false));
        }
        assert!(parse_bool("yes").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn durations_take_go_syntax() {
        assert_eq!(parse_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_duration("2h"), Ok(7_200_000_000_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000_000_000));
        assert_eq!(parse_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration(".5ms"), Ok(500_000));
        assert_eq!(parse_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_duration("10us"), Ok(10_000));
        assert_eq!(parse_duration("10µs"), Ok(10_000));
        assert_eq!(parse_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration(".s").is_err());
        assert_eq!(format_duration(100_000_000), "100ms");
        assert_eq!(format_duration(5_400_000_000_000), "1h30m0s");
        assert_eq!(format_duration(1_500_000_000), "1.5s");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(600_000_000_000), "10m0s");
    }

    #[test]
    fn urls_are_checked_like_etcd() {
        assert_eq!(
            parse_url("http://127.0.0.1:2379").as_deref(),
            Ok("http://127.0.0.1:2379")
        );
        assert_eq!(
            parse_url(" HTTP://[::1]:2379 ").as_deref(),
            Ok("http://[::1]:2379")
        );
        assert_eq!(
            parse_url("foo").unwrap_err(),
            "URL scheme must be http, https, unix, or unixs: foo"
        );
        assert_eq!(
            parse_url("http://localhost").unwrap_err(),
            "URL address does not have the form \"host:port\": http://localhost"
        );
        assert_eq!(
            parse_url("http://localhost:2379/").unwrap_err(),
            "URL must not contain a path: http://localhost:2379/"
        );
        assert_eq!(
            parse_url_list("http://b:1,http://a:1").unwrap(),
            vec!["http://a:1".to_string(), "http://b:1".to_string()]
        );
    }
}
