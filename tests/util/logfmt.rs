//! A strict logfmt parser for checking promshard's text logs: a line is
//! `key=value` pairs separated by one space; a key is one or more
//! characters other than space, `=` and `"`; a value is bare (one or more
//! characters other than space, `=`, `"`, `\` and control characters) or
//! quoted, with `\"`, `\\`, `\n`, `\r`, `\t` and `\uXXXX` the only escapes.
//! Anything else is an error that says where, so a test names the line
//! and the column a log shipper would trip on.

/// The pairs of `line`, in order, values unescaped.
pub fn parse(line: &str) -> Result<Vec<(String, String)>, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    let mut pairs = Vec::new();
    let at = |i: usize, what: &str| format!("column {}: {what} in {line:?}", i + 1);
    let fail = |i: usize, what: &str| Err(at(i, what));
    while i < chars.len() {
        if !pairs.is_empty() {
            if chars[i] != ' ' {
                return fail(i, "expected one space between pairs");
            }
            i += 1;
        }
        let start = i;
        while i < chars.len() && !matches!(chars[i], ' ' | '=' | '"') && !chars[i].is_control() {
            i += 1;
        }
        if i == start {
            return fail(i, "expected a key");
        }
        let key: String = chars[start..i].iter().collect();
        if chars.get(i) != Some(&'=') {
            return fail(i, &format!("expected = after key {key:?}"));
        }
        i += 1;
        let (value, next) = if chars.get(i) == Some(&'"') {
            quoted(&chars, i + 1).map_err(|(i, what)| at(i, &what))?
        } else {
            let start = i;
            while i < chars.len()
                && !matches!(chars[i], ' ' | '=' | '"' | '\\')
                && !chars[i].is_control()
            {
                i += 1;
            }
            if i == start || (i < chars.len() && chars[i] != ' ') {
                return fail(i, &format!("bad bare value of {key:?}"));
            }
            (chars[start..i].iter().collect(), i)
        };
        i = next;
        pairs.push((key, value));
    }
    if pairs.is_empty() {
        return fail(0, "empty line");
    }
    Ok(pairs)
}

/// A quoted value from just after its opening quote: the value and the
/// index after its closing quote.
fn quoted(chars: &[char], mut i: usize) -> Result<(String, usize), (usize, String)> {
    let mut out = String::new();
    loop {
        match chars.get(i) {
            None => return Err((i, "unterminated quoted value".into())),
            Some('"') => return Ok((out, i + 1)),
            Some('\\') => {
                let c = match chars.get(i + 1) {
                    Some('"') => '"',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('t') => '\t',
                    Some('u') => {
                        let hex: String = chars.get(i + 2..i + 6).unwrap_or(&[]).iter().collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or((i, format!("bad \\u escape {hex:?}")))?;
                        i += 4;
                        c
                    }
                    other => return Err((i, format!("unknown escape \\{other:?}"))),
                };
                out.push(c);
                i += 2;
            }
            Some(c) if c.is_control() => return Err((i, "raw control character".into())),
            Some(c) => {
                out.push(*c);
                i += 1;
            }
        }
    }
}
