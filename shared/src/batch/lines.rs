//! Batch input files line by line: a scanner that splits a byte stream into
//! lines with their offsets (so a chunk is a byte range of the file), what an
//! upload learns of each line for the batch's estimate, and the checks of a
//! batch's validation.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::gateway::chat::DEFAULT_MAX_TOKENS;
use crate::gateway::models::ModelVersion;

/// Longest input line (a request body plus its envelope).
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// Longest `custom_id`.
pub const MAX_CUSTOM_ID: usize = 512;
/// Validation errors kept on a failed batch (the count is exact).
pub const MAX_ERRORS: usize = 100;

/// One line of a file: its 1-based number and its bytes `[start, end)` in the
/// file (the newline excluded).
#[derive(Debug)]
pub struct RawLine<'a> {
    pub number: u64,
    pub start: u64,
    pub end: u64,
    pub bytes: &'a [u8],
}

/// Splits a byte stream into lines, fed in pieces of any size. Blank lines
/// (whitespace only) are skipped but keep their numbers.
#[derive(Debug)]
pub struct Scanner {
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    at: u64,
    number: u64,
}

/// A line longer than [`MAX_LINE_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong(pub u64);

impl Scanner {
    /// A scanner of bytes starting at `offset` in the file, whose first line is
    /// line `first_number`.
    pub fn starting_at(offset: u64, first_number: u64) -> Scanner {
        Scanner {
            buf: Vec::new(),
            at: offset,
            number: first_number.saturating_sub(1),
        }
    }

    /// Feeds the next bytes; calls `each` for every line they complete.
    pub fn feed<E>(
        &mut self,
        bytes: &[u8],
        mut each: impl FnMut(RawLine<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<LineTooLong>,
    {
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&rest[..nl]);
            rest = &rest[nl + 1..];
            self.emit(&mut each)?;
            self.at += 1; // the newline
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(LineTooLong(self.number + 1).into());
        }
        Ok(())
    }

    /// Ends the stream: a last line without a newline is a line too.
    pub fn finish<E>(&mut self, mut each: impl FnMut(RawLine<'_>) -> Result<(), E>) -> Result<(), E>
    where
        E: From<LineTooLong>,
    {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.emit(&mut each)
    }

    /// Feeds everything `reader` yields, then ends the stream; stops at the
    /// first line `each` (or the length limit) refuses. The outer error is a
    /// failed read, the inner one a refused line.
    pub async fn read_all<E>(
        &mut self,
        reader: &mut crate::store::BlobReader,
        mut each: impl FnMut(RawLine<'_>) -> Result<(), E>,
    ) -> std::io::Result<Result<(), E>>
    where
        E: From<LineTooLong>,
    {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                return Ok(self.finish(&mut each));
            }
            if let Err(e) = self.feed(&buf[..n], &mut each) {
                return Ok(Err(e));
            }
        }
    }

    fn emit<E>(&mut self, each: &mut impl FnMut(RawLine<'_>) -> Result<(), E>) -> Result<(), E>
    where
        E: From<LineTooLong>,
    {
        self.number += 1;
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(LineTooLong(self.number).into());
        }
        let len = self.buf.len() as u64;
        let blank = self.buf.iter().all(u8::is_ascii_whitespace);
        let result = if blank {
            Ok(())
        } else {
            each(RawLine {
                number: self.number,
                start: self.at,
                end: self.at + len,
                bytes: &self.buf,
            })
        };
        self.at += len;
        self.buf.clear();
        result
    }
}

/// A line's envelope as the file holds it.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    custom_id: Option<serde_json::Value>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(borrow, default)]
    body: Option<&'a RawValue>,
}

/// The fields of a body that bound its cost.
#[derive(Deserialize, Default)]
struct BodyHead {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    max_completion_tokens: Option<serde_json::Value>,
}

/// What bounds the tokens (and so the cost) of a set of lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// The bodies' bytes: a token covers at least one byte of its text, and
    /// each input's quotes or brackets cover its two special tokens.
    pub prompt: u64,
    /// The completion caps the lines set.
    pub capped: u64,
    /// Lines that set no cap (they may generate the model's default cap).
    pub uncapped: u64,
}

impl Bound {
    pub fn add(&mut self, other: Bound) {
        self.prompt = self.prompt.saturating_add(other.prompt);
        self.capped = self.capped.saturating_add(other.capped);
        self.uncapped = self.uncapped.saturating_add(other.uncapped);
    }

    /// Most completion tokens at `version` (0 for an embedding model).
    pub fn completion(&self, version: &ModelVersion) -> u64 {
        if version.kind != crate::gateway::models::ModelKind::Chat {
            return 0;
        }
        let cap = version
            .max_output_tokens
            .map(u64::from)
            .unwrap_or(DEFAULT_MAX_TOKENS);
        self.capped
            .saturating_add(self.uncapped.saturating_mul(cap))
    }

    /// Most tokens of both kinds at `version`.
    pub fn tokens(&self, version: &ModelVersion) -> u64 {
        self.prompt.saturating_add(self.completion(version))
    }
}

/// What an upload learns of a batch input file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FileStats {
    /// Non-blank lines.
    pub lines: u64,
    pub bound: Bound,
    /// The model the first line names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl FileStats {
    /// Learns a line (one that does not parse adds only its bytes: validation
    /// will fail it).
    pub fn learn(&mut self, line: &RawLine<'_>) {
        self.lines += 1;
        let (bound, model) = line_bound(line.bytes);
        self.bound.add(bound);
        if self.model.is_none() {
            self.model = model;
        }
    }
}

fn as_cap(v: &Option<serde_json::Value>) -> Option<u64> {
    v.as_ref().and_then(serde_json::Value::as_u64)
}

/// A line's bound and the model it names.
fn line_bound(bytes: &[u8]) -> (Bound, Option<String>) {
    let Ok(env) = serde_json::from_slice::<Envelope<'_>>(bytes) else {
        return (
            Bound {
                prompt: bytes.len() as u64,
                ..Bound::default()
            },
            None,
        );
    };
    body_bound(env.body.map(RawValue::get).unwrap_or(""))
}

/// A request body's bound and the model it names.
fn body_bound(body: &str) -> (Bound, Option<String>) {
    let head: BodyHead = serde_json::from_str(body).unwrap_or_default();
    let cap = as_cap(&head.max_completion_tokens).or(as_cap(&head.max_tokens));
    let bound = Bound {
        prompt: body.len() as u64,
        capped: cap.unwrap_or(0),
        uncapped: u64::from(cap.is_none()),
    };
    let model = head.model.and_then(|m| m.as_str().map(str::to_string));
    (bound, model)
}

/// Why a file cannot run as a batch, one line at a time (OpenAI's `errors.data`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineError {
    pub code: String,
    pub message: String,
    #[schema(required = true)]
    pub param: Option<String>,
    #[schema(required = true)]
    pub line: Option<u64>,
}

impl LineError {
    fn at(line: u64, code: &str, param: Option<&str>, message: String) -> LineError {
        LineError {
            code: code.into(),
            message,
            param: param.map(str::to_string),
            line: Some(line),
        }
    }
}

impl From<LineTooLong> for LineError {
    fn from(e: LineTooLong) -> Self {
        LineError::at(
            e.0,
            "line_too_long",
            None,
            format!("Line {} is longer than {MAX_LINE_BYTES} bytes.", e.0),
        )
    }
}

/// A checked input line: its id and its request body.
#[derive(Debug)]
pub struct InputLine<'a> {
    pub custom_id: String,
    pub body: &'a str,
    pub model: Option<String>,
    pub bound: Bound,
}

/// Parses a line's envelope: a JSON object with a string `custom_id`, `method`
/// POST, `url` equal to the batch's endpoint and an object `body`.
pub fn parse_line<'a>(line: &RawLine<'a>, endpoint: &str) -> Result<InputLine<'a>, LineError> {
    let n = line.number;
    if let Err(e) = crate::limits::check_json_depth(line.bytes) {
        return Err(LineError::at(
            n,
            "invalid_json_line",
            None,
            format!("This line is not accepted: {e}."),
        ));
    }
    let env: Envelope<'a> = serde_json::from_slice(line.bytes).map_err(|e| {
        LineError::at(
            n,
            "invalid_json_line",
            None,
            format!("This line is not parseable as valid JSON: {e}."),
        )
    })?;
    let custom_id = custom_id(n, env.custom_id)?;
    if env.method.as_deref() != Some("POST") {
        return Err(LineError::at(
            n,
            "invalid_method",
            Some("method"),
            "method must be \"POST\".".into(),
        ));
    }
    check_url(n, env.url.as_deref(), endpoint)?;
    let body = match env.body {
        Some(b) if b.get().trim_start().starts_with('{') => b.get(),
        _ => {
            return Err(LineError::at(
                n,
                "invalid_body",
                Some("body"),
                "body must be a JSON object.".into(),
            ))
        }
    };
    let (bound, model) = body_bound(body);
    Ok(InputLine {
        custom_id,
        body,
        model,
        bound,
    })
}

/// Line `n`'s `custom_id`: a string of 1 to [`MAX_CUSTOM_ID`] bytes.
fn custom_id(n: u64, value: Option<serde_json::Value>) -> Result<String, LineError> {
    let invalid =
        |message: String| LineError::at(n, "invalid_custom_id", Some("custom_id"), message);
    match value {
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_CUSTOM_ID => Ok(s),
        Some(serde_json::Value::String(_)) => Err(invalid(format!(
            "custom_id must hold 1 to {MAX_CUSTOM_ID} bytes."
        ))),
        Some(_) => Err(invalid("custom_id must be a string.".into())),
        None => Err(LineError::at(
            n,
            "missing_required_parameter",
            Some("custom_id"),
            "Missing required parameter: 'custom_id'.".into(),
        )),
    }
}

/// Line `n`'s `url`: the batch's endpoint.
fn check_url(n: u64, url: Option<&str>, endpoint: &str) -> Result<(), LineError> {
    match url {
        Some(u) if u == endpoint => Ok(()),
        Some(u) => Err(LineError::at(
            n,
            "mismatched_endpoint",
            Some("url"),
            format!("The line's url '{u}' does not match the batch's endpoint '{endpoint}'."),
        )),
        None => Err(LineError::at(
            n,
            "missing_required_parameter",
            Some("url"),
            "Missing required parameter: 'url'.".into(),
        )),
    }
}

/// A batch's validation, line by line: every line's envelope, unique
/// `custom_id`s, and one model per file.
#[derive(Debug)]
pub struct Validator {
    endpoint: String,
    seen: HashSet<String>,
    model: Option<String>,
    pub errors: Vec<LineError>,
    pub error_count: u64,
    pub lines: u64,
}

impl Validator {
    pub fn new(endpoint: &str) -> Validator {
        Validator {
            endpoint: endpoint.to_string(),
            seen: HashSet::new(),
            model: None,
            errors: Vec::new(),
            error_count: 0,
            lines: 0,
        }
    }

    /// Checks a line; its bound when it is good.
    pub fn check(&mut self, line: &RawLine<'_>) -> Option<Bound> {
        self.lines += 1;
        let checked = parse_line(line, &self.endpoint).and_then(|l| self.unique(line.number, l));
        match checked {
            Ok(bound) => Some(bound),
            Err(e) => {
                self.fail(e);
                None
            }
        }
    }

    /// Records an error (kept up to [`MAX_ERRORS`], all counted).
    pub fn fail(&mut self, e: LineError) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    fn unique(&mut self, n: u64, line: InputLine<'_>) -> Result<Bound, LineError> {
        match (&self.model, &line.model) {
            (Some(m), Some(l)) if m != l => {
                return Err(LineError::at(n, "mismatched_model", Some("body.model"), format!(
                    "All lines of a batch must name the same model: line {n} names '{l}', earlier lines '{m}'."
                )))
            }
            (None, Some(l)) => self.model = Some(l.clone()),
            (_, None) => {
                return Err(LineError::at(n, "missing_required_parameter", Some("body.model"), "Missing required parameter: 'body.model'.".into()))
            }
            _ => {}
        }
        if !self.seen.insert(line.custom_id.clone()) {
            return Err(LineError::at(
                n,
                "duplicate_custom_id",
                Some("custom_id"),
                format!(
                    "The custom_id '{}' appears more than once; each line needs its own.",
                    line.custom_id
                ),
            ));
        }
        Ok(line.bound)
    }

    /// The one model the file names.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However bytes are split into pieces, the lines are the file's own
        /// bytes at their offsets, and checking them never panics.
        #[test]
        fn any_bytes_in_any_pieces_give_the_same_lines(
            bytes in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'{'), Just(b' '), any::<u8>()], 0..400),
            cuts in prop::collection::vec(0usize..400, 0..6),
        ) {
            let whole = lines_of(&[&bytes]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&bytes[at..c]);
                at = c;
            }
            pieces.push(&bytes[at..]);
            prop_assert_eq!(&lines_of(&pieces), &whole);
            let mut v = Validator::new("/v1/embeddings");
            for (n, start, end, _) in &whole {
                let slice = &bytes[*start as usize..*end as usize];
                prop_assert!(!slice.contains(&b'\n'));
                v.check(&RawLine { number: *n, start: *start, end: *end, bytes: slice });
                let mut stats = FileStats::default();
                stats.learn(&RawLine { number: *n, start: *start, end: *end, bytes: slice });
            }
            prop_assert_eq!(v.lines, whole.len() as u64);
        }
    }

    fn lines_of(pieces: &[&[u8]]) -> Vec<(u64, u64, u64, String)> {
        let mut out = Vec::new();
        let mut s = Scanner::starting_at(0, 1);
        let mut push = |l: RawLine<'_>| -> Result<(), LineError> {
            out.push((
                l.number,
                l.start,
                l.end,
                String::from_utf8_lossy(l.bytes).into_owned(),
            ));
            Ok(())
        };
        for p in pieces {
            s.feed(p, &mut push).unwrap();
        }
        s.finish(&mut push).unwrap();
        out
    }

    #[test]
    fn lines_keep_their_offsets_whatever_the_pieces() {
        let whole: &[u8] = b"ab\n\n  \ncde\nf";
        let expected = vec![
            (1, 0, 2, "ab".to_string()),
            (4, 7, 10, "cde".to_string()),
            (5, 11, 12, "f".to_string()),
        ];
        assert_eq!(lines_of(&[whole]), expected);
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(lines_of(&bytes), expected);
        // Each offset range is the line's bytes in the file.
        for (_, start, end, text) in expected {
            assert_eq!(&whole[start as usize..end as usize], text.as_bytes());
        }
    }

    #[test]
    fn a_line_past_the_limit_is_an_error_naming_it() {
        let mut s = Scanner::starting_at(0, 1);
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        let r: Result<(), LineError> = s
            .feed(b"{}\n", |_| Ok(()))
            .and_then(|_| s.feed(&long, |_| Ok(())));
        assert_eq!(r.unwrap_err().line, Some(2));
    }

    fn raw(n: u64, s: &str) -> RawLine<'_> {
        RawLine {
            number: n,
            start: 0,
            end: s.len() as u64,
            bytes: s.as_bytes(),
        }
    }

    #[test]
    fn validation_names_each_bad_line() {
        let mut v = Validator::new("/v1/embeddings");
        let good = r#"{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}"#;
        assert!(v.check(&raw(1, good)).is_some());
        let cases = [
            ("not json", "invalid_json_line"),
            (
                r#"{"method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}"#,
                "missing_required_parameter",
            ),
            (
                r#"{"custom_id": 7, "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}"#,
                "invalid_custom_id",
            ),
            (
                r#"{"custom_id": "b", "method": "GET", "url": "/v1/embeddings", "body": {"model": "m"}}"#,
                "invalid_method",
            ),
            (
                r#"{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}"#,
                "mismatched_endpoint",
            ),
            (
                r#"{"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": [1]}"#,
                "invalid_body",
            ),
            (
                r#"{"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {"model": "other"}}"#,
                "mismatched_model",
            ),
            (good, "duplicate_custom_id"),
        ];
        for (i, (line, code)) in cases.iter().enumerate() {
            let n = i as u64 + 2;
            assert!(v.check(&raw(n, line)).is_none(), "{line}");
            let e = v.errors.last().unwrap();
            assert_eq!((e.code.as_str(), e.line), (*code, Some(n)), "{line}");
        }
        assert_eq!(v.error_count, cases.len() as u64);
    }

    #[test]
    fn the_bound_covers_prompt_bytes_and_completion_caps() {
        let mut stats = FileStats::default();
        let a = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "max_tokens": 10}}"#;
        let b = r#"{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}"#;
        stats.learn(&raw(1, a));
        stats.learn(&raw(2, b));
        assert_eq!(stats.lines, 2);
        assert_eq!(stats.model.as_deref(), Some("m"));
        assert_eq!((stats.bound.capped, stats.bound.uncapped), (10, 1));
        let body_len = |l: &str| l[l.find(r#"{"model""#).unwrap()..l.len() - 1].len() as u64;
        assert_eq!(stats.bound.prompt, body_len(a) + body_len(b));
        let mut v = ModelVersion::live_worker("m", "1", "http://w", 1);
        v.kind = crate::gateway::models::ModelKind::Chat;
        v.max_output_tokens = Some(100);
        assert_eq!(stats.bound.completion(&v), 110);
        v.kind = crate::gateway::models::ModelKind::Embedding;
        assert_eq!(stats.bound.completion(&v), 0);
    }
}
