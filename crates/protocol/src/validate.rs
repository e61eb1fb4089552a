//! Checks of user input that both servers apply: the web server to answer with a clear HTTP
//! error, the data server because it is the authority on what gets stored.

use std::borrow::Cow;

use crate::model::{MAX_NAME_CHARS, MAX_PASSWORD_BYTES, MAX_TEXT_BYTES, MAX_TITLE_CHARS, MIN_PASSWORD_CHARS};

/// The reason a piece of user input was rejected. [`Invalid::code`] is a stable machine-readable name;
/// `Display` gives an English sentence, and web servers may translate by code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the user name is empty")]
    NameEmpty,
    #[error("the user name is longer than {MAX_NAME_CHARS} characters")]
    NameTooLong,
    #[error("the user name may contain only letters, digits, '.', '_' and '-'")]
    NameCharacters,
    #[error("the password is shorter than {MIN_PASSWORD_CHARS} characters")]
    PasswordTooShort,
    #[error("the password is longer than {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    #[error("the subject title is empty")]
    TitleEmpty,
    #[error("the subject title is longer than {MAX_TITLE_CHARS} characters")]
    TitleTooLong,
    #[error("the subject title contains control or invisible formatting characters")]
    TitleCharacters,
    #[error("the message text is empty")]
    TextEmpty,
    #[error("the message text is larger than {MAX_TEXT_BYTES} bytes")]
    TextTooLong,
    #[error("the message text contains control characters or text-direction overrides")]
    TextCharacters,
}

impl Invalid {
    /// A stable snake_case name for this error, for programs and translations.
    pub fn code(self) -> &'static str {
        match self {
            Invalid::NameEmpty => "name_empty",
            Invalid::NameTooLong => "name_too_long",
            Invalid::NameCharacters => "name_characters",
            Invalid::PasswordTooShort => "password_too_short",
            Invalid::PasswordTooLong => "password_too_long",
            Invalid::TitleEmpty => "title_empty",
            Invalid::TitleTooLong => "title_too_long",
            Invalid::TitleCharacters => "title_characters",
            Invalid::TextEmpty => "text_empty",
            Invalid::TextTooLong => "text_too_long",
            Invalid::TextCharacters => "text_characters",
        }
    }
}

/// Folds a user name or a subject title to the form in which the data servers compare them,
/// ignoring case and surrounding white space: trimmed, then lowercased.
pub fn fold(text: &str) -> String {
    folded(text).into_owned()
}

/// Like [`fold`], but borrows `text` when folding would not change it: ASCII, already trimmed
/// and without capitals, as most names and titles are. A lookup by name then allocates
/// nothing.
pub fn folded(text: &str) -> Cow<'_, str> {
    let trimmed = text.trim();
    if trimmed.bytes().all(|byte| byte.is_ascii() && !byte.is_ascii_uppercase()) {
        Cow::Borrowed(trimmed)
    } else {
        Cow::Owned(trimmed.to_lowercase())
    }
}

/// Checks a user name: 1 to [`MAX_NAME_CHARS`] letters, digits, `.`, `_` or `-`.
/// Names are compared ignoring case when checking that they are unique.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::NameEmpty);
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Invalid::NameTooLong);
    }
    if !name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return Err(Invalid::NameCharacters);
    }
    Ok(())
}

/// Checks a password: at least [`MIN_PASSWORD_CHARS`] characters, at most
/// [`MAX_PASSWORD_BYTES`] bytes.
pub fn validate_password(password: &str) -> Result<(), Invalid> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Invalid::PasswordTooShort);
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Invalid::PasswordTooLong);
    }
    Ok(())
}

/// Checks a subject title, which callers store trimmed: not blank, at most
/// [`MAX_TITLE_CHARS`] characters, no control characters and no invisible formatting
/// characters, so a title cannot look blank or display reversed.
pub fn validate_title(title: &str) -> Result<(), Invalid> {
    let title = title.trim();
    if title.is_empty() {
        return Err(Invalid::TitleEmpty);
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(Invalid::TitleTooLong);
    }
    if title.chars().any(|c| c.is_control() || is_invisible_format(c)) {
        return Err(Invalid::TitleCharacters);
    }
    Ok(())
}

/// Checks the text of a public or private message: not blank, at most [`MAX_TEXT_BYTES`]
/// bytes, no control characters but line breaks and tabs, and no text-direction overrides
/// (which make text display in another order than it reads). Direction marks such as U+200F,
/// which right-to-left writing needs, are allowed.
pub fn validate_text(text: &str) -> Result<(), Invalid> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(Invalid::TextTooLong);
    }
    if text.is_ascii() {
        validate_ascii_text(text.as_bytes())
    } else {
        validate_text_characters(text)
    }
}

/// Applies the checks of [`validate_text`] after its length check, to any text.
fn validate_text_characters(text: &str) -> Result<(), Invalid> {
    if text.chars().all(|c| c.is_whitespace() || is_invisible_format(c)) {
        return Err(Invalid::TextEmpty);
    }
    let forbidden = |c: char| (c.is_control() && !matches!(c, '\n' | '\r' | '\t')) || is_direction_override(c);
    if text.chars().any(forbidden) {
        return Err(Invalid::TextCharacters);
    }
    Ok(())
}

/// Applies the checks of [`validate_text`] after its length check to ASCII text, in one pass
/// over the bytes. No ASCII character is an invisible format character or a direction
/// override, so the checks reduce to white space and control characters.
fn validate_ascii_text(text: &[u8]) -> Result<(), Invalid> {
    let mut blank = true;
    let mut forbidden = false;
    for &byte in text {
        // `char::is_whitespace` in ASCII: tab, line feed, vertical tab, form feed, carriage
        // return and space. `u8::is_ascii_whitespace` leaves out the vertical tab.
        blank &= matches!(byte, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
        forbidden |= byte.is_ascii_control() && !matches!(byte, b'\n' | b'\r' | b'\t');
    }
    if blank {
        return Err(Invalid::TextEmpty);
    }
    if forbidden {
        return Err(Invalid::TextCharacters);
    }
    Ok(())
}

/// Characters that change how the text around them is laid out: embeddings, overrides and
/// isolates (U+202A to U+202E, U+2066 to U+2069).
fn is_direction_override(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters of Unicode's "format" category that take no space on screen: the soft hyphen,
/// zero-width spaces and joiners, direction marks and overrides, and the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_borrows_unchanged_text() {
        for text in ["bench", "ana_m.2-x", " Ana ", "ANA", "José", "ÁLVARO", "\u{a0}maría\u{a0}", "İstanbul", ""] {
            assert_eq!(folded(text), text.trim().to_lowercase(), "{text:?}");
            assert_eq!(fold(text), text.trim().to_lowercase(), "{text:?}");
        }
        assert!(matches!(folded("bench"), Cow::Borrowed("bench")));
        assert!(matches!(folded("  bench\t"), Cow::Borrowed("bench")));
        assert!(matches!(folded("Bench"), Cow::Owned(_)));
        assert!(matches!(folded("josé"), Cow::Owned(_)));
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("ana_m.2-x"), Ok(()));
        assert_eq!(validate_name("José"), Ok(()));
        assert_eq!(validate_name(""), Err(Invalid::NameEmpty));
        assert_eq!(validate_name(&"a".repeat(33)), Err(Invalid::NameTooLong));
        assert_eq!(validate_name("ana maría"), Err(Invalid::NameCharacters));
        assert_eq!(validate_name("<b>"), Err(Invalid::NameCharacters));
    }

    #[test]
    fn passwords() {
        assert_eq!(validate_password("12345678"), Ok(()));
        assert_eq!(validate_password("1234567"), Err(Invalid::PasswordTooShort));
        assert_eq!(validate_password(&"x".repeat(257)), Err(Invalid::PasswordTooLong));
    }

    #[test]
    fn titles_and_texts() {
        assert_eq!(validate_title("  Exams  "), Ok(()));
        assert_eq!(validate_title("   "), Err(Invalid::TitleEmpty));
        assert_eq!(validate_title("a\u{0}b"), Err(Invalid::TitleCharacters));
        assert_eq!(validate_title(&"t".repeat(121)), Err(Invalid::TitleTooLong));
        assert_eq!(validate_text("hola"), Ok(()));
        assert_eq!(validate_text(" \n "), Err(Invalid::TextEmpty));
        assert_eq!(validate_text(&"x".repeat(4096)), Ok(()));
        assert_eq!(validate_text(&"x".repeat(4097)), Err(Invalid::TextTooLong));
    }

    /// The ASCII path of `validate_text` must give the same result as the general one.
    #[test]
    fn ascii_text_matches_general_path() {
        let mut cases: Vec<String> = (0u8..=0x7f).map(|byte| char::from(byte).to_string()).collect();
        for byte in 0u8..=0x7f {
            cases.push(format!("a{}", char::from(byte)));
            cases.push(format!(" {}\n", char::from(byte)));
        }
        cases.extend([String::new(), " \t\r\n\x0b\x0c".into(), "\x0b\x01".into(), "hola\x7f".into()]);
        for case in &cases {
            assert_eq!(validate_ascii_text(case.as_bytes()), validate_text_characters(case), "text {case:?}");
        }
    }

    #[test]
    fn invisible_and_control_characters() {
        assert_eq!(validate_title("\u{200B}"), Err(Invalid::TitleCharacters));
        assert_eq!(validate_title("\u{202E}evil"), Err(Invalid::TitleCharacters));
        assert_eq!(validate_text("\u{0}"), Err(Invalid::TextCharacters));
        assert_eq!(validate_text("a\u{7}b"), Err(Invalid::TextCharacters));
        assert_eq!(validate_text("\u{202E}evil"), Err(Invalid::TextCharacters));
        assert_eq!(validate_text("\u{200B}\u{FEFF} "), Err(Invalid::TextEmpty));
        assert_eq!(validate_text("line one\nline two\ttab"), Ok(()));
        assert_eq!(validate_text("\u{200F}שלום"), Ok(()));
        assert_eq!(validate_name("ana\u{200B}"), Err(Invalid::NameCharacters));
    }
}
