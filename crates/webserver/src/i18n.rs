//! The languages of error sentences and the tables of those sentences.
//!
//! Every sentence a browser can see in an error body lives here, once per language, so a
//! translator edits one file. The codes that go with them are in `error.rs`.

use forum_protocol::{
    Invalid, MAX_NAME_CHARS, MAX_PAGE_LIMIT, MAX_PASSWORD_BYTES, MAX_TEXT_BYTES, MAX_TITLE_CHARS, MIN_PASSWORD_CHARS,
};

use crate::error::ErrorKind;

/// A language that error sentences are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    English,
    Spanish,
}

impl Language {
    /// Picks the language from an `Accept-Language` header value: the supported language
    /// (`es` or `en`, any region) with the highest quality value wins, and ties go to the
    /// one listed first. A missing or unparsable header, `*`, or a list with neither gives
    /// English.
    pub fn from_accept_language(header: Option<&str>) -> Language {
        let Some(header) = header else {
            return Language::English;
        };
        let mut best: Option<(f32, Language)> = None;
        for item in header.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let primary = tag.split('-').next().unwrap_or("").to_ascii_lowercase();
            let language = match primary.as_str() {
                "es" => Language::Spanish,
                "en" | "*" => Language::English,
                _ => continue,
            };
            let quality = parts
                .filter_map(|parameter| parameter.trim().strip_prefix("q="))
                .find_map(|value| value.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if quality <= 0.0 {
                continue;
            }
            if best.is_none_or(|(best_quality, _)| quality > best_quality) {
                best = Some((quality, language));
            }
        }
        best.map_or(Language::English, |(_, language)| language)
    }
}

/// Returns the sentence that explains an error of this kind to a user.
pub fn error_sentence(kind: &ErrorKind, language: Language) -> String {
    match language {
        Language::English => english(kind),
        Language::Spanish => spanish(kind),
    }
}

fn english(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::Invalid(invalid) => match invalid {
            Invalid::NameEmpty => "The user name is empty.".into(),
            Invalid::NameTooLong => format!("The user name is longer than {MAX_NAME_CHARS} characters."),
            Invalid::NameCharacters => "The user name may contain only letters, digits, '.', '_' and '-'.".into(),
            Invalid::PasswordTooShort => format!("The password is shorter than {MIN_PASSWORD_CHARS} characters."),
            Invalid::PasswordTooLong => format!("The password is longer than {MAX_PASSWORD_BYTES} bytes."),
            Invalid::TitleEmpty => "The subject title is empty.".into(),
            Invalid::TitleTooLong => format!("The subject title is longer than {MAX_TITLE_CHARS} characters."),
            Invalid::TitleCharacters => "The subject title contains control or invisible formatting characters.".into(),
            Invalid::TextEmpty => "The message text is empty.".into(),
            Invalid::TextTooLong => format!("The message text is larger than {MAX_TEXT_BYTES} bytes."),
            Invalid::TextCharacters => "The message text contains control characters or text-direction overrides.".into(),
        },
        ErrorKind::InvalidJson => "The request body is not valid JSON.".into(),
        ErrorKind::InvalidBody => "The request body does not have the fields this request expects.".into(),
        ErrorKind::UnsupportedMediaType => "The request body must be sent with Content-Type: application/json.".into(),
        ErrorKind::BodyTooLarge => "The request body is larger than the limit of 16 KiB.".into(),
        ErrorKind::BodyTimeout => "The request body did not arrive in time; send the request again.".into(),
        ErrorKind::InvalidId => "The id in the URL is invalid; ids look like \"2-17\".".into(),
        ErrorKind::InvalidCursor => "The before parameter must appear once, as a message id; ids look like \"2-17\".".into(),
        ErrorKind::InvalidLimit => format!("The limit parameter must appear once, as a whole number from 1 to {MAX_PAGE_LIMIT}."),
        ErrorKind::UnknownMessage => "The message in the before parameter is not in this subject or conversation.".into(),
        ErrorKind::LoginRequired => "You need to log in first.".into(),
        ErrorKind::BadCredentials => "The user name or the password is wrong.".into(),
        ErrorKind::NameTaken => "That user name is already taken.".into(),
        ErrorKind::TitleTaken => "A subject with that title already exists.".into(),
        ErrorKind::UnknownSubject => "That subject does not exist.".into(),
        ErrorKind::UnknownUser => "That user does not exist.".into(),
        ErrorKind::NotFound => "There is nothing at this address.".into(),
        ErrorKind::MethodNotAllowed => "This address does not accept this HTTP method.".into(),
        ErrorKind::InputRejected => "The data server rejected the input.".into(),
        ErrorKind::DataServerTimeout => "The data server did not answer in time; try again.".into(),
        ErrorKind::DataServerUnavailable => "The data server is not reachable right now; try again.".into(),
        ErrorKind::Overloaded => "The server is too busy right now; try again.".into(),
        ErrorKind::TooManyAttempts { retry_after_secs } => {
            format!("Too many failed logins; try again in {retry_after_secs} seconds.")
        }
        ErrorKind::Internal => "The server failed to handle the request.".into(),
    }
}

fn spanish(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::Invalid(invalid) => match invalid {
            Invalid::NameEmpty => "El nombre de usuario está vacío.".into(),
            Invalid::NameTooLong => format!("El nombre de usuario tiene más de {MAX_NAME_CHARS} caracteres."),
            Invalid::NameCharacters => {
                "El nombre de usuario solo puede contener letras, dígitos, '.', '_' y '-'.".into()
            }
            Invalid::PasswordTooShort => format!("La contraseña tiene menos de {MIN_PASSWORD_CHARS} caracteres."),
            Invalid::PasswordTooLong => format!("La contraseña ocupa más de {MAX_PASSWORD_BYTES} bytes."),
            Invalid::TitleEmpty => "El título del tema está vacío.".into(),
            Invalid::TitleTooLong => format!("El título del tema tiene más de {MAX_TITLE_CHARS} caracteres."),
            Invalid::TitleCharacters => "El título del tema contiene caracteres de control o de formato invisibles.".into(),
            Invalid::TextEmpty => "El texto del mensaje está vacío.".into(),
            Invalid::TextTooLong => format!("El texto del mensaje ocupa más de {MAX_TEXT_BYTES} bytes."),
            Invalid::TextCharacters => {
                "El texto del mensaje contiene caracteres de control o cambios forzados de dirección del texto.".into()
            }
        },
        ErrorKind::InvalidJson => "El cuerpo de la petición no es JSON válido.".into(),
        ErrorKind::InvalidBody => "El cuerpo de la petición no tiene los campos que esta petición espera.".into(),
        ErrorKind::UnsupportedMediaType => {
            "El cuerpo de la petición debe enviarse con Content-Type: application/json.".into()
        }
        ErrorKind::BodyTooLarge => "El cuerpo de la petición supera el límite de 16 KiB.".into(),
        ErrorKind::BodyTimeout => "El cuerpo de la petición no llegó a tiempo; vuelve a enviar la petición.".into(),
        ErrorKind::InvalidId => "El identificador de la URL no es válido; tiene la forma \"2-17\".".into(),
        ErrorKind::InvalidCursor => {
            "El parámetro before debe aparecer una vez, con un identificador de mensaje; tiene la forma \"2-17\".".into()
        }
        ErrorKind::InvalidLimit => format!("El parámetro limit debe aparecer una vez, con un número entero de 1 a {MAX_PAGE_LIMIT}."),
        ErrorKind::UnknownMessage => "El mensaje del parámetro before no está en este tema ni en esta conversación.".into(),
        ErrorKind::LoginRequired => "Primero tienes que iniciar sesión.".into(),
        ErrorKind::BadCredentials => "El nombre de usuario o la contraseña son incorrectos.".into(),
        ErrorKind::NameTaken => "Ese nombre de usuario ya está en uso.".into(),
        ErrorKind::TitleTaken => "Ya existe un tema con ese título.".into(),
        ErrorKind::UnknownSubject => "Ese tema no existe.".into(),
        ErrorKind::UnknownUser => "Ese usuario no existe.".into(),
        ErrorKind::NotFound => "No hay nada en esta dirección.".into(),
        ErrorKind::MethodNotAllowed => "Esta dirección no acepta este método HTTP.".into(),
        ErrorKind::InputRejected => "El servidor de datos rechazó los datos enviados.".into(),
        ErrorKind::DataServerTimeout => "El servidor de datos no respondió a tiempo; inténtalo de nuevo.".into(),
        ErrorKind::DataServerUnavailable => {
            "El servidor de datos no está disponible ahora; inténtalo de nuevo.".into()
        }
        ErrorKind::Overloaded => "El servidor está demasiado ocupado ahora; inténtalo de nuevo.".into(),
        ErrorKind::TooManyAttempts { retry_after_secs } => {
            format!("Demasiados intentos fallidos de inicio de sesión; inténtalo de nuevo dentro de {retry_after_secs} segundos.")
        }
        ErrorKind::Internal => "El servidor no pudo atender la petición.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_spanish() {
        for header in ["es", "es-ES", "es-AR,es;q=0.9,en;q=0.8", "fr, es;q=0.8, en;q=0.5", "en;q=0.5, ES;q=0.9"] {
            assert_eq!(Language::from_accept_language(Some(header)), Language::Spanish, "header {header:?}");
        }
    }

    #[test]
    fn accept_language_defaults_to_english() {
        let headers = [None, Some(""), Some("en-US,es;q=0.5"), Some("fr, de"), Some("es;q=0, en"), Some("*"), Some("en, es")];
        for header in headers {
            assert_eq!(Language::from_accept_language(header), Language::English, "header {header:?}");
        }
    }

    #[test]
    fn every_kind_has_both_sentences() {
        let invalid = [
            Invalid::NameEmpty,
            Invalid::NameTooLong,
            Invalid::NameCharacters,
            Invalid::PasswordTooShort,
            Invalid::PasswordTooLong,
            Invalid::TitleEmpty,
            Invalid::TitleTooLong,
            Invalid::TitleCharacters,
            Invalid::TextEmpty,
            Invalid::TextTooLong,
            Invalid::TextCharacters,
        ];
        let mut kinds: Vec<ErrorKind> = invalid.into_iter().map(ErrorKind::Invalid).collect();
        kinds.extend(ErrorKind::ALL_OWN.iter().cloned());
        for kind in &kinds {
            let english = error_sentence(kind, Language::English);
            let spanish = error_sentence(kind, Language::Spanish);
            assert!(english.ends_with('.'), "{kind:?}: {english}");
            assert!(spanish.ends_with('.'), "{kind:?}: {spanish}");
            assert_ne!(english, spanish, "{kind:?} is not translated");
        }
    }

    #[test]
    fn sentences_state_the_limits() {
        let sentence = error_sentence(&ErrorKind::Invalid(Invalid::TextTooLong), Language::Spanish);
        assert!(sentence.contains("4096"), "{sentence}");
        let sentence = error_sentence(&ErrorKind::Invalid(Invalid::PasswordTooShort), Language::English);
        assert!(sentence.contains('8'), "{sentence}");
        for language in [Language::English, Language::Spanish] {
            let sentence = error_sentence(&ErrorKind::InvalidLimit, language);
            assert!(sentence.contains("1000"), "{sentence}");
        }
    }
}
