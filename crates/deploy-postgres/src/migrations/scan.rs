//! The SQL scanner: the statements of a migration as psql sends them and PostgreSQL runs them.

// The SQL scanner.
//
// psql runs a migration (`psql -f -`): it splits the file into statements with its own lexer,
// which follows the server's lexical rules (scan.l / psqlscan.l), and it runs the backslash
// meta-commands itself. The scanner below follows both, so that the statements it hands the
// classifier are those PostgreSQL will run. Where PostgreSQL versions disagree on a token
// boundary (`1a$b$`, `0x1F$a$`: number-then-identifier up to 14 and 16, junk or a hex literal
// elsewhere), the reading chosen is the one under which the statement is valid SQL: under the
// other the statement is a syntax error, and psql (run with `ON_ERROR_STOP`) stops there.
// Every token is found by one forward pass; the only look-ahead (a string continued on a later
// line) covers whitespace that is then consumed, so the scan is linear in the input.

/// One statement as PostgreSQL will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Its words, upper-cased (ASCII) and separated by single spaces: comments dropped, string
    /// literals as `''`, dollar-quoted bodies as `$BODY$`, `(`, `)` and `,` spaced out, quoted
    /// identifiers kept in their quotes (`"Users"`, `"my␠table"`).
    pub(crate) text: String,
    /// Why psql runs something the text does not show, or reads the rest of the file otherwise
    /// than the scanner assumes: a meta-command such as `\gexec`, or a change of
    /// `standard_conforming_strings` or of the client encoding.
    pub(crate) opaque: Option<String>,
    /// Where it is in the file: from its first token (comments and meta-commands before it
    /// excluded) to the end of its `;` (or of its last token).
    pub(crate) span: std::ops::Range<usize>,
}

impl Statement {
    /// Its source as written, whitespace runs made single spaces, cut to 80 characters: for
    /// messages, which quote a statement the way its author wrote it.
    pub(crate) fn quoted(&self, sql: &str) -> String {
        let text = sql.get(self.span.clone()).unwrap_or_default();
        let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        shorten(one_line.trim_end_matches(';').trim_end())
    }

    /// The 1-based line of `sql` on which it starts.
    pub(crate) fn line(&self, sql: &str) -> usize {
        line_of(sql, self.span.start)
    }
}

/// The 1-based line of `sql` holding byte `at`.
pub(crate) fn line_of(sql: &str, at: usize) -> usize {
    sql.as_bytes()[..at.min(sql.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// What a token is; see [`Lexer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// Whitespace, a `--` comment, a (nested) `/* */` comment.
    Space,
    /// An identifier or key word (`$` may follow its first character), a number, a `$1`.
    Word,
    /// `"…"` or `U&"…"`.
    QuotedIdent,
    /// `'…'`, `E'…'`, `B'…'`, `X'…'`, `U&'…'`, with its continuations on later lines.
    Str,
    /// `$$…$$` or `$tag$…$tag$`.
    Dollar,
    /// `;`, or psql's `\;`.
    Semicolon,
    /// A psql meta-command and its arguments (`\set ON_ERROR_STOP on`, `\gexec`).
    Meta,
    /// Any other character: operators, punctuation, a lone `$`.
    Other,
}

/// How a quoted string treats `\` and `''`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    /// `'…'` (with `standard_conforming_strings` on) and `U&'…'`: `''` is a quote, `\` is text.
    Standard,
    /// `E'…'` (and `'…'` with `standard_conforming_strings` off): `\` escapes the next byte.
    Escape,
    /// `B'…'` and `X'…'`: the next `'` ends the string.
    Bits,
}

/// The space characters of scan.l (`\v` since PostgreSQL 16).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// `ident_start` (and `dolq_start`): bytes from 0x80 up are letters, as in scan.l.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// `dolq_cont`: a dollar-quote tag is an identifier without `$`.
fn is_tag_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit()
}

/// `ident_cont`: `$` continues an identifier (`x$y` is one name, not a quote).
fn is_ident_cont(c: u8) -> bool {
    is_tag_cont(c) || c == b'$'
}

fn skip_while(b: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while b.get(i).is_some_and(|&c| f(c)) {
        i += 1;
    }
    i
}

/// The first `\n` or `\r` at or after `i` (the end of a `--` comment).
fn line_end(b: &[u8], i: usize) -> usize {
    skip_while(b, i, |c| c != b'\n' && c != b'\r')
}

/// The lexer of psql and PostgreSQL, as far as token boundaries go.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    /// `standard_conforming_strings` (on by default since 9.1): off, `'…'` reads like `E'…'`.
    standard_strings: bool,
    /// Set when a string continued across lines is read differently by psql and PostgreSQL
    /// (see [`string_end`]); cleared by whoever reads it.
    split_continuation: bool,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            standard_strings: true,
            split_continuation: false,
        }
    }

    /// The next token and where it is. Token boundaries are ASCII bytes or the end, so the
    /// range always slices `src`.
    fn next_token(&mut self) -> Option<(Tok, std::ops::Range<usize>)> {
        let b = self.src.as_bytes();
        let start = self.pos;
        let c = *b.get(start)?;
        let at = |k: usize| b.get(start + k).copied();
        let (tok, end) = match c {
            _ if is_space(c) => (Tok::Space, skip_while(b, start, is_space)),
            b'-' if at(1) == Some(b'-') => (Tok::Space, line_end(b, start)),
            b'/' if at(1) == Some(b'*') => (Tok::Space, block_comment_end(b, start + 2)),
            b'\'' => {
                let q = if self.standard_strings {
                    Quote::Standard
                } else {
                    Quote::Escape
                };
                self.string(b, start + 1, q)
            }
            b'"' => (Tok::QuotedIdent, quoted_ident_end(b, start + 1)),
            b'e' | b'E' if at(1) == Some(b'\'') => self.string(b, start + 2, Quote::Escape),
            b'b' | b'B' | b'x' | b'X' if at(1) == Some(b'\'') => {
                self.string(b, start + 2, Quote::Bits)
            }
            b'u' | b'U' if at(1) == Some(b'&') && at(2) == Some(b'\'') => {
                self.string(b, start + 3, Quote::Standard)
            }
            b'u' | b'U' if at(1) == Some(b'&') && at(2) == Some(b'"') => {
                (Tok::QuotedIdent, quoted_ident_end(b, start + 3))
            }
            _ if is_ident_start(c) => (Tok::Word, skip_while(b, start + 1, is_ident_cont)),
            b'0'..=b'9' => (Tok::Word, number_end(b, start)),
            b'.' if at(1).is_some_and(|d| d.is_ascii_digit()) => (Tok::Word, number_end(b, start)),
            b'$' if at(1).is_some_and(|d| d.is_ascii_digit()) => {
                (Tok::Word, skip_while(b, start + 1, |d| d.is_ascii_digit()))
            }
            b'$' => match self.dollar_quote_end(start) {
                Some(end) => (Tok::Dollar, end),
                None => (Tok::Other, start + 1),
            },
            b';' => (Tok::Semicolon, start + 1),
            b'\\' if at(1) == Some(b';') => (Tok::Semicolon, start + 2),
            b'\\' if at(1) == Some(b':') => (Tok::Other, start + 2),
            b'\\' => (Tok::Meta, meta_command_end(b, start + 1)),
            _ => (Tok::Other, start + 1),
        };
        self.pos = end.min(b.len());
        Some((tok, start..self.pos))
    }

    /// After a `COPY ... FROM STDIN`, psql sends the lines that follow as data, up to a line
    /// `\.`, and reads SQL again after it: skip them. `false` (nothing skipped) when the COPY's
    /// own line goes on after its `;`, which psql reads only after the data.
    fn skip_copy_data(&mut self) -> bool {
        let b = self.src.as_bytes();
        let line_end = skip_while(b, self.pos, |c| c != b'\n');
        let rest = self.src[self.pos..line_end].trim();
        if !(rest.is_empty() || rest.starts_with("--")) {
            return false;
        }
        let mut i = (line_end + 1).min(b.len());
        while i < b.len() {
            let end = skip_while(b, i, |c| c != b'\n');
            let line = &b[i..end];
            i = (end + 1).min(b.len());
            if line == b"\\." || line == b"\\.\r" {
                break;
            }
        }
        self.pos = i;
        true
    }

    /// A string token whose body starts at `i`; notes a disagreement of psql and PostgreSQL.
    fn string(&mut self, b: &[u8], i: usize, quote: Quote) -> (Tok, usize) {
        let (end, diverges) = string_end(b, i, quote);
        self.split_continuation |= diverges;
        (Tok::Str, end)
    }

    /// The end of the dollar-quoted string opening at `start`, or `None` when the `$` does
    /// not open one (`$x` without a closing `$`). The body ends at the first occurrence of
    /// the opening delimiter: every `$` in a body starts a token in scan.l, so that is where
    /// PostgreSQL ends it too.
    fn dollar_quote_end(&self, start: usize) -> Option<usize> {
        let b = self.src.as_bytes();
        let mut j = start + 1;
        if b.get(j).is_some_and(|&c| is_ident_start(c)) {
            j = skip_while(b, j + 1, is_tag_cont);
        }
        if b.get(j) != Some(&b'$') {
            return None;
        }
        let delimiter = &self.src[start..=j];
        Some(match self.src[j + 1..].find(delimiter) {
            Some(k) => j + 1 + k + delimiter.len(),
            None => b.len(),
        })
    }
}

/// The end of a block comment whose body starts at `i`; comments nest.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1usize;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a quoted identifier whose body starts at `i` (`""` is a quote inside), or
/// `None` if the input ends inside it.
fn quoted_ident_close(b: &[u8], mut i: usize) -> Option<usize> {
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

fn quoted_ident_end(b: &[u8], i: usize) -> usize {
    quoted_ident_close(b, i).unwrap_or(b.len())
}

/// The end of a string whose body starts at `i`, including its continuations, and whether
/// psql and PostgreSQL disagree on it.
///
/// scan.l joins `'a'` and a `'b'` that follows after whitespace holding a newline into one
/// string read under the first one's rules. psql, though, lexes one line at a time, so it only
/// sees the continuations within a line (after a bare `\r`): across a `\n` it starts a new
/// string under the rules of a fresh `'`. That changes nothing for `'…'` and `B'…'`, but an
/// `E'…'` continued on the next line is read with backslash escapes by the server and without
/// by psql, which splits the file. The end returned is then psql's, and the flag says so.
fn string_end(b: &[u8], mut i: usize, quote: Quote) -> (usize, bool) {
    loop {
        loop {
            match b.get(i) {
                None => return (b.len(), false),
                Some(b'\\') if quote == Quote::Escape => i += 2,
                Some(b'\'') if quote != Quote::Bits && b.get(i + 1) == Some(&b'\'') => i += 2,
                Some(b'\'') => {
                    i += 1;
                    break;
                }
                Some(_) => i += 1,
            }
        }
        match continuation(b, i) {
            Some(open) if quote == Quote::Escape && b[i..open].contains(&b'\n') => {
                return (i, true);
            }
            Some(open) => i = open + 1,
            None => return (i, false),
        }
    }
}

/// Where a string closed just before `i` continues: scan.l's `quotecontinue`, that is
/// `{horiz_whitespace}*{newline}{special_whitespace}*` then a quote (its index).
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match b.get(i) {
            Some(b' ' | b'\t' | 0x0b | 0x0c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => i = line_end(b, i),
            _ => break,
        }
    }
    if !matches!(b.get(i), Some(b'\n' | b'\r')) {
        return None;
    }
    i += 1;
    loop {
        match b.get(i) {
            Some(&c) if is_space(c) => i += 1,
            Some(b'-') if b.get(i + 1) == Some(&b'-') => {
                i = line_end(b, i);
                if !matches!(b.get(i), Some(b'\n' | b'\r')) {
                    return None;
                }
                i += 1;
            }
            _ => break,
        }
    }
    (b.get(i) == Some(&b'\'')).then_some(i)
}

/// The end of a number starting at `i` (`1`, `1.5`, `.5`, `1.`, `1e-3`), with the name that
/// follows it without a space: since PostgreSQL 15 `1e5$a$` or `0x1F` is one token (an error,
/// "trailing junk after numeric literal"), and that name takes any `$`, as names do. (`1.5$a$`
/// and `1e-5$a$` are a number, then a dollar quote.)
fn number_end(b: &[u8], i: usize) -> usize {
    let digits = |k| skip_while(b, k, |c| c.is_ascii_digit());
    let mut i = digits(i);
    // `1..5` is 1 then `..`, as in scan.l.
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    // A signed exponent; an unsigned one is taken with the name below.
    if matches!(b.get(i), Some(b'e' | b'E'))
        && matches!(b.get(i + 1), Some(b'+' | b'-'))
        && b.get(i + 2).is_some_and(|c| c.is_ascii_digit())
    {
        i = digits(i + 2);
    }
    if b.get(i).is_some_and(|&c| is_ident_start(c)) {
        i = skip_while(b, i, is_ident_cont);
    }
    i
}

/// psql's meta-commands that take the rest of the line as their argument.
const WHOLE_LINE_META_COMMANDS: &[&str] = &[
    "!", "copy", "ef", "ev", "sf", "sf+", "sv", "sv+", "h", "help",
];

/// The end of a psql meta-command whose name starts at `i` (just after the `\`). As in
/// psqlscanslash.l: the name ends at whitespace or a backslash; arguments end at the end of
/// the line or at an unquoted backslash (`'…'`, `"…"` and `` `…` `` quote, within the line);
/// a `\\` after them is eaten, and psql reads SQL again from there.
fn meta_command_end(b: &[u8], i: usize) -> usize {
    let name_end = skip_while(b, i, |c| {
        !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | b'\\')
    });
    let name = &b[i..name_end];
    let mut i = name_end;
    if WHOLE_LINE_META_COMMANDS
        .iter()
        .any(|w| w.as_bytes() == name)
    {
        return skip_while(b, i, |c| c != b'\n');
    }
    loop {
        match b.get(i) {
            None | Some(b'\n') => return i,
            Some(b'\\') => {
                return if b.get(i + 1) == Some(&b'\\') {
                    i + 2
                } else {
                    i
                };
            }
            Some(&q @ (b'\'' | b'"' | b'`')) => {
                i += 1;
                while let Some(&c) = b.get(i) {
                    if c == b'\n' {
                        break;
                    }
                    i += 1;
                    if c == b'\\' && q == b'\'' {
                        i += 1;
                    } else if c == q {
                        break;
                    }
                }
            }
            Some(_) => i += 1,
        }
    }
}

/// psql meta-commands whose effect the classifier can see: output, conditionals (a skipped
/// branch is still classified), and running the query buffer (`\g` without an argument).
const TRANSPARENT_META_COMMANDS: &[&str] = &[
    "echo",
    "qecho",
    "warn",
    "timing",
    "pset",
    "if",
    "elif",
    "else",
    "endif",
    "g",
    "gx",
    "gdesc",
    "crosstabview",
    "watch",
];

/// Meta-commands that send the query buffer, ending the statement as `;` does.
const SENDING_META_COMMANDS: &[&str] =
    &["g", "gx", "gexec", "gset", "gdesc", "crosstabview", "watch"];

/// psql variables a migration may set: they change what psql prints or when it stops, not
/// what runs, and psql refuses values other than its own.
const SETTABLE_PSQL_VARIABLES: &[&str] =
    &["ECHO", "ECHO_HIDDEN", "QUIET", "VERBOSITY", "SHOW_CONTEXT"];

/// Whether the meta-command `text` (from its `\`) sends the query buffer, and why the
/// classifier cannot see what it does, if it cannot.
fn meta_command(text: &str) -> (bool, Option<String>) {
    let body = &text[1..];
    let name_end = body
        .find([' ', '\t', '\n', '\r', '\u{c}', '\\'])
        .unwrap_or(body.len());
    let (name, args) = body.split_at(name_end);
    let args = args.trim_end_matches('\\').trim();
    let sends = SENDING_META_COMMANDS.contains(&name);
    let mut words = args.split_whitespace();
    let transparent = match name {
        "g" | "gx" => args.is_empty(),
        "set" => match (words.next(), words.next(), words.next()) {
            (Some("ON_ERROR_STOP"), Some(v), None) => bool_setting(v) == Some(true),
            (Some(var), _, _) => SETTABLE_PSQL_VARIABLES.contains(&var),
            (None, _, _) => false,
        },
        _ => TRANSPARENT_META_COMMANDS.contains(&name),
    };
    let why = if args.contains('`') {
        Some(format!(
            "runs a shell command (a backquoted argument of the psql meta-command \\{name})"
        ))
    } else if !transparent {
        Some(format!(
            "runs the psql meta-command `{}`, whose effect the classifier cannot see",
            shorten(text.trim_end())
        ))
    } else {
        None
    };
    (sends, why)
}

/// A boolean setting as PostgreSQL and psql read it (unique prefixes of on/off/true/false/
/// yes/no, 1, 0), case-insensitively.
fn bool_setting(v: &str) -> Option<bool> {
    let v = v.to_ascii_lowercase();
    let prefix_of = |w: &str| !v.is_empty() && w.starts_with(v.as_str());
    if v == "1" || v == "on" || prefix_of("true") || prefix_of("yes") {
        Some(true)
    } else if v == "0"
        || (v.len() >= 2 && prefix_of("off"))
        || prefix_of("false")
        || prefix_of("no")
    {
        Some(false)
    } else {
        None
    }
}

/// Client encodings in which a byte of a multi-byte character can be an ASCII `\` or `'`:
/// psql reads the rest of the file otherwise than as UTF-8 under them.
const UNSAFE_CLIENT_ENCODINGS: &[&str] = &[
    "sjis",
    "shiftjis",
    "mskanji",
    "shiftjis2004",
    "win932",
    "windows932",
    "big5",
    "win950",
    "windows950",
    "gbk",
    "win936",
    "windows936",
    "cp936",
    "uhc",
    "win949",
    "windows949",
    "gb18030",
    "johab",
];

/// The settings that change where psql sees strings end.
const LEXICAL_SETTINGS: &[&str] = &["standard_conforming_strings", "client_encoding"];

/// Builds one [`Statement`] from tokens.
#[derive(Default)]
struct StatementBuilder {
    text: String,
    opaque: Option<String>,
    /// Where its first token starts, and where its last (or its `;`) ends.
    start: Option<usize>,
    end: usize,
    /// The first few words, names and values, lower-cased, for `SET` and `RESET`.
    head: Vec<String>,
    /// Whether a name is one of [`LEXICAL_SETTINGS`].
    names_lexical_setting: bool,
    /// Whether a string or dollar-quoted body mentions one of [`LEXICAL_SETTINGS`]
    /// (`set_config(...)`, a `DO` block, an `UPDATE pg_settings`).
    quotes_lexical_setting: bool,
}

impl StatementBuilder {
    /// `tok` (whose text is `text`) at `at` in the file.
    fn push_at(&mut self, tok: Tok, text: &str, at: std::ops::Range<usize>) {
        if !matches!(tok, Tok::Space | Tok::Meta) {
            self.start.get_or_insert(at.start);
            self.end = at.end;
        }
        self.push(tok, text);
    }

    fn push(&mut self, tok: Tok, text: &str) {
        match tok {
            Tok::Space | Tok::Semicolon | Tok::Meta => self.text.push(' '),
            Tok::Word => self.text.push_str(&text.to_ascii_uppercase()),
            Tok::Str => self.text.push_str(" '' "),
            Tok::Dollar => self.text.push_str(" $BODY$ "),
            Tok::QuotedIdent => {
                self.text.push(' ');
                self.text.push_str(&quoted_ident_text(text));
                self.text.push(' ');
            }
            Tok::Other => match text {
                // psql's `\:` puts a `:` into the query.
                "\\:" => self.text.push(':'),
                "(" | ")" | "," => {
                    self.text.push(' ');
                    self.text.push_str(text);
                    self.text.push(' ');
                }
                _ => self.text.push_str(text),
            },
        }
        if matches!(tok, Tok::Space | Tok::Semicolon | Tok::Meta) {
            return;
        }
        let lower = text.to_ascii_lowercase();
        match tok {
            Tok::Str | Tok::Dollar => {
                self.quotes_lexical_setting |= LEXICAL_SETTINGS.iter().any(|s| lower.contains(s));
            }
            _ => {
                let name = lower.trim_matches('"');
                self.names_lexical_setting |= LEXICAL_SETTINGS.contains(&name);
            }
        }
        if self.head.len() < 6 {
            self.head.push(match tok {
                Tok::Str | Tok::QuotedIdent => string_value(&lower),
                _ => lower,
            });
        }
    }

    fn set_opaque(&mut self, why: String) {
        self.opaque.get_or_insert(why);
    }

    /// The statement, after applying what it does to how psql reads the rest of the file.
    fn finish(&mut self, lexer: &mut Lexer<'_>, out: &mut Vec<Statement>) {
        let mut b = std::mem::take(self);
        if let Some(why) = b.lexical_effect(lexer) {
            b.set_opaque(why);
        }
        let text = b
            .text
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if !text.is_empty() || b.opaque.is_some() {
            let start = b.start.unwrap_or(b.end);
            out.push(Statement {
                text,
                opaque: b.opaque,
                span: start..b.end.max(start),
            });
        }
    }

    /// Follow `SET`/`RESET` of `standard_conforming_strings` in the lexer; why psql might
    /// read the rest of the file otherwise than the scanner does, if it might.
    fn lexical_effect(&self, lexer: &mut Lexer<'_>) -> Option<String> {
        let h: Vec<&str> = self.head.iter().map(String::as_str).collect();
        let h = match h.as_slice() {
            ["set", "session" | "local", rest @ ..] => [&["set"], rest].concat(),
            _ => h,
        };
        match h.as_slice() {
            ["show", ..] => None,
            ["reset", "standard_conforming_strings" | "all"] | ["discard", "all"] => {
                lexer.standard_strings = true;
                None
            }
            ["reset", "client_encoding"] => None,
            ["set", "standard_conforming_strings", "to" | "=", value] => {
                match (*value == "default").then_some(true).or(bool_setting(value)) {
                    Some(true) => {
                        lexer.standard_strings = true;
                        None
                    }
                    Some(false) => {
                        lexer.standard_strings = false;
                        Some("turns standard_conforming_strings off, which moves where psql sees the strings that follow end".into())
                    }
                    None => Some(format!("sets standard_conforming_strings to {value:?}")),
                }
            }
            ["set", "client_encoding", "to" | "=", value] | ["set", "names", value] => {
                let normal: String = value.chars().filter(|c| !matches!(c, '_' | '-')).collect();
                UNSAFE_CLIENT_ENCODINGS.contains(&normal.as_str()).then(|| {
                    format!(
                        "sets the client encoding to {value}, in which psql reads some ASCII bytes as parts of other characters"
                    )
                })
            }
            // A column may be called client_encoding; only settings commands set settings.
            ["set" | "reset", ..] | ["alter", "database" | "role" | "user" | "system", ..]
                if self.names_lexical_setting =>
            {
                Some(format!(
                    "sets {} in a way the classifier cannot follow (it moves where psql sees strings end)",
                    LEXICAL_SETTINGS.join(" or ")
                ))
            }
            _ if self.quotes_lexical_setting => Some(
                "changes standard_conforming_strings or client_encoding in a way the classifier cannot follow (they move where psql sees strings end)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The value of a quoted token (`'off'` → `off`, `"Name"` → `name`, lower-cased already).
fn string_value(lower: &str) -> String {
    let t = lower.trim_start_matches(|c: char| c.is_ascii_alphabetic() || c == '&');
    let t = t.strip_prefix(['\'', '"']).unwrap_or(t);
    let t = t.strip_suffix(['\'', '"']).unwrap_or(t);
    t.to_owned()
}

/// A quoted identifier as one word of a statement's text: its quotes kept (so `"DROP"` is no
/// key word), `""` inside kept, whitespace shown as `␠` (so it stays one word), closed if the
/// file ends inside it.
fn quoted_ident_text(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}' => '\u{2420}',
            c => c,
        })
        .collect();
    let body = text.find('"').map_or(text.len(), |i| i + 1);
    if quoted_ident_close(text.as_bytes(), body).is_none() {
        out.push('"');
    }
    out
}

/// Where a statement is with respect to a SQL-standard routine body: `CREATE [OR REPLACE]
/// FUNCTION|PROCEDURE … BEGIN ATOMIC stmt; stmt; END`. Its `;`s end the body's statements,
/// not the `CREATE`: psql sends it whole (psqlscan.l counts `BEGIN`/`CASE`/`END` after such a
/// start, outside parentheses), and the server's grammar takes it as one statement that runs
/// none of the body. Found by the test against the real server.
#[derive(Default)]
struct RoutineBody {
    /// The first four words of the statement (identifiers, upper-cased).
    head: Vec<String>,
    /// Parentheses open.
    parens: usize,
    /// Whether the last word was `BEGIN` (outside parentheses, in a routine).
    after_begin: bool,
    /// `BEGIN ATOMIC` and `CASE` opened, less `END`s: inside the body while above zero.
    depth: usize,
}

impl RoutineBody {
    fn is_routine(&self) -> bool {
        let h: Vec<&str> = self.head.iter().map(String::as_str).collect();
        matches!(
            h.as_slice(),
            ["CREATE", "FUNCTION" | "PROCEDURE", ..]
                | ["CREATE", "OR", "REPLACE", "FUNCTION" | "PROCEDURE", ..]
        )
    }

    fn token(&mut self, tok: Tok, text: &str) {
        match (tok, text) {
            (Tok::Other, "(") => self.parens += 1,
            (Tok::Other, ")") => self.parens = self.parens.saturating_sub(1),
            (Tok::Word, w) if w.as_bytes().first().is_some_and(|&c| is_ident_start(c)) => {
                let w = w.to_ascii_uppercase();
                if self.head.len() < 4 {
                    self.head.push(w.clone());
                }
                if self.parens > 0 || !self.is_routine() {
                    return;
                }
                match w.as_str() {
                    "ATOMIC" if self.after_begin && self.depth == 0 => self.depth = 1,
                    "CASE" if self.depth > 0 => self.depth += 1,
                    "END" if self.depth > 0 => self.depth -= 1,
                    _ => {}
                }
                self.after_begin = w == "BEGIN";
            }
            _ => {}
        }
    }
}

/// The statements of `sql` as psql sends them and PostgreSQL runs them.
pub(crate) fn scan(sql: &str) -> Vec<Statement> {
    let mut lexer = Lexer::new(sql);
    let mut out = Vec::new();
    let mut cur = StatementBuilder::default();
    let mut routine = RoutineBody::default();
    while let Some((tok, range)) = lexer.next_token() {
        let text = &sql[range.clone()];
        if text.contains('\0') {
            // psql reads lines as C strings: it drops the rest of the line, newline included.
            cur.set_opaque("holds a NUL byte, after which psql drops the rest of the line".into());
        }
        if std::mem::take(&mut lexer.split_continuation) {
            cur.set_opaque(
                "continues a backslash-escaped string on another line, which psql and PostgreSQL split differently"
                    .into(),
            );
        }
        routine.token(tok, text);
        match tok {
            // Inside a routine body a `;` ends one of the body's statements, not the CREATE.
            Tok::Semicolon if routine.depth > 0 => cur.push_at(Tok::Other, ";", range),
            Tok::Semicolon => {
                routine = RoutineBody::default();
                let copies = reads_copy_data(&cur.text);
                if cur.start.is_some() {
                    cur.end = range.end;
                }
                cur.finish(&mut lexer, &mut out);
                if copies
                    && !lexer.skip_copy_data()
                    && let Some(copy) = out.last_mut()
                {
                    copy.opaque.get_or_insert(
                        "is a COPY FROM STDIN whose line goes on after it, which psql reads after the data"
                            .into(),
                    );
                }
            }
            Tok::Meta => {
                let (sends, why) = meta_command(text);
                if let Some(why) = why {
                    cur.set_opaque(why);
                }
                cur.push_at(tok, text, range);
                if sends {
                    routine = RoutineBody::default();
                    cur.finish(&mut lexer, &mut out);
                }
            }
            _ => cur.push_at(tok, text, range),
        }
    }
    cur.finish(&mut lexer, &mut out);
    out
}

/// Whether the statement text (words separated by spaces) is a `COPY ... FROM STDIN`.
fn reads_copy_data(text: &str) -> bool {
    let words: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    words.first() == Some(&"COPY") && words.windows(2).any(|w| w == ["FROM", "STDIN"])
}

/// The text of each statement of `sql` (see [`scan`]).
#[cfg(test)]
pub(crate) fn statements(sql: &str) -> Vec<String> {
    scan(sql).into_iter().map(|s| s.text).collect()
}

/// `s`, cut to 80 characters with `...`.
pub(super) fn shorten(s: &str) -> String {
    if s.chars().count() > 80 {
        let mut t: String = s.chars().take(77).collect();
        t.push_str("...");
        t
    } else {
        s.to_owned()
    }
}
