//! JSON as etcd's gateway reads and writes it.
//!
//! etcd 3.4's gateway is grpc-gateway v1 with golang/protobuf's `jsonpb`: a request body is
//! read with Go's `encoding/json` `Decoder` (one JSON value after another, any bytes after
//! the value a unary call needs are ignored), then `jsonpb` maps the value onto the proto
//! message. Clients see its error messages (`invalid character '}' looking for beginning
//! of object key string`, `unexpected EOF`, `illegal base64 data at input byte 0`,
//! `unknown value "BAD" for enum etcdserverpb.RangeRequest_SortOrder`), so this module
//! reads JSON with the same rules and the same messages:
//!
//! - [`Scanner`] is Go's JSON syntax state machine (same states, same messages);
//! - [`Decoder`] cuts a byte stream into successive values as Go's `Decoder` does;
//! - [`parse`] turns one checked value into a [`Json`] tree (numbers keep their text);
//! - [`to_proto_json`] applies jsonpb's rules for a message, guided by the field table
//!   generated from the protos (`rivet_api::json_schema`), and yields canonical proto3
//!   JSON that the generated pbjson deserializers then turn into the message.
//!
//! Writing is pbjson's (original field names, 64-bit integers as strings, defaults left
//! out); [`go_escape`] then escapes the characters Go's encoder escapes and serde's does
//! not (`<`, `>`, `&`, U+2028, U+2029, and `\b`/`\f` spelled as `\u0008`/`\u000c`).

use rivet_api::json_schema::{self, Field, Kind, Message};
use serde_json::Value;

/// Go's `encoding/json` nesting limit (`maxNestingDepth`); it also bounds this module's
/// stacks.
const NESTING_DEPTH_MAX: usize = 10_000;

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

/// A byte as Go's `quoteChar` shows it in a syntax error: `'x'`, `'\''`, `'"'`, `'\n'`,
/// `'\x01'`, `'\u0080'`, `'é'` (a byte above 0x7f is read as the code point of that value).
fn quote_char(c: u8) -> String {
    match c {
        b'\'' => "'\\''".to_string(),
        b'"' => "'\"'".to_string(),
        _ => {
            let mut quoted = String::new();
            go_quote_rune(&mut quoted, char::from(c), b'"');
            format!("'{quoted}'")
        }
    }
}

/// Whether Go's `unicode.IsPrint` holds for a code point below U+0100 (the only ones a
/// byte can name): Latin-1 letters, marks, numbers, punctuation and symbols, but not the
/// C1 controls, NO-BREAK SPACE or SOFT HYPHEN.
fn go_is_print_latin1(c: char) -> bool {
    let c = c as u32;
    (0x20..0x7f).contains(&c) || (0xa1..=0xff).contains(&c) && c != 0xad
}

/// Appends `c` as Go's `strconv.Quote` writes it inside the quotes.
fn go_quote_rune(out: &mut String, c: char, quote: u8) {
    if c == char::from(quote) || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    let printable = if (c as u32) < 0x100 {
        go_is_print_latin1(c)
    } else {
        !c.is_control() && !c.is_whitespace() || c == ' '
    };
    if printable {
        out.push(c);
        return;
    }
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => {
            out.push_str(&format!("\\x{:02x}", c as u32));
        }
        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// Go's `strconv.Quote` of bytes (invalid UTF-8 bytes as `\x..`), as `%q` prints them.
fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    let mut rest = bytes;
    while !rest.is_empty() {
        match decode_utf8_char(rest) {
            Some((c, size)) => {
                go_quote_rune(&mut out, c, b'"');
                rest = &rest[size..];
            }
            None => {
                out.push_str(&format!("\\x{:02x}", rest[0]));
                rest = &rest[1..];
            }
        }
    }
    out.push('"');
    out
}

/// The first UTF-8 encoded character of `bytes` and its length, if it is valid.
fn decode_utf8_char(bytes: &[u8]) -> Option<(char, usize)> {
    let width = match bytes.first()? {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    let text = std::str::from_utf8(bytes.get(..width)?).ok()?;
    text.chars().next().map(|c| (c, width))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    BeginValueOrEmpty,
    BeginValue,
    BeginStringOrEmpty,
    BeginString,
    EndValue,
    EndTop,
    InString,
    InStringEsc,
    /// Inside `\u`: how many hex digits have been read.
    InStringEscU(u8),
    Neg,
    One,
    Zero,
    Dot,
    Dot0,
    E,
    ESign,
    E0,
    /// Inside `true`, `false` or `null`: the literal and how many bytes were read.
    Literal(&'static str, usize),
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    ObjectKey,
    ObjectValue,
    ArrayValue,
}

/// What one byte did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// The byte closed an object or array (the top-level value may be complete).
    EndContainer,
    /// The top-level value ended before this byte (which is not part of it).
    End,
    Error,
}

/// Go's JSON syntax state machine: one byte at a time, same states and error messages.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    stack: Vec<Container>,
    /// The syntax error, once there is one.
    pub error: Option<String>,
}

impl Default for Scanner {
    fn default() -> Scanner {
        Scanner {
            state: State::BeginValue,
            stack: Vec::new(),
            error: None,
        }
    }
}

impl Scanner {
    pub fn depth(&self) -> usize {
        self.stack.len()
    }

    fn fail(&mut self, c: u8, context: &str) -> Step {
        self.state = State::Error;
        self.error = Some(format!("invalid character {} {context}", quote_char(c)));
        Step::Error
    }

    fn push(&mut self, c: u8, container: Container) -> Step {
        if self.stack.len() >= NESTING_DEPTH_MAX {
            return self.fail(c, "exceeded max depth");
        }
        self.stack.push(container);
        Step::Continue
    }

    fn pop(&mut self) {
        self.stack.pop();
        self.state = if self.stack.is_empty() {
            State::EndTop
        } else {
            State::EndValue
        };
    }

    fn begin_value(&mut self, c: u8) -> Step {
        match c {
            c if is_space(c) => Step::Continue,
            b'{' => {
                self.state = State::BeginStringOrEmpty;
                self.push(c, Container::ObjectKey)
            }
            b'[' => {
                self.state = State::BeginValueOrEmpty;
                self.push(c, Container::ArrayValue)
            }
            b'"' => {
                self.state = State::InString;
                Step::Continue
            }
            b'-' => {
                self.state = State::Neg;
                Step::Continue
            }
            b'0' => {
                self.state = State::Zero;
                Step::Continue
            }
            b'1'..=b'9' => {
                self.state = State::One;
                Step::Continue
            }
            b't' => {
                self.state = State::Literal("true", 1);
                Step::Continue
            }
            b'f' => {
                self.state = State::Literal("false", 1);
                Step::Continue
            }
            b'n' => {
                self.state = State::Literal("null", 1);
                Step::Continue
            }
            _ => self.fail(c, "looking for beginning of value"),
        }
    }

    fn end_value(&mut self, c: u8) -> Step {
        let Some(&top) = self.stack.last() else {
            self.state = State::EndTop;
            return self.end_top(c);
        };
        if is_space(c) {
            self.state = State::EndValue;
            return Step::Continue;
        }
        match (top, c) {
            (Container::ObjectKey, b':') => {
                *self.stack.last_mut().expect("not empty") = Container::ObjectValue;
                self.state = State::BeginValue;
                Step::Continue
            }
            (Container::ObjectKey, _) => self.fail(c, "after object key"),
            (Container::ObjectValue, b',') => {
                *self.stack.last_mut().expect("not empty") = Container::ObjectKey;
                self.state = State::BeginString;
                Step::Continue
            }
            (Container::ObjectValue | Container::ArrayValue, b'}' | b']')
                if (top == Container::ObjectValue) == (c == b'}') =>
            {
                self.pop();
                Step::EndContainer
            }
            (Container::ObjectValue, _) => self.fail(c, "after object key:value pair"),
            (Container::ArrayValue, b',') => {
                self.state = State::BeginValue;
                Step::Continue
            }
            (Container::ArrayValue, _) => self.fail(c, "after array element"),
        }
    }

    /// After the top-level value: Go reports the end either way and complains about a
    /// non-space byte only if the caller reads on.
    fn end_top(&mut self, c: u8) -> Step {
        if !is_space(c) {
            self.fail(c, "after top-level value");
        }
        Step::End
    }

    fn number_end(&mut self, c: u8) -> Step {
        match c {
            b'.' => {
                self.state = State::Dot;
                Step::Continue
            }
            b'e' | b'E' => {
                self.state = State::E;
                Step::Continue
            }
            _ => self.end_value(c),
        }
    }

    pub fn step(&mut self, c: u8) -> Step {
        match self.state {
            State::Error => Step::Error,
            State::BeginValueOrEmpty => {
                if is_space(c) {
                    Step::Continue
                } else if c == b']' {
                    self.end_value(c)
                } else {
                    self.begin_value(c)
                }
            }
            State::BeginValue => self.begin_value(c),
            State::BeginStringOrEmpty => {
                if is_space(c) {
                    Step::Continue
                } else if c == b'}' {
                    *self.stack.last_mut().expect("in an object") = Container::ObjectValue;
                    self.end_value(c)
                } else {
                    self.state = State::BeginString;
                    self.step(c)
                }
            }
            State::BeginString => match c {
                c if is_space(c) => Step::Continue,
                b'"' => {
                    self.state = State::InString;
                    Step::Continue
                }
                _ => self.fail(c, "looking for beginning of object key string"),
            },
            State::EndValue => self.end_value(c),
            State::EndTop => self.end_top(c),
            State::InString => match c {
                b'"' => {
                    self.state = State::EndValue;
                    Step::Continue
                }
                b'\\' => {
                    self.state = State::InStringEsc;
                    Step::Continue
                }
                0..=0x1f => self.fail(c, "in string literal"),
                _ => Step::Continue,
            },
            State::InStringEsc => match c {
                b'b' | b'f' | b'n' | b'r' | b't' | b'\\' | b'/' | b'"' => {
                    self.state = State::InString;
                    Step::Continue
                }
                b'u' => {
                    self.state = State::InStringEscU(0);
                    Step::Continue
                }
                _ => self.fail(c, "in string escape code"),
            },
            State::InStringEscU(read) => {
                if c.is_ascii_hexdigit() {
                    self.state = if read == 3 {
                        State::InString
                    } else {
                        State::InStringEscU(read + 1)
                    };
                    Step::Continue
                } else {
                    self.fail(c, "in \\u hexadecimal character escape")
                }
            }
            State::Neg => match c {
                b'0' => {
                    self.state = State::Zero;
                    Step::Continue
                }
                b'1'..=b'9' => {
                    self.state = State::One;
                    Step::Continue
                }
                _ => self.fail(c, "in numeric literal"),
            },
            State::One => {
                if c.is_ascii_digit() {
                    Step::Continue
                } else {
                    self.number_end(c)
                }
            }
            State::Zero => self.number_end(c),
            State::Dot => {
                if c.is_ascii_digit() {
                    self.state = State::Dot0;
                    Step::Continue
                } else {
                    self.fail(c, "after decimal point in numeric literal")
                }
            }
            State::Dot0 => {
                if c.is_ascii_digit() {
                    Step::Continue
                } else if c == b'e' || c == b'E' {
                    self.state = State::E;
                    Step::Continue
                } else {
                    self.end_value(c)
                }
            }
            State::E => {
                if c == b'+' || c == b'-' {
                    self.state = State::ESign;
                    Step::Continue
                } else {
                    self.state = State::ESign;
                    self.step(c)
                }
            }
            State::ESign => {
                if c.is_ascii_digit() {
                    self.state = State::E0;
                    Step::Continue
                } else {
                    self.fail(c, "in exponent of numeric literal")
                }
            }
            State::E0 => {
                if c.is_ascii_digit() {
                    Step::Continue
                } else {
                    self.end_value(c)
                }
            }
            State::Literal(literal, read) => {
                let expected = literal.as_bytes()[read];
                if c != expected {
                    let context =
                        format!("in literal {literal} (expecting {})", quote_char(expected));
                    return self.fail(c, &context);
                }
                self.state = if read + 1 == literal.len() {
                    State::EndValue
                } else {
                    State::Literal(literal, read + 1)
                };
                Step::Continue
            }
        }
    }

    /// Go's `scanner.eof`: whether the input seen so far is one complete value.
    fn at_eof(&mut self) -> Result<(), String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.state == State::EndTop {
            return Ok(());
        }
        self.step(b' ');
        if self.state == State::EndTop && self.error.is_none() {
            return Ok(());
        }
        Err(self
            .error
            .clone()
            .unwrap_or_else(|| "unexpected end of JSON input".to_string()))
    }
}

/// Go's `checkValid`: `data` must be exactly one JSON value (spaces around it allowed).
pub fn check_valid(data: &[u8]) -> Result<(), String> {
    let mut scanner = Scanner::default();
    for &c in data {
        if scanner.step(c) == Step::Error {
            return Err(scanner.error.unwrap_or_default());
        }
    }
    scanner.at_eof()
}

/// What [`Decoder::next_value`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// One complete value (with the spaces before it).
    Value(Vec<u8>),
    /// The value is not complete yet: feed more bytes.
    More,
    /// The input ended where a value could begin (Go's `io.EOF`).
    End,
    /// A syntax error, or `unexpected EOF`: the message Go's decoder gives.
    Error(String),
}

/// Go's `json.Decoder`: cuts a byte stream into successive JSON values; the scanner's
/// state is kept across [`Decoder::feed`]s, so a value split over many reads is scanned
/// once.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Where the value being scanned starts.
    start: usize,
    /// How far it has been scanned.
    position: usize,
    scanner: Scanner,
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.position -= self.start;
            self.start = 0;
        }
        self.buffer.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as values.
    pub fn buffered(&self) -> usize {
        self.buffer.len() - self.start
    }

    fn take(&mut self, end: usize) -> Next {
        let value = self.buffer[self.start..end].to_vec();
        self.start = end;
        self.position = end;
        self.scanner = Scanner::default();
        if self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
            self.position = 0;
        }
        Next::Value(value)
    }

    /// The next value; `eof` says that no more bytes will come.
    pub fn next_value(&mut self, eof: bool) -> Next {
        while self.position < self.buffer.len() {
            let c = self.buffer[self.position];
            match self.scanner.step(c) {
                Step::End => return self.take(self.position),
                Step::EndContainer if self.scanner.depth() == 0 => {
                    return self.take(self.position + 1)
                }
                Step::Error => return Next::Error(self.scanner.error.clone().unwrap_or_default()),
                Step::EndContainer | Step::Continue => self.position += 1,
            }
        }
        if !eof {
            return Next::More;
        }
        // A number or literal ends with the input.
        if self.scanner.step(b' ') == Step::End {
            return self.take(self.position);
        }
        if self.buffer[self.start..].iter().any(|&c| !is_space(c)) {
            Next::Error("unexpected EOF".to_string())
        } else {
            Next::End
        }
    }
}

/// A JSON value as `jsonpb` sees it: numbers and strings keep their source text, since
/// its rules (and error messages) depend on it.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(String),
    /// The bytes between the quotes, escapes not yet resolved.
    String(Vec<u8>),
    Array(Vec<Json>),
    /// Members in order; a name that appears twice keeps its last value, as in Go.
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The word Go's `UnmarshalTypeError` uses for this value.
    fn kind_word(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "bool",
            Json::Number(_) => "number",
            Json::String(_) => "string",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
        }
    }

    fn member(&self, name: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Resolves a JSON string's escapes as Go's `unquote` does: an invalid byte or a lone
/// surrogate becomes U+FFFD.
pub fn unescape(raw: &[u8]) -> String {
    fn hex4(raw: &[u8]) -> Option<u32> {
        let digits = std::str::from_utf8(raw.get(..4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    }
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\\' => {
                let Some(&escape) = raw.get(i + 1) else { break };
                i += 2;
                match escape {
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let Some(unit) = hex4(&raw[i..]) else { break };
                        i += 4;
                        if (0xd800..0xe000).contains(&unit) {
                            // A surrogate pair, or U+FFFD.
                            let low = (raw.get(i..i + 2) == Some(b"\\u"))
                                .then(|| hex4(&raw[i + 2..]))
                                .flatten()
                                .filter(|low| (0xdc00..0xe000).contains(low) && unit < 0xdc00);
                            match low {
                                Some(low) => {
                                    let c = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                                    out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                                    i += 6;
                                }
                                None => out.push('\u{fffd}'),
                            }
                        } else {
                            out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                        }
                    }
                    other => out.push(char::from(other)),
                }
            }
            _ => match decode_utf8_char(&raw[i..]) {
                Some((c, size)) => {
                    out.push(c);
                    i += size;
                }
                None => {
                    out.push('\u{fffd}');
                    i += 1;
                }
            },
        }
    }
    out
}

/// Parses one value that [`Scanner`] accepted (iteratively: nesting is bounded by the
/// scanner's limit, not by the stack).
pub fn parse(text: &[u8]) -> Json {
    enum Frame {
        Array(Vec<Json>),
        Object(Vec<(String, Json)>, Option<String>),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    loop {
        while i < text.len() && (is_space(text[i]) || text[i] == b',' || text[i] == b':') {
            i += 1;
        }
        let Some(&c) = text.get(i) else {
            return Json::Null;
        };
        let value = match c {
            b'{' => {
                i += 1;
                stack.push(Frame::Object(Vec::new(), None));
                continue;
            }
            b'[' => {
                i += 1;
                stack.push(Frame::Array(Vec::new()));
                continue;
            }
            b'}' | b']' => {
                i += 1;
                match stack.pop() {
                    Some(Frame::Array(items)) => Json::Array(items),
                    Some(Frame::Object(members, _)) => Json::Object(members),
                    None => return Json::Null,
                }
            }
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while end < text.len() && text[end] != b'"' {
                    end += if text[end] == b'\\' { 2 } else { 1 };
                }
                i = end + 1;
                let raw = text[start..end.min(text.len())].to_vec();
                // A string where an object expects a member name is that name.
                if let Some(Frame::Object(_, name @ None)) = stack.last_mut() {
                    *name = Some(unescape(&raw));
                    continue;
                }
                Json::String(raw)
            }
            b't' => {
                i += 4;
                Json::Bool(true)
            }
            b'f' => {
                i += 5;
                Json::Bool(false)
            }
            b'n' => {
                i += 4;
                Json::Null
            }
            _ => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                Json::Number(String::from_utf8_lossy(&text[start..i]).into_owned())
            }
        };
        match stack.last_mut() {
            None => return value,
            Some(Frame::Array(items)) => items.push(value),
            Some(Frame::Object(members, name)) => {
                let name = name.take().unwrap_or_default();
                members.push((name, value));
            }
        }
    }
}

/// Go's `base64.StdEncoding.DecodeString` with its error (`illegal base64 data at input
/// byte N`): padding required, `\r` and `\n` skipped, unused low bits not checked.
pub fn go_base64_decode(input: &[u8]) -> Result<Vec<u8>, String> {
    fn symbol(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let corrupt = |at: usize| format!("illegal base64 data at input byte {at}");
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut i = 0;
    while i < input.len() {
        // One quantum of up to four symbols.
        let mut quantum = [0u32; 4];
        let mut length = 4;
        let mut trailing_error = None;
        let mut j = 0;
        while j < 4 {
            if i == input.len() {
                if j == 0 {
                    return Ok(out);
                }
                // Padding is required: a short quantum is corrupt where it began.
                return Err(corrupt(i - j));
            }
            let c = input[i];
            i += 1;
            if let Some(value) = symbol(c) {
                quantum[j] = value;
                j += 1;
                continue;
            }
            if c == b'\n' || c == b'\r' {
                continue;
            }
            if c != b'=' {
                return Err(corrupt(i - 1));
            }
            match j {
                0 | 1 => return Err(corrupt(i - 1)),
                2 => {
                    while i < input.len() && (input[i] == b'\n' || input[i] == b'\r') {
                        i += 1;
                    }
                    if i == input.len() {
                        return Err(corrupt(input.len()));
                    }
                    if input[i] != b'=' {
                        return Err(corrupt(i - 1));
                    }
                    i += 1;
                }
                _ => {}
            }
            while i < input.len() && (input[i] == b'\n' || input[i] == b'\r') {
                i += 1;
            }
            if i < input.len() {
                trailing_error = Some(corrupt(i));
            }
            length = j;
            break;
        }
        let value = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3];
        let bytes = [(value >> 16) as u8, (value >> 8) as u8, value as u8];
        out.extend_from_slice(&bytes[..length - 1]);
        if let Some(error) = trailing_error {
            return Err(error);
        }
    }
    Ok(out)
}

fn type_error(value: &Json, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go value of type {go_type}",
        value.kind_word()
    )
}

/// An integer field's value read as `jsonpb` does: quotes dropped, then Go's
/// `json.Unmarshal` into the integer type (`null` leaves it 0).
fn read_integer(value: &Json, kind: Kind, go_type: &str) -> Result<Option<i128>, String> {
    let text: Vec<u8> = match value {
        Json::Number(text) => text.as_bytes().to_vec(),
        Json::String(raw) => raw.clone(),
        other => return Err(type_error(other, go_type)),
    };
    check_valid(&text)?;
    let inner = parse(&text);
    let Json::Number(literal) = &inner else {
        if inner == Json::Null {
            return Ok(None);
        }
        return Err(type_error(&inner, go_type));
    };
    let (min, max): (i128, i128) = match kind {
        Kind::Int64 => (i64::MIN.into(), i64::MAX.into()),
        Kind::Uint64 => (0, u64::MAX.into()),
        Kind::Uint32 => (0, u32::MAX.into()),
        _ => (i32::MIN.into(), i32::MAX.into()),
    };
    match literal.parse::<i128>() {
        Ok(n) if (min..=max).contains(&n) && !(min == 0 && literal.starts_with('-')) => Ok(Some(n)),
        _ => Err(format!(
            "json: cannot unmarshal number {literal} into Go value of type {go_type}"
        )),
    }
}

fn go_integer_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Int64 => "int64",
        Kind::Uint64 => "uint64",
        Kind::Uint32 => "uint32",
        _ => "int32",
    }
}

/// One (non-repeated) value of `field`, as canonical proto3 JSON for pbjson; `None` when
/// the value leaves the field unset (`null`).
fn field_value(field: &Field, value: &Json) -> Result<Option<Value>, String> {
    if *value == Json::Null {
        return Ok(None);
    }
    Ok(Some(match field.kind {
        Kind::Bytes => {
            let Json::String(raw) = value else {
                return Err(type_error(value, "[]uint8"));
            };
            let bytes = go_base64_decode(unescape(raw).as_bytes())?;
            Value::String(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                bytes,
            ))
        }
        Kind::String => {
            let Json::String(raw) = value else {
                return Err(type_error(value, "string"));
            };
            Value::String(unescape(raw))
        }
        Kind::Bool => {
            let Json::Bool(b) = value else {
                return Err(type_error(value, "bool"));
            };
            Value::Bool(*b)
        }
        Kind::Enum(index) => {
            let schema = &json_schema::ENUMS[index];
            if let Json::String(raw) = value {
                // jsonpb looks the name up as written, escapes and all.
                let name = String::from_utf8_lossy(raw);
                return match schema.values.iter().find(|(n, _)| *n == name) {
                    Some((_, number)) => Ok(Some(Value::from(*number))),
                    None => Err(format!(
                        "unknown value {} for enum {}",
                        go_quote(raw),
                        schema.go_name
                    )),
                };
            }
            match read_integer(value, Kind::Int32, schema.go_name)? {
                Some(n) => Value::from(n as i64),
                None => return Ok(None),
            }
        }
        kind @ (Kind::Int64 | Kind::Uint64 | Kind::Int32 | Kind::Uint32) => {
            match read_integer(value, kind, go_integer_type(kind))? {
                Some(n) => Value::String(n.to_string()),
                None => return Ok(None),
            }
        }
        Kind::Message(index) => message_value(&json_schema::MESSAGES[index], value)?,
    }))
}

/// A message's JSON object read by `jsonpb`'s rules, as canonical proto3 JSON (original
/// field names; unknown members dropped, as etcd's gateway allows them).
fn message_value(message: &Message, value: &Json) -> Result<Value, String> {
    let members = match value {
        Json::Null => return Ok(Value::Object(serde_json::Map::new())),
        Json::Object(_) => value,
        other => return Err(type_error(other, "map[string]json.RawMessage")),
    };
    let mut out = serde_json::Map::new();
    // Plain fields first, in declaration order, then oneof members, as jsonpb does.
    let ordered = message
        .fields
        .iter()
        .filter(|f| !f.oneof)
        .chain(message.fields.iter().filter(|f| f.oneof));
    for field in ordered {
        // Both names are accepted; when both are present, the camelCase one wins.
        let Some(value) = members
            .member(field.json_name)
            .or_else(|| members.member(field.name))
        else {
            continue;
        };
        let converted = if field.repeated {
            match value {
                Json::Null => None,
                Json::Array(items) => {
                    let mut converted = Vec::with_capacity(items.len());
                    for item in items {
                        match field_value(field, item)? {
                            Some(v) => converted.push(v),
                            // A null element stays a default element.
                            None => converted.push(default_value(field)),
                        }
                    }
                    Some(Value::Array(converted))
                }
                other => return Err(type_error(other, "[]json.RawMessage")),
            }
        } else {
            field_value(field, value)?
        };
        if let Some(converted) = converted {
            if field.oneof {
                // Only one member of a oneof can be set: the last one read wins.
                let siblings: Vec<&str> = message
                    .fields
                    .iter()
                    .filter(|f| f.oneof && f.name != field.name)
                    .map(|f| f.name)
                    .collect();
                out.retain(|k, _| !siblings.contains(&k.as_str()));
            }
            out.insert(field.name.to_string(), converted);
        }
    }
    Ok(Value::Object(out))
}

fn default_value(field: &Field) -> Value {
    match field.kind {
        Kind::Bytes | Kind::String => Value::String(String::new()),
        Kind::Bool => Value::Bool(false),
        Kind::Enum(_) => Value::from(0),
        Kind::Int64 | Kind::Uint64 | Kind::Int32 | Kind::Uint32 => Value::String("0".into()),
        Kind::Message(_) => Value::Object(serde_json::Map::new()),
    }
}

/// One request value read by `jsonpb`'s rules for the message `proto_name`, as the
/// canonical proto3 JSON the generated deserializer takes.
pub fn to_proto_json(proto_name: &str, value: &Json) -> Result<Value, String> {
    let message = json_schema::message(proto_name)
        .ok_or_else(|| format!("no JSON mapping for {proto_name}"))?;
    message_value(message, value)
}

/// Reads one request message from a value the decoder returned.
pub fn read_message<T: serde::de::DeserializeOwned>(
    proto_name: &str,
    text: &[u8],
) -> Result<T, String> {
    let value = to_proto_json(proto_name, &parse(text))?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Escapes what Go's JSON encoder escapes and serde_json does not: `<`, `>`, `&` (Go's
/// HTML-safe default), U+2028 and U+2029, and the `\b` and `\f` short forms.
pub fn go_escape(json: Vec<u8>) -> Vec<u8> {
    let needs = json
        .windows(2)
        .any(|w| w[0] == b'\\' && (w[1] == b'b' || w[1] == b'f'))
        || json.iter().any(|&c| matches!(c, b'<' | b'>' | b'&'))
        || json
            .windows(3)
            .any(|w| w == [0xe2, 0x80, 0xa8] || w == [0xe2, 0x80, 0xa9]);
    if !needs {
        return json;
    }
    let mut out = Vec::with_capacity(json.len() + 16);
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'\\' => {
                match json.get(i + 1) {
                    Some(b'b') => out.extend_from_slice(b"\\u0008"),
                    Some(b'f') => out.extend_from_slice(b"\\u000c"),
                    Some(&other) => out.extend_from_slice(&[b'\\', other]),
                    None => out.push(b'\\'),
                }
                i += 2;
                continue;
            }
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            0xe2 if json.get(i + 1) == Some(&0x80)
                && matches!(json.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                out.extend_from_slice(if json[i + 2] == 0xa8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                continue;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// A message as etcd's gateway writes it.
pub fn write_message<T: serde::Serialize>(message: &T) -> Vec<u8> {
    // Serializing generated messages to a Vec cannot fail except for an enum value
    // outside the proto's (which the services never produce).
    go_escape(
        serde_json::to_vec(message)
            .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()).into_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rivet_api::etcdserverpb::{RangeRequest, TxnRequest, WatchRequest};

    fn first_value(input: &str) -> Next {
        let mut decoder = Decoder::default();
        decoder.feed(input.as_bytes());
        decoder.next_value(true)
    }

    fn error_of(input: &str) -> String {
        match first_value(input) {
            Next::Error(e) => e,
            other => panic!("{input:?}: expected an error, got {other:?}"),
        }
    }

    /// Messages as etcd 3.4's gateway answered them (checked by hand against etcd 3.4.23).
    #[test]
    fn syntax_errors_read_as_go_writes_them() {
        assert_eq!(
            error_of(r#"{"key":"Zm9v",}"#),
            "invalid character '}' looking for beginning of object key string"
        );
        assert_eq!(error_of(r#"{"key":"#), "unexpected EOF");
        assert_eq!(
            error_of(r#"{"key" 1}"#),
            "invalid character '1' after object key"
        );
        assert_eq!(
            error_of(r#"{"a":1 "b"}"#),
            "invalid character '\"' after object key:value pair"
        );
        assert_eq!(
            error_of("[1 2]"),
            "invalid character '2' after array element"
        );
        assert_eq!(
            error_of("x"),
            "invalid character 'x' looking for beginning of value"
        );
        assert_eq!(
            error_of("tru!"),
            "invalid character '!' in literal true (expecting 'e')"
        );
        assert_eq!(error_of("nul"), "unexpected EOF");
        assert_eq!(
            error_of("\"a\tb\""),
            "invalid character '\\t' in string literal"
        );
        assert_eq!(
            error_of("\"\\x\""),
            "invalid character 'x' in string escape code"
        );
        assert_eq!(
            error_of("\"\\u12G4\""),
            "invalid character 'G' in \\u hexadecimal character escape"
        );
        assert_eq!(error_of("-a"), "invalid character 'a' in numeric literal");
        assert_eq!(
            error_of("1.e"),
            "invalid character 'e' after decimal point in numeric literal"
        );
        assert_eq!(
            error_of("1e+}"),
            "invalid character '}' in exponent of numeric literal"
        );
        assert_eq!(
            error_of("{'a':1}"),
            "invalid character '\\'' looking for beginning of object key string"
        );
        assert_eq!(
            error_of("\u{1}"),
            "invalid character '\\x01' looking for beginning of value"
        );
        assert_eq!(
            error_of("\u{e9}"),
            "invalid character 'Ã' looking for beginning of value"
        );
    }

    #[test]
    fn the_decoder_cuts_a_stream_into_values() {
        let mut decoder = Decoder::default();
        decoder.feed(br#" {"a":1}{"b":"#);
        assert_eq!(
            decoder.next_value(false),
            Next::Value(br#" {"a":1}"#.to_vec())
        );
        assert_eq!(decoder.next_value(false), Next::More);
        decoder.feed(br#"[1]} 12 "x""#);
        assert_eq!(
            decoder.next_value(false),
            Next::Value(br#"{"b":[1]}"#.to_vec())
        );
        // A number ends at the next byte, or with the input.
        assert_eq!(decoder.next_value(false), Next::Value(b" 12".to_vec()));
        // So does a string: its end shows only with the next byte.
        assert_eq!(decoder.next_value(false), Next::More);
        assert_eq!(decoder.next_value(true), Next::Value(b" \"x\"".to_vec()));
        assert_eq!(decoder.next_value(true), Next::End);
        assert_eq!(first_value("  \n"), Next::End);
        assert_eq!(first_value("7"), Next::Value(b"7".to_vec()));
        // What follows a value is not looked at until the next value is asked for.
        assert_eq!(
            first_value(r#"{"a":1} garbage"#),
            Next::Value(br#"{"a":1}"#.to_vec())
        );
    }

    #[test]
    fn base64_errors_are_gos() {
        assert_eq!(go_base64_decode(b"Zm9v").unwrap(), b"foo");
        assert_eq!(go_base64_decode(b"Zm8=").unwrap(), b"fo");
        assert_eq!(go_base64_decode(b"Zg==").unwrap(), b"f");
        assert_eq!(go_base64_decode(b"Zm\r\n9v").unwrap(), b"foo");
        assert_eq!(go_base64_decode(b"").unwrap(), b"");
        assert_eq!(
            go_base64_decode(b"!!").unwrap_err(),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            go_base64_decode(b"Zm9").unwrap_err(),
            "illegal base64 data at input byte 0"
        );
        assert_eq!(
            go_base64_decode(b"Zm9vY").unwrap_err(),
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            go_base64_decode(b"Zg=").unwrap_err(),
            "illegal base64 data at input byte 3"
        );
        assert_eq!(
            go_base64_decode(b"Zg==Zg==").unwrap_err(),
            "illegal base64 data at input byte 4"
        );
        assert_eq!(
            go_base64_decode(b"Z-9v").unwrap_err(),
            "illegal base64 data at input byte 1"
        );
    }

    fn read<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, String> {
        read_message(name, text.as_bytes())
    }

    #[test]
    fn jsonpb_rules_and_messages() {
        let r: RangeRequest = read(
            "etcdserverpb.RangeRequest",
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":5,"revision":"7","sort_order":"DESCEND","sortTarget":2,"serializable":true,"unknown":{"x":[1]},"count_only":null}"#,
        )
        .unwrap();
        assert_eq!(&r.key[..], b"foo");
        assert_eq!(&r.range_end[..], b"fop");
        assert_eq!(
            (r.limit, r.revision, r.sort_order, r.sort_target),
            (5, 7, 2, 2)
        );
        assert!(r.serializable && !r.count_only);
        // camelCase wins over the original name when both are given.
        let r: RangeRequest = read(
            "etcdserverpb.RangeRequest",
            r#"{"keysOnly":true,"keys_only":false}"#,
        )
        .unwrap();
        assert!(r.keys_only);
        let r: RangeRequest = read("etcdserverpb.RangeRequest", "null").unwrap();
        assert_eq!(r, RangeRequest::default());
        for (input, error) in [
            (
                "[1]",
                "json: cannot unmarshal array into Go value of type map[string]json.RawMessage",
            ),
            (r#"{"key":"!!"}"#, "illegal base64 data at input byte 0"),
            (r#"{"key":5}"#, "json: cannot unmarshal number into Go value of type []uint8"),
            (r#"{"limit":"x"}"#, "invalid character 'x' looking for beginning of value"),
            (r#"{"limit":""}"#, "unexpected end of JSON input"),
            (r#"{"limit":1.5}"#, "json: cannot unmarshal number 1.5 into Go value of type int64"),
            (r#"{"limit":true}"#, "json: cannot unmarshal bool into Go value of type int64"),
            (r#"{"limit":"1 2"}"#, "invalid character '2' after top-level value"),
            (
                r#"{"sort_order":"BAD"}"#,
                "unknown value \"BAD\" for enum etcdserverpb.RangeRequest_SortOrder",
            ),
            (
                r#"{"sort_order":true}"#,
                "json: cannot unmarshal bool into Go value of type etcdserverpb.RangeRequest_SortOrder",
            ),
            (r#"{"serializable":"true"}"#, "json: cannot unmarshal string into Go value of type bool"),
        ] {
            assert_eq!(
                read::<RangeRequest>("etcdserverpb.RangeRequest", input).unwrap_err(),
                error,
                "{input}"
            );
        }
        let r: RangeRequest = read("etcdserverpb.RangeRequest", r#"{"limit":"null"}"#).unwrap();
        assert_eq!(r.limit, 0);
    }

    #[test]
    fn nested_messages_oneofs_and_repeated_enums() {
        let t: TxnRequest = read(
            "etcdserverpb.TxnRequest",
            r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],
                "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],
                "failure":[{"requestRange":{"key":"Zm9v"}}]}"#,
        )
        .unwrap();
        assert_eq!(t.compare.len(), 1);
        assert_eq!(t.success.len(), 1);
        assert_eq!(t.failure.len(), 1);
        let w: WatchRequest = read(
            "etcdserverpb.WatchRequest",
            r#"{"create_request":{"key":"YQ==","filters":["NODELETE",0],"prev_kv":true}}"#,
        )
        .unwrap();
        let Some(rivet_api::etcdserverpb::watch_request::RequestUnion::CreateRequest(c)) =
            w.request_union
        else {
            panic!("not a create request: {w:?}");
        };
        assert_eq!(c.filters, vec![1, 0]);
        assert!(c.prev_kv);
        assert_eq!(
            read::<TxnRequest>("etcdserverpb.TxnRequest", r#"{"compare":{}}"#).unwrap_err(),
            "json: cannot unmarshal object into Go value of type []json.RawMessage"
        );
    }

    #[test]
    fn output_is_escaped_as_go_does() {
        assert_eq!(
            go_escape(br#"{"a":"<b>&\b\f\\b\u0001"}"#.to_vec()),
            br#"{"a":"\u003cb\u003e\u0026\u0008\u000c\\b\u0001"}"#.to_vec()
        );
        assert_eq!(
            go_escape("\"\u{2028}\u{2029}é\"".as_bytes().to_vec()),
            "\"\\u2028\\u2029é\"".as_bytes().to_vec()
        );
    }

    #[test]
    fn quoting_matches_go() {
        assert_eq!(go_quote(b"BAD"), "\"BAD\"");
        assert_eq!(go_quote(b"a\\u0041\""), "\"a\\\\u0041\\\"\"");
        assert_eq!(go_quote(b"\xff"), "\"\\xff\"");
        assert_eq!(unescape(br#"a\u00e9\ud83d\ude00\ud800x"#), "aé😀\u{fffd}x");
    }
}
